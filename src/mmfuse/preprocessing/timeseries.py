"""Multichannel time series from files (CSV, TSV, NPY, Parquet) or lists of numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._base import (PREPROCESSORS, Preprocessor, ReadContext, bad, check_choice, check_number, is_missing, open_file_cell,
                    present_rows, read_for_fit, sample_rows)

_TIME_NAMES = {"t", "time", "timestamp", "ts", "datetime", "date"}


@PREPROCESSORS.register("timeseries")
class TimeseriesPreprocessor(Preprocessor):
    """Cells to ``float32 [C, length]``, standardized per channel.

    A cell is a path to a ``.csv``/``.tsv``/``.parquet`` file (rows are time steps; numeric
    columns are channels, except columns named like a time stamp), a ``.npy`` file of shape
    ``(T,)`` or ``(T, C)``, or a list of numbers (one channel) or of equal-length lists
    (``(T, C)``). Several columns in one input are concatenated along channels.

    Args:
        columns: Time-series columns.
        length: Output length in steps.
        mode: ``pad`` (crop the end / zero-pad after standardization) or ``resample``
            (linear interpolation to ``length`` steps).
        file_columns: Columns of CSV/Parquet files to use as channels (default: numeric,
            non-time columns).
        nan: ``interpolate`` (linear in time, edges held) or ``raise``.
    """

    modality = "timeseries"
    _config_keys = ("length", "mode", "file_columns", "nan", "channels_")

    def __init__(self, columns, length: int = 128, mode: str = "pad", file_columns=None, nan: str = "interpolate",
                 channels_=None):
        super().__init__(columns)
        self.length, self.mode, self.nan = length, mode, nan
        self.file_columns = list(file_columns) if file_columns else None
        self.channels_ = list(channels_) if channels_ else None

    def fit(self, df: pd.DataFrame, ctx: ReadContext):
        name = type(self).__name__
        check_choice(name, "mode", self.mode, ("pad", "resample"))
        check_choice(name, "nan", self.nan, ("interpolate", "raise"))
        check_number(name, "length", self.length, 1)
        chans, sums, sq, n = [], [], [], []
        for c in self.columns:
            load = lambda cells, row, c=c: self._load(cells[0], row, c, ctx)  # noqa: E731
            (first,) = read_for_fit(df[[c]], load, limit=1)  # the first readable series sets the channels
            k = first.shape[1]
            xs = [self._fit_length(a) for a in read_for_fit(sample_rows(present_rows(df[[c]]), 256), load)
                  if a.shape[1] == k]  # each (L', k)
            x = np.concatenate(xs) if xs else self._fit_length(first)
            chans.append(k)
            sums.append(x.sum(0))
            sq.append((x ** 2).sum(0))
            n.append(np.full(k, len(x)))
        sums, sq, n = np.concatenate(sums), np.concatenate(sq), np.concatenate(n)
        self.channels_ = chans
        self.mean_ = (sums / n).astype(np.float32)
        self.std_ = np.sqrt(np.maximum(sq / n - (sums / n) ** 2, 1e-12)).clip(1e-6).astype(np.float32)
        return super().fit(df, ctx)

    @property
    def n_channels(self) -> int:
        return sum(self.channels_)

    def _load(self, v, row, col, ctx) -> np.ndarray | None:
        """One cell as ``(T, C)`` float64 with NaNs handled."""
        if is_missing(v):
            return None
        file = resolved = None
        if isinstance(v, (list, tuple, np.ndarray)):
            try:
                a = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError):
                raise bad(row, col, "holds a sequence that is not numeric or whose rows differ in length") from None
        else:
            path = open_file_cell(v, ctx, col, row)
            file, resolved = str(v), str(path)
            a = self._read_file(path, row, col, file, resolved)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[0] == 0:
            raise bad(row, col, f"has shape {a.shape}; expected (time,) or (time, channels)", file, resolved)
        if np.isinf(a).any():
            raise bad(row, col, "holds infinite values", file, resolved)
        if np.isnan(a).any():
            if self.nan == "raise":
                raise bad(row, col, f"holds {int(np.isnan(a).sum())} NaN values", file, resolved,
                          "clean the series or use nan='interpolate'")
            a = interpolate_nans(a)
            if np.isnan(a).any():
                raise bad(row, col, "has a channel that is entirely NaN", file, resolved)
        return a

    def _read_file(self, path: Path, row, col, file, resolved) -> np.ndarray:
        ext = path.suffix.lower()
        if ext not in (".npy", ".csv", ".tsv", ".parquet"):
            raise bad(row, col, f"has unsupported extension {ext!r}", file, resolved,
                      "use .csv, .tsv, .parquet or .npy")
        try:
            if ext == ".npy":
                return np.load(path, allow_pickle=False).astype(np.float64)
            if ext == ".parquet":
                df = pd.read_parquet(path)
            else:
                df = pd.read_csv(path, sep="\t" if ext == ".tsv" else ",")
        except Exception as e:  # numpy, pandas and pyarrow each raise their own types for a broken file
            raise bad(row, col, f"cannot be read as a time series ({type(e).__name__}: {e})", file, resolved) from None
        if self.file_columns:
            absent = [c for c in self.file_columns if c not in df.columns]
            if absent:
                raise bad(row, col, f"lacks the columns {absent}", file, resolved)
            df = df[self.file_columns]
        else:
            df = df[[c for c in df.columns if c.lower() not in _TIME_NAMES and pd.api.types.is_numeric_dtype(df[c])]]
        return df.to_numpy(dtype=np.float64)

    def _fit_length(self, a: np.ndarray) -> np.ndarray:
        """(T, C) -> (length, C) for resample; (min(T, length), C) for pad."""
        if self.mode == "resample":
            T = len(a)
            if T == 1:
                return np.repeat(a, self.length, axis=0)
            src, dst = np.linspace(0, 1, T), np.linspace(0, 1, self.length)
            return np.stack([np.interp(dst, src, a[:, j]) for j in range(a.shape[1])], axis=1)
        return a[: self.length]

    def read(self, cells, row, ctx):
        arrs = [self._load(v, row, c, ctx) for c, v in zip(self.columns, cells)]
        if all(a is None for a in arrs):
            return None
        parts = []
        for a, c, k in zip(arrs, self.columns, self.channels_):
            if a is None:
                parts.append(np.zeros((self.length, k)))
                continue
            if a.shape[1] != k:
                raise bad(row, c, f"has {a.shape[1]} channels; the training data has {k}",
                          hint="give every series the same channels (or set file_columns)")
            a = self._fit_length(a)  # (L', k)
            parts.append(np.pad(a, ((0, self.length - len(a)), (0, 0))) if len(a) < self.length else a)
        x = np.concatenate(parts, axis=1)  # (length, C)
        z = (x - self.mean_) / self.std_
        if self.mode == "pad":  # padded steps are 0 after standardization, not -mean/std
            lengths = [min(len(a), self.length) if a is not None else 0 for a in arrs]
            off = 0
            for L, k in zip(lengths, self.channels_):
                z[L:, off:off + k] = 0
                off += k
        return {"series": np.ascontiguousarray(z.T, dtype=np.float32)}  # (C, length)

    def item_spec(self):
        return {"series": ((self.n_channels, self.length), np.dtype(np.float32))}

    def extra_state(self):
        return {}, {"mean": self.mean_, "std": self.std_}

    def load_extra_state(self, meta, arrays):
        self.mean_, self.std_ = arrays["mean"], arrays["std"]


def interpolate_nans(a: np.ndarray) -> np.ndarray:
    """Fill NaNs per channel by linear interpolation in time; edges take the nearest value."""
    a = a.copy()
    t = np.arange(len(a))
    for j in range(a.shape[1]):
        nan = np.isnan(a[:, j])
        if nan.any() and not nan.all():
            a[nan, j] = np.interp(t[nan], t[~nan], a[~nan, j])
    return a
