"""Early (feature-level) fusion by concatenation."""
from __future__ import annotations

import torch
from torch import nn

from .._names import InputModuleDict
from ._base import Fusion, register_fusion


@register_fusion("concat")
class ConcatFusion(Fusion):
    """Early fusion: concatenate projected inputs and presence flags, then an MLP.

    ``out = MLP([p_1·W_1 x_1; …; p_M·W_M x_M; p_1 … p_M])`` with MLP = Linear, ReLU, Dropout,
    Linear. The presence flags let the MLP tell an absent input from a zero feature.

    Args:
        hidden: Width of the projections and of the MLP's hidden layer.
        dropout: Dropout in the MLP.
    """

    def __init__(self, input_dims, dim: int = 128, hidden: int = 128, dropout: float = 0.1):
        super().__init__(input_dims, dim)
        self.proj = InputModuleDict({n: nn.Linear(d, hidden) for n, d in self.input_dims.items()})
        M = len(self.names)
        self.mlp = nn.Sequential(nn.Linear(M * hidden + M, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, feats, masks, tokens=None):
        feats = self.masked(feats, masks)
        p = self.stack_masks(masks)  # (B, M)
        parts = [self.proj[n](feats[n]) * p[:, i:i + 1] for i, n in enumerate(self.names)]
        return self.mlp(torch.cat(parts + [p], dim=1))  # (B, D)
