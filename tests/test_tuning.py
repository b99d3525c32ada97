"""mmfuse.search (src/mmfuse/tuning.py): the space, a search's outputs, pruning, resuming after a
kill, and workers sharing one study on SQLite and on a throwaway PostgreSQL server."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

import mmfuse
from mmfuse import MmfuseError, MultimodalPredictor
from mmfuse import tuning
from mmfuse.cli import main
from mmfuse.fusion import list_fusions

FAST = dict(epochs=2, min_steps=0, progress=False, log=None, contribution=False, batch_size=32)
SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
         "dim": {"type": "categorical", "choices": [8, 16]}}
COMPLETE, PRUNED, RUNNING, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                   optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)


def table(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1]})
    df["y"] = np.where(x[:, 0] + 0.3 * x[:, 1] > 0, "pos", "neg")
    return df


# --- the space ----------------------------------------------------------------------------------
def test_default_space_loads_and_names_only_real_parameters():
    space = tuning.load_space(None)
    names = set(MultimodalPredictor._param_names())
    assert set(space) <= names
    assert {"fusion", "dim", "head_hidden", "dropout", "modality_dropout", "lr", "epochs"} <= set(space)
    assert sorted(space["fusion"]["choices"]) == list_fusions()  # every user-choosable fusion
    assert space["lr"] == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": None}
    tuning._check_space_values(MultimodalPredictor(target="y"), space)  # every value is a valid setting


def test_space_parsing_and_sampling_decodes_every_kind():
    space = tuning.load_space({"epochs": {"type": "int", "low": 2, "high": 6, "step": 2},
                               "fusion_kwargs": {"type": "categorical", "choices": [{}, {"weights": [0.7, 0.3]}]},
                               "encoders": {"text": [None, {"name": "hf", "model": "m", "train": "frozen"}]}})
    assert space["epochs"] == {"type": "int", "low": 2, "high": 6, "log": False, "step": 2}
    assert space["encoders"]["text"]["choices"][1]["name"] == "hf"
    trial = optuna.trial.FixedTrial({"epochs": 4, "fusion_kwargs": '{"weights": [0.7, 0.3]}',
                                     "encoders.text": '{"model": "m", "name": "hf", "train": "frozen"}'})
    params = tuning.sample_params(trial, space, base_encoders={"image": {"name": "image_cnn"}})
    assert params == {"epochs": 4, "fusion_kwargs": {"weights": [0.7, 0.3]},
                      "encoders": {"image": {"name": "image_cnn"}, "text": {"name": "hf", "model": "m", "train": "frozen"}}}
    trial = optuna.trial.FixedTrial({"epochs": 2, "fusion_kwargs": "{}", "encoders.text": None})
    assert tuning.sample_params(trial, space, {"text": {"name": "text_bilstm"}})["encoders"] == {}  # null: the default


def test_space_errors_are_one_line_with_a_suggestion(tmp_path):
    with pytest.raises(MmfuseError, match=r"unknown parameter of MultimodalPredictor 'dropuot'.*Did you mean 'dropout'"):
        tuning.load_space({"dropuot": {"type": "float", "low": 0, "high": 0.5}})
    f = tmp_path / "space.yaml"
    f.write_text("lr: {type: flaot, low: 0.001, high: 0.1}\n")
    with pytest.raises(MmfuseError, match=r"space.yaml'.*'lr'.*unknown type 'flaot'.*Did you mean 'float'"):
        tuning.load_space(f)
    with pytest.raises(MmfuseError, match=r"'epochs': step must be a number > 0, got 0"):
        tuning.load_space({"epochs": {"type": "int", "low": 1, "high": 4, "step": 0}})
    with pytest.raises(MmfuseError, match=r"'dim': a int range needs numbers low <= high, got low=64 high=8"):
        tuning.load_space({"dim": {"type": "int", "low": 64, "high": 8}})
    with pytest.raises(MmfuseError, match=r"search space: fusion value 'gatted'.*Did you mean 'gated'"):
        mmfuse.search(MultimodalPredictor(target="y", **FAST), table(),
                      space={"fusion": {"type": "categorical", "choices": ["concat", "gatted"]}}, out=tmp_path / "s")
    with pytest.raises(MmfuseError, match="ensemble needs out-of-fold predictions: use objective='cv'"):
        mmfuse.search(MultimodalPredictor(target="y"), table(), objective="val", ensemble=3, out=tmp_path / "s")


# --- a search -----------------------------------------------------------------------------------
def test_cv_search_writes_leaderboard_best_config_and_a_bundle(tmp_path):
    df = table()
    res = mmfuse.search(MultimodalPredictor(target="y", **FAST), df, space=SPACE, n_trials=2, folds=2,
                        out=tmp_path / "s", ensemble=2)
    out = tmp_path / "s"
    board = pd.read_csv(out / "leaderboard.csv", dtype={"trial": str})
    ens = board[board["trial"] == "ensemble"]  # the ensemble of the trials' out-of-fold predictions, beside them
    assert len(ens) == 1 and ens["value"].iloc[0] == pytest.approx(res.ensemble["score"])
    assert (out / "ensemble").is_dir()
    board = board[board["trial"] != "ensemble"]
    assert len(board) == 2 and set(board["state"]) == {"complete"}
    assert list(board["value"]) == sorted(board["value"], reverse=True)  # accuracy: best first
    for _, r in board.iterrows():  # each value is its trial's CV mean, and the spread is its folds' std
        cv = json.loads((out / "trials" / f"trial_{r['trial']}" / "cv.json").read_text())["summary"]["accuracy"]
        assert r["value"] == pytest.approx(cv["mean"]) and r["fold_std"] == pytest.approx(cv["std"])
        assert r["param_dim"] in (8, 16) and 1e-3 <= r["param_lr"] <= 5e-2
    assert res.best_value == board["value"].iloc[0] and res.best_trial == int(board["trial"].iloc[0])
    assert ens["members"].iloc[0].startswith("trial_")  # e.g. "trial_1 x1.00"
    assert "| trial | state | value | fold_std |" in (out / "leaderboard.md").read_text()
    cfg = yaml.safe_load((out / "best_config.yaml").read_text())
    m = MultimodalPredictor.from_config(cfg)  # the file `mmfuse fit --config` reads
    assert m.lr == pytest.approx(res.best_params["lr"]) and m.dim == res.best_params["dim"] and m.epochs == 2
    assert (out / "param_importance.png").stat().st_size > 1000
    df.drop(columns="y").to_csv(tmp_path / "new.csv", index=False)
    # the best refit is a normal bundle
    main(["predict", str(out / "best" / "bundle"), str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv")])
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(df)
    refit = res.best_estimator
    assert refit.dim == res.best_params["dim"] and refit.splits_["rows"]["test"] == 0  # every row but the val rows
    # run again: the budget is met and out/best holds that trial's refit, which is kept, not fitted again
    files = {f: f.stat().st_mtime_ns for f in (out / "best").rglob("*") if f.is_file()}
    lines = []
    again = mmfuse.search(MultimodalPredictor(target="y", **FAST), df, space=SPACE, n_trials=2, folds=2,
                          out=out, echo=lines.append)
    assert any(f"already holds trial {res.best_trial}'s refit; kept" in line for line in lines), lines
    assert again.best_estimator.dim == res.best_params["dim"]
    assert {f: f.stat().st_mtime_ns for f in (out / "best").rglob("*") if f.is_file()} == files
    # a worker sharing this --out that finds another refitting (the lock held) leaves out/best to it
    import fcntl

    (out / "best" / "refit.json").unlink()
    with open(out / ".refit.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = []
        third = mmfuse.search(MultimodalPredictor(target="y", **FAST), df, space=SPACE, n_trials=2, folds=2,
                              out=out, echo=lines.append)
    assert third.best_estimator is None and any("another worker is refitting" in line for line in lines), lines
    files.pop(out / "best" / "refit.json")
    assert {f: f.stat().st_mtime_ns for f in (out / "best").rglob("*") if f.is_file()} == files
    # the hint in best_config.yaml works as written: the target comes from the file
    df.to_csv(tmp_path / "data.csv", index=False)
    main(["fit", str(tmp_path / "data.csv"), "--config", str(out / "best_config.yaml"), "--out", str(tmp_path / "f")])
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["plan"]["epochs"] == 2


def test_search_compares_trials_by_the_metric_asked_for(tmp_path):
    """metric='log_loss': minimized, so the leaderboard puts the lowest first, and the value is the folds' mean
    log loss; an unknown metric stops the search at once with the task's metric names."""
    res = mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), space=SPACE, n_trials=3, folds=2,
                        out=tmp_path / "s", refit=False, ensemble=2, metric="log_loss")
    assert res.metric == "log_loss" and res.direction == "minimize"
    board = res.leaderboard[res.leaderboard["trial"] != "ensemble"]
    assert list(board["value"]) == sorted(board["value"])  # the lowest loss first
    for _, r in board.iterrows():
        cv = json.loads((tmp_path / "s" / "trials" / f"trial_{r['trial']}" / "cv.json").read_text())["summary"]
        assert r["value"] == pytest.approx(cv["log_loss"]["mean"])
    assert res.best_value == board["value"].min() and res.ensemble["metric"] == "log_loss"
    with pytest.raises(MmfuseError, match=r"unknown metric 'macro_f2'.*Did you mean 'macro_f1'"):
        mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), space=SPACE, n_trials=3, folds=2,
                      out=tmp_path / "t", refit=False, metric="macro_f2")
    assert not (tmp_path / "t").exists()  # refused before anything ran
    with pytest.raises(MmfuseError, match=r"metric 'rmse' is not reported for this task; its metrics: accuracy, "):
        mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), space=SPACE, n_trials=3, folds=2,
                      out=tmp_path / "u", refit=False, metric="rmse")
    assert len(optuna.load_study(study_name="mmfuse", storage=f"sqlite:///{tmp_path / 'u' / 'study.db'}").trials) == 1
    # a mistake found by the first trial does not lock the folder: the corrected command takes the study over
    res = mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), space=SPACE, n_trials=1, folds=2,
                        out=tmp_path / "u", refit=False, metric="accuracy")
    assert res.best_value is not None


