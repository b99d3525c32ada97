"""Hyperparameter search with Optuna: ``mmfuse.search`` and ``mmfuse search``.

A search space names :class:`~mmfuse.MultimodalPredictor` parameters and the values to try
(``search_space.yaml`` next to this file is the default: fusion, widths, dropout, modality
dropout, learning rate, epochs). Each trial is a clone of the estimator with the sampled
parameters, scored by cross-validation (:func:`mmfuse.cross_validate`: the mean of the task's
headline metric over the folds, their spread kept beside it) or, faster, by one fit scored on
its validation rows::

    from mmfuse import MultimodalPredictor, search
    res = search(MultimodalPredictor(target="label"), "data.csv", n_trials=30, folds=5, out="runs/search")
    res.best_params, res.best_value    # also out/leaderboard.md, out/best_config.yaml, out/best/bundle

The study lives in Optuna storage, SQLite in ``out/study.db`` unless ``storage`` names another
(``postgresql+psycopg://user@host/db``): a killed search resumes where it stopped, and several
processes or machines given the same storage and study name share one study. The module is
named ``tuning`` rather than ``search`` so that ``mmfuse.search`` stays the function.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import Interrupted, MmfuseError
from .io import save_figure

__all__ = ["search", "SearchResult", "load_space", "DEFAULT_SPACE", "OBJECTIVES"]

DEFAULT_SPACE = Path(__file__).with_name("search_space.yaml")
OBJECTIVES = ("cv", "val")
_TYPES = ("float", "int", "categorical")
_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
         "categorical": {"type", "choices"}}
_RUN_OWNED = ("target", "out", "resume", "root")  # set by the search itself, never searched
HEARTBEAT_S = 5  # a running trial writes a heartbeat to the storage this often ...
GRACE_S = 30  # ... and one silent this long belongs to a dead process: it is marked failed
_POLL_S = 2.0  # how often a worker looks again while the other workers' trials finish the budget


# --- the search space ---------------------------------------------------------------------
def load_space(space=None) -> dict:
    """Read and check a search space: None (the packaged default), a YAML/JSON file or a mapping.

    Returns:
        ``{parameter: spec}`` with each spec complete: ``{"type": "float", "low", "high", "log",
        "step"}``, ``{"type": "int", ...}`` or ``{"type": "categorical", "choices": [...]}``; the
        key ``encoders`` maps inputs or modalities to a categorical spec of encoder choices.

    Raises:
        MmfuseError: one line naming the key and what is wrong (an unknown parameter gets the
            closest name).
    """
    from ._registry import unknown_name_message
    from .api import MultimodalPredictor
    from .io import read_mapping_file

    where = "the default search space" if space is None else "search space"
    if space is None or isinstance(space, (str, os.PathLike)):
        path = DEFAULT_SPACE if space is None else Path(space)
        where = f"search space {str(path)!r}"
        if space is not None and not path.exists() and path.suffix == "" and len(str(space)) < 12:
            raise MmfuseError(unknown_name_message("search space (a YAML/JSON file, or 'alpha')", str(space),
                                                   ["alpha"]))
        raw = read_mapping_file(path, "search space")
    elif isinstance(space, dict):
        raw = space
    else:
        raise MmfuseError(f"search space must be a YAML/JSON file or a mapping, got {type(space).__name__}")
    if not raw:
        raise MmfuseError(f"{where} is empty: name at least one MultimodalPredictor parameter to search")
    names = [n for n in MultimodalPredictor._param_names() if n not in _RUN_OWNED]
    out = {}
    raw = dict(raw)
    for section in ("model", "train"):  # the nested form of config files: model: {dropout: ...}
        if isinstance(raw.get(section), dict) and "type" not in raw[section]:
            raw.update(raw.pop(section))
    raw = {k.split(".", 1)[1] if k.startswith(("model.", "train.")) else k: v for k, v in raw.items()}  # model.dropout
    for name, spec in raw.items():
        if name == "seed":
            raise MmfuseError(f"{where}: 'seed' cannot be searched: it also draws the folds, and trials scored on "
                              "other folds cannot be compared (or ensembled); give --seed instead")
        if name not in names:
            raise MmfuseError(f"{where}: " + unknown_name_message("parameter of MultimodalPredictor", name, names))
        if name == "encoders" and isinstance(spec, dict) and "type" not in spec:
            if not spec:
                raise MmfuseError(f"{where}: 'encoders' lists no input or modality")
            out[name] = {inp: _parse_spec(f"encoders.{inp}", {"type": "categorical", "choices": c}
                                          if isinstance(c, list) else c, where) for inp, c in spec.items()}
        else:
            out[name] = _parse_spec(name, spec, where)
    return out


def _parse_spec(name: str, spec, where: str) -> dict:
    from ._registry import unknown_name_message

    if not isinstance(spec, dict) or "type" not in spec:
        raise MmfuseError(f"{where}: {name!r} must be a mapping with a type, e.g. {{type: float, low: 0.0, high: 0.5}}"
                          f", {{type: int, low: 1, high: 8}} or {{type: categorical, choices: [a, b]}}; got {spec!r}")
    kind = spec["type"]
    if kind not in _TYPES:
        raise MmfuseError(f"{where}: {name!r}: " + unknown_name_message("type", kind, _TYPES))
    extra = set(spec) - _KEYS[kind]
    if extra:
        raise MmfuseError(f"{where}: {name!r}: " + unknown_name_message(f"key of a {kind} range", sorted(extra)[0],
                                                                        _KEYS[kind]))
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise MmfuseError(f"{where}: {name!r}: choices must be a non-empty list, got {choices!r}")
        return {"type": kind, "choices": choices}
    low, high = spec.get("low"), spec.get("high")
    num = (int,) if kind == "int" else (int, float)
    if not all(isinstance(v, num) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise MmfuseError(f"{where}: {name!r}: a {kind} range needs numbers low <= high, got low={low!r} high={high!r}")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise MmfuseError(f"{where}: {name!r}: step must be a number > 0, got {step!r}")
    if log and (low <= 0 or step is not None):
        raise MmfuseError(f"{where}: {name!r}: log: true needs low > 0 and no step, got low={low!r} step={step!r}")
    return {"type": kind, "low": low, "high": high, "log": log, "step": step if step is not None or kind == "float"
            else 1}


def _label(choice) -> Any:
    """Optuna's categorical choices are None, bool, int, float or str: a mapping or list becomes its JSON."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice, sort_keys=True)


