"""Column roles, their inference by explainable rules, and the inputs they form.

Every column gets a :class:`Role`. Columns of the data modalities form *inputs*: by default
each text, image, audio and time-series column is its own input with its own encoder, and
all numeric and categorical columns together form one ``tabular`` input (one MLP with
categorical embeddings). The user can override any role and group columns into inputs.

The rules for numbers (:func:`infer_schema` lists the others):

- A cell is a number when :func:`parse_number` reads it: plain numbers, and numbers written with a
  decimal comma (``12,5``), thousands separators (``1,000``, ``1.000,5``, ``1 000``), a currency
  sign (``$1,000``, ``5 €``) or a percent sign (``10%`` is 0.1). Inspection and the numeric
  preprocessor both read cells with it, so a column inspected as numeric trains as numeric.
- A column of whole numbers that counts ``0..n-1`` or ``1..n`` (in any order, one value per row,
  at least 20 rows) is a saved row number: an ``id``. So is a column named ``Unnamed: N`` (pandas'
  name for a blank header, which is a saved index) when its values are distinct.
- Whole numbers with 2 distinct values are a flag: ``categorical``.
- Whole numbers with 3 to 10 distinct values, each seen at least twice on average, are *few codes*,
  and the reason starts with "numeric or categorical?". A run of consecutive integers (``1..5``: a
  rating, a count) keeps its order and is ``numeric``; values with gaps (``3, 7, 12, 40``) are codes
  and are ``categorical``. ``--column NAME=ROLE`` overrides either choice.
- ``id`` and ``ignore`` columns are not used for training; :func:`left_out_columns` lists them with
  the reasons.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from ._registry import unknown_name_message
from .errors import SchemaError
from .io import read_table

__all__ = ["Role", "Modality", "Schema", "InputSpec", "infer_schema", "describe_schema", "parse_column_overrides",
           "is_missing", "missing_mask", "parse_number", "to_numbers", "left_out_columns"]


class Role(str, Enum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    TIMESERIES = "timeseries"
    TARGET = "target"
    ID = "id"
    GROUP = "group"
    SPLIT = "split"  # train / val / test assignment per row
    IGNORE = "ignore"

    @classmethod
    def parse(cls, value, where: str = "role") -> "Role":
        if isinstance(value, Role):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise SchemaError(unknown_name_message(where, value, [r.value for r in cls])) from None


class Modality(str, Enum):
    """What an input is, and so which preprocessor and encoder it gets."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    TABULAR = "tabular"
    TIMESERIES = "timeseries"


