"""Contrastive alignment of two inputs in one space (issue 13; the loss only, so far).

:class:`ClipLoss` is the symmetric InfoNCE objective of CLIP (Radford et al. 2021): for a batch of rows
with embeddings ``a_i`` and ``b_i`` of two inputs, L2-normalised, the logits are ``s · a_i · b_j`` with a
learnable scale ``s = exp(t)`` (the inverse temperature, initialised to 1/0.07 and clamped at 100, as
CLIP does), and the loss is the mean of the cross-entropy of each row of ``a`` over the ``b``'s (the
matching one is the target) and of each ``b`` over the ``a``'s. The other rows of the batch are the
negatives. Rows where either input is absent are left out of the pair's loss entirely (neither as a
positive nor as a negative).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipLoss"]


class ClipLoss(nn.Module):
    """Symmetric InfoNCE with a learnable temperature.

    Args:
        init_temperature: The temperature ``1 / s`` to start from.
        max_scale: The largest scale ``s`` allowed (CLIP: 100), for stability.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature!r}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, a: torch.Tensor, b: torch.Tensor, present_a: torch.Tensor | None = None,
                present_b: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of embeddings ``a`` ``[B, D]`` and ``b`` ``[B, D]`` (row i of each is a pair).

        ``present_a``/``present_b`` (bool ``[B]``): rows where an input is absent are left out. With
        fewer than two rows left there are no negatives: the loss is 0 (still connected to the graph)."""
        keep = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
        if present_a is not None:
            keep = keep & present_a.bool()
        if present_b is not None:
            keep = keep & present_b.bool()
        if int(keep.sum()) < 2:
            return (a.sum() + b.sum()) * 0.0 + self.log_scale * 0.0
        a, b = F.normalize(a[keep], dim=-1), F.normalize(b[keep], dim=-1)
        logits = self.scale * a @ b.t()  # (n, n)
        target = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
