"""The prediction task: one class per kind of target, behind a registry.

Each task owns everything about its target column, as Ludwig's output features do: how the
target is inferred and encoded, the width of the model's output, the loss (with class
weights, the same objective in training and validation), how logits become probabilities
and labels (with the decision threshold of binary tasks and the per-label thresholds of
multilabel tasks), the quick metrics used during training, the full metrics, the headline
metric and the metric to monitor, and its state for bundles (``to_dict`` / ``from_dict``).
Nothing outside this module branches on the kind of task.

Tasks are created by name (:func:`create_task`), or inferred and fitted from the training
rows in one call (:func:`fit_task`)::

    task = fit_task(train_df, "label")             # BinaryTask, MulticlassTask, ...
    y = task.transform(train_df[["label"]])         # encoded targets
    loss = task.loss(logits, torch.as_tensor(y))    # logits: (B, task.n_outputs)
    out = task.decode(logits)                       # out.proba, out.ids, out.labels

Macro-F1, everywhere (quick and full metrics, multiclass and multilabel): the mean of the
per-class F1 over the classes that occur in the evaluated rows' true labels. A class absent
from them has no defined recall and is left out; the full metrics list such classes under
``absent_classes``. Predictions of an absent class still count as errors of the true class.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where it runs: reading and decoding work without it (mmfuse.onnx)
    import torch

from ._registry import Registry
from .errors import InputError, MmfuseError, SchemaError

__all__ = ["Task", "BinaryTask", "MulticlassTask", "MultilabelTask", "RegressionTask", "Decoded", "TASKS",
           "register_task", "create_task", "list_tasks", "infer_task", "fit_task", "task_from_dict",
           "choose_threshold", "THRESHOLD_METRICS", "expected_calibration_error", "blank_targets"]

TASKS: Registry[type["Task"]] = Registry("task")
THRESHOLD_METRICS = ("f1", "balanced_accuracy", "accuracy", "mcc")


LOWER_IS_BETTER = frozenset({"log_loss", "ece", "rmse", "mae", "loss"})  # metric names where less is better
# every score a task's metrics() can give (not the counts and settings it also reports: n, threshold)
METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "micro_f1", "f1_positive", "log_loss", "ece", "roc_auc",
                "pr_auc", "roc_auc_ovr_macro", "roc_auc_macro", "pr_auc_macro", "subset_accuracy", "rmse", "mae", "r2")


def check_metric_name(metric: str) -> str:
    """``metric`` if it is a score some task reports (:data:`METRIC_NAMES`), else one line with the closest."""
    if metric not in METRIC_NAMES:
        from ._registry import unknown_name_message

        raise MmfuseError(unknown_name_message("metric", metric, METRIC_NAMES))
    return metric


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` (a key of :meth:`Task.metrics`) is better."""
    return metric not in LOWER_IS_BETTER


def register_task(name: str):
    """Class decorator: make a :class:`Task` subclass creatable by ``name``."""
    def deco(cls):
        cls.name = name
        return TASKS.register(name)(cls)

    return deco


def list_tasks() -> list[str]:
    return TASKS.names()


def create_task(name: str, column: str, **options) -> "Task":
    """An unfitted task of kind ``name`` for the target ``column``; ``options`` go to its constructor."""
    return TASKS.create(name, column=column, **options)


@dataclass
class Decoded:
    """What a task makes of logits: ``proba`` (N, K) class probabilities (regression: (N,) values
    in the target's units), ``ids`` the encoded predictions the metrics compare with the encoded
    targets ((N,) class ids, (N, K) multi-hot or (N,) standardized values), and ``labels`` the
    predictions as the user wrote the target (labels, lists of labels, or values)."""

    proba: np.ndarray
    ids: np.ndarray
    labels: np.ndarray


