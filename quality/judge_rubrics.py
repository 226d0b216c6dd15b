"""The judge's rubrics: one versioned prompt per kind of task, and the parser of its answers.

Every rubric asks for the same named scores, 0 to 10, each with a one-sentence reason
(:data:`CRITERIA`): ``compliance`` (did the edit do what the instruction asks), ``preservation`` (is
what should not change unchanged), ``realism`` (does it look real, free of artifacts) and
``overall``. What each criterion means is said per task (:data:`RUBRICS`): for a removal,
compliance means no remnant of the object is left; for a segmentation render, that the right
object is covered. A rubric's ``version`` is bumped whenever its wording changes, since the wording
shapes the scores: the version is part of the score stage's fingerprint and of every cache key.

With ``rewrite`` the judge also writes the instruction that the pair actually shows (one imperative
sentence), kept beside the generator's own instruction.

:func:`parse_answer` reads an answer into numbers and validates them; anything it cannot use raises
:class:`~ieiw.storage.chat.InvalidAnswer` with a slug (``not_json``, ``missing_compliance``,
``score_out_of_range``, ``bad_instruction``), so the caller retries, then records a drop.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from ieiw.storage.chat import InvalidAnswer

CRITERIA: tuple[str, ...] = ("compliance", "preservation", "realism", "overall")
SCORE_MAX = 10.0
REASON_CHARS = 300
INSTRUCTION_WORDS = 40
ALIASES = {
    "instruction_compliance": "compliance",
    "instruction_following": "compliance",
    "preservation_of_unedited_content": "preservation",
    "consistency": "preservation",
    "realism_artifacts": "realism",
    "artifacts": "realism",
    "quality": "realism",
    "overall_score": "overall",
}


@dataclass(frozen=True)
class Rubric:
    """What each criterion means for one kind of task; ``version`` changes with the wording."""

    name: str
    version: int
    subject: str  # what kind of edit the pair is meant to be
    compliance: str
    preservation: str
    realism: str

    def identity(self, rewrite: bool = False) -> str:
        """``remove@1`` (``remove@1+instruction`` when the judge also rewrites the instruction)."""
        return f"{self.name}@{self.version}" + ("+instruction" if rewrite else "")


RUBRICS: dict[str, Rubric] = {
    "remove": Rubric(
        "remove",
        1,
        "an object removal: the object the instruction names is taken out of the photo",
        "Is the named object completely gone, with no remnant, outline, shadow or reflection of it left? "
        "10: gone without a trace; 0: still there or barely changed.",
        "Is everything else (background, other objects, lighting, framing) exactly as in the first image? "
        "10: only the object's region changed; 0: the scene changed.",
        "Does the filled region look like a natural continuation of the scene, free of blur, smears, "
        "repeated textures, seams or colour shifts? 10: photographic; 0: obviously edited.",
    ),
    "add": Rubric(
        "add",
        1,
        "an object addition: the object the instruction names is put into the photo",
        "Is the named object there, as described, at a plausible place and size? "
        "10: clearly there as asked; 0: absent or something else.",
        "Is everything else exactly as in the first image? 10: only the new object's region changed; "
        "0: the scene changed.",
        "Does the new object fit the scene's lighting, perspective, shadows and scale, free of halos and "
        "seams? 10: photographic; 0: obviously pasted or broken.",
    ),
    "replace": Rubric(
        "replace",
        1,
        "an object replacement: one object is swapped for another in the same place",
        "Is the original object replaced by the one the instruction names, in the same place, with no "
        "part of the original left? 10: fully replaced as asked; 0: unchanged or the wrong object.",
        "Is everything outside the replaced object exactly as in the first image? 10: untouched; "
        "0: the scene changed.",
        "Does the new object blend in (lighting, perspective, edges, scale), free of artifacts? "
        "10: photographic; 0: obviously pasted or broken.",
    ),
    "web_edit": Rubric(
        "web_edit",
        1,
        "a free-form photo edit a person asked for and another person made",
        "Does the second image do what the request asks, as the person asking would expect? "
        "10: exactly as asked; 0: ignores the request.",
        "Are the people, objects and parts of the scene the request does not mention unchanged? "
        "10: untouched; 0: a different photo.",
        "Is the result free of visible editing artifacts (halos, smears, broken anatomy, mismatched "
        "lighting)? 10: photographic; 0: badly broken.",
    ),
    "multitask": Rubric(
        "multitask",
        1,
        "a vision task phrased as an edit: a keypoint circled, an object covered by a coloured mask, or a "
        "degraded photo restored",
        "Is the requested marking correct (the right keypoint or object, the right colour and shape) or, "
        "for a restoration, is the degradation named (blur, noise, watermark) removed? "
        "10: exactly right; 0: wrong or missing.",
        "Apart from the marking or the restoration, is the photo unchanged (same content, framing, "
        "colours)? 10: unchanged; 0: a different photo.",
        "Is the marking cleanly rendered, or the restored photo natural, without new artifacts? "
        "10: clean; 0: broken.",
    ),
    "edit": Rubric(
        "edit",
        1,
        "an instruction-based photo edit",
        "Does the second image do what the instruction asks? 10: exactly; 0: not at all.",
        "Is everything the instruction does not mention unchanged? 10: untouched; 0: a different photo.",
        "Is the result free of visible editing artifacts? 10: photographic; 0: badly broken.",
    ),
}
TASK_RUBRICS = {
    "remove": "remove",
    "add": "add",
    "replace": "replace",
    "web_edit": "web_edit",
    "keypoint": "multitask",
    "segmentation": "multitask",
    "enhancement": "multitask",
}


def rubric_for(task: str) -> Rubric:
    """The rubric of ``task`` (a task without its own uses the general ``edit`` rubric)."""
    return RUBRICS[TASK_RUBRICS.get(str(task), "edit")]


def rubric_identities(rewrite: bool = False) -> dict[str, str]:
    """Every rubric's identity by name: what the score stage's fingerprint records."""
    return {name: rubric.identity(rewrite) for name, rubric in sorted(RUBRICS.items())}


SYSTEM = (
    "You are a strict, consistent judge of image edits. You are shown a source image, then the edited "
    "image, and the instruction the edit was meant to follow. Score the edit on the criteria given, "
    "each from 0 to 10, with one short sentence of reason each. Answer with one JSON object only: no "
    "markdown, no text before or after it."
)


def answer_format(rewrite: bool) -> str:
    fields = ", ".join(f'"{c}": {{"score": <0-10>, "reason": "<one sentence>"}}' for c in CRITERIA)
    if rewrite:
        fields += ', "instruction": "<one imperative sentence that turns the first image into the second>"'
    return "{" + fields + "}"


def user_texts(rubric: Rubric, instruction: str, task: str, rewrite: bool) -> tuple[str, str, str]:
    """The three text parts around the two images: before the source, between, after the target."""
    before = (
        f"Rubric {rubric.identity(rewrite)}. The pair is meant to be {rubric.subject} (task: {task}).\n"
        f"Instruction: {instruction}\nFirst image, the source (before the edit):"
    )
    between = "Second image, the result (after the edit):"
    criteria = "\n".join(
        f"- {name}: {text}"
        for name, text in (
            ("compliance", rubric.compliance),
            ("preservation", rubric.preservation),
            ("realism", rubric.realism),
            ("overall", "How good is this pair as a training example of the instruction, all considered?"),
        )
    )
    rewrite_text = (
        "\nAlso write the instruction this pair actually shows: one imperative sentence an editor could "
        "follow to turn the first image into the second, naming what changed."
        if rewrite
        else ""
    )
    after = (
        f"Criteria:\n{criteria}{rewrite_text}\nAnswer with exactly this JSON shape:\n{answer_format(rewrite)}"
    )
    return before, between, after


@dataclass(frozen=True)
class ParsedAnswer:
    scores: dict[str, float]
    reasons: dict[str, str]
    instruction: str = ""


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*$")


def _json_object(text: str) -> dict:
    """The answer's JSON object: bare, fenced, or the outermost braces amid prose."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise InvalidAnswer("not_json", text)


