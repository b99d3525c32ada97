"""MulT-style pairwise cross-modal attention."""
from __future__ import annotations

import torch
from torch import nn

from .._names import InputModuleDict, safe_key
from ..errors import MmfuseError
from ._base import Fusion, register_fusion


class CrossBlock(nn.Module):
    """Queries from one input attend to another's tokens plus a learned null token (so a row
    whose source is absent attends to the null token instead of producing NaN)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.null = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(2 * dim, dim))

    def forward(self, q, kv, kv_pad):
        B = q.shape[0]
        kv = torch.cat([self.null.expand(B, 1, -1), kv], 1)  # (B, 1 + T_kv, D)
        kv_pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=q.device), kv_pad], 1)
        k = self.norm_kv(kv)
        h = q + self.attn(self.norm_q(q), k, k, key_padding_mask=kv_pad, need_weights=False)[0]
        return h + self.ff(h)


@register_fusion("cross_attention")
class CrossAttentionFusion(Fusion):
    """Pairwise cross-modal attention (Tsai et al. 2019, MulT) over token sequences.

    For every ordered pair (α, β), α's tokens attend to β's: ``h_{β→α} = CrossAttn(Q=α, K=V=β)``
    (pre-norm, residual, feed-forward). Each target α pools ``mean_j [h_{β→α}]_j`` over its
    valid tokens and sources β; ``out = W [p_1 s_1; …; p_M s_M; p_1 … p_M]``. Inputs whose
    encoder has no tokens use their pooled vector as a one-token sequence. Absent sources
    are masked; a learned null key keeps attention defined when every source is absent.
    ``W_m`` reads the token width ``E_m`` (``token_dims``; CLIP towers: ``hidden_size``, not
    the pooled ``projection_dim``).
    """

    uses_tokens = True

    def __init__(self, input_dims, dim: int = 128, heads: int = 4, dropout: float = 0.1, token_dims=None):
        super().__init__(input_dims, dim, token_dims)
        if dim % heads:
            raise MmfuseError(f"cross_attention fusion: dim={dim} must be divisible by heads={heads}")
        self.proj = InputModuleDict({n: nn.Linear(self.token_dims[n], dim) for n in self.names})  # E_m -> D
        # keys "α->β"; safe keys contain no '>', so the pair is read back unambiguously
        self.blocks = nn.ModuleDict({self._pair(a, b): CrossBlock(dim, heads, dropout)
                                     for a in self.names for b in self.names if a != b})
        M = len(self.names)
        self.single = M == 1
        self.out = nn.Linear(M * dim + M, dim)

    @staticmethod
    def _pair(src: str, dst: str) -> str:
        return f"{safe_key(src)}->{safe_key(dst)}"

    def forward(self, feats, masks, tokens=None):
        feats = self.masked(feats, masks)
        seqs = {n: self.sequence(n, self.proj[n], feats, masks, tokens) for n in self.names}
        p = self.stack_masks(masks)  # (B, M)
        pooled = []
        for a in self.names:
            q, q_pad = seqs[a]
            valid = (~q_pad).unsqueeze(-1).float()  # (B, T_a, 1)
            outs = [q] if self.single else [self.blocks[self._pair(b, a)](q, *seqs[b]) for b in self.names if b != a]
            h = torch.stack(outs, 0).mean(0)  # (B, T_a, D)
            pooled.append((h * valid).sum(1) / valid.sum(1).clamp_min(1.0))  # (B, D)
        parts = [s * p[:, i:i + 1] for i, s in enumerate(pooled)]
        return self.out(torch.cat(parts + [p], 1))