class Task(ABC):
    """Base class. Subclasses set ``headline`` and implement the abstract methods.

    Args:
        column: The target column.
        label_sep: For targets written as strings of several labels (``"a|b"``).
    """

    name: ClassVar[str] = ""
    headline: ClassVar[str] = "accuracy"  # the one metric used to compare models
    higher_is_better: ClassVar[bool] = True
    quick_metric_names: ClassVar[tuple[str, ...]] = ()  # the keys of quick_metrics: what a fit can monitor

    def __init__(self, column: str, label_sep: str = "|"):
        self.column, self.label_sep = column, label_sep
        self.classes_: list[str] | None = None
        self.numeric_labels_ = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(column={self.column!r}, classes={self.classes_})"

    # --- the target --------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame) -> "Task":
        """Learn the classes (or the scale) from the training rows; blank target cells are ignored."""
        y = self._column(df)
        self._fit(y[~y.map(_blank)])
        self._index = {k: i for i, k in enumerate(self.classes_ or [])}
        return self

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encoded targets of these rows; a blank or unreadable cell raises :class:`InputError` naming the row."""
        self.check_fitted()
        out = []
        for row, v in self._column(df).items():
            if _blank(v):
                raise InputError(row, self.column, "has no target value",
                                 hint="fill the target, or leave the row out (fit leaves out rows with a blank target)")
            out.append(self._encode(row, v))
        return self._stack(out)

    def blank(self, df: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows whose target cell is blank."""
        return blank_targets(self._column(df))

    @property
    def n_outputs(self) -> int:
        """Width of the model's output."""
        return len(self.classes_)

    def labels(self) -> np.ndarray:
        """The class labels as given in training: numbers stay numbers (``3``, not ``'3'``), booleans booleans."""
        if getattr(self, "bool_labels_", False):
            return np.asarray([k == "True" for k in self.classes_], dtype=object)
        if self.numeric_labels_:
            vals = [float(k) for k in self.classes_]
            return np.asarray([int(v) for v in vals] if all(v.is_integer() for v in vals) else vals)
        return np.asarray(self.classes_, dtype=object)

    def unseen_labels(self, df: pd.DataFrame) -> list[str]:
        """The labels of these rows that this fitted task does not know (none for regression)."""
        return []

    def grown(self, df: pd.DataFrame) -> "Task":
        """A new fitted task over this one's classes and the labels of ``df`` (a new head, :mod:`mmfuse.feedback`):
        binary becomes multiclass; labels keep their type. Regression has no classes to add."""
        if not self.classes_:
            raise MmfuseError("new_head applies to classification targets")
        old = pd.Series(list(self.classes_), name=self.column)
        if self.numeric_labels_:  # keep the labels' type: the new task decodes to numbers too
            old = pd.to_numeric(old)
        kind = "multiclass" if self.n_outputs == 1 else self.name
        if kind != self.name:
            warnings.warn(f"the binary target {self.column!r} becomes multiclass with the new head: its output layer "
                          "starts fresh (the rest of the model is kept)", stacklevel=4)
        return fit_task(pd.concat([df[[self.column]], old.to_frame()]), self.column, kind)

    @property
    def one_output_per_class(self) -> bool:
        """Whether the outputs are one per class, in :attr:`classes_` order (multiclass, multilabel)."""
        return bool(self.classes_) and self.n_outputs == len(self.classes_)

    def scorable(self, df: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows whose target this fitted task can encode: not blank, every label known."""
        y = self._column(df)
        unseen = set(self.unseen_labels(df))
        if not unseen:
            return ~blank_targets(y)
        return np.array([not _blank(v) and not (set(self._labels_of(v)) & unseen) for v in y], dtype=bool)

    def _labels_of(self, v) -> list[str]:
        return [_key(v)]

    def stratify(self, df: pd.DataFrame) -> np.ndarray | None:
        """Labels to stratify a random split on, or None when the task cannot be stratified."""
        return None

    def check_fitted(self) -> None:
        if not hasattr(self, "_index"):
            from .errors import NotFittedError

            raise NotFittedError(f"the {self.name} task of {self.column!r} is not fitted; call fit(train_df)")

    # --- training ----------------------------------------------------------------------------
    def class_weights(self, setting, y: np.ndarray) -> torch.Tensor | None:
        """Per-class loss weights from ``setting`` (``"auto"``, None, ``"balanced"`` or a list) and the
        encoded training targets ``y``. ``balanced``: ``N / (K · count_k)`` (scikit-learn's rule);
        ``auto``: what :meth:`auto_class_weight` chooses for ``y``."""
        import torch

        if isinstance(setting, str) and setting == "auto":
            setting = self.auto_class_weight(y)
        if setting is None:
            return None
        k = len(self.classes_)
        if isinstance(setting, str):
            if setting != "balanced":
                raise MmfuseError(f"class_weight must be None, 'balanced' or a list of {k} numbers, got {setting!r}")
            counts = self._counts(y, k)
            return torch.tensor(len(y) / (k * np.maximum(counts, 1)), dtype=torch.float32)
        try:
            w = np.asarray(setting, float).reshape(-1)
        except (TypeError, ValueError):
            raise MmfuseError(f"class_weight must be None, 'balanced' or a list of numbers, got {setting!r}") from None
        if len(w) != k or (w <= 0).any():
            raise MmfuseError(f"class_weight must have {k} positive values (one per class, in the order "
                              f"{self.classes_}), got {list(w)}")
        return torch.tensor(w, dtype=torch.float32)

    def auto_class_weight(self, y: np.ndarray) -> str | None:
        """The ``class_weight`` that ``"auto"`` stands for, given the encoded training targets: None
        (no weights) here; multiclass targets override it."""
        return None

    def _counts(self, y, k):
        return np.bincount(np.asarray(y, np.int64), minlength=k).astype(float)

    @abstractmethod
    def loss(self, logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The training objective (also the validation loss). ``logits``: (B, n_outputs)."""

    def monitor_for(self, name: str = "loss") -> tuple[str, str]:
        """``(key, mode)`` that early stopping and the best checkpoint follow for the setting ``monitor``:
        ``("val_loss", "min")`` for ``loss``, else ``("val_<metric>", "max"|"min")`` for one of
        :attr:`quick_metric_names`."""
        if name == "loss":
            return "val_loss", "min"
        if name not in self.quick_metric_names:
            raise MmfuseError(f"monitor {name!r} is not computed each epoch for a {self.name} target; choose one of "
                              f"{', '.join(['loss', *self.quick_metric_names])}")
        return f"val_{name}", "max" if higher_is_better(name) else "min"

    @abstractmethod
    def quick_metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict:
        """Validation metrics in torch, without scikit-learn (keys without the ``val_`` prefix)."""

    # --- prediction --------------------------------------------------------------------------
    @abstractmethod
    def decode(self, logits: torch.Tensor, threshold=None) -> Decoded:
        """Logits (N, n_outputs) -> probabilities, encoded predictions and labels, in one place.
        ``threshold`` overrides the task's own decision threshold(s)."""

    def row_scores(self, logits: torch.Tensor, y: torch.Tensor) -> np.ndarray | None:
        """Each row's share of the headline metric, higher is better, so that a paired comparison of two outputs
        can be made row by row: 1 or 0 for a right or wrong class (accuracy), minus the squared error (regression,
        in standardized units: RMSE's order); None where the headline does not split by row (multilabel:
        macro-F1)."""
        return (self.decode(logits).ids == np.asarray(y)).astype(float)

    def output_columns(self, decoded: Decoded, proba: bool = True) -> dict[str, np.ndarray]:
        """Columns of a prediction file: ``prediction`` and, when ``proba``, ``proba_<class>``."""
        cols = {"prediction": decoded.labels}
        if proba:
            cols.update({f"proba_{c}": decoded.proba[:, j] for j, c in enumerate(self.classes_)})
        return cols

    # --- combining models (ensembles) ----------------------------------------------------------
    @abstractmethod
    def logits_of(self, proba: np.ndarray) -> torch.Tensor:
        """The inverse of :meth:`decode`'s probability map: logits (N, n_outputs) whose
        ``decode(...).proba`` is ``proba`` (class probabilities; regression: values in the target's
        units). An ensemble averages its members' ``proba`` and decodes these logits, so its labels
        follow this task's own rule (argmax, decision thresholds)."""

    def proba_of_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The inverse of :meth:`output_columns`: ``decode(...).proba`` read back from a prediction
        frame (such as a cross-validation's ``oof.csv``): its ``proba_<class>`` columns, (N, K)."""
        cols = [f"proba_{c}" for c in self.classes_]
        lacking = [c for c in cols if c not in frame.columns]
        if lacking:
            raise MmfuseError(f"the predictions of {self.column!r} lack the columns {lacking} (they have "
                              f"{list(frame.columns)}); they were written by a model with other classes")
        return frame[cols].to_numpy(float)

    def set_threshold(self, setting, logits: torch.Tensor | None = None, y: np.ndarray | None = None):
        """Decision threshold(s) from ``setting``: a number, or a metric maximized on ``logits``/``y``
        (validation rows). Only binary and multilabel tasks have one."""
        if setting is not None:
            raise MmfuseError(f"decision_threshold applies to binary and multilabel targets; {self.column!r} is "
                              f"{self.name}: leave it unset")

    @property
    def threshold(self):
        return None

    # --- evaluation --------------------------------------------------------------------------
    @abstractmethod
    def metrics(self, logits: torch.Tensor, y: np.ndarray) -> dict:
        """Full metrics of these logits against encoded targets ``y`` (scikit-learn)."""

    # --- bundles -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"column": self.column, "task": self.name, "classes": self.classes_, "label_sep": self.label_sep,
                "numeric_labels": self.numeric_labels_, "bool_labels": getattr(self, "bool_labels_", False)}

    def _load(self, d: dict) -> None:
        classes = d.get("classes")
        if self.name != "regression" and (not isinstance(classes, list) or len(classes) < 2
                                          or not all(isinstance(c, str) for c in classes)):
            raise MmfuseError(f"the {self.name} target {self.column!r} needs a list of at least two class names, "
                              f"got {classes!r}")
        self.classes_ = d.get("classes")
        self.numeric_labels_ = d.get("numeric_labels", False)
        self.bool_labels_ = d.get("bool_labels", False)
        self._index = {k: i for i, k in enumerate(self.classes_ or [])}

    # --- helpers -----------------------------------------------------------------------------
    def _column(self, df: pd.DataFrame) -> pd.Series:
        if self.column not in df.columns:
            from ._registry import unknown_name_message

            raise SchemaError(unknown_name_message("target column", self.column, df.columns))
        return df[self.column]

    @abstractmethod
    def _fit(self, y: pd.Series) -> None:
        """Learn the classes or the scale from the non-blank training targets."""

    @abstractmethod
    def _encode(self, row, v):
        """One target cell -> its encoded value; an :class:`InputError` naming ``row`` when it cannot be."""

    def _stack(self, out: list) -> np.ndarray:
        return np.asarray(out, np.int64)


def task_from_dict(d: dict, decision_threshold=None) -> Task:
    """Rebuild a fitted task from :meth:`Task.to_dict` (bundles of format 1 kept the binary decision
    threshold beside the target: pass it as ``decision_threshold``)."""
    kw = {"regression_loss": d["loss"]} if d.get("loss") else {}
    task = create_task(d["task"], d["column"], label_sep=d.get("label_sep", "|"), **kw)
    task._load({**d, **({"threshold": decision_threshold} if d.get("threshold") is None and decision_threshold
                        else {})})
    return task


class _Classification(Task):
    quick_metric_names = ("accuracy", "macro_f1")

    def _fit(self, y: pd.Series) -> None:
        keys = sorted({_key(v) for v in y}, key=_natural)
        if len(keys) < 2:
            raise SchemaError(f"target {self.column!r} has a single class ({keys[0] if keys else 'none'}) in the "
                              "training rows; a classifier needs at least two")
        self.classes_ = keys
        self.numeric_labels_ = bool(pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y))
        self.bool_labels_ = bool(pd.api.types.is_bool_dtype(y)) or set(keys) == {"False", "True"}

    def unseen_labels(self, df):
        y = self._column(df)
        return sorted({_key(v) for v in y[~y.map(_blank)]} - set(self.classes_), key=_natural)

    def _encode(self, row, v):
        k = _key(v)
        if k not in self._index:
            raise InputError(row, self.column, f"has the label {k!r}, unseen in training",
                             hint=f"known labels: {', '.join(self.classes_[:20])}")
        return self._index[k]

    def stratify(self, df):
        y = self._column(df)
        return y.map(lambda v: "" if _blank(v) else _key(v)).to_numpy()

    def _confusion(self, ids: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
        import torch

        return torch.bincount(y.long() * k + ids.long(), minlength=k * k).view(k, k).float()  # rows: true

    def quick_metrics(self, logits, y):
        import torch

        k = len(self.classes_)
        cm = self._confusion(torch.as_tensor(self.decode(logits).ids), y, k)
        tp = cm.diag()
        f1 = 2 * tp / (cm.sum(0) + cm.sum(1)).clamp_min(1)
        present = cm.sum(1) > 0
        return {"accuracy": float(tp.sum() / cm.sum()), "macro_f1": float(f1[present].mean())}

    def metrics(self, logits, y):
        from sklearn import metrics as M

        d = self.decode(logits)
        proba, pred, y = d.proba, d.ids, np.asarray(y)
        labels = list(range(len(self.classes_)))
        present = sorted(set(np.unique(y).tolist()))
        names = [str(c) for c in self.classes_]
        with warnings.catch_warnings():  # absent classes are reported below, under absent_classes
            warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
            balanced = float(M.balanced_accuracy_score(y, pred))
        out = {"accuracy": float(M.accuracy_score(y, pred)), "balanced_accuracy": balanced,
               "macro_f1": float(M.f1_score(y, pred, average="macro", labels=present, zero_division=0)),
               "report": _report(M, y, pred, names, present),
               "log_loss": float(M.log_loss(y, np.clip(proba, 1e-7, 1), labels=labels)),
               "ece": expected_calibration_error(proba, y),
               "confusion_matrix": M.confusion_matrix(y, pred, labels=labels).tolist(),
               "absent_classes": [names[j] for j in labels if j not in present], "n": int(len(y))}
        out.update(self._extra_metrics(proba, pred, y, present))
        return out

    def _extra_metrics(self, proba, pred, y, present) -> dict:
        return {}


@register_task("multiclass")
class MulticlassTask(_Classification):
    """One label of K ≥ 2 classes per row: softmax cross-entropy, argmax labels."""

    #: ``class_weight="auto"`` weights classes (``balanced``) when the most frequent training class
    #: has at least this many times the rows of the rarest: unweighted cross-entropy then favours the
    #: large classes, and macro-F1 (every class counts alike) drops.
    auto_balance_ratio: ClassVar[float] = 3.0

    def auto_class_weight(self, y):
        counts = self._counts(y, len(self.classes_))
        return "balanced" if counts.max() >= self.auto_balance_ratio * max(counts.min(), 1) else None

    def loss(self, logits, y, class_weights=None):
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), y.long(), weight=class_weights)

    def decode(self, logits, threshold=None):
        if threshold is not None:
            raise MmfuseError(f"a decision threshold applies to binary and multilabel targets; {self.column!r} is "
                              "multiclass (labels are the most probable class)")
        z = _float32(logits)
        e = np.exp(z - z.max(1, keepdims=True))
        proba = e / e.sum(1, keepdims=True)
        ids = proba.argmax(1)
        return Decoded(proba, ids, self.labels()[ids])

    def logits_of(self, proba):
        import torch

        return torch.log(torch.as_tensor(np.clip(proba, _EPS, 1), dtype=torch.float64))  # softmax(log p) = p

    def _extra_metrics(self, proba, pred, y, present):
        from sklearn import metrics as M

        if len(present) < len(self.classes_):
            return {}  # ROC-AUC one-vs-rest needs every class among the true labels
        if len(self.classes_) == 2:  # scikit-learn scores two classes on the second one's probability
            return {"roc_auc_ovr_macro": float(M.roc_auc_score(y, proba[:, 1])),
                    "pr_auc_macro": float(np.mean([M.average_precision_score(y == j, proba[:, j]) for j in (0, 1)]))}
        return {"roc_auc_ovr_macro": float(M.roc_auc_score(y, proba, multi_class="ovr", average="macro",
                                                           labels=list(range(len(self.classes_))))),
                "pr_auc_macro": float(M.average_precision_score(np.eye(len(self.classes_))[y], proba,
                                                                average="macro"))}


