"""One record on its way to a sample of one task: its key, its drops and the finished sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ieiw.pipelines.multitask.records import MultitaskRecord
from ieiw.pipelines.multitask.render import ImageLoadError, load_rgb
from ieiw.pipelines.sources.drops import keyed_drop
from ieiw.storage.schema import Drop, GeneratorInfo, Provenance, Sample, SampleMeta, Task, sample_key


@dataclass
class SampleBuilder:
    """The key (a function of task, provenance and generator) and the record's drops and sample."""

    record: MultitaskRecord
    task: Task
    generator: GeneratorInfo
    provenance: Provenance = field(init=False)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.provenance = self.record.provenance
        self.key = sample_key(self.task, self.provenance, self.generator)

    def drop(self, reason: str, detail: str) -> Drop:
        """The record's counted drop under this task."""
        return keyed_drop(
            self.record.dataset, self.record.record_id, reason, detail, self.provenance, str(self.task)
        )

    def load(self, path: str) -> np.ndarray | Drop:
        """An input image as RGB, or a ``missing_image`` / ``corrupt_image`` drop."""
        try:
            return load_rgb(path)
        except ImageLoadError as error:
            return self.drop(error.reason, str(error))

    def sample(
        self,
        instruction: tuple[str, str],
        caption: str,
        extra: dict[str, Any],
        source: np.ndarray,
        target: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> Sample:
        """The finished sample; ``instruction`` is (text, source tag)."""
        text, instruction_source = instruction
        meta = SampleMeta(
            key=self.key,
            task=self.task,
            instruction=text,
            instruction_source=instruction_source,
            provenance=self.provenance,
            generator=self.generator,
            record_id=self.record.record_id,
            pretrain_caption=caption,
            extra=extra,
        )
        return Sample(meta=meta, source=source, target=target, mask=mask)
