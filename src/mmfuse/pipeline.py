"""The steps of fitting a model, each public and usable on its own.

:meth:`mmfuse.MultimodalPredictor.fit` calls them in this order; cross-validation, search and
the benchmarks call the same steps (with other splits, settings or data)::

    table = read_table("data.csv")
    schema, inputs = select_inputs(table, "label")                           # 1. schema and inputs
    splits = split_table(table, schema, "label", seed=0)                      # 2. splits
    task = fit_target(splits.train, "label", splits.task)                    # 3a. the target
    preps = fit_preprocessors(schema, inputs, splits.train, splits.root, mcfg, tcfg)  # 3b. preprocessors
    data = make_datasets(splits, preps, task, tcfg)                          # 4. datasets and loaders
    model, spec = build_model(preps, task.n_outputs, mcfg)                   # 5. the model
    result = train(model, task, data, mcfg, tcfg, "runs/x")                  # 6. training
    predictor = Predictor(model, preps, task, schema, {"model": spec})
    metrics = choose_threshold_and_score(predictor, data, tcfg)              # 7. threshold, metrics
    predictor.save("runs/x/bundle")                                          # 8. the bundle
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ._build import build_model
from .config import ModelConfig, TrainConfig
from .errors import MmfuseError

__all__ = ["select_inputs", "infer_task_of", "Splits", "split_table", "fit_target", "fit_preprocessors", "FitData", "make_datasets",
           "build_model", "train", "choose_threshold_and_score", "fit_fingerprint",
           "describe_plan", "format_plan"]


# --- 1. schema and inputs -------------------------------------------------------------------
def select_inputs(table, target: str, columns: Mapping[str, str] | None = None, groups: Mapping[str, list] | None = None,
                  schema_file=None, inputs: Sequence[str] | None = None):
    """Infer the table's schema and keep only the inputs to use.

    Args:
        table: A :class:`~mmfuse.io.Table`.
        target: The target column.
        columns, groups, schema_file: Role overrides, input groups, and a schema file (see ``mmfuse inspect``).
        inputs: Input names to keep (default: all).

    Returns:
        ``(schema, inputs)``: the :class:`~mmfuse.schema.Schema`, with the columns that no kept input
        reads set to ``ignore``, and the sorted names of the kept inputs.
    """
    from ._registry import unknown_name_message
    from .schema import Role, Schema, infer_schema

    schema = infer_schema(table, target=target, overrides=columns, groups=groups, schema_file=schema_file)
    specs = schema.inputs()
    if inputs is not None:
        known = [s.name for s in specs]
        for n in inputs:
            if n not in known:
                raise MmfuseError(unknown_name_message("input", n, known))
        specs = [s for s in specs if s.name in inputs]
    if not specs:
        raise MmfuseError("the table has no input columns besides the target; check the roles with mmfuse inspect")
    used = {c for s in specs for c in s.columns}
    data_roles = (Role.TEXT, Role.IMAGE, Role.AUDIO, Role.NUMERIC, Role.CATEGORICAL, Role.TIMESERIES)
    roles = {c: (r if r not in data_roles or c in used else Role.IGNORE) for c, r in schema.roles.items()}
    reasons = {c: (schema.reasons.get(c, "") if roles[c] is r else f"not read by the chosen inputs (a {r.value} column)")
               for c, r in schema.roles.items()}
    names = {s.name for s in specs}
    return Schema(roles, reasons, {g: cols for g, cols in schema.groups.items() if g in names}), sorted(names)


def infer_task_of(table, target: str) -> str:
    """The kind of task of ``target`` (``binary``, ``multiclass``, ``multilabel``, ``regression``), from
    its non-blank cells; an absent column is an error that names the closest columns."""
    from .tasks import infer_task

    if target not in table.df.columns:
        from ._registry import unknown_name_message
        from .errors import SchemaError

        raise SchemaError(unknown_name_message("target column", target, table.df.columns))
    return infer_task(table.df[target])


# --- 2. splits ------------------------------------------------------------------------------
@dataclass
class Splits:
    """Training, validation and test rows, where they came from, and the rows left out.

    Attributes:
        train, val, test: DataFrames (``test`` may be empty).
        root: Folder that relative file paths are resolved against.
        source: Where the validation and test rows come from, in words, as
            ``"validation: <label>; test: <label>"`` (the two entries of ``labels``).
        labels: ``{"val": ..., "test": ...}``, each where those rows come from: a given table
            (``"val.csv"``), ``"held-out 10% of data.csv, stratified random"``, ``"held-out 10%
            of the groups of 'subject' in data.csv"``, ``"rows of data.csv with split column
            'split' = val"``, or ``"none"`` (no test rows: ``val`` was given without ``test``,
            or the test fraction is 0).
        blank_target: Row ids left out because their target cell is blank, per split.
        task: The kind of task the split was made for (stratified for classification); pass it to
            :func:`fit_target` so that both steps agree.
    """

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    root: Path
    source: str
    blank_target: dict = field(default_factory=dict)
    task: str | None = None
    labels: dict = field(default_factory=dict)

    def counts(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def row_ids(self, split: str) -> list:
        """The row ids of ``split`` (``train``, ``val`` or ``test``)."""
        return getattr(self, split).index.tolist()

    def n_blank(self) -> int:
        return sum(len(v) for v in self.blank_target.values())


# A validation split smaller than this (rows, or rows of one class) makes early stopping noisy.
SMALL_VAL_ROWS, SMALL_VAL_CLASS_ROWS = 500, 30


def split_table(table, schema, target: str, task: str | None = None, val=None, test=None, val_fraction: float = 0.1,
                test_fraction: float = 0.1, seed: int = 0, on_blank_target: str = "drop") -> Splits:
    """Split the table into training, validation and test rows.

    Without ``val``, the validation rows come from a split column, a group split (a column of
    role ``group``), or a random split of ``val_fraction`` (stratified by class for
    classification); likewise the test rows with ``test_fraction`` unless ``test`` is given.
    With ``val`` but no ``test`` there are no test rows: every row of the table trains.
    ``val``/``test`` may be tables, DataFrames or paths. :attr:`Splits.labels` and
    :attr:`Splits.source` say where each split comes from.

    Rows whose target cell is blank cannot be learned from nor scored: with ``on_blank_target="drop"``
    they are left out of every split and listed in :attr:`Splits.blank_target`; ``"raise"`` refuses them.

    When ``task`` is None its kind is inferred from the training rows where the split is known
    beforehand (split column, group split, given tables), and from all labelled rows for a random
    split, which needs the kind to stratify; it is kept in :attr:`Splits.task`.

    Warns when the validation rows are few (under :data:`SMALL_VAL_ROWS`, or under
    :data:`SMALL_VAL_CLASS_ROWS` of some class): early stopping then follows noise.
    """
    from .io import read_table
    from .schema import Role
    from .splits import SPLIT_NAMES, can_stratify, split_names, split_rows
    from .tasks import blank_targets, create_task, infer_task

    df = table.df
    if target not in df.columns:
        from ._registry import unknown_name_message
        from .errors import SchemaError

        raise SchemaError(unknown_name_message("target column", target, df.columns))
    blank: dict[str, list] = {}

    def keep(name, part: pd.DataFrame) -> pd.DataFrame:
        mask = blank_targets(part[target])
        if mask.any():
            if on_blank_target == "raise":
                from .errors import InputError

                raise InputError(part.index[mask][0], target, "has no target value",
                                 hint="fill the target, or let fit leave such rows out")
            blank[name] = part.index[mask].tolist()
        return part[~mask]

    def given(data) -> tuple[pd.DataFrame, str]:
        t = read_table(data, root=table.root)
        return t.df, ("the given table" if t.source == "<DataFrame>" else t.source)

    data_name = "the training table" if table.source == "<DataFrame>" else table.source
    if val is None:
        labelled = keep("train", df)
        if len(labelled) < 5:
            from .errors import SchemaError

            raise SchemaError(f"the table has {len(labelled)} labelled rows; splitting off validation rows needs "
                              "more (at least 5), or pass val=... / --val")
        known = schema.columns_with(Role.SPLIT) or schema.columns_with(Role.GROUP)
        kind = task if task is not None or known else infer_task(labelled[target])
        strat = create_task(kind, target).stratify(labelled) if kind is not None else None
        test_part = test_fraction if test is None else 0.0
        strat = strat if can_stratify(strat, val_fraction, test_part) else None  # as split_rows decides
        parts = split_rows(labelled, schema, val_fraction, test_part, seed, strat)
        tr, va = labelled.iloc[parts["train"]], labelled.iloc[parts["val"]]
        if test is None:
            te, test_label = labelled.iloc[parts["test"]], None
        else:
            te, test_label = given(test)
            te = keep("test", te)

        def held_out(name: str, fraction: float) -> str:
            if schema.columns_with(Role.SPLIT) and (name == "test" or "val" in set(
                    split_names(labelled[known[0]]).map(SPLIT_NAMES))):
                return f"rows of {data_name} with split column {known[0]!r} = {name}"
            if schema.columns_with(Role.SPLIT):
                return f"{fraction:.0%} of the rows of {data_name} with split column {known[0]!r} = train (it has no val rows)"
            if known:
                return f"held-out {fraction:.0%} of the groups of {known[0]!r} in {data_name}"
            return f"held-out {fraction:.0%} of {data_name}, {'stratified random' if strat is not None else 'random'}"

        val_label = held_out("val", val_fraction)
        if test_label is None:
            test_label = held_out("test", test_fraction) if len(te) else "none"
    else:
        tr = keep("train", df)
        va, val_label = given(val)
        va = keep("val", va)
        if test is not None:
            te, test_label = given(test)
            te = keep("test", te)
        else:
            te, test_label = df.iloc[:0], "none"
        kind = task
    if len(va) == 0:
        raise MmfuseError("no validation rows: give a validation table (--val FILE), 'val' rows in the split column, "
                          "or a validation fraction above 0 (val_fraction in --config)")
    if kind is None:
        kind = infer_task(tr[target])
    if blank:
        n = sum(map(len, blank.values()))
        warnings.warn(f"{n} rows with a blank target {target!r} were left out (rows "
                      f"{', '.join(map(str, [r for v in blank.values() for r in v][:10]))}"
                      f"{', ...' if n > 10 else ''})", stacklevel=2)
    _warn_small_validation(va[target], tr[target], kind)
    labels = {"val": val_label, "test": test_label}
    source = f"validation: {val_label}; test: {test_label}"
    return Splits(tr, va, te, table.root, source, blank, kind, labels)


def _warn_small_validation(y: pd.Series, y_train: pd.Series, kind: str | None) -> None:
    """Warn when the validation rows ``y`` are too few for early stopping to follow more than noise
    (a class of the training rows ``y_train`` absent from ``y`` counts as 0 rows)."""
    def rows(n: int) -> str:
        return f"{n} row{'' if n == 1 else 's'}"

    small = []
    if len(y) < SMALL_VAL_ROWS:
        small.append(f"{rows(len(y))} (fewer than {SMALL_VAL_ROWS})")
    if kind in ("binary", "multiclass"):
        counts = y.astype(str).value_counts().reindex(sorted(set(y_train.astype(str)) | set(y.astype(str))),
                                                      fill_value=0)
        if counts.min() < SMALL_VAL_CLASS_ROWS:
            small.append(f"{rows(counts.min())} of class {counts.idxmin()!r} (fewer than {SMALL_VAL_CLASS_ROWS})")
    if small:
        warnings.warn(f"the validation split is small: {' and '.join(small)}; early stopping and the best epoch "
                      "will follow noise, and its metrics vary from seed to seed. Use more validation rows "
                      "(--val FILE, or val_fraction in --config), or compare settings by cross-validation "
                      "(mmfuse cv, mmfuse.cross_validate)", stacklevel=3)


# --- 3. the target and the preprocessors ----------------------------------------------------
def fit_target(train_df: pd.DataFrame, target: str, task: str | None = None, tcfg: TrainConfig | None = None):
    """The :class:`~mmfuse.tasks.Task` of ``target``, inferred when ``task`` is None, fitted on the training rows.

    ``tcfg`` supplies the task's options (``regression_loss``)."""
    from .tasks import fit_task

    tcfg = tcfg or TrainConfig()
    return fit_task(train_df, target, task, regression_loss=tcfg.regression_loss)


