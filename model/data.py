"""Training batches streamed from WebDataset shards, in an order a resumed run can replay.

Each data-loader worker reads an endless stream of *blocks*. Block ``i`` of logical worker ``w``
draws ``shards_per_block`` shards (a shard set, then a shard of that set, with replacement), reads
them with the project's one shard reader (:func:`ieiw.storage.shards.shard_samples`, WebDataset's tar
reader over fsspec), interleaves them one sample each in turn (``webdataset.RoundRobin``) and shuffles
them through a buffer (``webdataset.shuffle``), all seeded by ``(seed, rank, w, i)``. A sample's crop
and flip are seeded by its place in the stream. So a position ``(block, offset)`` fixes everything that
follows: every batch carries the position after it, the trainer keeps the last one per worker in its
checkpoints, and a resumed run skips at most one block's raw (undecoded) samples to continue exactly
where it stopped.

The mix is per *sample*: a set is drawn with probability proportional to its weight divided by its
mean samples per shard (measured on a few of its shards), so sets whose shards hold more or fewer
samples still make up their weight's share of what the trainer sees. Every sample carries its set's
name and :class:`StreamState` counts them, so the trainer logs the shares actually seen.

A set's ``text_field`` says what a sample is trained on: its ``instruction``, its ``pretrain_caption``,
or ``rewritten_instruction``: the wording the quality judge wrote from the pair it saw (the latest
of the sample's ``instruction_alternatives`` from a ``judge:`` source), or its instruction when it has
none (:func:`sample_text`).

Two sample layouts are read: images (``src.*``, ``tgt.*``) and cached latents
(``lat.safetensors``, written by :mod:`ieiw.model.latent_cache`). Every item carries SDXL's six size
and crop ids (``size_cond``, :mod:`ieiw.model.conditioning`).

With aspect-ratio buckets (``StreamSettings.buckets``, :mod:`ieiw.model.buckets`) each sample is cropped
to the bucket nearest its shape and a batch holds one bucket: within a block, a bucket's batch is emitted
when it is full, and what is left in each bucket at the block's end is emitted as smaller batches. A
bucketed position is ``(block, batches of the block consumed)``: a resume reads the block again, sorting
samples into buckets from their image headers (or cached latents) without decoding, and skips that many
batches. Multi-turn sessions: ``StreamSettings.sessions`` keeps ``all`` samples, single ``turns`` (no
whole-session sample) or ``whole`` sessions (no single turn of a session). A set's shards come from
:func:`expand_urls`: a stage folder (or its ``shards/``) means the shards its committed manifest parts list
(:func:`ieiw.storage.shards.expand_shard_urls`), never what lies in the folder; a Diffusion-DPO dataset (a
folder of Parquet files in the hub layout, or one such file) means its Parquet files, each read as one
shard of preference pairs (:mod:`ieiw.model.dpo_layout`).

Preference training (``StreamSettings.rejected``) reads preference pairs: every item also carries the
rejected edit (``rej``, or ``rej_lat`` from the latent cache), cropped and flipped as its source and chosen
target (:mod:`ieiw.model.sample_decode`). A set's ``choosers`` keeps only the pairs those chose.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ieiw.model.buckets import Buckets, Shape
from ieiw.model.conditioning import SIZE_COND
from ieiw.model.dpo_layout import count_rows, is_parquet, layout_files, parquet_samples
from ieiw.model.reports import write_json
from ieiw.model.sample_decode import bucket_of, decode_item
from ieiw.storage.shards import ShardReadError, count_samples, expand_shard_urls, shard_samples

log = logging.getLogger(__name__)

MAX_EMPTY_BLOCKS = 50
NOTHING_TO_TRAIN_ON = (
    f"{MAX_EMPTY_BLOCKS} blocks in a row held no samples to train on: are the shards empty, or does every "
    "sample fail a filter (a set's choosers, data.sessions, a preference stage reading shards without "
    "preference pairs)? The counts of dropped samples are logged"
)
SHARDS_MEASURED = 16  # shards per set whose samples are counted to weigh the set's shard draws


@dataclass
class SourceSet:
    """One shard set, expanded: its shard URLs, sampling weight, text field and name.

    ``samples_per_shard`` (measured by :func:`measure_samples_per_shard` when left unset) turns the
    per-sample weight into the weight of drawing one of the set's shards.
    """

    urls: list[str]
    weight: float = 1.0
    text_field: str = "instruction"
    name: str = ""
    samples_per_shard: float | None = None
    choosers: tuple[str, ...] | None = None  # preference pairs: only those these chose


@dataclass
class StreamSettings:
    resolution: int = 256
    random_flip: bool = True
    shuffle_buffer: int = 1000
    shards_per_block: int = 4
    batch_size: int = 4
    seed: int = 0
    rank: int = 0
    buckets: Buckets | None = None  # aspect-ratio buckets; None: square crops of ``resolution``
    sessions: str = "all"  # which samples of multi-turn sessions: all, turns or whole
    rejected: bool = False  # preference pairs: each item also carries its rejected edit


@dataclass
class StreamState:
    """Where every logical worker's stream stands, how many batches were consumed in all, and how many
    samples of each set (by name) this process has seen."""

    num_workers: int
    positions: list[tuple[int, int]] = field(default_factory=list)  # (block, offset) per worker
    batches: int = 0
    seen: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not self.positions:
            self.positions = [(0, 0)] * max(1, self.num_workers)

    def advance(self, batch: dict) -> None:
        worker, block, offset = batch["position"]
        self.positions[worker] = (block, offset)
        self.batches += 1
        self.seen.update(batch.get("source", ()))

    def to_json(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "positions": self.positions,
            "batches": self.batches,
            "seen": dict(self.seen),
        }

    @classmethod
    def from_json(cls, data: dict) -> StreamState:
        return cls(
            data["num_workers"],
            [tuple(p) for p in data["positions"]],
            data["batches"],
            Counter(data.get("seen", {})),
        )


class ShardStream(IterableDataset):
    """An endless, seeded, resumable stream of training batches (dicts of stacked tensors)."""

    def __init__(self, sets: list[SourceSet], settings: StreamSettings, state: StreamState) -> None:
        super().__init__()
        self.sets = [s for s in sets if s.urls]
        if not self.sets:
            raise ValueError("no shards found in any data set")
        for i, s in enumerate(self.sets):
            s.name = s.name or f"set{i}"
            if s.samples_per_shard is None:
                s.samples_per_shard = measure_samples_per_shard(s.urls)
        self.shard_weights = shard_draw_weights(self.sets)
        self.settings = settings
        self.state = state

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        loader_workers = info.num_workers if info is not None else 1
        if loader_workers != len(self.state.positions):
            raise ValueError(f"stream state has {len(self.state.positions)} workers, loader {loader_workers}")
        worker_id = info.id if info is not None else 0
        # batches arrive round-robin by loader worker; after n batches, loader worker 0 serves the
        # logical worker whose turn is next, so the resumed sequence equals the uninterrupted one
        logical = (worker_id + self.state.batches) % loader_workers
        yield from self._batches(logical)

    def _batches(self, worker: int) -> Iterator[dict]:
        if self.settings.buckets is not None:
            yield from self._bucket_batches(worker)
            return
        size = self.settings.batch_size
        drops: Counter = Counter()
        pending: list[dict] = []
        for block, offset, item in self._samples(worker, drops):
            pending.append(item)
            if len(pending) == size:
                yield collate(pending, (worker, block, offset + 1), drops)
                pending = []

    def _bucket_batches(self, worker: int) -> Iterator[dict]:
        """Batches of one bucket each; positions count the batches of a block (module docstring)."""
        s = self.settings
        drops: Counter = Counter()
        block, skip = self.state.positions[worker]
        empty = 0
        while True:
            pending: dict[Shape, list[tuple[int, dict]]] = {}
            made = 0
            for offset, raw in enumerate(self._block(worker, block, drops)):
                shape = bucket_of(raw, s, drops)
                if shape is None:
                    continue
                group = pending.setdefault(shape, [])
                group.append((offset, raw))
                if len(group) == s.batch_size:
                    del pending[shape]
                    made += 1
                    if made > skip:
                        position = (worker, block, made)
                        yield from self._bucket_batch(worker, block, group, shape, position, drops)
            leftovers = list(pending.items())  # what the block left in each bucket: smaller batches
            for i, (shape, group) in enumerate(leftovers):
                made += 1
                position = (worker, block + 1, 0) if i == len(leftovers) - 1 else (worker, block, made)
                if made > skip:
                    yield from self._bucket_batch(worker, block, group, shape, position, drops)
            empty = empty + 1 if made == 0 else 0  # no sample of the block was kept
            if empty >= MAX_EMPTY_BLOCKS:
                raise RuntimeError(NOTHING_TO_TRAIN_ON)
            block, skip = block + 1, 0

    def _bucket_batch(
        self,
        worker: int,
        block: int,
        group: list[tuple[int, dict]],
        shape: Shape,
        position: tuple[int, int, int],
        drops: Counter,
    ) -> Iterator[dict]:
        """The batch of one bucket's samples (none when not one of them could be decoded)."""
        items = [
            decode_item(raw, self._sample_rng(worker, block, offset), self.settings, drops, shape)
            for offset, raw in group
        ]
        items = [i for i in items if i is not None]
        if items:
            yield collate(items, position, drops)

    def _samples(self, worker: int, drops: Counter) -> Iterator[tuple[int, int, dict]]:
        block, skip = self.state.positions[worker]
        empty = 0
        while True:
            used = 0
            for offset, raw in enumerate(self._block(worker, block, drops)):
                if offset < skip:
                    continue
                item = decode_item(raw, self._sample_rng(worker, block, offset), self.settings, drops)
                if item is not None:
                    used += 1
                    yield block, offset, item
            empty = empty + 1 if used == 0 and not skip else 0
            if empty >= MAX_EMPTY_BLOCKS:
                raise RuntimeError(NOTHING_TO_TRAIN_ON)
            block, skip = block + 1, 0

    def _block(self, worker: int, block: int, drops: Counter) -> Iterator[dict]:
        s = self.settings
        rng = random.Random(f"block-{s.seed}-{s.rank}-{worker}-{block}")
        chosen = []
        for _ in range(s.shards_per_block):
            shard_set = rng.choices(self.sets, weights=self.shard_weights)[0]
            chosen.append((rng.choice(shard_set.urls), shard_set))
        streams = [read_shard(url, x.text_field, drops, x.name, x.choosers) for url, x in chosen]
        mixed = iter(wds.RoundRobin(streams, longest=True))  # one sample of each shard in turn
        return wds.shuffle(bufsize=s.shuffle_buffer, initial=s.shuffle_buffer, rng=rng)(mixed)

    def _sample_rng(self, worker: int, block: int, offset: int) -> random.Random:
        s = self.settings
        return random.Random(f"sample-{s.seed}-{s.rank}-{worker}-{block}-{offset}")


