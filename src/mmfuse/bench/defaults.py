"""mmfuse's defaults against a scikit-learn baseline on small real tables.

For each data set and seed: one stratified 60/20/20 train/val/test split (a ``split`` column).
mmfuse is fitted with nothing but the target (and ``seed``, a run folder, no progress bar or
logger); it picks its epoch on the val rows. The baseline is fitted on the train + val rows.
Both are scored on the same test rows.

Data sets: scikit-learn's digits (64 pixel columns as numbers), wine, breast cancer; a 1,500-row
sample of the Women's Clothing reviews with target ``Rating`` (``Recommended IND`` and
``Clothing ID`` left out); 1,500 FSDD clips with target ``digit`` (audio only).
Baseline: logistic regression on scaled numbers (tables); on TF-IDF (1-2-grams) of the title and
review, one-hot categories and scaled numbers (clothing); on the mean and standard deviation over
time of 64 log-mel bands of each clip (FSDD).
Metric: macro-F1 for Rating (5 imbalanced classes), accuracy for the others; both are recorded.
Target: mmfuse within 1 point of the baseline, or better, on every data set (mean over seeds).
The quick run: wine and digits, one seed.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from . import BenchContext

OPTIONS = {"only": str, "rows": int}
MAIN_METRIC = {"digits": "accuracy", "wine": "accuracy", "breast_cancer": "accuracy", "clothing_rating": "macro_f1",
               "fsdd": "accuracy"}
PUBLISHED = {"target": "mmfuse's defaults within 1 point of logistic regression, or better, on every data set"}


def _sklearn_table(name: str):
    import pandas as pd
    from sklearn import datasets as D

    bunch = {"digits": D.load_digits, "wine": D.load_wine, "breast_cancer": D.load_breast_cancer}[name]()
    cols = [f"x{i}" for i in range(bunch.data.shape[1])] if name == "digits" else list(bunch.feature_names)
    df = pd.DataFrame(bunch.data.astype(float), columns=cols)
    df["label"] = bunch.target
    return df, "label", None


def load(name: str, data: Path, n: int):
    """``(table, target, root)`` of one data set; the clothing and FSDD samples are the same for every seed."""
    if name == "clothing_rating":
        from mmfuse.datasets import womens_clothing_table

        df = womens_clothing_table(data / "womens-clothing").df
        df = df.drop(columns=["Recommended IND", "Clothing ID", "split"], errors="ignore")
        df = df.dropna(subset=["Rating"])
        return _sample(df, n, name).reset_index(drop=True), "Rating", None
    if name == "fsdd":
        from mmfuse.datasets import fsdd_table

        t = fsdd_table(data / "fsdd")
        return _sample(t.df, n, name).reset_index(drop=True)[["audio", "digit"]], "digit", t.root
    return _sklearn_table(name)


def _sample(df, n: int, name: str):
    if n > len(df):
        from mmfuse.errors import MmfuseError

        raise MmfuseError(f"--set rows={n}: {name} has {len(df):,} rows; ask for at most that many")
    return df.sample(n=n, random_state=0)


def with_split(df, target: str, seed: int):
    """A stratified 60/20/20 ``split`` column."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(df))
    rest, test = train_test_split(idx, test_size=0.2, random_state=seed, stratify=df[target])
    train, val = train_test_split(rest, test_size=0.25, random_state=seed, stratify=df[target].iloc[rest])
    split = np.empty(len(df), object)
    split[train], split[val], split[test] = "train", "val", "test"
    return df.assign(split=split)


def logmel_stats(paths: list, n_mels: int = 64):
    """Mean and standard deviation over time of each log-mel band (25 ms window, 10 ms hop)."""
    import numpy as np
    import soundfile as sf
    from scipy.signal import stft

    from mmfuse.preprocessing import mel_filterbank

    feats = []
    for p in paths:
        wav, sr = sf.read(p, dtype="float32", always_2d=True)
        wav = wav.mean(1)
        n_fft = 1 << int(np.ceil(np.log2(sr * 0.025)))
        _, _, z = stft(wav, sr, nperseg=n_fft, noverlap=n_fft - int(round(sr * 0.010)), boundary="even")
        mel = np.log(mel_filterbank(n_fft, n_mels, sr) @ np.abs(z) ** 2 + 1e-6)  # (n_mels, T)
        feats.append(np.concatenate([mel.mean(1), mel.std(1)]))
    return np.stack(feats)


def _baseline_features(name: str, df, target: str, root):
    """A scikit-learn transformer and its input frame."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    if name == "fsdd":
        return StandardScaler(), pd.DataFrame(logmel_stats([Path(root) / p for p in df["audio"]]))
    x = df.drop(columns=[target, "split"])
    if name != "clothing_rating":
        return StandardScaler(), x
    x = x.assign(review=x["Title"].fillna("") + " " + x["Review Text"].fillna(""))
    cats = ["Division Name", "Department Name", "Class Name"]
    tf = ColumnTransformer([
        ("text", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), "review"),
        ("cat", make_pipeline(FunctionTransformer(lambda d: d.astype(str)), OneHotEncoder(handle_unknown="ignore")),
         cats),
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["Age", "Positive Feedback Count"])])
    return tf, x


def fit_baseline(name, df, target, root):
    """Logistic regression on the train + val rows; its test predictions and seconds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t0 = time.perf_counter()
    tf, x = _baseline_features(name, df, target, root)
    fit_rows = (df["split"] != "test").to_numpy()
    model = make_pipeline(tf, LogisticRegression(max_iter=5000)).fit(x[fit_rows], df[target][fit_rows])
    return model.predict(x[~fit_rows]), time.perf_counter() - t0


