"""The LAION improved aesthetic predictor: an MLP on L2-normalised CLIP ViT-L/14 image embeddings.

The published checkpoint (``sac+logos+ava1-l14-linearMSE.pth``) is a plain state dict of a
``layers`` Sequential: Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1). It predicts a rating of roughly
1 to 10. :class:`AestheticPredictor` has the same layer names and shapes, so that state dict
loads as it is (strictly, with ``torch.load(weights_only=True)``; ``.safetensors`` also works).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ieiw.quality.fixed_batches import padded_rows

CLIP_L14_DIM = 768
HIDDEN = (1024, 128, 64, 16)
DROPOUTS = (0.2, 0.2, 0.1)
BATCH = 256  # rows per forward pass: one fixed shape for every call


class AestheticPredictor(nn.Module):
    """The improved aesthetic predictor's MLP (layer indices match the published state dict)."""

    def __init__(self, input_dim: int = CLIP_L14_DIM) -> None:
        super().__init__()
        h1, h2, h3, h4 = HIDDEN
        d1, d2, d3 = DROPOUTS
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, h1),
            nn.Dropout(d1),
            nn.Linear(h1, h2),
            nn.Dropout(d2),
            nn.Linear(h2, h3),
            nn.Dropout(d3),
            nn.Linear(h3, h4),
            nn.Linear(h4, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)

    @torch.inference_mode()
    def score(self, embeddings: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
        """Ratings of L2-normalised CLIP image embeddings ``(N, input_dim)``; returns ``(N,)`` float32.

        Every forward pass holds exactly ``batch_size`` rows (:mod:`ieiw.quality.fixed_batches`), so a
        rating does not depend on which embeddings were rated with it."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.input_dim:
            raise ValueError(
                f"the aesthetic head takes (N, {self.input_dim}) CLIP embeddings, got {embeddings.shape}; "
                "it was trained on CLIP ViT-L/14 image features"
            )
        device = next(self.parameters()).device
        out = []
        for block, real in padded_rows(embeddings, batch_size):
            out.append(self(torch.from_numpy(block).to(device)).float().cpu().numpy()[:real])
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def load_state_dict_safely(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor state dict from ``.safetensors`` or ``torch.load(weights_only=True)``; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_aesthetic_predictor(path: str | Path, device: str | torch.device = "cpu") -> AestheticPredictor:
    """Load the published (or a compatible) aesthetic head; the input size comes from the checkpoint."""
    state = load_state_dict_safely(path)
    first = state.get("layers.0.weight")
    if first is None:
        raise ValueError(f"{path} has no 'layers.0.weight': not an improved-aesthetic-predictor state dict")
    model = AestheticPredictor(input_dim=int(first.shape[1]))
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)
