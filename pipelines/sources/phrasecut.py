"""VGPhraseCut reader: referring phrases with instance polygons over Visual Genome images.

The annotation files (``refer_train.json`` and friends) are one JSON list of tasks::

    {"task_id": "1__3", "image_id": 1, "phrase": "white cup",
     "Polygons": [[[[x, y], ...], ...], ...],   # per instance, a list of polygons of [x, y] points
     "instance_boxes": [[x, y, w, h], ...], "phrase_structure": {...}}

Images live as ``<image_dir>/<image_id>.jpg``. The file can run to hundreds of megabytes, so it
is parsed as a stream (ijson) and never held in memory whole.

Each image's public URL and size come from the release's ``image_data_split.json`` (or Visual
Genome's ``image_data.json``) when it is given (:func:`load_image_data`): Visual Genome's images live
under both ``VG_100K`` and ``VG_100K_2``, so a fixed URL template gets about half of them wrong.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import ijson
import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from ieiw.pipelines.sources.drops import keyed_drop
from ieiw.storage.schema import Drop, Provenance

DATASET = "phrasecut"
LICENSE = "CC BY 4.0 (Visual Genome images and PhraseCut annotations)"
VG_URL = "https://cs.stanford.edu/people/rak248/VG_100K/{image_id}.jpg"  # right for part of VG only


@dataclass(frozen=True)
class ImageInfo:
    """What the release says of one Visual Genome image."""

    url: str | None
    width: int | None
    height: int | None


def load_image_data(path: str) -> dict[str, ImageInfo]:
    """``image_id -> ImageInfo`` from ``image_data_split.json`` or ``image_data.json`` (streamed: a list
    of objects with ``image_id``, ``url``, ``width``, ``height``; VG's own file spells it ``id`` in
    some releases)."""
    found: dict[str, ImageInfo] = {}
    with open(path, "rb") as handle:
        for entry in ijson.items(handle, "item", use_float=True):
            if not isinstance(entry, dict):
                continue
            image_id = entry.get("image_id", entry.get("id"))
            if image_id is None:
                continue
            width, height = entry.get("width"), entry.get("height")
            found[str(image_id)] = ImageInfo(
                entry.get("url"), int(width) if width else None, int(height) if height else None
            )
    return found


@dataclass
class PhraseCutRecord:
    """One referring phrase and the polygons of the instances it refers to."""

    record_id: str
    task_id: str
    image_id: str
    phrase: str
    polygons: list[list[list[list[float]]]]
    boxes: list[list[float]]
    image_path: str
    structure: dict[str, Any] = field(default_factory=dict)
    ann_ids: list[int] = field(default_factory=list)
    dataset: str = DATASET
    license: str | None = LICENSE
    url_template: str | None = None
    image_info: ImageInfo | None = None

    @property
    def provenance(self) -> Provenance:
        if self.image_info is not None and self.image_info.url:
            url = self.image_info.url
        else:
            url = self.url_template.format(image_id=self.image_id) if self.url_template else None
        extra: dict[str, Any] = {}
        if self.ann_ids:
            extra["ann_ids"] = list(self.ann_ids)
        if self.image_info is not None and self.image_info.width:
            extra["image_size"] = [self.image_info.width, self.image_info.height]
        return Provenance(
            dataset=self.dataset,
            image_id=self.image_id,
            region_id=self.task_id,
            license=self.license,
            url=url,
            extra=extra,
        )


@dataclass
class RegionSettings:
    """How a phrase's polygons become an inpainting mask, and which regions are usable."""

    dilation: int = 15
    min_area_fraction: float = 0.005
    max_area_fraction: float = 0.5


@dataclass
class LoadedRegion:
    record: PhraseCutRecord
    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW uint8, 0 or 255, already dilated
    area_fraction: float
    raw_mask: np.ndarray | None = None  # HxW uint8, the polygons before dilation


@dataclass
class PhraseCutSession:
    """Several phrases of one image, in input order: the turns of a multi-turn removal session."""

    records: list[PhraseCutRecord]

    @property
    def record_id(self) -> str:
        first = self.records[0]
        return f"{first.dataset}:session:{first.image_id}:" + "+".join(r.task_id for r in self.records)

    @property
    def image_id(self) -> str:
        return self.records[0].image_id


def group_sessions(
    items: Iterable[PhraseCutRecord | Drop], max_turns: int, window: int = 256
) -> Iterator[PhraseCutRecord | PhraseCutSession | Drop]:
    """The phrases of each image grouped into sessions of at most ``max_turns``, in a fixed order.

    An image's tasks need not be adjacent in the annotation file: a group stays open while fewer than
    ``window`` other images have open groups (so memory stays bounded on a file of any size). A group
    is emitted when it is full, when it is the oldest of too many open groups, or at the end; a group
    of one phrase is that plain record. Drops pass straight through. The same input gives the same
    output, so batches (and their names) are the same on every run.
    """
    if max_turns < 2:
        raise ValueError("a session has at least 2 turns (max_turns >= 2)")
    open_groups: OrderedDict[str, list[PhraseCutRecord]] = OrderedDict()

    def emit(group: list[PhraseCutRecord]) -> PhraseCutRecord | PhraseCutSession:
        return group[0] if len(group) == 1 else PhraseCutSession(group)

    for item in items:
        if isinstance(item, Drop):
            yield item
            continue
        image = f"{item.dataset}:{item.image_id}"
        group = open_groups.setdefault(image, [])
        group.append(item)
        if len(group) >= max_turns:
            yield emit(open_groups.pop(image))
        elif len(open_groups) > window:
            yield emit(open_groups.popitem(last=False)[1])
    while open_groups:
        yield emit(open_groups.popitem(last=False)[1])


