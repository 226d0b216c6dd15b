"""Synthetic degradations for users without GoPro, REDS, SIDD or CLWD.

Each takes a clean HxWx3 ``uint8`` image and a seeded generator and returns the degraded image
with the parameters it drew, so every synthetic sample records exactly what was done to it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

Degrader = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, dict[str, Any]]]

# degradation -> the enhancement task that undoes it
TASK_OF: dict[str, str] = {
    "gaussian_blur": "deblur",
    "motion_blur": "deblur",
    "gaussian_noise": "denoise",
    "poisson_noise": "denoise",
    "jpeg": "dejpeg",
    "watermark": "watermark",
}
WATERMARK_TEXTS = (
    "SAMPLE",
    "© stock photo",
    "PREVIEW",
    "watermark",
    "© photo agency",
    "DRAFT",
    "not for sale",
)


def _scale(image: np.ndarray) -> float:
    """Blur sizes are drawn for 256 px and scaled with the image, never below half of that."""
    return max(0.5, min(image.shape[:2]) / 256.0)


def gaussian_blur(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    sigma = float(rng.uniform(1.0, 3.0)) * _scale(image)
    return cv2.GaussianBlur(image, (0, 0), sigma), {"sigma": round(sigma, 3)}


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised line kernel of ``length`` pixels at ``angle`` degrees."""
    size = length if length % 2 else length + 1
    kernel = np.zeros((size, size), np.float32)
    centre = size // 2
    radians = np.deg2rad(angle)
    dx, dy = np.cos(radians) * (length - 1) / 2, np.sin(radians) * (length - 1) / 2
    cv2.line(
        kernel, (round(centre - dx), round(centre - dy)), (round(centre + dx), round(centre + dy)), 1.0, 1
    )
    return kernel / kernel.sum()


def motion_blur(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    length = max(3, int(round(float(rng.uniform(7, 21)) * _scale(image))))
    angle = float(rng.uniform(0, 180))
    return line_filter(image, motion_kernel(length, angle)), {"length": length, "angle": round(angle, 2)}


def line_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate with a sparse kernel as a weighted sum of shifted copies (a line has few taps, so this is
    several times faster than a dense 2-D filter); borders reflect."""
    reach = kernel.shape[0] // 2
    padded = cv2.copyMakeBorder(image, reach, reach, reach, reach, cv2.BORDER_REFLECT).astype(np.float32)
    height, width = image.shape[:2]
    out = np.zeros(image.shape, np.float32)
    for dy, dx in zip(*np.nonzero(kernel), strict=True):
        out += kernel[dy, dx] * padded[dy : dy + height, dx : dx + width]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def gaussian_noise(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    sigma = float(rng.uniform(10, 40))
    noisy = image.astype(np.float32) + np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), {"sigma": round(sigma, 3)}


def poisson_noise(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    peak = float(rng.uniform(5, 60))  # photons at full white: lower is noisier
    counts = rng.poisson(image.astype(np.float64) / 255.0 * peak)
    return np.clip(np.rint(counts / peak * 255.0), 0, 255).astype(np.uint8), {"peak": round(peak, 3)}


def jpeg(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    quality = int(rng.integers(5, 26))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB")), {"quality": quality}


def watermark(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A semi-transparent text or logo drawn with Pillow, once or tiled over the image."""
    height, width = image.shape[:2]
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    opacity = float(rng.uniform(0.35, 0.7))
    shade = int(rng.choice([255, 235, 30]))
    fill = (shade, shade, shade, int(round(255 * opacity)))
    style = str(rng.choice(["text", "logo"]))
    tiled = bool(rng.random() < 0.5)
    size = max(8, int(round(min(width, height) * float(rng.uniform(0.08, 0.16)))))
    params: dict[str, Any] = {
        "style": style,
        "opacity": round(opacity, 3),
        "tiled": tiled,
        "size": size,
        "shade": shade,
    }
    if style == "text":
        text = str(rng.choice(WATERMARK_TEXTS))
        font = ImageFont.load_default(size=size)
        left, _, right, _ = draw.textbbox((0, 0), text, font=font)
        positions = _positions(width, height, (right - left + size, 3 * size), size, tiled, rng)
        for x, y in positions:
            draw.text((x, y), text, font=font, fill=fill, anchor="mm")
        params["text"] = text
    else:
        for x, y in _positions(width, height, (4 * size, 4 * size), size, tiled, rng):
            _logo(draw, x, y, size, fill)
    marked = Image.alpha_composite(Image.fromarray(image).convert("RGBA"), layer).convert("RGB")
    return np.asarray(marked), params


def _positions(
    width: int, height: int, step: tuple[int, int], size: int, tiled: bool, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Centres: one random place, or a staggered grid ``step`` apart."""
    if not tiled:
        return [
            (
                int(rng.integers(size, max(size + 1, width - size))),
                int(rng.integers(size, max(size + 1, height - size))),
            )
        ]
    step_x, step_y = step
    return [
        (x, y)
        for row, y in enumerate(range(size, height, step_y))
        for x in range(size // 2 + (row % 2) * step_x // 2, width + step_x // 2, step_x)
    ]


def _logo(draw: ImageDraw.ImageDraw, x: int, y: int, size: int, fill: tuple[int, int, int, int]) -> None:
    """A ring around a five-pointed star: a plain stand-in for an agency's logo."""
    r = size
    draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=max(2, r // 6))
    angles = np.deg2rad(np.arange(10) * 36 - 90)
    radii = np.where(np.arange(10) % 2 == 0, 0.75 * r, 0.3 * r)
    draw.polygon(
        [(float(x + q * np.cos(a)), float(y + q * np.sin(a))) for q, a in zip(radii, angles, strict=True)],
        fill=fill,
    )


DEGRADATIONS: dict[str, Degrader] = {
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "gaussian_noise": gaussian_noise,
    "poisson_noise": poisson_noise,
    "jpeg": jpeg,
    "watermark": watermark,
}


def degrade(image: np.ndarray, name: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the named degradation; a clear error for an unknown name."""
    try:
        function = DEGRADATIONS[name]
    except KeyError:
        raise ValueError(f"unknown degradation {name!r}; known: {', '.join(DEGRADATIONS)}") from None
    return function(np.ascontiguousarray(image), rng)
