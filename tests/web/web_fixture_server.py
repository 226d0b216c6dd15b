"""A real HTTP server on 127.0.0.1 that plays Reddit (listings, comment trees), an image host and a
misbehaving web: hangs, slow bodies, 429 with Retry-After, 500s, redirect loops and endless chains,
redirects to private addresses (also spelled as another name of the server, 6to4 or NAT64), wrong
content types, truncated JPEGs, decompression bombs, 200 MB bodies, HTML pages, short links without an
image extension, and a robots.txt that only an RFC 9309 parser (wildcards, longest match) reads right.

Every request is logged (method, path, status, time) so tests can assert what was and was not asked.
Each server is one host to be polite to: its :class:`HostMeter` counts the requests in flight (from the
request's arrival to its response's last byte) and when each arrived, so a test can assert that neither
the per-host concurrency nor the request rate was ever exceeded. ``site.body_seconds`` streams image
bodies in chunks over that many seconds, so a request in flight stays in flight long enough to be seen.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SUBREDDIT = "PhotoshopRequest"
# /private/shared/ is allowed by the longer Allow rule (the standard library's parser takes the first
# match, Disallow /private/); /img/hidden-*.jpg is disallowed only by a wildcard rule anchored with $.
ROBOTS = "User-agent: *\nDisallow: /private/\nAllow: /private/shared/\nDisallow: /*/hidden-*.jpg$\n"


@dataclass
class Comment:
    comment_id: str
    author: str
    image_paths: list[str]  # server paths like /img/x.jpg
    score: int = 1
    uploaded: bool = False  # as a Reddit comment upload (media_metadata) rather than a link in the body
    op_reply: bool = False
    links: list[str] = field(default_factory=list)  # more links in the body; "{base}", "{port}" filled in


@dataclass
class Post:
    post_id: str
    title: str
    body: str
    original_path: str | None
    comments: list[Comment] = field(default_factory=list)
    author: str = "requester"
    over_18: bool = False
    flair: str | None = None
    gallery: bool = False
    preview_only: bool = False
    score: int = 10


@dataclass
class Logged:
    """One request as it arrived; ``status`` is what was answered (0: nothing yet, 499: client went away)."""

    method: str
    path: str
    at: float
    status: int = 0


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG that declares a huge image (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + width // 8) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


class FixtureSite:
    """What the server serves; tests fill ``posts`` and ``images`` before starting it."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.images: dict[str, bytes] = {}  # path -> bytes
        self.page_size = 5
        self.delay = 0.0  # seconds before every response (the bench's injected latency)
        self.body_seconds = 0.0  # image bodies streamed in chunks over this long
        self.log: list[Logged] = []
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.base = ""
        self.expect_bearer: str | None = None  # OAuth: listings require this bearer token
        self.client_credentials: tuple[str, str] | None = None

    # -- bookkeeping ---------------------------------------------------------------------------------

    def arrived(self, method: str, path: str) -> Logged:
        entry = Logged(method, path, time.monotonic())
        with self.lock:
            self.log.append(entry)
        return entry

    def hit(self, path: str) -> int:
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            return self.hits[path]

    def requests_to(self, path: str, status: int | None = None) -> list[Logged]:
        with self.lock:
            return [e for e in self.log if e.path == path and (status is None or e.status == status)]

    def paths(self) -> list[str]:
        with self.lock:
            return [e.path for e in self.log]

    # -- Reddit JSON ---------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base + path

    def image_url(self, path: str) -> str:
        """An answer's image: a path on this server, or a full URL (another host serving the site)."""
        return path if "://" in path else self.url(path)

    def t3(self, post: Post) -> dict:
        data = {
            "id": post.post_id,
            "name": f"t3_{post.post_id}",
            "subreddit": SUBREDDIT,
            "title": post.title,
            "selftext": post.body,
            "author": post.author,
            "score": post.score,
            "created_utc": 1.7e9,
            "link_flair_text": post.flair,
            "over_18": post.over_18,
            "num_comments": len(post.comments),
            "permalink": f"/r/{SUBREDDIT}/comments/{post.post_id}/request/",
            "is_gallery": False,
            "url": f"https://www.reddit.com/r/{SUBREDDIT}/comments/{post.post_id}/request/",
            "post_hint": "self",
            "removed_by_category": None,
        }
        if post.original_path and post.gallery:
            media_id = f"g{post.post_id}"
            data.update(
                is_gallery=True,
                url=f"https://www.reddit.com/gallery/{post.post_id}",
                gallery_data={"items": [{"media_id": media_id, "id": 1}]},
                media_metadata={
                    media_id: {
                        "status": "valid",
                        "e": "Image",
                        "m": "image/jpg",
                        "s": {"u": self.url(post.original_path) + "?width=320&amp;s=x", "x": 320, "y": 240},
                    }
                },
            )
        elif post.original_path and post.preview_only:
            data["preview"] = {
                "images": [
                    {
                        "source": {
                            "url": self.url(post.original_path) + "?s=1&amp;a=2",
                            "width": 320,
                            "height": 240,
                        },
                        "resolutions": [],
                    }
                ],
                "enabled": True,
            }
        elif post.original_path:
            data.update(url=self.url(post.original_path), post_hint="image")
        return {"kind": "t3", "data": data}

    def t1(self, post: Post, comment: Comment) -> dict:
        data = {
            "id": comment.comment_id,
            "name": f"t1_{comment.comment_id}",
            "author": comment.author,
            "score": comment.score,
            "created_utc": 1.7e9 + 60,
            "parent_id": f"t3_{post.post_id}",
            "link_id": f"t3_{post.post_id}",
            "subreddit": SUBREDDIT,
            "replies": "",
        }
        if comment.uploaded:
            meta = {
                f"m{comment.comment_id}{i}": {
                    "status": "valid",
                    "e": "Image",
                    "m": "image/jpg",
                    "s": {"u": self.image_url(p), "x": 320, "y": 240},
                }
                for i, p in enumerate(comment.image_paths)
            }
            data["media_metadata"] = meta
            data["body"] = "Here you go " + " ".join(f"![img]({k})" for k in meta)
        else:
            data["body"] = "Here you go: " + " and ".join(
                f"[edit]({self.image_url(p)})" for p in comment.image_paths
            )
        if comment.links:
            port = self.base.rsplit(":", 1)[-1]
            data["body"] += " " + " ".join(
                f"[link {i}]({link.format(base=self.base, port=port)})"
                for i, link in enumerate(comment.links)
            )
        if comment.op_reply:
            data["replies"] = {
                "kind": "Listing",
                "data": {
                    "after": None,
                    "children": [
                        {
                            "kind": "t1",
                            "data": {
                                "id": f"r{comment.comment_id}",
                                "author": post.author,
                                "body": "Perfect!",
                                "parent_id": f"t1_{comment.comment_id}",
                                "score": 2,
                                "replies": "",
                            },
                        }
                    ],
                },
            }
        return {"kind": "t1", "data": data}

    def listing(self, after: str | None) -> dict:
        ids = [p.post_id for p in self.posts]
        start = ids.index(after.removeprefix("t3_")) + 1 if after else 0
        page = self.posts[start : start + self.page_size]
        more = start + self.page_size < len(self.posts)
        return {
            "kind": "Listing",
            "data": {
                "after": f"t3_{page[-1].post_id}" if more and page else None,
                "dist": len(page),
                "children": [self.t3(p) for p in page],
            },
        }

    def comment_tree(self, post_id: str) -> list | None:
        post = next((p for p in self.posts if p.post_id == post_id), None)
        if post is None:
            return None
        comments = [self.t1(post, c) for c in post.comments]
        comments.append({"kind": "more", "data": {"count": 0, "children": []}})
        return [
            {"kind": "Listing", "data": {"children": [self.t3(post)], "after": None}},
            {"kind": "Listing", "data": {"children": comments, "after": None}},
        ]

    # -- dump records (for the zstd adapter) --------------------------------------------------------

    def dump_records(self) -> tuple[list[dict], list[dict]]:
        submissions = [self.t3(p)["data"] for p in self.posts]
        comments = []
        for post in self.posts:
            for comment in post.comments:
                data = self.t1(post, comment)["data"]
                data.pop("replies")
                comments.append(data)
                if comment.op_reply:
                    comments.append(
                        {
                            "id": f"r{comment.comment_id}",
                            "author": post.author,
                            "body": "Perfect!",
                            "parent_id": f"t1_{comment.comment_id}",
                            "link_id": f"t3_{post.post_id}",
                            "subreddit": SUBREDDIT,
                            "score": 2,
                        }
                    )
        return submissions, comments


