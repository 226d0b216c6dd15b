"""Region selection with counted reasons, crops, and the proposers (tiny SAM through the loader)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from replacement_fixtures import bad_regions, draw_objects, write_sa1b

from ieiw.pipelines.replacement import sa1b
from ieiw.pipelines.replacement.crops import CropConfig, expand_box, masked_crop, pad_square
from ieiw.pipelines.replacement.proposals import FelzenszwalbProposer
from ieiw.pipelines.replacement.records import Region
from ieiw.pipelines.replacement.sam import SamConfig, SamProposer, load_sam
from ieiw.pipelines.replacement.selection import (
    SelectionConfig,
    border_fraction,
    largest_component_share,
    select_regions,
)


def test_replacement_selection_keeps_objects_and_counts_each_reason(tmp_path):
    root = write_sa1b(str(tmp_path), n_images=1, size=128, broken=False)
    record = next(iter(sa1b.iter_records([root])))
    kept, dropped = select_regions(record.regions, 128, 128, SelectionConfig())
    assert len(kept) == 2
    assert {k.region.region_id for k in kept} == {"100000", "100001"}
    assert dropped == {"touches_border": 1, "region_too_small": 1, "fragmented": 1, "low_predicted_iou": 1}
    assert kept[0].score >= kept[1].score and 0.03 < kept[0].area_fraction < 0.08


def test_replacement_selection_thresholds_are_configurable():
    size = 128
    regions = [
        Region(region_id=name, mask_array=mask, stability_score=0.95)
        for name, mask in bad_regions(size).items()
    ]
    lenient = SelectionConfig(min_area_fraction=0.0001, max_border_fraction=1.0, min_largest_component=0.4)
    kept, dropped = select_regions(regions, size, size, lenient)
    assert {k.region.region_id for k in kept} == {"touches_border"}
    assert dropped == {"region_too_thin": 2}  # the 2x2 speck and the 10-pixel-high pair of blocks
    strict = SelectionConfig(min_stability=0.99)
    assert select_regions(regions, size, size, strict)[1] == {"low_stability": 3}
    assert select_regions([Region(region_id="none")], size, size, strict)[1] == {"bad_mask": 1}


def test_replacement_region_measures():
    mask = np.zeros((10, 10), bool)
    mask[0, :] = True
    assert border_fraction(mask) == pytest.approx(10 / 36)
    mask[5:8, 5:8] = True
    assert largest_component_share(mask) == pytest.approx(10 / 19)


def test_replacement_masked_crop_fades_context_and_pads_square():
    image, masks = draw_objects(0, 128, 0)
    ys, xs = np.nonzero(masks[0])
    bbox = (int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1))
    crop = masked_crop(image, masks[0], bbox, CropConfig(context=0.25, background_fade=1.0))
    x0, y0, x1, y1 = expand_box(bbox, 0.25, 128, 128)
    assert crop.image.shape == (y1 - y0, x1 - x0, 3) and crop.mask.sum() == masks[0].sum()
    assert (crop.image[~crop.mask] == 127).all()
    np.testing.assert_array_equal(crop.image[crop.mask], image[y0:y1, x0:x1][crop.mask])
    square = pad_square(crop.image[:, :10])
    assert square.shape[0] == square.shape[1] == crop.image.shape[0]


def test_replacement_felzenszwalb_proposes_the_drawn_objects():
    image, masks = draw_objects(1, 128, 0)
    regions = FelzenszwalbProposer(scale=300, min_size=50).propose(image)
    kept, _ = select_regions(regions, 128, 128, SelectionConfig())
    best = [max(((k.mask & m).sum() / (k.mask | m).sum()) for k in kept) for m in masks]
    assert min(best) > 0.6


def test_replacement_tiny_sam_loads_through_the_production_loader(sam_config):
    proposer = SamProposer(sam_config)
    reference = torch.load(sam_config.checkpoint, weights_only=True)
    loaded = proposer.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in reference.items())
    image, _ = draw_objects(0, 256, 0)
    regions = proposer.propose(image[:200])
    assert regions and all(r.mask_array.shape == (200, 256) for r in regions)
    assert all(r.predicted_iou is not None and r.stability_score is not None for r in regions)
    assert len(proposer.generator.point_grids[0]) == 4 * 4 and proposer.generator.pred_iou_thresh == 0.0


def test_replacement_sam_defaults_and_clear_errors(tmp_path, sam_config):
    defaults = SamConfig()
    assert (defaults.points_per_side, defaults.pred_iou_thresh, defaults.stability_score_thresh) == (
        32,
        0.88,
        0.95,
    )
    with pytest.raises(ValueError, match="checkpoint is required"):
        load_sam(SamConfig())
    with pytest.raises(FileNotFoundError):
        load_sam(SamConfig(checkpoint=str(tmp_path / "absent.pth")))
    with pytest.raises(ValueError, match="architecture"):
        load_sam(SamConfig(checkpoint=sam_config.checkpoint, model_type="custom"))


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_replacement_sam_loader_refuses_pickled_objects(tmp_path, sam_config):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"weights": _Payload()}, handle)
    with pytest.raises(pickle.UnpicklingError):
        load_sam(sam_config.model_copy(update={"checkpoint": str(path)}))
