"""One stage contract and one runner for every writing stage: every stage is a ``Stage`` the one runner
maps over an executor, no stage commits by itself, and the same stage on threads and on a two-process
Dask cluster writes the same keys and the same bytes."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from phrasecut_fixture import write_phrasecut

from ieiw.flows.config import RunnerConfig
from ieiw.flows.runners import make_task_runner
from ieiw.flows.stage_flow import run_stage_flow
from ieiw.pipelines.removal import RemovalConfig, RemovalStage
from ieiw.storage import manifest
from ieiw.storage.shards import iter_tar_groups
from ieiw.storage.stage import Stage

ROOT = Path(__file__).resolve().parents[2]
# Every stage that writes: the generators, the object database, score and filter, the latent cache,
# candidates, judgements, the review export and preferences.
WRITING_STAGES = {
    "RemovalStage",
    "GroundedRemovalStage",
    "ObjectDatabaseStage",
    "ReplacementStage",
    "WebEditsStage",
    "MultitaskStage",
    "ScoreStage",
    "FilterStage",
    "LatentCacheStage",
    "CandidatesStage",
    "JudgementsStage",
    "ReviewExportStage",
    "PreferencesStage",
}
# Where committing a batch happens: the runner (through the stage folder) and nowhere else.
COMMITS = ("commit_samples(", "commit_files(", "write_batch(", "writer.commit(")
ALLOWED = {"storage/runner.py", "storage/stage_folder.py", "storage/commit.py"}


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_every_writing_stage_is_a_stage_of_the_one_contract():
    for package in ("pipelines", "model", "quality"):
        root = importlib.import_module(f"ieiw.{package}")
        for info in pkgutil.walk_packages(root.__path__, f"ieiw.{package}."):
            if ".demo_data" not in info.name:
                importlib.import_module(info.name)
    stages = {
        cls.__name__
        for cls in _all_subclasses(Stage)
        if cls.__module__.startswith("ieiw.")
        and not cls.__name__.startswith("_")
        and not cls.__name__.endswith("Base")  # not a shared base
    }
    assert stages == WRITING_STAGES


def test_no_stage_commits_by_itself():
    """Batches commit only through the runner; a stage returns its results instead."""
    offenders = []
    for folder in ("flows", "pipelines", "model", "quality", "storage"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            if relative in ALLOWED:
                continue
            for line_no, line in enumerate(text.splitlines(), 1):
                code = line.split("#", 1)[0]
                if any(call in code for call in COMMITS) and "def " not in code:
                    offenders.append(f"{relative}:{line_no}: {line.strip()}")
    # a synthetic object database for tools and tests, outside any run: documented as such
    offenders = [o for o in offenders if not o.startswith("pipelines/replacement/database.py")]
    assert offenders == []


def _members(stage_url: str) -> dict[str, dict[str, bytes]]:
    return {
        key: members
        for shard in manifest.committed_shards(stage_url)
        for key, members in iter_tar_groups(shard)
    }


def test_a_stage_on_threads_and_on_two_dask_processes_writes_the_same_keys_and_bytes(prefect_api, tmp_path):
    annotations, images = write_phrasecut(str(tmp_path / "data"), n_images=6, size=96)
    config = RemovalConfig.model_validate(
        {"source": {"annotations": [annotations], "images": images}, "batch_size": 3, "dilation": 7}
    )
    written = {}
    for name, runner in (
        ("threads", RunnerConfig(task_runner="threads", max_workers=2)),
        ("dask", RunnerConfig(task_runner="dask", max_workers=2, gpus="none")),
    ):
        stage = RemovalStage(config, str(tmp_path / name / "removal"))
        summary = run_stage_flow(stage, runner, task_runner=make_task_runner(runner))
        assert summary.kept == 24 and summary.batches == 4, summary
        written[name] = _members(stage.url)
    assert sorted(written["threads"]) == sorted(written["dask"]) and len(written["dask"]) == 24
    assert written["threads"] == written["dask"]  # every member of every sample, byte for byte
    shards = {
        name: sorted((tmp_path / name / "removal" / "shards").glob("*.tar")) for name in ("threads", "dask")
    }
    assert [p.read_bytes() for p in shards["threads"]] == [p.read_bytes() for p in shards["dask"]]
