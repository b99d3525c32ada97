"""Training-loop overhead, ``mmfuse predict`` cold start and single-row latency (issue 11).

1. mmfuse's training loop (Lightning, early stopping, checkpoints, history) against a minimal hand-written
   PyTorch loop on the same model, data, optimizer, schedule, clipping and batches: the demo table (all
   five inputs, concat fusion), its first 80% of rows to train and the last 20% to validate, caches warm,
   so that both loops measure training and not decoding. Each loop runs ``epochs`` epochs of training and
   a validation pass per epoch; ``runs`` paired runs, the order alternating within each pair; reported:
   the ratio of the hand loop's wall time to mmfuse's (mmfuse's throughput as a fraction of the hand
   loop's), its median, min and max.
2. Cold start of ``mmfuse predict BUNDLE TABLE`` (a new process each time) on a 10-row table, beside what
   importing torch, pandas, Pillow, soundfile and safetensors alone costs.
3. Latency of :meth:`Predictor.predict_proba` on one row (a one-row table), p50 and p99 over 300 rows.

Needs no data set (the demo table is generated).
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import BenchContext

OPTIONS = {"runs": int, "epochs": int, "parts": str}
SEEDS = False
NEEDS_DATA = False  # the demo table is generated
PUBLISHED = {}
TARGETS = {"loop_ratio_median": 0.95}
PARTS = ("loop", "predict")


def _setup(work: Path, epochs: int, seed: int):
    """The demo table through mmfuse's public fit steps."""
    import torch

    from mmfuse import Splits, build_model, fit_preprocessors, fit_target, make_datasets, read_table, select_inputs
    from mmfuse.config import ModelConfig, TrainConfig
    from mmfuse.demo import DEMO_MODEL, DEMO_PREPROCESSING, make_demo_table

    table = read_table(make_demo_table(work / "data"))
    schema, inputs = select_inputs(table, "digit")
    n = len(table.df)
    splits = Splits(table.df.iloc[: int(0.8 * n)], table.df.iloc[int(0.8 * n):], table.df.iloc[:0], table.root,
                    "first 80% / last 20%")
    mcfg = ModelConfig(fusion="concat", **DEMO_MODEL)
    tcfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, patience=epochs + 1, log=None, progress=False,
                       seed=seed, cache="memory")
    task = fit_target(splits.train, "digit", tcfg=tcfg)
    preps = fit_preprocessors(schema, inputs, splits.train, table.root, mcfg, tcfg, DEMO_PREPROCESSING)
    data = make_datasets(splits, preps, task, tcfg)
    for loader in (data.train_loader, data.val_loader):  # fill the caches
        for _ in loader:
            pass

    def fresh_model():
        torch.manual_seed(seed)
        return build_model(preps, task.n_outputs, mcfg)[0]

    return task, data, mcfg, tcfg, fresh_model, len(data.train)


def hand_loop(model, task, train_loader, val_loader, tcfg) -> None:
    """A minimal PyTorch loop: the task's loss, AdamW, the same schedule and clipping, one validation pass."""
    import torch

    from mmfuse.training.module import cosine_with_warmup

    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    total = tcfg.epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, int(tcfg.warmup * total)))
    for epoch in range(tcfg.epochs):
        model.train()
        train_loader.set_epoch(epoch)
        for b in train_loader:
            loss = task.loss(model(b["inputs"], b["mask"])["logits"], b["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            for b in val_loader:
                model(b["inputs"], b["mask"])


def loop_overhead(work: Path, runs: int, epochs: int, seed: int, echo=print) -> dict:
    from mmfuse import train

    task, data, mcfg, tcfg, fresh_model, n_train = _setup(work, epochs, seed)
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
        echo(f"pair {rep + 1}: hand {pair['hand']:.2f} s, mmfuse {pair['mmfuse']:.2f} s, ratio {pair['ratio']:.3f}")
    ratios = [p["ratio"] for p in pairs]
    hand, mm = statistics.median(p["hand"] for p in pairs), statistics.median(p["mmfuse"] for p in pairs)
    return {"epochs": epochs, "train_rows": n_train, "pairs": runs, "hand_seconds_median": round(hand, 2),
            "mmfuse_seconds_median": round(mm, 2), "hand_rows_per_s": round(n_train * epochs / hand, 1),
            "mmfuse_rows_per_s": round(n_train * epochs / mm, 1), "ratio_median": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "all_pairs_s": [{k: round(v, 3) for k, v in p.items()} for p in pairs]}


def prediction(work: Path, repeats: int, rows: int, seed: int, epochs: int = 2) -> dict:
    import numpy as np
    import pandas as pd

    from mmfuse import MultimodalPredictor, Predictor, read_table
    from mmfuse.demo import DEMO_MODEL, DEMO_PREPROCESSING, make_demo_table

    path = make_demo_table(work / "data")
    m = MultimodalPredictor(target="digit", fusion="concat", preprocessing=DEMO_PREPROCESSING, **DEMO_MODEL,
                            epochs=epochs, progress=False, log=None, contribution=False, seed=seed, out=work / "fit")
    m.fit(path)
    m.save(work / "bundle")
    df = pd.read_csv(path)
    small = work / "data" / "small.csv"
    df.head(10).to_csv(small, index=False)
    cold, floor = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "mmfuse.cli", "predict", str(work / "bundle"), str(small), "--out",
                            str(work / "p.csv")], capture_output=True, text=True)
        cold.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise RuntimeError(f"mmfuse predict failed: {r.stderr.strip()[-500:]}")
    for _ in range(repeats):  # what importing the libraries alone costs on this machine
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, pandas, PIL.Image, soundfile, safetensors.torch"],
                       check=True)
        floor.append(time.perf_counter() - t0)
    pred = Predictor.load(work / "bundle")
    table = read_table(path)
    one_row = [read_table(df.iloc[i:i + 1], root=table.root) for i in range(rows)]
    for t in one_row[:10]:  # warm up
        pred.predict_proba(t)
    lat = []
    for t in one_row:
        t0 = time.perf_counter()
        pred.predict_proba(t)
        lat.append((time.perf_counter() - t0) * 1000)
    q = np.percentile(lat, [50, 99])
    return {"cold_start_s": {"median": round(statistics.median(cold), 3), "min": round(min(cold), 3),
                             "max": round(max(cold), 3), "runs": len(cold),
                             "import_torch_pandas_pillow_median": round(statistics.median(floor), 3)},
            "single_row_ms": {"p50": round(float(q[0]), 2), "p99": round(float(q[1]), 2), "runs": len(lat),
                              "inputs": "photo PNG, voice WAV, note text, motion CSV, size+batch tabular"}}


