import numpy as np
import pandas as pd
import pytest

from mmfuse.api import MultimodalPredictor
from mmfuse.errors import MmfuseError, NotFittedError

from conftest import make_mm_table, make_tabular_text_table

FAST = dict(progress=False, log=None, batch_size=32, dim=32, head_hidden=32, contribution=False)
SMALL_PREP = {"image": {"size": 16}, "audio": {"sample_rate": 8000, "duration": 0.25, "n_mels": 16},
              "timeseries": {"length": 16}, "text": {"min_freq": 1, "max_length": 12}}


def test_fit_save_load_predict_all_modalities_with_absent_inputs(tmp_path):
    path = make_mm_table(tmp_path, n=40)
    m = MultimodalPredictor(target="label", fusion="attention", epochs=2, preprocessing=SMALL_PREP,
                            out=tmp_path / "run", **FAST)
    m.fit(path, test=path)
    assert set(m.metrics_["inputs"]) == {"clip", "motion", "photo", "review", "tabular"}
    assert (tmp_path / "run" / "bundle" / "model.safetensors").exists()
    proba = m.predict_proba(path)
    assert proba.shape == (40, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    loaded = MultimodalPredictor.load(tmp_path / "run" / "bundle")
    assert np.allclose(loaded.predict_proba(path), proba, atol=1e-6)
    assert set(loaded.predict(path)) <= {"no", "yes"}
    # absent from the table entirely, and empty in some rows
    df = pd.read_csv(path).drop(columns=["photo", "clip", "label"])
    df.loc[:9, "review"] = None
    from mmfuse.io import read_table

    p2 = loaded.predict_proba(read_table(df, root=tmp_path))
    assert p2.shape == (40, 2) and np.isfinite(p2).all()


@pytest.mark.parametrize("task,fusion", [("binary", "gated"), ("multiclass", "concat"), ("multilabel", "late"),
                                         ("regression", "low_rank")])
def test_each_task_learns(task, fusion):
    df = make_tabular_text_table(240, task=task)
    test = make_tabular_text_table(120, seed=1, task=task)
    m = MultimodalPredictor(target="y", fusion=fusion, task=task, epochs=25, lr=3e-3, patience=25, **FAST)
    m.fit(df)
    res = m.evaluate(test)
    if task == "regression":
        assert res["r2"] > 0.8, res
        pred = m.predict(test)
        assert np.abs(pred - test["y"]).mean() == pytest.approx(res["mae"], rel=1e-5)
    elif task == "multilabel":
        assert res["micro_f1"] > 0.8, res
        assert all(isinstance(p, list) for p in m.predict(test))
    else:
        assert res["accuracy"] > 0.85, res
        assert {"report", "balanced_accuracy", "log_loss", "ece", "macro_f1"} <= set(res)
        assert ("roc_auc" in res and "pr_auc" in res) if task == "binary" else "roc_auc_ovr_macro" in res
    if task == "multiclass":
        assert set(np.unique(m.predict(test))) <= {0, 1, 2, 3}  # integer labels come back as integers


def test_same_seed_same_metrics():
    df = make_tabular_text_table(160)
    runs = [MultimodalPredictor(target="y", fusion="concat", epochs=3, modality_dropout=0.2, **FAST).fit(df)
            for _ in range(2)]
    assert runs[0].history_ == runs[1].history_
    assert runs[0].metrics_["val"]["accuracy"] == runs[1].metrics_["val"]["accuracy"]


def test_modality_dropout_aux_losses_and_class_weights_run(tmp_path):
    df = make_tabular_text_table(160)
    m = MultimodalPredictor(target="y", fusion="weighted", epochs=3, modality_dropout=0.3, aux_weight=0.5,
                            class_weight="balanced", **FAST).fit(df)
    assert m.predictor_.model.aux_heads is not None and len(m.history_) == 3


def test_contribution_is_reported(tmp_path):
    df = make_tabular_text_table(200)
    m = MultimodalPredictor(target="y", fusion="concat", epochs=15, lr=3e-3, out=tmp_path / "r",
                            **{**FAST, "contribution": True})
    m.fit(df, test=make_tabular_text_table(100, seed=2))
    c = m.metrics_["contribution"]
    assert set(c["without"]) == set(c["only"]) == {"note", "tabular"} and c["split"] == "test"
    assert c["all"] > max(c["only"].values())  # both inputs are needed for this target
    for f in ("metrics.json", "report.md", "learning_curves.png", "confusion_matrix.png", "contribution.png"):
        assert (tmp_path / "r" / f).exists(), f
    assert "modality contribution" in (tmp_path / "r" / "report.md").read_text()


def test_parameter_errors_name_parameter_allowed_and_received():
    df = make_tabular_text_table(40)
    with pytest.raises(MmfuseError, match=r"setting 'fusion' must be a registered fusion \(.*gated.*\); got 'gatd'. "
                                          r"Did you mean 'gated'\?"):
        MultimodalPredictor(target="y", fusion="gatd").fit(df)
    with pytest.raises(MmfuseError, match=r"setting 'epochs' must be an integer >= 1; got 0"):
        MultimodalPredictor(target="y", epochs=0).fit(df)
    with pytest.raises(MmfuseError, match=r"setting 'modality_dropout' must be a number in \[0, 1\); got 1.5"):
        MultimodalPredictor(target="y", modality_dropout=1.5).fit(df)
    with pytest.raises(MmfuseError, match=r"setting 'regression_loss' must be one of 'mse', 'huber'; got 'l1'"):
        MultimodalPredictor(target="y", regression_loss="l1").fit(df)
    with pytest.raises(MmfuseError, match=r"unknown parameter of MultimodalPredictor 'epoch'.*Did you mean 'epochs'"):
        MultimodalPredictor(target="y", epoch=3)
    with pytest.raises(MmfuseError, match=r"unknown input 'photo'"):
        MultimodalPredictor(target="y", inputs=["photo"]).fit(df)
    with pytest.raises(NotFittedError):
        MultimodalPredictor(target="y").predict(df)


def test_group_split_and_split_column():
    from mmfuse.schema import infer_schema
    from mmfuse.splits import split_rows

    df = make_tabular_text_table(120)
    df["who"] = np.repeat(np.arange(30), 4)
    s = infer_schema(df, target="y", overrides={"who": "group"})
    parts = split_rows(df, s, 0.2, 0.2, seed=0)
    groups = {k: set(df["who"].iloc[v]) for k, v in parts.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert sum(len(v) for v in parts.values()) == 120
    df["fold"] = ["train"] * 100 + ["validation"] * 10 + ["test"] * 10
    s = infer_schema(df, target="y")
    parts = split_rows(df, s, 0.5, 0.5, seed=0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [100, 10, 10]
    df.loc[3, "fold"] = "holdout"
    with pytest.raises(MmfuseError, match="row 3, column 'fold': split value 'holdout'"):
        split_rows(df, infer_schema(df, target="y", overrides={"fold": "split"}), 0.1, 0.1, seed=0)


def test_best_checkpoint_is_restored_and_max_time_stops():
    df = make_tabular_text_table(200)
    m = MultimodalPredictor(target="y", fusion="concat", epochs=12, lr=3e-3, patience=3, **FAST).fit(df)
    best = m.metrics_["best_epoch"]
    losses = [h["val_loss"] for h in m.history_]
    assert best == int(np.argmin(losses))
    # the model kept is the best epoch's, not the last one's
    assert m.metrics_["val"]["accuracy"] == pytest.approx(m.history_[best]["val_accuracy"])
    assert m.metrics_["val"]["log_loss"] == pytest.approx(losses[best], rel=1e-4)
    t = MultimodalPredictor(target="y", fusion="concat", epochs=500, max_time=2, patience=500, **FAST).fit(df)
    assert 0 < len(t.history_) < 500


def test_all_columns_as_text_lets_a_text_model_use_them(tmp_path):
    """A category written into the text group reaches a text-only model; save and load keep it."""
    def table(n, seed):
        df = make_tabular_text_table(n, seed=seed)
        df["y"] = (df["note"].str.contains("alpha")).astype(int) + 2 * (df["cat"] == "u")
        return df

    df, test = table(200, 0), table(100, 1)
    kw = dict(target="y", epochs=8, lr=3e-3, **FAST)
    plain = MultimodalPredictor(groups={"text": ["note"]}, inputs=["text"], **kw).fit(df)
    m = MultimodalPredictor(groups={"text": ["cat", "note"]}, inputs=["text"], out=tmp_path / "run", **kw).fit(df)
    assert m.metrics_["inputs"] == ["text"]
    assert plain.evaluate(test)["accuracy"] < 0.75 < 0.95 < m.evaluate(test)["accuracy"]
    loaded = MultimodalPredictor.load(tmp_path / "run" / "bundle")
    assert np.allclose(loaded.predict_proba(test), m.predict_proba(test), atol=1e-6)


def test_decision_threshold_tuned_on_validation_saved_and_used(tmp_path):
    from mmfuse.tasks import choose_threshold

    df, val = make_tabular_text_table(200, task="binary"), make_tabular_text_table(80, seed=2, task="binary")
    test = make_tabular_text_table(120, seed=1, task="binary")
    m = MultimodalPredictor(target="y", epochs=3, decision_threshold="balanced_accuracy", out=tmp_path / "run",
                            **FAST).fit(df, val=val, test=test)
    thr = m.metrics_["decision_threshold"]
    assert thr != 0.5  # this seed's model is better served by another threshold, so the test can tell
    y_val = (val["y"] == m.classes_[1]).to_numpy().astype(int)
    assert thr == choose_threshold(m.predict_proba(val)[:, 1], y_val, "balanced_accuracy")  # chosen on validation rows
    assert m.metrics_["test"]["threshold"] == thr == m.predictor_.threshold
    proba = m.predict_proba(test)
    assert (m.predict(test) == np.where(proba[:, 1] >= thr, "pos", "neg")).all()
    assert (m.predict(test, threshold=0.5) == np.where(proba[:, 1] >= 0.5, "pos", "neg")).all()
    loaded = MultimodalPredictor.load(tmp_path / "run" / "bundle")
    assert loaded.predictor_.threshold == thr and (loaded.predict(test) == m.predict(test)).all()
    with pytest.raises(MmfuseError, match="decision_threshold applies to binary and multilabel targets; 'y' is multiclass"):
        MultimodalPredictor(target="y", epochs=1, decision_threshold="f1", **FAST).fit(make_tabular_text_table(80))
    with pytest.raises(MmfuseError, match=r"setting 'decision_threshold' must be None, a probability in \(0, 1\)"):
        MultimodalPredictor(target="y", epochs=1, decision_threshold=1.5, **FAST).fit(df)


def test_get_params_set_params_and_sklearn_clone_see_every_setting():
    from sklearn.base import clone

    from mmfuse.config import ModelConfig, TrainConfig

    m = MultimodalPredictor(target="y", fusion="gated", lr=3e-3, encoders={"text": {"hidden": 16}})
    params = m.get_params()
    import dataclasses

    for f in dataclasses.fields(ModelConfig) + dataclasses.fields(TrainConfig):
        assert f.name in params, f.name  # no setting hides in **kwargs
    c = clone(m)
    assert c is not m and c.get_params()["lr"] == 3e-3 and c.fusion == "gated"
    assert c.encoders == {"text": {"hidden": 16}}
    c.set_params(lr=1e-2, dropout=0.3)
    mcfg, tcfg = c.configs()
    assert tcfg.lr == 1e-2 and mcfg.dropout == 0.3 and mcfg.fusion == "gated" and m.lr == 3e-3
    with pytest.raises(MmfuseError, match="Did you mean 'dropout'"):
        c.set_params(dropuot=0.1)
    assert "fusion='gated'" in repr(m) and "epochs" not in repr(m)


def test_config_files_are_checked_like_python_arguments():
    m = MultimodalPredictor.from_config({"fusion": "late", "model": {"dim": 16}, "train": {"epochs": 2}}, target="y")
    mcfg, tcfg = m.configs()
    assert (mcfg.fusion, mcfg.dim, tcfg.epochs) == ("late", 16, 2)
    with pytest.raises(MmfuseError, match=r"unknown train setting 'epoch'.*Did you mean 'epochs'"):
        MultimodalPredictor.from_config({"train": {"epoch": 2}}, target="y")
    with pytest.raises(MmfuseError, match=r"setting 'batch_size' must be an integer >= 1; got 'big'"):
        MultimodalPredictor.from_config({"train": {"batch_size": "big"}}, target="y").configs()
    with pytest.raises(MmfuseError, match=r"unknown config key 'fusoin'.*Did you mean 'fusion'"):
        MultimodalPredictor.from_config({"fusoin": "late"}, target="y")


def test_files_outside_the_root_are_read_in_fit_predict_and_the_cli_only_when_allowed(tmp_path):
    """Images at absolute paths outside the table's folder: fit, predict, predict_proba, evaluate and
    the CLI all honour allow_outside_root (predict used to drop it)."""
    import subprocess
    import sys

    from conftest import write_png

    rng = np.random.default_rng(0)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "table").mkdir()
    rows = []
    for i in range(40):
        write_png(tmp_path / "elsewhere" / f"{i}.png", rng, size=(8, 8))
        rows.append({"photo": str(tmp_path / "elsewhere" / f"{i}.png"), "x": float(i % 2), "y": ["a", "b"][i % 2]})
    path = tmp_path / "table" / "t.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    kw = dict(target="y", epochs=1, preprocessing={"image": {"size": 8}}, **FAST)
    with pytest.raises(MmfuseError, match="outside the data root"):
        MultimodalPredictor(**kw).fit(path)
    m = MultimodalPredictor(allow_outside_root=True, out=tmp_path / "run", **kw).fit(path)
    assert len(m.predict(path)) == 40 and m.predict_proba(path).shape == (40, 2)
    assert m.evaluate(path)["n"] == 40
    cli = [sys.executable, "-m", "mmfuse.cli"]
    bundle = str(tmp_path / "run" / "bundle")
    r = subprocess.run(cli + ["predict", bundle, str(path), "--out", str(tmp_path / "p.csv")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "outside the data root" in r.stderr
    for cmd in (["predict", bundle, str(path), "--out", str(tmp_path / "p.csv")], ["evaluate", bundle, str(path)]):
        r = subprocess.run(cli + cmd + ["--allow-outside-root"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_rows_with_a_blank_target_are_left_out_counted_and_listed(tmp_path):
    df = make_tabular_text_table(120)
    df["y"] = df["y"].astype(object)
    df.loc[[3, 50, 77], "y"] = [None, "", float("nan")]
    with pytest.warns(UserWarning, match="3 rows with a blank target 'y' were left out"):
        m = MultimodalPredictor(target="y", epochs=1, out=tmp_path / "run", **FAST).fit(df)
    assert m.splits_["blank_target"] == {"train": [3, 50, 77]}
    assert sum(m.splits_["rows"].values()) == 117
    assert "left out for a blank target: 3 rows (3, 50, 77)" in (tmp_path / "run" / "report.md").read_text()
    ev = m.evaluate(df)
    assert ev["n"] == 117 and ev["blank_target_rows"] == [3, 50, 77]
    assert len(m.predict(df)) == 120  # prediction needs no target


def test_skip_policy_predictions_stay_aligned_with_the_input(tmp_path):
    from conftest import make_mm_table

    path = make_mm_table(tmp_path, n=24)
    m = MultimodalPredictor(target="label", epochs=1, preprocessing=SMALL_PREP, **FAST).fit(path)
    (tmp_path / "img" / "4.png").write_bytes(b"junk")
    pred = m.predict(path, on_bad_input="skip")
    proba = m.predict_proba(path, on_bad_input="skip")
    assert len(pred) == 24 and pred[4] is None and all(p is not None for i, p in enumerate(pred) if i != 4)
    assert np.isnan(proba[4]).all() and not np.isnan(np.delete(proba, 4, axis=0)).any()
    assert m.predictor_.skipped_rows() == [4]
    frame = m.predictor_.predict_frame(path, on_bad_input="skip")
    assert frame["skipped"].notna().tolist() == [i == 4 for i in range(24)]
    one = m.predict(path, on_bad_input="skip", batch_size=1)  # a batch whose only row is skipped
    assert one[4] is None and one.tolist()[:4] == pred.tolist()[:4]


def test_resume_refuses_a_run_folder_of_other_data_or_settings(tmp_path):
    df = make_tabular_text_table(80)
    kw = dict(target="y", epochs=1, out=tmp_path / "run", **FAST)
    MultimodalPredictor(**kw).fit(df)
    with pytest.raises(MmfuseError, match="--resume: the checkpoint in .* with model.fusion 'concat', now 'gated'"):
        MultimodalPredictor(fusion="gated", resume=True, **kw).fit(df)
    other = df.copy()
    other.loc[0, "note"] = "something else entirely"
    with pytest.raises(MmfuseError, match="trained on other data"):
        MultimodalPredictor(resume=True, **kw).fit(other)
    with pytest.raises(MmfuseError, match="--resume: .*with other preprocessing of the inputs"):  # other preprocessing options
        MultimodalPredictor(resume=True, preprocessing={"text": {"max_length": 4}}, **kw).fit(df)
    m = MultimodalPredictor(resume=True, decision_threshold=None, **{**kw, "epochs": 2}).fit(df)  # a legitimate resume
    assert m.metrics_["resumed_from_epoch"] == 0


def test_resume_accepts_another_decision_threshold(tmp_path):
    df = make_tabular_text_table(80, task="binary")
    kw = dict(target="y", epochs=1, out=tmp_path / "run", **FAST)
    MultimodalPredictor(decision_threshold=0.3, **kw).fit(df)
    m = MultimodalPredictor(resume=True, decision_threshold=0.4, **{**kw, "epochs": 2}).fit(df)
    assert m.metrics_["resumed_from_epoch"] == 0 and m.predictor_.threshold == 0.4


def test_a_table_too_small_to_split_is_a_clear_error():
    with pytest.raises(MmfuseError, match="the table has 3 labelled rows; splitting off validation rows needs more"):
        MultimodalPredictor(target="y", **FAST).fit(make_tabular_text_table(3))


def test_prediction_needs_at_least_one_input_and_names_the_absent_ones(tmp_path):
    df = make_tabular_text_table(80)
    m = MultimodalPredictor(target="y", epochs=1, **FAST).fit(df)
    with pytest.raises(MmfuseError, match=r"none of the model's inputs is in this table: it reads"):
        m.predict(df[["y"]])
    m.predict(df.drop(columns=["note"]))
    assert m.predictor_.describe_absent() == ("inputs absent from this table, treated as missing in every row: "
                                              "note (columns note)")
    m.predict(df.rename(columns={"note": "notes"}))  # a renamed column is named, not passed over in silence
    assert m.predictor_.describe_absent().endswith("; the table's columns 'notes' (is it 'note'?) are not the "
                                                   "model's (renamed?)")
    m.predict(df.rename(columns={"note": "comment"}))  # nothing close: no guess
    assert m.predictor_.describe_absent().endswith("; the table's columns 'comment' are not the model's (renamed?)")
    with pytest.raises(MmfuseError, match=r"has no target column 'y' to score against"):
        m.evaluate(df.drop(columns=["y"]))


def test_targets_users_write_become_the_right_task():
    df = make_tabular_text_table(90, task="binary")
    bools = df.assign(y=df["y"] == "pos")
    m = MultimodalPredictor(target="y", epochs=1, **FAST).fit(bools)
    assert m.task_.name == "binary" and all(type(v) is bool for v in m.predict(bools))
    spaced = df.assign(y=df["y"].where(df.index % 3 != 0, df["y"] + " "))  # 'pos' and 'pos ' are one class
    s = MultimodalPredictor(target="y", epochs=1, **FAST).fit(spaced)
    assert s.task_.name == "binary" and s.task_.classes_ == ["neg", "pos"]
    two = MultimodalPredictor(target="y", task="multiclass", epochs=1, **FAST).fit(df)  # two classes, softmax
    val = two.metrics_["val"]
    assert 0 <= val["roc_auc_ovr_macro"] <= 1 and val["n"] == two.metrics_["rows"]["val"]
    with pytest.raises(MmfuseError, match="has 4 classes .* a binary target has two"):
        MultimodalPredictor(target="y", task="binary", epochs=1, **FAST).fit(make_tabular_text_table(60))
    numbers = df.assign(y=[str(0.37 * i) for i in range(90)])
    numbers.loc[17, "y"] = "n/a?"
    with pytest.raises(MmfuseError, match="row 17, column 'y': holds 'n/a\\?', but the other values of this target"):
        MultimodalPredictor(target="y", epochs=1, **FAST).fit(numbers)


def test_a_diverging_run_says_so_and_a_val_table_may_lack_an_input():
    df = make_tabular_text_table(80, task="binary")
    with pytest.raises(MmfuseError, match=r"training diverged: .* became (nan|inf).*lower the learning rate"):
        MultimodalPredictor(target="y", epochs=2, lr=1e9, grad_clip=0.0, **FAST).fit(df)
    val = make_tabular_text_table(40, seed=5, task="binary").drop(columns=["note"])
    m = MultimodalPredictor(target="y", epochs=1, **FAST).fit(df, val=val)
    assert m.metrics_["rows"]["val"] == 40


def test_python_callers_get_tables_from_dicts_and_clear_words_for_x_y(tmp_path):
    df = make_tabular_text_table(80)
    m = MultimodalPredictor(target="y", epochs=1, **FAST).fit(df)
    row = df.drop(columns=["y"]).iloc[3]
    one = m.predict(row.to_dict())
    assert one.tolist() == m.predict(df.iloc[[3]]).tolist() == m.predict(row).tolist()
    assert m.predict(df.drop(columns=["y"]).head(3).to_dict("records")).tolist() == m.predict(df.head(3)).tolist()
    with pytest.raises(MmfuseError, match=r"cannot read a table from a int"):
        m.predict(3)
    with pytest.raises(MmfuseError, match=r"not fit\(X, y\)"):
        MultimodalPredictor(target="y", **FAST).fit(df.drop(columns=["y"]), df["y"])
    assert m.score(df) == pytest.approx(m.evaluate(df)["accuracy"])
    reg = make_tabular_text_table(80, task="regression")
    r = MultimodalPredictor(target="y", epochs=1, **FAST).fit(reg)
    assert r.task_.name == "regression" and r.score(reg) == pytest.approx(-r.evaluate(reg)["rmse"])
    assert r.score(reg) < 0
