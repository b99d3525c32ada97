"""Search on the Women's Clothing `Rating` target with a frozen all-MiniLM-L6-v2 (issue 10).

The published split (split.csv): the search sees only the train + val rows (21,137), scores each
trial by ``folds``-fold stratified cross-validation on them (macro-F1, the metric of the baselines),
and stops starting trials when the wall-time budget (``minutes``, default 60, counted from the start,
embedding cache build included) would be passed. Then the greedy ensemble (Caruana et al. 2004) of the
trials' out-of-fold predictions and the best configuration refit on the search rows are scored once
on the 2,349 test rows, which nothing before saw.

Inputs: the review (Title + Review Text, one text input, MiniLM frozen, mean pooling, 128 tokens; its
embeddings cached on disk, so only the first trial runs the backbone) and the tabular columns
(Division/Department/Class Name, Age, Positive Feedback Count). Recommended IND and Clothing ID are
left out. The search space is mmfuse's default (fusion, widths, dropout, modality dropout, lr, epochs)
plus what early stopping follows (validation loss or macro-F1). ``trials`` caps the number of trials
(default: none, the budget decides). The quick run: the first 150 rows of each split, 2 folds, 2 trials
within a 1-minute budget, an ensemble of 2.
"""
from __future__ import annotations

import importlib.resources
import time

from . import BenchContext

OPTIONS = {"minutes": float, "folds": int, "ensemble": int, "rows": int, "trials": int}
SEEDS = False
PUBLISHED = {"fine-tuned text model (README)": 0.494, "TF-IDF + logistic regression (README)": 0.460}
REFIT_MARGIN_S = 240  # left for the ensemble, the refit and the test scoring inside the budget