def test_fold_and_option_mistakes_are_refused_before_the_first_trial(tmp_path):
    df = table()
    df.loc[0, "y"] = "rare"  # one row: a fold holding it out cannot learn it
    with pytest.raises(MmfuseError, match="class 'rare' has a single labelled row: no fold can both learn it"):
        mmfuse.search(MultimodalPredictor(target="y", **FAST), df, space=SPACE, folds=2, out=tmp_path / "a")
    with pytest.raises(MmfuseError, match="the group column 'y' is the target"):
        mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), space=SPACE, leave_one_out="y",
                      out=tmp_path / "a")
    with pytest.raises(MmfuseError, match="ensemble must be an integer >= 0"):
        mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), space=SPACE, ensemble=-1, out=tmp_path / "a")
    with pytest.raises(MmfuseError, match="timeout must be a number of seconds > 0"):
        mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), space=SPACE, timeout=0, out=tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_overwrite_starts_a_search_afresh_in_the_same_folder(tmp_path):
    kw = dict(space=SPACE, n_trials=1, folds=2, out=tmp_path / "s", refit=False)
    mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), **kw)
    with pytest.raises(MmfuseError, match="holds a search with other settings.*or --overwrite"):
        mmfuse.search(MultimodalPredictor(target="y", **{**FAST, "batch_size": 16}), table(), **kw)
    lines = []
    res = mmfuse.search(MultimodalPredictor(target="y", **{**FAST, "batch_size": 16}), table(), overwrite=True,
                        echo=lines.append, **kw)
    assert any(line.startswith("overwrite: deleted the earlier search") for line in lines)
    assert len(res.study.trials) == 1 and not any(line.startswith("resuming") for line in lines)
    with pytest.raises(MmfuseError, match="with a shared --storage it would delete other workers' trials"):
        mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), overwrite=True,
                      storage=f"sqlite:///{tmp_path / 'x.db'}", **kw)


