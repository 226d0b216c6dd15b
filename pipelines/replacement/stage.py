"""The object database and the replacement pairs as stages of the one contract (:mod:`ieiw.storage.stage`).

``object_database`` (a ``rows`` stage) selects, crops, embeds and names the regions of each batch of
images and commits them as one part of the database (its rows; its vectors and table of images as
the part's files); when every batch is committed it builds (or reuses) the FAISS index over the
committed parts. ``replacement`` (a ``samples`` stage) takes each image's stored regions and vectors
from the database, retrieves a reference object, paints it in, captions and words the pair
(:func:`ieiw.pipelines.replacement.pairs.make_pairs`). It reads the database, so its fingerprint's
upstream is the database's recorded digest, and it refuses to run on a database that is not complete
for its input (the build runs the database first).

Both take their records from :mod:`.sources`, and their input key is the limits plus a listing digest
of the sources' folders (annotation files are in the fingerprints by digest): a larger limit or a grown
folder is new input. The database grows by new batches; the pairs depend on the whole database (a
region's reference is its nearest object among all of them), so grown input rebuilds them and their
keys are those of a build made from the whole input at once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from ieiw.pipelines.instructions.llm import InstructionWriter
from ieiw.pipelines.replacement import folder
from ieiw.pipelines.replacement.captions import BlipCaptioner
from ieiw.pipelines.replacement.config import ImageFolderSource, ReplacementConfig
from ieiw.pipelines.replacement.database import (
    PART_SCHEMA,
    ObjectDatabase,
    part_files,
    part_table,
    remove_uncommitted,
)
from ieiw.pipelines.replacement.errors import DatabaseNotReady  # noqa: F401 (raised here)
from ieiw.pipelines.replacement.index import (
    IndexConfig,
    build_index,
    has_index,
    index_info,
    index_key,
    open_index,
    store_index,
)
from ieiw.pipelines.replacement.labels import ZeroShotLabeler
from ieiw.pipelines.replacement.objects import object_batch
from ieiw.pipelines.replacement.painting import build_painter
from ieiw.pipelines.replacement.pairs import (
    GENERATOR,
    PairModels,
    StoredObjects,
    make_pairs,
    sample_settings,
)
from ieiw.pipelines.replacement.sources import build_proposer, count_records, count_source, iter_records
from ieiw.quality.embeddings import ClipEmbedder
from ieiw.quality.faiss_search import faiss_device
from ieiw.storage import manifest
from ieiw.storage.config import (
    Role,
    WorkerEnv,
    config_fingerprint,
    input_limits,
    model_references,
    walk_fields,
)
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.layout import OBJECT_DATABASE
from ieiw.storage.manifest import RecordSet
from ieiw.storage.runner import current_batch, recorded_env, worker_model
from ieiw.storage.schema import Drop, Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage import (
    HOST,
    ModelSpec,
    ModelUse,
    Rows,
    Stage,
    Work,
    folder_listing_key,
    gpu_tags,
    model_key,
)
from ieiw.storage.stage_folder import (
    StageChanged,
    StageWriter,
    complete_record,
    open_stage,
    read_listing,
    read_record,
)

log = logging.getLogger(__name__)

# The files of the sources' folders that make records: annotations, images, masks.
SOURCE_SUFFIXES = (".json", *folder.IMAGE_SUFFIXES)


# ------------------------------------------------------------------------------------------- inputs


def _paths(config: BaseModel, role: Role) -> list[str]:
    """The paths in the fields of ``config`` (at any depth) declared as ``role``."""
    found: list[str] = []
    for _, field_role, value, _ in walk_fields(config):
        if field_role is role:
            values = value if isinstance(value, (list, tuple)) else [value]
            found += [v for v in values if isinstance(v, str) and v]
    return found


def source_input_key(config: ReplacementConfig) -> str | None:
    """The limits and a listing digest of the sources' folders: with the input files (in the
    fingerprints by digest) they decide the records. None where an input file is remote or missing
    (its digest in the fingerprint is then only its name: only reading it tells)."""
    if any("://" in path or not os.path.isfile(path) for path in _paths(config, Role.INPUT_FILE)):
        return None
    folders = [path for source in config.sources for path in _paths(source, Role.INPUT_FOLDER)]
    listing = folder_listing_key(*folders, suffixes=SOURCE_SUFFIXES)
    return json.dumps({**input_limits(config), "folders": listing}, sort_keys=True)


def count_images(config: ReplacementConfig) -> int | None:
    """How many records the sources hold, cut by ``limit`` (None where a source is unreadable)."""
    counts = count_records(config).values()
    if any(c is None for c in counts):
        return None
    total = sum(c or 0 for c in counts)
    return min(total, config.limit) if config.limit is not None else total


def proposed_images(config: ReplacementConfig, inputs: int | None) -> int | None:
    """How many of the records are images without masks (a proposer makes their regions)."""
    try:
        found = sum(count_source(s) for s in config.sources if isinstance(s, ImageFolderSource))
    except OSError:
        return None
    return min(found, inputs) if inputs is not None else found


def _short(model: str | None) -> str:
    if not model:
        return "-"
    return os.path.basename(model.rstrip("/")) if "/" in model and os.path.exists(model) else model


# ----------------------------------------------------------------------------------- the database


def load_labeler(config: ReplacementConfig) -> ZeroShotLabeler:
    """CLIP's text embeddings of the vocabulary, with this worker's CLIP (loaded once, shared)."""
    embedder = worker_model(embedder_spec(config))
    return ZeroShotLabeler(embedder, config.labels.names(), config.labels.prompt)


def embedder_spec(config: ReplacementConfig) -> ModelSpec:
    section = config.embedder
    return ModelSpec(
        model_key("clip", section),
        partial(ClipEmbedder.from_config, section),
        section.device,
        section.batch_size,
    )


def database_tags(config: ReplacementConfig) -> list[str]:
    """``gpu`` when CLIP (or SAM, where images lack masks) runs on a GPU."""
    devices = [config.embedder.device]
    if config.needs_proposer() and config.proposer.backend == "sam":
        devices.append(config.proposer.sam.device)
    return sorted({tag for device in devices for tag in gpu_tags(True, device)})


class _ReplacementSources(Stage):
    """A stage whose input is the replacement section's images (the database and the pairs alike)."""

    config: ReplacementConfig
    unit = "images"

    def input_key(self) -> str | None:
        return source_input_key(self.config)

    def total(self) -> int | None:
        return count_images(self.config)

    def info(self) -> dict[str, Any]:
        return {"models": model_references(self.config)}