def read_shard(
    url: str, text_field: str, drops: Counter, source: str = "", choosers: Iterable[str] | None = None
) -> Iterator[dict]:
    """The raw samples (``{"__key__", extension: bytes}``) of one shard, read by the project's one shard
    reader (:func:`ieiw.storage.shards.shard_samples`), or of one Diffusion-DPO Parquet file
    (:func:`ieiw.model.dpo_layout.parquet_samples`); unreadable data is counted in ``drops`` and ends the
    shard instead of the training run."""

    def count_and_continue(exn: Exception) -> bool:
        drops["unreadable-shard"] += 1
        log.warning("%s: the shard ends here", exn)
        return True

    kept = tuple(choosers) if choosers else None
    if is_parquet(url):
        samples = _parquet_guarded(url, drops, count_and_continue)
    else:
        samples = shard_samples(url, on_error=count_and_continue)
    for sample in samples:
        sample["__text_field__"] = text_field
        sample["__source__"] = source
        sample["__choosers__"] = kept
        yield sample


def _parquet_guarded(url: str, drops: Counter, on_error) -> Iterator[dict]:
    """A Parquet file's samples; a read error is handed to ``on_error`` as a shard's and ends the file."""
    try:
        yield from parquet_samples(url, drops)
    except (OSError, ValueError) as exn:  # pyarrow raises OSError or ArrowInvalid (a ValueError)
        on_error(ShardReadError(url, exn))


