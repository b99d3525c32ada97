"""Leave-one-subject-out on the smartphone + smartwatch HAR data (issue 10), against the published numbers.

Protocol (../shared/data/README.md, from the data set's authors): windows of 50 samples with 50%
overlap; phone-only and watch-only models on their own window sets (10,042 and 10,170 windows), fused
models on the paired windows (9,365); train on 22 subjects, test on the held-out one; report the
median accuracy over the 23 subjects. Published medians (CNN): phone 0.886, watch 0.874, fused 0.902.

Differences from the authors' protocol: one fit per fold (they repeat each fold 10 times and take the
median), mmfuse's default time-series encoder and training settings (they grid-searched per model),
early stopping on validation subjects split off each fold's 22 training subjects (grouped, so no
subject is in both), and only the sensor columns as inputs (the subject information columns are left
out so that the models see what the authors' saw).

Models: phone, watch, any fusion name (phone + watch), alpha (the CV-chosen α of weighted fusion:
:func:`mmfuse.search_alpha`), searched (an Optuna search on the first ``search_subjects`` subjects only,
objective: validation subjects split off them, budget ``search_minutes``; its best configuration is then
cross-validated leave-one-subject-out like the others, and every model is also reported on the subjects
the search never saw, so that the searched row is compared honestly). Rows of models not run now are
kept from the results file already there.
"""
from __future__ import annotations

import json
import time

import numpy as np

from . import BenchContext, check_models

OPTIONS = {"epochs": int, "batch_size": int, "monitor": str, "subjects": int, "search_minutes": float,
           "search_subjects": int, "models": str}
SEEDS = False  # one fit per fold (the authors repeat each fold 10 times)
PUBLISHED = {"phone": 0.886, "watch": 0.874, "fused": 0.902}


def run(ctx: BenchContext) -> dict:
    from mmfuse import MultimodalPredictor, cross_validate, search, search_alpha
    from mmfuse.datasets import SP_SW_HAR_ROLES, sp_sw_har

    o = ctx.options
    epochs = int(o.get("epochs", 2 if ctx.quick else 30))
    batch = int(o.get("batch_size", 128))
    monitor = o.get("monitor", "loss")
    n_subjects = int(o.get("subjects", 3 if ctx.quick else 23))
    search_minutes = float(o.get("search_minutes", 0.5 if ctx.quick else 8))
    search_subjects = int(o.get("search_subjects", 2 if ctx.quick else 8))
    names = [m for m in str(o.get("models", "phone,watch,concat" if ctx.quick else "")).split(",") if m]
    from mmfuse import list_fusions

    names = names or ["phone", "watch", *list_fusions(), "alpha", "searched"]
    check_models("sp_sw_har", names, ["phone", "watch", *list_fusions(), "alpha", "searched"])
    seed = ctx.seeds[0]
    from . import environment

    commit = environment()["commit"]
    root = ctx.data / "sp-sw-har"
    tables = {d: sp_sw_har(root, devices=d, subject_info=False) for d in ("sp", "sw", "both")}
    if n_subjects < 23:
        for t in tables.values():
            keep = sorted(t.df["subject_id"].unique())[:n_subjects]
            t.df = t.df[t.df["subject_id"].isin(keep)].reset_index(drop=True)
    common = dict(target="label", columns=dict(SP_SW_HAR_ROLES), epochs=epochs, seed=seed, progress=False,
                  batch_size=batch, monitor=monitor, log=None, contribution=False)
    models = dict(ctx.previous.get("models", {}))
    searched_subjects = sorted(tables["both"].df["subject_id"].unique())[:search_subjects]
    settings = {"epochs": epochs, "batch_size": batch, "seed": seed, "monitor": monitor}
    for name in names:
        t0 = time.perf_counter()
        out = ctx.out / name
        if name in ("phone", "watch"):
            table = tables["sp" if name == "phone" else "sw"]
            est = MultimodalPredictor(**common, inputs=[name])
        else:
            table = tables["both"]
            est = MultimodalPredictor(**common, inputs=["phone", "watch"],
                                      fusion={"alpha": "weighted", "searched": "concat"}.get(name, name))
        extra = {}
        if name == "searched":  # search on some subjects' grouped validation split, then LOSO with the best
            part = table.df[table.df["subject_id"].isin(searched_subjects)]
            found = search(est, part, objective="val", group_column="subject_id", n_trials=1000,
                           timeout=search_minutes * 60, out=out / "search", refit=False, fixed=["epochs"],
                           echo=ctx.echo)
            est = MultimodalPredictor(**{**est.get_params(), **found.best_params})
            extra = {"search": {"trials": len(found.leaderboard), "best_val_accuracy": found.best_value,
                                "best_params": found.best_params, "minutes": search_minutes,
                                "subjects": searched_subjects}}
        if name == "alpha":
            res = search_alpha(est, table, leave_one_out="subject_id", out=out, jobs=ctx.jobs, compare_late=False,
                               echo=ctx.echo)
            scores = res.chosen["scores"]  # chosen on each fold's validation subjects, scored on the held-out one
            folds = json.loads((out / "learned" / "cv.json").read_text())["folds"]
            subjects = [g for f in folds for g in f["groups"]]
            extra |= {"chosen_weights_per_fold": res.chosen["weights_per_fold"], "curve_best_weights": res.best["weights"],
                      "learned_weights_median": float(np.median(res.learned["scores"]))}
        else:
            res = cross_validate(est, table, leave_one_out="subject_id", out=out / "loso" if name == "searched" else out,
                                 jobs=ctx.jobs, echo=ctx.echo)
            scores = [f["metrics"]["accuracy"] for f in res.folds]
            subjects = [g for f in res.folds for g in f["groups"]]
            extra |= {"epochs_run": [f["epochs_run"] for f in res.folds]}
        models[name] = {"inputs": name if name in ("phone", "watch") else "phone + watch",
                        "windows": len(table.df), "folds": len(scores),
                        "median_accuracy": float(np.median(scores)), "mean_accuracy": float(np.mean(scores)),
                        "std_accuracy": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
                        "per_subject": scores, "subjects": subjects, "settings": settings,
                        "seconds": round(time.perf_counter() - t0, 1), "commit": commit,
                        "date": time.strftime("%Y-%m-%d"), **extra}  # rows kept from earlier runs keep theirs
        ctx.echo(f"{name}: median accuracy {models[name]['median_accuracy']:.4f} over {len(scores)} subjects")
    prev = ctx.previous  # the commands of the rows kept from the results file already there
    commands = list(dict.fromkeys([*prev.get("earlier_commands", []), *prev.get("commands", []),
                                   *([prev["command"]] if prev.get("command") else [])]))
    return {"models": models, "subjects_seen_by_search": searched_subjects, "subjects": n_subjects,
            "earlier_commands": commands}


