"""Fixed windows from long recordings with per-sample labels (activity recognition)."""
from __future__ import annotations

from collections import Counter

import numpy as np

from .errors import MmfuseError

__all__ = ["make_windows"]


def make_windows(values: np.ndarray, labels=None, length: int = 50, stride: int | None = None,
                 min_label_share: float = 0.0):
    """Cut ``values (T, C)`` into windows ``(W, C, length)`` with a majority label each.

    Window k covers steps ``[k * stride, k * stride + length)``; a trailing partial window
    is dropped. The label of a window is its most frequent sample label (ties: the label
    that occurs first in the window). Windows whose majority share is below
    ``min_label_share`` are dropped, and their count returned.

    Returns:
        ``(windows, window_labels, starts, n_dropped)``; ``window_labels`` is None without labels.
    """
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    stride = length if stride is None else stride
    if length < 1 or stride < 1:
        raise MmfuseError(f"make_windows: length and stride must be >= 1, got length={length}, stride={stride}")
    T = len(values)
    if labels is not None and len(labels) != T:
        raise MmfuseError(f"make_windows: {len(labels)} labels for {T} samples; give one label per sample")
    starts = np.arange(0, T - length + 1, stride) if T >= length else np.zeros(0, np.int64)
    windows = np.stack([values[s:s + length].T for s in starts]) if len(starts) else \
        np.zeros((0, values.shape[1], length), values.dtype)
    if labels is None:
        return windows, None, starts, 0
    labels = np.asarray(labels)
    out, keep = [], np.ones(len(starts), bool)
    for k, s in enumerate(starts):
        seg = labels[s:s + length]
        counts = Counter(seg.tolist())
        top = max(counts.values())
        winner = next(v for v in seg.tolist() if counts[v] == top)
        out.append(winner)
        keep[k] = top / length >= min_label_share
    out = np.asarray(out, dtype=labels.dtype)
    return windows[keep], out[keep], starts[keep], int((~keep).sum())
