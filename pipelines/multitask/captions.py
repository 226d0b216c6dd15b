"""Adaptive pre-training captions: the image's own caption plus what the rendered target adds.

The caption comes from a COCO captions file (``captions_{split}.json``) when one is given and
knows the image, and from the class names otherwise; the suffix names the visual prompt
("surrounded with a red circle"). The trainer's pre-training stage reads it from
``SampleMeta.pretrain_caption``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import ijson

from ieiw.pipelines.multitask.templates import CAPTION_SUFFIXES


def load_captions(paths: Iterable[str]) -> dict[str, str]:
    """{image id: caption} from COCO captions files, streamed; the annotation with the lowest id wins."""
    best: dict[str, tuple[int, str]] = {}
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"captions file not found: {path}")
        with open(path, "rb") as handle:
            for ann in ijson.items(handle, "annotations.item"):
                if not isinstance(ann, dict) or "image_id" not in ann or not ann.get("caption"):
                    continue
                key, ann_id = str(ann["image_id"]), int(ann.get("id", 0))
                if key not in best or ann_id < best[key][0]:
                    best[key] = (ann_id, " ".join(str(ann["caption"]).split()).rstrip("."))
    return {key: caption for key, (_, caption) in best.items()}


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def base_caption(captions: dict[str, str], image_id: str, fallback: str) -> str:
    caption = captions.get(str(image_id)) or captions.get(str(image_id).lstrip("0") or "0")
    return caption or fallback


def keypoint_caption(base: str, colors: list[str]) -> str:
    if len(colors) == 1:
        return f"{base}, {CAPTION_SUFFIXES['keypoint_one'].format(color=colors[0])}"
    return f"{base}, {CAPTION_SUFFIXES['keypoint_many'].format(colors=_join_words(colors))}"


def segmentation_caption(base: str, color: str, negative: bool) -> str:
    return base if negative else f"{base}, {CAPTION_SUFFIXES['segmentation'].format(color=color)}"


def enhancement_caption(base: str, kind: str) -> str:
    return f"{base}, {CAPTION_SUFFIXES[kind]}"


def names_caption(names: Iterable[str]) -> str:
    """``a photo of person, grass and sky`` from class names (the fallback without a captions file)."""
    words = list(dict.fromkeys(n for n in names if n))
    return f"a photo of {_join_words(words)}" if words else "a photo"
