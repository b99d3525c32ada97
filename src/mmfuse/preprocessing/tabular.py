"""Numbers and categories: one ``tabular`` input read by one MLP with categorical embeddings."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from ..schema import comma_style, parse_number, to_numbers
from ._base import PREPROCESSORS, Preprocessor, ReadContext, bad, check_number, is_missing

MISSING_ID, UNKNOWN_ID = 0, 1


def to_float(v, row=None, column=None, comma: str | None = None) -> float:
    """A cell as a float; NaN for missing. Strings that are not numbers and inf are bad input.

    Numbers are read by :func:`mmfuse.schema.parse_number`, as ``inspect`` reads them: ``12,5``,
    ``$1,000`` and ``10%`` are 12.5, 1000 and 0.1 (``comma="decimal"``: ``2,500`` is 2.5)."""
    if is_missing(v):
        return math.nan
    x = parse_number(v, comma)
    if x is None:
        raise bad(row, column, f"holds {v!r}, which is not a number",
                  hint="fix the cell, leave it empty to mark it missing, or read such cells as missing "
                       "(--on-bad-input missing, on_bad_input='missing')")
    if math.isinf(x):
        raise bad(row, column, f"holds {x}, an infinite value", hint="replace it with a finite number or leave it empty")
    return x


def category_key(v) -> str:
    """Categories compare as strings; 3, 3.0 and '3' are the same category."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


@PREPROCESSORS.register("numeric")
class NumericPreprocessor(Preprocessor):
    """Median imputation with a missing indicator, then standardization.

    For each column: ``x' = (x - center) / scale``, with center = mean and scale = std, or with
    ``robust=True`` center = median and scale = IQR / 1.349 (the std of a normal with that
    IQR). A missing value becomes the training median (0 after standardization when robust)
    and its indicator is 1. Output: ``float32 [2 * n_columns]`` (values, then indicators).

    A column whose training cells write a decimal comma (:func:`mmfuse.schema.comma_style`) reads every
    comma of its cells, in training and prediction, as one: ``2,500`` is then 2.5, not 2500.
    """

    modality = "tabular"
    eager = True
    _config_keys = ("robust",)

    def __init__(self, columns, robust: bool = False):
        super().__init__(columns)
        self.robust = robust

    def fit(self, df: pd.DataFrame, ctx: ReadContext):
        state = self.fit_stream_start(sample=None)  # every value: exact medians and quartiles
        self.fit_stream_update(state, df)
        return self.fit_stream_finish(state, ctx)

    # a streamed fit (tables larger than memory, :mod:`mmfuse.streaming`): exact means and standard
    # deviations (Chan's parallel update), medians and quartiles of a uniform sample of 100,000 of each
    # column's values (``fit`` on a table in memory keeps every value: exact)
    _QUANTILE_SAMPLE = 100_000

    def fit_stream_start(self, sample: int | None = _QUANTILE_SAMPLE) -> dict:
        return {"n": np.zeros(len(self.columns)), "mean": np.zeros(len(self.columns)),
                "m2": np.zeros(len(self.columns)), "keep": [np.zeros(0) for _ in self.columns],
                "keys": [np.zeros(0) for _ in self.columns], "rng": np.random.default_rng(0), "sample": sample,
                # how the columns write a comma: kept from a fit on a sample (a streamed table's), else decided
                # by the first piece, never changed after it (every value is then read one way)
                "comma": list(self.comma_) if self.fitted_ and len(self.comma_) == len(self.columns) else None}

    def fit_stream_update(self, state: dict, df: pd.DataFrame) -> None:
        if state["comma"] is None:  # a table in memory is one piece: decided by all its cells
            state["comma"] = [comma_style(df[c]) for c in self.columns]
        for j, c in enumerate(self.columns):
            x = to_numbers(df[c], state["comma"][j])  # strays are NaN here, and reported when read
            x = x[np.isfinite(x)]
            if not len(x):
                continue
            n, m = state["n"][j], state["mean"][j]
            nb, mb = len(x), float(x.mean())
            delta = mb - m
            state["mean"][j] = m + delta * nb / (n + nb)
            state["m2"][j] += float(((x - mb) ** 2).sum()) + delta ** 2 * n * nb / (n + nb)
            state["n"][j] = n + nb
            k, new = state["sample"], state["rng"].random(nb)  # the values of the k smallest keys are a uniform
            if k is not None and len(state["keys"][j]) >= k:  # sample of all values seen; a new value whose key
                under = new < state["keys"][j].max()  # is above the k-th cannot enter
                new, x = new[under], x[under]
            keys = np.concatenate([state["keys"][j], new])
            vals = np.concatenate([state["keep"][j], x])
            if k is not None and len(keys) > k:
                top = np.argpartition(keys, k)[:k]
                keys, vals = keys[top], vals[top]
            state["keys"][j], state["keep"][j] = keys, vals

    def fit_stream_finish(self, state: dict, ctx: ReadContext):
        med, center, scale = [], [], []
        for j, c in enumerate(self.columns):
            x = state["keep"][j] if len(state["keep"][j]) else np.zeros(1)
            m = float(np.median(x))
            med.append(m)
            if self.robust:
                q1, q3 = np.percentile(x, [25, 75])
                center.append(m)
                scale.append(float(q3 - q1) / 1.349)
            else:
                n = state["n"][j]
                center.append(float(state["mean"][j]) if n else 0.0)
                scale.append(float(np.sqrt(state["m2"][j] / n)) if n else 0.0)
        self.median_ = np.asarray(med, np.float64)
        self.center_ = np.asarray(center, np.float64)
        s = np.asarray(scale, np.float64)
        self.scale_ = np.where(s > 1e-12, s, 1.0)
        self.comma_ = list(state.get("comma") or [None] * len(self.columns))
        self.fitted_ = True
        return self

    comma_: list = ()  # per column: "decimal" or None; set by a fit or a load (a bundle written before it: None)

    def read(self, cells, row, ctx):
        x = np.array([to_float(v, row, c, k) for c, v, k in zip(self.columns, cells, self.comma_)], np.float64)
        miss = np.isnan(x)
        if miss.all():
            return None
        x = np.where(miss, self.median_, x)
        z = (x - self.center_) / self.scale_
        return {"num": np.concatenate([z, miss]).astype(np.float32)}

    def item_spec(self):
        return {"num": ((2 * len(self.columns),), np.dtype(np.float32))}

    def extra_state(self):
        meta = {"comma": list(self.comma_)} if any(self.comma_) else {}  # (unchanged for columns without one)
        return meta, {"median": self.median_, "center": self.center_, "scale": self.scale_}

    def load_extra_state(self, meta, arrays):
        self.median_, self.center_, self.scale_ = arrays["median"], arrays["center"], arrays["scale"]
        self.comma_ = list(meta.get("comma") or [None] * len(self.columns))


