"""Batch prediction larger than memory: ``mmfuse predict`` over a generated Parquet table of ``gb`` GB.

The table: 64 numeric columns, a category and a short text (8-16 words from a 5,000-word vocabulary) per
row, written row group by row group (50,000 rows each) until the file reaches the size asked for; its
label is a noisy function of a few numbers and words. A model (tabular + text, default encoders) is
fitted on 4,000 rows from the same generator. Then ``mmfuse predict BUNDLE big.parquet -o out.parquet``
runs as its own process: reported are its wall time, rows per second and peak resident memory (the
child process's ``ru_maxrss``), against the target of 1 GB. The output is checked against an in-memory
prediction (:meth:`Predictor.predict_frame`) on 2,000 rows drawn at random: same row ids, same labels,
probabilities within 1e-5. The quick run: a 5 MB table in row groups of 5,000 rows, the model fitted on 1,000.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from . import BenchContext

OPTIONS = {"gb": float, "chunk_rows": int}
SEEDS = False
NEEDS_DATA = False
PUBLISHED = {"target": "peak RSS under 1 GB for a 2 GB Parquet table; output rows equal to an in-memory prediction"}
N_NUM, ROW_GROUP = 64, 50_000


def _vocab(rng, n=5000):
    letters = list("abcdefghijklmnopqrstuvwxyz")
    return ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(n)]


def make_rows(n: int, rng, vocab) -> "object":
    """``n`` rows of the generated table (a DataFrame)."""
    import numpy as np
    import pandas as pd

    x = rng.normal(size=(n, N_NUM))
    lens = rng.integers(8, 17, n)
    words = rng.integers(0, len(vocab), lens.sum())
    cuts = np.cumsum(lens)[:-1]
    texts = [" ".join(vocab[i] for i in w) for w in np.split(words, cuts)]
    good = np.fromiter((len(t) % 7 < 3 for t in texts), bool, n)  # a text feature the text encoder can pick up
    cat = rng.choice(["red", "green", "blue", "grey"], n)
    score = x[:, 0] + 0.5 * x[:, 1] - 0.5 * x[:, 2] + 0.8 * good + 0.5 * (cat == "red") + rng.normal(0, 0.5, n)
    df = pd.DataFrame(x.astype("float32"), columns=[f"x{i}" for i in range(N_NUM)])
    df["color"], df["note"] = cat, texts
    df["label"] = np.where(score > 0.4, "high", "low")
    return df


def write_table(path: Path, gb: float, seed: int, echo, row_group: int = ROW_GROUP) -> dict:
    """Append row groups until the file holds ``gb`` GB; its rows and bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocab = _vocab(rng)
    t0, rows, writer = time.perf_counter(), 0, None
    target = gb * 1e9
    try:
        while True:
            df = make_rows(row_group, rng, vocab).drop(columns=["label"])
            table = pa.Table.from_pandas(df, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            rows += len(df)
            size = path.stat().st_size
            if rows % 1_000_000 == 0:
                echo(f"  {rows:,} rows, {size / 1e9:.2f} GB")
            if size >= target:
                break
    finally:
        if writer is not None:
            writer.close()
    return {"rows": rows, "bytes": path.stat().st_size, "write_seconds": round(time.perf_counter() - t0, 1),
            "vocab_seed": seed}


def run(ctx: BenchContext) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    from mmfuse import MultimodalPredictor
    from mmfuse.bundle import Predictor

    gb = float(ctx.options.get("gb", 0.005 if ctx.quick else 2.0))
    chunk = int(ctx.options.get("chunk_rows", 50_000))
    seed = ctx.seeds[0]
    work = ctx.out
    big = work / "big.parquet"
    ctx.echo(f"writing a {gb} GB Parquet table to {big}")
    info = write_table(big, gb, seed, ctx.echo, 5_000 if ctx.quick else ROW_GROUP)
    rng = np.random.default_rng(seed + 1)
    train = make_rows(1000 if ctx.quick else 4000, rng, _vocab(np.random.default_rng(seed)))
    m = MultimodalPredictor(target="label", epochs=3 if ctx.quick else 10, seed=seed, progress=False, log=None,
                            contribution=False, out=work / "run").fit(train)
    bundle = work / "run" / "bundle"
    out = work / "pred.parquet"
    args = ["predict", str(bundle), str(big), "-o", str(out), "--chunk-rows", str(chunk), "--no-progress"]
    peak_file = work / "predict_peak_rss_kib.txt"
    # the command's own peak RSS (RUSAGE_SELF at its exit), whatever other children this process had
    code = ("import atexit, resource, sys\n"
            f"atexit.register(lambda: open({str(peak_file)!r}, 'w').write("
            "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
            f"from mmfuse.cli import main\nmain({args!r})\n")
    ctx.echo("running: mmfuse " + " ".join(args))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        from mmfuse.errors import MmfuseError

        raise MmfuseError(f"predict failed: {proc.stderr.strip()[-500:]}")
    peak = int(peak_file.read_text()) if peak_file.is_file() else None
    f = pq.ParquetFile(out)
    assert f.metadata.num_rows == info["rows"], (f.metadata.num_rows, info["rows"])
    sample = np.sort(np.random.default_rng(seed + 2).choice(info["rows"], size=min(2000, info["rows"]), replace=False))
    src = _take(big, sample)
    expected = Predictor.load(bundle).predict_frame(src)
    got = _take(out, sample)
    same_rows = bool((got["row"].to_numpy() == sample).all())
    same_labels = bool((got["prediction"].astype(str).to_numpy() == expected["prediction"].astype(str).to_numpy()).all())
    probas = [c for c in expected.columns if c.startswith("proba_")]
    max_diff = float(np.abs(got[probas].to_numpy(float) - expected[probas].to_numpy(float)).max())
    return {"table": {**info, "gb": round(info["bytes"] / 1e9, 3), "columns": N_NUM + 2},
            "chunk_rows": chunk, "model": {"inputs": m.metrics_["inputs"], "fusion": m.metrics_["fusion"],
                                           "test_accuracy": round(m.metrics_["test"]["accuracy"], 4)},
            "predict": {"seconds": round(seconds, 1), "rows_per_second": round(info["rows"] / seconds),
                        "peak_rss_mib": round(peak / 1024, 1) if peak else None, "stdout": proc.stdout.strip()[-300:]},
            "check": {"sample_rows": len(sample), "same_row_ids": same_rows, "same_labels": same_labels,
                      "max_abs_proba_difference": max_diff},
            "meets_target": bool(peak and peak / 1024 < 1024 and same_rows and same_labels and max_diff <= 1e-5)}


def _take(path: Path, rows) -> "object":
    """Rows ``rows`` (sorted positions) of a Parquet file, reading only the row groups that hold them."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    starts = np.cumsum([0] + [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)])
    parts = []
    for g in range(f.num_row_groups):
        inside = rows[(rows >= starts[g]) & (rows < starts[g + 1])]
        if len(inside):
            parts.append(f.read_row_group(g).take(inside - starts[g]).to_pandas())
    out = pd.concat(parts, ignore_index=True)
    out.index = rows
    return out


def markdown(result: dict) -> str:
    t, p, c = result["table"], result["predict"], result["check"]
    rss = f"{p['peak_rss_mib']:,.0f} MiB" if p["peak_rss_mib"] else "not measured"
    return "\n".join([
        "# Batch prediction over a Parquet table larger than memory" + (" — quick run" if result["quick"] else ""), "",
        f"Table: {t['rows']:,} rows × {t['columns']} columns, {t['gb']} GB on disk (written in {t['write_seconds']:.0f} s). "
        f"Model: {', '.join(result['model']['inputs'])} ({result['model']['fusion']}), test accuracy "
        f"{result['model']['test_accuracy']:.4f} on its own generated rows.", "",
        "| | value |", "|---|---|",
        f"| `mmfuse predict` wall time | {p['seconds']:,.0f} s |",
        f"| rows per second | {p['rows_per_second']:,} |",
        f"| peak resident memory of the predict process | {rss} (target under 1 GB) |",
        f"| rows per chunk | {result['chunk_rows']:,} |",
        f"| sample checked against in-memory prediction | {c['sample_rows']:,} rows: row ids "
        f"{'equal' if c['same_row_ids'] else 'DIFFER'}, labels {'equal' if c['same_labels'] else 'DIFFER'}, "
        f"largest probability difference {c['max_abs_proba_difference']:.1e} |", "",
        f"Target met: {'yes' if result['meets_target'] else 'no'}.", ""])
