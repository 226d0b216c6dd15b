"""What shapes the replacement generator's output, as plain JSON trees: for the object database's and
the replacement stage's fingerprints, and for each sample's key.

Every tree is a config section dumped *less* what never changes the output (batch sizes, devices,
worker counts, timeouts, cache folders, endpoints) and less local paths: a model is named by its
identity by content (:func:`ieiw.storage.identity.model_identity`), an input file by its digest, and
a folder of images not at all (the records' provenance says which images were used). Dumping less an
exclusion list, instead of picking fields, means a setting added later is in the key and the
fingerprints by default.
"""

from __future__ import annotations

import os
from typing import Any

from ieiw.pipelines.instructions.llm import LLMConfig
from ieiw.pipelines.replacement.config import (
    ImageFolderSource,
    InstructionConfig,
    OpenImagesSource,
    ProposerConfig,
    ReplacementConfig,
    SA1BSource,
    Source,
)
from ieiw.pipelines.replacement.index import OPERATIONAL as INDEX_OPERATIONAL
from ieiw.pipelines.replacement.index import IndexConfig
from ieiw.pipelines.replacement.labels import LabelConfig
from ieiw.quality.embeddings import EmbedderConfig, autocast_dtype, resolve_device
from ieiw.storage.identity import file_digest, model_identity
from ieiw.storage.schema import stable_key

# Settings that change how a step runs, never what it makes.
LLM_OPERATIONAL = {
    "base_url",
    "api_key_env",
    "timeout",
    "max_attempts",
    "backoff_seconds",
    "max_backoff_seconds",
    "cache_dir",
}


def file_identity(path: str | None) -> str | None:
    """``sha256:<hex>`` of an input file's bytes (None for none; the name itself if it is no file)."""
    if not path:
        return None
    if "://" not in path and os.path.isfile(path):
        return f"sha256:{file_digest(path)}"
    return os.path.basename(path.rstrip("/"))


def source_settings(source: Source) -> dict[str, Any]:
    """A source without its folders; its annotation files by content."""
    if isinstance(source, SA1BSource):
        return {"kind": source.kind}
    if isinstance(source, OpenImagesSource):
        return {
            "kind": source.kind,
            "segmentation_csv": file_identity(source.segmentation_csv),
            "class_descriptions": file_identity(source.class_descriptions),
        }
    if isinstance(source, ImageFolderSource):
        return source.model_dump(exclude={"images"})
    raise TypeError(f"unknown source {type(source).__name__}")


def proposer_settings(config: ProposerConfig) -> dict[str, Any]:
    """The proposer that makes regions of images without masks, SAM's checkpoint by content."""
    if config.backend == "sam":
        return {"backend": "sam", "sam": config.sam.shaping_settings()}
    return {"backend": config.backend, **config.model_dump(exclude={"backend", "sam"})}


def embedder_settings(config: EmbedderConfig, precision: str | None = None) -> dict[str, Any]:
    """The CLIP model by content (its weights and, for a custom architecture, its config file).
    ``precision`` is the one the loaded model runs at, where known (sample keys); else the setting."""
    return {
        **config.model_dump(exclude={"pretrained", "model_config_file", "device", "batch_size"}),
        "pretrained": model_identity(config.pretrained),
        "model_config_file": file_identity(config.model_config_file),
        **({"precision": precision} if precision else {}),
    }


def embedder_precision(config: EmbedderConfig) -> str:
    """The precision a CLIP embedder of ``config`` runs at on this machine (as a loaded one reports it)."""
    dtype = autocast_dtype(resolve_device(config.device), config.precision)
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def proposer_key(config: ProposerConfig) -> dict[str, Any]:
    """The proposer and its settings as a loaded one names them (``{"proposer": name, **settings()}``),
    from the config alone: the replacement stage keys proposed regions without loading SAM."""
    if config.backend == "sam":
        return {"proposer": "sam", **config.sam.shaping_settings()}
    return {
        "proposer": config.backend,
        "scale": config.felzenszwalb_scale,
        "sigma": config.felzenszwalb_sigma,
        "min_size": config.felzenszwalb_min_size,
        "max_regions": config.max_regions,
    }


def label_settings(config: LabelConfig) -> dict[str, Any]:
    """The vocabulary zero-shot labelling chooses from (by its names, wherever they were read from)."""
    names = config.names()
    return {"prompt": config.prompt, "vocabulary": stable_key(names), "size": len(names)}


def index_settings(config: IndexConfig) -> dict[str, Any]:
    """The FAISS index's settings that shape what retrieval returns (built-in and query-time ones)."""
    return config.model_dump(exclude=INDEX_OPERATIONAL)


def llm_settings(config: LLMConfig | None) -> dict[str, Any] | None:
    return None if config is None else config.model_dump(exclude=LLM_OPERATIONAL)


def instruction_settings(config: InstructionConfig) -> dict[str, Any]:
    uses_llm = config.backend == "llm" or config.paraphrase
    return {
        **config.model_dump(exclude={"llm"}),
        "llm": llm_settings(config.llm) if uses_llm else None,
    }


def database_settings(config: ReplacementConfig) -> dict[str, Any]:
    """What the object database holds depends on: its sources, how regions are made, chosen, cropped,
    embedded and named, and how many per image are kept (models apart: :func:`database_models`)."""
    embedder = embedder_settings(config.embedder)
    embedder.pop("pretrained")
    return {
        "sources": [source_settings(s) for s in config.sources],
        "proposer": _proposer_without_models(config) if config.needs_proposer() else None,
        "selection": config.selection.model_dump(),
        "crop": config.crop.model_dump(),
        "embedder": embedder,
        "labels": label_settings(config.labels),
        "objects_per_image": config.database.objects_per_image,
    }


def database_models(config: ReplacementConfig) -> dict[str, str | None]:
    models = {"embedder": model_identity(config.embedder.pretrained)}
    if config.needs_proposer() and config.proposer.backend == "sam":
        models["sam"] = model_identity(config.proposer.sam.checkpoint)
    return models


def replacement_settings(config: ReplacementConfig) -> dict[str, Any]:
    """What the replacement pairs depend on besides the object database (its digest is upstream of
    them) and the models (:func:`replacement_models`)."""
    paint = config.paint.model_dump(exclude={"model", "device", "batch_size"})
    if config.paint.backend != "paint_by_example":
        paint.pop("wide_regions")  # Paint-by-Example's window only: the classical painter has none
    caption = config.caption.model_dump(exclude={"model", "device", "batch_size"})
    return {
        **database_settings(config),
        "index": index_settings(config.database.index),
        "retrieval": config.retrieval.model_dump(),
        "paint": paint,
        "caption": caption,
        "instructions": instruction_settings(config.instructions),
        "regions_per_image": config.regions_per_image,
        "min_change": config.min_change,
    }


def replacement_models(config: ReplacementConfig) -> dict[str, str | None]:
    models = database_models(config)
    if config.paint.backend != "seamless_clone":
        models["paint"] = model_identity(config.paint.model)
    if config.caption.backend != "class_names":
        models["caption"] = model_identity(config.caption.model)
    return models


def _proposer_without_models(config: ReplacementConfig) -> dict[str, Any]:
    settings = proposer_settings(config.proposer)
    if "sam" in settings:
        settings["sam"] = {k: v for k, v in settings["sam"].items() if k != "checkpoint"}
    return settings
