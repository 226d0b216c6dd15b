"""`ieiw_build`: the whole build from one YAML config, each configured generator as a subflow."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.config import BuildConfig
from flows.removal import removal
from flows.runners import make_task_runner
from storage import fs
from storage.gallery import write_gallery
from storage.shards import iter_samples

STAGES = ("removal",)


@flow(name="ieiw_build", log_prints=True)
def ieiw_build(config: BuildConfig, stages: list[str] | None = None) -> dict:
    """Run the configured generators (or only ``stages``), then write the gallery of the pairs."""
    logger = get_run_logger()
    wanted = set(stages or STAGES)
    unknown = wanted - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; known: {list(STAGES)}")
    runner = make_task_runner(config.runner)
    summaries: dict[str, dict] = {}
    shard_dirs: list[str] = []
    if config.removal and "removal" in wanted:
        summaries["removal"] = removal.with_options(task_runner=runner)(
            config.removal, config.output, config.shards, config.runner
        )
        shard_dirs.append(fs.join(config.output, "removal", "shards"))
    gallery = fs.join(config.output, "gallery.html")
    write_gallery(
        iter_samples(shard_dirs),
        gallery,
        title=f"{config.name}: pairs",
        limit=config.gallery.limit,
        size=config.gallery.thumbnail,
    )
    logger.info("gallery: %s", gallery)
    lines = [f"# Build `{config.name}`", "", f"Output: `{config.output}`", f"Gallery: `{gallery}`", ""]
    for stage, summary in summaries.items():
        lines.append(
            f"- **{stage}**: kept {summary['kept']}, dropped {sum(summary['dropped'].values())} "
            f"({', '.join(f'{k}: {v}' for k, v in summary['dropped'].items()) or 'none'})"
        )
    create_markdown_artifact("\n".join(lines), key="build-summary", description="what this build made")
    return {"stages": summaries, "gallery": gallery}