def fit_mmfuse(df, target, root, seed: int, out: Path):
    """mmfuse with nothing but the target; its test predictions, seconds and what it chose."""
    from mmfuse import MultimodalPredictor

    t0 = time.perf_counter()
    m = MultimodalPredictor(target=target, seed=seed, progress=False, log=None, out=out, root=root).fit(df)
    pred = m.predict(df[df["split"] == "test"])
    info = {"epochs_run": m.metrics_["epochs_run"], "best_epoch": m.metrics_["best_epoch"],
            "train_seconds": round(m.metrics_["train_seconds"], 1), "inputs": m.metrics_["inputs"]}
    return pred, time.perf_counter() - t0, info


def scores(y, pred) -> dict:
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    y, pred = np.asarray(y).astype(str), np.asarray(pred).astype(str)
    return {"accuracy": round(float(accuracy_score(y, pred)), 4),
            "macro_f1": round(float(f1_score(y, pred, average="macro")), 4)}


def summarize(runs: list) -> list:
    """Per data set: the main metric's mean and std over seeds for both, and the verdict (within 1 point)."""
    from . import mean_std

    out = []
    for name in dict.fromkeys(r["dataset"] for r in runs):
        rs = [r for r in runs if r["dataset"] == name]
        metric = MAIN_METRIC[name]
        mm, mm_sd = mean_std([r["mmfuse"][metric] for r in rs])
        bl, _ = mean_std([r["baseline"][metric] for r in rs])
        out.append({"dataset": name, "metric": metric, "seeds": len(rs), "mmfuse": round(mm, 4),
                    "mmfuse_std": round(mm_sd, 4), "baseline": round(bl, 4),
                    "difference_points": round(100 * (mm - bl), 1), "meets_target": bool(mm >= bl - 0.01)})
    return out


def run(ctx: BenchContext) -> dict:
    from . import check_models

    only = [s for s in str(ctx.options.get("only", "wine,digits" if ctx.quick else ",".join(MAIN_METRIC))).split(",")
            if s]
    check_models("defaults", only, MAIN_METRIC, setting="only", kind="data set")
    n = int(ctx.options.get("rows", 600 if ctx.quick else 1500))
    if "rows" in ctx.options and not {"clothing_rating", "fsdd"} & set(only):
        from mmfuse.errors import MmfuseError

        raise MmfuseError("--set rows: the sample size of clothing_rating and fsdd; the scikit-learn tables are "
                          "used whole")
    runs = []
    for name in only:
        df0, target, root = load(name, ctx.data, n)
        for seed in ctx.seeds:
            df = with_split(df0, target, seed)
            y = df[target][df["split"] == "test"]
            bpred, bsec = fit_baseline(name, df, target, root)
            with tempfile.TemporaryDirectory(dir=ctx.out) as tmp:
                mpred, msec, info = fit_mmfuse(df, target, root, seed, Path(tmp))
            run = {"dataset": name, "seed": seed, "rows": {k: int((df["split"] == k).sum()) for k in ("train", "val", "test")},
                   "mmfuse": {**scores(y, mpred), "seconds": round(msec, 1), **info},
                   "baseline": {**scores(y, bpred), "seconds": round(bsec, 1)}}
            runs.append(run)
            ctx.echo(f"{name} seed {seed}: mmfuse {run['mmfuse'][MAIN_METRIC[name]]:.4f}, "
                     f"baseline {run['baseline'][MAIN_METRIC[name]]:.4f} ({MAIN_METRIC[name]})")
    kept = [r for r in ctx.previous.get("runs", []) if r["dataset"] not in only and r["dataset"] in MAIN_METRIC]
    if kept:  # a run of some data sets keeps the others' runs from the results file, and says so
        ctx.echo(f"kept from {ctx.previous.get('command')!r}: the runs of "
                 f"{', '.join(dict.fromkeys(r['dataset'] for r in kept))}")
        runs = kept + runs
    return {"sample_rows": n, "summary": summarize(runs), "runs": runs,
            **({"kept_from": ctx.previous.get("command")} if kept else {})}


def markdown(result: dict) -> str:
    lines = ["# mmfuse's defaults against logistic regression" + (" — quick run" if result["quick"] else ""), "",
             "Mean ± std (ddof 1) over seeds on each data set's test rows (stratified 60/20/20 split per seed). "
             "Target: within 1 point of the baseline, or better.", "",
             "| data set | metric | seeds | mmfuse | baseline | difference (points) | target |", "|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        lines.append(f"| {s['dataset']} | {s['metric']} | {s['seeds']} | {s['mmfuse']:.4f} ± {s['mmfuse_std']:.4f} | "
                     f"{s['baseline']:.4f} | {s['difference_points']:+.1f} | {'met' if s['meets_target'] else 'missed'} |")
    if result.get("kept_from"):
        lines += ["", f"Runs of the data sets not run by this command are kept from `{result['kept_from']}`."]
    lines += ["", "## Runs", "", "| data set | seed | mmfuse acc / macro-F1 | baseline acc / macro-F1 | mmfuse s | epochs run |",
              "|---|---|---|---|---|---|"]
    for r in result["runs"]:
        m, b = r["mmfuse"], r["baseline"]
        lines.append(f"| {r['dataset']} | {r['seed']} | {m['accuracy']:.4f} / {m['macro_f1']:.4f} | "
                     f"{b['accuracy']:.4f} / {b['macro_f1']:.4f} | {m['seconds']:.0f} | {m['epochs_run']} |")
    return "\n".join(lines) + "\n"