def count_shard_samples(url: str) -> int:
    """The samples of one shard (its tar headers) or rows of one Parquet file (its footer)."""
    return count_rows(url) if is_parquet(url) else count_samples(url)


def measure_samples_per_shard(urls: list[str], most: int = SHARDS_MEASURED) -> float:
    """The mean samples per shard of a set, counted on at most ``most`` evenly spaced shards."""
    if not urls:
        return 0.0
    n = min(most, len(urls))
    picked = sorted({round(i * (len(urls) - 1) / max(1, n - 1)) for i in range(n)})
    counts = []
    for i in picked:
        try:
            counts.append(count_shard_samples(urls[i]))
        except (OSError, ShardReadError) as exc:
            log.warning("cannot count the samples of %s: %s", urls[i], exc)
    return sum(counts) / len(counts) if counts else 0.0


def shard_draw_weights(sets: list[SourceSet]) -> list[float]:
    """Weights of drawing a shard of each set so each set's share of *samples* is its weight's share."""
    return [s.weight / (s.samples_per_shard or 1.0) if s.samples_per_shard else s.weight for s in sets]


def estimated_samples(sets: list[SourceSet]) -> int:
    """About how many samples the sets hold (mean samples per shard times shards)."""
    total = 0.0
    for s in sets:
        per_shard = s.samples_per_shard
        if per_shard is None:
            per_shard = measure_samples_per_shard(s.urls)
        total += per_shard * len(s.urls)
    return math.ceil(total)


