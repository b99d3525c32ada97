"""What a training run is trained on, so that a resumed run refuses another run's checkpoint.

A run fingerprint is a JSON-able dict: a hash of each data split (the rows' content in the
used columns, target included, in row order) and the model and training configuration,
less the settings that may change between an interrupted run and its resumption
(:data:`RESUMABLE_SETTINGS`). ``train_model(..., fingerprint=...)`` stores it in every
checkpoint and, with ``resume=True``, refuses a checkpoint whose fingerprint differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

#: TrainConfig fields that may differ on resume: how long to train (a new ``epochs`` also
#: stretches the cosine learning-rate schedule), how to show, log, cache and load the data,
#: and the decision threshold (chosen after training).
#: Bumped when the same settings build a different model (2: late fusion's auxiliary losses train its own
#: per-input heads), so that a run checkpointed by an older mmfuse is not resumed into the new model.
ARCHITECTURE = 2

RESUMABLE_SETTINGS = frozenset({"epochs", "max_time", "patience", "progress", "num_workers", "log", "cache", "strategy",
                                "decision_threshold", "checkpoint_every"})


def _cell_text(v) -> str:
    """A stable text of a cell pandas cannot hash (a dict, list or array)."""
    if isinstance(v, np.ndarray):
        return f"{v.dtype}{v.shape}:{hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()}"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k!r}:{_cell_text(x)}" for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_cell_text(x) for x in v) + "]"
    return repr(v)


def data_fingerprint(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A hash of the rows of ``df`` in ``columns`` (all by default): their names, the row
    order and every cell's value. A file-path cell counts as its path string; the file is not
    read, so this is cheap (``pd.util.hash_pandas_object``, one pass per column).

    Returns:
        16 hex digits.
    """
    cols = sorted(map(str, df.columns if columns is None else columns))
    h = hashlib.sha256(json.dumps([cols, len(df)]).encode())
    for c in cols:
        if c not in df.columns:  # an input absent from this table (absent in every row) counts by its name
            h.update(c.encode() + b"\0absent")
            continue
        s = df[c]
        try:
            hashes = pd.util.hash_pandas_object(s, index=False)
        except TypeError:  # unhashable cells: {"bytes": ..., "path": ...}, lists, arrays
            hashes = pd.util.hash_pandas_object(s.map(_cell_text), index=False)
        h.update(c.encode() + b"\0" + hashes.to_numpy().tobytes())
    return h.hexdigest()[:16]


def run_fingerprint(frames: Mapping[str, pd.DataFrame], columns: Sequence[str], model_config, train_config,
                    **settings: Any) -> dict:
    """The fingerprint of a run, for ``train_model(..., fingerprint=...)``.

    Args:
        frames: The data splits that training reads, e.g. ``{"train": tr_df, "val": va_df}``.
        columns: The columns used (inputs and target).
        model_config: A :class:`~mmfuse.config.ModelConfig`.
        train_config: A :class:`~mmfuse.config.TrainConfig`; :data:`RESUMABLE_SETTINGS` are left out.
        **settings: Anything else that shapes training (preprocessing options, bad-input policy).

    Returns:
        ``{"data": {split: hash}, "model": {...}, "train": {...}, "settings": {...}}``, JSON-able.
    """
    train = {k: v for k, v in dataclasses.asdict(train_config).items() if k not in RESUMABLE_SETTINGS}
    fp = {"data": {name: data_fingerprint(df, columns) for name, df in frames.items()},
          "model": dataclasses.asdict(model_config), "train": train, "settings": settings,
          "architecture": ARCHITECTURE}
    return normalize(fp)


def normalize(fingerprint: dict) -> dict:
    """The fingerprint as it reads back from JSON (tuples become lists, odd values strings)."""
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


_UNSET = object()


def _leaves(d, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        return {k: v for key, sub in d.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


#: Settings whose value is a hash: a difference is said in words (what differs), not by two hashes.
HASHED_SETTINGS = {
    "settings.preprocessors": "with other preprocessing of the inputs (the columns of an input, e.g. another --group; "
                              "a preprocessing option; or what it learned from other training rows)",
    "settings.stream": "on another streamed table (its files, their sizes or times, or the rows' splits changed)",
}


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """What differs between two run fingerprints, one phrase per setting, e.g.
    ``"on other training rows (their content, order or columns differ)"`` or ``"with model.fusion 'concat', now
    'gated'"``. Values under a ``"data"`` key are data hashes; every other key is a setting."""
    a, b = _leaves(normalize(saved)), _leaves(normalize(current))
    show = lambda v: "unset" if v is _UNSET else repr(v)  # noqa: E731
    out, splits = [], []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, _UNSET), b.get(key, _UNSET)
        if old == new:
            continue
        if key == "data" or key.startswith("data."):  # {"data": hash} or {"data": {split: hash}}
            if old is _UNSET or old == {} or new is _UNSET or new == {}:  # one of the two runs streamed its table
                out.append("on other data (one run read its table into memory, the other streamed it)")
            else:
                if not splits:
                    out.append("on other data")  # one phrase for every split: said below
                splits.append({"train": "training", "val": "validation"}.get(key[5:], key[5:] or "the"))
        elif key in HASHED_SETTINGS:
            out.append(HASHED_SETTINGS[key])
        else:
            out.append(f"with {key} {show(old)}, now {show(new)}")
    if splits:
        out[out.index("on other data")] = (f"on other data: other {' and '.join(splits)} rows (their content, order "
                                           "or columns differ)")
    return list(dict.fromkeys(out))  # (a table streamed in one run, not the other: one phrase, not one a split)
