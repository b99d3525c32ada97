"""The encoder contract and registry.

An encoder maps the batch tensor(s) of one input to ``[B, D]`` (``output_dim`` = D) and,
where it has one, a token sequence ``[B, T, E]`` with a token mask ``[B, T]`` for
attention-based fusion (``token_dim`` = E, usually D; a CLIP tower's pooled output is
``projection_dim`` wide, its tokens ``hidden_size``). Rows where the input is absent never
go through the network: only present rows are encoded, and absent rows get zeros (fusion
sees the mask).
"""
from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import nn

from .._registry import Registry

ENCODERS: Registry[type] = Registry("encoder")
DEFAULT_ENCODERS = {"text": "text_bilstm", "image": "image_cnn", "audio": "audio_cnn",
                    "tabular": "tabular_mlp", "timeseries": "timeseries_cnn"}

__all__ = ["Encoder", "register_encoder", "create_encoder", "list_encoders", "encoder_for", "DEFAULT_ENCODERS"]


def register_encoder(name: str):
    """Class decorator: make an :class:`Encoder` creatable by name."""
    return ENCODERS.register(name)


def create_encoder(name: str, **kwargs) -> "Encoder":
    """Create a registered encoder. Unknown names list the known ones."""
    return ENCODERS.create(name, **kwargs)


def list_encoders() -> list[str]:
    return ENCODERS.names()


def encoder_for(preprocessor, name: str | None = None, **kwargs) -> "Encoder":
    """The encoder for a fitted preprocessor; sizes (vocabulary, channels, ...) come from it."""
    name = name or DEFAULT_ENCODERS[preprocessor.modality]
    cls = ENCODERS.get(name)
    if cls.modality not in ("any", preprocessor.modality):
        from ..errors import MmfuseError

        raise MmfuseError(f"encoder {name!r} is for {cls.modality} inputs, but input {preprocessor.columns} is "
                          f"{preprocessor.modality}; choose one of "
                          f"{[n for n in ENCODERS.names() if ENCODERS.get(n).modality == preprocessor.modality]}")
    return cls.from_preprocessor(preprocessor, **kwargs)


def select(x, idx: torch.Tensor):
    """Rows ``idx`` of a tensor or of every tensor in a dict."""
    if isinstance(x, dict):
        return {k: v.index_select(0, idx) for k, v in x.items()}
    return x.index_select(0, idx)


def batch_size(x) -> int:
    return next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]


class Encoder(nn.Module):
    """Base class. Subclasses implement :meth:`encode` and :meth:`from_preprocessor`.

    Attributes:
        modality: ``text``, ``image``, ``audio``, ``tabular`` or ``timeseries``.
        output_dim: D, the width of the pooled output.
        token_dim: E, the width of the tokens; D unless the encoder sets it.
        has_tokens: Whether :meth:`encode` returns a token sequence.
    """

    modality: ClassVar[str]
    has_tokens: ClassVar[bool] = True
    output_dim: int
    _token_dim: int | None = None

    @property
    def token_dim(self) -> int:
        return self.output_dim if self._token_dim is None else self._token_dim

    @token_dim.setter
    def token_dim(self, value: int) -> None:
        self._token_dim = int(value)

    @abstractmethod
    def encode(self, x) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Encode present rows only: ``(pooled [b, D], tokens [b, T, E] | None, token_mask [b, T] | None)``."""

    @classmethod
    @abstractmethod
    def preprocessor_kwargs(cls, preprocessor) -> dict:
        """Constructor arguments that a fitted preprocessor determines (vocabulary size, channels, ...)."""

    @classmethod
    def alone_kwargs(cls) -> dict:
        """Defaults for a model whose only input this encoder reads (it feeds the head directly, with
        nothing to fuse); a user's encoder options override them. None by default."""
        return {}

    @classmethod
    def from_preprocessor(cls, preprocessor, **kwargs) -> "Encoder":
        """Build with sizes taken from a fitted preprocessor; ``kwargs`` set the rest."""
        return cls.from_config({**cls.preprocessor_kwargs(preprocessor), **kwargs})

    @classmethod
    def from_config(cls, config: dict) -> "Encoder":
        """Build from constructor arguments and remember them (``init_config``) for bundles."""
        enc = cls(**config)
        enc.init_config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
        return enc

    def encode_fixed(self, x) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`encode` with shapes that depend on the input's shape only, never on its values, so
        that it traces into an exported graph (:mod:`mmfuse.export`). The same outputs on valid
        positions; an encoder whose :meth:`encode` trims or packs by value overrides it."""
        return self.encode(x)

    def forward(self, x, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, D]``; rows with ``mask == False`` are zeros."""
        return self.forward_with_tokens(x, mask)[0]

    def forward_with_tokens(self, x, mask: torch.Tensor | None = None):
        """``(pooled [B, D], tokens [B, T, E] | None, token_mask [B, T] | None)``, absent rows zeroed."""
        B = batch_size(x)
        if mask is None or bool(mask.all()):
            return self.encode(x)
        idx = torch.nonzero(mask, as_tuple=False).squeeze(1)
        device = mask.device
        if len(idx) == 0:  # input absent in every row: nothing to run
            pooled = torch.zeros(B, self.output_dim, device=device)
            return pooled, None, None
        p, tok, tmask = self.encode(select(x, idx))
        pooled = p.new_zeros(B, p.shape[1]).index_copy(0, idx, p)
        if tok is not None:
            tok = tok.new_zeros(B, *tok.shape[1:]).index_copy(0, idx, tok)
            tmask = tmask.new_zeros(B, tmask.shape[1]).index_copy(0, idx, tmask)
        return pooled, tok, tmask

    def extra_repr(self) -> str:
        tokens = f", token_dim={self.token_dim}" if self.has_tokens and self.token_dim != self.output_dim else ""
        return f"output_dim={self.output_dim}{tokens}"
