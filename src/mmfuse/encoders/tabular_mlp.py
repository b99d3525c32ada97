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
    """``x = [num; embed(cat_1); ...; embed(cat_k)] -> (Linear, LayerNorm, ReLU, Dropout) x n -> Linear``,
    plus ``Linear(x)`` when ``linear_skip``.

    When the table's numbers and categories are a model's only input, the encoder has no hidden layer
    (:meth:`alone_kwargs`): it is linear, ``W_1 x + W_2 x`` (the MLP's one layer and the skip; kept as two
    maps because that parameterization is the one measured), and the head is the non-linear part.

    The linear skip path (the "wide" part of wide-and-deep) lets the encoder pass a linear function
    of the columns straight through, so that on a few hundred rows, where a linear model is often
    the best one, the model does not have to find it through the hidden layers.

    Input: ``{"num": (B, 2 * n_numeric), "cat": (B, n_categorical)}``. No token sequence.

    Args:
        n_numeric: Numeric columns (the input has values and missing indicators).
        cardinalities: Embedding rows per categorical column (buckets included).
        dim: D.
        hidden: Hidden layer widths.
        dropout: Dropout after each hidden layer.
        linear_skip: Add a linear map of the input to the output. New models get it (see
            :meth:`preprocessor_kwargs`); the constructor's default stays False so that bundles
            saved without it load unchanged.
    """

    modality = "tabular"
    has_tokens = False

    def __init__(self, n_numeric: int = 0, cardinalities=(), dim: int = 64, hidden=(128,), dropout: float = 0.1,
                 linear_skip: bool = False):
        super().__init__()
        self.n_numeric = n_numeric
        self.embeds = nn.ModuleList(nn.Embedding(c, embedding_dim(c)) for c in cardinalities)
        width = 2 * n_numeric + sum(e.embedding_dim for e in self.embeds)
        self.skip = nn.Linear(width, dim) if linear_skip else None
        layers = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        self.output_dim = dim

    @classmethod
    def preprocessor_kwargs(cls, preprocessor):
        # linear_skip: the default of every model built from now on (a user's encoder option overrides it)
        return dict(n_numeric=preprocessor.n_numeric, cardinalities=preprocessor.cardinalities, linear_skip=True)

    @classmethod
    def alone_kwargs(cls):
        # the only input: the head on top is an MLP already. On the small tables of benchmarks/bench_defaults.py
        # this matched or beat the MLP encoder (breast cancer +0.6 points; results/defaults.json). In fused models
        # the hidden layer stays: without it the demo's tensor and low-rank fusions lost 10 points, as their
        # products of inputs then see only a linear map of the columns
        return {"hidden": ()}

    def encode(self, x):
        parts = [x["num"]] if self.n_numeric else []
        parts += [e(x["cat"][:, j]) for j, e in enumerate(self.embeds)]
        x = torch.cat(parts, dim=1)  # (B, width)
        out = self.mlp(x)  # (B, D)
        return (out if self.skip is None else out + self.skip(x)), None, None
