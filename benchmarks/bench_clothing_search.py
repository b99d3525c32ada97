"""Search on the Women's Clothing `Rating` target with a frozen all-MiniLM-L6-v2: the ``clothing_search``
protocol of ``mmfuse bench`` (see :mod:`mmfuse.bench.clothing_search`). This script is kept as a shortcut for::

    mmfuse bench clothing_search [--data DIR] [--set minutes=60] [--set folds=3] [--set ensemble=20]

The committed ``benchmarks/results/clothing_search.*`` were written by this script before it became a
protocol (a 30-minute budget).

Usage: python benchmarks/bench_clothing_search.py [--minutes 60] [--folds 3] [--ensemble 20] [--data DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None):
    from mmfuse.bench import run_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--ensemble", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    run_bench("clothing_search", data=args.data, out=args.out, results=args.results, minutes=args.minutes,
              folds=args.folds, ensemble=args.ensemble)


if __name__ == "__main__":
    main()