def fit_preprocessors(schema, inputs: Sequence[str], train_df: pd.DataFrame, root, mcfg: ModelConfig | None = None,
                      tcfg: TrainConfig | None = None, options: Mapping[str, dict] | None = None,
                      allow_outside_root: bool = False) -> dict:
    """Fit one preprocessor per input (of ``inputs``, names in ``schema``) on the training rows.

    Inputs whose encoder is a Hugging Face model use that model's own preprocessing; a frozen
    one with the cache on is run once, inside preprocessing (cached embeddings).

    Args:
        options: Preprocessor arguments per input or modality (``{"image": {"size": 32}}``).
        allow_outside_root: Let file paths resolve outside ``root``.
    """
    from ._build import hf_preprocessing
    from .data import build_preprocessors
    from .io import read_table

    mcfg, tcfg = mcfg or ModelConfig(), tcfg or TrainConfig()
    specs = [s for s in schema.inputs() if s.name in set(inputs)]
    hf = {s.name: hf_preprocessing(mcfg, s.name, s.modality.value, tcfg.cache is not None) for s in specs}
    return build_preprocessors(schema, read_table(train_df, root=root), options, hf={k: v for k, v in hf.items() if v},
                               inputs={s.name for s in specs}, allow_outside_root=allow_outside_root)