def collate(items: list[dict], position: tuple[int, int, int], drops: Counter) -> dict:
    batch: dict = {
        "text": [i["text"] for i in items],
        "key": [i["key"] for i in items],
        "source": [i["source"] for i in items],
    }
    for name in ("src", "tgt", "rej", "src_lat", "tgt_lat", "rej_lat", SIZE_COND):
        if name in items[0]:
            batch[name] = torch.stack([i[name] for i in items])
    batch["position"] = position
    batch["drops"] = dict(drops)
    return batch


def make_loader(sets: list[SourceSet], settings: StreamSettings, state: StreamState) -> DataLoader:
    """A data loader over :class:`ShardStream`; ``state.num_workers`` worker processes (0: in process)."""
    stream = ShardStream(sets, settings, state)
    workers = state.num_workers
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )


def expand_urls(urls: Iterable[str] | str) -> list[str]:
    """The shards to read for ``urls``, in order: a Diffusion-DPO dataset's Parquet files
    (:func:`ieiw.model.dpo_layout.layout_files`), else what the one shard reader takes
    (:func:`ieiw.storage.shards.expand_shard_urls`: a stage folder's committed shards)."""
    out: list[str] = []
    for url in [urls] if isinstance(urls, str) else urls:
        files = layout_files(str(url))
        out.extend(files if files is not None else expand_shard_urls(str(url)))
    return out


def expand_sets(sets) -> list[SourceSet]:
    """Config shard sets (``model.config.ShardSet``) to :class:`SourceSet` with their shard URLs.

    A set that names no existing shard is an error, not a silently smaller mix.
    """
    out = []
    for i, s in enumerate(sets):
        name = s.name or f"set{i}"
        urls = expand_urls(s.urls)
        if not urls:
            raise ValueError(f"shard set {name!r} has no shards at {s.urls}")
        choosers = tuple(s.choosers) if getattr(s, "choosers", None) else None
        out.append(SourceSet(urls, s.weight, s.text_field or "instruction", name, choosers=choosers))
    return out


def mix_report(names: list[str], weights: list[float], counts: list[int]) -> dict:
    """Samples seen per set against the configured weights: ``share`` should be near ``weight_share``."""
    total, weight_total = sum(counts), sum(weights)
    rows = [
        {
            "name": n,
            "weight": w,
            "weight_share": w / weight_total,
            "samples": c,
            "share": c / total if total else 0.0,
        }
        for n, w, c in zip(names, weights, counts, strict=True)
    ]
    return {"samples": total, "sets": rows}


def write_mix_report(folder: str | Path, report: dict) -> None:
    """``mix.json`` and ``mix.csv`` (one row per set) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "mix.json", report)
    with open(folder / "mix.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["name", "weight", "weight_share", "samples", "share"])
        writer.writeheader()
        writer.writerows(report["sets"])
