"""Settings of the replacement generator: the ``replacement:`` section of a build config."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ieiw.pipelines.instructions.llm import LLMConfig
from ieiw.pipelines.replacement.captions import CaptionConfig
from ieiw.pipelines.replacement.crops import CropConfig
from ieiw.pipelines.replacement.index import IndexConfig
from ieiw.pipelines.replacement.labels import LabelConfig
from ieiw.pipelines.replacement.painting import PaintConfig
from ieiw.pipelines.replacement.retrieval import RetrievalConfig
from ieiw.pipelines.replacement.sam import SamConfig
from ieiw.pipelines.replacement.selection import SelectionConfig
from ieiw.quality.embeddings import EmbedderConfig
from ieiw.storage.config import input_file, input_folder, limit, operational, output


class SA1BSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["sa1b"] = "sa1b"
    folders: list[str] = input_folder()  # folders of sa_<id>.json (+ sa_<id>.jpg unless ``images``)
    images: str | None = input_folder(None)


class OpenImagesSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["openimages"] = "openimages"
    segmentation_csv: str = input_file()  # e.g. train-annotations-object-segmentation.csv
    masks: str = input_folder()  # folder of the mask PNGs named in MaskPath
    images: str = input_folder()  # folder of <ImageID>.jpg
    class_descriptions: str | None = input_file(None)  # oidv7-class-descriptions.csv


class ImageFolderSource(BaseModel):
    """Images without masks: regions come from the proposer."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["images"] = "images"
    images: str = input_folder()
    dataset: str = "images"
    license: str | None = None


Source = Annotated[SA1BSource | OpenImagesSource | ImageFolderSource, Field(discriminator="kind")]


class ProposerConfig(BaseModel):
    """Regions for images without masks: SAM (weights) or Felzenszwalb segmentation (classical)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["sam", "felzenszwalb"] = "sam"
    sam: SamConfig = Field(default_factory=SamConfig)
    felzenszwalb_scale: float = 400.0
    felzenszwalb_sigma: float = 0.8
    felzenszwalb_min_size: int = 200
    max_regions: int = 64


class DatabaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = output(None)  # a folder or fsspec URL (s3://...); None: <output>/object_database
    objects_per_image: int = 8  # best kept regions of each image stored
    batch_size: int = operational(16)
    # false: this build never builds the database (one made elsewhere, at ``url``): its stage stops
    # instead, unless asked for it (``ieiw replacement --database-only`` or ``--rebuild-database``)
    build_if_missing: bool = operational(True)
    index: IndexConfig = Field(default_factory=IndexConfig)


class InstructionConfig(BaseModel):
    """``template`` needs nothing; ``llm`` asks ``llm``; ``paraphrase`` rewrites templates with ``llm``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["template", "llm"] = "template"
    llm: LLMConfig | None = None
    paraphrase: bool = False
    paraphrases: int = 5


class ReplacementConfig(BaseModel):
    """The object-replacement generator (regions -> database -> retrieval -> paint -> captions -> text)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[Source]
    proposer: ProposerConfig = Field(default_factory=ProposerConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    crop: CropConfig = Field(default_factory=CropConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    paint: PaintConfig = Field(default_factory=PaintConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    instructions: InstructionConfig = Field(default_factory=InstructionConfig)
    regions_per_image: int = 1  # replacement pairs made per image
    min_change: float = 1.0  # mean absolute change inside the mask below this: the paint did nothing
    batch_size: int = operational(8)
    limit: int | None = limit(None)

    @model_validator(mode="after")
    def _regions_come_from_the_database(self) -> ReplacementConfig:
        if self.regions_per_image > self.database.objects_per_image:
            raise ValueError(
                f"regions_per_image ({self.regions_per_image}) is more than database.objects_per_image "
                f"({self.database.objects_per_image}): the pairs' regions are the ones the database stores"
            )
        return self

    def needs_proposer(self) -> bool:
        return any(isinstance(s, ImageFolderSource) for s in self.sources)