# --- 4. datasets and loaders ----------------------------------------------------------------
@dataclass
class FitData:
    """Datasets and loaders of a fit; ``test`` is None without test rows. ``embedded``: rows of each split whose
    frozen-backbone embeddings this process computed (0 where the cache held them all)."""

    train: object
    val: object
    test: object | None
    train_loader: object
    val_loader: object
    embedded: dict = field(default_factory=dict)
    stream: dict | None = None  # a streamed table (:func:`mmfuse.streaming.make_stream_datasets`): how it is read

    def reports(self) -> dict:
        return {k: ds.report for k, ds in (("train", self.train), ("val", self.val), ("test", self.test)) if ds}


def make_datasets(splits: Splits, preps: dict, task, tcfg: TrainConfig | None = None, on_bad_input: str = "raise",
                  allow_outside_root: bool = False) -> FitData:
    """Datasets of the three splits (training augmentation on the first) and the training and
    validation loaders (seeded order; texts grouped by length when a text backbone is trained)."""
    from .data import MultimodalDataset, make_loader
    from .preprocessing import HFTextPreprocessor

    tcfg = tcfg or TrainConfig()
    kw = dict(on_bad_input=on_bad_input, allow_outside_root=allow_outside_root, root=splits.root, cache=tcfg.cache)
    ds_tr = MultimodalDataset(splits.train, preps, task, train=True, **kw)
    ds_va = MultimodalDataset(splits.val, preps, task, **kw)
    ds_te = MultimodalDataset(splits.test, preps, task, **kw) if len(splits.test) else None
    # frozen backbones embed every row now, sorted by length, once; processes started together (torchrun,
    # SLURM) each embed their share into the one cache on disk
    from .training.trainer import check_launch, launched_world, local_shard

    check_launch(tcfg)
    launched, local = launched_world(), local_shard()
    shard = (*local, launched[2]) if launched is not None and local is not None and local[1] > 1 else (0, 1, None)
    embedded = {}
    for name, ds in (("train", ds_tr), ("val", ds_va), ("test", ds_te)):
        if ds is not None:
            embedded[name] = ds.warm_cache(*shard)
    group = tcfg.group_by_length
    if group is None:  # a trained text backbone: padding would cost real compute
        group = any(isinstance(p, HFTextPreprocessor) and not p.embed for p in preps.values())
    tr = make_loader(ds_tr, tcfg.batch_size, shuffle=True, num_workers=tcfg.num_workers, seed=tcfg.seed,
                     persistent_workers=True, group_by_length=group)
    va = make_loader(ds_va, max(tcfg.batch_size, 256), num_workers=tcfg.num_workers, persistent_workers=True)
    return FitData(ds_tr, ds_va, ds_te, tr, va, embedded)


