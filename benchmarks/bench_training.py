"""Training-loop overhead, `mmfuse predict` cold start and single-row latency: the ``training`` protocol of
``mmfuse bench`` (see :mod:`mmfuse.bench.training`). This script is kept as a shortcut for::

    mmfuse bench training [--set runs=5] [--set parts=loop]

Usage: python benchmarks/bench_training.py [--runs 5] [--loop-only] [--results benchmarks/results]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None):
    from mmfuse.bench import run_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="paired runs of the training-loop comparison")
    ap.add_argument("--loop-only", action="store_true", help="only the training-loop comparison")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    run_bench("training", results=args.results, runs=args.runs, **({"parts": "loop"} if args.loop_only else {}))


if __name__ == "__main__":
    main()
