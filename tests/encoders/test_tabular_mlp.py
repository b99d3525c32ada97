"""TabularMLP: new models are a linear map of the columns; with hidden layers, a linear skip beside them."""
from types import SimpleNamespace

import torch

from mmfuse.encoders.tabular_mlp import TabularMLP


def test_a_tabular_only_models_encoder_is_linear_by_hand():
    prep = SimpleNamespace(n_numeric=1, cardinalities=[])  # one value and its missing indicator
    enc = TabularMLP.from_preprocessor(prep, dim=2, **TabularMLP.alone_kwargs()).eval()  # as build_model, one input
    assert len(enc.mlp) == 1  # one Linear beside the skip: the encoder is linear
    with torch.no_grad():
        enc.mlp[0].weight.copy_(torch.tensor([[2.0, 0.0], [-1.0, 3.0]]))
        enc.mlp[0].bias.copy_(torch.tensor([0.5, 0.0]))
        enc.skip.weight.zero_(), enc.skip.bias.zero_()
        out, _, _ = enc.encode({"num": torch.tensor([[1.0, 0.0], [4.0, 1.0]]), "cat": torch.zeros(2, 0).long()})
    # row 1: (2*1 + 0.5, -1*1 + 0) = (2.5, -1); row 2: (2*4 + 0.5, -4 + 3) = (8.5, -1)
    assert out.tolist() == [[2.5, -1.0], [8.5, -1.0]]
    assert list(enc.init_config["hidden"]) == []  # recorded in bundles


def test_build_model_makes_the_tabular_encoder_linear_only_when_it_is_the_only_input(tmp_path):
    import pandas as pd

    from mmfuse import ModelConfig, build_model
    from mmfuse.preprocessing._base import ReadContext
    from mmfuse.preprocessing.tabular import TabularPreprocessor

    df = pd.DataFrame({"a": [0.1, 0.5, 0.9], "b": [1.0, 2.0, 3.0]})
    pa = TabularPreprocessor(["a"], numeric=["a"]).fit(df, ReadContext(root=tmp_path))
    pb = TabularPreprocessor(["b"], numeric=["b"]).fit(df, ReadContext(root=tmp_path))
    alone, _ = build_model({"x": pa}, 2, ModelConfig())
    fused, _ = build_model({"x": pa, "y": pb}, 2, ModelConfig())
    assert len(alone.encoders["x"].mlp) == 1  # linear
    assert len(fused.encoders["x"].mlp) > 1  # the MLP with its hidden layer
    mine, _ = build_model({"x": pa}, 2, ModelConfig(encoders={"tabular": {"hidden": [8]}}))
    assert len(mine.encoders["x"].mlp) > 1  # the user's option wins


def test_hidden_layers_get_a_linear_skip_by_hand():
    enc = TabularMLP(n_numeric=1, dim=2, hidden=(4,), linear_skip=True).eval()  # `hidden: [4]` in the config
    with torch.no_grad():
        last = enc.mlp[-1]
        last.weight.zero_(), last.bias.zero_()  # the hidden path adds nothing
        enc.skip.weight.copy_(torch.tensor([[2.0, 0.0], [-1.0, 3.0]]))
        enc.skip.bias.copy_(torch.tensor([0.5, 0.0]))
        out, _, _ = enc.encode({"num": torch.tensor([[1.0, 0.0], [4.0, 1.0]]), "cat": torch.zeros(2, 0).long()})
    assert out.tolist() == [[2.5, -1.0], [8.5, -1.0]]
    assert TabularMLP(n_numeric=1, dim=2).skip is None  # a bundle saved without it loads as it was