@register_task("binary")
class BinaryTask(_Classification):
    """Two classes: one logit, sigmoid, and a decision threshold on the second class's
    probability (0.5 unless set or chosen on validation rows).

    With class weights ``(w0, w1)`` the loss is the weighted mean
    ``Σ_i w_{y_i} · BCE_i / Σ_i w_{y_i}``, the same objective as weighted cross-entropy."""

    def __init__(self, column: str, label_sep: str = "|"):
        super().__init__(column, label_sep)
        self._threshold = 0.5

    def _fit(self, y):
        super()._fit(y)
        if len(self.classes_) != 2:
            raise SchemaError(f"target {self.column!r} has {len(self.classes_)} classes "
                              f"({', '.join(self.classes_[:10])}{', ...' if len(self.classes_) > 10 else ''}) in the "
                              "training rows; a binary target has two. Use task='multiclass' (--task multiclass)")

    @property
    def n_outputs(self) -> int:
        return 1

    @property
    def threshold(self) -> float:
        return self._threshold

    def loss(self, logits, y, class_weights=None):
        import torch.nn.functional as F

        per_row = F.binary_cross_entropy_with_logits(logits[:, 0].float(), y.float(), reduction="none")
        if class_weights is None:
            return per_row.mean()
        w = class_weights.to(per_row.device)[y.long()]
        return (w * per_row).sum() / w.sum()

    def decode(self, logits, threshold=None):
        p = _sigmoid(_float32(logits)[:, 0])
        proba = np.stack([1 - p, p], axis=1)
        ids = _positive(p, self._threshold if threshold is None else _probability(threshold))
        return Decoded(proba, ids, self.labels()[ids])

    def logits_of(self, proba):
        return _logit(np.asarray(proba)[:, 1:2])  # the second class's probability, (N, 1)

    def set_threshold(self, setting, logits=None, y=None):
        if setting is None:
            return
        if isinstance(setting, str):
            if logits is None:  # checked now, chosen once the validation rows are predicted
                return _metric(setting)
            self._threshold = choose_threshold(self.decode(logits).proba[:, 1], np.asarray(y), setting)
        else:
            self._threshold = _probability(setting)

    def _extra_metrics(self, proba, pred, y, present):
        from sklearn import metrics as M

        out = {"f1_positive": float(M.f1_score(y, pred, pos_label=1, zero_division=0)), "threshold": self._threshold}
        if len(present) == 2:
            out["roc_auc"] = float(M.roc_auc_score(y, proba[:, 1]))
            out["pr_auc"] = float(M.average_precision_score(y, proba[:, 1]))
        if self._threshold != 0.5:
            half = _positive(proba[:, 1], 0.5)
            out["at_0.5"] = {"accuracy": float(M.accuracy_score(y, half)),
                             "balanced_accuracy": float(M.balanced_accuracy_score(y, half)),
                             "f1_positive": float(M.f1_score(y, half, pos_label=1, zero_division=0))}
        return out

    def to_dict(self):
        return {**super().to_dict(), "threshold": self._threshold}

    def _load(self, d):
        super()._load(d)
        self._threshold = float(d.get("threshold") or 0.5)