def fit_fingerprint(splits: Splits, preps: dict, task, mcfg: ModelConfig, tcfg: TrainConfig, **settings) -> dict:
    """What a fit trains on: hashes of the training and validation rows (the columns the inputs and the
    target read), of the fitted preprocessors (their options and learned state), the task (without its
    decision thresholds, which are set after training), the settings that cannot change on resume, and
    ``settings`` (e.g. ``on_bad_input``). ``train(..., resume=True)`` refuses a checkpoint whose
    fingerprint differs."""
    import hashlib
    import json

    from ._fingerprint import run_fingerprint

    h = hashlib.sha256()
    for name in sorted(preps):
        meta, arrays = preps[name].get_state()
        h.update(json.dumps([name, meta], sort_keys=True, default=str).encode())
        for k in sorted(arrays):
            h.update(k.encode())
            h.update(np.ascontiguousarray(arrays[k]).tobytes())
    cols = sorted({c for p in preps.values() for c in p.columns} | {task.column})
    state = {k: v for k, v in task.to_dict().items() if k not in ("threshold", "thresholds")}
    if hasattr(splits, "fingerprint"):  # a streamed table: its files and each row's split, not its rows
        return run_fingerprint({}, cols, mcfg, tcfg, task=state, preprocessors=h.hexdigest()[:16],
                               **splits.fingerprint(), **settings)
    return run_fingerprint({"train": splits.train, "val": splits.val}, cols, mcfg, tcfg, task=state,
                           preprocessors=h.hexdigest()[:16], **settings)


