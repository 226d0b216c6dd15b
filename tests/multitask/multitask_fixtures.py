"""Small datasets in the real on-disk formats the multi-task readers take."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ieiw.pipelines.multitask.keypoint_sources import COCO_JOINTS as COCO_JOINT_ORDER

COCO_JOINTS = list(COCO_JOINT_ORDER)  # as a file's ``keypoints`` list holds them
COCO_SKELETON = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
]
# A standing person in a unit box (x right, y down): relative joint positions.
BODY = {
    "nose": (0.5, 0.08),
    "left_eye": (0.55, 0.06),
    "right_eye": (0.45, 0.06),
    "left_ear": (0.6, 0.08),
    "right_ear": (0.4, 0.08),
    "left_shoulder": (0.75, 0.22),
    "right_shoulder": (0.25, 0.22),
    "left_elbow": (0.85, 0.4),
    "right_elbow": (0.15, 0.4),
    "left_wrist": (0.9, 0.55),
    "right_wrist": (0.1, 0.55),
    "left_hip": (0.65, 0.55),
    "right_hip": (0.35, 0.55),
    "left_knee": (0.65, 0.75),
    "right_knee": (0.35, 0.75),
    "left_ankle": (0.65, 0.95),
    "right_ankle": (0.35, 0.95),
}


def textured(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like image: smooth colour gradients plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([90 + 60 * np.sin(xx / 23 + c) + 40 * np.cos(yy / 17 - c) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def save(image: np.ndarray, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, quality=95) if path.endswith(".jpg") else Image.fromarray(image).save(
        path
    )
    return path


def person_keypoints(box: tuple[float, float, float, float], hidden: tuple[str, ...] = ()) -> list[float]:
    x, y, w, h = box
    values: list[float] = []
    for name in COCO_JOINTS:
        if name in hidden:
            values += [0, 0, 0]
        else:
            u, v = BODY[name]
            values += [round(x + u * w, 2), round(y + v * h, 2), 2]
    return values


def _person(
    ann_id: int, image_id: int, keypoints: list[float], bbox: list[float], area: float, iscrowd: int = 0
) -> dict:
    """A COCO person annotation; ``num_keypoints`` counts the labelled joints."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": iscrowd,
        "keypoints": keypoints,
        "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
        "bbox": bbox,
        "area": area,
    }


