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
