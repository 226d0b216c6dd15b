"""Fixture images for the web-edits tests: real photos, plausible edits of them, and unrelated images.

Originals are scikit-image's bundled photographs. Edits are what people post for photoshop requests
(object painted over, colour grading, background blur, caption, crop, upscale, black and white,
sky replaced, heavy JPEG). Unrelated images are other photos, memes, text screenshots and noise.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import data

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "coins",
)


def photo(name: str, side: int = 320) -> np.ndarray:
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = (image * 255).astype(np.uint8) if image.max() <= 1 else image.astype(np.uint8)
    scale = side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _text(image: np.ndarray, text: str, xy=(10, 10), fill=(255, 255, 255), size: int = 28) -> np.ndarray:
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=size)
    draw.text(xy, text, fill=fill, font=font)
    return np.asarray(pil)


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def edits(image: np.ndarray) -> dict[str, np.ndarray]:
    """Edits a person might post for ``image``; every one shows the same scene."""
    h, w = image.shape[:2]
    out: dict[str, np.ndarray] = {}
    painted = image.copy()
    painted[h // 3 : h // 3 + h // 4, w // 3 : w // 3 + w // 4] = image[
        h // 3 : h // 3 + h // 4, : w // 4
    ].mean((0, 1))
    out["object_removed"] = painted
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.6, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + 25, 0, 255)
    out["colour_graded"] = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    blurred = cv2.GaussianBlur(image, (0, 0), 6)
    mask = np.zeros((h, w, 1), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 4, h // 3), 0, 0, 360, 1.0, -1)
    out["background_blurred"] = (image * mask + blurred * (1 - mask)).astype(np.uint8)
    out["caption_added"] = _text(image, "happy birthday!", (w // 8, h - 50))
    crop = image[h // 14 : h - h // 14, w // 14 : w - w // 14]
    out["cropped"] = cv2.resize(crop, (w, h), interpolation=cv2.INTER_CUBIC)
    out["upscaled"] = cv2.resize(image, (w * 2, h * 2), interpolation=cv2.INTER_CUBIC)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    out["black_and_white"] = np.stack([gray] * 3, axis=-1)
    sky = image.copy()
    sky[: h // 3] = np.linspace([40, 90, 200], [180, 210, 255], h // 3).astype(np.uint8)[:, None, :]
    out["sky_replaced"] = sky
    out["heavy_jpeg"] = _jpeg_roundtrip(image, 12)
    swap = image.copy()
    swap[h // 2 :, w // 2 :] = np.flipud(np.fliplr(image[h // 2 :, w // 2 :]))
    out["quarter_rearranged"] = swap
    return out


def meme(seed: int, size=(320, 320)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), rng.integers(0, 255, 3), np.uint8)
    cv2.circle(
        image, (size[1] // 2, size[0] // 2), size[0] // 4, tuple(int(v) for v in rng.integers(0, 255, 3)), -1
    )
    image = _text(image, "ONE DOES NOT SIMPLY", (10, 10), size=24)
    return _text(image, "PHOTOSHOP THIS", (10, size[0] - 40), size=24)


def text_screenshot(seed: int, size=(320, 320)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), 250, np.uint8)
    words = ["the", "edit", "request", "please", "photo", "remove", "thanks", "tip", "background", "color"]
    for row in range(12):
        line = " ".join(rng.choice(words, 5))
        image = _text(image, line, (8, 8 + row * 25), fill=(20, 20, 20), size=16)
    return image


def noise(seed: int, size=(320, 320)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)


def unrelated(original_name: str) -> dict[str, np.ndarray]:
    """Images that are not an edit of ``original_name``."""
    out = {f"photo_{n}": photo(n) for n in PHOTOS if n != original_name}
    out["meme"] = meme(1)
    out["text_screenshot"] = text_screenshot(2)
    out["noise"] = noise(3)
    return out


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()