_ROLE_MODALITY = {Role.TEXT: Modality.TEXT, Role.IMAGE: Modality.IMAGE, Role.AUDIO: Modality.AUDIO,
                  Role.NUMERIC: Modality.TABULAR, Role.CATEGORICAL: Modality.TABULAR,
                  Role.TIMESERIES: Modality.TIMESERIES}

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
AUDIO_EXT = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".m4a", ".aac", ".opus"}
TIMESERIES_EXT = {".npy", ".csv", ".tsv", ".parquet"}
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
_AUDIO_MAGIC = (b"RIFF", b"fLaC", b"OggS", b"ID3", b"FORM")
_ID_NAME = re.compile(r"(^|_|\b)(id|uuid|key)$", re.I)
_UNNAMED = re.compile(r"^Unnamed: \d+$")  # pandas' name for a blank header: a saved index
_MIN_COUNTER_ROWS = 20  # fewer rows that count 0..n-1 are too weak a sign of a saved row number
_FEW_CODES = 10  # whole numbers with at most this many distinct values: "numeric or categorical?"
_SAMPLE = 200
_SPLIT_VALUES = {"train", "val", "valid", "validation", "dev", "test"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: a name, its modality and the columns it reads."""

    name: str
    modality: Modality
    columns: tuple[str, ...]

    def roles(self, schema: "Schema") -> dict[str, Role]:
        return {c: schema.roles[c] for c in self.columns}


@dataclass
class Schema:
    """Roles for every column, the reasons they were chosen, and optional input groups.

    Attributes:
        roles: Column name -> role, in table order.
        reasons: Column name -> one-line explanation of the role.
        groups: Input name -> columns read together by one encoder (all one modality).
    """

    roles: dict[str, Role]
    reasons: dict[str, str] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def target(self) -> str | None:
        t = [c for c, r in self.roles.items() if r is Role.TARGET]
        return t[0] if t else None

    def columns_with(self, *roles: Role) -> list[str]:
        return [c for c, r in self.roles.items() if r in roles]

    def group_modality(self, cols) -> Modality:
        """A group's modality; a group with text and numeric/categorical columns is text (those
        columns are written into the text as ``Name: value``)."""
        mods = {_ROLE_MODALITY.get(self.roles[c]) for c in cols}
        return Modality.TEXT if Modality.TEXT in mods else mods.pop()

    def inputs(self) -> list[InputSpec]:
        """The model inputs, sorted by name for determinism.

        A numeric or categorical column written into a text group stays in the tabular input
        too; pick the inputs to train on with ``inputs=[...]`` to use only one of them."""
        grouped: set[str] = set()
        out: list[InputSpec] = []
        for name, cols in self.groups.items():
            mod = self.group_modality(cols)
            out.append(InputSpec(name, mod, tuple(cols)))
            grouped.update(c for c in cols if _ROLE_MODALITY.get(self.roles[c]) is mod)
        tabular = [c for c in self.columns_with(Role.NUMERIC, Role.CATEGORICAL) if c not in grouped]
        names = {i.name for i in out}
        for c, r in self.roles.items():
            if c in grouped or r not in _ROLE_MODALITY or _ROLE_MODALITY[r] is Modality.TABULAR:
                continue
            out.append(InputSpec(c, _ROLE_MODALITY[r], (c,)))
            names.add(c)
        if tabular:
            name = "tabular" if "tabular" not in names else "tabular_"
            out.append(InputSpec(name, Modality.TABULAR, tuple(tabular)))
        return sorted(out, key=lambda i: i.name)

    def validate(self, df: pd.DataFrame | None = None) -> "Schema":
        if df is not None:
            missing = [c for c in self.roles if c not in df.columns]
            if missing:
                raise SchemaError(f"schema names columns that are not in the table: {', '.join(map(repr, missing))}")
        targets = self.columns_with(Role.TARGET)
        if len(targets) > 1:
            raise SchemaError(f"only one target column is supported, got {targets}")
        for name, cols in self.groups.items():
            for c in cols:
                if c not in self.roles:
                    raise SchemaError(unknown_name_message(f"column in group {name!r}:", c, self.roles))
            mods = {_ROLE_MODALITY.get(self.roles[c]) for c in cols}
            if None in mods or len(mods) != 1 and mods != {Modality.TEXT, Modality.TABULAR}:
                raise SchemaError(f"group {name!r} mixes roles {sorted({self.roles[c].value for c in cols})}; "
                                  "a group's columns must all be text, all image, all audio, all timeseries, "
                                  "or numeric/categorical (text may take numeric/categorical columns too: "
                                  "they are written into the text as 'Name: value')")
            if mods == {Modality.IMAGE} and len(cols) > 1 or mods == {Modality.AUDIO} and len(cols) > 1:
                raise SchemaError(f"group {name!r}: image and audio columns cannot be grouped; "
                                  "each one is its own input")
        seen: dict[str, str] = {}
        for name, cols in self.groups.items():
            for c in cols:
                if c in seen:
                    raise SchemaError(f"column {c!r} is in two groups: {seen[c]!r} and {name!r}")
                seen[c] = name
        for name, cols in self.groups.items():  # an input of its own by the same name would replace the group
            r = self.roles.get(name)
            if name not in cols and name not in seen and r in _ROLE_MODALITY and \
                    _ROLE_MODALITY[r] is not Modality.TABULAR:
                raise SchemaError(f"group {name!r} has the name of the column {name!r}, which is an input of its own "
                                  f"({r.value}); name the group otherwise, e.g. --group {name}_group="
                                  + ",".join(map(str, cols)))
        return self

    # serialization: JSON / YAML only describe the dataclass
    def to_dict(self) -> dict:
        return {"columns": {c: r.value for c, r in self.roles.items()},
                "reasons": dict(self.reasons), "groups": {k: list(v) for k, v in self.groups.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Schema":
        roles = {str(c): Role.parse(r, f"role for column {c!r}") for c, r in d.get("columns", {}).items()}
        return cls(roles, dict(d.get("reasons", {})), {k: list(v) for k, v in d.get("groups", {}).items()}).validate()

    def save(self, path: str | os.PathLike) -> None:
        from .io import atomic_write_text

        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def load_overrides(path: str | os.PathLike) -> dict:
    """Read a YAML/JSON schema file: ``{target: y, columns: {col: role}, groups: {name: [cols]}}``."""
    from .io import read_mapping_file

    d = read_mapping_file(path, "schema file")
    unknown = set(d) - {"columns", "groups", "target", "reasons"}
    if unknown:
        raise SchemaError(f"schema file {path}: unknown keys {sorted(unknown)}; allowed: columns, groups, target")
    return d


def parse_column_overrides(items: Iterable[str]) -> dict[str, Role]:
    """Parse ``NAME=ROLE`` strings from the command line."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SchemaError(f"--column expects NAME=ROLE, got {item!r}")
        name, role = item.rsplit("=", 1)
        out[name.strip()] = Role.parse(role, f"role for column {name.strip()!r}")
    return out


