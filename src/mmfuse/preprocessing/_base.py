"""The preprocessor contract and the safetensors + JSON state format.

A preprocessor turns the cells of one input (one or more columns of a row) into an array
of fixed shape, or ``None`` when the input is absent in that row. It is fit on the training
split only; its learned state is a JSON-able dict plus named numpy arrays, saved as
``<name>.json`` + ``<name>.safetensors``. Loading never unpickles.
"""
from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .._registry import Registry
from ..errors import InputError, NotFittedError
from ..io import atomic_write_bytes, atomic_write_text

PREPROCESSORS: Registry[type] = Registry("preprocessor")

__all__ = ["Preprocessor", "ReadContext", "is_missing", "save_preprocessors", "load_preprocessors", "PREPROCESSORS"]


@dataclass(frozen=True)
class ReadContext:
    """Where cells are read from: the folder for relative paths, and the path policy."""

    root: Path
    allow_outside_root: bool = False


def is_missing(v) -> bool:
    """An empty cell: None, NaN, an empty or blank string, or an empty sequence."""
    if v is None:
        return True
    if isinstance(v, float):
        return math.isnan(v)
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, (bytes, bytearray)):
        return len(v) == 0
    if isinstance(v, (list, tuple, np.ndarray)):
        return len(v) == 0
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


class Preprocessor(ABC):
    """Base class. Subclasses set ``modality`` and implement the hooks below.

    ``__init__`` only stores configuration (scikit-learn style); state learned by ``fit``
    ends in ``_`` and is what :meth:`get_state` returns.

    Attributes:
        columns: The table columns this input reads.
        eager: If True, the dataset transforms every row up front (cheap, in-memory cells);
            otherwise rows are decoded lazily, in DataLoader workers (files).
    """

    modality: ClassVar[str]
    eager: ClassVar[bool] = False
    _config_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, columns: Sequence[str]):
        self.columns = list(columns)
        self.fitted_ = False

    # --- hooks ---------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame, ctx: ReadContext) -> "Preprocessor":
        """Learn state from the training rows of ``df`` (only ``self.columns`` are read)."""
        self.fitted_ = True
        return self

    @abstractmethod
    def read(self, cells: Sequence[Any], row, ctx: ReadContext):
        """Decode one row's cells into an array, or return None when the input is absent.

        Raises:
            InputError: naming the row, column and file, when a cell is present but bad.
        """

    @abstractmethod
    def item_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of each array of one item as cached and batched (after :meth:`featurize`)."""

    def read_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of what :meth:`read` returns; :meth:`item_spec` is after :meth:`featurize`."""
        return self.item_spec()

    def featurize(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Deterministic, batched work on freshly read items ``{key: [b, ...]}`` (for example a
        spectrogram), done once before the result is cached. Identity by default."""
        return arrays

    def batch(self, arrays: dict[str, torch.Tensor], train: bool = False, generator: torch.Generator | None = None):
        """Turn stacked items ``{key: [B, ...]}`` into the encoder input (a tensor or a dict)."""
        (only,) = arrays.values()
        return only

    def extra_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {}, {}

    def load_extra_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        pass

    # --- plumbing ------------------------------------------------------------------------
    def check_fitted(self) -> None:
        if not self.fitted_:
            raise NotFittedError(f"{type(self).__name__} for columns {self.columns} is not fitted; call fit first")

    def config(self) -> dict:
        return {k: _jsonable(getattr(self, k)) for k in self._config_keys}

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        self.check_fitted()
        meta, arrays = self.extra_state()
        return {"type": type(self).registry_name, "columns": self.columns, "config": self.config(),
                "state": meta}, arrays

    @classmethod
    def from_state(cls, meta: Mapping, arrays: Mapping[str, np.ndarray]) -> "Preprocessor":
        klass = PREPROCESSORS.get(meta["type"])
        obj = klass(meta["columns"], **meta["config"])
        obj.load_extra_state(dict(meta["state"]), dict(arrays))
        obj.fitted_ = True
        return obj

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}(columns={self.columns}, {args})"


def _jsonable(v):
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def save_preprocessors(preps: Mapping[str, Preprocessor], directory: str | os.PathLike,
                       name: str = "preprocessors") -> None:
    """Write all preprocessors to ``<name>.json`` and ``<name>.safetensors`` (atomically)."""
    from safetensors.numpy import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metas, tensors = {}, {}
    for key in sorted(preps):
        meta, arrays = preps[key].get_state()
        metas[key] = meta
        for a, arr in arrays.items():
            tensors[f"{key}/{a}"] = np.ascontiguousarray(arr)
    atomic_write_bytes(directory / f"{name}.safetensors", save(tensors) if tensors else save({}))
    atomic_write_text(directory / f"{name}.json", json.dumps(metas, indent=2, sort_keys=True))


def load_preprocessors(directory: str | os.PathLike, name: str = "preprocessors") -> dict[str, Preprocessor]:
    """Inverse of :func:`save_preprocessors`. Reads JSON and safetensors only."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    metas = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    tensors = load_file(str(directory / f"{name}.safetensors"))
    out = {}
    for key, meta in metas.items():
        arrays = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == key}
        out[key] = Preprocessor.from_state(meta, arrays)
    return out


def sample_rows(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` rows, chosen deterministically, for statistics that need only a sample."""
    if len(df) <= n:
        return df
    return df.sample(n=n, random_state=seed)


def bad(row, column, reason, file=None, resolved=None, hint=None) -> InputError:
    return InputError(row, column, reason, file=file, resolved=resolved, hint=hint)
