"""A BiLSTM over learned word embeddings."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ._base import Encoder, register_encoder


@register_encoder("text_bilstm")
class TextBiLSTM(Encoder):
    """Embedding -> bidirectional LSTM -> tokens ``(B, T, D)``; pooled = Linear([masked mean; masked max]).

    Input: token ids ``(B, L)`` with 0 as padding. T is the longest row in the batch.

    Args:
        vocab_size: Embedding rows (id 0 is padding).
        embed_dim: Word embedding width.
        hidden: LSTM hidden size per direction.
        dim: D.
        layers: LSTM layers.
        dropout: Dropout on embeddings and outputs.
    """

    modality = "text"

    def __init__(self, vocab_size: int, embed_dim: int = 128, hidden: int = 128, dim: int = 128, layers: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.tok = nn.Linear(2 * hidden, dim)
        self.pool = nn.Linear(4 * hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.output_dim = dim

    @classmethod
    def preprocessor_kwargs(cls, preprocessor):
        return dict(vocab_size=preprocessor.vocab_size)

    def encode(self, x):
        lengths = (x != 0).sum(1).clamp_min(1)  # (b,)
        T = int(lengths.max())
        x = x[:, :T]
        e = self.drop(self.embed(x))  # (b, T, E)
        packed = pack_padded_sequence(e, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=T)  # (b, T, 2H)
        mask = torch.arange(T, device=x.device)[None] < lengths[:, None]  # (b, T)
        m = mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1)
        mx = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        pooled = self.pool(self.drop(torch.cat([mean, mx], dim=1)))
        return pooled, self.tok(h), mask
