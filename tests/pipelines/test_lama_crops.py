"""LaMa's crop strategy: square windows around masks, resized to one size and batched across images of
any size, pasted back inside the mask only; the strategy and its sizes are part of the removal
fingerprint and the keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from phrasecut_fixture import write_phrasecut
from tiny_lama import save_tiny_lama

from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter
from ieiw.pipelines.inpaint.crops import cut, mask_window, paste_window
from ieiw.pipelines.removal import RemovalConfig, RemovalSettings, removal_stage
from ieiw.pipelines.sources.phrasecut import iter_records
from ieiw.storage.config import config_fingerprint

SIZES = [(61, 83), (300, 120), (40, 40), (500, 375), (375, 500), (97, 640)]


def _pair(height: int, width: int, seed: int, box=None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    y0, y1, x0, x1 = box or (height // 4, height // 2, width // 5, width // 2)
    mask[y0:y1, x0:x1] = 255
    return image, mask


class CallCounter(torch.nn.Module):
    """Counts the calls and batch shapes that reach the loaded TorchScript LaMa (which still runs)."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, image, mask):
        self.shapes.append(tuple(image.shape))
        return self.inner(image, mask)


@pytest.fixture(scope="module")
def lama_path(tmp_path_factory):
    return save_tiny_lama(str(tmp_path_factory.mktemp("lama") / "big-lama.pt"))


def _crop(lama_path, **settings):
    config = {"backend": "lama", "model": lama_path, "strategy": "crop", "window": 64, "crop_margin": 8}
    return build_inpainter(InpaintConfig(**{**config, **settings}))


def test_crop_windows_of_every_size_run_in_full_batches_and_change_only_the_mask(lama_path):
    inpainter = _crop(lama_path, batch_size=4)
    inpainter.module = counter = CallCounter(inpainter.module)
    pairs = [_pair(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    pairs.append(_pair(50, 70, 9, box=(0, 0, 0, 0)))  # an empty mask: nothing to inpaint, no window
    outputs = inpainter.inpaint([p[0] for p in pairs], [p[1] for p in pairs])
    # six sizes, six windows: two calls of 4 and 2 windows of 64 x 64 (whole images would need six)
    assert counter.shapes == [(4, 3, 64, 64), (2, 3, 64, 64)]
    for (image, mask), out in zip(pairs, outputs, strict=True):
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(out[mask == 0], image[mask == 0])
        if mask.any():
            assert np.abs(out[mask > 0].astype(int) - image[mask > 0].astype(int)).mean() > 5

    # batched windows give what one window at a time gives
    single = _crop(lama_path, batch_size=1)
    for (image, mask), batched in zip(pairs, outputs, strict=True):
        alone = single.inpaint([image], [mask])[0]
        assert np.abs(alone.astype(int) - batched.astype(int)).max() <= 1


def test_the_whole_image_path_stays_one_choice_and_its_batches_need_equal_sizes(lama_path):
    whole = build_inpainter(InpaintConfig(backend="lama", model=lama_path, batch_size=4))
    whole.module = counter = CallCounter(whole.module)
    pairs = [_pair(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    outputs = whole.inpaint([p[0] for p in pairs], [p[1] for p in pairs])
    assert len(counter.shapes) == len(SIZES)  # one call per padded size
    assert [s[2:] for s in counter.shapes] == [(-(-h // 8) * 8, -(-w // 8) * 8) for h, w in SIZES]
    for (image, mask), out in zip(pairs, outputs, strict=True):
        assert np.array_equal(out[mask == 0], image[mask == 0])
    assert whole.settings() == {"pad_modulo": 8}  # the keys it made before the strategies existed


@given(
    height=st.integers(8, 900),
    width=st.integers(8, 900),
    data=st.data(),
    margin=st.integers(0, 200),
    window=st.sampled_from([64, 256, 512]),
)
def test_a_window_holds_the_mask_and_its_margin_and_is_as_small_as_it_may_be(
    height, width, data, margin, window
):
    y0 = data.draw(st.integers(0, height - 1))
    x0 = data.draw(st.integers(0, width - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    x1 = data.draw(st.integers(x0 + 1, width))
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 255
    win = mask_window(mask, margin, window)
    assert win.side == min(max(max(x1 - x0, y1 - y0) + 2 * margin, window), max(height, width))
    assert win.x0 <= x0 and x1 <= win.x0 + win.side and win.y0 <= y0 and y1 <= win.y0 + win.side
    for start, length in ((win.x0, width), (win.y0, height)):
        if win.side <= length:
            assert 0 <= start <= length - win.side  # inside the image where it fits
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels, region = cut(image, win), cut(mask, win, "constant")
    assert pixels.shape == (win.side, win.side, 3) and region.shape == (win.side, win.side)
    assert (region > 0).sum() == (mask > 0).sum()  # the whole mask is inside, none of it mirrored
    filled = np.full((win.side, win.side, 3), 7, np.uint8)
    out = paste_window(image, mask, win, filled)
    assert np.array_equal(out[mask == 0], image[mask == 0]) and (out[mask > 0] == 7).all()


def test_crop_settings_are_in_the_removal_fingerprint_and_keys(lama_path, tmp_path):
    annotations, images = write_phrasecut(str(tmp_path / "phrasecut"), n_images=2, size=128)
    source = {"annotations": [annotations], "images": images}
    whole = RemovalConfig.model_validate(
        {"source": source, "inpaint": {"backend": "lama", "model": lama_path}}
    )
    crop = whole.model_copy(
        update={"inpaint": whole.inpaint.model_copy(update={"strategy": "crop", "window": 256})}
    )

    def fingerprint(config: RemovalConfig):
        return config_fingerprint("removal", config)

    assert fingerprint(crop).changes(fingerprint(whole)) == [
        'removal.inpaint.strategy: "whole" -> "crop"',
        "removal.inpaint.window: 512 -> 256",
    ]
    smaller = crop.model_copy(update={"inpaint": crop.inpaint.model_copy(update={"window": 128})})
    assert fingerprint(smaller).changes(fingerprint(crop)) == ["removal.inpaint.window: 256 -> 128"]
    # a batch size is not what the output is
    faster = crop.model_copy(update={"inpaint": crop.inpaint.model_copy(update={"batch_size": 16})})
    assert fingerprint(faster).digest == fingerprint(crop).digest

    record = next(iter(iter_records(annotations, images)))
    keys = {}
    for name, config in (("whole", whole), ("crop", crop), ("smaller", smaller)):
        samples = [
            r for r in removal_stage([record], build_inpainter(config.inpaint), RemovalSettings()) if r.key
        ]
        remove = next(s for s in samples if str(s.meta.task) == "remove")
        keys[name] = remove.key
        settings = remove.meta.generator.settings
        assert ("window" in settings) == (name != "whole")
    assert len(set(keys.values())) == 3


def test_bad_crop_settings_are_clear_config_errors(lama_path):
    with pytest.raises(ValueError, match="strategy 'crop' is for backend 'lama'"):
        InpaintConfig(strategy="crop")
    with pytest.raises(ValueError, match="multiple of 8"):
        InpaintConfig(backend="lama", model=lama_path, strategy="crop", window=100)
