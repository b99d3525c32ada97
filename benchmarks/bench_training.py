"""Training-loop overhead, `mmfuse predict` cold start, and single-row prediction latency.

1. Throughput of mmfuse's training loop (Lightning, callbacks, checkpoints) against a minimal
   hand-written PyTorch loop on the same model, data, optimizer, schedule and batches
   (demo table, all five inputs, concat fusion, warm cache). Both run E epochs of training
   plus a validation pass per epoch; throughput = training rows x epochs / wall time.
2. Cold start of `mmfuse predict BUNDLE TABLE` (a new process each time) on a 10-row table.
3. Latency of `Predictor.predict_proba` on one row (a one-row DataFrame), p50 and p99.

Usage: python benchmarks/bench_training.py [--out benchmarks/results/training.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
SEED = 0
EPOCHS = 8


def setup(work: Path):
    import torch

    from mmfuse import MultimodalDataset, build_preprocessors, infer_schema, make_loader, read_table
    from mmfuse._build import build_model
    from mmfuse.config import ModelConfig, TrainConfig
    from mmfuse.demo import DEMO_MODEL, DEMO_PREPROCESSING, make_demo_table
    from mmfuse.preprocessing import TargetEncoder

    path = make_demo_table(work / "data")
    table = read_table(path)
    schema = infer_schema(table, target="digit")
    n = len(table.df)
    tr, va = table.df.iloc[: int(0.8 * n)], table.df.iloc[int(0.8 * n):]
    preps = build_preprocessors(schema, read_table(tr, root=table.root), DEMO_PREPROCESSING)
    target = TargetEncoder("digit").fit(tr)
    ds_tr = MultimodalDataset(tr, preps, target, cache="memory", root=table.root, train=True)
    ds_va = MultimodalDataset(va, preps, target, cache="memory", root=table.root)
    tl = make_loader(ds_tr, 64, shuffle=True, seed=SEED)
    vl = make_loader(ds_va, 256)
    for _ in tl:  # fill the caches: both loops then measure training, not decoding
        pass
    for _ in vl:
        pass
    mcfg = ModelConfig(fusion="concat", **DEMO_MODEL)
    tcfg = TrainConfig(epochs=EPOCHS, batch_size=64, lr=3e-3, patience=EPOCHS + 1, log=None, progress=False,
                       seed=SEED)

    def fresh_model():
        torch.manual_seed(SEED)
        return build_model(preps, target.n_outputs, mcfg)[0]

    return table, preps, target, tl, vl, mcfg, tcfg, fresh_model, len(ds_tr)


def hand_loop(model, tl, vl, tcfg):
    import torch
    import torch.nn.functional as F

    from mmfuse.training.module import cosine_with_warmup

    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    total = tcfg.epochs * len(tl)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, int(tcfg.warmup * total)))
    for epoch in range(tcfg.epochs):
        model.train()
        tl.set_epoch(epoch)
        for b in tl:
            loss = F.cross_entropy(model(b["inputs"], b["mask"])["logits"], b["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            for b in vl:
                model(b["inputs"], b["mask"])


def bench_loop(work: Path) -> dict:
    from mmfuse.tasks import Task
    from mmfuse.training import train_model

    table, preps, target, tl, vl, mcfg, tcfg, fresh_model, n_train = setup(work)
    res = {}
    for rep in range(2):  # alternate, report the better of two runs of each
        t0 = time.perf_counter()
        hand_loop(fresh_model(), tl, vl, tcfg)
        res.setdefault("hand", []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        train_model(fresh_model(), Task.MULTICLASS, tl, vl, tcfg, mcfg, work / f"run{rep}")
        res.setdefault("mmfuse", []).append(time.perf_counter() - t0)
    hand, mm = min(res["hand"]), min(res["mmfuse"])
    return {"epochs": EPOCHS, "train_rows": n_train, "hand_seconds": round(hand, 2), "mmfuse_seconds": round(mm, 2),
            "hand_rows_per_s": round(n_train * EPOCHS / hand, 1), "mmfuse_rows_per_s": round(n_train * EPOCHS / mm, 1),
            "ratio": round(hand / mm, 3), "all_runs_s": {k: [round(x, 2) for x in v] for k, v in res.items()}}


def bench_predict(work: Path) -> dict:
    import numpy as np
    import pandas as pd

    from mmfuse.api import MultimodalPredictor
    from mmfuse.bundle import Predictor
    from mmfuse.demo import DEMO_MODEL, DEMO_PREPROCESSING, make_demo_table
    from mmfuse.io import read_table

    path = make_demo_table(work / "data")
    m = MultimodalPredictor(target="digit", fusion="concat", preprocessing=DEMO_PREPROCESSING, model=DEMO_MODEL,
                            epochs=2, progress=False, log=None, contribution=False)
    m.fit(path)
    m.save(work / "bundle")
    df = pd.read_csv(path)
    small = work / "data" / "small.csv"
    df.head(10).to_csv(small, index=False)
    cold = []
    for _ in range(7):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "mmfuse.cli", "predict", str(work / "bundle"), str(small), "--out",
                            str(work / "p.csv")], capture_output=True, text=True)
        cold.append(time.perf_counter() - t0)
        assert r.returncode == 0, r.stderr
    floor = []
    for _ in range(7):  # what importing the libraries alone costs on this machine
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, pandas, PIL.Image, soundfile, safetensors.torch"],
                       check=True)
        floor.append(time.perf_counter() - t0)
    pred = Predictor.load(work / "bundle")
    table = read_table(path)
    lat = []
    rows = [read_table(df.iloc[i:i + 1], root=table.root) for i in range(300)]
    for t in rows[:20]:  # warm up
        pred.predict_proba(t)
    for t in rows:
        t0 = time.perf_counter()
        pred.predict_proba(t)
        lat.append((time.perf_counter() - t0) * 1000)
    q = np.percentile(lat, [50, 99])
    return {"cold_start_s": {"median": round(statistics.median(cold), 3), "min": round(min(cold), 3),
                             "max": round(max(cold), 3), "runs": len(cold),
                             "import_torch_pandas_pillow_median": round(statistics.median(floor), 3)},
            "single_row_ms": {"p50": round(float(q[0]), 2), "p99": round(float(q[1]), 2), "runs": len(lat),
                              "inputs": "photo PNG, voice WAV, note text, motion CSV, size+batch tabular"}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "training.json")
    args = ap.parse_args()
    import torch

    from _env import environment

    work = Path(tempfile.mkdtemp(prefix="mmfuse_bench_"))
    out = {"benchmark": "training loop, predict cold start, single-row latency",
           "command": "python benchmarks/bench_training.py", "seed": SEED, "torch_threads": torch.get_num_threads(),
           **environment()}
    out["training_loop"] = bench_loop(work)
    print(json.dumps(out["training_loop"]), flush=True)
    out["prediction"] = bench_predict(work)
    print(json.dumps(out["prediction"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
