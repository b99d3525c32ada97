import json
import subprocess
import sys

import numpy as np
import pandas as pd
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
    assert f"test (held-out 10% of {path}, stratified random): accuracy" in r.stdout and (tmp_path / "run" / "bundle" / "config.json").exists()
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
    assert r.stderr.startswith("error: row 5 (counted from 0: the first data row is row 0), column 'photo': file 'img/5.png' is not a readable image")
    r = run("predict", tmp_path / "run" / "bundle", path, "--out", tmp_path / "p3.csv", "--on-bad-input", "skip")
    assert r.returncode == 0 and "39 predictions" in r.stdout and "1 row skipped" in r.stdout
    p3 = pd.read_csv(tmp_path / "p3.csv")  # aligned with the input: the skipped row is there, marked
    assert len(p3) == 40 and p3["row"].tolist() == list(range(40))
    assert p3["skipped"].notna().tolist() == [i == 5 for i in range(40)] and pd.isna(p3.loc[5, "prediction"])
    assert p3.loc[5, "skipped"].startswith("photo: file 'img/5.png' is not a readable image") and (p3.drop(index=5)["prediction"] == pt.drop(index=5)["prediction"]).all()


def test_fusions_lists_every_strategy():
    r = run("fusions")
    from mmfuse.fusion import list_fusions

    assert [l.split()[0] for l in r.stdout.splitlines()] == list_fusions()


def test_inspect_reads_real_world_numbers_groups_by_pattern_and_lists_left_out_columns(tmp_path):
    n = 30
    rows = [";Rating;price;fac_a;fac_b;note;label"] + [
        f"{i};{i % 5 + 1};{i},5;{i * 0.5};{(i * 7) % 11};the item number {i} is fine;{'ab'[i % 2]}" for i in range(n)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    r = run("inspect", tmp_path / "t.csv", "--target", "label", "--group", "fac=fac_*", "--group", "all=note,Rating")
    assert r.returncode == 0, r.stderr
    lines = {l.split("│")[1].strip(): [p.strip() for p in l.split("│")[1:-1]]
             for l in r.stdout.splitlines() if l.count("│") > 5}
    assert lines["Unnamed: 0"][1:3] == ["id", ""] and "saved row index" in lines["Unnamed: 0"][3]
    assert lines["price"][1:3] == ["numeric", "tabular"] and "'0,5' reads as 0.5" in lines["price"][3]
    assert lines["fac_a"][1:3] == lines["fac_b"][1:3] == ["numeric", "fac"]
    assert lines["Rating"][1:3] == ["numeric", "all, tabular"] and "numeric or categorical?" in lines["Rating"][3]
    assert "not used for training (1): Unnamed: 0 (id)" in r.stdout
    r = run("inspect", tmp_path / "t.csv", "--group", "fac=fax_*")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1
    assert err[0].startswith("error: unknown column pattern in group 'fac': 'fax_*'; known: Rating, Unnamed: 0, "
                             "fac_a, fac_b, label, note, price. Did you mean 'fac_")


def test_fit_prints_its_plan_and_guards_its_folder_and_evaluate_reports_the_training(tmp_path):
    import json

    import pandas as pd

    # 30 rows of class a and 10 of b, all for training (--val given): balanced weights by hand are
    # N / (K * count) = 40 / (2 * 30) = 0.667 for a and 40 / (2 * 10) = 2 for b
    import torch

    device = "gpu (precision" if torch.cuda.is_available() else "cpu (precision 32-true)"
    rows = pd.DataFrame({"x": [float(i % 7) for i in range(40)], "y": ["a"] * 30 + ["b"] * 10})
    rows.to_csv(tmp_path / "t.csv", index=False)
    rows.iloc[::4].to_csv(tmp_path / "v.csv", index=False)
    (tmp_path / "cfg.yaml").write_text("train:\n  class_weight: balanced\n  batch_size: 8\n")
    args = ("fit", tmp_path / "t.csv", "--target", "y", "--val", tmp_path / "v.csv", "--epochs", "1", "--no-progress",
            "--config", tmp_path / "cfg.yaml", "--out", tmp_path / "run")
    r = run(*args)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    start = out.index("plan:")
    plan = "\n".join(out[start:start + 1 + next(i for i, x in enumerate(out[start + 1:]) if not x.startswith("  "))])
    assert start < out.index(next(x for x in out if "accuracy" in x))  # printed before the metrics
    assert "plan:\n  inputs: tabular (tabular from x; encoder tabular_mlp)\n  fusion: none (one input)\n" in plan
    assert "rows: train 40, validation 10" in plan
    assert "epochs: at most 1 (early stopping after 5 without improvement of validation loss); batch size 8; learning rate 0.001" in plan
    assert "class weighting: balanced: a 0.667, b 2\n" in plan and f"  device: {device}" in plan
    report = (tmp_path / "run" / "report.md").read_text()
    assert "- fusion: none (one input)" in report and "- best epoch: 1 of 1" in report
    assert "- class weighting: balanced: a 0.667, b 2" in report
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["plan"]["fusion"] == "none (one input)" and metrics["plan"]["split"]["rows"]["train"] == 40

    # the same folder again: refused in one line, unless --overwrite
    r = run(*args)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: --out {tmp_path / 'run'} holds another run (metrics.json, checkpoints, bundle); pass --overwrite "
        "to replace it, --resume to continue it, or choose another folder"]
    r = run(*args, "--overwrite", "--resume")  # two contradicting wishes: neither is carried out
    assert r.returncode == 2 and "--resume continues the run in" in r.stderr and "pass one of them" in r.stderr
    assert run(*args, "--overwrite").returncode == 0

    # evaluate --out: the evaluation, plus the training facts kept in the bundle
    r = run("evaluate", tmp_path / "run" / "bundle", tmp_path / "v.csv", "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "eval" / "report.md").read_text()
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"- evaluated: bundle {tmp_path / 'run' / 'bundle'} on {tmp_path / 'v.csv'}, 10 rows" in text
    assert f"- training time: {trained['train_seconds']:.1f} s" in text and "- best epoch: 1 of 1" in text
    assert "None" not in text and "- class weighting: balanced: a 0.667, b 2" in text

    # inspect BUNDLE: what it predicts from which columns, its plan and scores (a table is inspected as before)
    r = run("inspect", tmp_path / "run" / "bundle")
    assert r.returncode == 0, r.stderr
    assert "task: binary, target 'y', 2 classes: a, b" in r.stdout
    assert "  inputs: tabular (tabular from x; encoder tabular_mlp)" in r.stdout and "trained: best epoch 1 of 1" in r.stdout
    assert f"v.csv): accuracy {trained['val']['accuracy']:.4f}" in r.stdout and "--test" not in r.stdout
    r = run("inspect", tmp_path / "run")
    assert r.returncode == 2 and "is a run folder, not a bundle; did you mean" in r.stderr
    r = run("inspect", tmp_path / "run" / "bundle", "--target", "y", "--save-schema", tmp_path / "s.yaml")
    assert r.returncode == 2 and "--target, --save-schema: for a table;" in r.stderr
    assert not (tmp_path / "s.yaml").exists()


def test_bad_config_keys_and_values_are_one_line_with_the_closest_match(tmp_path):
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20)))
    for content, expected in (
            ("train:\n  epoch: 3\n", "error: unknown train setting 'epoch'"),
            ("model:\n  fusion: concatt\n", "error: setting 'fusion' must be a registered fusion"),
            ("fusoin: concat\n", "error: unknown config key 'fusoin'")):
        (tmp_path / "cfg.yaml").write_text(content)
        r = run("fit", tmp_path / "t.csv", "--target", "y", "--config", tmp_path / "cfg.yaml", "--out", tmp_path / "r")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), r.stderr
        assert "did you mean" in lines[0].lower()


