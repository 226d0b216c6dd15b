"""`ieiw_build`: the whole build from one YAML config.

Each configured generator runs as a subflow, then (with a `quality:` section) scoring and
filtering of each generator's candidates into `<output>/final/<generator>`, then the gallery and
the data card. Any stage can run alone (`stages=[...]`); finished shards are never redone, and a
generator whose input is all in its fingerprint (removal) and whose stage is recorded complete for
the same fingerprint and input is not even started as a flow run: the build's log says so.
"""

from __future__ import annotations

import itertools
import json
import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from ieiw.flows.config import BuildConfig, load_config
from ieiw.flows.filter import filter_flow
from ieiw.flows.multitask import multitask
from ieiw.flows.plan import read_plan, record_plan
from ieiw.flows.removal import removal, removal_complete
from ieiw.flows.replacement import replacement
from ieiw.flows.runners import make_task_runner
from ieiw.flows.score import score_flow
from ieiw.flows.storage_errors import store_errors
from ieiw.flows.web_edits import web_edits
from ieiw.pipelines.sources.demo import materialize_demo_images
from ieiw.quality.data_card import render_data_card, write_data_card
from ieiw.storage import fs, manifest
from ieiw.storage.gallery import write_gallery
from ieiw.storage.schema import stable_key
from ieiw.storage.shards import iter_samples
from ieiw.storage.stage_folder import Rebuild, read_record

# Generators in the order they run; each is a flow taking (section, output, shards, runner).
GENERATORS = {"removal": removal, "replacement": replacement, "web_edits": web_edits, "multitask": multitask}
# Generators whose whole input is files the fingerprint holds by content (removal: the annotation
# files): recorded complete for this config, their flow has nothing to do and does not run. The others
# always run, since their input can grow with the same fingerprint: image folders (multitask,
# replacement), a live listing (web edits).
COMPLETE_CHECKS = {"removal": removal_complete}
QUALITY_STAGES = ("score", "filter")
STAGES = (*GENERATORS, *QUALITY_STAGES)
REBUILDABLE = (*GENERATORS, "object_database", *QUALITY_STAGES)


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def rebuild_modes(config: BuildConfig, requested: list[str] | None, on_change: Rebuild) -> dict[str, Rebuild]:
    """How each stage opens: ``"yes"`` for a stage named in ``requested`` and everything downstream of
    it (a score and filter read their generator's candidates), ``on_change`` for the rest."""
    requested = list(requested or [])
    unknown = set(requested) - set(REBUILDABLE)
    if unknown:
        raise ValueError(f"--rebuild: unknown stages {sorted(unknown)}; known: {list(REBUILDABLE)}")
    modes: dict[str, Rebuild] = {}
    for name in configured_generators(config):
        upstream = {name} | ({"object_database"} if name == "replacement" else set())
        generator = "yes" if upstream & set(requested) else on_change
        score = "yes" if generator == "yes" or "score" in requested else on_change
        modes[name] = generator
        modes[f"score {name}"] = score
        modes[f"filter {name}"] = "yes" if score == "yes" or "filter" in requested else on_change
    modes["object_database"] = "yes" if "object_database" in requested else on_change
    return modes


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
    modes = rebuild_modes(config, rebuild, on_change)
    if config.removal and config.removal.source.materialize_demo_images:
        materialize_demo_images(config.removal.source.images)
    with store_errors("the plan", config.output):
        record_plan(config)  # inputs counted, GPU-hours estimated: the data card shows it beside the cost
    runner = make_task_runner(config.runner)
    summaries: dict[str, dict] = {}
    for name, generator in GENERATORS.items():
        section = getattr(config, name)
        if section is None or name not in wanted:
            continue
        started = time.perf_counter()
        check = COMPLETE_CHECKS.get(name)
        done = check(section, config.output, config.shards) if check and modes[name] != "yes" else None
        if done is not None:
            logger.info("%s: complete for these settings and inputs (fingerprint %s): nothing to run",
                        name, done["fingerprint"][:12])
            summaries[name] = {**done, "wall_seconds": time.perf_counter() - started, "device": _device()}
            continue
        options = {"rebuild_database": modes["object_database"]} if name == "replacement" else {}
        summary = generator.with_options(task_runner=runner)(
            section, config.output, config.shards, config.runner, rebuild=modes[name], **options
        )
        summaries[name] = {**summary, "wall_seconds": time.perf_counter() - started, "device": _device()}

    finals, histograms = {}, {}
    if config.quality is not None and wanted & set(QUALITY_STAGES):
        quality = config.quality.model_dump(mode="json")
        for name in configured_generators(config):
            candidates = fs.join(config.output, name)
            final = fs.join(config.output, "final", name)
            if "score" in wanted:
                started = time.perf_counter()
                scored = score_flow(candidates_url=candidates, config=quality, rebuild=modes[f"score {name}"])
                summaries[f"score {name}"] = {
                    **scored,
                    "wall_seconds": time.perf_counter() - started,
                    "device": _device(),
                }
            if "filter" in wanted:
                started = time.perf_counter()
                report_url = fs.join(config.output, "reports", name)
                filtered = filter_flow(
                    candidates_url=candidates,
                    out_url=final,
                    config=quality,
                    report_url=report_url,
                    rebuild=modes[f"filter {name}"],
                )
                summaries[f"filter {name}"] = {**filtered, "wall_seconds": time.perf_counter() - started}
                finals[name] = final
                histograms[name] = fs.list_files(report_url, ".png")

    with store_errors("gallery and data card", config.output):
        final_urls = (
            {name: fs.join(config.output, "final", name) for name in configured_generators(config)}
            if config.quality is not None
            else {}
        )
        published = published_state(config, final_urls)
        gallery, card = fs.join(config.output, "gallery.html"), fs.join(config.output, "DATA_CARD.md")
        if is_published(config.output, published, [gallery, card]):
            logger.info("nothing was committed since the gallery and the data card were written")
        else:
            gallery, card = write_pages(config, summaries, finals, histograms)
            mark_published(config.output, published)
    logger.info("gallery: %s; data card: %s", gallery, card)
    create_markdown_artifact(
        fs.read_bytes(card).decode("utf-8"), key="data-card", description="the data card"
    )
    create_markdown_artifact(
        _summary_markdown(config, summaries, gallery, card),
        key="build-summary",
        description="what this build made",
    )
    return {"stages": summaries, "gallery": gallery, "data_card": card}


