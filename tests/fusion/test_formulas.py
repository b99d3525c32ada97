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
