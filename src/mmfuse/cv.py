"""Cross-validation: one configuration, fitted and scored on K held-out folds.

Each fold's held-out rows are its *test* rows. Everything a fit learns from data (the target's
classes, every preprocessor's statistics, the weights, the early-stopping epoch, a decision
threshold) is learned inside the fold, from its other rows: the fold's own validation rows
for early stopping are split off those (grouped when the folds are), never taken from the
held-out ones. So the fold scores are honest estimates, and their spread says how far to
trust a difference between two configurations::

    from mmfuse import MultimodalPredictor, cross_validate
    cv = cross_validate(MultimodalPredictor(target="label", epochs=20), "data.csv", folds=5, out="runs/cv")
    cv.summary["accuracy"]   # {"mean": ..., "std": ..., "median": ..., "min": ..., "max": ...}
    cv.oof                    # out-of-fold predictions, one row per labelled row

Schemes: stratified k-fold (classification; plain k-fold for regression), group k-fold (rows
that share a group value stay in one fold) and leave-one-group-out (one fold per group, e.g.
leave one subject out). ``out`` holds one folder per fold; a run that is killed resumes: a
finished fold is not fitted again, an unfinished one continues from its last checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .errors import MmfuseError

__all__ = ["Fold", "make_folds", "plan_folds", "cross_validate", "CVResult", "summarize_folds", "with_group_role"]

SCHEMES = ("stratified", "kfold", "group", "leave_one_group_out")


@dataclass
class Fold:
    """One fold: the positions (in the labelled rows) of its held-out rows, and its name."""

    index: int
    test: np.ndarray
    name: str
    groups: list = field(default_factory=list)  # the held-out groups (group schemes)


def make_folds(y: pd.Series | None, k: int = 5, groups: pd.Series | None = None, scheme: str | None = None,
               seed: int = 0) -> list[Fold]:
    """Assign every row to exactly one held-out fold.

    Args:
        y: The target (stratifies ``stratified`` folds); None for plain k-fold.
        k: Folds (ignored by ``leave_one_group_out``).
        groups: Group per row (``group`` and ``leave_one_group_out``).
        scheme: ``stratified`` (each class spread evenly: its rows, shuffled, are dealt to the
            folds in turn, each class starting where the last left off), ``kfold`` (shuffled
            rows cut into k near-equal parts), ``group`` (whole groups dealt to folds, largest
            first, each to the fold with the fewest rows so far, ties by a seeded shuffle) or
            ``leave_one_group_out``. Default: ``group`` with groups, else ``stratified`` with y,
            else ``kfold``.
        seed: Shuffling seed.
    """
    n = len(y) if y is not None else len(groups)
    if scheme is None:
        scheme = "group" if groups is not None else "stratified" if y is not None else "kfold"
    if scheme not in SCHEMES:
        from ._registry import unknown_name_message

        raise MmfuseError(unknown_name_message("cross-validation scheme", scheme, SCHEMES))
    rng = np.random.default_rng(seed)
    fold_of = np.full(n, -1)
    if scheme in ("group", "leave_one_group_out"):
        if groups is None:
            raise MmfuseError(f"cross-validation scheme {scheme!r} needs a group column")
        g = groups.astype(str).to_numpy()
        names, codes, sizes = np.unique(g, return_inverse=True, return_counts=True)
        if scheme == "leave_one_group_out":
            if len(names) < 2:
                raise MmfuseError(f"leave-one-group-out needs at least 2 groups; the group column has {len(names)}")
            return [Fold(i, np.flatnonzero(codes == i), f"{groups.name}={names[i]}", [names[i]])
                    for i in range(len(names))]
        _check_k(k, len(names), "groups")
        order = rng.permutation(len(names))
        order = order[np.argsort(-sizes[order], kind="stable")]  # largest first; equal sizes in seeded order
        load, group_fold = np.zeros(k, int), np.empty(len(names), int)
        for gi in order:
            f = int(np.argmin(load))
            group_fold[gi], load[f] = f, load[f] + sizes[gi]
        fold_of = group_fold[codes]
        return [Fold(f, np.flatnonzero(fold_of == f), f"fold {f + 1}",
                     sorted(names[group_fold == f].tolist())) for f in range(k)]
    _check_k(k, n, "rows")
    if scheme == "stratified":
        if y is None:
            raise MmfuseError("stratified folds need the target; use scheme='kfold'")
        labels = y.astype(str).to_numpy()
        start = 0
        for c in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == c))
            fold_of[rows] = (start + np.arange(len(rows))) % k
            start = (start + len(rows)) % k
    else:
        perm = rng.permutation(n)
        fold_of[perm] = np.arange(n) * k // n
    return [Fold(f, np.flatnonzero(fold_of == f), f"fold {f + 1}") for f in range(k)]


def _check_k(k: int, n: int, what: str) -> None:
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise MmfuseError(f"folds must be an integer >= 2, got {k!r}")
    if k > n:
        raise MmfuseError(f"{k} folds need at least {k} {what}; there are {n}: use fewer folds")


def with_group_role(estimator, column: str | None):
    """A copy of ``estimator`` that reads ``column`` as the group (never an input; validation splits by it), or
    the estimator itself when ``column`` is None."""
    if column is None:
        return estimator
    from .api import MultimodalPredictor

    params = estimator.get_params()
    return MultimodalPredictor(**{**params, "columns": {**(params.get("columns") or {}), column: "group"}})


def summarize_folds(fold_metrics: Sequence[dict]) -> dict:
    """Per metric: mean, standard deviation (ddof=1: the spread between folds), median, min and max
    over the folds that have it."""
    out = {}
    keys = dict.fromkeys(k for m in fold_metrics for k, v in m.items() if isinstance(v, (int, float)) and
                         not isinstance(v, bool))
    for k in keys:
        v = np.array([m[k] for m in fold_metrics if isinstance(m.get(k), (int, float))], float)
        v = v[np.isfinite(v)]
        if len(v):
            out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "folds": len(v)}
    return out


@dataclass
class CVResult:
    """What :func:`cross_validate` measured.

    Attributes:
        folds: Per fold: ``fold``, ``name``, held-out ``groups``, ``rows`` (train/val/test counts),
            ``metrics`` (on its held-out rows), ``best_epoch``, ``epochs_run``, ``seconds``, ``reused``.
        summary: :func:`summarize_folds` of the folds' metrics.
        metric: The task's headline metric (the one to compare configurations by).
        oof: Out-of-fold predictions: ``row`` (the table's row id), ``fold``, the target, and the
            columns of :meth:`mmfuse.Predictor.predict_frame` (``prediction``, ``proba_<class>``).
        scheme, settings, left_out: The fold scheme, the estimator's parameters, and the rows left
            out for a blank target.
        out: The run folder (None when nothing was written).
    """

    folds: list
    summary: dict
    metric: str
    oof: pd.DataFrame
    scheme: dict
    settings: dict
    left_out: list
    out: Path | None = None

    @property
    def score(self) -> float:
        """Mean of the headline metric over the folds."""
        return self.summary[self.metric]["mean"]

    def to_dict(self) -> dict:
        return {"metric": self.metric, "scheme": self.scheme, "summary": self.summary, "folds": self.folds,
                "settings": self.settings, "left_out_blank_target": self.left_out}

    def to_markdown(self) -> str:
        return format_cv(self.to_dict())


def format_cv(d: dict) -> str:
    """cv.md: the scheme, a per-fold table and mean ± std / median of every metric."""
    metrics = [k for k in d["summary"] if k not in ("n",)]
    s = d["scheme"]
    lines = [f"# Cross-validation: {s['description']}", ""]
    if s.get("folds_done", s["folds"]) < s["folds"]:
        lines += [f"**Unfinished: {s['folds_done']} of {s['folds']} folds so far.** Run the same command again to "
                  "fit the others (finished folds are kept).", ""]
    lines += [f"Headline metric: **{d['metric']}** = {_fmt_stat(d['summary'].get(d['metric']))}", "",
             "| fold | held out | train | val | test | " + " | ".join(metrics) + " | best epoch | seconds |",
             "|" + "---|" * (7 + len(metrics))]
    for f in d["folds"]:
        held = ", ".join(map(str, f["groups"])) if f["groups"] else "-"
        held = held if len(held) < 40 else held[:37] + "..."
        r = f["rows"]
        lines.append(f"| {f['name']} | {held} | {r['train']} | {r['val']} | {r['test']} | " +
                     " | ".join(_fmt(f["metrics"].get(k)) for k in metrics) +
                     f" | {f.get('best_epoch', '-')} | {f.get('seconds', 0):.0f} |")
    for stat in ("mean", "std", "median"):
        lines.append(f"| **{stat}** | | | | | " + " | ".join(_fmt(d["summary"][k][stat]) for k in metrics) + " | | |")
    if d.get("left_out_blank_target"):
        lines += ["", f"Left out for a blank target: {len(d['left_out_blank_target'])} rows."]
    lines += ["", "Each fold's held-out rows are its test rows; its validation rows (early stopping) come from its "
              "training rows. std: between folds (ddof=1)."]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _fmt_stat(s) -> str:
    return "-" if not s else f"{s['mean']:.4f} ± {s['std']:.4f} (median {s['median']:.4f}, {s['folds']} folds)"


# --- running the folds ----------------------------------------------------------------------
def cross_validate(estimator, data, *, folds: int = 5, group_column: str | None = None,
                   leave_one_out: str | None = None, scheme: str | None = None, out=None, jobs: int = 1,
                   overwrite: bool = False, echo: Callable[[str], None] | None = None) -> CVResult:
    """Cross-validate one configuration.

    Args:
        estimator: A :class:`~mmfuse.MultimodalPredictor`: its parameters are the configuration
            (each fold fits a clone, in ``out/fold_<i>``).
        data: The table (a path, DataFrame or :class:`~mmfuse.io.Table`). A ``split`` column in it
            is not used: the folds decide.
        folds: K.
        group_column: Group k-fold on this column: rows sharing a value stay in one fold, and the
            validation rows inside each fold are split by group too.
        leave_one_out: Leave-one-group-out on this column (one fold per value, e.g. a subject).
        scheme: Override the scheme (:data:`SCHEMES`); default from the arguments above.
        out: Run folder (``cv.json``, ``cv.md``, ``oof.csv``, one folder per fold). Without it, a
            temporary folder, and nothing resumes.
        jobs: Folds fitted at once, in separate processes (each gets ``cpu_count // jobs``
            threads). 1: in this process.
        overwrite: Replace a cross-validation with other settings or data found in ``out``
            (by default that is an error; one with the same settings resumes).
        echo: Called with one line per event (the command line passes its ``echo``).

    Returns:
        A :class:`CVResult`; also written to ``out/cv.json`` and ``out/cv.md``.
    """
    import shutil
    import tempfile

    from . import pipeline as P
    from ._fingerprint import ARCHITECTURE, data_fingerprint
    from .io import atomic_write_text, read_table

    say = echo or (lambda line: None)
    if group_column and leave_one_out:
        raise MmfuseError("give either group_column (group k-fold) or leave_one_out (one fold per group), not both")
    if not isinstance(jobs, (int, np.integer)) or jobs < 1:
        raise MmfuseError(f"jobs must be an integer >= 1, got {jobs!r}")
    table = read_table(data, root=estimator.root)
    target = estimator.target
    labelled, fold_list, scheme_name, group_col, left_out = plan_folds(estimator, table, folds, group_column,
                                                                       leave_one_out, scheme, say)
    df = table.df
    seed = estimator.seed
    held_out = len(df) - len(labelled) - len(left_out)
    scheme_info = {"name": scheme_name, "folds": len(fold_list), "group_column": group_col, "seed": seed,
                   "description": _describe_scheme(scheme_name, len(fold_list), group_col, table.source)
                   + (f"; {held_out} rows of the table's test split held out" if held_out else ""),
                   "held_out_test_rows": held_out}
    settings = _settings(estimator)
    fp = {"data": data_fingerprint(labelled), "settings": hashlib.sha256(
        json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16],
          "folds": {k: scheme_info[k] for k in ("name", "folds", "group_column", "seed")}, "architecture": ARCHITECTURE}

    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="mmfuse_cv_"))
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_run_folder(run_dir, fp, overwrite)
    atomic_write_text(run_dir / "cv_fingerprint.json", json.dumps(fp))
    say(f"cross-validation: {scheme_info['description']}; {len(labelled)} labelled rows; out {run_dir}")

    params = estimator.get_params()
    if group_col is not None:  # the validation rows inside each fold are split by group, like the folds
        params["columns"] = {**(params.get("columns") or {}), group_col: "group"}
    if "split" in df.columns and (params.get("columns") or {}).get("split") is None:
        params["columns"] = {**(params.get("columns") or {}), "split": "ignore"}  # the folds decide
        say("note: the table's 'split' column chooses no fold: the folds divide its other rows, train and val alike")
    params.update(root=table.root, resume=False, progress=params.get("progress") and jobs == 1)
    # roles are inferred once, on the whole table, and given to every fold: inferred on a fold's rows, a
    # column could change role from fold to fold (a 0..n-1 row counter is an id; a fold's subset of it is not)
    schema, _ = P.select_inputs(table, target, params.get("columns"), params.get("groups"), params.get("schema_file"),
                                params.get("inputs"))
    params["columns"] = {c: r.value for c, r in schema.roles.items() if c != target}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    todo, results = [], {}
    for f in fold_list:
        fdir = run_dir / f"fold_{f.index + 1}"
        done = _read_done(fdir, f, fp)
        if done is not None:
            results[f.index] = {**done, "reused": True}
            say(f"{f.name}: done in an earlier run ({_headline(done)}); not fitted again")
            continue
        if fdir.exists() and not (fdir / "checkpoints").exists():
            shutil.rmtree(fdir)  # a fold that never reached its first checkpoint starts over
        test_pos = f.test
        train_pos = np.setdiff1d(np.arange(len(labelled)), test_pos)
        todo.append(dict(params=params, train=labelled.iloc[train_pos], test=labelled.iloc[test_pos], fold=_fold_dict(f),
                         fdir=str(fdir), fingerprint=fp, threads=threads if jobs > 1 else None))

    def finished(res):
        results[res["fold"]] = res
        say(f"{res['name']}: {_headline(res)} ({res['seconds']:.0f} s)")
        _write_outputs(run_dir, fold_list, results, scheme_info, settings, left_out)

    try:
        _run_folds(todo, jobs, finished, run_dir)
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl-C during a fit into SystemExit(1)
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        from .errors import Interrupted

        kept = (f"{len(results)} of {len(fold_list)} folds finished are kept in {run_dir}; the same command resumes "
                "from them" if out is not None else "nothing is kept (no out folder)")
        raise Interrupted(f"cross-validation interrupted: {kept}") from None
    result = _write_outputs(run_dir, fold_list, results, scheme_info, settings, left_out)
    result.out = run_dir if out is not None else None
    s = result.summary.get(result.metric)
    say(f"{result.metric}: {_fmt_stat(s)}; written: {run_dir / 'cv.json'}, {run_dir / 'cv.md'}, {run_dir / 'oof.csv'}")
    return result


def held_out_split_column(estimator, df) -> str | None:
    """The column that marks the table's own test rows, which cross-validation and search never use: the
    column given the role ``split``, else a column named ``split`` not given another role."""
    from .splits import split_column

    return split_column(df.columns, estimator.columns)


def plan_folds(estimator, table, folds: int = 5, group_column: str | None = None, leave_one_out: str | None = None,
               scheme: str | None = None, echo: Callable[[str], None] | None = None):
    """The folds :func:`cross_validate` would fit, checked (every class in each fold's training rows, no
    blank group), without fitting anything: :func:`mmfuse.search` checks its folds this way before its first trial.

    Returns:
        ``(labelled rows, folds, scheme name, group column, ids of the rows left out for a blank target)``.
    """
    from . import pipeline as P
    from .tasks import blank_targets

    say = echo or (lambda line: None)
    estimator.configs()  # every setting checked (a negative seed, a zero batch size) before any fold is planned
    group_col = leave_one_out or group_column
    if scheme is None and leave_one_out:
        scheme = "leave_one_group_out"
    target = estimator.target
    P.infer_task_of(table, target)  # an absent target column: one clear line
    df = table.df
    if group_col is not None and group_col not in df.columns:
        from ._registry import unknown_name_message

        raise MmfuseError(unknown_name_message("group column", group_col, df.columns))
    if group_col is not None and group_col == target:
        raise MmfuseError(f"the group column {group_col!r} is the target: folds by group would hold out whole classes; "
                          "give the column that groups related rows (a subject, a session)")
    split_col = held_out_split_column(estimator, df)
    if split_col is not None:  # the table's test rows are for the final model: no fold trains or scores on them
        from .splits import split_names

        is_test = (split_names(df[split_col]) == "test").to_numpy()
        if is_test.any():
            say(f"held out {int(is_test.sum())} rows whose {split_col!r} is 'test': no fold trains or scores on them "
                "(fitting with the split column scores the final model on them)")
            df = df[~is_test]
    blank = blank_targets(df[target])
    left_out = [_jsonable(r) for r in df.index[blank]]
    if left_out:
        say(f"left out {len(left_out)} rows with a blank target {target!r}: "
            f"{', '.join(map(str, left_out[:10]))}{', ...' if len(left_out) > 10 else ''}")
    labelled = df[~blank]
    kind = estimator.task or P.infer_task_of(table, target)
    groups = labelled[group_col] if group_col is not None else None
    if groups is not None and groups.isna().any():
        blank_g = labelled.index[groups.isna().to_numpy()].tolist()
        raise MmfuseError(f"{len(blank_g)} rows have a blank group {group_col!r} (rows "
                          f"{', '.join(map(str, blank_g[:10]))}{', ...' if len(blank_g) > 10 else ''}): fill them in, "
                          "or drop those rows, so that every row belongs to a group")
    if groups is not None and groups.nunique() < 2:
        raise MmfuseError(f"group column {group_col!r} has {groups.nunique()} distinct value in the labelled rows; folds "
                          "by group need at least 2 groups (give another column, or plain folds without it)")
    if scheme is None:
        scheme = ("group" if groups is not None else
                  "stratified" if kind in ("binary", "multiclass") else "kfold")  # regression, multilabel: plain
    seed = estimator.seed
    fold_list = make_folds(labelled[target], folds, groups, scheme, seed)
    scheme_name = scheme
    if kind in ("binary", "multiclass"):
        _check_fold_classes(labelled[target], fold_list)
    return labelled, fold_list, scheme_name, group_col, left_out


def _run_folds(todo: list, jobs: int, finished, run_dir: Path) -> None:
    """Fit the folds of ``todo``: in this process (``jobs=1``), or in a pool of ``jobs`` processes; ``finished``
    gets each fold's result as it comes."""
    if jobs == 1 or len(todo) <= 1:
        for t in todo:
            finished(_fit_fold(**{**t, "threads": None}))  # in this process: leave its thread count alone
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: a forked copy of a process that already ran torch can hang in its thread pools
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=mp.get_context("spawn")) as pool:
            try:
                for fut in as_completed([pool.submit(_fit_fold, **t) for t in todo]):
                    finished(fut.result())
            except BaseException:  # a failed fold, a pruned trial, Ctrl-C: do not wait for the queued folds
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    except BrokenProcessPool:
        raise MmfuseError(
            f"a worker process of cross_validate(jobs={jobs}) died: either the script that calls it lacks "
            "`if __name__ == \"__main__\":` around the call (each worker re-imports it), or a worker ran out of "
            f"memory; the folds finished so far are kept in {run_dir} and the next run resumes from them "
            "(jobs=1 runs the folds in this process)") from None


