"""The contrastive (CLIP) loss: its value by hand, a temperature that learns, absent rows left out."""
import math

import pytest
import torch

from mmfuse.align import ClipLoss


def test_the_loss_has_its_hand_computed_value():
    # a = b = the two unit vectors, scale 1: logits [[1, 0], [0, 1]]; each row's cross-entropy is
    # -log(e / (e + 1)) = log(1 + e^-1), in both directions
    loss = ClipLoss(init_temperature=1.0)
    eye = torch.eye(2)
    assert float(loss(eye, eye)) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # with scale 2 and b swapped: the targets are the off-diagonal entries, logit 0 against 2
    loss2 = ClipLoss(init_temperature=0.5)
    assert float(loss2(eye, eye.flip(0))) == pytest.approx(-math.log(1 / (1 + math.exp(2))), abs=1e-5)
    # embeddings are normalised: scaling an input changes nothing
    assert float(loss(3 * eye, eye)) == pytest.approx(float(loss(eye, eye)), abs=1e-6)


def test_the_temperature_learns():
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    b = a + 0.05 * torch.randn(16, 8)  # matched pairs: a sharper softmax lowers the loss
    loss = ClipLoss()
    before = float(loss.scale)
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        loss(a, b).backward()
        opt.step()
    assert float(loss.scale) > before
    assert float(loss.scale) <= 100.0 + 1e-4  # clamped as in CLIP


def test_rows_with_an_absent_input_contribute_nothing():
    torch.manual_seed(1)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    present_a = torch.tensor([True, True, False, True, True, True])
    present_b = torch.tensor([True, True, True, True, False, True])
    loss = ClipLoss()
    base = float(loss(a, b, present_a, present_b))
    a2, b2 = a.clone(), b.clone()
    a2[2], b2[2], a2[4], b2[4] = 100, -7, 3, 42  # rows 2 and 4: one input absent each
    assert float(loss(a2, b2, present_a, present_b)) == pytest.approx(base, abs=1e-6)
    keep = present_a & present_b
    assert float(loss(a[keep], b[keep])) == pytest.approx(base, abs=1e-6)
    # fewer than two rows left: no negatives, a zero loss that still back-propagates
    a.requires_grad_(True)
    z = loss(a, b, torch.tensor([True] + [False] * 5), None)
    z.backward()
    assert float(z) == 0.0 and a.grad is not None


def test_the_queue_adds_past_pairs_as_negatives_with_a_hand_computed_value():
    # scale 1; a first (training) call queues the pair (e1, e1); the next call's one row (e2, e2) then has
    # one negative, the queued e1: logits [1, 0] in each direction, loss log(1 + e^-1)
    loss = ClipLoss(init_temperature=1.0, queue_size=4, dim=2).train()
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(loss(e1, e1)) == 0.0  # one row and an empty queue: no negative yet
    assert loss.queued == 1
    assert float(loss(e2, e2)) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # without the queue the same row has no negative at all
    assert float(ClipLoss(init_temperature=1.0)(e2, e2)) == 0.0
    # first in, first out, bounded; evaluation does not add to it
    for _ in range(5):
        loss(e2, e2)
    assert loss.queued == 4 and torch.equal(loss.queue_a, e2.repeat(4, 1))
    loss.eval()
    loss(e1, e1)
    assert torch.equal(loss.queue_a, e2.repeat(4, 1))


def test_the_queue_trains_through_the_batch_rows_only():
    loss = ClipLoss(queue_size=8, dim=4).train()
    torch.manual_seed(0)
    loss(torch.randn(8, 4), torch.randn(8, 4))
    a, b = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    loss(a, b).backward()
    assert a.grad is not None and b.grad is not None and loss.queue_a.grad is None
