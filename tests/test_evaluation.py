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


def _report(tmp_path, metrics) -> str:
    from mmfuse.evaluation import write_report

    write_report(tmp_path, metrics)
    return (tmp_path / "report.md").read_text()


PLAN = {"inputs": {"x": {"modality": "tabular", "encoder": "tabular_mlp"}}, "fusion": "none (one input)",
        "split": {"rows": {"train": 8, "val": 2, "test": 0}, "source": "given tables"}, "epochs": 3, "patience": 5,
        "batch_size": 4, "lr": 0.01, "class_weight": "none (every class weighs 1)", "device": "cpu",
        "precision": "32-true"}


def test_fit_report_counts_epochs_from_one_names_no_fusion_for_one_input_and_lists_the_plan(tmp_path):
    text = _report(tmp_path, {"task": "binary", "fusion": "gated", "inputs": ["x"], "best_epoch": 0, "epochs_run": 3,
                              "train_seconds": 2.4, "rows": {"train": 8, "val": 2, "test": 0}, "plan": PLAN})
    assert "- best epoch: 1 of 3 (epochs counted from 1)" in text  # history's epoch 0 is the first
    assert "- fusion: none (one input)" in text and "gated" not in text
    assert "- training time: 2.4 s" in text
    assert "## plan" in text and "- inputs: x (tabular, encoder tabular_mlp)" in text
    assert "- rows: train 8, validation 2, test 0 (given tables)" in text
    assert "- epochs: at most 3 (early stopping after 5 without improvement of validation loss); batch size 4; learning rate 0.01" in text
    assert "- device: cpu (precision 32-true)" in text
    two = _report(tmp_path, {"task": "binary", "fusion": "gated", "inputs": ["x", "z"]})
    assert "- fusion: gated" in two


def test_evaluation_report_shows_the_bundles_training_facts_not_placeholders(tmp_path):
    text = _report(tmp_path, {"task": "binary", "fusion": "concat", "inputs": ["x", "z"], "test": {"accuracy": 0.5},
                              "evaluated": {"bundle": "run/bundle", "table": "t.csv", "rows": 10},
                              "training": {"best_epoch": 4, "epochs_run": 7, "train_seconds": 12.5,
                                           "rows": {"train": 80, "val": 10, "test": 10}}})
    assert text.startswith("# mmfuse evaluation report")
    assert "- evaluated: bundle run/bundle on t.csv, 10 rows" in text
    assert "## training (from the bundle)" in text and "- best epoch: 5 of 7" in text
    assert "- training time: 12.5 s" in text and "- rows: train 80, val 10, test 10" in text
    assert "None" not in text
    bare = _report(tmp_path, {"task": "binary", "fusion": "concat", "inputs": ["x", "z"], "test": {"accuracy": 0.5},
                              "training": {}})  # a bundle written without metrics
    assert "None" not in bare and "0.0 s" not in bare and "- not recorded" in bare


def test_an_input_the_table_lacks_is_listed_as_absent_not_scored_alone(tmp_path, capsys):
    """Without it is all inputs, it alone is no data: neither is a contribution. The command line and the
    report say it is absent from the table."""
    from mmfuse import MultimodalPredictor, evaluate_predictor
    from mmfuse.cli import main

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a0": rng.normal(size=120), "a1": rng.normal(size=120), "b0": rng.normal(size=120)})
    df["y"] = np.where(df["a0"] + df["b0"] > 0, "p", "n")
    m = MultimodalPredictor("y", groups={"A": ["a0", "a1"], "B": ["b0"]}, epochs=1, min_steps=0, progress=False,
                            log=None, out=tmp_path / "run").fit(df)
    c = evaluate_predictor(m.predictor_, df.drop(columns="b0"), contribution=True)["contribution"]
    assert c["absent"] == ["B"] and list(c["without"]) == list(c["only"]) == ["A"]
    assert "absent" not in evaluate_predictor(m.predictor_, df, contribution=True)["contribution"]
    df.drop(columns="b0").to_csv(tmp_path / "noB.csv", index=False)
    main(["evaluate", str(tmp_path / "run" / "bundle"), str(tmp_path / "noB.csv"), "-o", str(tmp_path / "ev")])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("contribution ("))
    assert line.endswith(", B: absent from this table") and "A: without " in line
    assert "| B | absent from this table | |" in (tmp_path / "ev" / "report.md").read_text()