def _check_fold_classes(y: pd.Series, fold_list) -> None:
    """Every class of a fold's held-out rows must occur in its training rows (a model cannot predict a
    class it never saw); one line naming the fold and the remedy otherwise."""
    labels = y.astype(str).to_numpy()
    for f in fold_list:
        train = np.ones(len(labels), bool)
        train[f.test] = False
        unseen = sorted(set(labels[f.test]) - set(labels[train]))
        if unseen and (labels == unseen[0]).sum() == 1:
            raise MmfuseError(f"class {unseen[0]!r} has a single labelled row: no fold can both learn it and hold it "
                              "out; drop that row or merge the class with another")
        if unseen:
            raise MmfuseError(f"{f.name}: class {unseen[0]!r} occurs only in the held-out rows of this fold "
                              f"({', '.join(map(repr, unseen))}), so no model of the fold can learn it; use fewer folds, "
                              "another grouping, or drop or merge the rare class")


def _describe_scheme(name: str, k: int, group_col, source: str) -> str:
    return {"stratified": f"stratified {k}-fold over the rows of {source}",
            "kfold": f"{k}-fold over the rows of {source} (shuffled)",
            "group": f"group {k}-fold on column {group_col!r} of {source} (a group's rows stay in one fold)",
            "leave_one_group_out": f"leave one {group_col!r} out ({k} folds) on {source}"}[name]


