"""A user's first build on a fresh machine, with its detector named by a hub id served by a local server
of the hub's API: the first build on an empty cache, a rerun, and another machine's empty cache make
the same keys; when the authors push a new commit, resuming keeps the commit the stage was made with and
says so, and only a rebuild moves the stage to the new one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from grounded_helpers import grounded_config
from grounded_tiny_models import tiny_owlv2
from hub_server import HubServer

TESTS = Path(__file__).resolve().parents[1]

BUILD = """
    import json, sys
    from ieiw.pipelines.grounded.config import GroundedRemovalConfig
    from ieiw.pipelines.grounded.stage import GroundedRemovalStage
    from ieiw.storage import manifest
    from ieiw.storage.runner import RunOptions, ThreadExecutor, run_stage
    from ieiw.storage.stage_folder import read_record

    stage = GroundedRemovalStage(GroundedRemovalConfig.model_validate_json(sys.argv[1]), sys.argv[2])
    with ThreadExecutor(1) as executor:
        summary = run_stage(stage, executor, RunOptions(rebuild=sys.argv[3]))
    frame = manifest.read_manifest(stage.url)
    print(json.dumps({
        "kept": summary.kept,
        "batches": summary.batches,
        "pins": summary.pins,
        "keys": sorted(frame.loc[frame["kept"], "key"]),
        "detector": read_record(stage.url)["fingerprint"]["models"]["detector.model"],
    }))
"""


def _build(config, output: Path, home: Path, endpoint: str, rebuild: str = "no") -> dict:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),  # each home is a machine's hub cache
        "IEIW_CACHE": str(home / "ieiw"),
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "PYTHONPATH": str(TESTS),
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BUILD), config.model_dump_json(), str(output), rebuild],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_first_build_a_rerun_and_another_machine_make_the_same_keys_and_a_pushed_commit_waits_for_rebuild(
    planted, tiny_models, tmp_path
):
    with HubServer() as hub:
        first = hub.commit("tiny/owlv2", tiny_models.owl)
        config = grounded_config(
            {"path": str(planted)},
            tiny_models,
            detector={"model": "tiny/owlv2"},
            verifier={"model": "tiny/owlv2"},
        )
        made = _build(config, tmp_path / "a" / "grounded_removal", tmp_path / "machine-a", hub.endpoint)
        assert made["kept"] > 0 and made["detector"] == f"hf:tiny/owlv2@{first}"
        again = _build(config, tmp_path / "a" / "grounded_removal", tmp_path / "machine-a", hub.endpoint)
        assert again["batches"] == 0 and again["keys"] == made["keys"]  # a rerun: nothing to do
        other = _build(config, tmp_path / "b" / "grounded_removal", tmp_path / "machine-b", hub.endpoint)
        assert other["keys"] == made["keys"] and other["detector"] == made["detector"]

        pushed = hub.commit("tiny/owlv2", tiny_owlv2(tmp_path / "owl-v2", seed=1))  # the authors push
        kept = _build(config, tmp_path / "a" / "grounded_removal", tmp_path / "machine-a", hub.endpoint)
        assert kept["detector"] == f"hf:tiny/owlv2@{first}" and kept["keys"] == made["keys"]
        note = " ".join(kept["pins"])
        assert first[:12] in note and pushed[:12] in note and "--rebuild" in note
        rebuilt = _build(
            config, tmp_path / "a" / "grounded_removal", tmp_path / "machine-a", hub.endpoint, rebuild="yes"
        )
        assert rebuilt["detector"] == f"hf:tiny/owlv2@{pushed}" and rebuilt["keys"] != made["keys"]
