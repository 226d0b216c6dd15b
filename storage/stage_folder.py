"""The one commit protocol every writing stage goes through: a stage folder.

A stage folder owns

- its **fingerprint** (``stage.json``): what determines its output. Opening it for writing with another
  fingerprint stops before any work with :class:`StageChanged`, which names what changed, unless the
  caller asked to rebuild it;
- its **lease** (``.lease.json``, :mod:`ieiw.storage.lease`): one writing run at a time; only the holder
  removes temporary files and the files of batches that never committed;
- its **batches**: a batch's files (shards, or a stage's own files) are written first and its manifest
  part last; the part commits the batch, and readers see only what committed parts list.

Layout::

    <stage>/stage.json               the fingerprint record, and the runs that wrote the stage
    <stage>/.lease.json              while a run writes
    <stage>/shards/<batch>-NNNN.tar  sample stages
    <stage>/inputs/<batch>.parquet   the record ids of each input batch, written before work on it
    <stage>/inputs.parquet           the listed batches in one file (written when a run finishes)
    <stage>/manifest/<batch>.parquet one part per committed batch
    <stage>/manifest.parquet         the committed parts in one file (written when a run finishes)

Writing happens in the run that holds the lease or in its workers (threads, processes, other
machines): :func:`commit_samples` and :func:`commit_files` take the holder's token and check that the
lease is still the run's before committing.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import pyarrow as pa

from ieiw.storage import fs, manifest
from ieiw.storage.commit import BatchReport, write_batch
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.lease import DEFAULT_TTL, LOCK_FILE, StageLease, fenced
from ieiw.storage.schema import Result
from ieiw.storage.shards import ShardSpec

log = logging.getLogger(__name__)

STAGE_RECORD = "stage.json"
INPUTS_DIR = "inputs"  # the listing: which records each batch holds, recorded before any work on it
INPUTS_SCHEMA = pa.schema([("batch", pa.string()), ("index", pa.int64()), ("record_id", pa.string())])
# "no": a changed fingerprint stops the run (the default); "changed": a changed stage is rebuilt (the
# demo owns its folder); "yes": rebuild whatever it holds (``--rebuild STAGE``).
Rebuild = Literal["no", "changed", "yes"] | bool


class StageChanged(RuntimeError):
    """A stage holds output made with another fingerprint than the one asked for."""

    def __init__(self, stage: str, url: str, changes: list[str]) -> None:
        self.stage, self.url, self.changes = stage, url, changes
        lines = "\n".join(f"  {c}" for c in changes)
        super().__init__(
            f"stage {stage} at {url} holds output made with other settings:\n{lines}\n"
            f"Nothing ran and nothing was changed. To rebuild {stage} (and every stage that reads it) "
            f"with this config, run again with --rebuild {stage}; to keep both, give this config its own "
            "output."
        )


class StageMissing(FileNotFoundError):
    """A stage reads another stage that has not been made yet; the message says which and how."""


def read_record(stage_url: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.read_bytes(fs.join(stage_url, STAGE_RECORD)))
    except FileNotFoundError:
        return None


def complete_record(stage_url: str, input_key: str) -> tuple[str, dict[str, Any]] | None:
    """``(fingerprint digest, entry)`` when a run went through every batch of the input ``input_key``
    (see :meth:`StageWriter.finish`): a rerun with that fingerprint would commit nothing. The entry says
    how many records the stage holds and which workers' kind the fingerprint was made for. The claims
    are the record's, so of its fingerprint: a rebuild replaces the record, and with it the claim."""
    record = read_record(stage_url)
    if record is None:
        return None
    entry = next((c for c in record.get("complete", []) if c.get("input") == input_key), None)
    return (str((record.get("fingerprint") or {}).get("digest")), entry) if entry is not None else None


def read_listing(stage_url: str) -> pa.Table:
    """The stage's listing of its input batches (empty when it has none)."""
    return manifest.read_table(stage_url, schema=INPUTS_SCHEMA, folder=INPUTS_DIR)


def recorded_fingerprint(stage_url: str) -> Fingerprint | None:
    record = read_record(stage_url)
    return Fingerprint.from_record(record["fingerprint"]) if record else None


def _has_output(stage_url: str) -> bool:
    return bool(manifest.part_urls(stage_url)) or bool(
        fs.list_files(fs.join(stage_url, manifest.SHARD_DIR), "")
    )


