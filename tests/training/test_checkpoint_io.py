import torch

from mmfuse.training.checkpoint_io import load_checkpoint_file, save_checkpoint_file


def test_nested_checkpoint_round_trip_without_pickle(tmp_path):
    t = torch.arange(6.0).view(2, 3)
    ckpt = {"epoch": 3, "state_dict": {"w": t, "b": torch.zeros(2)},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": t * 2}},
                                  "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]}],
            "callbacks": {"EarlyStopping{'monitor': 'val_loss'}": {"wait_count": 1, "best_score": torch.tensor(0.5)}},
            "flag": None, "name": "x", "shared": [t, t]}
    save_checkpoint_file(ckpt, tmp_path / "c.ckpt")
    raw = (tmp_path / "c.ckpt").read_bytes()
    assert b"pickle" not in raw[:200] and raw[8:9] == b"{"  # a safetensors header follows the length prefix
    back = load_checkpoint_file(tmp_path / "c.ckpt")
    assert back["epoch"] == 3 and back["flag"] is None and back["name"] == "x"
    assert torch.equal(back["state_dict"]["w"], t)
    opt = back["optimizer_states"][0]
    assert list(opt["state"]) == [0] and torch.equal(opt["state"][0]["exp_avg"], t * 2)
    assert opt["param_groups"][0]["betas"] == (0.9, 0.999)
    assert float(back["callbacks"]["EarlyStopping{'monitor': 'val_loss'}"]["best_score"]) == 0.5
    assert torch.equal(back["shared"][1], t)
