"""Cross-modal alignment (issue 13): retrieval, semi-supervised gain, and filling in a missing input.

Parts (``--set parts=retrieval,semi,fill,clothing``; all by default):

- **retrieval** — audio-visual digits (:func:`mmfuse.datasets.fsdd_mnist`, its speaker split). ``mmfuse
  align`` (:func:`mmfuse.align.align`) pairs audio and image on the training rows without reading a
  label (the image encoder is the ``fsdd_mnist`` protocol's CNN, the audio one its log-mel CNN). On the
  1,000 test rows, every audio row queries the test images (and every image the recordings); a
  retrieved item is a hit when it shows the same digit (pairs are arbitrary within a digit). Reported:
  precision@1, precision@10, recall@10 (a hit in the top 10), the median rank of the first hit, against
  chance (the share of same-digit items, ~0.1) and against the same encoders before alignment
  (``epochs=0``: the initial weights); beside them, a supervised concat model trained with the alignment
  loss as an auxiliary term (``align_weight=1``; it reads the labels, so it is not a baseline).
  Caveat: the data set pairs each recording with an image *of the same digit*, so "no label read" still
  means the pairing itself carries the class (two items of one pair always share it); alignment learns
  from that pairing. Real paired data (a photo and its caption) carry the same kind of signal.
- **semi** — the same rows; 10 % of the training labels (stratified by digit, seeded). Alignment
  pretraining on every training row (its labels unread), then ``fit --init-from`` on the labelled 10 %,
  against the same fit from scratch on the same 10 %. Both validate on the validation speaker's rows
  (early stopping) and are scored on the test speakers. Test accuracy, mean ± std over seeds.
- **fill** — a missing input, filled in against zeroed: concat and gated fusion, each trained with
  modality dropout 0.3 and the alignment loss (``align_weight``, ``--set fill_align_weight``, default 1:
  the filler estimates an input in a space where the inputs are aligned), once with ``fill_missing`` and
  once without (absent inputs are zeros), scored
  with each input blank in every test row. The filled-in model (``fill_space: features``) learns its network
  as the zeroing model does (same weights from the same seed: checked and reported) and its filler beside it;
  where an input is absent it mixes its filled-in and input-masked outputs with a weight per input chosen on
  the validation rows (``Predictor.fill_mix``, reported per seed; weight 0, the zeroing model, unless another
  raises validation accuracy, row by row, by more than one standard error of the paired differences, its
  validation loss not higher). It is scored
  once more with the filled-in output alone (weight 1 for every input), on the audio-visual digits and on the
  phone + watch windows
  (:func:`mmfuse.datasets.sp_sw_har`, ``devices="both"``; the subjects split, seeded, into 15 training,
  3 validation and 5 test subjects; no subject information as input). Mean ± std over seeds.
- **clothing** — Women's Clothing reviews (the published split), review text (Title + Review Text)
  and the item's ``"<Department> / <Class>"`` as text, both through frozen all-MiniLM-L6-v2 (cached),
  aligned on the training rows. Each test review queries the distinct (Department, Class) items of
  the training rows; recall@1/5/10 and the median rank, against chance, against zero-shot MiniLM (the
  backbone's own pooled embeddings of review and item compared directly) and against the projections
  before alignment.
"""
from __future__ import annotations

import time

import numpy as np

from . import BenchContext, mean_std

OPTIONS = {"parts": str, "epochs": int, "align_epochs": int, "fill_fusions": str, "label_fraction": float,
           "har_epochs": int, "fill_data": str, "fill_align_weight": float}
SEEDS = True
PUBLISHED = {"note": "no published retrieval number exists for these pairings; chance levels are reported"}
PARTS = ("retrieval", "semi", "fill", "clothing")
PREPROCESSING = {"image": {"size": 28}, "audio": {"sample_rate": 8000, "n_mels": 32, "hop_ms": 20}}
ENCODERS = {"image": {"name": "image_cnn", "widths": [16, 32, 64]}, "audio": {"name": "audio_cnn", "widths": [16, 32, 64]}}
QUIET = dict(progress=False, log=None)