# --- 6. training ----------------------------------------------------------------------------
def train(model, task, data: FitData, mcfg: ModelConfig, tcfg: TrainConfig, run_dir, resume: bool = False,
          fingerprint: dict | None = None, callbacks=()) -> dict:
    """Train ``model`` in place (best epoch's weights at the end); see :func:`mmfuse.training.train_model`.

    Class weights come from ``tcfg.class_weight`` and the training rows' targets."""
    from .training import train_model

    import math

    weights = task.class_weights(tcfg.class_weight, data.train.y)
    result = train_model(model, task, data.train_loader, data.val_loader, tcfg, mcfg, Path(run_dir), weights,
                         resume=resume, fingerprint=fingerprint, callbacks=callbacks)
    for h in result["history"]:
        bad = [k for k in ("train_loss", "val_loss") if not math.isfinite(h.get(k, 0.0))]
        if bad:
            raise MmfuseError(f"training diverged: {bad[0]} became {h[bad[0]]} in epoch {h['epoch'] + 1} "
                              f"(lr {tcfg.lr}); lower the learning rate (--lr), or check the target's scale")
    return result


# --- 7. threshold and metrics ---------------------------------------------------------------
FILL_MIX_GRID = (1.0, 0.75, 0.5, 0.25, 0.0)


