"""The ``mmfuse`` command line. Heavy modules are imported inside each command."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .config import ModelConfig, TrainConfig, setting_help  # light: dataclasses only (help texts of fit)
from .robust import CORRUPTIONS as _CORRUPTIONS  # light: numpy only (help text of robustness)

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
    """``NAME=COL1,COL2`` items as ``{NAME: [COL1, COL2]}``; glob patterns (``fac_*``) are expanded by
    :func:`mmfuse.schema.infer_schema`, which knows the columns."""
    from .errors import SchemaError

    out = {}
    for item in items:
        if "=" not in item:
            raise SchemaError(f"--group expects NAME=COL1,COL2, got {item!r}")
        name, cols = item.split("=", 1)
        if name.strip() in out:
            raise SchemaError(f"--group {name.strip()!r} is given twice; name each group once (NAME=COL1,COL2)")
        out[name.strip()] = [c.strip() for c in cols.split(",") if c.strip()]
        if not name.strip() or not out[name.strip()]:
            raise SchemaError(f"--group expects NAME=COL1,COL2 (or NAME='PATTERN*'), got {item!r}")
    return out


FILE_SUFFIXES = (".json", ".md", ".csv", ".tsv", ".parquet", ".jsonl", ".txt", ".png", ".yaml", ".yml")


def _folder(value: Optional[Path]) -> Optional[Path]:
    """``--out`` of a command that writes several files: a folder, not a file name (``-o ev.json`` would
    make a folder called ev.json)."""
    if value is not None and value.suffix.lower() in FILE_SUFFIXES and not value.is_dir():
        raise typer.BadParameter(f"{str(value)!r} looks like a file name; this command writes several files into a "
                                 f"folder: give a folder, e.g. {str(value.with_suffix(''))!r}")
    return value

@app.command()
def inspect(
    data: Path = typer.Argument(..., help="Table: .csv, .tsv, .parquet or .jsonl; or a bundle folder, to describe."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column."),
    column: List[str] = typer.Option([], "--column", "-c", help="Override a role: NAME=ROLE (repeatable)."),
    group: List[str] = typer.Option([], "--group", "-g", help="Read columns as one input: NAME=COL1,COL2 or glob "
                                    "patterns, NAME='fac_*' (numeric and categorical columns form a tabular input)."),
    schema: Optional[Path] = typer.Option(None, "--schema", help="YAML/JSON schema file with roles and groups."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    save_schema: Optional[Path] = typer.Option(None, "--save-schema", help="Write the schema to this YAML/JSON file."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of CSV/TSV/JSONL files."),
):
    """Print the inferred schema: column, role, input, why, missing count, example value. Of a bundle folder:
    what it predicts, from which columns, how it was trained and its scores."""
    from rich.console import Console
    from rich.table import Table as RichTable

    from .io import read_table

    if data.is_dir() and any((data / f).exists() for f in ("config.json", "ensemble.json", "model.safetensors",
                                                              "bundle", "export.json")):
        given = [o for o, v in (("--target", target), ("--column", column), ("--group", group), ("--schema", schema),
                                ("--save-schema", save_schema)) if v]
        if given:
            from .errors import MmfuseError

            raise MmfuseError(f"{', '.join(given)}: for a table; {data} is a bundle (or run) folder, which inspect "
                              "describes as it was trained; leave them out, or pass a table")
        return _describe_bundle(data)  # (a run folder: Predictor.load names its bundle/)
    from .schema import describe_schema, infer_schema, left_out_columns, parse_column_overrides

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
    left_out = left_out_columns(sch)
    if left_out:
        typer.echo(f"not used for training ({len(left_out)}): " + ", ".join(
            f"{c} ({why.split(':', 1)[0]})" for c, why in left_out.items()) + "; see 'why' above")
    if save_schema:
        sch.save(save_schema)
        typer.echo(f"schema written to {save_schema}")


def _one_of_resume_overwrite(resume: bool, overwrite: bool, out) -> None:
    if resume and overwrite:
        from .errors import MmfuseError

        raise MmfuseError(f"--resume continues the run in {out}, --overwrite replaces it: pass one of them")


def _inputs_line(preprocessors) -> str:
    """``inputs: name (modality from columns), ...``"""
    return "inputs: " + ", ".join(f"{n} ({p.modality} from {', '.join(map(str, p.columns))})"
                                  for n, p in preprocessors.items())


def _describe_bundle(path: Path) -> None:
    """``inspect BUNDLE``: the task, the inputs and their columns, the training plan and the scores kept in it;
    of an ONNX export, what it was exported from and how closely it matched PyTorch."""
    from .bundle import Predictor
    from .ensemble import EnsemblePredictor
    from .pipeline import format_plan

    if (path / "export.json").is_file():
        from .onnx import OnnxPredictor

        onnx = OnnxPredictor.load(path)
        m, t = onnx.meta, onnx.target
        typer.echo(f"ONNX export {path}: written by mmfuse {m.get('mmfuse_version', '?')}"
                   + (f", {m['created']}" if m.get("created") else "") + f", from the bundle {m.get('bundle', '?')}")
        typer.echo(f"task: {t.name}, target {t.column!r}" + (f", {len(t.classes_)} classes" if t.classes_ else ""))
        typer.echo(_inputs_line(onnx.preprocessors))
        parity = m.get("parity") or {}
        if parity:
            typer.echo(f"checked against PyTorch on {parity.get('rows')} rows: largest difference of an output "
                       f"{parity.get('max_abs_diff'):.2g} (tolerance {parity.get('tolerance')})")
        return
    pred = Predictor.load(path)
    cfg, t = pred.config, pred.target
    typer.echo(f"bundle {path}: written by mmfuse {cfg.get('mmfuse_version', '?')}"
               + (f" (torch {cfg['torch_version']})" if cfg.get("torch_version") else "")
               + (f", {cfg['created']}" if cfg.get("created") else ""))
    if t is not None:  # (aligned encoders have no target)
        classes = t.classes_ or []
        typer.echo(f"task: {t.name}, target {t.column!r}" + (f", {len(classes)} classes: " + ", ".join(
            map(str, classes[:20])) + (", ..." if len(classes) > 20 else "") if classes else ""))
    if isinstance(pred, EnsemblePredictor):
        typer.echo(pred.describe())
        return
    metrics = cfg.get("metrics") or {}
    if metrics.get("plan"):
        typer.echo("plan:")
        for line in format_plan(metrics["plan"]):
            typer.echo(f"  {line}")
    else:
        typer.echo(_inputs_line(pred.preprocessors))
    if getattr(pred, "aligned_only", False):
        typer.echo(f"aligned encoders (mmfuse align), pairs {pred.aligned_pairs}: `mmfuse fit --init-from "
                   f"{path}` trains a model from them, `mmfuse retrieve` searches with them")
    if metrics.get("best_epoch") is not None:
        typer.echo(f"trained: best epoch {metrics['best_epoch'] + 1} of {metrics.get('epochs_run', '?')}"
                   + (f", {metrics['train_seconds']:.1f} s" if metrics.get("train_seconds") else ""))
    _print_metrics(metrics, advice=False)


def _load_config(path: Optional[Path]) -> dict:
    """A YAML/JSON file of MultimodalPredictor arguments (``model:``, ``train:``, ``preprocessing:``, ...)."""
    if path is None:
        return {}
    from .io import read_mapping_file

    return read_mapping_file(path, "config file")


@app.command()
def fit(
    data: Path = typer.Argument(..., help="Training table (.csv, .tsv, .parquet, .jsonl)."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column (default: `target` in --config)."),
    fusion: Optional[str] = typer.Option(None, "--fusion", "-f", help=setting_help(ModelConfig, "fusion")),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings (model, train, ...); "
                                          "`mmfuse config --defaults` prints every one. Options given here win."),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", callback=_folder, help="Run folder (checkpoints, report, bundle)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation table (default: split off the data)."),
    test: Optional[Path] = typer.Option(None, "--test", help="Test table (default: split off the data)."),
    task: Optional[str] = typer.Option(None, "--task", help="binary, multiclass, multilabel or regression."),
    column: List[str] = typer.Option([], "--column", "-c", help="Override a role: NAME=ROLE (repeatable)."),
    group: List[str] = typer.Option([], "--group", "-g", help="Read columns as one input: NAME=COL1,COL2."),
    input_: List[str] = typer.Option([], "--input", help="Use only these inputs (repeatable)."),
    group_column: Optional[str] = typer.Option(
        None, "--group-column", help="Split by this column: rows sharing a value (a subject, a sentence, a "
                                     "product) all go to one of train/validation/test."),
    image_size: Optional[str] = typer.Option(
        None, "--image-size", help="Image size in pixels: 64 (square) or WIDTHxHEIGHT, e.g. 128x32 "
                                   "(default: 64, or the config file's preprocessing.image.size)."),
    image_resize: Optional[str] = typer.Option(
        None, "--image-resize", help="How images meet --image-size: crop (center), squash, pad or letterbox "
                                     "(keep the aspect ratio, pad the rest) (default: crop)."),
    # default None: the config file's value, else the TrainConfig default that the help shows (generated)
    epochs: Optional[int] = typer.Option(None, "--epochs", help=setting_help(TrainConfig, "epochs")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=setting_help(TrainConfig, "batch_size")),
    lr: Optional[float] = typer.Option(None, "--lr", help=setting_help(TrainConfig, "lr")),
    seed: Optional[int] = typer.Option(None, "--seed", help=setting_help(TrainConfig, "seed")),
    workers: Optional[int] = typer.Option(None, "--workers", help=setting_help(TrainConfig, "num_workers")),
    max_time: Optional[float] = typer.Option(None, "--max-time", help=setting_help(TrainConfig, "max_time")),
    decision_threshold: Optional[str] = typer.Option(
        None, "--decision-threshold", help=setting_help(TrainConfig, "decision_threshold")),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out.", show_default=True),
    overwrite: bool = typer.Option(False, "--overwrite", show_default=True,
                                   help="Replace the run already in --out (by default fit refuses such a folder)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Show the progress bar (default: when the output is a terminal)."),
    init_from: Optional[Path] = typer.Option(
        None, "--init-from", help="Continue training this bundle on the table (new or corrected labels): its "
                                  "schema, preprocessors, target and weights are kept; --target defaults to its own. "
                                  "A bundle of aligned encoders (mmfuse align): a new model (needs --target) whose "
                                  "aligned inputs start from them; the table's other inputs are new."),
    new_head: bool = typer.Option(False, "--new-head", help="With --init-from: accept labels the bundle does not know "
                                                            "(a head over the old and new classes)."),
    replay: Optional[Path] = typer.Option(None, "--replay", help="With --init-from: the old table, whose rows are "
                                                                 "mixed back in to limit forgetting."),
    replay_fraction: float = typer.Option(0.0, "--replay-fraction", min=0.0, max=0.99,
                                          help="Share of old (--replay) rows among the training rows."),
    modality_dropout: Optional[float] = typer.Option(None, "--modality-dropout",
                                                     help=setting_help(ModelConfig, "modality_dropout")),
    align_weight: Optional[float] = typer.Option(None, "--align-weight", help=setting_help(ModelConfig, "align_weight")),
    align_pairs: Optional[str] = typer.Option(None, "--align-pairs", help="Inputs to align, a:b[,a:c] (default: "
                                                                          "every pair). With --align-weight."),
    fill_missing: Optional[bool] = typer.Option(None, "--fill-missing/--no-fill-missing",
                                                help=setting_help(ModelConfig, "fill_missing")),
    devices: Optional[str] = typer.Option(None, "--devices", help=setting_help(TrainConfig, "devices")),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", help=setting_help(TrainConfig, "num_nodes")),
    strategy: Optional[str] = typer.Option(None, "--strategy", help=setting_help(TrainConfig, "strategy")),
    accelerator: Optional[str] = typer.Option(None, "--accelerator", help=setting_help(TrainConfig, "accelerator")),
    stream: bool = typer.Option(False, "--stream", show_default=True,
                                help="Stream a table larger than memory: DATA is a Parquet file or a folder of them, "
                                     "read a row group at a time; its splits come from a split column or --split-hash."),
    split_hash: Optional[str] = typer.Option(None, "--split-hash", help="With --stream: an id column whose hash puts "
                                                                        "each row in train, validation or test."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every",
                                                   help=setting_help(TrainConfig, "checkpoint_every")),
    shuffle_buffer: Optional[int] = typer.Option(None, "--shuffle-buffer", help=setting_help(TrainConfig, "shuffle_buffer")),
    sample_rows: Optional[int] = typer.Option(None, "--sample-rows", help=setting_help(TrainConfig, "sample_rows")),
):
    """Train a model on a table; writes checkpoints, metrics.json, report.md, plots and bundle/ to --out.
    With --init-from a bundle of aligned encoders (mmfuse align), a new model is trained from them.
    On several devices or machines (--devices, --num-nodes; under torchrun or SLURM, or Lightning's own
    launcher), every process runs this command and the first one writes and prints."""
    from .training.trainer import launch_rank, launched_world

    first = launch_rank() == 0
    _one_of_resume_overwrite(resume, overwrite, out)
    if not (overwrite or resume) and (first or launched_world() is not None):  # every process a launcher started
        _refuse_another_run(out)  # (a refusal on the first one alone would leave the others waiting)
    if init_from is not None and target is None and config is None:
        target = _bundle_target(init_from)
        if target is None:  # not a bundle: the loader says what it is (a run folder, a typo ...)
            from .bundle import Predictor
            from .errors import MmfuseError

            if Predictor.load(init_from).target is None:
                raise MmfuseError(f"{str(init_from)!r} holds aligned encoders (mmfuse align) without a target: "
                                  "give the column to predict, --target COLUMN")
    if (new_head or replay is not None or replay_fraction) and init_from is None:
        from .errors import MmfuseError

        raise MmfuseError("--new-head, --replay and --replay-fraction continue a bundle: give --init-from BUNDLE")
    if replay is not None and not replay_fraction:
        from .errors import MmfuseError

        raise MmfuseError("--replay needs --replay-fraction F (the share of old rows among the training rows, "
                          "e.g. 0.3)")
    given = [flag for flag, v in (("--shuffle-buffer", shuffle_buffer), ("--sample-rows", sample_rows)) if v is not None]
    if given and not stream:
        from .errors import MmfuseError

        raise MmfuseError(f"{' and '.join(given)} set how a streamed table is read: add --stream, or leave "
                          f"{'them' if len(given) > 1 else 'it'} out (without --stream the table is read whole and "
                          "every row is shuffled and used)")
    if progress is None:
        progress = sys.stdout.isatty()
    feedback = {k: v for k, v in (("init_from", init_from), ("new_head", new_head or None), ("replay", replay),
                                  ("replay_fraction", replay_fraction or None)) if v is not None}
    shared = {k: v for k, v in (("modality_dropout", modality_dropout), ("align_weight", align_weight),
                                ("fill_missing", fill_missing), ("devices", _devices(devices)),
                                ("num_nodes", num_nodes), ("strategy", strategy), ("accelerator", accelerator),
                                ("stream", stream or None), ("split_hash", split_hash),
                                ("checkpoint_every", checkpoint_every), ("shuffle_buffer", shuffle_buffer),
                                ("sample_rows", sample_rows),
                                ("align_pairs", [p.strip() for p in align_pairs.split(",") if p.strip()]
                                 if align_pairs else None)) if v is not None}
    m = _predictor_from_options(
        target, config, fusion=fusion, task=task, column=column, group=group, input_=input_,
        group_column=group_column, image_size=image_size, image_resize=image_resize, epochs=epochs,
        batch_size=batch_size, lr=lr, seed=seed, workers=workers, max_time=max_time,
        decision_threshold=decision_threshold, root=root, out=out, on_bad_input=on_bad_input,
        allow_outside_root=allow_outside_root, resume=resume, progress=progress, **feedback, **shared,
        **({"test_fraction": 0.0} if test is not None else {}))
    import warnings

    with warnings.catch_warnings():  # the rows left out for a blank target are reported below, once
        warnings.filterwarnings("ignore", message=".*with a blank target")
        if not first:  # the other processes of a distributed run: the first one warns and prints
            warnings.simplefilter("ignore")
        m.fit(data, val=val, test=test, echo=typer.echo if first else None)  # echo: the plan, before training
    if m.rank_ != 0:  # the first process reports
        return
    if resume:
        at, steps = m.metrics_.get("resumed_from_epoch"), m.metrics_.get("resumed_after_steps")
        ran = [h["epoch"] for h in m.metrics_.get("history") or []]
        typer.echo(f"resumed in epoch {at + 1}, after its first {steps} steps" if at is not None and steps else
                   f"--resume: the run in {out} had already finished after epoch {at + 1}: nothing was trained; "
                   "the metrics below are its best epoch's" + ("" if m.metrics_.get("stopped_early") else
                                                              " (a larger --epochs trains on)")
                   if at is not None and (not ran or max(ran) <= at) else
                   f"resumed after epoch {at + 1}" if at is not None else
                   f"note: --resume found no checkpoint in {out}; trained from the start")
    _print_metrics(m.metrics_)
    blank = m.splits_["blank_target"]
    if blank:
        rows = [r for v in blank.values() for r in v]
        typer.echo(f"left out {len(rows)} rows with a blank target {m.target!r}: {', '.join(map(str, rows[:20]))}"
                   f"{', ...' if len(rows) > 20 else ''} (all listed in {out / 'metrics.json'})")
    typer.echo(f"run folder: {out} (report.md, metrics.json, bundle/)")


@app.command()
def align(
    data: Path = typer.Argument(..., help="Table of unlabelled rows (.csv, .tsv, .parquet, .jsonl)."),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="Inputs to align, a:b[,a:c] (default: every pair of "
                                                              "--input, or of all inputs)."),
    out: Path = typer.Option(Path("runs/align"), "--out", "-o", callback=_folder,
                             help="Run folder (checkpoints, metrics.json, bundle/)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file with `model:` (encoders, dim) "
                                                                 "and `train:` settings, as for fit."),
    column: List[str] = typer.Option([], "--column", "-c", help="Override a role: NAME=ROLE (repeatable)."),
    group: List[str] = typer.Option([], "--group", "-g", help="Read columns as one input: NAME=COL1,COL2."),
    input_: List[str] = typer.Option([], "--input", help="Align these inputs (every pair of them; repeatable)."),
    shared_dim: int = typer.Option(128, "--shared-dim", min=1, help="Width of the shared space."),
    temperature: float = typer.Option(0.07, "--temperature", min=1e-4, max=1.0,
                                      help="Initial temperature of the contrastive loss (learned)."),
    queue: int = typer.Option(0, "--queue", min=0, help="Past pairs kept as extra negatives (MoCo-style queue)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=setting_help(TrainConfig, "epochs")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rows per batch (the negatives of each "
                                                                        "row; default 128)."),
    lr: Optional[float] = typer.Option(None, "--lr", help=setting_help(TrainConfig, "lr")),
    seed: Optional[int] = typer.Option(None, "--seed", help=setting_help(TrainConfig, "seed")),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted alignment in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Show the progress bar (default: when the output is a terminal)."),
):
    """Align inputs in one shared space by contrastive pretraining on unlabelled rows (symmetric InfoNCE).
    Then `mmfuse fit TABLE --target Y --init-from OUT/bundle` trains from the aligned encoders, and
    `mmfuse retrieve OUT/bundle ...` searches across inputs."""
    from .align import align as run_align
    from .errors import MmfuseError

    _one_of_resume_overwrite(resume, overwrite, out)
    if not (overwrite or resume):
        _refuse_another_run(out)
    cfg = _load_config(config)
    unknown = set(cfg) - {"model", "train", "columns", "groups", "preprocessing", "inputs"}
    if unknown:
        raise MmfuseError(f"config file {config}: mmfuse align reads model:, train:, columns, groups, inputs and "
                          f"preprocessing; not {', '.join(sorted(unknown))}")
    model = dict(cfg.get("model") or {})
    bad = set(model) - {"encoders", "dim"}
    if bad:
        raise MmfuseError(f"config file {config}: mmfuse align reads model.encoders and model.dim only, not "
                          f"{', '.join(sorted(bad))} (the shared space is set with --shared-dim, --temperature, --queue)")
    train = dict(cfg.get("train") or {})
    for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("seed", seed)):
        if v is not None:
            train[k] = v
    train["progress"] = sys.stdout.isatty() if progress is None else progress
    from .schema import parse_column_overrides

    columns = {**(cfg.get("columns") or {}), **parse_column_overrides(column)}
    groups = {**(cfg.get("groups") or {}), **_parse_groups(group)}
    pred = run_align(data, pairs, out, inputs=list(input_) or cfg.get("inputs"), columns=columns or None,
                     groups=groups or None, preprocessing=cfg.get("preprocessing"), encoders=model.get("encoders"),
                     dim=model.get("dim", 128), shared_dim=shared_dim, temperature=temperature, queue=queue,
                     root=root, on_bad_input=on_bad_input, allow_outside_root=allow_outside_root, resume=resume,
                     echo=typer.echo, **train)
    m = pred.config["metrics"]
    typer.echo(f"best epoch {m['best_epoch'] + 1 if m['best_epoch'] is not None else '-'} of {m['epochs_run']}; "
               "held-out rows, exact search:" if m["val_retrieval"] else
               "held-out rows: fewer than 2 hold both inputs of a pair; no retrieval measured")
    for direction, r in m["val_retrieval"].items():
        typer.echo(f"  {direction}: recall@1 {r['recall@1']:.3f}, recall@5 {r['recall@5']:.3f}, recall@10 "
                   f"{r['recall@10']:.3f}, median rank {r['median_rank']:g} of {r['index_rows']} "
                   f"(chance recall@1 {r['chance_recall@1']:.3f})")
    typer.echo(f"run folder: {out} (metrics.json, bundle/); next: mmfuse fit TABLE --target COLUMN --init-from "
               f"{out / 'bundle'}")


def _retrieval_bundle(bundle: Path):
    from .bundle import Predictor
    from .errors import MmfuseError

    pred = Predictor.load(bundle)
    if not hasattr(pred, "model"):
        raise MmfuseError(f"{bundle} is an ensemble; retrieve with one of its member bundles")
    return pred


@app.command()
def index(
    bundle: Path = typer.Argument(..., help="Bundle with a shared space (mmfuse align, or fit with align_weight)."),
    data: Path = typer.Argument(..., help="Table of the items to search."),
    input_: str = typer.Option(..., "--input", help="The input of the items embedded (e.g. image)."),
    out: Path = typer.Option(..., "--out", "-o", callback=_folder, help="Index folder to write."),
    faiss: Optional[str] = typer.Option(None, "--faiss", help="Also build an approximate FAISS index: hnsw, ivf or "
                                                              "flat (needs the faiss extra: pip install faiss-cpu)."),
    match: Optional[str] = typer.Option(None, "--match", help="COL[,COL]: keep these columns' values with each item, "
                                                              "for `mmfuse evaluate-retrieval --index FOLDER --match`."),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
):
    """Embed a table's items once and save them (and a FAISS index) for `mmfuse retrieve --index FOLDER`."""
    from .errors import MmfuseError
    from .retrieval import FAISS_KINDS, build_index

    if faiss is not None and faiss not in FAISS_KINDS:
        raise MmfuseError(f"--faiss {faiss!r}: choose one of {', '.join(FAISS_KINDS)}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "index.json").is_file())):
        raise MmfuseError(f"--out {out} is a file or a folder of other files; give a new folder (an index folder is "
                          "replaced)")
    pred = _retrieval_bundle(bundle)
    if input_ not in pred.model.names:
        raise MmfuseError(f"--input {input_!r}: the bundle has no such input; its inputs: {', '.join(pred.model.names)}")
    idx = build_index(pred, _table(data, root), input_, faiss=faiss, root=root, on_bad_input=on_bad_input,
                      match=[c.strip() for c in match.split(",") if c.strip()] if match else None,
                      allow_outside_root=allow_outside_root)
    idx.save(out)
    extra = (f"; FAISS {faiss}: recall@10 against exact search {idx.info['recall@10_vs_exact']:.3f} "
             f"({idx.info['recall_measured_on']})" if faiss else "")
    absent = f"; {idx.info['absent_rows']} rows without {input_!r} left out" if idx.info["absent_rows"] else ""
    typer.echo(f"indexed {len(idx)} rows of {input_!r}{absent}{extra}; written to {out}")


_OPT_FROM = typer.Option(..., "--from", help="The query rows' input (e.g. audio).")
_OPT_TO = typer.Option(..., "--to", help="The index rows' input (e.g. image).")


@app.command()
def retrieve(
    bundle: Path = typer.Argument(..., help="Bundle with a shared space (mmfuse align, or fit with align_weight)."),
    query: Path = typer.Option(..., "--query", help="Table of the query rows."),
    index_: Path = typer.Option(..., "--index", help="Table of the items to search, or an index folder (mmfuse index)."),
    from_: str = _OPT_FROM,
    to: str = _OPT_TO,
    k: int = typer.Option(10, "--k", min=1, help="Results per query row."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results (.csv, .parquet, .jsonl); "
                                                                  "default: print the first ones."),
    exact: bool = typer.Option(False, "--exact", help="Exact search even when the index folder has a FAISS index."),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
):
    """The top k index rows for each query row (query_row, rank, index_row, score = cosine similarity)."""
    from .retrieval import retrieve as run_retrieve

    if out is not None:
        from .batch import check_output
        from .errors import MmfuseError

        check_output(query, out)
        if index_.is_file() and index_.resolve() == out.resolve():
            raise MmfuseError(f"--out {out} is the --index table; write the results to another file")
    pred = _retrieval_bundle(bundle)
    res = run_retrieve(pred, _table(query, root), index_ if index_.is_dir() else _table(index_, root), from_, to, k,
                       root=root, on_bad_input=on_bad_input, allow_outside_root=allow_outside_root,
                       exact=True if exact else None)
    absent = res.attrs.get("absent_queries") or []
    if absent:
        typer.echo(f"note: {len(absent)} query rows have no {from_!r} and get no results: "
                   f"{', '.join(map(str, absent[:20]))}{' ...' if len(absent) > 20 else ''}")
    if out is None:
        typer.echo(res.head(50).to_string(index=False))
        if len(res) > 50:
            typer.echo(f"... {len(res)} lines in all; write them with --out FILE")
        return
    from .batch import write_frame

    write_frame(res, out)
    per = int(res.groupby("query_row").size().max()) if len(res) else 0
    typer.echo(f"{res['query_row'].nunique()} query rows, top {per}" + (f" (the index holds fewer than {k})" if per < k else "")
               + f": written to {out}")


@app.command("evaluate-retrieval")
def evaluate_retrieval(
    bundle: Path = typer.Argument(..., help="Bundle with a shared space (mmfuse align, or fit with align_weight)."),
    query: Path = typer.Option(..., "--query", help="Table of the query rows."),
    index_: Optional[Path] = typer.Option(None, "--index", help="Table of the items, or an index folder (mmfuse index; "
                                                                "only with --match, built with those columns); "
                                                                "default: the query table (row i matches row i)."),
    from_: str = _OPT_FROM,
    to: str = _OPT_TO,
    match: Optional[str] = typer.Option(None, "--match", help="COL[,COL]: an index row is a hit when it has the "
                                                              "query's values in these columns (e.g. label). "
                                                              "Default: row i matches row i."),
    k: str = typer.Option("1,5,10", "--k", help="Cut-offs, e.g. 1,5,10."),
    faiss: Optional[str] = typer.Option(None, "--faiss", help="Also measure an approximate FAISS index (hnsw, ivf, "
                                                              "flat) against exact search."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the metrics to this .json file."),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
):
    """Recall@k (and precision@k with --match), median rank and mean reciprocal rank of retrieving --to items
    from --from queries, on the rows whose true match is known."""
    import json

    from .errors import MmfuseError
    from .io import atomic_write_text
    from .retrieval import FAISS_KINDS
    from .retrieval import evaluate_retrieval as run_eval

    try:
        ks = sorted({int(x) for x in k.split(",") if x.strip()})
    except ValueError:
        raise MmfuseError(f"--k {k!r}: write cut-offs as integers, e.g. 1,5,10") from None
    if faiss is not None and faiss not in FAISS_KINDS:
        raise MmfuseError(f"--faiss {faiss!r}: choose one of {', '.join(FAISS_KINDS)}")
    if out is not None and out.suffix.lower() != ".json":
        raise MmfuseError(f"--out {out}: the metrics are written as JSON; name a .json file")
    pred = _retrieval_bundle(bundle)
    q = _table(query, root)
    idx = q if index_ is None else (index_ if index_.is_dir() else _table(index_, root))
    res = run_eval(pred, q, idx, from_, to, match=[c.strip() for c in match.split(",")] if match else None, ks=ks,
                   root=root, on_bad_input=on_bad_input, allow_outside_root=allow_outside_root, faiss=faiss)
    head = (f"{res['from']} -> {res['to']}: {res['queries']} queries against {res['index_rows']} index rows"
            + (f" ({res['rows_left_out']} query rows left out: no input or no known match)" if res["rows_left_out"] else ""))
    typer.echo(head)
    for key in [f"recall@{x}" for x in ks] + [f"precision@{x}" for x in ks if f"precision@{x}" in res] + [
            "median_rank", "mean_reciprocal_rank", "chance_precision", "chance_recall@1", "approx_recall@10_vs_exact"]:
        if key in res:
            typer.echo(f"  {key:26s} {res[key]:.4f}" if isinstance(res[key], float) else f"  {key:26s} {res[key]}")
    if out is not None:
        atomic_write_text(out, json.dumps(res, indent=1, default=str) + "\n")
        typer.echo(f"written to {out}")


# Options that `cv` and `search` share (the same metadata object serves both commands)
_OPT_FUSION = typer.Option(None, "--fusion", "-f", help=setting_help(ModelConfig, "fusion"))
_OPT_TASK = typer.Option(None, "--task", help="binary, multiclass, multilabel or regression.")
_OPT_COLUMN = typer.Option([], "--column", "-c", help="Override a role: NAME=ROLE (repeatable).")
_OPT_GROUP = typer.Option([], "--group", "-g", help="Read columns as one input: NAME=COL1,COL2.")
_OPT_INPUT = typer.Option([], "--input", help="Use only these inputs (repeatable).")
_OPT_IMAGE_SIZE = typer.Option(None, "--image-size", help="As for fit: 64 or WIDTHxHEIGHT.")
_OPT_IMAGE_RESIZE = typer.Option(None, "--image-resize", help="As for fit: crop, squash, pad or letterbox.")
_OPT_EPOCHS = typer.Option(None, "--epochs", help=setting_help(TrainConfig, "epochs"))
_OPT_BATCH_SIZE = typer.Option(None, "--batch-size", help=setting_help(TrainConfig, "batch_size"))
_OPT_LR = typer.Option(None, "--lr", help=setting_help(TrainConfig, "lr"))
_OPT_WORKERS = typer.Option(None, "--workers", help=setting_help(TrainConfig, "num_workers"))
_OPT_ON_BAD_INPUT = typer.Option("raise", "--on-bad-input", help="raise, skip or missing.")
_OPT_ROOT = typer.Option(None, "--root", help="Folder for relative paths (default: the table's).")
_OPT_ALLOW_OUTSIDE_ROOT = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root.")


@app.command()
def cv(
    data: Path = typer.Argument(..., help="Table (.csv, .tsv, .parquet, .jsonl); every labelled row is held out once."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column (default: `target` in --config)."),
    folds: Optional[int] = typer.Option(None, "--folds", "-k", help="Folds (stratified by class for classification); "
                                        "default 5."),
    group_column: Optional[str] = typer.Option(
        None, "--group-column", help="Group k-fold: rows sharing a value of this column (a subject, a product) stay "
                                     "in one fold; each fold's validation rows are split by group too."),
    leave_one_out: Optional[str] = typer.Option(
        None, "--leave-one-out", help="Leave-one-group-out: one fold per value of this column (e.g. a subject)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Folds fitted at once, each in its own process."),
    out: Path = typer.Option(Path("runs/cv"), "--out", "-o", callback=_folder, help="Run folder: cv.json, cv.md, oof.csv, fold_<i>/."),
    overwrite: bool = typer.Option(False, "--overwrite", show_default=True,
                                   help="Replace a cross-validation with other settings in --out (the same "
                                        "settings resume: finished folds are kept)."),
    fusion: Optional[str] = _OPT_FUSION,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings, as for fit."),
    task: Optional[str] = _OPT_TASK,
    column: List[str] = _OPT_COLUMN,
    group: List[str] = _OPT_GROUP,
    input_: List[str] = _OPT_INPUT,
    image_size: Optional[str] = _OPT_IMAGE_SIZE,
    image_resize: Optional[str] = _OPT_IMAGE_RESIZE,
    epochs: Optional[int] = _OPT_EPOCHS,
    batch_size: Optional[int] = _OPT_BATCH_SIZE,
    lr: Optional[float] = _OPT_LR,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the folds and of every fit. " +
                                       setting_help(TrainConfig, "seed")),
    workers: Optional[int] = _OPT_WORKERS,
    max_time: Optional[float] = typer.Option(None, "--max-time", help="Per fold. " + setting_help(TrainConfig, "max_time")),
    on_bad_input: str = _OPT_ON_BAD_INPUT,
    root: Optional[Path] = _OPT_ROOT,
    allow_outside_root: bool = _OPT_ALLOW_OUTSIDE_ROOT,
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show each fold's progress bar (--jobs 1)."),
):
    """Cross-validate one configuration: per-fold metrics with mean, std and median; cv.json, cv.md, oof.csv.

    Each fold's held-out rows are scored by a model fitted on the other rows only (target, preprocessors,
    weights and early stopping included). A killed run resumes with the same command."""
    from .cv import cross_validate

    if group_column and leave_one_out:
        from .errors import MmfuseError

        raise MmfuseError("give --group-column (group k-fold) or --leave-one-out (one fold per group), not both")
    m = _predictor_from_options(
        target, config, fusion=fusion, task=task, column=column, group=group, input_=input_,
        image_size=image_size, image_resize=image_resize, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        workers=workers, max_time=max_time, root=root, on_bad_input=on_bad_input,
        allow_outside_root=allow_outside_root, progress=progress)
    if folds is not None and leave_one_out:
        from .errors import MmfuseError

        raise MmfuseError("--leave-one-out makes one fold per group; leave out --folds (or use --group-column with "
                          "--folds for group k-fold)")
    cross_validate(m, data, folds=5 if folds is None else folds, group_column=group_column, leave_one_out=leave_one_out,
                   out=out, jobs=jobs,
                   overwrite=overwrite, echo=typer.echo)


@app.command()
def search(
    data: Path = typer.Argument(..., help="Table (.csv, .tsv, .parquet, .jsonl)."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column (default: `target` in --config)."),
    space: Optional[str] = typer.Option(None, "--space", help="Search space: a YAML file (one key per setting: "
                                        "{type: float|int|categorical, ...}), or 'alpha' to sweep the weights of "
                                        "weighted fusion. Default: fusion, widths, dropout, lr, epochs."),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", help="Budget: finished trials of the study, over all "
                                           "workers. Default 20."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL shared by workers, e.g. "
                                          "postgresql+psycopg://user@host/db (default: sqlite in --out)."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="The study's name in the storage (default mmfuse)."),
    objective: str = typer.Option("cv", "--objective", help="cv: mean over --folds folds; val: one fit scored on "
                                  "its validation rows (faster)."),
    folds: Optional[int] = typer.Option(None, "--folds", "-k", help="Folds of each trial (--objective cv). Default 5."),
    group_column: Optional[str] = typer.Option(None, "--group-column", help="Group k-fold on this column, as for cv."),
    leave_one_out: Optional[str] = typer.Option(None, "--leave-one-out", help="Leave-one-group-out on this column."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Folds of a trial fitted at once, each in its own process."),
    ensemble: int = typer.Option(0, "--ensemble", help="Greedy ensemble of this size over the trials' out-of-fold "
                                 "predictions (--objective cv); 0: none."),
    refit: bool = typer.Option(True, "--refit/--no-refit", help="Refit the best configuration into --out/best/bundle."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Compare trials by this metric (maximized or "
                                         "minimized as it wants), e.g. macro_f1 or log_loss; default: the task's "
                                         "headline (accuracy, f1, rmse...)."),
    overwrite: bool = typer.Option(False, "--overwrite", show_default=True,
                                   help="Start afresh: delete the earlier search (study.db, trials, leaderboard, "
                                        "best, ensemble) in --out; --space alpha: replace its CV runs."),
    out: Path = typer.Option(Path("runs/search"), "--out", "-o", callback=_folder, help="Output folder: leaderboard.md/.csv, "
                             "best_config.yaml, best/bundle, param_importance.png, trials/, study.db."),
    fusion: Optional[str] = _OPT_FUSION,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings, as for fit: the "
                                          "starting point; the space's keys vary per trial."),
    task: Optional[str] = _OPT_TASK,
    column: List[str] = _OPT_COLUMN,
    group: List[str] = _OPT_GROUP,
    input_: List[str] = _OPT_INPUT,
    image_size: Optional[str] = _OPT_IMAGE_SIZE,
    image_resize: Optional[str] = _OPT_IMAGE_RESIZE,
    epochs: Optional[int] = _OPT_EPOCHS,
    batch_size: Optional[int] = _OPT_BATCH_SIZE,
    lr: Optional[float] = _OPT_LR,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampler, the folds and every fit. " +
                                       setting_help(TrainConfig, "seed")),
    workers: Optional[int] = _OPT_WORKERS,
    max_time: Optional[float] = typer.Option(None, "--max-time", help="Per fit. " + setting_help(TrainConfig, "max_time")),
    on_bad_input: str = _OPT_ON_BAD_INPUT,
    root: Optional[Path] = _OPT_ROOT,
    allow_outside_root: bool = _OPT_ALLOW_OUTSIDE_ROOT,
):
    """Search settings with Optuna: leaderboard, best_config.yaml (for fit --config) and the best refit as a bundle.

    Each trial is scored by cross-validation (or a validation split); the study lives in --storage (SQLite in
    --out by default), so a killed search resumes, and workers given the same --storage and --study-name
    share one study."""
    from .tuning import search as run_search

    if group_column and leave_one_out:
        from .errors import MmfuseError

        raise MmfuseError("give --group-column (group k-fold) or --leave-one-out (one fold per group), not both")
    if space == "alpha" and fusion is not None and fusion != "weighted":
        from .errors import MmfuseError

        raise MmfuseError(f"--space alpha sweeps the weights of weighted fusion; leave out --fusion {fusion}")
    if objective == "val":
        given = [f for f, v in (("--folds", folds is not None), ("--jobs", jobs != 1), ("--leave-one-out",
                                                                                        leave_one_out)) if v]
        if given:
            from .errors import MmfuseError

            raise MmfuseError(f"--objective val scores each trial on one validation split, without folds: leave out "
                              f"{', '.join(given)} (or use --objective cv)")
    m = _predictor_from_options(
        target, config, fusion=fusion, task=task, column=column, group=group, input_=input_,
        image_size=image_size, image_resize=image_resize, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        workers=workers, max_time=max_time, root=root, on_bad_input=on_bad_input,
        allow_outside_root=allow_outside_root, progress=False)
    run_search(m, data, space=space, n_trials=n_trials, timeout=timeout, storage=storage, study_name=study_name,
               objective=objective, folds=5 if folds is None else folds, group_column=group_column, leave_one_out=leave_one_out, out=out,
               jobs=jobs, seed=seed or 0, ensemble=ensemble, refit=refit, echo=typer.echo, overwrite=overwrite,
               metric=metric,
               fixed=[n for n, v in (("fusion", fusion), ("epochs", epochs), ("batch_size", batch_size), ("lr", lr))
                      if v is not None])


def _bundle_target(bundle: Path) -> str | None:
    """The target column of a bundle (for --init-from without --target); None when it cannot be read (the
    loader then says what is wrong)."""
    import json

    try:
        return json.loads((bundle / "config.json").read_text())["target"]["column"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _predictor_from_options(target, config, *, fusion=None, task=None, column=(), group=(), input_=(),
                            group_column=None, image_size=None, image_resize=None, epochs=None, batch_size=None,
                            lr=None, seed=None, workers=None, max_time=None, decision_threshold=None, root=None,
                            **settings):
    """The estimator that ``fit`` and ``cv`` build from a config file and their options (options win)."""
    from .api import MultimodalPredictor
    from .preprocessing.image import RESIZE, parse_image_size
    from .schema import parse_column_overrides

    cfg = _load_config(config)
    if target is None and not cfg.get("target"):
        from .errors import MmfuseError

        raise MmfuseError("which column is the target? Give --target NAME" +
                          (f" (the config file {str(config)!r} has no 'target:')" if config else ""))
    if target is not None:
        settings["target"] = target
    if decision_threshold is not None:
        try:
            decision_threshold = float(decision_threshold)
        except ValueError:
            pass  # a metric name
    flags = {"fusion": fusion, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
             "num_workers": workers, "max_time": max_time, "decision_threshold": decision_threshold, "task": task,
             "inputs": list(input_) or None, "root": root}
    overrides = {k: v for k, v in flags.items() if v is not None}
    cfg["columns"] = {**(cfg.get("columns") or {}), **parse_column_overrides(column)}
    if group_column is not None:
        cfg["columns"][group_column] = "group"
    if image_resize is not None and image_resize not in RESIZE:
        from ._registry import unknown_name_message
        from .errors import MmfuseError

        raise MmfuseError(unknown_name_message("--image-resize", image_resize, RESIZE))
    image = {k: v for k, v in (("size", image_size and parse_image_size(image_size, "--image-size")),
                               ("resize", image_resize)) if v is not None}
    if image:  # the flags win over the config file's preprocessing.image
        pre = dict(cfg.get("preprocessing") or {})
        cfg["preprocessing"] = {**pre, "image": {**(pre.get("image") or {}), **image}}
    cfg["groups"] = {**(cfg.get("groups") or {}), **_parse_groups(group)}
    return MultimodalPredictor.from_config(cfg, **settings, **overrides)


def _devices(value: Optional[str]):
    """``--devices``: a whole number or ``auto`` (checked with the setting's own rule)."""
    if value is None or value == "auto":
        return value
    return int(value) if value.strip().isdigit() else value


def _refuse_another_run(out: Path) -> None:
    """``fit --out``: a folder that holds a run (its metrics.json, checkpoints/ or bundle/) is not
    silently replaced."""
    from .errors import MmfuseError

    found = [n for n in ("metrics.json", "checkpoints", "bundle") if (out / n).exists()]
    if found:
        raise MmfuseError(f"--out {out} holds another run ({', '.join(found)}); pass --overwrite to replace it, "
                          "--resume to continue it, or choose another folder")


def _print_metrics(metrics: dict, advice: bool = True) -> None:
    """One line of metrics per split, named by where its rows come from (``split_source``, as
    :attr:`mmfuse.pipeline.Splits.source` writes it: ``validation: <label>; test: <label>``)."""
    head, sep, test_label = (metrics.get("split_source") or "").rpartition("; test: ")
    labels = {"val": head.removeprefix("validation: "), "test": test_label} if sep else {}
    for split, name in (("val", "validation"), ("test", "test")):
        mm = metrics.get(split)
        if mm:
            keys = [k for k in ("accuracy", "balanced_accuracy", "macro_f1", "f1_positive", "roc_auc", "pr_auc",
                                "log_loss", "ece", "mae", "rmse", "r2", "subset_accuracy") if k in mm]
            where = f" ({labels[split]})" if labels.get(split) else ""
            typer.echo(f"{name}{where}: " + ", ".join(f"{k} {mm[k]:.4f}" for k in keys))
    if labels.get("test") == "none" and advice:
        typer.echo("test: none (no test rows; pass --test TEST.csv to score the model on your own test file)")
    if metrics.get("bad_input"):
        typer.echo(f"bad input: {metrics['bad_input']}")
    if metrics.get("fill_mix"):
        fm = metrics["fill_mix"]
        gains = fm.get("gain_se", {})
        typer.echo("filling in absent inputs: share of the estimate in a prediction where the input is absent (1: "
                   "the estimate alone, 0: the input left out), chosen on the validation rows (0 unless it raises "
                   "the headline metric there by more than one standard error, its loss not higher: a guard against "
                   "noise, not a proof of help; in brackets, the best weight's gain in that metric ± its standard "
                   "error): "
                   + ", ".join(f"{n} {v:g}" + (f" ({gains[n][0]:+.4f} ± {gains[n][1]:.4f})" if n in gains else "")
                               for n, v in fm["chosen"].items()))


@app.command()
def evaluate(
    bundle: Path = typer.Argument(..., help="Bundle folder written by fit, or an ensemble folder."),
    data: Path = typer.Argument(..., help="Labelled table."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=_folder, help="Write metrics.json and report.md here."),
    contribution: bool = typer.Option(True, "--contribution/--no-contribution", help="Measure each input's contribution."),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
    all_rows: bool = typer.Option(False, "--all-rows", help="Score every row of a table with a split column (by "
                                  "default only its test rows: the model trained and stopped early on the others)."),
):
    """Metrics of a bundle on a labelled table (of a table with a split column, its test rows)."""
    from .api import evaluate_predictor
    from .bundle import Predictor
    from .errors import MmfuseError

    if out is not None and (out / "model.safetensors").exists():
        raise MmfuseError(f"--out {out} is a bundle folder; write the evaluation elsewhere (e.g. {out.parent / 'eval'})")
    if out is not None and ((out / "checkpoints").exists() or (out / "bundle").exists()):
        raise MmfuseError(f"--out {out} holds a training run, whose metrics.json and report.md would be "
                          f"overwritten; choose another folder (e.g. {out / 'eval'})")
    pred = Predictor.load(bundle)
    m = evaluate_predictor(pred, _table(data, root), contribution=contribution, on_bad_input=on_bad_input,
                           allow_outside_root=allow_outside_root, test_only=not all_rows)
    if m.get("scored_rows"):
        typer.echo(m["scored_rows"] + ("" if all_rows else "; --all-rows scores every row"))
    if m.get("rows_seen_in_training"):
        typer.echo(f"warning: {m['rows_seen_in_training']} of these rows are rows the model trained "
                   "or stopped early on (the same inputs and target), so these metrics flatter it; score rows it "
                   "never saw: its run's test split, or another table")
    elif pred.seen_rows is None and ((trained := pred.config.get("metrics") or {}).get("plan") or {}).get("stream"):
        split = trained.get("split_source")
        typer.echo("note: this model trained on a streamed table, of whose rows it keeps no fingerprint, so evaluate "
                   "cannot tell rows it trained on from new ones; score its test split"
                   + (f" ({split})" if split else ""))
    if pred.describe_absent():
        typer.echo(f"note: {pred.describe_absent()}")
    if m.get("bad_input"):
        typer.echo(f"bad input: {pred.last_report.summary()}")
    if m.get("rows_without_input"):
        from .reading import describe_no_input

        typer.echo(f"note: {describe_no_input(m['rows_without_input'], count=m.get('rows_without_input_count'))}; "
                   "they are scored")
    _print_metrics({"test": m, **({"split_source": "; test: every row, training rows included"}
                                  if all_rows and m.get("scored_rows") else {})})
    if m.get("blank_target_rows"):
        rows = m["blank_target_rows"]
        typer.echo(f"left out {len(rows)} rows with a blank target {pred.target.column!r}: "
                   f"{', '.join(map(str, rows[:20]))}{', ...' if len(rows) > 20 else ''}")
    c = m.get("contribution")
    if c:
        typer.echo(f"contribution ({c['metric']}; all inputs {c['all']:.4f}): " + ", ".join(
            [f"{n}: without {c['without'][n]:.4f}, alone {c['only'][n]:.4f}" for n in c["without"]]
            + [f"{n}: absent from this table" for n in c.get("absent", [])]))
    if out:
        from .ensemble import EnsemblePredictor
        from .evaluation import write_report

        trained = {k: v for k, v in (pred.config.get("metrics") or {}).items()  # fit's facts, kept in the bundle
                   if k in ("best_epoch", "epochs_run", "train_seconds", "rows", "split_source", "plan")}
        write_report(out, {"test": m, "contribution": c, "task": pred.task.name,
                           "fusion": pred.describe() if isinstance(pred, EnsemblePredictor)
                           else pred.config["model"]["model"]["fusion"], "inputs": pred.model.names,
                           "evaluated": {"bundle": str(bundle), "table": str(data), "rows": m.get("n"),
                                         "scored_rows": m.get("scored_rows")},
                           "blank_target_rows": m.get("blank_target_rows"), "training": trained},
                     pred.target.classes_)
        typer.echo(f"report written to {out}")


@app.command()
def robustness(
    bundle: Path = typer.Argument(..., help="Bundle folder written by fit, or an ensemble folder."),
    data: Path = typer.Argument(..., help="Labelled test table."),
    compare: List[str] = typer.Option([], "--compare", help="NAME=BUNDLE: another model scored on the same "
                                      "corrupted rows (repeatable), e.g. --compare audio=runs/audio/bundle."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="The model effective robustness is measured "
                                           "against (a --compare NAME; default: the only one, when one is given)."),
    corrupt: List[str] = typer.Option([], "--corrupt", help="INPUT=KIND[,KIND]: the noise for an input (repeatable; "
                                      "default: every kind for every input). Kinds: " + "; ".join(
                                          f"{m}: {', '.join(k)}" for m, k in _CORRUPTIONS.items()) + "."),
    levels: str = typer.Option("0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", "--levels",
                               help="Corruption levels, from 0 (clean), below 1."),
    together: bool = typer.Option(True, "--together/--no-together", help="Also corrupt all inputs at once."),
    missing: bool = typer.Option(True, "--missing/--no-missing", help="Also score with each input missing."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Default: the task's headline (accuracy, rmse...)."),
    seed: int = typer.Option(0, "--seed", help="Seeds every corruption (the same draws at every level)."),
    name: str = typer.Option("model", "--name", help="The name of BUNDLE in the tables and the plot."),
    out: Path = typer.Option(Path("runs/robustness"), "--out", "-o", callback=_folder, help="Writes robustness.json, .md and .png."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
):
    """Score a bundle on corrupted copies of a test table: one curve per input and kind of noise, all inputs
    together, each input missing; relative and effective robustness (MultiBench's definitions)."""
    from .errors import MmfuseError
    from .robust import robustness as run

    if not name.strip() or "=" in name:
        raise MmfuseError(f"--name {name!r}: give BUNDLE a plain name (it labels its rows and lines), e.g. --name fused")
    models = {name: bundle}
    for item in compare:
        n, sep, path = item.partition("=")
        if not sep or not n.strip() or not path.strip():
            raise MmfuseError(f"--compare {item!r}: write NAME=BUNDLE, e.g. --compare audio=runs/audio/bundle")
        if n.strip() in models:
            raise MmfuseError(f"--compare {item!r}: the name {n.strip()!r} is taken; give each model its own name")
        models[n.strip()] = Path(path.strip())
    kinds = {}
    for item in corrupt:
        n, sep, ks = item.partition("=")
        if not sep or not ks.strip():
            raise MmfuseError(f"--corrupt {item!r}: write INPUT=KIND[,KIND], e.g. --corrupt photo=blur,occlusion")
        kinds.setdefault(n.strip(), []).extend(k.strip() for k in ks.split(",") if k.strip())
    try:
        lv = [float(x) for x in levels.split(",") if x.strip()]
    except ValueError:
        raise MmfuseError(f"--levels {levels!r}: write numbers separated by commas, e.g. 0,0.25,0.5,0.75") from None
    run(models, _table(data, root), levels=lv, corruptions=kinds or None, together=together, missing=missing,
        seed=seed, metric=metric, baseline=baseline, out=out, echo=typer.echo, allow_outside_root=allow_outside_root)


def _protocols() -> list:
    from .bench import PROTOCOLS

    return list(PROTOCOLS)


@app.command()
def bench(
    name: str = typer.Argument(..., help="The protocol: " + ", ".join(_protocols()) + "."),
    quick: bool = typer.Option(False, "--quick", help="A reduced run (minutes), written to NAME_quick.json/.md."),
    seeds: int = typer.Option(1, "--seeds", help="Fit each model with seeds 0..N-1 (where the protocol fits)."),
    first_seed: int = typer.Option(0, "--first-seed", min=0,
                                   help="Start the seeds here: --seeds 10 --first-seed 10 fits seeds 10..19 (fresh "
                                        "seeds, to confirm a result on runs not seen before)."),
    data: Optional[Path] = typer.Option(None, "--data", help="The folder of the data sets (fsdd/, mnist/, "
                                        "sp-sw-har/, womens-clothing/); default $MMFUSE_SHARED_DATA or ../shared/data."),
    option: List[str] = typer.Option([], "--set", help="KEY=VALUE protocol setting (repeatable), e.g. --set "
                                     "models=audio,concat --set epochs=10."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Folds fitted at once, where the protocol cross-validates."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=_folder, help="Work folder (default runs/bench/NAME)."),
    results: Optional[Path] = typer.Option(None, "--results", help="Folder for NAME.json and NAME.md (default "
                                           "benchmarks/results)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="A variant's name: results in NAME_TAG.json/.md."),
):
    """Run a named benchmark protocol end to end; write its results with the machine, versions, seeds, command
    and wall time, beside the published numbers."""
    from .bench import run_bench
    from .errors import MmfuseError

    settings = {}
    for item in option:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise MmfuseError(f"--set {item!r}: write KEY=VALUE, e.g. --set epochs=10")
        settings[k.strip()] = v.strip()
    if seeds < 1:
        raise MmfuseError(f"--seeds {seeds}: fit at least one seed")
    run_bench(name, data=data, quick=quick, seeds=list(range(first_seed, first_seed + seeds)) if first_seed else seeds,
              out=out, results=results, jobs=jobs, echo=typer.echo, tag=tag, **settings)


def _table(data: Path, root):
    from .io import read_table

    return read_table(data, root=root)


@app.command()
def predict(
    bundle: Path = typer.Argument(..., help="Bundle folder written by fit, an ensemble folder, or an ONNX export."),
    data: Path = typer.Argument(..., help="Table to predict on; inputs may be absent or empty."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.csv, .parquet or .jsonl)."),
    proba: bool = typer.Option(True, "--proba/--no-proba", help="Add a probability column per class."),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Rows per batch."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
    chunk_rows: int = typer.Option(50_000, "--chunk-rows", min=1,
                                   help="Rows read, predicted and written at a time (memory grows with it)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Show rows done on stderr (default: when it is a terminal)."),
    keep: List[str] = typer.Option([], "--keep",
                                   help="Columns of the table to copy into the output as stored, comma-separated or "
                                        "repeated (e.g. an id column: --keep id)."),
):
    """Predict with a bundle; writes one line per input row: its row id (its number in the table, from 0), the
    --keep columns, the prediction, class
    probabilities, and (with --on-bad-input skip) why a row was skipped. The table is read and the output
    written in chunks (Parquet by record batch, CSV and JSON Lines by lines), so it may be larger than memory."""
    from .batch import check_output, predict_file

    check_output(data, out)  # before loading the bundle: a wrong name fails at once
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill: the temporary output is removed, as on Ctrl-C
    if (bundle / "export.json").is_file():  # an ONNX export: ONNX Runtime, no torch
        from .onnx import OnnxPredictor

        pred = OnnxPredictor.load(bundle)
    else:
        from .bundle import Predictor

        pred = Predictor.load(bundle)
    report = predict_file(pred, data, out, chunk_rows=chunk_rows, batch_size=batch_size, proba=proba,
                          on_bad_input=on_bad_input, root=root, allow_outside_root=allow_outside_root,
                          progress=sys.stderr.isatty() if progress is None else progress,
                          keep=keep)
    if report.absent:
        typer.echo(f"note: {report.absent}")
    typer.echo(report.summary())
    _state["fast_exit"] = True  # every file is written and closed; nothing runs in the background


@app.command()
def compare(
    bundle_a: Path = typer.Argument(..., help="The first bundle (A), e.g. the one in service."),
    bundle_b: Path = typer.Argument(..., help="The second bundle (B), e.g. the one trained on with --init-from."),
    data: Path = typer.Argument(..., help="Labelled table both are scored on."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=_folder,
                                       help="Write compare.json, compare.md and differing_rows.csv here."),
    n_boot: int = typer.Option(1000, "--boot", min=0, help="Bootstrap resamples for the confidence intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    on_bad_input: str = typer.Option("raise", "--on-bad-input", help="raise, skip or missing."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
):
    """Score two bundles on the same rows: each metric, B - A with a 95% paired bootstrap interval, and the
    rows where their predictions differ."""
    import json

    from .bundle import Predictor
    from .feedback import compare as run_compare
    from .io import atomic_write_text

    a, b = Predictor.load(bundle_a), Predictor.load(bundle_b)
    res = run_compare(a, b, _table(data, root), n_boot=n_boot, seed=seed, on_bad_input=on_bad_input)
    lines = [f"{res['rows']} rows scored by both" + (f" ({res['rows_skipped']} skipped as bad input)"
                                                      if res["rows_skipped"] else "")
             + (f"; {res['rows_unscorable']} left out: a blank label, or one a bundle does not know "
                f"({', '.join(map(repr, res['unknown_labels'][:10]))})" if res["rows_unscorable"] else "")
             + f"; predictions differ on {res['n_differing']}",
             f"{'metric':20s} {'A':>8s} {'B':>8s} {'B - A':>8s}  95% interval ({n_boot} resamples)"]
    for k, m in res["metrics"].items():
        if m["ci95"] is None:
            lines.append(f"{k:20s} {m['A']:8.4f} {m['B']:8.4f} {m['difference']:+8.4f}  (no interval: --boot 0)")
            continue
        lo, hi = m["ci95"]
        lines.append(f"{k:20s} {m['A']:8.4f} {m['B']:8.4f} {m['difference']:+8.4f}  [{lo:+.4f}, {hi:+.4f}]"
                     + ("  (B better)" if lo > 0 and _higher_is_better(k) or hi < 0 and not _higher_is_better(k)
                        else "  (A better)" if hi < 0 and _higher_is_better(k) or lo > 0 and not _higher_is_better(k)
                        else ""))
    for line in lines:
        typer.echo(line)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        res["differing"].to_csv(out / "differing_rows.csv", index=False)
        body = {k: v for k, v in res.items() if k != "differing"}
        body.update(bundle_a=str(bundle_a), bundle_b=str(bundle_b), data=str(data))
        atomic_write_text(out / "compare.json", json.dumps(body, indent=1, default=str) + "\n")
        atomic_write_text(out / "compare.md", "# " + f"A = {bundle_a}, B = {bundle_b}, on {data}\n\n```\n"
                          + "\n".join(lines) + "\n```\n")
        typer.echo(f"written: {out / 'compare.json'}, {out / 'compare.md'}, {out / 'differing_rows.csv'}")


def _higher_is_better(metric: str) -> bool:
    return not any(w in metric for w in ("loss", "ece", "error", "mae", "mse", "rmse", "brier"))


@app.command()
def export(
    bundle: Path = typer.Argument(..., help="Bundle folder written by fit."),
    data: Optional[Path] = typer.Option(None, "--data", help="Table of real rows for the parity check (required)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write (default: BUNDLE-onnx beside it)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    rows: int = typer.Option(256, "--rows", min=2, help="Rows of --data checked."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest absolute difference of the logits accepted."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Allow paths outside the root."),
    opset: Optional[int] = typer.Option(None, "--opset", min=17, help="ONNX opset (default 17 with torchscript)."),
    exporter: str = typer.Option("torchscript", "--exporter",
                                 help="torchscript (fast; LSTMs stay ONNX LSTM operators) or dynamo (torch.export)."),
):
    """Export a bundle to ONNX: the graph (preprocessed arrays and presence masks in, logits out, any
    batch size), the preprocessors' state and export.json. The export is checked against PyTorch on
    rows of --data (as read, each input absent, absent inputs mixed per row) and fails above --tolerance.
    Predict from it with `mmfuse predict EXPORT DATA -o OUT` or mmfuse.onnx.OnnxPredictor (no torch needed)."""
    from .export import FORMATS, export_onnx
    from .errors import MmfuseError

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill: the temporary folder is removed
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise MmfuseError(f"--format {fmt!r}: mmfuse exports {', '.join(FORMATS)}")
    if data is None:
        raise MmfuseError("--data TABLE is required: the export is checked against the bundle on real rows of it "
                          "(a validation or test table; the target column is not needed)")
    if out is None:
        out = bundle.resolve().parent / f"{bundle.resolve().name}-onnx"
    report = export_onnx(bundle, out, data, rows=rows, tolerance=tolerance, root=root,
                         allow_outside_root=allow_outside_root, opset=opset, exporter=exporter)
    typer.echo(report.summary())


@app.command()
def serve(
    bundle: Path = typer.Argument(..., help="Bundle folder to serve."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (each loads the bundle)."),
    allow_root: Optional[Path] = typer.Option(None, "--allow-root", help="A folder whose files requests may name "
                                              "({\"path\": ...}); without it the server reads no file."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Rows of concurrent requests in one model call "
                                                                 "(1: no batching)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="How long a batch waits for more requests."),
    max_rows: int = typer.Option(256, "--max-rows", min=1, help="Rows per request."),
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", min=0.001, help="Request body size in MiB."),
    max_image_pixels: int = typer.Option(4096 * 4096, "--max-image-pixels", min=1, help="Pixels of one image."),
    max_audio_seconds: float = typer.Option(60.0, "--max-audio-seconds", min=0, help="Duration of one audio clip."),
):
    """Serve a bundle over HTTP: POST /predict (JSON rows; images and audio as base64), POST /predict/upload
    (multipart), GET /health, /metadata, /metrics (Prometheus) and /docs."""
    from .serve import ServeConfig, serve as run_server

    cfg = ServeConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, max_rows=max_rows,
                      max_body_bytes=int(max_body_mb * 2**20), max_image_pixels=max_image_pixels,
                      max_audio_seconds=max_audio_seconds, allow_root=str(allow_root) if allow_root else None)
    run_server(bundle, host=host, port=port, workers=workers, config=cfg, echo=lambda m: typer.echo(m, err=True))


@app.command()
def fusions():
    """List the fusion strategies, one line each."""
    from .fusion import describe_fusions

    for name, line in describe_fusions().items():
        typer.echo(f"{name:16s} {line}")


@app.command("config")
def config_(
    defaults: bool = typer.Option(False, "--defaults", help="Print every setting at its default, as a YAML file "
                                                            "for --config with a comment on each key."),
    markdown: bool = typer.Option(False, "--markdown", help="Print it as Markdown (docs/config.md is this output)."),
):
    """The settings reference: every key of a --config file, its default, allowed values and meaning."""
    from .config import settings_reference
    from .errors import MmfuseError

    if not defaults:
        raise MmfuseError("mmfuse config: pass --defaults to print every setting at its default "
                          "(`mmfuse config --defaults > cfg.yaml`, then keep the keys you change)")
    typer.echo(settings_reference(markdown=markdown), nl=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", callback=_folder, help="Output folder."),
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


def _error_line(e: Exception, args=()) -> str:
    """An error as one line; an OS error names its file and says what to check. A setting the user gave as
    a flag is named as the flag (``--epochs``, not ``setting 'epochs'``), and a bad cell's row is said to
    count from 0 below the header (the table came from a file)."""
    import numbers
    import re

    from .errors import InputError, MmfuseError

    msg = str(e)
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}

    def as_flag(m):
        flag = "--" + m.group(2).replace("_", "-")
        return flag if flag in flags else m.group(0)

    msg = re.sub(r"^(setting )?'?([a-z][a-z0-9_]*)'?(?= must be )", as_flag, msg, count=1)  # only a whole subject
    row = e.row if isinstance(e, InputError) else None
    from .io import table_format

    text_table = any(table_format(a) in ("csv", "tsv", "jsonl") for a in args)
    if text_table and isinstance(row, numbers.Integral) and not isinstance(row, bool):
        msg = msg.replace(f"row {row}", f"row {row} (counted from 0: the first data row is row 0)", 1)
    if isinstance(e, OSError) and not isinstance(e, MmfuseError) and e.filename is not None:
        msg = f"{str(e.filename)!r}: {e.strerror or e}"
        if isinstance(e, PermissionError):
            msg += "; check its permissions"
        elif isinstance(e, FileNotFoundError):
            msg += "; check the path"
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def _exit_interrupted(argv, grace_s: float = 3.0) -> None:
    """Exit 130 after Ctrl-C. A thread that a library started and that the interrupt kept from being stopped (the
    Ctrl-C came between its start and the ``with`` that joins it: optuna's trial heartbeat) would keep the process
    alive forever at exit, with Ctrl-C itself ignored by then (Lightning ignores it after the first): such threads
    get ``grace_s`` to end, then the process leaves without them. In-process calls (``argv`` given) just raise."""
    import threading
    import time

    if argv is None:
        end = time.monotonic() + grace_s
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                t.join(max(0.0, end - time.monotonic()))
        if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
    sys.exit(130)


def main(argv=None) -> None:
    """Entry point: mmfuse errors, and OS errors on the files named, become one line on stderr and exit
    code 2 (``--debug`` for tracebacks)."""
    from .errors import Interrupted, MmfuseError

    args = sys.argv[1:] if argv is None else list(argv)
    import warnings

    show = warnings.showwarning

    seen: set = set()

    def note(message, category, filename, lineno, file=None, line=None):  # mmfuse's own warnings: one line, once
        if "mmfuse" in Path(str(filename)).parts:
            if str(message) not in seen:
                seen.add(str(message))
                typer.echo(f"note: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = note
    try:
        code = app(args=args, standalone_mode=False)  # an exit code when the command was stopped (typer.Exit)
        if code == 130:  # Ctrl-C: typer turns the KeyboardInterrupt into an exit code, which must not read as success
            typer.echo("interrupted", err=True)
            _exit_interrupted(argv)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            sys.exit(code)
        if argv is None and _state["fast_exit"]:
            # A process that imported torch and pandas spends ~0.3 s tearing its modules down at exit. A
            # command that has closed all it wrote (predict) skips that: flush, then leave at once.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    except (MmfuseError, OSError) as e:  # OSError: a file the user named cannot be read or written
        if "--debug" in args:
            raise
        if isinstance(e, Interrupted):
            typer.echo(str(e), err=True)
            _exit_interrupted(argv)
        typer.echo(f"error: {_error_line(e, args)}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as e:  # usage errors of click (or of the click typer carries): a typo'd option or command
        if not _state["debug"] and hasattr(e, "show") and hasattr(e, "exit_code"):  # --debug before the command
            e.show()  # one usage line, with click's own "Did you mean"
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":  # Ctrl-C: click turns the KeyboardInterrupt into Abort
            typer.echo("interrupted", err=True)
            _exit_interrupted(argv)
        raise
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    main()
