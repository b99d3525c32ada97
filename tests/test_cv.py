"""Cross-validation: folds, leakage, resume after a kill, parallel folds, outputs and errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmfuse import MmfuseError, MultimodalPredictor, Predictor, cross_validate, make_folds

FAST = dict(epochs=2, min_steps=0, progress=False, log=None, contribution=False, batch_size=32)


def table(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "subject": [f"s{i % 5}" for i in range(n)]})
    df["y"] = np.where(x[:, 0] + 0.3 * x[:, 1] > 0, "pos", "neg")
    return df


# --- folds --------------------------------------------------------------------------------------
def test_stratified_folds_cover_every_row_once_and_spread_each_class():
    y = pd.Series(["a"] * 30 + ["b"] * 12 + ["c"] * 5)
    folds = make_folds(y, 4, seed=1)
    rows = np.concatenate([f.test for f in folds])
    assert sorted(rows) == list(range(len(y)))
    for c in "abc":
        per_fold = [int((y.iloc[f.test] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 1  # each class starts where the last left off


def test_group_folds_never_split_a_group_and_leave_one_out_has_one_fold_per_group():
    g = pd.Series(["p", "p", "q", "r", "r", "r", "s", "t", "t", "u"], name="subject")
    folds = make_folds(None, 3, g, seed=0)
    seen = {}
    for f in folds:
        for grp in g.iloc[f.test]:
            assert seen.setdefault(grp, f.index) == f.index
        assert sorted(set(g.iloc[f.test])) == f.groups
    assert sorted(np.concatenate([f.test for f in folds])) == list(range(10))
    logo = make_folds(None, groups=g, scheme="leave_one_group_out")
    assert [f.groups for f in logo] == [["p"], ["q"], ["r"], ["s"], ["t"], ["u"]]
    assert [f.name for f in logo][:2] == ["subject=p", "subject=q"]


def test_a_class_seen_only_in_a_held_out_fold_is_refused_before_any_fit(tmp_path):
    df = table(60)
    df.loc[df["subject"] == "s0", "y"] = "rare"  # only subject s0 has it: leaving s0 out, no fold can learn it
    df.loc[0, "y"] = "rare"
    with pytest.raises(MmfuseError, match="subject=s0: class 'rare' occurs only in the held-out rows"):
        cross_validate(MultimodalPredictor(target="y", **FAST), df[df.index > 0], leave_one_out="subject",
                       out=tmp_path / "cv")
    assert not list((tmp_path / "cv").glob("fold_*"))


def test_fold_errors_are_one_clear_line():
    with pytest.raises(MmfuseError, match="folds must be an integer >= 2"):
        make_folds(pd.Series(list("ab")), 1)
    with pytest.raises(MmfuseError, match="3 folds need at least 3 groups; there are 2"):
        make_folds(None, 3, pd.Series(list("aabb")))
    with pytest.raises(MmfuseError, match="unknown cross-validation scheme 'strat'.*stratified"):
        make_folds(pd.Series(list("abab")), 2, scheme="strat")


# --- fits ---------------------------------------------------------------------------------------
def test_preprocessors_of_a_fold_never_see_its_held_out_rows(tmp_path):
    """The held-out rows carry huge values of `b`: a scaler fitted on all rows would be centred far
    from 0. Each fold's scaler must match its own training rows (its inner training split)."""
    df = table(90)
    folds = make_folds(df["y"], 3, seed=0)
    # make one fold's rows extreme: if its scaler saw them, its centre moves by thousands
    df.loc[folds[0].test, "b"] = 1e4
    res = cross_validate(MultimodalPredictor(target="y", **FAST), df, folds=3, out=tmp_path / "cv")
    for f in res.folds:
        pred = Predictor.load(tmp_path / "cv" / f"fold_{f['fold'] + 1}" / "bundle")
        num = pred.preprocessors["tabular"].num
        centre_b = float(num.center_[num.columns.index("b")] if hasattr(num, "columns") else num.center_[1])
        if f["fold"] == 0:
            assert abs(centre_b) < 5, centre_b  # the 1e4 rows were held out: never seen
        else:
            assert centre_b > 100, centre_b  # they were training rows of the other folds
    for f in res.folds:  # the rows that trained and early-stopped each fold's model exclude its held-out rows
        ids = json.loads((tmp_path / "cv" / f"fold_{f['fold'] + 1}" / "fold.json").read_text())["ids"]
        held = set(folds[f["fold"]].test)
        assert not (set(ids["train"]) | set(ids["val"])) & held
        assert set(ids["train"]) | set(ids["val"]) | held == set(range(90))
    oof = res.oof
    assert sorted(oof["row"]) == list(range(90)) and oof["row"].is_unique
    assert set(oof.loc[oof["row"].isin(folds[0].test), "fold"]) == {1}


