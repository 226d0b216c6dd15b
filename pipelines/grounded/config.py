"""The grounded removal generator's config: where the photos are, and each model and gate of the chain.

Every field declares its role (:mod:`ieiw.storage.config`): the photos' folder is an input folder (left
out of the fingerprint, its listing is the stage's input key), the vocabulary file an input file (by
digest), the models references (by identity), devices and batch sizes operational, and every threshold a
setting (in the fingerprint and in each sample's generator settings and key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ieiw.pipelines.inpaint.factory import InpaintConfig
from ieiw.pipelines.inpaint.lama import BIG_LAMA_MD5, BIG_LAMA_URL
from ieiw.pipelines.removal import SessionOptions
from ieiw.pipelines.replacement.config import InstructionConfig
from ieiw.pipelines.replacement.labels import COCO_NAMES
from ieiw.pipelines.replacement.openimages import read_class_names
from ieiw.pipelines.replacement.sam import SamArchitecture
from ieiw.quality.embeddings import EmbedderConfig
from ieiw.quality.verifier import VerifierConfig
from ieiw.storage.config import input_file, input_folder, limit, model_ref, operational

DEFAULT_VOCABULARY = str(Path(__file__).with_name("vocabulary.txt"))
SAM_VIT_H_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
OWLV2 = "google/owlv2-base-patch16-ensemble"
QUERY_TEMPLATE = "a photo of a {}"


class PhotoSource(BaseModel):
    """The photos: a folder of images, or what img2dataset wrote (``--output_format webdataset``: its
    ``.tar`` shards; ``--output_format parquet``: its ``.parquet`` files, images in ``image_column``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["folder", "webdataset", "parquet"] = "folder"
    path: str = input_folder()  # the folder (local or a URL fsspec opens)
    dataset: str = "photos"  # the collection's name: record ids are "<dataset>:<key>", and provenance
    license: str | None = None  # the collection's license, where a photo's own metadata names none
    license_fields: list[str] = Field(default_factory=lambda: ["license", "LICENSE"])  # metadata columns
    image_column: str = "jpg"  # img2dataset's --encode_format: the Parquet column of the image bytes


class TaggerConfig(BaseModel):
    """What to remove from a photo: CLIP zero-shot over a vocabulary, the ``top_k`` names whose share of
    the softmax (at ``temperature``, CLIP's logit scale) is at least ``min_probability``.

    The names: ``vocabulary`` (a list) if given, else an Open Images class-description CSV
    (``class_descriptions``), else ``vocabulary_file`` (one name a line; by default the shipped list of
    COCO's things and other common removable objects)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["clip_zero_shot"] = "clip_zero_shot"
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    vocabulary: list[str] | None = None
    vocabulary_file: str | None = input_file(DEFAULT_VOCABULARY)
    class_descriptions: str | None = input_file(None)
    prompt: str = QUERY_TEMPLATE
    top_k: int = Field(default=5, ge=1)
    min_probability: float = Field(default=0.05, ge=0.0, le=1.0)
    temperature: float = Field(default=100.0, gt=0.0)

    def names(self) -> list[str]:
        """The vocabulary, lower-cased, without repeats, in its order."""
        if self.vocabulary:
            found = list(self.vocabulary)
        elif self.class_descriptions:
            found = sorted(read_class_names(self.class_descriptions).values())
        elif self.vocabulary_file:
            with open(self.vocabulary_file, encoding="utf-8") as handle:
                found = [line.split("#", 1)[0] for line in handle]
        else:
            found = list(COCO_NAMES)
        names = [" ".join(n.lower().split()) for n in found]
        return list(dict.fromkeys(n for n in names if n))


class DetectorConfig(BaseModel):
    """The open-vocabulary detector that grounds each phrase to boxes, through transformers'
    ``AutoModelForZeroShotObjectDetection``: OWLv2 (``owlv2``, shared with the verifier when both name
    the same model) or Grounding DINO (``grounding_dino``, e.g. ``IDEA-Research/grounding-dino-base``;
    it reads a bare phrase best: ``query_template: "{}"``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["owlv2", "grounding_dino"] = "owlv2"
    model: str = model_ref(OWLV2)  # a hub id (pinned to a commit) or a local folder
    query_template: str = QUERY_TEMPLATE
    device: str | None = operational(None)
    batch_size: int = operational(8, ge=1)  # images per forward pass


class SegmenterConfig(BaseModel):
    """SAM, prompted with each box: its single mask (``multimask: false``), or the best of its three by
    predicted IoU."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = model_ref(SAM_VIT_H_URL)  # a state dict (.pth): a local file or a URL
    model_type: Literal["vit_h", "vit_l", "vit_b", "custom"] = "vit_h"
    architecture: SamArchitecture | None = None  # for model_type custom
    multimask: bool = False
    device: str = operational("auto")
    batch_size: int = operational(4, ge=1)  # images per image-encoder pass

    @model_validator(mode="after")
    def _custom_needs_sizes(self) -> SegmenterConfig:
        if self.model_type == "custom" and self.architecture is None:
            raise ValueError("segmenter.model_type 'custom' needs segmenter.architecture")
        return self


class GateConfig(BaseModel):
    """The checks a found object passes before it is removed (X2Edit's and AnyEdit's recipes), each a
    counted drop reason: ``low_detector_score``, ``multiple_instances``, ``mask_too_small``,
    ``mask_too_large``, ``mask_outside_box``, ``mask_overlap``; after inpainting, ``object_still_present``."""

    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(default=0.3, ge=0.0, le=1.0)  # the detector's confidence in a box
    nms_iou: float = Field(default=0.5, ge=0.0, le=1.0)  # boxes of a phrase overlapping more are one
    # several confident boxes of one phrase: "one" drops it (an instruction naming one would be
    # ambiguous), "all" removes them together with an instruction that names them all
    instances: Literal["one", "all"] = "one"
    max_instances: int = Field(default=4, ge=1)  # with "all"
    min_area: float = Field(default=0.02, ge=0.0, le=1.0)  # of the image, the mask before dilation
    max_area: float = Field(default=0.35, ge=0.0, le=1.0)
    min_inside_box: float = Field(default=0.8, ge=0.0, le=1.0)  # of the mask, inside its box
    box_margin: float = Field(default=0.1, ge=0.0)  # the box widened by this share of its size first
    max_overlap: float = Field(default=0.05, ge=0.0, le=1.0)  # shared with a kept mask, of the smaller
    max_remaining_score: float = Field(default=0.3, ge=0.0, le=1.0)  # the verifier's, in the target


class GroundedVerifierConfig(VerifierConfig):
    """The object verifier (:mod:`ieiw.quality.verifier`), asked with the detector's wording."""

    query_template: str = QUERY_TEMPLATE


class GroundedRemovalConfig(BaseModel):
    """Removal (and reversed add) pairs from any photos: tag, ground, segment, gate, inpaint, verify."""

    model_config = ConfigDict(extra="forbid")

    source: PhotoSource
    tagger: TaggerConfig = Field(default_factory=TaggerConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    gates: GateConfig = Field(default_factory=GateConfig)
    inpaint: InpaintConfig = Field(
        default_factory=lambda: InpaintConfig(
            backend="lama", model=f"{BIG_LAMA_URL}#md5={BIG_LAMA_MD5}", strategy="crop"
        )
    )
    verifier: GroundedVerifierConfig = Field(default_factory=GroundedVerifierConfig)
    dilation: int = Field(default=15, ge=0)  # pixels the mask grows by before inpainting
    min_change: float = 1.0  # mean absolute change inside the mask below this: inpainting did nothing
    make_add_pairs: bool = True
    # multi-turn sessions: the objects kept from one photo removed one after another (most confident
    # first, at most max_turns a session); None: every object is its own pair
    sessions: SessionOptions | None = None
    # the templates; or the LLM writes them (backend: llm), or rewords the templates (paraphrase: true)
    instructions: InstructionConfig = Field(default_factory=InstructionConfig)
    batch_size: int = operational(32, ge=1)  # photos per batch (and per commit)
    limit: int | None = limit(None)  # at most this many photos

    @field_validator("instructions")
    @classmethod
    def _llm_is_named(cls, wording: InstructionConfig) -> InstructionConfig:
        if (wording.backend == "llm" or wording.paraphrase) and wording.llm is None:
            raise ValueError("backend 'llm' and paraphrase need instructions.llm (its model and base_url)")
        return wording

    def uses_llm(self) -> bool:
        """Whether the instructions ask the LLM (to write them, or to reword the templates)."""
        wording = self.instructions
        return wording.llm is not None and (wording.backend == "llm" or wording.paraphrase)
