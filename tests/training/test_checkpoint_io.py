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


def test_every_dtype_shape_and_view_comes_back_exactly(tmp_path):
    """Checkpoints are written through numpy when every dtype allows it, else through torch (bfloat16):
    both keep dtype, shape (0-d included) and values, views and strided slices included."""
    base = torch.arange(12.0).view(3, 4)
    ts = {"f32": torch.randn(2, 3), "f64": torch.randn(2, dtype=torch.float64), "f16": torch.randn(3).half(),
          "i64": torch.tensor(7), "i32": torch.arange(4, dtype=torch.int32), "u8": torch.tensor([1, 255], dtype=torch.uint8),
          "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5), "column": base[:, 1], "view": base[1:],
          "grad": torch.ones(2, requires_grad=True) * 3}
    for extra in ({}, {"bf16": torch.randn(4).bfloat16()}):
        save_checkpoint_file({"t": {**ts, **extra}}, tmp_path / "c.ckpt")
        back = load_checkpoint_file(tmp_path / "c.ckpt")["t"]
        assert set(back) == set(ts) | set(extra)
        for k, v in {**ts, **extra}.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v.detach()), k