def _plain(v):
    """A leaderboard cell as it was set: whole numbers that pandas made floats (beside NaN) back to int."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def run(ctx: BenchContext) -> dict:
    import yaml

    import mmfuse
    from mmfuse import MultimodalPredictor, Predictor, evaluate_predictor
    from mmfuse.bench.womens_clothing import minilm
    from mmfuse.datasets import womens_clothing_table

    t_start = time.monotonic()
    o = ctx.options
    minutes = float(o.get("minutes", 1 if ctx.quick else 60))
    folds = int(o.get("folds", 2 if ctx.quick else 3))
    ensemble = int(o.get("ensemble", 2 if ctx.quick else 20))
    rows = o.get("rows", 150 if ctx.quick else None)
    n_trials = int(o.get("trials", 2 if ctx.quick else 10_000))
    seed = ctx.seeds[0]
    t = womens_clothing_table(ctx.data / "womens-clothing")
    df = t.df
    dev, test = df[df["split"] != "test"], df[df["split"] == "test"]
    if rows:
        dev, test = dev.iloc[:int(rows)], test.iloc[:int(rows)]
    dev = dev.drop(columns="split")  # the folds decide; the refit holds out its own validation rows
    est = MultimodalPredictor(
        target="Rating", columns={"Clothing ID": "ignore", "Recommended IND": "ignore"},
        groups={"review": ["Title", "Review Text"]},
        encoders={"review": {"name": "hf", "model": minilm(), "train": "frozen", "pooling": "mean", "max_length": 128}},
        batch_size=256, seed=seed, progress=False, log=None, contribution=False, root=t.root)
    budget = minutes * 60
    # at least one trial starts, however long loading took
    timeout = max(1.0, budget - min(REFIT_MARGIN_S, 0.15 * budget) - (time.monotonic() - t_start))
    ctx.echo(f"search: {len(dev)} rows, {folds}-fold CV, budget {minutes:g} min "
             f"(trials start until {timeout / 60:.1f} min from now)")
    space = yaml.safe_load((importlib.resources.files("mmfuse") / "search_space.yaml").read_text())
    space["monitor"] = {"type": "categorical", "choices": ["loss", "macro_f1"]}
    out = ctx.out / "search"
    res = mmfuse.search(est, dev, space=space, objective="cv", folds=folds, metric="macro_f1", n_trials=n_trials,
                        timeout=timeout, ensemble=ensemble, out=out, seed=seed, echo=ctx.echo)
    search_s = time.monotonic() - t_start

    def scored(pred):
        m = evaluate_predictor(pred, test, root=t.root)
        return {"macro_f1": round(m["macro_f1"], 4), "accuracy": round(m["accuracy"], 4)}

    board = res.leaderboard
    trials = board[board["trial"] != "ensemble"]
    ens_row = board[board["trial"] == "ensemble"]
    best = scored(res.best_estimator.predictor_)
    ens = scored(Predictor.load(out / "ensemble")) if res.ensemble and res.ensemble.get("members") else None
    cols = [c for c in trials.columns if c.startswith("param_")]
    return {
        "budget_minutes": minutes, "folds": folds, "rows": {"search": len(dev), "test": len(test)}, "space": space,
        "search_seconds_with_cache_build": round(search_s, 1),
        "trials": {s: int((trials["state"] == s).sum()) for s in ("complete", "pruned", "fail")},
        "best_trial": {"trial": res.best_trial, "cv_macro_f1": round(res.best_value, 4), "params": res.best_params,
                       "test": best},
        "ensemble": None if ens is None else {
            "cv_macro_f1": round(float(ens_row["value"].iloc[0]), 4),
            "cv_std": round(float(ens_row["fold_std"].iloc[0]), 4),
            "members": [{k: m.get(k) for k in ("trial_dir", "weight")} for m in res.ensemble["members"]],
            "test": ens},
        "top_trials": [{"trial": r["trial"], "cv_macro_f1": round(float(r["value"]), 4),
                        "cv_std": None if r["fold_std"] != r["fold_std"] else round(float(r["fold_std"]), 4),
                        "seconds": None if r["seconds"] != r["seconds"] else round(float(r["seconds"]), 1),
                        **{c[6:]: _plain(r[c]) for c in cols}}
                       for _, r in trials[trials["state"] == "complete"].head(10).iterrows()],
    }


def markdown(r: dict) -> str:
    import json

    lines = ["# Search on the Women's Clothing `Rating` target, frozen all-MiniLM-L6-v2"
             + (" — quick run" if r["quick"] else ""), "",
             f"Search rows {r['rows']['search']}, test rows {r['rows']['test']}; {r['folds']}-fold CV; budget "
             f"{r['budget_minutes']:g} min; search wall time incl. the embedding cache build, the ensemble and the "
             f"refit: {r['search_seconds_with_cache_build'] / 60:.1f} min; trials: {r['trials']}.", "",
             "| model | CV macro-F1 (search rows) | test macro-F1 | test accuracy |", "|---|---|---|---|"]
    b = r["best_trial"]
    lines.append(f"| best trial ({b['trial']}), refit on all search rows | {b['cv_macro_f1']:.4f} | "
                 f"{b['test']['macro_f1']:.4f} | {b['test']['accuracy']:.4f} |")
    if r["ensemble"]:
        e = r["ensemble"]
        lines.append(f"| ensemble of {len(e['members'])} trials (fold bundles) | {e['cv_macro_f1']:.4f} ± "
                     f"{e['cv_std']:.4f} | {e['test']['macro_f1']:.4f} | {e['test']['accuracy']:.4f} |")
    for name, v in r["published"].items():
        lines.append(f"| {name} | | {v:.3f} | |")
    lines += ["", "Top trials (CV on the search rows):", "",
              "| trial | CV macro-F1 | std | seconds | settings |", "|---|---|---|---|---|"]
    for t in r["top_trials"]:
        settings = ", ".join(f"{k}={v}" for k, v in t.items() if k not in ("trial", "cv_macro_f1", "cv_std", "seconds"))
        lines.append(f"| {t['trial']} | {t['cv_macro_f1']:.4f} | {t['cv_std']} | {t['seconds']} | {settings} |")
    lines += ["", f"Best settings: `{json.dumps(b['params'], default=str)}`"]
    return "\n".join(lines) + "\n"