def _suggest(trial, name: str, spec: dict):
    if spec["type"] == "categorical":
        labels = [_label(c) for c in spec["choices"]]
        return spec["choices"][labels.index(trial.suggest_categorical(name, labels))]
    if spec["type"] == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], step=spec["step"], log=spec["log"])
    return trial.suggest_float(name, spec["low"], spec["high"], step=spec["step"], log=spec["log"])


def sample_params(trial, space: dict, base_encoders: dict | None = None) -> dict:
    """The MultimodalPredictor parameters of one trial (Optuna's param names: the space's keys,
    ``encoders.<input>`` for encoder choices; a null encoder choice keeps the default)."""
    params = {}
    for name, spec in space.items():
        if name == "encoders" and "type" not in spec:
            enc = dict(base_encoders or {})
            for inp, s in spec.items():
                choice = _suggest(trial, f"encoders.{inp}", s)
                if choice is None:
                    enc.pop(inp, None)
                else:
                    enc[inp] = choice
            params["encoders"] = enc
        else:
            params[name] = _suggest(trial, name, spec)
    return params


def _check_space_values(estimator, space: dict) -> None:
    """Every categorical choice and range end is a valid setting (checked now, not in trial 12)."""
    for name, spec in space.items():
        specs = spec.items() if name == "encoders" and "type" not in spec else [(None, spec)]
        for inp, s in specs:
            values = s["choices"] if s["type"] == "categorical" else [s["low"], s["high"]]
            for v in values:
                value = {inp: v} if inp is not None else v
                if inp is not None and v is None:
                    continue
                try:
                    _clone(estimator, {name: value}).configs()
                except MmfuseError as e:
                    raise MmfuseError(f"search space: {name}{'.' + inp if inp else ''} value {v!r}: {e}") from None


def _clone(estimator, params: dict):
    return type(estimator)(**{**estimator.get_params(), **params})


