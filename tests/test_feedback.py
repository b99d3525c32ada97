"""The feedback loop: fit --init-from (preprocessors and weights kept, schema checked, new classes only with a
new head, replay of old rows) and compare (paired bootstrap, differing rows)."""
import json

import numpy as np
import pandas as pd
import pytest

from mmfuse import MmfuseError, MultimodalPredictor
from mmfuse.bundle import Predictor
from mmfuse.cli import main
from mmfuse.errors import SchemaError
from mmfuse.feedback import compare, replay_rows


def table(n, seed, lo, hi, flip=False, classes=("a", "b")):
    """x decides the region; the label is the sign of z (flipped where ``flip``), so one rule per region."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, n)
    z = rng.normal(size=n)
    y = np.where((z > 0) != flip, classes[1], classes[0])
    return pd.DataFrame({"x": x, "z": z, "c": rng.choice(["u", "v"], n), "y": y})


KW = dict(target="y", progress=False, log=None, contribution=False, seed=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("feedback")
    old = table(400, 0, -3, -1)
    MultimodalPredictor(epochs=15, lr=3e-3, **KW).fit(old).save(d / "base")
    return d / "base", old


def test_continued_training_keeps_the_preprocessors_and_starts_from_the_weights(base, tmp_path):
    path, old = base
    new = table(300, 1, 1, 3)  # another region: a refitted scaler would see other means
    m = MultimodalPredictor(init_from=path, epochs=1, lr=1e-12, **KW).fit(new)
    b = Predictor.load(path)
    for name, p in b.preprocessors.items():
        s0, s1 = p.get_state(), m.predictor_.preprocessors[name].get_state()
        assert s0[0] == s1[0] and all(np.array_equal(s0[1][k], s1[1][k]) for k in s0[1])
    # a learning rate of ~0: the continued model predicts what the bundle predicted, row for row
    np.testing.assert_allclose(m.predict_proba(old), b.predict_proba(old), atol=1e-5)
    assert m.metrics_["init_from"]["new_head"] is False and m.metrics_["init_from"]["bundle"] == str(path)


def test_the_table_must_hold_the_bundles_columns_and_labels(base, tmp_path):
    path, _ = base
    with pytest.raises(SchemaError, match=r"does not match the bundle's schema: it lacks the column\(s\) 'z'"):
        MultimodalPredictor(init_from=path, epochs=1, **KW).fit(table(100, 2, 1, 3).drop(columns=["z"]))
    with pytest.raises(MmfuseError, match=r"1 label\(s\) the bundle does not know: 'c'.*--new-head"):
        MultimodalPredictor(init_from=path, epochs=1, **KW).fit(table(100, 2, 1, 3, classes=("a", "c")))
    with pytest.raises(MmfuseError, match="keeps the bundle's model; fusion cannot change"):
        MultimodalPredictor(init_from=path, epochs=1, fusion="gated", **KW).fit(table(100, 2, 1, 3))
    with pytest.raises(MmfuseError, match="predicts 'y', not 'z'"):
        MultimodalPredictor(init_from=path, epochs=1, **{**KW, "target": "z"}).fit(table(100, 2, 1, 3))
    with pytest.raises(MmfuseError, match="replay_fraction needs replay=TABLE"):
        MultimodalPredictor(init_from=path, epochs=1, replay_fraction=0.3, **KW).fit(table(100, 2, 1, 3))


def test_a_new_head_keeps_the_old_classes_outputs(base, tmp_path):
    path, old = base
    new = table(300, 3, -3, -1, classes=("a", "c"))  # binary a/b before: now a, b, c
    new.loc[new.index[:100], "y"] = "b"
    m = MultimodalPredictor(init_from=path, new_head=True, epochs=1, lr=1e-12, **KW)
    with pytest.warns(UserWarning, match="becomes multiclass"):
        m.fit(new)
    assert m.classes_ == ["a", "b", "c"] and m.task_.name == "multiclass"
    assert m.metrics_["init_from"]["new_head"] and m.metrics_["init_from"]["classes_before"] == ["a", "b"]
    b = Predictor.load(path)
    body = {k: v for k, v in b.model.state_dict().items() if not k.startswith("head")}
    new_state = m.predictor_.model.state_dict()
    assert all(torch_equal(v, new_state[k]) for k, v in body.items())  # everything but the output layer kept


def torch_equal(a, b):
    return a.shape == b.shape and bool((a == b).all())


def test_a_new_head_on_a_multiclass_bundle_copies_each_old_class_row(tmp_path):
    old = table(300, 4, -3, 3, classes=("a", "c"))
    old.loc[old.index[:100], "y"] = "b"
    MultimodalPredictor(epochs=2, **KW).fit(old).save(tmp_path / "b3")
    new = old.copy()
    new.loc[new.index[:60], "y"] = "ab"  # sorts between a and b: every old class moves to another output
    m = MultimodalPredictor(init_from=tmp_path / "b3", new_head=True, epochs=1, lr=1e-12, **KW).fit(new)
    assert m.classes_ == ["a", "ab", "b", "c"]
    zb, _ = Predictor.load(tmp_path / "b3").logits(old)
    zn, _ = m.predictor_.logits(old)
    np.testing.assert_allclose(zn[:, [0, 2, 3]].numpy(), zb.numpy(), atol=1e-4)  # a, b, c: their old logits


def test_replay_mixes_old_rows_in_and_limits_forgetting(base, tmp_path):
    path, old = base
    new = table(400, 5, 1, 3, flip=True)  # the opposite rule in another region
    check = table(400, 6, -3, -1)  # held-out rows of the old region and rule
    plain = MultimodalPredictor(init_from=path, epochs=15, lr=3e-3, **KW).fit(new)
    old.to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    mixed = MultimodalPredictor(init_from=path, replay=tmp_path / "old.csv", replay_fraction=0.5, epochs=15, lr=3e-3,
                                **KW).fit(tmp_path / "new.csv")
    info = mixed.metrics_["init_from"]
    n_train = mixed.metrics_["rows"]["train"]
    assert info["replay_rows"] == info["replay_wanted"] == round((n_train - info["replay_rows"]) * 0.5 / 0.5)
    acc_plain, acc_mixed = plain.score(check), mixed.score(check)
    assert acc_mixed > acc_plain + 0.2, (acc_plain, acc_mixed)  # without replay the old rule is forgotten
    assert mixed.score(table(400, 7, 1, 3, flip=True)) > 0.8  # and the new one is learned


def test_replay_rows_counts():
    old = pd.DataFrame({"a": range(100)})
    rows, note = replay_rows(old, 60, 0.25, seed=1)
    assert len(rows) == 20 and note["replay_fraction"] == 0.25 and rows.index.is_unique
    rows, note = replay_rows(old, 600, 0.5, seed=1)  # 600 wanted, 100 there: all of them, and said so
    assert len(rows) == 100 and note["replay_wanted"] == 600 and note["replay_rows"] == 100
    with pytest.raises(MmfuseError, match=r"replay_fraction must be in \[0, 1\)"):
        replay_rows(old, 10, 1.0)


def test_compare_a_bundle_with_itself_and_with_a_changed_one(base, tmp_path):
    path, old = base
    a = Predictor.load(path)
    same = compare(a, a, old, n_boot=50)
    assert same["n_differing"] == 0 and all(m["difference"] == 0 and m["ci95"] == [0, 0]
                                            for m in same["metrics"].values())
    flipped = table(300, 8, -3, -1, flip=True)
    MultimodalPredictor(init_from=path, epochs=10, lr=3e-3, out=tmp_path / "run", **KW).fit(flipped)
    b = Predictor.load(tmp_path / "run" / "bundle")
    check = table(300, 9, -3, -1, flip=True)
    res = compare(a, b, check, n_boot=200, seed=0)
    acc = res["metrics"]["accuracy"]
    assert acc["A"] == pytest.approx((a.predict(check) == check["y"]).mean())
    assert acc["B"] == pytest.approx((b.predict(check) == check["y"]).mean())
    assert acc["difference"] > 0.3 and acc["ci95"][0] > 0  # B learned the flipped rule: clearly better
    assert acc["ci95"][0] <= acc["difference"] <= acc["ci95"][1]
    d = res["differing"]
    assert len(d) == res["n_differing"] == int((a.predict(check) != b.predict(check)).sum())
    assert (d["prediction_A"] != d["prediction_B"]).all()


def test_cli_fit_init_from_and_compare(base, tmp_path, capsys):
    path, old = base
    new = table(200, 10, 1, 3)
    new.to_csv(tmp_path / "new.csv", index=False)
    main(["fit", str(tmp_path / "new.csv"), "--init-from", str(path), "--epochs", "1", "--out", str(tmp_path / "r"),
          "--no-progress"])  # --target: the bundle's own
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["init_from"]["bundle"] == str(path)
    old.to_csv(tmp_path / "old.csv", index=False)
    capsys.readouterr()
    main(["compare", str(path), str(tmp_path / "r" / "bundle"), str(tmp_path / "old.csv"), "--boot", "50",
          "-o", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert "400 rows scored by both" in out and "accuracy" in out and "95% interval (50 resamples)" in out
    body = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert body["rows"] == 400 and len(pd.read_csv(tmp_path / "cmp" / "differing_rows.csv")) == body["n_differing"]
    with pytest.raises(SystemExit) as e:
        main(["fit", str(tmp_path / "new.csv"), "-t", "y", "--replay", str(tmp_path / "old.csv"), "--out",
              str(tmp_path / "r2")])
    assert e.value.code == 2 and "give --init-from BUNDLE" in capsys.readouterr().err


def test_compare_an_old_bundle_with_its_new_head_on_rows_with_the_new_class(base, tmp_path):
    path, old = base
    new = table(300, 11, -3, -1, classes=("a", "d"))
    new.loc[new.index[:100], "y"] = "b"
    m = MultimodalPredictor(init_from=path, new_head=True, epochs=2, out=tmp_path / "r", **KW)
    with pytest.warns(UserWarning):
        m.fit(new)
    check = table(200, 12, -3, -1, classes=("a", "d"))
    check.loc[check.index[:50], "y"] = "b"
    check.loc[check.index[50], "y"] = None  # a blank label: left out too
    res = compare(Predictor.load(path), Predictor.load(tmp_path / "r" / "bundle"), check, n_boot=20)
    n_d = int((check["y"] == "d").sum())
    assert res["unknown_labels"] == ["d"] and res["rows_unscorable"] == n_d + 1 and res["rows"] == 200 - n_d - 1
    assert "threshold" not in res["metrics"] and "accuracy" in res["metrics"]


def test_a_new_class_only_in_the_validation_rows_and_numeric_labels(tmp_path):
    old = table(300, 13, -3, 3)
    old["y"] = (old["y"] == "b").astype(int)  # numeric labels 0 / 1
    MultimodalPredictor(epochs=1, **KW).fit(old).save(tmp_path / "b")
    new = old.copy()
    new["split"] = ["val" if i < 60 else "train" for i in range(len(new))]
    new.loc[new.index[:5], "y"] = 2  # the new class only among the validation rows
    m = MultimodalPredictor(init_from=tmp_path / "b", new_head=True, epochs=1, **KW)
    with pytest.warns(UserWarning):
        m.fit(new)
    assert m.classes_ == ["0", "1", "2"] and all(isinstance(v, (int, np.integer)) for v in m.predict(old.iloc[:5]))
