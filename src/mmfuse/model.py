"""The model: encoders -> fusion -> head, with modality dropout and auxiliary unimodal heads."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ._names import InputModuleDict
from .encoders import Encoder
from .fusion import Fusion

__all__ = ["MultimodalModel", "Head"]


class Head(nn.Sequential):
    """``Linear(D, hidden) -> ReLU -> Dropout -> Linear(hidden, K)``."""

    def __init__(self, dim: int, n_outputs: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_outputs))


class MultimodalModel(nn.Module):
    """``encoders -> fusion -> head``; parts are passed in, not built from a config blob.

    Input names can be any string (``Review.Text``, ``a/b``, ``type``): modules are stored
    under :func:`mmfuse._names.safe_key` of each name, and everything else, ``names``
    included, uses the names themselves.

    Args:
        encoders: Input name -> encoder.
        fusion: A fusion over exactly those inputs.
        head: Maps the fused ``[B, D]`` to logits; None when the fusion produces logits (late).
        aux_heads: Input name -> head on that encoder's output alone (auxiliary unimodal losses).
        aux_from_fusion: Take the auxiliary logits from the fusion's own per-input heads
            (:meth:`Fusion.unimodal_logits`, late fusion) instead of ``aux_heads``.
        modality_dropout: During training, drop each input of each row with this probability
            (a row always keeps at least one of its present inputs).
    """

    def __init__(self, encoders: Mapping[str, Encoder], fusion: Fusion, head: nn.Module | None = None,
                 aux_heads: Mapping[str, nn.Module] | None = None, modality_dropout: float = 0.0,
                 aux_from_fusion: bool = False):
        super().__init__()
        self.names = sorted(encoders)
        if sorted(fusion.names) != self.names:
            raise ValueError(f"fusion inputs {fusion.names} differ from encoder inputs {self.names}")
        self.encoders = InputModuleDict({n: encoders[n] for n in self.names})
        self.fusion = fusion
        self.head = head
        self.aux_heads = InputModuleDict(aux_heads) if aux_heads else None
        self.modality_dropout = modality_dropout
        if aux_from_fusion and (aux_heads or not fusion.has_unimodal_heads):
            raise ValueError("aux_from_fusion needs a fusion with per-input heads and no aux_heads")
        self.aux_from_fusion = aux_from_fusion

    def drop_modalities(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Randomly mark present inputs absent, keeping at least one per row that had one."""
        p = torch.stack([masks[n] for n in self.names], 1)  # (B, M)
        keep = torch.rand(p.shape, device=p.device) >= self.modality_dropout
        dropped = p & keep
        none_left = p.any(1) & ~dropped.any(1)
        dropped[none_left] = p[none_left]
        return {n: dropped[:, i] for i, n in enumerate(self.names)}

    def forward(self, inputs: Mapping, masks: Mapping[str, torch.Tensor], absent: Sequence[str] = ()) -> dict:
        """Logits ``[B, K]`` (and ``aux``: per-input logits when auxiliary heads exist).

        Args:
            inputs: Input name -> batch tensor (or dict of tensors). Names missing here are absent.
            masks: Input name -> presence ``[B]``.
            absent: Inputs to treat as absent in every row (modality contribution analysis).
        """
        ref = next(iter(masks.values()))
        masks = {n: (masks[n] if n in masks and n not in absent else torch.zeros_like(ref)) for n in self.names}
        if self.training and self.modality_dropout > 0:
            masks = self.drop_modalities(masks)
        feats, tokens = {}, {}
        for n in self.names:
            if n in inputs:
                pooled, tok, tmask = self.encoders[n].forward_with_tokens(inputs[n], masks[n])
            else:
                pooled, tok, tmask = torch.zeros(ref.shape[0], self.encoders[n].output_dim, device=ref.device), None, None
            feats[n], tokens[n] = pooled, (tok, tmask)
        fused = self.fusion(feats, masks, tokens if self.fusion.uses_tokens else None)
        out = {"logits": fused if self.head is None else self.head(fused), "masks": masks}
        if self.aux_heads is not None:
            out["aux"] = {n: self.aux_heads[n](feats[n]) for n in self.names}
        elif self.aux_from_fusion:
            out["aux"] = self.fusion.unimodal_logits(feats)
        return out
