"""The ``mmfuse`` command line. Heavy modules are imported inside each command."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mmfuse: multimodal fusion for tables of text, images, audio, time series, numbers and categories.")
cache_app = typer.Typer(no_args_is_help=True, help="See or clear the on-disk caches.")
app.add_typer(cache_app, name="cache")

_state = {"debug": False, "fast_exit": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
          version: bool = typer.Option(False, "--version", is_eager=True, callback=lambda v: _print_version(v),
                                       help="Print the version and exit.")):
    _state["debug"] = debug


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"mmfuse {__version__}")
        raise typer.Exit()


def _parse_groups(items: List[str]) -> dict:
    from .errors import SchemaError

    out = {}
    for item in items:
        if "=" not in item:
            raise SchemaError(f"--group expects NAME=COL1,COL2, got {item!r}")
        name, cols = item.split("=", 1)
        out[name.strip()] = [c.strip() for c in cols.split(",") if c.strip()]
    return out


@app.command()
def inspect(
    data: Path = typer.Argument(..., help="Table: .csv, .tsv, .parquet or .jsonl."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column."),
    column: List[str] = typer.Option([], "--column", "-c", help="Override a role: NAME=ROLE (repeatable)."),
    group: List[str] = typer.Option([], "--group", "-g", help="Read columns as one input: NAME=COL1,COL2."),
    schema: Optional[Path] = typer.Option(None, "--schema", help="YAML/JSON schema file with roles and groups."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    save_schema: Optional[Path] = typer.Option(None, "--save-schema", help="Write the schema to this YAML/JSON file."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of CSV/TSV/JSONL files."),
):
    """Print the inferred schema: column, role, input, why, missing count, example value."""
    from rich.console import Console
    from rich.table import Table as RichTable

    from .io import read_table
    from .schema import describe_schema, infer_schema, parse_column_overrides

    table = read_table(data, root=root, encoding=encoding)
    sch = infer_schema(table, target=target, overrides=parse_column_overrides(column), groups=_parse_groups(group),
                       schema_file=schema)
    desc = describe_schema(sch, table)
    out = RichTable(title=f"{data} — {len(table)} rows, {len(desc)} columns, {len(sch.inputs())} inputs")
    for c in desc.columns:
        out.add_column(c, overflow="fold")
    for _, r in desc.iterrows():
        out.add_row(*[str(v) for v in r])
    Console(width=None if sys.stdout.isatty() else 200).print(out)
    if save_schema:
        sch.save(save_schema)
        typer.echo(f"schema written to {save_schema}")


def _load_config(path: Optional[Path]) -> dict:
    """A YAML/JSON file of MultimodalPredictor arguments (``model:``, ``train:``, ``preprocessing:``, ...)."""
    if path is None:
        return {}
    from .io import read_mapping_file

    return read_mapping_file(path, "config file")


@app.command()
def fit(
    data: Path = typer.Argument(..., help="Training table (.csv, .tsv, .parquet, .jsonl)."),
    target: str = typer.Option(..., "--target", "-t", help="Target column."),
    fusion: Optional[str] = typer.Option(None, "--fusion", "-f", help="Fusion strategy (see `mmfuse fusions`)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings (model, train, ...)."),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="Run folder (checkpoints, report, bundle)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation table (default: split off the data)."),
    test: Optional[Path] = typer.Option(None, "--test", help="Test table (default: split off the data)."),
    task: Optional[str] = typer.Option(None, "--task", help="binary, multiclass, multilabel or regression."),
    column: List[str] = typer.Option([], "--column", "-c", help="Override a role: NAME=ROLE (repeatable)."),
    group: List[str] = typer.Option([], "--group", "-g", help="Read columns as one input: NAME=COL1,COL2."),
    input_: List[str] = typer.Option([], "--input", help="Use only these inputs (repeatable)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers."),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="Stop training after this many seconds."),
    decision_threshold: Optional[str] = typer.Option(
        None, "--decision-threshold", help="Binary targets: a probability, or f1, balanced_accuracy, accuracy or "
                                           "mcc to choose it on the validation rows."),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
):
    """Train a model on a table; writes checkpoints, metrics.json, report.md, plots and bundle/ to --out."""
    from .api import MultimodalPredictor
    from .schema import parse_column_overrides

    cfg = _load_config(config)
    if decision_threshold is not None:
        try:
            decision_threshold = float(decision_threshold)
        except ValueError:
            pass  # a metric name
    flags = {"fusion": fusion, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
             "num_workers": workers, "max_time": max_time, "decision_threshold": decision_threshold, "task": task,
             "inputs": list(input_) or None, "root": root}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if test is not None:
        overrides["test_fraction"] = 0.0
    cfg["columns"] = {**(cfg.get("columns") or {}), **parse_column_overrides(column)}
    cfg["groups"] = {**(cfg.get("groups") or {}), **_parse_groups(group)}
    m = MultimodalPredictor.from_config(cfg, target=target, out=out, on_bad_input=on_bad_input,
                                        allow_outside_root=allow_outside_root, resume=resume, progress=progress,
                                        **overrides)
    import warnings

    with warnings.catch_warnings():  # the rows left out for a blank target are reported below, once
        warnings.filterwarnings("ignore", message=".*with a blank target")
        m.fit(data, val=val, test=test)
    if resume:
        at = m.metrics_.get("resumed_from_epoch")
        typer.echo(f"resumed after epoch {at + 1}" if at is not None else
                   f"note: --resume found no checkpoint in {out}; trained from the start")
    _print_metrics(m.metrics_)
    blank = m.splits_["blank_target"]
    if blank:
        rows = [r for v in blank.values() for r in v]
        typer.echo(f"left out {len(rows)} rows with a blank target {target!r}: {', '.join(map(str, rows[:20]))}"
                   f"{', ...' if len(rows) > 20 else ''} (all listed in {out / 'metrics.json'})")
    typer.echo(f"run folder: {out} (report.md, metrics.json, bundle/)")


def _print_metrics(metrics: dict) -> None:
    for split in ("val", "test"):
        mm = metrics.get(split)
        if mm:
            keys = [k for k in ("accuracy", "balanced_accuracy", "macro_f1", "f1_positive", "roc_auc", "pr_auc",
                                "log_loss", "ece", "mae", "rmse", "r2", "subset_accuracy") if k in mm]
            typer.echo(f"{split}: " + ", ".join(f"{k} {mm[k]:.4f}" for k in keys))
    if metrics.get("bad_input"):
        typer.echo(f"bad input: {metrics['bad_input']}")


@app.command()
def evaluate(
    bundle: Path = typer.Argument(..., help="Bundle folder written by fit."),
    data: Path = typer.Argument(..., help="Labelled table."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write metrics.json and report.md here."),
    contribution: bool = typer.Option(True, "--contribution/--no-contribution", help="Measure each input's contribution."),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
):
    """Metrics of a bundle on a labelled table."""
    from .api import evaluate_predictor
    from .bundle import Predictor
    from .errors import MmfuseError

    if out is not None and ((out / "checkpoints").exists() or (out / "bundle").exists()):
        raise MmfuseError(f"--out {out} holds a training run, whose metrics.json and report.md would be "
                          f"overwritten; choose another folder (e.g. {out / 'eval'})")
    pred = Predictor.load(bundle)
    m = evaluate_predictor(pred, _table(data, root), contribution=contribution, on_bad_input=on_bad_input,
                           allow_outside_root=allow_outside_root)
    if pred.describe_absent():
        typer.echo(f"note: {pred.describe_absent()}")
    if m.get("bad_input"):
        typer.echo(f"bad input: {pred.last_report.summary()}")
    _print_metrics({"test": m})
    if m.get("blank_target_rows"):
        rows = m["blank_target_rows"]
        typer.echo(f"left out {len(rows)} rows with a blank target {pred.target.column!r}: "
                   f"{', '.join(map(str, rows[:20]))}{', ...' if len(rows) > 20 else ''}")
    c = m.get("contribution")
    if c:
        typer.echo(f"contribution ({c['metric']}; all inputs {c['all']:.4f}): " + ", ".join(
            f"{n}: without {c['without'][n]:.4f}, alone {c['only'][n]:.4f}" for n in c["without"]))
    if out:
        from .evaluation import write_report

        write_report(out, {"test": m, "contribution": c, "task": pred.task.name,
                           "fusion": pred.config["model"]["model"]["fusion"], "inputs": pred.model.names},
                     pred.target.classes_)
        typer.echo(f"report written to {out}")


def _table(data: Path, root):
    from .io import read_table

    return read_table(data, root=root)


@app.command()
def predict(
    bundle: Path = typer.Argument(..., help="Bundle folder written by fit."),
    data: Path = typer.Argument(..., help="Table to predict on; inputs may be absent or empty."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.csv, .parquet or .jsonl)."),
    proba: bool = typer.Option(True, "--proba/--no-proba", help="Add a probability column per class."),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Rows per batch."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
):
    """Predict with a bundle; writes one line per input row: its row id, the prediction, class
    probabilities, and (with --on-bad-input skip) why a row was skipped."""
    from .bundle import Predictor
    from .errors import MmfuseError

    if out.suffix.lower() not in (".csv", ".parquet", ".jsonl", ".ndjson"):
        raise MmfuseError(f"--out {out}: write predictions to a .csv, .parquet or .jsonl file")
    if out.resolve() == data.resolve():
        raise MmfuseError(f"--out {out} is the input table; write the predictions to another file")
    pred = Predictor.load(bundle)
    table = _table(data, root)
    res = pred.predict_frame(table, proba=proba, batch_size=batch_size, on_bad_input=on_bad_input, root=root,
                             allow_outside_root=allow_outside_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".parquet":
        res.to_parquet(out, index=False)
    elif out.suffix.lower() in (".jsonl", ".ndjson"):
        res.to_json(out, orient="records", lines=True)
    else:
        res.to_csv(out, index=False)
    skipped = pred.skipped_rows()
    if pred.describe_absent():
        typer.echo(f"note: {pred.describe_absent()}")
    typer.echo(f"{len(res) - len(skipped)} predictions written to {out}" + (
        f"; {len(skipped)} rows skipped as bad input, marked in its 'skipped' column "
        f"({', '.join(f'{c!r}: {n}' for c, n in pred.last_report.counts().items())})" if skipped else
        f"; {pred.last_report.summary()}" if pred.last_report.issues else ""))
    _state["fast_exit"] = True  # every file is written and closed; nothing runs in the background


@app.command()
def fusions():
    """List the fusion strategies, one line each."""
    from .fusion import describe_fusions

    for name, line in describe_fusions().items():
        typer.echo(f"{name:16s} {line}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Output folder."),
    epochs: int = typer.Option(8, "--epochs", help="Maximum epochs per model."),
    fusion: List[str] = typer.Option([], "--fusion", help="Only these fusions (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
):
    """Offline demo: one model per single input and one per fusion on built-in data; prints a comparison."""
    import time

    from rich.console import Console
    from rich.table import Table as RichTable

    from .demo import run_demo

    t0 = time.perf_counter()
    rows = run_demo(out, epochs=epochs, fusions=list(fusion) or None, seed=seed, echo=typer.echo)
    table = RichTable(title=f"mmfuse demo: predict the digit (test split, {time.perf_counter() - t0:.0f} s in all)")
    for c in ("model", "inputs", "fusion", "accuracy", "macro-F1", "train s"):
        table.add_column(c)
    best_single = max((r for r in rows if r["fusion"] == "none"), key=lambda r: r["accuracy"])
    for r in rows:
        table.add_row(r["model"], ", ".join(r["inputs"]), r["fusion"], f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                      f"{r['train_seconds']:.1f}")
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    fused = [r for r in rows if r["fusion"] != "none"]
    if fused:
        best = max(fused, key=lambda r: r["accuracy"])
        typer.echo(f"best fusion: {best['fusion']} {best['accuracy']:.3f} vs best single input "
                   f"({', '.join(best_single['inputs'])}) {best_single['accuracy']:.3f}")
    typer.echo(f"comparison.json and per-model runs written to {out}")


@cache_app.command("ls")
def cache_ls(directory: Optional[Path] = typer.Option(None, "--dir", help="Cache folder (default ~/.cache/mmfuse).")):
    """List cache entries with their sizes."""
    from ._cache import default_cache_dir, list_cache

    entries = list_cache(directory)
    for e in entries:
        typer.echo(f"{e['entry']}\t{e['rows']} rows\t{e['bytes'] / 1e6:.1f} MB")
    typer.echo(f"{len(entries)} entries in {directory or default_cache_dir()}")


@cache_app.command("clear")
def cache_clear(directory: Optional[Path] = typer.Option(None, "--dir", help="Cache folder (default ~/.cache/mmfuse).")):
    """Delete every cache entry."""
    from ._cache import clear_cache

    typer.echo(f"removed {clear_cache(directory)} entries")


def _error_line(e: Exception) -> str:
    """An error as one line; an OS error names its file and says what to check."""
    from .errors import MmfuseError

    msg = str(e)
    if isinstance(e, OSError) and not isinstance(e, MmfuseError) and e.filename is not None:
        msg = f"{str(e.filename)!r}: {e.strerror or e}"
        if isinstance(e, PermissionError):
            msg += "; check its permissions"
        elif isinstance(e, FileNotFoundError):
            msg += "; check the path"
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def main(argv=None) -> None:
    """Entry point: mmfuse errors, and OS errors on the files named, become one line on stderr and exit
    code 2 (``--debug`` for tracebacks)."""
    from .errors import MmfuseError

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        app(args=args, standalone_mode=False)
        if argv is None and _state["fast_exit"]:
            # A process that imported torch and pandas spends ~0.3 s tearing its modules down at exit. A
            # command that has closed all it wrote (predict) skips that: flush, then leave at once.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    except (MmfuseError, OSError) as e:  # OSError: a file the user named cannot be read or written
        if "--debug" in args:
            raise
        typer.echo(f"error: {_error_line(e)}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as e:  # usage errors of click (or of the click typer carries): a typo'd option or command
        if "--debug" not in args and hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()  # one usage line, with click's own "Did you mean"
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":  # Ctrl-C at a prompt
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
