"""The instruction of a grounded removal (or add) pair: the templates, or the LLM with the templates as
the fallback, as the replacement generator words its pairs (:mod:`ieiw.pipelines.replacement.wording`).

``instructions.backend: llm`` asks the :class:`~ieiw.pipelines.instructions.llm.InstructionWriter` (an
OpenAI-compatible endpoint; its answers validated, retried within a bound and cached by prompt) for one
instruction from the photo's caption (where its source has one) and the objects removed or added; the
answer must name one of them. ``paraphrase: true`` rewords the template's instruction instead and picks
one rewording by the sample's key. A failed request falls back to the template and says why in the
sample's json (``instruction_fallback``, ``paraphrase_fallback``); ``instruction_source`` names the path
taken: ``llm:<model>``, ``paraphrase:<model><-template:<task>#<i>`` or ``template:<task>#<i>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ieiw.pipelines.instructions.llm import WRITE_SYSTEM, InstructionWriter, LLMError, validate_instruction
from ieiw.pipelines.instructions.templates import a_phrase, render, the_phrase
from ieiw.pipelines.replacement.config import InstructionConfig
from ieiw.storage.schema import Provenance, Task

NO_CAPTION = "a photo"


def removal_prompt(task: Task, fields: Mapping[str, str], caption: str | None) -> str:
    """The user message asking for the instruction of a remove or add edit (the writer's prompt shape:
    the image before and after, the objects involved)."""
    scene = caption or NO_CAPTION
    if task == Task.REMOVE:
        what = fields.get("the_phrase") or the_phrase(fields["phrase"])
        before, after, change = scene, f"the same image without {what}", f"Object removed: {what}"
    else:
        what = fields.get("a_phrase") or a_phrase(fields["phrase"])
        before, after, change = f"the image without {what}", scene, f"Object added: {what}"
    return f"Before: {before}\nAfter: {after}\n{change}\nInstruction:"


@dataclass
class Wording:
    """How a pair's instruction is written (``writer``: the LLM, when the config asks for it)."""

    config: InstructionConfig
    writer: InstructionWriter | None = None

    def __call__(
        self, task: Task, key: str, fields: Mapping[str, str], phrases: Sequence[str], provenance: Provenance
    ) -> tuple[str, str, dict[str, str]]:
        """The instruction, its source tag, and notes for the json (why a preferred way was not taken).
        ``fields`` are the templates' (``phrase`` or ``the_phrase``/``a_phrase``); ``phrases`` the bare
        objects the instruction must name (one of them)."""
        notes: dict[str, str] = {}
        writer = self.writer
        if self.config.backend == "llm" and writer is not None:
            caption = provenance.extra.get("caption")
            messages = [
                {"role": "system", "content": WRITE_SYSTEM},
                {"role": "user", "content": removal_prompt(task, fields, caption)},
            ]
            try:
                text = writer.ask(
                    messages, lambda a: validate_instruction(a, list(phrases), writer.config.max_words)
                )
                return text, writer.source, notes
            except LLMError as error:
                notes["instruction_fallback"] = str(error)[:300]
        text, source = render(str(task), key, **fields)
        if self.config.paraphrase and writer is not None:
            try:
                options = writer.paraphrase(text, self.config.paraphrases, must_mention=list(phrases))
            except LLMError as error:
                notes["paraphrase_fallback"] = str(error)[:300]
            else:
                pick = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % len(options)
                return options[pick], f"paraphrase:{writer.config.model}<-{source}", notes
        return text, source, notes