def run(ctx: BenchContext) -> dict:
    import torch

    from mmfuse.errors import MmfuseError

    o = ctx.options
    parts = [p for p in str(o.get("parts", ",".join(PARTS))).split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise MmfuseError(f"--set parts={o.get('parts')}: a comma-separated list of {', '.join(PARTS)}")
    runs = int(o.get("runs", 1 if ctx.quick else 5))
    epochs = int(o.get("epochs", 2 if ctx.quick else 8))
    seed = ctx.seeds[0]
    out = {"torch_threads": torch.get_num_threads(), "parts": parts}
    if "loop" in parts:
        ctx.echo(f"training loop: {runs} paired runs of {epochs} epochs each (hand-written, then mmfuse, alternating)")
        out["training_loop"] = loop_overhead(ctx.out / "loop", runs, epochs, seed, ctx.echo)
        out["training_loop"]["target_ratio_median"] = TARGETS["loop_ratio_median"]
    elif ctx.previous.get("training_loop"):  # keep the other part's numbers of the last run, said so
        out["training_loop"] = {**ctx.previous["training_loop"], "kept_from": ctx.previous.get("command")}
    if "predict" in parts:
        ctx.echo("prediction: a bundle fitted on the demo table; mmfuse predict cold starts, then one-row latency")
        out["prediction"] = prediction(ctx.out / "predict", 2 if ctx.quick else 7, 20 if ctx.quick else 300, seed,
                                       1 if ctx.quick else 2)
    elif ctx.previous.get("prediction"):
        out["prediction"] = {**ctx.previous["prediction"], "kept_from": ctx.previous.get("command")}
    return out


def markdown(result: dict) -> str:
    lines = ["# Training-loop overhead and prediction latency" + (" — quick run" if result["quick"] else ""), ""]
    t = result.get("training_loop")
    if t:
        lines += [f"## Training loop (demo table, concat fusion, {t['train_rows']:,} training rows, {t['epochs']} epochs, "
                  f"{t['pairs']} paired runs)", "",
                  "| loop | median s | rows/s |", "|---|---|---|",
                  f"| hand-written PyTorch | {t['hand_seconds_median']:.2f} | {t['hand_rows_per_s']:,.0f} |",
                  f"| mmfuse (Lightning) | {t['mmfuse_seconds_median']:.2f} | {t['mmfuse_rows_per_s']:,.0f} |", "",
                  f"mmfuse's throughput as a fraction of the hand loop's, per pair: median {t['ratio_median']:.3f} "
                  f"(min {t['ratio_min']:.3f}, max {t['ratio_max']:.3f}); target: a median of at least "
                  f"{t.get('target_ratio_median', TARGETS['loop_ratio_median'])}."
                  + (f" (Kept from an earlier run: `{t['kept_from']}`.)" if t.get("kept_from") else "")]
    p = result.get("prediction")
    if p:
        c, s = p["cold_start_s"], p["single_row_ms"]
        lines += ["", "## Prediction", "",
                  f"- `mmfuse predict` on 10 rows, a new process each time: median {c['median']:.2f} s (min "
                  f"{c['min']:.2f}, max {c['max']:.2f}, {c['runs']} runs); importing torch, pandas, Pillow, soundfile "
                  f"and safetensors alone: {c['import_torch_pandas_pillow_median']:.2f} s.",
                  f"- `Predictor.predict_proba` on one row ({s['inputs']}): p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms "
                  f"({s['runs']} rows)." + (f" (Kept from an earlier run: `{p['kept_from']}`.)" if p.get("kept_from") else "")]
    return "\n".join(lines) + "\n"