def infer_schema(data, target: str | None = None, overrides: Mapping[str, Role | str] | None = None,
                 groups: Mapping[str, list[str]] | None = None, schema_file: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None) -> Schema:
    """Give every column a role by explainable rules, then apply the user's overrides.

    Rules, in order: the target; the user's overrides; all-missing columns are ignored;
    ``Unnamed: N`` columns with one value per row are ids; columns of numbers follow the rules
    in the module docstring (row counters are ids, flags and gapped codes categorical);
    bytes cells are sniffed by magic number; list cells are time series; strings that end
    in a known file extension are image/audio/timeseries paths (checked for existence
    under the root); values that :func:`parse_number` reads are numeric; id-like names with one
    value per row are ids; long strings (mean >= 4 words) are text; the rest categorical.

    A group may name columns by glob pattern (``{"fac": ["fac_*"]}``): a pattern stands for the
    matching columns with a data role (text, image, audio, timeseries, numeric, categorical), in
    table order. A group of numeric and categorical columns is a tabular input of that name.

    Args:
        data: A table, DataFrame or path.
        target: The target column.
        overrides: Column -> role, taking precedence over inference.
        groups: Input name -> columns to encode together.
        schema_file: YAML/JSON file with ``columns``, ``groups`` and ``target``.
        root: Folder for relative paths in cells.
    """
    table = read_table(data, root=root)
    df = table.df
    overrides = dict(overrides or {})
    groups = dict(groups or {})
    if schema_file is not None:
        f = load_overrides(schema_file)
        overrides = {**f.get("columns", {}), **overrides}
        groups = {**f.get("groups", {}), **groups}
        target = target or f.get("target")
    for c in overrides:
        if c not in df.columns:
            raise SchemaError(unknown_name_message("column", c, df.columns) + " (in the role overrides)")
    if target is not None and target not in df.columns:
        raise SchemaError(unknown_name_message("target column", target, df.columns))
    roles, reasons = {}, {}
    for c in df.columns:
        if c == target:
            roles[c], reasons[c] = Role.TARGET, "named as the target"
        elif c in overrides:
            roles[c], reasons[c] = Role.parse(overrides[c], f"role for column {c!r}"), "set by the user"
        else:
            roles[c], reasons[c] = _infer_column(df[c], c, table.root)
    groups = {k: _expand_group(k, v, roles) for k, v in groups.items()}
    return Schema(roles, reasons, groups).validate(df)


def _expand_group(name: str, cols, roles: Mapping[str, Role]) -> list[str]:
    """A group's columns with glob patterns (``fac_*``) replaced by the data columns they match."""
    if isinstance(cols, str):  # "a,b" from a YAML file
        cols = [c.strip() for c in cols.split(",") if c.strip()]
    out: list[str] = []
    for c in cols:
        if c in roles or not any(ch in str(c) for ch in "*?["):
            hits = [c]
        else:
            hits = [k for k, r in roles.items() if r in _ROLE_MODALITY and fnmatch.fnmatchcase(str(k), c)]
            if not hits:
                raise SchemaError(unknown_name_message(f"column pattern in group {name!r}:", c, roles) + " (a "
                                  "pattern matches text, image, audio, timeseries, numeric and categorical columns)")
        out += [h for h in hits if h not in out]
    return out


