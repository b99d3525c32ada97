"""Fusion weights chosen by cross-validation: ``x = α·x_a + (1−α)·x_b``, with α scored on held-out folds.

The recipe, per fold of a :func:`~mmfuse.cv.cross_validate` run:

1. Train the model once, with ``weighted`` fusion and *learned* weights, and modality dropout (at
   least :data:`MODALITY_DROPOUT`), so that its head has learned to read each input alone as well as
   every mixture of them. This trains the encoders, the per-input projections and the head, and is
   itself the "learned weights" contender.
2. Freeze it all and embed the fold's validation and held-out rows (:meth:`mmfuse.Predictor.embed`).
3. Only the fusion weights vary: for every point ``w`` of the grid, the fused representation is the
   weighted fusion's own ``Σ_m w_m p_m h_m / Σ_m w_m p_m`` (``h_m``: the frozen projection of input
   m; ``p_m``: the input is present in the row), read by the frozen head. Each point is scored on
   the held-out rows; the fold's own choice is made on its validation rows (the metric, ties broken
   by the lower log loss) and scored on its held-out rows: the honest score of choosing α by CV.

The weights are those of ``weighted`` fusion itself, so the chosen point is a setting
(``fusion_kwargs: {weights: {...}}``, written to ``alpha_config.yaml``). Nothing is refitted per point,
so the sweep costs one cross-validation plus a forward pass per point. Because the projections and
the head are shared and frozen, a weight cannot be undone by rescaling: when both inputs carry the
same signal with independent noise, the best α follows their reliability (inverse-variance weighting,
which the tests check). Each point's score is the mean over folds, with its spread; the best point is
reported beside the learned weights and late fusion, scored on the same folds.

Grid: for two inputs, α in ``0, 0.1, …, 1`` (α weighs the first input in sorted order); for three,
every point of the simplex in steps of 1/``simplex_steps``; for more, the vertices, the centre and
seeded Dirichlet(1) samples.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .errors import MmfuseError
from .io import save_figure

__all__ = ["search_alpha", "AlphaResult", "weight_grid", "MODALITY_DROPOUT"]

MODALITY_DROPOUT = 0.2  # at least this, in the learned-weights model: its head must read every mixture


def weight_grid(names: Sequence[str], alphas: Sequence[float] | None = None, simplex_steps: int = 4,
                samples: int = 30, seed: int = 0) -> list[tuple[float, ...]]:
    """The weight vectors to score, each summing to 1, in the order of ``names``."""
    m = len(names)
    if m < 2:
        raise MmfuseError(f"fusion weights need at least 2 inputs; the model has {m} ({', '.join(names)})")
    if m == 2:
        grid = np.linspace(0, 1, 11) if alphas is None else np.asarray(alphas, float)
        if grid.ndim != 1 or not len(grid) or (grid < 0).any() or (grid > 1).any():
            raise MmfuseError(f"alphas must be numbers in [0, 1], got {alphas!r}")
        return [(round(float(a), 6), round(1 - float(a), 6)) for a in grid]
    if m == 3:
        k = simplex_steps
        if not isinstance(k, int) or k < 1:
            raise MmfuseError(f"simplex_steps must be an integer >= 1, got {simplex_steps!r}")
        return [(i / k, j / k, (k - i - j) / k) for i in range(k + 1) for j in range(k + 1 - i)]
    if not isinstance(samples, int) or samples < 0:
        raise MmfuseError(f"samples must be an integer >= 0, got {samples!r}")
    rng = np.random.default_rng(seed)
    vertices = [tuple(float(i == j) for j in range(m)) for i in range(m)]
    centre = [tuple([1.0 / m] * m)]
    return vertices + centre + [tuple(np.round(w, 4)) for w in rng.dirichlet(np.ones(m), samples)]


@dataclass
class AlphaResult:
    """What :func:`search_alpha` measured.

    Attributes:
        inputs: The inputs, in the order of each weight vector.
        points: Per weight vector: ``weights``, per-fold scores on the held-out rows and their mean/std/median
            (the CV curve).
        best: The curve's best point (highest mean, or lowest for metrics where lower is better). It was
            chosen on the held-out rows it is scored on, so its score is optimistic: a diagnostic.
        chosen: The honest score of choosing α by CV: in each fold the weights are chosen on the fold's
            validation rows and scored on its held-out rows (``weights_per_fold``, ``scores``, mean/std/median).
        learned: Learned weights (``weighted`` fusion trained end to end): mean/std/median over the same
            folds, and the learned weights of each fold.
        late: Late fusion on the same folds (None when not run).
        metric: The metric.
        out: The run folder.
    """

    inputs: list
    points: list
    best: dict
    chosen: dict
    learned: dict
    late: dict | None
    metric: str
    out: Path
    higher_is_better: bool = True

    def to_dict(self) -> dict:
        return {"metric": self.metric, "inputs": self.inputs, "best": self.best, "chosen": self.chosen,
                "learned": self.learned,
                "late": self.late, "points": self.points}


def search_alpha(estimator, data, *, alphas: Sequence[float] | None = None, simplex_steps: int = 4, samples: int = 30,
                 folds: int = 5, group_column: str | None = None, leave_one_out: str | None = None, out="runs/alpha",
                 jobs: int = 1, overwrite: bool = False, compare_late: bool = True, metric: str | None = None,
                 echo: Callable[[str], None] | None = None) -> AlphaResult:
    """Choose fixed fusion weights by cross-validation (see the module's docstring).

    Args:
        estimator: A :class:`~mmfuse.MultimodalPredictor` (its ``fusion`` is replaced by ``weighted``).
        data: The table.
        alphas: The α grid for two inputs (default 0, 0.1, ..., 1).
        simplex_steps, samples: The grid for three inputs / more inputs (:func:`weight_grid`).
        folds, group_column, leave_one_out, jobs, overwrite: As for :func:`~mmfuse.cv.cross_validate`.
        out: Run folder: ``learned/`` and ``late/`` (cross-validation runs), ``alpha.json``, ``alpha.md``,
            ``alpha.png`` and ``alpha_config.yaml`` (the settings with the best point's fixed weights, for
            ``mmfuse fit --config``).
        compare_late: Also cross-validate late fusion on the same folds.
        metric: The metric the points are compared by (default: the task's headline metric; ``log_loss``
            compares calibrated probabilities, and is smoother on small data).
        echo: Called with one line per event.
    """
    from .api import MultimodalPredictor
    from .bundle import Predictor
    from .cv import cross_validate
    from .io import atomic_write_text, read_table

    say = echo or (lambda line: None)
    if metric is not None:  # a typo fails now, not after the cross-validation
        from .tasks import check_metric_name

        check_metric_name(metric)
    out = Path(out)
    cv_args = dict(folds=folds, group_column=group_column, leave_one_out=leave_one_out, jobs=jobs, overwrite=overwrite,
                   echo=lambda line: say(f"  {line}"))
    from . import pipeline as P
    from .cv import with_group_role

    estimator = with_group_role(estimator, leave_one_out or group_column)
    if getattr(estimator, "fill_missing", False):
        raise MmfuseError("search_alpha refits the fusion on the encoders' outputs; a model that fills in absent "
                          "inputs puts its filler between them and the fusion: search alpha without fill_missing")
    params = estimator.get_params()
    table = read_table(data, root=estimator.root)
    _, inputs = P.select_inputs(table, estimator.target, estimator.columns, estimator.groups, estimator.schema_file,
                                estimator.inputs)
    weight_grid(inputs, alphas, simplex_steps, samples, estimator.seed)  # fewer than 2 inputs or a bad grid: fail now
    dropout = max(params.get("modality_dropout") or 0.0, MODALITY_DROPOUT)
    learned_est = MultimodalPredictor(**{**params, "fusion": "weighted", "fusion_kwargs": {},
                                         "modality_dropout": dropout})
    say(f"1. weighted fusion with learned weights and modality dropout {dropout:g} (trains the encoders once per "
        "fold)")
    learned = cross_validate(learned_est, data, out=out / "learned", **cv_args)
    metric = metric or learned.metric
    if metric not in learned.summary:
        from ._registry import unknown_name_message

        raise MmfuseError(unknown_name_message("metric", metric, list(learned.summary)))
    df = table.df
    points: dict[tuple, list] = {}
    from .tasks import higher_is_better

    sign = 1.0 if higher_is_better(metric) else -1.0
    chosen_w, chosen_scores, learned_weights = [], [], []
    names = None
    for f in learned.folds:
        fdir = out / "learned" / f"fold_{f['fold'] + 1}"
        pred = Predictor.load(fdir / "bundle")
        if names is None:
            names = list(pred.model.names)
            grid = weight_grid(names, alphas, simplex_steps, samples, estimator.seed)
            say(f"2. {len(grid)} weight vectors over inputs {', '.join(names)}: the frozen model of each fold, "
                "only its fusion weights changed")
        learned_weights.append(pred.model.fusion.modality_weights())
        ids = json.loads((fdir / "fold.json").read_text())["ids"]
        held = ids.get("test")  # the held-out row ids, with their type (oof.csv would read "007" back as 7)
        if held is None:  # a fold of an older cross-validation
            held = pd.read_csv(fdir / "oof.csv")["row"].tolist()
        emb = {k: _embed(pred, df.loc[rows], table.root, estimator) for k, rows in (("val", ids["val"]),
                                                                                  ("test", held))}
        on_val = {}
        for w in grid:
            points.setdefault(w, []).append(_fixed_weights_score(pred, emb["test"], w, metric)[0])
            on_val[w] = _fixed_weights_score(pred, emb["val"], w, metric)
        # the fold's choice is made on its validation rows (ties: the lower log loss), scored on its held-out rows
        pick = max(grid, key=lambda w: (sign * on_val[w][0], -on_val[w][1]))
        chosen_w.append(dict(zip(names, pick)))
        chosen_scores.append(points[pick][-1])
        say(f"  {f['name']}: chosen on validation rows {_fmt_w(chosen_w[-1])} -> held-out {metric} "
            f"{chosen_scores[-1]:.4f}; learned weights {_fmt_w(learned_weights[-1])}")
    rows = []
    for w, scores in points.items():
        s = np.asarray(scores, float)
        rows.append({"weights": dict(zip(names, w)), "scores": s.tolist(), "mean": float(s.mean()),
                     "std": float(s.std(ddof=1)) if len(s) > 1 else 0.0, "median": float(np.median(s))})
    best = max(rows, key=lambda r: (sign * r["mean"], -r["std"]))
    c = np.asarray(chosen_scores, float)
    chosen = {"mean": float(c.mean()), "std": float(c.std(ddof=1)) if len(c) > 1 else 0.0,
              "median": float(np.median(c)), "scores": c.tolist(), "weights_per_fold": chosen_w}
    lstat = learned.summary[metric]
    learned_d = {"mean": lstat["mean"], "std": lstat["std"], "median": lstat["median"],
                 "scores": [f["metrics"].get(metric) for f in learned.folds], "weights_per_fold": learned_weights}
    late_d = None
    if compare_late:
        say("3. late fusion on the same folds")
        late = cross_validate(MultimodalPredictor(**{**params, "fusion": "late"}), data, out=out / "late", **cv_args)
        s = late.summary[metric]
        late_d = {"mean": s["mean"], "std": s["std"], "median": s["median"],
                  "scores": [f["metrics"].get(metric) for f in late.folds]}
    res = AlphaResult(names, rows, best, chosen, learned_d, late_d, metric, out, sign > 0)
    atomic_write_text(out / "alpha.json", json.dumps(res.to_dict(), indent=1) + "\n")
    atomic_write_text(out / "alpha.md", format_alpha(res))
    plot_alpha(res, out / "alpha.png")
    _write_config(learned_est, best, out / "alpha_config.yaml", metric)
    for line in format_alpha(res).splitlines()[2:]:  # the summary and the whole CV curve
        if line:
            say(line)
    say(f"written: {out / 'alpha.json'}, {out / 'alpha.md'}, {out / 'alpha.png'}, {out / 'alpha_config.yaml'} "
        "(mmfuse fit --config)")
    return res


def _fmt_w(w: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in w.items())


def _embed(pred, rows_df: pd.DataFrame, root, estimator) -> dict:
    e = pred.embed(rows_df, root=root, allow_outside_root=estimator.allow_outside_root, on_bad_input=estimator.on_bad_input,
                   cache=estimator.cache)
    kept = rows_df.iloc[e["rows"]]
    return {"x": {n: torch.from_numpy(v) for n, v in e["features"].items()},
            "m": {n: torch.from_numpy(v) for n, v in e["present"].items()},
            "y": pred.task.transform(kept)}


def _fixed_weights_score(pred, emb: dict, weights, metric: str) -> tuple[float, float]:
    """``(metric, log loss)`` of the frozen model with its fusion weights fixed at ``weights``: the
    weighted fusion's ``Σ_m w_m p_m h_m / Σ_m w_m p_m`` over the frozen projections, read by the frozen head."""
    model = pred.model
    fusion = model.fusion
    with torch.no_grad():
        feats = fusion.masked(emb["x"], emb["m"])
        h = torch.stack([fusion.proj[n](feats[n]) for n in fusion.names], 1)  # (B, M, D)
        wp = torch.tensor(weights, dtype=h.dtype)[None] * fusion.stack_masks(emb["m"]).to(h.dtype)
        wp = wp / wp.sum(1, keepdim=True).clamp_min(1e-12)
        logits = model.head((wp.unsqueeze(-1) * h).sum(1))
    y = torch.as_tensor(emb["y"])
    m = pred.task.metrics(logits, emb["y"])
    return float(m[metric]), float(pred.task.loss(logits, y))


def _write_config(learned_est, best: dict, path: Path, metric: str) -> None:
    """The settings of the learned-weights model with the best point's weights fixed, for ``fit --config``."""
    import yaml

    from .io import atomic_write_text
    from .tuning import _nested_config

    est = learned_est.set_params(fusion_kwargs={"weights": dict(best["weights"])})
    atomic_write_text(path, f"# weighted fusion with the CV curve's best fixed weights ({metric} "
                            f"{best['mean']:.4f} ± {best['std']:.4f} over the folds); mmfuse fit DATA --config "
                            f"{path.name}\n" + yaml.safe_dump(_nested_config(est), sort_keys=False))


def format_alpha(res: AlphaResult) -> str:
    """alpha.md: the best point, the contenders, and the CV curve."""
    m = res.metric
    b = res.best
    c = res.chosen
    lines = [f"# Fusion weights by cross-validation ({m}, {len(b['scores'])} folds)", "",
             f"CV-chosen weights (chosen on each fold's validation rows, scored on its held-out rows): {m} "
             f"{c['mean']:.4f} ± {c['std']:.4f} (median {c['median']:.4f}); per fold: "
             + "; ".join(_fmt_w(w) for w in c["weights_per_fold"]),
             f"Best point of the curve: {_fmt_w(b['weights'])}: {m} {b['mean']:.4f} ± {b['std']:.4f} "
             f"(median {b['median']:.4f}; picked on the held-out rows themselves, so optimistic)",
             f"Learned weights: {m} {res.learned['mean']:.4f} ± {res.learned['std']:.4f}" +
             (f"; late fusion: {res.late['mean']:.4f} ± {res.late['std']:.4f}" if res.late else ""),
             "", "| " + " | ".join(res.inputs) + f" | {m} mean | std | median |",
             "|" + "---|" * (len(res.inputs) + 3)]
    for r in res.points:
        lines.append("| " + " | ".join(f"{r['weights'][n]:.2f}" for n in res.inputs) +
                     f" | {r['mean']:.4f} | {r['std']:.4f} | {r['median']:.4f} |")
    lines += ["", "Each point: each fold's learned-weights model, frozen, with only its fusion weights set to the "
              "point, scored on the fold's held-out rows. std: between folds (ddof=1).", ""]
    return "\n".join(lines)


def plot_alpha(res: AlphaResult, path: Path) -> Path | None:
    """The CV curve (two inputs: the metric against α with a ±std band; more: the points ranked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    mean = np.array([r["mean"] for r in res.points])
    std = np.array([r["std"] for r in res.points])
    if len(res.inputs) == 2:
        x = np.array([r["weights"][res.inputs[0]] for r in res.points])
        o = np.argsort(x)
        ax.plot(x[o], mean[o], marker="o", label="fixed α (CV mean)")
        ax.fill_between(x[o], (mean - std)[o], (mean + std)[o], alpha=0.2, label="± std over folds")
        ax.set_xlabel(f"α (weight of {res.inputs[0]}; {res.inputs[1]} gets 1 − α)")
    else:
        o = np.argsort(-mean if res.higher_is_better else mean)
        ax.errorbar(np.arange(len(o)), mean[o], yerr=std[o], fmt="o", label="fixed weights (CV mean ± std)")
        ax.set_xlabel("weight vectors, best first (see alpha.md)")
    ax.axhline(res.learned["mean"], color="C2", linestyle="--", label="learned weights")
    if res.late:
        ax.axhline(res.late["mean"], color="C3", linestyle=":", label="late fusion")
    ax.set_ylabel(res.metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
