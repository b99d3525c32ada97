"""Losses and output transforms per task."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .preprocessing.target import Task

__all__ = ["Task", "compute_loss", "logits_to_proba"]


def compute_loss(task: Task, logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None = None,
                 regression_loss: str = "mse") -> torch.Tensor:
    """Cross-entropy (multiclass, optional class weights), BCE (binary, multilabel) or MSE/Huber.

    ``logits``: ``(B, K)``; ``y``: class ids ``(B,)``, multi-hot ``(B, K)`` or values ``(B,)``.
    """
    if task is Task.MULTICLASS:
        return F.cross_entropy(logits, y, weight=class_weights)
    if task is Task.BINARY:
        pos_weight = None if class_weights is None else class_weights[1:2] / class_weights[0:1]
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), pos_weight=pos_weight)
    if task is Task.MULTILABEL:
        return F.binary_cross_entropy_with_logits(logits, y.float())
    if regression_loss == "huber":
        return F.huber_loss(logits[:, 0], y.float())
    return F.mse_loss(logits[:, 0], y.float())


def logits_to_proba(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities ``(B, K)`` for classification (K = 2 for binary); the value ``(B,)`` for regression."""
    if task is Task.MULTICLASS:
        return torch.softmax(logits.float(), dim=1)
    if task is Task.BINARY:
        p = torch.sigmoid(logits[:, 0].float())
        return torch.stack([1 - p, p], dim=1)
    if task is Task.MULTILABEL:
        return torch.sigmoid(logits.float())
    return logits[:, 0].float()