def _digits(ctx: BenchContext):
    from mmfuse.datasets import fsdd_mnist
    from mmfuse.io import Table

    t = fsdd_mnist(ctx.data / "fsdd", ctx.data / "mnist", ctx.out / "data")
    if ctx.quick:
        df = t.df
        keep = [i for (split, _), g in df.groupby(["split", "label"])
                for i in g.sample(min(len(g), {"train": 10, "val": 5, "test": 10}[split]), random_state=0).index]
        t = Table(df.loc[sorted(keep)], t.root, t.source)
    return t


def _retrieval(ctx, table, epochs, align_epochs):
    from mmfuse import MultimodalPredictor
    from mmfuse.align import align
    from mmfuse.datasets import FSDD_MNIST_ROLES
    from mmfuse.retrieval import evaluate_retrieval

    df = table.df
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    unlabelled = train[["image", "audio"]]
    out = {}
    for seed in ctx.seeds:
        t0 = time.perf_counter()
        aligned = align(unlabelled, ["audio:image"], ctx.out / "retrieval" / f"aligned{seed}", root=table.root,
                        encoders=ENCODERS, preprocessing=PREPROCESSING, shared_dim=128, epochs=align_epochs,
                        seed=seed, **QUIET)
        align_s = time.perf_counter() - t0
        before = align(unlabelled, ["audio:image"], ctx.out / "retrieval" / f"before{seed}", root=table.root,
                       encoders=ENCODERS, preprocessing=PREPROCESSING, shared_dim=128, epochs=0, seed=seed, **QUIET)
        sup = MultimodalPredictor("label", columns=dict(FSDD_MNIST_ROLES), encoders=ENCODERS, preprocessing=PREPROCESSING,
                                  fusion="concat", align_weight=1.0, epochs=epochs, seed=seed, contribution=False,
                                  out=ctx.out / "retrieval" / f"supervised{seed}", **QUIET).fit(table)
        models = {"aligned": aligned, "before alignment": before,
                  "supervised + align_weight 1 (labels read)": sup.predictor_}
        res = {}
        for name, pred in models.items():
            for a, b in (("audio", "image"), ("image", "audio")):
                m = evaluate_retrieval(pred, test, test, a, b, match=["label"], ks=(1, 10), root=table.root)
                res.setdefault(name, {})[f"{a}->{b}"] = {k: m[k] for k in ("precision@1", "precision@10", "recall@10",
                                                                           "median_rank", "chance_precision",
                                                                           "queries")}
        out[seed] = {"models": res, "align_seconds": round(align_s, 1),
                     "align_epochs_run": aligned.config["metrics"]["epochs_run"],
                     "temperature": aligned.config["metrics"]["temperatures"]}
        ctx.echo(f"retrieval seed {seed}: aligned audio->image P@1 {res['aligned']['audio->image']['precision@1']:.3f}, "
                 f"image->audio {res['aligned']['image->audio']['precision@1']:.3f}; before alignment "
                 f"{res['before alignment']['audio->image']['precision@1']:.3f}; supervised + align_weight "
                 f"{res['supervised + align_weight 1 (labels read)']['audio->image']['precision@1']:.3f} "
                 f"({align_s:.0f} s to align)")
    summary = {}
    for name in out[ctx.seeds[0]]["models"]:
        for d in ("audio->image", "image->audio"):
            for k in ("precision@1", "precision@10", "recall@10", "median_rank", "chance_precision"):
                summary.setdefault(name, {}).setdefault(d, {})[k] = mean_std([out[s]["models"][name][d][k]
                                                                              for s in ctx.seeds])
    return {"per_seed": out, "summary": summary, "test_rows": int(len(test)), "train_rows": int(len(train))}


