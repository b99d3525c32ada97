"""Readers: CSV, TSV, Parquet, JSON Lines or a DataFrame in, a :class:`Table` out.

A :class:`Table` is a DataFrame plus the folder that relative file paths in its cells are
resolved against (the table's own folder, or a ``root`` the user gives).
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd

from .errors import InputError, MmfuseError, SchemaError

__all__ = ["Table", "read_table", "iter_table", "table_format", "table_rows", "resolve_path", "atomic_write_bytes",
           "atomic_write_text"]

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


def read_table(data: TableLike, root: str | os.PathLike | None = None, encoding: str = "utf-8",
               stream: bool = False) -> Table:
    """Read a table from a file or wrap a DataFrame.

    With ``stream=True``, ``data`` is a Parquet file or a folder of Parquet files, and the result is a
    :class:`mmfuse.streaming.ParquetStream`: its metadata, read a row group at a time when used, never
    loaded whole (tables larger than memory).

    Args:
        data: A path to a ``.csv``, ``.tsv``, ``.parquet`` or ``.jsonl`` file, a DataFrame, or a Table.
            A ``.csv`` file whose header holds no comma but semicolons (or tabs) is read with
            that separator; a UTF-8 byte order mark is dropped.
        root: Folder that relative paths in cells are resolved against. Defaults to the
            table file's folder, or the current directory for a DataFrame.
        encoding: Text encoding of CSV/TSV/JSONL files.

    Raises:
        SchemaError: for a missing, empty, unreadable or damaged file, a file whose content is
            not its extension's format, a row with more fields than the header (naming the
            line), duplicate column names or an unknown format. Every failure of the parsing
            libraries (pandas, pyarrow, json, the OS) is turned into this one-line error.
        InputError: for a file that is not valid text in ``encoding``, naming the line.
    """
    if stream:
        from .streaming import ParquetStream

        if not isinstance(data, (str, os.PathLike)):
            raise SchemaError(f"stream=True reads a Parquet file or a folder of them from a path, not a "
                              f"{type(data).__name__} (a table in memory needs no streaming)")
        return ParquetStream(data, root)
    if isinstance(data, Table):
        return data if root is None else Table(data.df, Path(root).resolve(), data.source)
    if isinstance(data, dict) and data and not any(isinstance(v, (list, tuple, np.ndarray, pd.Series))
                                                   for v in data.values()):
        data = pd.DataFrame([data])  # one row: {column: value}
    elif isinstance(data, (dict, list, tuple)) and data and not isinstance(data, (str, bytes)):
        try:  # {column: [values]} or [{column: value}, ...]
            data = pd.DataFrame(data)
        except (ValueError, TypeError) as e:
            raise SchemaError(f"cannot make a table of this {type(data).__name__} ({e}); pass a DataFrame, a "
                              "{column: value} dict, a list of such dicts, or a path") from None
    elif isinstance(data, pd.Series):
        data = data.to_frame().T  # one row, as DataFrame.iloc[i] gives it
    elif not isinstance(data, (pd.DataFrame, str, os.PathLike)):
        raise SchemaError(f"cannot read a table from a {type(data).__name__}; pass a DataFrame, a {{column: value}} "
                          "dict, a list of such dicts, or the path of a .csv, .tsv, .parquet or .jsonl file")
    if isinstance(data, pd.DataFrame):
        _check_columns(list(map(str, data.columns)), "<DataFrame>")
        df = data.copy()
        df.columns = [str(c) for c in df.columns]
        table = Table(df, Path(root or os.getcwd()).resolve())
    else:
        path = Path(data)
        df = _read_path(path, encoding)
        table = Table(df, Path(root).resolve() if root else path.resolve().parent, str(path))
    if len(table.df.columns) == 0 or len(table.df) == 0:
        need = "a header line and at least one row" if table.source != "<DataFrame>" else \
            "at least one column and one row (a DataFrame of the columns the model reads)"
        raise SchemaError(f"table {table.source} is empty ({len(table.df)} rows, {len(table.df.columns)} columns); "
                          f"it needs {need}")
    return table


def iter_table(data: str | os.PathLike, chunk_rows: int = 50_000, root: str | os.PathLike | None = None,
               encoding: str = "utf-8", verbatim: Sequence[str] = ()):
    """Read a table file in chunks of at most ``chunk_rows`` rows, without holding it whole in memory.

    Parquet is read one record batch at a time (row group by row group), CSV/TSV and JSON Lines in
    chunks of lines. Each chunk is a :class:`Table` whose index labels continue across chunks (0, 1, ...
    as :func:`read_table` numbers the rows), so row ids match a whole-table read. The file checks of
    :func:`read_table` apply (a missing, empty or foreign file, duplicate columns, a row with more fields
    than the header, naming its line); every parsing failure is one :class:`SchemaError` naming the file.

    ``verbatim``: columns read exactly as stored, with no guess of their type (ids to copy into an output):
    CSV and TSV cells as their text (``007``, ``NA`` and an empty cell stay so), JSON Lines values as JSON
    decodes them (an integer stays one, beside a null), Parquet columns in their Arrow type.
    """
    import warnings

    if not isinstance(data, (str, os.PathLike)):
        raise SchemaError(f"iter_table reads a file; got a {type(data).__name__} (use read_table for a DataFrame)")
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise MmfuseError(f"chunk_rows must be a whole number >= 1, got {chunk_rows!r}")
    path = Path(data)
    root = Path(root).resolve() if root else path.resolve().parent
    fmt = _check_file(path)
    start, sep, header, records = 0, ",", [], None
    stack = contextlib.ExitStack()
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            # pre_buffer off: with it, pyarrow's memory pool keeps every row group it read (~20 MB a batch here,
            # 1.4 GB after 100 batches); without it, memory stays at one batch
            f = pq.ParquetFile(path, pre_buffer=False)
            _check_columns(f.schema_arrow.names, str(path))
            chunks = (_arrow_frame(b, verbatim) for b in f.iter_batches(batch_size=chunk_rows))
        elif fmt == "jsonl":
            chunks = pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows, encoding=_text_encoding(encoding))
            if verbatim:
                chunks = _with_json_values(chunks, path, _text_encoding(encoding), verbatim)
        else:
            header, sep = _csv_header(lambda: open(path, encoding=_text_encoding(encoding), newline=""),
                                      "\t" if fmt == "tsv" else ",", fmt == "csv")
            _check_columns(header, str(path))
            text = [c for c in verbatim if c in header]
            na = {} if not text else dict(
                dtype={c: str for c in text}, keep_default_na=False,
                na_values={c: sorted(pd._libs.parsers.STR_NA_VALUES) for c in header if c not in text})
            chunks = pd.read_csv(path, sep=sep, low_memory=False, index_col=False, chunksize=chunk_rows,
                                 encoding=_text_encoding(encoding), **na)
            # the rows' fields, read beside the chunks: a row with fewer fields than the header is refused
            check = stack.enter_context(open(path, encoding=_text_encoding(encoding), newline=""))
            records = _records(csv.reader(check, delimiter=sep))
        chunks = iter(chunks)
        while True:
            with warnings.catch_warnings():  # around each read only: the caller's code runs between them
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = next(chunks, None)
            if df is None:
                break
            if not len(df):  # a header and no rows (pandas yields one empty chunk): the file is empty
                continue
            if records is not None:
                _check_rows(path, records, header, len(df), sep)
            if fmt == "jsonl" and not all(isinstance(c, str) for c in df.columns):
                raise _table_error(path, "holds a line that is not a JSON object", 'JSON Lines needs one JSON '
                                   'object per line, like {"text": "a", "label": 1}')
            df.index = pd.RangeIndex(start, start + len(df))
            start += len(df)
            yield Table(df, root, str(path))
    except MmfuseError:
        raise
    except (pd.errors.ParserError, pd.errors.ParserWarning) as e:
        if fmt in ("csv", "tsv"):
            with open(path, encoding=_text_encoding(encoding), newline="") as f:
                long_row = _first_long_row(f, sep, len(header))
            if long_row is not None:
                line, n = long_row
                raise _table_error(path, f"has {n} fields but the header has {len(header)}",
                                   "Put quotes around fields that contain the separator, or fix that row",
                                   line=line) from e
        raise _translate(e, path, fmt) from e
    except UnicodeDecodeError as e:
        raise InputError(row=None, column=None, file=str(path), reason=f"is not valid {encoding} text ({e.reason})",
                         hint="Re-save the file as UTF-8 (or save it as Parquet)") from None
    except Exception as e:  # any other failure of pandas, pyarrow, csv, json or the OS: one line
        raise _translate(e, path, fmt) from e
    finally:
        stack.close()
    if start == 0:
        raise SchemaError(f"table {path} is empty (0 rows); it needs a header line and at least one row")


def _arrow_frame(batch, verbatim: Sequence[str]) -> pd.DataFrame:
    """A record batch as a DataFrame; its ``verbatim`` columns in their Arrow type (an integer column with a
    null stays integer)."""
    df = batch.to_pandas()
    for c in verbatim:
        if c in df.columns:
            df[c] = batch.column(c).to_pandas(types_mapper=pd.ArrowDtype)
    return df


def _with_json_values(chunks, path: Path, encoding: str, verbatim: Sequence[str]):
    """JSON Lines chunks whose ``verbatim`` keys hold the values as :mod:`json` decodes them (pandas turns an
    integer beside a null into a float); a line without the key gives None."""
    with open(path, encoding=encoding) as f:
        lines = (line for line in f if line.strip())
        for df in chunks:
            rows = [json.loads(next(lines)) for _ in range(len(df))]
            for c in verbatim:
                if c in df.columns:
                    df[c] = pd.Series([r.get(c) if isinstance(r, dict) else None for r in rows], index=df.index,
                                      dtype=object)
            yield df


def table_format(data: str | os.PathLike) -> str | None:
    """The format a table file is read as, by its suffix: ``csv``, ``tsv``, ``parquet`` or ``jsonl``; None for
    a suffix of no table format (reading it says why)."""
    return _SUFFIXES.get(Path(data).suffix.lower())


def table_rows(data: str | os.PathLike) -> int | None:
    """The number of rows of a Parquet file from its metadata (no data read); None for text formats."""
    path = Path(data)
    if table_format(path) != "parquet":
        return None
    try:
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # the reader says what is wrong, with the file's name
        return None


def _text_encoding(encoding: str) -> str:
    return "utf-8-sig" if encoding.lower().replace("-", "").replace("_", "") == "utf8" else encoding


def _check_file(path: Path, hint_files: bool = False) -> str:
    """The checks before reading a table file (``hint_files``: a folder's error names a table in it); its format."""
    try:
        if not path.exists():
            raise SchemaError(f"table file {str(path)!r} does not exist (resolved to {path.resolve()})")
        if path.is_dir():
            found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _SUFFIXES) if hint_files else []
            hint = (f"Pass a table file in it, e.g. {str(path / found[0])!r}" if found
                    else f"Pass a {', '.join(sorted(_SUFFIXES))} file")
            if any(p.suffix.lower() == ".parquet" for p in path.iterdir()):
                hint += (", or train on the folder's Parquet files without loading them (mmfuse fit --stream, "
                         "stream=True)")
            if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
                raise _table_error(path, "is a bundle folder (a trained model), not a table file",
                                   f"Pass a table; to start training from this model, add --init-from {path} "
                                   "(init_from=...)")
            raise _table_error(path, "is a folder, not a table file", hint)
        fmt = _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            hint = _OTHER_FORMAT_HINTS.get(path.suffix.lower()) or _content_hint(path) or \
                f"use one of {', '.join(sorted(_SUFFIXES))}"
            raise SchemaError(f"cannot read {str(path)!r}: unknown table format {path.suffix!r}; {hint}")
        if path.stat().st_size == 0:
            raise _table_error(path, "is empty (0 bytes)", "Write a header line and at least one row into it, "
                                                           "or pass another file")
        with open(path, "rb") as f:
            kind, ext = _sniff(f.read(4096)) or ("", None)
        if _foreign(kind, ext, fmt):
            raise _table_error(path, f"is not a {_FORMAT_NAMES[fmt]} file: its content looks like {kind}",
                               _rename_hint(kind, ext))
        return fmt
    except MmfuseError:
        raise
    except Exception as e:
        raise _translate(e, path, _SUFFIXES.get(path.suffix.lower(), "csv")) from e


_FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "jsonl": "JSON Lines"}
_OTHER_FORMAT_HINTS = {
    ".xlsx": "save the sheet as CSV (in Excel: File > Save As > CSV UTF-8) and pass the .csv",
    ".xls": "save the sheet as CSV (in Excel: File > Save As > CSV UTF-8) and pass the .csv",
    ".json": "write it as JSON Lines (one JSON object per line) named .jsonl, e.g. "
             "pandas.read_json(path).to_json('t.jsonl', orient='records', lines=True)",
    ".gz": "decompress it first (gunzip FILE) and pass the table inside",
    ".zip": "unzip it first and pass the table inside",
}


def _table_error(path: Path, reason: str, hint: str, line: int | None = None) -> SchemaError:
    """``table file 'x.csv' reason. hint`` (``table file 'x.csv', line N: reason. hint``) as one line."""
    where = f", line {line}:" if line is not None else ""
    return SchemaError(f"table file {str(path)!r}{where} {reason}. {hint}")


def _read_path(path: Path, encoding: str) -> pd.DataFrame:
    """Read a table file. Whatever its libraries raise becomes a one-line SchemaError naming the file."""
    fmt = _check_file(path, hint_files=True)
    try:
        return _read_file(path, fmt, encoding)
    except MmfuseError:
        raise
    except Exception as e:  # any other failure of pandas, pyarrow, csv, json or the OS: say it in one line
        raise _translate(e, path, fmt) from e


