"""Leave-one-subject-out on the smartphone + smartwatch HAR data: the protocol `mmfuse bench sp_sw_har`
(src/mmfuse/bench/sp_sw_har.py states it), kept under this name for the commands in earlier results.

Usage:
  python benchmarks/bench_sphar_loso.py --models phone,watch,concat [--epochs 30] [--batch-size 128] [--jobs 2]
         [--monitor loss] [--search-minutes 8] [--search-subjects 8] [--subjects 23] [--data ../shared/data]
         [--out runs/sphar_loso] [--results benchmarks/results]
is `mmfuse bench sp_sw_har --set models=... --set epochs=...`; results in benchmarks/results/sp_sw_har.json and .md
(rows of models not run now are kept).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def main(argv=None):
    from mmfuse.bench import run_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--models", default="phone,watch,concat")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/sphar_loso")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    for opt, kind in (("--epochs", int), ("--batch-size", int), ("--monitor", str), ("--search-minutes", float),
                      ("--search-subjects", int), ("--subjects", int)):
        ap.add_argument(opt, type=kind, default=None)
    args = ap.parse_args(argv)
    settings = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("monitor", args.monitor),
                                  ("search_minutes", args.search_minutes), ("search_subjects", args.search_subjects),
                                  ("subjects", args.subjects)) if v is not None}
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    run_bench("sp_sw_har", data=args.data, seeds=[args.seed], out=args.out, results=args.results, jobs=args.jobs,
              command=command, models=args.models, **settings)


if __name__ == "__main__":
    main()
