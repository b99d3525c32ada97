"""Train / validation / test splits: a split column, a group split or a stratified random split."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import SchemaError
from .schema import Role, Schema

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def split_names(values: pd.Series) -> pd.Series:
    """A split column's cells as written, trimmed and lower-cased (``" Val "`` -> ``"val"``); :data:`SPLIT_NAMES`
    maps them to train / val / test."""
    return values.astype(str).str.strip().str.lower()


def can_stratify(labels: np.ndarray | None, val_fraction: float, test_fraction: float) -> bool:
    """Whether a random split can be stratified by ``labels``: one label per row, every class with at
    least 3 rows, and each held-out part large enough to hold one row of every class."""
    if labels is None or labels.ndim != 1 or len(labels) == 0:
        return False
    classes, counts = np.unique(labels, return_counts=True)
    parts = [f for f in (val_fraction, test_fraction) if f > 0]
    return counts.min() >= 3 and all(int(np.ceil(f * len(labels))) >= len(classes) for f in parts)


def split_rows(df: pd.DataFrame, schema: Schema, val_fraction: float, test_fraction: float, seed: int,
               stratify: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Row positions per split.

    - A ``split`` column (values train / val / test and synonyms) is used as given; without ``val``
      rows, ``val_fraction`` of its ``train`` rows validate (chosen as below).
    - Else with a ``group`` column, whole groups go to one split (no group in two splits).
    - Else a random split, stratified by ``stratify`` (class labels) when every class has
      at least two rows.
    """
    split_cols = schema.columns_with(Role.SPLIT)
    n = len(df)
    if split_cols:
        col = split_cols[0]
        vals = split_names(df[col])
        bad = sorted(set(vals) - set(SPLIT_NAMES))
        if bad:
            first = vals[~vals.isin(list(SPLIT_NAMES))].index[0]
            raise SchemaError(f"row {first}, column {col!r}: split value {bad[0]!r} is not one of train, val, test "
                              f"(the column holds {', '.join(map(repr, sorted(set(vals))[:8]))}); rename those values, "
                              "or give the column another role (--column NAME=ignore)")
        mapped = vals.map(SPLIT_NAMES).to_numpy()
        out = {k: np.flatnonzero(mapped == k) for k in ("train", "val", "test")}
        if len(out["train"]) == 0:
            raise SchemaError(f"split column {col!r} has no 'train' rows")
        if len(out["val"]) == 0 and val_fraction > 0:
            # no 'val' rows: they come from the 'train' rows, as without a split column (by group if there is one)
            import dataclasses

            train = out["train"]
            rest = dataclasses.replace(schema, roles={c: r for c, r in schema.roles.items() if c != col})
            sub = split_rows(df.iloc[train], rest, val_fraction, 0.0, seed,
                             None if stratify is None else np.asarray(stratify)[train])
            out["train"], out["val"] = train[sub["train"]], train[sub["val"]]
        return out
    groups_cols = schema.columns_with(Role.GROUP)
    rng = np.random.default_rng(seed)
    if groups_cols:
        blank = df.index[df[groups_cols[0]].isna().to_numpy()].tolist()
        if blank:
            raise SchemaError(f"{len(blank)} rows have a blank group {groups_cols[0]!r} (rows "
                              f"{', '.join(map(str, blank[:10]))}{', ...' if len(blank) > 10 else ''}): fill them in, "
                              "or drop those rows, so that every row belongs to a group")
        g = df[groups_cols[0]].astype(str).to_numpy()
        uniq = np.array(sorted(set(g)))
        rng.shuffle(uniq)
        n_test = int(round(test_fraction * len(uniq)))
        n_val = max(1, int(round(val_fraction * len(uniq)))) if val_fraction > 0 else 0
        if n_test + n_val >= len(uniq):
            raise SchemaError(f"group column {groups_cols[0]!r} has {len(uniq)} groups, too few for the "
                              f"val/test fractions {val_fraction}/{test_fraction}")
        test_g, val_g = set(uniq[:n_test]), set(uniq[n_test:n_test + n_val])
        split = np.array(["test" if x in test_g else "val" if x in val_g else "train" for x in g])
        return {k: np.flatnonzero(split == k) for k in ("train", "val", "test")}
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    strat = stratify if can_stratify(stratify, val_fraction, test_fraction) else None
    out = {"test": np.zeros(0, int)}
    rest = idx
    if test_fraction > 0:
        rest, out["test"] = train_test_split(idx, test_size=test_fraction, random_state=seed,
                                             stratify=None if strat is None else strat)
    if val_fraction > 0:
        frac = val_fraction / (1 - test_fraction)
        tr, va = train_test_split(rest, test_size=frac, random_state=seed + 1,
                                  stratify=None if strat is None else strat[rest])
    else:
        tr, va = rest, np.zeros(0, int)
    out.update(train=np.sort(tr), val=np.sort(va), test=np.sort(out["test"]))
    return out


def split_column(columns, roles) -> str | None:
    """The split column among ``columns`` (a table's): the one ``roles`` (column -> role, a :class:`Role` or its
    name) gives the role ``split``, else one named ``split`` that ``roles`` gives no other role (a column the
    model reads as an input is not one); None when there is none."""
    roles = {c: str(getattr(r, "value", r)) for c, r in (roles or {}).items()}
    given = [c for c, r in roles.items() if r == "split" and c in columns]
    if given:
        return given[0]
    return "split" if "split" in columns and roles.get("split", "split") == "split" else None


def test_rows(table, schema, what: str = "a model is scored", say=None, fix: str = ""):
    """The table's test rows when it has a split column (``schema``'s column of role ``split``, else one named
    ``split``): a model is scored on its test rows, never on the rows it trained or stopped early on. A table
    without such a column is returned whole (a column named ``split`` that the model reads as an input is not
    one). ``fix``: another way out, added to the error.

    Raises:
        SchemaError: the split column marks no row ``test``.
    """
    from .io import Table

    col = split_column(table.df.columns, schema.roles if schema is not None else None)
    if col is None:
        return table
    test = split_names(table.df[col]) == "test"
    if not test.any():
        raise SchemaError(f"the table's split column {col!r} has no 'test' rows; {what} on test rows: give a table "
                          f"of test rows (without that column), or mark them test{fix}")
    if not test.all() and say is not None:
        say(f"scoring the {int(test.sum())} rows with {col} = test (of {len(table.df)}; the others trained or "
            "validated the model)")
    return Table(table.df[test.to_numpy()], table.root, table.source)
