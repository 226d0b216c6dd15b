"""The stages of a build, made from its config at their places in the build's layout.

Every writing stage of ``ieiw build`` is made here and nowhere else, in the order it runs: each
configured generator (the replacement generator after its object database), then, with a ``quality:``
section, the score and filter stages of each generator's candidates. :mod:`ieiw.flows.build` runs them
with the one runner, the CLI's stage commands and ``--plan`` read the same objects.
"""

from __future__ import annotations

from collections.abc import Callable

from ieiw.flows.config import BuildConfig
from ieiw.storage.layout import OBJECT_DATABASE, BuildLayout
from ieiw.storage.stage import Stage

GENERATORS = ("removal", "grounded_removal", "replacement", "web_edits", "multitask")
QUALITY = ("score", "filter")
REBUILDABLE = (*GENERATORS, OBJECT_DATABASE, *QUALITY)


def removal(config: BuildConfig, layout: BuildLayout) -> list[Stage]:
    from ieiw.pipelines.removal import RemovalStage

    return [RemovalStage(config.section("removal"), layout.generator("removal"), config.shards)]


def grounded_removal(config: BuildConfig, layout: BuildLayout) -> list[Stage]:
    from ieiw.pipelines.grounded.stage import GroundedRemovalStage

    section = config.section("grounded_removal")
    return [GroundedRemovalStage(section, layout.generator("grounded_removal"), config.shards)]


def replacement(config: BuildConfig, layout: BuildLayout) -> list[Stage]:
    from ieiw.pipelines.replacement.stage import ObjectDatabaseStage, ReplacementStage

    section = config.section("replacement")
    database = section.database.url or layout.object_database
    return [
        ObjectDatabaseStage(section, database),
        ReplacementStage(section, layout.generator("replacement"), database, config.shards),
    ]


def web_edits(config: BuildConfig, layout: BuildLayout) -> list[Stage]:
    from ieiw.flows.crawl_limits import crawl_limits
    from ieiw.pipelines.web.stage import WebEditsStage

    section = config.section("web_edits")
    limits = crawl_limits(section.download, config.runner)  # per-host limits for the whole build
    return [WebEditsStage(section, layout.generator("web_edits"), config.shards, limits)]


def multitask(config: BuildConfig, layout: BuildLayout) -> list[Stage]:
    from ieiw.pipelines.multitask.stage import MultitaskStage

    return [MultitaskStage(config.section("multitask"), layout.generator("multitask"), config.shards)]


MAKERS: dict[str, Callable[[BuildConfig, BuildLayout], list[Stage]]] = {
    "removal": removal,
    "grounded_removal": grounded_removal,
    "replacement": replacement,
    "web_edits": web_edits,
    "multitask": multitask,
}


def quality_stages(config: BuildConfig, layout: BuildLayout, generator: str) -> list[Stage]:
    """The score and the filter stage of one generator's candidates."""
    from ieiw.quality.filtering import FilterStage
    from ieiw.quality.scoring import ScoreStage

    quality = config.section("quality")
    candidates = layout.generator(generator)
    scores = layout.scores(generator)
    return [
        ScoreStage(quality, candidates, scores, layout),
        FilterStage(quality, candidates, scores, layout.final(generator), layout.report(generator), layout),
    ]


def configured_generators(config: BuildConfig) -> list[str]:
    return [name for name in GENERATORS if getattr(config, name) is not None]


def build_stages(config: BuildConfig, wanted: set[str] | None = None) -> list[Stage]:
    """The build's stages in the order they run (only the kinds in ``wanted``: generator names,
    ``object_database``, ``score``, ``filter``)."""
    layout = BuildLayout(config.out())
    stages: list[Stage] = []
    for name in configured_generators(config):
        for stage in MAKERS[name](config, layout):
            if (
                wanted is None
                or stage_kind(stage) in wanted
                or (stage_kind(stage) == OBJECT_DATABASE and "replacement" in wanted)
            ):
                stages.append(stage)
    if config.quality is not None:
        for name in configured_generators(config):
            stages += [
                s for s in quality_stages(config, layout, name) if wanted is None or stage_kind(s) in wanted
            ]
    return stages


def stage_kind(stage: Stage) -> str:
    """What ``--stage`` and ``--rebuild`` call a stage: its generator's name, ``object_database``,
    ``score`` or ``filter`` (a score or filter stage is named ``score <generator>``)."""
    return stage.name.split(" ", 1)[0]


def upstream_of(stage: Stage) -> set[str]:
    """The stage names ``stage`` reads (directly or not): rebuilding one of them rebuilds it."""
    kind, _, generator = stage.name.partition(" ")
    if kind == "replacement":
        return {OBJECT_DATABASE}
    if kind == "score":
        return {generator, *upstream_of_generator(generator)}
    if kind == "filter":
        return {generator, f"score {generator}", *upstream_of_generator(generator)}
    return set()


def upstream_of_generator(generator: str) -> set[str]:
    return {OBJECT_DATABASE} if generator == "replacement" else set()


def rebuild_modes(stages: list[Stage], requested: list[str] | None, on_change: str) -> dict[str, str]:
    """How each stage opens: ``"yes"`` for a stage named in ``requested`` (by its kind) and everything
    downstream of it, ``on_change`` for the rest."""
    requested = list(requested or [])
    unknown = set(requested) - set(REBUILDABLE)
    if unknown:
        raise ValueError(f"--rebuild: unknown stages {sorted(unknown)}; known: {list(REBUILDABLE)}")
    modes: dict[str, str] = {}
    asked = set(requested)
    for stage in stages:
        names = {stage.name, stage_kind(stage), *upstream_of(stage)}
        hit = bool(names & asked) or any(modes.get(u) == "yes" for u in upstream_of(stage))
        modes[stage.name] = "yes" if hit else on_change
    return modes
