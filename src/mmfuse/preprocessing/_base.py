"""The preprocessor contract and the safetensors + JSON state format.

A preprocessor turns the cells of one input (one or more columns of a row) into an array
of fixed shape, or ``None`` when the input is absent in that row. It is fit on the training
split only; its learned state is a JSON-able dict plus named numpy arrays, saved as
``<name>.json`` + ``<name>.safetensors``. Loading never unpickles.
"""
from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where it runs: reading and decoding work without it (mmfuse.onnx)
    import torch

from .._registry import Registry
from ..errors import InputError, MmfuseError, NotFittedError
from ..io import atomic_write_bytes, atomic_write_text, resolve_path
from ..schema import is_missing, missing_mask  # the one answer; schema.py keeps inspect free of torch

PREPROCESSORS: Registry[type] = Registry("preprocessor")

__all__ = ["Preprocessor", "ReadContext", "is_missing", "missing_mask", "open_file_cell", "read_for_fit",
           "save_preprocessors", "load_preprocessors", "PREPROCESSORS"]


@dataclass(frozen=True)
class ReadContext:
    """Where cells are read from: the folder for relative paths, and the path policy."""

    root: Path
    allow_outside_root: bool = False


def present_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df`` with at least one cell that is not missing."""
    missing = np.ones(len(df), dtype=bool)
    for c in df.columns:
        missing &= missing_mask(df[c])
    return df[~missing]


_PATH_HINT = "Fix the path, or pass the folder it is relative to as root= (--root)"


def open_file_cell(value, ctx: "ReadContext", column: str, row) -> Path:
    """The file that a path cell names, resolved against ``ctx.root`` and checked.

    Every file cell (image, audio, time series, and the Hugging Face inputs that decode
    through them) is opened here, so each gets the same checks and messages.

    Raises:
        InputError: naming the row, column and file, when the path leaves the root (unless
            ``ctx.allow_outside_root``), does not exist, is a folder, is empty or cannot be
            looked up at all.
    """
    file = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    try:
        path = resolve_path(file, ctx.root, row=row, column=column, allow_outside_root=ctx.allow_outside_root)
        size = path.stat().st_size if path.is_file() else None
    except InputError:
        raise
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission
        raise bad(row, column, f"cannot be opened ({type(e).__name__}: {e})", file, hint=_PATH_HINT) from None
    if size is None:
        raise bad(row, column, "is a folder, not a file" if path.is_dir() else "does not exist", file, str(path),
                  _PATH_HINT)
    if size == 0:
        raise bad(row, column, "is empty (0 bytes)", file, str(path))
    return path


def read_for_fit(df: pd.DataFrame, read: Callable[[list, Any], Any], limit: int | None = None) -> list:
    """Read training rows for ``fit``: ``read(cells, row)`` on each row of ``df`` that is not
    all missing, in order, until ``limit`` values are had.

    A row whose read raises :class:`InputError` is passed over (the dataset applies the
    bad-input policy when it reads that row). A fit that reads nothing fails instead of
    falling back to made-up statistics.

    Raises:
        MmfuseError: when nothing could be read, naming the columns and why: every row is
            missing, or the reasons the reads failed, with the first failure and its fix.
    """
    cols = list(df.columns)
    where = f"column {cols[0]!r}" if len(cols) == 1 else f"columns {cols}"
    present = present_rows(df)
    out, reasons, first = [], Counter(), None
    for row, cells in zip(present.index, present.itertuples(index=False, name=None)):
        if limit is not None and len(out) >= limit:
            break
        try:
            item = read(list(cells), row)
        except InputError as e:
            reasons[e.reason] += 1
            first = first or e
            continue
        if item is not None:
            out.append(item)
    if out:
        return out
    if first is None:
        raise MmfuseError(f"no value of {where} could be read while fitting: all {len(df)} training rows are "
                          "missing; give it values, or set its role to ignore")
    why = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common(3)) + (", ..." if len(reasons) > 3 else "")
    raise MmfuseError(f"no value of {where} could be read while fitting ({sum(reasons.values())} tried; {why}). "
                      f"First failure: {first}")


def check_number(owner: str, name: str, value, low: float, integer: bool = True, low_open: bool = False) -> None:
    """Raise MmfuseError unless ``value`` is a number (an integer when ``integer``) >= ``low`` (> when ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (not integer or float(value).is_integer())
    if not ok or (value <= low if low_open else value < low):
        kind = "an integer" if integer else "a number"
        raise MmfuseError(f"{owner}: {name} must be {kind} {'>' if low_open else '>='} {low}; got {value!r}")


def check_choice(owner: str, name: str, value, allowed) -> None:
    """Raise MmfuseError unless ``value`` is one of ``allowed`` (a setting of ``owner``)."""
    if value not in allowed:
        raise MmfuseError(f"{owner}: {name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


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

    def batch(self, arrays: dict[str, torch.Tensor], train: bool = False, generator=None):
        """Turn stacked items ``{key: [B, ...]}`` (tensors) into the encoder input (a tensor or a dict).

        At prediction time (``train=False``) this is part of the model: an ONNX export
        (:mod:`mmfuse.export`) traces it into the graph, so it must be torch operations on the
        stacked items alone (the fitted state as constants)."""
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

    from .._names import safe_key

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metas, tensors = {}, {}
    for key in sorted(preps):
        meta, arrays = preps[key].get_state()
        metas[key] = meta
        for a, arr in arrays.items():
            tensors[f"{safe_key(key)}/{a}"] = np.ascontiguousarray(arr)  # safe keys have no '/'; input names may
    atomic_write_bytes(directory / f"{name}.safetensors", save(tensors) if tensors else save({}))
    atomic_write_text(directory / f"{name}.json", json.dumps(metas, indent=2, sort_keys=True))


def load_preprocessors(directory: str | os.PathLike, name: str = "preprocessors",
                       resolve: Callable[[dict], dict] | None = None) -> dict[str, Preprocessor]:
    """Inverse of :func:`save_preprocessors`. Reads JSON and safetensors only.

    ``resolve`` maps each preprocessor's ``config`` before it is built (paths relative to the folder)."""
    from safetensors.numpy import load_file

    from .._names import key_name

    directory = Path(directory)
    metas = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    tensors = load_file(str(directory / f"{name}.safetensors"))
    by_input: dict[str, dict[str, np.ndarray]] = {}
    for k, v in tensors.items():  # '<safe key>/<array>': safe keys have no '/'
        key, _, array = k.partition("/")
        by_input.setdefault(key_name(key), {})[array] = v
    if resolve is not None:
        metas = {key: {**meta, "config": resolve(meta["config"])} for key, meta in metas.items()}
    return {key: Preprocessor.from_state(meta, by_input.get(key, {})) for key, meta in metas.items()}


def sample_rows(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` rows, chosen deterministically, for statistics that need only a sample."""
    if len(df) <= n:
        return df
    return df.sample(n=n, random_state=seed)


def bad(row, column, reason, file=None, resolved=None, hint=None) -> InputError:
    """An :class:`InputError` for one cell (a shorthand)."""
    return InputError(row, column, reason, file=file, resolved=resolved, hint=hint)
