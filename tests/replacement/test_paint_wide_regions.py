"""Paint-by-Example and regions wider than its square window (the image's short side): letterboxed into a
window spanning the whole edit, or dropped as ``region_wider_than_window``; never half-replaced.

The tiny Paint-by-Example pipeline (the real diffusers classes, saved with ``save_pretrained``) paints
through the production loader; regions that fit the square window paint as they always did.
"""

from __future__ import annotations

import numpy as np
import pytest

from ieiw.pipelines.replacement.paint_by_example import PaintByExamplePainter, paint_window
from ieiw.pipelines.replacement.painting import PaintConfig, Painted, PaintJob, Refused, dilate
from ieiw.pipelines.replacement.pairs import _paint_all
from ieiw.pipelines.replacement.stage import ReplacementStage
from ieiw.storage.config import WorkerEnv


def _job(height: int, width: int, box: tuple[int, int, int, int], seed: int = 0) -> PaintJob:
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 200, (height, width, 3), dtype=np.uint8)
    x, y, w, h = box
    mask = np.zeros((height, width), bool)
    mask[y : y + h, x : x + w] = True
    reference = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    return PaintJob(image, mask, box, reference, np.ones((24, 24), bool), seed)


def _painter(paint_by_example_dir, **settings) -> PaintByExamplePainter:
    config = {
        "backend": "paint_by_example",
        "model": str(paint_by_example_dir),
        "device": "cpu",
        "resolution": 32,
        "steps": 2,
        "dilation": 2,
        "batch_size": 4,
    }
    return PaintByExamplePainter(PaintConfig(**{**config, **settings}))


WIDE = _job(64, 192, (16, 20, 160, 24))  # a 160 px wide object in a 64 px tall image
FITS = _job(64, 192, (80, 20, 30, 24), seed=1)


def test_a_wide_region_is_letterboxed_and_replaced_whole(paint_by_example_dir):
    painter = _painter(paint_by_example_dir)
    x0, _, x1, _ = paint_window(WIDE.bbox, 64, 192, painter.config.window_scale)
    assert x1 - x0 == 64  # the square window is capped at the short side: the old edit stopped there
    painted, fits = painter.paint([WIDE, FITS])
    assert isinstance(painted, Painted)
    expected = dilate(np.pad(np.ones((24, 160), bool), ((20, 20), (16, 16))), 2)  # the box, dilated
    assert np.array_equal(painted.mask > 0, expected)  # the whole edit, not a 64 px slice of it
    changed = np.abs(painted.target.astype(int) - WIDE.image.astype(int)).max(axis=2) > 0
    assert changed[:, :40].any() and changed[:, 150:].any()  # both ends of the object were repainted
    assert not changed[~expected].any()  # nothing outside the edit
    # a region that fits is painted in its square window as before, whatever the wide setting
    dropper = _painter(paint_by_example_dir, wide_regions="drop")
    assert np.array_equal(dropper.paint([FITS])[0].target, fits.target)


def test_a_wide_region_is_dropped_with_its_own_reason(paint_by_example_dir):
    painter = _painter(paint_by_example_dir, wide_regions="drop")
    results = _paint_all(painter, [FITS, WIDE, FITS])
    assert isinstance(results[0], Painted) and isinstance(results[2], Painted)
    refused = results[1]
    assert isinstance(refused, Refused) and refused.reason == "region_wider_than_window"
    assert "164x28" in refused.detail and "64px square" in refused.detail


def test_the_wide_setting_shapes_the_pairs(tmp_path):
    from ieiw.pipelines.replacement.config import ReplacementConfig

    base = {"sources": [{"kind": "sa1b", "folders": ["/nowhere"]}]}

    def fingerprint(paint: dict):
        config = ReplacementConfig.model_validate({**base, "paint": paint})
        return ReplacementStage(config, str(tmp_path / "pairs"), str(tmp_path / "db")).fingerprint(
            WorkerEnv()
        )

    pbe = {"backend": "paint_by_example", "model": str(tmp_path)}
    letterbox = fingerprint(pbe)
    assert letterbox.settings["paint"]["wide_regions"] == "letterbox"
    assert fingerprint({**pbe, "wide_regions": "drop"}).changes(letterbox) == [
        'replacement.paint.wide_regions: "letterbox" -> "drop"'
    ]
    with pytest.raises(ValueError, match="objects_per_image"):
        ReplacementConfig.model_validate({**base, "regions_per_image": 9})
