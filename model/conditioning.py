"""What the UNet is conditioned on besides the latents: the text, and for SDXL its pooled text and size ids.

Stable Diffusion 1.x/2.x: the text encoder's last hidden states. SDXL, as its pipelines encode a prompt:
the penultimate hidden states of both text encoders side by side, the second encoder's pooled (projected)
output, and six "time ids" per sample, ``(original height, original width, crop top, crop left, target
height, target width)``, the micro-conditioning the UNet's ``text_time`` embedding takes.

Classifier-free dropout replaces a sample's text with the *null* conditioning, which must be what the
saved pipeline feeds for "no text" at inference: the encoded empty prompt, or for an SDXL checkpoint with
``force_zeros_for_empty_prompt`` (SDXL base's default) zeros for both the hidden states and the pooled
output (:func:`null_conditioning`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIZE_COND = "size_cond"  # the batch entry with each sample's six SDXL size and crop ids


@dataclass
class TextConditioning:
    """The text of a batch as the UNet takes it: ``hidden`` (B, L, D) and, for SDXL, ``pooled`` (B, P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def float(self) -> TextConditioning:
        return TextConditioning(self.hidden.float(), None if self.pooled is None else self.pooled.float())

    def where(self, drop: torch.Tensor, null: TextConditioning) -> TextConditioning:
        """This conditioning with the samples where ``drop`` is set replaced by ``null`` (one row)."""
        hidden = torch.where(drop[:, None, None], null.hidden, self.hidden)
        pooled = None
        if self.pooled is not None:
            assert null.pooled is not None
            pooled = torch.where(drop[:, None], null.pooled, self.pooled)
        return TextConditioning(hidden, pooled)


def _token_ids(tokenizer, texts: list[str], device) -> torch.Tensor:
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return tokens.input_ids.to(device)


def encode_prompts(models, texts: list[str], device) -> TextConditioning:
    """The text conditioning of ``texts`` (``models``: :class:`ieiw.model.build.Models`)."""
    if models.text_encoder_2 is None:
        ids = _token_ids(models.tokenizer, texts, device)
        return TextConditioning(models.text_encoder(ids, return_dict=False)[0])
    hidden, pooled = [], None
    for tokenizer, encoder in (
        (models.tokenizer, models.text_encoder),
        (models.tokenizer_2, models.text_encoder_2),
    ):
        out = encoder(_token_ids(tokenizer, texts, device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: the pooled, projected text embedding
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    if pooled is None:
        raise ValueError(
            "the second text encoder gave no pooled output: is it a CLIPTextModelWithProjection?"
        )
    return TextConditioning(torch.cat(hidden, dim=-1), pooled)


def null_conditioning(models, device) -> TextConditioning:
    """The one-row conditioning of "no text", as the saved pipeline gives it at inference."""
    empty = encode_prompts(models, [""], device)
    if models.is_sdxl and models.force_zeros_for_empty_prompt:
        return TextConditioning(torch.zeros_like(empty.hidden), torch.zeros_like(empty.pooled))
    return empty


def size_ids(batch: dict, latents: torch.Tensor, vae_factor: int, device) -> torch.Tensor:
    """Each sample's six SDXL size and crop ids (B, 6): the data's, or for a batch without them (synthetic
    latents) an uncropped image of the latents' size, as the pipeline assumes at inference."""
    if SIZE_COND in batch:
        return torch.as_tensor(batch[SIZE_COND], device=device).float()
    h, w = (int(v) * vae_factor for v in latents.shape[-2:])
    row = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32, device=device)
    return row.expand(latents.shape[0], 6)