# --- result ---------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        study: The Optuna study (every trial, in its storage).
        metric, direction: The headline metric compared and ``maximize``/``minimize``.
        best_value, best_params: The best trial's score and MultimodalPredictor parameters.
        best_trial: Its Optuna number.
        leaderboard: One row per trial, best first (also ``leaderboard.csv`` / ``.md``).
        best_estimator: The best configuration refit on the rows (``out/best``); loaded from ``out/best/bundle``
            when an earlier run (or another worker) already refit that trial; None without ``refit``, or while
            another worker refits it.
        ensemble: What the ensemble step returned, or None.
        out: The output folder.
    """

    study: Any
    metric: str
    direction: str
    best_value: float | None
    best_params: dict
    best_trial: int | None
    leaderboard: Any
    best_estimator: Any
    ensemble: dict | None
    out: Path


# --- the search -----------------------------------------------------------------------------
def search(estimator, data, *, space=None, n_trials: int | None = None, timeout: float | None = None, storage=None,
           study_name: str | None = None, objective: str = "cv", folds: int = 5, group_column: str | None = None,
           leave_one_out: str | None = None, out="runs/search", jobs: int = 1, seed: int = 0, ensemble: int = 0,
           echo: Callable[[str], None] | None = None, sampler=None, pruner=None, refit: bool = True,
           fixed: Sequence[str] = (), overwrite: bool = False, metric: str | None = None) -> SearchResult:
    """Search the estimator's parameters with Optuna.

    Args:
        estimator: A :class:`~mmfuse.MultimodalPredictor`; its parameters are the starting point, the
            space's keys are overwritten per trial.
        data: The table (path, DataFrame or :class:`~mmfuse.io.Table`).
        space: A YAML/JSON file or a mapping (:func:`load_space`); None: the packaged default.
            ``"alpha"``: sweep the fixed weights of ``weighted`` fusion instead
            (:func:`mmfuse.alpha.search_alpha`).
        n_trials: The budget: the study's finished (complete or pruned) trials, counted over every
            process that works on it; a resumed search runs only the remainder. None: 20.
        timeout: Stop starting trials after this many seconds (this process).
        storage: An Optuna storage URL (``sqlite:///file.db``, ``postgresql+psycopg://...``) or
            storage object; None: ``sqlite:///<out>/study.db``.
        study_name: The study's name in the storage (default ``mmfuse``).
        objective: ``cv``: the mean over ``folds`` held-out folds (:func:`mmfuse.cross_validate`, the
            trial's folds in ``out/trials/trial_<n>``); ``val``: one fit scored on its validation rows.
        folds, group_column, leave_one_out, jobs: As for :func:`mmfuse.cross_validate` (``cv``).
        seed: The sampler's seed (with a shared ``storage``, plus this process's id, so that workers
            do not propose the same first trials). The estimator's own ``seed`` seeds each fit.
        ensemble: K > 0: greedy ensemble selection (:func:`mmfuse.ensemble.build_ensemble`) of size K over
            the complete trials' out-of-fold predictions (``objective="cv"`` only), saved in ``out/ensemble``
            and listed on the leaderboard (trial ``ensemble``, its mean and std over the folds, its members).
        echo: Called with one line per event.
        overwrite: Start afresh: an Optuna search deletes the study and the files of an earlier search in ``out``
            (its ``study.db``, trials, leaderboard, best and ensemble; not with a shared ``storage``);
            ``space="alpha"`` replaces its cross-validation runs made with other settings. Without it, a
            search in the same ``out`` resumes.
        fixed: Settings not to search even when the space lists them (the command line passes the options
            the user gave, such as ``--epochs``); the estimator's values are used.
        sampler, pruner: Optuna objects; defaults ``TPESampler(seed)`` and ``MedianPruner`` (5 startup
            trials; pruning from epoch 4 with ``val``, from the second finished fold with ``cv``).
        refit: Refit the best configuration on the rows and save it to ``out/best/bundle``.
        metric: The metric trials are compared by, and the ensemble reported in (default: the task's
            headline, e.g. ``accuracy`` for multiclass; ``macro_f1`` for imbalanced classes, ``log_loss``...);
            maximized or minimized as the metric wants. With ``val``, pruning needs it among the
            per-epoch metrics (``accuracy``, ``macro_f1``, ``loss``-like ones); otherwise a trial is not pruned.

    Pruning: with ``val`` a Lightning callback reports each epoch's validation headline metric
    (``trial.report(value, epoch)``) and stops a trial the pruner prunes. With ``cv`` the trial
    reports the running mean of the headline metric over the folds finished so far (step = their
    count), after each fold: the same folds in the same order for every trial (``jobs=1``).

    Resuming: finished trials are kept in the storage and not run again. A trial left running by
    a killed process stops sending heartbeats; after :data:`GRACE_S` seconds the next trial start of
    any worker marks it failed, and its place in the budget is run again with new parameters.

    Returns:
        A :class:`SearchResult`; ``out`` holds ``leaderboard.csv``, ``leaderboard.md``,
        ``best_config.yaml`` (for ``mmfuse fit --config``), ``best/bundle`` and ``param_importance.png``.
    """
    from .cv import with_group_role

    # the group column is never an input, and every split made here (trials, val objective, refit,
    # best_config.yaml) keeps a group's rows together
    estimator = with_group_role(estimator, leave_one_out or group_column)
    estimator.configs()  # the settings every trial starts from, checked once (not blamed on a space value)
    if isinstance(space, str) and space == "alpha":
        given = [n for n, v in (("--ensemble", ensemble), ("--storage", storage), ("--study-name", study_name),
                                ("--n-trials", n_trials), ("--timeout", timeout)) if v]
        if given:
            raise MmfuseError(f"--space alpha sweeps a fixed grid of weights by cross-validation (its cost is one "
                              f"cross-validation); leave out {', '.join(given)}: "
                              f"{'it belongs' if len(given) == 1 else 'they belong'} to the Optuna search")
        if metric is not None:
            from .tasks import check_metric_name

            check_metric_name(metric)
        if objective != "cv":
            raise MmfuseError(f"space 'alpha' scores every weight by cross-validation; objective {objective!r} does not "
                              "apply to it (leave --objective out)")
        try:
            from .alpha import search_alpha
        except ImportError as e:
            raise MmfuseError(f"--space alpha needs mmfuse.alpha.search_alpha, which is not available ({e})") from None
        return search_alpha(estimator, data, folds=folds, group_column=group_column, leave_one_out=leave_one_out,
                            out=out, jobs=jobs, overwrite=overwrite, echo=echo, metric=metric)
    optuna = _import_optuna()
    from . import pipeline as P
    from ._registry import unknown_name_message
    from .io import read_table
    from .tasks import TASKS

    say = echo or (lambda line: None)
    if objective not in OBJECTIVES:
        raise MmfuseError(unknown_name_message("search objective", objective, OBJECTIVES))
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise MmfuseError(f"timeout must be a number of seconds > 0 (or None: no limit), got {timeout!r}")
    n_trials = 20 if n_trials is None else n_trials
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise MmfuseError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 0:
        raise MmfuseError(f"ensemble must be an integer >= 0 (the greedy steps; 0: no ensemble), got {ensemble!r}")
    if metric is not None:
        from .tasks import check_metric_name

        check_metric_name(metric)
    if ensemble and objective != "cv":
        raise MmfuseError("ensemble needs out-of-fold predictions: use objective='cv' (--objective cv) with --ensemble")
    build_ensemble = _ensemble_builder() if ensemble else None
    space = load_space(space)
    for name in fixed:  # settings the user fixed (command-line options) are not searched
        if space.pop(name, None) is not None:
            say(f"note: {name} is fixed at {getattr(estimator, name)!r} (given as an option), not searched")
    if not isinstance(jobs, int) or jobs < 1:
        raise MmfuseError(f"jobs must be an integer >= 1, got {jobs!r}")
    if not space:
        raise MmfuseError("the search space has no parameter left to search" + (
            f" (the options given fix {', '.join(fixed)})" if fixed else "") + "; list parameters in the space file")
    _check_space_values(estimator, space)
    out = Path(out)
    table = read_table(data, root=estimator.root)
    # the settings every trial shares are checked once, before any trial (a wrong column is not 3 failed trials)
    P.select_inputs(table, estimator.target, estimator.columns, estimator.groups, estimator.schema_file,
                    estimator.inputs)
    if objective == "cv":  # the folds too: a class in one fold only, too many folds, blank groups ...
        from .cv import plan_folds

        plan_folds(estimator, table, folds, group_column, leave_one_out)
    task_cls = TASKS.get(estimator.task or P.infer_task_of(table, estimator.target))
    from .tasks import higher_is_better

    metric = metric or task_cls.headline
    direction = "maximize" if higher_is_better(metric) else "minimize"

    shared = storage is not None
    if overwrite:
        _clear_search(out, shared, say)
    out.mkdir(parents=True, exist_ok=True)  # every check above passed: now the search writes
    _claim_out(out, storage if shared else "sqlite:///<out>/study.db", study_name or "mmfuse")
    study, heartbeats = _open_study(optuna, storage if shared else f"sqlite:///{(out / 'study.db').resolve()}",
                        study_name or "mmfuse", direction, metric, sampler, pruner, objective,
                        seed + (os.getpid() if shared else 0))
    if sampler is None:  # a resumed study must not replay the draws of its first run: salt the seed with its size
        study.sampler = optuna.samplers.TPESampler(seed=seed + (os.getpid() if shared else 0) + len(study.trials))
    _check_same_search(study, {
        "data": _data_fingerprint(table.df), "target": estimator.target, "space": _jsonable(space),
        "scheme": {"objective": objective, "folds": folds, "group_column": group_column, "leave_one_out": leave_one_out,
                   "metric": metric},
        "settings": _jsonable({k: v if v or v in (0, False) else None for k, v in estimator.get_params().items()
                               if k not in space and k not in _NOT_SETTINGS})})  # {} and [] count as None
    say(f"search: {len(space)} parameters, objective {objective} ({metric}, {direction}), budget {n_trials} trials; "
        f"study {study.study_name!r} in {storage if shared else out / 'study.db'}")
    done, running = _counts(optuna, study)
    if done or running:
        say(f"resuming: {done} trials finished earlier" + (f", {running} running in other workers" if running else "")
            + (f"; {max(0, n_trials - done - running)} to run" if done + running < n_trials else
               "; the budget is already met (raise --n-trials to run more)"))
    if objective == "val":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            schema, _ = P.select_inputs(table, estimator.target, estimator.columns, estimator.groups,
                                         estimator.schema_file, estimator.inputs)
            P.split_table(table, schema, estimator.target, estimator.task, None, None, estimator.val_fraction, 0.0,
                           estimator.seed)
        for w in caught:
            if "validation split is small" in str(w.message):
                say(f"note: {w.message}")
    fixed = dict(progress=False, resume=False)
    failures, unknown_metric, current = [], [], {}

    def run_trial(trial):
        if _surplus(optuna, study, trial, n_trials):
            trial.set_user_attr("surplus", True)  # the budget is done or being done by other workers
            study.stop()
            raise _Surplus()
        current["trial"] = trial
        params = sample_params(trial, space, estimator.encoders)
        trial.set_user_attr("settings", _jsonable(params))
        tdir = out / "trials" / f"trial_{trial.number}"
        est = _clone(estimator, {**params, **fixed})
        t0 = time.perf_counter()
        say(f"trial {trial.number}: {_short(params)}")
        try:
            if objective == "cv":
                from .cv import cross_validate

                res = cross_validate(est, table, folds=folds, group_column=group_column, leave_one_out=leave_one_out,
                                     out=tdir, jobs=jobs, overwrite=True, echo=_FoldReporter(optuna, trial, tdir, metric))
                found = res.summary
                s = res.summary.get(metric)
                value, std = (s["mean"], s["std"]) if s else (float("nan"), float("nan"))
                trial.set_user_attr("fold_std", std)
            else:  # no test rows are held out of a trial: nothing would use them
                est.set_params(out=tdir, test_fraction=0.0)
                with warnings.catch_warnings():  # said once, before the first trial, not per trial
                    warnings.filterwarnings("ignore", message=".*validation split is small")
                    est.fit(table, callbacks=[_pruning_callback(optuna, trial, f"val_{metric}")])
                found = est.metrics_["val"]
                value = found.get(metric, float("nan"))
            if metric not in found:
                unknown_metric[:] = [k for k, v in found.items() if isinstance(v, (int, float)) or
                                     (isinstance(v, dict) and "mean" in v)]
                study.stop()
                raise _TrialFailed()
        except (optuna.TrialPruned, _TrialFailed, _Surplus, Interrupted):
            raise
        except Exception as e:  # a setting this data cannot train with (diverged, out of memory): a failed trial;
            msg = str(e) if isinstance(e, MmfuseError) else f"{type(e).__name__}: {e}"  # 3 in a row stop the search
            trial.set_user_attr("error", msg)
            failures.append(msg)
            say(f"trial {trial.number}: failed: {msg}")
            raise _TrialFailed() from None
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        failures.clear()
        say(f"trial {trial.number}: {metric} {value:.4f}" + (f" ± {std:.4f}" if objective == "cv" else ""))
        return value

    def after_trial(study_, frozen):
        if frozen.state == optuna.trial.TrialState.PRUNED:
            say(f"trial {frozen.number}: pruned at step {frozen.last_step}")
        if len(failures) >= 3:
            study_.stop()
        elif not _wait_for_budget(optuna, study_, n_trials, deadline, heartbeats):
            study_.stop()

    deadline = None if timeout is None else time.monotonic() + timeout
    if _wait_for_budget(optuna, study, n_trials, deadline, heartbeats):
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's outcome is one line of ours (say)
        try:
            study.optimize(run_trial, timeout=timeout, callbacks=[after_trial], catch=(_Surplus, _TrialFailed))
        except (KeyboardInterrupt, SystemExit, Interrupted) as e:  # Lightning: Ctrl-C in a fit -> SystemExit(1)
            if isinstance(e, SystemExit) and e.code in (0, None):
                raise
            _interrupted(optuna, study, current, storage if shared else out / "study.db")
        finally:
            optuna.logging.set_verbosity(level)
    if unknown_metric:
        raise MmfuseError(f"metric {metric!r} is not reported for this task; its metrics: {', '.join(unknown_metric)}")
    if len(failures) >= 3:
        raise MmfuseError(f"search stopped: 3 trials in a row failed; the last: {failures[-1]}")
    return _finish(optuna, study, estimator, table, space, metric, direction, objective, out, ensemble,
                   build_ensemble, refit, say)


_NOT_SETTINGS = ("out", "resume", "progress", "log")


def _interrupted(optuna, study, current: dict, where) -> None:
    """Ctrl-C: the trial it stopped is marked failed (its place in the budget runs again, with new settings,
    when the search resumes), then one line says what is kept."""
    trial = current.get("trial")
    S = optuna.trial.TrialState
    if trial is not None:
        try:
            if study._storage.get_trial(trial._trial_id).state == S.RUNNING:
                study._storage.set_trial_state_values(trial._trial_id, state=S.FAIL)
        except Exception:  # the storage itself is unreachable: the heartbeat grace period will fail it
            pass
    done = len([t for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED))
                if not t.user_attrs.get("surplus")])
    raise Interrupted(f"search interrupted: {done} finished trials are kept in {where}; the same command resumes "
                      "the study (the interrupted trial runs again, with new settings)") from None
_OUT_FILE = "search.json"


_SEARCH_FILES = ("study.db", "search.json", "leaderboard.csv", "leaderboard.md", "best_config.yaml",
                 "param_importance.png", "trials", "best", "ensemble", ".refit.lock")


def _clear_search(out: Path, shared: bool, say) -> None:
    """``overwrite``: delete an earlier search's files in ``out`` (only those a search writes)."""
    import shutil

    if shared:
        raise MmfuseError("overwrite deletes the study in out/study.db; with a shared --storage it would delete "
                          "other workers' trials: delete that study with Optuna, or give another --study-name")
    gone = [n for n in _SEARCH_FILES if (out / n).exists()]
    for n in gone:
        shutil.rmtree(out / n) if (out / n).is_dir() else (out / n).unlink()
    if gone:
        say(f"overwrite: deleted the earlier search in {out} ({', '.join(gone)})")


def _claim_out(out: Path, storage, name: str) -> None:
    """``out`` holds one study's files (trials/trial_<n>, the leaderboard, best/): a second study there
    would overwrite its trial folders. The first search writes ``out/search.json``; another study is refused."""
    import re

    from .io import atomic_write_text

    where = storage if isinstance(storage, str) else f"{type(storage).__name__} object"
    where = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", where)  # no password in the file
    me = {"study_name": name, "storage": where}
    path = out / _OUT_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old != me:
            raise MmfuseError(f"{out} holds the files of study {old.get('study_name')!r} in {old.get('storage')}; "
                              f"study {name!r} in {where} would overwrite its trial folders. Give another --out "
                              "(or that --study-name and --storage, to resume it), or --overwrite to delete it")
    elif any((out / "trials").glob("trial_*")):
        raise MmfuseError(f"{out} holds trial folders of an earlier search without {_OUT_FILE}; give another --out")
    atomic_write_text(path, json.dumps(me))


def _data_fingerprint(df) -> str:
    from ._fingerprint import data_fingerprint

    return data_fingerprint(df)


def _check_same_search(study, what: dict) -> None:
    """A study resumed (or shared) must search the same data, space, objective and fixed settings: its trials'
    scores are compared with each other. The first process records them in the study."""
    old = study.user_attrs.get("search")
    if old is None:
        study.set_user_attr("search", what)
        return
    diff = [k for k in what if json.dumps(old.get(k), sort_keys=True) != json.dumps(what[k], sort_keys=True)]
    import optuna

    S = optuna.trial.TrialState
    if diff and not study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED)):
        study.set_user_attr("search", what)  # nothing finished to compare with: a corrected rerun takes the study over
        return
    if diff:
        raise MmfuseError(f"study {study.study_name!r} holds a search with other {', '.join(diff)}; its trials would "
                          "not compare with these: give another study name (--study-name) or output folder (--out), or "
                          "--overwrite to delete it and start afresh")