@register_task("multilabel")
class MultilabelTask(Task):
    quick_metric_names = ("accuracy", "macro_f1")

    """Any subset of K labels per row (lists, or strings ``"a|b"``): one sigmoid per label, each
    with its own decision threshold (0.5 unless set or chosen per label on validation rows).

    Class weights weigh each label's positive term (``pos_weight``); ``balanced`` sets it to
    ``negatives / positives`` of that label in the training rows."""

    headline = "macro_f1"

    def __init__(self, column: str, label_sep: str = "|"):
        super().__init__(column, label_sep)
        self.thresholds_: np.ndarray | None = None

    @property
    def threshold(self):
        return None if self.thresholds_ is None else self.thresholds_.tolist()

    def _split(self, v) -> list[str]:
        if isinstance(v, (list, tuple, np.ndarray)):
            return [_key(x) for x in v]
        return [s.strip() for s in str(v).split(self.label_sep) if s.strip()]

    def _fit(self, y):
        keys = sorted({k for v in y for k in self._split(v)}, key=_natural)
        if len(keys) < 2:
            raise SchemaError(f"multilabel target {self.column!r} has fewer than two labels: {keys}")
        self.classes_ = keys
        self.thresholds_ = np.full(len(keys), 0.5)

    def unseen_labels(self, df):
        y = self._column(df)
        return sorted({k for v in y[~y.map(_blank)] for k in self._split(v)} - set(self.classes_), key=_natural)

    def _labels_of(self, v) -> list[str]:
        return list(self._split(v))

    def _encode(self, row, v):
        hot = np.zeros(len(self.classes_), np.float32)
        for k in self._split(v):
            if k not in self._index:
                raise InputError(row, self.column, f"has the label {k!r}, unseen in training")
            hot[self._index[k]] = 1
        return hot

    def _stack(self, out):
        return np.stack(out) if out else np.zeros((0, len(self.classes_)), np.float32)

    def class_weights(self, setting, y):
        if setting is None:
            return None
        y = np.asarray(y)
        if isinstance(setting, str) and setting == "balanced":
            pos = y.sum(0)
            import torch

            return torch.tensor((len(y) - pos) / np.maximum(pos, 1), dtype=torch.float32)
        return super().class_weights(setting, y)

    def loss(self, logits, y, class_weights=None):
        import torch.nn.functional as F

        pw = None if class_weights is None else class_weights.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=pw)

    def decode(self, logits, threshold=None):
        proba = _sigmoid(_float32(logits))
        t = self.thresholds_ if threshold is None else np.broadcast_to(np.asarray(threshold, float), proba.shape[1:])
        ids = (proba >= t).astype(np.int64)
        classes = self.labels()
        labels = np.empty(len(ids), dtype=object)
        labels[:] = [list(classes[r.astype(bool)]) for r in ids]
        return Decoded(proba, ids, labels)

    def row_scores(self, logits, y):
        return None  # macro-F1 does not split by row (the share of labels right would reward predicting none)

    def logits_of(self, proba):
        return _logit(np.asarray(proba))

    def output_columns(self, decoded, proba=True):
        cols = super().output_columns(decoded, proba)
        cols["prediction"] = np.asarray([self.label_sep.join(map(str, v)) for v in decoded.labels], dtype=object)
        return cols

    def set_threshold(self, setting, logits=None, y=None):
        """A number for every label, a list of one per label, or a metric chosen per label on validation rows."""
        if setting is None:
            return
        k = len(self.classes_)
        if isinstance(setting, str):
            if logits is None:  # checked now, chosen once the validation rows are predicted
                return _metric(setting)
            proba, y = self.decode(logits).proba, np.asarray(y)
            self.thresholds_ = np.array([choose_threshold(proba[:, j], y[:, j], setting) for j in range(k)])
            return
        vals = setting if isinstance(setting, (list, tuple, np.ndarray)) else [setting] * k
        if len(vals) != k:
            raise MmfuseError(f"decision_threshold for multilabel {self.column!r}: give one number, or {k} (one per "
                              f"label {self.classes_}), got {len(vals)}")
        self.thresholds_ = np.array([_probability(v) for v in vals])

    def quick_metrics(self, logits, y):
        import torch

        pred = torch.as_tensor(self.decode(logits).ids).float()
        y = y.float()
        tp = (pred * y).sum(0)
        f1 = 2 * tp / (pred.sum(0) + y.sum(0)).clamp_min(1)
        present = y.sum(0) > 0
        return {"accuracy": float((pred == y).float().mean()),
                "macro_f1": float(f1[present].mean()) if bool(present.any()) else 0.0}

    def metrics(self, logits, y):
        from sklearn import metrics as M

        d = self.decode(logits)
        proba, pred, y = d.proba, d.ids, np.asarray(y).astype(int)
        names = [str(c) for c in self.classes_]
        present = [j for j in range(len(names)) if y[:, j].any()]
        out = {"report": _report(M, y, pred, names, present),
               "subset_accuracy": float(M.accuracy_score(y, pred)),
               "macro_f1": float(M.f1_score(y, pred, average="macro", labels=present, zero_division=0))
               if present else 0.0,
               "micro_f1": float(M.f1_score(y, pred, average="micro", zero_division=0)),
               "absent_classes": [names[j] for j in range(len(names)) if j not in present],
               "thresholds": self.thresholds_.tolist(), "n": int(len(y))}
        if len(present) == len(names) and (y.sum(0) < len(y)).all():
            out["roc_auc_macro"] = float(M.roc_auc_score(y, proba, average="macro"))
            out["pr_auc_macro"] = float(M.average_precision_score(y, proba, average="macro"))
        return out

    def to_dict(self):
        return {**super().to_dict(), "thresholds": self.threshold}

    def _load(self, d):
        super()._load(d)
        t = d.get("thresholds")
        self.thresholds_ = np.asarray(t, float) if t is not None else np.full(len(self.classes_), 0.5)


