"""A tiny open_clip model (JSON config + safetensors weights) for the evaluation tests.

The package's own writer (:func:`ieiw.model.tiny.save_tiny_clip`, what ``ieiw tiny-model --clip`` runs),
loaded through :class:`ieiw.quality.embeddings.ClipEmbedder.from_config`, the loader a user runs with real
CLIP weights; the tokenizer is open_clip's own BPE vocabulary, shipped with the package.
"""

from __future__ import annotations

from ieiw.model.tiny import TINY_CLIP as NAME
from ieiw.model.tiny import TINY_CLIP_CONFIG as CONFIG
from ieiw.model.tiny import save_tiny_clip

__all__ = ["CONFIG", "NAME", "save_tiny_clip"]
