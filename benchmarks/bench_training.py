"""Training-loop overhead, `mmfuse predict` cold start, and single-row prediction latency.

1. Throughput of mmfuse's training loop (Lightning, callbacks, checkpoints) against a minimal
   hand-written PyTorch loop on the same model, data, optimizer, schedule and batches
   (demo table, all five inputs, concat fusion, warm cache). Both run E epochs of training
   plus a validation pass per epoch; throughput = training rows x epochs / wall time; 5 paired
   runs (order alternating), the ratio's median, min and max.
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
    """The demo table through mmfuse's public fit steps: first 80% of rows to train, last 20% to validate."""
    import torch

    from mmfuse import Splits, build_model, fit_preprocessors, fit_target, make_datasets, read_table, select_inputs
    from mmfuse.config import ModelConfig, TrainConfig
    from mmfuse.demo import DEMO_MODEL, DEMO_PREPROCESSING, make_demo_table

    path = make_demo_table(work / "data")
    table = read_table(path)
    schema, inputs = select_inputs(table, "digit")
    n = len(table.df)
    splits = Splits(table.df.iloc[: int(0.8 * n)], table.df.iloc[int(0.8 * n):], table.df.iloc[:0], table.root,
                    "first 80% / last 20%")
    mcfg = ModelConfig(fusion="concat", **DEMO_MODEL)
    tcfg = TrainConfig(epochs=EPOCHS, batch_size=64, lr=3e-3, patience=EPOCHS + 1, log=None, progress=False,
                       seed=SEED, cache="memory")
    task = fit_target(splits.train, "digit", tcfg=tcfg)
    preps = fit_preprocessors(schema, inputs, splits.train, table.root, mcfg, tcfg, DEMO_PREPROCESSING)
    data = make_datasets(splits, preps, task, tcfg)
    for _ in data.train_loader:  # fill the caches: both loops then measure training, not decoding
        pass
    for _ in data.val_loader:
        pass

    def fresh_model():
        torch.manual_seed(SEED)
        return build_model(preps, task.n_outputs, mcfg)[0]

    return task, data, mcfg, tcfg, fresh_model, len(data.train)


def hand_loop(model, task, tl, vl, tcfg):
    """A minimal PyTorch loop: the task's loss, AdamW, the same schedule and clipping, one validation pass."""
    import torch

    from mmfuse.training.module import cosine_with_warmup

    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    total = tcfg.epochs * len(tl)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, int(tcfg.warmup * total)))
    for epoch in range(tcfg.epochs):
        model.train()
        tl.set_epoch(epoch)
        for b in tl:
            loss = task.loss(model(b["inputs"], b["mask"])["logits"], b["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            for b in vl:
                model(b["inputs"], b["mask"])


def bench_loop(work: Path, runs: int = 5) -> dict:
    """``runs`` paired runs (the order alternates within each pair): the ratio hand / mmfuse of each pair's wall
    times (mmfuse's throughput as a fraction of the hand-written loop's), reported as median, min and max."""
    from mmfuse import train

    task, data, mcfg, tcfg, fresh_model, n_train = setup(work)
    hand_loop(fresh_model(), task, data.train_loader, data.val_loader, tcfg)  # warm-up of both paths
    train(fresh_model(), task, data, mcfg, tcfg, work / "warm")
    pairs = []
    for rep in range(runs):
        pair = {}
        for which in (("hand", "mmfuse") if rep % 2 == 0 else ("mmfuse", "hand")):
            t0 = time.perf_counter()
            if which == "hand":
                hand_loop(fresh_model(), task, data.train_loader, data.val_loader, tcfg)
            else:
                train(fresh_model(), task, data, mcfg, tcfg, work / f"run{rep}")
            pair[which] = time.perf_counter() - t0
        pair["ratio"] = pair["hand"] / pair["mmfuse"]
        pairs.append(pair)
        print(f"pair {rep}: hand {pair['hand']:.2f} s, mmfuse {pair['mmfuse']:.2f} s, ratio {pair['ratio']:.3f}", flush=True)
    ratios = [p["ratio"] for p in pairs]
    hand, mm = statistics.median(p["hand"] for p in pairs), statistics.median(p["mmfuse"] for p in pairs)
    return {"epochs": EPOCHS, "train_rows": n_train, "pairs": runs, "hand_seconds_median": round(hand, 2),
            "mmfuse_seconds_median": round(mm, 2), "hand_rows_per_s": round(n_train * EPOCHS / hand, 1),
            "mmfuse_rows_per_s": round(n_train * EPOCHS / mm, 1), "ratio_median": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "all_pairs_s": [{k: round(v, 3) for k, v in p.items()} for p in pairs]}


def bench_predict(work: Path) -> dict:
    import numpy as np
    import pandas as pd

    from mmfuse import MultimodalPredictor, Predictor, read_table
    from mmfuse.demo import DEMO_MODEL, DEMO_PREPROCESSING, make_demo_table

    path = make_demo_table(work / "data")
    m = MultimodalPredictor(target="digit", fusion="concat", preprocessing=DEMO_PREPROCESSING, **DEMO_MODEL,
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
    ap.add_argument("--runs", type=int, default=5, help="paired runs of the training-loop comparison")
    ap.add_argument("--loop-only", action="store_true", help="only the training-loop comparison")
    args = ap.parse_args()
    import torch

    from _env import environment

    work = Path(tempfile.mkdtemp(prefix="mmfuse_bench_"))
    out = {"benchmark": "training loop, predict cold start, single-row latency",
           "command": "python benchmarks/bench_training.py", "seed": SEED, "torch_threads": torch.get_num_threads(),
           **environment()}
    out["training_loop"] = bench_loop(work, args.runs)
    print(json.dumps(out["training_loop"]), flush=True)
    if args.loop_only and args.out.exists():  # keep the prediction numbers of the last full run
        out["prediction"] = json.loads(args.out.read_text()).get("prediction")
        out["command"] += " --loop-only"
    else:
        out["prediction"] = bench_predict(work)
    print(json.dumps(out["prediction"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