PUBLISHED = ".published.json"


def published_state(config: BuildConfig, finals: dict[str, str]) -> str:
    """A digest of what the gallery and the data card are made from: each stage's fingerprint and
    committed batches (and the gallery settings). Equal digests: the pages are still right."""
    stages = [fs.join(config.output, name) for name in configured_generators(config)] + sorted(
        finals.values()
    )
    parts = {
        url: [
            read_record(url) and read_record(url)["fingerprint"]["digest"],
            sorted(manifest.completed_batches(url)),
        ]
        for url in stages
    }
    return stable_key(config.name, config.gallery.model_dump(mode="json"), parts)


def is_published(output: str, state: str, pages: list[str]) -> bool:
    url = fs.join(output, PUBLISHED)
    if not fs.exists(url) or not all(fs.exists(p) for p in pages):
        return False
    return json.loads(fs.read_bytes(url)).get("state") == state


def mark_published(output: str, state: str) -> None:
    fs.write_bytes_atomic(fs.join(output, PUBLISHED), json.dumps({"state": state}).encode("utf-8"))


def write_pages(config: BuildConfig, summaries: dict, finals: dict, histograms: dict) -> tuple[str, str]:
    """The gallery and the data card of the build (the card from the stages' records)."""
    gallery = write_build_gallery(config)
    card = write_data_card(
        fs.join(config.output, "DATA_CARD.md"),
        render_data_card(
            config.name,
            {name: fs.join(config.output, name) for name in configured_generators(config)},
            {name: fs.join(config.output, "final", name) for name in configured_generators(config)}
            if config.quality is not None
            else {},
            histograms,
            estimate=read_plan(config.output),
        ),
    )
    return gallery, card


def configured_generators(config: BuildConfig) -> list[str]:
    return [name for name in GENERATORS if getattr(config, name) is not None]


def _summary_markdown(config: BuildConfig, summaries: dict, gallery: str, card: str) -> str:
    lines = [
        f"# Build `{config.name}`",
        "",
        f"Output: `{config.output}`",
        f"Gallery: `{gallery}`",
        f"Data card: `{card}`",
        "",
    ]
    for stage, summary in summaries.items():
        dropped = summary.get("dropped", {})
        drops = ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "none"
        lines.append(f"- **{stage}**: kept {summary.get('kept')}, dropped {sum(dropped.values())} ({drops})")
    return "\n".join(lines)


def write_build_gallery(config: BuildConfig) -> str:
    """One page with an equal share of samples from every generator that has shards."""
    folders = [fs.join(config.output, name, manifest.SHARD_DIR) for name in configured_generators(config)]
    share = max(1, config.gallery.limit // max(1, len(folders)))
    samples = itertools.chain.from_iterable(itertools.islice(iter_samples(f), share) for f in folders)
    gallery = fs.join(config.output, "gallery.html")
    write_gallery(
        samples,
        gallery,
        title=f"{config.name}: pairs",
        limit=config.gallery.limit,
        size=config.gallery.thumbnail,
    )
    return gallery
