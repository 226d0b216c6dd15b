"""Where everything of a build lives: the one module that joins a build's output paths.

::

    <output>/<generator>/             removal, replacement, web_edits, multitask, grounded_removal
    <output>/object_database/         the replacement generator's objects and index
    <output>/scores/<generator>/      the score stage of a generator's candidates
    <output>/final/<generator>/       the filter stage: the shards to train on
    <output>/reports/<generator>/     the filter's HTML report and histograms
    <output>/caches/embeddings/       CLIP embeddings by image digest (content-addressed)
    <output>/caches/judge/            the judge's answers by request digest (content-addressed)
    <output>/plan.json                the plan the build recorded
    <output>/gallery.html  DATA_CARD.md  .published.json

Caches sit beside the stages, never inside one, so ``--rebuild STAGE`` (which wipes the stage's folder)
keeps what is addressed by content. A stage run on its own (``ieiw score CANDIDATES``) finds its places
from the layout of the build its input belongs to (:meth:`BuildLayout.of_stage`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from ieiw.storage import fs

OBJECT_DATABASE = "object_database"


@dataclass(frozen=True)
class BuildLayout:
    """The places of one build under its ``output`` (a local folder or an fsspec URL)."""

    output: str

    @classmethod
    def of_stage(cls, stage_url: str) -> BuildLayout:
        """The layout of the build a generator's stage folder belongs to (its parent folder)."""
        return cls(posixpath.dirname(str(stage_url).rstrip("/")) or ".")

    def generator(self, name: str) -> str:
        return fs.join(self.output, name)

    @property
    def object_database(self) -> str:
        return fs.join(self.output, OBJECT_DATABASE)

    def scores(self, generator: str) -> str:
        return fs.join(self.output, "scores", generator)

    def final(self, generator: str) -> str:
        return fs.join(self.output, "final", generator)

    def report(self, generator: str) -> str:
        return fs.join(self.output, "reports", generator)

    @property
    def embeddings(self) -> str:
        return fs.join(self.output, "caches", "embeddings")

    @property
    def judge_answers(self) -> str:
        return fs.join(self.output, "caches", "judge")

    @property
    def plan(self) -> str:
        return fs.join(self.output, "plan.json")

    @property
    def gallery(self) -> str:
        return fs.join(self.output, "gallery.html")

    @property
    def data_card(self) -> str:
        return fs.join(self.output, "DATA_CARD.md")

    @property
    def published(self) -> str:
        return fs.join(self.output, ".published.json")


def generator_name(stage_url: str) -> str:
    """The generator a candidates stage folder holds (its folder's name)."""
    return posixpath.basename(str(stage_url).rstrip("/"))


def stage_card(stage_url: str) -> str:
    """The data card of a stage run on its own (an export of preference pairs, say)."""
    return fs.join(stage_url, "DATA_CARD.md")


def scores_of(candidates_url: str) -> str:
    """Where the scores of a generator's candidates live in their build."""
    return BuildLayout.of_stage(candidates_url).scores(generator_name(candidates_url))
