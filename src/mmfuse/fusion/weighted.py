"""Weighted (alpha) fusion."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .._names import InputModuleDict
from ..errors import MmfuseError
from ._base import Fusion, register_fusion


@register_fusion("weighted")
class WeightedFusion(Fusion):
    """Convex combination of projected inputs, fixed or learned weights (x = α·x_img + (1−α)·x_txt, N inputs).

    ``h_m = W_m x_m + b_m`` projects every input to D. With weights ``w`` (fixed, or
    ``softmax(θ)`` of learned logits θ), each row combines the inputs present in it::

        out_b = Σ_m  w_m · p_bm · h_bm  /  Σ_m w_m · p_bm        (p_bm = 1 if present)

    With two inputs and fixed weights (α, 1−α) this is the classic weighted fusion of an
    image and a text feature. A row with no input present gives zeros.

    Args:
        weights: Fixed weights per input (a mapping or a sequence in sorted-name order),
            normalized to sum to 1; ``None`` learns them.
    """

    def __init__(self, input_dims, dim: int = 128, weights: Mapping[str, float] | Sequence[float] | None = None):
        super().__init__(input_dims, dim)
        self.proj = InputModuleDict({n: nn.Linear(d, dim) for n, d in self.input_dims.items()})
        if weights is None:
            self.logits = nn.Parameter(torch.zeros(len(self.names)))
            self.register_buffer("fixed", None)
        else:
            w = [weights[n] for n in self.names] if isinstance(weights, Mapping) else list(weights)
            if len(w) != len(self.names) or any(x < 0 for x in w) or sum(w) <= 0:
                raise MmfuseError(f"weighted fusion: weights must be {len(self.names)} non-negative numbers for "
                                  f"inputs {self.names}, got {weights!r}")
            self.logits = None
            self.register_buffer("fixed", torch.tensor(w, dtype=torch.float32) / sum(w))

    def modality_weights(self) -> dict[str, float]:
        """The global weight of each input (before renormalization per row)."""
        w = self.fixed if self.fixed is not None else torch.softmax(self.logits, 0)
        return {n: float(v) for n, v in zip(self.names, w.detach())}

    def forward(self, feats, masks, tokens=None):
        feats = self.masked(feats, masks)
        h = torch.stack([self.proj[n](feats[n]) for n in self.names], dim=1)  # (B, M, D)
        w = self.fixed if self.fixed is not None else torch.softmax(self.logits, 0)  # (M,)
        wp = w[None] * self.stack_masks(masks)  # (B, M)
        wp = wp / wp.sum(1, keepdim=True).clamp_min(1e-12)
        return (wp.unsqueeze(-1) * h).sum(1)  # (B, D)
