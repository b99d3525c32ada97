"""At the command line, every failure a user can cause is ONE line on stderr that starts with
"error:" and names the file (and the line, where there is one), with exit code 2: never a traceback.

The inputs are what a careless user passes: broken tables, broken settings files, damaged
bundles, a run folder instead of its bundle/.
"""
import json
import shutil

import pytest

from mmfuse.cli import main

from conftest import make_tabular_text_table

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def cli_error(capsys, *args) -> str:
    """Run ``mmfuse *args``; check it exits with code 2 after printing one line; return that line."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


TABLES = [
    ("empty.csv", b"", "is empty (0 bytes)"),
    ("extra.csv", b"x,y\n1,p\n2,q,r\n", "line 3: has 3 fields but the header has 2. Put quotes around fields"),
    ("unclosed.csv", b'x,y\n1,"p\n2,q\n', "a quoted field is never closed"),
    ("image.csv", PNG, "is not a CSV file: its content looks like a PNG image"),
    ("records.csv", b'[{"x": 1, "y": "p"}, {"x": 2, "y": "q"}]', "is not a CSV file: its content looks like JSON"),
    ("table.parquet", b"x,y\n1,p\n", "is not a Parquet file: its content looks like CSV text. Rename it to .csv"),
    ("noise.jsonl", bytes(range(256)) * 4, "is not a JSON Lines file: its content looks like binary data"),
    ("bad.jsonl", b'{"x": 1, "y": "p"}\nnot json\n', "line 2: is not valid JSON"),
    ("sheet.xlsx", b"PK\x03\x04" + bytes(64), "unknown table format '.xlsx'; save the sheet as CSV"),
    ("dup.csv", b"x,x,y\n1,2,p\n", "duplicate column names: 'x'"),
]


@pytest.mark.parametrize("name, content, message", TABLES, ids=[t[0] for t in TABLES])
def test_broken_table(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    line = cli_error(capsys, "inspect", path, "--target", "y")
    assert message in line and path.name in line


def test_folder_instead_of_table(tmp_path, capsys):
    (tmp_path / "data.csv").mkdir()  # a folder named like a table: its read used to raise IsADirectoryError
    line = cli_error(capsys, "inspect", tmp_path / "data.csv", "--target", "y")
    assert f"table file {str(tmp_path / 'data.csv')!r} is a folder, not a table file" in line


@pytest.fixture
def good_csv(tmp_path):
    (tmp_path / "good.csv").write_text("x,y\n1,p\n2,q\n")
    return tmp_path / "good.csv"


@pytest.mark.parametrize("name, content, message", [
    ("bad.yaml", "columns:\n  x: numeric\n bad: 1\n", "line 3, column 2: not valid YAML"),
    ("bad.json", '{"columns": {"x": "numeric",}}', "line 1, column 29: not valid JSON"),
    ("latin.yaml", "columns: {x: caf\xe9}\n", "is not UTF-8 text"),
], ids=["yaml", "json", "latin-1"])
def test_broken_schema_file(good_csv, capsys, name, content, message):
    path = good_csv.parent / name
    path.write_bytes(content.encode("latin-1"))
    line = cli_error(capsys, "inspect", good_csv, "--target", "y", "--schema", path)
    assert line.startswith(f"error: schema file {str(path)!r}") and message in line


def test_broken_config_file_for_fit(good_csv, capsys):
    path = good_csv.parent / "cfg.yaml"
    path.write_text("train:\n  epochs: [1\n")
    line = cli_error(capsys, "fit", good_csv, "--target", "y", "--config", path, "--out", good_csv.parent / "run")
    assert line.startswith(f"error: config file {str(path)!r}, line 3") and "not valid YAML" in line


def test_os_error_names_the_path(good_csv, capsys):
    (good_csv.parent / "file").write_text("")
    line = cli_error(capsys, "inspect", good_csv, "--target", "y", "--save-schema", good_csv.parent / "file" / "s.yaml")
    assert str(good_csv.parent / "file") in line and "Not a directory" in line


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder holding a tiny bundle (1 epoch on 40 rows), and a table to predict on."""
    from mmfuse.api import MultimodalPredictor

    d = tmp_path_factory.mktemp("cli_errors")
    df = make_tabular_text_table(40)
    m = MultimodalPredictor(target="y", epochs=1, progress=False, log=None, contribution=False)
    m.fit(df)
    m.save(d / "run" / "bundle")
    df.to_csv(d / "data.csv", index=False)
    return d