def _settings(estimator) -> dict:
    """The estimator's parameters that define the configuration (not where it writes or how it shows progress)."""
    skip = {"out", "progress", "resume", "log"}
    return {k: _jsonable(v) for k, v in estimator.get_params().items() if k not in skip}


def _jsonable(v):
    from enum import Enum

    if isinstance(v, Enum):  # a Role is also a str: YAML and JSON writers want its plain value
        return _jsonable(v.value)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def _fold_dict(f: Fold) -> dict:
    return {"index": f.index, "name": f.name, "groups": [_jsonable(g) for g in f.groups],
            "test_rows_hash": hashlib.sha256(np.asarray(f.test, np.int64).tobytes()).hexdigest()[:16]}


def _check_run_folder(run_dir: Path, fp: dict, overwrite: bool) -> None:
    """A folder with another cross-validation (other settings or data) is replaced only with ``overwrite``."""
    import shutil

    path = run_dir / "cv_fingerprint.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old == fp:
            return
        began = any(run_dir.glob("fold_*/fold.json")) or any(run_dir.glob("fold_*/checkpoints"))
        if not overwrite and began:
            what = ("unreadable state" if not old else "other data" if old.get("data") != fp["data"] else
                    "other folds" if old.get("folds") != fp["folds"] else "other settings")
            raise MmfuseError(f"{run_dir} holds a cross-validation run with {what}; pass overwrite=True (--overwrite) "
                              "to replace it, or choose another folder")
    elif any(run_dir.iterdir()) and not overwrite:
        raise MmfuseError(f"{run_dir} is not empty and holds no cross-validation run; pass overwrite=True "
                          "(--overwrite) to use it anyway, or choose another folder")
    for p in run_dir.glob("fold_*"):
        shutil.rmtree(p)
    for name in ("cv.json", "cv.md", "oof.csv", "cv_fingerprint.json"):
        (run_dir / name).unlink(missing_ok=True)


