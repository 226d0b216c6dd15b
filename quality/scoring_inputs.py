"""The score stage's inputs: one candidate sample's tar members decoded into a pair (or an error row),
its captions, and the requests the VLM judge and the object verifier get from a batch of pairs."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from ieiw.quality.judge import JudgeRequest
from ieiw.quality.verifier import VERIFY_SCORES, ObjectVerifier, Verification, VerifyItem
from ieiw.storage.images import decode_image
from ieiw.storage.schema import SampleMeta


def digest(data: bytes) -> str:
    """Content key of an encoded image: the embedding cache key."""
    return hashlib.sha256(data).hexdigest()[:24]


@dataclass
class DecodedPair:
    key: str
    meta: SampleMeta
    source: np.ndarray
    target: np.ndarray
    digest_src: str
    digest_tgt: str
    src_bytes: bytes
    tgt_bytes: bytes
    mask_bytes: bytes | None


def member(members: dict[str, bytes], stem: str) -> bytes | None:
    for name, data in members.items():
        if name.split(".", 1)[0] == stem:
            return data
    return None


def decode_pair(key: str, members: dict[str, bytes], shard: str) -> DecodedPair | dict:
    """The decoded sample, or an error row."""
    row = {"key": key, "shard": shard}
    try:
        meta = SampleMeta.model_validate_json(members["json"])
    except (KeyError, ValidationError, ValueError) as error:
        return {**row, "error": "corrupt_json", "error_detail": str(error)[:300]}
    row.update(record_id=meta.record_id, task=str(meta.task))
    src, tgt = member(members, "src"), member(members, "tgt")
    if src is None or tgt is None:
        return {**row, "error": "missing_image", "error_detail": f"members: {sorted(members)}"}
    try:
        source, target = decode_image(src), decode_image(tgt)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return {**row, "error": "corrupt_image", "error_detail": str(error)[:300]}
    return DecodedPair(key, meta, source, target, digest(src), digest(tgt), src, tgt, member(members, "mask"))


def pair_captions(meta: SampleMeta) -> tuple[str, str] | None:
    extra = meta.extra
    src, tgt = extra.get("source_caption"), extra.get("target_caption")
    captions = extra.get("captions")
    if isinstance(captions, dict):
        src, tgt = src or captions.get("source"), tgt or captions.get("target")
    return (src, tgt) if isinstance(src, str) and isinstance(tgt, str) and src and tgt else None


def judge_requests(decoded: list[DecodedPair]) -> list[JudgeRequest]:
    return [
        JudgeRequest(d.key, str(d.meta.task), d.meta.instruction, d.src_bytes, d.tgt_bytes) for d in decoded
    ]


def verify_pairs(decoded: list[DecodedPair], verifier: ObjectVerifier) -> list[Verification]:
    items = []
    for d in decoded:
        mask = None
        if d.mask_bytes is not None:
            try:
                mask = decode_mask(d.mask_bytes)
            except (UnidentifiedImageError, OSError, ValueError):
                mask = None  # an unreadable mask: the pair cannot be checked (verify_no_mask)
        items.append(VerifyItem(d.key, str(d.meta.task), d.meta.extra, d.source, d.target, mask))
    return verifier.verify(items)


def verification_columns(verification: Verification) -> dict:
    return {
        **{name: float(verification.scores[name]) for name in VERIFY_SCORES},
        "verify_error": verification.error,
        "verify_queries": json.dumps(verification.queries, sort_keys=True) if verification.queries else None,
    }


def decode_mask(data: bytes) -> np.ndarray:
    """A mask member as HxW ``uint8`` (nonzero inside)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))
