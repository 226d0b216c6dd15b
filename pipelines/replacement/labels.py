"""Class names for regions that come without one (SA-1B, SAM): CLIP zero-shot over a vocabulary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from ieiw.pipelines.replacement.openimages import read_class_names
from ieiw.storage.config import input_file

COCO_NAMES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
    "rocket",
    "helmet",
    "flag",
    "lamp",
)


class LabelConfig(BaseModel):
    """The names zero-shot labelling chooses from: a list, an Open Images class CSV, or COCO's."""

    model_config = ConfigDict(extra="forbid")

    vocabulary: list[str] | None = None
    class_descriptions: str | None = input_file(None)
    prompt: str = "a photo of a {}"

    def names(self) -> list[str]:
        if self.vocabulary:
            return [n.lower() for n in self.vocabulary]
        if self.class_descriptions:
            return sorted({n.lower() for n in read_class_names(self.class_descriptions).values()})
        return list(COCO_NAMES)


class ZeroShotLabeler:
    """Names an embedded crop by the nearest prompt embedding; texts are embedded once."""

    source = "clip_zero_shot"

    def __init__(self, embedder, names: Sequence[str], prompt: str = "a photo of a {}") -> None:
        if not names:
            raise ValueError("zero-shot labelling needs a non-empty vocabulary")
        self.names = list(names)
        self.text = embedder.embed_texts([prompt.format(n) for n in self.names])

    def label(self, vectors: np.ndarray) -> list[str]:
        if len(vectors) == 0:
            return []
        return [self.names[i] for i in np.argmax(vectors @ self.text.T, axis=1)]