def _read_file(path: Path, fmt: str, encoding: str) -> pd.DataFrame:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        _check_columns(names, str(path))
        return pd.read_parquet(path)
    raw = path.read_bytes()  # (_check_file has refused content of another format)
    text = _decode(raw, path, encoding)
    if not text.strip():
        raise _table_error(path, "holds only blank lines", "Write a header line and at least one row into it, "
                                                           "or pass another file")
    if fmt == "jsonl":
        return _read_jsonl(text, path)
    return _read_csv(text, path, "\t" if fmt == "tsv" else ",", sniff_separator=fmt == "csv")


def _read_csv(text: str, path: Path, sep: str, sniff_separator: bool) -> pd.DataFrame:
    """CSV/TSV text to a DataFrame; a row with more fields than the header is refused, naming its line."""
    import warnings

    header, sep = _csv_header(lambda: io.StringIO(text), sep, sniff_separator)
    _check_columns(header, str(path))
    try:
        # index_col=False: rows with one field too many must not silently turn the first column
        # into the index; pandas then warns instead, and that warning is made an error here.
        # keep_default_na: empty cells and 'NA'/'NaN' become missing; everything else is kept as
        # written and typed later by the schema (so a stray string in a numeric column is reported).
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(io.StringIO(text), sep=sep, low_memory=False, index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning) as e:
        long_row = _first_long_row(text, sep, len(header))
        if long_row is None:
            raise
        line, n = long_row
        shown = {",": "','", ";": "';'", "\t": "a tab"}[sep]
        raise _table_error(path, f"has {n} fields but the header has {len(header)}",
                           f"Put quotes around fields that contain {shown} (\"a{sep.strip()} b\"), "
                           "or fix that row", line=line) from e
    _check_rows(path, _records(csv.reader(io.StringIO(text), delimiter=sep)), header, len(df), sep)
    return df


