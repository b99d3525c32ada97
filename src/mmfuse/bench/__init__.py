"""``mmfuse bench NAME``: named benchmark protocols, run end to end, their results written with their provenance.

Each protocol is a module of this package with ``run(ctx) -> dict`` (its numbers), ``markdown(result) -> str``
(its tables), ``PUBLISHED`` (the published numbers beside which ours are reported) and a docstring that states
the protocol. The runner adds what makes a number reproducible: the machine, the package versions, the
commit, the seeds, the command and the wall time, and writes ``<results>/NAME.json`` and ``NAME.md``
(``NAME_quick.*`` for ``--quick``, a reduced run for CI that never overwrites the full results)::

    mmfuse bench fsdd_mnist --seeds 3            # benchmarks/results/fsdd_mnist.json and .md
    mmfuse bench sp_sw_har --quick               # a few subjects and epochs, in minutes
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Callable

from ..errors import MmfuseError

__all__ = ["PROTOCOLS", "BenchContext", "run_bench", "environment", "default_data_dir"]

PROTOCOLS = {
    "fsdd_mnist": "audio-visual digits (FSDD + MNIST, AV-MNIST style): single inputs, every fusion, robustness",
    "sp_sw_har": "phone + watch activity recognition, leave one subject out, against the authors' CNN",
    "womens_clothing": "Women's Clothing reviews with frozen all-MiniLM-L6-v2: both targets, against the baselines",
    "efficiency": "every fusion on one data set: parameters, training time per epoch, inference per 1,000 rows, peak memory",
    "embedding": "frozen-backbone (MiniLM) embedding speed: mmfuse's cache build against a plain loop; ONNX Runtime",
    "clothing_search": "an Optuna search (frozen MiniLM) on the clothing Rating target, its ensemble, against the baselines",
    "loading": "data-loading throughput: MNIST images and FSDD audio, 0 and 2 workers, cache in memory and on disk",
    "group_by_length": "one epoch of full MiniLM fine-tuning with and without length-grouped batches",
    "defaults": "mmfuse with nothing but the target against logistic regression on five small real tables",
    "batch_predict": "mmfuse predict over a generated 2 GB Parquet table: rows/s, peak memory, output checked",
    "serve_load": "a load test of mmfuse serve on loopback: 10,000 requests at concurrency 32, with and without batching",
    "alignment": "cross-modal alignment: digits audio<->image retrieval, semi-supervised gain, filling in vs zeroing, "
                 "clothing review -> item retrieval",
    "training": "mmfuse's training loop against a hand-written PyTorch loop; predict cold start and one-row latency",
    "feedback": "the feedback loop on the clothing reviews: half the rows, continued on the other half, against all rows",
    "scaling": "training throughput on 1 and 2 processes (DDP under torchrun, gloo on CPU) on the audio-visual digits",
    "streaming": "training on a generated 10 GB Parquet table, streamed: peak memory, rows/s against the in-memory path",
    "onnx_export": "ONNX export of every fusion and built-in encoder on real rows: parity with PyTorch, one-row latency",
}


def free_port() -> int:
    """A TCP port free on loopback now (for a server or a rendezvous a protocol starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_data_dir() -> Path:
    """``$MMFUSE_SHARED_DATA``, else ``../shared/data`` beside the current folder."""
    env = os.environ.get("MMFUSE_SHARED_DATA")
    return Path(env) if env else Path.cwd().parent / "shared" / "data"


@dataclass
class BenchContext:
    """What a protocol is given: where the data sets are, a work folder, the reduced-run switch, the seeds."""

    name: str
    data: Path
    out: Path
    quick: bool = False
    seeds: list = field(default_factory=lambda: [0])
    jobs: int = 1
    echo: Callable[[str], None] = print
    options: dict = field(default_factory=dict)
    previous: dict = field(default_factory=dict)  # the results file already there (protocols that add rows)


def environment() -> dict:
    """The machine, Python, package versions and (in a git checkout) the commit, recorded with every result."""
    from importlib import metadata  # here, not at import: the CLI lists the protocols on every start

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions = {}
    for pkg in ("mmfuse", "torch", "numpy", "pandas", "pillow", "soundfile", "scipy", "lightning", "transformers",
                "optuna", "onnxruntime"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    commit = "unknown"
    try:
        top = Path(__file__).resolve().parents[3]
        if (top / ".git").exists():
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=top).stdout.strip() or "unknown"
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks"],
                                   capture_output=True, text=True, cwd=top).stdout.strip()
            commit += "+dirty" if dirty else ""
    except OSError:
        pass
    threads = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return {"machine": {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "os": platform.platform(),
                        "torch_threads": threads},
            "python": sys.version.split()[0], "versions": versions, "commit": commit}