def _semi(ctx, table, epochs, align_epochs, fraction):
    import pandas as pd

    from mmfuse import MultimodalPredictor
    from mmfuse.align import align
    from mmfuse.datasets import FSDD_MNIST_ROLES

    df = table.df
    train = df[df["split"] == "train"]
    rest = df[df["split"] != "train"]
    runs = []
    for seed in ctx.seeds:
        labelled = train.loc[[i for _, g in train.groupby("label")
                              for i in g.sample(max(1, int(round(fraction * len(g)))), random_state=seed).index]]
        t0 = time.perf_counter()
        aligned = align(train[["image", "audio"]], ["audio:image"], ctx.out / "semi" / f"aligned{seed}", root=table.root,
                        encoders=ENCODERS, preprocessing=PREPROCESSING, shared_dim=128, epochs=align_epochs,
                        seed=seed, **QUIET)
        align_s = time.perf_counter() - t0
        rows = pd.concat([labelled, rest])
        common = dict(columns=dict(FSDD_MNIST_ROLES), fusion="concat", epochs=epochs, seed=seed, contribution=False,
                      root=table.root, **QUIET)
        t0 = time.perf_counter()
        pre = MultimodalPredictor("label", init_from=aligned.path, out=ctx.out / "semi" / f"pretrained{seed}",
                                  **common).fit(rows)
        pre_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scratch = MultimodalPredictor("label", encoders=ENCODERS, preprocessing=PREPROCESSING, shared_dim=128,
                                      out=ctx.out / "semi" / f"scratch{seed}", **common).fit(rows)
        scratch_s = time.perf_counter() - t0
        r = {"seed": seed, "labelled_rows": int(len(labelled)), "pretrained": pre.metrics_["test"]["accuracy"],
             "scratch": scratch.metrics_["test"]["accuracy"], "pretrained_macro_f1": pre.metrics_["test"]["macro_f1"],
             "scratch_macro_f1": scratch.metrics_["test"]["macro_f1"], "align_seconds": round(align_s, 1),
             "fit_seconds": {"pretrained": round(pre_s, 1), "scratch": round(scratch_s, 1)},
             "epochs_run": {"pretrained": pre.metrics_["epochs_run"], "scratch": scratch.metrics_["epochs_run"]}}
        runs.append(r)
        ctx.echo(f"semi seed {seed}: {len(labelled)} labelled rows; aligned then fitted {r['pretrained']:.4f}, "
                 f"from scratch {r['scratch']:.4f}")
    summary = {k: mean_std([r[k] for r in runs]) for k in ("pretrained", "scratch")}
    summary["gain_points"] = mean_std([100 * (r["pretrained"] - r["scratch"]) for r in runs])
    return {"runs": runs, "summary": summary, "label_fraction": fraction,
            "validation_rows": int((rest["split"] == "val").sum()), "test_rows": int((rest["split"] == "test").sum())}


def _har(ctx):
    from mmfuse.datasets import sp_sw_har

    t = sp_sw_har(ctx.data / "sp-sw-har", devices="both", subject_info=False)
    df = t.df
    subjects = sorted(df["subject_id"].unique())
    rng = np.random.default_rng(0)
    order = list(rng.permutation(subjects))
    split = {s: "test" for s in order[:5]} | {s: "val" for s in order[5:8]} | {s: "train" for s in order[8:]}
    df = df.assign(split=df["subject_id"].map(split))[["phone", "watch", "label", "split"]]
    return df, {k: sorted(str(s) for s, v in split.items() if v == k) for k in ("train", "val", "test")}


