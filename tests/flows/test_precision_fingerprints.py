"""A ``precision`` is fingerprinted as the arithmetic it gives on the section's device, so a stage
made on a CPU and resumed on a GPU (or the reverse) is a changed stage, never a mix of both."""

from __future__ import annotations

from ieiw.flows.fingerprints import effective_precision, section_fingerprint
from ieiw.quality.embeddings import EmbedderConfig
from ieiw.quality.scoring import ScoringConfig


def test_every_precision_is_fp32_on_a_cpu_and_its_own_on_a_gpu():
    assert {effective_precision(p, "cpu") for p in ("auto", "fp32", "fp16", "bf16")} == {"fp32"}
    on_gpu = {p: effective_precision(p, "cuda:1") for p in ("auto", "fp32", "fp16", "bf16")}
    assert on_gpu["fp32"] == "fp32"
    assert on_gpu["fp16"] == "fp16 on cuda" and on_gpu["bf16"] == "bf16 on cuda"
    assert on_gpu["auto"].startswith("auto on cuda with")  # "with bf16" or "without bf16": the GPU's kind


def _scoring(device: str, precision: str) -> ScoringConfig:
    embedder = EmbedderConfig(model="ViT-B-32", pretrained=None, device=device, precision=precision)
    return ScoringConfig(embedder=embedder)


def test_a_score_stage_fingerprint_follows_the_precision_its_embedder_runs_at():
    cpu_auto = section_fingerprint("score", _scoring("cpu", "auto"))
    assert section_fingerprint("score", _scoring("cpu", "fp32")).digest == cpu_auto.digest  # both fp32
    gpu_half = section_fingerprint("score", _scoring("cuda", "fp16"))
    assert gpu_half.changes(cpu_auto) == ['score.embedder.precision: "fp32" -> "fp16 on cuda"']
    # the device itself stays operational: two GPUs computing alike share a fingerprint
    assert section_fingerprint("score", _scoring("cuda:1", "fp16")).digest == gpu_half.digest


def test_the_embedding_cache_keeps_half_precision_vectors_apart():
    cpu = EmbedderConfig(model="ViT-B-32", pretrained=None, device="cpu", precision="auto")
    assert cpu.model_copy(update={"precision": "fp32"}).identity() == cpu.identity()
    gpu = cpu.model_copy(update={"device": "cuda", "precision": "fp16"})
    assert gpu.identity() != cpu.identity() and gpu.identity().startswith("ViT-B-32-")
