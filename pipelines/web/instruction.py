"""A request post cleaned into an imperative edit instruction, optionally rewritten by an LLM hook.

"[Request] Hi all! Can someone please remove the guy in the background? Will tip $5, thanks!"
becomes "Remove the guy in the background." Greetings, thanks, payment talk, meta chatter and the
"can someone" wrapper go; the sentences that ask for an edit stay.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

EDIT_VERBS = (
    "remove",
    "add",
    "change",
    "make",
    "replace",
    "fix",
    "put",
    "take",
    "erase",
    "delete",
    "swap",
    "brighten",
    "restore",
    "colorize",
    "colourise",
    "colorise",
    "colourize",
    "crop",
    "clean",
    "blur",
    "turn",
    "give",
    "edit",
    "photoshop",
    "straighten",
    "enhance",
    "improve",
    "move",
    "get rid",
    "lighten",
    "darken",
    "sharpen",
    "smooth",
    "whiten",
    "open",
    "close",
    "extend",
    "insert",
    "recolor",
    "recolour",
    "retouch",
    "unblur",
    "combine",
    "merge",
    "cut",
    "paint",
    "fill",
    "correct",
    "adjust",
    "reduce",
    "increase",
    "flip",
    "rotate",
    "match",
)
_VERB = re.compile(r"\b(" + "|".join(re.escape(v) for v in EDIT_VERBS) + r")\w*\b", re.IGNORECASE)

_TAGS = re.compile(r"^\s*(?:[\[(][^\])]{0,30}[\])]\s*[-:|]?\s*)+")
_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MD_MARKS = re.compile(r"[*_~`#>|]+")
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f\u200d]+")
_MONEY = re.compile(
    r"(?:[$€£]\s?\d+(?:[.,]\d+)?|\d+(?:[.,]\d+)?\s?(?:\$|€|£|usd|eur|gbp|dollars?|bucks|euros?))"
    r"(?:\s*(?:tip|reward|bounty))?",
    re.IGNORECASE,
)
_PAID_PREFIX = re.compile(
    r"^\s*(?:paid|free|tipping|tip)\b\s*[-:!.,]*\s*(?:to\s+(?:whoever|anyone)\s+(?:who\s+)?"
    r"(?:can|could)\s+)?",
    re.IGNORECASE,
)
_SKIP_SENTENCE = re.compile(
    r"\b(thanks?|thank you|thx|ty|tia|appreciate[ds]?|grateful|paypal|venmo|cash ?app|zelle|tip(?:ping|s)?|"
    r"paid|pay(?:ing|ment)?|reward|first time|long time|sorry|not sure if|edit\s*:|update\s*:|solved|mods?\b|"
    r"upvote|dm me|message me|pm me|lurker|will award|in advance|god bless|much love)\b",
    re.IGNORECASE,
)
_GREETING = re.compile(
    r"^\s*(?:hi|hello|hey|hiya|howdy|greetings|good (?:morning|afternoon|evening)|yo|dear)"
    r"\b[\s,!]*(?:all|everyone|everybody|guys|folks|team|there|friends|people|reddit|"
    r"photoshoppers|wizards|legends)?\b[\s,!.]*",
    re.IGNORECASE,
)
_ASK_PREFIX = re.compile(
    r"^\s*(?:(?:so|and|but|also|ok(?:ay)?|just|basically)\s+)*(?:"
    r"(?:can|could|would|will|may)\s+(?:some\s?(?:one|body)|any\s?(?:one|body)|you(?:\s+guys|\s+all)?|u|"
    r"one of you|a kind soul|someone kind|somebody kind)"
    r"(?:\s+(?:please|pls|plz|kindly|possibly|help(?:\s+me)?))*(?:\s+to)?|"
    r"(?:is|would) it (?:be )?possible (?:for (?:some\s?one|any\s?one|you) )?to|"
    r"i(?:'d| would)? (?:like|love|want|need)(?: for)? "
    r"(?:some\s?(?:one|body)|any\s?(?:one|body)|you(?: guys)?)?\s*to|"
    r"i(?:'m| am) (?:looking|hoping) for (?:some\s?one|somebody|help) to|"
    r"looking for (?:some\s?one|somebody) to|need (?:some\s?one|somebody|help) to|"
    r"(?:some\s?one|somebody|anyone|anybody) (?:please|pls|plz)?\s*(?:help(?: me)?)?(?:\s+to)?|"
    r"please|pls|plz|kindly|help(?: me)?(?: to)?|"
    r"(?:to |for )?(?:whoever|any\s?one|some\s?one) (?:who )?(?:can|could)"
    r")\b[\s,:]*",
    re.IGNORECASE,
)
_TRAIL = re.compile(
    r"[\s,;:-]*(?:\b(?:please|pls|plz|for me|if possible|if you can|thanks?|thank you)\b[\s,!.?]*)+$",
    re.IGNORECASE,
)
_EDIT_NOTE = re.compile(r"\b(?:edit|update)\s*\d*\s*:.*$", re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class CleanedRequest:
    instruction: str
    source: str  # "cleaned" or "llm:<model>"


class InstructionRewriter:
    """An optional LLM hook: ``rewrite(cleaned, request) -> str | None``, recorded as ``llm:<model>``."""

    def __init__(self, model: str, rewrite: Callable[[str, str], str | None]) -> None:
        self.model = model
        self.rewrite = rewrite


def _normalise(text: str) -> str:
    text = _MD_LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _EMOJI.sub(" ", text)
    text = _MD_MARKS.sub(" ", text)
    return re.sub(r"[ \t]+", " ", text)


def _strip_ask(sentence: str) -> str:
    sentence = _EDIT_NOTE.sub("", sentence)
    previous = None
    while previous != sentence:
        previous = sentence
        sentence = _MONEY.sub("", sentence).lstrip(" -:,")
        sentence = _GREETING.sub("", sentence)
        sentence = _PAID_PREFIX.sub("", sentence)
        sentence = _ASK_PREFIX.sub("", sentence)
    sentence = _MONEY.sub("", sentence)
    sentence = _TRAIL.sub("", sentence.rstrip(" .!?"))
    return re.sub(r"\s+", " ", sentence).strip(" ,;:-.!?")


def edit_sentences(title: str, body: str) -> list[str]:
    """The sentences of a request that ask for an edit, with the wrappers stripped."""
    title = _TAGS.sub("", title or "")
    text = _normalise(f"{title}.\n{body or ''}")
    kept: list[str] = []
    for raw in _SENTENCES.split(text):
        sentence = _strip_ask(raw)
        if not sentence or not _VERB.search(sentence):
            continue
        if _SKIP_SENTENCE.search(sentence) and not _VERB.match(sentence):
            continue
        if sentence.lower() not in (k.lower() for k in kept):
            kept.append(sentence)
    return kept


def clean_request(title: str, body: str, max_sentences: int = 3, max_words: int = 60) -> str | None:
    """An imperative instruction from a request's title and body, or None if nothing asks for an edit."""
    sentences = edit_sentences(title, body)[:max_sentences]
    if not sentences:
        return None
    text = ". ".join(s[0].upper() + s[1:] for s in sentences)
    words = text.split()
    if len(words) < 2:
        return None
    return " ".join(words[:max_words]).rstrip(" ,;:") + "."


def make_instruction(
    title: str, body: str, rewriter: InstructionRewriter | None = None
) -> CleanedRequest | None:
    """The cleaned instruction, rewritten by ``rewriter`` when one is given and it answers."""
    cleaned = clean_request(title, body)
    if cleaned is None:
        return None
    if rewriter is not None:
        rewritten = rewriter.rewrite(cleaned, f"{title}\n{body}".strip())
        if rewritten and rewritten.strip():
            return CleanedRequest(rewritten.strip(), f"llm:{rewriter.model}")
    return CleanedRequest(cleaned, "cleaned")
