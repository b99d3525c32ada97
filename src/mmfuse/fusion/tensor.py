"""Tensor fusion and its low-rank factorization."""
from __future__ import annotations


import torch
from torch import nn

from .._names import InputModuleDict, safe_key
from ..errors import MmfuseError
from ._base import Fusion, register_fusion


def _with_one(x: torch.Tensor) -> torch.Tensor:
    """``[x; 1]``: the appended 1 keeps every lower-order (unimodal, bimodal) term in the product."""
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


@register_fusion("tensor")
class TensorFusion(Fusion):
    """Tensor Fusion Network (Zadeh et al. 2017): the outer product of ``[h_m; 1]`` over all inputs.

    ``h_m = W_m x_m`` (width ``rank_dim``); ``Z = ⊗_m [h_m; 1]`` has ``Π_m (d + 1)`` entries;
    ``out = MLP(vec(Z))``. An absent input has ``h_m = 0``, so only the terms without it remain.
    When ``Π_m (d + 1)`` exceeds ``max_size`` a clear error suggests ``low_rank``.
    """

    def __init__(self, input_dims, dim: int = 128, rank_dim: int = 16, hidden: int = 128, dropout: float = 0.1,
                 max_size: int = 2 ** 20):
        super().__init__(input_dims, dim)
        size = (rank_dim + 1) ** len(self.names)
        if size > max_size:
            raise MmfuseError(
                f"tensor fusion of {len(self.names)} inputs with rank_dim={rank_dim} needs an outer product of "
                f"{size:,} entries per row (> max_size={max_size:,}); use fusion 'low_rank', which factorizes the "
                f"same product, or lower rank_dim (e.g. {max(1, int(max_size ** (1 / len(self.names))) - 1)})")
        self.proj = InputModuleDict({n: nn.Linear(d, rank_dim) for n, d in self.input_dims.items()})
        self.mlp = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def outer(self, feats, masks) -> torch.Tensor:
        B = feats[self.names[0]].shape[0]
        z = None
        for n in self.names:
            zm = _with_one(self.proj[n](feats[n]) * masks[n].unsqueeze(1).float())  # (B, d+1)
            z = zm if z is None else (z.unsqueeze(2) * zm.unsqueeze(1)).reshape(B, -1)  # (B, Π (d+1))
        return z

    def forward(self, feats, masks, tokens=None):
        feats = self.masked(feats, masks)
        return self.mlp(self.outer(feats, masks))


@register_fusion("low_rank")
class LowRankFusion(Fusion):
    """Low-rank Multimodal Fusion (Liu et al. 2018): tensor fusion with rank-r factorized weights.

    ``out = Σ_{i=1..r} λ_i · ⊙_m (W_m^{(i)} [x_m; 1]) + b`` with ``W_m^{(i)} ∈ R^{D×(D_m+1)}``.
    This equals a linear map of the full outer product ``⊗_m [x_m; 1]`` whose weight tensor
    has rank r, at a cost linear in the number of inputs. Every factor is a registered
    ``nn.Parameter`` (a public implementation keeps them in a plain list, so they never train).
    An absent input contributes ``W_m^{(i)} [0; 1]``, its factor's last column.
    """

    def __init__(self, input_dims, dim: int = 128, rank: int = 4):
        super().__init__(input_dims, dim)
        self.rank = rank
        self.factors = nn.ParameterDict({  # safe_key(input) -> (r, D_m+1, D)
            safe_key(n): nn.Parameter(torch.empty(rank, d + 1, dim)) for n, d in self.input_dims.items()})
        self.rank_weights = nn.Parameter(torch.empty(1, rank))
        self.bias = nn.Parameter(torch.zeros(1, dim))
        for f in self.factors.values():
            nn.init.xavier_normal_(f)
        nn.init.xavier_normal_(self.rank_weights)

    def forward(self, feats, masks, tokens=None):
        feats = self.masked(feats, masks)
        prod = None
        for n in self.names:
            zm = _with_one(feats[n] * masks[n].unsqueeze(1).float())  # (B, D_m+1)
            fm = torch.einsum("bk,rkd->rbd", zm, self.factors[safe_key(n)])  # (r, B, D)
            prod = fm if prod is None else prod * fm
        return torch.einsum("or,rbd->bd", self.rank_weights, prod) + self.bias  # (B, D)
