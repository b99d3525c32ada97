"""mmfuse.robustness: seeded corruptions of decoded values, curves, missing inputs, MultiBench's summaries."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

import mmfuse
from mmfuse import MmfuseError, MultimodalPredictor
from mmfuse.io import Table
from mmfuse.robust import (_audio, _image, inputs_of, _series, _text, blank_inputs, corrupt_table,
                               effective_robustness, relative_robustness)

from conftest import word_table

FAST = dict(epochs=8, min_steps=0, progress=False, log=None, contribution=False, batch_size=32, seed=0)


def rng(i=0):
    return np.random.default_rng(i)


def test_corruptions_are_nested_across_levels_and_of_the_stated_size():
    a = np.full((40, 40), 200, np.uint8)
    for seed in range(5):  # a larger square covers the smaller one wherever the draws put it
        hidden = {lv: _image(a, "occlusion", lv, rng(seed)) == 0 for lv in (0.25, 0.64)}
        assert hidden[0.25].mean() == pytest.approx(0.25, abs=0.01) and hidden[0.64].mean() == pytest.approx(0.64, abs=0.01)
        assert (hidden[0.64] >= hidden[0.25]).all()
    noise = {lv: _image(a, "gaussian_noise", lv, rng()).astype(float) - 200 for lv in (0.1, 0.2)}
    assert np.corrcoef(noise[0.1].ravel(), noise[0.2].ravel())[0, 1] > 0.9  # the same draws, scaled
    assert np.std(noise[0.1]) == pytest.approx(25.5, rel=0.1)  # std 0.1 of the pixel range
    assert (_image(a, "blur", 0.0, rng()) == a).all()
    wave = np.sin(np.arange(8000) / 5.0)
    for level, snr in ((0.5, 0.0), (0.9, -9.54), (0.1, 9.54)):
        noisy = _audio(wave, 8000, "white_noise", level, rng())
        got = 10 * np.log10(np.mean(wave ** 2) / np.mean((noisy - wave) ** 2))
        assert got == pytest.approx(snr, abs=0.3)
    silent = _audio(wave, 8000, "dropout", 0.3, rng()) == 0
    assert silent.mean() == pytest.approx(0.3, abs=0.1) and ((_audio(wave, 8000, "dropout", 0.6, rng()) == 0) >= silent).all()
    text = " ".join(f"word{i}" for i in range(400))
    kept = {lv: set(_text(text, "word_drop", lv, rng()).split()) for lv in (0.3, 0.6)}
    assert len(kept[0.3]) == pytest.approx(280, abs=30) and kept[0.6] <= kept[0.3]
    typo = _text(text, "typos", 0.5, rng()).split()
    assert len(typo) == 400 and sum(w != o for w, o in zip(typo, text.split())) == pytest.approx(200, abs=35)
    series = np.arange(20.0)[:, None] * np.ones((1, 2))
    for seed in range(5):
        held = _series(series, "step_drop", 0.5, rng(seed), np.ones(2))
        assert (held[:, 0] <= series[:, 0]).all() and len(np.unique(held[:, 0])) < 20  # past values held, never future
    noisy = _series(series, "gaussian_noise", 0.5, rng(), np.array([2.0, 0.0]))
    assert np.std(noisy[:, 0] - series[:, 0]) == pytest.approx(1.0, rel=0.4) and (noisy[:, 1] == series[:, 1]).all()
    assert relative_robustness([0, 0.5, 1.0], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert effective_robustness([0.9, 0.8, 0.7], [0.8, 0.6, 0.4]) == pytest.approx(0.0 + 0.1 + 0.2)


def test_file_inputs_are_decoded_corrupted_and_written_again(tmp_path):
    """Images and recordings: the corrupted copies are files the model reads; the same seed gives the same
    files (every model sees the same rows); the original files are untouched."""
    (tmp_path / "d").mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 180, np.uint8)).save(tmp_path / "d" / f"{i}.png")
        sf.write(tmp_path / "d" / f"{i}.wav", np.sin(np.arange(4000) / 3.0).astype(np.float32), 8000)
    df = pd.DataFrame({"photo": [f"d/{i}.png" for i in range(3)], "clip": [f"d/{i}.wav" for i in range(3)],
                       "y": [0, 1, 0]})
    df.loc[1, "photo"] = None
    from mmfuse.robust import _Input

    inputs = {"photo": _Input("photo", "image", ("photo",), None), "clip": _Input("clip", "audio", ("clip",), None)}
    table = Table(df, tmp_path, "t")
    kinds = {"photo": "occlusion", "clip": "white_noise"}
    c1 = corrupt_table(table, inputs, kinds, 0.5, 0, tmp_path / "w1")
    c2 = corrupt_table(table, inputs, kinds, 0.5, 0, tmp_path / "w2")
    assert pd.isna(c1.df.loc[1, "photo"])  # missing stays missing
    for i in (0, 2):
        a1, a2 = (np.asarray(Image.open(c.df.loc[i, "photo"])) for c in (c1, c2))
        assert (a1 == a2).all() and (a1 == 0).mean() == pytest.approx(0.5, abs=0.08)
        w1, w2 = (sf.read(c.df.loc[i, "clip"])[0] for c in (c1, c2))
        assert np.array_equal(w1, w2) and not np.allclose(w1, sf.read(tmp_path / "d" / f"{i}.wav")[0], atol=0.1)
    assert not (np.asarray(Image.open(c1.df.loc[0, "photo"])) == np.asarray(Image.open(c1.df.loc[2, "photo"]))).all()
    assert (np.asarray(Image.open(tmp_path / "d" / "0.png")) == 180).all()
    other = corrupt_table(table, inputs, kinds, 0.5, 1, tmp_path / "w3")  # another seed, other draws
    assert not (np.asarray(Image.open(other.df.loc[0, "photo"])) == np.asarray(Image.open(c1.df.loc[0, "photo"]))).all()
    assert blank_inputs(table, inputs, ["clip"]).df["clip"].isna().all()
    (tmp_path / "d" / "0.png").write_bytes(b"not a png")
    with pytest.raises(MmfuseError, match="row 0, column 'photo': 'd/0.png' cannot be decoded to corrupt it"):
        corrupt_table(table, inputs, kinds, 0.5, 0, tmp_path / "w5")
    with pytest.raises(MmfuseError, match="input 'clip' \\(audio\\) has no corruption 'blur'; its corruptions: white_noise"):
        corrupt_table(table, inputs, {"clip": "blur"}, 0.5, 0, tmp_path / "w4")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A fused model (notes + a number) and a notes-only model; the label is read from the notes."""
    tmp = tmp_path_factory.mktemp("robust")
    df = word_table(240, seed=0)
    fused = MultimodalPredictor(target="y", fusion="concat", **FAST, out=tmp / "fused", test_fraction=0.0).fit(df)
    notes = MultimodalPredictor(target="y", inputs=["note"], **FAST, out=tmp / "notes", test_fraction=0.0).fit(df)
    return fused, notes, word_table(120, seed=1)


