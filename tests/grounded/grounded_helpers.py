"""Photos with planted objects, what each should become, and the test config of the grounded chain."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from grounded_tiny_models import BLUE, PALE, RED, grey, paint
from PIL import Image

from ieiw.pipelines.grounded.config import GroundedRemovalConfig, SegmenterConfig

SEED = 20260  # the photos' noise: photo n uses SEED + n
DILATION = 2


@dataclass(frozen=True)
class TinyModels:
    owl: str
    sam: SegmenterConfig
    lama: str
    clip_name: str
    clip_config: str
    clip_weights: str


@dataclass(frozen=True)
class Case:
    """A planted photo: what is painted, what its red (or blue) square should become, and where the
    removed object lies (``top, left, height, width``) when it is kept."""

    objects: tuple[tuple[tuple[int, int, int], int, int, int, int], ...]
    phrase: str
    outcome: str  # "kept" or the drop reason
    removed: tuple[int, int, int, int] | None = None


# 128-pixel photos; the tiny detector sees 32-pixel cells, the tiny SAM the vivid red or blue blocks of the
# half of the photo (left or right) that holds the box's centre
CASES: dict[str, Case] = {
    "red": Case(((RED, 32, 32, 32, 32),), "red square", "kept", (32, 32, 32, 32)),
    "blue": Case(((BLUE, 0, 64, 32, 32),), "blue square", "kept", (0, 64, 32, 32)),
    "faint": Case((((170, 120, 120), 32, 32, 32, 32),), "red square", "low_detector_score"),
    # the detector sees the pale cell; SAM only its vivid core, 0.9% of the photo
    "speck": Case(((PALE, 32, 32, 32, 32), (RED, 40, 40, 12, 12)), "red square", "mask_too_small"),
    # a red square beside a wide blue field: SAM's mask takes the field too
    "field": Case(((BLUE, 0, 0, 96, 96), (RED, 32, 32, 32, 32)), "red square", "mask_too_large"),
    # a thin red band down through the red square, too thin for the detector, in SAM's mask
    "band": Case(((RED, 0, 40, 128, 8), (RED, 32, 32, 32, 32)), "red square", "mask_outside_box"),
    "pair": Case(((RED, 0, 0, 32, 32), (RED, 64, 64, 32, 32)), "red square", "multiple_instances"),
    # SAM segments the vivid corner of a dull red square; the rest stays, and the verifier sees it
    "part": Case(
        (((210, 70, 70), 32, 32, 32, 32), (RED, 32, 32, 19, 19)), "red square", "object_still_present"
    ),
}


# photos of sessions: a red object left of the middle and a blue one right of it (``top, left, height,
# width``), so the tiny SAM gives each its own mask
SESSION_SEED = 20270  # their noise
RED_AT, BLUE_AT = (0, 32, 32, 32), (64, 64, 32, 32)
DULL_BLUE = (70, 70, 210)


def duo_image() -> np.ndarray:
    """A red and a blue square: both kept, a session of two turns."""
    return paint(paint(grey(SESSION_SEED), RED, *RED_AT), BLUE, *BLUE_AT)


def half_image() -> np.ndarray:
    """A red square, and a dull blue square whose vivid corner alone is SAM's mask: removing it leaves the
    rest for the verifier to see."""
    image = paint(paint(grey(SESSION_SEED + 1), RED, *RED_AT), DULL_BLUE, *BLUE_AT)
    return paint(image, BLUE, BLUE_AT[0], BLUE_AT[1], 19, 19)


SESSION_PHOTOS = {"duo": duo_image, "half": half_image, "red": lambda: planted_image("red")}


def write_session_photos(folder: Path, names: tuple[str, ...] = tuple(SESSION_PHOTOS)) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        Image.fromarray(SESSION_PHOTOS[name]()).save(folder / f"{name}.png")
    return folder


def make_tiny_models(root: Path) -> TinyModels:
    """Every tiny model of the chain, saved under ``root`` as real checkpoints are."""
    from grounded_tiny_models import tiny_owlv2, tiny_sam
    from tiny_clip import save_tiny_clip
    from tiny_lama import save_tiny_lama

    clip_name, clip_config, clip_weights = save_tiny_clip(root / "clip")
    return TinyModels(
        owl=str(tiny_owlv2(root / "tiny-owlv2")),
        sam=tiny_sam(root / "sam"),
        lama=save_tiny_lama(str(root / "tiny-lama.pt")),
        clip_name=clip_name,
        clip_config=clip_config,
        clip_weights=clip_weights,
    )


def planted_image(name: str) -> np.ndarray:
    image = grey(SEED + list(CASES).index(name))
    for colour, top, left, height, width in CASES[name].objects:
        paint(image, colour, top, left, height, width)
    return image


def write_planted(folder: Path, names: list[str] | None = None, suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or list(CASES):
        Image.fromarray(planted_image(name)).save(folder / f"{name}{suffix}")
    return folder


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def grounded_config(source: dict[str, Any], models: TinyModels, **changes: Any) -> GroundedRemovalConfig:
    """The chain with the tiny models; the vocabulary the tiny detector knows; ``changes`` merged in."""
    base = {
        "source": source,
        "tagger": {
            "embedder": {
                "model": models.clip_name,
                "pretrained": models.clip_weights,
                "model_config_file": models.clip_config,
                "device": "cpu",
                "batch_size": 4,
            },
            "vocabulary": ["red square", "blue square"],
            "top_k": 2,
            "min_probability": 0.0,
        },
        "detector": {"model": models.owl, "device": "cpu", "batch_size": 4},
        "segmenter": models.sam.model_dump(),
        "inpaint": {
            "backend": "lama",
            "model": models.lama,
            "device": "cpu",
            "strategy": "crop",
            "window": 64,
            "crop_margin": 16,
        },
        "verifier": {"model": models.owl, "device": "cpu", "batch_size": 4},
        "gates": {"max_remaining_score": 0.05},  # the tiny LaMa's fill: 0.0; the dull remainder: 0.13
        "dilation": DILATION,
        "batch_size": 3,
    }
    return GroundedRemovalConfig.model_validate(merge(base, changes))