def test_a_second_study_in_the_same_folder_is_refused(tmp_path):
    """Its trial_<n> folders would overwrite the first study's; the same study resumes."""
    kw = dict(space=SPACE, n_trials=1, folds=2, out=tmp_path / "s", refit=False)
    mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), study_name="first", **kw)
    before = (tmp_path / "s" / "trials" / "trial_0" / "cv.json").read_text()
    with pytest.raises(MmfuseError, match=r"holds the files of study 'first'.*study 'second'.*another --out"):
        mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), study_name="second", **kw)
    assert (tmp_path / "s" / "trials" / "trial_0" / "cv.json").read_text() == before
    res = mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), study_name="first", **kw)  # resumes
    assert len(res.study.trials) == 1


def test_the_pruner_stops_a_trial_whose_epochs_score_worse(tmp_path):
    """Trial 0 learns (lr 0.05); trial 1 cannot (lr 1e-7): its first epochs score below trial 0's at the
    same epoch, so the median pruner (one startup trial) prunes it."""
    db = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(storage=db, study_name="p", direction="maximize")
    study.enqueue_trial({"lr": 0.05})
    study.enqueue_trial({"lr": 1e-7})
    space = {"lr": {"type": "float", "low": 1e-8, "high": 0.1, "log": True}}
    est = MultimodalPredictor(target="y", **{**FAST, "epochs": 4, "val_fraction": 0.3})
    res = mmfuse.search(est, table(160), space=space, n_trials=2, objective="val", storage=db, study_name="p",
                        out=tmp_path / "s", refit=False,
                        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    states = {t.number: t.state for t in res.study.trials}
    assert states == {0: COMPLETE, 1: PRUNED}
    assert res.leaderboard["state"].tolist() == ["complete", "pruned"]
    rows = json.loads((tmp_path / "s" / "trials" / "trial_0" / "metrics.json").read_text())["rows"]
    assert rows["test"] == 0 and rows["train"] + rows["val"] == 160  # a val trial holds out no unused test rows


def test_a_cv_trial_reports_the_running_mean_of_its_finished_folds(tmp_path):
    """Objective cv: after each fold, the mean over the folds finished so far goes to the pruner
    (step = their count). Trial 0 reported 0.8 and 0.9 at steps 1 and 2; the new trial's folds score 0.85
    then 0.5: running means 0.85 (above 0.8: kept) and 0.675 (its best so far, 0.85, is below 0.9: pruned;
    the median pruner compares a trial's best value up to the step)."""
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    first = study.ask()
    first.report(0.8, 1)
    first.report(0.9, 2)
    study.tell(first, 0.9)
    trial = study.ask()
    report = tuning._FoldReporter(optuna, trial, tmp_path, "accuracy")
    for i, acc in ((1, 0.85), (2, 0.5)):
        (tmp_path / f"fold_{i}").mkdir()
        (tmp_path / f"fold_{i}" / "fold.json").write_text(json.dumps({"metrics": {"accuracy": acc}}))
        if i == 1:
            report("fold 1: accuracy 0.8500")
            report("another line")  # no new fold: nothing reported
        else:
            with pytest.raises(optuna.TrialPruned):
                report("fold 2: accuracy 0.5000")
    assert study.trials[1].intermediate_values == {1: 0.85, 2: pytest.approx(0.675)}


def test_a_cv_trial_reports_only_folds_finished_in_order(tmp_path):
    """With --jobs, fold 2 may finish before fold 1: nothing is reported until folds 1..n are all done, so
    step n always averages the same folds in every trial."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    report = tuning._FoldReporter(optuna, trial, tmp_path, "accuracy")
    for i, acc in ((2, 0.5), (1, 0.9), (3, 0.7)):
        (tmp_path / f"fold_{i}").mkdir()
        (tmp_path / f"fold_{i}" / "fold.json").write_text(json.dumps({"metrics": {"accuracy": acc}}))
        report(f"fold {i} done")
        if i == 2:
            assert study.trials[0].intermediate_values == {}
    assert study.trials[0].intermediate_values == {2: pytest.approx(0.7), 3: pytest.approx(0.7)}


def test_a_trial_that_raises_any_error_fails_and_the_search_goes_on(tmp_path, monkeypatch):
    """Out of memory in one trial (here a RuntimeError on the first) is a failed trial, not the end of the search."""
    import mmfuse.cv

    real, calls = mmfuse.cv.cross_validate, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(mmfuse.cv, "cross_validate", flaky)
    lines = []
    res = mmfuse.search(MultimodalPredictor(target="y", **FAST), table(), space=SPACE, n_trials=2, folds=2,
                        out=tmp_path / "s", refit=False, echo=lines.append)
    states = [t.state for t in res.study.trials]
    assert states == [FAIL, COMPLETE, COMPLETE]
    assert "trial 0: failed: RuntimeError: out of memory (simulated)" in lines
    assert res.study.trials[0].user_attrs["error"] == "RuntimeError: out of memory (simulated)"


def test_seed_cannot_be_searched_and_trials_on_other_folds_are_not_ensembled(tmp_path):
    with pytest.raises(MmfuseError, match="'seed' cannot be searched: it also draws the folds"):
        tuning.load_space({"seed": {"type": "int", "low": 0, "high": 3}})
    for seed in (0, 1):
        mmfuse.cross_validate(MultimodalPredictor(target="y", **{**FAST, "seed": seed}), table(), folds=2,
                              out=tmp_path / f"t{seed}")
    with pytest.raises(MmfuseError, match="put the same rows in other folds"):
        mmfuse.build_ensemble([tmp_path / "t0", tmp_path / "t1"], size=3, out=tmp_path / "ens")


# --- resume and shared studies --------------------------------------------------------------------
def _worker(tmp_path, out, storage, n_trials, study="shared", extra=()):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("contribution: false\ntrain: {min_steps: 0, log: null, batch_size: 32, epochs: 2}\n")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    if not (tmp_path / "t.csv").exists():
        table(100).to_csv(tmp_path / "t.csv", index=False)
    cmd = [sys.executable, "-m", "mmfuse.cli", "search", str(tmp_path / "t.csv"), "--target", "y", "--space", str(space),
           "--n-trials", str(n_trials), "--objective", "val", "--storage", storage, "--study-name", study,
           "--out", str(out), "--config", str(cfg), "--no-refit", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    # SIGINT at its default in the worker: a test run started in the background (nohup, some CI runners) hands
    # it ignored, and Python would keep it so, and Ctrl-C would not reach the search
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finished(storage, study="shared"):
    try:
        s = optuna.load_study(study_name=study, storage=storage)
    except KeyError:  # not created yet
        return []
    return [t for t in s.get_trials(deepcopy=False) if t.state in (COMPLETE, PRUNED) and not t.user_attrs.get("surplus")]


def test_a_killed_search_resumes_without_repeating_finished_trials(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _worker(tmp_path, tmp_path / "a", db, 1000)  # a budget it cannot finish: the kill comes mid-search
    deadline = time.monotonic() + 120
    while not _finished(db) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0]
    before = {t.number: t.params for t in _finished(db)}
    assert len(before) >= 1, log
    budget = len(before) + 2
    # the killed trial stopped its heartbeats; a short grace lets this process fail it at once
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 2)
    monkeypatch.setattr(tuning, "_POLL_S", 0.2)
    space = tmp_path / "space.yaml"
    res = mmfuse.search(MultimodalPredictor(target="y", **FAST), tmp_path / "t.csv", space=space, n_trials=budget,
                        objective="val", storage=db, study_name="shared", out=tmp_path / "b", refit=False)
    after = {t.number: t.params for t in _finished(db)}
    assert len(after) == budget
    assert {n: after[n] for n in before} == before  # the finished trials are kept, as they were
    new = sorted(set(after) - set(before))
    assert len(new) == 2 and min(new) > max(before)  # only the remainder ran, after them
    left = [t for t in res.study.trials if t.number not in after and not t.user_attrs.get("surplus")]
    assert all(t.state == FAIL for t in left)  # the trial running at the kill is marked failed
    assert len(pd.read_csv(tmp_path / "b" / "leaderboard.csv").query("state == 'complete'")) == budget
    with pytest.raises(MmfuseError, match="study 'shared' holds a search with other settings; its trials would not"):
        mmfuse.search(MultimodalPredictor(target="y", **{**FAST, "batch_size": 16}), tmp_path / "t.csv", space=space,
                      n_trials=3, objective="val", storage=db, study_name="shared", out=tmp_path / "b")


def test_ctrl_c_stops_a_search_with_one_line_and_marks_its_trial_failed(tmp_path):
    db = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _worker(tmp_path, tmp_path / "a", db, 1000)
    deadline = time.monotonic() + 120

    def running():
        try:
            return optuna.load_study(study_name="shared", storage=db).get_trials(states=(RUNNING,))
        except KeyError:
            return []

    while not (_finished(db) and running()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        log = proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:  # stuck: SIGABRT makes faulthandler print where each thread is
        proc.send_signal(signal.SIGABRT)
        pytest.fail("the search did not stop within 60 s of Ctrl-C:\n" + proc.communicate(timeout=30)[0])
    assert proc.returncode == 130, log
    done = len(_finished(db))
    assert log.strip().splitlines()[-1] == (f"search interrupted: {done} finished trials are kept in {db}; the same "
                                            "command resumes the study (the interrupted trial runs again, with new "
                                            "settings)")
    assert "Traceback" not in log
    assert not running()  # the trial Ctrl-C stopped is failed at once, not left running for a grace period


def _two_workers(tmp_path, storage, n_trials=6):
    procs = [_worker(tmp_path, tmp_path / f"w{i}", storage, n_trials) for i in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    for log in logs:  # both took part: each finished at least one trial
        assert re.search(r"^trial \d+: accuracy ", log, re.M), logs
    done = _finished(storage)
    assert len(done) == n_trials, logs  # together, exactly the budget
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert all(t.state == FAIL for t in trials if t.user_attrs.get("surplus"))
    boards = [pd.read_csv(tmp_path / f"w{i}" / "leaderboard.csv") for i in range(2)]
    assert all(sorted(b["trial"]) == sorted(t.number for t in done) for b in boards)  # one study, seen by both
    return logs


def test_two_workers_share_one_sqlite_study_and_finish_the_budget(tmp_path):
    _two_workers(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


# --- PostgreSQL -----------------------------------------------------------------------------------
def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server in a temporary folder on a free loopback port (as the ``postgres``
    user when run as root: the server refuses root), with an empty database; stopped afterwards."""
    bindir = _postgres_bin()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        bindir = None
    if bindir is None:
        msg = "PostgreSQL binaries (initdb, pg_ctl: Debian's postgresql package) or psycopg not found"
        if os.environ.get("MMFUSE_REQUIRE_POSTGRES") == "1":
            pytest.fail(msg + " (MMFUSE_REQUIRE_POSTGRES=1 requires them)")
        pytest.skip(msg)
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="mmfuse_pg_"))
    as_user = []
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True, text=True)  # noqa: E731
    run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    run(bindir / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o",
        f"-p {port} -h 127.0.0.1 -k {folder} -c fsync=off", "start")
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE mmfuse_search")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mmfuse_search"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_postgresql_study_and_finish_the_budget(tmp_path, postgres_url):
    _two_workers(tmp_path, postgres_url)


