"""The ``multitask:`` section of a build config: which datasets feed which task, and how samples look.

Every source names the on-disk layout it reads (``kind``); paths are local folders or files.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ieiw.storage.config import input_file, input_folder, limit, operational
from ieiw.storage.visual_prompts import COLOR_NAMES, DEFAULT_MASK_ALPHA, MIN_MASK_ALPHA


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- keypoints ---------------------------------------------------------------------------------


class CocoKeypointSource(_Strict):
    """``person_keypoints_{split}.json`` (COCO, CrowdPose, AI Challenger in COCO format) and its images."""

    kind: Literal["coco_keypoints"] = "coco_keypoints"
    dataset: str = "coco"  # coco | crowdpose | aic | ...: recorded in provenance
    license: str | None = None  # recorded in every sample; None: the dataset's known license
    annotations: str = input_file()
    images: str = input_folder()


class MpiiSource(_Strict):
    """MPII in its JSON conversion: a list of people with ``image``, ``center``, ``scale``, ``joints``."""

    kind: Literal["mpii"] = "mpii"
    dataset: str = "mpii"
    license: str | None = None  # recorded in every sample; None: the dataset's known license
    annotations: str = input_file()
    images: str = input_folder()


KeypointSource = Annotated[CocoKeypointSource | MpiiSource, Field(discriminator="kind")]


class KeypointConfig(_Strict):
    sources: list[KeypointSource] = Field(default_factory=list)
    min_joints: int = Field(1, ge=1)
    max_joints: int = Field(5, ge=1, le=len(COLOR_NAMES))
    crop_margin: float = Field(0.15, ge=0.0, le=2.0)  # share of the box's longer side added on each side
    include_occluded: bool = False  # also draw joints labelled but not visible (COCO v=1)
    per_person: int = Field(1, ge=1, le=20)  # samples per person, each with other joints and colours
    limit: int | None = limit(None)  # per source


# --- segmentation ------------------------------------------------------------------------------


class CocoStuffSource(_Strict):
    """``images/{split}/*.jpg`` beside ``annotations/{split}/*.png`` label maps (255 = unlabelled)."""

    kind: Literal["coco_stuff"] = "coco_stuff"
    dataset: str = "cocostuff"
    license: str | None = None  # recorded in every sample; None: the dataset's known license
    root: str = input_folder()
    split: str = "train2017"
    labels: str = input_file()  # text file, one ``<id>: <name>`` (or ``<id> <name>``) per line
    label_offset: int = 0  # added to a pixel value to find its line in ``labels`` (1 for 1-based files)


class RefCocoSource(_Strict):
    """RefCOCO / RefCOCO+ / RefCOCOg: ``refs(unc).p`` or ``refs(google).p`` beside ``instances.json``."""

    kind: Literal["refcoco"] = "refcoco"
    dataset: str = "refcoco"
    license: str | None = None  # recorded in every sample; None: the dataset's known license
    refs: str = input_file()
    instances: str = input_file()
    images: str = input_folder()
    split: str | None = None  # train | val | testA | ...; None takes all


class GRefCocoSource(_Strict):
    """gRefCOCO: ``grefs(unc).json`` (an expression names several objects or none) and ``instances.json``."""

    kind: Literal["grefcoco"] = "grefcoco"
    dataset: str = "grefcoco"
    license: str | None = None  # recorded in every sample; None: the dataset's known license
    refs: str = input_file()
    instances: str = input_file()
    images: str = input_folder()
    split: str | None = None


class PhraseCutSegmentationSource(_Strict):
    """PhraseCut-format ``refer_*.json`` polygons (also the demo's annotations) as referring masks."""

    kind: Literal["phrasecut"] = "phrasecut"
    dataset: str = "phrasecut"
    license: str | None = None  # recorded in every sample; None: the dataset's known license
    annotations: str = input_file()
    images: str = input_folder()


SegmentationSource = Annotated[
    CocoStuffSource | RefCocoSource | GRefCocoSource | PhraseCutSegmentationSource,
    Field(discriminator="kind"),
]


class SegmentationConfig(_Strict):
    sources: list[SegmentationSource] = Field(default_factory=list)
    alpha: float = Field(DEFAULT_MASK_ALPHA, ge=MIN_MASK_ALPHA, le=1.0)  # opacity of the colour over the mask
    negative_share: float = Field(0.1, ge=0.0, le=1.0)  # samples naming an absent class, target = source
    min_area_fraction: float = Field(0.01, ge=0.0, le=1.0)  # a semantic class must cover this much
    limit: int | None = limit(None)


# --- enhancement -------------------------------------------------------------------------------


class PairSource(_Strict):
    """Degraded/clean pairs in a dataset's own layout."""

    kind: Literal["gopro", "reds", "sidd", "clwd"]
    root: str = input_folder()
    split: str = "train"  # gopro: train|test; reds: train|val; clwd: train|test; sidd: unused
    dataset: str | None = None  # defaults to ``kind``
    license: str | None = None  # recorded in every sample; None: the dataset's known license


Degradation = Literal["gaussian_blur", "motion_blur", "gaussian_noise", "poisson_noise", "jpeg", "watermark"]


class SyntheticSource(_Strict):
    """Clean photos degraded on the fly, for users without the enhancement datasets."""

    kind: Literal["synthetic"] = "synthetic"
    dataset: str = "synthetic"
    license: str | None = None  # recorded in every sample; None: the dataset's known license
    images: str = input_folder()  # a folder of clean photos
    degradations: list[Degradation] = Field(
        default_factory=lambda: [
            "gaussian_blur",
            "motion_blur",
            "gaussian_noise",
            "poisson_noise",
            "jpeg",
            "watermark",
        ]
    )
    per_image: int = Field(1, ge=1, le=6)  # samples per photo, each with another degradation


EnhancementSource = Annotated[PairSource | SyntheticSource, Field(discriminator="kind")]


class EnhancementConfig(_Strict):
    sources: list[EnhancementSource] = Field(default_factory=list)
    patch: Literal["crop", "resize"] = "crop"  # crop a native-resolution patch, or resize the whole frame
    limit: int | None = limit(None)


# --- the section -------------------------------------------------------------------------------


class MultitaskConfig(_Strict):
    """Keypoint, segmentation and enhancement samples rendered as edits, with pre-training captions."""

    resolution: int = Field(256, ge=32, le=2048)
    keypoints: KeypointConfig | None = None
    segmentation: SegmentationConfig | None = None
    enhancement: EnhancementConfig | None = None
    captions: list[str] = input_file(default_factory=list)  # COCO ``captions_*.json``, keyed by image id
    batch_size: int = operational(16, ge=1)

    @field_validator("captions")
    @classmethod
    def _no_blank(cls, value: list[str]) -> list[str]:
        if any(not v.strip() for v in value):
            raise ValueError("captions: empty path")
        return value
