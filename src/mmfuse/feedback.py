"""The feedback loop: continue training a bundle on new or corrected labels, and compare two bundles.

``MultimodalPredictor(init_from=BUNDLE, ...).fit(new_rows)`` (``mmfuse fit --init-from BUNDLE new.csv``)
keeps the bundle's preprocessors, schema, task and weights and trains on. The new table must hold
every column the bundle reads (:func:`check_table`); labels the bundle does not know are refused
unless a new head is asked for (:func:`model_with_new_head`: the old classes keep their output
weights, the new ones start fresh). :func:`replay_rows` mixes rows of the old table back in, which
limits forgetting. :func:`compare` scores two bundles on the same rows with paired bootstrap
confidence intervals and lists the rows where their predictions differ.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .errors import MmfuseError, SchemaError

__all__ = ["check_table", "replay_rows", "model_with_new_head", "compare"]


def check_table(predictor, df: pd.DataFrame, source: str, target: str | None = None) -> None:
    """Refuse a table that lacks a column the bundle's inputs read, or its target column."""
    need = {c for p in predictor.preprocessors.values() for c in p.columns}
    missing = sorted(c for c in need if c not in df.columns)
    if target is not None and target not in df.columns:
        missing.append(target)
    if missing:
        have = list(df.columns)
        raise SchemaError(f"{source} does not match the bundle's schema: it lacks the column(s) "
                          f"{', '.join(map(repr, missing))} (it has {', '.join(map(repr, have[:15]))}"
                          f"{' ...' if len(have) > 15 else ''}). Continue training on a table with the columns the "
                          "bundle was trained on (renamed ones renamed back), or train a new model without --init-from")


