"""What resuming costs: a finished build rerun with nothing to do, and the memory of the resume check.

1. Build N samples (removal + add pairs on a synthetic PhraseCut set, OpenCV) against a temporary
   Prefect server, then run the same build again: the rerun opens every stage, finds it complete and
   writes nothing new. Prints the rerun's time as a share of the build's (goal: under 3%), and beside
   it a flow run that does nothing on the same server (Prefect's fixed cost of any build).
2. A stage folder with P committed batches (64 records each, listed and committed): the peak memory of
   the check a resumed run does (open the stage: fingerprint, lease, cleaning; then the listing, the
   committed batches, the committed record ids and shards), measured in a fresh process, with and
   without the consolidated manifest (goal: < 300 MB).

    python bench/resume.py             # 2,000 samples, 10,000 parts
    python bench/resume.py --quick     # small sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fixture writer

CHECK = r"""
import json, sys, time
import pyarrow as pa
from ieiw.storage import manifest
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.manifest import RecordSet
from ieiw.storage.stage_folder import open_stage

def high_water_mb():  # this process's own peak (ru_maxrss would include the parent's, across fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

url = sys.argv[1]
base = high_water_mb()
started = time.perf_counter()
with open_stage(url, Fingerprint("bench", settings={"n": 1})) as writer:  # what the runner reads first
    listing = writer.listing()
    committed = writer.committed_batches()
    mask = pa.array([b in committed for b in listing.column("batch").to_pylist()], pa.bool_())
    done = RecordSet([listing.column("record_id").combine_chunks().filter(mask)])
    shards = manifest.committed_shards(url)
seconds = time.perf_counter() - started
peak = high_water_mb()
print(json.dumps({"records": len(done), "shards": len(shards), "seconds": seconds,
                  "peak_mb": peak, "check_mb": peak - base}))
"""


def build_twice(samples: int, workdir: Path) -> tuple[float, float, dict]:
    from phrasecut_fixture import write_phrasecut
    from prefect.testing.utilities import prefect_test_harness

    from ieiw.flows.build import ieiw_build
    from ieiw.flows.config import BuildConfig

    annotations, images = write_phrasecut(str(workdir / "data"), n_images=max(1, samples // 4), size=96)
    config = BuildConfig.model_validate(
        {
            "name": "resume-bench",
            "output": str(workdir / "out"),
            "shards": {"max_samples": 500},
            "runner": {"max_in_flight": 4, "max_workers": 2},
            "removal": {"source": {"annotations": [annotations], "images": images}, "batch_size": 64},
        }
    )
    with prefect_test_harness(server_startup_timeout=120):
        started = time.perf_counter()
        first = ieiw_build(config)
        build = time.perf_counter() - started
        started = time.perf_counter()
        again = ieiw_build(config)
        rerun = time.perf_counter() - started
        empty = empty_flow_seconds()
    assert again["stages"]["removal"]["batches"] == 0, "the rerun did work"
    assert again["stages"]["removal"]["skipped"], "the complete stage started a flow run"
    return build, rerun, empty, first["stages"]["removal"]


def empty_flow_seconds(runs: int = 3) -> float:
    """The median time of a flow run that does nothing on the same server: Prefect's fixed cost of the
    build's own flow run (creating it, its states, joining its heartbeat thread), the baseline."""
    from prefect import flow

    @flow(name="empty-baseline")
    def empty() -> None:
        return None

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        empty()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def write_parts(url: str, parts: int, rows: int) -> None:
    from ieiw.storage import manifest
    from ieiw.storage.fingerprint import Fingerprint
    from ieiw.storage.stage_folder import open_stage

    fingerprint = Fingerprint("bench", settings={"n": 1})
    with open_stage(url, fingerprint) as writer:
        for part in range(parts):
            batch = f"bench-{part:06d}"
            table = [
                {
                    "key": f"{part:06d}{row:04d}" + "0" * 14,
                    "record_id": f"record-{part}-{row}",
                    "batch": batch,
                    "task": "remove",
                    "kept": True,
                    "shard": f"{batch}-0000.tar",
                    "instruction": "remove the red square",
                    "dataset": "bench",
                    "image_id": str(part),
                    "scores": "{}",
                    "fingerprint": writer.digest,
                }
                for row in range(rows)
            ]
            writer.list_batch(batch, part, [row["record_id"] for row in table])
            manifest.write_part(url, batch, table)
        writer.finish()


def check_memory(url: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHECK, url], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--parts", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.parts = 200, 300
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="ieiw-resume-") as tmp:
        work = Path(tmp)
        build, rerun, empty, summary = build_twice(args.samples, work)
        print(f"build: {summary['kept']} samples in {build:.1f} s; rerun with nothing to do: {rerun:.2f} s")
        print(f"ratio: rerun / build = {rerun / build:.3f} ({100 * rerun / build:.1f}%, goal under 3%)")
        ours = max(rerun - empty, 0.0)
        print(
            f"baseline: a Prefect flow run that does nothing takes {empty:.2f} s here; the rerun beyond it "
            f"{ours:.2f} s = {100 * ours / build:.1f}% of the build"
        )
        url = str(work / "parts")
        write_parts(url, args.parts, 64)
        consolidated = check_memory(url)
        os.remove(os.path.join(url, "manifest.parquet"))
        os.remove(os.path.join(url, "inputs.parquet"))
        parts_only = check_memory(url)
        for label, found in (("with the consolidated manifest", consolidated), ("parts only", parts_only)):
            print(
                f"resume check over {args.parts} parts, {found['records']} records ({label}): "
                f"{found['seconds']:.2f} s, peak {found['peak_mb']:.0f} MB "
                f"(+{found['check_mb']:.0f} MB for the check; goal under 300 MB)"
            )


if __name__ == "__main__":
    main()
