"""What the judge tests' OpenAI-compatible server (``chat_server.ChatServer``) checks and answers.

:func:`check_judge_request` refuses a request that is not a judge's: two images as data URLs (that
decode), the rubric with its version, the instruction and the answer format. :func:`judge_answer`
scores a pair from its instruction, so a test knows each pair's scores: ``... number N`` gets
``overall`` N mod 10 (``compliance`` 9, ``preservation`` 8, ``realism`` 7), and, when the rubric asks
for one, the instruction ``make edit N``. An instruction with ``garbled`` in it gets prose, never a
verdict (a malformed answer, every time).
"""

from __future__ import annotations

import base64
import io
import json
import re

from PIL import Image

from ieiw.quality.judge_rubrics import RUBRICS


def user_parts(body: dict) -> list[dict]:
    messages = body["messages"]
    assert len(messages) == 2 and messages[0]["role"] == "system", "a system and a user message"
    content = messages[1]["content"]
    assert isinstance(content, list), "the user message is a list of parts"
    return content


def user_text(body: dict) -> str:
    return "\n".join(p["text"] for p in user_parts(body) if p["type"] == "text")


def images(body: dict) -> list[Image.Image]:
    out = []
    for part in user_parts(body):
        if part["type"] != "image_url":
            continue
        url = part["image_url"]["url"]
        match = re.match(r"data:(image/(?:png|jpeg|webp));base64,(.+)$", url, re.DOTALL)
        assert match, f"an image part is not a data URL: {url[:40]}"
        out.append(Image.open(io.BytesIO(base64.b64decode(match.group(2)))))
    return out


def check_judge_request(body: dict) -> None:
    parts = user_parts(body)
    kinds = [p["type"] for p in parts]
    assert kinds == ["text", "image_url", "text", "image_url", "text"], f"parts {kinds}"
    assert len(images(body)) == 2, "two images"
    text = user_text(body)
    rubric = re.search(r"Rubric (\w+)@(\d+)", text)
    assert rubric and rubric.group(1) in RUBRICS, "the rubric and its version"
    assert int(rubric.group(2)) == RUBRICS[rubric.group(1)].version, "the rubric's current version"
    assert "Instruction: " in text and '"compliance": {"score"' in text, (
        "the instruction and the answer format"
    )


def pair_number(body: dict) -> int:
    found = re.search(r"Instruction: .*?(\d+)\s*$", user_text(body), re.MULTILINE)
    return int(found.group(1)) if found else 0


def judge_answer(body: dict) -> str:
    if "garbled" in user_text(body):
        return "This edit looks quite nice, I would give it an eight."
    n = pair_number(body)
    answer = {
        "compliance": {"score": 9, "reason": "the edit does what is asked"},
        "preservation": {"score": 8, "reason": "the rest is unchanged"},
        "realism": {"score": 7, "reason": "a faint seam"},
        "overall": {"score": n % 10, "reason": f"pair {n}"},
    }
    if "+instruction" in user_text(body):
        answer["instruction"] = f"Make edit {n}."
    return json.dumps(answer)
