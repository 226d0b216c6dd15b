"""The latent cache as a stage folder: one per encoder fingerprint, a batch per input shard identity,
two ranks that share the work through rank 0's lease, and only committed input shards cached."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load as load_safetensors
from synthetic_edits import write_synthetic_shards, write_synthetic_stage
from tiny_diffusion import save_tiny_base

from ieiw.model.inputs import input_identities, shard_identity
from ieiw.model.latent_cache import CACHE_SCHEMA, build_latent_cache, cache_fingerprint, cache_folder
from ieiw.model.sample_decode import LATENT_MEMBER
from ieiw.storage import manifest
from ieiw.storage.lease import read_lease
from ieiw.storage.shards import iter_tar_groups
from ieiw.storage.stage_folder import read_record

HERE = Path(__file__).resolve().parent


def _vae(base) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(str(base), subfolder="vae")


def _cache(base, inputs, root, vae=None):
    return build_latent_cache(vae or _vae(base), inputs, str(root), cache_fingerprint(str(base), 24))


def _parts(folder) -> list[dict]:
    return manifest.read_table(str(folder), schema=CACHE_SCHEMA).to_pylist()


def _latents(url: str) -> dict[str, dict[str, torch.Tensor]]:
    return {key: load_safetensors(members[LATENT_MEMBER]) for key, members in iter_tar_groups(url)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_ranks(base, inputs: str, root: Path, out: Path, *extra: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(HERE / "latent_cache_worker.py"),
        str(base),
        inputs,
        str(root),
        str(out),
        *extra,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_share_the_cache_through_one_lease_and_equal_one_rank(tiny_base, tmp_path):
    stage = tmp_path / "stage"
    written = write_synthetic_stage(str(stage), count=36, per_batch=6, seed=4, uncommitted=6)
    inputs = manifest.committed_shards(str(stage))
    assert len(inputs) == 6 and written["orphan"] not in inputs
    fingerprint = cache_fingerprint(str(tiny_base), 24)

    # a run that cached two of the input shards, then was killed leaving a temporary and an orphan
    two = tmp_path / "two"
    _cache(tiny_base, inputs[:2], two)
    folder = Path(cache_folder(str(two), fingerprint))
    temporary = folder / "shards" / ".latent-cache-0123.tar.tmp-deadbeef"
    orphan = folder / "shards" / "latent-cache-killed.tar"
    temporary.write_bytes(b"half a shard")
    shutil.copy(next((folder / "shards").glob("latent-cache-*.tar")), orphan)

    results = _launch_two_ranks(tiny_base, str(stage), two, tmp_path / "ranks")
    assert results[0] == results[1]  # every rank gets the same cache shards back
    assert results[0]["counts"] == {"cached": 24, "shards_cached": 4, "shards_reused": 2}
    parts = _parts(folder)
    assert len(parts) == 6 and sum(p["samples"] for p in parts) == 36
    new = [p for p in parts if p["input"] not in {Path(u).name for u in inputs[:2]}]
    assert sorted(p["rank"] for p in new) == [0, 0, 1, 1]  # both ranks wrote, a disjoint half each
    assert {p["fingerprint"] for p in parts} == {fingerprint.digest}
    # the holder cleaned what the killed run left, once, before the ranks started; nothing else went
    record = read_record(str(folder))
    assert record["runs"][-1]["extra"]["cleaned"] == {"temporaries": 1, "uncommitted_shards": 1}
    assert record["runs"][-1]["extra"]["ranks"] == 2
    assert not temporary.exists() and not orphan.exists()
    assert sorted(p.name for p in (folder / "shards").iterdir()) == sorted(p["shard"] for p in parts)
    assert read_lease(str(folder)) is None
    assert Path(written["orphan"]).name not in {p["input"] for p in parts}  # an uncommitted input

    one = _cache(tiny_base, [str(stage)], tmp_path / "one")
    assert one.folder.removeprefix(str(tmp_path / "one")) == str(folder).removeprefix(str(two))
    assert sorted(p["batch"] for p in _parts(one.folder)) == sorted(p["batch"] for p in parts)
    for url in inputs:
        two_ranks, one_rank = results[0]["shards"][url], one.shards[url]
        assert Path(two_ranks).name == Path(one_rank).name
        assert Path(two_ranks).read_bytes() == Path(one_rank).read_bytes()
    cached_keys = {key for url in one.shards.values() for key in _latents(url)}
    assert cached_keys == set(written["committed"])


def test_a_failure_on_one_rank_raises_on_every_rank_and_keeps_what_committed(tiny_base, tmp_path):
    stage = tmp_path / "stage"
    write_synthetic_stage(str(stage), count=24, per_batch=6, seed=5)
    inputs = manifest.committed_shards(str(stage))
    root = tmp_path / "cache"
    results = _launch_two_ranks(tiny_base, str(stage), root, tmp_path / "ranks", "1")  # rank 1's VAE breaks
    for result in results:  # both ranks raised, each saying which rank failed and why
        assert result["error"].startswith("CacheFailed") and "rank 1" in result["error"], result
        assert "the VAE of rank 1 broke" in result["error"]
    folder = cache_folder(str(root), cache_fingerprint(str(tiny_base), 24))
    assert read_lease(folder) is None  # rank 0 let the stage go
    parts = _parts(folder)
    assert [p["rank"] for p in parts] == [0, 0]  # rank 0's share committed, rank 1's never did
    again = _cache(tiny_base, [str(stage)], root)  # a rerun encodes only what is missing
    assert again.counts == {"cached": 12, "shards_cached": 2, "shards_reused": 2}
    assert sorted(again.shards) == sorted(inputs) and all(again.shards.values())


def test_another_vae_gets_another_cache_and_a_moved_one_the_same(tiny_base, edit_shards, tmp_path):
    root = tmp_path / "cache"
    first = _cache(tiny_base, [str(edit_shards)], root)
    assert first.counts == {"cached": 48, "shards_cached": 4}
    before = {Path(u).name: Path(u).read_bytes() for u in first.shards.values()}

    other = save_tiny_base(tmp_path / "other-base", seed=1)  # same classes and config, other weights
    assert cache_fingerprint(str(other), 24).digest != cache_fingerprint(str(tiny_base), 24).digest
    second = _cache(other, [str(edit_shards)], root)
    assert second.folder != first.folder and second.counts["cached"] == 48
    key = next(iter(_latents(first.shards[next(iter(first.shards))])))
    url = next(iter(first.shards))
    assert not torch.equal(_latents(first.shards[url])[key]["src"], _latents(second.shards[url])[key]["src"])
    assert {Path(u).name: Path(u).read_bytes() for u in first.shards.values()} == before  # untouched

    moved = tmp_path / "elsewhere" / "base"
    shutil.copytree(tiny_base, moved)  # the same checkpoint at another path: the same cache
    again = _cache(moved, [str(edit_shards)], root)
    assert again.folder == first.folder and again.counts == {"shards_reused": 4}

    other_resolution = build_latent_cache(_vae(tiny_base), [str(edit_shards)], str(root),
                                          cache_fingerprint(str(tiny_base), 16))
    assert other_resolution.folder != first.folder and other_resolution.counts["cached"] == 48


def test_a_changed_input_shard_is_cached_again(tiny_base, tmp_path):
    source = tmp_path / "edits"
    shards = write_synthetic_shards(str(source), count=24, per_shard=6, seed=2)
    root = tmp_path / "cache"
    first = _cache(tiny_base, [str(source)], root)
    copy = tmp_path / "copied" / "edits"
    shutil.copytree(source, copy)  # copy2 keeps name, size and mtime: the same foreign shards
    assert _cache(tiny_base, [str(copy)], root).counts == {"shards_reused": 4}

    write_synthetic_shards(str(tmp_path / "redo"), count=5, per_shard=5, seed=9)
    os.replace(next((tmp_path / "redo").glob("*.tar")), shards[1])  # another shard under the same name
    changed = _cache(tiny_base, [str(source)], root)
    assert changed.counts == {"cached": 5, "shards_cached": 1, "shards_reused": 3}
    assert changed.shards[shards[1]] != first.shards[shards[1]]
    assert len(_latents(changed.shards[shards[1]])) == 5
    assert [changed.shards[u] for u in shards if u != shards[1]] == [
        first.shards[u] for u in shards if u != shards[1]
    ]


def test_input_identities_ignore_where_inputs_lie(tmp_path):
    stage = tmp_path / "a" / "removal"
    write_synthetic_stage(str(stage), count=4, per_batch=2, seed=1, uncommitted=2)
    digest = read_record(str(stage))["fingerprint"]["digest"]
    shard = manifest.committed_shards(str(stage))[0]
    assert shard_identity(shard) == f"stage:{digest}/{Path(shard).name}"
    moved = tmp_path / "b" / "removal"
    shutil.copytree(stage, moved)
    assert (
        input_identities([str(stage)])
        == input_identities([str(moved / "shards")])
        == {"synthetic": f"stage:{digest}"}  # the stage it holds, not the folder's name
    )
    foreign = tmp_path / "foreign"
    write_synthetic_shards(str(foreign), count=4, per_shard=2)
    elsewhere = tmp_path / "c" / "foreign"
    shutil.copytree(foreign, elsewhere)
    assert input_identities([str(foreign)]) == input_identities([str(elsewhere)])
    labels = input_identities([str(foreign), str(elsewhere), str(stage), str(moved)])
    assert list(labels) == ["shards[0]", "shards[1]", "synthetic", "synthetic#2"]


@pytest.mark.parametrize("suffix", ["", "/shards"])
def test_the_trainers_data_sets_read_only_committed_shards(tmp_path, suffix):
    from ieiw.model.config import ShardSet
    from ieiw.model.data import StreamSettings, StreamState, expand_sets, make_loader

    stage = tmp_path / "stage"
    written = write_synthetic_stage(str(stage), count=12, per_batch=4, seed=3, uncommitted=4)
    (shard_set,) = expand_sets([ShardSet(urls=[f"{stage}{suffix}"])])
    assert shard_set.urls == manifest.committed_shards(str(stage)) and written["orphan"] not in shard_set.urls
    loader = make_loader(
        [shard_set], StreamSettings(resolution=24, batch_size=4, shuffle_buffer=4), StreamState(0)
    )
    seen: set[str] = set()
    for _, batch in zip(range(30), loader, strict=False):
        seen.update(batch["key"])
    assert seen == set(written["committed"])  # every committed sample, never one of the killed batch
