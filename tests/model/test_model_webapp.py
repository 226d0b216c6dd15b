"""The edit web page: a real request through the FastAPI app running a tiny trained pipeline."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ieiw.model.inference import load_edit_pipeline
from ieiw.model.webapp import create_app


@pytest.fixture(scope="module")
def client(trained_model):
    return TestClient(create_app(load_edit_pipeline(str(trained_model), device="cpu")))


def _png_data_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_page_has_the_form(client):
    page = client.get("/")
    assert page.status_code == 200
    for element in ('id="file"', 'id="instruction"', 'id="text_guidance"', 'id="image_guidance"'):
        assert element in page.text


def test_edit_returns_the_edited_image(client):
    body = {"image": _png_data_url(np.full((48, 32, 3), 90, np.uint8)), "instruction": "make the circle red",
            "steps": 2, "resolution": 64, "seed": 1}
    answer = client.post("/edit", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["image"].startswith("data:image/png;base64,") and (data["width"], data["height"]) == (44, 64)
    with Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1]))) as image:
        assert image.size == (44, 64)
    again = client.post("/edit", json=body).json()
    assert again["image"] == data["image"]  # same seed, same edit


def test_bad_uploads_get_clear_errors(client):
    bad = client.post("/edit", json={"image": base64.b64encode(b"not an image").decode(), "instruction": "x"})
    assert bad.status_code == 400 and "cannot be decoded" in bad.json()["detail"]
    assert client.post("/edit", json={"image": "%%%", "instruction": "x"}).status_code == 400
    assert client.post("/edit", json={"image": "", "instruction": ""}).status_code == 422


def test_the_page_shows_a_small_edit_at_its_own_aspect_ratio(trained_model, tmp_path):
    """A 128x84 edit of a 451x300 photo is shown as wide as the photo, never stretched into a strip."""
    import shutil

    from playwright.sync_api import expect, sync_playwright

    from ieiw.model.review.serve import serving

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not shutil.which(chromium):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    seed = 4
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (300, 451, 3), dtype=np.uint8)).save(photo)
    app = create_app(load_edit_pipeline(str(trained_model), device="cpu"))
    with serving(app) as url, sync_playwright() as playwright:
        args = ["--headless=new", "--no-sandbox", "--disable-gpu"]
        browser = playwright.chromium.launch(executable_path=chromium, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.set_input_files("#file", str(photo))
        page.fill("#instruction", "make the circle red")
        for field, value in (("steps", 1), ("resolution", 128)):
            page.eval_on_selector(f"#{field}", "(e, v) => { e.value = v; }", value)
        page.click("#go")
        expect(page.locator("#status")).to_have_text("done", timeout=60_000)
        expect(page.locator("#after-size")).to_have_text("edit 128×84 (the working resolution)")
        shown = page.evaluate(
            "() => ['before', 'after'].map(id => { const i = document.getElementById(id);"
            " const box = i.getBoundingClientRect();"
            " return [i.naturalWidth, i.naturalHeight, box.width, box.height]; })"
        )
        browser.close()
    (source_w, source_h, before_w, before_h), (edit_w, edit_h, after_w, after_h) = shown
    assert (source_w, source_h, edit_w, edit_h) == (451, 300, 128, 84), f"seed {seed}"
    assert after_w == pytest.approx(before_w, abs=1)  # shown at the photo's width ...
    assert after_w / after_h == pytest.approx(128 / 84, rel=0.02)  # ... at its own aspect ratio
    assert before_w / before_h == pytest.approx(451 / 300, rel=0.02)
