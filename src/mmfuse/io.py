"""Readers: CSV, TSV, Parquet, JSON Lines or a DataFrame in, a :class:`Table` out.

A :class:`Table` is a DataFrame plus the folder that relative file paths in its cells are
resolved against (the table's own folder, or a ``root`` the user gives).
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import pandas as pd

from .errors import InputError, SchemaError

__all__ = ["Table", "read_table", "resolve_path", "atomic_write_bytes", "atomic_write_text"]

TableLike = Union["Table", pd.DataFrame, str, os.PathLike]

_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
             ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class Table:
    """A DataFrame with the folder its relative paths are resolved against.

    Attributes:
        df: The data. Its index labels are the row ids used in error messages.
        root: Folder for relative paths in cells.
        source: Where the table came from (a path, or ``"<DataFrame>"``).
    """

    df: pd.DataFrame
    root: Path
    source: str = "<DataFrame>"

    def __len__(self) -> int:
        return len(self.df)


def read_table(data: TableLike, root: str | os.PathLike | None = None, encoding: str = "utf-8") -> Table:
    """Read a table from a file or wrap a DataFrame.

    Args:
        data: A path to a ``.csv``, ``.tsv``, ``.parquet`` or ``.jsonl`` file, a DataFrame, or a Table.
        root: Folder that relative paths in cells are resolved against. Defaults to the
            table file's folder, or the current directory for a DataFrame.
        encoding: Text encoding of CSV/TSV/JSONL files.

    Raises:
        SchemaError: for an empty table, duplicate column names or an unknown format.
        InputError: for a file that is not valid text in ``encoding``, naming the line.
    """
    if isinstance(data, Table):
        return data if root is None else Table(data.df, Path(root).resolve(), data.source)
    if isinstance(data, pd.DataFrame):
        _check_columns(list(map(str, data.columns)), "<DataFrame>")
        df = data.copy()
        df.columns = [str(c) for c in df.columns]
        table = Table(df, Path(root or os.getcwd()).resolve())
    else:
        path = Path(data)
        if not path.exists():
            raise SchemaError(f"table file {str(path)!r} does not exist (resolved to {path.resolve()})")
        fmt = _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise SchemaError(f"cannot read {str(path)!r}: unknown table format {path.suffix!r}; "
                              f"use one of {', '.join(sorted(_SUFFIXES))}")
        df = _read_file(path, fmt, encoding)
        table = Table(df, Path(root).resolve() if root else path.resolve().parent, str(path))
    if len(table.df.columns) == 0 or len(table.df) == 0:
        raise SchemaError(f"table {table.source} is empty ({len(table.df)} rows, {len(table.df.columns)} columns)")
    return table


def _read_file(path: Path, fmt: str, encoding: str) -> pd.DataFrame:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        _check_columns(names, str(path))
        return pd.read_parquet(path)
    raw = path.read_bytes()
    text = _decode(raw, path, encoding)
    if fmt == "jsonl":
        df = pd.read_json(io.StringIO(text), lines=True, dtype=False)
        return df
    sep = "\t" if fmt == "tsv" else ","
    header = next(csv.reader(io.StringIO(text), delimiter=sep), [])
    _check_columns(header, str(path))
    # keep_default_na: empty cells and 'NA'/'NaN' become missing; everything else is kept as
    # written and typed later by the schema (so a stray string in a numeric column is reported).
    return pd.read_csv(io.StringIO(text), sep=sep, low_memory=False)


def _decode(raw: bytes, path: Path, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        bad = raw[e.start:e.end].hex(" ")
        raise InputError(row=None, column=None, file=str(path),
                         reason=f"is not valid {encoding}: byte(s) 0x{bad} on line {line}",
                         hint="Re-save the file as UTF-8, or pass encoding='latin-1' (--encoding latin-1) "
                              "if that is its real encoding") from None


def _check_columns(names: list[str], source: str) -> None:
    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    if dup:
        raise SchemaError(f"table {source} has duplicate column names: {', '.join(map(repr, dup))}; "
                          "rename them so every column name is unique")


def resolve_path(value: str, root: Path, *, row=None, column: str | None = None,
                 allow_outside_root: bool = False) -> Path:
    """Resolve a path from a cell against ``root``, refusing paths that escape it.

    ``../../etc/passwd`` and absolute paths outside ``root`` are refused unless
    ``allow_outside_root`` is set, so a table cannot make mmfuse read arbitrary files.
    """
    p = Path(os.path.expanduser(value))
    full = (p if p.is_absolute() else root / p).resolve()
    if not allow_outside_root and not full.is_relative_to(root):
        raise InputError(row, column, reason=f"is outside the data root {root}", file=value,
                         resolved=str(full),
                         hint="Move the file under the root, pass a different root, or allow it with "
                              "allow_outside_root=True (--allow-outside-root)")
    return full


def read_mapping_file(path: str | os.PathLike, what: str) -> dict:
    """A YAML (``.yaml``/``.yml``) or JSON file that must hold a mapping."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        d = yaml.safe_load(text) or {}
    else:
        import json

        d = json.loads(text)
    if not isinstance(d, dict):
        raise SchemaError(f"{what} {path} must hold a mapping, got {type(d).__name__}")
    return d


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
