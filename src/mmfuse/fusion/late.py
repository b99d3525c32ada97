"""Late (decision-level) fusion: an ensemble of per-input heads."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .._names import InputModuleDict
from ..errors import MmfuseError
from ._base import Fusion, register_fusion


@register_fusion("late")
class LateFusion(Fusion):
    """Late fusion: a head per input, logits combined by mean, fixed weights or a learned stacker.

    Each input m has its own head ``y_m = MLP_m(x_m)`` (the task's logits). Absent inputs
    are left out of the combination:

    - ``mean``:     ``y = Σ_m p_m y_m / Σ_m p_m``
    - ``weighted``: ``y = Σ_m w_m p_m y_m / Σ_m w_m p_m`` with fixed ``weights``
    - ``stacker``:  ``y = A [p_1 y_1; …; p_M y_M; p_1 … p_M] + c`` (learned; stacked generalization, Wolpert 1992)

    Returns logits, so the model adds no head (``dim`` is the number of outputs).
    """

    produces_logits = True

    def __init__(self, input_dims, dim: int = 2, combine: str = "mean", hidden: int = 128, dropout: float = 0.1,
                 weights: Mapping[str, float] | Sequence[float] | None = None):
        super().__init__(input_dims, dim)
        if combine not in ("mean", "weighted", "stacker"):
            raise MmfuseError(f"late fusion: combine must be 'mean', 'weighted' or 'stacker', got {combine!r}")
        self.combine = combine
        # a stacker mixes the heads' logits even when one input is absent: it falls back on no single head
        self.has_unimodal_heads = combine != "stacker"
        self.heads = InputModuleDict({n: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout),
                                                       nn.Linear(hidden, dim)) for n, d in self.input_dims.items()})
        M = len(self.names)
        self.stacker = nn.Linear(M * dim + M, dim) if combine == "stacker" else None
        if combine == "weighted":
            if weights is None:
                raise MmfuseError("late fusion with combine='weighted' needs weights")
            w = [weights[n] for n in self.names] if isinstance(weights, Mapping) else list(weights)
            if len(w) != M or any(x < 0 for x in w) or sum(w) <= 0:
                raise MmfuseError(f"late fusion: weights must be {M} non-negative numbers for {self.names}, got {weights!r}")
            self.register_buffer("weights", torch.tensor(w, dtype=torch.float32))
        else:
            self.register_buffer("weights", torch.ones(M))

    def per_input_logits(self, feats) -> torch.Tensor:
        return torch.stack([self.heads[n](feats[n]) for n in self.names], dim=1)  # (B, M, K)

    def unimodal_logits(self, feats) -> dict:
        return {n: self.heads[n](feats[n]) for n in self.names}

    def forward(self, feats, masks, tokens=None):
        feats = self.masked(feats, masks)
        y = self.per_input_logits(feats)  # (B, M, K)
        p = self.stack_masks(masks)  # (B, M)
        if self.stacker is not None:
            return self.stacker(torch.cat([(y * p.unsqueeze(-1)).flatten(1), p], dim=1))
        w = self.weights[None] * p  # (B, M)
        w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
        return (w.unsqueeze(-1) * y).sum(1)  # (B, K)
