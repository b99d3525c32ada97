"""Each formula checked on tiny inputs with hand-set weights."""
import math

import pytest
import torch

from mmfuse.errors import MmfuseError
from mmfuse.fusion import create_fusion


def identity_proj(fusion, names=("a", "b")):
    with torch.no_grad():
        for n in names:
            fusion.proj[n].weight.fill_(1.0)
            if fusion.proj[n].bias is not None:
                fusion.proj[n].bias.zero_()


def two(xa, xb, a=True, b=True):
    feats = {"a": torch.tensor([[xa]]), "b": torch.tensor([[xb]])}
    masks = {"a": torch.tensor([a]), "b": torch.tensor([b])}
    return feats, masks


def test_weighted_fixed_alpha_and_renormalization():
    f = create_fusion("weighted", {"a": 1, "b": 1}, dim=1, weights={"a": 0.25, "b": 0.75})
    identity_proj(f)
    assert f(*two(2.0, 4.0)).item() == pytest.approx(0.25 * 2 + 0.75 * 4)  # 3.5
    assert f(*two(2.0, 4.0, b=False)).item() == pytest.approx(2.0)  # only a present: weight 1
    assert f(*two(2.0, 4.0, a=False, b=False)).item() == 0.0
    learned = create_fusion("weighted", {"a": 1, "b": 1}, dim=1)
    identity_proj(learned)
    assert learned(*two(2.0, 4.0)).item() == pytest.approx(3.0)  # logits start at 0: equal weights
    assert learned.modality_weights() == {"a": 0.5, "b": 0.5}
    with pytest.raises(MmfuseError, match="weights must be 2 non-negative"):
        create_fusion("weighted", {"a": 1, "b": 1}, weights=[1.0])


def test_gated_unit_two_inputs():
    f = create_fusion("gated", {"a": 1, "b": 1}, dim=1)
    identity_proj(f)
    with torch.no_grad():
        f.gate.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # g_a = x_a, g_b = 0
        f.gate.bias.zero_()
    xa, xb = 0.5, 1.0
    z = 1 / (1 + math.exp(-(xa - 0.0)))  # softmax over two gates = sigmoid of their difference
    assert f(*two(xa, xb)).item() == pytest.approx(z * math.tanh(xa) + (1 - z) * math.tanh(xb), rel=1e-6)
    assert f(*two(xa, xb, b=False)).item() == pytest.approx(math.tanh(xa), rel=1e-6)


def test_tensor_outer_product_and_size_error():
    f = create_fusion("tensor", {"a": 1, "b": 1}, dim=1, rank_dim=1)
    identity_proj(f)
    assert f.outer(*two(2.0, 3.0)).tolist() == [[6.0, 2.0, 3.0, 1.0]]  # [xa, 1] (x) [xb, 1]
    assert f.outer(*two(2.0, 3.0, b=False)).tolist() == [[0.0, 2.0, 0.0, 1.0]]
    with pytest.raises(MmfuseError, match="use fusion 'low_rank'"):
        create_fusion("tensor", {str(i): 8 for i in range(6)}, rank_dim=16)


def test_low_rank_formula_and_equivalence_to_a_rank_one_tensor_map():
    f = create_fusion("low_rank", {"a": 1, "b": 1}, dim=1, rank=1)
    with torch.no_grad():
        f.factors["a"].copy_(torch.tensor([[[2.0], [1.0]]]))  # W_a = (2, 1)
        f.factors["b"].copy_(torch.tensor([[[3.0], [-1.0]]]))  # W_b = (3, -1)
        f.rank_weights.fill_(0.5)
        f.bias.fill_(0.25)
    # 0.5 * (2*1 + 1) * (3*2 - 1) + 0.25 = 7.75
    assert f(*two(1.0, 2.0)).item() == pytest.approx(7.75)
    # the same number from the full outer product [1, 1] (x) [2, 1] with weight 0.5 * W_a (x) W_b
    z = torch.outer(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]))
    w = 0.5 * torch.outer(torch.tensor([2.0, 1.0]), torch.tensor([3.0, -1.0]))
    assert (z * w).sum().item() + 0.25 == pytest.approx(7.75)
    # absent b contributes its factor's last column: 0.5 * 3 * (-1) + 0.25
    assert f(*two(1.0, 2.0, b=False)).item() == pytest.approx(-1.25)
    assert {n for n, _ in f.named_parameters()} == {"factors.a", "factors.b", "rank_weights", "bias"}


