"""Self-attention over modality tokens with a CLS token."""
from __future__ import annotations

import torch
from torch import nn

from .._names import InputModuleDict
from ..errors import MmfuseError
from ._base import Fusion, register_fusion


@register_fusion("attention")
class AttentionFusion(Fusion):
    """Transformer fusion: one token per input (or its encoder's tokens) plus CLS; out = CLS state.

    Tokens ``t_m = W_m x_m + e_m`` (``e_m`` a learned modality embedding), or with
    ``use_tokens=True`` every encoder token ``W_m x_{m,j} + e_m``. The sequence ``[CLS; t_1; …]``
    goes through a Transformer encoder (Vaswani et al. 2017) with absent inputs (and padded
    tokens) masked from attention; the output is the final CLS state. CLS is never masked,
    so a row with no input present still has a finite output.

    With tokens, ``W_m`` reads the token width ``E_m`` (``token_dims``), which may differ from
    the pooled width (CLIP towers).

    Args:
        heads, layers, dropout: Transformer encoder settings.
        use_tokens: Attend over encoder tokens where an encoder gives them.
        token_dims: Input name -> token width E_m (default: the pooled width).
    """

    uses_tokens = True

    def __init__(self, input_dims, dim: int = 128, heads: int = 4, layers: int = 2, dropout: float = 0.1,
                 use_tokens: bool = False, token_dims=None):
        super().__init__(input_dims, dim, token_dims if use_tokens else None)  # no tokens: one pooled token per input
        if dim % heads:
            raise MmfuseError(f"attention fusion: dim={dim} must be divisible by heads={heads}")
        self.use_tokens = use_tokens
        self.proj = InputModuleDict({n: nn.Linear(self.token_dims[n], dim) for n in self.names})  # E_m -> D
        self.modality = nn.Parameter(torch.randn(len(self.names), dim) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, feats, masks, tokens=None):
        feats = self.masked(feats, masks)
        B = feats[self.names[0]].shape[0]
        seq, pad = [self.cls.expand(B, 1, -1)], [torch.zeros(B, 1, dtype=torch.bool, device=self.cls.device)]
        for i, n in enumerate(self.names):
            x, x_pad = self.sequence(n, self.proj[n], feats, masks, tokens if self.use_tokens else None)
            seq.append(x + self.modality[i])  # (B, T_m, D)
            pad.append(x_pad)
        h = self.encoder(torch.cat(seq, 1), src_key_padding_mask=torch.cat(pad, 1))  # (B, 1 + ΣT, D)
        return self.norm(h[:, 0])