def _csv_header(open_text, sep: str, sniff_separator: bool) -> tuple[list, str]:
    """The header row and the separator of CSV/TSV text (``open_text()`` opens it anew): a ``.csv`` whose
    header holds no comma but semicolons or tabs (Excel in many locales) is read with that separator."""
    def first(sep):  # (blank lines before it are left out, as pandas leaves them out)
        with open_text() as f:
            return next((r for r in csv.reader(f, delimiter=sep) if not _blank(r)), [])

    header = first(sep)
    if sniff_separator and len(header) == 1:
        sep = next((s for s in (";", "\t") if s in header[0]), sep)
        header = first(sep)
    return header, sep


def _blank(fields: list) -> bool:
    """A line pandas leaves out (``skip_blank_lines``): empty, or spaces and tabs only (not ``""``)."""
    return not fields or (len(fields) == 1 and fields[0] != "" and not fields[0].strip(" \t"))


def _records(reader):
    """(line where it starts, its fields) of each row of a ``csv.reader`` past the header, blank lines left out
    as pandas leaves them out."""
    try:
        start = 1
        for fields in reader:  # the header: the first line that is not blank
            start = reader.line_num + 1
            if not _blank(fields):
                break
        for fields in reader:
            if not _blank(fields):
                yield start, fields
            start = reader.line_num + 1
    except csv.Error:  # a line pandas reads and csv does not: the rows past it go unchecked
        return


