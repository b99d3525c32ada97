"""Frozen-backbone embedding speed (issue 11): mmfuse's cache-building path against a plain loop.

Rows: the first --rows training reviews of Women's Clothing (Title and Review Text joined with ". "),
all-MiniLM-L6-v2, max_length 128, mean pooling, 2 CPU cores.

- loop: what sentence-transformers' ``encode`` does: sort the texts by length, tokenize each batch of 32
  padded only to its longest text, run the model under ``torch.inference_mode``, mean-pool.
- mmfuse: the real path of a fit whose text backbone is frozen: ``fit_preprocessors`` (the model loaded,
  not timed, as the loop's is not) and then ``make_datasets``, which embeds every row into a fresh disk
  cache, plus one pass of the training DataLoader over the cached rows (timed).

Reported: rows/s of each, their ratio over --runs paired runs (the order alternates), how far mmfuse's
embeddings are from the loop's and from the previous path's (table-order batches of 256, each padded to
its longest row, as featurize ran before this change), and the same for ONNX Runtime (fp32 and int8).

Usage: python benchmarks/bench_embedding.py [--rows 1000] [--runs 5] [--runtimes torch,onnx,onnx-int8]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results" / "embedding.json"


def texts_of(data: Path, rows: int):
    import pandas as pd

    from mmfuse.datasets import womens_clothing

    df = womens_clothing(data / "womens-clothing").df
    df = df[df["split"] == "train"].iloc[:rows]
    join = lambda r: ". ".join(str(v) for v in (r["Title"], r["Review Text"]) if isinstance(v, str) and v.strip())  # noqa
    return pd.DataFrame({"review": [join(r) or "empty" for _, r in df.iterrows()], "y": df["Recommended IND"].to_numpy()})


def loop(model, tok, texts, batch=32, max_length=128):
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            idx = order[s:s + batch]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out[idx] = ((h * m).sum(1) / m.sum(1).clamp_min(1)).numpy()
    return out


def mmfuse_path(df, runtime: str, cache: Path):
    from mmfuse import ModelConfig, Splits, TrainConfig, fit_preprocessors, fit_target, make_datasets, read_table, select_inputs
    from mmfuse.bench.womens_clothing import minilm

    table = read_table(df)
    schema, inputs = select_inputs(table, "y", columns={"review": "text"}, inputs=["review"])
    mcfg = ModelConfig(encoders={"review": {"name": "hf", "model": minilm(), "train": "frozen", "pooling": "mean",
                                            "max_length": 128, "runtime": runtime}})
    tcfg = TrainConfig(batch_size=256, cache=str(cache))
    task = fit_target(df, "y", tcfg=tcfg)
    preps = fit_preprocessors(schema, inputs, df, table.root, mcfg, tcfg)  # loads the model (and exports ONNX)
    splits = Splits(df, df.iloc[:1], df.iloc[:0], table.root, "all rows")  # a validation row is required
    t0 = time.perf_counter()
    data = make_datasets(splits, preps, task, tcfg)  # embeds every row into the fresh cache
    emb = np.zeros((len(df), preps["review"].embedding_dim_), np.float32)
    for b in data.train_loader:  # one pass over the cached rows, as the first epoch reads them
        emb[b["row"].numpy()] = b["inputs"]["review"].numpy()
    return emb, time.perf_counter() - t0, preps["review"]


def previous_path(prep, df):
    """featurize as it ran before sorting: table-order batches of 256, each trimmed to its longest row."""
    from mmfuse.hf import backbone_forward
    from mmfuse.preprocessing import ReadContext

    items = [prep.read([v], i, ReadContext(Path("."))) for i, v in enumerate(df["review"])]
    out = []
    with torch.no_grad():
        for s in range(0, len(items), 256):
            arr = {k: torch.from_numpy(np.stack([it[k] for it in items[s:s + 256]])) for k in items[0]}
            out.append(backbone_forward(prep.backbone, arr, "mean")[0].numpy())
    return np.concatenate(out)


def drift(a, b) -> dict:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"max_abs": float(np.abs(a - b).max()), "min_cosine": float(cos.min())}


def main(argv=None):
    from transformers import AutoModel, AutoTokenizer

    from mmfuse.bench import environment
    from mmfuse.bench.womens_clothing import minilm
    from mmfuse.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--runtimes", default="torch,onnx,onnx-int8")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    df = texts_of(args.data, args.rows)
    texts = df["review"].tolist()
    model, tok = AutoModel.from_pretrained(minilm()).eval(), AutoTokenizer.from_pretrained(minilm())
    loop(model, tok, texts[:64])  # warm-up
    runs, ref, emb = [], None, {}
    for r in range(args.runs):
        pair = {}
        for which in (("loop", "mmfuse") if r % 2 == 0 else ("mmfuse", "loop")):
            if which == "loop":
                t0 = time.perf_counter()
                ref = loop(model, tok, texts)
                pair["loop_s"] = time.perf_counter() - t0
            else:
                with tempfile.TemporaryDirectory() as d:
                    emb["torch"], pair["mmfuse_s"], prep = mmfuse_path(df, "torch", Path(d))
        pair["ratio"] = pair["loop_s"] / pair["mmfuse_s"]  # mmfuse rows/s over the loop's
        runs.append(pair)
        print(f"run {r}: loop {len(texts) / pair['loop_s']:.1f} rows/s, mmfuse {len(texts) / pair['mmfuse_s']:.1f} rows/s, "
              f"ratio {pair['ratio']:.3f}", flush=True)
    ratios = [p["ratio"] for p in runs]
    result = {"rows": len(texts), "runs": runs, "ratio_median": float(np.median(ratios)),
              "ratio_min": float(min(ratios)), "ratio_max": float(max(ratios)),
              "loop_rows_per_s_median": float(np.median([len(texts) / p["loop_s"] for p in runs])),
              "mmfuse_rows_per_s_median": float(np.median([len(texts) / p["mmfuse_s"] for p in runs])),
              "mmfuse_vs_loop": drift(emb["torch"], ref), "mmfuse_vs_previous_path": drift(emb["torch"], previous_path(prep, df))}
    result["runtimes"] = {}
    for runtime in [r for r in args.runtimes.split(",") if r and r != "torch"]:
        times = []
        for _ in range(max(1, args.runs // 2)):
            with tempfile.TemporaryDirectory() as d:
                e, s, _ = mmfuse_path(df, runtime, Path(d))
            times.append(s)
        result["runtimes"][runtime] = {"rows_per_s_median": float(np.median([len(texts) / s for s in times])),
                                       "vs_torch": drift(e, emb["torch"])}
        print(f"{runtime}: {result['runtimes'][runtime]}", flush=True)
    result.update(command="python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), environment=environment())
    args.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results, json.dumps(result, indent=1) + "\n")
    lines = ["# Frozen-backbone embedding speed (all-MiniLM-L6-v2, max_length 128)", "",
             f"{len(texts)} clothing reviews; {args.runs} paired runs.", "",
             "| path | rows/s (median) |", "|---|---|",
             f"| plain loop (sorted, per-batch padding, inference_mode) | {result['loop_rows_per_s_median']:.1f} |",
             f"| mmfuse cache build (make_datasets + a DataLoader pass) | {result['mmfuse_rows_per_s_median']:.1f} |"]
    lines += [f"| mmfuse, runtime {k} | {v['rows_per_s_median']:.1f} |" for k, v in result["runtimes"].items()]
    lines += ["", f"mmfuse / loop rows/s: median {result['ratio_median']:.3f} (min {result['ratio_min']:.3f}, "
              f"max {result['ratio_max']:.3f}); target at least 0.95.", "",
              f"Embeddings: mmfuse vs loop max |diff| {result['mmfuse_vs_loop']['max_abs']:.2e}; vs the previous path "
              f"{result['mmfuse_vs_previous_path']['max_abs']:.2e} (target 1e-5)."]
    lines += [f"Runtime {k} vs torch: max |diff| {v['vs_torch']['max_abs']:.3e}, min cosine {v['vs_torch']['min_cosine']:.5f}."
              for k, v in result["runtimes"].items()]
    lines += ["", f"Command: `{result['command']}`; commit {result['environment']['commit']}; "
              f"{result['environment']['machine']['cpu']}, {result['environment']['machine']['cores']} cores."]
    atomic_write_text(args.results.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"written: {args.results}")


if __name__ == "__main__":
    main()