def _infer_column(s: pd.Series, name: str, root: Path) -> tuple[Role, str]:
    n = len(s)
    nonnull = s[~missing_mask(s)]
    if len(nonnull) == 0:
        return Role.IGNORE, "every value is missing"
    if pd.api.types.is_bool_dtype(s):
        return Role.CATEGORICAL, "boolean values"
    if _UNNAMED.match(str(name)) and nonnull.astype(str).nunique() == n:
        return Role.ID, (f"named {name!r}, pandas' name for a blank header, with a distinct value per row: a saved "
                         f"row index; not used for training (pass --column '{name}=numeric' to use it)")
    if pd.api.types.is_numeric_dtype(s):
        return _infer_number_column(nonnull.astype(float), n, name, pd.api.types.is_integer_dtype(s))
    sample = nonnull.iloc[np.unique(np.linspace(0, len(nonnull) - 1, min(len(nonnull), _SAMPLE)).astype(int))]
    first = sample.iloc[0]
    if isinstance(first, (bytes, bytearray, memoryview, dict)):
        heads = [_bytes_of(v)[:4] for v in sample]
        if sum(h.startswith(_IMAGE_MAGIC) for h in heads) >= 0.5 * len(heads):
            return Role.IMAGE, "bytes cells with image headers (PNG/JPEG/GIF/BMP/TIFF)"
        if sum(h.startswith(_AUDIO_MAGIC) for h in heads) >= 0.5 * len(heads):
            return Role.AUDIO, "bytes cells with audio headers (WAV/FLAC/OGG)"
        return Role.IGNORE, "bytes cells of no known image or audio format"
    if isinstance(first, (list, tuple, np.ndarray)):
        return Role.TIMESERIES, "cells hold sequences of numbers"
    strs = sample.astype(str)
    exts = strs.map(lambda v: Path(v.strip()).suffix.lower() if len(v) < 1024 else "")
    top_ext = exts.mode().iloc[0] if len(exts) else ""
    share = float((exts == top_ext).mean())
    if top_ext and share >= 0.8 and top_ext in IMAGE_EXT | AUDIO_EXT | TIMESERIES_EXT:
        checked = strs[exts == top_ext].iloc[:20]
        exist = sum(_exists(v, root) for v in checked)
        role = Role.IMAGE if top_ext in IMAGE_EXT else Role.AUDIO if top_ext in AUDIO_EXT else Role.TIMESERIES
        if exist == 0 and top_ext in TIMESERIES_EXT:
            pass  # '.csv' in a string may be a name, not a file: fall through to the text rules
        else:
            return role, (f"{share:.0%} of values end in {top_ext}; {exist}/{len(checked)} sampled files exist "
                          f"under {root}")
    values = set(strs.str.strip().str.lower().unique())
    if values <= _SPLIT_VALUES:  # the sample may miss a rare split: look at every value
        values = set(nonnull.astype(str).str.strip().str.lower().unique())
    if values <= _SPLIT_VALUES and {"train"} <= values and len(values) >= 2:
        return Role.SPLIT, f"values {sorted(values)} name data splits"
    thousands, decimal, either = comma_counts(nonnull)
    comma = _comma_style(thousands, decimal, either)
    numeric = pd.Series(to_numbers(strs, comma), index=strs.index)
    ok = float(numeric.notna().mean())
    if ok >= 0.95:
        strays = strs[numeric.isna()].unique()[:3].tolist()
        why = f"{ok:.0%} of sampled values parse as numbers"
        written = strs[numeric.notna() & pd.to_numeric(strs, errors="coerce").isna()]
        if len(written):  # read by the lenient rules of parse_number: show one, so a misreading shows
            odd = [i for i in written.index if _AMBIGUOUS_COMMA.fullmatch(written[i].strip())]
            i = odd[0] if odd else written.index[0]  # a 2,500 read by the column's comma, where there is one
            why += f" ({written[i].strip()!r} reads as {numeric[i]:g}"
            why += "; the column writes a decimal comma)" if comma else ")"
            if comma is None and decimal and (either or thousands):  # a lone 3,5 among 1,500s: one of them is wrong
                why += (f"; commas read both ways here: {decimal} as a decimal mark (3,5 is 3.5), "
                        f"{either + thousands} as a thousands separator (1,500 is 1500): check the column")
        if strays:
            why += f"; stray values such as {strays} will be reported as bad input"
        x = pd.Series(to_numbers(nonnull, comma)).dropna()  # the number rules, on every value: "1".."n" is a row number
        role, why_number = _infer_number_column(x, n, name, False)
        if role is not Role.NUMERIC or why_number.startswith("numeric or categorical?"):
            return role, why_number
        return Role.NUMERIC, why
    nunique = nonnull.astype(str).nunique()
    words = float(strs.str.split().str.len().mean())
    if _ID_NAME.search(name) and nunique == n:
        return Role.ID, f"id-like name and {nunique} distinct values, one per row: an identifier; not used for training"
    if words >= 4:
        return Role.TEXT, f"free text: mean {words:.1f} words per value, {nunique} distinct values"
    if nunique == n and n > 50 and words < 4:
        return Role.ID, (f"{nunique} distinct short values, one per row: an identifier; not used for training "
                         f"(pass --column '{name}=text' to read them as text)")
    if nunique > max(50, 0.5 * len(nonnull)):
        return Role.TEXT, f"{nunique} distinct values in {len(nonnull)} rows (too many for categories)"
    return Role.CATEGORICAL, f"{nunique} distinct values, mean {words:.1f} words each"