def _drop(record_id: str, reason: str, detail: str, prov: Provenance | None = None) -> Drop:
    return keyed_drop(DATASET, record_id, reason, detail, prov)


def iter_records(
    annotation_path: str,
    image_dir: str,
    dataset: str = DATASET,
    license: str | None = LICENSE,
    url_template: str | None = None,
    image_data: dict[str, ImageInfo] | None = None,
) -> Iterator[PhraseCutRecord | Drop]:
    """Stream the tasks of one ``refer_*.json`` file.

    ``dataset``, ``license`` and each image's URL go into each sample's provenance: the URL from
    ``image_data`` (:func:`load_image_data`) when given, else from ``url_template`` (with
    ``{image_id}``) if set; ``ann_ids`` and the recorded image size too.

    A task missing required fields becomes a ``bad_annotation`` drop; a file that ends early or
    is not valid JSON yields an ``annotation_file_truncated`` drop after the tasks read so far.
    """
    name = os.path.basename(annotation_path)
    count = 0
    with open(annotation_path, "rb") as handle:
        items = ijson.items(handle, "item", use_float=True)
        while True:
            try:
                task = next(items)
            except StopIteration:
                return
            except ijson.JSONError as error:
                yield _drop(
                    f"{DATASET}:{name}:@{count}",
                    "annotation_file_truncated",
                    f"{annotation_path}: malformed or truncated JSON after {count} tasks: {error}",
                )
                return
            count += 1
            record = _parse_task(task, image_dir, name, count)
            if isinstance(record, PhraseCutRecord):
                record.dataset, record.license, record.url_template = dataset, license, url_template
                record.image_info = image_data.get(record.image_id) if image_data else None
            yield record


def _parse_task(task: Any, image_dir: str, name: str, index: int) -> PhraseCutRecord | Drop:
    if not isinstance(task, dict):
        return _drop(f"{DATASET}:{name}:#{index}", "bad_annotation", f"task {index} is not an object")
    missing = [k for k in ("task_id", "image_id", "phrase", "Polygons") if k not in task]
    task_id = str(task.get("task_id", f"#{index}"))
    record_id = f"{DATASET}:{task_id}"
    if missing:
        return _drop(record_id, "bad_annotation", f"task {task_id} lacks {', '.join(missing)}")
    image_id = str(task["image_id"])
    return PhraseCutRecord(
        record_id=record_id,
        task_id=task_id,
        image_id=image_id,
        phrase=" ".join(str(task["phrase"]).split()),
        polygons=task["Polygons"],
        boxes=task.get("instance_boxes") or [],
        image_path=os.path.join(image_dir, f"{image_id}.jpg"),
        structure=task.get("phrase_structure") or {},
        ann_ids=[
            int(a) for a in task.get("ann_ids") or [] if isinstance(a, (int, float, str)) and str(a).isdigit()
        ],
    )


def rasterize(polygons: list, width: int, height: int) -> np.ndarray:
    """Fill every polygon of every instance into one HxW ``uint8`` mask (0/255)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for instance in polygons:
        for polygon in instance:
            points = [(float(p[0]), float(p[1])) for p in polygon if len(p) >= 2]
            if len(points) >= 3:
                draw.polygon(points, fill=255, outline=255)
    return np.asarray(canvas)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask, kernel)


def load_image(path: str) -> np.ndarray:
    """Read an RGB image fully (so a truncated file fails here, not later)."""
    with Image.open(path) as image:
        image.load()
        return np.asarray(image.convert("RGB"))


def load_region(
    record: PhraseCutRecord, settings: RegionSettings, image: np.ndarray | None = None
) -> LoadedRegion | Drop:
    """Read the image (unless given, already read) and build the dilated mask, or say why this record
    is unusable."""
    prov = record.provenance
    if not record.phrase:
        return _drop(record.record_id, "empty_phrase", f"task {record.task_id} has no phrase", prov)
    if image is None:
        if not os.path.exists(record.image_path):
            return _drop(record.record_id, "missing_image", record.image_path, prov)
        try:
            image = load_image(record.image_path)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            return _drop(record.record_id, "corrupt_image", f"{record.image_path}: {error}", prov)
    height, width = image.shape[:2]
    info = record.image_info
    if info is not None and info.width and (info.width, info.height) != (width, height):
        return _drop(
            record.record_id,
            "image_size_mismatch",
            f"{record.image_path} is {width}x{height}, the release says {info.width}x{info.height}",
            prov,
        )
    try:
        raw = rasterize(record.polygons, width, height)
    except (TypeError, ValueError, IndexError) as error:
        return _drop(record.record_id, "bad_polygon", f"task {record.task_id}: {error}", prov)
    raw_fraction = float(np.count_nonzero(raw)) / raw.size
    if raw_fraction == 0.0:
        return _drop(record.record_id, "empty_mask", f"task {record.task_id}: polygons cover no pixel", prov)
    if raw_fraction < settings.min_area_fraction:
        return _drop(
            record.record_id,
            "region_too_small",
            f"task {record.task_id}: {raw_fraction:.4f} < {settings.min_area_fraction}",
            prov,
        )
    if raw_fraction > settings.max_area_fraction:
        return _drop(
            record.record_id,
            "region_too_large",
            f"task {record.task_id}: {raw_fraction:.3f} > {settings.max_area_fraction}",
            prov,
        )
    return LoadedRegion(record, image, dilate(raw, settings.dilation), raw_fraction, raw)
