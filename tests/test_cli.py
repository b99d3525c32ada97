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
    for cmd in ([], ["inspect"], ["cache"], ["cache", "ls"], ["cache", "clear"]):
        r = run(*cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout


def test_cache_ls_and_clear(tmp_path):
    (tmp_path / "x" / "abc").mkdir(parents=True)
    (tmp_path / "x" / "abc" / "meta.json").write_text('{"n": 3}')
    r = run("cache", "ls", "--dir", tmp_path)
    assert "x/abc\t3 rows" in r.stdout and "1 entries" in r.stdout
    assert "removed 1 entries" in run("cache", "clear", "--dir", tmp_path).stdout
