"""One input: nothing to fuse."""
from __future__ import annotations

from torch import nn

from ..errors import MmfuseError
from ._base import Fusion, register_fusion


@register_fusion("single")
class SingleInput(Fusion):
    """One input, nothing to fuse: its encoder's output goes straight to the head (a linear map when widths differ).

    :func:`mmfuse.build_model` uses it for every model with one input, whatever ``fusion`` says: a
    fusion layer there would only add depth between the encoder and the head, and on a few hundred
    rows that depth costs accuracy (on 900 spoken digits, a concat layer made training unstable and
    cost 8 points; ``benchmarks/bench_defaults.py``). Absent rows give zeros.
    """

    automatic = True

    def __init__(self, input_dims, dim: int = 128):
        super().__init__(input_dims, dim)
        if len(self.names) != 1:
            raise MmfuseError(f"fusion 'single' takes exactly one input, got {len(self.names)} ({', '.join(self.names)}); "
                              "choose another fusion (`mmfuse fusions` lists them)")
        (n,) = self.names
        self.proj = nn.Identity() if self.input_dims[n] == dim else nn.Linear(self.input_dims[n], dim)

    def forward(self, feats, masks, tokens=None):
        (n,) = self.names
        return self.proj(self.masked(feats, masks)[n])