def test_the_tables_own_test_rows_never_enter_a_fold(tmp_path):
    """A table with a split column keeps its test rows for the final model: cross-validation (and so
    search and the alpha sweep, which run on it) neither trains, early-stops nor scores on them."""
    df = table(90).assign(split=["test" if i % 6 == 0 else "train" for i in range(90)])
    df.loc[df["split"] == "test", "b"] = 1e4  # a scaler that saw them would be centred far from 0
    lines = []
    res = cross_validate(MultimodalPredictor(target="y", **FAST), df, folds=3, out=tmp_path / "cv", echo=lines.append)
    test_rows = set(df.index[df["split"] == "test"])
    assert any("held out 15 rows whose 'split' is 'test'" in line for line in lines)
    assert not set(res.oof["row"]) & test_rows and len(res.oof) == 75
    for f in res.folds:
        pred = Predictor.load(tmp_path / "cv" / f"fold_{f['fold'] + 1}" / "bundle")
        num = pred.preprocessors["tabular"].num
        assert abs(float(num.center_[num.columns.index("b")] if hasattr(num, "columns") else num.center_[1])) < 5
        ids = json.loads((tmp_path / "cv" / f"fold_{f['fold'] + 1}" / "fold.json").read_text())["ids"]
        assert not (set(ids["train"]) | set(ids["val"])) & test_rows
    d = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert d["scheme"]["held_out_test_rows"] == 15 and "15 rows of the table's test split held out" in (
        tmp_path / "cv" / "cv.md").read_text()


def test_cv_outputs_summary_and_blank_targets(tmp_path):
    df = table(100)
    df.loc[[3, 50], "y"] = None
    lines = []
    res = cross_validate(MultimodalPredictor(target="y", **FAST), df, folds=3, out=tmp_path / "cv", echo=lines.append)
    assert res.left_out == [3, 50] and any("left out 2 rows with a blank target" in l for l in lines)
    d = json.loads((tmp_path / "cv" / "cv.json").read_text())
    accs = [f["metrics"]["accuracy"] for f in d["folds"]]
    assert d["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert d["summary"]["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert d["summary"]["accuracy"]["median"] == pytest.approx(np.median(accs))
    assert sum(f["rows"]["test"] for f in d["folds"]) == 98
    md = (tmp_path / "cv" / "cv.md").read_text()
    assert "| **median** |" in md and "stratified 3-fold" in md
    oof = pd.read_csv(tmp_path / "cv" / "oof.csv")
    assert len(oof) == 98 and {"prediction", "proba_pos", "proba_neg", "fold", "target"} <= set(oof.columns)


def test_roles_are_inferred_once_on_the_whole_table_not_per_fold(tmp_path):
    """A 0..n-1 row counter is an id in the table; a fold's training rows hold only part of it, which read
    alone looks like a number, and would become a feature (a leak) in that fold alone."""
    df = table(60).assign(row_no=range(60))
    cross_validate(MultimodalPredictor(target="y", **FAST), df, folds=3, out=tmp_path / "cv")
    for k in (1, 2, 3):
        cfg = json.loads((tmp_path / "cv" / f"fold_{k}" / "bundle" / "config.json").read_text())
        assert cfg["schema"]["columns"]["row_no"] == "id"


def test_group_cv_keeps_groups_apart_also_in_the_inner_validation_split(tmp_path):
    df = table(100)
    res = cross_validate(MultimodalPredictor(target="y", **FAST), df, leave_one_out="subject", out=tmp_path / "cv")
    assert [f["groups"] for f in res.folds] == [[f"s{i}"] for i in range(5)]
    for f in res.folds:  # the inner validation rows are whole subjects too: 20 rows each here
        assert f["rows"]["val"] % 20 == 0 and f["rows"]["test"] == 20
        plan = json.loads((tmp_path / "cv" / f"fold_{f['fold'] + 1}" / "metrics.json").read_text())["plan"]
        assert "subject" not in plan["inputs"]  # the group column is not an input


def test_same_settings_resume_other_settings_refuse(tmp_path):
    df = table(60)
    est = MultimodalPredictor(target="y", **FAST)
    cross_validate(est, df, folds=2, out=tmp_path / "cv")
    lines = []
    cross_validate(est, df, folds=2, out=tmp_path / "cv", echo=lines.append)
    assert sum("not fitted again" in l for l in lines) == 2
    with pytest.raises(MmfuseError, match="other settings; pass overwrite=True"):
        cross_validate(MultimodalPredictor(target="y", **{**FAST, "epochs": 3}), df, folds=2, out=tmp_path / "cv")
    with pytest.raises(MmfuseError, match="other folds"):
        cross_validate(est, df, folds=3, out=tmp_path / "cv")
    cross_validate(est, df, folds=3, out=tmp_path / "cv", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "cv").glob("fold_*")) == ["fold_1", "fold_2", "fold_3"]


