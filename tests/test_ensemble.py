"""Ensembles: greedy selection with replacement on hand-made predictions, the task's inverse of
decode, and end to end from real cross-validation runs to `mmfuse predict` / `mmfuse evaluate`."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mmfuse import (BundleError, EnsemblePredictor, MmfuseError, MultimodalPredictor, Predictor, build_ensemble,
                    cross_validate, ensemble_selection, evaluate_predictor)
from mmfuse.tasks import create_task

FAST = dict(epochs=1, min_steps=0, progress=False, log=None, contribution=False, batch_size=16)


def log_loss(p, y):
    """Mean log loss of (N, K) probabilities against class ids."""
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def two_class(p_correct, y):
    """(N, 2) probabilities that give the true class ``p_correct``."""
    p = np.empty((len(y), 2))
    p[np.arange(len(y)), y] = p_correct
    p[np.arange(len(y)), 1 - y] = 1 - np.asarray(p_correct)
    return p


# --- selection on hand-made predictions ----------------------------------------------------------
def test_complementary_members_share_the_weight_and_a_useless_one_gets_none():
    """A is right on rows 0-1, B on rows 2-3, C is wrong everywhere. By hand (log loss): A or B alone
    0.857, C 1.204, A+B averaged 0.598 (0.55 on every row). Steps: A (tie with B: the lower index),
    B (0.598), A (0.621: 2/3 and 1.3/3; tie with B), B (0.598): weights 1/2, 1/2, 0."""
    y = np.array([1, 0, 1, 0])
    a, b, c = two_class([.9, .9, .2, .2], y), two_class([.2, .2, .9, .9], y), two_class([.3] * 4, y)
    sel = ensemble_selection([a, b, c], y, log_loss, size=4)
    assert sel.picks == [0, 1, 0, 1]
    np.testing.assert_allclose(sel.weights, [0.5, 0.5, 0.0])
    np.testing.assert_allclose(sel.scores, [-(np.log(.9) + np.log(.2)) / 2, -np.log(.55),
                                        -(np.log(2 / 3) + np.log(1.3 / 3)) / 2, -np.log(.55)])
    assert sel.scores[-1] < min(log_loss(p, y) for p in (a, b, c))


def test_replacement_lets_a_member_be_picked_twice():
    """Values 1 and -2 against 0: the squared error of w·1 + (1-w)·(-2) is 0 at w = 2/3, which three
    steps reach only by picking A twice: A (1), then B ((1-2)/2: 0.25), then A ((1-2+1)/3: 0)."""
    y = np.zeros(2)
    sel = ensemble_selection([np.ones(2), -2 * np.ones(2)], y, lambda p, t: float(np.mean((p - t) ** 2)), size=3)
    assert sel.picks == [0, 1, 0]
    np.testing.assert_allclose(sel.weights, [2 / 3, 1 / 3])
    np.testing.assert_allclose(sel.scores, [1.0, 0.25, 0.0])
    # a metric to maximize: the negated error picks the same
    up = ensemble_selection([np.ones(2), -2 * np.ones(2)], y, lambda p, t: -float(np.mean((p - t) ** 2)), size=3,
                            higher_is_better=True)
    assert up.picks == [0, 1, 0]


def test_ties_go_to_the_lower_index_and_bad_arguments_are_one_line():
    y = np.array([0, 1])
    p = two_class([.8, .8], y)
    assert ensemble_selection([p, p.copy()], y, log_loss, size=3).picks == [0, 0, 0]
    with pytest.raises(MmfuseError, match="ensemble size must be an integer >= 1"):
        ensemble_selection([p], y, log_loss, size=0)
    with pytest.raises(MmfuseError, match="different shapes"):
        ensemble_selection([p, p[:1]], y, log_loss, size=2)


@pytest.mark.parametrize("kind, values, proba", [
    ("multiclass", ["a", "b", "c", "a"], np.array([[.7, .2, .1], [.1, .1, .8]])),
    ("binary", ["n", "y", "n", "y"], np.array([[.3, .7], [.95, .05]])),
    ("multilabel", ["a|b", "b", "a", "b"], np.array([[.9, .2], [.4, .6]])),
    ("regression", [1.0, 3.0, 2.0, 6.0], np.array([2.5, -1.0])),
])
def test_logits_of_is_the_inverse_of_decode(kind, values, proba):
    """An ensemble averages probabilities (values) and decodes task.logits_of(them): that must give
    back the same probabilities, and labels by the task's own rule."""
    task = create_task(kind, "t").fit(pd.DataFrame({"t": values}))
    z = task.logits_of(proba)
    assert tuple(z.shape) == (len(proba), task.n_outputs)
    np.testing.assert_allclose(task.decode(z).proba, proba, atol=1e-6)


