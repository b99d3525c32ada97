"""The target column: label names for classification, float values for regression."""
from __future__ import annotations

from enum import Enum

import numpy as np
import pandas as pd

from ..errors import InputError, MmfuseError, SchemaError
from .tabular import category_key
from ._base import is_missing


class Task(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    REGRESSION = "regression"

    @classmethod
    def parse(cls, v) -> "Task":
        from .._registry import parse_enum

        return parse_enum(cls, v, "task")


def infer_task(y: pd.Series, max_classes: int = 100) -> Task:
    """Lists of labels are multilabel; floats with many distinct non-integer values (or more
    than ``max_classes`` distinct numbers) are regression; two classes are binary; else multiclass."""
    v = y.dropna()
    if len(v) and isinstance(v.iloc[0], (list, tuple, np.ndarray)):
        return Task.MULTILABEL
    n = v.nunique()
    if pd.api.types.is_float_dtype(v) and n > 20 and not np.allclose(v, np.round(v)):
        return Task.REGRESSION
    if pd.api.types.is_numeric_dtype(v) and n > max_classes:
        return Task.REGRESSION
    return Task.BINARY if n == 2 else Task.MULTICLASS


class TargetEncoder:
    """Maps target cells to class indices, multi-hot vectors or standardized floats.

    Args:
        column: The target column.
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``; inferred when None.
        label_sep: For multilabel targets given as strings, the separator (``"a|b"``).

    Raises:
        SchemaError: when the column is absent, or has fewer than two classes/values.
        InputError: for an empty target cell, naming the row.
    """

    def __init__(self, column: str, task: Task | str | None = None, label_sep: str = "|"):
        self.column = column
        self.task = Task.parse(task) if task is not None else None
        self.label_sep = label_sep
        self.classes_ = None
        self.mean_, self.std_ = 0.0, 1.0
        self.numeric_labels_ = False

    def _labels(self, v) -> list[str]:
        if isinstance(v, (list, tuple, np.ndarray)):
            return [category_key(x) for x in v]
        return [s.strip() for s in str(v).split(self.label_sep) if s.strip()]

    def fit(self, df: pd.DataFrame) -> "TargetEncoder":
        if self.column not in df.columns:
            from .._registry import unknown_name_message

            raise SchemaError(unknown_name_message("target column", self.column, df.columns))
        y = df[self.column]
        present = y[~y.map(is_missing)]
        if self.task is None:
            self.task = infer_task(present)
        if self.task is Task.REGRESSION:
            vals = pd.to_numeric(present, errors="coerce").dropna()
            if vals.nunique() < 2:
                raise SchemaError(f"target {self.column!r} has a single value ({vals.iloc[0] if len(vals) else 'none'}); "
                                  "there is nothing to learn")
            self.mean_, self.std_ = float(vals.mean()), float(vals.std(ddof=0)) or 1.0
        elif self.task is Task.MULTILABEL:
            keys = sorted({k for v in present for k in self._labels(v)}, key=_natural)
            if len(keys) < 2:
                raise SchemaError(f"multilabel target {self.column!r} has fewer than two labels: {keys}")
            self.classes_ = keys
        else:
            keys = sorted({category_key(v) for v in present}, key=_natural)
            if len(keys) < 2:
                raise SchemaError(f"target {self.column!r} has a single class ({keys[0] if keys else 'none'}) in the "
                                  "training rows; a classifier needs at least two")
            self.classes_ = keys
            self.numeric_labels_ = bool(pd.api.types.is_numeric_dtype(present))
        self._index = {k: i for i, k in enumerate(self.classes_ or [])}
        return self

    def labels(self) -> np.ndarray:
        """The class labels as given in training: numbers stay numbers (``3``, not ``'3'``)."""
        if self.numeric_labels_:
            vals = [float(k) for k in self.classes_]
            if all(v.is_integer() for v in vals):
                return np.asarray([int(v) for v in vals])
            return np.asarray(vals)
        return np.asarray(self.classes_, dtype=object)

    @property
    def n_outputs(self) -> int:
        """Width of the model's output: 1 for regression and binary, else the number of classes."""
        if self.task in (Task.REGRESSION, Task.BINARY):
            return 1
        return len(self.classes_)

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Class indices (int64 [N]), multi-hot (float32 [N, K]) or standardized values (float32 [N])."""
        out = []
        for row, v in df[self.column].items():
            if is_missing(v) if not isinstance(v, (list, tuple, np.ndarray)) else False:
                raise InputError(row, self.column, "has no target value",
                                 hint="drop unlabeled rows or fill the target before training")
            if self.task is Task.REGRESSION:
                try:
                    out.append((float(v) - self.mean_) / self.std_)
                except (TypeError, ValueError):
                    raise InputError(row, self.column, f"holds {v!r}, which is not a number") from None
            elif self.task is Task.MULTILABEL:
                hot = np.zeros(len(self.classes_), np.float32)
                for k in self._labels(v):
                    if k not in self._index:
                        raise InputError(row, self.column, f"has the label {k!r}, unseen in training")
                    hot[self._index[k]] = 1
                out.append(hot)
            else:
                k = category_key(v)
                if k not in self._index:
                    raise InputError(row, self.column, f"has the label {k!r}, unseen in training")
                out.append(self._index[k])
        if self.task is Task.MULTILABEL:
            return np.stack(out) if out else np.zeros((0, len(self.classes_)), np.float32)
        return np.asarray(out, np.float32 if self.task is Task.REGRESSION else np.int64)

    def inverse_regression(self, z: np.ndarray) -> np.ndarray:
        return z * self.std_ + self.mean_

    def to_dict(self) -> dict:
        return {"column": self.column, "task": self.task.value, "classes": self.classes_, "label_sep": self.label_sep,
                "mean": self.mean_, "std": self.std_,
                "numeric_labels": self.numeric_labels_}

    @classmethod
    def from_dict(cls, d) -> "TargetEncoder":
        obj = cls(d["column"], d["task"], d.get("label_sep", "|"))
        obj.classes_ = d["classes"]
        obj.mean_, obj.std_ = d.get("mean", 0.0), d.get("std", 1.0)
        obj.numeric_labels_ = d.get("numeric_labels", False)
        obj._index = {k: i for i, k in enumerate(obj.classes_ or [])}
        return obj


def _natural(k: str):
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)