def _read_done(fdir: Path, fold: Fold, fp: dict) -> dict | None:
    """The result of a fold finished by an earlier run with the same data, settings and rows, else None."""
    path = fdir / "fold.json"
    if not path.exists():
        return None
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if done.get("fingerprint") != fp or done.get("test_rows_hash") != _fold_dict(fold)["test_rows_hash"]:
        return None
    if not (fdir / "oof.csv").exists():
        return None
    return done


def _fit_fold(params: dict, train: pd.DataFrame, test: pd.DataFrame, fold: dict, fdir: str, fingerprint: dict,
              threads: int | None) -> dict:
    """Fit one fold (in this process or a worker) and write its ``fold.json`` and ``oof.csv``."""
    import warnings

    import torch

    from .api import MultimodalPredictor
    from .io import atomic_write_text

    if threads:
        torch.set_num_threads(threads)
    fdir = Path(fdir)
    t0 = time.perf_counter()
    resume = (fdir / "checkpoints").exists()
    m = MultimodalPredictor(**{**params, "out": fdir, "resume": resume})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*validation split is small")  # said once per CV, not per fold
        m.fit(train, test=test)
    frame = m.predictor_.predict_frame(test, root=params.get("root"),  # the fit's cache: no re-embedding
                                       allow_outside_root=params.get("allow_outside_root", False),
                                       on_bad_input=params.get("on_bad_input", "raise"), cache=m.cache)
    frame.insert(1, "fold", fold["index"] + 1)
    frame.insert(2, "target", test[params["target"]].to_numpy())
    atomic_write_text(fdir / "oof.csv", frame.to_csv(index=False))
    mm = m.metrics_
    res = {"fold": fold["index"], "name": fold["name"], "groups": fold["groups"], "rows": mm["rows"],
           "metrics": mm.get("test", {}), "best_epoch": _plus1(mm.get("best_epoch")), "epochs_run": mm.get("epochs_run"),
           "seconds": time.perf_counter() - t0, "resumed": resume, "fingerprint": fingerprint,
           "test_rows_hash": fold["test_rows_hash"], "headline": m.task_.headline,
           "ids": {k: m.splits_["ids"][k] for k in ("train", "val", "test") if k in m.splits_["ids"]}}
    atomic_write_text(fdir / "fold.json", json.dumps(res, indent=1, default=_jsonable))
    return res