def _fill(ctx, name, df, root, fusions, epochs, target, align_weight, encoders=None, preprocessing=None, columns=None):
    import torch

    from mmfuse import MultimodalPredictor, evaluate_predictor
    from mmfuse.io import read_table
    from mmfuse.robust import blank_inputs, inputs_of

    test = df[df["split"] == "test"]
    inputs = None
    rows, nets = {}, {}
    for fusion in fusions:
        for fill in (True, False):
            key = f"{fusion}, {'filled in' if fill else 'zeroed'}"
            rs = []
            for seed in ctx.seeds:
                t0 = time.perf_counter()
                est = MultimodalPredictor(target, fusion=fusion, fill_missing=fill, modality_dropout=0.3, epochs=epochs,
                                          align_weight=align_weight,
                                          seed=seed, contribution=False, root=root, encoders=encoders,
                                          preprocessing=preprocessing, columns=columns,
                                          out=ctx.out / "fill" / name / key.replace(", ", "_").replace(" ", "_")
                                          / f"seed{seed}", **QUIET).fit(df)
                inputs = sorted(est.predictor_.preprocessors)
                r = {"seed": seed, "clean": est.metrics_["test"]["accuracy"], "seconds": round(time.perf_counter() - t0, 1),
                     "epochs_run": est.metrics_["epochs_run"]}
                if fill and est.predictor_.fill_mix is not None:
                    r["fill_mix"] = est.predictor_.fill_mix
                weights = est.predictor_.model.state_dict()
                if fill:
                    nets[fusion, seed] = {k: v.clone() for k, v in weights.items()}
                elif (fusion, seed) in nets:  # filling in is meant to leave the rest of the network as it is
                    kept = nets.pop((fusion, seed))
                    r["same_weights_as_filled_in"] = all(k in kept and torch.equal(kept[k], v) for k, v in weights.items())
                for n in inputs:
                    blank = blank_inputs(read_table(test, root=root), inputs_of(est.predictor_), [n])
                    r[f"without {n}"] = float(evaluate_predictor(est.predictor_, blank, root=root)["accuracy"])
                    if fill:  # the filled-in output alone, whatever weight validation chose
                        chosen = est.predictor_.fill_mix
                        est.predictor_.fill_mix = {m: 1.0 for m in chosen}
                        try:
                            r[f"without {n}, filled-in output alone"] = float(
                                evaluate_predictor(est.predictor_, blank, root=root)["accuracy"])
                        finally:
                            est.predictor_.fill_mix = chosen
                rs.append(r)
                ctx.echo(f"fill {name} {key} seed {seed}: clean {r['clean']:.4f}, "
                         + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k.startswith("without"))
                         + (f"; weight of the filled-in output (chosen on validation): {r['fill_mix']}"
                            if "fill_mix" in r else ""))
            keys = ["clean", *[f"without {n}" for n in inputs],
                    *([f"without {n}, filled-in output alone" for n in inputs] if fill else [])]
            rows[key] = {"runs": rs, **{k: mean_std([r[k] for r in rs]) for k in keys}}
    verdict, own, per_seed = {}, {}, {}
    for fusion in fusions:
        f, z = rows[f"{fusion}, filled in"], rows[f"{fusion}, zeroed"]
        per_seed[fusion] = {f"without {n}": [round(100 * (a[f"without {n}"] - b[f"without {n}"]), 2)
                                             for a, b in zip(f["runs"], z["runs"])] for n in inputs}
        # seed by seed (the two models of a seed share their split and initial draw), then mean ± std
        verdict[fusion] = {f"without {n}": mean_std([100 * (a[f"without {n}"] - b[f"without {n}"])
                                                     for a, b in zip(f["runs"], z["runs"])]) for n in inputs}
        own[fusion] = {f"without {n}": mean_std([100 * (a[f"without {n}, filled-in output alone"] - b[f"without {n}"])
                                                 for a, b in zip(f["runs"], z["runs"])]) for n in inputs}
    return {"models": rows, "filled_minus_zeroed_points": verdict, "filled_minus_zeroed_per_seed": per_seed,
            "filled_alone_minus_zeroed_points": own,
            "inputs": inputs, "test_rows": int(len(test)),
            "align_weight": align_weight}


