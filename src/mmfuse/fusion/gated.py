"""Gated Multimodal Unit."""
from __future__ import annotations

import torch
from torch import nn

from .._names import InputModuleDict
from ._base import Fusion, masked_softmax, register_fusion


@register_fusion("gated")
class GatedFusion(Fusion):
    """Gated Multimodal Unit (Arevalo et al. 2017, "Gated Multimodal Units for Information Fusion"), N inputs.

    ``h_m = tanh(W_m x_m)``; gate logits ``g = W_z [x_1; …; x_M]`` reshaped to ``(M, D)``;
    ``z = softmax_m(g)`` per dimension over the present inputs; ``out = Σ_m z_m ⊙ h_m``.
    With two inputs, ``softmax`` over two gates is ``σ(g_1 − g_2)``, which is the GMU's
    ``h = z·h_v + (1 − z)·h_t`` with ``z = σ(W_z [x_v; x_t])``.
    """

    def __init__(self, input_dims, dim: int = 128):
        super().__init__(input_dims, dim)
        self.proj = InputModuleDict({n: nn.Linear(d, dim, bias=False) for n, d in self.input_dims.items()})
        self.gate = nn.Linear(sum(self.input_dims.values()), len(self.names) * dim)

    def forward(self, feats, masks, tokens=None):
        feats = self.masked(feats, masks)
        B = feats[self.names[0]].shape[0]
        h = torch.stack([torch.tanh(self.proj[n](feats[n])) for n in self.names], dim=1)  # (B, M, D)
        g = self.gate(torch.cat([feats[n] for n in self.names], dim=1)).view(B, len(self.names), -1)  # (B, M, D)
        z = masked_softmax(g, self.stack_masks(masks).unsqueeze(-1), dim=1)  # (B, M, D)
        return (z * h).sum(1)  # (B, D)
