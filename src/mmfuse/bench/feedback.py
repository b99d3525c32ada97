"""The feedback loop on real data (issue 12): continue a bundle on new rows instead of training from scratch.

Data: the Women's Clothing reviews (:func:`mmfuse.datasets.womens_clothing`, target ``Recommended IND``,
the published split). Model: the review (Title + Review Text) through frozen all-MiniLM-L6-v2 with its
embeddings cached, the other columns as a tabular input, gated fusion (the ``womens_clothing``
protocol's settings). For each seed the 18,788 training rows are cut, seeded, into two halves:

- **A**: fitted on the first half;
- **B**: ``init_from=A`` (``mmfuse fit --init-from A``), fitted on the second half only;
- **full**: fitted on all training rows, from scratch.

Every fit validates on the published validation rows (early stopping) and is scored on the test rows.
The embedding cache is filled once before anything is timed (a one-epoch fit on every row), so the
times compare training, not the backbone. ``mmfuse compare``'s function (:func:`mmfuse.feedback.compare`)
scores A against B and full against B on the test rows: each metric's difference with a 95% paired
bootstrap interval. B is "within noise" of full when that interval holds 0. Reported per seed and as
mean ± std over seeds. ``--set replay=F`` also mixes first-half rows back into B's training rows (a share F).
"""
from __future__ import annotations

import time

import numpy as np

from . import BenchContext

OPTIONS = {"epochs": int, "boot": int, "replay": float}
SEEDS = True
PUBLISHED = {}
METRICS = ("f1_positive", "accuracy", "roc_auc", "pr_auc")


