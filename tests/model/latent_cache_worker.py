"""One rank of a latent-cache pass, started twice by ``torch.distributed.run`` (gloo on the CPU), as
``accelerate launch`` starts the trainer's processes: ``latent_cache_worker.py BASE INPUT ROOT OUT
[FAILING_RANK]``.

Each rank writes ``OUT/rank<r>.json``: the cache shards it got back and the counts, or the error it
raised. With ``FAILING_RANK``, that rank's VAE fails on its first batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import AutoencoderKL

from ieiw.model.latent_cache import (
    CacheFailed,
    TorchRanks,
    build_latent_cache,
    cache_fingerprint,
    current_ranks,
)


def main() -> None:
    base, inputs, root, out, *failing = sys.argv[1:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    ranks = current_ranks()
    assert isinstance(ranks, TorchRanks) and ranks.world == 2
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    if failing and ranks.rank == int(failing[0]):
        def broken(*args, **kwargs):
            raise RuntimeError(f"the VAE of rank {ranks.rank} broke")

        vae.encode = broken
    try:
        result = build_latent_cache(vae, [inputs], root, cache_fingerprint(base, 24))
        report = {"shards": result.shards, "counts": dict(result.counts), "folder": result.folder}
    except CacheFailed as failed:
        report = {"error": f"{type(failed).__name__}: {failed}"}
    Path(out, f"rank{ranks.rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