class ObjectDatabaseStage(_ReplacementSources):
    """The object database: each batch of images is one part (rows, vectors, images), then the index."""

    name = OBJECT_DATABASE
    writes = "rows"
    schema = PART_SCHEMA

    def __init__(self, config: ReplacementConfig, url: str) -> None:
        super().__init__(url, config.database.batch_size, None, database_tags(config))
        self.config = config

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        """What the objects depend on: the sources (annotation files by digest), how regions are made
        (the proposer, where images lack masks), chosen, cropped, embedded and named, and how many per
        image are kept. Not the index: it is built over the parts, under a key of its own settings."""
        config = self.config
        reads = ["sources", "selection", "crop", "embedder", "labels"]
        if config.needs_proposer():
            reads.append("proposer")
        database = config_fingerprint(self.name, config.database, env, exclude=["index"])
        return config_fingerprint(
            self.name, config, env, include=reads, extra={"database": database.settings}
        )

    def records(self) -> Iterator[Any]:
        if not self.config.database.build_if_missing:
            raise DatabaseNotReady(
                f"the object database at {self.url} is not complete for this input and "
                "replacement.database.build_if_missing is false: build it with "
                "`ieiw replacement CONFIG --database-only`, or set build_if_missing"
            )
        removed = remove_uncommitted(self.url)  # this run holds the stage: a killed run's files go
        if removed:
            log.warning("%s: removed the files of %d parts that never committed", self.name, removed)
        return iter_records(self.config)

    def models(self) -> Mapping[str, ModelSpec]:
        config = self.config
        specs = {
            "embedder": embedder_spec(config),
            "labeler": ModelSpec(
                model_key("labeler", config.embedder, config.labels.model_dump(mode="json")),
                partial(load_labeler, config),
                config.embedder.device,
            ),
        }
        if config.needs_proposer():
            proposer = config.proposer
            device = proposer.sam.device if proposer.backend == "sam" else HOST
            specs["proposer"] = ModelSpec(
                model_key("proposer", proposer), partial(build_proposer, proposer), device
            )
        return specs

    def run(self, records: list[Any], models: Mapping[str, Any]) -> Rows:
        """Select, crop, embed and name the regions of one batch of images: one part of the database."""
        batch = object_batch(
            records, models["embedder"], models.get("proposer"), models["labeler"], self.config
        )
        part = current_batch()
        return Rows(
            part_table(part, batch.rows),
            part_files(part, batch.vectors, batch.image_table),
            {"images": batch.images, "objects": len(batch.rows), **batch.dropped},
        )

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        """The FAISS index over the committed parts, built unless it already is."""
        database = ObjectDatabase(writer.url)
        if not len(database):
            return {"objects": 0, "index": None}
        key, built = ensure_index(writer, database, self.config.database.index)
        return {
            "objects": len(database),
            "index": index_info(writer.url, key)["kind"],
            "index_key": key,
            "index_built": built,
        }

    def model_uses(self) -> list[ModelUse]:
        config = self.config
        embedder = config.embedder
        try:
            names = f"{len(config.labels.names()):,} names"
        except OSError:
            names = f"the class names of {config.labels.class_descriptions} (unreadable here)"
        uses = [
            ModelUse(
                "embedder", f"open_clip {embedder.model} ({_short(embedder.pretrained)})", embedder.device
            ),
            ModelUse("labels", f"CLIP text embeddings of {names}", embedder.device),
        ]
        if config.needs_proposer():
            proposer = config.proposer
            if proposer.backend == "sam":
                sam = proposer.sam
                uses.append(
                    ModelUse("proposer", f"SAM {sam.model_type} {_short(sam.checkpoint)}", sam.device)
                )
            else:
                uses.append(ModelUse("proposer", "Felzenszwalb (classical)", "cpu"))
        uses.append(ModelUse("index", f"FAISS {config.database.index.kind}", faiss_device()))
        return uses

    def workload(self, inputs: int | None) -> list[Work]:
        config = self.config
        work = []
        if config.needs_proposer() and config.proposer.backend == "sam":
            work.append(Work("sam_images", proposed_images(config, inputs)))
        per_image = config.database.objects_per_image
        crops = None if inputs is None else inputs * per_image
        work.append(Work("clip_images", crops, note=f"at most {per_image} crops per image"))
        return work


