"""Replacement pays for SAM and CLIP once: the object database runs them, and the replacement stage
takes each image's regions, masks, labels and vectors from the database instead of running them again.

The stages run for real (Prefect flow runs on threads, tiny SAM and CLIP loaded through the production
loaders);
forward hooks on SAM's image encoder and CLIP's image tower count every image that goes through them.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from replacement_build import run, stages
from replacement_fixtures import bad_regions, draw_objects, rle, write_sa1b

from ieiw.flows.config import RunnerConfig
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.replacement.database import ObjectDatabase
from ieiw.pipelines.replacement.sources import iter_records
from ieiw.storage import manifest
from ieiw.storage.runner import LOADS, forget_models, loaded_models, worker_model
from ieiw.storage.shards import ShardSpec, iter_samples

pytestmark = pytest.mark.usefixtures("prefect_server")


def _config(tmp_path, clip_config, sam_config) -> ReplacementConfig:
    sa1b = write_sa1b(str(tmp_path / "sa1b"), n_images=3, size=128, broken=False)
    photos = tmp_path / "photos"
    write_sa1b(str(photos), n_images=2, size=128, seed=5, broken=False)
    for path in photos.glob("*.json"):
        path.unlink()  # images without masks: SAM proposes their regions
    return ReplacementConfig.model_validate(
        {
            "sources": [
                {"kind": "sa1b", "folders": [sa1b]},
                {"kind": "images", "images": str(photos), "dataset": "photos"},
            ],
            "proposer": {"backend": "sam", "sam": sam_config.model_dump()},
            "selection": {  # lenient: the tiny SAM's regions pass, so proposed regions make pairs too
                "min_predicted_iou": 0.0,
                "min_stability": 0.0,
                "max_area_fraction": 1.0,
                "max_border_fraction": 1.0,
                "min_largest_component": 0.0,
            },
            "embedder": {**clip_config.model_dump(), "batch_size": 64},
            "labels": {"vocabulary": ["cat", "dog", "cup"]},
            "database": {"objects_per_image": 3, "batch_size": 2, "index": {"kind": "flat"}},
            "retrieval": {"similarity_ceiling": 2.0, "min_similarity": -2.0},
            "paint": {"backend": "seamless_clone"},
            "regions_per_image": 2,
            "batch_size": 2,
        }
    )


def _count_images(module, counts: Counter, name: str):
    def hook(_module, inputs, _output):
        counts[f"{name} calls"] += 1
        counts[f"{name} images"] += int(inputs[0].shape[0])

    return module.register_forward_hook(hook)


def test_sam_and_clip_run_once_per_image_across_the_database_and_the_stage(tmp_path, clip_config, sam_config):
    forget_models()
    config = _config(tmp_path, clip_config, sam_config)
    images = [r for r in iter_records(config) if not hasattr(r, "reason")]
    proposed = [r for r in images if r.regions is None]
    assert len(images) == 5 and len(proposed) == 2
    # the models the stages will load, loaded first through the workers' cache, with counters on them
    output = str(tmp_path / "build")
    specs = stages(config, output)[0].models()
    counts: Counter = Counter()
    clip = worker_model(specs["embedder"])
    hooks = [
        _count_images(clip.model.visual, counts, "clip"),
        _count_images(worker_model(specs["proposer"]).model.image_encoder, counts, "sam"),
    ]
    embed_images = clip.embed_images

    def counted(crops, *args, **kwargs):  # the crops asked for (a forward pass pads to its batch size)
        counts["clip crops"] += len(crops)
        return embed_images(crops, *args, **kwargs)

    clip.embed_images = counted
    try:
        summary = run(config, output, ShardSpec(max_samples=50), RunnerConfig(max_workers=2))["replacement"]
    finally:
        for hook in hooks:
            hook.remove()
        del clip.embed_images

    database = ObjectDatabase(f"{output}/object_database")
    stored = Counter((database.row(r)["dataset"], database.row(r)["image_id"]) for r in range(len(database)))
    assert summary.kept > 0 and len(stored) == 5  # every image kept a region; pairs were made
    # SAM: once per image without masks. CLIP: once per image (all its crops in one call), each
    # stored region embedded exactly once: none of it again for the pairs
    assert counts["sam calls"] == counts["sam images"] == len(proposed)
    assert counts["clip calls"] == len(images) and counts["clip images"] == len(images) * clip.batch_size
    assert counts["clip crops"] == len(database) == sum(stored.values())

    # the stage's samples carry the database's regions: its masks, labels and the query vectors
    samples = list(iter_samples(f"{output}/replacement"))
    assert len(samples) == summary.kept
    for sample in samples:
        meta = sample.meta
        rows = database.image_rows(meta.provenance.dataset, meta.provenance.image_id)
        row = next(database.row(r) for r in rows if database.row(r)["region_id"] == meta.provenance.region_id)
        assert meta.extra["source_object"] in (row["label"], "object")
        assert meta.extra["bbox"] == list(row["bbox"])
        assert meta.extra["object_id"] == row["object_id"]
    by_image = Counter((s.meta.provenance.dataset, s.meta.provenance.image_id) for s in samples)
    assert max(by_image.values()) <= config.regions_per_image
    # every model loaded once, and the replacement stage loaded neither CLIP nor SAM again (nor another
    # copy): only the database's batches use them
    assert all(count == 1 for count in LOADS.values()), LOADS
    assert {"clip", "proposer", "painter", "objects"} <= {key.split(":", 1)[0] for key, _ in loaded_models()}
    assert len(loaded_models("clip")) == 1 and len(loaded_models("proposer")) == 1


def _write_image_without_objects(folder, image_id: int = 1999, size: int = 128) -> None:
    """An SA-1B image whose annotations are only regions the default selection rejects."""
    image, _ = draw_objects(7, size, 0)
    Image.fromarray(image).save(folder / f"sa_{image_id}.jpg", quality=95)
    annotations = []
    for number, mask in enumerate(bad_regions(size).values()):
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
        annotations.append(
            {
                "id": number,
                "segmentation": rle(mask),
                "bbox": box,
                "predicted_iou": 0.95,
                "stability_score": 0.97,
            }
        )
    info = {"image_id": image_id, "width": size, "height": size, "file_name": f"sa_{image_id}.jpg"}
    (folder / f"sa_{image_id}.json").write_text(json.dumps({"image": info, "annotations": annotations}))


def test_an_image_without_stored_regions_says_what_selection_rejected(tmp_path, clip_config):
    """The database records every image it read with its rejected regions by reason, so the stage's drop
    of an image without a stored region names them, without running selection (or SAM) again."""
    forget_models()
    folder = tmp_path / "sa1b"
    write_sa1b(str(folder), n_images=2, size=128, broken=False)
    _write_image_without_objects(folder)
    config = ReplacementConfig.model_validate(
        {
            "sources": [{"kind": "sa1b", "folders": [str(folder)]}],
            "embedder": clip_config.model_dump(),
            "labels": {"vocabulary": ["cat", "dog", "cup"]},
            "database": {"index": {"kind": "flat"}},
            "retrieval": {"similarity_ceiling": 2.0, "min_similarity": -2.0},
        }
    )
    counts: Counter = Counter()
    output = str(tmp_path / "build")
    embedder = worker_model(stages(config, output)[0].models()["embedder"])
    hook = _count_images(embedder.model.visual, counts, "clip")
    try:
        summaries = run(config, output, ShardSpec(), RunnerConfig(max_workers=1, retries=0))
    finally:
        hook.remove()
    summary = summaries["replacement"]
    assert counts["clip calls"] == 2  # the two images with objects, in the database build only
    rejected = {"fragmented": 1, "region_too_small": 1, "touches_border": 1}
    database = ObjectDatabase(f"{output}/object_database")
    assert database.image_rows("sa1b", "1999") == [] and database.regions_dropped("sa1b", "1999") == rejected
    assert database.regions_dropped("sa1b", "1000") == {**rejected, "low_predicted_iou": 1}
    assert database.regions_dropped("sa1b", "no-such-image") is None
    assert summary.dropped == {"no_semantic_region": 1} and summary.kept == 2
    assert summaries["object_database"].counts == {
        "images": 3,
        "objects": 4,  # two per image with objects, none of the third
        "fragmented": 3,
        "region_too_small": 3,
        "touches_border": 3,
        "low_predicted_iou": 2,
    }
    frame = manifest.read_manifest(f"{output}/replacement")
    drop = frame[~frame["kept"]].iloc[0]
    assert drop["drop_reason"] == "no_semantic_region" and drop["image_id"] == "1999"
    assert drop["drop_detail"] == "fragmented: 1, region_too_small: 1, touches_border: 1"
    samples = list(iter_samples(f"{output}/replacement"))
    assert {s.meta.provenance.image_id: s.meta.extra["regions_dropped"] for s in samples} == {
        "1000": {**rejected, "low_predicted_iou": 1},
        "1001": {**rejected, "low_predicted_iou": 1},
    }
