"""A mixed build's shards load in Hugging Face `datasets` as they are, streaming and not, losing nothing.

`load_dataset("webdataset", ...)` infers its columns from the first five samples of the first shard;
every sample of ours has the same members and a `json` of fixed keys and types, so the removal pairs,
keypoint circles (no region of their own), segmentation overlays (a mask) and enhancement pairs of one
build load together in any order.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image

from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter
from ieiw.pipelines.multitask.demo import demo_multitask_config
from ieiw.pipelines.multitask.stage import iter_multitask_records, multitask_stage
from ieiw.pipelines.removal import RemovalSettings, removal_stage
from ieiw.pipelines.sources.demo import materialize_demo_images
from ieiw.pipelines.sources.phrasecut import iter_records
from ieiw.storage import manifest
from ieiw.storage.commit import commit_batch
from ieiw.storage.schema import Sample
from ieiw.storage.shards import ShardSpec, iter_samples

EXPECTED_COLUMNS = {"__key__", "__url__", "src.png", "tgt.png", "mask.png", "json"}


@pytest.fixture(scope="module")
def mixed_build(tmp_path_factory):
    from phrasecut_fixture import write_phrasecut

    root = tmp_path_factory.mktemp("mixed")
    annotations, images = write_phrasecut(str(root / "phrasecut"), n_images=2, size=96)
    removal = removal_stage(
        list(iter_records(annotations, images)), build_inpainter(InpaintConfig()), RemovalSettings()
    )
    commit_batch(removal, str(root / "removal"), "removal-0", ShardSpec(max_samples=3))
    demo = str(root / "demo-images")
    materialize_demo_images(demo)
    config = demo_multitask_config(demo, resolution=64)
    multitask = [
        r for record in iter_multitask_records(config) for r in multitask_stage([record], config, {})
    ]
    # keypoint samples first: the first shard's first samples are ones with no region of their own
    multitask.sort(key=lambda r: str(getattr(getattr(r, "meta", None), "task", "")) != "keypoint")
    commit_batch(multitask, str(root / "multitask"), "multitask-0", ShardSpec(max_samples=7))
    samples = [r for r in removal + multitask if isinstance(r, Sample)]
    shards = manifest.committed_shards(str(root / "multitask")) + manifest.committed_shards(
        str(root / "removal")
    )
    return root, samples, shards


@pytest.mark.parametrize("streaming", [False, True])
def test_a_mixed_build_loads_in_hf_datasets_with_every_sample_and_field(mixed_build, streaming, tmp_path):
    root, samples, shards = mixed_build
    tasks = {str(s.meta.task) for s in samples}
    assert {"remove", "add", "keypoint", "segmentation", "enhancement"} <= tasks
    loaded = load_dataset(
        "webdataset",
        data_files={"train": shards},
        split="train",
        streaming=streaming,
        cache_dir=str(tmp_path),
    )
    rows = list(loaded)
    assert len(rows) == len(samples)
    assert set(rows[0]) == EXPECTED_COLUMNS
    by_key = {s.key: s for s in samples}
    assert {r["__key__"] for r in rows} == set(by_key)
    for row in rows:
        sample = by_key[row["__key__"]]
        record = row["json"]
        assert record["instruction"] == sample.meta.instruction and record["task"] == str(sample.meta.task)
        assert json.loads(record["settings"]) == sample.meta.generator.settings  # nothing of it lost
        assert json.loads(record["extra"]) == sample.meta.extra
        assert (record["pretrain_caption"] or None) == sample.meta.pretrain_caption
        mask = np.asarray(row["mask.png"].convert("L"))
        assert mask.shape == sample.target.shape[:2]
        if sample.mask is not None:
            assert record["mask_kind"] == "given" and np.array_equal(mask, sample.mask)
        else:
            assert record["mask_kind"] == "difference" and mask.any()
        assert np.array_equal(np.asarray(row["tgt.png"].convert("RGB")), sample.target)


def test_our_reader_gives_back_what_was_written(mixed_build):
    root, samples, _ = mixed_build
    by_key = {s.key: s for s in samples}
    back = list(iter_samples([str(root / "removal"), str(root / "multitask")]))
    assert len(back) == len(samples)
    for sample in back:
        original = by_key[sample.key]
        assert sample.meta == original.meta
        assert (sample.mask is None) == (original.mask is None)  # a difference mask is not a given region


def test_a_segmentation_mask_survives_in_hf_datasets(mixed_build, tmp_path):
    _, samples, shards = mixed_build
    segmentation = next(s for s in samples if str(s.meta.task) == "segmentation" and s.mask is not None)
    loaded = load_dataset("webdataset", data_files={"train": shards}, split="train", cache_dir=str(tmp_path))
    row = next(r for r in loaded if r["__key__"] == segmentation.key)
    png = io.BytesIO()
    row["mask.png"].save(png, format="PNG")
    assert np.array_equal(np.asarray(Image.open(png).convert("L")), segmentation.mask)