@PREPROCESSORS.register("categorical")
class CategoricalPreprocessor(Preprocessor):
    """A vocabulary per column with buckets for missing (id 0) and unknown (id 1) values.

    Values seen fewer than ``min_freq`` times in training, and values first seen at
    prediction time, map to the unknown bucket; :attr:`unknown_counts` counts them per column.
    Output: ``int64 [n_columns]``.
    """

    modality = "tabular"
    eager = True
    _config_keys = ("min_freq",)

    def __init__(self, columns, min_freq: int = 1):
        super().__init__(columns)
        self.min_freq = min_freq
        self.unknown_counts: Counter = Counter()

    def fit(self, df: pd.DataFrame, ctx: ReadContext):
        state = self.fit_stream_start()
        self.fit_stream_update(state, df)
        return self.fit_stream_finish(state, ctx)

    def fit_stream_start(self) -> dict:  # a streamed fit: the counts of every chunk of rows, added up
        check_number(type(self).__name__, "min_freq", self.min_freq, 1)
        return {c: Counter() for c in self.columns}

    def fit_stream_update(self, state: dict, df: pd.DataFrame) -> None:
        for c in self.columns:
            state[c].update(category_key(v) for v in df[c] if not is_missing(v))

    def fit_stream_finish(self, state: dict, ctx: ReadContext):
        self.vocab_ = {}
        for c in self.columns:
            counts = state[c]
            keep = sorted((k for k, n in counts.items() if n >= self.min_freq), key=lambda k: (-counts[k], k))
            self.vocab_[c] = keep
        self._index = {c: {k: i + 2 for i, k in enumerate(v)} for c, v in self.vocab_.items()}
        self.fitted_ = True
        return self

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes, the two buckets included."""
        return [len(self.vocab_[c]) + 2 for c in self.columns]

    def read(self, cells, row, ctx):
        ids = np.empty(len(self.columns), np.int64)
        for j, (c, v) in enumerate(zip(self.columns, cells)):
            if is_missing(v):
                ids[j] = MISSING_ID
            else:
                ids[j] = self._index[c].get(category_key(v), UNKNOWN_ID)
                if ids[j] == UNKNOWN_ID:
                    self.unknown_counts[c] += 1
        if (ids == MISSING_ID).all():
            return None
        return {"cat": ids}

    def item_spec(self):
        return {"cat": ((len(self.columns),), np.dtype(np.int64))}

    def extra_state(self):
        return {"vocab": self.vocab_}, {}

    def load_extra_state(self, meta, arrays):
        self.vocab_ = {c: list(v) for c, v in meta["vocab"].items()}
        self._index = {c: {k: i + 2 for i, k in enumerate(v)} for c, v in self.vocab_.items()}


@PREPROCESSORS.register("tabular")
class TabularPreprocessor(Preprocessor):
    """Numeric and categorical columns of one input.

    The input is absent in a row only when every one of its columns is empty; otherwise
    empty numbers are imputed and empty categories use the missing bucket.
    Encoder input: ``{"num": float32 [B, 2 * n_numeric], "cat": int64 [B, n_categorical]}``.
    """

    modality = "tabular"
    eager = True
    _config_keys = ("numeric", "categorical", "robust", "min_freq")

    def __init__(self, columns, numeric=(), categorical=(), robust: bool = False, min_freq: int = 1):
        super().__init__(columns)
        self.numeric, self.categorical = list(numeric), list(categorical)
        self.robust, self.min_freq = robust, min_freq
        self.num = NumericPreprocessor(self.numeric, robust=robust)
        self.cat = CategoricalPreprocessor(self.categorical, min_freq=min_freq)

    @property
    def unknown_counts(self) -> Counter:
        return self.cat.unknown_counts

    @property
    def n_numeric(self) -> int:
        return len(self.numeric)

    @property
    def cardinalities(self) -> list[int]:
        return self.cat.cardinalities

    def fit(self, df, ctx):
        self.num.fit(df, ctx)
        self.cat.fit(df, ctx)
        return super().fit(df, ctx)

    def fit_stream_start(self) -> dict:
        return {"num": self.num.fit_stream_start(), "cat": self.cat.fit_stream_start()}

    def fit_stream_update(self, state: dict, df) -> None:
        self.num.fit_stream_update(state["num"], df)
        self.cat.fit_stream_update(state["cat"], df)

    def fit_stream_finish(self, state: dict, ctx):
        self.num.fit_stream_finish(state["num"], ctx)
        self.cat.fit_stream_finish(state["cat"], ctx)
        self.fitted_ = True
        return self

    def read(self, cells, row, ctx):
        by = dict(zip(self.columns, cells))
        num = self.num.read([by[c] for c in self.numeric], row, ctx) if self.numeric else None
        cat = self.cat.read([by[c] for c in self.categorical], row, ctx) if self.categorical else None
        if num is None and cat is None:
            return None
        if num is None:  # all numbers empty, some category present: impute every number
            num = self._all_missing_num()
        if cat is None:
            cat = {"cat": np.zeros(len(self.categorical), np.int64)}
        return {**num, **cat}

    def _all_missing_num(self):
        n = len(self.numeric)
        z = (self.num.median_ - self.num.center_) / self.num.scale_ if n else np.zeros(0)
        return {"num": np.concatenate([z, np.ones(n)]).astype(np.float32)}

    def item_spec(self):
        return {"num": ((2 * len(self.numeric),), np.dtype(np.float32)),
                "cat": ((len(self.categorical),), np.dtype(np.int64))}

    def batch(self, arrays, train=False, generator=None):
        return {"num": arrays["num"], "cat": arrays["cat"]}

    def extra_state(self):
        nm, na = self.num.extra_state()
        cm, _ = self.cat.extra_state()
        return {"numeric": nm, "categorical": cm}, {f"num.{k}": v for k, v in na.items()}

    def load_extra_state(self, meta, arrays):
        self.num.load_extra_state(meta["numeric"], {k[4:]: v for k, v in arrays.items() if k.startswith("num.")})
        self.cat.load_extra_state(meta["categorical"], {})
        self.num.fitted_ = self.cat.fitted_ = True
