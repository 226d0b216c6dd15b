"""The object database and the replacement pairs on a two-process Dask cluster: the same keys and the same
bytes as on threads (the one runner maps the same batches over either executor)."""

from __future__ import annotations

from pathlib import Path

import pytest
from replacement_build import stages
from replacement_fixtures import write_sa1b

from ieiw.flows.config import RunnerConfig
from ieiw.flows.runners import build_task_runner
from ieiw.flows.stage_flow import run_stage_flow
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.storage import manifest
from ieiw.storage.layout import OBJECT_DATABASE
from ieiw.storage.runner import forget_models, loaded_models
from ieiw.storage.shards import iter_samples

pytestmark = pytest.mark.usefixtures("prefect_server")


def _files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob(pattern))}


def test_the_database_and_the_pairs_on_two_dask_processes_equal_threads(tmp_path, clip_config):
    sa1b = write_sa1b(str(tmp_path / "sa1b"), n_images=4, size=128)  # and a truncated annotation file
    photos = tmp_path / "photos"
    write_sa1b(str(photos), n_images=2, size=128, seed=3, broken=False)
    for path in photos.glob("*.json"):
        path.unlink()  # images without masks: the classical proposer makes their regions
    config = ReplacementConfig.model_validate(
        {
            "sources": [
                {"kind": "sa1b", "folders": [sa1b]},
                {"kind": "images", "images": str(photos), "dataset": "photos"},
            ],
            "proposer": {"backend": "felzenszwalb"},
            "selection": {"min_predicted_iou": 0.0, "min_stability": 0.0},
            "embedder": clip_config.model_dump(),
            "labels": {"vocabulary": ["cat", "dog", "cup"]},
            "database": {"objects_per_image": 3, "batch_size": 2, "index": {"kind": "flat"}},
            "retrieval": {"similarity_ceiling": 2.0, "min_similarity": -2.0},
            "paint": {"backend": "seamless_clone"},
            "regions_per_image": 2,
            "batch_size": 2,
        }
    )
    runners = {
        "threads": RunnerConfig(max_workers=2, retries=0),
        "dask": RunnerConfig(task_runner="dask", max_workers=2, gpus="none", retries=0),
    }
    summaries = {}
    for name, runner in runners.items():
        forget_models()
        with build_task_runner(runner) as task_runner:  # one cluster for both stages, as a build
            summaries[name] = {
                stage.name: run_stage_flow(stage, runner, "no", task_runner)
                for stage in stages(config, str(tmp_path / name))
            }
        if name == "dask":  # every batch ran in the cluster's worker processes, not here
            assert loaded_models() == []
    for stage in (OBJECT_DATABASE, "replacement"):
        threads, dask = summaries["threads"][stage], summaries["dask"][stage]
        assert dask.batches == threads.batches > 1 and dask.records == threads.records == 7
        assert (dask.kept, dask.rows, dask.dropped, dask.counts) == (
            threads.kept,
            threads.rows,
            threads.dropped,
            threads.counts,
        )
    assert summaries["dask"]["replacement"].kept > 0
    assert summaries["dask"][OBJECT_DATABASE].extra == summaries["threads"][OBJECT_DATABASE].extra

    keys = {
        name: sorted(s.key for s in iter_samples(str(tmp_path / name / "replacement"))) for name in runners
    }
    assert keys["threads"] and keys["dask"] == keys["threads"]
    frames = {name: manifest.read_manifest(str(tmp_path / name / "replacement")) for name in runners}
    assert sorted(frames["dask"]["key"]) == sorted(frames["threads"]["key"])  # the drops too
    for folder, pattern in (("replacement/shards", "*.tar"), ("object_database/parts", "*")):
        files = {name: _files(tmp_path / name / folder, pattern) for name in runners}
        assert files["threads"] and files["dask"].keys() == files["threads"].keys()
        different = [n for n in files["threads"] if files["dask"][n] != files["threads"][n]]
        assert not different, f"{folder}: {different} differ between Dask and threads"