def test_robustness_curves_missing_inputs_and_summaries(models, tmp_path):
    fused, notes, test = models
    lines = []
    res = mmfuse.robustness({"fused": fused, "notes": notes}, test, levels=[0, 0.5, 0.9], out=tmp_path / "r",
                            echo=lines.append)
    f, n = res.models["fused"], res.models["notes"]
    assert set(f["curves"]) == {"note/typos", "note/word_drop", "tabular/drop", "tabular/swap", "all"}
    assert set(n["curves"]) == {"note/typos", "note/word_drop", "all"}  # it does not read the number
    assert f["clean"] == pytest.approx(fused.score(test)) and f["clean"] > 0.85
    for curve in f["curves"].values():
        assert curve[0] == f["clean"] and len(curve) == 3
    # the label is in the notes: dropping 90% of their words costs much; the number carries nothing
    assert f["curves"]["note/word_drop"][2] < f["clean"] - 0.2
    assert abs(f["curves"]["tabular/drop"][2] - f["clean"]) < 0.1
    assert f["missing"]["note"] < f["clean"] - 0.2 and abs(f["missing"]["tabular"] - f["clean"]) < 0.1
    assert n["missing"] == {}  # one input: nothing left to score without it
    # MultiBench's summaries, by hand: the baseline of two models is the second
    assert res.baseline == "notes"
    c, b = f["curves"]["note/word_drop"], n["curves"]["note/word_drop"]
    assert f["relative_robustness"]["note/word_drop"] == pytest.approx((c[0] + c[1]) * 0.25 + (c[1] + c[2]) * 0.2)
    assert f["effective_robustness"]["note/word_drop"] == pytest.approx(sum(np.subtract(c, b) - (c[0] - b[0])))
    # 'all' corrupts the number too, which the notes-only baseline never reads: not comparable, so not reported
    assert set(f["effective_robustness"]) == {"note/typos", "note/word_drop"}
    saved = json.loads((tmp_path / "r" / "robustness.json").read_text())
    assert saved["models"]["fused"]["curves"]["all"] == f["curves"]["all"] and saved["seed"] == 0
    assert "| fused | note/word_drop |" in (tmp_path / "r" / "robustness.md").read_text()
    assert (tmp_path / "r" / "robustness.png").stat().st_size > 5000
    assert not (tmp_path / "r" / "corrupted").exists()  # the corrupted copies are gone
    # a table with a split column: only its test rows are scored
    both = pd.concat([test.assign(split="test"), word_table(40, seed=3).assign(split="train")], ignore_index=True)
    split = mmfuse.robustness({"fused": fused}, both, levels=[0, 0.5], corruptions={"note": ["word_drop"]},
                              together=False, missing=False, echo=lines.append)
    assert split.models["fused"]["clean"] == pytest.approx(fused.score(test))
    assert any("scoring the 120 rows with split = test (of 160" in line for line in lines)
    with pytest.raises(MmfuseError, match="split column 'split' has no 'test' rows"):
        mmfuse.robustness(fused, both.assign(split="train"), levels=[0, 0.5])
    # tabular swaps move values between rows of the same column
    sw = corrupt_table(Table(test, tmp_path, "t"), inputs_of(fused.predictor_),
                       {"tabular": "swap"}, 0.5, 0, tmp_path / "sw")
    moved = sw.df["a"] != test["a"]
    assert 0.3 < moved.mean() < 0.6 and set(sw.df["a"]) <= set(test["a"])
    # the same seed gives the same numbers
    again = mmfuse.robustness({"fused": fused, "notes": notes}, test, levels=[0, 0.5, 0.9])
    assert again.models["fused"]["curves"] == f["curves"]


