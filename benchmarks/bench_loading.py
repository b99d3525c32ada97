"""Data-loading throughput: the ``loading`` protocol of ``mmfuse bench`` (see :mod:`mmfuse.bench.loading`).
This script is kept as a shortcut for::

    mmfuse bench loading [--data DIR] [--set datasets=mnist,fsdd]

Usage: python benchmarks/bench_loading.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None):
    from mmfuse.bench import run_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    run_bench("loading", data=args.data, results=args.results)


if __name__ == "__main__":
    main()
