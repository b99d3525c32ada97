import numpy as np
import pandas as pd
import pytest

from mmfuse.errors import MmfuseError
from mmfuse.windowing import make_windows

from conftest import require_shared_data


def test_windows_by_hand():
    x = np.arange(10.0)[:, None]  # (T=10, C=1)
    labels = ["a"] * 4 + ["b"] * 6
    w, lab, starts, dropped = make_windows(x, labels, length=4, stride=3)
    # starts 0, 3, 6 (9 would run past the end)
    assert starts.tolist() == [0, 3, 6] and w.shape == (3, 1, 4)
    assert w[1, 0].tolist() == [3, 4, 5, 6]
    assert lab.tolist() == ["a", "b", "b"] and dropped == 0  # window 0: aaaa; 1: a b b b; 2: bbbb


def test_majority_ties_go_to_the_first_label_and_purity_filter():
    w, lab, _, dropped = make_windows(np.zeros((4, 2)), ["x", "y", "y", "x"], length=4)
    assert lab.tolist() == ["x"]
    w, lab, _, dropped = make_windows(np.zeros((4, 2)), ["x", "y", "y", "x"], length=4, min_label_share=0.75)
    assert len(w) == 0 and dropped == 1


def test_errors():
    with pytest.raises(MmfuseError, match="3 labels for 4 samples"):
        make_windows(np.zeros((4, 1)), [1, 2, 3], length=2)
    assert make_windows(np.zeros((3, 1)), None, length=5)[0].shape == (0, 1, 5)


@pytest.mark.realdata
def test_sphar_window_counts_match_the_authors():
    from mmfuse.datasets import sphar_recordings_table

    t = sphar_recordings_table(require_shared_data("sp-sw-har"))
    counts = {}
    for col in ("phone", "watch"):
        n = 0
        for f in t.df[col]:
            d = pd.read_csv(t.root / f)
            n += len(make_windows(d.iloc[:, :6].to_numpy(), d["label"].to_numpy(), length=50, stride=25)[0])
        counts[col] = n
    assert counts == {"phone": 10042, "watch": 10170}  # as published by the data set's authors
