"""The `object_database` and `replacement` flows: the paper's object-replacement pairs.

``object_database`` selects regions of every source image, embeds their crops with CLIP and writes
the database parts, then builds and saves the FAISS index. ``replacement`` (re)uses that index:
regions -> retrieval -> generation -> captions -> instructions -> shards under
``<output>/replacement``. Both resume: finished database parts and committed batches are skipped.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter, deque

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from ieiw.flows.config import RunnerConfig
from ieiw.flows.fingerprints import model_paths, section_fingerprint
from ieiw.flows.models import LOADS, cached_model, gpu_tags
from ieiw.flows.stage_runner import artifact_key, run_stage
from ieiw.pipelines.instructions.llm import InstructionWriter
from ieiw.pipelines.replacement.captions import BlipCaptioner
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.replacement.database import ObjectDatabase, part_names, write_part
from ieiw.pipelines.replacement.index import INDEX_DIR, ObjectIndex, build_index
from ieiw.pipelines.replacement.labels import ZeroShotLabeler
from ieiw.pipelines.replacement.objects import object_batch
from ieiw.pipelines.replacement.painting import build_painter
from ieiw.pipelines.replacement.sources import build_proposer, iter_records
from ieiw.pipelines.replacement.stage import ReplacementModels, replacement_stage
from ieiw.quality.embeddings import ClipEmbedder
from ieiw.storage import fs
from ieiw.storage.commit import batch_name
from ieiw.storage.schema import Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import Rebuild

STAGE = "replacement"
DATABASE_STAGE = "object-database"


def database_url(config: ReplacementConfig, output: str) -> str:
    return config.database.url or fs.join(output, STAGE, "objects")


def embedder(config: ReplacementConfig) -> ClipEmbedder:
    return cached_model(
        f"clip:{config.embedder.model_dump_json()}", lambda: ClipEmbedder.from_config(config.embedder)
    )


def proposer(config: ReplacementConfig):
    if not config.needs_proposer():
        return None
    return cached_model(
        f"proposer:{config.proposer.model_dump_json()}", lambda: build_proposer(config.proposer)
    )


def labeler(config: ReplacementConfig) -> ZeroShotLabeler:
    key = f"labeler:{config.embedder.model_dump_json()}:{config.labels.model_dump_json()}"
    return cached_model(
        key, lambda: ZeroShotLabeler(embedder(config), config.labels.names(), config.labels.prompt)
    )


def instruction_writer(config: ReplacementConfig) -> InstructionWriter | None:
    llm = config.instructions.llm
    wanted = config.instructions.backend == "llm" or config.instructions.paraphrase
    if llm is None or not wanted:
        return None
    return cached_model(f"llm:{llm.model_dump_json()}", lambda: InstructionWriter(llm))


def index_signature(db_url: str) -> str | None:
    """The database signature the saved index was built from (None: no index)."""
    info = os.path.join(db_url, INDEX_DIR, "index.json")
    if not os.path.isfile(info):
        return None
    with open(info, encoding="utf-8") as handle:
        return json.load(handle).get("signature")


def index_is_current(db_url: str) -> bool:
    signature = index_signature(db_url)
    return signature is not None and signature == ObjectDatabase(db_url).signature()


def load_models(config: ReplacementConfig) -> ReplacementModels:
    """Every model of the stage, each loaded once per worker process."""
    url = config.database.url or ""
    signature = index_signature(url)
    database = cached_model(f"objectdb:{url}:{signature}", lambda: ObjectDatabase(url))
    index = cached_model(
        f"objectindex:{url}:{signature}", lambda: ObjectIndex.load(url, config.database.index)
    )
    if len(index) != len(database):
        raise ValueError(
            f"object index under {url} holds {len(index)} objects, the database {len(database)}: "
            "rebuild it with the object_database flow"
        )
    return ReplacementModels(
        embedder=embedder(config),
        index=index,
        database=database,
        painter=cached_model(
            f"painter:{config.paint.model_dump_json()}", lambda: build_painter(config.paint)
        ),
        proposer=proposer(config),
        labeler=labeler(config),
        captioner=cached_model(
            f"captioner:{config.caption.model_dump_json()}", lambda: BlipCaptioner(config.caption)
        )
        if config.caption.backend == "blip"
        else None,
        writer=instruction_writer(config),
    )


def batch_tags(config: ReplacementConfig, database_only: bool = False) -> list[str]:
    """``gpu`` when a model of the batch runs on a GPU (CLIP always; SAM, Paint-by-Example, BLIP if used)."""
    devices = [config.embedder.device]
    if config.needs_proposer() and config.proposer.backend == "sam":
        devices.append(config.proposer.sam.device)
    if not database_only and config.paint.backend == "paint_by_example":
        devices.append(config.paint.device)
    if not database_only and config.caption.backend == "blip":
        devices.append(config.caption.device)
    return sorted({tag for d in devices for tag in gpu_tags(True, None if d == "auto" else d)})


def models_key(config: ReplacementConfig) -> str:
    return f"replacement:{index_signature(config.database.url or '')}:{config.model_dump_json()}"


def replacement_batch(records: list, config: ReplacementConfig) -> list[Result]:
    """One batch through the replacement stage (``config.database.url`` already resolved)."""
    models = cached_model(models_key(config), lambda: load_models(config))
    return replacement_stage(records, models, config)


@task(
    name="object-database-batch",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=5,
)
def object_database_batch(items: list, config: ReplacementConfig, db_url: str, part: str) -> dict:
    """Select, crop, embed and name the regions of one batch of images; write them as one part."""
    batch = object_batch(items, embedder(config), proposer(config), labeler(config), config)
    write_part(db_url, part, batch.vectors, batch.rows)
    return {"images": batch.images, "objects": len(batch.rows), "dropped": dict(batch.dropped)}


@flow(name="object_database", log_prints=True)
def object_database(
    config: ReplacementConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
) -> dict:
    """Build (or finish) the object database and its FAISS index; ``shards`` is unused (no pairs)."""
    logger = get_run_logger()
    runner = runner or RunnerConfig()
    db_url = database_url(config, output)
    os.makedirs(db_url, exist_ok=True)
    done = set(part_names(db_url))
    worker = object_database_batch.with_options(
        tags=set(batch_tags(config, database_only=True)),
    )
    totals: Counter = Counter()
    dropped: Counter = Counter()
    in_flight: deque = deque()
    bar = tqdm(desc="object database", unit="img")

    def collect() -> None:
        counts = in_flight.popleft().result()
        totals.update(images=counts["images"], objects=counts["objects"], batches=1)
        dropped.update(counts["dropped"])
        bar.update(counts["images"])

    items = iter_records(config)
    while chunk := list(itertools.islice(items, config.database.batch_size)):
        part = batch_name("objects", [item.record_id for item in chunk])
        if part in done:
            totals["batches_resumed"] += 1
            continue
        in_flight.append(worker.submit(chunk, config, db_url, part))
        while len(in_flight) >= runner.max_in_flight:
            collect()
    while in_flight:
        collect()
    bar.close()
    database = ObjectDatabase(db_url)
    index = build_index(database, config.database.index)
    index.save(db_url)
    summary = {
        "database": db_url,
        "objects": len(database),
        "index": index.kind,
        **totals,
        "dropped": dict(sorted(dropped.items())),
    }
    fs.write_bytes_atomic(fs.join(db_url, "summary.json"), json.dumps(summary, indent=2).encode("utf-8"))
    publish_database_summary(summary)
    logger.info(
        "object database: %d objects (%s index), dropped %s", len(database), index.kind, summary["dropped"]
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
        for k in ("objects", "index", "images", "batches", "batches_resumed")
        if k in summary
    ]
    lines += [f"| dropped `{r}` | {n} |" for r, n in summary["dropped"].items()]
    lines.append(f"\nDatabase: `{summary['database']}`")
    create_markdown_artifact(
        "\n".join(lines), key=f"{artifact_key(DATABASE_STAGE)}-summary", description="object database summary"
    )


@flow(name="replacement", log_prints=True)
def replacement(
    config: ReplacementConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
    rebuild: Rebuild = "no",
    rebuild_database: Rebuild = "no",
) -> dict:
    """Write replace pairs as shards under ``<output>/replacement``; builds the database first if needed."""
    logger = get_run_logger()
    runner = runner or RunnerConfig()
    db_url = database_url(config, output)
    database_summary = None
    if not index_is_current(db_url):
        if not config.database.build_if_missing:
            raise FileNotFoundError(f"no current object index under {db_url}; run the object_database flow")
        database_summary = object_database(config, output, shards, runner)
    resolved = config.model_copy(update={"database": config.database.model_copy(update={"url": db_url})})
    stage_url = fs.join(output, STAGE)
    summary = run_stage(
        STAGE,
        iter_records(resolved),
        replacement_batch,
        resolved,
        stage_url,
        shards,
        batch_size=config.batch_size,
        runner=runner,
        fingerprint=section_fingerprint(STAGE, resolved),
        rebuild=rebuild,
        info={"models": model_paths(resolved)},
        tags=batch_tags(config),
    )
    key = models_key(resolved)
    timings = cached_model(key, lambda: load_models(resolved)).timings if key in LOADS else None
    if timings:
        total = sum(timings.values()) or 1.0
        create_markdown_artifact(
            "# replacement: where the time goes (this process)\n\n| step | seconds | share |\n|---|---|---|\n"
            + "\n".join(f"| {k} | {v:.2f} | {100 * v / total:.0f}% |" for k, v in timings.most_common()),
            key=f"{artifact_key(STAGE)}-timings",
            description="seconds per step of the replacement stage",
        )
        logger.info("replacement step seconds: %s", {k: round(v, 2) for k, v in timings.items()})
    summary["database"] = database_summary or {"database": db_url, "reused": True}
    return summary