def write_coco_keypoints(root: str, split: str = "val2017", n_images: int = 3) -> tuple[str, str]:
    """``annotations/person_keypoints_{split}.json`` and ``{split}/<id>.jpg``; ann 900+ are bad inputs."""
    image_dir = os.path.join(root, split)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        width, height = 200, 160
        save(textured(width, height, image_id), os.path.join(image_dir, f"{image_id:012d}.jpg"))
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height})
        box = (40.0 + 10 * image_id, 10.0, 70.0, 140.0)
        annotations.append(
            _person(
                100 + image_id,
                image_id,
                person_keypoints(box, hidden=("left_ankle",)),
                list(box),
                0.6 * box[2] * box[3],
            )
        )
    # bad inputs: a crowd, a person without visible joints, a joint outside the image
    annotations.append(_person(901, 1, [0] * 51, [0, 0, 50, 50], 100, iscrowd=1))
    annotations.append(_person(902, 2, [0] * 51, [0, 0, 50, 50], 100))
    outside = person_keypoints((150.0, 20.0, 70.0, 130.0))
    annotations.append(_person(903, 3, outside, [150, 20, 70, 130], 5000))
    doc = {
        "images": images,
        "annotations": annotations,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": COCO_JOINTS,
                "skeleton": COCO_SKELETON,
            }
        ],
    }
    path = os.path.join(root, "annotations", f"person_keypoints_{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(doc, handle)
    return path, image_dir


CROWDPOSE_JOINTS = [
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
    "head",
    "neck",
]


def write_crowdpose(root: str) -> tuple[str, str]:
    """CrowdPose as distributed: COCO format with its own 14 joint names."""
    image_dir = os.path.join(root, "images")
    save(textured(180, 180, 7), os.path.join(image_dir, "100000.jpg"))
    box = (50.0, 20.0, 80.0, 150.0)
    values = []
    for name in CROWDPOSE_JOINTS:
        u, v = BODY.get(name, (0.5, 0.02 if name == "head" else 0.15))
        values += [box[0] + u * box[2], box[1] + v * box[3], 2]
    doc = {
        "images": [{"id": 100000, "file_name": "100000.jpg", "width": 180, "height": 180}],
        "annotations": [
            {
                "id": 1,
                "image_id": 100000,
                "category_id": 1,
                "iscrowd": 0,
                "keypoints": values,
                "num_keypoints": 14,
                "bbox": list(box),
            }
        ],
        "categories": [
            {
                "id": 1,
                "name": "person",
                "keypoints": CROWDPOSE_JOINTS,
                "skeleton": [[13, 14], [14, 1], [14, 2]],
            }
        ],
    }
    path = os.path.join(root, "crowdpose_test.json")
    with open(path, "w") as handle:
        json.dump(doc, handle)
    return path, image_dir


MPII_ORDER = [
    "right_ankle",
    "right_knee",
    "right_hip",
    "left_hip",
    "left_knee",
    "left_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "right_wrist",
    "right_elbow",
    "right_shoulder",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
]


def write_mpii(root: str) -> tuple[str, str]:
    """MPII's JSON conversion; the second person has a joint beyond the image's right edge."""
    image_dir = os.path.join(root, "images")
    save(textured(220, 200, 11), os.path.join(image_dir, "015601864.jpg"))
    people = []
    for cx, shift in ((80.0, 0.0), (150.0, 200.0)):
        joints, visible = [], []
        for name in MPII_ORDER:
            u, v = BODY.get(
                name,
                {
                    "pelvis": (0.5, 0.55),
                    "thorax": (0.5, 0.22),
                    "upper_neck": (0.5, 0.15),
                    "head_top": (0.5, 0.0),
                }.get(name, (0.5, 0.5)),
            )
            joints.append([cx - 40 + 80 * u + (shift if name == "left_wrist" else 0), 20 + 160 * v])
            visible.append(0 if name == "right_ankle" else 1)
        people.append(
            {
                "image": "015601864.jpg",
                "center": [cx, 100.0],
                "scale": 0.9,
                "joints": joints,
                "joints_vis": visible,
            }
        )
    people.append({"image": "015601864.jpg", "center": [1, 1]})  # lacks fields
    path = os.path.join(root, "valid.json")
    with open(path, "w") as handle:
        json.dump(people, handle)
    return path, image_dir


STUFF_LABELS = {
    0: "person",
    1: "bicycle",
    2: "car",
    118: "grass-merged",
    148: "sky-other-merged",
    9: "traffic light",
}


def write_coco_stuff(root: str, split: str = "val2017") -> tuple[str, str]:
    """``images/{split}/*.jpg``, ``annotations/{split}/*.png``, ``labels.txt``; one map has a wrong size."""
    shapes = {
        "000000000001": [(0, (10, 10, 60, 90)), (148, (0, 0, 128, 8)), (118, (70, 60, 128, 96))],
        "000000000002": [(2, (20, 30, 100, 80)), (0, (100, 10, 125, 90))],
        "000000000003": [(1, (30, 20, 90, 70))],
    }
    for stem, regions in shapes.items():
        image = textured(128, 96, int(stem))
        labels = np.full((96, 128), 255, np.uint8)
        for label, (x0, y0, x1, y1) in regions:
            labels[y0:y1, x0:x1] = label
        save(image, os.path.join(root, "images", split, f"{stem}.jpg"))
        size = (64, 48) if stem == "000000000003" else (128, 96)
        Image.fromarray(labels).resize(size, Image.NEAREST).save(
            os.path.join(_mk(root, "annotations", split), f"{stem}.png")
        )
    save(textured(128, 96, 4), os.path.join(root, "images", split, "000000000004.jpg"))  # no label map
    path = os.path.join(root, "labels.txt")
    with open(path, "w") as handle:
        handle.write("0: unlabeled\n" + "".join(f"{k + 1}: {v}\n" for k, v in sorted(STUFF_LABELS.items())))
    return root, path


def _mk(*parts: str) -> str:
    path = os.path.join(*parts)
    os.makedirs(path, exist_ok=True)
    return path


def _instances(root: str) -> tuple[str, str, dict]:
    """``instances.json`` with a polygon, an uncompressed RLE and a compressed RLE object."""
    image_dir = _mk(root, "images", "train2014")
    width, height = 160, 120
    save(textured(width, height, 21), os.path.join(image_dir, "COCO_train2014_000000000021.jpg"))
    polygon = [[20, 20, 70, 20, 70, 90, 20, 90]]
    box_mask = np.zeros((height, width), np.uint8, order="F")
    box_mask[30:100, 90:140] = 1
    compressed = mask_utils.encode(np.asfortranarray(box_mask))
    small = np.zeros((height, width), np.uint8)
    small[5:25, 100:150] = 1
    flat = small.flatten(order="F")
    runs, current, count = [], 0, 0
    for value in flat:
        if value == current:
            count += 1
        else:
            runs.append(count)
            current, count = value, 1
    runs.append(count)
    doc = {
        "images": [
            {"id": 21, "file_name": "COCO_train2014_000000000021.jpg", "width": width, "height": height}
        ],
        "annotations": [
            {"id": 1, "image_id": 21, "category_id": 1, "segmentation": polygon, "bbox": [20, 20, 50, 70]},
            {
                "id": 2,
                "image_id": 21,
                "category_id": 18,
                "bbox": [90, 30, 50, 70],
                "segmentation": {"size": [height, width], "counts": compressed["counts"].decode("ascii")},
            },
            {
                "id": 3,
                "image_id": 21,
                "category_id": 18,
                "bbox": [100, 5, 50, 20],
                "segmentation": {"size": [height, width], "counts": runs},
            },
            {
                "id": 4,
                "image_id": 21,
                "category_id": 1,
                "segmentation": [[5, 5, 6, 5, 6, 6]],
                "bbox": [5, 5, 1, 1],
            },
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    path = os.path.join(root, "instances.json")
    with open(path, "w") as handle:
        json.dump(doc, handle)
    return path, image_dir, doc


def write_refcoco(root: str) -> tuple[str, str, str]:
    """``refs(unc).p`` written by pickle from plain dicts, beside ``instances.json``."""
    instances, image_dir, _ = _instances(root)
    refs = [
        {
            "ref_id": 0,
            "ann_id": 1,
            "image_id": 21,
            "split": "train",
            "category_id": 1,
            "file_name": "COCO_train2014_000000000021_1.jpg",
            "sent_ids": [0, 1],
            "sentences": [
                {"raw": "Man on the LEFT", "sent": "man on the left", "sent_id": 0, "tokens": ["man"]},
                {"raw": "left guy", "sent": "left guy", "sent_id": 1, "tokens": ["left", "guy"]},
            ],
        },
        {
            "ref_id": 1,
            "ann_id": 2,
            "image_id": 21,
            "split": "train",
            "category_id": 18,
            "sent_ids": [2],
            "sentences": [{"raw": "dog on right", "sent": "dog on right", "sent_id": 2, "tokens": ["dog"]}],
        },
        {
            "ref_id": 2,
            "ann_id": 3,
            "image_id": 21,
            "split": "val",
            "category_id": 18,
            "sent_ids": [3],
            "sentences": [{"raw": "top dog", "sent": "top dog", "sent_id": 3, "tokens": ["top", "dog"]}],
        },
        {
            "ref_id": 3,
            "ann_id": 4,
            "image_id": 21,
            "split": "train",
            "category_id": 1,
            "sent_ids": [4],
            "sentences": [{"raw": "a speck", "sent": "a speck", "sent_id": 4, "tokens": ["speck"]}],
        },
        {
            "ref_id": 4,
            "ann_id": 77,
            "image_id": 21,
            "split": "train",
            "category_id": 1,
            "sent_ids": [5],
            "sentences": [{"raw": "ghost", "sent": "ghost", "sent_id": 5, "tokens": ["ghost"]}],
        },
    ]
    path = os.path.join(root, "refs(unc).p")
    with open(path, "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return path, instances, image_dir


def write_grefcoco(root: str) -> tuple[str, str, str]:
    """``grefs(unc).json``: one expression naming two objects, one naming none."""
    instances, image_dir, _ = _instances(root)
    refs = [
        {
            "ref_id": 10,
            "ann_id": [1, 2],
            "image_id": 21,
            "split": "train",
            "category_id": [1, 18],
            "no_target": False,
            "sentences": [{"raw": "man and dog", "sent": "man and dog", "sent_id": 0}],
        },
        {
            "ref_id": 11,
            "ann_id": [-1],
            "image_id": 21,
            "split": "train",
            "category_id": [],
            "no_target": True,
            "sentences": [{"raw": "the cat", "sent": "the cat", "sent_id": 1}],
        },
        {
            "ref_id": 12,
            "ann_id": [3],
            "image_id": 21,
            "split": "val",
            "category_id": [18],
            "no_target": False,
            "sentences": [{"raw": "top dog", "sent": "top dog", "sent_id": 2}],
        },
    ]
    path = os.path.join(root, "grefs(unc).json")
    with open(path, "w") as handle:
        json.dump(refs, handle)
    return path, instances, image_dir


def blurred(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image, (0, 0), 2.0)


def write_pairs(root: str, kind: str) -> str:
    """Two good pairs, one unpaired degraded file and one size-mismatched pair in ``kind``'s layout."""

    def pair(degraded_path: str, clean_path: str, seed: int, size=(96, 80), clean_size=None) -> None:
        clean = textured(*(clean_size or size), seed)
        save(clean, clean_path)
        degraded = textured(*size, seed)
        save(blurred(degraded), degraded_path)

    if kind == "gopro":
        seq = os.path.join(root, "train", "GOPR0372_07_00")
        for i in range(2):
            pair(os.path.join(seq, "blur", f"00004{i}.png"), os.path.join(seq, "sharp", f"00004{i}.png"), i)
        save(textured(96, 80, 9), os.path.join(seq, "blur", "000099.png"))
        pair(
            os.path.join(seq, "blur", "000050.png"),
            os.path.join(seq, "sharp", "000050.png"),
            5,
            clean_size=(90, 80),
        )
    elif kind == "reds":
        for i in range(2):
            pair(
                os.path.join(root, "train_blur", "000", f"0000000{i}.png"),
                os.path.join(root, "train_sharp", "000", f"0000000{i}.png"),
                i,
            )
        save(textured(96, 80, 9), os.path.join(root, "train_blur", "000", "00000099.png"))
        pair(
            os.path.join(root, "train_blur", "001", "00000000.png"),
            os.path.join(root, "train_sharp", "001", "00000000.png"),
            5,
            clean_size=(90, 80),
        )
    elif kind == "sidd":
        scene = os.path.join(root, "Data", "0001_001_S6_00100_00060_3200_L")
        for i in range(2):
            pair(
                os.path.join(scene, f"0001_NOISY_SRGB_01{i}.PNG"),
                os.path.join(scene, f"0001_GT_SRGB_01{i}.PNG"),
                i,
            )
        save(textured(96, 80, 9), os.path.join(scene, "0001_NOISY_SRGB_099.PNG"))
        pair(
            os.path.join(scene, "0001_NOISY_SRGB_050.PNG"),
            os.path.join(scene, "0001_GT_SRGB_050.PNG"),
            5,
            clean_size=(90, 80),
        )
    elif kind == "clwd":
        base = os.path.join(root, "train")
        for i in range(2):
            pair(
                os.path.join(base, "Watermarked_image", f"{i + 1}.jpg"),
                os.path.join(base, "Watermark_free_image", f"{i + 1}.jpg"),
                i,
            )
        save(textured(96, 80, 9), os.path.join(base, "Watermarked_image", "99.jpg"))
        pair(
            os.path.join(base, "Watermarked_image", "50.jpg"),
            os.path.join(base, "Watermark_free_image", "50.jpg"),
            5,
            clean_size=(90, 80),
        )
    else:
        raise ValueError(kind)
    return root


def write_captions(root: str, image_ids: list[int]) -> str:
    """A COCO ``captions_*.json``; the lower annotation id of an image is the one used."""
    annotations = []
    for n, image_id in enumerate(image_ids):
        annotations.append(
            {"id": 1000 + n, "image_id": image_id, "caption": f"a person standing outside {n}."}
        )
        annotations.append({"id": 5000 + n, "image_id": image_id, "caption": "another caption"})
    path = os.path.join(root, "captions_val2017.json")
    os.makedirs(root, exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"images": [{"id": i} for i in image_ids], "annotations": annotations}, handle)
    return path


def write_polygons(root: str) -> tuple[str, str]:
    """PhraseCut-format polygons over two photos; the last task's polygon lies outside the image."""
    image_dir = _mk(root, "images")
    save(textured(128, 128, 31), os.path.join(image_dir, "1.jpg"))
    save(textured(160, 120, 32), os.path.join(image_dir, "2.jpg"))
    tasks = [
        {
            "task_id": "1__0",
            "image_id": 1,
            "phrase": "red square",
            "Polygons": [[[[20, 20], [60, 20], [60, 60], [20, 60]]]],
        },
        {
            "task_id": "2__0",
            "image_id": 2,
            "phrase": "tall post",
            "Polygons": [[[[100, 10], [120, 10], [120, 110], [100, 110]]]],
        },
        {
            "task_id": "2__1",
            "image_id": 2,
            "phrase": "nothing",
            "Polygons": [[[[500, 500], [520, 500], [520, 520]]]],
        },
    ]
    path = os.path.join(root, "refer_demo.json")
    with open(path, "w") as handle:
        json.dump(tasks, handle)
    return path, image_dir
