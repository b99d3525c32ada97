"""Training on a table larger than memory: a generated Parquet table of ``gb`` GB, streamed (``mmfuse fit --stream``).

The table (:func:`mmfuse.datasets_synthetic.write_synthetic_parquet`): images as PNG bytes (``image_size`` pixels
square, noise with a faint class square), a short text, a number and a category per row, 3 classes; row groups of
``row_group`` rows. Its splits come from a hash of the ``id`` column (80/10/10).

Measured, each run its own ``mmfuse fit`` process (images resized to 32 pixels, concat fusion, ``epochs``
epochs, ``workers`` DataLoader workers, no contribution pass):

- ``stream_full``: the whole table, streamed, with ``--checkpoint-every``; the peak memory of the command and
  its workers, sampled every second, against the target of 3 GB: the largest sum over the process tree of
  the RSS (a page shared by the workers, such as torch's libraries, counts once per process: an upper bound),
  of the PSS (a page shared by k processes counts 1/k in each: what the tree holds) and the largest RSS of
  one process;
- ``subset_memory`` and ``subset_stream``: the first ``subset_rows`` rows (a table that fits in memory), read whole
  (the in-memory path, which caches decoded images after the first epoch) and streamed.

Training rows per second = training rows / the epoch's wall time (validation included), per epoch.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import BenchContext

OPTIONS = {"gb": float, "image_size": int, "row_group": int, "epochs": int, "workers": int, "subset_rows": int,
           "batch_size": int, "shuffle_buffer": int, "table": str}
ZERO_OK = ("workers",)  # 0: the loading in the training process (one process to measure)
SEEDS = False
PUBLISHED = {"target": "issue 14: train on a 10 GB Parquet table with peak RSS under 3 GB; rows/s against the "
                       "in-memory path on a subset that fits"}


class _PeakMemory:
    """The peak memory of a process and its descendants, sampled every ``every`` seconds: the largest sum of their
    RSS (a page shared by k processes counts k times), the largest sum of their PSS (it counts 1/k in each: the
    memory the tree really holds) and the largest RSS of one process."""

    def __init__(self, pid: int, every: float = 1.0):
        import psutil

        self.proc, self.every, self._stop = psutil.Process(pid), every, threading.Event()
        self.peak = {"rss_sum": 0, "pss_sum": 0, "rss_max_process": 0}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                return
            rss = pss = top = 0
            for p in procs:
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    continue
                rss, pss, top = rss + info.rss, pss + info.pss, max(top, info.rss)
            for k, v in (("rss_sum", rss), ("pss_sum", pss), ("rss_max_process", top)):
                self.peak[k] = max(self.peak[k], v)
            time.sleep(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join()
        return {f"peak_{k}_mib": round(v / 2 ** 20, 1) for k, v in self.peak.items()}


def _fit(ctx, table, run_dir, extra, cfg_path) -> dict:
    own = Path(sys.executable).parent / "mmfuse"
    mmfuse = str(own) if own.exists() else shutil.which("mmfuse")
    cmd = [mmfuse, "fit", str(table), "--target", "label", "--config", str(cfg_path), "-o", str(run_dir),
           "--overwrite", "--no-progress", *extra]
    ctx.echo("  " + " ".join(cmd).replace(str(ctx.out), "WORK"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ctx.out)
    meter = _PeakMemory(proc.pid)
    stdout, stderr = proc.communicate()
    peak = meter.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"mmfuse fit failed:\n{stderr[-3000:]}")
    m = json.loads((run_dir / "metrics.json").read_text())
    train = m["rows"]["train"]
    return {"command": " ".join(["mmfuse"] + cmd[1:]).replace(str(ctx.out), "WORK"), "rows": m["rows"],
            "epoch_seconds": m["epoch_seconds"],
            "rows_per_second": [round(train / s, 1) if s else None for s in m["epoch_seconds"]],
            "train_seconds": round(m["train_seconds"], 1), "wall_seconds": round(time.perf_counter() - t0, 1),
            **peak, "val_accuracy": m["val"]["accuracy"],
            "test_accuracy": (m.get("test") or {}).get("accuracy")}


def run(ctx: BenchContext) -> dict:
    import pyarrow.parquet as pq

    from mmfuse.datasets_synthetic import write_synthetic_parquet

    o = ctx.options
    gb = float(o.get("gb", 0.05 if ctx.quick else 10.0))
    size = int(o.get("image_size", 128))
    row_group = int(o.get("row_group", 500))
    epochs = int(o.get("epochs", 1))
    workers = int(o.get("workers", 2))
    batch = int(o.get("batch_size", 64))
    buffer = int(o.get("shuffle_buffer", 10_000))
    row_bytes = size * size * 3 + 200
    rows = int(gb * 1e9 / row_bytes)
    subset = min(rows, int(o.get("subset_rows", 400 if ctx.quick else 20_000)))
    work = ctx.out
    full = work / "table"
    t0 = time.perf_counter()
    if o.get("table"):  # a table this protocol wrote before (its rows and files are read from it, not generated)
        full = Path(o["table"])
        files = sorted(full.glob("*.parquet"))
        info = {"rows": sum(pq.ParquetFile(f).metadata.num_rows for f in files),
                "bytes": sum(f.stat().st_size for f in files), "files": [str(f) for f in files]}
        row_group = pq.ParquetFile(files[0]).metadata.row_group(0).num_rows
        size = int(o.get("image_size", 128))
    else:
        info = write_synthetic_parquet(full, rows, image_size=size, row_group_size=row_group, seed=0,
                                       files=max(1, int(gb // 1)))
    gen_s = time.perf_counter() - t0
    ctx.echo(f"table: {info['rows']:,} rows, {info['bytes'] / 1e9:.2f} GB in {len(info['files'])} files "
             f"({gen_s:.0f} s to write)")
    sub = work / "subset.parquet"  # the first rows, one file: what the in-memory path reads
    first = pq.ParquetFile(info["files"][0])
    writer = None
    got = 0
    for g in range(first.num_row_groups):
        if got >= subset:
            break
        t = first.read_row_group(g)
        t = t.slice(0, min(len(t), subset - got))
        writer = writer or pq.ParquetWriter(sub, t.schema)
        writer.write_table(t, row_group_size=row_group)
        got += len(t)
    writer.close()
    cfg = {"contribution": False, "split_hash": "id", "preprocessing": {"image": {"size": 32}},
           "model": {"fusion": "concat"},
           "train": {"epochs": epochs, "batch_size": batch, "min_steps": 0, "patience": epochs, "log": None,
                     "num_workers": workers, "shuffle_buffer": buffer, "val_fraction": 0.1, "test_fraction": 0.1}}
    cfg_path = work / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    out = {"table": {"rows": info["rows"], "bytes": info["bytes"], "files": len(info["files"]), "image_size": size,
                     "row_group": row_group, "write_seconds": round(gen_s, 1)},
           "epochs": epochs, "workers": workers, "batch_size": batch, "shuffle_buffer": buffer, "runs": {}}
    ctx.echo("stream_full: the whole table, streamed")
    out["runs"]["stream_full"] = _fit(ctx, full, work / "run_stream_full", ["--stream", "--checkpoint-every", "500"],
                                      cfg_path)
    sub_cfg = {**cfg, "split_hash": None,
               "train": {**cfg["train"], "epochs": max(2, epochs), "patience": max(2, epochs)}}
    sub_cfg_path = work / "config_subset.json"
    sub_cfg_path.write_text(json.dumps({k: v for k, v in sub_cfg.items() if v is not None}))
    ctx.echo(f"subset_memory: the first {subset:,} rows, read whole")
    out["runs"]["subset_memory"] = _fit(ctx, sub, work / "run_subset_memory", [], sub_cfg_path)
    ctx.echo(f"subset_stream: the first {subset:,} rows, streamed")
    stream_cfg_path = work / "config_subset_stream.json"
    stream_cfg_path.write_text(json.dumps({**sub_cfg, "split_hash": "id"}))
    out["runs"]["subset_stream"] = _fit(ctx, sub, work / "run_subset_stream", ["--stream"], stream_cfg_path)
    for name, r in out["runs"].items():
        ctx.echo(f"{name}: rows/s per epoch {r['rows_per_second']}, peak memory: RSS sum {r['peak_rss_sum_mib']:,.0f} "
                 f"MiB, PSS sum {r['peak_pss_sum_mib']:,.0f} MiB, largest process {r['peak_rss_max_process_mib']:,.0f} MiB; "
                 f"val accuracy {r['val_accuracy']:.3f}")
    if not ctx.quick and not o.get("table"):
        shutil.rmtree(full, ignore_errors=True)  # 10 GB of generated rows: not kept
    return out


def markdown(result: dict) -> str:
    t = result["table"]
    lines = ["# Training on a table larger than memory (streamed Parquet)" + (" — quick run" if result["quick"] else ""),
             "", f"Generated table: {t['rows']:,} rows, {t['bytes'] / 1e9:.2f} GB in {t['files']} Parquet files "
             f"(PNG images of {t['image_size']}x{t['image_size']} noise with a faint class square, a text, a number, "
             f"a category; row groups of {t['row_group']} rows). Concat fusion, images resized to 32 px, batch "
             f"{result['batch_size']}, {result['workers']} workers, shuffle buffer {result['shuffle_buffer']:,} rows.",
             "", "| run | training rows | epochs | training rows/s per epoch | peak RSS, sum over processes (MiB) | "
                 "peak PSS, sum (MiB) | largest process RSS (MiB) | val accuracy |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["runs"].items():
        rate = ", ".join(f"{x:,.0f}" for x in r["rows_per_second"] if x)
        lines.append(f"| {name} | {r['rows']['train']:,} | {len(r['epoch_seconds'])} | {rate} | "
                     f"{r['peak_rss_sum_mib']:,.0f} | {r['peak_pss_sum_mib']:,.0f} | {r['peak_rss_max_process_mib']:,.0f} | "
                     f"{r['val_accuracy']:.3f} |")
    lines += ["", "Peak memory of the `mmfuse fit` process and its workers, sampled every second: RSS summed (a page "
                  "shared by k processes, such as torch's libraries, counts k times), PSS summed (it counts 1/k in each) "
                  "and the largest single process. The classes are easy to tell apart (a CNN finds the square): the table is for "
                  "memory and speed, not accuracy. The in-memory path caches decoded images after its first "
                  "epoch; a streamed run decodes every epoch.", "", "Commands:", ""]
    lines += [f"- {name}: `{r['command']}`" for name, r in result["runs"].items()]
    return "\n".join(lines) + "\n"
