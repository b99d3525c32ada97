import numpy as np
import pytest

from mmfuse.evaluation import classification_metrics, expected_calibration_error, regression_metrics
from mmfuse.tasks import Task


def test_ece_by_hand():
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 1, 1, 1])
    # bins of width 1/15: confidences 0.9, 0.6, 0.7, 0.8 fall in four different bins;
    # |acc - conf| = 0.1, 0.6, 0.3, 0.2 -> mean 0.3
    assert expected_calibration_error(proba, y) == pytest.approx(0.3)


def test_regression_metrics_by_hand():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["mae"] == pytest.approx(2 / 3) and m["rmse"] == pytest.approx(np.sqrt(4 / 3))
    # r2 = 1 - SSE/SST with SSE = 4, SST = (5/3)^2 + (2/3)^2 + (7/3)^2 = 26/3
    assert m["r2"] == pytest.approx(1 - 4 / (26 / 3))


def test_classification_metrics_binary():
    proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.9, 0.1]])
    y = np.array([0, 1, 0, 0])
    m = classification_metrics(proba, y, ["a", "b"], Task.BINARY)
    assert m["accuracy"] == 0.75 and m["f1_positive"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == 1.0 and m["confusion_matrix"] == [[2, 1], [0, 1]]
    assert set(m["report"]) >= {"a", "b", "macro avg", "weighted avg"}


def test_choose_threshold_maximizes_the_metric_closest_to_one_half():
    from mmfuse.errors import MmfuseError
    from mmfuse.evaluation import choose_threshold

    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0.31, 0.45, 40), rng.uniform(0.0, 0.2, 60)
    p1 = np.concatenate([pos, neg])
    proba, y = np.stack([1 - p1, p1], 1), np.r_[np.ones(40, int), np.zeros(60, int)]
    assert choose_threshold(proba, y, "f1") == 0.31  # 0.21 ... 0.31 all separate the classes
    assert choose_threshold(proba, y, "mcc") == 0.31
    with pytest.raises(MmfuseError, match="unknown metric 'f2'.*f1, balanced_accuracy"):
        choose_threshold(proba, y, "f2")


def test_binary_labels_follow_the_threshold_and_report_one_half_too():
    p1 = np.array([0.2, 0.4, 0.6, 0.9])
    proba, y = np.stack([1 - p1, p1], 1), np.array([0, 1, 1, 1])
    at_half = classification_metrics(proba, y, ["n", "p"], Task.BINARY)
    assert at_half["accuracy"] == 0.75 and at_half["threshold"] == 0.5 and "at_0.5" not in at_half
    low = classification_metrics(proba, y, ["n", "p"], Task.BINARY, threshold=0.3)
    assert low["accuracy"] == 1.0 and low["f1_positive"] == 1.0 and low["threshold"] == 0.3
    assert low["at_0.5"]["accuracy"] == 0.75 and low["roc_auc"] == at_half["roc_auc"]
