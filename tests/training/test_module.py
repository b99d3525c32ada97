"""LitMultimodal's checkpoint hooks: every random generator is saved and restored."""
from types import SimpleNamespace

import pytest
import torch

from mmfuse.training.checkpoint_io import load_checkpoint_file, save_checkpoint_file
from mmfuse.training.module import LitMultimodal


def test_checkpoint_saves_and_restores_the_cuda_generators(tmp_path, monkeypatch):
    # no GPU here: stand in for two CUDA devices with distinct generator states
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.append(list(new)))
    lit = SimpleNamespace(history=[{"epoch": 0}], extra_checkpoint_state={}, current_epoch=0, _batches_done=0,
                          train_loader=[], _loss_sums=lambda: {"train_sum": 0.0, "train_n": 0})  # what the hooks touch
    ckpt = {}
    LitMultimodal.on_save_checkpoint(lit, ckpt)
    save_checkpoint_file(ckpt, tmp_path / "last.ckpt")
    back = load_checkpoint_file(tmp_path / "last.ckpt")
    saved = back["mmfuse"]["cuda_rng"]
    assert len(saved) == 2 and all(torch.equal(a, b) for a, b in zip(saved, states))

    cpu_after_save = torch.get_rng_state()
    torch.rand(3)  # move the CPU generator on; restoring must bring it back
    LitMultimodal.on_load_checkpoint(lit, back)
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], states))
    assert torch.equal(torch.get_rng_state(), cpu_after_save)


def test_no_cuda_generators_are_saved_or_restored_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: (_ for _ in ()).throw(AssertionError("called")))
    lit = SimpleNamespace(history=[], extra_checkpoint_state={}, current_epoch=0, _batches_done=0, train_loader=[],
                          _loss_sums=lambda: {"train_sum": 0.0, "train_n": 0})
    ckpt = {}
    LitMultimodal.on_save_checkpoint(lit, ckpt)
    assert ckpt["mmfuse"]["cuda_rng"] == []
    LitMultimodal.on_load_checkpoint(lit, ckpt)


def test_validation_loss_is_the_training_objective_with_class_weights():
    """Early stopping watches the loss that training minimizes: class weights included."""
    import torch

    from conftest import make_tabular_text_table
    from mmfuse import MultimodalPredictor

    df, val = make_tabular_text_table(120, task="binary"), make_tabular_text_table(60, seed=3, task="binary")
    m = MultimodalPredictor(target="y", epochs=1, class_weight=[1.0, 5.0], progress=False, log=None, dim=16,
                            head_hidden=16, contribution=False).fit(df, val=val)
    z, rows = m.predictor_.logits(val)
    y = torch.as_tensor(m.task_.transform(val[["y"]]))[rows]
    weighted = float(m.task_.loss(z, y, torch.tensor([1.0, 5.0])))
    assert m.history_[0]["val_loss"] == pytest.approx(weighted, rel=1e-4)
    assert abs(weighted - float(m.task_.loss(z, y))) > 1e-3  # the weights change the number
