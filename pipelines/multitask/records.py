"""The source records the multi-task readers yield: one person, one labelled image, one referring
expression, one degraded/clean pair or one clean photo. Each has a stable ``record_id``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ieiw.pipelines.sources.drops import keyed_drop
from ieiw.storage.schema import Provenance

LICENSES: dict[str, str] = {
    "coco": "CC BY 4.0 (COCO annotations); images under their Flickr licenses",
    "crowdpose": "CrowdPose annotations (research use); images from COCO, MPII and AIC",
    "aic": "AI Challenger keypoints (research use)",
    "mpii": "MPII Human Pose (BSD-2 annotations); images from YouTube, research use",
    "cocostuff": "COCO-Stuff annotations CC BY 4.0; images under their Flickr licenses",
    "refcoco": "RefCOCO (Apache-2.0 annotations); COCO images under their Flickr licenses",
    "refcoco+": "RefCOCO+ (Apache-2.0 annotations); COCO images under their Flickr licenses",
    "refcocog": "RefCOCOg (CC BY 4.0 annotations); COCO images under their Flickr licenses",
    "grefcoco": "gRefCOCO (research use); COCO images under their Flickr licenses",
    "phrasecut": "CC BY 4.0 (Visual Genome images and PhraseCut annotations)",
    "gopro": "GoPro deblurring dataset (CC BY 4.0)",
    "reds": "REDS (CC BY 4.0)",
    "sidd": "SIDD (research use, see the dataset's terms)",
    "clwd": "CLWD (research use)",
}


def license_of(dataset: str) -> str | None:
    return LICENSES.get(dataset.lower())


def provenance(
    dataset: str, image_id: str, region_id: str | None = None, license: str | None = None, **extra: Any
) -> Provenance:
    """A multi-task sample's provenance; ``license`` as configured for its source, else the known
    license of ``dataset``."""
    return Provenance(
        dataset=dataset,
        image_id=str(image_id),
        region_id=region_id,
        license=license or license_of(dataset),
        extra=extra,
    )


drop = keyed_drop  # a reader's or renderer's counted drop, keyed by dataset, record and reason


@dataclass
class KeypointRecord:
    """One annotated person: joints in image pixels with visibility (0 none, 1 occluded, 2 visible)."""

    record_id: str
    dataset: str
    image_id: str
    person_id: str
    image_path: str
    joint_names: list[str]
    joints: list[tuple[float, float, int]]
    box: tuple[float, float, float, float]  # x, y, w, h
    area: float | None = None  # the person's area in image pixels (COCO ``area``), for OKS
    image_size: tuple[int, int] | None = None  # (width, height) when the annotation file says
    view: int = 0  # the n-th sample of this person (other joints, other colours)
    license: str | None = None  # as configured for the source; None: the dataset's known one

    @property
    def provenance(self) -> Provenance:
        if self.view:
            return provenance(
                self.dataset, self.image_id, self.person_id, view=self.view, license=self.license
            )
        return provenance(self.dataset, self.image_id, self.person_id, license=self.license)


@dataclass
class SemanticRecord:
    """One image with its label map (pixel = class id, 255 unlabelled) and the class names."""

    record_id: str
    dataset: str
    image_id: str
    image_path: str
    label_path: str
    names: dict[int, str]  # pixel value -> class name (shared between records of one source)
    license: str | None = None  # as configured for the source; None: the dataset's known one

    @property
    def provenance(self) -> Provenance:
        return provenance(self.dataset, self.image_id, license=self.license)


@dataclass
class ReferringRecord:
    """One referring expression and the masks of what it refers to (none for a no-target expression).

    ``segmentations`` are COCO segmentations (polygon lists or RLE dicts); ``polygons`` are PhraseCut
    polygons (per instance, a list of [x, y] point lists). One of the two is used.
    """

    record_id: str
    dataset: str
    image_id: str
    ref_id: str
    image_path: str
    sentences: list[str]
    segmentations: list[Any] = field(default_factory=list)
    polygons: list[Any] = field(default_factory=list)
    image_size: tuple[int, int] | None = None  # (width, height) from instances.json
    category: str | None = None
    no_target: bool = False  # gRefCOCO: the expression names nothing in the image
    license: str | None = None  # as configured for the source; None: the dataset's known one

    @property
    def provenance(self) -> Provenance:
        return provenance(self.dataset, self.image_id, self.ref_id, license=self.license)


@dataclass
class PairRecord:
    """A degraded frame and its clean counterpart, matched by name."""

    record_id: str
    dataset: str
    kind: str  # deblur | denoise | watermark
    image_id: str
    degraded_path: str
    clean_path: str
    license: str | None = None  # as configured for the source; None: the dataset's known one

    @property
    def provenance(self) -> Provenance:
        return provenance(self.dataset, self.image_id, license=self.license)


@dataclass
class CleanImageRecord:
    """A clean photo to degrade synthetically with ``degradation``."""

    record_id: str
    dataset: str
    image_id: str
    image_path: str
    degradation: str
    license: str | None = None  # as configured for the source; None: the dataset's known one

    @property
    def provenance(self) -> Provenance:
        return provenance(self.dataset, self.image_id, self.degradation, synthetic=True, license=self.license)


MultitaskRecord = KeypointRecord | SemanticRecord | ReferringRecord | PairRecord | CleanImageRecord
