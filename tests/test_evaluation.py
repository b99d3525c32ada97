import numpy as np
import pytest

import pandas as pd
import torch

from mmfuse.tasks import choose_threshold, expected_calibration_error, fit_task


def test_ece_by_hand():
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 1, 1, 1])
    # bins of width 1/15: confidences 0.9, 0.6, 0.7, 0.8 fall in four different bins;
    # |acc - conf| = 0.1, 0.6, 0.3, 0.2 -> mean 0.3
    assert expected_calibration_error(proba, y) == pytest.approx(0.3)


def test_choose_threshold_maximizes_the_metric_closest_to_one_half():
    from mmfuse.errors import MmfuseError

    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0.31, 0.45, 40), rng.uniform(0.0, 0.2, 60)
    p1 = np.concatenate([pos, neg])
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    assert choose_threshold(p1, y, "f1") == 0.31  # 0.21 ... 0.31 all separate the classes
    assert choose_threshold(p1, y, "mcc") == 0.31
    with pytest.raises(MmfuseError, match="unknown metric 'f2'.*f1, balanced_accuracy"):
        choose_threshold(p1, y, "f2")


def test_binary_metrics_by_hand():
    t = fit_task(pd.DataFrame({"y": ["a", "b"]}), "y")
    p1 = np.array([0.2, 0.7, 0.6, 0.1])
    m = t.metrics(torch.logit(torch.tensor(p1, dtype=torch.float64)).float()[:, None], np.array([0, 1, 0, 0]))
    assert m["accuracy"] == 0.75 and m["f1_positive"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == 1.0 and m["confusion_matrix"] == [[2, 1], [0, 1]]
    assert set(m["report"]) >= {"a", "b", "macro avg", "weighted avg"} and m["absent_classes"] == []
