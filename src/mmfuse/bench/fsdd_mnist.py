"""Audio-visual digits (FSDD + MNIST, AV-MNIST style; issue 11).

Data: :func:`mmfuse.datasets.fsdd_mnist` with its defaults. Each FSDD recording (3,000: 6 speakers x 10
digits x 50 takes) is paired, seeded, with an MNIST image of the same digit. Speakers split the rows:
3 train (1,500 rows), 1 validation (500, early stopping), 2 test (1,000), so no test speaker is heard
in training; training and test images come from disjoint halves of MNIST's 10,000 t10k images. The
image is rebuilt from the leading PCA components (fitted on the training half) that hold 25% of the
variance, and the audio carries white noise at 0 dB SNR, so that neither input alone solves the task.

Models: image only, audio only and every fusion strategy, with mmfuse's CNN encoders sized for 1,500
training rows on 2 CPU cores (:data:`ENCODERS`, :data:`PREPROCESSING`: images at their 28 x 28, audio at its
8 kHz, 32 mel bands every 20 ms, conv widths 16/32/64), each fitted once per seed (at most 30 epochs,
early stopping on the validation speaker); reported as the mean ± std of test accuracy over the seeds.
The best fusion and the best single input are chosen by mean validation accuracy (the validation
speaker; test rows choose nothing). For missing inputs, the fusions in ``missing_models`` (default: the
best fusion and late fusion) are fitted again with modality dropout (``modality_dropout``, 0.3) and the
auxiliary unimodal losses (``aux_weight``, 1.0; late fusion applies them to its own per-input heads, the
ones it falls back on), and scored with each input entirely missing; the one set against the single-input
model of the input that remains is chosen on the validation speaker (its mean accuracy clean, without
image and without audio). Robustness curves (:func:`mmfuse.robustness`, levels 0 to 0.9, the first seed's
bundles) compare the best fusion, the chosen missing-input model, both single-input models and late
fusion, the baseline of effective robustness (as in MultiBench).
"""
from __future__ import annotations

import time
from pathlib import Path


from . import BenchContext, check_models, mean_std

OPTIONS = {"epochs": int, "models": str, "modality_dropout": float, "aux_weight": float, "missing_models": str}
PUBLISHED = {
    "note": "no published number exists for this exact pairing (see ../shared/data/README.md); reference points:",
    "audio_alone_fsdd_clean_resnet18": 0.95,
    "image_alone_av_mnist_mfas": 0.745,
}
TARGETS = {"fusion_over_best_single": 0.05, "missing_within": 0.02}
PREPROCESSING = {"image": {"size": 28}, "audio": {"sample_rate": 8000, "n_mels": 32, "hop_ms": 20}}
ENCODERS = {"image": {"name": "image_cnn", "widths": [16, 32, 64]}, "audio": {"name": "audio_cnn", "widths": [16, 32, 64]}}


def _fit(ctx: BenchContext, table, name: str, seed: int, epochs: int, **kw):
    from mmfuse import MultimodalPredictor
    from mmfuse.datasets import FSDD_MNIST_ROLES

    model = dict(inputs=[name]) if name in ("image", "audio") else dict(fusion=name)
    out = ctx.out / "runs" / (name + ("_md" if kw else "")) / f"seed{seed}"
    est = MultimodalPredictor(target="label", columns=dict(FSDD_MNIST_ROLES), epochs=epochs, seed=seed, progress=False,
                              log=None, contribution=False, out=out, preprocessing=PREPROCESSING,
                              encoders={k: v for k, v in ENCODERS.items() if name not in ("image", "audio") or k == name},
                              **model, **kw)
    t0 = time.perf_counter()
    est.fit(table)
    m = est.metrics_
    return est, {"accuracy": m["test"]["accuracy"], "val_accuracy": m["val"]["accuracy"],
                 "macro_f1": m["test"].get("macro_f1"),
                 "epochs_run": m.get("epochs_run"), "best_epoch": m.get("best_epoch"),
                 "seconds": round(time.perf_counter() - t0, 1)}