def test_late_mean_leaves_absent_inputs_out():
    f = create_fusion("late", {"a": 1, "b": 1}, dim=1).eval()
    feats, masks = two(1.0, 2.0)
    ya, yb = (f.heads[n](feats[n]).item() for n in ("a", "b"))
    assert f(feats, masks).item() == pytest.approx((ya + yb) / 2)
    assert f(*two(1.0, 2.0, b=False)).item() == pytest.approx(ya)


def test_concat_projects_masks_and_appends_presence_flags():
    """out = MLP([p_a W_a x_a; p_b W_b x_b; p_a; p_b]), MLP = Linear, ReLU, Dropout, Linear."""
    f = create_fusion("concat", {"a": 1, "b": 1}, dim=1, hidden=1).eval()
    with torch.no_grad():
        f.proj["a"].weight.fill_(2.0), f.proj["a"].bias.zero_()  # W_a x_a = 2 x_a
        f.proj["b"].weight.fill_(3.0), f.proj["b"].bias.fill_(1.0)  # W_b x_b = 3 x_b + 1
        f.mlp[0].weight.copy_(torch.tensor([[1.0, 1.0, 10.0, 100.0]])), f.mlp[0].bias.zero_()
        f.mlp[3].weight.fill_(1.0), f.mlp[3].bias.fill_(0.5)
    # both: 2*1 + (3*2 + 1) + 10 + 100 = 119 -> relu -> 119 + 0.5
    assert f(*two(1.0, 2.0)).item() == pytest.approx(119.5)
    # b absent: its projection (the bias 1, since x_b is zeroed) times p_b = 0 drops out, and so does its flag
    assert f(*two(1.0, 2.0, b=False)).item() == pytest.approx(2.0 + 10.0 + 0.5)


# Attention and cross-attention with weights that make attention uniform (W_q = W_k = 0),
# values and outputs the identity, and feed-forward blocks that add nothing: what remains is
# the masked mean over the attended tokens, with LayerNorms computed here by hand.
# Inputs a and b are 2-wide; W = [[1, 1], [-1, 1], [1, -1], [-1, -1]] maps them to D = 4:
#   [1, 0] -> U1 = [1, -1, 1, -1]        [0, 2] -> 2 * U2, U2 = [1, 1, -1, -1]
# LN(s * U) = U for s > 0 (mean 0, variance s^2), up to LayerNorm's eps.
W = [[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]
U1, U2 = [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]


def layer_norm(v):
    m = sum(v) / len(v)
    var = sum((x - m) ** 2 for x in v) / len(v)
    return [(x - m) / math.sqrt(var + 1e-5) for x in v]


def plain_attention(attn):
    """W_q = W_k = 0 (uniform attention over the keys that are not masked), W_v = W_o = I."""
    D = attn.embed_dim
    attn.in_proj_weight.copy_(torch.cat([torch.zeros(2 * D, D), torch.eye(D)]))
    attn.in_proj_bias.zero_()
    attn.out_proj.weight.copy_(torch.eye(D))
    attn.out_proj.bias.zero_()


def two_wide(tokens_a=None, b=True):
    feats = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 2.0]])}
    masks = {"a": torch.tensor([True]), "b": torch.tensor([b])}
    return feats, masks, ({"a": tokens_a, "b": (None, None)} if tokens_a else None)


def test_attention_is_the_normed_cls_state_over_present_inputs():
    """CLS = 0 and modality embeddings 0: h_CLS = 0 + mean over [CLS; t_a; t_b] of LN(token), out = LN(h_CLS)."""
    f = create_fusion("attention", {"a": 2, "b": 2}, dim=4, heads=1, layers=1, use_tokens=True).eval()
    layer = f.encoder.layers[0]
    with torch.no_grad():
        for n in ("a", "b"):
            f.proj[n].weight.copy_(torch.tensor(W)), f.proj[n].bias.zero_()
        f.modality.zero_(), f.cls.zero_()
        plain_attention(layer.self_attn)
        layer.linear2.weight.zero_(), layer.linear2.bias.zero_()  # the feed-forward block adds 0
    out = lambda *a: f(*two_wide(*a))[0].tolist()
    # both present: h = (0 + U1 + U2) / 3 = [2, 0, 0, -2] / 3
    assert out() == pytest.approx(layer_norm([2, 0, 0, -2]), abs=1e-4)  # = [√2, 0, 0, -√2]
    assert out()[0] == pytest.approx(math.sqrt(2), abs=1e-4)
    # b absent: masked from attention, h = (0 + U1) / 2
    assert out(None, False) == pytest.approx(layer_norm(U1), abs=1e-4)
    # a's tokens [1, 0] -> U1, [0, 1] -> U2 and a padded [1, 0]; b pooled 2 U2 -> U2: h = (U1 + 2 U2) / 4
    tokens = (torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[True, True, False]]))
    assert out(tokens) == pytest.approx(layer_norm([3, 1, -1, -3]), abs=1e-4)  # [3, 1, -1, -3] / √5


