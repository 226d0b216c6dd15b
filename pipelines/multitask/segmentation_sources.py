"""Segmentation readers: COCO-Stuff label maps, RefCOCO/+/g, gRefCOCO and PhraseCut-format polygons.

- COCO-Stuff: ``images/{split}/*.jpg`` beside ``annotations/{split}/*.png`` (pixel = class id,
  255 unlabelled) and a labels file mapping ids to names.
- RefCOCO, RefCOCO+, RefCOCOg: ``refs(unc).p``/``refs(google).p`` (a Python pickle, read with an
  unpickler that admits no global) beside ``instances.json`` (COCO polygons or RLE).
- gRefCOCO: ``grefs(unc).json``, where one expression refers to several objects or to none.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import ijson

from ieiw.pipelines.multitask.records import ReferringRecord, SemanticRecord, drop
from ieiw.pipelines.multitask.safe_pickle import load_plain_pickle_file
from ieiw.pipelines.sources.phrasecut import iter_records as iter_phrasecut_records
from ieiw.storage.schema import Drop

IGNORE_LABEL = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LABEL_LINE = re.compile(r"^\s*(\d+)\s*[:\t ]\s*(.+?)\s*$")
_UNLABELLED = {"unlabeled", "unlabelled", "background", "other"}


def read_label_names(path: str, offset: int = 0) -> dict[int, str]:
    """``<id>: <name>`` (or ``<id> <name>``) lines -> {pixel value: name}; unlabelled ids left out."""
    names: dict[int, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            match = _LABEL_LINE.match(line)
            if match is None:
                raise ValueError(f"{path}:{number}: expected '<id>: <name>', got {line.strip()!r}")
            label, name = int(match.group(1)) - offset, match.group(2).strip()
            if name.lower() not in _UNLABELLED and label != IGNORE_LABEL:
                names[label] = name.replace("-merged", "").replace("-other", "").replace("-", " ")
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def iter_coco_stuff(
    root: str, split: str, labels: str, dataset: str = "cocostuff", label_offset: int = 0
) -> Iterator[SemanticRecord | Drop]:
    """One record per image; an image without a label map is a counted drop."""
    names = read_label_names(labels, label_offset)
    image_dir = os.path.join(root, "images", split)
    label_dir = os.path.join(root, "annotations", split)
    files = sorted(e.name for e in os.scandir(image_dir) if e.name.lower().endswith(IMAGE_SUFFIXES))
    for name in files:
        stem = os.path.splitext(name)[0]
        record_id = f"{dataset}:{split}:{stem}"
        label_path = os.path.join(label_dir, f"{stem}.png")
        if not os.path.exists(label_path):
            yield drop(dataset, record_id, "missing_label_map", label_path)
            continue
        yield SemanticRecord(
            record_id=record_id,
            dataset=dataset,
            image_id=stem,
            image_path=os.path.join(image_dir, name),
            label_path=label_path,
            names=names,
        )


class CocoInstances:
    """The parts of an ``instances.json`` the referring readers need: images, annotations, categories.

    Held in memory: the refer datasets' own ``instances.json`` files are tens of megabytes.
    """

    def __init__(self, path: str) -> None:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        self.images = {img["id"]: img for img in data.get("images", [])}
        self.annotations = {ann["id"]: ann for ann in data.get("annotations", [])}
        self.categories = {cat["id"]: cat.get("name", str(cat["id"])) for cat in data.get("categories", [])}


def _sentences(ref: dict[str, Any]) -> list[str]:
    out = []
    for sentence in ref.get("sentences") or []:
        text = sentence.get("sent") or sentence.get("raw") if isinstance(sentence, dict) else sentence
        text = " ".join(str(text or "").split())
        if text:
            out.append(text)
    return out


def iter_refcoco(
    refs_path: str, instances_path: str, image_dir: str, dataset: str = "refcoco", split: str | None = None
) -> Iterator[ReferringRecord | Drop]:
    """One record per referring expression set (``ref``) of ``refs(...).p``, optionally of one split."""
    refs = load_plain_pickle_file(refs_path)
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    instances = CocoInstances(instances_path)
    for index, ref in enumerate(refs):
        if split is not None and isinstance(ref, dict) and ref.get("split") != split:
            continue
        yield _referring(ref, index, instances, image_dir, dataset, multi=False)


def iter_grefcoco(
    refs_path: str, instances_path: str, image_dir: str, dataset: str = "grefcoco", split: str | None = None
) -> Iterator[ReferringRecord | Drop]:
    """Stream ``grefs(unc).json``; an expression with no object (``no_target``, ann id -1) is kept."""
    instances = CocoInstances(instances_path)
    with open(refs_path, "rb") as handle:
        for index, ref in enumerate(ijson.items(handle, "item", use_float=True)):
            if split is not None and isinstance(ref, dict) and ref.get("split") != split:
                continue
            yield _referring(ref, index, instances, image_dir, dataset, multi=True)


def _referring(
    ref: Any, index: int, instances: CocoInstances, image_dir: str, dataset: str, multi: bool
) -> ReferringRecord | Drop:
    if not isinstance(ref, dict) or "image_id" not in ref:
        return drop(dataset, f"{dataset}:#{index}", "bad_annotation", f"ref {index} is not a ref object")
    ref_id = str(ref.get("ref_id", f"#{index}"))
    record_id = f"{dataset}:{ref_id}"
    sentences = _sentences(ref)
    if not sentences:
        return drop(dataset, record_id, "empty_phrase", f"ref {ref_id} has no sentence")
    image = instances.images.get(ref["image_id"])
    if image is None:
        return drop(
            dataset, record_id, "missing_image_entry", f"image {ref['image_id']} not in instances.json"
        )
    ann_ids = ref.get("ann_id")
    ann_ids = ann_ids if isinstance(ann_ids, list) else [ann_ids]
    ann_ids = [a for a in ann_ids if a is not None and int(a) >= 0]
    if ref.get("no_target"):
        ann_ids = []
    if not ann_ids and not multi:
        return drop(dataset, record_id, "bad_annotation", f"ref {ref_id} names no object")
    segmentations, categories = [], []
    for ann_id in ann_ids:
        ann = instances.annotations.get(int(ann_id))
        if ann is None or not ann.get("segmentation"):
            return drop(
                dataset, record_id, "missing_annotation", f"annotation {ann_id} absent or without mask"
            )
        segmentations.append(ann["segmentation"])
        categories.append(instances.categories.get(ann.get("category_id"), ""))
    return ReferringRecord(
        record_id=record_id,
        dataset=dataset,
        image_id=str(ref["image_id"]),
        ref_id=ref_id,
        image_path=os.path.join(image_dir, str(image.get("file_name", f"{ref['image_id']}.jpg"))),
        sentences=sentences,
        segmentations=segmentations,
        image_size=(int(image["width"]), int(image["height"]))
        if "width" in image and "height" in image
        else None,
        category=", ".join(sorted({c for c in categories if c})) or None,
        no_target=not ann_ids,
    )


def iter_phrasecut_referring(
    annotation_path: str, image_dir: str, dataset: str = "phrasecut"
) -> Iterator[ReferringRecord | Drop]:
    """PhraseCut-format tasks (the demo's polygons too) as referring-segmentation records."""
    for item in iter_phrasecut_records(annotation_path, image_dir):
        if isinstance(item, Drop):
            yield item
            continue
        yield ReferringRecord(
            record_id=f"{dataset}:seg:{item.task_id}",
            dataset=dataset,
            image_id=item.image_id,
            ref_id=item.task_id,
            image_path=item.image_path,
            sentences=[item.phrase] if item.phrase else [],
            polygons=item.polygons,
        )