class _Surplus(Exception):
    """This trial would exceed the budget: recorded as failed with ``surplus``, and left off the leaderboard."""


class _TrialFailed(Exception):
    """A trial whose fit raised an MmfuseError (kept in the trial's ``error`` attribute)."""


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise MmfuseError("mmfuse search needs Optuna: pip install 'mmfuse[search]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _ensemble_builder():
    try:
        from .ensemble import build_ensemble
    except ImportError as e:
        raise MmfuseError(f"ensemble needs mmfuse.ensemble.build_ensemble, which is not available ({e}); "
                          "run the search without --ensemble") from None
    return build_ensemble


def _open_study(optuna, storage, name, direction, metric, sampler, pruner, objective, seed):
    """Create or load the study; a URL gets an RDB storage with heartbeats (dead workers' trials fail).

    Returns:
        (study, whether its storage records heartbeats)"""
    if isinstance(storage, str):
        kw = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {"pool_pre_ping": True}
        import warnings

        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # heartbeats are marked experimental
                    storage = optuna.storages.RDBStorage(storage, engine_kwargs=kw, heartbeat_interval=HEARTBEAT_S,
                                                         grace_period=GRACE_S)
                break
            except ModuleNotFoundError as e:
                raise MmfuseError(f"storage {storage!r} needs the database driver {e.name!r}: for PostgreSQL "
                                  "pip install 'psycopg[binary]' and use postgresql+psycopg://...") from None
            except Exception as e:  # SQLAlchemy's errors: bad URL, server down, no such database ...
                if attempt == 4:
                    raise MmfuseError(f"cannot open the search storage {storage!r}: "
                                      f"{' '.join(str(e).split())[:300]}") from None
                time.sleep(0.5 + attempt)  # ... or two workers creating the same new database's tables at once
    sampler = sampler or optuna.samplers.TPESampler(seed=seed)
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3 if objective == "val" else 2)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    except ValueError as e:
        raise MmfuseError(f"study {name!r}: {e}") from None
    S = optuna.trial.TrialState
    if study.direction.name.lower() != direction and not study.get_trials(deepcopy=False,
                                                                          states=(S.COMPLETE, S.PRUNED, S.RUNNING)):
        optuna.delete_study(study_name=name, storage=storage)  # only failed trials: a corrected rerun starts it anew
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner)
    if study.direction.name.lower() != direction:
        raise MmfuseError(f"study {name!r} in this storage {study.direction.name.lower()}s, but {metric} must be "
                          f"{direction}d: give another --study-name or --storage")
    study.set_user_attr("metric", metric)
    return study, bool(getattr(storage, "get_heartbeat_interval", lambda: None)())