@register_task("regression")
class RegressionTask(Task):
    quick_metric_names = ("rmse",)

    """A number per row, standardized with the training rows' mean and standard deviation;
    ``regression_loss`` is ``mse`` or ``huber`` (on the standardized scale)."""

    headline = "rmse"
    higher_is_better = False
    LOSSES = ("mse", "huber")

    def __init__(self, column: str, label_sep: str = "|", regression_loss: str = "mse"):
        super().__init__(column, label_sep)
        if regression_loss not in self.LOSSES:
            raise MmfuseError(f"regression_loss must be one of {list(self.LOSSES)}, got {regression_loss!r}")
        self.regression_loss = regression_loss
        self.mean_, self.std_ = 0.0, 1.0

    @property
    def n_outputs(self) -> int:
        return 1

    def _fit(self, y):
        vals = pd.to_numeric(y, errors="coerce")
        bad = vals.isna()
        if bad.any():
            row = y.index[bad.to_numpy()][0]
            raise InputError(row, self.column, f"holds {y[row]!r}, which is not a number",
                             hint="a regression target must be numeric; pass task='multiclass' for labels")
        if vals.nunique() < 2:
            raise SchemaError(f"target {self.column!r} has a single value ({vals.iloc[0] if len(vals) else 'none'}); "
                              "there is nothing to learn")
        self.mean_, self.std_ = float(vals.mean()), float(vals.std(ddof=0)) or 1.0

    def _encode(self, row, v):
        try:
            return (float(v) - self.mean_) / self.std_
        except (TypeError, ValueError):
            raise InputError(row, self.column, f"holds {v!r}, which is not a number") from None

    def _stack(self, out):
        return np.asarray(out, np.float32)

    def class_weights(self, setting, y):
        if setting is not None and setting != "auto":
            raise MmfuseError(f"class_weight applies to classification; {self.column!r} is a regression target: "
                              "leave it unset")
        return None

    def loss(self, logits, y, class_weights=None):
        import torch.nn.functional as F

        fn = F.huber_loss if self.regression_loss == "huber" else F.mse_loss
        return fn(logits[:, 0].float(), y.float())

    def decode(self, logits, threshold=None):
        if threshold is not None:
            raise MmfuseError(f"a decision threshold applies to binary and multilabel targets; {self.column!r} is "
                              "a regression target")
        z = _float32(logits)[:, 0]
        values = self.inverse(z)
        return Decoded(values, z, values)

    def row_scores(self, logits, y):
        return -((self.decode(logits).ids - np.asarray(y)) ** 2).astype(float)  # the standardized scale

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Standardized values -> the target's units."""
        return z * self.std_ + self.mean_

    def logits_of(self, proba):
        import torch

        z = (np.asarray(proba, float) - self.mean_) / self.std_  # values -> the standardized scale
        return torch.as_tensor(z, dtype=torch.float64).reshape(-1, 1)

    def proba_of_frame(self, frame):
        if "prediction" not in frame.columns:
            raise MmfuseError(f"the predictions of {self.column!r} lack the column 'prediction' (they have "
                              f"{list(frame.columns)})")
        return pd.to_numeric(frame["prediction"], errors="coerce").to_numpy(float)

    def output_columns(self, decoded, proba=True):
        return {"prediction": decoded.labels}

    def quick_metrics(self, logits, y):
        err = (logits[:, 0].float() - y.float()) * self.std_
        return {"rmse": float(err.pow(2).mean().sqrt())}

    def metrics(self, logits, y):
        from sklearn import metrics as M

        pred, y = self.decode(logits).labels, self.inverse(np.asarray(y, float))
        return {"mae": float(M.mean_absolute_error(y, pred)), "rmse": float(np.sqrt(M.mean_squared_error(y, pred))),
                "r2": float(M.r2_score(y, pred)), "n": int(len(y))}

    def labels(self) -> np.ndarray:
        raise MmfuseError(f"{self.column!r} is a regression target; it has no class labels")

    def to_dict(self):
        return {**super().to_dict(), "mean": self.mean_, "std": self.std_, "loss": self.regression_loss}

    def _load(self, d):
        super()._load(d)
        self.mean_, self.std_ = d.get("mean", 0.0), d.get("std", 1.0)
        if not all(isinstance(v, (int, float)) for v in (self.mean_, self.std_)) or not self.std_ > 0:
            raise MmfuseError(f"the regression target {self.column!r} needs a numeric mean and a positive std, got "
                              f"{self.mean_!r} and {self.std_!r}")