def _infer_number_column(x: pd.Series, n: int, name: str, integer_dtype: bool) -> tuple[Role, str]:
    """The role of a column of numbers ``x`` (its non-missing cells, as floats) in a table of ``n`` rows;
    the rules are in the module docstring."""
    nunique = x.nunique()
    whole = integer_dtype or bool(np.all(np.mod(x.to_numpy(), 1) == 0))
    kind = "whole numbers" if whole else "decimal numbers"
    if whole and nunique == n and n >= _MIN_COUNTER_ROWS and x.min() in (0, 1) and x.max() - x.min() == n - 1:
        return Role.ID, (f"counts {x.min():g}..{x.max():g}, one value per row: a saved row number; not used for "
                         f"training (pass --column '{name}=numeric' to use it)")
    if _ID_NAME.search(name) and whole:
        if nunique == n:
            return Role.ID, (f"id-like name and {nunique} distinct integers, one per row: an identifier; "
                             "not used for training")
        return Role.CATEGORICAL, f"id-like name with {nunique} distinct integers shared by rows: a category"
    if whole and nunique <= 2:
        return Role.CATEGORICAL, f"{kind} with only {nunique} distinct values: a flag"
    if whole and nunique <= _FEW_CODES and len(x) >= 2 * nunique:
        values = np.sort(x.unique())
        if values[-1] - values[0] == nunique - 1:
            return Role.NUMERIC, (f"numeric or categorical? {nunique} distinct integers {values[0]:g}..{values[-1]:g}: "
                                  f"read as numeric; pass --column '{name}=categorical' to treat them as categories")
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if nunique > 6 else "")
        return Role.CATEGORICAL, (f"numeric or categorical? {nunique} distinct integers with gaps ({shown}): read as "
                                  f"category codes; pass --column '{name}=numeric' to read them as numbers")
    return Role.NUMERIC, f"{kind}, {nunique} distinct"


_CURRENCY = "$€£¥₹₩₽¢"
_GROUP_MARKS = " '\u00a0\u202f"  # space, apostrophe, no-break spaces: only ever thousands separators


def parse_number(v, comma: str | None = None) -> float | None:
    """A cell as a float, or ``None`` when it is not a number: the one answer to "is this a number?"
    in mmfuse (inspection and the numeric preprocessor both ask it).

    Reads what ``float`` reads (``12.5``, ``1e3``, ``nan``), and numbers written for people: a decimal
    comma (``12,5``), thousands separators (``1,000``, ``1.000.000``, ``1,000.5``, ``1.000,5``,
    ``1 000``, ``1'000``), a currency sign before or after (``$1,000``, ``-$5``, ``5 €``) and a
    trailing percent sign (``10%`` is 0.1). When a number has both ``,`` and ``.``, the last one is
    the decimal mark; a single ``.`` is always one (``1.000`` is 1, as ``float`` reads it). A single
    ``,`` with exactly three digits after it and one to three digits before, not starting with 0,
    is a thousands separator (``1,000`` is 1000; ``0,125`` is 0.125); any other single ``,`` is a
    decimal comma (``12,5``). Missing cells are not numbers: ask :func:`is_missing` first.

    ``comma="decimal"``: the column's commas are decimal marks (:func:`comma_style` found one that can only
    be), so an ambiguous ``2,500`` is 2.5, not 2500.
    """
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if not isinstance(v, str):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None
    s = v.strip()
    try:
        return float(s)
    except ValueError:
        pass
    scale = 1.0
    if s.endswith("%"):
        s, scale = s[:-1].rstrip(), 0.01
    sign = 1.0
    if s[:1] in ("-", "+"):
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:].lstrip()
    if s[:1] and s[0] in _CURRENCY:
        s = s[1:].lstrip()
    elif s[-1:] and s[-1] in _CURRENCY:
        s = s[:-1].rstrip()
    if s[:1] == "-" and sign > 0:  # "$-5"
        sign, s = -1.0, s[1:].lstrip()
    if not re.fullmatch(r"\d[\d.,'\s\u00a0\u202f]*\d|\d", s):
        return None
    marks = [ch for ch in s if not ch.isdigit()]
    decimal = None
    if "," in marks and "." in marks:
        decimal = max((",", "."), key=s.rfind)
    elif marks.count(".") == 1:
        decimal = "."
    elif marks.count(",") == 1:
        head, tail = s.rsplit(",", 1)
        if len(tail) != 3 or not re.fullmatch(r"[1-9]\d{0,2}", head) or comma == "decimal":
            decimal = ","
    whole, frac = s.rsplit(decimal, 1) if decimal else (s, "")
    if decimal and not frac.isdigit():
        return None
    seps = {ch for ch in whole if not ch.isdigit()}
    if len(seps) > 1 or seps and not re.fullmatch(r"[1-9]\d{0,2}(" + re.escape(next(iter(seps))) + r"\d{3})+", whole):
        return None
    x = float("".join(ch for ch in whole if ch.isdigit()) + ("." + frac if frac else ""))
    return sign * x * scale