def _plus1(epoch):
    return None if epoch is None else int(epoch) + 1  # 1-based, as in the progress bar and report


def _headline(res: dict) -> str:
    k = res.get("headline") or "accuracy"
    v = res["metrics"].get(k)
    return f"{k} {v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{k} -"


def _write_outputs(run_dir: Path, fold_list, results: dict, scheme: dict, settings: dict, left_out: list) -> CVResult:
    from .io import atomic_write_text

    done = [results[f.index] for f in fold_list if f.index in results]
    metric = done[0].get("headline", "accuracy") if done else "accuracy"
    folds = [{k: v for k, v in r.items() if k not in ("fingerprint", "test_rows_hash", "headline", "ids")} for r in done]
    summary = summarize_folds([r["metrics"] for r in done])
    frames = [pd.read_csv(run_dir / f"fold_{r['fold'] + 1}" / "oof.csv") for r in done
              if (run_dir / f"fold_{r['fold'] + 1}" / "oof.csv").exists()]
    oof = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    res = CVResult(folds, summary, metric, oof, {**scheme, "folds_done": len(done)}, settings, left_out)
    atomic_write_text(run_dir / "cv.json", json.dumps(res.to_dict(), indent=1, default=_jsonable) + "\n")
    atomic_write_text(run_dir / "cv.md", res.to_markdown())
    if len(oof):
        atomic_write_text(run_dir / "oof.csv", oof.to_csv(index=False))
    return res