def _score(value: object, name: str, text: str) -> float:
    if isinstance(value, bool):
        raise InvalidAnswer(f"bad_{name}", text)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.match(value):
        number = float(_NUMBER.match(value).group(1))
    else:
        raise InvalidAnswer(f"bad_{name}", text)
    if not math.isfinite(number) or not 0.0 <= number <= SCORE_MAX:
        raise InvalidAnswer("score_out_of_range", text)
    return number


def _instruction(value: object, text: str) -> str:
    if not isinstance(value, str):
        raise InvalidAnswer("bad_instruction", text)
    cleaned = " ".join(value.split()).strip().strip("\"'").rstrip(".!")
    if not cleaned or "\n" in value.strip() or len(cleaned.split()) > INSTRUCTION_WORDS:
        raise InvalidAnswer("bad_instruction", text)
    return cleaned[0].lower() + cleaned[1:] if cleaned[:2] != cleaned[:2].upper() else cleaned


def parse_answer(text: str, rewrite: bool = False) -> ParsedAnswer:
    """The scores (0 to 10), reasons and (with ``rewrite``) instruction of an answer, validated."""
    found = _json_object(text)
    named = {ALIASES.get(str(k).strip().lower(), str(k).strip().lower()): v for k, v in found.items()}
    scores: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for name in CRITERIA:
        if name not in named:
            raise InvalidAnswer(f"missing_{name}", text)
        value = named[name]
        reason = ""
        if isinstance(value, dict):
            reason = value.get("reason", "")
            value = value.get("score")
        scores[name] = _score(value, name, text)
        reasons[name] = " ".join(str(reason or "").split())[:REASON_CHARS]
    instruction = _instruction(named.get("instruction"), text) if rewrite else ""
    return ParsedAnswer(scores, reasons, instruction)
