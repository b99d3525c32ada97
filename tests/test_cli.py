import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "mmfuse.cli", *map(str, args)], capture_output=True, text=True)


def test_inspect_prints_roles_reasons_missing_and_examples(mm_table, tmp_path):
    r = run("inspect", mm_table, "--target", "label", "--column", "color=text", "--save-schema", tmp_path / "s.yaml")
    assert r.returncode == 0, r.stderr
    lines = {l.split("│")[1].strip(): l for l in r.stdout.splitlines() if l.count("│") > 5}
    assert "image" in lines["photo"] and ".png" in lines["photo"] and "img/0.png" in lines["photo"]
    assert "audio" in lines["clip"] and "timeseries" in lines["motion"] and "set by the user" in lines["color"]
    assert "target" in lines["label"]
    assert "color: text" in (tmp_path / "s.yaml").read_text()


def test_errors_are_one_line_with_exit_code_2_and_debug_shows_traceback(mm_table):
    r = run("inspect", mm_table, "--target", "lable")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: unknown target column 'lable'; known: age, clip, color, label, motion, photo, review. "
        "Did you mean 'label'?"]
    r = run("--debug", "inspect", mm_table, "--target", "lable")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_help_for_every_command():
    for cmd in ([], ["inspect"], ["fit"], ["evaluate"], ["predict"], ["fusions"], ["demo"], ["cache"], ["cache", "ls"],
                ["cache", "clear"]):
        r = run(*cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout


def test_cache_ls_and_clear(tmp_path):
    (tmp_path / "x" / "abc").mkdir(parents=True)
    (tmp_path / "x" / "abc" / "meta.json").write_text('{"n": 3}')
    r = run("cache", "ls", "--dir", tmp_path)
    assert "x/abc\t3 rows" in r.stdout and "1 entries" in r.stdout
    assert "removed 1 entries" in run("cache", "clear", "--dir", tmp_path).stdout


def test_fit_predict_evaluate_end_to_end(tmp_path):
    import pandas as pd

    from conftest import make_mm_table

    path = make_mm_table(tmp_path, n=40)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("preprocessing:\n  image: {size: 16}\n  audio: {sample_rate: 8000, duration: 0.25, n_mels: 16}\n"
                   "  timeseries: {length: 16}\n  text: {min_freq: 1}\nmodel:\n  dim: 32\ntrain:\n  batch_size: 16\n")
    r = run("fit", path, "--target", "label", "--fusion", "late", "--epochs", "2", "--config", cfg, "--out",
            tmp_path / "run", "--no-progress", "--decision-threshold", "0.3")
    assert r.returncode == 0, r.stderr
    assert "test: accuracy" in r.stdout and (tmp_path / "run" / "bundle" / "config.json").exists()
    r = run("predict", tmp_path / "run" / "bundle", path, "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    p = pd.read_csv(tmp_path / "p.csv")
    assert list(p.columns) == ["row", "prediction", "proba_no", "proba_yes"] and len(p) == 40
    import json

    cfg_path = tmp_path / "run" / "bundle" / "config.json"
    config = json.loads(cfg_path.read_text())
    assert config["target"]["threshold"] == 0.3
    assert ((p["prediction"] == "yes") == (p["proba_yes"] >= 0.3)).all()  # the bundle's decision threshold
    # a threshold that puts half the rows on each side must flip rows that argmax (0.5) labels otherwise
    t = round(float(p["proba_yes"].median()), 4)
    config["target"]["threshold"] = t
    cfg_path.write_text(json.dumps(config))
    r = run("predict", tmp_path / "run" / "bundle", path, "--out", tmp_path / "pt.csv")
    assert r.returncode == 0, r.stderr
    pt = pd.read_csv(tmp_path / "pt.csv")
    assert ((pt["prediction"] == "yes") == (pt["proba_yes"] >= t)).all()
    assert ((pt["prediction"] == "yes") != (pt["proba_yes"] >= 0.5)).any()  # the data exercises the threshold
    # predict leaves with os._exit after writing: the file and the message must be complete
    r = run("predict", tmp_path / "run" / "bundle", path, "--out", tmp_path / "p.parquet")
    assert r.returncode == 0 and r.stdout.strip().endswith("40 predictions written to " + str(tmp_path / "p.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), pt, check_dtype=False, atol=1e-6)
    r = run("evaluate", tmp_path / "run" / "bundle", path, "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    assert "contribution (accuracy" in r.stdout and (tmp_path / "eval" / "metrics.json").exists()
    # a broken file: one clear line naming row, column and file, exit code 2
    (tmp_path / "img" / "5.png").write_bytes(b"junk")
    r = run("predict", tmp_path / "run" / "bundle", path, "--out", tmp_path / "p2.csv")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: row 5, column 'photo': file 'img/5.png' is not a readable image")
    r = run("predict", tmp_path / "run" / "bundle", path, "--out", tmp_path / "p3.csv", "--on-bad-input", "skip")
    assert r.returncode == 0 and "39 predictions" in r.stdout and "1 rows skipped" in r.stdout
    p3 = pd.read_csv(tmp_path / "p3.csv")  # aligned with the input: the skipped row is there, marked
    assert len(p3) == 40 and p3["row"].tolist() == list(range(40))
    assert p3["skipped"].notna().tolist() == [i == 5 for i in range(40)] and pd.isna(p3.loc[5, "prediction"])
    assert "photo" in p3.loc[5, "skipped"] and (p3.drop(index=5)["prediction"] == pt.drop(index=5)["prediction"]).all()


def test_fusions_lists_every_strategy():
    r = run("fusions")
    from mmfuse.fusion import list_fusions

    assert [l.split()[0] for l in r.stdout.splitlines()] == list_fusions()
