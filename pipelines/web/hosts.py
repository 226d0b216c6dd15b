"""Links as people post them: found in text (any scheme), classified (an image to fetch, or why not),
and image links resolved to the direct image (i.redd.it, preview.redd.it, imgur)."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ieiw.pipelines.web.fetcher import FetchError, SafeFetcher

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
VIDEO_HOSTS = ("v.redd.it", "youtube.com", "www.youtube.com", "youtu.be", "streamable.com")
IMGUR_HOSTS = ("imgur.com", "www.imgur.com", "m.imgur.com")
# Any scheme (file://, ftp://, ... are found so that they can be accounted for, never fetched); the
# authority may be a bracketed IPv6 literal, which Markdown's own brackets around a link are not.
URL_PATTERN = re.compile(
    r"\b[a-z][a-z0-9+.\-]*://(?:\[[0-9a-z:.%\-]*\]|[^\s<>\"'()\[\]])[^\s<>\"'()\[\]]*", re.IGNORECASE
)
OG_IMAGE = re.compile(r"<meta[^>]+property=[\"']og:image[\"'][^>]+content=[\"']([^\"']+)[\"']", re.IGNORECASE)
IMGUR_ID = re.compile(r"^[A-Za-z0-9]{5,10}$")


def clean_url(url: str) -> str:
    """Undo the HTML escaping Reddit applies to URLs in JSON (``&amp;``) and trim trailing punctuation."""
    return html.unescape(url).strip().rstrip(").,;!?*_~")


def urls_in_text(text: str) -> Iterator[str]:
    """Every URL in a text (plain or in Markdown links, any scheme), in order, without repeats."""
    seen: set[str] = set()
    for match in URL_PATTERN.finditer(text or ""):
        url = clean_url(match.group(0))
        if url not in seen:
            seen.add(url)
            yield url


def link_problem(url: str) -> str | None:
    """Why a link found in a post or comment is not fetched as an image, or None to fetch it.

    ``unsupported_scheme`` (file://, ftp://, ...), ``bad_url`` (unparseable), ``not_an_image_link``
    (a page, a video, a link without an image extension, even one that would redirect to an image).
    Address checks come at fetch time: a link to a blocked address is fetched and refused there.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return "bad_url"
    if parts.scheme.lower() not in ("http", "https"):
        return "unsupported_scheme"
    if not parts.hostname:
        return "bad_url"
    return None if is_probable_image(url) else "not_an_image_link"


def is_probable_image(url: str) -> bool:
    """A link that points at an image (or an image host page we can resolve), not a web page or video."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if host in VIDEO_HOSTS:
        return False
    if host in ("i.redd.it", "preview.redd.it", "i.imgur.com") or host in IMGUR_HOSTS:
        return True
    if host.endswith("reddit.com") and parts.path.startswith("/media"):
        return True
    return parts.path.lower().endswith(IMAGE_EXTENSIONS)


def resolve_image_url(url: str, fetcher: SafeFetcher | None = None) -> str:
    """The direct image URL for ``url``; raises FetchError(unsupported_link) for what is not an image."""
    url = clean_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise FetchError("bad_url", f"{url[:200]}: {error}") from error
    host = (parts.hostname or "").lower()
    if host in VIDEO_HOSTS:
        raise FetchError("unsupported_link", f"video link {url}")
    if host.endswith("reddit.com") and parts.path.startswith("/media"):
        inner = parse_qs(parts.query).get("url", [""])[0]
        if not inner:
            raise FetchError("unsupported_link", url)
        return resolve_image_url(inner, fetcher)
    if host == "preview.redd.it" and parts.path.lower().endswith(IMAGE_EXTENSIONS):
        return urlunsplit(("https", "i.redd.it", parts.path, "", ""))  # the full-size original
    if host == "i.imgur.com":
        return _imgur_direct(parts.path)
    if host in IMGUR_HOSTS:
        return _imgur_page(parts.path, url, fetcher)
    return url


def _imgur_direct(path: str) -> str:
    stem, ext = os.path.splitext(path.strip("/"))
    if ext.lower() in (".gifv", ".mp4", ".webm"):
        raise FetchError("unsupported_link", f"imgur video {path}")
    return f"https://i.imgur.com/{stem}{ext or '.jpg'}"


def _imgur_page(path: str, url: str, fetcher: SafeFetcher | None) -> str:
    segments = [s for s in path.split("/") if s]
    if len(segments) == 1 and IMGUR_ID.match(os.path.splitext(segments[0])[0]):
        return _imgur_direct(segments[0])  # imgur.com/<id>: the image itself
    if len(segments) >= 2 and segments[0] in ("a", "gallery"):
        album = segments[-1].rsplit("-", 1)[-1]  # new-style slugs end with the id
        return _imgur_album_first(album, url, fetcher)
    raise FetchError("unsupported_link", url)


def _imgur_album_first(album: str, url: str, fetcher: SafeFetcher | None) -> str:
    """The first image of an imgur album: the API with IMGUR_CLIENT_ID, else the page's og:image."""
    if fetcher is None:
        raise FetchError("unsupported_link", f"album {url} needs a fetcher")
    client_id = os.environ.get("IMGUR_CLIENT_ID")
    if client_id:
        data = fetcher.get_json(
            f"https://api.imgur.com/3/album/{album}/images",
            headers={"Authorization": f"Client-ID {client_id}"},
        )
        images = data.get("data") or []
        if images and images[0].get("link"):
            return str(images[0]["link"])
        raise FetchError("empty_album", url)
    page = fetcher.get(f"https://imgur.com/a/{album}", 2 * 1024 * 1024)
    return first_og_image(page.body.decode("utf-8", errors="replace"), url)


def first_og_image(page: str, url: str) -> str:
    match = OG_IMAGE.search(page)
    if not match:
        raise FetchError("empty_album", f"no og:image in {url}")
    return clean_url(match.group(1).split("?", 1)[0] if "i.imgur.com" in match.group(1) else match.group(1))


def reddit_media_url(meta: dict) -> str | None:
    """The full-size URL of one ``media_metadata`` entry (gallery item or comment image)."""
    if not isinstance(meta, dict) or meta.get("status", "valid") != "valid":
        return None
    if meta.get("e") not in (None, "Image", "AnimatedImage"):
        return None
    source = meta.get("s") or {}
    for field in ("u", "gif"):
        if source.get(field):
            return clean_url(source[field])
    media_id, mime = meta.get("id"), str(meta.get("m") or "")
    if media_id and mime.startswith("image/"):
        ext = {"image/jpg": "jpg", "image/jpeg": "jpg"}.get(mime, mime.split("/", 1)[1])
        return f"https://i.redd.it/{media_id}.{ext}"
    return None
