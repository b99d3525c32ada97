import pytest
import torch

from mmfuse.encoders import create_encoder
from mmfuse.fusion import FUSIONS, create_fusion, list_fusions
from mmfuse.model import Head, MultimodalModel


def tiny_model(p=0.0, aux=False):
    enc = {"a": create_encoder("tabular_mlp", n_numeric=2, dim=8), "b": create_encoder("tabular_mlp", n_numeric=3, dim=8)}
    fusion = create_fusion("concat", {"a": 8, "b": 8}, dim=8)
    aux_heads = {"a": torch.nn.Linear(8, 3), "b": torch.nn.Linear(8, 3)} if aux else None
    return MultimodalModel(enc, fusion, Head(8, 3, 8), aux_heads, modality_dropout=p)


def inputs(B=64):
    return ({"a": {"num": torch.randn(B, 4)}, "b": {"num": torch.randn(B, 6)}},
            {"a": torch.ones(B, dtype=torch.bool), "b": torch.rand(B) > 0.3})


def test_modality_dropout_drops_but_keeps_one_input_per_row():
    torch.manual_seed(0)
    m = tiny_model(p=0.9).train()
    x, masks = inputs()
    out = m(x, masks)["masks"]
    kept = torch.stack([out["a"], out["b"]], 1)
    assert kept.any(1).all()  # every row keeps at least one input
    assert (kept.sum() < masks["a"].sum() + masks["b"].sum())  # but inputs were dropped
    assert not (out["b"] & ~masks["b"]).any()  # nothing absent comes back
    m.eval()
    assert torch.equal(m(x, masks)["masks"]["b"], masks["b"])  # no dropout at evaluation


def test_absent_argument_and_aux_heads():
    m = tiny_model(aux=True).eval()
    x, masks = inputs(8)
    out = m(x, masks, absent=["b"])
    assert not out["masks"]["b"].any() and out["logits"].shape == (8, 3) and set(out["aux"]) == {"a", "b"}
    only_a = m({"a": x["a"]}, {"a": masks["a"]})  # input b not given at all
    assert torch.allclose(only_a["logits"], out["logits"])


NAMES = ["Review.Text", "type", "training", "a/b", "a_b", "x->y"]  # R's dotted names, nn.Module attributes, ...


@pytest.mark.parametrize("fusion", list_fusions())
def test_any_column_name_can_name_an_input(fusion):
    """Names that are not valid module names build, run, round-trip their weights and stay as spelled."""
    def build(seed):
        torch.manual_seed(seed)
        enc = {n: create_encoder("tabular_mlp", n_numeric=1, dim=8) for n in NAMES}
        logits = FUSIONS.get(fusion).produces_logits
        f = create_fusion(fusion, {n: 8 for n in NAMES}, dim=3 if logits else 8,
                          **({"rank_dim": 2} if fusion == "tensor" else {}))
        return MultimodalModel(enc, f, None if logits else Head(8, 3, 8), {n: torch.nn.Linear(8, 3) for n in NAMES})

    m = build(0).eval()
    x = {n: {"num": torch.randn(4, 2)} for n in NAMES}
    masks = {n: torch.tensor([True, True, False, True]) for n in NAMES}
    out = m(x, masks, absent=["type"])
    assert m.names == sorted(NAMES) and list(m.encoders) == sorted(NAMES) and list(m.fusion.names) == sorted(NAMES)
    assert set(out["aux"]) == set(NAMES) and set(out["masks"]) == set(NAMES) and not out["masks"]["type"].any()
    assert torch.isfinite(out["logits"]).all()
    if fusion == "cross_attention":  # a block per ordered pair: no two pairs share a key
        assert len(m.fusion.blocks) == len(NAMES) * (len(NAMES) - 1)
    other = build(1).eval()
    other.load_state_dict(m.state_dict())
    assert torch.equal(other(x, masks, absent=["type"])["logits"], out["logits"])


def _assembled(fusion, aux_weight, aux_heads=None, **fusion_kwargs):
    from mmfuse._build import assemble
    from mmfuse.config import ModelConfig

    enc = {"a": create_encoder("tabular_mlp", n_numeric=2, dim=8), "b": create_encoder("tabular_mlp", n_numeric=3, dim=8)}
    cfg = ModelConfig(fusion=fusion, dim=8, head_hidden=8, aux_weight=aux_weight, fusion_kwargs=fusion_kwargs)
    return assemble({n: {"name": "tabular_mlp", "config": {}} for n in enc}, enc, 3, cfg, aux_heads)


def test_late_fusion_auxiliary_losses_train_the_heads_it_falls_back_on():
    torch.manual_seed(0)
    model, spec = _assembled("late", 0.5)
    assert spec["aux_heads"] == "fusion" and model.aux_heads is None
    x, masks = inputs(8)
    model.eval()
    out = model(x, masks)
    # the auxiliary logits of input a are what the model predicts when b is absent
    assert torch.allclose(out["aux"]["a"], model(x, masks, absent=["b"])["logits"], atol=1e-6)
    assert torch.allclose(out["aux"]["b"][masks["b"]], model(x, masks, absent=["a"])["logits"][masks["b"]], atol=1e-6)
    # other fusions get a linear head per input; a late bundle saved before the choice existed rebuilds those
    assert _assembled("concat", 0.5)[1]["aux_heads"] == "linear" and _assembled("concat", 0.5)[0].aux_heads is not None
    old, _ = _assembled("late", 0.5, aux_heads="linear")
    assert old.aux_heads is not None and not old.aux_from_fusion and set(old.eval()(x, masks)["aux"]) == {"a", "b"}
    assert _assembled("late", 0.5, combine="stacker")[1]["aux_heads"] == "linear"  # a stacker falls back on no one head
    assert _assembled("late", 0.0)[0].aux_heads is None and "aux" not in _assembled("late", 0.0)[0](x, masks)