def _subset(table, per_split: dict, seed: int):
    """A sample of each split, the same number of rows of each digit (the quick run)."""
    from mmfuse.io import Table

    df = table.df
    keep = [i for (split, _), g in df.groupby(["split", "label"])
            for i in g.sample(min(len(g), -(-per_split[split] // 10)), random_state=seed).index]
    return Table(df.loc[sorted(keep)], table.root, table.source)


def run(ctx: BenchContext) -> dict:
    from mmfuse import list_fusions, robustness
    from mmfuse.datasets import fsdd_mnist

    o = ctx.options
    epochs = int(o.get("epochs", 3 if ctx.quick else 30))
    models = [m for m in str(o.get("models", "")).split(",") if m] or (
        ["image", "audio", "concat", "late"] if ctx.quick else ["image", "audio", *list_fusions()])
    check_models("fsdd_mnist", models, ["image", "audio", *list_fusions()])
    if not 0 <= float(o.get("modality_dropout", 0.3)) < 1:
        from mmfuse.errors import MmfuseError

        raise MmfuseError(f"--set modality_dropout={o['modality_dropout']}: a probability in [0, 1)")
    dropout = float(o.get("modality_dropout", 0.3))
    aux_weight = float(o.get("aux_weight", 1.0))
    missing_models = [m for m in str(o.get("missing_models", "best,late")).split(",") if m]
    check_models("fsdd_mnist", [m for m in missing_models if m != "best"], list_fusions(), "missing_models")
    if not missing_models:
        from mmfuse.errors import MmfuseError

        raise MmfuseError("--set missing_models=: name at least one fusion, or 'best'")
    levels = [0, 0.3, 0.6, 0.9] if ctx.quick else [round(0.1 * i, 1) for i in range(10)]
    table = fsdd_mnist(ctx.data / "fsdd", ctx.data / "mnist", ctx.out / "data")
    if ctx.quick:
        table = _subset(table, {"train": 200, "val": 100, "test": 200}, 0)
    counts = table.df["split"].value_counts().to_dict()
    ctx.echo("fsdd_mnist: rows " + ", ".join(f"{k} {v}" for k, v in counts.items())
             + f"; models {', '.join(models)}; {epochs} epochs; seeds {', '.join(map(str, ctx.seeds))}")
    runs, fitted = {}, {}
    for name in models:
        runs[name] = []
        for seed in ctx.seeds:
            est, r = _fit(ctx, table, name, seed, epochs)
            runs[name].append(r)
            fitted[(name, seed)] = est
            ctx.echo(f"{name} seed {seed}: accuracy {r['accuracy']:.4f} ({r['epochs_run']} epochs, {r['seconds']:.0f} s)")
    summary = {n: {**dict(zip(("mean", "std"), mean_std([r["accuracy"] for r in rs]))),
                   "val_mean": mean_std([r["val_accuracy"] for r in rs])[0]} for n, rs in runs.items()}
    singles = {n: summary[n]["mean"] for n in ("image", "audio") if n in summary}
    fusions = {n: s["mean"] for n, s in summary.items() if n not in ("image", "audio")}
    val = {n: s["val_mean"] for n, s in summary.items()}  # choices are made on the validation speaker
    out = {"rows": counts, "epochs": epochs, "models": models, "runs": runs, "summary": summary}
    if not fusions or len(singles) < 2:
        return out
    best = max(fusions, key=lambda n: val[n])
    best_single = max(singles, key=lambda n: val[n])
    out["best_fusion"] = best
    out["fusion_gain"] = {"best_fusion": best, "best_single": best_single, "chosen_on": "validation accuracy",
                          "points": round(100 * (fusions[best] - singles[best_single]), 2),
                          "target_points": 100 * TARGETS["fusion_over_best_single"]}
    # fusions trained for missing inputs (modality dropout + auxiliary unimodal losses), scored with each input
    # missing; the one reported against the target is chosen on the validation speaker
    test = table.df[table.df["split"] == "test"]
    val_rows = table.df[table.df["split"] == "val"]
    mean = lambda rs, k: mean_std([r[k] for r in rs])[0]  # noqa: E731
    candidates = list(dict.fromkeys(best if m == "best" else m for m in missing_models))
    cands = {}
    for name in candidates:
        rs = []
        for seed in ctx.seeds:
            est, r = _fit(ctx, table, name, seed, epochs, modality_dropout=dropout, aux_weight=aux_weight)
            fitted[(name + "_md", seed)] = est
            for n in ("image", "audio"):
                r["without_" + n] = _missing_score(est, test, n, table.root)
                r["val_without_" + n] = _missing_score(est, val_rows, n, table.root)
            rs.append(r)
            ctx.echo(f"{name} + modality dropout {dropout}, aux_weight {aux_weight}, seed {seed}: accuracy "
                     f"{r['accuracy']:.4f}; without image {r['without_image']:.4f}, without audio {r['without_audio']:.4f}")
        cands[name] = {"runs": rs, **{k: mean(rs, k) for k in ("accuracy", "without_image", "without_audio")},
                       "val_score": mean([{"v": (r["val_accuracy"] + r["val_without_image"] + r["val_without_audio"]) / 3}
                                          for r in rs], "v")}
    chosen = max(cands, key=lambda n: cands[n]["val_score"])
    plain_missing = [{"without_image": _missing_score(fitted[(best, seed)], test, "image", table.root),
                      "without_audio": _missing_score(fitted[(best, seed)], test, "audio", table.root)}
                     for seed in ctx.seeds]
    c = cands[chosen]
    out["missing"] = {
        "modality_dropout": dropout, "aux_weight": aux_weight, "candidates": cands, "chosen": chosen,
        "chosen_on": "mean validation accuracy over clean, without image and without audio",
        "fused_md": {"clean": c["accuracy"], "without_image": c["without_image"], "without_audio": c["without_audio"]},
        "fused_plain": {"fusion": best, "clean": fusions[best], "without_image": mean(plain_missing, "without_image"),
                        "without_audio": mean(plain_missing, "without_audio")},
        "single": {"audio_only": singles["audio"], "image_only": singles["image"]},
    }
    gaps = {"without_image_vs_audio_only": c["without_image"] - singles["audio"],
            "without_audio_vs_image_only": c["without_audio"] - singles["image"]}
    out["missing"]["gaps_points"] = {k: round(100 * v, 2) for k, v in gaps.items()}
    # robustness curves: seed 0's (the first seed's) bundles on the same corrupted test rows
    s0 = ctx.seeds[0]
    compare = {best: fitted[(best, s0)], f"{chosen} + modality dropout": fitted[(chosen + "_md", s0)],
               "audio only": fitted[("audio", s0)], "image only": fitted[("image", s0)]}
    from mmfuse.io import Table

    t0 = time.perf_counter()
    # the baseline of effective robustness: late fusion, as in MultiBench (concat when late is the best)
    base = next((f for f in ("late", "concat", *fusions) if f in fusions and f != best), "audio only")
    if base in fusions:
        compare[base] = fitted[(base, s0)]
    rob = robustness(compare, Table(test, table.root, table.source), levels=levels, seed=0, baseline=base,
                     out=ctx.out / "robustness", echo=ctx.echo)
    out["robustness"] = {**rob.to_dict(), "seconds": round(time.perf_counter() - t0, 1),
                         "plot": str(ctx.out / "robustness" / "robustness.png")}
    return out


def _missing_score(est, test, name: str, root) -> float:
    """Test accuracy with every cell of input ``name`` blank (:func:`mmfuse.robust.blank_inputs`)."""
    from mmfuse import evaluate_predictor
    from mmfuse.io import Table
    from mmfuse.robust import blank_inputs, inputs_of

    blank = blank_inputs(Table(test, Path(root), "test"), inputs_of(est.predictor_), [name])
    return float(evaluate_predictor(est.predictor_, blank)["accuracy"])


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = ["# Audio-visual digits (FSDD + MNIST)" + (" — quick run" if result["quick"] else ""), "",
             "Rows: " + ", ".join(f"{k} {v:,}" for k, v in sorted(result["rows"].items(), key=lambda kv: -kv[1]))
             + f"; {result['epochs']} epochs at most; seeds {', '.join(map(str, result['seeds']))}.", "",
             "| model | test accuracy (mean ± std over seeds) | per seed | validation accuracy (mean) | epochs run |",
             "|---|---|---|---|---|"]
    for n in result["models"]:
        rs = result["runs"][n]
        lines.append(f"| {n} | {s[n]['mean']:.4f} ± {s[n]['std']:.4f} | "
                     + ", ".join(f"{r['accuracy']:.4f}" for r in rs) + f" | {s[n]['val_mean']:.4f} | "
                     + ", ".join(str(r["epochs_run"]) for r in rs) + " |")
    g = result.get("fusion_gain")
    if g:
        lines += ["", f"Best fusion {g['best_fusion']} vs best single input {g['best_single']} (both chosen on "
                  "validation accuracy), on the test rows: "
                  f"{g['points']:+.2f} points (target: at least +{g['target_points']:.0f})."]
    m = result.get("missing")
    if m:
        fp, sg = m["fused_plain"], m["single"]
        lines += ["", f"## One input entirely missing (test rows; modality dropout {m['modality_dropout']}, "
                  f"auxiliary losses weighted {m.get('aux_weight', 0)})", "",
                  "| model | clean | without image | without audio | validation score | points vs audio only, "
                  "without image | points vs image only, without audio |", "|---|---|---|---|---|---|---|"]
        gap = lambda v, ref: f"{100 * (v - ref):+.2f}"  # noqa: E731
        for name, c in [(fp.get("fusion", g["best_fusion"]) + " (no dropout)", {**fp, "accuracy": fp["clean"]}),
                        *((f"{n} + modality dropout" + (" (chosen)" if n == m["chosen"] else ""), c)
                          for n, c in m.get("candidates", {}).items())]:
            lines.append(f"| {name} | {c['accuracy']:.4f} | {c['without_image']:.4f} | {c['without_audio']:.4f} | "
                         + (f"{c['val_score']:.4f}" if "val_score" in c else "") + f" | "
                         f"{gap(c['without_image'], sg['audio_only'])} | {gap(c['without_audio'], sg['image_only'])} |")
        lines += [f"| audio only | {sg['audio_only']:.4f} | | | | | |", f"| image only | {sg['image_only']:.4f} | | | | | |", "",
                  f"Chosen on the validation speaker ({m.get('chosen_on', '')}): {m.get('chosen')}. One input "
                  f"missing, minus the model trained on the remaining input alone: without image "
                  f"{m['gaps_points']['without_image_vs_audio_only']:+.2f} points, without audio "
                  f"{m['gaps_points']['without_audio_vs_image_only']:+.2f} points (target: within 2, i.e. at least -2)."]
    r = result.get("robustness")
    if r:
        lines += ["", f"## Robustness ({r['metric']}, corruption seed {r['seed']}; effective robustness against "
                  f"{r['baseline']!r})", "",
                  "| model | curve | " + " | ".join(f"{x:g}" for x in r["levels"]) + " | relative | effective |",
                  "|---|---|" + "---|" * (len(r["levels"]) + 2)]
        for name, mr in r["models"].items():
            for c, v in mr["curves"].items():
                eff = mr.get("effective_robustness", {}).get(c)
                lines.append(f"| {name} | {c} | " + " | ".join(f"{x:.3f}" for x in v) +
                             f" | {mr['relative_robustness'][c]:.3f} | " + ("" if eff is None else f"{eff:+.3f}") + " |")
        lines += ["", "Corruptions: " + "; ".join(f"{c}: " + ", ".join(f"{n}: {d}" for n, d in ds.items())
                                                  for c, ds in r["corruptions"].items())]
    lines += ["", "Reference points (not the same task): " + ", ".join(
        f"{k} {v}" for k, v in result["published"].items() if k != "note")]
    return "\n".join(lines) + "\n"
