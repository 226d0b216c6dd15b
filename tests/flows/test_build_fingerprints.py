"""A build is a function of its config: a changed setting stops the build and names itself, --rebuild
makes the new samples, two runs of one stage never write at once, and keys travel between machines."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_text import words
from phrasecut_fixture import write_phrasecut
from tiny_lama import save_tiny_lama

from ieiw.flows.build import ieiw_build
from ieiw.flows.config import BuildConfig, load_config
from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter
from ieiw.pipelines.removal import RemovalSettings, removal_stage
from ieiw.pipelines.sources.phrasecut import iter_records
from ieiw.storage import manifest
from ieiw.storage.lease import StageBusy, read_lease
from ieiw.storage.shards import iter_samples
from ieiw.storage.stage_folder import StageChanged, read_record


def _config(annotations: str, images: str, output: Path, **removal) -> BuildConfig:
    return BuildConfig.model_validate(
        {
            "name": "fingerprints",
            "output": str(output),
            "removal": {
                "source": {"annotations": [annotations], "images": images},
                "batch_size": 4,
                **removal,
            },
        }
    )


def test_a_changed_setting_stops_the_build_and_rebuild_makes_what_the_config_says(
    prefect_api, phrasecut, tmp_path
):
    annotations, images = phrasecut
    out = tmp_path / "out"
    first = ieiw_build(_config(annotations, images, out, dilation=9))
    assert first["stages"]["removal"]["by_task"] == {"add": 8, "remove": 8}

    changed = _config(annotations, images, out, dilation=25, make_add_pairs=False)
    with pytest.raises(StageChanged) as refused:
        ieiw_build(changed)
    message = str(refused.value)
    assert "removal.dilation: 9 -> 25" in message and "removal.make_add_pairs: True -> False" in message
    assert "--rebuild removal" in message
    assert {s.meta.generator.settings["dilation"] for s in iter_samples(str(out / "removal"))} == {9}

    rebuilt = ieiw_build(changed, rebuild=["removal"])
    samples = list(iter_samples(str(out / "removal")))
    assert rebuilt["stages"]["removal"]["rebuilt"] and len(samples) == 8
    assert {s.meta.task for s in samples} == {"remove"}
    assert {s.meta.generator.settings["dilation"] for s in samples} == {25}
    recorded = read_record(str(out / "removal"))["fingerprint"]["settings"]
    assert recorded["dilation"] == 25 and recorded["make_add_pairs"] is False
    card = Path(rebuilt["data_card"]).read_text()
    assert "| removal | add |" not in card and "| removal | remove | 8 |" in card

    again = ieiw_build(changed)  # same config: nothing to do, nothing rebuilt
    assert again["stages"]["removal"]["batches"] == 0 and not again["stages"]["removal"]["rebuilt"]


def test_the_cli_prints_what_changed_and_exits_without_a_traceback(prefect_api, phrasecut, tmp_path):
    annotations, images = phrasecut
    config_file = tmp_path / "build.yaml"

    def write(dilation: int) -> None:
        config_file.write_text(
            yaml.safe_dump(
                {
                    "name": "cli",
                    "output": str(tmp_path / "out"),
                    "removal": {
                        "source": {"annotations": [annotations], "images": images},
                        "dilation": dilation,
                    },
                }
            )
        )

    env = {**os.environ, "PREFECT_API_URL": prefect_api, "TQDM_DISABLE": "1", "COLUMNS": "60"}
    command = [sys.executable, "-m", "ieiw.flows.cli", "build", str(config_file)]
    write(9)
    assert subprocess.run(command, env=env, capture_output=True, text=True, timeout=300).returncode == 0
    write(11)
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "removal.dilation: 9 -> 11" in words(refused.stderr) and "Traceback" not in refused.stderr
    rebuilt = subprocess.run(
        [*command, "--rebuild", "removal"], env=env, capture_output=True, text=True, timeout=300
    )
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "removal: kept 16 samples" in words(rebuilt.stdout)
    assert {
        s.meta.generator.settings["dilation"] for s in iter_samples(str(tmp_path / "out" / "removal"))
    } == {11}
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removal: complete (8 records committed before), nothing to do" in words(again.stdout)


def test_two_runs_of_one_stage_never_write_at_once(prefect_api, tmp_path):
    annotations, images = write_phrasecut(str(tmp_path / "data"), n_images=12, size=128)
    config_file = tmp_path / "build.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "name": "concurrent",
                "output": str(tmp_path / "out"),
                "runner": {"max_in_flight": 1, "max_workers": 1},
                "removal": {"source": {"annotations": [annotations], "images": images}, "batch_size": 1},
            }
        )
    )
    stage = tmp_path / "out" / "removal"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "TQDM_DISABLE": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "ieiw.flows.cli", "build", str(config_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while read_lease(str(stage)) is None and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGSTOP)  # hold the first run mid-stage, lease and all, for as long as we need
    try:
        holder = read_lease(str(stage))
        assert first.poll() is None, "the first run ended before it could be held: the test proves nothing"
        assert holder is not None and holder.pid == first.pid, "the first run never took the stage"
        with pytest.raises(StageBusy) as busy:  # a second run of the stage (a deployment run, say)
            ieiw_build(load_config(config_file))
        assert "being written by another run" in str(busy.value) and f"process {holder.pid}" in str(
            busy.value
        )
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first_output = first.communicate(timeout=300)[0].decode()
    assert first.returncode == 0, first_output
    frame = manifest.read_manifest(str(stage))
    assert frame["key"].is_unique and len(frame) == 48
    assert read_lease(str(stage)) is None


def test_keys_travel_with_the_checkpoint_not_its_path(prefect_api, phrasecut, tmp_path, monkeypatch):
    monkeypatch.setenv("IEIW_CACHE", str(tmp_path / "cache"))
    annotations, images = phrasecut
    (tmp_path / "here").mkdir()
    here = save_tiny_lama(str(tmp_path / "here" / "big-lama.pt"))
    there = tmp_path / "elsewhere" / "checkpoints" / "lama-copy.pt"
    there.parent.mkdir(parents=True)
    shutil.copy2(here, there)
    keys = []
    for model, output in ((here, "a"), (str(there), "b")):
        config = _config(annotations, images, tmp_path / output, inpaint={"backend": "lama", "model": model})
        ieiw_build(config)
        keys.append(sorted(manifest.read_manifest(str(tmp_path / output / "removal"))["key"]))
        recorded = read_record(str(tmp_path / output / "removal"))
        assert recorded["info"]["models"]["inpaint.model"] == model  # where it was, for people
        assert model not in str(recorded["fingerprint"])  # but never in the fingerprint
    assert keys[0] == keys[1] and len(keys[0]) == 16


# One fixed expected key: a change to how keys are made (and so to every existing build's keys) must be
# deliberate. The record is the first task of the PhraseCut fixture (with its ann_ids), removed with
# OpenCV at the defaults.
GOLDEN_REMOVAL_KEY = "7891c6055d626f954e156c4f"


def test_golden_removal_key(phrasecut):
    annotations, images = phrasecut
    record = next(iter_records(annotations, images))
    samples = [
        r for r in removal_stage([record], build_inpainter(InpaintConfig()), RemovalSettings()) if r.key
    ]
    remove = next(s for s in samples if str(s.meta.task) == "remove")
    assert remove.key == GOLDEN_REMOVAL_KEY


GOLDEN_MULTITASK_KEYS = {
    "keypoint": "d4e0b1775df29f5c86c0aca1",
    "segmentation": "0f8a89671cb0d419e994bbed",
    "enhancement": "51b1250588db0ec48c66bbdd",
}


def test_golden_multitask_keys(tmp_path):
    from ieiw.pipelines.multitask.demo import demo_multitask_config
    from ieiw.pipelines.multitask.stage import iter_multitask_records, multitask_stage
    from ieiw.pipelines.sources.demo import materialize_demo_images

    images = str(tmp_path / "images")
    materialize_demo_images(images)
    config = demo_multitask_config(images, resolution=128)
    first_of_each: dict[str, str] = {}
    for record in iter_multitask_records(config):
        for result in multitask_stage([record], config, {}):
            first_of_each.setdefault(str(result.meta.task), result.key)
        if len(first_of_each) == 3:
            break
    assert first_of_each == GOLDEN_MULTITASK_KEYS


def test_a_new_stage_runs_alone_and_the_demo_mode_rebuilds_what_changed(prefect_api, phrasecut, tmp_path):
    annotations, images = phrasecut
    out = tmp_path / "out"
    ieiw_build(_config(annotations, images, out))
    with_multitask = _config(annotations, images, out).model_copy(
        update={
            "multitask": BuildConfig.model_validate(
                {
                    "output": str(out),
                    "multitask": {
                        "enhancement": {"sources": [{"kind": "synthetic", "dataset": "d", "images": images}]}
                    },
                }
            ).multitask
        }
    )
    result = ieiw_build(with_multitask)
    assert result["stages"]["removal"]["batches"] == 0 and not result["stages"]["removal"]["rebuilt"]
    assert result["stages"]["multitask"]["kept"] > 0

    changed = with_multitask.model_copy(
        update={"removal": with_multitask.removal.model_copy(update={"dilation": 3})}
    )
    demo_like = ieiw_build(changed, on_change="changed")
    assert demo_like["stages"]["removal"]["rebuilt"] and not demo_like["stages"]["multitask"]["rebuilt"]
    assert {s.meta.generator.settings["dilation"] for s in iter_samples(str(out / "removal"))} == {3}
