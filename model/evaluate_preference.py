"""Did the preference stage help? The starting and the tuned checkpoint on held-out preference pairs.

``ieiw evaluate --model TUNED --compare BASE --shards HELD_OUT`` runs both checkpoints on the same pairs
(our ``preference`` shards or the Diffusion-DPO Hugging Face layout, read as the trainer reads them) with
the same seeds, guidance and timesteps, one checkpoint loaded at a time, in float32 so the small
differences a preference stage makes are not rounding:

- **preference accuracy** (the tuned model's implicit reward, Diffusion-DPO's implicit accuracy on
  held-out pairs): each pair's chosen and rejected edits are noised with one fixed noise at each of a few
  fixed timesteps; both checkpoints predict them as the editing model does (the source latent beside the
  noisy latent, the instruction). A pair counts for the tuned model when, relative to the base, it lowered
  its denoising error on the chosen edit more than on the rejected one, ``(e_w - e_w_base) - (e_l -
  e_l_base) < 0`` (summed over the timesteps; a tie counts half). The base is its own reference, so its
  accuracy is 0.5 by definition; ``reward_margin`` is the mean of ``(e_l - e_l_base) - (e_w - e_w_base)``
  (positive: better). ``denoising_preference`` is, for each checkpoint on its own, the share of pairs
  whose chosen edit it denoises better than the rejected one;
- **CLIP** of each checkpoint's edit of every pair (:func:`ieiw.model.evaluate.score_chunk`: directional
  and image similarity, similarity to the chosen edit) and ``clip_chosen_margin``, the edit's similarity
  to the chosen edit minus its similarity to the rejected one;
- **the judge's scores** of each checkpoint's edits, by criterion, when a judge is given
  (:class:`ieiw.quality.judge.Judge`, answers cached).

One table (``comparison.md`` and ``comparison.json``; every pair in ``comparison.csv``) and one picture
(``comparison.png``: source, the base's edit, the tuned edit, the chosen and the rejected edit).
"""

from __future__ import annotations

import csv
import gc
import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ieiw.model.build import Models
from ieiw.model.conditioning import TextConditioning, encode_prompts
from ieiw.model.data import expand_urls, read_shard
from ieiw.model.dpo import per_sample_error
from ieiw.model.dpo_layout import REJECTED
from ieiw.model.evaluate import Embedder, score_chunk
from ieiw.model.family import SD, SDXL, is_sdxl_pipeline
from ieiw.model.inference import EditSettings, edit_image, fit_size, load_edit_pipeline, size_multiple
from ieiw.model.reports import write_json
from ieiw.model.sample_decode import to_tensor
from ieiw.model.step import diffusion_target, predict, time_ids_of
from ieiw.storage.images import decode_image, encode_image
from ieiw.storage.schema import Sample, SampleMeta
from ieiw.storage.shards import member as find_member

BASE, TUNED = "base", "tuned"
CLIP_METRICS = ("clip_direction", "clip_image", "clip_target", "clip_chosen_margin")
DEFAULT_TIMESTEPS = 4


@dataclass(frozen=True)
class HeldOutPair:
    """One held-out pair: its metadata, source, chosen edit and rejected edit (None: not a pair)."""

    meta: SampleMeta
    source: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray | None

    @property
    def key(self) -> str:
        return self.meta.key


def held_out_pairs(shards: Iterable[str] | str, limit: int | None = None) -> list[HeldOutPair]:
    """The pairs of ``shards`` (our stage folders or shards, or a Diffusion-DPO dataset), in order."""
    pairs: list[HeldOutPair] = []
    drops: Counter = Counter()
    for url in expand_urls(shards):
        for raw in read_shard(url, "instruction", drops):
            if limit is not None and len(pairs) >= limit:
                return pairs
            meta = SampleMeta.model_validate_json(raw["json"])
            try:
                rejected = decode_image(find_member(raw, REJECTED))
            except KeyError:
                rejected = None
            source, chosen = (decode_image(find_member(raw, stem)) for stem in ("src", "tgt"))
            pairs.append(HeldOutPair(meta, source, chosen, rejected))
    return pairs


@dataclass
class CheckpointRun:
    """What one checkpoint did on the pairs: its edits and its denoising errors, ``(pairs, 2, timesteps)``
    (chosen, rejected; NaN for a sample without a rejected edit)."""

    label: str
    model: str
    edits: list[np.ndarray] = field(default_factory=list)
    errors: np.ndarray | None = None


