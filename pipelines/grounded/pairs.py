"""Remove and reversed add pairs of a found object, with their keys, instructions and generator record.

A pair's key is :func:`~ieiw.storage.schema.sample_key` of its task, its provenance (the photo's dataset
and key, the phrase as its region) and the generator record, which holds every setting of the
generator's config by the fingerprint's rule (thresholds by value, the vocabulary file by digest) and
every model by identity (a file's content hash, a hub id at its commit), never a path: the same photos
give the same keys on a rerun, from another folder and on another machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ieiw.pipelines.grounded.config import GroundedRemovalConfig
from ieiw.pipelines.grounded.photos import Photo
from ieiw.pipelines.grounded.wording import Wording
from ieiw.pipelines.inpaint.base import Inpainter
from ieiw.storage.config import WorkerEnv, config_fingerprint
from ieiw.storage.schema import GeneratorInfo, Provenance, Sample, SampleMeta, Task, sample_key

GENERATOR = "grounded_removal"
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice"}


def generator_info(config: GroundedRemovalConfig, inpainter: Inpainter, env: WorkerEnv) -> GeneratorInfo:
    """What made the pairs: the tagger, detector and segmenter named, the config's settings and models
    read by the fingerprint's rule (the photo source is provenance, not a setting; the sessions settings
    are added to a session's samples only, so an object that is no turn keeps its ordinary key)."""
    fingerprint = config_fingerprint(GENERATOR, config, env, exclude=("source", "sessions"))
    return GeneratorInfo(
        name=GENERATOR,
        backend=inpainter.backend,
        model=inpainter.model,
        settings={
            "tagger": config.tagger.kind,
            "detector": config.detector.kind,
            "segmenter": "sam_box_prompts",
            "config": fingerprint.settings,
            "models": fingerprint.models,
            "inpainter": inpainter.settings(),
        },
    )


def plural(phrase: str) -> str:
    """``red cup`` -> ``red cups``, ``glass`` -> ``glasses``, ``person`` -> ``people`` (the last word)."""
    head, _, last = phrase.rpartition(" ")
    lowered = last.lower()
    if lowered in IRREGULAR:
        last = IRREGULAR[lowered]
    elif lowered.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif lowered.endswith("y") and lowered[-2:-1] not in ("a", "e", "i", "o", "u"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def wording(phrase: str, count: int) -> dict[str, str]:
    """The template fields for ``count`` instances of ``phrase`` (one: the templates' own articles)."""
    if count == 1:
        return {"phrase": phrase}
    many = plural(phrase)
    number = NUMBERS.get(count, str(count))
    everything = "both " + many if count == 2 else f"all {number} {many}"
    return {"phrase": phrase, "the_phrase": everything, "a_phrase": f"{number} {many}"}


@dataclass
class Removal:
    """An object removed from a photo: the photo, the mask inpainted (dilated), the result, and what the
    gates and the verifier measured."""

    photo: Photo
    phrase: str
    count: int  # instances removed together
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray  # HxW uint8, 0 or 255
    measures: dict[str, Any] = field(default_factory=dict)

    @property
    def provenance(self) -> Provenance:
        return region_provenance(self.photo, self.phrase, self.count)


def region_provenance(photo: Photo, phrase: str, count: int) -> Provenance:
    """The photo's provenance with the phrase (and how many of it) as the region."""
    region = phrase if count == 1 else f"{phrase} x{count}"
    return photo.provenance.model_copy(update={"region_id": region})


def removal_pairs(
    removal: Removal, generator: GeneratorInfo, make_add_pairs: bool, words: Wording
) -> list[Sample]:
    """The remove pair, and with ``make_add_pairs`` the add pair that reverses it (instructions by
    ``words``: the templates, or the LLM)."""
    provenance = removal.provenance
    fields = wording(removal.phrase, removal.count)
    remove_key = sample_key(Task.REMOVE, provenance, generator)
    extra = {"phrase": removal.phrase, "instances": removal.count, **removal.measures}

    def pair(task: Task, source: np.ndarray, target: np.ndarray, details: dict[str, Any]) -> Sample:
        key = sample_key(task, provenance, generator)
        instruction, instruction_source, notes = words(task, key, fields, [removal.phrase], provenance)
        meta = SampleMeta(
            key=key,
            task=task,
            instruction=instruction,
            instruction_source=instruction_source,
            provenance=provenance,
            generator=generator,
            record_id=removal.photo.record_id,
            extra={**details, **notes},
        )
        return Sample(meta=meta, source=source, target=target, mask=removal.mask)

    remove = pair(Task.REMOVE, removal.source, removal.target, extra)
    if not make_add_pairs:
        return [remove]
    return [remove, pair(Task.ADD, removal.target, removal.source, {**extra, "reverse_of": remove_key})]