def ensure_index(writer: StageWriter, database: ObjectDatabase, config: IndexConfig) -> tuple[str, bool]:
    """``(key, built)``: the index of the database's committed parts with ``config``'s settings, built
    and stored unless it already is (``writer`` holds the database's lease)."""
    key = index_key(writer.digest, database.signature(), config)
    if has_index(writer.url, key):
        return key, False
    index = build_index(database, config)
    writer.lease.check()
    store_index(index, writer.url, key)
    return key, True


# -------------------------------------------------------------------------------------- the pairs


@dataclass(frozen=True)
class DatabaseState:
    """What the pairs read: the database's digest, the key of its current index, and whether it is
    recorded complete for the pairs' input (else every record is checked against it as it comes)."""

    digest: str
    index_key: str
    complete: bool = True


def open_objects(url: str, key: str, config: IndexConfig) -> StoredObjects:
    """The database and its index with ``key``, for one worker process."""
    database = ObjectDatabase(url)
    index = open_index(url, key, config)
    if len(index) != len(database):
        raise ValueError(
            f"object index {key} of {url} holds {len(index)} objects, the database {len(database)}: "
            "the database changed while this run read it; rerun to rebuild the index"
        )
    return StoredObjects(database, index)


def prepare_database(config: ReplacementConfig, url: str) -> DatabaseState:
    """The database the pairs read, checked before any work: made with the config's settings and
    complete for its input (else a clear error), with an index for the config's index settings (built,
    holding the database's lease, when only those changed)."""
    record = read_record(url)
    if record is None:
        raise DatabaseNotReady(
            f"no object database at {url}: build it first (the build runs it before the pairs; "
            "alone: `ieiw replacement CONFIG --database-only`)"
        )
    stage = ObjectDatabaseStage(config, url)
    recorded = Fingerprint.from_record(record["fingerprint"])
    wanted = stage.fingerprint(recorded_env(record))
    if wanted.digest != recorded.digest:
        raise StageChanged(OBJECT_DATABASE, url, wanted.changes(recorded) or ["(the digest differs)"])
    key = stage.input_key()
    if key is not None and complete_record(url, key) is None:
        raise DatabaseNotReady(
            f"the object database at {url} is not complete for this input (more images, a larger limit "
            "or a run that stopped): run its stage first (the build does; alone: "
            "`ieiw replacement CONFIG --database-only`)"
        )
    database = ObjectDatabase(url)
    if not len(database):
        raise DatabaseNotReady(
            f"the object database at {url} holds no object: no region of its images passed selection "
            "(see its counts by reason); loosen replacement.selection or add images"
        )
    index = config.database.index
    found = index_key(recorded.digest, database.signature(), index)
    if not has_index(url, found):
        with open_stage(url, recorded) as writer:
            found, _ = ensure_index(writer, database, index)
        log.warning("%s: built its index for these settings (%s)", OBJECT_DATABASE, found)
    return DatabaseState(recorded.digest, found, complete=key is not None)


