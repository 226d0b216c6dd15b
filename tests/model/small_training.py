"""A training config small enough for the CPU tests."""

from __future__ import annotations

from ieiw.model.config import TrainConfig


def small_config(base, shards, output_dir, **overrides) -> TrainConfig:
    """A training config small enough for the CPU: 24 px crops of the 32 px synthetic images."""
    data = {"sets": [{"urls": [str(shards)]}], "resolution": 24, "num_workers": 0, "shuffle_buffer": 16,
            "shards_per_block": 2}
    data.update(overrides.pop("data", {}))
    values = {"base_model": str(base), "output_dir": str(output_dir), "data": data, "train_batch_size": 4,
              "max_steps": 4, "mixed_precision": "no", "checkpoint_every": 2, "log_every": 1}
    values.update(overrides)
    return TrainConfig.model_validate(values)
