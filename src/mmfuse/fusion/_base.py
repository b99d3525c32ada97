"""The fusion contract and registry.

A fusion takes, for the inputs of a batch (names sorted once, for determinism):

- ``feats``: ``{name: [B, D_m]}`` pooled encoder outputs (zeros where absent),
- ``masks``: ``{name: BoolTensor [B]}``, True where the input is present,
- ``tokens`` (optional): ``{name: ([B, T_m, D_m], BoolTensor [B, T_m])}`` for encoders that have them,

and returns ``[B, D]`` with ``D = output_dim``. Every strategy handles absent inputs; a row
where every input is absent gets a finite output. Fusions with ``produces_logits = True``
(late fusion) return the task's logits directly and the model adds no head.
"""
from __future__ import annotations

from typing import ClassVar, Mapping

import torch
from torch import nn

from .._registry import Registry

FUSIONS: Registry[type] = Registry("fusion")

__all__ = ["Fusion", "register_fusion", "create_fusion", "list_fusions", "describe_fusions", "FUSIONS"]


def register_fusion(name: str):
    """Class decorator: make a :class:`Fusion` creatable by name."""
    return FUSIONS.register(name)


def create_fusion(name: str, input_dims: Mapping[str, int], dim: int = 128, **kwargs) -> "Fusion":
    """Create a registered fusion for inputs of the given widths. Unknown names list the known ones."""
    return FUSIONS.get(name)(input_dims=dict(input_dims), dim=dim, **kwargs)


def list_fusions() -> list[str]:
    return FUSIONS.names()


def describe_fusions() -> dict[str, str]:
    """Name -> the first line of the strategy's docstring."""
    return {n: (FUSIONS.get(n).__doc__ or "").strip().splitlines()[0] for n in FUSIONS.names()}


class Fusion(nn.Module):
    """Base class: stores the sorted input names and their widths.

    Args:
        input_dims: Input name -> pooled width D_m.
        dim: Output width D (the number of logits for fusions that produce logits).
    """

    produces_logits: ClassVar[bool] = False
    uses_tokens: ClassVar[bool] = False

    def __init__(self, input_dims: Mapping[str, int], dim: int):
        super().__init__()
        self.names = sorted(input_dims)
        self.input_dims = {n: int(input_dims[n]) for n in self.names}
        self.output_dim = dim

    def masked(self, feats: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict:
        """Features with absent rows zeroed, so nothing leaks from them whatever an encoder returned."""
        return {n: feats[n] * masks[n].unsqueeze(1).to(feats[n].dtype) for n in self.names}

    def stack_masks(self, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, M)`` float presence matrix in sorted input order."""
        return torch.stack([masks[n] for n in self.names], dim=1).float()

    def extra_repr(self) -> str:
        return f"inputs={self.names}, output_dim={self.output_dim}"


def masked_softmax(logits: torch.Tensor, present: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` restricted to present entries; all-absent slices give zeros, not NaN."""
    logits = logits.masked_fill(present == 0, float("-inf"))
    w = torch.softmax(logits, dim=dim)
    return torch.nan_to_num(w, nan=0.0)
