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
