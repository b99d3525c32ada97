"""mmfuse's defaults against a scikit-learn baseline on small real tables: the ``defaults`` protocol of
``mmfuse bench`` (see :mod:`mmfuse.bench.defaults`). This script is kept as a shortcut for::

    mmfuse bench defaults --seeds 3 [--set only=digits,wine] [--data ../shared/data]

Usage: python benchmarks/bench_defaults.py [--data ../shared/data] [--quick] [--seeds 3] [--only digits,wine]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None):
    from mmfuse.bench import run_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="the shared data folder (default $MMFUSE_SHARED_DATA or ../shared/data)")
    ap.add_argument("--quick", action="store_true", help="wine and digits, one seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated data sets")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    run_bench("defaults", data=args.data, quick=args.quick, seeds=1 if args.quick else args.seeds, results=args.results,
              **({"only": args.only} if args.only else {}))


if __name__ == "__main__":
    main()
