"""Metrics, modality contribution, plots and the run report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .tasks import Task

__all__ = ["choose_threshold", "binary_labels", "classification_metrics", "regression_metrics",
           "expected_calibration_error", "compute_metrics", "modality_contribution", "write_report", "plot_learning_curves", "plot_confusion", "plot_contribution"]


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): ``Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|`` over equal-width confidence bins."""
    conf = proba.max(1)
    correct = (proba.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inb.any():
            ece += inb.mean() * abs(correct[inb].mean() - conf[inb].mean())
    return float(ece)


def binary_labels(proba: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class ids of a binary task: 1 where the positive class's probability reaches ``threshold``."""
    return (proba[:, 1] >= threshold).astype(np.int64)


THRESHOLD_METRICS = ("f1", "balanced_accuracy", "accuracy", "mcc")


def choose_threshold(proba: np.ndarray, y: np.ndarray, metric: str = "f1") -> float:
    """The decision threshold of a binary task that maximizes ``metric`` on these rows.

    Candidates: 0.01, 0.02, ..., 0.99; among equally good ones, the closest to 0.5."""
    from sklearn import metrics as M

    from .errors import MmfuseError

    score = {"f1": lambda t, p: M.f1_score(t, p, zero_division=0), "accuracy": M.accuracy_score,
             "balanced_accuracy": M.balanced_accuracy_score, "mcc": M.matthews_corrcoef}.get(metric)
    if score is None:
        raise MmfuseError(f"decision_threshold: unknown metric {metric!r}; give a number or one of "
                          f"{', '.join(THRESHOLD_METRICS)}")
    grid = np.round(np.arange(1, 100) / 100, 2)
    values = np.array([score(y, binary_labels(proba, t)) for t in grid])
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])


def classification_metrics(proba: np.ndarray, y: np.ndarray, classes: list, task: Task,
                           threshold: float = 0.5) -> dict:
    """Report (per class P/R/F1, macro/micro/weighted), accuracy, balanced accuracy, ROC-AUC, PR-AUC,
    log loss and ECE. ``proba``: ``(N, K)``; ``y``: class ids (or multi-hot for multilabel).
    Binary labels come from ``threshold``; when it is not 0.5, ``at_0.5`` holds the label
    metrics at 0.5 too."""
    from sklearn import metrics as M

    names = [str(c) for c in classes]
    if task is Task.MULTILABEL:
        pred = (proba >= 0.5).astype(int)
        out = {"report": M.classification_report(y, pred, target_names=names, output_dict=True, zero_division=0),
               "subset_accuracy": float(M.accuracy_score(y, pred)),
               "macro_f1": float(M.f1_score(y, pred, average="macro", zero_division=0)),
               "micro_f1": float(M.f1_score(y, pred, average="micro", zero_division=0))}
        ok = y.sum(0) > 0
        if ok.all() and (y.sum(0) < len(y)).all():
            out["roc_auc_macro"] = float(M.roc_auc_score(y, proba, average="macro"))
            out["pr_auc_macro"] = float(M.average_precision_score(y, proba, average="macro"))
        return out
    pred = binary_labels(proba, threshold) if task is Task.BINARY else proba.argmax(1)
    labels = list(range(len(classes)))
    out = {"accuracy": float(M.accuracy_score(y, pred)),
           "balanced_accuracy": float(M.balanced_accuracy_score(y, pred)),
           "macro_f1": float(M.f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
           "report": M.classification_report(y, pred, labels=labels, target_names=names, output_dict=True,
                                             zero_division=0),
           "log_loss": float(M.log_loss(y, np.clip(proba, 1e-7, 1), labels=labels)),
           "ece": expected_calibration_error(proba, y),
           "confusion_matrix": M.confusion_matrix(y, pred, labels=labels).tolist()}
    present = np.unique(y)
    if task is Task.BINARY:
        if len(present) == 2:
            out["roc_auc"] = float(M.roc_auc_score(y, proba[:, 1]))
            out["pr_auc"] = float(M.average_precision_score(y, proba[:, 1]))
        out["f1_positive"] = float(M.f1_score(y, pred, pos_label=1, zero_division=0))
        out["threshold"] = float(threshold)
        if threshold != 0.5:
            half = binary_labels(proba, 0.5)
            out["at_0.5"] = {"accuracy": float(M.accuracy_score(y, half)),
                             "balanced_accuracy": float(M.balanced_accuracy_score(y, half)),
                             "f1_positive": float(M.f1_score(y, half, pos_label=1, zero_division=0))}
    elif len(present) == len(classes):
        out["roc_auc_ovr_macro"] = float(M.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels))
        onehot = np.eye(len(classes))[y]
        out["pr_auc_macro"] = float(M.average_precision_score(onehot, proba, average="macro"))
    return out


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict:
    from sklearn import metrics as M

    return {"mae": float(M.mean_absolute_error(y, pred)), "rmse": float(np.sqrt(M.mean_squared_error(y, pred))),
            "r2": float(M.r2_score(y, pred))}


def headline(task: Task) -> str:
    """The single metric used to compare models."""
    return {Task.REGRESSION: "rmse", Task.MULTILABEL: "macro_f1"}.get(task, "accuracy")


def compute_metrics(predictor, dataset, absent=()) -> dict:
    """Metrics of a :class:`~mmfuse.bundle.Predictor` on a dataset that carries targets."""
    from .tasks import logits_to_proba

    z, rows = predictor.logits(None, dataset=dataset, absent=absent)
    y = dataset._y[rows]
    target = predictor.target
    if target.task is Task.REGRESSION:
        pred = target.inverse_regression(z[:, 0].numpy())
        return {**regression_metrics(pred, target.inverse_regression(y)), "n": int(len(y))}
    proba = logits_to_proba(target.task, z).numpy()
    return {**classification_metrics(proba, y, target.classes_, target.task, predictor.threshold), "n": int(len(y))}


def modality_contribution(predictor, dataset) -> dict:
    """The test metric with all inputs, with each input removed (masked in every row), and with each alone."""
    key = headline(predictor.target.task)
    names = predictor.model.names
    full = compute_metrics(predictor, dataset)[key]
    out = {"metric": key, "all": full, "without": {}, "only": {}}
    for n in names:
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
    fig.savefig(path, dpi=100)
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
    fig.savefig(path, dpi=100)
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path, metrics: dict, classes: list | None = None) -> None:
    """``metrics.json`` plus a readable ``report.md`` (and PNG plots) in the run folder."""
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
    lines = [f"# mmfuse run report", "", f"- task: {metrics.get('task')}", f"- fusion: {metrics.get('fusion')}",
             f"- inputs: {', '.join(metrics.get('inputs', []))}",
             f"- best epoch: {metrics.get('best_epoch')} of {metrics.get('epochs_run')}",
             f"- training time: {metrics.get('train_seconds', 0):.1f} s", ""]
    for split in ("val", "test"):
        m = metrics.get(split)
        if not m:
            continue
        lines += [f"## {split}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in m.items() if isinstance(v, float)]
        lines.append("")
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
        lines.append("")
    if metrics.get("bad_input"):
        lines += ["## bad input", "", metrics["bad_input"], ""]
    lines += [f"![{k}]({v})" for k, v in plots.items()]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
