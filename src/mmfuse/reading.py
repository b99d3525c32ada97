"""Reading a table's cells into model inputs, without torch.

The one place where cells become arrays (:func:`read_rows`), with the bad-input policy and the
report of what it skipped. :class:`mmfuse.data.MultimodalDataset` reads through it for training
and prediction, and :class:`mmfuse.onnx.OnnxPredictor` for an exported model, which runs
without torch; so nothing here imports it.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd

from .errors import InputError, MmfuseError, SchemaError
from .io import atomic_write_text

__all__ = ["BadInputPolicy", "InputReport", "Rows", "read_rows", "skip_reasons", "aligned", "input_cells",
           "check_columns", "TablePredictions"]


class BadInputPolicy(str, Enum):
    """What to do with a cell that cannot be read.

    ``raise``: stop with an error naming the row, column and file (the default).
    ``skip``: drop the row. ``missing``: treat that input as absent in that row.
    """

    RAISE = "raise"
    SKIP = "skip"
    MISSING = "missing"

    @classmethod
    def parse(cls, v) -> "BadInputPolicy":
        from ._registry import parse_enum

        return parse_enum(cls, v, "bad-input policy")


@dataclass
class InputReport:
    """Bad cells met under the ``skip``/``missing`` policies, and unseen categories."""

    policy: BadInputPolicy
    issues: dict = field(default_factory=dict)  # (row, column) -> issue dict
    unknown_categories: Counter = field(default_factory=Counter)

    def add(self, issue: dict) -> None:
        self.issues.setdefault((str(issue["row"]), issue["column"]), issue)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(c for _, c in self.issues).items()))

    def rows(self) -> list:
        return sorted({i["row"] for i in self.issues.values()}, key=str)

    def summary(self) -> str:
        if not self.issues and not self.unknown_categories:
            return "no bad input"
        parts = []
        if self.issues:
            verb = "skipped" if self.policy is BadInputPolicy.SKIP else "treated as missing"
            per = ", ".join(f"{c!r}: {n}" for c, n in self.counts().items())
            parts.append(f"{len(self.rows())} rows with bad input {verb} ({per})")
        if self.unknown_categories:
            per = ", ".join(f"{c!r}: {n}" for c, n in sorted(self.unknown_categories.items()))
            parts.append(f"unseen categories mapped to 'unknown' ({per})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"policy": self.policy.value, "counts": self.counts(), "rows": self.rows(),
                "issues": list(self.issues.values()), "unknown_categories": dict(self.unknown_categories)}

    def write(self, directory: str | os.PathLike) -> Path:
        """Write ``bad_input.json`` (counts, row ids, every issue) into the run folder."""
        path = Path(directory) / "bad_input.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=str))
        return path


class Rows(NamedTuple):
    """What :func:`read_rows` read for ``b`` rows of one input."""

    arrays: dict[str, np.ndarray]  # {key: [b, ...]}, zeros where the input is absent
    present: np.ndarray  # bool [b]: the input is there
    bad: np.ndarray  # bool [b]: the cell could not be read (its issue was recorded)
    drop: np.ndarray  # bool [b]: the row leaves the data set (a bad cell under 'skip')


def read_rows(p, cells: Sequence[np.ndarray] | None, rows: np.ndarray, row_ids: np.ndarray, ctx,
              policy: BadInputPolicy, issues: list[dict], at_most: int = 4096) -> Rows:
    """Read and featurize one input at table positions ``rows``, applying the bad-input policy.

    Args:
        p: The input's fitted preprocessor.
        cells: The input's columns as object arrays over the whole table, or None when the
            table lacks them (the input is then absent in every row).
        rows: Table positions to read.
        row_ids: The table's row ids (for messages), indexed by position.
        ctx: The :class:`~mmfuse.preprocessing.ReadContext` (data root, path policy).
        policy: Under ``raise`` a bad cell's :class:`InputError` propagates; under ``skip`` and
            ``missing`` it is appended to ``issues`` and the input is absent in that row (and
            the row is dropped under ``skip``).
        issues: Where bad cells are recorded.
        at_most: Items featurized together (bounds the extra memory of a large read).
    """
    b = len(rows)
    arrays = {k: np.zeros((b, *s), d) for k, (s, d) in p.item_spec().items()}
    present, bad = np.zeros(b, bool), np.zeros(b, bool)
    read, read_at = [], []

    def flush():  # featurize the fresh items as one batch
        feats = p.featurize({k: np.stack([it[k] for it in read]) for k in read[0]})
        for k, a in feats.items():
            arrays[k][read_at] = a
        present[read_at] = True
        read.clear(), read_at.clear()

    for j, i in enumerate(rows if cells is not None else ()):  # no columns: absent in every row
        try:
            item = p.read([c[i] for c in cells], row_ids[i], ctx)
        except InputError as e:
            if policy is BadInputPolicy.RAISE:
                raise
            issues.append(e.to_dict())
            bad[j] = True
            continue
        if item is not None:
            read.append(item)
            read_at.append(j)
            if len(read) == at_most:
                flush()
    if read:
        flush()
    return Rows(arrays, present, bad, bad & (policy is BadInputPolicy.SKIP))


def with_guesses(names, candidates) -> str:
    """``names`` quoted, each followed by the close match among ``candidates`` where there is one:
    ``'notes' (is it 'note'?), 'comment'`` (a renamed or misspelled column)."""
    import difflib

    pool = [str(c) for c in candidates]
    out = []
    for c in names:
        close = difflib.get_close_matches(str(c), pool, n=1, cutoff=0.6)
        out.append(f"{c!r}" + (f" (is it {close[0]!r}?)" if close else ""))
    return ", ".join(out)


def keep_names(values, columns=None) -> list[str]:
    """The columns that ``values`` (``--keep``: names, or comma-separated lists of them; a str is one value)
    name: a value that is a column of ``columns`` as written stays whole (a name with a comma or spaces), any
    other is split at its commas, each piece stripped; blanks dropped, repeats once. Without ``columns``:
    every name a value may stand for (the whole value and its pieces), for a reader that wants them all."""
    out = []
    for v in [values] if isinstance(values, str) else list(values):
        pieces = [p.strip() for p in str(v).split(",") if p.strip()]
        if columns is None:
            out += [v, *pieces]
        else:
            out += [v] if v in columns else pieces
    return list(dict.fromkeys(out))


def check_keep(keep: Sequence[str], columns) -> None:
    """An error naming each of ``keep`` (columns to copy into a predictions file) that the table lacks."""
    missing = [c for c in keep if c not in columns]
    if missing:
        raise SchemaError(f"to keep {with_guesses(missing, columns)} in the predictions: not a column of the table, "
                          f"whose columns are "
                          f"{', '.join(map(repr, list(columns)[:20]))}{' ...' if len(columns) > 20 else ''}")


def with_kept(frame: pd.DataFrame, df: pd.DataFrame, keep: Sequence[str]) -> pd.DataFrame:
    """``frame`` (predictions, a row per row of ``df``) with ``df``'s ``keep`` columns after ``row``, as they are."""
    check_keep(keep, df.columns)
    clash = [c for c in keep if c in frame.columns]
    if clash:
        raise SchemaError(f"to keep {', '.join(map(repr, clash))} in the predictions: they have a column of that name "
                          f"({', '.join(frame.columns)}); rename the table's column to keep it")
    for i, c in enumerate(dict.fromkeys(keep)):
        frame.insert(1 + i, c, pd.Series(df[c].array, index=frame.index))  # its dtype kept (Arrow's integers)
    return frame


