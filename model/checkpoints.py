"""Save and resume a training run, and save its result as a diffusers pipeline.

A checkpoint (``<output_dir>/checkpoints/checkpoint-NNNNNNN``) holds the UNet and EMA weights as
safetensors, the optimizer, LR-schedule and grad-scaler states (tensors only, loaded with
``weights_only=True``) and each process's data-stream position. It is written under a temporary
name and renamed when complete, so a run killed mid-save leaves no half checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import EulerAncestralDiscreteScheduler
from safetensors.torch import load_file, save_file

from ieiw.model.build import Models
from ieiw.model.config import TrainConfig
from ieiw.model.data import StreamState
from ieiw.model.family import edit_pipeline_class
from ieiw.storage.models import pretrained

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_dirs(output_dir: str) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint appears under its name only when complete)."""
    root = Path(output_dir) / "checkpoints"
    if not root.exists():
        return []
    found = [
        p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / "state.json").exists()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(
    accelerator: Accelerator,
    config: TrainConfig,
    models: Models,
    optimizer,
    lr_scheduler,
    step: int,
    stream: StreamState,
) -> Path:
    """Write UNet, EMA, optimizer, LR schedule and data position; keep the last few checkpoints."""
    root = Path(config.output_dir) / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    (tmp / f"data-rank{accelerator.process_index}.json").write_text(json.dumps(stream.to_json()))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(models.unet)
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, tmp / "unet.safetensors")
        if models.ema is not None:
            ema_state = dict(models.ema.state_dict())
            shadow = ema_state.pop("shadow_params")
            save_file({f"{i:05d}": p.contiguous() for i, p in enumerate(shadow)}, tmp / "ema.safetensors")
            (tmp / "ema.json").write_text(json.dumps(ema_state))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "processes": accelerator.num_processes}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(config.output_dir)[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def find_resume_checkpoint(config: TrainConfig) -> Path | None:
    if config.resume == "none":
        return None
    if config.resume == "latest":
        found = checkpoint_dirs(config.output_dir)
        return found[-1] if found else None
    path = Path(config.resume)
    if not (path / "state.json").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no state.json)")
    return path


def load_checkpoint(
    path: Path, accelerator: Accelerator, models: Models, optimizer, lr_scheduler, num_workers: int
) -> tuple[int, StreamState]:
    """Restore everything :func:`save_checkpoint` wrote (tensors only: nothing is unpickled)."""
    state = json.loads((path / "state.json").read_text())
    accelerator.unwrap_model(models.unet).load_state_dict(load_file(path / "unet.safetensors"))
    if models.ema is not None:
        tensors = load_file(path / "ema.safetensors")
        shadow = [tensors[k].to(accelerator.device) for k in sorted(tensors)]
        ema_state = json.loads((path / "ema.json").read_text())
        models.ema.load_state_dict({**ema_state, "shadow_params": shadow})
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", weights_only=True))
    if accelerator.scaler is not None and (path / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    data_file = path / f"data-rank{accelerator.process_index}.json"
    stream = StreamState.from_json(json.loads(data_file.read_text())) if data_file.exists() else None
    if stream is None or stream.num_workers != num_workers or state["processes"] != accelerator.num_processes:
        log.warning(
            "the data position in %s was saved with other workers or processes: the data order "
            "restarts from the step's seed instead of continuing exactly",
            path,
        )
        stream = StreamState(num_workers, [(state["step"] * 1_000_003, 0)] * max(1, num_workers))
    return state["step"], stream


def save_pipeline(config: TrainConfig, accelerator: Accelerator, models: Models) -> None:
    """Save the (EMA) UNet with the base's VAE, text encoder(s) and tokenizer(s) in diffusers layout, as
    the InstructPix2Pix pipeline of the base's family (SD or SDXL)."""
    unet = accelerator.unwrap_model(models.unet)
    if models.ema is not None:
        models.ema.store(unet.parameters())
        models.ema.copy_to(unet.parameters())
    scheduler = EulerAncestralDiscreteScheduler.from_config(models.noise_scheduler.config)
    if models.is_sdxl:
        parts = {"add_watermarker": False}
    else:
        parts = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    base, pinned = pretrained(config.base_model)
    pipe = edit_pipeline_class(models.family).from_pretrained(
        base, unet=unet, scheduler=scheduler, dtype=torch.float32, **parts, **pinned
    )  # VAE and text encoders reloaded in full precision, not the training copies cast to bf16
    pipe.save_pretrained(config.output_dir)
    if models.ema is not None:
        models.ema.restore(unet.parameters())
