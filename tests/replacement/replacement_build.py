"""Running the object database and the replacement pairs as a user's `ieiw replacement` does: a build
config around a ``replacement:`` section, its stages from :func:`ieiw.flows.stages.replacement`, each
through the one runner as its own Prefect flow run."""

from __future__ import annotations

from ieiw.flows.commands.replacement import run_replacement
from ieiw.flows.config import BuildConfig, RunnerConfig
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.replacement.stage import ObjectDatabaseStage, ReplacementStage
from ieiw.storage.layout import BuildLayout
from ieiw.storage.runner import StageSummary
from ieiw.storage.shards import ShardSpec


def build_config(
    config: ReplacementConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
) -> BuildConfig:
    return BuildConfig(
        name="replacement-test",
        output=str(output),
        shards=shards or ShardSpec(max_samples=50),
        runner=runner or RunnerConfig(max_workers=1, retries=0),
        replacement=config,
    )


def run(
    config: ReplacementConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
    **flags: bool,
) -> dict[str, StageSummary]:
    """Both stages (``database_only``, ``rebuild``, ``rebuild_database`` as the command's options); their
    summaries by stage name."""
    summaries = run_replacement(build_config(config, output, shards, runner), **flags)
    return {summary.stage: summary for summary in summaries}


def stages(config: ReplacementConfig, output: str) -> tuple[ObjectDatabaseStage, ReplacementStage]:
    from ieiw.flows.stages import replacement

    database, pairs = replacement(build_config(config, output), BuildLayout(str(output)))
    return database, pairs
