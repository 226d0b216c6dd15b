"""The review app: FastAPI with one plain HTML page (``review.html``) and a small JSON API.

A reviewer signs in with their token (``POST /api/signin`` sets an HttpOnly, SameSite=Strict
cookie; API clients may send ``Authorization: Bearer <token>`` instead). Every route answers only
for the signed-in reviewer's own queue and picks: another reviewer's sample is a 404, a candidate
of another sample a 422, a third pick a 409, and a missing or wrong token a 401; none stores
anything. Requests authenticated by cookie that change state must carry the ``X-Requested-With``
header the page sends, which a cross-site form cannot.

``create_app(store, index)`` takes an open :class:`ReviewStore` and the :class:`CandidateIndex`
of the candidate shards, both owned by the caller. Given ``judgements`` (what
:func:`ieiw.model.review.judging.candidate_judgements` reads from ``ieiw judge-candidates``), each
candidate of a sample comes with the quality judge's scores and reasons (``judge``), shown under it
on the page (a reviewer can hide them). A review meant to measure the judge (``ieiw
judge-agreement``) should not show them: leave ``judgements`` out.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from ieiw.model.candidate_shards import CandidateIndex, candidate_member
from ieiw.model.review.store import ReviewerInfo, ReviewError, ReviewStore

COOKIE = "ieiw_review_token"
CSRF_HEADER = "x-requested-with"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class SignIn(BaseModel):
    token: str = Field(min_length=1, max_length=200)


class PickRequest(BaseModel):
    candidate_id: int


def page_html() -> str:
    return files("ieiw.model.review").joinpath("review.html").read_text(encoding="utf-8")


def create_app(
    store: ReviewStore,
    index: CandidateIndex,
    title: str = "IEIW review",
    judgements: Mapping[tuple[str, int], dict] | None = None,
) -> FastAPI:
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    verdicts = dict(judgements or {})
    page = page_html().replace("{{title}}", title)

    @app.exception_handler(ReviewError)
    def _refused(_request: Request, error: ReviewError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    def reviewer(request: Request) -> ReviewerInfo:
        header = request.headers.get("authorization", "")
        scheme, _, bearer = header.partition(" ")
        token = bearer.strip() if scheme.lower() == "bearer" else None
        if token is None:
            token = request.cookies.get(COOKIE)
            if token and request.method in UNSAFE_METHODS and not request.headers.get(CSRF_HEADER):
                raise HTTPException(403, "missing X-Requested-With header")
        person = store.reviewer_by_token(token)
        if person is None:
            raise HTTPException(
                401, "sign in with your reviewer token", headers={"WWW-Authenticate": "Bearer"}
            )
        return person

    def next_pending(person: ReviewerInfo, after: str | None = None) -> str | None:
        """The first pending sample after ``after`` in queue order, wrapping around."""
        queue = store.queue(person.id)
        keys = [q["key"] for q in queue]
        start = keys.index(after) + 1 if after in keys else 0
        for item in queue[start:] + queue[:start]:
            if item["status"] == "pending" and item["key"] != after:
                return item["key"]
        return None

    def my_progress(person: ReviewerInfo) -> dict:
        rows = store.progress(person.id)
        return rows[0].as_dict() if rows else {}

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.post("/api/signin")
    def signin(body: SignIn, request: Request, response: Response) -> dict:
        person = store.reviewer_by_token(body.token)
        if person is None:
            raise HTTPException(401, "unknown token")
        response.set_cookie(
            COOKIE,
            body.token,
            httponly=True,
            samesite="strict",
            path="/",
            secure=request.url.scheme == "https",
            max_age=30 * 24 * 3600,
        )
        return {"name": person.name}

    @app.post("/api/signout")
    def signout(response: Response) -> dict:
        response.delete_cookie(COOKIE, path="/")
        return {"signed_out": True}

    @app.get("/api/me")
    def me(person: ReviewerInfo = Depends(reviewer)) -> dict:
        return {"name": person.name, "progress": my_progress(person), "next": next_pending(person)}

    @app.get("/api/status")
    def status(person: ReviewerInfo = Depends(reviewer)) -> dict:
        """The whole review in numbers: progress per reviewer and agreement (no one's picks)."""
        return {
            "progress": [row.as_dict() for row in store.progress()],
            "agreement": store.agreement().as_dict(),
        }

    @app.get("/api/queue")
    def queue(person: ReviewerInfo = Depends(reviewer)) -> list[dict]:
        return store.queue(person.id)

    @app.get("/api/samples/{key}")
    def sample(key: str, person: ReviewerInfo = Depends(reviewer)) -> dict:
        view = store.sample_view(person.id, key)
        for candidate in view["candidates"]:
            candidate["image"] = f"/api/samples/{key}/images/{candidate['position']}.png"
            if verdicts:
                candidate["judge"] = verdicts.get((key, candidate["position"]))
        view["source"] = f"/api/samples/{key}/images/src.png"
        return view

    @app.get("/api/samples/{key}/images/{name}")
    def image(key: str, name: str, person: ReviewerInfo = Depends(reviewer)) -> Response:
        view = store.sample_view(person.id, key)  # 404 unless the sample is in this reviewer's queue
        if name == "src.png":
            member = "src.png"
        else:
            stem = name.removesuffix(".png")
            if not stem.isdigit() or int(stem) >= len(view["candidates"]):
                raise HTTPException(404, "no such image")
            member = candidate_member(int(stem))
        try:
            data = index.read(key, member)
        except KeyError as missing:
            raise HTTPException(404, "image not in the candidate shards") from missing
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/samples/{key}/picks")
    def pick(
        key: str, body: PickRequest, response: Response, person: ReviewerInfo = Depends(reviewer)
    ) -> dict:
        stored, created = store.add_pick(person.id, key, body.candidate_id)
        response.status_code = 201 if created else 200
        return stored

    @app.delete("/api/samples/{key}/picks/{candidate_id}")
    def unpick(key: str, candidate_id: int, person: ReviewerInfo = Depends(reviewer)) -> dict:
        if not store.remove_pick(person.id, key, candidate_id):
            raise HTTPException(404, "you have not picked that candidate")
        return {"removed": candidate_id}

    @app.post("/api/samples/{key}/undo")
    def undo(key: str, person: ReviewerInfo = Depends(reviewer)) -> dict:
        return {"removed": store.undo(person.id, key)}

    @app.post("/api/samples/{key}/done")
    def done(key: str, person: ReviewerInfo = Depends(reviewer)) -> dict:
        store.finish(person.id, key, "done")
        return {"next": next_pending(person, after=key), "progress": my_progress(person)}

    @app.post("/api/samples/{key}/skip")
    def skip(key: str, person: ReviewerInfo = Depends(reviewer)) -> dict:
        store.finish(person.id, key, "skipped")
        return {"next": next_pending(person, after=key), "progress": my_progress(person)}

    return app
