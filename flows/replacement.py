"""The `object_database` and `replacement` flows: the paper's object-replacement pairs.

Both are stage folders (:mod:`ieiw.storage.stage_folder`) on any fsspec store, each with its own
fingerprint. ``object_database`` (``<output>/object_database`` unless ``database.url``) selects regions
of every source image, embeds their crops with CLIP and commits them part by part, then builds the
FAISS index over the committed parts. ``replacement`` (``<output>/replacement``) makes sure the
database is complete and current, then runs stored regions -> retrieval -> generation -> captions ->
instructions over the records: it takes each image's regions, masks, labels and CLIP vectors from
the database and loads neither SAM nor CLIP. Its fingerprint has the database's digest as upstream,
so a rebuilt database rebuilds the pairs. Both resume: committed parts and batches are skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections import Counter, deque
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from ieiw.flows.config import RunnerConfig
from ieiw.flows.fingerprints import model_paths, with_shard_encoding
from ieiw.flows.models import LOADS, cached_model, gpu_tags
from ieiw.flows.replacement_models import PairsSettings, embedder, labeler, load_models, models_key, proposer
from ieiw.flows.stage_runner import artifact_key, open_stage_for, run_stage
from ieiw.flows.storage_errors import store_errors
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.replacement.database import PART_SCHEMA, ObjectDatabase, remove_uncommitted, write_part
from ieiw.pipelines.replacement.index import (
    build_index,
    has_index,
    index_info,
    index_key,
    store_index,
)
from ieiw.pipelines.replacement.objects import object_batch
from ieiw.pipelines.replacement.settings import (
    database_models,
    database_settings,
    replacement_models,
    replacement_settings,
)
from ieiw.pipelines.replacement.sources import iter_records
from ieiw.pipelines.replacement.stage import replacement_stage
from ieiw.storage import fs
from ieiw.storage.commit import batch_name
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.schema import Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import (
    Rebuild,
    StageChanged,
    StageWriter,
    read_record,
    recorded_fingerprint,
)

STAGE = "replacement"
DATABASE_STAGE = "object_database"  # also its folder under ``output`` and its --rebuild name


def database_url(config: ReplacementConfig, output: str) -> str:
    return config.database.url or fs.join(output, DATABASE_STAGE)


def database_fingerprint(config: ReplacementConfig) -> Fingerprint:
    """What the object database holds depends on (never its URL or a local path)."""
    return Fingerprint(
        stage=DATABASE_STAGE, settings=database_settings(config), models=database_models(config)
    )


def replacement_fingerprint(config: ReplacementConfig, database_digest: str) -> Fingerprint:
    """What the pairs depend on: their settings, their models by content, and the database's digest."""
    return Fingerprint(
        stage=STAGE,
        settings=replacement_settings(config),
        models=replacement_models(config),
        upstream={DATABASE_STAGE: database_digest},
    )


def recorded_paths(config: ReplacementConfig) -> dict:
    """Where the models were found on this machine: recorded beside the fingerprints, for people."""
    paths = model_paths(config)
    if config.proposer.sam.checkpoint:
        paths["proposer.sam.checkpoint"] = config.proposer.sam.checkpoint
    return {"models": paths}


@dataclass(frozen=True)
class PartTarget:
    """Where an object-database batch commits, and on whose behalf (small enough for any worker)."""

    url: str
    fingerprint: str
    holder: str


def batch_tags(config: ReplacementConfig, database_only: bool = False) -> list[str]:
    """``gpu`` when a model of the batch runs on a GPU: the database's CLIP (and SAM, if used); the
    pairs' Paint-by-Example and BLIP, if used (the pairs run neither CLIP nor SAM)."""
    devices = []
    if database_only:
        devices.append(config.embedder.device)
        if config.needs_proposer() and config.proposer.backend == "sam":
            devices.append(config.proposer.sam.device)
    if not database_only and config.paint.backend == "paint_by_example":
        devices.append(config.paint.device)
    if not database_only and config.caption.backend == "blip":
        devices.append(config.caption.device)
    return sorted({tag for d in devices for tag in gpu_tags(True, d)})


def replacement_batch(records: list, settings: PairsSettings) -> list[Result]:
    """One batch through the replacement stage."""
    models = cached_model(models_key(settings), lambda: load_models(settings))
    return replacement_stage(records, models, settings.config)


@task(
    name="object-database-batch",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=5,
)
def object_database_batch(items: list, config: ReplacementConfig, target: PartTarget, part: str) -> dict:
    """Select, crop, embed and name the regions of one batch of images; commit them as one part."""
    batch = object_batch(items, embedder(config), proposer(config), labeler(config), config)
    with store_errors(f"object database part {part}", target.url):
        write_part(
            target.url,
            part,
            batch.vectors,
            batch.rows,
            target.fingerprint,
            target.holder,
            DATABASE_STAGE,
            images=batch.image_table,
        )
    return {"images": batch.images, "objects": len(batch.rows), "dropped": dict(batch.dropped)}


