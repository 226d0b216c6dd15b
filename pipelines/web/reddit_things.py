"""Reddit's JSON "things" (t3 submissions, t1 comments) turned into posts and edit candidates.

The live API and the offline dumps carry the same fields, so both adapters share these parsers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ieiw.pipelines.web.hosts import (
    clean_url,
    is_probable_image,
    link_problem,
    reddit_media_url,
    urls_in_text,
)
from ieiw.pipelines.web.instruction import clean_request
from ieiw.pipelines.web.posts import EditCandidate, WebPost

REMOVED_TEXTS = ("[removed]", "[deleted]")


def dataset_name(subreddit: str) -> str:
    return f"reddit:r/{subreddit}"


def post_from_submission(data: dict[str, Any]) -> WebPost:
    """A WebPost (without candidates) from a t3 ``data`` object."""
    images = submission_images(data)
    permalink = str(data.get("permalink") or f"/comments/{data.get('id')}/")
    if permalink.startswith("/"):
        permalink = "https://www.reddit.com" + permalink
    removed = bool(data.get("removed_by_category")) or (data.get("selftext") in REMOVED_TEXTS and not images)
    return WebPost(
        post_id=str(data["id"]),
        dataset=dataset_name(str(data.get("subreddit") or "unknown")),
        title=str(data.get("title") or ""),
        body="" if data.get("selftext") in REMOVED_TEXTS else str(data.get("selftext") or ""),
        original_url=images[0] if images else None,
        extra_original_urls=images[1:],
        permalink=permalink,
        author=str(data.get("author") or ""),
        score=int(data.get("score") or 0),
        created_utc=float(data.get("created_utc") or 0.0),
        flair=data.get("link_flair_text"),
        over_18=bool(data.get("over_18")),
        removed=removed,
    )


def submission_images(data: dict[str, Any]) -> list[str]:
    """The post's images: gallery items in order, else the linked image, else the preview's source."""
    metadata = data.get("media_metadata") or {}
    if data.get("is_gallery") and metadata:
        items = (data.get("gallery_data") or {}).get("items") or [{"media_id": k} for k in metadata]
        urls = [
            reddit_media_url({"id": i.get("media_id"), **metadata.get(i.get("media_id"), {})}) for i in items
        ]
        found = [u for u in urls if u]
        if found:
            return found
    for field in ("url_overridden_by_dest", "url"):
        url = data.get(field)
        if url and is_probable_image(clean_url(str(url))):
            return [clean_url(str(url))]
    for image in (data.get("preview") or {}).get("images") or []:
        source = (image or {}).get("source") or {}
        if source.get("url"):
            return [clean_url(str(source["url"]))]
    return []


def comment_links(data: dict[str, Any]) -> list[str]:
    """Every link of a t1 comment: uploaded images (``media_metadata``), then the links in its body."""
    urls: list[str] = []
    for media_id, meta in (data.get("media_metadata") or {}).items():
        url = reddit_media_url({"id": media_id, **(meta or {})})
        if url:
            urls.append(url)
    urls += list(urls_in_text(str(data.get("body") or "")))
    return list(dict.fromkeys(urls))


def comment_images(data: dict[str, Any]) -> list[str]:
    """The image links of a t1 comment (the links :func:`link_problem` finds nothing wrong with)."""
    return [u for u in comment_links(data) if link_problem(u) is None]


def candidates_from_comments(
    comments: Iterable[dict[str, Any]],
    op: str,
    skip_authors: Iterable[str],
    op_replied_to: set[str] | None = None,
) -> list[EditCandidate]:
    """Edit candidates from top-level comment ``data`` objects, excluding the requester and bots."""
    skip = set(skip_authors) | {op}
    candidates: list[EditCandidate] = []
    for data in comments:
        author = str(data.get("author") or "")
        if author in skip or data.get("body") in REMOVED_TEXTS:
            continue
        links = [(url, link_problem(url)) for url in comment_links(data)]
        images = [url for url, problem in links if problem is None]
        comment_id = str(data["id"])
        replied = comment_id in (op_replied_to or set()) or _op_replied(data, op)
        image_index = other_index = 0
        for url, problem in links:
            if problem is None:  # image ids as they always were: the comment id, or id-<n> of several
                candidate_id = comment_id if len(images) == 1 else f"{comment_id}-{image_index}"
                image_index += 1
            else:
                candidate_id = f"{comment_id}~{other_index}"
                other_index += 1
            candidates.append(
                EditCandidate(
                    candidate_id=candidate_id,
                    url=url,
                    author=author,
                    score=int(data.get("score") or 0),
                    created_utc=float(data.get("created_utc") or 0.0),
                    body=str(data.get("body") or "")[:2000],
                    op_replied=replied,
                    problem=problem,
                )
            )
        if len(images) == 1:
            candidates += follow_up_candidates(data, comment_id, op, skip)
    return candidates


def _replies(data: dict[str, Any]) -> list[dict[str, Any]]:
    replies = data.get("replies")
    if not isinstance(replies, dict):
        return []
    children = (replies.get("data") or {}).get("children") or []
    return [c["data"] for c in children if c.get("kind") == "t1" and isinstance(c.get("data"), dict)]


def follow_up_candidates(data: dict[str, Any], edit_id: str, op: str, skip: set[str]) -> list[EditCandidate]:
    """Edits made on an edit: where the requester answered edit ``edit_id`` asking for another edit (a
    reply with an edit verb, :func:`clean_request`) and someone answered that with an image, the thread
    is a two-turn session; the answer's first image is a candidate that ``follows`` the edit."""
    found: list[EditCandidate] = []
    for reply in _replies(data):
        request = str(reply.get("body") or "")
        if reply.get("author") != op or clean_request("", request) is None:
            continue
        for answer in _replies(reply):
            author = str(answer.get("author") or "")
            images = comment_images(answer)
            if author in skip or not images or answer.get("body") in REMOVED_TEXTS:
                continue
            found.append(
                EditCandidate(
                    candidate_id=f"{edit_id}>{answer['id']}",
                    url=images[0],
                    author=author,
                    score=int(answer.get("score") or 0),
                    created_utc=float(answer.get("created_utc") or 0.0),
                    body=str(answer.get("body") or "")[:2000],
                    follows=edit_id,
                    request=request[:2000],
                )
            )
    return found


def _op_replied(data: dict[str, Any], op: str) -> bool:
    replies = data.get("replies")
    if not isinstance(replies, dict):
        return False
    for child in (replies.get("data") or {}).get("children") or []:
        if child.get("kind") == "t1" and (child.get("data") or {}).get("author") == op:
            return True
    return False