def test_cross_attention_pools_each_target_over_its_sources():
    """Null token 0 and plain attention: s_α = mean_j [q_{α,j} + mean(0, LN(β tokens))], summed over valid j
    and averaged; out = W_out [p_a s_a; p_b s_b; p_a; p_b] with W_out = [I, I, 0.25, -0.5]."""
    f = create_fusion("cross_attention", {"a": 2, "b": 2}, dim=4, heads=1).eval()
    with torch.no_grad():
        for n in ("a", "b"):
            f.proj[n].weight.copy_(torch.tensor(W)), f.proj[n].bias.zero_()
        for block in f.blocks.values():
            block.null.zero_()
            plain_attention(block.attn)
            block.ff[4].weight.zero_(), block.ff[4].bias.zero_()
        flags = torch.tensor([[0.25, -0.5]]).expand(4, 2)  # p_a adds 0.25, p_b -0.5 to every output
        f.out.weight.copy_(torch.cat([torch.eye(4), torch.eye(4), flags], 1))
        f.out.bias.zero_()
    out = lambda *a: f(*two_wide(*a))[0].tolist()
    t_a, t_b = U1, [2 * x for x in U2]
    # s_a = t_a + (0 + U2) / 2, s_b = t_b + (0 + U1) / 2
    s_a = [x + y / 2 for x, y in zip(t_a, U2)]
    s_b = [x + y / 2 for x, y in zip(t_b, U1)]
    assert out() == pytest.approx([x + y + 0.25 - 0.5 for x, y in zip(s_a, s_b)], abs=1e-4)  # [3.75, .75, -1.25, -4.25]
    assert out()[0] == pytest.approx(3.75, abs=1e-4)
    # b absent: a attends to the null token only (adds 0); p_b zeroes s_b and its flag
    assert out(None, False) == pytest.approx([x + 0.25 for x in t_a], abs=1e-4)
    # a's tokens U1, U2 and a padded one: s_a = mean(U1, U2) + U2 / 2; b attends to (0, U1, U2): t_b + (U1 + U2) / 3
    tokens = (torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[True, True, False]]))
    s_a = [(x + y) / 2 + y / 2 for x, y in zip(U1, U2)]
    s_b = [t + (x + y) / 3 for t, x, y in zip(t_b, U1, U2)]
    assert out(tokens) == pytest.approx([x + y - 0.25 for x, y in zip(s_a, s_b)], abs=1e-4)


def test_late_stacker_combines_masked_head_logits_and_presence_flags():
    """y = A [p_a y_a; p_b y_b; p_a; p_b] + c, with heads y_m = MLP_m(x_m) set by hand."""
    f = create_fusion("late", {"a": 1, "b": 1}, dim=1, combine="stacker", hidden=1).eval()
    with torch.no_grad():
        for n, (w2, b2) in {"a": (2.0, 0.5), "b": (-1.0, 1.0)}.items():  # y_m = w2 * relu(x_m) + b2
            f.heads[n][0].weight.fill_(1.0), f.heads[n][0].bias.zero_()
            f.heads[n][3].weight.fill_(w2), f.heads[n][3].bias.fill_(b2)
        f.stacker.weight.copy_(torch.tensor([[1.0, 2.0, 10.0, 100.0]])), f.stacker.bias.fill_(0.25)
    y_a, y_b = 2.0 * 1.0 + 0.5, -1.0 * 3.0 + 1.0  # 2.5, -2
    assert f(*two(1.0, 3.0)).item() == pytest.approx(y_a + 2 * y_b + 10 + 100 + 0.25)  # 108.75
    # b absent: its head would say 1 (its bias), but p_b = 0 removes it and its flag
    assert f(*two(1.0, 3.0, b=False)).item() == pytest.approx(y_a + 10 + 0.25)  # 12.75