def replay_rows(old: pd.DataFrame, n_new: int, fraction: float, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Rows of the old table to train beside ``n_new`` new rows, so that ``fraction`` of the training
    rows are old: ``round(n_new * fraction / (1 - fraction))`` of them, drawn without replacement with
    ``seed`` (all of them when the old table has fewer). Returns the rows and a note of what was drawn."""
    if not 0 <= fraction < 1:
        raise MmfuseError(f"replay_fraction must be in [0, 1): the share of old rows among the training rows; "
                          f"got {fraction!r}")
    want = int(round(n_new * fraction / (1 - fraction)))
    take = min(want, len(old))
    rows = old.sample(n=take, random_state=seed) if take < len(old) else old
    return rows, {"replay_rows": int(take), "replay_wanted": want, "replay_available": len(old),
                  "replay_fraction": round(take / max(take + n_new, 1), 4)}


def model_with_new_head(base, task):
    """``base``'s model rebuilt for ``task``'s outputs: every weight is kept, and every output layer (the
    head, the auxiliary and per-input heads) keeps the rows of the classes ``base`` knew; rows of new
    classes start fresh. Returns ``(model, spec)``."""
    import torch

    from ._build import model_from_spec

    spec = {**base.config["model"], "n_outputs": task.n_outputs}
    model = model_from_spec(spec, lambda c: c)
    old_state = base.model.state_dict()
    new_state = model.state_dict()
    old_classes = list(base.task.classes_ or [])
    copy_rows = base.task.one_output_per_class and task.one_output_per_class
    where = {c: task.classes_.index(c) for c in old_classes} if copy_rows else {}
    k_old, k_new = base.task.n_outputs, task.n_outputs
    for key, new in new_state.items():
        old = old_state.get(key)
        if old is None:
            continue
        if old.shape == new.shape:
            new_state[key] = old
        elif copy_rows and old.shape[0] == k_old and new.shape[0] == k_new and old.shape[1:] == new.shape[1:]:
            t = new.clone()
            for j, c in enumerate(old_classes):
                t[where[c]] = old[j]
            new_state[key] = t
    with torch.no_grad():
        model.load_state_dict(new_state)
    return model, spec


def mixed_model_config(base_spec: dict, user):
    """The bundle's model settings (its architecture and auxiliary heads), with ``modality_dropout`` taken
    from ``user`` when it was changed from the default (a training-only setting); any other model
    setting changed is an error."""
    from .config import ModelConfig

    from ._build import model_config_from_spec

    cfg = model_config_from_spec(base_spec)
    default = ModelConfig()
    changed = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "modality_dropout"
               and getattr(user, f.name) != getattr(default, f.name) and getattr(user, f.name) != getattr(cfg, f.name)]
    if changed:
        raise MmfuseError(f"init_from keeps the bundle's model; {', '.join(changed)} cannot change when training "
                          "continues (leave them unset, or train a new model)")
    if user.modality_dropout != default.modality_dropout:
        cfg = dataclasses.replace(cfg, modality_dropout=user.modality_dropout)
    return cfg


def compare(a, b, data, *, n_boot: int = 1000, seed: int = 0, root=None, on_bad_input: str = "raise",
            names=("A", "B")) -> dict:
    """Score bundles ``a`` and ``b`` (loaded predictors) on the same labelled rows.

    Returns each one's metrics, ``B - A`` for every metric with a 95% paired bootstrap interval (the
    same resampled rows for both, ``n_boot`` resamples, ``seed``), and the rows where their predictions
    differ (``differing``: a DataFrame with the row id, the true label and both predictions).
    """
    from .io import read_table

    for p in (a, b):
        if getattr(p, "aligned_only", False):
            p._refuse_aligned("be compared")
    if a.target.column != b.target.column:
        raise MmfuseError(f"the bundles predict different targets ({a.target.column!r}, {b.target.column!r})")
    table = read_table(data, root=root)
    target = a.target.column
    if target not in table.df.columns:
        raise SchemaError(f"the table lacks the target column {target!r}; compare needs labelled rows")
    za, ra = a.logits(table, on_bad_input=on_bad_input)
    zb, rb = b.logits(table, on_bad_input=on_bad_input)
    rows = np.intersect1d(ra, rb)  # rows both could read
    za, zb = za[np.searchsorted(ra, rows)], zb[np.searchsorted(rb, rows)]
    df = table.df.iloc[rows]
    # rows whose label one bundle does not know (a class a new head added), or a blank one, cannot be scored
    # for both: they are counted and left out of the metrics
    unknown = set(a.target.unseen_labels(df)) | set(b.target.unseen_labels(df))
    keep = a.target.scorable(df) & b.target.scorable(df)
    unscorable = int((~keep).sum())
    za, zb, df, rows = za[keep], zb[keep], df[keep], rows[keep]
    if not len(rows):
        raise MmfuseError("no row can be scored by both bundles (every label is blank or unknown to one of them)")
    y_a, y_b = a.target.transform(df), b.target.transform(df)
    ma, mb = a.target.metrics(za, y_a), b.target.metrics(zb, y_b)
    keys = [k for k, v in ma.items() if isinstance(v, float) and isinstance(mb.get(k), float)
            and k not in ("n", "threshold", "thresholds")]
    rng = np.random.default_rng(seed)
    boots = {k: [] for k in keys}
    n = len(rows)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            sa, sb = a.target.metrics(za[idx], y_a[idx]), b.target.metrics(zb[idx], y_b[idx])
        except MmfuseError:
            raise
        except ValueError:  # scikit-learn on a resample with one class: AUCs are undefined there
            continue
        for k in keys:
            if isinstance(sa.get(k), float) and isinstance(sb.get(k), float):
                boots[k].append(sb[k] - sa[k])
    diff = {}
    for k in keys:
        d = np.asarray(boots[k])
        ci = [float(x) for x in np.percentile(d, [2.5, 97.5])] if len(d) else None  # None: no resample (JSON-safe)
        diff[k] = {names[0]: ma[k], names[1]: mb[k], "difference": mb[k] - ma[k], "ci95": ci, "resamples": int(len(d))}
    la, lb = a.target.decode(za).labels, b.target.decode(zb).labels
    la_s, lb_s = np.asarray([str(x) for x in la]), np.asarray([str(x) for x in lb])
    if not a.target.classes_:  # regression: values differ beyond float noise
        differ = ~np.isclose(np.asarray(la, float), np.asarray(lb, float), rtol=1e-4, atol=1e-6)
    else:
        differ = la_s != lb_s
    differing = pd.DataFrame({"row": df.index[differ], "true": df[target].to_numpy()[differ],
                              f"prediction_{names[0]}": la_s[differ], f"prediction_{names[1]}": lb_s[differ]})
    return {"rows": int(n), "rows_skipped": int(len(table.df) - n - unscorable), "rows_unscorable": unscorable,
            "unknown_labels": sorted(unknown), "metrics": diff, "differing": differing,
            "n_differing": int(differ.sum()), "n_boot": n_boot, "seed": seed}
