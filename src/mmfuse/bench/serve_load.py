"""A load test of ``mmfuse serve``: a real HTTP client against the server on loopback.

The bundle: the ``batch_predict`` protocol's generated table (64 numbers, a category, a short text;
tabular + text inputs), fitted on 4,000 rows. The server: ``mmfuse serve BUNDLE --port P`` in its own
process (one uvicorn worker), once with batching (``--max-batch 64 --max-wait-ms 5``) and once without
(``--max-batch 1``). The client: ``httpx.AsyncClient`` sending ``requests`` requests (10,000) at
``concurrency`` 32, half with one row and half with 16 rows (drawn in a seeded order), each loop bounded by
``max_seconds``. Reported per mode: requests and rows per second, p50 / p90 / p99 latency, the status codes
(the target: no 5xx), and the server's batch sizes (from its ``/metrics``). The quick run: 300 requests.
"""
import asyncio
import subprocess
import sys
import time
from pathlib import Path

from . import BenchContext, free_port

OPTIONS = {"requests": int, "concurrency": int, "max_seconds": float}
SEEDS = False
NEEDS_DATA = False
PUBLISHED = {"target": "10,000 requests at concurrency 32 with no 5xx response; p50 / p99 latency with and without batching"}


def _start(bundle: Path, port: int, max_batch: int):
    import httpx

    log = open(bundle.parent.parent / f"server_{max_batch}.log", "w")  # a file: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "-m", "mmfuse.cli", "serve", str(bundle), "--port", str(port),
                             "--max-batch", str(max_batch), "--max-wait-ms", "5"],
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    for _ in range(240):
        if proc.poll() is not None:
            from mmfuse.errors import MmfuseError

            raise MmfuseError(f"mmfuse serve stopped: {Path(log.name).read_text()[-500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.25)
    proc.kill()
    raise TimeoutError("mmfuse serve did not answer /health within 60 s")


async def _load(url: str, bodies: list, concurrency: int, max_seconds: float) -> dict:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    lat, statuses, errors = [], {}, 0
    t_end = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def one(body):
            nonlocal errors
            async with sem:
                if time.perf_counter() > t_end:
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                except httpx.HTTPError:
                    errors += 1
                    return
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    return {"latencies": lat, "statuses": statuses, "transport_errors": errors, "wall": wall}


def run(ctx: BenchContext) -> dict:
    import httpx
    import numpy as np

    from mmfuse import MultimodalPredictor

    from .batch_predict import _vocab, make_rows

    n_req = int(ctx.options.get("requests", 300 if ctx.quick else 10_000))
    conc = int(ctx.options.get("concurrency", 32))
    max_seconds = float(ctx.options.get("max_seconds", 600))
    seed = ctx.seeds[0]
    rng = np.random.default_rng(seed)
    vocab = _vocab(np.random.default_rng(seed))
    train = make_rows(4000, rng, vocab)
    bundle = ctx.out / "run" / "bundle"
    m = MultimodalPredictor(target="label", epochs=3 if ctx.quick else 10, seed=seed, progress=False, log=None,
                            contribution=False, out=ctx.out / "run").fit(train)
    pool = make_rows(2000, rng, vocab).drop(columns=["label"])
    records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in pool.to_dict("records")]
    sizes = rng.choice([1, 16], n_req)
    starts = rng.integers(0, len(records) - 16, n_req)
    bodies = [{"rows": records[s:s + k]} for s, k in zip(starts, sizes)]
    out = {"requests": n_req, "concurrency": conc, "rows_per_request": {"1": int((sizes == 1).sum()),
                                                                         "16": int((sizes == 16).sum())},
           "model": {"inputs": m.metrics_["inputs"], "fusion": m.metrics_["fusion"]}, "modes": {}}
    for mode, max_batch in (("batching", 64), ("no batching", 1)):
        port = free_port()
        proc = _start(bundle, port, max_batch)
        try:
            url = f"http://127.0.0.1:{port}/predict"
            asyncio.run(_load(url, bodies[:conc], conc, 60))  # warm-up: connections, first model calls
            res = asyncio.run(_load(url, bodies, conc, max_seconds))
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        lat = np.asarray(res["latencies"]) * 1000
        done = int(sum(res["statuses"].values()))
        rows_done = int(sum(sizes[:done]))  # (requests start in order; a time-bounded loop stops the last ones)
        batches = {k: float(v) for k, v in (line.split() for line in metrics.splitlines()
                                            if line.startswith(("mmfuse_batch_rows_sum", "mmfuse_batch_rows_count")))}
        calls = batches.get("mmfuse_batch_rows_count", 0)
        out["modes"][mode] = {
            "max_batch": max_batch, "completed": done, "statuses": {str(k): v for k, v in sorted(res["statuses"].items())},
            "server_errors_5xx": int(sum(v for k, v in res["statuses"].items() if k >= 500)),
            "transport_errors": res["transport_errors"], "wall_seconds": round(res["wall"], 2),
            "requests_per_second": round(done / res["wall"], 1), "rows_per_second": round(rows_done / res["wall"], 1),
            "latency_ms": {q: round(float(np.percentile(lat, p)), 1) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))}
            if len(lat) else {},
            "mean_rows_per_model_call": round(batches.get("mmfuse_batch_rows_sum", 0) / calls, 2) if calls else None}
        ctx.echo(f"{mode}: {out['modes'][mode]['requests_per_second']} requests/s, p50 "
                 f"{out['modes'][mode]['latency_ms'].get('p50')} ms, p99 {out['modes'][mode]['latency_ms'].get('p99')} ms, "
                 f"statuses {out['modes'][mode]['statuses']}")
    out["meets_target"] = all(m["server_errors_5xx"] == 0 and m["transport_errors"] == 0 and m["completed"] == n_req
                              for m in out["modes"].values())
    return out


def markdown(result: dict) -> str:
    lines = ["# Load test of `mmfuse serve` on loopback" + (" — quick run" if result["quick"] else ""), "",
             f"{result['requests']:,} requests at concurrency {result['concurrency']} "
             f"({result['rows_per_request']['1']:,} of one row, {result['rows_per_request']['16']:,} of 16 rows); "
             f"model: {', '.join(result['model']['inputs'])} ({result['model']['fusion']}); one uvicorn worker.", "",
             "| mode | completed | requests/s | rows/s | p50 ms | p90 ms | p99 ms | rows per model call | 5xx | statuses |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, m in result["modes"].items():
        lat = m["latency_ms"]
        lines.append(f"| {mode} (max batch {m['max_batch']}) | {m['completed']:,} | {m['requests_per_second']:,} | "
                     f"{m['rows_per_second']:,} | {lat.get('p50', '')} | {lat.get('p90', '')} | {lat.get('p99', '')} | "
                     f"{m['mean_rows_per_model_call']} | {m['server_errors_5xx']} | {m['statuses']} |")
    lines += ["", f"Target (every request answered, no 5xx): {'met' if result['meets_target'] else 'missed'}.", ""]
    return "\n".join(lines)
