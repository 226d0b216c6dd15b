"""One rank of a latent-cache pass, started twice by ``torch.distributed.run`` (gloo on the CPU), as
``accelerate launch`` starts the trainer's processes: ``latent_cache_worker.py BASE INPUT ROOT OUT``.

Each rank writes ``OUT/rank<r>.json``: the cache shards it got back and the counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import AutoencoderKL

from ieiw.model.latent_cache import build_latent_cache, cache_fingerprint
from ieiw.model.ranks import TorchRanks, current_ranks


def main() -> None:
    base, inputs, root, out = sys.argv[1:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    ranks = current_ranks()
    assert isinstance(ranks, TorchRanks) and ranks.world == 2
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    result = build_latent_cache(vae, [inputs], root, cache_fingerprint(base, 24), "cpu", torch.float32)
    Path(out, f"rank{ranks.rank}.json").write_text(
        json.dumps({"shards": result.shards, "counts": dict(result.counts), "folder": result.folder})
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
