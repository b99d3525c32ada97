"""Data-loading throughput: MNIST images and FSDD audio, 0 and 2 workers, cache in memory and on disk.

Each configuration runs in a fresh subprocess so that its peak memory (max RSS of the main process plus
its DataLoader workers) is its own. "cold" is the first pass over a new, empty cache (every file is
decoded and stored); "warm" is the second pass (read from the cache), with the same persistent workers
(as in training, where workers live across epochs). A fully cached dataset is iterated in the main
process (nothing is left to decode). The files themselves sit in the OS page cache in both cases.
MNIST: the 10,000 t10k images as PNGs, 28 x 28; FSDD: 3,000 WAVs, 8 kHz, 1 s, 64 mels. Batch size 64.
The quick run: 500 MNIST images, cache in memory, no workers.
"""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import BenchContext

OPTIONS = {"datasets": str}
SEEDS = False
PUBLISHED = {}
DATASETS = ("mnist", "fsdd")


def one_config(dataset: str, data: Path, workers: int, cache: str, work: Path, limit: int | None, seed: int) -> dict:
    import torch

    from mmfuse import MultimodalDataset, build_preprocessors, infer_schema, make_loader
    from mmfuse.datasets import fsdd_table, mnist_table

    torch.manual_seed(seed)
    if dataset == "mnist":
        table = mnist_table(data / "mnist", work / f"mnist_png_{limit or 'all'}", limit=limit)
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
    loader = make_loader(ds, batch_size=64, shuffle=True, num_workers=workers, seed=seed, persistent_workers=True)
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


def run(ctx: BenchContext) -> dict:
    from mmfuse.errors import MmfuseError

    names = [d for d in str(ctx.options.get("datasets", "mnist" if ctx.quick else ",".join(DATASETS))).split(",") if d]
    if not names or any(d not in DATASETS for d in names):
        raise MmfuseError(f"--set datasets={ctx.options.get('datasets')}: a comma-separated list of {', '.join(DATASETS)}")
    limit = 500 if ctx.quick else None
    configs = [(d, w, c) for d in names for c in (("memory",) if ctx.quick else ("memory", "disk"))
               for w in ((0,) if ctx.quick else (0, 2))]
    results = []
    for dataset, workers, cache in configs:
        args = json.dumps({"dataset": dataset, "data": str(ctx.data), "workers": workers, "cache": cache,
                           "work": str(ctx.out), "limit": limit, "seed": ctx.seeds[0]})
        r = subprocess.run([sys.executable, "-m", "mmfuse.bench.loading", args], capture_output=True, text=True)
        if r.returncode:
            raise MmfuseError(f"loading benchmark, {dataset} with {workers} workers, cache {cache}: "
                              + (r.stderr.strip().splitlines() or ["failed"])[-1])
        res = json.loads(r.stdout.strip().splitlines()[-1])
        results.append(res)
        c, w = res["passes"]
        ctx.echo(f"{dataset} cache={cache} workers={workers}: cold {c['seconds']:.2f} s ({c['samples_per_s']:.0f}/s), "
                 f"warm {w['seconds']:.2f} s ({w['samples_per_s']:.0f}/s), peak RSS main {res['peak_rss_mb_main']:.0f} MB")
    return {"batch_size": 64, "results": results,
            "settings": {"mnist": f"{limit or '10,000'} PNGs, 28x28 grayscale, size=28",
                         "fsdd": "3,000 WAVs, 8 kHz, duration=1.0 s, 64 mels (log-mel per batch)"}}


def markdown(result: dict) -> str:
    lines = ["# Data loading" + (" — quick run" if result["quick"] else ""), "",
             f"Batch size {result['batch_size']}; " + "; ".join(f"{k}: {v}" for k, v in result["settings"].items()) + ".", "",
             "| data | cache | workers | cold pass s | cold samples/s | warm pass s | warm samples/s | warm speed-up | "
             "peak RSS main MB | peak RSS worker MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        c, w = r["passes"]
        worker = f"{r['peak_rss_mb_largest_worker']:.0f}" if r["workers"] else "no workers"
        lines.append(f"| {r['dataset']} ({c['samples']}) | {r['cache']} | {r['workers']} | {c['seconds']} | "
                     f"{c['samples_per_s']:.0f} | {w['seconds']} | {w['samples_per_s']:.0f} | {r['warm_speedup']}x | "
                     f"{r['peak_rss_mb_main']:.0f} | {worker} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # one configuration, in its own process: python -m mmfuse.bench.loading '{json}'
    a = json.loads(sys.argv[1])
    print(json.dumps(one_config(a["dataset"], Path(a["data"]), int(a["workers"]), a["cache"], Path(a["work"]),
                                a["limit"], int(a["seed"]))))