def pipeline_models(pipe) -> Models:
    """The parts of a loaded editing pipeline as the trainer's :class:`~ieiw.model.build.Models`, with
    the DDPM noise schedule of its scheduler's configuration (the one it was trained with)."""
    from diffusers import DDPMScheduler

    sdxl = is_sdxl_pipeline(pipe)
    return Models(
        pipe.tokenizer,
        pipe.text_encoder,
        pipe.vae,
        pipe.unet,
        DDPMScheduler.from_config(pipe.scheduler.config),
        family=SDXL if sdxl else SD,
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
    )


def fixed_timesteps(count: int, total: int = 1000) -> list[int]:
    """``count`` timesteps spread evenly over the schedule's middle (the ends say little)."""
    return [round(total * (i + 1) / (count + 1)) for i in range(count)]


def _noise_seed(seed: int, key: str, timestep: int) -> int:
    digest = hashlib.sha256(f"{seed}-{key}-{timestep}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _as_batch(images: list[np.ndarray], size: tuple[int, int], device, dtype) -> torch.Tensor:
    """Images resized to ``size`` (width, height) as the edit pipeline's input, one batch."""
    resized = [Image.fromarray(i).convert("RGB").resize(size, Image.Resampling.BICUBIC) for i in images]
    return torch.stack([to_tensor(np.asarray(i)) for i in resized]).to(device, dtype)


def _fixed_noise(shape: torch.Size, seed: int, key: str, timesteps: list[int]) -> torch.Tensor:
    """One noise per timestep, fixed by the seed and the pair's key (the same for every checkpoint)."""
    return torch.stack(
        [
            torch.randn(shape, generator=torch.Generator().manual_seed(_noise_seed(seed, key, t)))
            for t in timesteps
        ]
    )


@torch.no_grad()
def denoising_errors(
    pipe, pairs: list[HeldOutPair], timesteps: list[int], seed: int, resolution: int
) -> np.ndarray:
    """Each pair's chosen and rejected denoising errors at ``timesteps``, ``(pairs, 2, timesteps)``: the
    images at the edit's working size (as :func:`~ieiw.model.inference.edit_image` sizes them), mean
    latents, one noise per (pair, timestep) fixed by ``seed`` and the pair's key, full conditioning."""
    models = pipeline_models(pipe)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    out = np.full((len(pairs), 2, len(timesteps)), np.nan)
    for i, pair in enumerate(pairs):
        if pair.rejected is None:
            continue
        height, width = pair.source.shape[:2]
        size = fit_size(width, height, resolution, size_multiple(pipe))
        pixels = _as_batch([pair.source, pair.chosen, pair.rejected], size, device, models.vae.dtype)
        latents = models.vae.encode(pixels).latent_dist.mode().float()
        source, targets = latents[:1], latents[1:] * models.vae.config.scaling_factor
        n = len(timesteps)
        t = torch.tensor(timesteps, device=device).repeat_interleave(2)  # (chosen, rejected) per timestep
        noise = _fixed_noise(targets.shape[1:], seed, pair.key, timesteps).to(device).repeat_interleave(2, 0)
        clean = targets.repeat(n, 1, 1, 1)
        noisy = models.noise_scheduler.add_noise(clean, noise, t)
        text = encode_prompts(models, [pair.meta.instruction], device)
        pooled = None if text.pooled is None else text.pooled.expand(2 * n, -1).to(dtype)
        text = TextConditioning(text.hidden.expand(2 * n, -1, -1).to(dtype), pooled)
        model_input = torch.cat([noisy, source.expand(2 * n, -1, -1, -1)], dim=1).to(dtype)
        time_ids = time_ids_of(models, {}, clean, device)
        time_ids = None if time_ids is None else time_ids.to(dtype)
        prediction = predict(models, pipe.unet, model_input, t, text, time_ids)
        error = per_sample_error(prediction, diffusion_target(models, clean, noise, t))
        out[i] = error.view(n, 2).T.cpu().numpy()
    return out


def run_checkpoint(
    label: str,
    model: str,
    pairs: list[HeldOutPair],
    settings: EditSettings,
    timesteps: list[int],
    device: str = "auto",
) -> CheckpointRun:
    """Load ``model`` (float32), measure its denoising errors and edit every pair's source; then let the
    pipeline go, so the next checkpoint has the device to itself."""
    pipe = load_edit_pipeline(model, device, half=False)
    run = CheckpointRun(label, model)
    run.errors = denoising_errors(pipe, pairs, timesteps, settings.seed, settings.resolution)
    run.edits = [edit_image(pipe, p.source, p.meta.instruction, settings) for p in pairs]
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return run


# ---------------------------------------------------------------------------------------------- scores


def preference_scores(base: np.ndarray, tuned: np.ndarray) -> dict:
    """Implicit accuracy and reward margin of ``tuned`` against ``base``, and each one's denoising
    preference, from their errors ``(pairs, 2, timesteps)`` (pairs without a rejected edit left out)."""
    usable = ~np.isnan(base).any(axis=(1, 2)) & ~np.isnan(tuned).any(axis=(1, 2))
    if not usable.any():
        return {"pairs": 0, "implicit_accuracy": None, "reward_margin": None, "denoising_preference": {}}
    b, t = base[usable].mean(axis=2), tuned[usable].mean(axis=2)  # (pairs, 2): chosen, rejected
    margin = (t[:, 1] - b[:, 1]) - (t[:, 0] - b[:, 0])  # positive: chosen improved more than rejected
    accuracy = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
    return {
        "pairs": int(usable.sum()),
        "implicit_accuracy": accuracy,
        "reward_margin": float(margin.mean()),
        "denoising_preference": {
            BASE: float(np.mean((b[:, 0] < b[:, 1]) + 0.5 * (b[:, 0] == b[:, 1]))),
            TUNED: float(np.mean((t[:, 0] < t[:, 1]) + 0.5 * (t[:, 0] == t[:, 1]))),
        },
        "per_pair_margin": margin.tolist(),
    }


def clip_rows(embedder: Embedder, pairs: list[HeldOutPair], edits: list[np.ndarray]) -> list[dict]:
    """CLIP metrics of one checkpoint's edits (:data:`CLIP_METRICS`)."""
    samples = [Sample(meta=p.meta, source=p.source, target=p.chosen) for p in pairs]
    rows = score_chunk(embedder, samples, edits)
    with_rejected = [i for i, p in enumerate(pairs) if p.rejected is not None]
    for row in rows:
        row["clip_chosen_margin"] = math.nan
    if with_rejected:
        edited = embedder.embed_images([edits[i] for i in with_rejected])
        rejected = embedder.embed_images([pairs[i].rejected for i in with_rejected])
        for n, i in enumerate(with_rejected):
            to_rejected = float(np.dot(edited[n], rejected[n]))
            rows[i]["clip_chosen_margin"] = rows[i]["clip_target"] - to_rejected
    return rows


def judge_rows(judge, label: str, pairs: list[HeldOutPair], edits: list[np.ndarray]) -> list[dict]:
    """The judge's scores of one checkpoint's edits, by criterion (NaN where it gave none)."""
    from ieiw.quality.judge import JUDGE_SCORES, JudgeRequest

    requests = [
        JudgeRequest(
            f"{label}:{p.key}",
            str(p.meta.extra.get("source_task") or p.meta.task),
            p.meta.instruction,
            encode_image(p.source, "png"),
            encode_image(edit, "png"),
        )
        for p, edit in zip(pairs, edits, strict=True)
    ]
    columns = [judgement.columns() for judgement in judge.judge(requests)]
    return [{name: c[name] for name in JUDGE_SCORES} for c in columns]


def _mean(values: list[float]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def compare(
    base_model: str,
    tuned_model: str,
    shards: Iterable[str] | str,
    out_dir: str,
    settings: EditSettings,
    embedder: Embedder,
    judge=None,
    limit: int | None = None,
    timesteps: int = DEFAULT_TIMESTEPS,
    device: str = "auto",
    grid_rows: int = 8,
) -> dict:
    """Both checkpoints on the held-out pairs of ``shards``: writes ``comparison.json``/``.md``/``.csv``
    and ``comparison.png`` in ``out_dir``; returns the summary (see the module docstring)."""
    pairs = held_out_pairs(shards, limit)
    if not pairs:
        raise ValueError(f"no samples in {shards}")
    steps = fixed_timesteps(timesteps)
    runs = {
        label: run_checkpoint(label, model, pairs, settings, steps, device)
        for label, model in ((BASE, base_model), (TUNED, tuned_model))
    }
    rows: dict[str, list[dict]] = {}
    for label, run in runs.items():
        rows[label] = clip_rows(embedder, pairs, run.edits)
        if judge is not None:
            for row, scores in zip(rows[label], judge_rows(judge, label, pairs, run.edits), strict=True):
                row.update(scores)
    preference = preference_scores(runs[BASE].errors, runs[TUNED].errors)
    metrics = list(CLIP_METRICS) + [k for k in rows[BASE][0] if k.startswith("judge_")]
    summary = {
        "pairs": len(pairs),
        "preference_pairs": preference["pairs"],
        "models": {BASE: base_model, TUNED: tuned_model},
        "settings": settings.model_dump(),
        "timesteps": steps,
        "implicit_accuracy": preference["implicit_accuracy"],
        "reward_margin": preference["reward_margin"],
        "denoising_preference": preference["denoising_preference"],
        "metrics": {m: {label: _mean([r[m] for r in rows[label]]) for label in runs} for m in metrics},
        "judge": judge.config.identity() if judge is not None else None,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", summary)
    (out / "comparison.md").write_text(comparison_markdown(summary))
    write_pair_table(out / "comparison.csv", pairs, rows, preference.get("per_pair_margin"))
    plot_comparison(pairs[:grid_rows], runs[BASE].edits, runs[TUNED].edits, out / "comparison.png")
    return summary


# ---------------------------------------------------------------------------------------------- reports


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _small(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3e}"


def _change(base: float | None, tuned: float | None) -> str:
    return "" if base is None or tuned is None else f"{tuned - base:+.4f}"


def comparison_markdown(summary: dict) -> str:
    """The one table: every measure of the base and the tuned checkpoint side by side."""
    preference = summary["denoising_preference"]
    lines = [
        f"Held-out pairs: {summary['pairs']} ({summary['preference_pairs']} with a rejected edit); "
        f"edits with seed {summary['settings']['seed']}, {summary['settings']['steps']} steps, text guidance "
        f"{summary['settings']['text_guidance']}, image guidance {summary['settings']['image_guidance']}.",
        "",
        "| measure | base | tuned | change |",
        "| --- | ---: | ---: | ---: |",
        f"| preference accuracy (implicit reward vs base) | 0.5000 | {_cell(summary['implicit_accuracy'])} | "
        f"{_change(0.5, summary['implicit_accuracy'])} |",
        f"| reward margin (error drop, chosen minus rejected) | 0 | {_small(summary['reward_margin'])} | |",
        f"| denoising preference (chosen denoised better) | {_cell(preference.get(BASE))} | "
        f"{_cell(preference.get(TUNED))} | {_change(preference.get(BASE), preference.get(TUNED))} |",
    ]
    for metric, values in summary["metrics"].items():
        base, tuned = values.get(BASE), values.get(TUNED)
        lines.append(f"| {metric} | {_cell(base)} | {_cell(tuned)} | {_change(base, tuned)} |")
    if summary["judge"] is None:
        lines += ["", "No judge given (--judge-config): no judge scores."]
    else:
        lines += ["", f"Judge: {summary['judge']}."]
    return "\n".join(lines) + "\n"


def write_pair_table(path: Path, pairs: list[HeldOutPair], rows: dict[str, list[dict]], margins) -> None:
    """One row per pair and checkpoint: its measures, and the pair's reward margin."""
    usable = iter(margins or [])
    by_pair = [next(usable) if p.rejected is not None and margins else math.nan for p in pairs]
    metrics = [k for k in rows[BASE][0] if k in CLIP_METRICS or k.startswith("judge_")]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "instruction", "checkpoint", *metrics, "reward_margin"])
        for label, label_rows in rows.items():
            for pair, row, margin in zip(pairs, label_rows, by_pair, strict=True):
                writer.writerow([pair.key, pair.meta.instruction, label, *(row[m] for m in metrics), margin])


def plot_comparison(
    pairs: list[HeldOutPair], base: list[np.ndarray], tuned: list[np.ndarray], png: Path
) -> None:
    """One row per pair: source, the base's edit, the tuned edit, the chosen and the rejected edit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ("source", "base", "tuned", "chosen", "rejected")
    fig, axes = plt.subplots(len(pairs), len(columns), figsize=(12, 2.6 * len(pairs)), squeeze=False)
    for row, pair in enumerate(pairs):
        images = (pair.source, base[row], tuned[row], pair.chosen, pair.rejected)
        for col, (image, title) in enumerate(zip(images, columns, strict=True)):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if image is not None:
                ax.imshow(image)
            ax.set_title(title if row or col else f"{title}: {pair.meta.instruction[:40]}", fontsize=8)
        axes[row][0].set_ylabel(pair.meta.instruction[:32], fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
