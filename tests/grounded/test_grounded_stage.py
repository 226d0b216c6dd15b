"""The grounded removal stage on the contract: its fingerprint read from the config's declared roles,
what the plan shows and estimates, its config file, and hub and URL model references pinned and loaded
as a user's first build would (through a local server of the hub's API)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from grounded_helpers import grounded_config
from hub_server import HubServer

from ieiw.flows.plan import estimate, throughput_table
from ieiw.pipelines.grounded.config import GroundedRemovalConfig
from ieiw.pipelines.grounded.stage import GroundedRemovalStage
from ieiw.storage.config import ConfigError, WorkerEnv, load_config_file

TESTS = Path(__file__).resolve().parents[1]
CPU = WorkerEnv()


def _digest(config: GroundedRemovalConfig) -> str:
    return GroundedRemovalStage(config, "unused").fingerprint(CPU).digest


def test_the_fingerprint_holds_settings_and_model_contents_not_places_or_speeds(
    planted, tiny_models, tmp_path
):
    source = {"path": str(planted), "dataset": "planted"}
    base = _digest(grounded_config(source, tiny_models))
    moved = shutil.copytree(planted, tmp_path / "moved")
    lama = str(shutil.copy(tiny_models.lama, tmp_path / "same-lama.pt"))
    same = [
        grounded_config({**source, "path": str(moved)}, tiny_models),  # the photos elsewhere
        grounded_config(source, tiny_models, batch_size=9, detector={"batch_size": 1, "device": "cpu"}),
        grounded_config(source, tiny_models, inpaint={"model": lama}),  # the same LaMa file elsewhere
    ]
    assert [_digest(c) for c in same] == [base] * 3
    other = [
        grounded_config(source, tiny_models, gates={"min_score": 0.5}),
        grounded_config(source, tiny_models, gates={"max_area": 0.3}),
        grounded_config(source, tiny_models, tagger={"vocabulary": ["red square"]}),
        grounded_config(source, tiny_models, dilation=5),
        grounded_config({**source, "dataset": "other"}, tiny_models),
        grounded_config(source, tiny_models, sessions={"max_turns": 2}),
        grounded_config(source, tiny_models, sessions={"max_turns": 2, "whole_session": False}),
        grounded_config(source, tiny_models, detector={"kind": "grounding_dino"}),
    ]
    digests = [_digest(c) for c in other]
    assert base not in digests and len(set(digests)) == len(digests)


def test_the_plan_names_the_models_and_counts_the_work(planted, tiny_models):
    stage = GroundedRemovalStage(grounded_config({"path": str(planted)}, tiny_models), "unused")
    uses = {u.role: u.model for u in stage.model_uses()}
    assert set(uses) == {"tagger", "detector", "segmenter", "inpainter", "verifier", "instructions"}
    assert uses["instructions"] == "templates"
    assert "zero-shot over 2 names" in uses["tagger"] and "box prompts" in uses["segmenter"]
    assert "crop 64px windows" in uses["inpainter"]
    work = [(w.operation, w.items) for w in stage.workload(10)]
    assert work == [
        ("clip_images", 10),
        ("owlv2_images", 10),
        ("sam_boxes", 20),
        ("lama_windows", 20),
        ("owlv2_images", 40),
    ]
    assert stage.samples_made(10) == 40 and stage.samples_made(None) is None
    table = throughput_table()  # every operation has a figure: the plan can estimate the stage
    assert all(estimate(w.operation, w.items, w.items, table).hours is not None for w in stage.workload(10))
    assert stage.unit == "photos" and stage.plan_inputs(None) == stage.total() == 8


def test_a_config_file_reads_relative_paths_and_names_a_bad_field(planted, tmp_path):
    (tmp_path / "names.txt").write_text("# removable\nRed Square\nblue   square\nred square\n")
    (tmp_path / "grounded.yaml").write_text(
        textwrap.dedent(
            f"""
            source: {{path: {os.path.relpath(planted, tmp_path)}, kind: folder, dataset: planted}}
            tagger: {{vocabulary_file: names.txt, top_k: 3}}
            gates: {{min_area: 0.01, instances: all}}
            """
        )
    )
    config = load_config_file(tmp_path / "grounded.yaml", GroundedRemovalConfig)
    assert config.source.path == str(planted) and config.tagger.names() == ["red square", "blue square"]
    assert config.gates.instances == "all" and config.segmenter.model_type == "vit_h"
    (tmp_path / "typo.yaml").write_text("source: {path: .}\ngates: {min_scor: 0.4}\n")
    with pytest.raises(ConfigError, match=r"gates.min_scor: unknown field \(did you mean min_score\?\)"):
        load_config_file(tmp_path / "typo.yaml", GroundedRemovalConfig)
    (tmp_path / "nowhere.yaml").write_text("source: {path: nowhere, kind: webdataset}\n")
    with pytest.raises(ConfigError, match="source.path: no folder"):
        load_config_file(tmp_path / "nowhere.yaml", GroundedRemovalConfig)


PIN_AND_LOAD = """
    import json, sys
    from ieiw.pipelines.grounded.config import GroundedRemovalConfig
    from ieiw.pipelines.grounded.stage import GroundedRemovalStage
    from ieiw.storage.config import WorkerEnv
    from ieiw.storage.runner import pin_models, worker_model

    stage = GroundedRemovalStage(GroundedRemovalConfig.model_validate_json(sys.argv[1]), sys.argv[2])
    notes = pin_models(stage)
    specs = stage.models()
    detector, segmenter = worker_model(specs["detector"]), worker_model(specs["segmenter"])
    print(json.dumps({
        "notes": notes,
        "detector": stage.config.detector.model,
        "loaded": [type(detector.model).__name__, detector.identity, segmenter.identity],
        "shared": worker_model(specs["verifier"]) is detector,
        "models": stage.fingerprint(WorkerEnv()).models,
    }))
"""


def test_hub_and_url_models_are_pinned_then_loaded_at_that_commit(planted, tiny_models, tmp_path):
    sam_folder = tmp_path / "sam-release"
    sam_folder.mkdir()
    shutil.copy(tiny_models.sam.checkpoint, sam_folder / "sam_tiny.pth")
    with HubServer() as hub:
        commit = hub.commit("tiny/owlv2", tiny_models.owl)
        hub.commit("sam/weights", sam_folder)
        url = f"{hub.endpoint}/sam/weights/resolve/main/sam_tiny.pth"
        config = grounded_config(
            {"path": str(planted)},
            tiny_models,
            detector={"model": "tiny/owlv2"},
            verifier={"model": "tiny/owlv2"},
            segmenter={"checkpoint": url},
        )
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(tmp_path / "home"),
            "IEIW_CACHE": str(tmp_path / "home" / "ieiw"),
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "PYTHONPATH": str(TESTS),
        }
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(PIN_AND_LOAD),
                config.model_dump_json(),
                str(tmp_path / "out"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["detector"] == f"tiny/owlv2@{commit}" and found["shared"]
    kind, owl_identity, sam_identity = found["loaded"]
    assert kind == "Owlv2ForObjectDetection" and owl_identity == f"hf:tiny/owlv2@{commit}"
    local = GroundedRemovalStage(grounded_config({"path": str(planted)}, tiny_models), "x").fingerprint(CPU)
    assert sam_identity == local.models["segmenter.checkpoint"]  # a URL's model is named by its content
    assert found["models"]["detector.model"] == f"hf:tiny/owlv2@{commit}"
