"""What a worker process sees: run in Dask workers (``client.run``) and by flows under test."""

from __future__ import annotations

import os


def load_inpainter_and_report(lama_path: str) -> dict:
    """Load LaMa through the removal flow's own batch function, with three spellings of this worker's
    device and three batch sizes, and report the environment and what the model cache holds."""
    from ieiw.flows.config import RemovalConfig
    from ieiw.flows.models import LOADS, cached_entries, worker_gpu
    from ieiw.flows.removal import removal_batch

    for device, batch_size in ((None, 2), ("auto", 4), ("cpu", 8)):
        config = RemovalConfig.model_validate(
            {
                "source": {"annotations": [], "images": "/nowhere"},
                "inpaint": {
                    "backend": "lama",
                    "model": lama_path,
                    "device": device,
                    "batch_size": batch_size,
                },
            }
        )
        removal_batch([], config)  # no records: the batch function still loads (or reuses) its model
    inpainters = [key for key, _ in cached_entries("inpainter")]
    return {
        "pid": os.getpid(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pinned": worker_gpu(),
        "entries": cached_entries("inpainter"),
        "loads": sum(LOADS[key] for key in inpainters),
    }
