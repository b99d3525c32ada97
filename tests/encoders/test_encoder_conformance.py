"""Every registered encoder goes through the same checks (timm-style: new ones are tested on registration)."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmfuse import MultimodalDataset, build_preprocessors, infer_schema, list_encoders, make_loader, read_table
from mmfuse.encoders import create_encoder
from mmfuse.encoders._base import ENCODERS
from mmfuse.preprocessing import load_preprocessors, save_preprocessors

from conftest import make_mm_table

# Encoders for one modality; the Hugging Face ones (modality "any") are tested in test_hf.py
BUILTIN = [n for n in list_encoders() if ENCODERS.get(n).modality != "any"]
MODALITY_INPUT = {"text": "review", "image": "photo", "audio": "clip", "tabular": "tabular", "timeseries": "motion"}
OPTS = {"image": {"size": 16}, "audio": {"sample_rate": 8000, "duration": 0.25, "n_mels": 16},
        "timeseries": {"length": 16}, "text": {"min_freq": 1, "max_length": 12}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = make_mm_table(tmp_path_factory.mktemp("conf"), n=12)
    table = read_table(path)
    schema = infer_schema(table, target="label")
    preps = build_preprocessors(schema, table, OPTS)
    ds = MultimodalDataset(table, preps)
    batch = next(iter(make_loader(ds, batch_size=12)))
    return table, preps, batch


def make(name, preps, seed=0):
    cls = ENCODERS.get(name)
    torch.manual_seed(seed)
    return cls.from_preprocessor(preps[MODALITY_INPUT[cls.modality]])


def inputs_for(name, batch):
    key = MODALITY_INPUT[ENCODERS.get(name).modality]
    return batch["inputs"][key], batch["mask"][key]


@pytest.mark.parametrize("name", BUILTIN)
def test_shape_no_nan_and_tokens(name, data):
    _, preps, batch = data
    enc = make(name, preps).eval()
    x, mask = inputs_for(name, batch)
    pooled, tokens, tmask = enc.forward_with_tokens(x, torch.ones_like(mask))
    assert pooled.shape == (12, enc.output_dim) and torch.isfinite(pooled).all()
    if enc.has_tokens:
        assert tokens.dim() == 3 and tokens.shape[0] == 12 and tokens.shape[2] == enc.token_dim
        assert tmask.shape == tokens.shape[:2] and torch.isfinite(tokens).all()
    else:
        assert tokens is None


@pytest.mark.parametrize("name", BUILTIN)
def test_every_parameter_gets_a_gradient(name, data):
    _, preps, batch = data
    enc = make(name, preps).train()
    x, mask = inputs_for(name, batch)
    pooled, tokens, _ = enc.forward_with_tokens(x, mask)
    loss = pooled.pow(2).mean() + (tokens.pow(2).mean() if tokens is not None else 0)
    loss.backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    # padding_idx rows of embeddings get no gradient by design; everything else must
    assert missing == [], f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", BUILTIN)
def test_absent_rows_are_zero_and_do_not_affect_present_rows(name, data):
    _, preps, batch = data
    enc = make(name, preps).eval()
    x, _ = inputs_for(name, batch)
    full = enc(x, torch.ones(12, dtype=torch.bool))
    mask = torch.tensor([True, False] * 6)
    part = enc(x, mask)
    assert (part[~mask] == 0).all()
    assert torch.allclose(part[mask], full[mask], atol=1e-5)
    none = enc(x, torch.zeros(12, dtype=torch.bool))
    assert none.shape == (12, enc.output_dim) and (none == 0).all()
    p, tok, tm = enc.forward_with_tokens(x, mask)
    if tok is not None:
        assert (tok[~mask] == 0).all() and not tm[~mask].any()


def not_seeded(a, b) -> list[str]:
    """Randomly initialized parameters (not all one value) equal in two modules built under different seeds."""
    pairs = zip(a.named_parameters(), b.parameters())
    return [n for (n, p), q in pairs if p.unique().numel() > 1 and torch.equal(p, q)]


@pytest.mark.parametrize("name", BUILTIN)
def test_the_seed_decides_the_initial_weights(name, data):
    """Same seed: the same weights and outputs; another seed: other values in every randomly
    initialized parameter (so the seed, and nothing else, decides them)."""
    _, preps, batch = data
    x, mask = inputs_for(name, batch)
    a, b, other = (make(name, preps, seed=s).eval() for s in (3, 3, 4))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(a(x, mask), b(x, mask))
    assert not_seeded(a, other) == []
    assert not torch.allclose(a(x, mask), other(x, mask))


@pytest.mark.parametrize("name", BUILTIN)
def test_eval_ignores_the_random_state_and_training_follows_it(name, data):
    """In eval mode the output never depends on the random state. In training mode with dropout
    it does: the same state gives the same output, another state another one."""
    _, preps, batch = data
    x, mask = inputs_for(name, batch)
    enc = make(name, preps).eval()
    torch.manual_seed(1)
    first = enc(x, mask)
    torch.manual_seed(2)
    assert torch.equal(enc(x, mask), first)
    if not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in enc.modules()):
        return
    enc.train()
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(enc(x, mask))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])


@pytest.mark.parametrize("name", BUILTIN)
def test_state_round_trip_of_encoder_and_preprocessor(name, data, tmp_path):
    table, preps, batch = data
    key = MODALITY_INPUT[ENCODERS.get(name).modality]
    enc = make(name, preps).eval()
    save_file(enc.state_dict(), tmp_path / "enc.safetensors")
    save_preprocessors({key: preps[key]}, tmp_path)
    loaded_preps = load_preprocessors(tmp_path)
    enc2 = make(name, loaded_preps, seed=99).eval()
    enc2.load_state_dict(load_file(tmp_path / "enc.safetensors"))
    ds = MultimodalDataset(table, loaded_preps)
    b2 = next(iter(make_loader(ds, batch_size=12)))
    x, mask = inputs_for(name, batch)
    assert torch.equal(enc(x, mask), enc2(b2["inputs"][key], b2["mask"][key]))


def test_unknown_encoder_name_suggests():
    from mmfuse.errors import MmfuseError

    with pytest.raises(MmfuseError, match="unknown encoder 'image_cn'.*Did you mean 'image_cnn'"):
        create_encoder("image_cn")
