"""Keypoint readers: COCO-format files (COCO, CrowdPose, AI Challenger) and MPII's JSON conversion.

COCO-format files are read through pycocotools (``person_keypoints_{split}.json``: per person
``keypoints`` as x, y, v triples, ``num_keypoints``, ``bbox``, ``iscrowd``; the category carries
the joint names and the skeleton). MPII's JSON (a list of people with ``image``, ``center``,
``scale``, ``joints``, ``joints_vis``) is streamed with ijson.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import Any

import ijson
from pycocotools.coco import COCO

from ieiw.pipelines.multitask.records import KeypointRecord, drop
from ieiw.storage.schema import Drop

COCO_JOINTS: tuple[str, ...] = (  # the 17 joints of COCO's ``person`` category, in file order
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
MPII_JOINTS: tuple[str, ...] = (
    "r_ankle",
    "r_knee",
    "r_hip",
    "l_hip",
    "l_knee",
    "l_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "r_wrist",
    "r_elbow",
    "r_shoulder",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
)
MPII_PERSON_SCALE = 200.0  # MPII's ``scale`` is the person's height in units of 200 px
BOX_AREA_SHARE = 0.53  # a person covers about this share of their box, when the file gives no area

_SIDES = {"l": "left", "r": "right"}


def joint_phrase(name: str) -> str:
    """A joint name as words: ``left_shoulder`` or ``l_shoulder`` -> ``left shoulder``."""
    words = name.replace("-", "_").replace(" ", "_").lower().split("_")
    words = [w for w in words if w]
    if words and words[0] in _SIDES:
        words[0] = _SIDES[words[0]]
    return " ".join(words)


def canonical_joint(name: str) -> str:
    """A joint name normalised across datasets (``l_shoulder`` -> ``left_shoulder``)."""
    return joint_phrase(name).replace(" ", "_")


def load_coco(path: str) -> COCO:
    """Open a COCO-format annotation file through pycocotools, without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def iter_coco_keypoints(
    annotation_path: str, image_dir: str, dataset: str = "coco", include_occluded: bool = False
) -> Iterator[KeypointRecord | Drop]:
    """One record per annotated person; crowds, people without labelled joints and impossible joints are
    counted drops."""
    coco = load_coco(annotation_path)
    stem = os.path.splitext(os.path.basename(annotation_path))[0]
    for ann_id in sorted(coco.anns):
        yield _coco_person(coco, coco.anns[ann_id], dataset, stem, image_dir, include_occluded)


def _coco_person(
    coco: COCO, ann: dict[str, Any], dataset: str, stem: str, image_dir: str, include_occluded: bool
) -> KeypointRecord | Drop:
    record_id = f"{dataset}:{stem}:{ann.get('id')}"
    category = coco.cats.get(ann.get("category_id"), {})
    names = category.get("keypoints") or []
    if not names:
        return drop(
            dataset, record_id, "no_keypoint_category", f"category {ann.get('category_id')} names no joints"
        )
    image = coco.imgs.get(ann.get("image_id"))
    if image is None:
        return drop(dataset, record_id, "missing_image_entry", f"image {ann.get('image_id')} not in {stem}")
    values = ann.get("keypoints") or []
    if len(values) != 3 * len(names):
        return drop(
            dataset, record_id, "bad_annotation", f"{len(values)} keypoint values for {len(names)} joints"
        )
    if ann.get("iscrowd"):
        return drop(dataset, record_id, "crowd_annotation", "iscrowd=1 has no single person")
    joints = [(float(values[i]), float(values[i + 1]), int(values[i + 2])) for i in range(0, len(values), 3)]
    wanted = 1 if include_occluded else 2
    if not any(v >= wanted for _, _, v in joints) or ann.get("num_keypoints", 1) == 0:
        return drop(dataset, record_id, "no_visible_keypoints", "no joint labelled visible")
    width, height = int(image.get("width", 0)), int(image.get("height", 0))
    if width > 0 and height > 0:
        outside = [
            names[i]
            for i, (x, y, v) in enumerate(joints)
            if v > 0 and not (0 <= x < width and 0 <= y < height)
        ]
        if outside:
            return drop(
                dataset,
                record_id,
                "keypoint_outside_image",
                f"{', '.join(outside)} outside the {width}x{height} image",
            )
    box = ann.get("bbox") or []
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        return drop(dataset, record_id, "bad_box", f"bbox {box}")
    return KeypointRecord(
        record_id=record_id,
        dataset=dataset,
        image_id=str(ann["image_id"]),
        person_id=str(ann.get("id")),
        image_path=os.path.join(image_dir, str(image.get("file_name", f"{ann['image_id']}.jpg"))),
        joint_names=[str(n) for n in names],
        joints=joints,
        box=tuple(float(b) for b in box),
        area=float(ann["area"]) if ann.get("area") else None,
        image_size=(width, height) if width > 0 and height > 0 else None,
    )


def iter_mpii(annotation_path: str, image_dir: str, dataset: str = "mpii") -> Iterator[KeypointRecord | Drop]:
    """Stream MPII's JSON conversion; the person box is the square of side ``scale * 200`` at ``center``."""
    stem = os.path.splitext(os.path.basename(annotation_path))[0]
    index = 0
    with open(annotation_path, "rb") as handle:
        items = ijson.items(handle, "item", use_float=True)
        while True:
            try:
                person = next(items)
            except StopIteration:
                return
            except ijson.JSONError as error:
                yield drop(
                    dataset,
                    f"{dataset}:{stem}:@{index}",
                    "annotation_file_truncated",
                    f"{annotation_path}: malformed JSON after {index} people: {error}",
                )
                return
            yield _mpii_person(person, dataset, f"{dataset}:{stem}:{index}", image_dir)
            index += 1


def _mpii_person(person: Any, dataset: str, record_id: str, image_dir: str) -> KeypointRecord | Drop:
    if not isinstance(person, dict):
        return drop(dataset, record_id, "bad_annotation", "entry is not an object")
    missing = [k for k in ("image", "center", "scale", "joints", "joints_vis") if k not in person]
    if missing:
        return drop(dataset, record_id, "bad_annotation", f"lacks {', '.join(missing)}")
    joints_xy, visible = person["joints"], person["joints_vis"]
    if len(joints_xy) != len(MPII_JOINTS) or len(visible) != len(MPII_JOINTS):
        return drop(
            dataset, record_id, "bad_annotation", f"{len(joints_xy)} joints, expected {len(MPII_JOINTS)}"
        )
    joints = []
    for (x, y), v in zip(joints_xy, visible, strict=True):
        seen = int(v) > 0 and x >= 0 and y >= 0
        joints.append((float(x), float(y), 2 if seen else 0))
    if not any(v for *_, v in joints):
        return drop(dataset, record_id, "no_visible_keypoints", "no joint visible")
    cx, cy = (float(c) for c in person["center"])
    side = float(person["scale"]) * MPII_PERSON_SCALE
    if side <= 0:
        return drop(dataset, record_id, "bad_box", f"scale {person['scale']}")
    image_name = str(person["image"])
    return KeypointRecord(
        record_id=record_id,
        dataset=dataset,
        image_id=os.path.splitext(image_name)[0],
        person_id=record_id.rsplit(":", 1)[-1],
        image_path=os.path.join(image_dir, image_name),
        joint_names=list(MPII_JOINTS),
        joints=joints,
        box=(cx - side / 2, cy - side / 2, side, side),
    )
