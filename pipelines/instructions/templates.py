"""Hand-written instruction templates, at least ten per task, chosen deterministically per sample.

The paper started from about ten hand-written instructions per task and multiplied them with an
LLM. Which template made an instruction is recorded as ``template:<task>#<index>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

TEMPLATES: dict[str, tuple[str, ...]] = {
    "remove": (
        "remove {the_phrase}",
        "delete {the_phrase} from the image",
        "erase {the_phrase}",
        "get rid of {the_phrase}",
        "take {the_phrase} out of the picture",
        "make {the_phrase} disappear",
        "remove {the_phrase} from the photo",
        "clear away {the_phrase}",
        "edit out {the_phrase}",
        "eliminate {the_phrase} from the scene",
        "please remove {the_phrase}",
        "wipe out {the_phrase}",
    ),
    "add": (
        "add {a_phrase}",
        "put {a_phrase} in the image",
        "insert {a_phrase}",
        "place {a_phrase} in the scene",
        "add {a_phrase} to the photo",
        "include {a_phrase} in the picture",
        "make there be {a_phrase}",
        "draw {a_phrase} into the image",
        "bring {a_phrase} into the scene",
        "let the picture have {a_phrase}",
        "paint {a_phrase} into the photo",
        "show {a_phrase} in the image",
    ),
    "replace": (
        "replace {the_source} with {a_target}",
        "turn {the_source} into {a_target}",
        "change {the_source} to {a_target}",
        "swap {the_source} for {a_target}",
        "put {a_target} where {the_source} is",
        "substitute {a_target} for {the_source}",
        "transform {the_source} into {a_target}",
        "exchange {the_source} for {a_target}",
        "show {a_target} in place of {the_source}",
        "make {the_source} {a_target} instead",
        "let {a_target} take the place of {the_source}",
        "have {a_target} instead of {the_source}",
    ),
}

_ARTICLES = ("a ", "an ", "the ", "some ", "this ", "that ", "these ", "those ", "his ", "her ", "their ")
_NUMBERS = ("two ", "three ", "four ", "five ", "several ", "many ", "2 ", "3 ")


def _strip_article(phrase: str) -> str:
    lowered = phrase.lower()
    for article in ("a ", "an ", "the "):
        if lowered.startswith(article):
            return phrase[len(article) :]
    return phrase


def the_phrase(phrase: str) -> str:
    """``white cup`` -> ``the white cup``; keeps a phrase that already has a determiner."""
    phrase = phrase.strip()
    if phrase.lower().startswith(_ARTICLES[2:] + _NUMBERS):
        return phrase
    return "the " + _strip_article(phrase)


def a_phrase(phrase: str) -> str:
    """``white cup`` -> ``a white cup``, ``apple`` -> ``an apple``; plurals and numbers keep none."""
    phrase = _strip_article(phrase.strip())
    lowered = phrase.lower()
    if lowered.startswith(_ARTICLES + _NUMBERS):
        return phrase
    last = lowered.split()[-1] if lowered.split() else lowered
    if last.endswith("s") and not last.endswith(("ss", "us", "is")):
        return phrase
    return ("an " if lowered[:1] in "aeiou" else "a ") + phrase


def choose_template(
    task: str,
    seed_text: str,
    templates: Mapping[str, Sequence[str]] = TEMPLATES,
    namespace: str | None = None,
) -> tuple[int, str]:
    """The template index and text for ``task``, a stable function of ``seed_text`` (the sample key).

    ``namespace`` (e.g. ``multitask``) keeps the choices of another template set independent of these.
    """
    options = templates[task]
    seed = f"{task}:{seed_text}" if namespace is None else f"{namespace}:{task}:{seed_text}"
    digest = hashlib.sha256(seed.encode()).digest()
    index = int.from_bytes(digest[:4], "big") % len(options)
    return index, options[index]


def fill_template(
    task: str,
    seed_text: str,
    fields: Mapping[str, str],
    templates: Mapping[str, Sequence[str]] = TEMPLATES,
    namespace: str | None = None,
) -> tuple[str, str]:
    """The chosen template filled with ``fields``, and its source tag ``template:<task>#<index>``."""
    index, template = choose_template(task, seed_text, templates, namespace)
    return template.format(**fields), f"template:{task}#{index}"


def render(task: str, seed_text: str, **fields: str) -> tuple[str, str]:
    """The instruction for ``task`` and its source tag, e.g. ``("remove the cup", "template:remove#0")``."""
    values = dict(fields)
    if "phrase" in fields:
        values.setdefault("the_phrase", the_phrase(fields["phrase"]))
        values.setdefault("a_phrase", a_phrase(fields["phrase"]))
    return fill_template(task, seed_text, values)


def render_replace(seed_text: str, source_object: str, target_object: str) -> tuple[str, str]:
    """``("replace the cat with a dog", "template:replace#0")``, chosen stably from ``seed_text``."""
    return render(
        "replace", seed_text, the_source=the_phrase(source_object), a_target=a_phrase(target_object)
    )