def to_numbers(values, comma: str | None = None) -> np.ndarray:
    """:func:`parse_number` of every cell, as ``float64 [n]``; missing cells and non-numbers are NaN."""
    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    x = pd.to_numeric(s, errors="coerce").astype(float).to_numpy(copy=True)  # the fast path: plain numbers
    for i in np.flatnonzero(np.isnan(x)):
        v = s.iloc[i]
        if isinstance(v, str) and not is_missing(v):
            p = parse_number(v, comma)
            x[i] = math.nan if p is None else p
    return x


_SIGN, _UNIT = r"[-+]?[^\d\s.,]?\s*", r"\s*[^\d\s.,]?\s*%?"  # a sign and currency before, a currency or % after
_AMBIGUOUS_COMMA = re.compile(_SIGN + r"[1-9]\d{0,2},\d{3}" + _UNIT)  # 2,500: 2500, or 2.5 with a decimal comma
_DECIMAL_COMMA = re.compile(_SIGN + r"(\d+|[1-9]\d{0,2}(\.\d{3})+),\d+" + _UNIT)  # 3,1  0,125  1.000,5
_THOUSANDS_COMMA = re.compile(_SIGN + r"[1-9]\d{0,2}(,\d{3})+(\.\d+)?" + _UNIT)  # 1,234,567  1,234.5


def comma_style(values) -> str | None:
    """``"decimal"`` when a column writes its numbers with a decimal comma: no cell's comma can only be a
    thousands separator (``1,234,567``, ``1,234.5``), and the cells whose comma can only be a decimal mark
    (``3,1``, ``0,125``, ``1.000,5``) are at least as many as those where it could be either (``2,500``).
    Then every ``2,500`` of the column reads as 2.5; else (``None``) as 2500, as a lone ``1,50`` among
    ``12,000`` and ``2,500`` leaves them."""
    return _comma_style(*comma_counts(values))


def _comma_style(thousands: int, decimal: int, either: int) -> str | None:
    return "decimal" if not thousands and decimal and decimal >= either else None


def comma_counts(values) -> tuple[int, int, int]:
    """The cells of a column whose comma can only be a thousands separator, only a decimal mark, or either."""
    s = pd.Series(values)
    if s.dtype.kind != "O":  # numbers already: no commas
        return 0, 0, 0
    try:
        s = s[s.str.contains(",", regex=False, na=False)].str.strip()  # (cells that are not strings: NaN, left out)
    except AttributeError:  # no string among them (bytes, lists)
        return 0, 0, 0
    if not len(s):
        return 0, 0, 0
    either = s.str.fullmatch(_AMBIGUOUS_COMMA)
    return (int((s.str.fullmatch(_THOUSANDS_COMMA) & ~either).sum()),
            int((s.str.fullmatch(_DECIMAL_COMMA) & ~either).sum()), int(either.sum()))