def run_bench(name: str, *, data=None, quick: bool = False, seeds: int | list = 1, out=None, results=None,
              jobs: int = 1, echo: Callable[[str], None] = print, command: str | None = None, tag: str | None = None,
              **options) -> dict:
    """Run protocol ``name`` and write ``results/NAME.json`` and ``.md``; returns the result.

    Args:
        data: The folder holding the data sets (``fsdd/``, ``mnist/``, ``sp-sw-har/``, ``womens-clothing/``);
            default :func:`default_data_dir`.
        quick: A reduced run (few rows, epochs and models) that finishes in minutes; written to ``NAME_quick.*``.
        seeds: A count (seeds 0..N-1) or a list of seeds.
        out: The work folder for runs and bundles (default ``runs/bench/NAME``).
        results: The folder for the results files (default ``benchmarks/results``).
        tag: A variant's name: results in ``NAME_TAG.json`` (e.g. ``tag="onnx"`` with ``runtime="onnx"``), so
            that a variant never replaces the main results.
        options: Protocol settings (e.g. ``models="audio,concat"``, ``epochs=10``).
    """
    from ..bundle import _json_default
    from ..io import atomic_write_text

    if name not in PROTOCOLS:
        from .._registry import unknown_name_message

        raise MmfuseError(unknown_name_message("benchmark", name, list(PROTOCOLS)))
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or (isinstance(seeds, int) and seeds < 1):
        raise MmfuseError(f"seeds must be a count >= 1 or a list of seeds, got {seeds!r}")
    module = import_module(f".{name}", __name__)
    if len(seed_list) > 1 and not getattr(module, "SEEDS", True):
        raise MmfuseError(f"benchmark {name!r} fits with one seed (its protocol repeats nothing per seed); "
                          "leave --seeds out")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise MmfuseError(f"--jobs {jobs}: a whole number >= 1 (processes that fit folds at once)")
    options = _check_options(name, getattr(module, "OPTIONS", {}), options, getattr(module, "ZERO_OK", ()))
    data_arg, results_arg = data, results
    data = Path(data) if data is not None else default_data_dir()
    results = Path(results) if results is not None else Path("benchmarks") / "results"
    if tag is not None and (not tag or not all(c.isalnum() or c in "-_" for c in tag)):
        raise MmfuseError(f"--tag {tag!r}: letters, digits, '-' and '_' only (it names the results file)")
    for flag, folder in (("--results", results), ("--out", out)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise MmfuseError(f"{flag} {folder} is a file; {flag} takes a folder")
    stem = name + (f"_{tag}" if tag else "") + ("_quick" if quick else "")
    path = results / f"{stem}.json"
    previous = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = {}
    ctx = BenchContext(name, data, Path(out) if out is not None else Path("runs") / "bench" / stem, quick, seed_list,
                       jobs, echo, options, previous)
    ctx.out.mkdir(parents=True, exist_ok=True)
    echo(f"bench {name}{' (quick)' if quick else ''}: seeds {seed_list}; "
         + (f"data {data}; " if getattr(module, "NEEDS_DATA", True) else "") + f"work folder {ctx.out}")
    t0 = time.perf_counter()
    body = module.run(ctx)
    if command is None:  # the command that reproduces this run, whether it came from the CLI or from Python
        given = [(flag, v) for flag, v in (("--data", data_arg), ("--out", out), ("--results", results_arg)) if v is not None]
        parts = ["mmfuse", "bench", name, *(["--quick"] if quick else []), *(["--tag", tag] if tag else []),
                 *(x for f, v in given for x in (f, str(v))),
                 *_seed_flags(seed_list),
                 *(f"--set={k}={v}" for k, v in options.items()), *(["--jobs", str(jobs)] if jobs != 1 else [])]
        command = " ".join(shlex.quote(p) for p in parts)
    result = {"name": name, "tag": tag, "quick": quick, "protocol": (module.__doc__ or "").strip(), "seeds": seed_list,
              "options": options, "published": getattr(module, "PUBLISHED", {}), **body,
              "command": command, "wall_seconds": round(time.perf_counter() - t0, 1),
              "environment": environment(), "date": time.strftime("%Y-%m-%d")}
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1, default=_json_default) + "\n")
    md = module.markdown(result) + _provenance(result)
    atomic_write_text(path.with_suffix(".md"), md)
    echo(f"written: {path}, {path.with_suffix('.md')} ({result['wall_seconds']:.0f} s)")
    return result


