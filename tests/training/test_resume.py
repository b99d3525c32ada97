"""A run killed with SIGKILL resumes from its last checkpoint and ends with the same metrics."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_tabular_text_table


def fit_cmd(data, out, *extra):
    return [sys.executable, "-m", "mmfuse.cli", "fit", str(data), "--target", "y", "--fusion", "concat",
            "--epochs", "8", "--batch-size", "16", "--out", str(out), "--no-progress", "--seed", "3", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data.csv"
    make_tabular_text_table(600).to_csv(data, index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train:\n  patience: 50\n  log: csv\nmodel:\n  modality_dropout: 0.2\n  dim: 32\n")
    ref = subprocess.run(fit_cmd(data, tmp_path / "ref", "--config", str(cfg)), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    victim = subprocess.Popen(fit_cmd(data, tmp_path / "run", "--config", str(cfg)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if (ckpt_dir / "last.ckpt").exists():
            time.sleep(0.35)  # into the next epoch, between checkpoints
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (tmp_path / "run" / "metrics.json").exists()  # it really died mid-run

    resumed = subprocess.run(fit_cmd(data, tmp_path / "run", "--config", str(cfg), "--resume"), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    b = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(a["history"]) == 8 and a["history"] == b["history"]
    assert a["val"] == b["val"] and a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    # it continued after a completed epoch (0-based index in the checkpoint), not from scratch
    assert a["resumed_from_epoch"] is None and 0 <= b["resumed_from_epoch"] < 7
    assert f"resumed after epoch {b['resumed_from_epoch'] + 1}\n" in resumed.stdout
    # --resume on the finished run trains nothing, and says so (it used to say "resumed after epoch 8")
    again = subprocess.run(fit_cmd(data, tmp_path / "run", "--config", str(cfg), "--resume"), capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr
    assert "had already finished after epoch 8: nothing was trained" in again.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["history"] == a["history"]


def tiny_run(tmp_path, batch_size=8):
    """A 1-epoch training on 16 rows of one numeric input, through train_model directly."""
    import numpy as np
    import pandas as pd

    from mmfuse import MultimodalDataset, build_preprocessors, infer_schema, make_loader, read_table
    from mmfuse._build import build_model
    from mmfuse.config import ModelConfig, TrainConfig
    from mmfuse.tasks import fit_task
    from mmfuse.training import train_model

    df = pd.DataFrame({"x": np.arange(16.0), "y": ["a", "b"] * 8})
    table = read_table(df)
    preps = build_preprocessors(infer_schema(table, target="y"), table, {})
    task = fit_task(df, "y")
    loader = make_loader(MultimodalDataset(table, preps, task), batch_size=batch_size)
    mcfg, tcfg = ModelConfig(dim=8, head_hidden=8), TrainConfig(epochs=1, progress=False, log=None, seed=0)

    def train(fingerprint, resume=False, epochs=1):
        model, _ = build_model(preps, task.n_outputs, mcfg)
        tcfg.epochs = epochs
        return train_model(model, task, loader, loader, tcfg, mcfg, tmp_path / "run", resume=resume,
                           fingerprint=fingerprint)

    return train


def test_resume_refuses_a_checkpoint_of_other_data_or_settings(tmp_path):
    from mmfuse.errors import MmfuseError

    train = tiny_run(tmp_path)
    fp = {"data": {"train": "aaaa", "val": "bbbb"}, "model": {"fusion": "concat", "dim": 8}}
    train(fp)
    with pytest.raises(MmfuseError, match=r"was trained on other data: other training rows \(their content, order or columns "
                                          r"differ\); "
                                          r"start a new --out folder or drop --resume"):
        train({**fp, "data": {"train": "cccc", "val": "bbbb"}}, resume=True)
    with pytest.raises(MmfuseError, match=r"with model.fusion 'concat', now 'gated'"):
        train({**fp, "model": {"fusion": "gated", "dim": 8}}, resume=True)
    out = train(fp, resume=True, epochs=2)  # the same run, trained longer: accepted
    assert out["resumed_from_epoch"] == 0 and [h["epoch"] for h in out["history"]] == [0, 1]


def test_a_finished_run_resumed_with_more_epochs_trains_on_from_its_longer_schedule(tmp_path):
    """One step an epoch: the checkpoint holds the rate its 1-epoch schedule ended at (0). The resumed run's first
    step takes the rate of its 2-epoch schedule instead, so epoch 2 moves the weights (it trained nothing before)."""
    train = tiny_run(tmp_path, batch_size=16)
    fp = {"data": {"train": "aaaa"}}
    first = train(fp)
    longer = train(fp, resume=True, epochs=2)
    assert longer["resumed_from_epoch"] == 0 and [h["epoch"] for h in longer["history"]] == [0, 1]
    assert longer["history"][0] == first["history"][0]
    assert longer["history"][1]["val_loss"] != longer["history"][0]["val_loss"]