def run(ctx: BenchContext) -> dict:
    import pandas as pd

    from mmfuse import MultimodalPredictor, Predictor
    from mmfuse.datasets import womens_clothing
    from mmfuse.feedback import compare

    from .womens_clothing import minilm

    o = ctx.options
    epochs = int(o.get("epochs", 2 if ctx.quick else 30))
    n_boot = int(o.get("boot", 100 if ctx.quick else 1000))
    replay = float(o.get("replay", 0.0))
    t = womens_clothing(ctx.data / "womens-clothing", "Recommended IND")
    df = t.df
    parts = {s: df[df["split"] == s] for s in ("train", "val", "test")}
    if ctx.quick:
        parts = {s: p.sample(n=min(len(p), 600 if s == "train" else 200), random_state=0) for s, p in parts.items()}
    model = dict(columns={"Clothing ID": "ignore", "split": "split"},
                 groups={"review": ["Title", "Review Text"]}, fusion="gated",
                 encoders={"review": {"name": "hf", "model": minilm(), "train": "frozen", "pooling": "mean",
                                      "max_length": 128}}, dim=128, head_hidden=128, dropout=0.2)
    train = dict(target="Recommended IND", epochs=epochs, batch_size=256, lr=1e-3, patience=5, progress=False,
                 log=None, contribution=False)
    t0 = time.perf_counter()
    everything = pd.concat(list(parts.values()))
    MultimodalPredictor(**{**model, **train, "epochs": 1}, seed=0, out=ctx.out / "warm").fit(everything)
    warm_s = time.perf_counter() - t0
    ctx.echo(f"embedding cache filled ({len(everything):,} rows) in {warm_s:.0f} s")

    runs = []
    for seed in ctx.seeds:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(parts["train"]))
        half = len(order) // 2
        first, second = parts["train"].iloc[order[:half]], parts["train"].iloc[order[half:]]
        rest = [parts["val"], parts["test"]]
        out = ctx.out / f"seed{seed}"
        times, metrics = {}, {}

        def fit(name, rows, **kw):
            t0 = time.perf_counter()
            est = MultimodalPredictor(**kw, seed=seed, out=out / name).fit(pd.concat([rows, *rest]))
            times[name] = round(time.perf_counter() - t0, 1)
            metrics[name] = {k: est.metrics_["test"][k] for k in METRICS if k in est.metrics_["test"]}
            metrics[name]["epochs"] = len(est.metrics_["history"])
            return out / name / "bundle"

        a = fit("A", first, **model, **train)
        if replay:
            first.to_csv(out / "first_half.csv", index=False)
        b = fit("B", second, **train, init_from=a,
                **({"replay": out / "first_half.csv", "replay_fraction": replay} if replay else {}))
        full = fit("full", parts["train"], **model, **train)
        pa, pb, pf = Predictor.load(a), Predictor.load(b), Predictor.load(full)
        test = parts["test"]
        ab = compare(pa, pb, test, n_boot=n_boot, seed=seed, names=("A", "B"))
        fb = compare(pf, pb, test, n_boot=n_boot, seed=seed, names=("full", "B"))
        diff = {name: {k: {"difference": c["metrics"][k]["difference"], "ci95": c["metrics"][k]["ci95"]}
                       for k in METRICS if k in c["metrics"]} for name, c in (("B - A", ab), ("B - full", fb))}
        runs.append({"seed": seed, "rows": {"first half": len(first), "second half": len(second),
                                            "val": len(parts["val"]), "test": len(test)},
                     "seconds": times, "test": metrics, "compare": diff,
                     "differing_rows": {"A vs B": ab["n_differing"], "full vs B": fb["n_differing"]}})
        f1 = {k: v.get("f1_positive") for k, v in metrics.items()}
        ci = diff["B - full"]["f1_positive"]["ci95"]
        ctx.echo(f"seed {seed}: test F1 A {f1['A']:.4f}, B {f1['B']:.4f}, full {f1['full']:.4f}; B - full "
                 f"{diff['B - full']['f1_positive']['difference']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]; seconds A "
                 f"{times['A']}, B {times['B']}, full {times['full']}")
    summary = {}
    for name in ("A", "B", "full"):
        summary[name] = {k: [float(np.mean([r["test"][name][k] for r in runs])),
                             float(np.std([r["test"][name][k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0]
                         for k in METRICS if k in runs[0]["test"][name]}
        summary[name]["seconds"] = [float(np.mean([r["seconds"][name] for r in runs])),
                                    float(np.std([r["seconds"][name] for r in runs], ddof=1)) if len(runs) > 1 else 0.0]
    ab = [r["seconds"]["A"] + r["seconds"]["B"] for r in runs]
    summary["A + B"] = {"seconds": [float(np.mean(ab)), float(np.std(ab, ddof=1)) if len(runs) > 1 else 0.0]}
    within = [bool(r["compare"]["B - full"]["f1_positive"]["ci95"][0] <= 0 <= r["compare"]["B - full"]["f1_positive"]["ci95"][1])
              for r in runs]
    return {"epochs": epochs, "boot": n_boot, "replay": replay, "warm_cache_seconds": round(warm_s, 1), "runs": runs,
            "summary": summary, "B_within_noise_of_full_f1": within}


def markdown(result: dict) -> str:
    s = result["summary"]
    seeds = [r["seed"] for r in result["runs"]]
    lines = ["# The feedback loop on the Women's Clothing reviews" + (" — quick run" if result["quick"] else ""), "",
             f"Frozen MiniLM (cached) + tabular, gated fusion, up to {result['epochs']} epochs (early stopping on the "
             f"published validation rows), seeds {seeds}. A: the first half of the training rows; B: A continued "
             f"(`init_from`) on the second half only" + (f", replay share {result['replay']}" if result["replay"] else "")
             + "; full: every training row, from scratch. Test rows of the published split.", "",
             "| model | test F1 (positive) | accuracy | ROC-AUC | PR-AUC | fit seconds |", "|---|---|---|---|---|---|"]
    for name in ("A", "B", "full", "A + B"):
        m = s[name]

        def f(k):
            return f"{m[k][0]:.4f} ± {m[k][1]:.4f}" if k in m else "—"
        lines.append(f"| {name} | {f('f1_positive')} | {f('accuracy')} | {f('roc_auc')} | {f('pr_auc')} | "
                     f"{m['seconds'][0]:.1f} ± {m['seconds'][1]:.1f} |")
    lines += ["", f"Paired bootstrap ({result['boot']} resamples, test rows), per seed; the interval's width says how "
              "small a difference these test rows can show:", "",
              "| seed | metric | B − A [95% interval] | B − full [95% interval] | width | epochs A / B / full |",
              "|---|---|---|---|---|---|"]
    for r in result["runs"]:
        for k in ("f1_positive", "pr_auc"):
            ab, fb = r["compare"]["B - A"][k], r["compare"]["B - full"][k]
            lines.append(f"| {r['seed']} | {k} | {ab['difference']:+.4f} [{ab['ci95'][0]:+.4f}, {ab['ci95'][1]:+.4f}] | "
                         f"{fb['difference']:+.4f} [{fb['ci95'][0]:+.4f}, {fb['ci95'][1]:+.4f}] | "
                         f"{fb['ci95'][1] - fb['ci95'][0]:.4f} | "
                         f"{r['test']['A']['epochs']} / {r['test']['B']['epochs']} / {r['test']['full']['epochs']} |")
    spread = s["full"]["f1_positive"][1]
    diffs = [r["compare"]["B - full"]["f1_positive"]["difference"] for r in result["runs"]]
    lines += ["", f"Does B's F1 match full's? Per seed, the 95% interval of B − full holds 0: "
              f"{result['B_within_noise_of_full_f1']} (no evidence of a difference, not proof of none; see the widths). "
              f"Mean B − full {np.mean(diffs):+.4f} against full's own seed-to-seed std {spread:.4f}. "
              f"The embedding cache was filled first ({result['warm_cache_seconds']:.0f} s), so the times are training; "
              "B's time is the continuation alone, A + B the whole path."]
    return "\n".join(lines) + "\n"
