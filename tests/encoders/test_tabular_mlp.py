"""TabularMLP's linear skip path: the encoder can pass a linear function of the columns through."""
from types import SimpleNamespace

import torch

from mmfuse.encoders.tabular_mlp import TabularMLP


def test_default_tabular_encoder_has_a_linear_path_by_hand():
    prep = SimpleNamespace(n_numeric=1, cardinalities=[])  # one value and its missing indicator
    enc = TabularMLP.from_preprocessor(prep, dim=2).eval()  # how models are built
    with torch.no_grad():
        last = enc.mlp[-1]
        last.weight.zero_(), last.bias.zero_()  # the hidden path adds nothing
        enc.skip.weight.copy_(torch.tensor([[2.0, 0.0], [-1.0, 3.0]]))
        enc.skip.bias.copy_(torch.tensor([0.5, 0.0]))
        out, _, _ = enc.encode({"num": torch.tensor([[1.0, 0.0], [4.0, 1.0]]), "cat": torch.zeros(2, 0).long()})
    # row 1: (2*1 + 0.5, -1*1 + 0) = (2.5, -1); row 2: (2*4 + 0.5, -4 + 3) = (8.5, -1)
    assert out.tolist() == [[2.5, -1.0], [8.5, -1.0]]
    assert enc.init_config["linear_skip"] is True  # recorded in bundles
    assert TabularMLP(n_numeric=1, dim=2).skip is None  # a bundle saved without it loads as it was
