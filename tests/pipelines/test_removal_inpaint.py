import hashlib
import http.server
import threading

import numpy as np
import pytest
from tiny_lama import save_tiny_lama

from ieiw.pipelines.inpaint import InpaintConfig, InpaintError, build_inpainter
from ieiw.pipelines.inpaint.lama import LamaInpainter, pad_to_modulo, resolve_checkpoint
from ieiw.storage.models import ModelUnavailable


def _image_and_mask(height=61, width=83, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[10:30, 20:50] = 255
    return image, mask


def test_opencv_fills_only_the_mask():
    image, mask = _image_and_mask()
    image[mask > 0] = (255, 0, 0)
    out = build_inpainter(InpaintConfig(backend="opencv")).inpaint([image], [mask])[0]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[mask == 0], image[mask == 0])
    assert np.abs(out[mask > 0].astype(int) - image[mask > 0].astype(int)).mean() > 20


def test_lama_torchscript_loads_through_the_production_loader_and_crops_back(tmp_path):
    path = save_tiny_lama(str(tmp_path / "big-lama.pt"))
    inpainter = build_inpainter(InpaintConfig(backend="lama", model=path, batch_size=2))
    assert isinstance(inpainter, LamaInpainter) and inpainter.backend == "lama"
    pairs = [_image_and_mask(61, 83, 0), _image_and_mask(61, 83, 1), _image_and_mask(40, 40, 2)]
    outputs = inpainter.inpaint([p[0] for p in pairs], [p[1] for p in pairs])
    for (image, mask), out in zip(pairs, outputs):
        assert out.shape == image.shape  # padded to a multiple of 8 inside, cropped back here
        assert np.array_equal(out[mask == 0], image[mask == 0])
        assert not np.array_equal(out[mask > 0], image[mask > 0])


def test_lama_matches_one_by_one_when_batched(tmp_path):
    inpainter = LamaInpainter(save_tiny_lama(str(tmp_path / "l.pt")), batch_size=4)
    pairs = [_image_and_mask(64, 64, s) for s in range(3)]
    batched = inpainter.inpaint([p[0] for p in pairs], [p[1] for p in pairs])
    single = [inpainter.inpaint([p[0]], [p[1]])[0] for p in pairs]
    for a, b in zip(batched, single):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_lama_failure_is_an_inpaint_error(tmp_path):
    inpainter = LamaInpainter(save_tiny_lama(str(tmp_path / "l.pt"), fail_wider_than=50))
    with pytest.raises(InpaintError, match="wide input"):
        inpainter.inpaint(*[[x] for x in _image_and_mask(40, 90)])


def test_pad_to_modulo_is_symmetric_and_minimal():
    array = np.arange(5 * 6).reshape(5, 6)
    padded = pad_to_modulo(array, 8)
    assert padded.shape == (8, 8) and np.array_equal(padded[:5, :6], array)
    assert np.array_equal(padded[5, :6], array[4])  # symmetric padding mirrors the edge row


def test_lama_checkpoint_url_is_downloaded_once_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("IEIW_CACHE", str(tmp_path / "cache"))
    payload_path = save_tiny_lama(str(tmp_path / "served.pt"))
    payload = open(payload_path, "rb").read()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/models/big-lama.pt"
        md5 = hashlib.md5(payload).hexdigest()
        first = resolve_checkpoint(f"{url}#md5={md5}")
        second = resolve_checkpoint(f"{url}#md5={md5}")
        assert first == second and open(first, "rb").read() == payload and len(hits) == 1
        monkeypatch.setenv("IEIW_CACHE", str(tmp_path / "other"))
        with pytest.raises(ModelUnavailable, match="md5 does not match"):
            resolve_checkpoint(f"{url}#md5={'0' * 32}")
        config = InpaintConfig(backend="lama", model=url, model_md5=md5)
        assert config.model == f"{url}#md5={md5}"  # a config's md5 travels with the reference
    finally:
        server.shutdown()


def test_lama_without_a_model_is_a_clear_config_error():
    with pytest.raises(ValueError, match="big-lama"):
        build_inpainter(InpaintConfig(backend="lama"))
    with pytest.raises(ModelUnavailable, match="/nonexistent/big-lama.pt"):
        build_inpainter(InpaintConfig(backend="lama", model="/nonexistent/big-lama.pt"))
