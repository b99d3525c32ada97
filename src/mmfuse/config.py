"""Typed configuration, one dataclass per component. JSON/YAML only serialize these."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import MmfuseError

__all__ = ["ModelConfig", "TrainConfig", "from_dict", "validate", "CONSTRAINTS"]


@dataclass
class ModelConfig:
    """What the model is made of.

    Attributes:
        fusion: A registered fusion name (``mmfuse fusions`` lists them).
        fusion_kwargs: Extra arguments of that fusion (e.g. ``{"weights": [0.7, 0.3]}``).
        dim: Width D of the fused representation (and of each encoder's output unless set).
        encoders: Per input name or modality, ``{"name": encoder, **kwargs}``; for a pretrained
            model ``{"name": "hf", "model": id_or_folder, "train": "frozen"|"full"|"last",
            "last_n": 2, "pooling": "mean", "max_length": 128, "cache": True}``.
        head_hidden: Hidden width of the prediction head.
        dropout: Dropout in the head.
        modality_dropout: Probability of dropping each input of each row in training.
        aux_weight: Weight of the auxiliary unimodal losses (0 disables them).
    """

    fusion: str = "concat"
    fusion_kwargs: dict = field(default_factory=dict)
    dim: int = 128
    encoders: dict = field(default_factory=dict)
    head_hidden: int = 128
    dropout: float = 0.1
    modality_dropout: float = 0.0
    aux_weight: float = 0.0

    def __post_init__(self):  # every way of making a config (Python, CLI, config file, replace) is checked
        validate(self)


@dataclass
class TrainConfig:
    """How the model is trained.

    Attributes:
        epochs: Maximum epochs.
        batch_size: Rows per batch.
        lr: Peak learning rate of AdamW.
        backbone_lr: Peak learning rate of fine-tuned pretrained backbones (lower than ``lr``).
        layer_decay: Layer-wise learning-rate decay for backbones: layer i of L gets
            ``backbone_lr * layer_decay^(L-1-i)`` (1.0: the same rate for every layer).
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup: Fraction of the steps with a linear warm-up before the cosine decay.
        grad_clip: Clip the gradient norm to this (0 disables).
        patience: Early stopping after this many epochs without improvement of the monitored metric.
        max_time: Stop after this many seconds (None: no limit).
        precision: ``auto`` (bf16/fp16 mixed on GPU, 32 on CPU) or a Lightning precision string.
        accelerator: ``auto``, ``cpu`` or ``gpu``.
        seed: Seed for weights, data order, augmentation and splits.
        num_workers: DataLoader workers decoding files.
        cache: ``memory``, a folder, or None.
        group_by_length: Batch training texts of similar length together, so that fine-tuned
            text backbones spend less time on padding (None: on when a pretrained text
            backbone is trained, off otherwise).
        class_weight: None, ``balanced`` or a list of per-class weights.
        regression_loss: ``mse`` or ``huber``.
        decision_threshold: Binary tasks: the probability of the positive class from which a row
            is labelled positive. A number, or a metric (``f1``, ``balanced_accuracy``,
            ``accuracy``, ``mcc``) to choose the threshold that maximizes it on the validation rows
            (test rows are never used); None: 0.5.
        val_fraction, test_fraction: Split sizes when the table has no split column.
        log: ``tensorboard``, ``csv`` or None.
        progress: Show Lightning's progress bar.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    backbone_lr: float = 3e-5
    layer_decay: float = 1.0
    weight_decay: float = 1e-2
    warmup: float = 0.05
    grad_clip: float = 1.0
    patience: int = 5
    max_time: Optional[float] = None
    precision: str = "auto"
    accelerator: str = "auto"
    seed: int = 0
    num_workers: int = 0
    cache: Optional[str] = "memory"
    group_by_length: Optional[bool] = None
    class_weight: Any = None
    regression_loss: str = "mse"
    decision_threshold: Any = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    log: Optional[str] = "tensorboard"
    progress: bool = True

    def __post_init__(self):
        validate(self)


def from_dict(cls, d: dict | None, where: str):
    """Build a config dataclass from a mapping, rejecting unknown keys with a did-you-mean (the
    dataclass validates its values)."""
    return _build(cls, d, where)


def _build(cls, d, where):
    """Build a config dataclass, rejecting unknown keys with a did-you-mean."""
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise MmfuseError(f"unknown {where} setting {k!r}{hint} Known: {', '.join(sorted(names))}")
    return cls(**d)


# --- validation: allowed values as data, checked in one place -------------------------------------
class _Check:
    """One constraint: ``ok(value) -> bool`` and its description for the error message."""

    def __init__(self, ok, allowed: str, choices=()):
        self.ok, self.allowed, self.choices = ok, allowed, [c for c in choices if isinstance(c, str)]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(lo=None):
    return _Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo),
                  "an integer" + (f" >= {lo}" if lo is not None else ""))


