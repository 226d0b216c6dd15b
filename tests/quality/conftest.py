"""Fixtures of the quality tests: a tiny open_clip model and aesthetic head saved as real
checkpoints are, and a candidate stage written with storage's own writer."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from quality_helpers import TINY_CLIP, TINY_CLIP_CONFIG, picture  # noqa: F401  (re-exported for fixtures)

from ieiw.quality.aesthetic import AestheticPredictor
from ieiw.quality.embeddings import EmbedderConfig, register_model_config
from ieiw.storage.commit import commit_batch
from ieiw.storage.images import encode_image
from ieiw.storage.schema import GeneratorInfo, Provenance, Sample, SampleMeta, Task, sample_key


@pytest.fixture(scope="session")
def clip_files(tmp_path_factory) -> dict[str, str]:
    """A random tiny open_clip model saved as a state dict (``.pt``) and as ``.safetensors``."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    config_path = root / f"{TINY_CLIP}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    register_model_config(str(config_path))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    state = model.state_dict()
    torch.save(state, root / "tiny-clip.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "tiny-clip.safetensors"))
    return {
        "config": str(config_path),
        "pt": str(root / "tiny-clip.pt"),
        "safetensors": str(root / "tiny-clip.safetensors"),
    }


@pytest.fixture(scope="session")
def embedder_config(clip_files) -> EmbedderConfig:
    return EmbedderConfig(
        model=TINY_CLIP, pretrained=clip_files["pt"], model_config_file=clip_files["config"], batch_size=16
    )


@pytest.fixture(scope="session")
def embedder(embedder_config):
    from ieiw.quality.embeddings import ClipEmbedder

    return ClipEmbedder.from_config(embedder_config)


@pytest.fixture(scope="session")
def aesthetic_checkpoint(tmp_path_factory) -> str:
    """A random aesthetic head saved as the published one is: a plain state dict ``.pth``."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(AestheticPredictor().state_dict(), path)
    return str(path)


def make_sample(
    n: int, task: Task, source: np.ndarray, target: np.ndarray, extra: dict | None = None
) -> Sample:
    provenance = Provenance(dataset="synthetic", image_id=f"img-{n}", region_id=f"r{n}", license="CC0")
    generator = GeneratorInfo(name="test-generator", backend="numpy", settings={"n": n})
    key = sample_key(task, provenance, generator)
    meta = SampleMeta(
        key=key,
        task=task,
        instruction=f"edit number {n}",
        instruction_source="template",
        provenance=provenance,
        generator=generator,
        record_id=f"rec-{n}",
        extra=extra or {},
    )
    return Sample(meta=meta, source=source, target=target)


def candidate_samples() -> list[Sample]:
    """Pairs of three tasks; pair 1 repeats pair 0's images (a duplicate) and pair 2 shares only
    pair 0's source (not a duplicate); pair 3 has captions for the directional similarity."""
    samples = []
    tasks = [Task.REMOVE, Task.ADD, Task.ENHANCEMENT]
    for n in range(12):
        task = tasks[n % 3]
        samples.append(make_sample(n, task, picture(100 + n), picture(200 + n)))
    samples[1] = make_sample(1, Task.ADD, picture(100), picture(200))
    samples[2] = make_sample(2, Task.ENHANCEMENT, picture(100), picture(202))
    samples[3] = make_sample(
        3,
        Task.REMOVE,
        picture(103),
        picture(203),
        extra={"source_caption": "a red house", "target_caption": "a blue house"},
    )
    return samples


def write_broken_shard(shard_dir: Path, good: Sample) -> dict[str, str]:
    """A shard with one sample whose source is not an image and one whose json is not JSON."""
    corrupt = make_sample(50, Task.REMOVE, picture(150), picture(250))
    bad_json_key = "f" * 24
    members = [
        (f"{corrupt.key}.src.png", b"this is not a png"),
        (f"{corrupt.key}.tgt.png", encode_image(corrupt.target)),
        (f"{corrupt.key}.json", corrupt.meta.model_dump_json().encode()),
        (f"{bad_json_key}.src.png", encode_image(good.source)),
        (f"{bad_json_key}.tgt.png", encode_image(good.target)),
        (f"{bad_json_key}.json", b"{not json"),
    ]
    shard_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(shard_dir / "broken-0000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return {"corrupt_image": corrupt.key, "corrupt_json": bad_json_key}


@pytest.fixture()
def candidates(tmp_path) -> dict:
    """A candidate stage: two committed batches of pairs plus one broken shard."""
    stage = tmp_path / "candidates"
    samples = candidate_samples()
    commit_batch(samples[:7], str(stage), "gen-a")
    commit_batch(samples[7:], str(stage), "gen-b")
    broken = write_broken_shard(stage / "shards", samples[5])
    return {"url": str(stage), "samples": samples, "broken": broken, "total": len(samples) + 2}
