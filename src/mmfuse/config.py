"""Typed configuration, one dataclass per component. JSON/YAML only serialize these."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import MmfuseError

__all__ = ["ModelConfig", "TrainConfig", "from_dict"]


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


def from_dict(cls, d: dict | None, where: str):
    """Build a config dataclass, rejecting unknown keys with a did-you-mean."""
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise MmfuseError(f"unknown {where} setting {k!r}{hint} Known: {', '.join(sorted(names))}")
    return cls(**d)