def _counts(optuna, study, below: int | None = None) -> tuple[int, int]:
    """(finished, running) trials of the study (with ``below``: those numbered lower), surplus ones left out."""
    S = optuna.trial.TrialState
    done = running = 0
    for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING)):
        if (below is not None and t.number >= below) or t.user_attrs.get("surplus"):
            continue
        done += t.state != S.RUNNING
        running += t.state == S.RUNNING
    return done, running


def _surplus(optuna, study, trial, n_trials: int) -> bool:
    """This trial is beyond the budget: the trials numbered before it, finished or running, fill it."""
    done, running = _counts(optuna, study, below=trial.number)
    return done + running >= n_trials


def _wait_for_budget(optuna, study, n_trials: int, deadline, heartbeats: bool) -> bool:
    """True when another trial should start: fewer than ``n_trials`` are finished, and the finished ones
    with the running ones (of other workers) do not fill the budget. While they do, wait: a running
    trial may fail, or belong to a dead process (failed after :data:`GRACE_S` without heartbeat). A storage
    without heartbeats cannot tell a dead worker's trial from a live one: then this worker stops."""
    import datetime
    import warnings

    seen: set = set()
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fail_stale_trials and record_heartbeat are marked experimental
            if heartbeats:
                # optuna never finds a trial stale that has no heartbeat yet: a worker killed between creating
                # its trial and its first heartbeat left one running forever, and this loop waited forever. A
                # heartbeat recorded once, here, for a trial old enough to have sent its own, makes it stale after
                # GRACE_S if its process is dead (a live one keeps sending its own)
                now = datetime.datetime.now()
                for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                    if t._trial_id not in seen and t.datetime_start is not None and \
                            (now - t.datetime_start).total_seconds() > 2 * HEARTBEAT_S:
                        seen.add(t._trial_id)
                        study._storage.record_heartbeat(t._trial_id)
            optuna.storages.fail_stale_trials(study)
        done, running = _counts(optuna, study)
        if done >= n_trials:
            return False
        if done + running < n_trials:
            return True
        if not heartbeats or (deadline is not None and time.monotonic() > deadline):
            return False
        time.sleep(_POLL_S)


