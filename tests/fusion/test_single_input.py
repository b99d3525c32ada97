"""One input: the encoder feeds the head (``single``), and older one-input bundles keep their fusion."""
import pandas as pd
import pytest
import torch

from mmfuse import MmfuseError, ModelConfig, build_model
from mmfuse._build import model_from_spec
from mmfuse.fusion import SingleInput, create_fusion, describe_fusions, list_fusions
from mmfuse.preprocessing.tabular import TabularPreprocessor
from mmfuse.preprocessing._base import ReadContext


def tabular_prep(tmp_path):
    df = pd.DataFrame({"a": [0.1, 0.5, 0.9, 0.3], "b": [1.0, 2.0, 3.0, 4.0]})
    return TabularPreprocessor(["a", "b"], numeric=["a", "b"]).fit(df, ReadContext(root=tmp_path))


def test_one_input_models_use_single_whatever_fusion_says(tmp_path):
    prep = tabular_prep(tmp_path)
    for fusion in ("concat", "gated", "late"):
        model, spec = build_model({"x": prep}, 3, ModelConfig(fusion=fusion))
        assert spec["model"]["fusion"] == "single"
        assert isinstance(model.fusion, SingleInput)
        assert sum(p.numel() for p in model.fusion.parameters()) == 0  # the encoder's D is the head's D
        out = model({"x": {"num": torch.randn(5, 4), "cat": torch.zeros(5, 0, dtype=torch.long)}},
                    {"x": torch.tensor([True, True, False, True, True])})["logits"]
        assert out.shape == (5, 3)


def test_single_passes_features_through_and_zeroes_absent_rows():
    f = create_fusion("single", {"x": 4}, dim=4)
    x = torch.randn(3, 4)
    out = f({"x": x}, {"x": torch.tensor([True, False, True])})
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2]) and not out[1].any()
    g = create_fusion("single", {"x": 6}, dim=4)  # another width: a linear map
    assert g({"x": torch.randn(2, 6)}, {"x": torch.ones(2, dtype=torch.bool)}).shape == (2, 4)


def test_single_refuses_two_inputs_with_a_clear_error():
    with pytest.raises(MmfuseError, match="exactly one input.*a, b"):
        create_fusion("single", {"a": 4, "b": 4}, dim=4)


def test_single_is_not_offered_but_rebuilds():
    assert "single" not in list_fusions() and "single" not in describe_fusions()
    assert "single" in list_fusions(automatic=True)
    ModelConfig(fusion="single")  # a saved spec says so; it must validate


def test_a_saved_one_input_concat_spec_still_rebuilds_concat(tmp_path):
    """Bundles written before `single` existed hold concat weights for their one input."""
    prep = tabular_prep(tmp_path)
    model, spec = build_model({"x": prep}, 3, ModelConfig())
    old = {**spec, "model": {**spec["model"], "fusion": "concat"}}
    rebuilt = model_from_spec(old)
    assert type(rebuilt.fusion).__name__ == "ConcatFusion"
    assert isinstance(model_from_spec(spec).fusion, SingleInput)
