"""The fusion contract and registry.

A fusion takes, for the inputs of a batch (names sorted once, for determinism):

- ``feats``: ``{name: [B, D_m]}`` pooled encoder outputs (zeros where absent),
- ``masks``: ``{name: BoolTensor [B]}``, True where the input is present,
- ``tokens`` (optional): ``{name: ([B, T_m, E_m], BoolTensor [B, T_m])}`` for encoders that have them;
  the token width ``E_m`` may differ from ``D_m`` (a CLIP tower: pooled ``projection_dim``,
  tokens ``hidden_size``), and fusions that use tokens are told it (``token_dims``),

and returns ``[B, D]`` with ``D = output_dim``. Every strategy handles absent inputs; a row
where every input is absent gets a finite output. Fusions with ``produces_logits = True``
(late fusion) return the task's logits directly and the model adds no head. Input names can
be any string: modules kept per input live in an :class:`~mmfuse._names.InputModuleDict`
(stored under safe keys).
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


def create_fusion(name: str, input_dims: Mapping[str, int], dim: int = 128,
                  token_dims: Mapping[str, int] | None = None, **kwargs) -> "Fusion":
    """Create a registered fusion for inputs of the given widths. Unknown names list the known ones.

    ``token_dims``: the token width of each input whose encoder has tokens, where it differs
    from the pooled width; passed on to fusions that use tokens."""
    cls = FUSIONS.get(name)
    if cls.uses_tokens and token_dims is not None:
        kwargs["token_dims"] = dict(token_dims)
    return cls(input_dims=dict(input_dims), dim=dim, **kwargs)


def list_fusions(automatic: bool = False) -> list[str]:
    """The fusions a user chooses from; ``automatic=True`` adds those mmfuse picks itself (``single``)."""
    return [n for n in FUSIONS.names() if automatic or not FUSIONS.get(n).automatic]


def describe_fusions() -> dict[str, str]:
    """Name -> the first line of the strategy's docstring (the fusions a user chooses from)."""
    return {n: (FUSIONS.get(n).__doc__ or "").strip().splitlines()[0] for n in list_fusions()}


class Fusion(nn.Module):
    """Base class: stores the sorted input names and their widths.

    Args:
        input_dims: Input name -> pooled width D_m.
        dim: Output width D (the number of logits for fusions that produce logits).
        token_dims: Input name -> token width E_m (default: D_m); only fusions that use tokens take it.
    """

    produces_logits: ClassVar[bool] = False
    uses_tokens: ClassVar[bool] = False
    has_unimodal_heads: bool = False  # :meth:`unimodal_logits` returns the logits the fusion falls back on
    automatic: ClassVar[bool] = False  # chosen by mmfuse itself, not offered to users (``single``)

    def __init__(self, input_dims: Mapping[str, int], dim: int, token_dims: Mapping[str, int] | None = None):
        super().__init__()
        self.names = sorted(input_dims)
        self.input_dims = {n: int(input_dims[n]) for n in self.names}
        self.token_dims = {n: int((token_dims or {}).get(n, self.input_dims[n])) for n in self.names}
        self.output_dim = dim

    def unimodal_logits(self, feats: Mapping[str, torch.Tensor]) -> dict | None:
        """Input name -> that input's own logits ``[B, K]`` when the fusion has a head per input
        (late fusion), else None. The auxiliary unimodal losses then train these heads, the
        ones the fusion falls back on when the other inputs are absent, instead of extra heads."""
        return None

    def masked(self, feats: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict:
        """Features with absent rows zeroed, so nothing leaks from them whatever an encoder returned."""
        return {n: feats[n] * masks[n].unsqueeze(1).to(feats[n].dtype) for n in self.names}

    def sequence(self, n: str, proj: nn.Module, feats, masks, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ``n`` as a projected token sequence ``(B, T, D)`` and its padding mask ``(B, T)``
        (True = ignore), for fusions that attend over tokens; ``proj`` maps width E_n to D.

        Without tokens: the pooled vector as one token when it is E_n wide; otherwise (an
        input whose encoder has tokens, absent in every row of the batch, so the encoder
        never ran) one zero token, masked."""
        tok = tokens.get(n) if tokens else None
        if tok is not None and tok[0] is not None:
            x, tmask = tok  # (B, T, E_n), (B, T)
            return proj(x), ~(tmask & masks[n].unsqueeze(1))
        x = feats[n]  # (B, D_n)
        if self.token_dims[n] != self.input_dims[n]:
            if bool(masks[n].any()):
                raise ValueError(f"{type(self).__name__}: input {n!r} is present but has no tokens, and its "
                                 f"tokens ({self.token_dims[n]} wide) differ from its pooled output "
                                 f"({self.input_dims[n]} wide)")
            x = x.new_zeros(x.shape[0], self.token_dims[n])
        return proj(x).unsqueeze(1), ~masks[n].unsqueeze(1)  # (B, 1, D), (B, 1)

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