def _index(writer: StageWriter, config: ReplacementConfig) -> dict:
    """The index of the database's committed parts: built and stored unless it already is."""
    database = ObjectDatabase(writer.url)
    key = index_key(writer.digest, database.signature(), config.database.index)
    built = False
    if not has_index(writer.url, key):
        index = build_index(database, config.database.index)
        writer.lease.check()
        store_index(index, writer.url, key)
        built = True
    info = index_info(writer.url, key)
    return {
        "objects": len(database),
        "index": info["kind"],
        "index_key": key,
        "index_built": built,
        "signature": database.signature(),
    }


def _fill_database(writer: StageWriter, config: ReplacementConfig, runner: RunnerConfig) -> dict:
    """Commit the parts of every batch of images not committed yet, then index the database."""
    logger = get_run_logger()
    db_url = writer.url
    if writer.rebuilt:
        logger.warning("%s: rebuilding (%s)", DATABASE_STAGE, "; ".join(writer.changes) or "asked to")
    with store_errors(f"stage {DATABASE_STAGE}", db_url):
        done = writer.committed_batches()
        orphans = remove_uncommitted(db_url)
    if orphans:
        logger.warning("%s: removed the vectors of %d parts that never committed", DATABASE_STAGE, orphans)
    target = PartTarget(db_url, writer.digest, writer.holder)
    worker = object_database_batch.with_options(tags=set(batch_tags(config, database_only=True)))
    totals: Counter = Counter()
    dropped: Counter = Counter()
    in_flight: deque = deque()
    bar = tqdm(desc="object database", unit="img")

    def collect() -> None:
        counts = in_flight.popleft().result()
        totals.update(images=counts["images"], objects_added=counts["objects"], batches=1)
        dropped.update(counts["dropped"])
        bar.update(counts["images"])

    items = iter_records(config)
    while chunk := list(itertools.islice(items, config.database.batch_size)):
        part = batch_name("objects", [item.record_id for item in chunk])
        if part in done:
            totals["batches_resumed"] += 1
            continue
        in_flight.append(worker.submit(chunk, config, target, part))
        while len(in_flight) >= runner.max_in_flight:
            collect()
    while in_flight:
        collect()
    bar.close()
    with store_errors(f"stage {DATABASE_STAGE}", db_url):
        indexed = _index(writer, config)
        summary = {
            "database": db_url,
            **indexed,
            **totals,
            "dropped": dict(sorted(dropped.items())),
            "fingerprint": writer.digest,
            "rebuilt": writer.rebuilt,
        }
        fs.write_bytes_atomic(fs.join(db_url, "summary.json"), json.dumps(summary, indent=2).encode("utf-8"))
        writer.finish({k: v for k, v in summary.items() if k != "database"}, schema=PART_SCHEMA)
    return summary


@flow(name="object_database", log_prints=True)
def object_database(
    config: ReplacementConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
    rebuild: Rebuild = "no",
) -> dict:
    """Build (or finish) the object database and its FAISS index; ``shards`` is unused (no pairs).

    A database made with other settings stops the run before any work (:class:`StageChanged`, naming
    what changed) unless ``rebuild``.
    """
    logger = get_run_logger()
    runner = runner or RunnerConfig()
    db_url = database_url(config, output)
    fingerprint = database_fingerprint(config)
    with contextlib.ExitStack() as held:
        with store_errors(f"stage {DATABASE_STAGE}", db_url):
            writer = held.enter_context(
                open_stage_for(DATABASE_STAGE, db_url, fingerprint, runner, rebuild, recorded_paths(config))
            )
        summary = _fill_database(writer, config, runner)
    publish_database_summary(summary)
    logger.info(
        "object database: %d objects (%s index), dropped %s",
        summary["objects"],
        summary["index"],
        summary["dropped"],
    )
    return summary


def publish_database_summary(summary: dict) -> None:
    rows = [{"outcome": "stored", "reason": "", "count": summary["objects"]}]
    rows += [{"outcome": "dropped", "reason": r, "count": n} for r, n in summary["dropped"].items()]
    create_table_artifact(
        rows,
        key=f"{artifact_key(DATABASE_STAGE)}-counts",
        description="object database: regions stored and dropped by reason",
    )
    lines = ["# object database", "", "| | |", "|---|---|"]
    lines += [
        f"| {k} | {summary[k]} |"
        for k in ("objects", "index", "images", "batches", "batches_resumed", "rebuilt")
        if k in summary
    ]
    lines += [f"| dropped `{r}` | {n} |" for r, n in summary["dropped"].items()]
    lines.append(f"\nDatabase: `{summary['database']}`")
    create_markdown_artifact(
        "\n".join(lines), key=f"{artifact_key(DATABASE_STAGE)}-summary", description="object database summary"
    )


def complete_database(db_url: str, fingerprint: Fingerprint) -> bool:
    """Whether the database holds what ``fingerprint`` asks for, completely: made with it, and its last
    finished run saw exactly the parts committed now (a killed or concurrent run adds others)."""
    record = read_record(db_url)
    if record is None or record["fingerprint"].get("digest") != fingerprint.digest or not record.get("runs"):
        return False
    return record["runs"][-1].get("signature") == ObjectDatabase(db_url).signature()