def current_database(config: ReplacementConfig, url: str) -> DatabaseState:
    """The database's digest and current index key as recorded, without checks (a worker that was not
    handed them)."""
    record = read_record(url)
    if record is None:
        raise DatabaseNotReady(f"no object database at {url}: build it first")
    digest = str(record["fingerprint"]["digest"])
    return DatabaseState(digest, index_key(digest, ObjectDatabase(url).signature(), config.database.index))


def committed_records(url: str) -> RecordSet:
    """The record ids of a stage's committed batches (as its listing names them)."""
    listing = read_listing(url)
    committed = manifest.completed_batches(url)
    mask = [batch in committed for batch in listing.column("batch").to_pylist()]
    return RecordSet([listing.column("record_id").combine_chunks().filter(pa.array(mask, pa.bool_()))])


def pairs_tags(config: ReplacementConfig) -> list[str]:
    """``gpu`` when Paint-by-Example or BLIP runs on a GPU (the pairs run neither CLIP nor SAM)."""
    devices = []
    if config.paint.backend == "paint_by_example":
        devices.append(config.paint.device)
    if config.caption.backend == "blip":
        devices.append(config.caption.device)
    return sorted({tag for device in devices for tag in gpu_tags(True, device)})


def uses_llm(config: ReplacementConfig) -> bool:
    instructions = config.instructions
    return instructions.llm is not None and (instructions.backend == "llm" or instructions.paraphrase)