def test_robustness_refuses_bad_settings_in_one_line(models, tmp_path):
    fused, _, test = models
    with pytest.raises(MmfuseError, match="levels \\(--levels\\) must rise from 0"):
        mmfuse.robustness(fused, test, levels=[0.1, 0.5])
    with pytest.raises(MmfuseError, match="unknown input 'notes'.*Did you mean 'note'"):
        mmfuse.robustness(fused, test, corruptions={"notes": ["typos"]})
    with pytest.raises(MmfuseError, match="input 'note' \\(text\\) has no corruption 'blur'"):
        mmfuse.robustness(fused, test, corruptions={"note": ["blur"]})
    with pytest.raises(MmfuseError, match="baseline 'late' is not one of the models: model"):
        mmfuse.robustness(fused, test, baseline="late")
    with pytest.raises(MmfuseError, match="the table lacks inputs the models read: note \\(columns note\\)"):
        mmfuse.robustness(fused, test.rename(columns={"note": "review"}))
    with pytest.raises(MmfuseError, match="seed \\(--seed\\) must be an integer >= 0, got -1"):
        mmfuse.robustness(fused, test, seed=-1)
    (tmp_path / "f.csv").write_text("x")
    with pytest.raises(MmfuseError, match="--out .*f.csv is a file"):
        mmfuse.robustness(fused, test, out=tmp_path / "f.csv")
    assert set(inputs_of(fused.predictor_)) == {"note", "tabular"}


def test_robustness_command(models, tmp_path, capsys):
    from mmfuse.cli import main

    fused, notes, test = models
    test.to_csv(tmp_path / "test.csv", index=False)
    args = ["robustness", str(fused.out / "bundle"), str(tmp_path / "test.csv"), "--levels", "0,0.9",
            "--corrupt", "note=word_drop", "--no-together", "--name", "fused", "--out", str(tmp_path / "r")]
    main(args + ["--compare", f"notes={notes.out / 'bundle'}"])
    saved = json.loads((tmp_path / "r" / "robustness.json").read_text())
    assert set(saved["models"]) == {"fused", "notes"} and saved["baseline"] == "notes"
    assert set(saved["models"]["fused"]["curves"]) == {"note/word_drop"}
    assert "note/word_drop: fused" in capsys.readouterr().out
    for extra, msg in ((["--compare", "notes"], "write NAME=BUNDLE"), (["--levels", "0,half"], "write numbers"),
                       (["--corrupt", "note=blur"], "input 'note' \\(text\\) has no corruption 'blur'"),
                       (["--compare", f"fused={notes.out / 'bundle'}"], "the name 'fused' is taken")):
        with pytest.raises(SystemExit) as e:
            main(args + extra)
        assert e.value.code == 2
        assert re.search(msg, capsys.readouterr().err), msg
