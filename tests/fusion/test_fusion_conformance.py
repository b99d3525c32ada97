"""Every registered fusion goes through the same checks."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmfuse.fusion import FUSIONS, create_fusion, list_fusions

DIMS = {"a": 6, "b": 4, "c": 5}
B, D = 5, 8


def make(name, seed=0):
    torch.manual_seed(seed)
    return create_fusion(name, DIMS, dim=D)


def batch(seed=1, masks=None):
    g = torch.Generator().manual_seed(seed)
    feats = {n: torch.randn(B, d, generator=g) for n, d in DIMS.items()}
    tokens = {"a": (torch.randn(B, 3, 6, generator=g), torch.tensor([[1, 1, 0]] * B, dtype=torch.bool)),
              "b": (None, None), "c": (torch.randn(B, 2, 5, generator=g), torch.ones(B, 2, dtype=torch.bool))}
    masks = masks or {n: torch.ones(B, dtype=torch.bool) for n in DIMS}
    return feats, masks, tokens


def partial_masks():
    return {"a": torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool), "b": torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool),
            "c": torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)}  # row 4: nothing present


@pytest.mark.parametrize("name", list_fusions())
def test_shape_and_finite(name):
    f = make(name).eval()
    for masks in (None, partial_masks()):
        out = f(*batch(masks=masks))
        assert out.shape == (B, D) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_fusions())
def test_every_parameter_gets_a_gradient(name):
    f = make(name).train()
    out = f(*batch())
    out.pow(2).mean().backward()
    missing = [n for n, p in f.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize("name", list_fusions())
def test_absent_inputs_do_not_leak(name):
    f = make(name).eval()
    masks = partial_masks()
    feats, _, tokens = batch(masks=masks)
    out = f(feats, masks, tokens)
    garbage = {n: torch.where(masks[n][:, None], v, torch.full_like(v, 1e3)) for n, v in feats.items()}
    tok_garbage = {n: (None if t is None else torch.where(masks[n][:, None, None], t, torch.full_like(t, 1e3)), m)
                   for n, (t, m) in tokens.items()}
    assert torch.allclose(f(garbage, masks, tok_garbage), out, atol=1e-5)


@pytest.mark.parametrize("name", list_fusions())
def test_one_input_absent_everywhere(name):
    f = make(name).eval()
    masks = {"a": torch.zeros(B, dtype=torch.bool), "b": torch.ones(B, dtype=torch.bool),
             "c": torch.ones(B, dtype=torch.bool)}
    feats, _, tokens = batch()
    out = f(feats, masks, tokens)
    assert torch.isfinite(out).all()
    # the absent input has no influence at all
    feats2 = dict(feats, a=torch.randn(B, 6))
    assert torch.allclose(f(feats2, masks, tokens), out, atol=1e-5)


@pytest.mark.parametrize("name", list_fusions())
def test_deterministic_under_a_seed(name):
    torch.manual_seed(5)
    a = make(name, seed=3).train()(*batch())
    torch.manual_seed(5)
    b = make(name, seed=3).train()(*batch())
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list_fusions())
def test_save_load_round_trip(name, tmp_path):
    f = make(name, seed=0).eval()
    save_file({k: v.contiguous() for k, v in f.state_dict().items()}, tmp_path / "f.safetensors")
    g = make(name, seed=123).eval()
    g.load_state_dict(load_file(tmp_path / "f.safetensors"))
    args = batch(masks=partial_masks())
    assert torch.equal(f(*args), g(*args))


def test_every_fusion_documents_a_formula_and_unknown_names_suggest():
    from mmfuse.errors import MmfuseError

    for name in list_fusions():
        doc = FUSIONS.get(name).__doc__
        assert doc and len(doc.strip().splitlines()) > 2, name
    with pytest.raises(MmfuseError, match="unknown fusion 'gate'.*Did you mean 'gated'"):
        create_fusion("gate", DIMS)
