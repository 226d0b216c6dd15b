"""The `ieiw_train` Prefect flow trains in process against a real (temporary) Prefect server."""

from __future__ import annotations

import yaml

from ieiw.flows.train import train


def test_train_flow(prefect_api, tiny_base, edit_shards, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "base_model": str(tiny_base), "output_dir": str(tmp_path / "run"),
        "data": {"sets": [{"urls": [str(edit_shards)]}], "resolution": 24, "num_workers": 0},
        "train_batch_size": 2, "max_steps": 3, "checkpoint_every": 2, "mixed_precision": "no",
    }))
    summary = train(str(config))
    assert summary["steps"] == 3 and summary["last_loss"] > 0
    names = [p.rsplit("/", 1)[-1] for p in summary["checkpoints"]]
    assert names == ["checkpoint-0000002", "checkpoint-0000003"]
    assert (tmp_path / "run" / "model_index.json").exists()
