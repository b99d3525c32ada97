"""Batch prediction over tables larger than memory: read a chunk, predict it, write it, forget it.

:func:`predict_file` reads Parquet one record batch at a time and CSV / JSON Lines in chunks of lines
(:func:`mmfuse.io.iter_table`), and appends each chunk's predictions to the output as it goes, so memory
holds one chunk, not the table. The output has one row per input row, in input order, with the row id;
rows the ``skip`` policy left out keep their line, with empty predictions and the reason in ``skipped``.
The output is written to a temporary file beside ``out`` and renamed at the end: a run that fails
half-way leaves no half-written file that looks complete.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MmfuseError
from .io import iter_table, table_format, table_rows
from .reading import check_keep, keep_names, with_kept

__all__ = ["predict_file", "check_output", "write_frame", "BatchReport", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class BatchReport:
    """What :func:`predict_file` did: rows read, predicted and skipped (with their ids and reasons)."""

    out: Path
    rows: int = 0
    predicted: int = 0
    chunks: int = 0
    seconds: float = 0.0
    skipped: dict = field(default_factory=dict)  # row id -> reason
    bad_input_counts: dict = field(default_factory=dict)  # column -> cells (skip / missing policies)
    absent: str = ""  # inputs absent from the table (predict's note)
    no_input: list = field(default_factory=list)  # row ids whose every input was blank
    unseen_categories: dict = field(default_factory=dict)  # column -> cells whose category training never saw

    def describe_no_input(self) -> str:
        from .reading import describe_no_input

        return describe_no_input(self.no_input)

    def summary(self) -> str:
        line = f"{self.predicted} predictions written to {self.out}"
        if self.skipped:
            ids = list(self.skipped)[:10]
            line += (f"; {len(self.skipped)} row{'s' if len(self.skipped) != 1 else ''} skipped as bad input, marked "
                     f"in its 'skipped' column (row id{'s' if len(self.skipped) != 1 else ''} "
                     f"{', '.join(map(str, ids))}{' ...' if len(self.skipped) > 10 else ''})")
        elif self.bad_input_counts:
            line += "; bad cells treated as missing (" + ", ".join(f"{c!r}: {n}" for c, n in
                                                                     self.bad_input_counts.items()) + ")"
        if self.no_input:
            line += "; " + self.describe_no_input()
        if self.unseen_categories:
            line += "; categories unseen in training, read as 'unknown' (" + ", ".join(
                f"{c!r}: {n} cell{'s' * (n != 1)}" for c, n in sorted(self.unseen_categories.items())) + ")"
        return line


def check_output(data, out) -> str:
    """The output format of ``out``; an error when it is not a predictions file beside ``data``."""
    out = Path(out)
    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise MmfuseError(f"--out {out}: write predictions to a .csv, .parquet or .jsonl file")
    if Path(data).resolve() == out.resolve():
        raise MmfuseError(f"--out {out} is the input table; write the predictions to another file")
    if out.is_dir():
        raise MmfuseError(f"--out {out} is a folder; name the predictions file, e.g. {out / 'predictions.csv'}")
    if out.parent.exists() and not out.parent.is_dir():
        raise MmfuseError(f"--out {out}: {out.parent} is a file, not a folder")
    return fmt


def predict_file(predictor, data, out, *, chunk_rows: int = 50_000, batch_size: int = 256, proba: bool = True,
                 threshold=None, on_bad_input: str = "raise", root=None, allow_outside_root: bool = False,
                 progress: bool = False, encoding: str = "utf-8", keep=()) -> BatchReport:
    """Predict every row of the table file ``data`` with ``predictor`` and write ``out`` chunk by chunk.

    Args:
        predictor: A loaded :class:`~mmfuse.bundle.Predictor` (or ensemble).
        data: A ``.parquet``, ``.csv``, ``.tsv`` or ``.jsonl`` file, of any size.
        out: ``.csv``, ``.parquet`` or ``.jsonl``; columns as :meth:`Predictor.predict_frame` writes them,
            and ``skipped`` whenever the policy is ``skip``.
        chunk_rows: Rows read and predicted at a time; memory grows with it (and, for Parquet, with the
            size of a row group, which is read whole).
        progress: Show rows done (and the total, for Parquet) on stderr.
        keep: Columns of the table copied into the output after ``row``, as stored (e.g. an id column; see
            :func:`~mmfuse.reading.keep_names`); CSV and Parquet outputs write a column of mixed values as text.

    Returns:
        A :class:`BatchReport`; row ids are the table's row numbers (0 below the header).
    """
    out = Path(out)
    fmt = check_output(data, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    keep = [keep] if isinstance(keep, str) else list(keep or ())
    if keep and not any(str(v).strip(", ") for v in keep):
        raise MmfuseError(f"--keep {', '.join(map(repr, keep))} names no column: give column names, comma-separated, "
                          "e.g. --keep id")
    report = BatchReport(out)
    present: set = set()
    total = table_rows(data)
    bar = _Progress(total) if progress else None
    writer = None
    t0 = time.perf_counter()
    try:
        seen: list = []
        jsonl = table_format(data) == "jsonl"
        for chunk in iter_table(data, chunk_rows=chunk_rows, root=root, encoding=encoding, verbatim=keep_names(keep)):
            if not report.chunks:
                keep = keep_names(keep, chunk.df.columns)
                if not jsonl:  # a header: a misspelt name fails before the first prediction
                    check_keep(keep, chunk.df.columns)
                else:  # a key may first appear in a later line: it is checked once every line is read
                    seen += keep
            # JSON Lines: a chunk has only the keys its lines hold; a key missing from a whole chunk is a
            # missing value in its rows, not an input absent from the table
            present.update(chunk.df.columns)
            seen += [c for c in chunk.df.columns if c not in seen]
            if len(chunk.df.columns) < len(seen):
                chunk.df = chunk.df.reindex(columns=seen)
            try:
                frame = predictor.predict_frame(chunk, proba=proba, threshold=threshold, batch_size=batch_size,
                                                on_bad_input=on_bad_input, allow_outside_root=allow_outside_root)
            except MmfuseError as e:  # every row of this chunk was skipped: their lines stay, marked
                if on_bad_input != "skip" or not str(e).startswith("no rows to predict on"):
                    raise
                frame = _all_skipped(predictor, chunk, proba)
            if on_bad_input == "skip" and "skipped" not in frame.columns:
                frame["skipped"] = None  # the same columns in every chunk
            frame = with_kept(frame, chunk.df, keep)
            if fmt != "jsonl":
                for c in keep:
                    frame[c] = _as_text(frame[c], jsonl)
            if "skipped" in frame.columns:
                gone = frame["skipped"].notna().to_numpy()
                report.skipped.update(zip(frame["row"].to_numpy()[gone].tolist(), frame["skipped"][gone]))
            for counts, into in ((predictor.last_report.counts(), report.bad_input_counts),
                                 (predictor.last_report.unknown_categories, report.unseen_categories)):
                for col, n in counts.items():
                    into[col] = into.get(col, 0) + n
            if not report.absent:
                report.absent = predictor.describe_absent()
            report.no_input += list(getattr(predictor, "last_no_input", ()))
            writer = writer or _Writer(tmp, fmt)
            writer.write(frame)
            report.rows += len(frame)
            report.predicted += len(frame) - (int(frame["skipped"].notna().sum()) if "skipped" in frame.columns else 0)
            report.chunks += 1
            if bar:
                bar.update(report.rows)
        check_keep([c for c in keep if c not in present], present)  # (JSON Lines: a key in no line)
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar:
            bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def _as_text(col, values: bool):
    """A kept column for a CSV or Parquet output: typed columns (text, numbers, Arrow types) as they are; one of
    Python values (``values``: JSON Lines, whose types may differ from line to line and chunk to chunk, and a key
    may be missing from a whole chunk) as text, a list or object as JSON, a missing value as missing, so that
    every chunk has the same column type."""
    import json

    import pandas as pd

    if col.dtype != object and not values:
        return col
    return pd.Series([None if v is None or (isinstance(v, float) and v != v) else v if isinstance(v, str)
                      else json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in col],
                     index=col.index, dtype=object)


def _all_skipped(predictor, chunk, proba: bool):
    """The output lines of a chunk whose every row was skipped: row ids, empty predictions, the reasons."""
    import numpy as np
    import pandas as pd

    empty = predictor.target.decode(np.zeros((0, predictor.target.n_outputs), np.float32))
    frame = pd.DataFrame({"row": chunk.df.index.to_numpy()})
    for name, values in predictor.target.output_columns(empty, proba).items():
        kind = np.asarray(values).dtype.kind  # typed empties, so the columns keep their type in every chunk
        dtype = {"f": "float64", "i": "Int64", "u": "Int64", "b": "boolean"}.get(kind, "object")
        frame[name] = pd.Series([None] * len(frame), dtype=dtype)
    from .reading import skip_reasons

    reasons = skip_reasons(predictor.last_report)
    frame["skipped"] = [reasons.get(str(r), "bad input") for r in frame["row"]]
    predictor.last_skipped = frame["row"].tolist()
    return frame


def write_frame(frame, out) -> None:
    """Write one DataFrame to ``out`` (.csv, .parquet or .jsonl, as :func:`check_output` allows) atomically:
    a temporary file beside it, renamed at the end (removed if anything fails)."""
    out = Path(out)
    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise MmfuseError(f"--out {out}: write to a .csv, .parquet or .jsonl file")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    writer = _Writer(tmp, fmt)
    try:
        writer.write(frame)
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


class _Writer:
    """Appends DataFrames to one CSV, JSON Lines or Parquet file (one row group per chunk)."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt, self.pq, self.schema = path, fmt, None, None
        self.f = None if fmt == "parquet" else open(path, "w", encoding="utf-8", newline="")
        self.first = True

    def write(self, frame) -> None:
        if self.fmt == "csv":
            frame.to_csv(self.f, index=False, header=self.first)
        elif self.fmt == "jsonl":
            text = frame.to_json(orient="records", lines=True)
            self.f.write(text if text.endswith("\n") else text + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self.pq is None:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                self.schema = _nullable(table.schema)
                self.pq = pq.ParquetWriter(self.path, self.schema)
            table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False, safe=False)
            self.pq.write_table(table)
        self.first = False

    def close(self) -> None:
        if self.f is not None and not self.f.closed:
            self.f.close()
        if self.pq is not None:
            self.pq.close()
            self.pq = None


def _nullable(schema):
    """The first chunk's schema with a column that was all null there (``skipped``) typed as text."""
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type, nullable=True)
                      for f in schema])


class _Progress:
    """``predict: 1,200,000 / 2,500,000 rows (48%), 21,000 rows/s`` on stderr, refreshed at most twice a second."""

    def __init__(self, total: int | None):
        self.total, self.t0, self.last = total, time.perf_counter(), 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        self.done = done
        if now - self.last < 0.5 and done != self.total and not final:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        of = f" / {self.total:,} rows ({100 * done / self.total:.0f}%)" if self.total else " rows"
        sys.stderr.write(f"\rpredict: {done:,}{of}, {rate:,.0f} rows/s")
        sys.stderr.flush()

    def close(self) -> None:
        if getattr(self, "done", None) is not None:
            self.update(self.done, final=True)  # the last count, whatever the refresh interval skipped
        sys.stderr.write("\n")
        sys.stderr.flush()