# --- end to end on real cross-validation runs ---------------------------------------------------
def table(n=80, seed=0):
    """y depends on a and b equally: a model on `a` alone and one on `b` alone are complementary."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1]})
    df["y"] = np.where(x[:, 0] + x[:, 1] > 0, "pos", "neg")
    return df


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    """Two configurations x 2 folds: one reads only `a`, the other only `b`."""
    root = tmp_path_factory.mktemp("trials")
    df = table()
    dirs = []
    for i, ignore in enumerate(["b", "a"]):
        cross_validate(MultimodalPredictor(target="y", columns={ignore: "ignore"}, **FAST), df, folds=2,
                       out=root / f"trial_{i}")
        dirs.append(root / f"trial_{i}")
    df.to_csv(root / "data.csv", index=False)
    return root, dirs, df


@pytest.fixture(scope="module")
def ensemble(trials):
    root, dirs, _ = trials
    res = build_ensemble(dirs, size=10, out=root / "ensemble")
    return res


def by_hand(dirs, weights, df):
    """Σ_m w_m · (1/K) Σ_k p_{m,k}: each member's fold bundles loaded and averaged by hand."""
    total = 0
    for d, w in zip(dirs, weights):
        folds = sorted(d.glob("fold_*/bundle"))
        total = total + w * np.mean([Predictor.load(f).predict_proba(df) for f in folds], axis=0)
    return total


def test_build_ensemble_selects_weights_and_scores_them_on_the_out_of_fold_rows(trials, ensemble):
    root, dirs, df = trials
    res = ensemble
    assert res["bundle"] == str(root / "ensemble") and res["metric"] == "accuracy" and "optimistic" in res["note"]
    weights = {m["trial_dir"]: m["weight"] for m in res["members"]}
    assert sum(weights.values()) == pytest.approx(1) and all(w > 0 for w in weights.values())
    # the pooled log loss, by hand from the trials' oof.csv: -mean log(Σ w p_true)
    w = [next((t["weight"] for t in res["trials"] if t["trial_dir"] == str(d)), 0.0) for d in dirs]
    oofs = [pd.read_csv(d / "oof.csv").set_index("row").sort_index() for d in dirs]
    p_true = sum(wi * np.where(o["target"] == "pos", o["proba_pos"], o["proba_neg"]) for wi, o in zip(w, oofs))
    assert res["pooled"]["log_loss"] == pytest.approx(-np.mean(np.log(p_true)), rel=1e-5)
    # per fold, then averaged: comparable with a trial's cv.json mean
    folds = oofs[0]["fold"]
    accs = [np.mean((sum(wi * o["proba_pos"] for wi, o in zip(w, oofs))[folds == f] >= .5) ==
                    (oofs[0]["target"][folds == f] == "pos")) for f in (1, 2)]
    assert res["cv"]["accuracy"] == pytest.approx(np.mean(accs))  # the saved weights, on the rows they were chosen on
    meta = json.loads((root / "ensemble" / "ensemble.json").read_text())
    assert meta["format"] == 1 and [m["weight"] for m in meta["members"]] == [m["weight"] for m in res["members"]]
    assert sorted(p.name for p in (root / "ensemble" / "members" / "0").iterdir()) == ["fold_1", "fold_2"]
    assert (root / "ensemble" / "members" / "0" / "fold_1" / "model.safetensors").is_file()
    assert not list(root.glob(".ensemble.tmp*"))  # written atomically, nothing left behind


