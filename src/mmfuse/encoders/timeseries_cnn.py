"""A 1-D CNN over multichannel time series, with an optional GRU on top."""
from __future__ import annotations

import torch
from torch import nn

from ._base import Encoder, register_encoder
from .image_cnn import init_conv


@register_encoder("timeseries_cnn")
class TimeseriesCNN(Encoder):
    """``(Conv1d k=5, BatchNorm, ReLU, MaxPool 2) x n``, optionally a bidirectional GRU, then Linear.

    Input ``(B, C, L)``; tokens ``(B, L / 2^n, D)``; pooled = mean over time.

    Args:
        in_channels: C.
        dim: D.
        widths: Channels of each conv block.
        gru: Add a bidirectional GRU over the conv features (CNN-LSTM style).
        dropout: Dropout on the pooled output.
    """

    modality = "timeseries"

    def __init__(self, in_channels: int, dim: int = 128, widths=(64, 64, 128), gru: bool = False,
                 dropout: float = 0.1):
        super().__init__()
        chans, blocks = [in_channels, *widths], []
        for a, b in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv1d(a, b, 5, padding=2, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True),
                       nn.MaxPool1d(2, ceil_mode=True)]
        self.blocks = nn.Sequential(*blocks)
        self.gru = nn.GRU(widths[-1], widths[-1] // 2, batch_first=True, bidirectional=True) if gru else None
        width = widths[-1] // 2 * 2 if gru else widths[-1]
        self.proj = nn.Linear(width, dim)
        self.drop = nn.Dropout(dropout)
        self.output_dim = dim
        init_conv(self)

    @classmethod
    def preprocessor_kwargs(cls, preprocessor):
        return dict(in_channels=preprocessor.n_channels)

    def encode(self, x):
        h = self.blocks(x).transpose(1, 2)  # (b, L', W)
        if self.gru is not None:
            h, _ = self.gru(h)  # (b, L', W)
        tokens = self.proj(h)  # (b, L', D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
        return self.drop(tokens.mean(1)), tokens, mask