def current_index(
    config: ReplacementConfig, db_url: str, fingerprint: Fingerprint, runner: RunnerConfig
) -> str:
    """The key of the complete database's index for ``config``; built (holding the database's lease)
    when only the index settings changed."""
    key = index_key(fingerprint.digest, ObjectDatabase(db_url).signature(), config.database.index)
    if has_index(db_url, key):
        return key
    with open_stage_for(DATABASE_STAGE, db_url, fingerprint, runner, "no", recorded_paths(config)) as writer:
        indexed = _index(writer, config)
        writer.finish(indexed, schema=PART_SCHEMA)
    return indexed["index_key"]


def ensure_database(
    config: ReplacementConfig,
    output: str,
    shards: ShardSpec | None,
    runner: RunnerConfig,
    rebuild_database: Rebuild,
) -> tuple[str, str, dict | None]:
    """``(digest, index key, summary)`` of a complete, current database (``summary`` when it was built)."""
    db_url = database_url(config, output)
    fingerprint = database_fingerprint(config)
    with store_errors(f"stage {DATABASE_STAGE}", db_url):
        if rebuild_database not in ("yes", True) and complete_database(db_url, fingerprint):
            return fingerprint.digest, current_index(config, db_url, fingerprint, runner), None
        if not config.database.build_if_missing and rebuild_database in ("no", False):
            record = read_record(db_url)
            if record is not None and record["fingerprint"].get("digest") != fingerprint.digest:
                changes = fingerprint.changes(Fingerprint.from_record(record["fingerprint"]))
                raise StageChanged(DATABASE_STAGE, db_url, changes)
            raise FileNotFoundError(
                f"no complete object database under {db_url}; run the object_database flow"
            )
    summary = object_database(config, output, shards, runner, rebuild=rebuild_database)
    return summary["fingerprint"], summary["index_key"], summary


def _refuse_changes_first(
    config: ReplacementConfig,
    output: str,
    shards: ShardSpec | None,
    rebuild: Rebuild,
    rebuild_database: Rebuild,
) -> None:
    """Stop before any work (the database's too) if the database or the pairs were made with other
    settings and are not to be rebuilt: both fingerprints are known before anything runs."""
    if rebuild_database not in ("no", False):
        return
    database = database_fingerprint(config)
    db_url = database_url(config, output)
    with store_errors(f"stage {DATABASE_STAGE}", db_url):
        recorded = recorded_fingerprint(db_url)
    if recorded is not None and recorded.digest != database.digest:
        raise StageChanged(DATABASE_STAGE, db_url, database.changes(recorded))
    if rebuild not in ("no", False):
        return
    stage_url = fs.join(output, STAGE)
    pairs = with_shard_encoding(replacement_fingerprint(config, database.digest), shards or ShardSpec())
    with store_errors(f"stage {STAGE}", stage_url):
        recorded = recorded_fingerprint(stage_url)
    if recorded is not None and recorded.digest != pairs.digest:
        raise StageChanged(STAGE, stage_url, pairs.changes(recorded))


@flow(name="replacement", log_prints=True)
def replacement(
    config: ReplacementConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
    rebuild: Rebuild = "no",
    rebuild_database: Rebuild = "no",
) -> dict:
    """Write replace pairs as shards under ``<output>/replacement``; builds the database first if needed.

    The database is checked (and built, or finished) first: made with other settings it stops the run
    naming what changed, unless ``rebuild_database``. A rebuilt database rebuilds the pairs too.
    """
    logger = get_run_logger()
    runner = runner or RunnerConfig()
    db_url = database_url(config, output)
    _refuse_changes_first(config, output, shards, rebuild, rebuild_database)
    digest, key, database_summary = ensure_database(config, output, shards, runner, rebuild_database)
    if database_summary is not None and database_summary["rebuilt"]:
        rebuild = "yes"  # the pairs read the database: everything downstream of a rebuilt stage is rebuilt
    settings = PairsSettings(config, db_url, key)
    summary = run_stage(
        STAGE,
        iter_records(config),
        replacement_batch,
        settings,
        fs.join(output, STAGE),
        shards,
        batch_size=config.batch_size,
        runner=runner,
        fingerprint=replacement_fingerprint(config, digest),
        rebuild=rebuild,
        info=recorded_paths(config),
        tags=batch_tags(config),
    )
    models = models_key(settings)
    timings = cached_model(models, lambda: load_models(settings)).timings if models in LOADS else None
    if timings:
        total = sum(timings.values()) or 1.0
        create_markdown_artifact(
            "# replacement: where the time goes (this process)\n\n| step | seconds | share |\n|---|---|---|\n"
            + "\n".join(f"| {k} | {v:.2f} | {100 * v / total:.0f}% |" for k, v in timings.most_common()),
            key=f"{artifact_key(STAGE)}-timings",
            description="seconds per step of the replacement stage",
        )
        logger.info("replacement step seconds: %s", {k: round(v, 2) for k, v in timings.items()})
    summary["database"] = database_summary or {"database": db_url, "reused": True, "index_key": key}
    return summary
