"""The multi-task part of the demo, on the bundled scikit-image photos.

Keypoints from hand-annotated joints of the astronaut photo (COCO format, ``demo_data``),
segmentation from the demo's own PhraseCut polygons, enhancement from synthetic degradations.
The photos are written by :func:`ieiw.pipelines.sources.demo.materialize_demo_images`.
"""

from __future__ import annotations

from importlib import resources

from ieiw.pipelines.multitask.config import (
    CocoKeypointSource,
    EnhancementConfig,
    KeypointConfig,
    MultitaskConfig,
    PhraseCutSegmentationSource,
    SegmentationConfig,
    SyntheticSource,
)
from ieiw.pipelines.sources.demo import DEMO_LICENSE, demo_annotation_path


def astronaut_keypoints_path() -> str:
    """The COCO-format keypoint file of the astronaut photo (demo image id 1, ``1.jpg``)."""
    return str(resources.files("ieiw.pipelines.multitask").joinpath("demo_data", "astronaut_keypoints.json"))


def demo_multitask_config(
    images_dir: str, resolution: int = 256, phrasecut_annotations: str | None = None
) -> MultitaskConfig:
    """A few samples of each task on the demo photos in ``images_dir`` (``<image_id>.jpg``)."""
    return MultitaskConfig(
        resolution=resolution,
        batch_size=8,
        keypoints=KeypointConfig(
            sources=[
                CocoKeypointSource(
                    dataset="demo_keypoints",
                    license=DEMO_LICENSE,
                    annotations=astronaut_keypoints_path(),
                    images=images_dir,
                )
            ],
            per_person=4,
        ),
        segmentation=SegmentationConfig(
            sources=[
                PhraseCutSegmentationSource(
                    dataset="demo_phrasecut",
                    license=DEMO_LICENSE,
                    annotations=phrasecut_annotations or demo_annotation_path(),
                    images=images_dir,
                )
            ]
        ),
        enhancement=EnhancementConfig(
            patch="resize",
            sources=[
                SyntheticSource(
                    dataset="demo_synthetic", license=DEMO_LICENSE, images=images_dir, per_image=2
                )
            ],
        ),
    )