class StageWriter:
    """An open stage folder, held by this run: commit batches, then :meth:`finish`."""

    def __init__(
        self,
        stage_url: str,
        fingerprint: Fingerprint,
        *,
        rebuild: Rebuild = "no",
        lease_ttl: float = DEFAULT_TTL,
        lease_wait: float = 0.0,
        run: str = "",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = stage_url
        self.fingerprint = fingerprint
        self.digest = fingerprint.digest
        self.rebuild = {True: "yes", False: "no"}.get(rebuild, rebuild)  # type: ignore[arg-type]
        if self.rebuild not in ("no", "changed", "yes"):
            raise ValueError(f"rebuild must be 'no', 'changed' or 'yes', got {rebuild!r}")
        self.info = dict(info or {})  # recorded beside the fingerprint, not part of it (e.g. model paths)
        self.lease = StageLease(stage_url, fingerprint.stage, ttl=lease_ttl, wait_seconds=lease_wait, run=run)
        self.rebuilt = False
        self.changes: list[str] = []
        self.cleaned: dict[str, int] = {}
        self._started = 0.0

    @property
    def holder(self) -> str:
        return self.lease.holder

    @property
    def stage(self) -> str:
        return self.fingerprint.stage

    def __enter__(self) -> StageWriter:
        fs.makedirs(self.url)
        self.lease.acquire()
        try:
            self._open()
        except BaseException:
            self.lease.release()
            raise
        self._started = time.time()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.lease.release()
            return
        try:  # leaving on an error (often the store itself failing): never hide it behind the release's
            self.lease.release()
        except Exception as release_error:  # noqa: BLE001 - the lease expires by itself within its ttl
            log.warning("stage %s: could not release the lease after an error: %s", self.stage, release_error)

    def _open(self) -> None:
        record = read_record(self.url)
        if record is None and _has_output(self.url):
            changes = ["(no fingerprint recorded: the folder was written by an older version or by hand)"]
        elif record is None:
            changes = []
        else:
            changes = self.fingerprint.changes(Fingerprint.from_record(record["fingerprint"]))
            if not changes and record["fingerprint"].get("digest") != self.digest:
                changes = ["(the fingerprint's digest differs)"]
        if changes and self.rebuild == "no":
            raise StageChanged(self.stage, self.url, changes)
        self.changes = changes
        wipe = self.rebuild == "yes" or (self.rebuild == "changed" and changes)
        if wipe and (record is not None or _has_output(self.url)):
            self._wipe()
            self.rebuilt = True
            record = None
        if record is None:
            self._write_record({"fingerprint": self.fingerprint.record(), "info": self.info, "runs": []})
        self.cleaned = self._clean()

    def _wipe(self) -> None:
        """Delete everything of the stage but the lease (this run holds it)."""
        filesystem, path = fs.get_fs(self.url)
        for entry in filesystem.ls(path, detail=False):
            if posixpath.basename(entry) not in (".lease.json", LOCK_FILE):
                filesystem.rm(entry, recursive=True)
        filesystem.invalidate_cache(path)

    def _clean(self) -> dict[str, int]:
        """Temporary files anywhere in the folder and shards no committed part lists: leftovers of
        killed runs. Only the lease holder calls this, before its workers start."""
        filesystem, path = fs.get_fs(self.url)
        filesystem.invalidate_cache(path)
        removed = {"temporaries": 0, "uncommitted_shards": 0}
        entries = filesystem.find(path)
        root = path.rstrip("/")
        # A stage folder nested in this one (the scores under their candidates) is another stage's:
        # only its own holder cleans it.
        nested = [
            posixpath.dirname(e) + "/"
            for e in entries
            if posixpath.basename(e) == STAGE_RECORD and posixpath.dirname(e).rstrip("/") != root
        ]
        for entry in entries:
            if any(entry.startswith(prefix) for prefix in nested):
                continue
            if ".tmp-" in posixpath.basename(entry):
                filesystem.rm(entry)
                removed["temporaries"] += 1
        shards = fs.list_files(fs.join(self.url, manifest.SHARD_DIR), "")
        # a stage of its own files (commit_files) has no shards, and its parts no ``shard`` column
        listed = {posixpath.basename(u) for u in manifest.committed_shards(self.url)} if shards else set()
        for shard in shards:
            if posixpath.basename(shard) not in listed and not posixpath.basename(shard).startswith("."):
                fs.remove(shard)
                removed["uncommitted_shards"] += 1
        return removed

    def _write_record(self, record: dict[str, Any]) -> None:
        fs.write_bytes_atomic(fs.join(self.url, STAGE_RECORD), json.dumps(record, indent=2).encode("utf-8"))

    # ------------------------------------------------------------------ what the run reads and writes

    def committed_batches(self) -> set[str]:
        return manifest.completed_batches(self.url)

    def completed_record_ids(self) -> manifest.RecordSet:
        """The committed record ids, compact: ``record_id in writer.completed_record_ids()``."""
        return manifest.completed_records(self.url)

    def commit(
        self, batch: str, results: Iterable[Result], spec: ShardSpec | None = None, seconds: float = 0.0
    ) -> BatchReport:
        """Commit one batch of samples and drops from this process."""
        return commit_samples(self.url, batch, results, spec, self.digest, self.holder, self.stage, seconds)

    def commit_files(self, batch: str, table: pa.Table, files: Mapping[str, bytes] | None = None) -> str:
        return commit_files(self.url, batch, table, files, self.digest, self.holder, self.stage)

    def list_batch(self, batch: str, index: int, record_ids: list[str]) -> None:
        """Record which input records batch number ``index`` holds, before any work on it."""
        table = pa.Table.from_pydict(
            {"batch": [batch] * len(record_ids), "index": [index] * len(record_ids), "record_id": record_ids},
            schema=INPUTS_SCHEMA,
        )
        with fenced(self.url, self.stage, self.holder):
            manifest.write_part(self.url, batch, table, folder=INPUTS_DIR)

    def listing(self) -> pa.Table:
        """Every listed batch's records (``batch``, ``index``, ``record_id``), committed or not."""
        return read_listing(self.url)

    def finish(
        self,
        summary: Mapping[str, Any] | None = None,
        schema: pa.Schema = manifest.MANIFEST_SCHEMA,
        complete_for: str | None = None,
        records: int | None = None,
        env: Mapping[str, Any] | None = None,
    ) -> str:
        """Consolidate the manifest and append this run to the stage record; returns the manifest URL.

        ``complete_for`` says the run went through every batch of its input and names that input
        (what besides the fingerprint decides it, e.g. a ``limit``): :func:`complete_record` then
        knows a rerun with the same fingerprint and input has nothing to do; ``records`` is how many
        input records the stage then holds."""
        self.lease.check()
        consolidated = manifest.consolidate(self.url, schema=schema)
        if manifest.part_urls(self.url, INPUTS_DIR):
            manifest.consolidate(self.url, schema=INPUTS_SCHEMA, folder=INPUTS_DIR)
        record = read_record(self.url) or {"fingerprint": self.fingerprint.record(), "info": self.info}
        record.setdefault("runs", []).append(
            {
                "started": self._started,
                "wall_seconds": round(time.time() - self._started, 3),
                **dict(summary or {}),
            }
        )
        record["info"] = {**record.get("info", {}), **self.info}
        if complete_for is not None:
            complete = [c for c in record.get("complete", []) if c.get("input") != complete_for]
            entry = {"input": complete_for, "records": records, "env": dict(env or {})}
            record["complete"] = [*complete, entry]
        self._write_record(record)
        return consolidated


def open_stage(stage_url: str, fingerprint: Fingerprint, **options: Any) -> StageWriter:
    """A :class:`StageWriter` for ``stage_url`` (options as its constructor's); use it as a context
    manager."""
    return StageWriter(stage_url, fingerprint, **options)


def commit_samples(
    stage_url: str,
    batch: str,
    results: Iterable[Result],
    spec: ShardSpec | None,
    fingerprint: str,
    holder: str | None,
    stage: str = "",
    seconds: float = 0.0,
) -> BatchReport:
    """Write a batch's shards, then (if the lease is still ``holder``'s) its manifest part."""
    return write_batch(
        results,
        stage_url,
        batch,
        spec,
        fingerprint=fingerprint,
        fence=lambda: fenced(stage_url, stage or stage_url, holder),
        seconds=seconds,
    )


def commit_files(
    stage_url: str,
    batch: str,
    table: pa.Table,
    files: Mapping[str, bytes] | None,
    fingerprint: str,
    holder: str | None,
    stage: str = "",
) -> str:
    """Write a batch's own files (paths relative to the stage), then its part ``table``."""
    for relative, data in (files or {}).items():
        fs.write_bytes_atomic(fs.join(stage_url, relative), data)
    column = pa.array([fingerprint] * len(table), pa.string())
    if "fingerprint" in table.column_names:
        table = table.set_column(table.column_names.index("fingerprint"), "fingerprint", column)
    else:
        table = table.append_column("fingerprint", column)
    with fenced(stage_url, stage or stage_url, holder):
        return manifest.write_part(stage_url, batch, table, metadata={"fingerprint": fingerprint})
