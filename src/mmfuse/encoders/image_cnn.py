"""A small image CNN trained from scratch."""
from __future__ import annotations

import torch
from torch import nn

from ._base import Encoder, register_encoder


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: statistics never mix rows (absent rows are not even encoded)
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(min(8, c_out), c_out),
                         nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                         nn.GroupNorm(min(8, c_out), c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2))


@register_encoder("image_cnn")
class ImageCNN(Encoder):
    """Conv blocks (two 3x3 convs, GroupNorm, ReLU, 2x2 max-pool each), then a 1x1 projection.

    Input ``(B, C, S, S)``; tokens are the final feature map's cells ``(B, (S/2^k)^2, D)``,
    pooled is their mean.

    Args:
        in_channels: C.
        dim: D.
        widths: Channels of each block; each halves the resolution.
        dropout: Dropout on the pooled output.
    """

    modality = "image"

    def __init__(self, in_channels: int = 3, dim: int = 128, widths=(32, 64, 128), dropout: float = 0.0):
        super().__init__()
        chans = [in_channels, *widths]
        self.blocks = nn.Sequential(*[conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.proj = nn.Conv2d(widths[-1], dim, 1)
        self.drop = nn.Dropout(dropout)
        self.output_dim = dim

    @classmethod
    def preprocessor_kwargs(cls, preprocessor):
        return dict(in_channels=preprocessor.channels)

    def encode(self, x):
        f = self.proj(self.blocks(x))  # (b, D, h, w)
        tokens = f.flatten(2).transpose(1, 2)  # (b, h*w, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
        return self.drop(tokens.mean(1)), tokens, mask
