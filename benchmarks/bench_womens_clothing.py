"""all-MiniLM-L6-v2 on the Women's Clothing reviews: the ``womens_clothing`` protocol of ``mmfuse bench``
(see :mod:`mmfuse.bench.womens_clothing`). This script is kept as a shortcut for::

    mmfuse bench womens_clothing                                   # frozen tables + the embedding cache's effect
    mmfuse bench womens_clothing --tag finetune-full --set backbone=full [--set models=concat] [--set epochs=1]
    mmfuse bench womens_clothing --tag finetune-full-f1 --set backbone=full --set decision_threshold=f1 \\
        --set targets='Recommended IND'

Usage: python benchmarks/bench_womens_clothing.py [--finetune last|full] [--all-text] [--f1-threshold]
       [--fusions concat,gated] [--epochs N] [--targets 'Recommended IND,Rating'] [--cache-rows N]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None):
    from mmfuse.bench import run_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="the shared data folder (default $MMFUSE_SHARED_DATA or ../shared/data)")
    ap.add_argument("--finetune", choices=["last", "full"], help="fine-tune the last 2 layers or the whole backbone")
    ap.add_argument("--all-text", action="store_true", help="write the tabular columns into the review text too")
    ap.add_argument("--f1-threshold", action="store_true", help="choose Recommended IND's threshold on the val rows")
    ap.add_argument("--fusions", default=None, help="comma-separated fusions")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--targets", default=None)
    ap.add_argument("--cache-rows", type=int, default=None, help="training rows for the cache timing (frozen only)")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    opts = {k: v for k, v in {"backbone": args.finetune, "all_text": "yes" if args.all_text else None,
                              "decision_threshold": "f1" if args.f1_threshold else None, "models": args.fusions,
                              "epochs": args.epochs, "targets": args.targets, "cache_rows": args.cache_rows}.items()
            if v is not None}
    tag = "-".join(x for x in [f"finetune-{args.finetune}" if args.finetune else None, "alltext" if args.all_text else None,
                               "f1" if args.f1_threshold else None] if x) or None
    run_bench("womens_clothing", data=args.data, results=args.results, tag=tag, **opts)


if __name__ == "__main__":
    main()
