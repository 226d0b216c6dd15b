"""Train an InstructPix2Pix-style editing model on the shards this tool builds.

Read top to bottom, like the diffusers example scripts: build the models (:mod:`ieiw.model.build`: the
base checkpoint's UNet widened from 4 to 8 input channels), build the data (seeded, resumable shard
stream, with an optional latent-cache pass), then the loop of training steps with
classifier-free-guidance dropout, EMA, checkpoints and resume (:mod:`ieiw.model.checkpoints`), and at the
end the pipeline saved in diffusers layout so
``StableDiffusionInstructPix2PixPipeline.from_pretrained(output_dir)`` opens it (or
``StableDiffusionXLInstructPix2PixPipeline`` for an SDXL base: both text encoders, the pooled text and the
size ids, :mod:`ieiw.model.conditioning`). The samples seen
per shard set are counted and written (``mix.json``, ``mix.csv``, TensorBoard ``mix/*``) so a run
shows that its data mix matched the configured weights.

A run's ``objective`` is ``edit`` (:func:`training_step`) or ``preference``: Diffusion-DPO on preference
pairs (:func:`ieiw.model.dpo.preference_step`) against a frozen copy of the starting UNet taken before any
step or resume, with the same data stream (each item also carrying its rejected edit), latent cache (a
cache of its own, holding the rejected edits), checkpoints, EMA and saved pipeline; it logs the DPO loss,
implicit accuracy, reward margin and the chosen and rejected errors (``loss.csv``, TensorBoard ``dpo/*``).

Run ``python -m ieiw.model.trainer CONFIG.yaml [--stage NAME] [--overrides JSON]`` (one process) or
``accelerate launch -m ieiw.model.trainer CONFIG.yaml`` (many GPUs); a config with ``stages`` runs them
in order through :mod:`ieiw.model.curriculum`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from ieiw.model.buckets import Buckets
from ieiw.model.build import Models, build_models
from ieiw.model.checkpoints import find_resume_checkpoint, load_checkpoint, save_checkpoint, save_pipeline
from ieiw.model.conditioning import TextConditioning, encode_prompts, null_conditioning
from ieiw.model.config import TrainConfig, load_train_config
from ieiw.model.data import (
    SourceSet,
    StreamSettings,
    StreamState,
    estimated_samples,
    expand_sets,
    make_loader,
    mix_report,
    write_mix_report,
)
from ieiw.model.dpo import PreferenceStats, preference_step, reference_unet
from ieiw.model.latent_cache import build_latent_cache, cache_fingerprint
from ieiw.model.loss_log import LossLog
from ieiw.model.reports import write_json
from ieiw.model.step import (
    batch_latents,
    diffusion_target,
    dropped_conditioning,
    predict,
    time_ids_of,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data


def build_data(
    config: TrainConfig,
    models: Models,
    accelerator: Accelerator,
    state: StreamState,
    sets: list[SourceSet] | None = None,
):
    """The batch loader of this process and its sets; runs the latent-cache pass first when configured."""
    sets = expand_sets(config.data.sets) if sets is None else sets
    buckets = run_buckets(config, models)
    if config.data.latent_cache:
        sets = cache_latents(config, models, accelerator, sets, buckets)
    settings = StreamSettings(
        rejected=config.objective == "preference",
        resolution=config.data.resolution,
        random_flip=config.data.random_flip,
        shuffle_buffer=config.data.shuffle_buffer,
        shards_per_block=config.data.shards_per_block,
        batch_size=config.train_batch_size,
        seed=config.seed,
        rank=accelerator.process_index,
        buckets=buckets,
        sessions=config.data.sessions,
    )
    loader = make_loader(sets, settings, state)
    return loader, loader.dataset.sets


def run_buckets(config: TrainConfig, models: Models) -> Buckets | None:
    """The run's aspect-ratio buckets (None: square crops); their sides must suit the model."""
    if config.data.buckets is None:
        return None
    multiple, step = models.size_multiple, config.data.buckets.step
    if step % multiple:
        raise ValueError(
            f"data.buckets.step {step} is not a multiple of the model's downsampling, {multiple}"
        )
    return Buckets.make(config.data.resolution, step, config.data.buckets.max_aspect)


def steps_for_epochs(config: TrainConfig, sets: list[SourceSet], num_processes: int) -> int:
    """Optimizer steps for ``config.epochs`` passes over (about) all samples of ``sets``."""
    per_step = config.train_batch_size * config.gradient_accumulation_steps * num_processes
    return max(1, math.ceil(config.epochs * estimated_samples(sets) / per_step))