def _clothing(ctx, align_epochs):
    import pandas as pd

    from mmfuse.align import align
    from mmfuse.datasets import womens_clothing
    from mmfuse.retrieval import evaluate_retrieval, retrieval_metrics

    from .womens_clothing import minilm

    df = womens_clothing(ctx.data / "womens-clothing", "Recommended IND").df
    df = df[df["Department Name"].notna() & df["Class Name"].notna()].copy()
    df["review"] = df["Title"].fillna("") + ". " + df["Review Text"].fillna("")
    df["item"] = df["Department Name"] + " / " + df["Class Name"]
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    if ctx.quick:
        train, test = train.sample(400, random_state=0), test.sample(100, random_state=0)
    enc = {"name": "hf", "model": minilm(), "train": "frozen", "pooling": "mean", "max_length": 128}
    kw = dict(columns={"review": "text", "item": "text"}, encoders={"review": enc, "item": enc}, shared_dim=128,
              seed=ctx.seeds[0], **QUIET)
    cols = ["review", "item"]
    t0 = time.perf_counter()
    aligned = align(train[cols], ["review:item"], ctx.out / "clothing" / "aligned", epochs=align_epochs,
                    batch_size=256, **kw)
    seconds = time.perf_counter() - t0
    before = align(train[cols], ["review:item"], ctx.out / "clothing" / "before", epochs=0, **kw)
    items = train.drop_duplicates(["Department Name", "Class Name"])[["item", "Department Name", "Class Name"]]
    match = ["Department Name", "Class Name"]
    res = {}
    for name, pred in (("aligned", aligned), ("before alignment", before)):
        m = evaluate_retrieval(pred, test, items, "review", "item", match=match, ks=(1, 5, 10))
        res[name] = {k: m[k] for k in ("recall@1", "recall@5", "recall@10", "median_rank", "chance_precision", "queries")}
    # zero-shot: the backbone's own pooled embeddings of the review and of the item text, compared directly
    q = aligned.embed(test[["review"]], input="review")
    x = aligned.embed(items[["item"]], input="item")
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    m = retrieval_metrics(unit(q["features"]["review"]), unit(x["features"]["item"]),
                          test[match].astype(str).agg("\x1f".join, axis=1).to_numpy(object),
                          items[match].astype(str).agg("\x1f".join, axis=1).to_numpy(object), ks=(1, 5, 10))
    res["zero-shot MiniLM"] = {k: m[k] for k in ("recall@1", "recall@5", "recall@10", "median_rank", "chance_precision",
                                                  "queries")}
    # the items by their frequency in the training rows, the same order for every query (a prior, no text read);
    # as for the others, a review whose item is not among the training rows' items is left out
    freq = train.groupby(match).size().sort_values(ascending=False)
    keys = test[match].apply(tuple, axis=1)
    ranks = keys.map({k: i + 1 for i, k in enumerate(freq.index)}).dropna()
    res["most frequent first (no text)"] = {f"recall@{k}": float((ranks <= k).mean()) for k in (1, 5, 10)} | {
        "median_rank": float(ranks.median())}
    for name, r in res.items():
        ctx.echo(f"clothing {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k.startswith("recall")))
    return {"models": res, "items": int(len(items)), "test_reviews": int(len(test)), "train_rows": int(len(train)),
            "align_seconds": round(seconds, 1), "align_epochs_run": aligned.config["metrics"]["epochs_run"],
            "val_retrieval": aligned.config["metrics"]["val_retrieval"], "pandas": pd.__version__}


def run(ctx: BenchContext) -> dict:
    from mmfuse.errors import MmfuseError
    from mmfuse.fusion import list_fusions

    o = ctx.options
    parts = [p for p in str(o.get("parts", ",".join(PARTS if not ctx.quick else PARTS[:3]))).split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise MmfuseError(f"--set parts: unknown part {bad[0]!r}; choose from {', '.join(PARTS)}")
    epochs = int(o.get("epochs", 1 if ctx.quick else 30))
    align_epochs = int(o.get("align_epochs", 1 if ctx.quick else 30))
    har_epochs = int(o.get("har_epochs", 1 if ctx.quick else 15))
    fraction = float(o.get("label_fraction", 0.1))
    if not 0 < fraction <= 1:
        raise MmfuseError(f"--set label_fraction={fraction}: a share of the training labels in (0, 1]")
    fusions = [f for f in str(o.get("fill_fusions", "concat" if ctx.quick else "concat,gated")).split(",") if f]
    bad = [f for f in fusions if f not in list_fusions()]
    if bad:
        raise MmfuseError(f"--set fill_fusions: unknown fusion {bad[0]!r}; choose from {', '.join(list_fusions())}")
    fill_data = [x for x in str(o.get("fill_data", "digits" if ctx.quick else "digits,phone_watch")).split(",") if x]
    if not fill_data or set(fill_data) - {"digits", "phone_watch"}:
        raise MmfuseError(f"--set fill_data={o.get('fill_data')}: digits, phone_watch or both")
    fill_align = float(o.get("fill_align_weight", 1.0))
    out = {"parts": parts, "epochs": epochs, "align_epochs": align_epochs}
    digits = _digits(ctx) if {"retrieval", "semi"} & set(parts) or "fill" in parts and "digits" in fill_data else None
    if digits is not None:
        out["digits_rows"] = digits.df["split"].value_counts().to_dict()
    if "retrieval" in parts:
        out["retrieval"] = _retrieval(ctx, digits, epochs, align_epochs)
    if "semi" in parts:
        out["semi"] = _semi(ctx, digits, epochs, align_epochs, fraction)
    if "fill" in parts:
        from mmfuse.datasets import FSDD_MNIST_ROLES

        out["fill"] = {}
        if "digits" in fill_data:
            out["fill"]["digits"] = _fill(ctx, "digits", digits.df, digits.root, fusions, epochs, "label", fill_align,
                                          ENCODERS, PREPROCESSING, dict(FSDD_MNIST_ROLES))
        if "phone_watch" in fill_data:
            har, subjects = _har(ctx)
            out["fill"]["phone_watch"] = _fill(ctx, "phone_watch", har, None, fusions, har_epochs, "label", fill_align)
            out["fill"]["phone_watch"]["subjects"] = subjects
            out["fill"]["phone_watch"]["rows"] = har["split"].value_counts().to_dict()
    if "clothing" in parts:
        out["clothing"] = _clothing(ctx, align_epochs)
    # parts not run now are kept from the results file already there, with the command that measured them
    prev = ctx.previous
    kept = {p: prev[p] for p in PARTS if p not in parts and p in prev}
    if kept:
        earlier = prev.get("part_commands", {})
        out.update(kept)
        out["part_commands"] = {p: earlier.get(p, prev.get("command")) for p in kept}
        out["part_seeds"] = {p: prev.get("part_seeds", {}).get(p, prev.get("seeds")) for p in kept}
    return out


def _ms(v, digits=3):
    m, s = v
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _difference_table(per_seed: dict) -> list[str]:
    """Filled in minus zeroed per fusion and absent input: mean ± std, the 95% confidence interval of the mean
    (Student's t over the seeds) and the seeds that gained, tied and lost."""
    import math

    import numpy as np
    from scipy import stats

    lines = ["| fusion | input absent | filled − zeroed, points (mean ± std) | 95% CI of the mean | seeds gained / "
             "equal / lost |", "|---|---|---|---|---|"]
    for fu, g in per_seed.items():
        for k, xs in g.items():
            x = np.asarray(xs, float)
            m, s = float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0
            half = stats.t.ppf(0.975, len(x) - 1) * s / math.sqrt(len(x)) if len(x) > 1 else math.nan
            lines.append(f"| {fu} | {k.removeprefix('without ')} | {m:+.2f} ± {s:.2f} | [{m - half:+.2f}, "
                         f"{m + half:+.2f}] | {int((x > 0).sum())} / {int((x == 0).sum())} / {int((x < 0).sum())} |")
    return lines + [""]


def markdown(result: dict) -> str:
    seeds = ", ".join(map(str, result["seeds"]))
    lines = ["# Cross-modal alignment: retrieval, semi-supervised gain, filling in a missing input"
             + (" — quick run" if result["quick"] else ""), "",
             f"Seeds {seeds}" + (f" for the parts run now ({', '.join(result['parts'])}; the parts kept from earlier "
                                 "runs list theirs at the end)" if result.get("part_seeds") else "")
             + f"; at most {result['epochs']} epochs of supervised training and {result['align_epochs']} of "
             "alignment (early stopping on held-out rows). Mean ± std over seeds.", ""]
    r = result.get("retrieval")
    if r:
        lines += [f"## Audio ↔ image retrieval on the audio-visual digits ({r['test_rows']} test rows; a hit shows the "
                  f"query's digit; alignment on {r['train_rows']} training rows, no label read)", "",
                  "| model | direction | precision@1 | precision@10 | recall@10 | median rank of the first hit | chance |",
                  "|---|---|---|---|---|---|---|"]
        for name, dirs in r["summary"].items():
            for d, m in dirs.items():
                lines.append(f"| {name} | {d} | {_ms(m['precision@1'])} | {_ms(m['precision@10'])} | "
                             f"{_ms(m['recall@10'])} | {m['median_rank'][0]:.1f} | {m['chance_precision'][0]:.3f} |")
        lines.append("")
    s = result.get("semi")
    if s:
        sm = s["summary"]
        lines += [f"## Semi-supervised: {100 * s['label_fraction']:.0f} % of the training labels (digits)", "",
                  "| model | test accuracy | per seed |", "|---|---|---|",
                  f"| aligned on every training row, then fitted on the labelled ones | {_ms(sm['pretrained'], 4)} | "
                  + ", ".join(f"{x['pretrained']:.4f}" for x in s["runs"]) + " |",
                  f"| fitted on the labelled ones from scratch | {_ms(sm['scratch'], 4)} | "
                  + ", ".join(f"{x['scratch']:.4f}" for x in s["runs"]) + " |", "",
                  f"Gain: {sm['gain_points'][0]:+.2f} ± {sm['gain_points'][1]:.2f} points "
                  f"({s['runs'][0]['labelled_rows']} labelled training rows per seed; both validate on the "
                  f"{s['validation_rows']} rows of the validation speaker and are scored on {s['test_rows']} test rows).", ""]
    f = result.get("fill")
    if f:
        aw = next(iter(f.values())).get("align_weight", 0)
        lines += ["## One input missing in every test row: filled in against zeroed (both: modality dropout 0.3, "
                  f"alignment loss weight {aw:g}; they differ only in fill_missing)", ""]
        for data, d in f.items():
            cols = ["clean", *[f"without {n}" for n in d["inputs"]]]
            lines += [f"### {data} ({d['test_rows']} test rows)", "", "| model | " + " | ".join(cols) + " |",
                      "|---|" + "---|" * len(cols)]
            for name, m in d["models"].items():
                lines.append(f"| {name} | " + " | ".join(_ms(m[c], 4) for c in cols) + " |")
                alone = [f"{c}, filled-in output alone" for c in cols[1:]]
                if all(c in m for c in alone):
                    lines.append(f"| {name}, filled-in output alone (weight 1) | — | "
                                 + " | ".join(_ms(m[c], 4) for c in alone) + " |")
            lines += ["", "Filled in (the mix chosen on validation) minus zeroed (two models, seed by seed), points, mean ± std over seeds: " + "; ".join(
                f"{fu}: " + ", ".join(f"{k} {v[0]:+.2f} ± {v[1]:.2f}" if isinstance(v, (list, tuple)) else
                                      f"{k} {v:+.2f}" for k, v in g.items())
                for fu, g in d["filled_minus_zeroed_points"].items()), ""]
            if d.get("filled_minus_zeroed_per_seed"):
                lines += _difference_table(d["filled_minus_zeroed_per_seed"])
                lines += ["Seed by seed (points): " + "; ".join(
                    f"{fu}: " + ", ".join(f"{k} " + " / ".join(f"{x:+.2f}" for x in xs) for k, xs in g.items())
                    for fu, g in d["filled_minus_zeroed_per_seed"].items()), ""]
            same = [r["same_weights_as_filled_in"] for m in d["models"].values() for r in m["runs"]
                    if "same_weights_as_filled_in" in r]
            if same:
                lines += [f"The zeroing model's weights equal the filling-in model's network (all but the filler) "
                          f"in {sum(same)} of {len(same)} runs.", ""]
            mixes = {name: [r["fill_mix"] for r in m["runs"] if "fill_mix" in r] for name, m in d["models"].items()}
            if any(mixes.values()):
                lines += ["Weight of the filled-in output where an input is absent (against the input-masked output; "
                          "chosen on the validation rows), seed by seed: " + "; ".join(
                              f"{name}: " + " / ".join(", ".join(f"{k} {v:g}" for k, v in mx.items()) for mx in ms)
                              for name, ms in mixes.items() if ms), ""]
            if d.get("filled_alone_minus_zeroed_points"):
                lines += ["The filled-in output alone (weight 1 for every input, whatever validation chose) minus "
                          "zeroed, points, mean ± std over seeds: " + "; ".join(
                              f"{fu}: " + ", ".join(f"{k} {v[0]:+.2f} ± {v[1]:.2f}" for k, v in g.items())
                              for fu, g in d["filled_alone_minus_zeroed_points"].items()), ""]
    if result.get("ran_as"):
        lines += [f"Run as: {result['ran_as']}.", ""]
    e = result.get("fill_earlier_rule")
    if e:  # a results file that kept the runs of the rule before the current one, for comparison
        lines += [f"### The earlier rule: {e['note']}", "",
                  f"Command: `{e['command']}`", ""]
        for data, per_seed in e["per_seed"].items():
            lines += [f"{data}:", "", *_difference_table(per_seed)]
    c = result.get("clothing")
    if c:
        lines += [f"## Review text → (Department, Class) of the item, Women's Clothing ({c['test_reviews']} test "
                  f"reviews, {c['items']} items; frozen all-MiniLM-L6-v2; seed "
                  f"{result.get('part_seeds', {}).get('clothing', result['seeds'])[0]})", "",
                  "| model | recall@1 | recall@5 | recall@10 | median rank |", "|---|---|---|---|---|"]
        for name, m in c["models"].items():
            lines.append(f"| {name} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | "
                         f"{m['median_rank']:.1f} |")
        lines.append("")
    if result.get("part_commands"):
        lines += ["Parts kept from earlier runs (seeds): " + "; ".join(
            f"{p}: `{c}` ({result.get('part_seeds', {}).get(p)})" for p, c in result["part_commands"].items()), ""]
    return "\n".join(lines)