class _FoldReporter:
    """cross_validate's ``echo``: after each finished fold, report the running mean of the metric over the
    folds finished so far to the trial (step = their count), and stop the trial when the pruner says so."""

    def __init__(self, optuna, trial, tdir: Path, metric: str):
        self.optuna, self.trial, self.tdir, self.metric, self.seen = optuna, trial, tdir, metric, 0

    def __call__(self, line: str) -> None:
        by_fold = {}
        for p in self.tdir.glob("fold_*/fold.json"):
            try:
                v = json.loads(p.read_text())["metrics"].get(self.metric)
                k = int(p.parent.name.split("_")[1])
            except (OSError, ValueError, KeyError, IndexError):
                continue
            if isinstance(v, (int, float)) and math.isfinite(v):
                by_fold[k] = v
        values = []  # only the folds 1..n all finished: with --jobs, folds finish out of order, and every
        while len(values) + 1 in by_fold:  # trial's step n must average the same folds
            values.append(by_fold[len(values) + 1])
        if len(values) > self.seen:
            self.seen = len(values)
            self.trial.report(sum(values) / len(values), step=len(values))
            if self.trial.should_prune():
                raise self.optuna.TrialPruned(f"pruned after {len(values)} folds")


def _pruning_callback(optuna, trial, monitor: str):
    """A Lightning callback: after each validation epoch, ``trial.report(val metric, epoch)``; pruned -> stop."""
    from lightning.pytorch.callbacks import Callback

    class PruneOnEpoch(Callback):
        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or monitor not in trainer.callback_metrics:
                return
            epoch = trainer.current_epoch
            trial.report(float(trainer.callback_metrics[monitor]), step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

    return PruneOnEpoch()


# --- outputs --------------------------------------------------------------------------------
def _finish(optuna, study, estimator, table, space, metric, direction, objective, out: Path, ensemble, build_ensemble,
            refit, say) -> SearchResult:
    from .io import atomic_write_text

    S = optuna.trial.TrialState
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    complete = [t for t in trials if t.state == S.COMPLETE and t.value is not None and math.isfinite(t.value)]
    best = (max if direction == "maximize" else min)(complete, key=lambda t: t.value) if complete else None
    rows = [_row(t, objective) for t in trials]
    ens = None
    here = [t for t in complete if (out / "trials" / f"trial_{t.number}" / "cv.json").is_file()]
    if ensemble and len(here) < len(complete):  # run by other workers, on other machines or into another --out
        elsewhere = sorted(t.number for t in complete if t not in here)
        say(f"ensemble: {len(elsewhere)} complete trials have no folder in {out / 'trials'} (run by other workers "
            f"into another --out: {', '.join(map(str, elsewhere[:10]))}{', ...' if len(elsewhere) > 10 else ''}); "
            "they are left out of the ensemble")
    if ensemble and here:
        say(f"ensemble: greedy selection of size {ensemble} over {len(here)} complete trials")
        ens = build_ensemble([out / "trials" / f"trial_{t.number}" for t in here], ensemble, out / "ensemble",
                             echo=say, metric=metric)
        members = ", ".join(f"{Path(m['trial_dir']).name} x{m['weight']:.2f}" for m in ens.get("members", []))
        rows.append({"trial": "ensemble", "state": "complete", "value": ens.get("score"), "fold_std": ens.get("std"),
                     "seconds": None, "members": members})
    board = _leaderboard(rows, direction)
    atomic_write_text(out / "leaderboard.csv", board.to_csv(index=False))
    atomic_write_text(out / "leaderboard.md", _markdown(board, metric, direction, objective, study,
                                                         ens.get("note") if ens else None))
    best_params = dict(best.user_attrs.get("settings", {})) if best else {}
    best_est = None
    if best is not None:
        cfg = _nested_config(_clone(estimator, best_params))
        import yaml

        atomic_write_text(out / "best_config.yaml",
                          f"# best of {len(complete)} complete trials: trial {best.number}, {metric} {best.value:.4f} "
                          f"({objective}); mmfuse fit DATA --config best_config.yaml\n"
                          + yaml.safe_dump(cfg, sort_keys=False))
        if refit:
            best_est = _refit(estimator, best, best_params, table, out, say)
    note = _plot_importance(optuna, study, complete, out / "param_importance.png")
    if note:
        say(note)
    if best is not None:
        say(f"best: trial {best.number}, {metric} {best.value:.4f}; written: {out / 'leaderboard.md'}, "
            f"{out / 'best_config.yaml'}" + (f", {out / 'best' / 'bundle'}" if refit else ""))
    else:
        say(f"no trial completed; written: {out / 'leaderboard.md'}")
    return SearchResult(study, metric, direction, best.value if best else None, best_params,
                        best.number if best else None, board, best_est, ens, out)


def _refit(estimator, best, best_params: dict, table, out: Path, say):
    """Refit the best trial's configuration into ``out/best``, once: a finished search run again, or a second
    worker that shares ``out``, keeps the refit already there (``out/best/refit.json`` names its trial); while
    one worker refits, another (on this machine) leaves it to it instead of writing into the same folder."""
    from .api import MultimodalPredictor
    from .io import atomic_write_text

    best_dir, bundle = out / "best", out / "best" / "bundle"
    mark = {"trial": best.number, "value": best.value, "settings": _jsonable(best_params)}

    def done() -> bool:
        try:
            return json.loads((best_dir / "refit.json").read_text()) == mark and bundle.is_dir()
        except (OSError, ValueError):
            return False

    if done():
        say(f"refit: {bundle} already holds trial {best.number}'s refit; kept")
        return MultimodalPredictor.load(bundle)
    best_dir.mkdir(parents=True, exist_ok=True)
    with open(out / ".refit.lock", "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"refit: another worker is refitting into {best_dir}; this one leaves it to it")
            return None
        except ImportError:  # no fcntl (Windows): no lock
            pass
        if done():  # the other worker finished it while this one waited for the lock
            return MultimodalPredictor.load(bundle)
        (best_dir / "refit.json").unlink(missing_ok=True)
        say(f"refit: trial {best.number}'s configuration on the rows of the table -> {bundle}")
        est = _clone(estimator, {**best_params, "out": best_dir, "resume": False, "progress": False,
                                 "test_fraction": 0.0})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*validation split is small")
            est.fit(table)
        atomic_write_text(best_dir / "refit.json", json.dumps(mark, indent=1))
        return est


def _row(t, objective: str) -> dict:
    secs = t.user_attrs.get("seconds")
    if secs is None and t.datetime_start and t.datetime_complete:
        secs = (t.datetime_complete - t.datetime_start).total_seconds()
    settings = t.user_attrs.get("settings") or {}
    return {"trial": t.number, "state": t.state.name.lower(), "value": t.value,
            "fold_std": t.user_attrs.get("fold_std") if objective == "cv" else None, "seconds": secs,
            "pruned_at": t.last_step if t.state.name == "PRUNED" else None,
            **{f"param_{k}": json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
               for k, v in settings.items()}}


def _leaderboard(rows: list[dict], direction: str):
    import pandas as pd

    board = pd.DataFrame(rows).astype({"trial": str}) if rows else pd.DataFrame()
    if board.empty:
        return pd.DataFrame(columns=["trial", "state", "value", "fold_std", "seconds"])
    sign = -1 if direction == "maximize" else 1
    order = board["state"].map({"complete": 0, "pruned": 1}).fillna(2)
    key = board["value"].astype(float).mul(sign).fillna(math.inf)
    return board.assign(_o=order, _k=key).sort_values(["_o", "_k"], kind="stable").drop(columns=["_o", "_k"])


def _markdown(board, metric, direction, objective, study, note: str | None = None) -> str:
    what = "mean over the folds (± their std)" if objective == "cv" else "on the validation rows"
    lines = [f"# Search: study {study.study_name!r}", "",
             f"{metric} ({direction}), {what}. Best first; pruned and failed trials last.", ""]
    cols = list(board.columns)
    lines += ["| " + " | ".join(c.removeprefix("param_") for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in board.iterrows():
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    if note:
        lines += ["", f"Ensemble: {note}"]
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _nested_config(est) -> dict:
    """The estimator's settings in the format of ``--config`` files (run settings, ``model:``, ``train:``)."""
    from .api import _MODEL_FIELDS, _TRAIN_FIELDS

    params = {k: _jsonable(v) for k, v in est.get_params().items() if k not in ("out", "resume")}
    cfg = {k: v for k, v in params.items() if k not in _MODEL_FIELDS and k not in _TRAIN_FIELDS}
    cfg["model"] = {k: params[k] for k in _MODEL_FIELDS}
    cfg["train"] = {k: params[k] for k in _TRAIN_FIELDS}
    return cfg


def _plot_importance(optuna, study, complete, path: Path) -> str | None:
    """Optuna's parameter importances as a bar chart; a note instead when they cannot be measured."""
    varying = {k for t in complete for k in t.params if len({repr(u.params.get(k)) for u in complete}) > 1}
    if len(complete) < 2 or not varying:
        return (f"no parameter-importance plot: it needs 2 complete trials and a parameter that varies "
                f"({len(complete)} complete, {len(varying)} varying)")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "importances will be equal" on a handful of trials
            imp = optuna.importance.get_param_importances(study, params=sorted(varying))
    except (ValueError, RuntimeError) as e:
        return f"no parameter-importance plot: {e}"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no parameter-importance plot: pip install matplotlib"
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [imp[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
    ax.set_title(f"Parameter importance over {len(complete)} trials")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return None


def _short(params: dict) -> str:
    return ", ".join(f"{k}={_cell(v) if isinstance(v, float) else json.dumps(v) if isinstance(v, dict) else v}"
                     for k, v in params.items())


def _jsonable(v):
    from .cv import _jsonable as j

    return j(v)
