"""The grounded removal generator as a stage of the build (:class:`ieiw.storage.stage.Stage`)."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

from ieiw.pipelines.grounded.chain import grounded_removal
from ieiw.pipelines.grounded.config import GroundedRemovalConfig
from ieiw.pipelines.grounded.grounding import load_detector, load_owl
from ieiw.pipelines.grounded.pairs import GENERATOR
from ieiw.pipelines.grounded.photos import SUFFIXES, Photo, count_photos, iter_photos
from ieiw.pipelines.grounded.segmenting import load_segmenter
from ieiw.pipelines.grounded.tagging import load_tagger
from ieiw.pipelines.inpaint.factory import build_inpainter
from ieiw.pipelines.instructions.llm import InstructionWriter
from ieiw.storage.config import WorkerEnv, config_fingerprint, input_limits, model_references
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.schema import Drop, Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage import ModelSpec, ModelUse, Stage, Work, folder_listing_key, gpu_tags, model_key

DETECTORS = {"owlv2": "OWLv2", "grounding_dino": "Grounding DINO"}


class GroundedRemovalStage(Stage):
    """Photos in, remove and add pairs out: a batch of ``batch_size`` photos at a time."""

    name = GENERATOR
    unit = "photos"

    def __init__(self, config: GroundedRemovalConfig, url: str, shards: ShardSpec | None = None) -> None:
        devices = (config.tagger.embedder.device, config.detector.device, config.segmenter.device)
        tags = {t for d in devices for t in gpu_tags(True, d)}
        tags |= set(gpu_tags(config.inpaint.backend == "lama", config.inpaint.device))
        super().__init__(url, config.batch_size, shards, tags)
        self.config = config

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        return config_fingerprint(self.name, self.config, env)

    def records(self) -> Iterator[Photo | Drop]:
        photos = iter_photos(self.config.source)
        return itertools.islice(photos, self.config.limit) if self.config.limit is not None else photos

    def models(self) -> Mapping[str, ModelSpec]:
        config = self.config
        tagger, detector, segmenter = config.tagger, config.detector, config.segmenter
        inpaint, verifier = config.inpaint, config.verifier
        specs = {
            "tagger": ModelSpec(
                model_key("clip-tagger", tagger), partial(load_tagger, tagger), tagger.embedder.device
            ),
            # the detector and the verifier share one model when they name the same OWL on one device
            "detector": ModelSpec(
                model_key("owl" if detector.kind == "owlv2" else detector.kind, None, detector.model),
                partial(load_detector, detector.kind, detector.model, detector.device),
                detector.device,
            ),
            "segmenter": ModelSpec(
                model_key("sam-boxes", segmenter), partial(load_segmenter, segmenter), segmenter.device
            ),
            "inpainter": ModelSpec(
                model_key("inpainter", inpaint),
                partial(build_inpainter, inpaint),
                inpaint.device,
                inpaint.batch_size,
            ),
            "verifier": ModelSpec(
                model_key("owl", None, verifier.model),
                partial(load_owl, verifier.model, verifier.device),
                verifier.device,
            ),
        }
        llm = config.instructions.llm
        if config.uses_llm() and llm is not None:  # the replacement generator's writer, shared in a worker
            specs["writer"] = ModelSpec(
                model_key("llm", None, llm.model_dump(mode="json")), partial(InstructionWriter, llm)
            )
        return specs

    def run(self, records: list[Any], models: Mapping[str, Any]) -> list[Result]:
        return grounded_removal(records, models, self.config)

    def input_key(self) -> str:
        """The photos' folder by its listing (names and sizes of its images, shards or Parquet files) and
        the limit: a grown folder or a raised limit is more input."""
        source = self.config.source
        listing = folder_listing_key(source.path, suffixes=SUFFIXES[source.kind])
        return json.dumps({"limits": input_limits(self.config), "listing": listing}, sort_keys=True)

    def total(self) -> int | None:
        try:
            found = count_photos(self.config.source)
        except (OSError, ValueError):
            return None
        if found is None or self.config.limit is None:
            return found
        return min(found, self.config.limit)

    def info(self) -> dict[str, Any]:
        return {"models": model_references(self.config)}

    # ------------------------------------------------------------------------------------ the plan

    def model_uses(self) -> list[ModelUse]:
        config = self.config
        inpaint = config.inpaint
        if inpaint.backend == "lama":
            how = "whole image" if inpaint.strategy == "whole" else f"crop {inpaint.window}px windows"
            painter = f"LaMa {os.path.basename(str(inpaint.model).split('#', 1)[0].rstrip('/'))} ({how})"
        else:
            painter = f"OpenCV {inpaint.opencv_method} (classical)"
        sam = config.segmenter
        return [
            ModelUse(
                "tagger",
                f"CLIP {config.tagger.embedder.model} zero-shot over {len(config.tagger.names())} names",
                config.tagger.embedder.device,
            ),
            ModelUse(
                "detector",
                f"{DETECTORS[config.detector.kind]} {config.detector.model}",
                config.detector.device,
            ),
            ModelUse("segmenter", f"SAM {sam.model_type} (box prompts)", sam.device),
            ModelUse("inpainter", painter, inpaint.device),
            ModelUse("verifier", f"OWLv2 {config.verifier.model}", config.verifier.device),
            self._instructions(),
        ]

    def _instructions(self) -> ModelUse:
        llm = self.config.instructions.llm
        if not self.config.uses_llm() or llm is None:
            return ModelUse("instructions", "templates", "cpu")
        how = "writes" if self.config.instructions.backend == "llm" else "rewords templates"
        return ModelUse(
            "instructions", f"LLM {llm.model} ({how})", f"remote: {llm.base_url or 'api.openai.com'}"
        )

    def workload(self, inputs: int | None) -> list[Work]:
        """Per photo: a CLIP embedding and a detector pass; per object found (at most ``top_k`` a photo):
        SAM's box, LaMa's window and the verifier's two images."""
        objects = None if inputs is None else inputs * self.config.tagger.top_k
        work = [
            Work("clip_images", inputs, note="tagging"),
            Work(f"{self.config.detector.kind}_images", inputs, note="grounding"),
            Work("sam_boxes", objects, note=f"at most {self.config.tagger.top_k} objects a photo"),
        ]
        if self.config.inpaint.backend == "lama":
            work.append(Work("lama_windows", objects, note="at most"))
        work.append(Work("owlv2_images", None if objects is None else 2 * objects, note="verifying, at most"))
        return work

    def samples_made(self, inputs: int | None) -> int | None:
        """At most: a pair per object (``top_k`` a photo), with sessions one more per session (the
        whole session), each reversed with ``make_add_pairs``."""
        if inputs is None:
            return None
        config = self.config
        per_photo = config.tagger.top_k
        if config.sessions is not None and config.sessions.whole_session:
            full, rest = divmod(config.tagger.top_k, config.sessions.max_turns)
            per_photo += full + (rest >= 2)  # a session of one object is an ordinary pair
        return inputs * per_photo * (2 if config.make_add_pairs else 1)
