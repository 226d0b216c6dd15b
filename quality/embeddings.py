"""CLIP image and text embeddings through open_clip, and an on-disk cache of them by image digest.

The embedder is loaded once by its caller (a per-process cache in ``flows/``, or a loader the
caller holds) and reused for every batch::

    embedder = ClipEmbedder.from_config(EmbedderConfig(model="ViT-L-14", pretrained="openai"))
    image_vectors = embedder.embed_images([array_hwc_uint8, ...])   # (N, D) float32, unit rows
    text_vectors = embedder.embed_texts(["remove the dog"])          # (N, D) float32, unit rows

``pretrained`` is an open_clip tag (``openai``, ``laion2b_s32b_b82k``) or a local checkpoint file
(``.safetensors`` or a state dict loaded with ``torch.load(weights_only=True)``). A model that is
not in open_clip's registry is described by a JSON model config (``model_config_file``), which is
registered with open_clip before the model is built.

:meth:`EmbedderConfig.identity` names the embedder by content (the checkpoint's and the model config's
digests, or the open_clip name and release tag), never by a local path: the embedding cache is kept
under it, so vectors of another CLIP model (or of another checkpoint at the same path) are never
reused, and the same checkpoint moved elsewhere still finds its vectors.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from ieiw.quality.fixed_batches import padded_chunks
from ieiw.storage import fs
from ieiw.storage.config import WorkerEnv, effective_precision, input_file, model_ref, operational, precision
from ieiw.storage.identity import file_digest, model_identity
from ieiw.storage.schema import stable_key


class EmbedderConfig(BaseModel):
    """Which CLIP model embeds images and texts, and how."""

    model_config = ConfigDict(extra="forbid")

    model: str = "ViT-L-14"  # an open_clip architecture name
    pretrained: str | None = model_ref("openai")  # an open_clip release tag or a checkpoint file
    model_config_file: str | None = input_file(None)  # an architecture open_clip does not know
    device: str = operational("auto")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = precision("auto")
    batch_size: int = operational(64)

    def model_identities(self) -> dict[str, str | None]:
        """What the embedder is, by content: the open_clip model name (or its config file's digest),
        and the checkpoint's digest or the named release tag. A missing checkpoint file is an error."""
        pretrained = self.pretrained
        if pretrained and _looks_like_path(pretrained) and not os.path.isfile(pretrained):
            raise FileNotFoundError(f"CLIP checkpoint {pretrained} does not exist")
        config_file = self.model_config_file
        if config_file and not os.path.isfile(config_file):
            raise FileNotFoundError(f"open_clip model config {config_file} does not exist")
        return {
            "model": model_identity(self.model),
            "pretrained": model_identity(pretrained) if pretrained else None,
            "model_config_file": f"sha256:{file_digest(config_file)}" if config_file else None,
        }

    def identity(self, env: WorkerEnv | None = None) -> str:
        """The embedder's name for caches: ``<model>-<digest of its content identities>``, plus the
        half precision it runs at on this process's GPU, or on the workers of ``env`` (vectors computed
        in bf16 are not fp32 vectors)."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.model).strip("-") or "clip"
        parts: dict[str, str | None] = self.model_identities()
        if env is None:
            half = _autocast_dtype(resolve_device(self.device), self.precision)
            autocast = str(half).removeprefix("torch.") if half is not None else None
        else:
            computed = effective_precision(self.precision, self.device, env)
            autocast = {"bf16 on cuda": "bfloat16", "fp16 on cuda": "float16"}.get(computed)
        if autocast is not None:
            parts = {**parts, "autocast": autocast}
        return f"{name}-{stable_key('clip-embedder', parts)[:16]}"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """fp16/bf16 autocast on GPU; full precision on CPU (where half precision is slow)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


autocast_dtype = _autocast_dtype  # public: the precision an embedder will run at, without loading it


class ClipEmbedder:
    """An open_clip model with its preprocessing and tokenizer; returns L2-normalised float32 rows."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        device: torch.device,
        batch_size: int = 64,
        autocast_dtype: torch.dtype | None = None,
        name: str = "clip",
    ) -> None:
        self.model = model.eval().to(device)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.name = name
        self._dim: int | None = None

    @classmethod
    def from_config(cls, config: EmbedderConfig) -> ClipEmbedder:
        """Build the model through ``open_clip.create_model_and_transforms`` and load its weights.

        open_clip logs "No pretrained weights loaded ... initialized randomly" only when it loaded no
        checkpoint; with weights asked for (a tag or a file) that is an error here
        (``require_pretrained``), never a random model. A model named with a schema (``hf-hub:``,
        ``local-dir:``) brings its own weights, so ``pretrained`` is not passed with it (open_clip would
        warn that it ignores it)."""
        import open_clip

        if config.model_config_file:
            register_model_config(config.model_config_file)
        pretrained = config.pretrained
        if config.model.startswith(("hf-hub:", "local-dir:")):
            pretrained = None
        if pretrained and _looks_like_path(pretrained) and not Path(pretrained).is_file():
            raise FileNotFoundError(f"CLIP checkpoint {pretrained} does not exist")
        device = resolve_device(config.device)
        model, _, preprocess = open_clip.create_model_and_transforms(
            config.model,
            pretrained=pretrained,
            device=device,
            weights_only=True,
            require_pretrained=bool(pretrained),
        )
        tokenizer = open_clip.get_tokenizer(config.model)
        return cls(
            model,
            preprocess,
            tokenizer,
            device,
            batch_size=config.batch_size,
            autocast_dtype=_autocast_dtype(device, config.precision),
            name=config.identity(),
        )

    @property
    def dim(self) -> int:
        if self._dim is None:
            projection = getattr(self.model, "text_projection", None)
            if isinstance(projection, torch.Tensor):
                self._dim = int(projection.shape[-1])
            else:
                self._dim = int(self.embed_texts(["a photo"]).shape[1])
        return self._dim

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed HxWx3 ``uint8`` RGB arrays; returns ``(N, D)`` float32 with unit-length rows.

        Every forward pass holds exactly ``batch_size`` images (:mod:`ieiw.quality.fixed_batches`), so
        an image's vector does not depend on which images it was embedded with."""
        out = []
        for chunk, real in padded_chunks(images, self.batch_size):
            pixels = torch.stack([self.preprocess(Image.fromarray(_rgb(a))) for a in chunk[:real]])
            pixels = torch.cat([pixels, pixels[:1].expand(len(chunk) - real, *pixels.shape[1:])])
            out.append(self._encode(self.model.encode_image, pixels)[:real])
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns ``(N, D)`` float32 with unit-length rows (at the fixed batch shape, as
        :meth:`embed_images`)."""
        out = []
        for chunk, real in padded_chunks(list(texts), self.batch_size):
            tokens = self.tokenizer(chunk)
            out.append(self._encode(self.model.encode_text, tokens)[:real])
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def _encode(self, encode: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> np.ndarray:
        inputs = inputs.to(self.device, non_blocking=True)
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                features = encode(inputs)
        else:
            features = encode(inputs)
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)


def register_model_config(path: str) -> None:
    """Register a JSON model config (its file name, without ``.json``, is the model name)."""
    import open_clip

    config_path = Path(path)
    if not config_path.is_file():
        raise FileNotFoundError(f"open_clip model config {path} does not exist")
    json.loads(config_path.read_text())  # a clear error for a malformed file
    if config_path.stem not in open_clip.list_models():
        open_clip.add_model_config(config_path)


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ValueError(f"images are uint8 arrays, got {array.dtype}")
    if array.ndim == 2:
        return np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"images are HxWx3 arrays, got shape {array.shape}")
    return array[..., :3]


class EmbeddingCache:
    """Embeddings by key on any fsspec URL, so nothing is embedded twice across stages and reruns.

    Layout under ``<url>/<namespace>/``, the namespace being the embedder's
    :meth:`~EmbedderConfig.identity`: parts ``<part>.npy`` (``(N, D)`` float32) and
    ``<part>.keys.parquet`` (the N keys in row order). The keys file is written after its vectors
    and marks the part complete; a killed writer leaves at most an unreferenced ``.npy`` (and a
    temporary file). Only the keys are held in memory; vectors are read per part (memory-mapped for
    local files).

    One instance serves a process for as long as it lives (a worker's stages load it once): asked for
    keys it does not know, it reads the parts other processes wrote since, and it forgets parts that
    were removed (a cache deleted by hand is a cache that holds nothing). The cache is content-addressed
    and lives outside every stage folder, so no stage's rebuild removes it.

    A cache several stages or processes write at once is never cleaned by any of them
    (:meth:`remove_orphans` is for a person or a tool, when nothing writes it).
    """

    def __init__(self, url: str, namespace: str) -> None:
        self.url = fs.join(url, namespace)
        self._where: dict[str, tuple[str, int]] = {}
        self._parts: set[str] = set()  # the parts whose keys are in the index
        self._lock = threading.RLock()  # one cache per process, shared by its batches' threads
        self._listed = False

    def _load_index(self) -> None:
        with self._lock:
            if not self._listed:
                self._refresh()

    def _refresh(self) -> None:
        """Read the keys of parts written since the last look, and forget parts that are gone."""
        with self._lock:
            parts = {
                u[: -len(".keys.parquet")]
                for u in fs.list_files(self.url, ".keys.parquet")
                if not posixpath.basename(u).startswith(".")
            }
            gone = self._parts - parts
            if gone:
                self._where = {k: v for k, v in self._where.items() if v[0] not in gone}
                self._parts -= gone
            for part in sorted(parts - self._parts):
                try:
                    filesystem, path = fs.get_fs(part + ".keys.parquet")
                    with filesystem.open(path, "rb") as handle:
                        keys = pq.read_table(handle).column("key").to_pylist()
                except FileNotFoundError:
                    continue  # removed while listed
                for row, key in enumerate(keys):
                    self._where.setdefault(key, (part, row))
                self._parts.add(part)
            self._listed = True

    def __len__(self) -> int:
        self._load_index()
        return len(self._where)

    def remove_orphans(self) -> int:
        """Delete vectors no keys file references and temporary files (leftovers of killed writers);
        only while nothing writes the cache. Returns how many."""
        removed = 0
        with self._lock:
            marked = {u[: -len(".keys.parquet")] for u in fs.list_files(self.url, ".keys.parquet")}
            for url in fs.list_files(self.url, ""):
                name = posixpath.basename(url)
                orphan = url.endswith(".npy") and url[: -len(".npy")] not in marked
                if orphan or ".tmp-" in name:
                    removed += int(fs.remove(url))
        return removed

    def __contains__(self, key: str) -> bool:
        return not self.missing([key])

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys the cache does not hold (after reading what other processes added since)."""
        self._load_index()
        lacking = [k for k in keys if k not in self._where]
        if lacking:
            self._refresh()
            lacking = [k for k in lacking if k not in self._where]
        return lacking

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors of ``keys`` that are present (absent keys, and keys of a part removed
        meanwhile, are left out)."""
        self._load_index()
        by_part: dict[str, list[tuple[str, int]]] = {}
        with self._lock:
            for key in keys:
                if key in self._where:
                    part, row = self._where[key]
                    by_part.setdefault(part, []).append((key, row))
        found: dict[str, np.ndarray] = {}
        for part, wanted in by_part.items():
            try:
                vectors = _open_npy(part + ".npy")
            except FileNotFoundError:
                self._refresh()  # the part was removed: its keys are not in the cache any more
                continue
            for key, row in wanted:
                found[key] = np.array(vectors[row], dtype=np.float32)
        return found

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store new vectors as one part; keys already cached are skipped."""
        with self._lock:
            self._put(keys, vectors)

    def _put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        self._load_index()
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        fresh = [i for i, k in enumerate(keys) if k not in self._where]
        fresh = list({keys[i]: i for i in fresh}.values())
        if not fresh:
            return
        part = fs.join(self.url, f"part-{uuid.uuid4().hex[:16]}")
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(vectors[fresh], dtype=np.float32))
        fs.write_bytes_atomic(part + ".npy", buffer.getvalue())
        table = pa.table({"key": pa.array([keys[i] for i in fresh], pa.string())})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        fs.write_bytes_atomic(part + ".keys.parquet", buffer.getvalue())
        for row, i in enumerate(fresh):
            self._where[keys[i]] = (part, row)
        self._parts.add(part)


def _open_npy(url: str) -> np.ndarray:
    filesystem, path = fs.get_fs(url)
    if "://" not in url or url.startswith("file://"):
        return np.load(path, mmap_mode="r", allow_pickle=False)
    with filesystem.open(path, "rb") as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def embed_images_cached(
    embedder: ClipEmbedder,
    cache: EmbeddingCache | None,
    keys: Sequence[str],
    load_images: Callable[[list[str]], list[np.ndarray]],
) -> np.ndarray:
    """Embeddings of ``keys``, computing (and caching) only those the cache lacks.

    ``load_images`` decodes the images of the keys it is given, so cached images are never decoded
    for the embedder. A vector does not depend on which others were computed with it (the embedder
    runs at a fixed batch shape), so a cached vector equals a fresh one bit for bit.
    """
    if cache is None:
        return embedder.embed_images(load_images(list(keys)))
    todo = cache.missing(keys)
    if todo:
        cache.put(todo, embedder.embed_images(load_images(todo)))
    found = cache.get(keys)
    lost = [k for k in dict.fromkeys(keys) if k not in found]  # removed from the cache meanwhile
    if lost:
        found.update(zip(lost, embedder.embed_images(load_images(lost)), strict=True))
    return np.stack([found[k] for k in keys]) if keys else np.zeros((0, embedder.dim), np.float32)
