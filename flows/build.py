"""`ieiw_build`: the whole build from one YAML config.

Every stage of the build (:mod:`ieiw.flows.stages`: each configured generator, then with a `quality:`
section the score and filter stages of each generator's candidates) runs through the one runner as its
own flow run, its batches as tasks on the task runner the config's `runner:` section chose. Any stage
can run alone (`stages=[...]`); committed batches are never redone, and a stage recorded complete for
its fingerprint and input does not even start a flow run. Then the gallery and the data card, made
from what the stages recorded.
"""

from __future__ import annotations

import itertools
import json

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from ieiw.flows.config import BuildConfig, load_config
from ieiw.flows.plan import read_plan, record_plan
from ieiw.flows.runners import build_task_runner
from ieiw.flows.stage_flow import run_stage_flow
from ieiw.flows.stages import GENERATORS, QUALITY, build_stages, configured_generators, rebuild_modes
from ieiw.flows.storage_errors import store_errors
from ieiw.quality.data_card import render_data_card, write_data_card
from ieiw.storage import fs, manifest
from ieiw.storage.gallery import write_gallery
from ieiw.storage.layout import OBJECT_DATABASE, BuildLayout
from ieiw.storage.schema import stable_key
from ieiw.storage.shards import iter_samples
from ieiw.storage.stage_folder import Rebuild, read_record

STAGES = (*GENERATORS, *QUALITY)  # what --stage may name


@flow(name="ieiw_build", log_prints=True)
def ieiw_build(
    config: BuildConfig | str,
    stages: list[str] | None = None,
    rebuild: list[str] | None = None,
    on_change: Rebuild = "no",
) -> dict:
    """Run the configured stages (or only ``stages``), then write the gallery and the data card.

    ``config`` is a build config or the path of its YAML file (as deployments pass it); ``"demo"`` is
    the packaged demo. A stage whose recorded fingerprint differs from the config's stops the build
    before any work, naming what changed; ``rebuild`` names stages to rebuild (with everything
    downstream of them), and ``on_change="changed"`` rebuilds whatever changed (the demo does).
    """
    logger = get_run_logger()
    if isinstance(config, str):
        config = load_config(config)
    wanted = set(stages or STAGES)
    unknown = wanted - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; known: {list(STAGES)}")
    layout = BuildLayout(config.out())
    with store_errors("the plan", layout.output):
        record_plan(config)  # inputs counted, GPU-hours estimated: the data card shows it beside the cost
    everything = build_stages(config)
    modes = rebuild_modes(everything, rebuild, on_change)
    chosen = build_stages(config, wanted)
    summaries: dict[str, dict] = {}
    with build_task_runner(config.runner) as task_runner:  # a Dask cluster starts once per build
        for stage in chosen:
            summary = run_stage_flow(stage, config.runner, modes[stage.name], task_runner)
            if summary.skipped:
                logger.info("%s: complete for these settings and inputs: nothing to run", stage.name)
            summaries[stage.name] = summary.to_dict()

    with store_errors("gallery and data card", layout.output):
        published = published_state(config, layout)
        if is_published(layout, published):
            logger.info("nothing was committed since the gallery and the data card were written")
        else:
            write_pages(config, layout)
            mark_published(layout, published)
    logger.info("gallery: %s; data card: %s", layout.gallery, layout.data_card)
    create_markdown_artifact(
        fs.read_bytes(layout.data_card).decode("utf-8"), key="data-card", description="the data card"
    )
    create_markdown_artifact(
        _summary_markdown(config, summaries, layout),
        key="build-summary",
        description="what this build made",
    )
    return {"stages": summaries, "gallery": layout.gallery, "data_card": layout.data_card}


def published_state(config: BuildConfig, layout: BuildLayout) -> str:
    """A digest of what the gallery and the data card are made from: each stage's fingerprint and
    committed batches (and the gallery settings). Equal digests: the pages are still right."""
    urls = [s.url for s in build_stages(config)]
    parts = {
        url: [
            (read_record(url) or {}).get("fingerprint", {}).get("digest"),
            sorted(manifest.completed_batches(url)),
        ]
        for url in urls
    }
    return stable_key(config.name, config.gallery.model_dump(mode="json"), parts)


def is_published(layout: BuildLayout, state: str) -> bool:
    pages = (layout.published, layout.gallery, layout.data_card)
    if not all(fs.exists(p) for p in pages):
        return False
    return json.loads(fs.read_bytes(layout.published)).get("state") == state


def mark_published(layout: BuildLayout, state: str) -> None:
    fs.write_bytes_atomic(layout.published, json.dumps({"state": state}).encode("utf-8"))


def write_pages(config: BuildConfig, layout: BuildLayout) -> tuple[str, str]:
    """The gallery and the data card of the build (the card from the stages' records)."""
    generators = configured_generators(config)
    finals = {name: layout.final(name) for name in generators} if config.quality is not None else {}
    histograms = {name: fs.list_files(layout.report(name), ".png") for name in finals}
    gallery = write_build_gallery(config, layout)
    card = write_data_card(
        layout.data_card,
        render_data_card(
            config.name,
            {name: layout.generator(name) for name in generators},
            finals,
            histograms,
            extra_stages=_database(config, layout),
            estimate=read_plan(layout.output),
        ),
    )
    return gallery, card


def _database(config: BuildConfig, layout: BuildLayout) -> dict[str, str]:
    if config.replacement is None:
        return {}
    return {OBJECT_DATABASE: config.replacement.database.url or layout.object_database}


def _summary_markdown(config: BuildConfig, summaries: dict, layout: BuildLayout) -> str:
    lines = [
        f"# Build `{config.name}`",
        "",
        f"Output: `{layout.output}`",
        f"Gallery: `{layout.gallery}`",
        f"Data card: `{layout.data_card}`",
        "",
    ]
    from ieiw.storage.runner import StageSummary

    for name, summary in summaries.items():
        lines.append(f"- **{name}**: {StageSummary(**summary).outcome()}")
    return "\n".join(lines)


def write_build_gallery(config: BuildConfig, layout: BuildLayout) -> str:
    """One page with an equal share of samples from every generator that has committed shards."""
    folders = [layout.generator(name) for name in configured_generators(config)]
    share = max(1, config.gallery.limit // max(1, len(folders)))
    samples = itertools.chain.from_iterable(
        itertools.islice(iter_samples(manifest.committed_shards(f)), share) for f in folders
    )
    write_gallery(
        samples,
        layout.gallery,
        title=f"{config.name}: pairs",
        limit=config.gallery.limit,
        size=config.gallery.thumbnail,
    )
    return layout.gallery


__all__ = ["ieiw_build", "STAGES", "OBJECT_DATABASE"]
