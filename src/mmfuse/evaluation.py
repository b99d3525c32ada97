"""Metrics, modality contribution, plots and the run report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .io import save_figure

__all__ = ["compute_metrics", "modality_contribution", "write_report", "plot_learning_curves", "plot_confusion",
           "plot_contribution"]


def compute_metrics(predictor, dataset, absent=()) -> dict:
    """Metrics of a :class:`~mmfuse.bundle.Predictor` on a dataset that carries targets (the task's
    :meth:`~mmfuse.tasks.Task.metrics`); ``absent`` inputs are masked in every row."""
    z, rows = predictor.logits(None, dataset=dataset, absent=absent)
    return predictor.target.metrics(z, dataset._y[rows])


def modality_contribution(predictor, dataset) -> dict:
    """The task's headline metric with all inputs, with each input removed (masked in every row), and
    with each alone. Inputs the table lacks altogether are listed under ``absent`` and not scored (without
    them is all inputs; them alone is no data)."""
    key = predictor.target.headline
    names = predictor.model.names
    absent = [n for n in getattr(dataset, "absent_inputs", lambda: [])() if n in names]
    full = compute_metrics(predictor, dataset)[key]
    out = {"metric": key, "higher_is_better": predictor.target.higher_is_better, "all": full, "without": {},
           "only": {}, **({"absent": absent} if absent else {})}
    for n in names:
        if n in absent:
            continue
        out["without"][n] = compute_metrics(predictor, dataset, absent=[n])[key]
        out["only"][n] = compute_metrics(predictor, dataset, absent=[m for m in names if m != n])[key]
    return out


# --- plots (matplotlib is imported lazily) ----------------------------------------------------
def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError("plots need matplotlib: pip install 'mmfuse[train]'") from e
    return plt


def plot_learning_curves(history: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ep = [h["epoch"] + 1 for h in history]
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="validation")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend()
    for k in ("val_accuracy", "val_macro_f1", "val_rmse"):
        if history and k in history[0]:
            ax[1].plot(ep, [h[k] for h in history], label=k.removeprefix("val_"))
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("validation metric"), ax[1].legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(cm: list, classes: list, path: Path) -> Path:
    plt = _plt()
    cm = np.asarray(cm)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * k, 1 + 0.5 * k))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_contribution(contrib: dict, path: Path) -> Path:
    plt = _plt()
    names = list(contrib["without"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(names), 3.5))
    ax.bar(x - 0.2, [contrib["without"][n] for n in names], 0.4, label="all inputs but this one")
    ax.bar(x + 0.2, [contrib["only"][n] for n in names], 0.4, label="this input alone")
    ax.axhline(contrib["all"], color="k", ls="--", lw=1, label="all inputs")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel(f"test {contrib['metric']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def fusion_label(fusion: str | None, inputs) -> str | None:
    """The fusion as reports name it: a model of one input fuses nothing."""
    return "none (one input)" if inputs is not None and len(inputs) == 1 else fusion


def _summary_lines(metrics: dict) -> list[str]:
    return [f"- task: {metrics.get('task')}", f"- inputs: {', '.join(metrics.get('inputs', []))}",
            f"- fusion: {fusion_label(metrics.get('fusion'), metrics.get('inputs'))}"]


def _training_lines(t: dict) -> list[str]:
    """Best epoch (counted from 1, like the learning curves and the "resumed after epoch" line),
    training time and rows, where ``t`` (fit's metrics) records them."""
    lines = []
    if t.get("best_epoch") is not None and t.get("epochs_run"):
        lines.append(f"- best epoch: {t['best_epoch'] + 1} of {t['epochs_run']} (epochs counted from 1)")
    if t.get("train_seconds") is not None:
        lines.append(f"- training time: {t['train_seconds']:.1f} s")
    if t.get("rows") and not t.get("plan"):  # the plan says the same, with where the rows come from
        lines.append("- rows: " + ", ".join(f"{k} {v}" for k, v in t["rows"].items())
                     + (f" ({t['split_source']})" if t.get("split_source") else ""))
    return lines


def _plan_lines(t: dict) -> list[str]:
    from .pipeline import format_plan

    return [f"- {x}" for x in format_plan(t["plan"])] if t.get("plan") else []


def write_report(run_dir: Path, metrics: dict, classes: list | None = None) -> None:
    """``metrics.json`` plus a readable ``report.md`` (and PNG plots) in the run folder.

    ``metrics`` is what fit measured (``best_epoch``, ``train_seconds``, ``plan``, ...); for an
    evaluation it holds the evaluation's metrics under ``test``, ``evaluated`` (bundle, table,
    rows) and the bundle's training facts under ``training`` (reported as such)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    plots = {}
    if metrics.get("history"):
        plots["learning curves"] = plot_learning_curves(metrics["history"], run_dir / "learning_curves.png").name
    test = metrics.get("test", {})
    if "confusion_matrix" in test and classes:
        plots["confusion matrix"] = plot_confusion(test["confusion_matrix"], classes, run_dir / "confusion_matrix.png").name
    if metrics.get("contribution"):
        plots["modality contribution"] = plot_contribution(metrics["contribution"], run_dir / "contribution.png").name
    training = metrics.get("training")  # evaluate: the training facts kept in the bundle
    lines = ["# mmfuse run report" if training is None else "# mmfuse evaluation report", ""]
    lines += _summary_lines(metrics) + (_training_lines(metrics) if training is None else [])
    ev = metrics.get("evaluated")
    if ev:
        lines.append(f"- evaluated: bundle {ev['bundle']} on {ev['table']}, {ev['rows']} rows"
                     + (f" ({ev['scored_rows']})" if ev.get("scored_rows") else ""))
    scored = (metrics.get("test") or {}) if training is not None else {}
    if scored.get("rows_without_input"):
        from .reading import describe_no_input

        lines.append(f"- {describe_no_input(scored['rows_without_input'], 20, scored.get('rows_without_input_count'))}"
                     "; they are scored")
    if metrics.get("blank_target_rows"):
        rows = metrics["blank_target_rows"]
        rows = [r for v in rows.values() for r in v] if isinstance(rows, dict) else list(rows)
        lines.append(f"- left out for a blank target: {len(rows)} rows ({', '.join(map(str, rows[:20]))}"
                     f"{', ...' if len(rows) > 20 else ''})")
    if training is not None:
        lines += ["", "## training (from the bundle)", ""] + (_training_lines(training) or ["- not recorded"])
        lines += _plan_lines(training)
    else:
        lines += ["", "## plan", ""] + _plan_lines(metrics) if metrics.get("plan") else []
    lines.append("")
    for split in ("val", "test"):
        m = metrics.get(split)
        if not m:
            continue
        lines += [f"## {split}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in m.items() if isinstance(v, float)]
        lines.append("")
        if m.get("absent_classes"):
            lines += [f"Classes absent from these rows, left out of macro-F1: {', '.join(m['absent_classes'])}", ""]
        if "report" in m:
            lines += ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
            for c, r in m["report"].items():
                if isinstance(r, dict):
                    lines.append(f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1-score']:.3f} | "
                                 f"{int(r['support'])} |")
            lines.append("")
    c = metrics.get("contribution")
    if c:
        lines += ["## modality contribution", "", f"test {c['metric']} with all inputs: {c['all']:.4f}", "",
                  "| input | without it | alone |", "|---|---|---|"]
        lines += [f"| {n} | {c['without'][n]:.4f} | {c['only'][n]:.4f} |" for n in c["without"]]
        lines += [f"| {n} | absent from this table | |" for n in c.get("absent", [])]
        lines.append("")
    if metrics.get("bad_input"):
        lines += ["## bad input", "", metrics["bad_input"], ""]
    lines += [f"![{k}]({v})" for k, v in plots.items()]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