def choose_fill_mix(predictor, dataset, grid=FILL_MIX_GRID) -> dict:
    """For a model that fills in absent inputs (``fill_space: features``), choose on ``dataset`` (the validation
    rows) each input's :attr:`~mmfuse.model.MultimodalModel.fill_mix`: the weight of the filled-in output against
    the input-masked one (which is the model without filling in) when that input is absent. For input n, every
    row is scored with n masked, at each weight of ``grid``, by the task's loss and by the headline metric: each
    row's share of it (:meth:`~mmfuse.tasks.Task.row_scores`), or, for a metric that does not split by row
    (macro-F1), its value on resamples of the rows; :func:`pick_fill_weight` keeps the weight with the best
    metric gain over weight 0, its loss not higher, only where that gain is larger than one standard error.
    Sets it on the model.

    Returns:
        ``{"chosen": {input: weight}, "val_loss": {input: {weight: loss}}, "gain_se": {input: [gain, se]}}``
    """
    import torch

    model, task = predictor.model, predictor.target
    chosen, losses, gain_se = {}, {}, {}
    for n in model.names:
        z = {}
        for end in (1.0, 0.0):  # the output is linear in the weight: its two ends give every point between
            model.fill_mix = {m: end for m in model.names}
            logit, rows = predictor.logits(None, dataset=dataset, absent=[n])
            z[end] = logit
        y = torch.from_numpy(np.asarray(dataset._y[rows]))
        # weight 0 is the input-masked output itself (not 0 times the filled-in one, which may not be finite)
        mixed = {lam: z[0.0] if lam == 0 else lam * z[1.0] + (1 - lam) * z[0.0] for lam in grid}
        keep = np.isfinite(_row_losses(task, z[0.0], y))  # a blank target has no loss
        mixed, y = {lam: v[torch.from_numpy(keep)] for lam, v in mixed.items()}, y[torch.from_numpy(keep)]
        per_row = {lam: _row_losses(task, v, y) for lam, v in mixed.items()}
        scores, resampled = {lam: task.row_scores(v, y) for lam, v in mixed.items()}, False
        if scores[0.0] is None:  # the headline does not split by row: its value on resamples of the rows
            scores, resampled = _resampled_headline(task, mixed, y), True
        losses[n] = {str(lam): float(v.mean()) if len(v) else None for lam, v in per_row.items()}
        chosen[n], gain_se[n] = pick_fill_weight(per_row, scores, resampled=resampled)
    model.fill_mix = chosen
    return {"chosen": chosen, "val_loss": losses, "gain_se": gain_se}


def _row_losses(task, logits, y) -> np.ndarray:
    """The task's loss of each row alone."""
    return np.array([float(task.loss(logits[i:i + 1], y[i:i + 1], None)) for i in range(len(y))])


def _resampled_headline(task, outputs: dict, y, n: int = 200, seed: int = 0) -> dict:
    """``{weight: the headline metric (higher is better) on each of n resamples of the rows}``, the same
    resamples for every weight, so that their differences are paired."""
    import torch

    idx = torch.from_numpy(np.random.default_rng(seed).integers(0, len(y), (n, len(y))))
    sign = 1.0 if task.higher_is_better else -1.0
    return {w: np.array([sign * float(task.quick_metrics(v[i], y[i])[task.headline]) for i in idx])
            for w, v in outputs.items()}


MIN_FILL_ROWS = 30  # fewer validation rows than this: too few to measure a gain, no filling in


