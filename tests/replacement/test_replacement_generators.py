"""Generation and captioning backends: tiny Paint-by-Example and BLIP through the production loaders,
and the seamless-clone classical backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from replacement_fixtures import draw_objects
from replacement_tiny_models import BLIP_WORDS

from ieiw.pipelines.inpaint.opencv_backend import OpenCVInpainter
from ieiw.pipelines.replacement.captions import BlipCaptioner, CaptionConfig, class_name_caption
from ieiw.pipelines.replacement.crops import CropConfig, masked_crop
from ieiw.pipelines.replacement.paint_by_example import paint_window
from ieiw.pipelines.replacement.painting import PaintConfig, PaintJob, build_painter
from ieiw.pipelines.replacement.selection import bounding_box


def _job(seed: int = 7, reference_from: tuple[int, int] = (3, 1)) -> PaintJob:
    """A region of one drawn image and, as the reference, object ``reference_from[1]`` of drawing
    ``reference_from[0]``."""
    image, masks = draw_objects(0, 128, 0)
    drawing, which = reference_from
    other, other_masks = draw_objects(drawing, 128, 5)
    reference = masked_crop(
        other, other_masks[which], bounding_box(other_masks[which]), CropConfig(background_fade=0.0)
    )
    return PaintJob(
        image=image,
        mask=masks[0],
        bbox=bounding_box(masks[0]),
        reference=reference.image,
        reference_mask=reference.mask,
        seed=seed,
    )


def test_replacement_seamless_clone_pastes_the_reference_into_the_region():
    job = _job()
    painter = build_painter(PaintConfig(backend="seamless_clone", dilation=4))
    painted = painter.paint([job])[0]
    assert painter.backend == "seamless_clone" and painter.model is None
    assert painted.target.shape == job.image.shape and painted.target.dtype == np.uint8
    changed = painted.mask > 0
    assert changed[job.mask].all()
    np.testing.assert_array_equal(painted.target[~changed], job.image[~changed])
    red = painted.target[job.mask].astype(float).mean(axis=0)
    assert job.image[job.mask].mean(axis=0)[0] > 200 and red[0] < red[1:].max() + 40  # the red disc is gone
    cleared = OpenCVInpainter(radius=5).inpaint([job.image], [painted.mask])[0]
    x, y, w, h = job.bbox
    pasted = np.abs(painted.target[y : y + h, x : x + w].astype(int) - cleared[y : y + h, x : x + w]).mean()
    assert pasted > 5.0  # more than the cleared background: the reference was cloned in


def test_replacement_paint_by_example_loads_and_paints(paint_by_example_dir):
    config = PaintConfig(
        backend="paint_by_example",
        model=str(paint_by_example_dir),
        device="cpu",
        resolution=32,
        steps=2,
        batch_size=2,
    )
    painter = build_painter(config)
    from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder

    saved = PaintByExampleImageEncoder.from_pretrained(str(paint_by_example_dir), subfolder="image_encoder")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(painter.pipe.image_encoder.state_dict()[name], tensor), name
    assert painter.dtype == torch.float32 and painter.backend == "paint_by_example"
    jobs = [_job(seed=1), _job(seed=2), _job(seed=1)]
    painted = painter.paint(jobs)
    assert len(painted) == 3
    for job, result in zip(jobs, painted):
        edit = result.mask > 0
        assert result.target.shape == job.image.shape and edit[job.mask].all()
        np.testing.assert_array_equal(result.target[~edit], job.image[~edit])
        assert np.abs(result.target[edit].astype(int) - job.image[edit]).mean() > 1.0
    np.testing.assert_array_equal(painted[0].target, painted[2].target)  # same seed, same pixels
    assert not np.array_equal(painted[0].target, painted[1].target)

    # The reference conditions the painting: another reference with the same seed paints other pixels in
    # the region; the same reference again paints the same ones.
    same, other = painter.paint([_job(seed=1), _job(seed=1, reference_from=(4, 0))])
    np.testing.assert_array_equal(same.target, painted[0].target)
    region = painted[0].mask > 0
    assert not np.array_equal(same.target[region], other.target[region])
    assert np.abs(same.target[region].astype(int) - other.target[region]).mean() > 0.5
    np.testing.assert_array_equal(same.target[~region], other.target[~region])


def test_replacement_paint_window_stays_inside_the_image():
    x0, y0, x1, y1 = paint_window((100, 5, 20, 10), 120, 130, 2.0)
    assert 0 <= x0 < x1 <= 130 and 0 <= y0 < y1 <= 120 and x1 - x0 == y1 - y0 == 64
    assert x0 <= 100 and x1 >= 120 and y0 <= 5 and y1 >= 15


def test_replacement_paint_by_example_needs_a_model():
    with pytest.raises(ValueError, match="paint.model"):
        build_painter(PaintConfig(backend="paint_by_example"))


def test_replacement_blip_captions_in_batches(blip_dir):
    captioner = BlipCaptioner(
        CaptionConfig(
            backend="blip", model=str(blip_dir), device="cpu", batch_size=2, max_new_tokens=6, num_beams=1
        )
    )
    images = [draw_objects(i, 64, 0)[0] for i in range(3)]
    captions = captioner.caption(images)
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    words = {w for w in BLIP_WORDS if not w.startswith("[")}  # the vocabulary less its special tokens
    assert set(" ".join(captions).split()) <= words
    assert captioner.caption(images[:1]) == captions[:1]  # deterministic decoding
    assert class_name_caption("apple") == "a photo with an apple" and class_name_caption(None).endswith(
        "an object"
    )