def _check_rows(path: Path, records, header: list, n_rows: int, sep: str) -> None:
    """Refuse the first of the next ``n_rows`` rows of ``records`` (:func:`_records`) with fewer fields than
    the header (but for unnamed columns at its end: a header that ends with a separator). pandas fills the
    missing fields with blanks; the usual cause is a text with a line break that is not in quotes, which cuts
    its row in two, or a row cut short. Warn of quoted fields that run over lines which look like whole rows
    (as many separators as a row): a quote that is never closed where it should be takes the rows after it into
    one field, and pandas reads one row where there were several."""
    import warnings

    n = len(header)
    while n and not str(header[n - 1]).strip():
        n -= 1
    if n < 2:
        return
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # as long a field as pandas reads (the default is 131,072 characters)
    swallowing = []
    try:
        for line, fields in itertools.islice(records, n_rows):
            if len(fields) < n:
                raise _table_error(path, f"has {len(fields)} field{'s' * (len(fields) != 1)} but the header has "
                                   f"{len(header)}", "Put a text with a line break in quotes (\"first line\\n"
                                   "second\"), or give the row every field (an empty one stays blank: a,,c)",
                                   line=line)
            swallowing += [(line, header[j] if j < len(header) else j) for j, f in enumerate(fields)
                           if "\n" in f and any(x.count(sep) >= n - 1 for x in f.split("\n")[1:])]
    finally:
        csv.field_size_limit(limit)
    if swallowing:
        (line, column), k = swallowing[0], len(swallowing)
        warnings.warn(f"table file {str(path)!r}: {k} quoted field{'s' * (k != 1)} run{'s' * (k == 1)} over lines "
                      f"that look like whole rows (the first: the row on line {line}, column {column!r}); a quote that "
                      "is not closed takes the rows after it into one field: check the quotes there", stacklevel=2)


def _first_long_row(text, sep: str, n_header: int) -> tuple[int, int] | None:
    """(line where the first row with more than ``n_header`` fields starts, its number of fields).
    Rows whose extra fields are empty (a trailing separator, which pandas tolerates) come last.
    ``text``: the file's text, or an open text file (read as it goes). A line the csv module cannot read (a
    field over its size limit) ends the search: pandas' own message then speaks."""
    found = None
    for line, fields in _records(csv.reader(io.StringIO(text) if isinstance(text, str) else text, delimiter=sep)):
        if len(fields) > n_header:
            if any(f.strip() for f in fields[n_header:]):
                return line, len(fields)
            found = found or (line, len(fields))
    return found


