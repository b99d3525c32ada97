"""Training throughput on 1 and 2 processes (DDP), as a user runs it: ``torchrun ... mmfuse fit --devices N``.

The table: the audio-visual digits (:func:`mmfuse.datasets.fsdd_mnist`; images and log-mel audio through the
``fsdd_mnist`` protocol's CNNs), its training and test rows as training rows (2,500) and 200 of its validation
rows as validation rows (so that validation, which every process runs on all its rows, is a small part of an
epoch). Each configuration is its own ``mmfuse fit`` under ``torchrun --nproc_per_node N`` with
``--devices N --strategy ddp`` (gloo on CPU) and the same effective batch (``batch_size`` rows per step in
all: ``batch_size / N`` per process). Reported: the median wall time of the epochs after the first (the first
decodes every file into the cache) from the run's ``metrics.json``, as training rows per second (validation of
200 rows included), and the speed-up over one process with every core.

Configurations (``--set configs=...``): ``1x2`` (one process, 2 torch threads), ``1x1`` (one process, one thread:
the per-process budget of the 2-process run) and ``2x1`` (two processes, one thread each). On GPUs (where the
``device`` tool lends one) run the same command with ``--set accelerator=gpu``.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import BenchContext, free_port

OPTIONS = {"configs": str, "epochs": int, "batch_size": int, "accelerator": str}
SEEDS = False
PUBLISHED = {"note": "no published figure: throughput of this machine, for the scaling table of issue 14"}


def run(ctx: BenchContext) -> dict:
    import pandas as pd

    from mmfuse.datasets import FSDD_MNIST_ROLES, fsdd_mnist

    from .fsdd_mnist import ENCODERS, PREPROCESSING

    o = ctx.options
    configs = [c for c in str(o.get("configs", "1x2,1x1,2x1")).split(",") if c]
    epochs = int(o.get("epochs", 2 if ctx.quick else 4))
    batch = int(o.get("batch_size", 64))
    accelerator = str(o.get("accelerator", "cpu"))
    t = fsdd_mnist(ctx.data / "fsdd", ctx.data / "mnist", ctx.out / "data")
    df = t.df.copy()
    val = df.index[df["split"] == "val"][:200]
    df.loc[df["split"] == "test", "split"] = "train"
    df = df[(df["split"] == "train") | df.index.isin(val)]
    if ctx.quick:
        df = pd.concat([df[df["split"] == "train"].head(256), df[df["split"] == "val"].head(64)])
    table = ctx.out / "table.csv"
    df.to_csv(table, index=False)
    cfg = {"target": "label", "columns": dict(FSDD_MNIST_ROLES), "model": {"encoders": ENCODERS, "fusion": "concat"},
           "preprocessing": PREPROCESSING,
           "train": {"epochs": epochs, "min_steps": 0, "patience": epochs, "log": None, "accelerator": accelerator}}
    (ctx.out / "config.json").write_text(json.dumps(cfg))
    own = Path(sys.executable).parent / "mmfuse"  # this environment's command, not another on the PATH
    mmfuse = str(own) if own.exists() else shutil.which("mmfuse")
    rows_train = int((df["split"] == "train").sum())
    out = {"rows": {"train": rows_train, "val": int((df["split"] == "val").sum())}, "epochs": epochs,
           "batch_size": batch, "accelerator": accelerator, "runs": {}}
    for c in configs:
        procs, threads = (int(x) for x in c.split("x"))
        if batch % procs:
            raise ValueError(f"batch_size {batch} does not split over {procs} processes")
        run_dir = ctx.out / f"run_{c}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), mmfuse, "fit", str(table),
               "--config", str(ctx.out / "config.json"), "--root", str(t.root), "-o", str(run_dir), "--overwrite", "--no-progress",
               "--devices", str(procs), "--strategy", "ddp" if procs > 1 else "auto",
               "--batch-size", str(batch // procs), "--accelerator", accelerator]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        ctx.echo(f"{c}: {procs} process(es) x {threads} thread(s), batch {batch // procs} per process")
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ctx.out)
        if p.returncode != 0:
            raise RuntimeError(f"mmfuse fit on {c} failed:\n{p.stderr[-3000:]}")
        m = json.loads((run_dir / "metrics.json").read_text())
        secs = [s for s in (m.get("epoch_seconds") or [])[1:] if s]
        med = statistics.median(secs)
        out["runs"][c] = {"processes": procs, "threads": threads, "world_size": m.get("world_size"),
                          "epoch_seconds": m.get("epoch_seconds"), "median_epoch_seconds": med,
                          "rows_per_second": round(rows_train / med, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
                          "val_accuracy": m["val"]["accuracy"], "command": " ".join(cmd[:2] + ["torch.distributed.run"]
                                                                                    + cmd[3:]).replace(str(ctx.out), "WORK").replace(str(t.root), "DATA")}
        ctx.echo(f"  median epoch {med:.2f} s, {rows_train / med:.0f} rows/s, val accuracy {m['val']['accuracy']:.3f}")
    base = out["runs"].get("1x2") or next(iter(out["runs"].values()))
    for r in out["runs"].values():
        r["speedup_vs_first"] = round(r["rows_per_second"] / base["rows_per_second"], 2)
    return out


def markdown(result: dict) -> str:
    lines = ["# Training throughput on 1 and 2 processes (DDP)" + (" — quick run" if result["quick"] else ""), "",
             f"Audio-visual digits, concat fusion of the image and audio CNNs; {result['rows']['train']:,} training "
             f"rows, {result['rows']['val']} validation rows; effective batch {result['batch_size']} rows per step; "
             f"{result['epochs']} epochs, the median of epochs 2 and later; accelerator {result['accelerator']}.", "",
             "| processes × threads | world size | median epoch (s) | training rows/s | speed-up | val accuracy |",
             "|---|---|---|---|---|---|"]
    for c, r in result["runs"].items():
        lines.append(f"| {r['processes']} × {r['threads']} | {r['world_size']} | {r['median_epoch_seconds']:.2f} | "
                     f"{r['rows_per_second']:,.0f} | {r['speedup_vs_first']:.2f} | {r['val_accuracy']:.3f} |")
    lines += ["", "Speed-up against the first row. Each run: `" + next(iter(result["runs"].values()))["command"]
              + "` (WORK: the work folder; DATA: the digits' files).", ""]
    return "\n".join(lines)