# --- inference of the kind of task ------------------------------------------------------------
def infer_task(y: pd.Series, max_classes: int = 100) -> str:
    """The task's name for these target values (blank cells ignored): lists of labels are
    multilabel; floats with many distinct non-integer values (or more than ``max_classes``
    distinct numbers) are regression; two classes are binary; else multiclass."""
    v = y[~y.map(_blank)]
    if len(v) and isinstance(v.iloc[0], (list, tuple, np.ndarray)):
        return "multilabel"
    n = v.map(_key).nunique()  # 'yes' and 'yes ' are one class
    if not pd.api.types.is_numeric_dtype(v) and n > 20:
        numbers = pd.to_numeric(v, errors="coerce")
        if numbers.notna().all():  # numbers written as text ("0.37" in JSON Lines): read them as numbers
            v = numbers
        elif numbers.notna().mean() >= 0.9:  # numbers with a few stray strings: a typo, not hundreds of classes
            row = numbers.index[numbers.isna().to_numpy()][0]
            raise InputError(row, y.name, f"holds {v[row]!r}, but the other values of this target are numbers",
                             hint="fix the cell, or set the task (task='regression' / --task regression, or "
                                  "'multiclass')")
    if pd.api.types.is_float_dtype(v) and n > 20 and not np.allclose(v, np.round(v)):
        return "regression"
    if pd.api.types.is_numeric_dtype(v) and n > max_classes:
        return "regression"
    return "binary" if n == 2 else "multiclass"