SCRIPT = """
import sys, numpy as np, pandas as pd
sys.path.insert(0, {tests!r})
from test_cv import FAST, table
from mmfuse import MultimodalPredictor, cross_validate
if __name__ == "__main__":
    cross_validate(MultimodalPredictor(target="y", **{{**FAST, "epochs": 3}}), table(150), folds=3,
                   out={out!r}, jobs=int(sys.argv[1]), echo=lambda l: print(l, flush=True))
"""


def _run(script: Path, jobs: int, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(jobs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, **kw)


def test_a_killed_cv_run_resumes_without_refitting_finished_folds(tmp_path):
    out = tmp_path / "cv"
    script = tmp_path / "run_cv.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    p = _run(script, 1)
    deadline = time.monotonic() + 300
    while not (out / "fold_1" / "fold.json").exists():
        assert p.poll() is None, p.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = json.loads((out / "fold_1" / "fold.json").read_text())
    assert not (out / "fold_3" / "fold.json").exists()  # killed before the end
    p = _run(script, 1)
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log
    assert "fold 1: done in an earlier run" in log
    assert json.loads((out / "fold_1" / "fold.json").read_text()) == first  # not fitted again
    d = json.loads((out / "cv.json").read_text())
    assert [f["fold"] for f in d["folds"]] == [0, 1, 2] and d["folds"][0]["reused"] is True


def test_ctrl_c_stops_cv_with_one_line_and_an_unfinished_report(tmp_path):
    table(150).to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "cv"
    p = subprocess.Popen([sys.executable, "-m", "mmfuse.cli", "cv", str(tmp_path / "t.csv"), "-t", "y", "--folds", "3",
                          "--epochs", "60", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (a run started in the
    # background, as by nohup or some CI runners, would hand it SIGINT ignored, and Python would then keep it so)
    deadline = time.monotonic() + 300
    while not ((out / "fold_1" / "fold.json").exists() and (out / "cv.json").exists()):  # fold 1 done and counted
        assert p.poll() is None and time.monotonic() < deadline, p.stdout.read()
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    log = p.communicate(timeout=120)[0]
    assert p.returncode == 130, log
    assert log.strip().splitlines()[-1] == (f"cross-validation interrupted: 1 of 3 folds finished are kept in {out}; "
                                            "the same command resumes from them")
    assert "Traceback" not in log
    assert "**Unfinished: 1 of 3 folds so far.**" in (out / "cv.md").read_text()


def test_parallel_folds_give_the_same_results_as_serial(tmp_path):
    scores = {}
    for jobs in (1, 2):
        out = tmp_path / f"cv{jobs}"
        script = tmp_path / f"run{jobs}.py"
        script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
        p = _run(script, jobs)
        log = p.communicate(timeout=600)[0]
        assert p.returncode == 0, log
        scores[jobs] = [f["metrics"]["log_loss"] for f in json.loads((out / "cv.json").read_text())["folds"]]
    assert scores[1] == pytest.approx(scores[2], abs=1e-6)


# --- command line ---------------------------------------------------------------------------------
def test_cv_command_writes_its_files_and_refuses_bad_options_in_one_line(tmp_path, capsys):
    from mmfuse.cli import main

    path = tmp_path / "t.csv"
    table(90).to_csv(path, index=False)
    out = tmp_path / "cv"
    main(["cv", str(path), "-t", "y", "--epochs", "1", "--out", str(out), "--leave-one-out", "subject"])
    text = capsys.readouterr().out
    assert "leave one 'subject' out (5 folds)" in text and "accuracy:" in text
    assert {"cv.json", "cv.md", "oof.csv", "fold_5"} <= {p.name for p in out.iterdir()}
    for args, message in [(["--folds", "1"], "folds must be an integer >= 2, got 1"),
                          (["--leave-one-out", "subjct"], "unknown group column 'subjct'.*Did you mean 'subject'"),
                          (["--group-column", "subject", "--leave-one-out", "subject"], "not both"),
                          (["--folds", "3", "--leave-one-out", "subject"], "one fold per group; leave out --folds"),
                          (["--seed", "-1"], "--seed must be an integer >= 0; got -1"),
                          (["--epochs", "2", "--leave-one-out", "subject"], "holds a cross-validation run with other settings"),
                          (["--folds", "2"], "holds a cross-validation run with other folds")]:
        with pytest.raises(SystemExit) as e:
            main(["cv", str(path), "-t", "y", "--out", str(out), *args])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
        assert __import__("re").search(message, err), err


def test_regression_targets_get_plain_k_fold(tmp_path):
    df = table(60)
    df["y"] = df["a"] * 2.0 + 0.1
    res = cross_validate(MultimodalPredictor(target="y", **FAST), df, folds=3, out=tmp_path / "cv")
    assert res.scheme["name"] == "kfold" and res.metric == "rmse" and len(res.oof) == 60


def test_blank_groups_are_refused_and_a_failed_start_does_not_block_the_rerun(tmp_path):
    df = table(60)
    df.loc[[4, 7], "subject"] = None
    with pytest.raises(MmfuseError, match="2 rows have a blank group 'subject' \\(rows 4, 7\\)"):
        cross_validate(MultimodalPredictor(target="y", **FAST), df, leave_one_out="subject", out=tmp_path / "g")
    good = table(60)
    with pytest.raises(MmfuseError):  # a bad setting fails inside the first fold, before any fold finished
        cross_validate(MultimodalPredictor(target="y", **{**FAST, "epochs": 0}), good, folds=2, out=tmp_path / "cv")
    res = cross_validate(MultimodalPredictor(target="y", **FAST), good, folds=2, out=tmp_path / "cv")  # no --overwrite
    assert len(res.folds) == 2


def test_a_frozen_backbone_embeds_each_row_once_across_the_folds(tmp_path, monkeypatch):
    """The folds read overlapping subsets of one table (each fold's training rows are the others' held-out
    rows): with the disk cache, every row is embedded once in the whole cross-validation, also for the
    out-of-fold predictions."""
    import hf_fixtures as H
    from conftest import count_reads, word_table

    df = word_table(60)
    model = H.tiny_bert(tmp_path / "bert")
    embedded = count_reads(monkeypatch, "note")
    est = MultimodalPredictor(target="y", encoders={"note": {"name": "hf", "model": str(model), "train": "frozen"}},
                              cache=str(tmp_path / "cache"), **FAST)
    cross_validate(est, df, folds=3, out=tmp_path / "cv")
    assert sorted(embedded) == list(range(60))  # each row once, not once per fold and split

