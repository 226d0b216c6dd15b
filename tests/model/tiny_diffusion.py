"""Tiny, randomly initialised Stable-Diffusion-shaped checkpoints for the model tests.

The package's own writer (:mod:`ieiw.model.tiny`, what ``ieiw tiny-model`` runs), under the names the
tests import: real library classes at toy sizes, saved with ``save_pretrained`` in the diffusers layout a
real base checkpoint has, so the trainer loads them through its production code.
"""

from __future__ import annotations

from ieiw.model.tiny import (
    HIDDEN,
    MAX_LENGTH,
    WORDS,
    save_tiny_sd,
    tiny_scheduler,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
    write_tokenizer,
)

save_tiny_base = save_tiny_sd  # a tiny text-to-image checkpoint (4-channel UNet) in SD 1.5's layout

__all__ = [
    "HIDDEN",
    "MAX_LENGTH",
    "WORDS",
    "save_tiny_base",
    "tiny_scheduler",
    "tiny_text_encoder",
    "tiny_tokenizer",
    "tiny_unet",
    "tiny_vae",
    "write_tokenizer",
]
