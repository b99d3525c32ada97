"""mmfuse's defaults against a scikit-learn baseline on small real tables (issue 9, item 8).

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
Target: mmfuse within 1 point of the baseline, or better, on every row.

Usage: python benchmarks/bench_defaults.py [--data ../shared/data] [--quick] [--label after]
       [--only digits,wine]
Writes ``benchmarks/results/defaults.json``; the results of another ``--label``, and of the data sets
not run now, stay in it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results" / "defaults.json"
MAIN_METRIC = {"digits": "accuracy", "wine": "accuracy", "breast_cancer": "accuracy", "clothing_rating": "macro_f1",
               "fsdd": "accuracy"}
N_SAMPLE = 1500


# --- tables: (DataFrame, target, root folder or None, baseline features) ------------------------
def sklearn_table(name: str):
    from sklearn import datasets as D

    bunch = {"digits": D.load_digits, "wine": D.load_wine, "breast_cancer": D.load_breast_cancer}[name]()
    cols = [f"x{i}" for i in range(bunch.data.shape[1])] if name == "digits" else list(bunch.feature_names)
    df = pd.DataFrame(bunch.data.astype(float), columns=cols)
    df["label"] = bunch.target
    return df, "label", None


def clothing_table(data: Path, n: int):
    from mmfuse.datasets import womens_clothing_table

    df = womens_clothing_table(data / "womens-clothing").df
    df = df.drop(columns=["Recommended IND", "Clothing ID", "split"], errors="ignore")
    df = df.dropna(subset=["Rating"]).sample(n=n, random_state=0).reset_index(drop=True)  # one sample for every seed
    return df, "Rating", None


def fsdd(data: Path, n: int):
    from mmfuse.datasets import fsdd_table

    t = fsdd_table(data / "fsdd")
    df = t.df.sample(n=n, random_state=0).reset_index(drop=True)[["audio", "digit"]]
    return df, "digit", t.root


def load(name: str, data: Path, n: int):
    if name == "clothing_rating":
        return clothing_table(data, n)
    if name == "fsdd":
        return fsdd(data, n)
    return sklearn_table(name)


def with_split(df: pd.DataFrame, target: str, seed: int) -> pd.DataFrame:
    """A stratified 60/20/20 ``split`` column."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(df))
    rest, test = train_test_split(idx, test_size=0.2, random_state=seed, stratify=df[target])
    train, val = train_test_split(rest, test_size=0.25, random_state=seed, stratify=df[target].iloc[rest])
    split = np.empty(len(df), object)
    split[train], split[val], split[test] = "train", "val", "test"
    return df.assign(split=split)


# --- baseline -----------------------------------------------------------------------------------
def logmel_stats(paths: list[Path], n_mels: int = 64) -> np.ndarray:
    """Mean and standard deviation over time of each log-mel band (25 ms window, 10 ms hop)."""
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