def wide_image_table(tmp_path, n=40, size=(48, 16)):
    """n rows: a wide image, a subject (10 of them) and a label; written to data.csv."""
    import numpy as np
    import pandas as pd

    from conftest import write_png

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(n):
        write_png(tmp_path / "img" / f"{i}.png", rng, size=size)
    df = pd.DataFrame({"photo": [f"img/{i}.png" for i in range(n)], "subj": [f"s{i // 4}" for i in range(n)],
                       "y": ["a", "b"] * (n // 2)})
    df.to_csv(tmp_path / "data.csv", index=False)
    return df


def test_fit_group_column_image_flags_and_metrics_named_by_their_rows(tmp_path):
    import json

    df = wide_image_table(tmp_path)
    df.iloc[:8].to_csv(tmp_path / "test.csv", index=False)
    data = tmp_path / "data.csv"
    (tmp_path / "cfg.yaml").write_text("preprocessing:\n  image: {size: 16, channels: 1}\n")
    base = ("fit", data, "--target", "y", "--epochs", "1", "--no-progress", "--batch-size", "8")
    r = run(*base, "--group-column", "subj", "--image-size", "24x8", "--image-resize", "letterbox", "--config",
            tmp_path / "cfg.yaml", "--out", tmp_path / "r1")
    assert r.returncode == 0, r.stderr
    held = f"held-out 10% of the groups of 'subj' in {data}"
    assert f"\nvalidation ({held}): accuracy" in r.stdout and f"\ntest ({held}): accuracy" in r.stdout
    assert "validation split is small: 4 rows" in r.stderr and "aspect ratio" not in r.stderr  # 24x8 is 48x16's shape
    metrics = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert metrics["split_source"] == f"validation: {held}; test: {held}"
    bundle = json.loads((tmp_path / "r1" / "bundle" / "config.json").read_text())
    assert bundle["schema"]["columns"]["subj"] == "group"
    image = bundle["preprocessors"]["photo"]["config"]  # the flags win over the config file; its channels stay
    assert (image["size"], image["resize"], image["channels"]) == ([24, 8], "letterbox", 1)
    r = run("predict", tmp_path / "r1" / "bundle", data, "--out", tmp_path / "p.csv")  # a non-square bundle predicts
    assert r.returncode == 0, r.stderr

    r = run(*base, "--test", tmp_path / "test.csv", "--out", tmp_path / "r2")  # default size 64: crop warning
    assert r.returncode == 0, r.stderr
    assert f"\ntest ({tmp_path / 'test.csv'}): accuracy" in r.stdout
    assert f"\nvalidation (held-out 10% of {data}, stratified random): accuracy" in r.stdout
    assert "a center crop keeps 33% of each 48x16 image" in r.stderr

    r = run(*base, "--val", tmp_path / "test.csv", "--out", tmp_path / "r3")
    assert r.returncode == 0, r.stderr
    assert f"\nvalidation ({tmp_path / 'test.csv'}): accuracy" in r.stdout and "\ntest (" not in r.stdout
    assert "test: none (no test rows; pass --test TEST.csv" in r.stdout


@pytest.mark.parametrize("flags,expected", [
    (("--image-size", "24by8"), "error: --image-size must be a side in pixels (64) or WIDTHxHEIGHT (128x32, or "
                                "[128, 32] in a config file); got '24by8'"),
    (("--image-resize", "letterbx"), "error: unknown --image-resize 'letterbx'; known: crop, letterbox, pad, squash. "
                                     "Did you mean 'letterbox'?"),
])
def test_bad_image_flags_are_one_line(tmp_path, flags, expected):
    wide_image_table(tmp_path, n=8)
    r = run("fit", tmp_path / "data.csv", "--target", "y", "--out", tmp_path / "r", *flags)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [expected]


def test_inspect_warns_what_the_default_crop_loses_of_wide_images(tmp_path):
    wide_image_table(tmp_path, n=8, size=(80, 20))
    r = run("inspect", tmp_path / "data.csv", "--target", "y")
    assert r.returncode == 0, r.stderr
    assert ("image column 'photo': the training images' median aspect ratio (width/height) is 4.00 (e.g. 80x20) but "
            "size is 64x64: a center crop keeps 25% of each 80x20 image") in r.stderr
    assert "(--image-size 128x32)" in r.stderr


def test_mmfuse_warnings_are_one_note_line_each_not_a_python_warning(tmp_path):
    """A small validation split is worth saying once, as a note: no 'UserWarning', no source excerpt."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 2))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": np.where(x[:, 0] > 0, "p", "n")}).to_csv(tmp_path / "t.csv", index=False)
    r = run("fit", tmp_path / "t.csv", "-t", "y", "--epochs", "1", "--out", tmp_path / "f")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: the validation split is small")]
    assert len(notes) == 1 and "UserWarning" not in r.stderr and "split_table(" not in r.stderr


def test_evaluate_warns_when_it_scores_rows_the_model_trained_on(tmp_path, capsys):
    """A bundle keeps a fingerprint of each training and validation row: evaluate on the training table (no split
    column to tell) counts them and warns; on new rows it says nothing. The fingerprints survive a re-save."""
    from mmfuse.bundle import Predictor
    from mmfuse.cli import main

    from conftest import make_tabular_text_table

    df = make_tabular_text_table(200)
    df.iloc[:150].to_csv(tmp_path / "train.csv", index=False)
    df.iloc[150:].to_csv(tmp_path / "new.csv", index=False)
    main(["fit", str(tmp_path / "train.csv"), "--target", "y", "--epochs", "1", "--no-progress", "-o",
          str(tmp_path / "r")])
    p = Predictor.load(tmp_path / "r" / "bundle")
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    n_seen = sum(m["rows"][k] for k in ("train", "val")) if isinstance(m.get("rows"), dict) else None
    assert p.seen_rows is not None and (n_seen is None or len(p.seen_rows) == n_seen)
    capsys.readouterr()
    main(["evaluate", str(tmp_path / "r" / "bundle"), str(tmp_path / "train.csv")])
    out = capsys.readouterr().out
    assert f"warning: {len(p.seen_rows)} of these rows are rows the model trained or stopped early on" in out
    main(["evaluate", str(tmp_path / "r" / "bundle"), str(tmp_path / "new.csv")])
    assert "trained or stopped early on" not in capsys.readouterr().out
    p.save(tmp_path / "again")
    assert (Predictor.load(tmp_path / "again").seen_rows == p.seen_rows).all()
    many = pd.concat([df] * 60, ignore_index=True)  # 12,000 rows: the text is built 10,000 rows at a time
    assert (p.row_fingerprints(many) == np.tile(p.row_fingerprints(df), 60)).all()
    assert p.count_seen(many) == 60 * len(p.seen_rows) and p.count_seen(df.iloc[:0]) == 0