def cache_latents(
    config: TrainConfig,
    models: Models,
    accelerator: Accelerator,
    sets: list[SourceSet],
    buckets: Buckets | None = None,
):
    """Encode every shard once (split across processes); return the sets over the cache shards."""
    vae_from = config.latent_cache_model or config.base_model  # every curriculum stage has the same VAE
    fingerprint = cache_fingerprint(
        vae_from,
        config.data.resolution,
        dtype=models.vae.dtype,
        buckets=buckets,
        rejected=config.objective == "preference",  # a preference stage caches the rejected edits too
    )
    result = build_latent_cache(
        models.vae,
        [u for s in sets for u in s.urls],
        config.data.latent_cache,
        fingerprint,
        info={"vae": vae_from},
    )
    if accelerator.is_main_process:
        log.info("latent cache %s: %s", result.folder, dict(result.counts))
    cached: list[SourceSet] = []
    for shard_set in sets:
        urls = [s for u in shard_set.urls if (s := result.shards.get(u))]
        if not urls:
            raise ValueError(f"shard set {shard_set.name!r}: no sample of its shards could be cached")
        name, choosers = shard_set.name, shard_set.choosers
        cached.append(SourceSet(urls, shard_set.weight, shard_set.text_field, name, choosers=choosers))
    return cached


# ----------------------------------------------------------------------------- one step


def step_generator(seed: int, rank: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The random numbers of one micro-batch depend only on where it is, so a resume repeats them."""
    digest = hashlib.sha256(f"{seed}-{rank}-{step}-{micro}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def encode_text(models: Models, texts: list[str], device) -> torch.Tensor:
    """The text encoder(s)' hidden states of ``texts`` (SDXL: both, side by side)."""
    return encode_prompts(models, texts, device).hidden


def training_step(
    config: TrainConfig,
    models: Models,
    unet,
    batch: dict,
    null_text: torch.Tensor | TextConditioning,
    generator: torch.Generator,
    device,
) -> torch.Tensor:
    """The diffusion loss of one batch: noise the target latent, predict from it + source + text.

    With ``config.image_conditioning`` off (caption pre-training) the source latent is always zeros,
    the input classifier-free training gives when it drops the image. ``null_text`` is the conditioning
    of a dropped text (:func:`ieiw.model.conditioning.null_conditioning`; a tensor for SD's hidden states).
    """
    latents, source_latents = batch_latents(models, batch, generator, device, config.image_conditioning)
    bsz = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=device)
    timesteps = torch.randint(
        0, models.noise_scheduler.config.num_train_timesteps, (bsz,), generator=generator, device=device
    )
    noisy = models.noise_scheduler.add_noise(latents, noise, timesteps)
    text, source_latents = dropped_conditioning(
        config, models, batch, source_latents, null_text, generator, device
    )
    target = diffusion_target(models, latents, noise, timesteps)
    model_input = torch.cat([noisy, source_latents], dim=1)
    pred = predict(models, unet, model_input, timesteps, text, time_ids_of(models, batch, latents, device))
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig, keep_process_group: bool = False) -> Path:
    """Run (or resume) a training run; returns the output folder holding the saved pipeline.

    ``keep_process_group`` leaves the processes' group up for a next stage (the curriculum ends it).
    """
    out = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    device = accelerator.device
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 parts of mixed precision use tensor cores
    sets = expand_sets(config.data.sets)
    if config.epochs is not None:
        steps = steps_for_epochs(config, sets, accelerator.num_processes)
        log.info("%s epochs of about %d samples: %d steps", config.epochs, estimated_samples(sets), steps)
        config = config.model_copy(update={"max_steps": steps})
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        dumped = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        (out / "train_config.yaml").write_text(dumped)
    torch.manual_seed(config.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
    models = build_models(config, weight_dtype)
    models.vae.to(device)
    for encoder in models.text_encoders:
        encoder.to(device)
    if models.ema is not None:
        models.ema.to(device)
    # the preference objective's frozen reference: the starting checkpoint, before any step or resume
    preference = config.objective == "preference"
    reference = reference_unet(models.unet, weight_dtype, device) if preference else None

    opt = config.optim
    optimizer = torch.optim.AdamW(
        models.unet.parameters(),
        lr=opt.learning_rate,
        betas=(opt.adam_beta1, opt.adam_beta2),
        weight_decay=opt.weight_decay,
        eps=opt.adam_epsilon,
        fused=device.type == "cuda",
    )
    lr_scheduler = get_scheduler(
        opt.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=opt.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_steps * accelerator.num_processes,
    )
    unet, optimizer, lr_scheduler = accelerator.prepare(models.unet, optimizer, lr_scheduler)
    models.unet = unet
    raw_unet = accelerator.unwrap_model(unet)

    step, stream = 0, StreamState(config.data.num_workers)
    resume_from = find_resume_checkpoint(config)
    if resume_from is not None:
        step, stream = load_checkpoint(
            resume_from, accelerator, models, optimizer, lr_scheduler, config.data.num_workers
        )
        log.info("resumed from %s at step %d", resume_from, step)
    if config.compile:
        unet = torch.compile(unet)
    columns = PreferenceStats.names() if preference else ()
    loss_log = None
    if accelerator.is_main_process:
        loss_log = LossLog(out / "loss.csv", resume_step=step, columns=columns)
    if accelerator.is_main_process:
        accelerator.init_trackers("train", config={"max_steps": config.max_steps, "seed": config.seed})

    loader, sets = build_data(config, models, accelerator, stream, sets)
    names, weights = [x.name for x in sets], [x.weight for x in sets]
    with torch.no_grad():
        null_text = null_conditioning(models, device)
    drops: dict[int, dict] = {}
    progress = tqdm(
        total=config.max_steps,
        initial=step,
        desc="training",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    micro, running = 0, []
    batches = iter(loader)
    while step < config.max_steps:
        batch = next(batches)
        with accelerator.accumulate(unet):
            generator = step_generator(config.seed, accelerator.process_index, step, micro, device)
            if reference is not None:
                result = preference_step(config, models, unet, reference, batch, null_text, generator, device)
                loss, reported = result.loss, result.stats.as_dict()
            else:
                loss = training_step(config, models, unet, batch, null_text, generator, device)
                reported = {}
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), opt.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        stream.advance(batch)
        drops[batch["position"][0]] = batch["drops"]
        running.append({"loss": loss.detach().float(), **{k: v.float() for k, v in reported.items()}})
        micro += 1
        if not accelerator.sync_gradients:
            continue
        micro = 0
        step += 1
        if models.ema is not None:
            models.ema.step(raw_unet.parameters())
        means = mean_over_processes(accelerator, running)
        mean_loss = means.pop("loss")
        running = []
        progress.update(1)
        progress.set_postfix(loss=f"{mean_loss:.4f}")
        if step % config.log_every == 0 or step == config.max_steps:
            mix = mix_report(names, weights, gather_counts(accelerator, names, stream))
            shares = {f"mix/{row['name']}": row["share"] for row in mix["sets"]}
            objective = {f"dpo/{name}": value for name, value in means.items()}
            logged = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], **objective, **shares}
            accelerator.log(logged, step=step)
        if loss_log is not None:
            loss_log.add(step, mean_loss, **means)
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            save_checkpoint(accelerator, config, models, optimizer, lr_scheduler, step, stream)
            mix = mix_report(names, weights, gather_counts(accelerator, names, stream))
            if accelerator.is_main_process:
                loss_log.plot(out / "loss.png")
                write_mix_report(out, mix)
    progress.close()
    dropped = sum((Counter(d) for d in drops.values()), Counter())
    if dropped:
        log.warning("samples dropped while reading: %s", dict(dropped))
    mix = mix_report(names, weights, gather_counts(accelerator, names, stream))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(out / "data_drops.json", dict(dropped))
        write_mix_report(out, mix)
        log.info(
            "samples seen per set: %s",
            {r["name"]: f"{r['samples']} ({r['share']:.3f} of {r['weight_share']:.3f})" for r in mix["sets"]},
        )
        save_pipeline(config, accelerator, models)
    accelerator.wait_for_everyone()  # the next stage of a curriculum starts from the saved pipeline
    if keep_process_group:
        for tracker in accelerator.trackers:
            tracker.finish()
    else:
        accelerator.end_training()
    return out


