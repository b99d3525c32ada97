"""A 2-D CNN over log-mel spectrograms."""
from __future__ import annotations

import torch
from torch import nn

from ._base import Encoder, register_encoder
from .image_cnn import conv_block, init_conv


@register_encoder("audio_cnn")
class AudioCNN(Encoder):
    """Conv blocks over ``(B, 1, n_mels, T)``; frequency is averaged out, leaving time tokens.

    Input: log-mel ``(B, n_mels, T)``. Tokens ``(B, T / 2^k, D)``; pooled = mean over time.

    Args:
        n_mels: Mel bands (only recorded; the network is size-agnostic).
        dim: D.
        widths: Channels of each block; each halves both axes.
        dropout: Dropout on the pooled output.
    """

    modality = "audio"

    def __init__(self, n_mels: int = 64, dim: int = 128, widths=(32, 64, 128), dropout: float = 0.0):
        super().__init__()
        chans = [1, *widths]
        self.n_mels = n_mels
        self.blocks = nn.Sequential(*[conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.proj = nn.Linear(widths[-1], dim)
        self.drop = nn.Dropout(dropout)
        self.output_dim = dim
        init_conv(self)

    @classmethod
    def preprocessor_kwargs(cls, preprocessor):
        return dict(n_mels=preprocessor.n_mels)

    def encode(self, x):
        f = self.blocks(x.unsqueeze(1))  # (b, W, n_mels/2^k, T/2^k)
        tokens = self.proj(f.mean(2).transpose(1, 2))  # (b, T', D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
        return self.drop(tokens.mean(1)), tokens, mask
