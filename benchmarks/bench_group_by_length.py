"""Fine-tuning speed with and without length-grouped batches: the ``group_by_length`` protocol of
``mmfuse bench`` (see :mod:`mmfuse.bench.group_by_length`). This script is kept as a shortcut for::

    mmfuse bench group_by_length [--data DIR] [--set rows=1500]

Usage: python benchmarks/bench_group_by_length.py [--data ../shared/data] [--rows 1500]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None):
    from mmfuse.bench import run_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    run_bench("group_by_length", data=args.data, results=args.results, rows=args.rows)


if __name__ == "__main__":
    main()