def left_out_columns(schema: Schema, inputs: Iterable[str] | None = None) -> dict[str, str]:
    """The columns that training leaves out, each with why: ``{column: "id: <reason>"}``, in table order.

    Args:
        schema: A schema from :func:`infer_schema` (not the one ``select_inputs`` returns, which
            has already set the unread columns to ``ignore`` and so hides why).
        inputs: The names of the inputs kept for training (default: all of ``schema.inputs()``); data
            columns that no kept input reads are listed as "not read by the chosen inputs".

    Returns:
        Column -> ``"<role>: <reason>"`` for every ``id`` and ``ignore`` column, and every data column
        that no kept input reads. Target, group and split columns are used, so they are not listed.
    """
    specs = schema.inputs()
    if inputs is not None:
        keep = set(inputs)
        specs = [s for s in specs if s.name in keep]
    read = {c for s in specs for c in s.columns}
    out = {}
    for c, r in schema.roles.items():
        if r in (Role.ID, Role.IGNORE):
            out[c] = f"{r.value}: {schema.reasons.get(c, '')}".rstrip(": ")
        elif r in _ROLE_MODALITY and c not in read:
            out[c] = f"{r.value}: not read by the chosen inputs"
    return out


def _bytes_of(v) -> bytes:
    if isinstance(v, dict):
        v = v.get("bytes") or b""
    return bytes(v)


def _exists(value: str, root: Path) -> bool:
    try:
        p = Path(value.strip())
        return (p if p.is_absolute() else root / p).is_file()
    except (OSError, ValueError):
        return False


def is_missing(v) -> bool:
    """Whether a cell is empty: the one answer to this question in mmfuse. ``inspect`` counts
    missing cells with it (:func:`describe_schema`, :func:`infer_schema`) and every
    preprocessor reads such a cell as an absent input (``mmfuse.preprocessing.is_missing`` is
    this function; it lives here so that ``inspect`` does not import torch).

    Missing: ``None``, NaN (Python or numpy), ``pd.NA``, ``NaT``, a string that is empty or
    only whitespace, empty bytes, an empty list, tuple or array, and a mapping whose values
    are all missing (a Hugging Face ``{"bytes": None, "path": None}`` image or audio cell).
    Anything else is a value: ``0``, ``False``, the string ``"nan"``, a sequence holding NaNs.
    """
    if v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return len(v) == 0
    if isinstance(v, Mapping):
        return all(is_missing(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return len(v) == 0
    if isinstance(v, np.ndarray) and v.ndim > 0:
        return v.size == 0
    try:
        return bool(pd.isna(v))  # NaN, pd.NA, NaT, numpy scalars
    except (TypeError, ValueError):
        return False


def missing_mask(s: pd.Series) -> np.ndarray:
    """:func:`is_missing` of every cell of ``s``, as ``bool [len(s)]``."""
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_datetime64_any_dtype(s):
        return s.isna().to_numpy()  # the same answer, without a Python call per cell
    return np.fromiter((is_missing(v) for v in s.to_numpy(dtype=object)), dtype=bool, count=len(s))


def describe_schema(schema: Schema, data, root=None) -> pd.DataFrame:
    """The inferred schema as a table: column, role, input, why, missing count, example value."""
    table = read_table(data, root=root)
    df = table.df
    owner: dict[str, list[str]] = {}  # a numeric column in a text group feeds that input and the tabular one
    for spec in schema.inputs():
        for c in spec.columns:
            owner.setdefault(c, []).append(spec.name)
    rows = []
    for c, r in schema.roles.items():
        s = df[c]
        mask = missing_mask(s)
        missing = int(mask.sum())
        ex = s[~mask]
        rows.append({"column": c, "role": r.value, "input": ", ".join(owner.get(c, [])),
                     "why": schema.reasons.get(c, ""),
                     "missing": missing, "example": _short(ex.iloc[0]) if len(ex) else ""})
    if schema.columns_with(Role.IMAGE):  # warn, as fit will, of images whose shape the default size cuts
        import warnings

        from .preprocessing._base import ReadContext
        from .preprocessing.image import ImagePreprocessor

        for c in schema.columns_with(Role.IMAGE):
            note = ImagePreprocessor([c]).aspect_warning(df, ReadContext(table.root))
            if note:
                warnings.warn(f"{note} (the default size and resize; fit takes --image-size/--image-resize)",
                              stacklevel=2)
    return pd.DataFrame(rows)


def _short(v, n: int = 40) -> str:
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, (list, tuple, np.ndarray)):
        return f"<sequence of {len(v)}>"
    s = str(v).replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"
