"""A small image CNN trained from scratch."""
from __future__ import annotations

import torch
from torch import nn

from ._base import Encoder, register_encoder


class HalvingPool(nn.Module):
    """2x2 max-pool that leaves a side of 1 pixel as it is (``nn.MaxPool2d(2)`` would make it 0 and
    fail), so that a thin input (a 128x8 image, a short spectrogram) passes every block.
    Identical to ``nn.MaxPool2d(2)`` on sides >= 2; it has no parameters."""

    def forward(self, x):  # (B, C, H, W) -> (B, C, H // 2 or 1, W // 2 or 1)
        h, w = x.shape[-2:]
        k = (2 if h > 1 else 1, 2 if w > 1 else 1)
        return nn.functional.max_pool2d(x, k) if k != (1, 1) else x


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # BatchNorm trains several times faster here than GroupNorm; it is safe with missing
    # inputs because absent rows never reach the encoder, so they never enter its statistics.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), HalvingPool())


def init_conv(module: nn.Module) -> None:
    """He initialization for ReLU conv nets (as torchvision's ResNets); PyTorch's default
    under-scales deep ReLU stacks and training then idles for epochs before it starts."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_encoder("image_cnn")
class ImageCNN(Encoder):
    """Conv blocks (two 3x3 convs, BatchNorm, ReLU, 2x2 max-pool each), then a 1x1 projection.

    Input ``(B, C, H, W)``, any H and W (a side of 1 is no longer halved); tokens are the final
    feature map's cells ``(B, (H/2^k)(W/2^k), D)``, pooled is their mean.

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
        init_conv(self)

    @classmethod
    def preprocessor_kwargs(cls, preprocessor):
        return dict(in_channels=preprocessor.channels)

    def encode(self, x):
        f = self.proj(self.blocks(x))  # (b, D, h, w)
        tokens = f.flatten(2).transpose(1, 2)  # (b, h*w, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
        return self.drop(tokens.mean(1)), tokens, mask
