"""Captions and the instruction of one replacement pair, with the path that made each recorded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ieiw.pipelines.instructions.llm import InstructionWriter, LLMError
from ieiw.pipelines.instructions.templates import render_replace
from ieiw.pipelines.replacement.config import InstructionConfig


@dataclass
class Instruction:
    text: str
    source: str  # "llm:<model>", "template:replace#<i>" or "paraphrase:<model><-template:replace#<i>"
    notes: dict[str, str] = field(default_factory=dict)  # why a preferred path was not taken


def write_instruction(
    key: str,
    source_caption: str,
    target_caption: str,
    source_object: str,
    target_object: str,
    writer: InstructionWriter | None,
    config: InstructionConfig,
) -> Instruction:
    """LLM instruction when configured; else (or when it fails) a template, optionally paraphrased."""
    notes: dict[str, str] = {}
    if config.backend == "llm" and writer is not None:
        try:
            text = writer.write(source_caption, target_caption, source_object, target_object)
            return Instruction(text, writer.source)
        except LLMError as error:
            notes["instruction_fallback"] = str(error)[:300]
    text, source = render_replace(key, source_object, target_object)
    if config.paraphrase and writer is not None:
        try:
            options = writer.paraphrase(text, config.paraphrases, must_mention=[target_object])
        except LLMError as error:
            notes["paraphrase_fallback"] = str(error)[:300]
        else:
            pick = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % len(options)
            return Instruction(options[pick], f"paraphrase:{writer.config.model}<-{source}", notes)
    return Instruction(text, source, notes)
