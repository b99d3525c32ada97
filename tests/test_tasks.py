"""The task classes: inference, encoding, losses, class weights, decoding, metrics and state.

Expected values are computed by hand on tiny inputs."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mmfuse.errors import InputError, MmfuseError, SchemaError
from mmfuse.tasks import (BinaryTask, MulticlassTask, MultilabelTask, RegressionTask, create_task, fit_task,
                          infer_task, list_tasks, task_from_dict)


def df(values, col="y"):
    return pd.DataFrame({col: values})


# --- inference and encoding -------------------------------------------------------------------
def test_inference_ignores_blank_cells():
    assert infer_task(pd.Series([0, 1, 1, None])) == "binary"
    assert infer_task(pd.Series(["a", "b", "c", ""])) == "multiclass"
    assert infer_task(pd.Series([0.1 * i + 0.05 for i in range(50)])) == "regression"
    assert infer_task(pd.Series([["a"], ["a", "b"]])) == "multilabel"
    assert list_tasks() == ["binary", "multiclass", "multilabel", "regression"]


def test_labels_sorted_naturally_encoded_and_round_trip():
    t = fit_task(df([10, 9, 2, 10]), "y")
    assert isinstance(t, MulticlassTask) and t.classes_ == ["2", "9", "10"] and t.n_outputs == 3
    assert t.transform(df([2, 10])).tolist() == [0, 2]
    assert task_from_dict(t.to_dict()).transform(df([9])).tolist() == [1]
    assert t.labels().tolist() == [2, 9, 10]  # numbers stay numbers


def test_target_errors_name_row_and_column():
    with pytest.raises(SchemaError, match="unknown target column 'z'"):
        fit_task(df([1, 2]), "z")
    with pytest.raises(SchemaError, match="single class"):
        fit_task(df(["a", "a", None]), "y")
    t = fit_task(df(["a", "b"]), "y")
    with pytest.raises(InputError, match="row 1, column 'y': has no target value"):
        t.transform(df(["a", None]))
    with pytest.raises(InputError, match="row 0, column 'y': has the label 'c', unseen in training"):
        t.transform(df(["c"]))
    with pytest.raises(InputError, match="row 2, column 'y': holds 'x', which is not a number"):
        fit_task(df([1.5, 2.5, "x"]), "y", "regression")


def test_blank_rows_are_found_and_an_option_that_does_not_apply_is_an_error():
    t = create_task("binary", "y")
    assert t.blank(df(["a", None, "", float("nan"), "b"])).tolist() == [False, True, True, True, False]
    with pytest.raises(MmfuseError, match="regression_loss='huber' does not apply to the binary target"):
        fit_task(df(["a", "b"]), "y", regression_loss="huber")
    with pytest.raises(MmfuseError, match="regression_loss must be one of"):
        fit_task(df([1.0, 2.0, 3.0]), "y", "regression", regression_loss="l1")


# --- losses and class weights -----------------------------------------------------------------
def test_multiclass_loss_with_class_weights_by_hand():
    t = fit_task(df(["a", "b", "c"]), "y")
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    nll = [-math.log(math.exp(2) / (math.exp(2) + 2)), -math.log(1 / (2 + math.e))]
    assert float(t.loss(logits, y)) == pytest.approx(sum(nll) / 2, rel=1e-6)
    w = torch.tensor([1.0, 1.0, 3.0])
    assert float(t.loss(logits, y, w)) == pytest.approx((nll[0] + 3 * nll[1]) / 4, rel=1e-6)


def test_binary_loss_weights_each_row_by_its_class():
    t = fit_task(df(["neg", "pos"]), "y")
    logits = torch.tensor([[0.0], [2.0], [-1.0]])
    y = torch.tensor([0, 1, 1])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    bce = [-math.log(1 - sig(0.0)), -math.log(sig(2.0)), -math.log(sig(-1.0))]
    assert float(t.loss(logits, y)) == pytest.approx(sum(bce) / 3, rel=1e-6)
    w = torch.tensor([2.0, 0.5])
    assert float(t.loss(logits, y, w)) == pytest.approx((2 * bce[0] + 0.5 * bce[1] + 0.5 * bce[2]) / 3.0, rel=1e-6)


def test_multilabel_loss_pos_weight_and_regression_losses_by_hand():
    t = fit_task(df([["a"], ["a", "b"]]), "y")
    logits, y = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    plain = (-math.log(sig(0.0)) - math.log(1 - sig(1.0))) / 2
    assert float(t.loss(logits, y)) == pytest.approx(plain, rel=1e-6)
    weighted = (-3 * math.log(sig(0.0)) - math.log(1 - sig(1.0))) / 2  # pos_weight 3 on label 'a'
    assert float(t.loss(logits, y, torch.tensor([3.0, 1.0]))) == pytest.approx(weighted, rel=1e-6)
    r = fit_task(df([1.0, 3.0]), "y", "regression")
    z, target = torch.tensor([[0.0], [3.0]]), torch.tensor([1.0, 0.0])
    assert float(r.loss(z, target)) == pytest.approx((1 + 9) / 2)
    h = fit_task(df([1.0, 3.0]), "y", "regression", regression_loss="huber")
    assert float(h.loss(z, target)) == pytest.approx((0.5 + 2.5) / 2)  # |e|<=1: e²/2, else |e|-1/2


def test_balanced_class_weights_by_hand():
    t = fit_task(df(["a", "a", "a", "b"]), "y")
    assert t.class_weights("balanced", np.array([0, 0, 0, 1])).tolist() == pytest.approx([4 / 6, 2.0])
    assert t.class_weights([1, 5], None).tolist() == [1, 5]
    with pytest.raises(MmfuseError, match="2 positive values"):
        t.class_weights([1, 2, 3], None)
    m = fit_task(df([["a"], ["a", "b"], ["a"], ["a"]]), "y")
    y = m.transform(df([["a"], ["a", "b"], ["a"], ["a"]]))
    assert m.class_weights("balanced", y).tolist() == pytest.approx([0 / 4, 3 / 1])
    with pytest.raises(MmfuseError, match="class_weight applies to classification"):
        fit_task(df([1.0, 2.0]), "y", "regression").class_weights("balanced", None)


def test_auto_class_weight_balances_only_imbalanced_multiclass_targets():
    t = fit_task(df(["a", "a", "a", "b", "c"]), "y", "multiclass")
    # largest class 3 rows, rarest 1: ratio 3 >= 3, so balanced: N / (K * count) = 5 / (3 * count)
    assert t.class_weights("auto", np.array([0, 0, 0, 1, 2])).tolist() == pytest.approx([5 / 9, 5 / 3, 5 / 3])
    assert t.class_weights("auto", np.array([0, 0, 1, 1, 2])) is None  # ratio 2: unweighted
    assert t.class_weights("auto", np.array([0, 0, 0, 0, 1])) is not None  # a class without rows counts as 1
    b = fit_task(df(["a", "a", "a", "a", "b"]), "y", "binary")  # binary: a decision threshold's job
    assert b.class_weights("auto", np.array([0, 0, 0, 0, 1])) is None
    assert fit_task(df([1.0, 2.0]), "y", "regression").class_weights("auto", None) is None
    from mmfuse.config import TrainConfig

    assert TrainConfig().class_weight == "auto"


# --- decoding: thresholds flip rows -------------------------------------------------------------
def test_binary_decision_threshold_flips_rows_and_survives_to_dict():
    t = fit_task(df(["no", "yes"]), "y")
    p = np.array([0.2, 0.35, 0.455, 0.7])
    logits = torch.tensor(np.log(p / (1 - p)), dtype=torch.float32)[:, None]
    assert t.decode(logits).labels.tolist() == ["no", "no", "no", "yes"]
    t.set_threshold(0.3)
    assert t.decode(logits).labels.tolist() == ["no", "yes", "yes", "yes"]
    assert task_from_dict(t.to_dict()).decode(logits).labels.tolist() == ["no", "yes", "yes", "yes"]
    assert t.decode(logits, threshold=0.4).ids.tolist() == [0, 0, 1, 1]
    # chosen on validation rows: f1 is best for thresholds in (0.35, 0.455]; the closest of those to 0.5 is 0.45
    t.set_threshold("f1", logits, np.array([0, 0, 1, 1]))
    assert t.threshold == 0.45
    with pytest.raises(MmfuseError, match="between 0 and 1"):
        t.set_threshold(1.5)
    with pytest.raises(MmfuseError, match="unknown metric 'auc'"):
        t.set_threshold("auc")


def test_multilabel_thresholds_per_label():
    t = fit_task(df([["a"], ["b"]]), "y")
    logits = torch.logit(torch.tensor([[0.4, 0.4], [0.6, 0.2]]))
    assert [list(v) for v in t.decode(logits).labels] == [[], ["a"]]
    t.set_threshold([0.3, 0.5])
    assert [list(v) for v in t.decode(logits).labels] == [["a"], ["a"]]
    assert task_from_dict(t.to_dict()).threshold == [0.3, 0.5]
    assert t.output_columns(t.decode(logits))["prediction"].tolist() == ["a", "a"]
    with pytest.raises(MmfuseError, match="give one number, or 2"):
        t.set_threshold([0.3, 0.5, 0.1])


def test_thresholds_are_refused_where_they_do_not_apply():
    for t in (fit_task(df(["a", "b", "c"]), "y"), fit_task(df([1.0, 2.0]), "y", "regression")):
        with pytest.raises(MmfuseError, match="applies to binary and multilabel"):
            t.set_threshold(0.3)


# --- metrics ----------------------------------------------------------------------------------
def test_macro_f1_leaves_out_absent_classes_in_quick_and_full_metrics():
    t = fit_task(df(["a", "b", "c"]), "y")
    y = np.array([0, 0, 1, 1])  # class 'c' is absent from these rows
    logits = torch.eye(3)[[0, 2, 1, 1]] * 5  # predicted: a, c, b, b
    # per class: a: P 1, R 1/2 -> F1 2/3; b: P 1, R 1 -> F1 1; c (absent): left out
    expected = (2 / 3 + 1) / 2
    full = t.metrics(logits, y)
    quick = t.quick_metrics(logits, torch.as_tensor(y))
    assert full["macro_f1"] == pytest.approx(expected) and quick["macro_f1"] == pytest.approx(expected)
    assert full["absent_classes"] == ["c"] and full["accuracy"] == 0.75 == quick["accuracy"]
    assert full["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]


def test_multilabel_and_regression_metrics_by_hand():
    t = fit_task(df([["a"], ["b"], ["c"]]), "y")
    y = np.array([[1, 0, 0], [1, 1, 0]])  # label 'c' absent
    logits = torch.tensor([[5.0, -5, 5], [5, -5, -5]])  # predicted {a, c}, {a}
    full, quick = t.metrics(logits, y), t.quick_metrics(logits, torch.as_tensor(y))
    assert full["macro_f1"] == pytest.approx((1 + 0) / 2) == quick["macro_f1"]
    assert full["absent_classes"] == ["c"] and full["subset_accuracy"] == 0.0
    r = fit_task(df([0.0, 2.0]), "y", "regression")  # mean 1, std 1
    m = r.metrics(torch.tensor([[0.0], [2.0]]), np.array([1.0, 1.0]))  # predicts 1, 3; truth 2, 2
    assert m["mae"] == pytest.approx(1.0) and m["rmse"] == pytest.approx(1.0)
    assert r.quick_metrics(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0, 1.0]))["rmse"] == pytest.approx(1.0)


def test_binary_metrics_report_threshold_and_label_metrics_at_half():
    t = fit_task(df(["no", "yes"]), "y")
    p = np.array([0.2, 0.4, 0.45, 0.7])
    logits = torch.tensor(np.log(p / (1 - p)), dtype=torch.float32)[:, None]
    t.set_threshold(0.3)
    m = t.metrics(logits, np.array([0, 1, 0, 1]))
    assert m["threshold"] == 0.3 and m["accuracy"] == 0.75 and m["at_0.5"]["accuracy"] == 0.75
    assert m["f1_positive"] == pytest.approx(0.8) and m["at_0.5"]["f1_positive"] == pytest.approx(2 / 3)


# --- state ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_tasks())
def test_every_task_round_trips_through_to_dict(name):
    values = {"binary": ["a", "b", "a"], "multiclass": ["a", "b", "c"], "multilabel": [["a"], ["a", "b"], ["c"]],
              "regression": [1.0, 2.5, 4.0]}[name]
    t = fit_task(df(values), "y", name)
    back = task_from_dict(t.to_dict())
    assert type(back) is type(t) and back.n_outputs == t.n_outputs
    logits = torch.randn(3, t.n_outputs, generator=torch.Generator().manual_seed(0))
    a, b = t.decode(logits), back.decode(logits)
    np.testing.assert_allclose(np.asarray(a.proba, float), np.asarray(b.proba, float))
    assert a.labels.tolist() == b.labels.tolist()
    assert t.transform(df(values)).tolist() == back.transform(df(values)).tolist()


def test_bundles_of_format_1_keep_their_target_and_threshold():
    old = {"column": "y", "task": "binary", "classes": ["no", "yes"], "label_sep": "|", "mean": 0.0, "std": 1.0,
           "numeric_labels": False}
    t = task_from_dict(old, decision_threshold=0.3)
    assert isinstance(t, BinaryTask) and t.threshold == 0.3
    old_reg = {"column": "y", "task": "regression", "classes": None, "label_sep": "|", "mean": 5.0, "std": 2.0,
               "numeric_labels": False}
    r = task_from_dict(old_reg)
    assert isinstance(r, RegressionTask) and r.decode(torch.tensor([[1.0]])).labels.tolist() == [7.0]
    assert isinstance(task_from_dict({**old, "task": "multilabel", "classes": ["a", "b"]}), MultilabelTask)


def test_regression_metrics_by_hand_including_r2():
    r = fit_task(df([0.0, 2.0]), "y", "regression")  # mean 1, std 1: z = value - 1
    m = r.metrics(torch.tensor([[0.0], [1.0], [2.0]]), np.array([0.0, 1.0, 3.0]))  # predicts 1, 2, 3; truth 1, 2, 4
    assert m["mae"] == pytest.approx(1 / 3) and m["rmse"] == pytest.approx(np.sqrt(1 / 3))
    # r2 = 1 - SSE/SST with SSE = 1, SST = (4/3)^2 + (1/3)^2 + (5/3)^2 = 14/3
    assert m["r2"] == pytest.approx(1 - 1 / (14 / 3))


def test_the_class_report_averages_follow_the_macro_f1_rule():
    t = fit_task(df(["a", "b", "c"]), "y")
    m = t.metrics(torch.eye(3)[[0, 2, 1, 1]] * 5, np.array([0, 0, 1, 1]))
    assert m["report"]["macro avg"]["f1-score"] == pytest.approx(m["macro_f1"])
    assert "c" not in m["report"] and m["absent_classes"] == ["c"]


def test_a_damaged_target_description_is_refused():
    with pytest.raises(MmfuseError, match="needs a list of at least two class names, got None"):
        task_from_dict({"column": "y", "task": "binary", "classes": None})
    with pytest.raises(MmfuseError, match="positive std"):
        task_from_dict({"column": "y", "task": "regression", "mean": 0.0, "std": 0.0})


def test_numbers_written_as_text_are_numbers():
    y = pd.Series([str(round(0.37 * i, 2)) for i in range(40)], name="y")  # JSON Lines with quoted numbers
    assert infer_task(y) == "regression"


def test_row_scores_split_the_headline_metric_by_row_for_every_task():
    m = fit_task(df(["a", "b", "c"]), "y")
    assert m.row_scores(torch.tensor([[3.0, 0, 0], [3, 0, 0], [0, 0, 3]]), torch.tensor([0, 1, 2])).tolist() == [1, 0, 1]
    b = fit_task(df(["no", "yes"]), "y")
    b.set_threshold(0.3)  # the decision threshold decides a row's score: p = 0.35 counts as "yes"
    p = torch.tensor([0.35, 0.2])
    assert b.row_scores(torch.logit(p)[:, None], torch.tensor([1, 1])).tolist() == [1, 0]
    ml = fit_task(df([["a"], ["b"], ["c"]]), "y")  # macro-F1 does not split by row
    assert ml.row_scores(torch.tensor([[5.0, -5, 5], [5, -5, -5]]), torch.tensor([[1, 0, 0], [1, 1, 0]])) is None
    r = fit_task(df([0.0, 2.0]), "y", "regression")  # the standardized scale: the target's own y
    assert r.row_scores(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0, 1.0])).tolist() == [-1.0, -1.0]