def test_ensemble_score_cross_validates_the_selection(trials, ensemble):
    """score/std: each fold's weights are chosen on the other folds' out-of-fold rows only, then scored on
    this fold's rows, so the ensemble's score is as honest as a trial's and can be ranked beside them."""
    root, dirs, df = trials
    oofs = [pd.read_csv(d / "oof.csv").set_index("row").sort_index() for d in dirs]
    folds, y = oofs[0]["fold"].to_numpy(), (oofs[0]["target"] == "pos").to_numpy()
    probas = [o[["proba_neg", "proba_pos"]].to_numpy() for o in oofs]

    def log_loss(p, t):
        return -float(np.mean(np.log(np.where(t, p[:, 1], p[:, 0]))))

    accs, weights = [], []
    for f in (1, 2):
        sel = ensemble_selection([p[folds != f] for p in probas], y[folds != f], log_loss, 10)
        weights.append(sel.weights.tolist())
        p = sum(w * q[folds == f] for w, q in zip(sel.weights, probas))
        accs.append(np.mean((p[:, 1] >= .5) == y[folds == f]))
    assert ensemble["score"] == pytest.approx(np.mean(accs))
    assert ensemble["std"] == pytest.approx(np.std(accs, ddof=1))
    assert ensemble["summary"]["accuracy"]["mean"] == ensemble["score"]
    assert weights[0] != weights[1]  # the two folds choose differently: the score is not the saved weights' score
    assert ensemble["score"] != pytest.approx(ensemble["cv"]["accuracy"])


def test_rows_a_trial_skipped_are_left_out_of_the_selection_with_a_note(trials, tmp_path):
    root, dirs, df = trials
    copies = []
    for d in dirs:
        shutil.copytree(d, tmp_path / d.name)
        copies.append(tmp_path / d.name)
    oof = pd.read_csv(copies[1] / "oof.csv")
    skipped = oof["row"].iloc[:3].tolist()
    oof.loc[:2, ["proba_pos", "proba_neg"]] = np.nan  # as on_bad_input="skip" leaves them
    oof.to_csv(copies[1] / "oof.csv", index=False)
    lines = []
    res = build_ensemble(copies, size=5, out=tmp_path / "ens", echo=lines.append)
    assert any("3 rows without a prediction in some trial" in l and ", ".join(map(str, skipped)) in l for l in lines)
    assert np.isfinite(res["score"]) and res["pooled"]["n"] == len(df) - 3


def test_loaded_ensemble_predicts_the_weighted_average_of_the_members_fold_bundles(trials, ensemble):
    root, dirs, df = trials
    ens = Predictor.load(root / "ensemble")
    assert isinstance(ens, EnsemblePredictor) and isinstance(ens, Predictor)
    weights = [next((m["weight"] for m in ensemble["members"] if m["trial_dir"] == str(d)), 0.0) for d in dirs]
    assert all(0 < w < 1 for w in weights)  # both members count, so the weighting is exercised
    expected = by_hand(dirs, weights, df)
    np.testing.assert_allclose(ens.predict_proba(df), expected, atol=1e-6)
    assert list(ens.predict(df)) == list(np.where(expected[:, 1] >= 0.5, "pos", "neg"))
    frame = ens.predict_frame(df)
    assert list(frame.columns) == ["row", "prediction", "proba_neg", "proba_pos"]
    # a row no member read any input of is named; one that a member still read is not
    gap = df.copy()
    gap.loc[2, "a"], gap.loc[4, "a"], gap.loc[4, "b"] = np.nan, np.nan, np.nan
    ens.predict_frame(gap)
    assert ens.last_no_input == [4]
    # evaluate_predictor: the task's metrics of the averaged probabilities
    m = evaluate_predictor(ens, df)
    assert m["n"] == len(df)
    assert m["accuracy"] == pytest.approx(np.mean(np.where(expected[:, 1] >= .5, "pos", "neg") == df["y"]))
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(np.where(df["y"] == "pos", expected[:, 1],
                                                                     expected[:, 0]))), rel=1e-4)
    # save again (each fold bundle re-saved) and load: same predictions
    again = Predictor.load(ens.save(root / "ensemble_copy"))
    np.testing.assert_allclose(again.predict_proba(df), expected, atol=1e-6)


