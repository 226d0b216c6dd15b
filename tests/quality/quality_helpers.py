"""Plain helpers of the quality tests (importable by name; conftest modules are not)."""

from __future__ import annotations

import io
import tarfile

import numpy as np

from ieiw.storage import manifest
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.images import encode_image
from ieiw.storage.schema import GeneratorInfo, Provenance, Sample, SampleMeta, Task, sample_key
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import open_stage

TINY_CLIP = "TinyCLIP-ieiw-quality-test"
TINY_CLIP_CONFIG = {
    "embed_dim": 768,  # the aesthetic head's input size, as with ViT-L/14
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def picture(seed: int, size: int = 48) -> np.ndarray:
    """A distinct synthetic photo: smooth colour gradients plus shapes, so hashes differ per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(rng.uniform(1, 9) * x + rng.uniform(1, 9) * y + rng.uniform(0, 6)) for _ in range(3)]
    image = (np.stack(channels, -1) * 110 + 128).astype(np.uint8)
    for _ in range(3):
        r0, c0 = rng.integers(0, size - 12, 2)
        image[r0 : r0 + 12, c0 : c0 + 12] = rng.integers(0, 255, 3)
    return image


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


def broken_shard(good: Sample) -> tuple[bytes, list[dict], dict[str, str]]:
    """A shard with one sample whose source is not an image and one whose json is not JSON: its
    bytes, its manifest rows and the two keys."""
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
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    empty = {name: None for name in manifest.MANIFEST_SCHEMA.names}
    rows = [
        {**empty, "key": key, "batch": "broken", "kept": True, "shard": "broken-0000.tar", "task": "remove"}
        for key in (corrupt.key, bad_json_key)
    ]
    return buffer.getvalue(), rows, {"corrupt_image": corrupt.key, "corrupt_json": bad_json_key}


CANDIDATES_FINGERPRINT = Fingerprint("candidates", {"fixture": "quality tests"})


def write_candidates(
    stage_url: str,
    batches: dict[str, list[Sample]],
    spec: ShardSpec | None = None,
    broken: Sample | None = None,
) -> dict[str, str]:
    """A committed candidate stage: one batch per entry of ``batches`` (plus, given ``broken``, a
    committed shard with a corrupt image and a corrupt json). Returns the broken keys."""
    keys: dict[str, str] = {}
    with open_stage(stage_url, CANDIDATES_FINGERPRINT) as writer:
        for name, samples in batches.items():
            writer.commit(name, samples, spec)
        if broken is not None:
            data, rows, keys = broken_shard(broken)
            writer.commit_files(
                "broken", manifest.rows_to_table(rows), {f"{manifest.SHARD_DIR}/broken-0000.tar": data}
            )
        writer.finish({"batches": len(batches) + int(broken is not None), "device": "cpu"})
    return keys


def quality_stages(candidates_url: str, config, final_url: str | None = None):
    """The score and filter stages of a candidate stage, at their places in its build's layout (the
    filter's final stage at ``final_url`` if given)."""
    from ieiw.quality.filtering import FilterStage
    from ieiw.quality.scoring import ScoreStage
    from ieiw.storage.layout import BuildLayout, generator_name

    layout = BuildLayout.of_stage(candidates_url)
    generator = generator_name(candidates_url)
    scores = layout.scores(generator)
    final = final_url or layout.final(generator)
    return (
        ScoreStage(config, candidates_url, scores, layout),
        FilterStage(config, candidates_url, scores, final, layout.report(generator), layout),
    )


def run_plain(stage, rebuild="no", workers: int = 1):
    """A stage through the one runner on threads of this process (no Prefect)."""
    from ieiw.storage.runner import RunOptions, ThreadExecutor, run_stage

    with ThreadExecutor(workers) as executor:
        return run_stage(stage, executor, RunOptions(rebuild=rebuild))
