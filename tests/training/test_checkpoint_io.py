import json
import pickle
import struct

import torch

from mmfuse.training.checkpoint_io import load_checkpoint_file, save_checkpoint_file


def no_unpickling(*args, **kwargs):
    raise AssertionError("loading a checkpoint must not unpickle")


def test_nested_checkpoint_round_trip_without_pickle(tmp_path, monkeypatch):
    t = torch.arange(6.0).view(2, 3)
    ckpt = {"epoch": 3, "state_dict": {"w": t, "b": torch.zeros(2)},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": t * 2}},
                                  "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]}],
            "callbacks": {"EarlyStopping{'monitor': 'val_loss'}": {"wait_count": 1, "best_score": torch.tensor(0.5)}},
            "flag": None, "name": "x", "shared": [t, t]}
    save_checkpoint_file(ckpt, tmp_path / "c.ckpt")
    # The file is exactly a safetensors file: a little-endian u64 header length, a JSON header
    # describing every tensor, then the raw tensor bytes and nothing else (no room for a pickle).
    raw = (tmp_path / "c.ckpt").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    json.loads(header.pop("__metadata__")["mmfuse_checkpoint"])  # the structure is JSON
    assert header and all(set(v) == {"dtype", "shape", "data_offsets"} for v in header.values())
    assert 8 + n + max(v["data_offsets"][1] for v in header.values()) == len(raw)
    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, no_unpickling)
    back = load_checkpoint_file(tmp_path / "c.ckpt")
    assert back["epoch"] == 3 and back["flag"] is None and back["name"] == "x"
    assert torch.equal(back["state_dict"]["w"], t)
    opt = back["optimizer_states"][0]
    assert list(opt["state"]) == [0] and torch.equal(opt["state"][0]["exp_avg"], t * 2)
    assert opt["param_groups"][0]["betas"] == (0.9, 0.999)
    assert float(back["callbacks"]["EarlyStopping{'monitor': 'val_loss'}"]["best_score"]) == 0.5
    assert torch.equal(back["shared"][1], t)