def baseline_features(name: str, df: pd.DataFrame, target: str, root):
    """A scikit-learn transformer and its input frame."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    if name == "fsdd":
        x = pd.DataFrame(logmel_stats([Path(root) / p for p in df["audio"]]))
        return StandardScaler(), x
    x = df.drop(columns=[target, "split"])
    if name != "clothing_rating":
        return StandardScaler(), x
    x = x.assign(review=x["Title"].fillna("") + " " + x["Review Text"].fillna(""))
    cats = ["Division Name", "Department Name", "Class Name"]
    nums = ["Age", "Positive Feedback Count"]
    tf = ColumnTransformer([
        ("text", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), "review"),
        ("cat", make_pipeline(FunctionTransformer(lambda d: d.astype(str)), OneHotEncoder(handle_unknown="ignore")),
         cats),
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), nums)])
    return tf, x


def fit_baseline(name, df, target, root) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t0 = time.perf_counter()
    tf, x = baseline_features(name, df, target, root)
    fit_rows = (df["split"] != "test").to_numpy()
    model = make_pipeline(tf, LogisticRegression(max_iter=5000))
    model.fit(x[fit_rows], df[target][fit_rows])
    return model.predict(x[~fit_rows]), time.perf_counter() - t0


def fit_mmfuse(df, target, root, seed: int, out: Path):
    from mmfuse import MultimodalPredictor

    t0 = time.perf_counter()
    m = MultimodalPredictor(target=target, seed=seed, progress=False, log=None, out=out, root=root)
    m.fit(df)
    test = df[df["split"] == "test"]
    pred = m.predict(test)
    info = {"epochs_run": m.metrics_["epochs_run"], "best_epoch": m.metrics_["best_epoch"],
            "train_seconds": round(m.metrics_["train_seconds"], 1), "inputs": m.metrics_["inputs"]}
    return np.asarray(pred), time.perf_counter() - t0, info


def scores(y, pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    y, pred = np.asarray(y).astype(str), np.asarray(pred).astype(str)
    return {"accuracy": round(float(accuracy_score(y, pred)), 4),
            "macro_f1": round(float(f1_score(y, pred, average="macro")), 4)}


def summarize(runs: list[dict]) -> list[dict]:
    """Per data set: the main metric's mean over seeds for both, and the verdict (within 1 point)."""
    out = []
    for name in dict.fromkeys(r["dataset"] for r in runs):
        rs = [r for r in runs if r["dataset"] == name]
        metric = MAIN_METRIC[name]
        mm = float(np.mean([r["mmfuse"][metric] for r in rs]))
        bl = float(np.mean([r["baseline"][metric] for r in rs]))
        out.append({"dataset": name, "metric": metric, "seeds": len(rs), "mmfuse": round(mm, 4),
                    "mmfuse_std": round(float(np.std([r["mmfuse"][metric] for r in rs])), 4),
                    "baseline": round(bl, 4), "difference_points": round(100 * (mm - bl), 1),
                    "meets_target": bool(mm >= bl - 0.01)})
    return out


def main(argv=None):
    from _env import environment

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--quick", action="store_true", help="one seed, 600-row samples of clothing and FSDD")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default=",".join(MAIN_METRIC), help="comma-separated data sets")
    ap.add_argument("--label", default="after", help="key of these results in the results file (before / after)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    data = Path(args.data)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    n = 600 if args.quick else N_SAMPLE
    runs = []
    for name in args.only.split(","):
        df0, target, root = load(name, data, n)
        for seed in seeds:
            df = with_split(df0, target, seed)
            y = df[target][df["split"] == "test"]
            bpred, bsec = fit_baseline(name, df, target, root)
            with tempfile.TemporaryDirectory() as tmp:
                mpred, msec, info = fit_mmfuse(df, target, root, seed, Path(tmp))
            rows = {k: int((df["split"] == k).sum()) for k in ("train", "val", "test")}
            run = {"dataset": name, "seed": seed, "rows": rows,
                   "mmfuse": {**scores(y, mpred), "seconds": round(msec, 1), **info},
                   "baseline": {**scores(y, bpred), "seconds": round(bsec, 1)}}
            runs.append(run)
            print(json.dumps(run), flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    path = Path(args.results)
    saved = json.loads(path.read_text()) if path.exists() else {}
    old = saved.get(args.label, {})  # runs of other data sets under this label stay
    done = {r["dataset"] for r in runs}
    runs = [r for r in old.get("runs", []) if r["dataset"] not in done] + runs
    commands = [c for c in old.get("commands", []) if c != command] + [command]
    result = {"commands": commands, "quick": args.quick, "environment": environment(), "summary": summarize(runs),
              "runs": runs}
    saved[args.label] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1) + "\n")
    for row in result["summary"]:
        print(f"{row['dataset']:16s} {row['metric']:9s} mmfuse {row['mmfuse']:.3f} baseline {row['baseline']:.3f} "
              f"({row['difference_points']:+.1f} points) {'ok' if row['meets_target'] else 'LOSES'}")


if __name__ == "__main__":
    main()