def _config(edit):
    def apply(folder):
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    return apply


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = [
    ("truncated config.json", lambda d: _cut(d / "config.json"), "config.json is not valid JSON"),
    ("truncated model.safetensors", lambda d: _cut(d / "model.safetensors"), "model.safetensors cannot be read"),
    ("image as config.json", lambda d: (d / "config.json").write_bytes(PNG), "config.json is not text"),
    ("CSV as model.safetensors", lambda d: (d / "model.safetensors").write_text("a,b\n1,2\n"),
     "model.safetensors cannot be read"),
    ("config.json without preprocessors", _config(lambda c: c.pop("preprocessors")),
     "config.json lacks 'preprocessors'"),
    ("a key missing deep inside", _config(lambda c: next(iter(c["preprocessors"].values())).pop("config")),
     "lacks 'config'"),
]


@pytest.mark.parametrize("damage, message", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damaged_bundle(run, tmp_path, capsys, damage, message):
    copy = tmp_path / "bundle"
    shutil.copytree(run / "run" / "bundle", copy)
    damage(copy)
    line = cli_error(capsys, "predict", copy, run / "data.csv", "--out", tmp_path / "p.csv")
    assert line.startswith(f"error: bundle {str(copy)!r} is damaged: ") and message in line


def test_run_folder_missing_folder_or_file_instead_of_bundle(run, tmp_path, capsys):
    line = cli_error(capsys, "predict", run / "run", run / "data.csv", "--out", tmp_path / "p.csv")
    bundle = run / "run" / "bundle"
    assert line == f"error: {str(run / 'run')!r} is a run folder, not a bundle; did you mean {str(bundle)!r}?"
    line = cli_error(capsys, "evaluate", run / "run", run / "data.csv")
    assert "did you mean" in line
    line = cli_error(capsys, "predict", tmp_path / "nope", run / "data.csv", "--out", tmp_path / "p.csv")
    assert f"bundle folder {str(tmp_path / 'nope')!r} does not exist" in line
    line = cli_error(capsys, "predict", run / "data.csv", run / "data.csv", "--out", tmp_path / "p.csv")
    assert f"{str(run / 'data.csv')!r} is a file, not a bundle folder" in line


def test_error_line_is_one_line():
    from mmfuse.cli import _error_line
    from mmfuse.errors import MmfuseError

    assert _error_line(MmfuseError("first\n   second\n")) == "first second"
    flags = ["--epochs", "0", "--target", "y", "--test-fraction", "0.5"]  # a flag renames only the subject of the line
    for untouched in ("search space: 'epochs' must be a mapping", "a regression target must be numeric",
                      "settings 'val_fraction' + 'test_fraction' must be < 1"):
        assert _error_line(MmfuseError(untouched), flags) == untouched
    assert _error_line(MmfuseError("setting 'epochs' must be >= 1"), flags) == "--epochs must be >= 1"
    assert _error_line(PermissionError(13, "Permission denied", "/x/t.csv")) == \
        "'/x/t.csv': Permission denied; check its permissions"


def test_predict_refuses_an_output_format_it_cannot_write(tmp_path, capsys):
    import pytest

    from mmfuse.cli import main

    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "bundle"), str(tmp_path / "t.csv"), "--out", str(tmp_path / "p.xlsx")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {tmp_path / 'p.xlsx'}: write predictions to a .csv, .parquet or .jsonl file"]


