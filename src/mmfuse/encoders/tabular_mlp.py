"""An MLP over standardized numbers, missing indicators and categorical embeddings."""
from __future__ import annotations

import torch
from torch import nn

from ._base import Encoder, register_encoder


def embedding_dim(cardinality: int) -> int:
    """fast.ai's rule of thumb, capped: min(32, round(1.6 * n^0.56))."""
    return max(2, min(32, round(1.6 * cardinality ** 0.56)))


@register_encoder("tabular_mlp")
class TabularMLP(Encoder):
    """``[num; embed(cat_1); ...; embed(cat_k)] -> (Linear, LayerNorm, ReLU, Dropout) x n -> Linear``.

    Input: ``{"num": (B, 2 * n_numeric), "cat": (B, n_categorical)}``. No token sequence.

    Args:
        n_numeric: Numeric columns (the input has values and missing indicators).
        cardinalities: Embedding rows per categorical column (buckets included).
        dim: D.
        hidden: Hidden layer widths.
        dropout: Dropout after each hidden layer.
    """

    modality = "tabular"
    has_tokens = False

    def __init__(self, n_numeric: int = 0, cardinalities=(), dim: int = 64, hidden=(128,), dropout: float = 0.1):
        super().__init__()
        self.n_numeric = n_numeric
        self.embeds = nn.ModuleList(nn.Embedding(c, embedding_dim(c)) for c in cardinalities)
        width = 2 * n_numeric + sum(e.embedding_dim for e in self.embeds)
        layers = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        self.output_dim = dim

    @classmethod
    def preprocessor_kwargs(cls, preprocessor):
        return dict(n_numeric=preprocessor.n_numeric, cardinalities=preprocessor.cardinalities)

    def encode(self, x):
        parts = [x["num"]] if self.n_numeric else []
        parts += [e(x["cat"][:, j]) for j, e in enumerate(self.embeds)]
        return self.mlp(torch.cat(parts, dim=1)), None, None
