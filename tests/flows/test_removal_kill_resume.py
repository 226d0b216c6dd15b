"""SIGKILL a build mid-way; the rerun finishes with the same keys, no duplicate, no partial shard."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import webdataset as wds
import yaml

from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter
from ieiw.pipelines.removal import RemovalConfig, removal_stage
from ieiw.pipelines.sources.phrasecut import iter_records
from ieiw.storage import manifest
from ieiw.storage.shards import iter_samples
from ieiw.storage.stage_folder import read_record


def _write_config(tmp_path: Path, annotations: str, images: str) -> Path:
    config = {
        "name": "killed",
        "output": str(tmp_path / "out"),
        "shards": {"max_samples": 3},
        "runner": {"task_runner": "threads", "max_workers": 2, "max_in_flight": 2},
        "removal": {"source": {"annotations": [annotations], "images": images}, "batch_size": 2},
    }
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _build(config: Path, api: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api, "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ieiw.flows.cli", "build", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=str(config.parent),
    )


def test_sigkill_then_rerun_loses_nothing_and_duplicates_nothing(prefect_api, tmp_path):
    from phrasecut_fixture import write_phrasecut

    annotations, images = write_phrasecut(str(tmp_path / "data"), n_images=30, size=192)
    config = _write_config(tmp_path, annotations, images)
    stage = tmp_path / "out" / "removal"
    parts = stage / "manifest"

    process = _build(config, prefect_api)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if parts.exists() and len([p for p in parts.iterdir() if p.suffix == ".parquet"]) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, (
        "the build finished before it could be killed: " + process.stdout.read().decode()
    )
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    committed = manifest.completed_record_ids(str(stage))
    assert 0 < len(committed) < 60, "the kill did not land mid-way"
    assert not read_record(str(stage)).get("complete")  # a killed run never says the stage is complete

    rerun = _build(config, prefect_api)
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output

    records = [r for r in iter_records(annotations, images)]
    (complete,) = read_record(str(stage))["complete"]  # the rerun went through all of it
    assert complete["records"] == len(records)
    expected = removal_stage(
        records,
        build_inpainter(InpaintConfig()),
        RemovalConfig.model_validate({"source": {"annotations": [annotations], "images": images}}).settings(),
    )
    frame = manifest.read_manifest(str(stage))
    assert frame["key"].is_unique
    assert sorted(frame["key"]) == sorted(r.key for r in expected)
    keys_in_shards = [s.key for s in iter_samples(str(stage / "shards"))]
    assert sorted(keys_in_shards) == sorted(frame.loc[frame["kept"], "key"])
    leftovers = [p.name for p in stage.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    for shard in sorted((stage / "shards").glob("*.tar")):  # every shard is complete and readable
        assert len(list(wds.WebDataset(str(shard), shardshuffle=False))) >= 1
