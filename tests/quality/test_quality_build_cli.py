"""A build with a ``quality:`` section through the CLI, as a user runs it: it exits 0 and says what every
stage did (the score and filter stages report through the one summary shape, as the generators do)."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from phrasecut_fixture import write_phrasecut


def test_a_build_with_a_quality_section_exits_0_and_says_what_each_stage_did(
    prefect_api, tmp_path, embedder_config, aesthetic_checkpoint
):
    """Every stage of the build reports through the one summary, the score and filter stages too."""
    annotations, images = write_phrasecut(str(tmp_path / "data"), n_images=3, size=96)
    config = tmp_path / "build.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "with-quality",
                "output": "out",
                "removal": {"source": {"annotations": [annotations], "images": images}},
                "quality": {
                    "scoring": {
                        "embedder": embedder_config.model_dump(mode="json"),
                        "aesthetic_checkpoint": aesthetic_checkpoint,
                    },
                    "policy": {"duplicates": {"clip_min_cosine": None}},
                },
            }
        )
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "ieiw.flows.cli", "build", str(config)]
    for attempt in ("first", "rerun"):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{attempt}: {done.stdout}{done.stderr}"
        out = " ".join(done.stdout.split())
        for stage in ("removal", "score removal", "filter removal"):
            assert f"{stage}:" in out, f"{attempt}: {out}"
    assert "removal: complete (6 records committed before), nothing to do" in out
    assert "score removal: complete" in out and "filter removal: complete" in out
    assert (tmp_path / "out" / "final" / "removal" / "manifest.parquet").exists()
    assert (tmp_path / "out" / "scores" / "removal" / "stage.json").exists()
    assert (tmp_path / "out" / "caches" / "embeddings").is_dir()
