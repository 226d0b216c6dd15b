"""The source interface: a post with its request, original image and candidate edits.

A new source (another forum, another archive) implements :class:`PostSource`; the crawler, the
state file and the pairing stage work on :class:`WebPost` alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EditCandidate:
    """A link someone posted in an answer to the request: an image to fetch, or a link that is not one.

    ``problem`` says why a link is not fetched (:func:`~ieiw.pipelines.web.hosts.link_problem`:
    ``not_an_image_link``, ``unsupported_scheme``, ...); it stays a candidate so that the manifest
    accounts for it with that reason.
    """

    candidate_id: str  # the comment id; "-<n>" when it holds several images; "~<n>" for its other links
    url: str
    author: str = ""
    score: int = 0
    created_utc: float = 0.0
    body: str = ""
    op_replied: bool = False  # the requester answered this comment
    problem: str | None = None  # why the link is not fetched; None: an image link
    # a follow-up edit: the candidate it continues (the requester asked for more under that edit, and this
    # answers it), and the requester's follow-up request; "" for an answer to the post itself
    follows: str = ""
    request: str = ""


@dataclass
class WebPost:
    """A request post: what was asked, the original image, the edits offered, and who/when/where."""

    post_id: str
    dataset: str  # e.g. "reddit:r/PhotoshopRequest"
    title: str
    body: str
    original_url: str | None
    permalink: str
    author: str = ""
    score: int = 0
    created_utc: float = 0.0
    flair: str | None = None
    over_18: bool = False
    removed: bool = False
    extra_original_urls: list[str] = field(default_factory=list)  # more gallery images
    candidates: list[EditCandidate] | None = None  # None: not loaded yet (see PostSource.load_candidates)

    @property
    def record_id(self) -> str:
        return f"{self.dataset.split(':', 1)[0]}:{self.post_id}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebPost:
        data = dict(data)
        candidates = data.pop("candidates", None)
        post = cls(**data)
        if candidates is not None:
            post.candidates = [EditCandidate(**c) for c in candidates]
        return post


class PostSource(ABC):
    """Yields request posts; sources whose listing lacks the answers fetch them in ``load_candidates``."""

    name: str = "source"

    @abstractmethod
    def iter_posts(self) -> Iterator[WebPost]:
        """Posts in listing order, possibly with ``candidates`` still None."""

    def load_candidates(self, post: WebPost) -> WebPost:
        """Fill ``post.candidates`` (runs in the crawler's worker threads); the default has them already."""
        if post.candidates is None:
            post.candidates = []
        return post
