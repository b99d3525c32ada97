"""Ensembles: greedy ensemble selection over cross-validated trials, saved as one bundle.

This is the ensemble-learning form of late fusion. Given several cross-validation runs of the
same table (the trials of a search), :func:`ensemble_selection` chooses, on their out-of-fold
predictions, how much weight each trial gets (Caruana, Niculescu-Mizil, Crew and Ksikes 2004,
"Ensemble selection from libraries of models": greedy forward selection with replacement,
as AutoGluon does). :func:`build_ensemble` saves the result as an :class:`EnsemblePredictor`
folder that ``mmfuse predict``, ``mmfuse evaluate`` and :meth:`mmfuse.Predictor.load` use like
any bundle::

    from mmfuse import Predictor, build_ensemble
    res = build_ensemble(["runs/search/trial_3", "runs/search/trial_7"], size=20, out="runs/ensemble")
    res["members"], res["cv"]           # weights, and the ensemble's CV metrics (optimistic: see res["note"])
    Predictor.load("runs/ensemble").predict("new.csv")

A member is one trial: the average of its K fold bundles (the very models whose out-of-fold
predictions were scored, so what was selected is what predicts; bagging over the folds).
The ensemble's prediction is ``p = Σ_m w_m · (1/K) Σ_k p_{m,k}``: class probabilities for
classification, values for regression. Labels come from the task's own rule
(:meth:`~mmfuse.tasks.Task.logits_of`, then :meth:`~mmfuse.tasks.Task.decode`).

Folder layout: ``ensemble.json`` (format version, task, members with their weights, the
selection) and ``members/<i>/fold_<k>/``, each a normal bundle (safetensors and JSON).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .bundle import Predictor, _damaged, _damaged_if_inconsistent, _json_default
from .reading import aligned
from .errors import BundleError, MmfuseError

__all__ = ["ensemble_selection", "Selection", "EnsemblePredictor", "build_ensemble", "ENSEMBLE_FORMAT",
           "ENSEMBLE_FILE"]

ENSEMBLE_FORMAT = 1  # bump on any incompatible change of ensemble.json or of the folder layout
ENSEMBLE_FILE = "ensemble.json"
SELECTION_LOSS = ("the task's training loss, unweighted, of the averaged prediction: log loss (cross-entropy) for "
                  "classification, squared error for regression (the same choice as RMSE; Huber for a target "
                  "trained with regression_loss='huber')")
NOTE = ("score/std/summary cross-validate the selection itself: for each fold, the weights are chosen on the "
        "other folds' out-of-fold rows and scored on this fold's rows, which the selection did not see (like the "
        "trials' own CV scores). The saved ensemble's weights are chosen on all out-of-fold rows; 'cv' scores "
        "them on those same rows, which is optimistic (Caruana et al. 2004 and AutoGluon say the same)")
_TIE = 1e-12  # relative: candidates this close to the best score are tied; the first (lowest index) wins


# --- selection -------------------------------------------------------------------------------
@dataclass
class Selection:
    """What :func:`ensemble_selection` chose.

    Attributes:
        weights: (M,) one per candidate: the times it was picked in the first ``steps`` steps / ``steps``
            (zero for those never picked).
        picks: The candidate added at each step.
        scores: The metric of the ensemble after each step.
        steps: The steps kept: the prefix with the best score (as Caruana et al. and AutoGluon do), or all.
    """

    weights: np.ndarray
    picks: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    steps: int = 0


def ensemble_selection(probas: Sequence[np.ndarray], y, metric_fn: Callable[[np.ndarray, object], float], size: int,
                       higher_is_better: bool = False, use_best: bool = True) -> Selection:
    """Greedy forward ensemble selection with replacement (Caruana et al. 2004).

    Starting from the empty ensemble, each of ``size`` steps adds the candidate (one already in
    the ensemble may be added again) whose addition gives the best ``metric_fn`` of the averaged
    prediction ``(Σ_picked p) / steps``. Weights are ``counts / steps`` over the steps kept (all
    ``size`` of them unless ``use_best``). Ties (within a relative 1e-12) go to the lowest index, so
    the result is deterministic.

    Use a proper scoring rule as the metric (log loss, squared error): accuracy is flat over most
    small changes of the weights, so its greedy steps are ties.

    Args:
        probas: One prediction per candidate, all of one shape, rows aligned: (N, K) class
            probabilities or (N,) values.
        y: The targets, passed to ``metric_fn`` as they are.
        metric_fn: ``metric_fn(prediction, y) -> float`` of an averaged prediction.
        size: Steps (picks) run; the weights are multiples of ``1 / steps kept``.
        higher_is_better: False (default) for a loss to minimize.
        use_best: Keep the prefix of the steps whose ensemble scored best (the earliest of equal ones),
            not necessarily all ``size`` steps: a late step can make the ensemble worse when no candidate
            improves it any more.

    Returns:
        A :class:`Selection`.
    """
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise MmfuseError(f"ensemble size must be an integer >= 1 (the number of greedy steps), got {size!r}")
    preds = [np.asarray(p, float) for p in probas]
    if not preds:
        raise MmfuseError("ensemble selection needs at least one candidate's predictions; got none")
    shapes = {p.shape for p in preds}
    if len(shapes) > 1:
        raise MmfuseError(f"ensemble selection: the candidates' predictions have different shapes {sorted(shapes)}; "
                          "they must cover the same rows (and classes) in the same order")
    sign = -1.0 if higher_is_better else 1.0
    total, picks, scores = np.zeros_like(preds[0]), [], []
    for step in range(1, size + 1):
        loss = np.array([sign * float(metric_fn((total + p) / step, y)) for p in preds])
        loss[~np.isfinite(loss)] = np.inf
        best = loss.min()
        if not np.isfinite(best):
            raise MmfuseError(f"ensemble selection: the metric is not finite for any candidate at step {step}; "
                              "check the predictions for NaN")
        pick = int(np.flatnonzero(loss <= best + _TIE * max(1.0, abs(best)))[0])
        total += preds[pick]
        picks.append(pick)
        scores.append(sign * float(best))
    steps = size
    if use_best:
        signed = sign * np.asarray(scores)
        steps = int(np.flatnonzero(signed <= signed.min() + _TIE * max(1.0, abs(signed.min())))[0]) + 1
    kept = np.bincount(np.asarray(picks[:steps], int), minlength=len(preds))
    return Selection(kept / steps, picks, scores, steps)


# --- the predictor ---------------------------------------------------------------------------
class _Inputs:
    """Stands in for ``Predictor.model`` where callers only ask for the input names."""

    def __init__(self, names: list[str]):
        self.names = names


class EnsemblePredictor(Predictor):
    """A weighted average of members, each the average of its fold bundles; predicts like a
    :class:`~mmfuse.bundle.Predictor` (``predict``, ``predict_proba``, ``predict_frame``,
    ``decode``, ``skipped_rows``), and :func:`mmfuse.evaluate_predictor` scores it.

    The ensemble reads no input itself (``preprocessors`` is empty): each fold bundle reads the
    table with its own preprocessors. A row skipped as bad input by any of them is skipped.

    Args:
        members: Per member, its loaded fold bundles.
        weights: One per member, summing to 1.
        task: The ensemble's :class:`~mmfuse.tasks.Task`: it turns the averaged probabilities
            (values) into labels and metrics.
        config: The contents of ``ensemble.json``.
        path: The folder it was loaded from.
    """

    def __init__(self, members: list[list[Predictor]], weights, task, config: dict, path: Path | None = None):
        self.members, self.weights = members, np.asarray(weights, float)
        self.target, self.config, self.path = task, config, path
        self.preprocessors = {}
        self.schema = members[0][0].schema
        self.model = _Inputs(sorted({n for m in members for b in m for n in b.model.names}))

    def describe(self) -> str:
        """One line: the members' fusions and weights."""
        parts = [f"{m.get('name', i)} ({m.get('fusion', '?')}) ×{m['weight']:.2f}"
                 for i, m in enumerate(self.config["members"])]
        return f"ensemble of {len(parts)}: " + ", ".join(parts)

    @classmethod
    @_damaged_if_inconsistent
    def load(cls, path: str | os.PathLike) -> "EnsemblePredictor":
        """Load an ensemble folder (:meth:`mmfuse.Predictor.load` comes here when the folder holds
        ``ensemble.json``).

        Raises:
            BundleError: one line naming the folder, when it is missing, of another format, or damaged.
        """
        from .tasks import task_from_dict

        path = Path(path)
        meta = _read_meta(path)
        try:
            task = task_from_dict(meta["task"])
        except (MmfuseError, KeyError, TypeError, ValueError) as e:
            raise _damaged(path, f"{ENSEMBLE_FILE} describes a task this mmfuse cannot build ({e})") from e
        members = []
        for i, m in enumerate(meta["members"]):
            folds = []
            for name in m["folds"]:
                where = path / "members" / str(i) / name
                if not (where / "config.json").is_file():
                    raise _damaged(path, f"member {i} lacks its fold bundle members/{i}/{name}")
                b = Predictor.load(where)
                if b.target.classes_ != task.classes_:
                    raise _damaged(path, f"member {i} fold {name} predicts the classes {b.target.classes_}, the "
                                         f"ensemble {task.classes_}")
                folds.append(b)
            members.append(folds)
        return cls(members, [m["weight"] for m in meta["members"]], task, meta, path)

    def save(self, path, embed_backbones: bool = False) -> Path:
        """Write the ensemble folder atomically: each fold bundle is saved again (see
        :func:`~mmfuse.bundle.save_bundle`), then ``ensemble.json``."""
        def fill(tmp: Path):
            for i, (m, folds) in enumerate(zip(self.config["members"], self.members)):
                for name, b in zip(m["folds"], folds):
                    b.save(tmp / "members" / str(i) / name, embed_backbones=embed_backbones)

        return _write_ensemble(Path(path), self.config, fill)

    def embed(self, *args, **kwargs):
        raise MmfuseError("an ensemble has no single representation to embed; load one of its fold bundles "
                          "(members/<i>/fold_<k>) and embed with it")

    @torch.no_grad()
    def logits(self, data, batch_size: int = 256, absent=(), on_bad_input="raise", root=None, num_workers: int = 0,
               dataset=None, allow_outside_root: bool = False, cache=None) -> tuple[torch.Tensor, np.ndarray]:
        """Logits ``[N, n_outputs]`` of the averaged prediction (``task.logits_of``) and the table
        positions they belong to: the rows every fold bundle read (and, with ``dataset``, whose
        target it read). ``dataset``: a :class:`~mmfuse.data.MultimodalDataset` that holds the targets
        (as :func:`mmfuse.evaluate_predictor` builds one); its table, policy and root are used, and the
        members' bad input is added to its report. ``cache``: the members' cache; None: a temporary
        folder for this call, so that members with the same preprocessing (a frozen backbone, decoded
        files) read each row once, not once per fold bundle."""
        import tempfile

        if cache is None:
            with tempfile.TemporaryDirectory(prefix="mmfuse_ensemble_") as tmp:
                return self.logits(data, batch_size, absent, on_bad_input, root, num_workers, dataset,
                                   allow_outside_root, cache=tmp)
        from .data import BadInputPolicy, InputReport
        from .io import read_table

        if dataset is not None:
            table, on_bad_input, allow_outside_root = dataset.table, dataset.policy, dataset.ctx.allow_outside_root
            root, report = dataset.table.root, dataset.report
        else:
            table = read_table(data, root=root)
            report = InputReport(BadInputPolicy.parse(on_bad_input))
        n = len(table.df)
        kept = np.zeros(n, bool)
        kept[dataset.positions if dataset is not None else np.arange(n)] = True
        total, absent_inputs, none = 0.0, {}, None
        self.last_no_input = []  # (a member that finds no row to predict raises before the end)
        for w, folds in zip(self.weights, self.members):
            for b in folds:
                z, rows = b.logits(table, batch_size=batch_size, absent=[a for a in absent if a in b.model.names],
                                   on_bad_input=on_bad_input, root=root, num_workers=num_workers,
                                   allow_outside_root=allow_outside_root, cache=cache)
                total = total + (w / len(folds)) * aligned(b.target.decode(z).proba, rows, n)  # NaN: skipped
                kept &= np.isin(np.arange(n), rows)
                for key, issue in b.last_report.issues.items():
                    report.issues.setdefault(key, issue)
                for k, c in b.last_report.unknown_categories.items():
                    report.unknown_categories[k] = max(report.unknown_categories[k], c)
                absent_inputs.update(dict.fromkeys(b.last_absent))
                got = dict.fromkeys(b.last_no_input)  # a row no member read any input of
                none = got if none is None else {r: None for r in none if r in got}
        self.last_report, self.last_absent = report, list(absent_inputs)
        self.last_no_input = list(none or ())
        self._absent_lines = list(dict.fromkeys(b.describe_absent() for m in self.members for b in m))
        rows = np.flatnonzero(kept)
        if not len(rows):
            raise MmfuseError(f"no rows to predict on (every row was skipped as bad input: {report.summary()})")
        return self.target.logits_of(np.asarray(total)[rows]), rows

    def describe_absent(self) -> str:
        """One line naming the inputs the last table lacked (for any member), or ''."""
        return "; ".join(line for line in getattr(self, "_absent_lines", []) if line)


