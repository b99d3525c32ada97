"""Data-loading throughput: MNIST images and FSDD audio, 0 and 2 workers, cache cold and warm.

Each configuration runs in a fresh subprocess so that its peak memory (max RSS of the main
process plus its DataLoader workers) is its own. "cold" is the first pass over a new, empty
cache (every file is decoded and stored); "warm" is the second pass (read from the cache),
with the same persistent workers (as in training, where workers live across epochs). A
fully cached dataset is iterated in the main process (nothing is left to decode).
The files themselves sit in the OS page cache in both cases.

Usage:
    python benchmarks/bench_loading.py [--data ../shared/data] [--out benchmarks/results/loading.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
SEED = 0


def one_config(dataset: str, data: Path, workers: int, cache: str, work: Path) -> dict:
    import torch

    from mmfuse import MultimodalDataset, build_preprocessors, infer_schema, make_loader
    from mmfuse.datasets import fsdd_table, mnist_table

    torch.manual_seed(SEED)
    if dataset == "mnist":
        table = mnist_table(data / "mnist", work / "mnist_png")
        schema = infer_schema(table, target="label")
        opts = {"image": {"size": 28}}
    else:
        table = fsdd_table(data / "fsdd")
        schema = infer_schema(table, target="digit", overrides={"speaker": "ignore", "take": "ignore"})
        opts = {"audio": {"sample_rate": 8000, "duration": 1.0, "n_mels": 64}}
    preps = build_preprocessors(schema, table, opts)
    cache_arg = "memory" if cache == "memory" else work / f"cache_{dataset}_{workers}"
    if cache != "memory":
        shutil.rmtree(cache_arg, ignore_errors=True)
    t0 = time.perf_counter()
    ds = MultimodalDataset(table, preps, cache=cache_arg)
    setup_s = time.perf_counter() - t0
    loader = make_loader(ds, batch_size=64, shuffle=True, num_workers=workers, seed=SEED, persistent_workers=True)
    passes = []
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        n = 0
        for b in loader:
            n += len(b["row"])
        dt = time.perf_counter() - t0
        passes.append({"pass": name, "samples": n, "seconds": round(dt, 3), "samples_per_s": round(n / dt, 1)})
    del loader  # join the workers, so that their peak memory is counted in RUSAGE_CHILDREN
    import gc

    gc.collect()
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"dataset": dataset, "workers": workers, "cache": cache, "dataset_setup_s": round(setup_s, 3),
            "passes": passes, "peak_rss_mb_main": round(rss_self, 1), "peak_rss_mb_largest_worker": round(rss_children, 1),
            "warm_speedup": round(passes[0]["seconds"] / passes[1]["seconds"], 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loading.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        dataset, workers, cache = args.one.split(",")
        print(json.dumps(one_config(dataset, args.data, int(workers), cache, args.work)))
        return
    from _env import environment

    work = Path(tempfile.mkdtemp(prefix="mmfuse_bench_"))
    results = []
    try:
        for dataset in ("mnist", "fsdd"):
            for cache in ("memory", "disk"):
                for workers in (0, 2):
                    r = subprocess.run([sys.executable, __file__, "--data", str(args.data), "--work", str(work),
                                        "--one", f"{dataset},{workers},{cache}"], capture_output=True, text=True)
                    if r.returncode:
                        sys.exit(r.stderr)
                    res = json.loads(r.stdout.strip().splitlines()[-1])
                    results.append(res)
                    c, w = res["passes"]
                    print(f"{dataset:5s} cache={cache:6s} workers={workers}: cold {c['seconds']:6.2f}s "
                          f"({c['samples_per_s']:8.0f}/s)  warm {w['seconds']:6.2f}s ({w['samples_per_s']:8.0f}/s)  "
                          f"x{res['warm_speedup']:5.1f}  peak RSS main {res['peak_rss_mb_main']:.0f} MB, "
                          f"worker {res['peak_rss_mb_largest_worker']:.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"benchmark": "data loading", "command": "python benchmarks/bench_loading.py", "seed": SEED,
           "batch_size": 64, "settings": {"mnist": "10,000 PNGs, 28x28 grayscale, size=28",
                                           "fsdd": "3,000 WAVs, 8 kHz, duration=1.0 s, 64 mels (log-mel per batch)"},
           **environment(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    args.out.with_suffix(".md").write_text(markdown(out))
    print(f"written to {args.out} and {args.out.with_suffix('.md')}")


def worker_rss(r: dict) -> str:
    return f"{r['peak_rss_mb_largest_worker']:.0f}" if r["workers"] else "no workers"


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = [f"# Data loading: {out['command']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {out['python']}; "
             + ", ".join(f"{k} {v}" for k, v in out["versions"].items()) + f"; commit {out['commit']}; seed {out['seed']}; "
             f"batch size {out['batch_size']}.", "",
             "| data | cache | workers | cold pass s | cold samples/s | warm pass s | warm samples/s | warm speed-up | "
             "peak RSS main MB | peak RSS worker MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        c, w = r["passes"]
        lines.append(f"| {r['dataset']} ({c['samples']}) | {r['cache']} | {r['workers']} | {c['seconds']} | "
                     f"{c['samples_per_s']:.0f} | {w['seconds']} | {w['samples_per_s']:.0f} | {r['warm_speedup']}x | "
                     f"{r['peak_rss_mb_main']:.0f} | {worker_rss(r)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