class HostMeter:
    """What one host saw: requests in flight now and at most, and when each request arrived."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[float] = []

    def start(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.arrivals.append(time.monotonic())

    def end(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def max_in_window(self, seconds: float) -> int:
        """The most requests that arrived within any ``seconds`` (a half-open window)."""
        with self.lock:
            times = sorted(self.arrivals)
        most, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] >= seconds:
                first += 1
            most = max(most, last - first + 1)
        return most

    def min_gap(self) -> float:
        with self.lock:
            times = sorted(self.arrivals)
        return min((b - a for a, b in zip(times, times[1:])), default=float("inf"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stalls
    site: FixtureSite

    def log_message(self, format, *args) -> None:  # noqa: A002 (quiet)
        pass

    entry: Logged | None = None

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self.entry = self.site.arrived("POST", path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        if path == "/api/v1/access_token" and self.site.client_credentials:
            import base64

            expected = "Basic " + base64.b64encode(":".join(self.site.client_credentials).encode()).decode()
            if self.headers.get("Authorization") == expected and "grant_type=client_credentials" in body:
                return self.send(
                    200,
                    json.dumps({"access_token": "tok-123", "expires_in": 3600}).encode(),
                    "application/json",
                    path,
                    "POST",
                )
            return self.send(401, b"{}", "application/json", path, "POST")
        self.send(404, b"not found", "text/plain", path, "POST")

    def do_GET(self) -> None:
        meter: HostMeter = self.server.meter
        meter.start()
        try:
            self._get()
        finally:
            meter.end()

    def _get(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        site = self.site
        self.entry = site.arrived("GET", path)
        count = site.hit(path)
        if site.delay:
            time.sleep(site.delay)
        try:
            self.route(path, query, count)
        except (BrokenPipeError, ConnectionResetError):
            self.entry.status = 499

    def route(self, path: str, query: dict, count: int) -> None:
        site = self.site
        if path == "/robots.txt":
            return self.send(200, ROBOTS.encode(), "text/plain", path)
        if (
            site.expect_bearer
            and path.startswith("/r/")
            and self.headers.get("Authorization") != f"bearer {site.expect_bearer}"
        ):
            return self.send(401, b"{}", "application/json", path)
        if path.startswith(f"/r/{SUBREDDIT}/new"):
            after = query.get("after", [None])[0]
            return self.send(200, json.dumps(site.listing(after)).encode(), "application/json", path)
        if path.startswith(f"/r/{SUBREDDIT}/comments/"):
            post_id = path.split("/")[4]
            if post_id.startswith("busy") and count == 1:  # a comment tree that is rate limited once
                return self.send(429, b"slow down", "text/plain", path, headers={"Retry-After": "1"})
            tree = site.comment_tree(post_id)
            if tree is None:
                return self.send(404, b"{}", "application/json", path)
            return self.send(200, json.dumps(tree).encode(), "application/json", path)
        if path in site.images and site.body_seconds:
            return self._send_slowly(site.images[path], path, site.body_seconds)
        if path in site.images:
            return self.send(200, site.images[path], "image/jpeg", path)
        if path.startswith(("/private/", "/img/hidden-")):
            return self.send(200, next(iter(site.images.values()), b""), "image/jpeg", path)
        if path.startswith("/go/"):  # a short link without an image extension, redirecting to an image
            return self.send(302, b"", "text/plain", path, headers={"Location": f"/img/{path[4:]}.jpg"})
        return self.fault(path, count)

    def fault(self, path: str, count: int) -> None:
        site = self.site
        name = path.rsplit("/", 1)[-1]
        good = site.images.get("/img/fault_good_edit.jpg", b"")
        if name == "hang.jpg":
            time.sleep(3.0)
            return self.send(200, good, "image/jpeg", path)
        if name == "slow.jpg":
            self.send_head(200, "image/jpeg", path, close=True)
            for index in range(60):
                self.wfile.write(good[index * 10 : (index + 1) * 10] or b"\x00")
                self.wfile.flush()
                time.sleep(0.1)
            return None
        if name == "ratelimited.jpg":
            if count == 1:
                return self.send(429, b"too many requests", "text/plain", path, headers={"Retry-After": "1"})
            return self.send(200, good, "image/jpeg", path)
        if name == "error500.jpg":
            return self.send(500, b"internal error", "text/plain", path)
        if name in ("loop-a.jpg", "loop-b.jpg"):
            other = "loop-b.jpg" if name == "loop-a.jpg" else "loop-a.jpg"
            return self.send(302, b"", "text/plain", path, headers={"Location": f"/fault/{other}"})
        if name.startswith("chain-"):  # an endless chain of distinct redirects
            step = int(name.removeprefix("chain-").removesuffix(".jpg"))
            return self.send(
                302, b"", "text/plain", path, headers={"Location": f"/fault/chain-{step + 1}.jpg"}
            )
        port = self.server.server_address[1]
        other_names = {
            "to-localhost.jpg": f"http://localhost:{port}/img/astronaut.jpg",  # this server, another name
            "to-6to4.jpg": f"http://[2002:7f00:1::]:{port}/img/astronaut.jpg",  # 127.0.0.1 inside 6to4
            "to-nat64.jpg": f"http://[64:ff9b::7f00:1]:{port}/img/astronaut.jpg",  # and inside NAT64
        }
        if name in other_names:
            return self.send(302, b"", "text/plain", path, headers={"Location": other_names[name]})
        if name == "to-private.jpg":
            return self.send(302, b"", "text/plain", path, headers={"Location": "http://10.0.0.1/secret.jpg"})
        if name == "to-metadata.jpg":
            return self.send(
                301,
                b"",
                "text/plain",
                path,
                headers={"Location": "http://169.254.169.254/latest/meta-data/x.jpg"},
            )
        if name == "wrong-type.jpg":
            return self.send(200, good, "text/plain", path)
        if name == "truncated.jpg":
            return self.send(200, good[: len(good) // 2], "image/jpeg", path)
        if name == "bomb.png":
            return self.send(200, bomb_png(), "image/png", path)
        if name == "huge.jpg":  # 200 MB, announced: refused from the header without reading
            self.send_head(200, "image/jpeg", path, length=200 * 1024 * 1024)
            return self._stream_zeros(200 * 1024 * 1024)
        if name == "huge-unannounced.jpg":  # 200 MB without Content-Length: cut off by the byte cap
            self.send_head(200, "image/jpeg", path, close=True)
            return self._stream_zeros(200 * 1024 * 1024)
        if name == "page.jpg":
            return self.send(200, b"<!DOCTYPE html><html><body>Not an image</body></html>", "text/html", path)
        return self.send(404, b"not found", "text/plain", path)

    def _send_slowly(self, body: bytes, path: str, seconds: float, chunks: int = 5) -> None:
        """The whole body, in ``chunks`` parts with pauses between them: ``seconds`` in all."""
        self.send_head(200, "image/jpeg", path, length=len(body))
        size = -(-len(body) // chunks)
        for index in range(chunks):
            self.wfile.write(body[index * size : (index + 1) * size])
            self.wfile.flush()
            time.sleep(seconds / chunks)

    def _stream_zeros(self, total: int) -> None:
        block = b"\x00" * (1 << 20)
        sent = 0
        while sent < total:
            self.wfile.write(block)
            sent += len(block)

    def send_head(
        self,
        status: int,
        content_type: str,
        path: str,
        length: int | None = None,
        close: bool = False,
        headers: dict | None = None,
    ) -> None:
        if self.entry is not None:
            self.entry.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        path: str,
        method: str = "GET",
        headers: dict | None = None,
    ) -> None:
        self.send_head(status, content_type, path, length=len(body), headers=headers)
        self.wfile.write(body)


class FixtureServer:
    """Start with ``with FixtureServer(site) as server:``; ``server.base`` is ``http://127.0.0.1:<port>``.

    ``primary=False``: another host serving the same site (its answers' images, say); the site's own
    links keep pointing at the primary one."""

    def __init__(self, site: FixtureSite, port: int = 0, primary: bool = True) -> None:
        handler = type("BoundHandler", (Handler,), {"site": site})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.meter = self.httpd.meter = HostMeter()
        self.site = site
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        if primary:
            site.base = self.base
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def __enter__(self) -> FixtureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
