"""The models of the replacement flows, each loaded once per worker process on that worker's device
(:func:`ieiw.flows.models.cached_model`): CLIP, SAM and CLIP's vocabulary for the object database;
Paint-by-Example, BLIP, the LLM writer and the database with its index for the pairs."""

from __future__ import annotations

from dataclasses import dataclass

from ieiw.flows.models import HOST, cached_model, model_key
from ieiw.pipelines.instructions.llm import InstructionWriter
from ieiw.pipelines.replacement.captions import BlipCaptioner
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.replacement.database import ObjectDatabase
from ieiw.pipelines.replacement.index import open_index
from ieiw.pipelines.replacement.labels import ZeroShotLabeler
from ieiw.pipelines.replacement.painting import build_painter
from ieiw.pipelines.replacement.sources import build_proposer
from ieiw.pipelines.replacement.stage import ReplacementModels
from ieiw.quality.embeddings import ClipEmbedder


@dataclass(frozen=True)
class PairsSettings:
    """What every replacement batch needs: the config and the database (and index) it reads."""

    config: ReplacementConfig
    database_url: str
    index_key: str


def embedder(config: ReplacementConfig) -> ClipEmbedder:
    """CLIP on this worker's device, once per process (keyed by the model, never by batch size)."""
    section = config.embedder
    return cached_model(
        model_key("clip", section),
        lambda: ClipEmbedder.from_config(section),
        section.device,
        section.batch_size,
    )


def proposer(config: ReplacementConfig):
    if not config.needs_proposer():
        return None
    device = config.proposer.sam.device if config.proposer.backend == "sam" else HOST
    return cached_model(
        model_key("proposer", config.proposer), lambda: build_proposer(config.proposer), device
    )


def labeler(config: ReplacementConfig) -> ZeroShotLabeler:
    """CLIP's text embeddings of the vocabulary, on the device CLIP is on (it shares the embedder)."""
    key = model_key("labeler", config.embedder, config.labels.model_dump(mode="json"))
    return cached_model(
        key,
        lambda: ZeroShotLabeler(embedder(config), config.labels.names(), config.labels.prompt),
        config.embedder.device,
    )


def instruction_writer(config: ReplacementConfig) -> InstructionWriter | None:
    llm = config.instructions.llm
    wanted = config.instructions.backend == "llm" or config.instructions.paraphrase
    if llm is None or not wanted:
        return None
    return cached_model(f"llm:{llm.model_dump_json()}", lambda: InstructionWriter(llm))


def painter(config: ReplacementConfig):
    paint = config.paint
    device = paint.device if paint.backend == "paint_by_example" else HOST
    return cached_model(model_key("painter", paint), lambda: build_painter(paint), device, paint.batch_size)


def captioner(config: ReplacementConfig) -> BlipCaptioner | None:
    caption = config.caption
    if caption.backend != "blip":
        return None
    return cached_model(
        model_key("captioner", caption), lambda: BlipCaptioner(caption), caption.device, caption.batch_size
    )


def load_models(settings: PairsSettings) -> ReplacementModels:
    """Every model of the stage, each loaded once per worker process. Not CLIP and not SAM: the stage
    takes regions and vectors from the object database, which ran them."""
    config, url, key = settings.config, settings.database_url, settings.index_key
    database = cached_model(f"objectdb:{url}:{key}", lambda: ObjectDatabase(url))
    index = cached_model(f"objectindex:{url}:{key}", lambda: open_index(url, key, config.database.index))
    if len(index) != len(database):
        raise ValueError(
            f"object index {key} of {url} holds {len(index)} objects, the database {len(database)}: "
            "the database changed while this run read it; rerun to rebuild the index"
        )
    return ReplacementModels(
        index=index,
        database=database,
        painter=painter(config),
        captioner=captioner(config),
        writer=instruction_writer(config),
    )


def models_key(settings: PairsSettings) -> str:
    return f"replacement:{settings.database_url}:{settings.index_key}:{settings.config.model_dump_json()}"