def pick_fill_weight(per_row: dict, scores: dict, resampled: bool = False) -> tuple[float, list]:
    """The one-standard-error rule for the weight of the filled-in output.

    ``per_row``: ``{weight: the loss of each validation row}`` (the same rows for every weight, 0 among them);
    ``scores``: ``{weight: each row's share of the headline metric}`` (:meth:`~mmfuse.tasks.Task.row_scores`,
    higher is better), or with ``resampled``, the metric on each of the same resamples of the rows.

    Among the weights whose mean loss is finite and not above weight 0's, the one with
    the largest metric gain over weight 0 is kept only if that gain exceeds one standard error (of the mean of
    the rows' paired differences, or with ``resampled``, of the resampled differences); else 0, no filling in (a
    loss that falls while accuracy falls too is no help; a gain within noise is none). With fewer than
    ``MIN_FILL_ROWS`` rows, 0. The rule is a guard, not a guarantee: the best of several weights clears one
    standard error by chance more often than a single weight would.

    Returns:
        ``(weight, [gain, standard error])`` (of the best weight other than 0; ``[0, 0]`` where none is eligible)
    """
    base = per_row[0.0]
    if len(base) < MIN_FILL_ROWS:
        return 0.0, [0.0, 0.0]
    ok = [w for w in scores if w != 0.0 and per_row[w].mean() <= base.mean()]  # (a NaN row: a NaN mean, out)
    if not ok:
        return 0.0, [0.0, 0.0]
    best = max(ok, key=lambda w: (float((scores[w] - scores[0.0]).mean()), -float(per_row[w].mean()), -w))
    d = scores[best] - scores[0.0]
    gain, se = float(d.mean()), float(d.std(ddof=1) / (1.0 if resampled else np.sqrt(len(d))))
    return (best if gain > se else 0.0), [round(gain, 6), round(se, 6)]


def choose_threshold_and_score(predictor, data: FitData, tcfg: TrainConfig, contribution: bool = True) -> dict:
    """Set the decision threshold(s) from ``tcfg.decision_threshold`` (a metric is maximized on the
    validation rows, never the test rows), then measure the validation and test rows and, with
    ``contribution``, each input's contribution on the test rows (the validation rows without them).

    Returns:
        ``{"val": {...}, "test": {...}, "contribution": {...}, "decision_threshold": ...}``
    """
    from .evaluation import compute_metrics, modality_contribution

    out = {}
    task = predictor.target
    if tcfg.decision_threshold is not None:
        z, rows = predictor.logits(None, dataset=data.val)
        task.set_threshold(tcfg.decision_threshold, z, data.val._y[rows])
        out["decision_threshold"] = task.threshold
    out["val"] = compute_metrics(predictor, data.val)
    if data.test is not None:
        out["test"] = compute_metrics(predictor, data.test)
    if contribution and len(predictor.preprocessors) > 1:
        ds = data.test if data.test is not None else data.val
        out["contribution"] = {**modality_contribution(predictor, ds), "split": "test" if ds is data.test else "val"}
    return out



# --- the plan of a fit, shown before training ------------------------------------------------
def describe_plan(splits: Splits, spec: dict, preps: dict, task, data: FitData, tcfg: TrainConfig,
                  schema=None) -> dict:
    """What a fit is about to do, read from the objects that decide it: the inputs and the encoder
    :func:`build_model` chose for each (``spec``), the fusion, the splits with their row counts and
    origin, the main training settings, the class weighting (the task's :meth:`class_weights` of the
    training rows), the device the trainer will use, and, given the ``schema`` of :func:`select_inputs`,
    the columns left out with why (:func:`mmfuse.schema.left_out_columns`).

    Returns:
        A JSON-ready dict (kept in ``metrics["plan"]``); :func:`format_plan` writes it as lines.
    """
    from .evaluation import fusion_label
    from .schema import left_out_columns
    from .training.trainer import resolve_accelerator, resolve_precision, world_size

    inputs = {n: {"modality": preps[n].modality, "encoder": spec["encoders"][n]["name"],
                  "columns": [str(c) for c in preps[n].columns]} for n in sorted(preps)}
    fusion = fusion_label(spec["model"]["fusion"], inputs)
    labels = getattr(splits, "labels", None) or {}
    split = {"rows": splits.counts(), "source": splits.source,
             **({"val_from": labels["val"], "test_from": labels["test"]} if labels else {})}
    weights = task.class_weights(tcfg.class_weight, data.train.y)
    if weights is None:
        weighting = "none (every class weighs 1)" if task.classes_ else "none"
    else:
        pairs = [f"{c} {w:.3g}" for c, w in zip(task.classes_, weights.tolist())]
        weighting = (f"{tcfg.class_weight if isinstance(tcfg.class_weight, str) else 'given'}: "
                     + ", ".join(pairs[:10]) + (f", ... ({len(pairs)} classes)" if len(pairs) > 10 else ""))
    device = resolve_accelerator(tcfg.accelerator)
    return {"processes": world_size(tcfg), "inputs": inputs, "fusion": fusion, "split": split, "epochs": tcfg.epochs, "patience": tcfg.patience,
            "monitor": tcfg.monitor,
            "batch_size": tcfg.batch_size, "lr": tcfg.lr, "class_weight": weighting, "device": device,
            "precision": resolve_precision(tcfg.precision, device),
            "left_out": {} if schema is None else left_out_columns(schema),
            "decimal_comma": [c for num in (getattr(p, "num", p) for p in preps.values())  # (a tabular input's numbers)
                              for c, k in zip(num.columns, getattr(num, "comma_", ())) if k == "decimal"],
            **({"stream": data.stream} if getattr(data, "stream", None) else {})}