def _real(lo=None, hi=None, lo_open=False, hi_open=False, none=False):
    def ok(v):
        if v is None:
            return none
        return (_num(v) and math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))

    rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}" \
          f"{')' if hi_open or hi is None else ']'}"
    return _Check(ok, f"a number in {rng}" + (" or None" if none else ""))


def _one_of(*values):
    return _Check(lambda v: v in values, "one of " + ", ".join(repr(v) for v in values), values)


def _fusion():
    from .fusion import list_fusions

    return _Check(lambda v: v in list_fusions(), "a registered fusion (" + ", ".join(list_fusions()) + ")",
                  list_fusions())


def _class_weight(v) -> bool:
    return v is None or v == "balanced" or (isinstance(v, (list, tuple)) and all(_num(x) and x > 0 for x in v))


def _threshold(v) -> bool:
    from .tasks import THRESHOLD_METRICS

    one = lambda x: _num(x) and 0 < x < 1  # noqa: E731
    return v is None or v in THRESHOLD_METRICS or one(v) or (isinstance(v, (list, tuple)) and all(map(one, v)))


CONSTRAINTS = {
    "fusion": _fusion, "fusion_kwargs": lambda: _Check(lambda v: isinstance(v, dict), "a mapping"),
    "dim": lambda: _int(1), "encoders": lambda: _Check(lambda v: isinstance(v, dict), "a mapping"),
    "head_hidden": lambda: _int(1), "dropout": lambda: _real(0, 1, hi_open=True),
    "modality_dropout": lambda: _real(0, 1, hi_open=True), "aux_weight": lambda: _real(0),
    "epochs": lambda: _int(1), "batch_size": lambda: _int(1), "lr": lambda: _real(0, lo_open=True),
    "backbone_lr": lambda: _real(0, lo_open=True), "layer_decay": lambda: _real(0, 1, lo_open=True),
    "weight_decay": lambda: _real(0), "warmup": lambda: _real(0, 1, hi_open=True), "grad_clip": lambda: _real(0),
    "patience": lambda: _int(0), "max_time": lambda: _real(0, lo_open=True, none=True),
    "precision": lambda: _one_of("auto", "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"),
    "accelerator": lambda: _one_of("auto", "cpu", "gpu", "cuda", "mps"), "seed": lambda: _int(0),
    "num_workers": lambda: _int(0),
    "cache": lambda: _Check(lambda v: v is None or isinstance(v, (str, os.PathLike)), "None, 'memory' or a folder"),
    "group_by_length": lambda: _one_of(None, True, False),
    "class_weight": lambda: _Check(_class_weight, "None, 'balanced' or a list of positive numbers, one per class"),
    "regression_loss": lambda: _one_of("mse", "huber"),
    "decision_threshold": lambda: _Check(_threshold, "None, a probability in (0, 1), a list of them (multilabel), "
                                                     "or one of 'f1', 'balanced_accuracy', 'accuracy', 'mcc'"),
    "val_fraction": lambda: _real(0, 1, hi_open=True), "test_fraction": lambda: _real(0, 1, hi_open=True),
    "log": lambda: _one_of(None, "tensorboard", "csv"), "progress": lambda: _one_of(True, False),
}


def validate(cfg):
    """Check every field of a :class:`ModelConfig` or :class:`TrainConfig` against :data:`CONSTRAINTS`.

    Every entry path (Python, command line, config file) ends here. Returns ``cfg``.

    Raises:
        MmfuseError: naming the setting, the allowed values and the value received.
    """
    for f in dataclasses.fields(cfg):
        check = CONSTRAINTS[f.name]()
        v = getattr(cfg, f.name)
        if not check.ok(v):
            close = difflib.get_close_matches(v, check.choices, n=1, cutoff=0.5) if isinstance(v, str) else []
            hint = f". Did you mean {close[0]!r}?" if close else ""
            raise MmfuseError(f"setting {f.name!r} must be {check.allowed}; got {v!r}{hint}")
    if isinstance(cfg, TrainConfig) and cfg.val_fraction + cfg.test_fraction >= 1:
        raise MmfuseError(f"settings 'val_fraction' + 'test_fraction' must be < 1 (rows are left for training); "
                          f"got {cfg.val_fraction} + {cfg.test_fraction}")
    return cfg