class ReplacementStage(_ReplacementSources):
    """Replace pairs from the object database's regions: retrieval, painting, captions, instructions."""

    name = GENERATOR
    whole_input = True  # a region's reference is its nearest object in the whole database

    def __init__(
        self, config: ReplacementConfig, url: str, database_url: str, shards: ShardSpec | None = None
    ) -> None:
        super().__init__(url, config.batch_size, shards, pairs_tags(config))
        self.config = config
        self.database_url = database_url
        self.database: DatabaseState | None = None  # set when a run lists its input (on the lead)

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        """Every setting and model of the section, and the database's recorded digest as upstream (what
        it would be, where it is not built yet)."""
        record = read_record(self.database_url)
        if record is not None:
            digest = str(record["fingerprint"]["digest"])
        else:
            digest = ObjectDatabaseStage(self.config, self.database_url).fingerprint(env).digest
        return config_fingerprint(self.name, self.config, env, upstream={OBJECT_DATABASE: digest})

    def records(self) -> Iterator[Any]:
        """The records, once the database is known to hold every one of them (checked before any work
        where the database is recorded complete for this input, else record by record)."""
        self.database = prepare_database(self.config, self.database_url)
        return self._checked(None if self.database.complete else committed_records(self.database_url))

    def _checked(self, committed: RecordSet | None) -> Iterator[Any]:
        for item in iter_records(self.config):
            if committed is not None and not isinstance(item, Drop) and item.record_id not in committed:
                raise DatabaseNotReady(
                    f"the object database at {self.database_url} does not hold {item.record_id} of this "
                    "input: run its stage first (the build does; alone: `ieiw replacement CONFIG "
                    "--database-only`)"
                )
            yield item

    def models(self) -> Mapping[str, ModelSpec]:
        config = self.config
        state = self.database or current_database(config, self.database_url)
        paint, caption = config.paint, config.caption
        index = config.database.index
        specs = {
            "objects": ModelSpec(
                model_key("objects", index, self.database_url, state.index_key),
                partial(open_objects, self.database_url, state.index_key, index),
            ),
            "painter": ModelSpec(
                model_key("painter", paint),
                partial(build_painter, paint),
                paint.device if paint.backend == "paint_by_example" else HOST,
                paint.batch_size if paint.backend == "paint_by_example" else None,
            ),
            "settings": ModelSpec(model_key("sample-settings", config), partial(sample_settings, config)),
        }
        if caption.backend == "blip":
            specs["captioner"] = ModelSpec(
                model_key("captioner", caption),
                partial(BlipCaptioner, caption),
                caption.device,
                caption.batch_size,
            )
        if uses_llm(config):
            llm = config.instructions.llm
            specs["writer"] = ModelSpec(
                model_key("llm", None, llm.model_dump(mode="json")), partial(InstructionWriter, llm)
            )
        return specs

    def run(self, records: list[Any], models: Mapping[str, Any]) -> list[Result]:
        pair_models = PairModels(
            objects=models["objects"],
            painter=models["painter"],
            settings=models["settings"],
            captioner=models.get("captioner"),
            writer=models.get("writer"),
        )
        return make_pairs(records, pair_models, self.config)

    def model_uses(self) -> list[ModelUse]:
        config = self.config
        paint, caption = config.paint, config.caption
        if paint.backend == "paint_by_example":
            uses = [
                ModelUse(
                    "painter", f"Paint-by-Example {_short(paint.model)} ({paint.steps} steps)", paint.device
                )
            ]
        else:
            uses = [ModelUse("painter", "seamless clone (classical)", "cpu")]
        if caption.backend == "blip":
            uses.append(ModelUse("captioner", f"BLIP {_short(caption.model)}", caption.device))
        if uses_llm(config):
            llm = config.instructions.llm
            uses.append(
                ModelUse("instructions", f"LLM {llm.model}", f"remote: {llm.base_url or 'api.openai.com'}")
            )
        else:
            uses.append(ModelUse("instructions", "templates", "cpu"))
        uses.append(ModelUse("retrieval", "the object database's FAISS index", faiss_device()))
        return uses

    def samples_made(self, inputs: int | None) -> int | None:
        return None if inputs is None else inputs * self.config.regions_per_image

    def workload(self, inputs: int | None) -> list[Work]:
        config = self.config
        pairs = self.samples_made(inputs)
        work = []
        if config.paint.backend == "paint_by_example":
            steps = config.paint.steps
            work.append(Work("pbe_pairs", pairs, per={"steps": steps}, note=f"{steps} steps per pair"))
        if config.caption.backend == "blip":
            work.append(Work("blip_captions", None if pairs is None else 2 * pairs))
        return work