def test_cli_predict_and_evaluate_take_an_ensemble_folder(trials, ensemble, capsys):
    from mmfuse.cli import main

    root, dirs, df = trials
    main(["predict", str(root / "ensemble"), str(root / "data.csv"), "--out", str(root / "pred.csv")])
    pred = pd.read_csv(root / "pred.csv")
    ens = Predictor.load(root / "ensemble")
    np.testing.assert_allclose(pred[["proba_neg", "proba_pos"]].to_numpy(), ens.predict_proba(df), atol=1e-5)
    main(["evaluate", str(root / "ensemble"), str(root / "data.csv"), "--out", str(root / "eval")])
    out = capsys.readouterr().out
    acc = evaluate_predictor(ens, df)["accuracy"]
    assert f"{acc:.4f}" in out and "report written" in out
    written = json.loads((root / "eval" / "metrics.json").read_text())
    assert written["fusion"].startswith("ensemble of 2: trial_0") and written["test"]["accuracy"] == acc


def test_a_broken_ensemble_folder_is_one_line(trials, ensemble, capsys):
    from mmfuse.cli import main

    root, _, _ = trials
    bad = root / "broken"
    shutil.copytree(root / "ensemble", bad)
    meta = (bad / "ensemble.json").read_text()
    (bad / "ensemble.json").write_text(meta[: len(meta) // 2])
    with pytest.raises(BundleError, match=r"broken' is damaged: ensemble.json is not valid JSON .*truncated"):
        Predictor.load(bad)
    with pytest.raises(SystemExit):
        main(["predict", str(bad), str(root / "data.csv"), "--out", str(root / "p.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bundle") and "ensemble.json is not valid JSON" in err[0]
    d = json.loads(meta)
    (bad / "ensemble.json").write_text(json.dumps({**d, "format": 99}))
    with pytest.raises(BundleError, match="has format 99 .* this mmfuse reads format 1"):
        Predictor.load(bad)
    (bad / "ensemble.json").write_text(json.dumps({**d, "members": [{**m, "weight": 0.3} for m in d["members"]]}))
    with pytest.raises(BundleError, match="weights sum to 0.6, not 1"):
        Predictor.load(bad)
    (bad / "ensemble.json").write_text(meta)
    shutil.rmtree(bad / "members" / "0" / "fold_2")
    with pytest.raises(BundleError, match="damaged: member 0 lacks its fold bundle members/0/fold_2"):
        Predictor.load(bad)


def test_trials_are_aligned_by_row_id_and_on_different_rows_are_refused(trials, ensemble, tmp_path):
    _, dirs, _ = trials
    other = tmp_path / "other"
    shutil.copytree(dirs[1], other)
    oof = pd.read_csv(other / "oof.csv")
    oof.sample(frac=1, random_state=0).to_csv(other / "oof.csv", index=False)  # same rows, another order
    shuffled = build_ensemble([dirs[0], other], size=10, out=tmp_path / "shuffled")
    assert [m["weight"] for m in shuffled["members"]] == [m["weight"] for m in ensemble["members"]]
    assert shuffled["pooled"]["log_loss"] == pytest.approx(ensemble["pooled"]["log_loss"])
    oof.iloc[1:].to_csv(other / "oof.csv", index=False)  # one row fewer
    with pytest.raises(MmfuseError, match=r"predicted different rows out of fold \(80 and 79 rows"):
        build_ensemble([dirs[0], other], size=3, out=tmp_path / "ens")
    oof.assign(row=oof["row"] + 1000).to_csv(other / "oof.csv", index=False)  # as many rows, other ids
    with pytest.raises(MmfuseError, match="different rows"):
        build_ensemble([dirs[0], other], size=3, out=tmp_path / "ens")
    assert not (tmp_path / "ens").exists()
    (other / "oof.csv").unlink()
    with pytest.raises(MmfuseError, match="other' has no oof.csv: it is not a finished cross-validation run"):
        build_ensemble([dirs[0], other], size=3, out=tmp_path / "ens")


def test_a_regression_ensemble_averages_values_across_folds_with_their_own_scales(tmp_path):
    """Each fold standardizes the target with its own mean and std; the ensemble averages values in
    the target's units, whatever scale its task keeps."""
    df = table()
    df["y"] = 10 + 5 * (df["a"] + df["b"])
    df["g"] = np.arange(len(df)) % 8  # group k-fold
    dirs = []
    for i, ignore in enumerate(["b", "a"]):
        cross_validate(MultimodalPredictor(target="y", columns={ignore: "ignore"}, **FAST), df, folds=2,
                       group_column="g", out=tmp_path / f"r{i}")
        dirs.append(tmp_path / f"r{i}")
    res = build_ensemble(dirs, size=4, out=tmp_path / "ens")
    assert res["metric"] == "rmse"
    weights = [next((m["weight"] for m in res["members"] if m["trial_dir"] == str(d)), 0.0) for d in dirs]
    ens = Predictor.load(tmp_path / "ens")
    np.testing.assert_allclose(ens.predict(df), by_hand(dirs, weights, df), rtol=1e-5)
    oofs = [pd.read_csv(d / "oof.csv").set_index("row").sort_index() for d in dirs]
    pred = sum(w * o["prediction"] for w, o in zip(weights, oofs))
    assert res["pooled"]["rmse"] == pytest.approx(np.sqrt(np.mean((pred - oofs[0]["target"]) ** 2)), rel=1e-5)


def test_selection_keeps_the_best_prefix_of_its_steps():
    """a = +1 and b = -1 against y = 0: two steps reach the perfect 0 (a + b) / 2; a third step can only make
    it worse (1/9). Caruana's rule keeps the best prefix: weights 1/2, 1/2, not 2/3, 1/3."""
    from mmfuse.ensemble import ensemble_selection

    mse = lambda p, y: float(np.mean((p - y) ** 2))  # noqa: E731
    a, b, y = np.ones(4), -np.ones(4), np.zeros(4)
    sel = ensemble_selection([a, b], y, mse, size=3)
    assert sel.picks == [0, 1, 0] and sel.scores == pytest.approx([1.0, 0.0, 1 / 9])
    assert sel.steps == 2 and sel.weights.tolist() == [0.5, 0.5]
    assert ensemble_selection([a, b], y, mse, size=3, use_best=False).weights == pytest.approx([2 / 3, 1 / 3])


def test_members_with_one_frozen_backbone_embed_each_row_once(tmp_path, monkeypatch):
    """An ensemble of K fold bundles per member: the members' shared frozen backbone embeds the rows once per
    prediction (a temporary cache for the call), not once per fold bundle; the prediction is unchanged."""
    import hf_fixtures as H
    from conftest import count_reads, word_table

    df = word_table(40)
    enc = {"note": {"name": "hf", "model": str(H.tiny_bert(tmp_path / "bert")), "train": "frozen"}}
    dirs = []
    for i, dim in enumerate((8, 16)):
        cross_validate(MultimodalPredictor(target="y", encoders=enc, cache=str(tmp_path / "c"),
                                           **{**FAST, "dim": dim}), df, folds=2, out=tmp_path / f"t{i}")
        dirs.append(tmp_path / f"t{i}")
    build_ensemble(dirs, size=4, out=tmp_path / "ens")
    ens = Predictor.load(tmp_path / "ens")
    if len(ens.members) < 2:  # the selection kept one trial: give both a weight, to have 4 fold bundles
        ens = EnsemblePredictor([m for d in dirs for m in [[Predictor.load(f) for f in sorted(d.glob("fold_*/bundle"))]]],
                                [0.5, 0.5], ens.target, ens.config)
    new = df.drop(columns="y").assign(note=df["note"] + " new")  # rows no cache has seen
    expected = sum(w * np.mean([b.predict_proba(new) for b in folds], axis=0) for w, folds in zip(ens.weights, ens.members))
    embedded = count_reads(monkeypatch, "note")
    got = ens.predict_proba(new)
    assert sorted(embedded) == list(range(40))  # once, though 4 fold bundles read them
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
