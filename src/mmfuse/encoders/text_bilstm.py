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

    def encode_fixed(self, x):
        """:meth:`encode` without packing or trimming (for export): T is the input's width L, and the
        backward direction reads each row's tokens reversed within its own length (a gather), so that
        padding at the end never reaches the valid positions, as with a packed sequence. Padded
        positions are zeros, as :func:`pad_packed_sequence` leaves them."""
        L = x.shape[1]
        lengths = (x != 0).sum(1).clamp_min(1)  # (b,)
        pos = torch.arange(L, device=x.device)[None]  # (1, L)
        mask = pos < lengths[:, None]  # (b, L)
        rev = torch.where(mask, lengths[:, None] - 1 - pos, pos)  # (b, L): reverses the valid part only
        h = self.drop(self.embed(x))  # (b, L, E)
        for layer in range(self.lstm.num_layers):
            idx = rev.unsqueeze(-1).expand(-1, -1, h.shape[-1])
            back = self._direction(torch.gather(h, 1, idx), layer, "_reverse")  # (b, L, H)
            back = torch.gather(back, 1, rev.unsqueeze(-1).expand(-1, -1, back.shape[-1]))
            h = torch.cat([self._direction(h, layer, ""), back], dim=-1)  # (b, L, 2H)
        m = mask.unsqueeze(-1).to(h.dtype)
        h = h * m
        mean = h.sum(1) / m.sum(1)
        mx = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        pooled = self.pool(self.drop(torch.cat([mean, mx], dim=1)))
        return pooled, self.tok(h), mask

    def _direction(self, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
        """One direction of one layer of :attr:`lstm` over ``x`` ``(b, L, in)``: its outputs ``(b, L, H)``
        (the functional LSTM that ``nn.LSTM`` calls, with that direction's weights)."""
        src = self.lstm
        weights = [getattr(src, f"{w}_l{layer}{suffix}") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h0 = x.new_zeros(1, x.shape[0], src.hidden_size)
        return torch._VF.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0]