def fit_task(df: pd.DataFrame, column: str, task: str | None = None, **options) -> Task:
    """Create the task of ``column`` (inferred from the rows when ``task`` is None) and fit it on ``df``.

    ``options`` go to the task's constructor (``regression_loss`` for regression); an option that
    the task does not take is an error, not silently ignored."""
    import inspect

    if column not in df.columns:
        from ._registry import unknown_name_message

        raise SchemaError(unknown_name_message("target column", column, df.columns))
    name = task if task is not None else infer_task(df[column])
    cls = TASKS.get(name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    for k, v in options.items():
        if k not in accepted and v != _DEFAULTS.get(k):
            raise MmfuseError(f"{k}={v!r} does not apply to the {name} target {column!r}; leave it unset")
    return cls(column=column, **{k: v for k, v in options.items() if k in accepted}).fit(df)


_DEFAULTS = {"regression_loss": "mse"}


# --- helpers ---------------------------------------------------------------------------------
def choose_threshold(p: np.ndarray, y: np.ndarray, metric: str = "f1") -> float:
    """The threshold on the positive probabilities ``p`` (N,) that maximizes ``metric`` against
    0/1 targets ``y``. Candidates: 0.01, 0.02, ..., 0.99; among equally good ones, the closest to 0.5."""
    from sklearn import metrics as M

    score = {"f1": lambda t, q: M.f1_score(t, q, zero_division=0), "accuracy": M.accuracy_score,
             "balanced_accuracy": M.balanced_accuracy_score, "mcc": M.matthews_corrcoef}[_metric(metric)]
    grid = np.round(np.arange(1, 100) / 100, 2)
    values = np.array([score(y, _positive(p, t)) for t in grid])
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): ``Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|`` over equal-width confidence bins."""
    conf = proba.max(1)
    correct = (proba.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inb.any():
            ece += inb.mean() * abs(correct[inb].mean() - conf[inb].mean())
    return float(ece)


def _report(M, y, pred, names: list[str], present: list[int]) -> dict:
    """scikit-learn's per-class report over the classes present in the true labels, so that its macro
    average follows the same rule as ``macro_f1`` (absent classes are listed under ``absent_classes``)."""
    if not present:
        return {}
    return M.classification_report(y, pred, labels=present, target_names=[names[j] for j in present],
                                   output_dict=True, zero_division=0)


_EPS = 1e-12  # probabilities are clipped to [_EPS, 1 - _EPS] before their logarithm


def _logit(p: np.ndarray) -> torch.Tensor:
    import torch

    p = np.clip(np.asarray(p, float), _EPS, 1 - _EPS)
    return torch.as_tensor(np.log(p) - np.log1p(-p), dtype=torch.float64)


def _float32(logits) -> np.ndarray:
    """Logits as a float32 numpy array: decoding runs in numpy, so an exported model's outputs
    (:mod:`mmfuse.onnx`) decode as a torch model's do, without torch."""
    if hasattr(logits, "detach"):  # a torch tensor
        logits = logits.detach().float().cpu().numpy()
    return np.asarray(logits, dtype=np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow for large |z| (a NaN stays NaN, silently, as in torch)."""
    with np.errstate(invalid="ignore"):
        return np.exp(-np.logaddexp(np.float32(0), -z)).astype(np.float32)


def _positive(p: np.ndarray, threshold: float) -> np.ndarray:
    return (p >= threshold).astype(np.int64)


def _metric(name) -> str:
    if name not in THRESHOLD_METRICS:
        raise MmfuseError(f"decision_threshold: unknown metric {name!r}; give a number or one of "
                          f"{', '.join(THRESHOLD_METRICS)}")
    return name


def _probability(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0 < v < 1:
        raise MmfuseError(f"decision_threshold must be a probability between 0 and 1 or a metric name "
                          f"({', '.join(THRESHOLD_METRICS)}), got {v!r}")
    return float(v)


def blank_targets(y: pd.Series) -> np.ndarray:
    """Boolean mask of the blank cells of a target column (the same for every kind of task)."""
    return y.map(_blank).to_numpy(dtype=bool)


def _blank(v) -> bool:
    from .preprocessing._base import is_missing

    if isinstance(v, (list, tuple, np.ndarray)):
        return False  # an empty label list is a valid multilabel target: no label
    return is_missing(v)


def _key(v) -> str:
    from .preprocessing.tabular import category_key

    return category_key(v)


def _natural(k: str):
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)