def format_plan(plan: dict) -> list[str]:
    """The lines of a :func:`describe_plan` dict, as ``fit`` prints them and ``report.md`` lists them."""
    s = plan["split"]
    rows = s["rows"]
    if "val_from" in s:
        split = (f"train {rows['train']}, validation {rows['val']} ({s['val_from']}), test {rows['test']}"
                 + (f" ({s['test_from']})" if rows["test"] else ""))
    else:
        split = f"train {rows['train']}, validation {rows['val']}, test {rows['test']} ({s['source']})"
    def cols(v):  # (plans written before the columns were listed have none)
        c = v.get("columns")
        return "," if not c else f" from {', '.join(c[:6])}{', ...' if len(c) > 6 else ''};"

    inputs = ", ".join(f"{n} ({v['modality']}{cols(v)} encoder {v['encoder']})" for n, v in plan["inputs"].items())
    return [f"inputs: {inputs}",
            f"fusion: {plan['fusion']}",
            f"rows: {split}",
            f"epochs: at most {plan['epochs']} (early stopping after {plan['patience']} without improvement of "
            f"validation {plan.get('monitor', 'loss').replace('_', '-')}); "
            f"batch size {plan['batch_size']}"
            + (f" per process x {plan['processes']} processes = {plan['batch_size'] * plan['processes']}"
               if plan.get("processes", 1) > 1 else "") + f"; learning rate {plan['lr']:g}",
            f"class weighting: {plan['class_weight']}",
            f"device: {plan['device']} (precision {plan['precision']})"] + _stream_line(plan) + (
        [f"numbers written with a decimal comma ('2,500' reads as 2.5): {', '.join(map(str, plan['decimal_comma']))}"]
        if plan.get("decimal_comma") else []) + (
        [f"left out ({len(plan['left_out'])}): " + "; ".join(f"{c} ({why})" for c, why in
                                                           list(plan["left_out"].items())[:12])
         + ("; ..." if len(plan["left_out"]) > 12 else "")] if plan.get("left_out") else [])


def _stream_line(plan: dict) -> list[str]:
    st = plan.get("stream")
    if not st:
        return []
    line = (f"streamed: {st['source']}; shuffle buffer {st['shuffle_buffer']:,} rows; preprocessors of images, audio "
            f"and time series fitted on {st['sample_rows']:,} sampled rows, the others on every training row")
    if st.get("left_out_per_epoch"):
        line += (f"; {st['left_out_per_epoch']} training rows an epoch left out (a different few each epoch) so that "
                 f"the {plan.get('processes', 1)} processes take the same number of steps")
    return [line]
