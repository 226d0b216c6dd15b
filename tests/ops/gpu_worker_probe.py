"""What a worker process sees: run in Dask workers (``client.run``) and by flows under test."""

from __future__ import annotations

import os


def load_inpainter_and_report(lama_path: str) -> dict:
    """Load LaMa as the removal stage's batches do (its model spec through the worker's cache), with three
    spellings of this worker's device and three batch sizes, and report the environment and what the
    model cache holds."""
    from ieiw.flows.runners import worker_gpu
    from ieiw.pipelines.removal import RemovalConfig, RemovalStage
    from ieiw.storage.runner import LOADS, loaded_models, worker_model

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
        worker_model(RemovalStage(config, "/nowhere/removal").models()["inpainter"])
    inpainters = [key for key, _ in loaded_models("inpainter")]
    return {
        "pid": os.getpid(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pinned": worker_gpu(),
        "entries": loaded_models("inpainter"),
        "loads": sum(LOADS[key] for key in inpainters),
    }