def _read_jsonl(text: str, path: Path) -> pd.DataFrame:
    """JSON Lines text to a DataFrame; a line that is not a JSON object is refused, naming it."""
    try:
        df = pd.read_json(io.StringIO(text), lines=True, dtype=False)
    except Exception as e:  # pandas does not say which line (ValueError, or TypeError for mixed lines)
        df, error = None, e
    if df is None or not all(isinstance(c, str) for c in df.columns):  # int columns: lines are not objects
        for i, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                reason = f"is not valid JSON ({e.msg} at column {e.colno})"
            else:
                if isinstance(value, dict):
                    continue
                reason = f"holds a JSON {type(value).__name__}, not an object"
            raise _table_error(path, reason, "JSON Lines needs one JSON object per line, like "
                                             '{"text": "a", "label": 1}', line=i)
        if df is None:
            raise error
    return df


_MAGIC = {b"PAR1": ("Parquet", "parquet"), b"\x89PNG": ("a PNG image", None), b"\xff\xd8\xff": ("a JPEG image", None),
          b"GIF8": ("a GIF image", None), b"PK\x03\x04": ("a ZIP archive (an .xlsx workbook is one)", None),
          b"\xd0\xcf\x11\xe0": ("an old Office file (.xls?)", None), b"%PDF": ("a PDF document", None),
          b"\x1f\x8b": ("gzip-compressed data", None), b"RIFF": ("a RIFF file (WAV audio?)", None),
          b"SQLite format 3": ("an SQLite database", None)}
_BINARY_KINDS = {k for k, _ in _MAGIC.values()} | {"binary data"}


def _sniff(head: bytes) -> tuple[str, str | None] | None:
    """What a file's first bytes look like: (description, table format or None), or None when unsure."""
    for magic, found in _MAGIC.items():
        if head.startswith(magic):
            return found
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None  # UTF-16 text: decoding names the encoding to pass
    if b"\0" in head:
        return "binary data", None
    first = head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n").split("\n", 1)[0].strip()
    if first in ("{", "["):  # the start of an indented JSON document
        return "JSON", None
    if first.startswith(("{", "[")):
        try:
            return ("JSON Lines", "jsonl") if isinstance(json.loads(first), dict) else ("JSON", None)
        except json.JSONDecodeError:
            pass  # a header such as "{id},name" is CSV
    if "\t" in first:
        return "tab-separated text", "tsv"
    if "," in first or ";" in first:
        return "CSV text", "csv"
    return None


def _foreign(kind: str, ext: str | None, fmt: str) -> bool:
    """Whether content sniffed as ``kind`` (table format ``ext``) is not of format ``fmt``.
    A .csv may hold tab- or semicolon-separated text: the reader finds the separator."""
    if ext is not None:
        return ext != fmt and (fmt, ext) != ("csv", "tsv")
    return kind in _BINARY_KINDS or (kind == "JSON" and fmt != "jsonl")


def _rename_hint(kind: str, ext: str | None) -> str:
    """What to do with a file whose content (``kind``, table format ``ext``) is not its extension's format."""
    if ext is not None:
        return f"Rename it to .{ext}, or pass the right file"
    if kind == "JSON":
        return "mmfuse reads JSON as JSON Lines: one JSON object per line, in a .jsonl file"
    return "Pass the table itself (a .csv, .tsv, .parquet or .jsonl file)"