def _read_meta(path: Path) -> dict:
    """``ensemble.json``, checked: this format version, a task, members with positive weights
    summing to 1 and their fold names."""
    if not path.is_dir():
        raise BundleError(f"ensemble folder {str(path)!r} does not exist (resolved to {path.resolve()})"
                          if not path.exists() else f"{str(path)!r} is a file, not an ensemble folder")
    try:
        meta = json.loads((path / ENSEMBLE_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise _damaged(path, f"{ENSEMBLE_FILE} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                             "it may be truncated") from e
    except UnicodeDecodeError as e:
        raise _damaged(path, f"{ENSEMBLE_FILE} is not text") from e
    except OSError as e:
        raise BundleError(f"ensemble {str(path)!r}: {ENSEMBLE_FILE} cannot be read ({e.strerror or e})") from e
    if not isinstance(meta, dict):
        raise _damaged(path, f"{ENSEMBLE_FILE} holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != ENSEMBLE_FORMAT:
        raise BundleError(f"ensemble {str(path)!r} has format {meta.get('format')!r} (written by mmfuse "
                          f"{meta.get('mmfuse_version')}); this mmfuse reads format {ENSEMBLE_FORMAT}. Load it with "
                          "the mmfuse version that wrote it, or build the ensemble again")
    if not isinstance(meta.get("task"), dict):
        raise _damaged(path, f"{ENSEMBLE_FILE} lacks the 'task' object")
    members = meta.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise _damaged(path, f"{ENSEMBLE_FILE} lacks 'members' (a non-empty list of objects)")
    for i, m in enumerate(members):
        w, folds = m.get("weight"), m.get("folds")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise _damaged(path, f"member {i} has the weight {w!r}; weights are positive numbers")
        if not isinstance(folds, list) or not folds or not all(isinstance(f, str) and f.startswith("fold_")
                                                             for f in folds):
            raise _damaged(path, f"member {i} has the folds {folds!r}; a non-empty list like ['fold_1', 'fold_2']")
    total = sum(m["weight"] for m in members)
    if abs(total - 1) > 1e-6:
        raise _damaged(path, f"the members' weights sum to {total:g}, not 1")
    return meta


def _write_ensemble(path: Path, meta: dict, fill: Callable[[Path], None]) -> Path:
    """Write an ensemble folder atomically: ``fill(tmp)`` writes the members into a temporary folder,
    then ``ensemble.json`` is added and the folder renamed to ``path`` (an older one is moved aside
    first, so a crash leaves one of the two)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not (path / ENSEMBLE_FILE).is_file() and (not path.is_dir() or any(path.iterdir())):
        raise MmfuseError(f"{path} exists and is not an ensemble folder; choose another folder for the ensemble")
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        (tmp / ENSEMBLE_FILE).write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from .bundle import replace_folder

    return replace_folder(tmp, path)


# --- building from cross-validation runs ------------------------------------------------------
@dataclass
class _Trial:
    path: Path
    cv: dict
    oof: pd.DataFrame
    folds: list  # the fold folder names, fold_1 ... fold_K
    tasks: list  # the fold bundles' tasks
    fusion: str | None


def _read_trial(path: Path) -> _Trial:
    """A finished cross-validation run folder: its ``cv.json``, ``oof.csv`` and fold bundles' tasks."""
    from .tasks import task_from_dict

    if not path.is_dir():
        raise MmfuseError(f"trial folder {str(path)!r} does not exist; pass cross-validation run folders")
    for name in ("cv.json", "oof.csv"):
        if not (path / name).is_file():
            raise MmfuseError(f"trial folder {str(path)!r} has no {name}: it is not a finished cross-validation run")
    try:
        cv = json.loads((path / "cv.json").read_text())
        scheme, fold_list = cv["scheme"], cv["folds"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise MmfuseError(f"trial folder {str(path)!r}: cv.json cannot be read ({e}); run the cross-validation "
                          "again") from e
    if scheme.get("folds_done", len(fold_list)) != scheme.get("folds"):
        raise MmfuseError(f"trial folder {str(path)!r} finished {scheme.get('folds_done')} of {scheme.get('folds')} "
                          "folds; finish its cross-validation (run it again: it resumes) or leave it out")
    folds = [f"fold_{f['fold'] + 1}" for f in fold_list]
    tasks, fusion = [], None
    for name in folds:
        cfg_path = path / name / "bundle" / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
            tasks.append(task_from_dict(cfg["target"], cfg.get("decision_threshold")))
            fusion = fusion or cfg["model"]["model"].get("fusion")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MmfuseError(f"trial folder {str(path)!r}: the bundle of {name} cannot be read ({cfg_path}: "
                              f"{type(e).__name__}: {e}); run its cross-validation again") from e
    oof = pd.read_csv(path / "oof.csv")
    if "row" not in oof.columns or "target" not in oof.columns or oof["row"].duplicated().any():
        raise MmfuseError(f"trial folder {str(path)!r}: oof.csv is not one line per row with 'row' and 'target' "
                          "columns; run its cross-validation again")
    return _Trial(path, cv, oof, folds, tasks, fusion)


def _aligned_frames(trials: list[_Trial]) -> list[pd.DataFrame]:
    """Every trial's out-of-fold predictions in the first trial's row order; an error unless all
    cover the same rows with the same targets."""
    ref = trials[0]
    rows = ref.oof["row"]
    out = []
    for t in trials:
        have = set(t.oof["row"])
        if have != set(rows):
            only_t, only_ref = sorted(have - set(rows), key=str), sorted(set(rows) - have, key=str)
            raise MmfuseError(f"trials {str(ref.path)!r} and {str(t.path)!r} predicted different rows out of fold "
                              f"({len(rows)} and {len(have)} rows; only in the second: {only_t[:5]}, only in the "
                              f"first: {only_ref[:5]}); ensemble trials cross-validated on the same table")
        frame = t.oof.set_index("row").loc[rows].reset_index()
        if not (frame["target"].astype(str).to_numpy() == ref.oof["target"].astype(str).to_numpy()).all():
            raise MmfuseError(f"trials {str(ref.path)!r} and {str(t.path)!r} have other targets for the same rows; "
                              "ensemble trials cross-validated on the same table and target")
        if not (frame["fold"].to_numpy() == ref.oof["fold"].to_numpy()).all():
            raise MmfuseError(f"trials {str(ref.path)!r} and {str(t.path)!r} put the same rows in other folds (another "
                              "seed or fold scheme); ensemble trials cross-validated on the same folds, so that each "
                              "fold's rows are held out of every member's model of that fold")
        out.append(frame)
    return out


def _scores(task, proba: np.ndarray, frame: pd.DataFrame) -> tuple[dict, dict]:
    """The task's metrics of the prediction ``proba`` on the out-of-fold rows: pooled over all rows,
    and per fold (summarized as in cv.json)."""
    from .cv import summarize_folds

    y = task.transform(frame[["target"]].rename(columns={"target": task.column}))
    pooled = task.metrics(task.logits_of(proba), y)
    per_fold = []
    for f in sorted(frame["fold"].unique()):
        at = (frame["fold"] == f).to_numpy()
        per_fold.append(task.metrics(task.logits_of(proba[at]), y[at]))
    numeric = {k: v for k, v in pooled.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return numeric, summarize_folds(per_fold)


def _nested_scores(task, probas, y, loss, size: int, frame: pd.DataFrame) -> dict:
    """The selection cross-validated: for each fold, :func:`ensemble_selection` on the other folds'
    out-of-fold rows, its weights applied to this fold's rows and scored there (summarized as in cv.json)."""
    from .cv import summarize_folds

    folds = frame["fold"].to_numpy()
    per_fold = []
    for f in sorted(np.unique(folds)):
        at = folds == f
        if at.all():  # one fold only: nothing to choose on but its own rows
            sel = ensemble_selection(probas, y, loss, size)
        else:
            sel = ensemble_selection([p[~at] for p in probas], y[~at], loss, size)
        proba = sum(w * p[at] for w, p in zip(sel.weights, probas) if w > 0)
        per_fold.append(task.metrics(task.logits_of(proba), y[at]))
    return summarize_folds(per_fold)


def build_ensemble(trial_dirs: list[Path], size: int, out: Path, echo=None, metric: str | None = None) -> dict:
    """Greedy ensemble selection over finished cross-validation runs, saved as one ensemble folder.

    Reads each trial's ``oof.csv`` and ``cv.json``, runs :func:`ensemble_selection` (``size``
    steps; the metric: :data:`SELECTION_LOSS`), and writes an :class:`EnsemblePredictor` at
    ``out`` whose members are the selected trials, each with copies of its fold bundles.

    The ensemble decodes with the task of its first member's first fold bundle (every fold bundle must
    have the same classes); its decision threshold(s), where the task has one, are the weighted
    mean of its fold bundles' thresholds.

    Args:
        trial_dirs: Cross-validation run folders (:func:`mmfuse.cross_validate` ``out``), all on
            the same rows of the same table; every fold finished.
        size: Steps of the selection; weights are multiples of ``1 / size``.
        out: The ensemble folder to write (replaced when it holds an ensemble).
        echo: Called with one line per event.
        metric: The metric reported and compared with the best trial (default: the task's headline).
            The selection itself always minimizes :data:`SELECTION_LOSS`.

    Returns:
        ``members`` (``trial_dir``, ``weight``, ``folds``), ``score`` and ``std`` (of ``metric`` over
        the folds, the selection cross-validated: each fold's weights chosen on the other folds' rows),
        ``summary`` (every metric's mean, std and median, cross-validated likewise), ``cv`` (the saved
        weights' metrics averaged over the folds: optimistic, they were chosen on these rows), ``pooled``
        (the saved weights over all out-of-fold rows at once), ``metric``,
        ``trials`` (every candidate's weight and its own cv.json mean), ``selection`` (picks,
        scores, the loss), ``bundle`` (``out``) and ``note`` (the weights were chosen on these rows).
    """
    say = echo or (lambda line: None)
    trials = [_read_trial(Path(d)) for d in trial_dirs]
    if not trials:
        raise MmfuseError("build_ensemble needs at least one finished trial folder; got none")
    frames = _aligned_frames(trials)
    ref = trials[0].tasks[0]
    for t in trials:
        for name, task in zip(t.folds, t.tasks):
            if task.column != ref.column or task.classes_ != ref.classes_:
                raise MmfuseError(f"trial {str(t.path)!r} {name} predicts {task.column!r} with the classes "
                                  f"{task.classes_}; trial {str(trials[0].path)!r} {ref.column!r} with {ref.classes_}. "
                                  "Ensemble members must share the target and its classes")
    probas = [ref.proba_of_frame(f) for f in frames]
    bad = np.zeros(len(frames[0]), bool)
    for p in probas:  # rows a trial skipped as bad input (on_bad_input="skip") have no prediction
        bad |= ~np.isfinite(np.asarray(p, float)).reshape(len(bad), -1).all(1)
    if bad.all():
        raise MmfuseError("every out-of-fold row lacks a prediction in some trial (skipped as bad input?); "
                          "nothing to choose the ensemble on")
    if bad.any():
        rows = frames[0]["row"][bad].tolist()
        say(f"ensemble: {int(bad.sum())} rows without a prediction in some trial (skipped as bad input) are left "
            f"out of the selection: {', '.join(map(str, rows[:10]))}{', ...' if len(rows) > 10 else ''}")
        frames = [f[~bad].reset_index(drop=True) for f in frames]
        probas = [np.asarray(p)[~bad] for p in probas]
    y = torch.as_tensor(ref.transform(frames[0][["target"]].rename(columns={"target": ref.column})))
    loss = lambda p, t: float(ref.loss(ref.logits_of(p), t))  # noqa: E731
    sel = ensemble_selection(probas, y, loss, size)
    chosen = [i for i in range(len(trials)) if sel.weights[i] > 0]

    task = trials[chosen[0]].tasks[0]
    if task.threshold is not None:  # the members' thresholds, weighted as their predictions are
        ts = [(sel.weights[i] / len(trials[i].tasks), np.asarray(t.threshold, float)) for i in chosen
              for t in trials[i].tasks]
        task.set_threshold(np.average([t for _, t in ts], axis=0, weights=[w for w, _ in ts]).tolist())
    proba = sum(sel.weights[i] * probas[i] for i in chosen)
    pooled, optimistic = _scores(task, proba, frames[0])
    metric = metric or task.headline
    if metric not in optimistic:
        from ._registry import unknown_name_message

        raise MmfuseError(unknown_name_message("metric", metric, list(optimistic)))
    cv = {k: s["mean"] for k, s in optimistic.items()}
    summary = _nested_scores(task, probas, y, loss, size, frames[0])
    members = [{"name": trials[i].path.name, "trial_dir": str(trials[i].path), "weight": float(sel.weights[i]),
                "folds": trials[i].folds, "fusion": trials[i].fusion} for i in chosen]
    meta = {"format": ENSEMBLE_FORMAT, "kind": "ensemble", "mmfuse_version": _version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "task": task.to_dict(), "metric": metric,
            "members": members,
            "selection": {"method": "greedy forward selection with replacement (Caruana et al. 2004)", "size": size,
                          "loss": SELECTION_LOSS, "candidates": [str(t.path) for t in trials],
                          "picks": [str(trials[i].path) for i in sel.picks], "scores": sel.scores},
            "cv": cv, "note": NOTE}

    def fill(tmp: Path):
        for j, i in enumerate(chosen):
            for name in trials[i].folds:
                shutil.copytree(trials[i].path / name / "bundle", tmp / "members" / str(j) / name)

    _write_ensemble(Path(out), meta, fill)
    from .tasks import higher_is_better

    best = max(trials, key=lambda t: _mean(t, metric) * (1 if higher_is_better(metric) else -1))
    say(f"ensemble of {len(chosen)} of {len(trials)} trials: " +
        ", ".join(f"{m['name']} ×{m['weight']:.2f}" for m in members) +
        f"; {metric} {summary[metric]['mean']:.4f} ± {summary[metric]['std']:.4f} (mean over folds, each fold's "
        f"weights chosen on the other folds) vs the best trial {best.path.name} {_mean(best, metric):.4f}; "
        f"written: {out}")
    return {"members": [{k: m[k] for k in ("trial_dir", "weight", "folds")} for m in members], "cv": cv,
            "score": summary[metric]["mean"], "std": summary[metric]["std"],
            "summary": summary, "pooled": pooled, "metric": metric, "bundle": str(out),
            "trials": [{"trial_dir": str(t.path), "weight": float(sel.weights[i]), "cv": _mean(t, metric)}
                       for i, t in enumerate(trials)],
            "selection": meta["selection"], "note": NOTE}


def _mean(trial: _Trial, metric: str) -> float:
    """The trial's own cross-validated mean of ``metric`` (its cv.json), NaN when it lacks it."""
    v = (trial.cv.get("summary") or {}).get(metric, {}).get("mean")
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _version() -> str:
    from . import __version__

    return __version__