def mean_over_processes(accelerator: Accelerator, running: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Each reported value (the loss; a preference step's statistics) averaged over the micro-batches of
    one step and over all processes."""
    names = list(running[0])
    local = torch.stack([torch.stack([r[n] for r in running]).mean() for n in names])
    return dict(zip(names, accelerator.gather(local[None]).mean(0).tolist(), strict=True))


def gather_counts(accelerator: Accelerator, names: list[str], stream: StreamState) -> list[int]:
    """Samples seen per set (in ``names`` order), summed over all processes."""
    local = torch.tensor([stream.seen.get(n, 0) for n in names], dtype=torch.long, device=accelerator.device)
    return [int(v) for v in accelerator.reduce(local, reduction="sum").cpu()]


def main(argv: list[str] | None = None) -> None:
    """``python -m ieiw.model.trainer CONFIG [--stage NAME] [--overrides JSON]`` (what ``ieiw train``
    launches under ``accelerate launch``); ``--overrides`` holds the dotted fields ``ieiw train``'s options
    set (:func:`ieiw.model.config.train_overrides`)."""
    import argparse

    from ieiw.model.curriculum import run_curriculum  # the curriculum calls this module's train

    parser = argparse.ArgumentParser(prog="python -m ieiw.model.trainer")
    parser.add_argument("config", help="training config YAML")
    parser.add_argument("--stage", default=None, help="run only this stage")
    parser.add_argument("--overrides", default=None, help="JSON object: dotted field path -> value")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO)
    overrides = json.loads(args.overrides) if args.overrides else None
    run_curriculum(load_train_config(args.config, overrides=overrides), stage=args.stage)


if __name__ == "__main__":
    main()