def _content_hint(path: Path) -> str | None:
    """'its content looks like CSV text: rename it to .csv' for a file of an unknown extension."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        kind, ext = _sniff(f.read(4096)) or ("", None)
    return f"its content looks like {kind}: rename it to .{ext}" if ext else None


def _translate(e: Exception, path: Path, fmt: str) -> SchemaError:
    """A library's exception while reading ``path`` as ``fmt``, as one line naming the file and the fix."""
    if isinstance(e, OSError) and e.errno is not None:  # the OS: permissions, a folder, a vanished file ...
        hint = ("Check that you may read it" if isinstance(e, PermissionError)
                else "Check the path, and that the file can be read")
        return _table_error(path, f"cannot be read: {e.strerror}", hint)
    detail = " ".join(str(e).split()).rstrip(".") or type(e).__name__
    if isinstance(e, pd.errors.EmptyDataError):
        return _table_error(path, "is empty (no columns in it)", "Write a header line and at least one row into it, "
                                                                 "or pass another file")
    try:
        with open(path, "rb") as f:
            kind, ext = _sniff(f.read(4096)) or ("", None)
    except OSError:
        kind, ext = "", None
    name = _FORMAT_NAMES[fmt]
    if fmt == "parquet" and ext == "parquet":
        return _table_error(path, f"is a damaged or truncated Parquet file ({detail})", "Copy or export it again")
    if _foreign(kind, ext, fmt):
        return _table_error(path, f"is not a {name} file: its content looks like {kind}", _rename_hint(kind, ext))
    if fmt in ("csv", "tsv") and "EOF inside string" in detail:
        return _table_error(path, f"cannot be read as {name}: a quoted field is never closed ({detail})",
                            'Check that every opening quote " has its closing quote')
    return _table_error(path, f"cannot be read as {name} ({detail})", f"Check that it is a valid {name} file, "
                                                                        "or export it again")


def _decode(raw: bytes, path: Path, encoding: str) -> str:
    """The text of a file; a UTF-8 byte order mark is dropped. Names the line of the first bad byte."""
    encoding = _text_encoding(encoding)
    try:
        return raw.decode(encoding)
    except LookupError:
        raise SchemaError(f"cannot read {str(path)!r}: unknown text encoding {encoding!r}; "
                          "use e.g. utf-8, latin-1 or utf-16") from None
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        bad = raw[e.start:e.end].hex(" ")
        shown = "utf-8" if encoding == "utf-8-sig" else encoding
        hint = ("The file is UTF-16 text: re-save it as UTF-8, or pass encoding='utf-16' (read_table, mmfuse inspect "
                "--encoding)"
                if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else
                "Re-save the file as UTF-8, or pass encoding='latin-1' (read_table, mmfuse inspect --encoding) if "
                "that is its real encoding")
        raise InputError(row=None, column=None, file=str(path),
                         reason=f"is not valid {shown}: byte(s) 0x{bad} on line {line}", hint=hint) from None


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
    """A YAML (``.yaml``/``.yml``) or JSON file that must hold a mapping; an empty file is ``{}``.

    Raises:
        SchemaError: one line naming the file (and the line, for a syntax error) when it is
            missing, unreadable, not UTF-8, not valid YAML/JSON or not a mapping.
    """
    path = Path(path)
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    lang = "YAML" if is_yaml else "JSON"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise SchemaError(f"{what} {str(path)!r} does not exist (resolved to {path.resolve()})") from e
    except UnicodeDecodeError as e:
        raise SchemaError(f"{what} {str(path)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start}); pass a {lang} text file saved as UTF-8") from e
    except OSError as e:  # a folder, no permission, ...
        raise SchemaError(f"{what} {str(path)!r} cannot be read: {e.strerror or e}; pass a .yaml or .json "
                          "file") from e
    if is_yaml:
        import yaml

        try:
            d = yaml.load(text, Loader=_yaml_loader())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or " ".join(str(e).split())
            raise SchemaError(f"{what} {str(path)!r}{where}: not valid YAML ({problem}); fix that line: check its "
                              "indentation, and quote values that contain ': ' or start with [ {") from e
    else:
        try:
            d = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as e:
            raise SchemaError(f"{what} {str(path)!r}, line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}); "
                              "fix that line: JSON has double-quoted strings, no trailing commas and no "
                              "comments") from e
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise SchemaError(f"{what} {path} must hold a mapping (key: value lines), got a {type(d).__name__}")
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


def save_figure(fig, path: str | os.PathLike, **kw) -> None:
    """``fig.savefig`` written atomically (a reader never sees half a PNG); the format from the suffix."""
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kw)
    atomic_write_bytes(path, buf.getvalue())


def _yaml_loader():
    """PyYAML's safe loader, reading ``1e-3`` as a number (YAML 1.1 wants ``1.0e-3``; users write ``1e-3``)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader
