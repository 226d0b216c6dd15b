"""Reading a build's shards with Hugging Face `datasets` against our own reader.

Writes a 2,000-sample build (removal + add pairs on a synthetic PhraseCut set, OpenCV, committed through
the stage folder), then reads every sample with `datasets.load_dataset("webdataset", streaming=True)`
(decoding both images, as a trainer would) and with `ieiw.storage.shards.iter_samples` over the same
shards, each timed in the same run. Prints samples/s of both and the ratio (goal: at least 0.5).

    python bench/hf_load.py            # 2,000 samples
    python bench/hf_load.py --quick    # 200 samples
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fixture writer


def write_build(samples: int, root: Path) -> list[str]:
    from phrasecut_fixture import write_phrasecut

    from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter
    from ieiw.pipelines.removal import RemovalSettings, removal_stage
    from ieiw.pipelines.sources.phrasecut import iter_records
    from ieiw.storage import manifest
    from ieiw.storage.fingerprint import Fingerprint
    from ieiw.storage.shards import ShardSpec
    from ieiw.storage.stage_folder import open_stage

    annotations, images = write_phrasecut(str(root / "data"), n_images=max(1, samples // 4), size=160)
    records = list(iter_records(annotations, images))
    inpainter = build_inpainter(InpaintConfig())
    url = str(root / "removal")
    with open_stage(url, Fingerprint("removal", settings={"bench": True})) as writer:
        for start in range(0, len(records), 64):
            results = removal_stage(records[start : start + 64], inpainter, RemovalSettings())
            writer.commit(f"removal-{start:06d}", results, ShardSpec(max_samples=250))
        writer.finish()
    return manifest.committed_shards(url)


def read_with_datasets(shards: list[str], cache: str) -> tuple[int, float]:
    from datasets import load_dataset

    started = time.perf_counter()
    rows = load_dataset(
        "webdataset", data_files={"train": shards}, split="train", streaming=True, cache_dir=cache
    )
    count = 0
    for row in rows:
        np.asarray(row["src.png"].convert("RGB"))
        np.asarray(row["tgt.png"].convert("RGB"))
        count += 1
    return count, time.perf_counter() - started


def read_with_ours(shards: list[str]) -> tuple[int, float]:
    from ieiw.storage.shards import iter_samples

    started = time.perf_counter()
    count = sum(1 for _ in iter_samples(shards))
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.samples = 200
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="ieiw-hf-load-") as tmp:
        shards = write_build(args.samples, Path(tmp))
        ours_n, ours_s = read_with_ours(shards)
        hf_n, hf_s = read_with_datasets(shards, os.path.join(tmp, "hf-cache"))
        assert hf_n == ours_n, f"datasets read {hf_n} samples, our reader {ours_n}"
        print(f"{len(shards)} shards, {ours_n} samples")
        print(f"iter_samples: {ours_n / ours_s:.1f} samples/s")
        print(f"datasets webdataset streaming: {hf_n / hf_s:.1f} samples/s")
        print(f"ratio: datasets / ours = {(hf_n / hf_s) / (ours_n / ours_s):.2f} (goal at least 0.5)")


if __name__ == "__main__":
    main()