def _seed_flags(seeds: list) -> list:
    """The command-line flags for ``seeds``: ``--seeds N`` for 0..N-1, with ``--first-seed K`` for K..K+N-1;
    a list that is not a run of consecutive seeds has no flags (the results list it)."""
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        return []
    return (["--seeds", str(len(seeds))] if len(seeds) > 1 else []) + (["--first-seed", str(seeds[0])] if seeds[0] else [])


def _check_options(name: str, known: dict, given: dict, zero_ok=()) -> dict:
    """Protocol settings: known keys only, each converted to its type (a typo is an error, not ignored); whole
    numbers are >= 1 but for those in ``zero_ok`` (>= 0)."""
    out = {}
    for k, v in given.items():
        if k not in known:
            from .._registry import unknown_name_message

            raise MmfuseError("--set: " + unknown_name_message("setting", k, list(known)) + f" (benchmark {name!r})")
        kind = known[k]
        low = 0 if k in zero_ok else 1
        what = {int: f"a whole number >= {low}", float: "a number >= 0"}.get(kind, "text")
        try:
            value = kind(v) if isinstance(v, str) or kind is not str else v
        except ValueError:
            value = None
        if value is None or (kind is int and value < low) or (kind is float and not value >= 0):
            raise MmfuseError(f"--set {k}={v}: {k} must be {what} (benchmark {name!r})")
        out[k] = value
    return out


def check_models(name: str, models: list, allowed, setting: str = "models", kind: str = "model") -> None:
    """A protocol's ``models`` setting, checked before anything runs (a typo is not found after an hour)."""
    bad = [m for m in models if m not in allowed]
    if bad:
        from .._registry import unknown_name_message

        raise MmfuseError(f"--set {setting}: " + unknown_name_message(kind, bad[0], list(allowed)) + f" (benchmark {name!r})")


def _provenance(result: dict) -> str:
    env = result["environment"]
    m = env["machine"]
    v = ", ".join(f"{k} {x}" for k, x in env["versions"].items())
    return ("\n## Provenance\n\n"
            f"- command: `{result['command']}`\n- seeds: {result['seeds']}; wall time {result['wall_seconds']:.0f} s; "
            f"{result['date']}\n- machine: {m['cpu']}, {m['cores']} cores ({m.get('torch_threads')} torch threads), "
            f"{m['memory_gb']} GB; {m['os']}\n- Python {env['python']}; {v}\n- commit {env['commit']}\n")


def mean_std(values) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0
