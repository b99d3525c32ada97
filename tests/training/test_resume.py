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
