"""The cost of each fusion (issue 11): every fusion strategy in one run, on one data set, same encoders.

Data: the phone + watch windows of :func:`mmfuse.datasets.sp_sw_har` (9,365 fused windows, two
time-series inputs held in the table, so reading is not what is timed), split by subject: 15 subjects
train, 4 validate, 4 test (the quick run: 6 subjects, 2 / 2 / 2). Each fusion is fitted for a fixed
number of epochs (no early stopping) in its own fresh process, so that its peak memory is its own:

- parameters: the whole model's, and the fusion module's own (with the head, which depends on it);
- training time per epoch: the median over the epochs of an epoch's wall time (training and validation);
- inference time per 1,000 rows: ``predict_proba`` on the test rows (reading included), best of 3;
- peak memory: the process's peak resident set size, and its rise over the process before ``fit``.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from . import BenchContext, check_models

OPTIONS = {"epochs": int, "models": str}
SEEDS = False  # one measurement per fusion
PUBLISHED = {}


def _table_from(path: Path):
    import pandas as pd

    z = np.load(path)
    return pd.DataFrame({"phone": list(z["phone"]), "watch": list(z["watch"]), "label": z["label"],
                         "subject_id": z["subject"], "split": z["split"]})


def _measure(fusion: str, data_path: str, out: str, epochs: int, seed: int, result_path: str) -> None:
    """Runs in a fresh process: one fusion's fit and prediction, written as JSON to ``result_path``."""
    import resource

    import torch

    from mmfuse import MultimodalPredictor

    df = _table_from(Path(data_path))
    test = df[df["split"] == "test"]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    est = MultimodalPredictor(target="label", fusion=fusion, inputs=["phone", "watch"],
                              columns={"subject_id": "group", "split": "split"}, epochs=epochs, patience=epochs + 1,
                              seed=seed, progress=False, log=None, contribution=False, out=out)
    est.fit(df)
    hist = est.metrics_["history"]
    model = est.predictor_.model
    n_all = sum(p.numel() for p in model.parameters())
    n_fusion = sum(p.numel() for part in (model.fusion, model.head) if part is not None  # late fusion: no head
                   for p in part.parameters())
    times = []
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            est.predict_proba(test)
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(result_path).write_text(json.dumps({
        "fusion": fusion, "parameters": n_all, "fusion_and_head_parameters": n_fusion,
        "epoch_seconds": est.metrics_["epoch_seconds"], "epoch_seconds_median": float(np.median(
            [x for x in est.metrics_["epoch_seconds"] if x is not None])),
        "inference_ms_per_1000_rows": 1000 * min(times) / len(test) * 1000, "test_rows": len(test),
        "peak_rss_mib": round(rss, 1), "peak_rss_rise_mib": round(rss - rss0, 1),
        "test_accuracy": est.metrics_["test"]["accuracy"], "epochs": len(hist), "train_rows": est.metrics_["rows"]}))


def run(ctx: BenchContext) -> dict:
    from mmfuse import list_fusions
    from mmfuse.datasets import sp_sw_har

    o = ctx.options
    epochs = int(o.get("epochs", 1 if ctx.quick else 5))
    fusions = [f for f in str(o.get("models", "")).split(",") if f] or (
        ["concat", "late"] if ctx.quick else list_fusions())
    check_models("efficiency", fusions, list_fusions())
    t = sp_sw_har(ctx.data / "sp-sw-har", devices="both", subject_info=False)
    df = t.df
    subjects = sorted(df["subject_id"].unique())
    if ctx.quick:
        subjects = subjects[:6]
        df = df[df["subject_id"].isin(subjects)]
    n = len(subjects)
    n_test = n_val = max(1, round(n * 4 / 23))
    split = {s: "test" if i >= n - n_test else "val" if i >= n - n_test - n_val else "train"
             for i, s in enumerate(subjects)}
    data_path = ctx.out / "windows.npz"
    np.savez(data_path, phone=np.asarray(df["phone"].tolist(), np.float32), watch=np.asarray(df["watch"].tolist(), np.float32),
             label=df["label"].to_numpy(str), subject=df["subject_id"].to_numpy(str),
             split=df["subject_id"].map(split).to_numpy(str))
    rows = []
    spawn = mp.get_context("spawn")
    for f in fusions:
        res = ctx.out / f"{f}.json"
        res.unlink(missing_ok=True)
        p = spawn.Process(target=_measure, args=(f, str(data_path), str(ctx.out / "runs" / f), epochs, ctx.seeds[0],
                                                 str(res)))
        p.start()
        p.join()
        if p.exitcode != 0 or not res.exists():
            from mmfuse.errors import MmfuseError

            raise MmfuseError(f"efficiency: the measurement of fusion {f!r} failed (exit code {p.exitcode})")
        r = json.loads(res.read_text())
        rows.append(r)
        ctx.echo(f"{f}: {r['parameters']:,} parameters ({r['fusion_and_head_parameters']:,} fusion + head), "
                 f"{r['epoch_seconds_median']:.2f} s/epoch, {r['inference_ms_per_1000_rows']:.0f} ms per 1,000 rows, "
                 f"peak {r['peak_rss_mib']:.0f} MiB (+{r['peak_rss_rise_mib']:.0f})")
    return {"data": {"rows": int(len(df)), "subjects": {k: sum(v == k for v in split.values())
                                                          for k in ("train", "val", "test")}},
            "epochs": epochs, "fusions": rows}


def markdown(result: dict) -> str:
    d = result["data"]
    lines = ["# The cost of each fusion" + (" — quick run" if result["quick"] else ""), "",
             f"Phone + watch windows ({d['rows']:,} rows; subjects: " + ", ".join(f"{k} {v}" for k, v in d["subjects"].items())
             + f"), {result['epochs']} epochs each, "
             "one fresh process per fusion.", "",
             "| fusion | parameters | fusion + head | s / epoch (median) | ms / 1,000 rows (predict) | peak RSS MiB | "
             "rise MiB | test accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in result["fusions"]:
        lines.append(f"| {r['fusion']} | {r['parameters']:,} | {r['fusion_and_head_parameters']:,} | "
                     f"{r['epoch_seconds_median']:.2f} | {r['inference_ms_per_1000_rows']:.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['peak_rss_rise_mib']:.0f} | {r['test_accuracy']:.4f} |")
    lines += ["", "Test accuracy after a fixed, small number of epochs is shown only to say that each model "
              "trained; it is not a comparison of the fusions (see sp_sw_har.md)."]
    return "\n".join(lines) + "\n"
