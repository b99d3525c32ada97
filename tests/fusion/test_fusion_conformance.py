"""Every registered fusion goes through the same checks."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmfuse.fusion import FUSIONS, create_fusion, list_fusions

DIMS = {"a": 6, "b": 4, "c": 5}
TOKEN_DIMS = {"a": 7, "c": 5}  # a's tokens are wider than its pooled output (as a CLIP tower's); b has none
B, D = 5, 8


CASES = list_fusions() + ["attention+tokens"]  # attention over the encoders' tokens, not only pooled vectors


def make(case, seed=0):
    name, _, tokens = case.partition("+")
    torch.manual_seed(seed)
    return create_fusion(name, DIMS, dim=D, token_dims=TOKEN_DIMS, **({"use_tokens": True} if tokens else {}))


def batch(seed=1, masks=None):
    g = torch.Generator().manual_seed(seed)
    feats = {n: torch.randn(B, d, generator=g) for n, d in DIMS.items()}
    tokens = {"a": (torch.randn(B, 3, 7, generator=g), torch.tensor([[1, 1, 0]] * B, dtype=torch.bool)),
              "b": (None, None), "c": (torch.randn(B, 2, 5, generator=g), torch.ones(B, 2, dtype=torch.bool))}
    masks = masks or {n: torch.ones(B, dtype=torch.bool) for n in DIMS}
    return feats, masks, tokens


def partial_masks():
    return {"a": torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool), "b": torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool),
            "c": torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)}  # row 4: nothing present


@pytest.mark.parametrize("name", CASES)
def test_shape_and_finite(name):
    f = make(name).eval()
    for masks in (None, partial_masks()):
        out = f(*batch(masks=masks))
        assert out.shape == (B, D) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", CASES)
def test_every_parameter_gets_a_gradient(name):
    f = make(name).train()
    out = f(*batch())
    out.pow(2).mean().backward()
    missing = [n for n, p in f.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize("name", CASES)
def test_absent_inputs_do_not_leak(name):
    f = make(name).eval()
    masks = partial_masks()
    feats, _, tokens = batch(masks=masks)
    out = f(feats, masks, tokens)
    garbage = {n: torch.where(masks[n][:, None], v, torch.full_like(v, 1e3)) for n, v in feats.items()}
    tok_garbage = {n: (None if t is None else torch.where(masks[n][:, None, None], t, torch.full_like(t, 1e3)), m)
                   for n, (t, m) in tokens.items()}
    assert torch.allclose(f(garbage, masks, tok_garbage), out, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
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


def not_seeded(a, b) -> list[str]:
    """Randomly initialized parameters (not all one value) equal in two modules built under different seeds."""
    pairs = zip(a.named_parameters(), b.parameters())
    return [n for (n, p), q in pairs if p.unique().numel() > 1 and torch.equal(p, q)]


@pytest.mark.parametrize("name", CASES)
def test_the_seed_decides_the_initial_weights(name):
    """Same seed: the same weights and outputs; another seed: other values in every randomly
    initialized parameter (so the seed, and nothing else, decides them)."""
    args = batch(masks=partial_masks())
    a, b, other = make(name, seed=3).eval(), make(name, seed=3).eval(), make(name, seed=4).eval()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(a(*args), b(*args))
    assert not_seeded(a, other) == []
    assert not torch.allclose(a(*args), other(*args))


def has_dropout(module) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in module.modules())


@pytest.mark.parametrize("name", CASES)
def test_eval_ignores_the_random_state_and_training_follows_it(name):
    """In eval mode the output never depends on the random state. In training mode (dropout)
    it does: the same state gives the same output, another state another one."""
    f, args = make(name).eval(), batch(masks=partial_masks())
    torch.manual_seed(1)
    first = f(*args)
    torch.manual_seed(2)
    assert torch.equal(f(*args), first)
    if not has_dropout(f):
        return
    f.train()
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(f(*args))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])


def test_tokens_wider_than_the_pooled_output_when_absent_from_the_whole_batch():
    """An encoder that never ran (its input absent in every row) gives no tokens; the fusion
    then cannot use the pooled vector as a token (other width) and uses a masked zero token."""
    masks = dict(partial_masks(), a=torch.zeros(B, dtype=torch.bool))
    feats, _, tokens = batch(masks=masks)
    tokens = dict(tokens, a=(None, None))
    for name in ("attention+tokens", "cross_attention"):
        f = make(name)
        assert torch.isfinite(f.eval()(feats, masks, tokens)).all()
        with pytest.raises(ValueError, match="input 'a' is present but has no tokens"):
            f(feats, partial_masks(), tokens)


@pytest.mark.parametrize("name", CASES)
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
