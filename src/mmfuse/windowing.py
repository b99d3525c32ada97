"""Fixed windows from long recordings with per-sample labels (activity recognition)."""
from __future__ import annotations

from collections import Counter

import numpy as np

from .errors import MmfuseError

__all__ = ["make_windows", "pair_by_batches"]


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


def pair_by_batches(t_a, t_b, batch: int = 1000, trim_end: bool = False):
    """Pair the samples of two streams that each sample at their own rate, as Matey-Sanz et al. fuse a phone
    and a watch: start both at the later of their first stamps, cut time into batches of ``batch`` units, pair
    the i-th sample of one stream in a batch with the i-th sample of the other, and drop the samples left
    without a partner (so the surplus of the stream that stops later goes too).

    Args:
        t_a, t_b: Time stamps of the two streams (integers, e.g. ms), each non-decreasing.
        batch: Batch length in the stamps' unit; batches are aligned to multiples of ``batch``
            (``t // batch``), as pandas' ``resample`` aligns them.
        trim_end: Also drop the samples after the earlier of the two last stamps. The authors' code
            does not (it ends the overlap at the later last stamp), so samples past the common end are
            dropped only when they find no partner in their batch.

    Returns:
        ``(ia, ib)``: equal-length index arrays into ``t_a`` and ``t_b``; pair ``k`` is
        ``(ia[k], ib[k])``, in time order.

    Example: ``a`` stamps 0, 10, 20 and ``b`` stamps 5, 15, 25, 35 with ``batch=1000``: from the common
    start 5, ``a`` keeps 10, 20 and ``b`` keeps 5, 15, 25, 35; the pairs are (10, 5) and (20, 15), and
    25, 35 have no partner.
    """
    t_a, t_b = np.asarray(t_a, np.int64), np.asarray(t_b, np.int64)
    for name, t in (("t_a", t_a), ("t_b", t_b)):
        if t.ndim != 1 or (np.diff(t) < 0).any():
            raise MmfuseError(f"pair_by_batches: {name} must be a 1-D sequence of non-decreasing time stamps; "
                              "sort each stream by time first")
    if batch < 1:
        raise MmfuseError(f"pair_by_batches: batch must be >= 1, got {batch}")
    empty = np.zeros(0, np.int64)
    if not len(t_a) or not len(t_b):
        return empty, empty
    start = max(t_a[0], t_b[0])  # each device starts and stops on its own
    end = min(t_a[-1], t_b[-1]) if trim_end else max(t_a[-1], t_b[-1])
    ia = np.flatnonzero((t_a >= start) & (t_a <= end))
    ib = np.flatnonzero((t_b >= start) & (t_b <= end))
    ba, bb = t_a[ia] // batch, t_b[ib] // batch  # batch of each kept sample, non-decreasing

    def partnered(mine, other):
        rank = np.arange(len(mine)) - np.searchsorted(mine, mine, "left")  # i: the i-th sample of its batch
        n_other = np.searchsorted(other, mine, "right") - np.searchsorted(other, mine, "left")
        return rank < n_other  # the other stream has an i-th sample in this batch

    return ia[partnered(ba, bb)], ib[partnered(bb, ba)]
