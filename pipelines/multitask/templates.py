"""Instruction templates for the multi-task samples, at least ten per task, chosen by the sample key.

Keypoint templates take ``{joint}`` and ``{color}``; every further joint of the same sample is
appended with a short ``keypoint_more`` clause. Segmentation templates take ``{target}`` (a class
name or a referring expression) and ``{color}``. Enhancement has one set per kind of damage.
The chosen template is recorded as ``template:<task>#<index>``.
"""

from __future__ import annotations

from ieiw.pipelines.instructions.templates import fill_template

TEMPLATES: dict[str, tuple[str, ...]] = {
    "keypoint": (
        "draw a {color} circle on the {joint} of the person",
        "mark the person's {joint} with a {color} circle",
        "put a {color} circle on the {joint}",
        "circle the {joint} of the person in {color}",
        "place a {color} dot on the person's {joint}",
        "locate the {joint} and mark it with a {color} circle",
        "use a {color} circle to show where the person's {joint} is",
        "highlight the {joint} of the person with a {color} circle",
        "find the person's {joint} and draw a {color} circle there",
        "show the {joint} with a {color} circle",
        "paint a small {color} circle on the {joint} of the person",
        "indicate the position of the {joint} with a {color} circle",
    ),
    "keypoint_more": (
        "a {color} circle on the {joint}",
        "the {joint} in {color}",
        "a {color} one on the {joint}",
    ),
    "segmentation": (
        "put a {color} semi-transparent mask on {target}",
        "mark {target} with a {color} mask",
        "segment {target} and fill the region with {color}",
        "cover {target} with a transparent {color} layer",
        "highlight {target} in {color}",
        "paint {target} {color} with some transparency",
        "color the pixels of {target} {color}",
        "overlay {color} on {target}",
        "fill {target} with a translucent {color} color",
        "show where {target} is with a {color} mask",
        "place a {color} mask over {target}",
        "shade {target} in {color}",
    ),
    "deblur": (
        "make the image much sharper",
        "remove the blur from this photo",
        "deblur the image",
        "sharpen the picture",
        "undo the motion blur",
        "make the photo crisp and clear",
        "restore the sharp details of the image",
        "fix the blurry photo",
        "turn this blurry shot into a sharp one",
        "bring the image into focus",
    ),
    "denoise": (
        "remove the noise from the image",
        "denoise this photo",
        "make the picture clean and noise-free",
        "get rid of the grain in the photo",
        "clean up the noisy image",
        "reduce the noise in this picture",
        "remove the speckles from the image",
        "make the photo smooth, without noise",
        "restore a clean version of this noisy photo",
        "filter out the sensor noise",
    ),
    "dejpeg": (
        "remove the compression artifacts",
        "fix the JPEG artifacts in the image",
        "make the image look uncompressed",
        "clean up the blocky compression",
        "restore the image quality lost to compression",
        "remove the blocking and ringing artifacts",
        "improve the quality of this compressed photo",
        "get rid of the JPEG blocks",
        "make the picture high quality again",
        "undo the heavy JPEG compression",
    ),
    "watermark": (
        "remove the watermark",
        "erase the watermark from the photo",
        "get rid of the text overlay",
        "clean the watermark off the image",
        "delete the logo stamped on the picture",
        "make the image watermark-free",
        "remove the semi-transparent mark",
        "take the watermark out of the photo",
        "restore the photo without the watermark",
        "wipe the watermark off",
    ),
}

# Pre-training caption suffixes: what the rendered target shows beyond the image's own caption.
CAPTION_SUFFIXES: dict[str, str] = {
    "keypoint_one": "surrounded with a {color} circle",
    "keypoint_many": "with {colors} circles here and there",
    "segmentation": "with a few {color} color patches here and there",
    "deblur": "sharp and clear, in high definition",
    "denoise": "clean and noise-free, in high definition",
    "dejpeg": "in high quality, without compression artifacts",
    "watermark": "without any watermark",
}


def render(task: str, seed_text: str, **fields: str) -> tuple[str, str]:
    """The instruction for ``task`` and its source tag, e.g. ``("deblur the image", "template:deblur#2")``."""
    return fill_template(task, seed_text, fields, TEMPLATES, namespace="multitask")


def keypoint_instruction(seed_text: str, marks: list[tuple[str, str]]) -> tuple[str, str]:
    """One sentence asking for every (joint phrase, colour) of ``marks``: a main template, then clauses."""
    joint, color = marks[0]
    text, source = render("keypoint", seed_text, joint=joint, color=color)
    clauses = [
        render("keypoint_more", f"{seed_text}:{n}", joint=j, color=c)[0] for n, (j, c) in enumerate(marks[1:])
    ]
    if len(clauses) == 1:
        text += f", and {clauses[0]}"
    elif clauses:
        text += ", " + ", ".join(clauses[:-1]) + f" and {clauses[-1]}"
    return text, source
