"""A ``precision`` is fingerprinted as the arithmetic it gives on the workers that run the batches, as
they report it, never as the machine that drives the flow sees it: a CPU head node driving GPU workers
records what the GPUs compute in, and a batch on a worker of another kind refuses to commit."""

from __future__ import annotations

import pytest

from ieiw.pipelines.removal import RemovalConfig, RemovalStage
from ieiw.quality.embeddings import EmbedderConfig
from ieiw.quality.scoring import ScoringConfig
from ieiw.storage.config import WorkerEnv, config_fingerprint, effective_precision
from ieiw.storage.runner import ThreadExecutor, WorkerMismatch, run_stage
from ieiw.storage.stage_folder import read_record

CPU = WorkerEnv()
GPU_BF16 = WorkerEnv("cuda NVIDIA H100", True)
GPU_FP16 = WorkerEnv("cuda Tesla V100", False)


def test_every_precision_is_fp32_on_a_cpu_and_its_own_on_a_gpu():
    assert {effective_precision(p, "auto", CPU) for p in ("auto", "fp32", "fp16", "bf16")} == {"fp32"}
    on_gpu = {p: effective_precision(p, "cuda:1", GPU_BF16) for p in ("auto", "fp32", "fp16", "bf16")}
    assert on_gpu == {"auto": "bf16 on cuda", "fp32": "fp32", "fp16": "fp16 on cuda", "bf16": "bf16 on cuda"}
    assert effective_precision("auto", None, GPU_FP16) == "fp16 on cuda"  # the GPU's kind decides auto
    assert effective_precision("auto", "cpu", GPU_BF16) == "fp32"  # a model set to the CPU on a GPU worker


def _scoring(device: str, precision: str) -> ScoringConfig:
    embedder = EmbedderConfig(model="ViT-B-32", pretrained=None, device=device, precision=precision)
    return ScoringConfig(embedder=embedder)


def test_a_score_fingerprint_follows_the_precision_the_workers_compute_in():
    cpu_auto = config_fingerprint("score", _scoring("auto", "auto"), CPU)
    assert config_fingerprint("score", _scoring("auto", "fp32"), CPU).digest == cpu_auto.digest  # both fp32
    gpu = config_fingerprint("score", _scoring("auto", "auto"), GPU_BF16)
    assert gpu.changes(cpu_auto) == ['score.embedder.precision: "fp32" -> "bf16 on cuda"']
    # the device itself stays operational: two GPUs computing alike share a fingerprint
    assert config_fingerprint("score", _scoring("cuda:1", "auto"), GPU_BF16).digest == gpu.digest


class ReportsGpuWorkers(ThreadExecutor):
    """Threads of this (CPU) process that report the workers' kind as a Dask GPU worker would: what a
    CPU head node sees when its batches run elsewhere."""

    def probe(self) -> WorkerEnv:
        return GPU_BF16


def test_the_fingerprint_is_made_for_the_workers_and_a_worker_of_another_kind_refuses(phrasecut, tmp_path):
    annotations, images = phrasecut
    config = RemovalConfig.model_validate(
        {
            "source": {"annotations": [annotations], "images": images},
            "inpaint": {
                "backend": "lama",
                "model": "/nonexistent/big-lama.pt",
            },  # never loaded: refused first
        }
    )
    stage = RemovalStage(config, str(tmp_path / "removal"))
    # the removal fingerprint has no precision: it does not depend on the workers, any worker may run it
    assert stage.full_fingerprint(CPU).digest == stage.full_fingerprint(GPU_BF16).digest

    scoring_like = RemovalStage(config, str(tmp_path / "removal-gpu"))
    # a stage whose fingerprint holds a precision (as the score stage's does)
    scoring_like.fingerprint = lambda env: config_fingerprint("removal", _scoring("auto", "auto"), env)
    with (
        pytest.raises(WorkerMismatch, match="fingerprinted for workers on cuda NVIDIA H100"),
        ReportsGpuWorkers(1) as executor,
    ):
        run_stage(scoring_like, executor)
    recorded = read_record(str(tmp_path / "removal-gpu"))["fingerprint"]["settings"]
    assert recorded["embedder"]["precision"] == "bf16 on cuda"  # as the workers reported, not this CPU
