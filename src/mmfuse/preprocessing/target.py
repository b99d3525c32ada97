"""The target column: label names for classification, float values for regression."""
from __future__ import annotations

from enum import Enum

import numpy as np
import pandas as pd

from ..errors import InputError, SchemaError
from .tabular import category_key
from ._base import is_missing


class Task(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


def infer_task(y: pd.Series, max_classes: int = 100) -> Task:
    """Float values with more distinct values than ``max_classes``, or non-integer floats with
    more than 20 distinct values, are regression; everything else is classification."""
    v = y.dropna()
    n = v.nunique()
    if pd.api.types.is_float_dtype(v) and n > 20 and not np.allclose(v, np.round(v)):
        return Task.REGRESSION
    if pd.api.types.is_numeric_dtype(v) and n > max_classes:
        return Task.REGRESSION
    return Task.BINARY if n == 2 else Task.MULTICLASS


class TargetEncoder:
    """Maps target cells to class indices (sorted label names) or float values.

    Raises:
        SchemaError: when the column is absent, or has fewer than two classes/values.
        InputError: for an empty target cell, naming the row.
    """

    def __init__(self, column: str, task: Task | str | None = None):
        self.column = column
        self.task = Task(task) if task is not None else None

    def fit(self, df: pd.DataFrame) -> "TargetEncoder":
        if self.column not in df.columns:
            from .._registry import unknown_name_message

            raise SchemaError(unknown_name_message("target column", self.column, df.columns))
        y = df[self.column]
        present = y[~y.map(is_missing)]
        if self.task is None:
            self.task = infer_task(present)
        if self.task is Task.REGRESSION:
            vals = pd.to_numeric(present, errors="coerce")
            if vals.nunique() < 2:
                raise SchemaError(f"target {self.column!r} has a single value ({vals.iloc[0] if len(vals) else 'none'}); "
                                  "there is nothing to learn")
            self.classes_ = None
        else:
            keys = sorted({category_key(v) for v in present}, key=_natural)
            if len(keys) < 2:
                raise SchemaError(f"target {self.column!r} has a single class ({keys[0] if keys else 'none'}) in the "
                                  "training rows; a classifier needs at least two")
            self.classes_ = keys
            self._index = {k: i for i, k in enumerate(keys)}
        return self

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        out = []
        for row, v in df[self.column].items():
            if is_missing(v):
                raise InputError(row, self.column, "has no target value",
                                 hint="drop unlabeled rows or fill the target before training")
            if self.task is Task.REGRESSION:
                out.append(float(v))
            else:
                k = category_key(v)
                if k not in self._index:
                    raise InputError(row, self.column, f"has the label {k!r}, unseen in training")
                out.append(self._index[k])
        return np.asarray(out, np.float32 if self.task is Task.REGRESSION else np.int64)

    def to_dict(self) -> dict:
        return {"column": self.column, "task": self.task.value, "classes": self.classes_}

    @classmethod
    def from_dict(cls, d) -> "TargetEncoder":
        obj = cls(d["column"], d["task"])
        obj.classes_ = d["classes"]
        if obj.classes_ is not None:
            obj._index = {k: i for i, k in enumerate(obj.classes_)}
        return obj


def _natural(k: str):
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)