def test_usage_mistakes_are_click_usage_lines_not_tracebacks(capsys):
    import pytest

    from mmfuse.cli import main

    for argv, expected in ((["fit", "x.csv", "--epoch", "1"], "No such option: --epoch"),
                           (["fitt", "x.csv"], "No such command 'fitt'. Did you mean 'fit'?"),
                           (["fit", "x.csv"], "which column is the target? Give --target NAME"),
                           (["fit", "x.csv", "-t", "y", "--lr", "abc"], "Invalid value for '--lr'")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err and "Traceback" not in err, (argv, err)
    main(["--version"])
    assert capsys.readouterr().out.startswith("mmfuse ")


def test_predict_and_evaluate_protect_what_they_would_overwrite(tmp_path, capsys):
    import pytest

    from mmfuse.cli import main

    (tmp_path / "t.csv").write_text("a,y\n1,x\n")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for argv, expected in ((["predict", str(tmp_path / "b"), str(tmp_path / "t.csv"), "--out", str(tmp_path / "t.csv")],
                            "is the input table; write the predictions to another file"),
                           (["evaluate", str(tmp_path / "b"), str(tmp_path / "t.csv"), "--out", str(tmp_path / "run")],
                            "holds a training run, whose metrics.json and report.md would be overwritten")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and expected in err[0]


def test_a_bad_cell_row_says_how_it_counts_and_a_flag_is_named_as_the_flag(run, tmp_path, capsys):
    import pandas as pd

    df = pd.read_csv(run / "data.csv")
    df["x1"] = df["x1"].astype(object)
    df.loc[5, "x1"] = "abc"
    df.to_csv(tmp_path / "bad.csv", index=False)
    line = cli_error(capsys, "predict", run / "run" / "bundle", tmp_path / "bad.csv", "--out", tmp_path / "p.csv")
    assert "row 5 (counted from 0: the first data row is row 0), column 'x1': holds 'abc'" in line
    assert cli_error(capsys, "fit", run / "data.csv", "-t", "y", "--epochs", "0",
                     "--out", tmp_path / "r") == "error: --epochs must be an integer >= 1; got 0"
    assert cli_error(capsys, "cv", run / "data.csv", "-t", "y", "--folds=1",
                     "--out", tmp_path / "cv").startswith("error: --folds must be an integer >= 2")
    (tmp_path / "c.yaml").write_text("epochs: 0\n")  # from a settings file, the setting keeps its own name
    assert "setting 'epochs' must be an integer >= 1" in cli_error(
        capsys, "fit", run / "data.csv", "-t", "y", "--config", tmp_path / "c.yaml", "--out", tmp_path / "r")


@pytest.mark.parametrize("command", ["evaluate", "robustness"])
def test_a_command_that_writes_a_folder_refuses_a_file_name_for_it(run, tmp_path, capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, str(run / "run" / "bundle"), str(run / "data.csv"), "-o", str(tmp_path / "ev.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "looks like a file name" in err and "'" + str(tmp_path / "ev") + "'" in err
    assert not (tmp_path / "ev.json").exists()


def test_a_bundle_given_as_the_table_to_fit_points_to_init_from(run, tmp_path, capsys):
    line = cli_error(capsys, "fit", run / "run" / "bundle", "--target", "y", "--out", tmp_path / "r")
    assert "is a bundle folder (a trained model), not a table file" in line and "--init-from" in line


def test_evaluate_refuses_to_write_into_a_bundle(run, capsys):
    line = cli_error(capsys, "evaluate", run / "run" / "bundle", run / "data.csv", "-o", run / "run" / "bundle")
    assert "is a bundle folder; write the evaluation elsewhere" in line


def test_evaluate_scores_the_test_rows_of_a_table_with_a_split_column(run, tmp_path, capsys):
    """The table fit read, split column and all: its training rows would flatter the model. evaluate scores the
    rows marked test (and says so) unless --all-rows; a split column with no test rows is one line."""
    import pandas as pd

    from mmfuse import Predictor, evaluate_predictor

    df = pd.read_csv(run / "data.csv")
    df["split"] = ["test" if i % 4 == 0 else "train" for i in range(len(df))]
    df.to_csv(tmp_path / "split.csv", index=False)
    main(["evaluate", str(run / "run" / "bundle"), str(tmp_path / "split.csv"), "--no-contribution",
          "-o", str(tmp_path / "ev")])
    out = capsys.readouterr().out
    assert "scoring the 10 rows with split = test (of 40;" in out and "--all-rows" in out
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["test"]["n"] == 10 and "scoring the 10 rows" in (tmp_path / "ev" / "report.md").read_text()
    pred = Predictor.load(run / "run" / "bundle")
    assert saved["test"]["accuracy"] == evaluate_predictor(pred, df[df.split == "test"])["accuracy"]
    main(["evaluate", str(run / "run" / "bundle"), str(tmp_path / "split.csv"), "--no-contribution", "--all-rows",
          "-o", str(tmp_path / "all")])
    out = capsys.readouterr().out
    assert "scoring the" not in out and "30 of them with split other than test" in out
    assert "test (every row, training rows included): accuracy" in out
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["test"]["n"] == 40
    df.assign(split="train").to_csv(tmp_path / "train.csv", index=False)
    line = cli_error(capsys, "evaluate", run / "run" / "bundle", tmp_path / "train.csv")
    assert "split column 'split' has no 'test' rows; evaluate scores a model on test rows" in line
    assert "--all-rows" in line


def test_a_column_named_split_that_the_model_reads_is_not_a_split_column(tmp_path):
    from mmfuse import MultimodalPredictor, evaluate_predictor

    df = make_tabular_text_table(60)
    df["split"] = ["a", "b", "c"] * 20  # a category the model reads, not train/val/test
    m = MultimodalPredictor(target="y", epochs=1, progress=False, log=None, contribution=False).fit(df)
    assert "split" in {c for p in m.predictor_.preprocessors.values() for c in p.columns}
    assert evaluate_predictor(m.predictor_, df, test_only=True)["n"] == 60 and "scored_rows" not in \
        evaluate_predictor(m.predictor_, df, test_only=True)


def test_rows_with_every_input_blank_are_named_by_predict_and_evaluate(run, tmp_path, capsys):
    """A row with no input gets the model's answer to nothing, the same for each such row: predict and evaluate
    name those rows (a row with one input left is not one of them)."""
    import numpy as np
    import pandas as pd

    from mmfuse import Predictor

    df = pd.read_csv(run / "data.csv")
    for col in ("x1", "x2", "cat", "note"):
        df[col] = df[col].astype(object)
        df.loc[[3, 7], col] = np.nan
    df.loc[5, "note"] = np.nan
    df.to_csv(tmp_path / "blank.csv", index=False)
    main(["predict", str(run / "run" / "bundle"), str(tmp_path / "blank.csv"), "-o", str(tmp_path / "p.csv")])
    out = capsys.readouterr().out
    assert "2 rows with every input blank: their prediction is made without any evidence, the same for each " \
           "(row ids 3, 7)" in out
    p = pd.read_csv(tmp_path / "p.csv")
    assert p.loc[3].drop("row").equals(p.loc[7].drop("row"))  # what the line says is what happened
    main(["evaluate", str(run / "run" / "bundle"), str(tmp_path / "blank.csv"), "--no-contribution",
          "-o", str(tmp_path / "ev")])
    assert "note: 2 rows with every input blank" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]["rows_without_input"] == [3, 7]
    assert "2 rows with every input blank" in (tmp_path / "ev" / "report.md").read_text()
    pred = Predictor.load(run / "run" / "bundle")
    pred.predict(df.drop(index=[3, 7]))
    assert pred.last_no_input == [] and pred.describe_no_input() == ""


def test_ctrl_c_exits_130_with_a_line_not_0(tmp_path, monkeypatch, capsys):
    """typer turns a KeyboardInterrupt into an exit code that main() returned as success (0) before."""
    import mmfuse.batch

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mmfuse.batch, "predict_file", interrupted)
    monkeypatch.setattr("mmfuse.bundle.Predictor.load", classmethod(lambda cls, p: None))
    (tmp_path / "t.csv").write_text("a\n1\n")
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path), str(tmp_path / "t.csv"), "-o", str(tmp_path / "p.csv")])
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_ctrl_c_exits_even_when_a_library_left_a_thread_running():
    """optuna's trial heartbeat is a non-daemon thread that a Ctrl-C between its start and the ``with`` that joins
    it leaves running: the interpreter would wait for it at exit forever. The interrupted CLI leaves without it."""
    import subprocess
    import sys

    code = ("import threading\nfrom mmfuse.cli import _exit_interrupted\n"
            "threading.Thread(target=threading.Event().wait).start()\n_exit_interrupted(None, grace_s=0.2)\n")
    p = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert p.returncode == 130
