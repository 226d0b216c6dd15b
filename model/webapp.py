"""A small web page to try a trained model: upload an image, type an instruction, see the edit.

``create_app(pipe)`` returns a FastAPI app (the pipeline is loaded once by the caller and shared by
all requests); ``ieiw edit-ui --model DIR`` serves it with uvicorn. The page posts JSON with the
image as base64, so it needs no form-upload dependency.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from importlib.resources import files

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from ieiw.model.inference import EditSettings, edit_image

MAX_UPLOAD_BYTES = 20 << 20


class EditRequest(BaseModel):
    image: str  # base64 of the image file (a data: URL prefix is accepted)
    instruction: str = Field(min_length=1, max_length=500)
    steps: int = Field(default=20, ge=1, le=100)
    text_guidance: float = Field(default=7.5, ge=0, le=30)
    image_guidance: float = Field(default=1.5, ge=0, le=10)
    seed: int = 0
    resolution: int = Field(default=512, ge=64, le=1024)


class EditResponse(BaseModel):
    image: str  # data:image/png;base64,...
    width: int
    height: int


PAGE = files("ieiw.model").joinpath("edit_page.html").read_text(encoding="utf-8")


def decode_upload(text: str) -> Image.Image:
    """The uploaded image, or a 400 error that says what is wrong with it."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    if len(payload) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise HTTPException(413, "image too large")
    try:
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as image:
            return image.convert("RGB")
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, f"image is not valid base64: {exc}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise HTTPException(400, f"image cannot be decoded: {exc}") from exc


def create_app(pipe) -> FastAPI:
    """The page and its ``POST /edit`` endpoint around an already loaded pipeline."""
    app = FastAPI(title="IEIW edit")
    lock = threading.Lock()  # one edit at a time on the shared pipeline

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.post("/edit", response_model=EditResponse)
    def edit(request: EditRequest) -> EditResponse:
        image = decode_upload(request.image)
        settings = EditSettings(**request.model_dump(exclude={"image", "instruction"}))
        with lock:
            result = edit_image(pipe, image, request.instruction, settings)
        buffer = io.BytesIO()
        Image.fromarray(result).save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        return EditResponse(
            image=f"data:image/png;base64,{encoded}", width=result.shape[1], height=result.shape[0]
        )

    return app