def test_options_the_user_fixed_are_not_searched(tmp_path):
    lines = []
    res = mmfuse.search(MultimodalPredictor(target="y", **{**FAST, "epochs": 1}), table(60), space=SPACE, n_trials=2,
                        objective="val", out=tmp_path / "s", refit=False, fixed=["lr"], echo=lines.append)
    assert all("lr" not in t.params for t in res.study.trials)
    assert any("lr is fixed at 0.001" in line for line in lines)


def test_a_resumed_search_draws_new_settings_not_the_first_runs_again(tmp_path):
    """The sampler's seed is salted with the study's size: without that, the second run replays the first
    run's random draws and spends its budget on settings already tried."""
    df = table(60)
    kw = dict(space=SPACE, objective="val", out=tmp_path / "s", refit=False)
    mmfuse.search(MultimodalPredictor(target="y", **{**FAST, "epochs": 1}), df, n_trials=2, **kw)
    res = mmfuse.search(MultimodalPredictor(target="y", **{**FAST, "epochs": 1}), df, n_trials=4, **kw)
    lrs = [t.params["lr"] for t in sorted(res.study.trials, key=lambda t: t.number) if t.state == COMPLETE]
    assert len(lrs) == 4 and len(set(np.round(lrs, 10))) == 4, lrs