def markdown(result: dict) -> str:
    seen = set(result.get("subjects_seen_by_search", []))
    everyone = {g for m in result["models"].values() for g in m.get("subjects", [])}
    lines = ["# Leave-one-subject-out, smartphone + smartwatch HAR" + (" — quick run" if result.get("quick") else ""), "",
             f"| model | inputs | windows | subjects | median accuracy | mean ± std | median on the {len(everyone - seen)} "
             "subjects the search never saw | epochs / batch / monitor | published median (CNN) |",
             "|---|---|---|---|---|---|---|---|---|"]
    pub = result["published"]
    for name, m in result["models"].items():
        ref = pub["phone"] if name == "phone" else pub["watch"] if name == "watch" else pub["fused"]
        unseen = [a for a, g in zip(m["per_subject"], m.get("subjects", [])) if g not in seen]
        st = m.get("settings", {})
        lines.append(f"| {name} | {m['inputs']} | {m['windows']} | {m['folds']} | {m['median_accuracy']:.4f} | "
                     f"{m['mean_accuracy']:.4f} ± {m['std_accuracy']:.4f} | "
                     + (f"{np.median(unseen):.4f}" if unseen else "") +
                     f" | {st.get('epochs')} / {st.get('batch_size')} / {st.get('monitor', 'loss')} | {ref:.3f} |")
    lines += ["", "The best of the fusion rows is chosen on these same test subjects (optimistic); the searched "
              "row chose its configuration on the first subjects only, and its honest comparison is the column of "
              "the subjects the search never saw."]
    if result.get("earlier_commands"):
        lines += ["", "Rows kept from earlier runs: " + "; ".join(f"`{c}`" for c in result["earlier_commands"])]
    lines += ["", result["protocol"]]
    return "\n".join(lines) + "\n"