def skip_reasons(report: InputReport) -> dict:
    """Row id (as text) -> why the row was skipped (``column: reason`` of its first bad cell, with its file's path
    where the cell names one: ``photo: file 'img/9.png' does not exist``)."""
    reasons = {}
    for issue in report.issues.values():
        file = f"file {issue['file']!r} " if issue.get("file") else ""
        reasons.setdefault(str(issue.get("row")), f"{issue.get('column')}: {file}{issue.get('reason')}")
    return reasons


def aligned(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """``values`` of the rows at positions ``rows``, spread over all ``n`` rows (NaN or None elsewhere)."""
    values = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if len(rows) == n and (rows == np.arange(n)).all():
        return values
    if values.dtype.kind == "f":
        out = np.full((n, *values.shape[1:]), np.nan, values.dtype)
    else:
        out = np.empty((n, *values.shape[1:]), dtype=object)
    out[rows] = values
    return out


def input_cells(name: str, p, df: pd.DataFrame) -> list[np.ndarray] | None:
    """Input ``name``'s columns of ``df`` as object arrays, or None when the table has none of them (the
    input is then absent in every row); an error when it has only some."""
    have = [c for c in p.columns if c in df.columns]
    if have and len(have) < len(p.columns):
        named = with_guesses([c for c in p.columns if c not in df.columns],
                             [c for c in df.columns if c not in p.columns])
        raise MmfuseError(f"input {name!r}: the table lacks columns {named} (the input reads {len(p.columns)} "
                          "columns); give all of them, or none to treat the input as absent")
    return [df[c].to_numpy(dtype=object) for c in p.columns] if have else None


def check_columns(preprocessors: dict, schema, columns, absent: list[str]) -> list[str]:
    """The table's columns the model does not read (a renamed column, likely); an error when every input
    is ``absent``: every prediction would then be the same, whatever the row."""
    known = set(schema.roles) if schema is not None else set()
    if absent and len(absent) == len(preprocessors):
        need = {n: list(p.columns) for n, p in preprocessors.items()}
        have = list(columns)
        raise MmfuseError(f"none of the model's inputs is in this table: it reads {need}; the table has "
                          f"{have[:20]}{' ...' if len(have) > 20 else ''}. Check the column names (renamed? "
                          "another table?)")
    return [c for c in columns if c not in known]


class TablePredictions:
    """What a predictor does with a table, given its :meth:`logits` (``(z [N, K], row positions)``), its
    ``target`` task and ``preprocessors``: decoding, one output row per input row, the rows it skipped,
    the inputs the table lacked. Shared by :class:`mmfuse.Predictor` and :class:`mmfuse.onnx.OnnxPredictor`,
    so that a bundle and its export answer alike."""

    last_absent: list | tuple = ()  # the last table's: set by each call
    last_unread: list | tuple = ()
    last_skipped: list | tuple = ()
    last_no_input: list | tuple = ()  # row ids of the last table whose every input was blank (or absent)

    def describe_no_input(self, limit: int = 10) -> str:
        """One line on the rows of the last table that held none of the model's inputs, or ''."""
        return describe_no_input(self.last_no_input, limit)

    def describe_absent(self) -> str:
        """One line naming the inputs the last table lacked, or '' when it had all of them."""
        absent = self.last_absent
        if not absent:
            return ""
        cols = "; ".join(f"{n} (columns {', '.join(map(str, self.preprocessors[n].columns))})" for n in absent)
        unread = self.last_unread
        wanted = [c for n in absent for c in self.preprocessors[n].columns]
        extra = (f"; the table's columns {with_guesses(unread[:10], wanted)}{' ...' if len(unread) > 10 else ''} "
                 "are not the model's (renamed?)") if unread else ""
        return f"inputs absent from this table, treated as missing in every row: {cols}{extra}"

    def decode(self, data, threshold=None, **kw):
        """The one call behind every prediction (``predict``, ``predict_proba``, ``predict_frame``, the CLI):
        the task's :class:`~mmfuse.tasks.Decoded` of the rows that were read, their table positions, and
        the number of rows in the table."""
        from .io import read_table

        table = read_table(data, root=kw.get("root")) if kw.get("dataset") is None else kw["dataset"].table
        z, rows = self.logits(table, **kw)
        kept = np.zeros(len(table.df), bool)
        kept[rows] = True
        self.last_skipped = table.df.index[~kept].tolist()
        return self.target.decode(z, threshold), rows, len(table.df)

    def predict_frame(self, data, proba: bool = True, threshold=None, keep: Sequence[str] = (), **kw) -> pd.DataFrame:
        """A DataFrame aligned with the input, one row per input row: ``row`` (the table's row id), the
        table's ``keep`` columns as they are (e.g. an id column), ``prediction`` and ``proba_<class>``
        columns, and ``skipped`` (the reason, for rows the ``skip`` policy left out; their predictions are
        empty)."""
        from .io import read_table

        table = read_table(data, root=kw.get("root"))
        keep = keep_names(keep, table.df.columns)
        check_keep(keep, table.df.columns)  # before any prediction: a misspelt name fails at once
        stored = table.df
        if keep and isinstance(data, (str, os.PathLike)):  # a file: the kept columns as stored, not as parsed
            from .io import iter_table

            stored = pd.concat([c.df[keep] for c in iter_table(data, root=kw.get("root"), verbatim=keep)])
        decoded, rows, n = self.decode(table, threshold, **kw)
        out = pd.DataFrame({"row": table.df.index.to_numpy()})
        for name, values in self.target.output_columns(decoded, proba).items():
            out[name] = aligned(values, rows, n)
        if len(rows) < n:
            reasons = skip_reasons(self.last_report)
            ids = table.df.index.to_numpy()
            kept = np.zeros(n, bool)
            kept[rows] = True
            out["skipped"] = [None if kept[i] else reasons.get(str(ids[i]), "bad input") for i in range(n)]
        return with_kept(out, stored, keep)

    def skipped_rows(self) -> list:
        """Row ids that the last prediction skipped as bad input (``on_bad_input="skip"``)."""
        return list(self.last_skipped)

    def predict_proba(self, data, **kw) -> np.ndarray:
        """Class probabilities ``[N, K]`` (columns in :attr:`classes_` order); for regression, the values.
        One row per input row: rows skipped as bad input are NaN (see :meth:`skipped_rows`)."""
        decoded, rows, n = self.decode(data, **kw)
        return aligned(decoded.proba, rows, n)

    def predict(self, data, threshold=None, **kw) -> np.ndarray:
        """Labels (as in training), label lists (multilabel) or values, one per input row (None or NaN
        for rows skipped as bad input; see :meth:`skipped_rows`).

        ``threshold``: overrides the task's decision threshold (binary: a probability; multilabel:
        one, or one per label)."""
        decoded, rows, n = self.decode(data, threshold, **kw)
        return aligned(decoded.labels, rows, n)


def describe_no_input(rows, limit: int = 10, count: int | None = None) -> str:
    """One line on rows that held none of a model's inputs: their prediction is made without any evidence, the
    same for each of them (the model's answer to nothing), or ''. ``count``: how many there are, when ``rows``
    lists only the first of them."""
    n = len(rows) if count is None else count
    if not n:
        return ""
    ids = ", ".join(map(str, list(rows)[:limit])) + (" ..." if n > min(limit, len(rows)) else "")
    one = n == 1
    return (f"{n} row{'' if one else 's'} with every input blank: {'its' if one else 'their'} prediction "
            f"is made without any evidence{'' if one else ', the same for each'} (row id{'' if one else 's'} {ids})")