def test_search_with_groups_keeps_the_group_column_out_of_every_model(tmp_path):
    df = table(60)
    df["subject"] = [i % 4 for i in range(60)]  # integer codes: without the group role, a numeric input
    res = mmfuse.search(MultimodalPredictor(target="y", **{**FAST, "epochs": 1}), df, space=SPACE, n_trials=1,
                        folds=2, group_column="subject", out=tmp_path / "s")
    from mmfuse import Predictor
    from mmfuse.schema import Role

    best = Predictor.load(tmp_path / "s" / "best" / "bundle")
    assert best.schema.roles["subject"] == Role.GROUP, best.schema.roles
    cfg = yaml.safe_load((tmp_path / "s" / "best_config.yaml").read_text())
    assert cfg["columns"]["subject"] == "group"
    assert res is not None


def test_cli_search_with_column_roles_writes_a_best_config_fit_accepts(tmp_path, capsys):
    """Roles given with --column are enums inside mmfuse: best_config.yaml holds their plain names."""
    path = tmp_path / "t.csv"
    table(60).assign(kind=["u", "v", "w"] * 20).to_csv(path, index=False)
    out = tmp_path / "s"
    main(["search", str(path), "-t", "y", "-c", "kind=categorical", "-c", "b=ignore", "--n-trials", "1",
          "--objective", "val", "--epochs", "1", "--out", str(out), "--no-refit"])
    cfg = yaml.safe_load((out / "best_config.yaml").read_text())
    assert cfg["columns"] == {"kind": "categorical", "b": "ignore"}
    main(["fit", str(path), "--config", str(out / "best_config.yaml"), "--epochs", "1", "--out", str(tmp_path / "f")])
    schema = json.loads((tmp_path / "f" / "bundle" / "config.json").read_text())["schema"]["columns"]
    assert schema["kind"] == "categorical" and schema["b"] == "ignore"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a validation split has no folds: the fold flags are refused, not ignored
        main(["search", str(path), "-t", "y", "--objective", "val", "--folds", "3", "--jobs", "2", "--out", str(out)])
    assert e.value.code == 2
    assert "--objective val scores each trial on one validation split, without folds: leave out --folds, --jobs" in (
        capsys.readouterr().err)


def test_a_trial_left_running_before_its_first_heartbeat_is_failed_not_waited_for_forever(tmp_path, monkeypatch):
    """A worker killed between creating its trial and its first heartbeat: optuna never finds such a trial stale."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    study.ask()  # RUNNING, and no heartbeat ever
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 0.5)
    monkeypatch.setattr(tuning, "_POLL_S", 0.1)
    deadline = time.monotonic() + 20
    assert tuning._wait_for_budget(optuna, study, 1, deadline, heartbeats=True)  # True: its slot is free again
    assert time.monotonic() < deadline and study.trials[0].state == FAIL
