"""Frozen-backbone embedding speed: the ``embedding`` protocol of ``mmfuse bench`` (see
:mod:`mmfuse.bench.embedding`). This script is kept as a shortcut for::

    mmfuse bench embedding [--data DIR] [--set rows=1000] [--set runs=5] [--set runtimes=torch,onnx,onnx-int8]

Usage: python benchmarks/bench_embedding.py [--data DIR] [--rows 1000] [--runs 5] [--runtimes torch,onnx,onnx-int8]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None):
    from mmfuse.bench import run_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="the shared data folder (default: $MMFUSE_SHARED_DATA "
                    "or ../shared/data)")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--runtimes", default="torch,onnx,onnx-int8")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    run_bench("embedding", data=args.data, results=args.results, rows=args.rows, runs=args.runs, runtimes=args.runtimes)


if __name__ == "__main__":
    main()
