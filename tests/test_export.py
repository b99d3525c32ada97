"""ONNX export: parity with PyTorch for every fusion and built-in encoder, and a predictor without torch."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_mm_table  # noqa: E402

from mmfuse import MmfuseError, MultimodalPredictor, Predictor  # noqa: E402
from mmfuse.errors import BundleError  # noqa: E402
from mmfuse.export import export_onnx  # noqa: E402
from mmfuse.onnx import OnnxPredictor  # noqa: E402

# each fusion with another kind of target, so that decoding (softmax, sigmoid and threshold, values) is
# checked through the exported graph too
CASES = {"concat": "binary", "weighted": "multiclass", "late": "multiclass", "gated": "regression",
         "attention": "multilabel", "tensor": "binary", "low_rank": "regression", "cross_attention": "binary"}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Text, image and tabular inputs (a BiLSTM, a CNN and an MLP), one table per kind of target."""
    d = tmp_path_factory.mktemp("export")
    df = pd.read_csv(make_mm_table(d, n=24)).drop(columns=["clip", "motion"])
    i = np.arange(len(df))
    targets = {"binary": df["label"], "multiclass": pd.Series(["a", "b", "c"])[i % 3].to_numpy(),
               "regression": df["age"].fillna(30) / 10 + (i % 2), "multilabel": np.where(i % 3, "x|y", "y")}
    out = {}
    for kind, y in targets.items():
        t = df.drop(columns=["label"]).assign(y=y)
        t.to_csv(d / f"{kind}.csv", index=False)
        out[kind] = d / f"{kind}.csv"
    return d, out


def fit_bundle(table, out, **kw):
    MultimodalPredictor(target="y" if "target" not in kw else kw.pop("target"), epochs=1, progress=False, log=None,
                        contribution=False, seed=0, dim=16, out=out, **kw).fit(table)
    return out / "bundle"


def check_same_predictions(bundle, export_dir, table, **kw):
    a = Predictor.load(bundle).predict_frame(table, **kw)
    b = OnnxPredictor.load(export_dir).predict_frame(table, **kw)
    assert list(a.columns) == list(b.columns)
    for c in a.columns:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(b[c].to_numpy(float), a[c].to_numpy(float), atol=1e-5, equal_nan=True)
        else:
            assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c
    return a, b


def test_every_fusion_is_covered():
    from mmfuse import list_fusions

    assert sorted(CASES) == sorted(list_fusions())


@pytest.mark.parametrize("fusion", sorted(CASES))
def test_every_fusion_exports_with_parity_and_predicts_alike(tables, fusion):
    d, by_kind = tables
    table = by_kind[CASES[fusion]]
    kw = {"fusion_kwargs": {"rank_dim": 4}} if fusion == "tensor" else {}
    bundle = fit_bundle(table, d / f"run_{fusion}", fusion=fusion, **kw)
    rep = export_onnx(bundle, d / f"onnx_{fusion}", table)
    cases = {c["case"]: c for c in rep["checks"]}
    # the rows as read (three have a blank cell), each input absent in every row, and a mix per row
    assert set(cases) == {"as read", "one row at a time", "without photo", "without review", "without tabular",
                          "absent inputs mixed per row"}
    assert cases["one row at a time"]["rows"] == 8
    assert all(c["rows"] == 24 for k, c in cases.items() if k != "one row at a time")
    assert rep["max_abs_diff"] <= 1e-4
    meta = json.loads((d / f"onnx_{fusion}" / "export.json").read_text())
    assert meta["parity"]["max_abs_diff"] == rep["max_abs_diff"]
    check_same_predictions(bundle, d / f"onnx_{fusion}", table)


def test_all_five_builtin_encoders_and_their_variants_export(tmp_path):
    """Text (a 2-layer BiLSTM, whose export reverses each row within its own length), image, audio,
    time series (with its GRU) and tabular encoders in one model; dynamic batch sizes."""
    table = make_mm_table(tmp_path, n=24)
    bundle = fit_bundle(table, tmp_path / "run", target="label", fusion="attention",
                        encoders={"text": {"layers": 2}, "timeseries": {"gru": True}})
    rep = export_onnx(bundle, tmp_path / "onnx", table)
    assert rep["max_abs_diff"] <= 1e-4
    assert {c["case"] for c in rep["checks"]} >= {"without clip", "without motion"}
    a, b = check_same_predictions(bundle, tmp_path / "onnx", table)
    one = OnnxPredictor.load(tmp_path / "onnx").predict_frame(pd.read_csv(table).iloc[[5]], root=tmp_path)
    assert one["proba_yes"].iloc[0] == pytest.approx(b["proba_yes"].iloc[5], abs=1e-6)  # batch of 1 and of 24


def test_the_dynamo_exporter_gives_the_same_graph_behaviour(tables):
    d, by_kind = tables
    table = d / "image_tabular.csv"
    pd.read_csv(by_kind["multiclass"]).drop(columns=["review"]).to_csv(table, index=False)
    bundle = fit_bundle(table, d / "run_dynamo", fusion="cross_attention")
    rep = export_onnx(bundle, d / "onnx_dynamo", table, exporter="dynamo")
    assert rep["exporter"] == "dynamo" and rep["max_abs_diff"] <= 1e-4 and len(rep["checks"]) == 5
    check_same_predictions(bundle, d / "onnx_dynamo", table)


def test_a_single_input_model_exports(tables):
    d, by_kind = tables
    table = d / "text_only.csv"
    pd.read_csv(by_kind["binary"])[["review", "y"]].to_csv(table, index=False)
    bundle = fit_bundle(table, d / "run_single")
    rep = export_onnx(bundle, d / "onnx_single", table)
    assert [c["case"] for c in rep["checks"]] == ["as read", "one row at a time", "without review",
                                                  "absent inputs mixed per row"]
    assert rep["max_abs_diff"] <= 1e-4
    check_same_predictions(bundle, d / "onnx_single", table)


def test_a_model_that_fills_in_absent_inputs_exports(tables):
    """The filler runs in the graph: each input absent is estimated from the others, as in PyTorch."""
    d, by_kind = tables
    table = by_kind["multiclass"]
    bundle = fit_bundle(table, d / "run_fill", fusion="cross_attention", fill_missing=True, align_weight=0.5,
                        modality_dropout=0.3)
    assert Predictor.load(bundle).model.filler is not None
    rep = export_onnx(bundle, d / "onnx_fill", table)
    assert rep["max_abs_diff"] <= 1e-4 and "without photo" in {c["case"] for c in rep["checks"]}
    check_same_predictions(bundle, d / "onnx_fill", table)


@pytest.fixture(scope="module")
def exported(tables):
    d, by_kind = tables
    bundle = fit_bundle(by_kind["binary"], d / "run_main", fusion="gated")
    export_onnx(bundle, d / "onnx_main", by_kind["binary"])
    return d, bundle, d / "onnx_main", by_kind["binary"]


@pytest.fixture(scope="module")
def all_modalities(tmp_path_factory):
    d = tmp_path_factory.mktemp("all")
    table = make_mm_table(d, n=24)
    bundle = fit_bundle(table, d / "run", target="label", fusion="concat")
    export_onnx(bundle, d / "onnx", table)
    return d, bundle, d / "onnx", table


def _predict_in_subprocess(onnx_dir, table, out, block_torch: bool):
    code = ("import sys\n" + ("sys.modules['torch'] = None  # any import of torch now fails\n" if block_torch else "")
            + "from mmfuse.onnx import OnnxPredictor\n"
            f"f = OnnxPredictor.load({str(onnx_dir)!r}).predict_frame({str(table)!r})\n"
            f"f.to_csv({str(out)!r}, index=False)\n"
            "print('torch imported:', sys.modules.get('torch') is not None)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), pd.read_csv(out)


@pytest.mark.parametrize("block_torch", [True, False], ids=["torch-unimportable", "torch-installed"])
def test_the_predictor_never_imports_torch(all_modalities, tmp_path, block_torch):
    """Text, image, audio, time series and tabular inputs: where torch cannot be imported the export still
    predicts as the bundle; where it is installed, predicting never imports it."""
    d, bundle, onnx_dir, table = all_modalities
    expected = Predictor.load(bundle).predict_frame(table)
    said, got = _predict_in_subprocess(onnx_dir, table, tmp_path / "p.csv", block_torch)
    assert said == "torch imported: False"
    assert got["prediction"].astype(str).tolist() == expected["prediction"].astype(str).tolist()
    np.testing.assert_allclose(got["proba_yes"], expected["proba_yes"], atol=1e-5)


def test_bad_input_policies_and_absent_columns_match_the_bundle(exported, tmp_path):
    d, bundle, onnx_dir, table = exported
    df = pd.read_csv(table)
    df.loc[2, "photo"] = "img/nope.png"
    df["age"] = df["age"].astype(object)
    df.loc[4, "age"] = "old"
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    for policy in ("skip", "missing"):
        a, b = check_same_predictions(bundle, onnx_dir, bad, on_bad_input=policy, root=d)
    assert "skipped" not in b.columns and b["prediction"].notna().all()  # missing: every row predicted
    o = OnnxPredictor.load(onnx_dir)
    frame = o.predict_frame(bad, on_bad_input="skip", root=d)
    assert frame.loc[frame["skipped"].notna(), "row"].tolist() == [2, 4]
    assert o.skipped_rows() == [2, 4]
    with pytest.raises(MmfuseError, match="row 2.*photo"):
        o.predict_frame(bad, root=d)
    # a column left out: the input is absent in every row, as with the bundle, and said so
    no_photo = df.drop(columns=["photo"]).iloc[[0, 1, 3]]
    check_same_predictions(bundle, onnx_dir, no_photo, root=d)
    o.predict_frame(no_photo, root=d)
    assert "photo (columns photo)" in o.describe_absent()
    with pytest.raises(MmfuseError, match="none of the model's inputs"):
        o.predict_frame(pd.DataFrame({"other": [1, 2]}))
    # a row with every input blank is named, as by the bundle
    blank = df.iloc[[0, 1, 3]].copy()
    for c in {c for p in o.preprocessors.values() for c in p.columns}:
        blank[c] = blank[c].astype(object)
        blank.loc[1, c] = None
    b = Predictor.load(bundle)
    for p in (o, b):
        p.predict_frame(blank, root=d)
        assert p.last_no_input == [1] and "1 row with every input blank" in p.describe_no_input()


def test_parity_above_the_tolerance_fails_and_writes_nothing(exported, tmp_path):
    d, bundle, _, table = exported
    with pytest.raises(MmfuseError, match="differs from the bundle by up to .*nothing was written"):
        export_onnx(bundle, tmp_path / "strict", table, tolerance=1e-30)
    assert not (tmp_path / "strict").exists()
    assert not list(tmp_path.glob(".strict*"))


def test_cli_export_and_predict_from_the_export(exported, tmp_path, capsys):
    from mmfuse.cli import main

    d, bundle, _, table = exported
    main(["export", str(bundle), "--data", str(table), "-o", str(tmp_path / "e"), "--rows", "10"])
    meta = json.loads((tmp_path / "e" / "export.json").read_text())
    assert meta["parity"]["rows"] == 10 and meta["inputs"][0]["mask"].endswith(".present")
    main(["predict", str(tmp_path / "e"), str(table), "-o", str(tmp_path / "p.csv")])
    got = pd.read_csv(tmp_path / "p.csv")
    want = Predictor.load(bundle).predict_frame(table)
    assert got["prediction"].astype(str).tolist() == want["prediction"].astype(str).tolist()
    capsys.readouterr()
    main(["inspect", str(tmp_path / "e")])  # inspect describes an export, as it does a bundle
    out = capsys.readouterr().out
    assert f"from the bundle {bundle}" in out and "checked against PyTorch on 10 rows" in out
    assert "\ninputs: " in out and " from " in out.split("\ninputs: ")[1].splitlines()[0]


@pytest.mark.parametrize("args,message", [
    (["--format", "tflite"], "--format 'tflite': mmfuse exports onnx"),
    (["--exporter", "torch"], "exporter must be one of torchscript, dynamo; got 'torch'"),
    (["--tolerance", "0"], "--tolerance must be a positive number, got 0.0"),
    (["-o", "FILE"], "is a file; give a folder"),
    (["-o", "FULL"], "is a folder with other files in it (notes.txt)"),
    (["-o", "EXPORT_PLUS"], "is a folder with other files in it (notes.txt)"),
    (["--opset", "99"], "--opset 99: the torchscript exporter writes opsets 17 to 20"),
    (["-o", "RUN"], "is the bundle, holds it or is inside it"),
    (["-o", "INSIDE"], "is the bundle, holds it or is inside it"),
    (["--no-data"], "--data TABLE is required"),
])
def test_cli_export_refuses_bad_options(exported, capsys, tmp_path, args, message):
    from mmfuse.cli import main

    import shutil

    d, bundle, onnx_dir, table = exported
    shutil.copytree(onnx_dir, tmp_path / "EXPORT_PLUS")
    (tmp_path / "EXPORT_PLUS" / "notes.txt").write_text("keep me")
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "notes.txt").write_text("keep me")
    where = {"FILE": tmp_path / "FILE", "FULL": tmp_path / "FULL", "RUN": bundle.parent, "INSIDE": bundle / "onnx",
             "EXPORT_PLUS": tmp_path / "EXPORT_PLUS"}
    args = [str(where.get(a, a)) for a in args]
    data = [] if args == ["--no-data"] else ["--data", str(table)]
    out = [] if "-o" in args else ["-o", str(tmp_path / "never")]
    with pytest.raises(SystemExit) as e:
        main(["export", str(bundle), *[a for a in args if a != "--no-data"], *data, *out])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) <= 2
    assert (tmp_path / "FULL" / "notes.txt").read_text() == "keep me" and (bundle / "config.json").is_file()
    assert (tmp_path / "EXPORT_PLUS" / "notes.txt").is_file()
    assert not (tmp_path / "never").exists() and not (bundle / "onnx").exists()


def test_damaged_or_wrong_folders_give_one_line(exported, tmp_path):
    import shutil

    d, bundle, onnx_dir, table = exported
    with pytest.raises(BundleError, match="export it first with `mmfuse export"):
        OnnxPredictor.load(bundle)
    with pytest.raises(BundleError, match="does not exist"):
        OnnxPredictor.load(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    (broken / "model.onnx").write_bytes((onnx_dir / "model.onnx").read_bytes()[:1000])
    with pytest.raises(BundleError, match="cannot be loaded by ONNX Runtime"):
        OnnxPredictor.load(broken)
    (broken / "export.json").write_text("{not json")
    with pytest.raises(BundleError, match="export.json is damaged"):
        OnnxPredictor.load(broken)
    shutil.rmtree(broken)
    shutil.copytree(onnx_dir, broken)
    (broken / "preprocessors.safetensors").write_bytes((onnx_dir / "preprocessors.safetensors").read_bytes()[:50])
    with pytest.raises(BundleError, match="its preprocessors or task cannot be read"):
        OnnxPredictor.load(broken)
    (broken / "preprocessors.safetensors").unlink()
    with pytest.raises(BundleError, match="preprocessors.safetensors is missing"):
        OnnxPredictor.load(broken)
    shutil.rmtree(broken)
    shutil.copytree(onnx_dir, broken)
    (broken / "preprocessors.json").write_text("[]")
    with pytest.raises(BundleError, match="its preprocessors or task cannot be read"):
        OnnxPredictor.load(broken)
    shutil.copy(onnx_dir / "preprocessors.json", broken / "preprocessors.json")
    meta = json.loads((onnx_dir / "export.json").read_text())
    for change in ({"inputs": None}, {"graph": "../model.onnx"},
                   {"inputs": [{**meta["inputs"][0], "mask": "renamed"}, *meta["inputs"][1:]]}):
        (broken / "export.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(BundleError, match="export.json is damaged|outside its folder|graph takes inputs that export.json"):
            OnnxPredictor.load(broken)


def test_the_bilstm_fixed_shape_encoding_equals_the_packed_one():
    """The exported BiLSTM reads each row reversed within its own length: rows of every length, and
    an empty one, give the packed encoder's outputs; reversing whole rows instead would not."""
    import torch

    from mmfuse.encoders.text_bilstm import TextBiLSTM

    torch.manual_seed(0)
    enc = TextBiLSTM(50, embed_dim=8, hidden=6, dim=5, layers=2).eval()
    lens = torch.tensor([10, 5, 1, 3, 0, 9, 2])  # the longest row is shorter than the width: encode trims
    x = torch.randint(1, 50, (7, 14))
    x[torch.arange(14)[None] >= lens[:, None]] = 0
    with torch.no_grad():
        p1, t1, m1 = enc.encode(x)
        p2, t2, m2 = enc.encode_fixed(x)
    T = t1.shape[1]
    assert torch.allclose(p1, p2, atol=1e-6) and torch.allclose(t1, t2[:, :T], atol=1e-6)
    assert T == 10 and torch.equal(m1, m2[:, :T]) and not m2[:, T:].any()
    assert torch.allclose(t2[:, T:], enc.tok.bias.expand(7, 4, -1))  # padded positions: the projection of zeros


def test_hugging_face_encoders_export_and_predict_without_torch(tmp_path):
    """A fine-tuned BERT, a frozen ViT whose embeddings the bundle caches (the graph then runs the
    backbone itself) and a wav2vec2: parity, and the export's own tokenizer and processors read the
    rows in a process where torch cannot be imported."""
    pytest.importorskip("transformers")
    from hf_fixtures import tiny_bert, tiny_vit, tiny_wav2vec2

    table = make_mm_table(tmp_path, n=24)
    enc = {"text": {"name": "hf", "model": str(tiny_bert(tmp_path / "bert")), "max_length": 16},
           "image": {"name": "hf", "model": str(tiny_vit(tmp_path / "vit")), "train": "frozen"},
           "audio": {"name": "hf", "model": str(tiny_wav2vec2(tmp_path / "w2v")), "duration": 0.25}}
    bundle = fit_bundle(table, tmp_path / "run", target="label", fusion="attention", encoders=enc)
    rep = export_onnx(bundle, tmp_path / "onnx", table)
    assert rep["max_abs_diff"] <= 1e-4 and len(rep["checks"]) == 8  # as read, one by one, 5 inputs absent, mixed
    meta = json.loads((tmp_path / "onnx" / "export.json").read_text())
    raw = {e["name"]: e for e in meta["inputs"] if e["raw"]}
    assert list(raw) == ["photo"] and [a["key"] for a in raw["photo"]["arrays"]] == ["pixel_values"]
    want = Predictor.load(bundle).predict_frame(table)
    import shutil

    shutil.copytree(tmp_path / "onnx", tmp_path / "no_tokenizer")
    shutil.rmtree(tmp_path / "no_tokenizer" / "hf" / "review")
    with pytest.raises(BundleError, match="hf/review/ \\(a tokenizer or processor\\) is missing"):
        OnnxPredictor.load(tmp_path / "no_tokenizer")
    for sub in ("bert", "vit", "w2v"):  # the export stands alone: the backbones' folders may go
        shutil.rmtree(tmp_path / sub)
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mmfuse.onnx import OnnxPredictor\n"
            f"OnnxPredictor.load({str(tmp_path / 'onnx')!r}).predict_frame({str(table)!r})"
            f".to_csv({str(tmp_path / 'p.csv')!r}, index=False)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(tmp_path / "p.csv")
    assert got["prediction"].astype(str).tolist() == want["prediction"].astype(str).tolist()
    np.testing.assert_allclose(got["proba_yes"], want["proba_yes"], atol=1e-5)


def test_commands_that_need_a_bundle_say_an_export_is_not_one(exported):
    d, bundle, onnx_dir, table = exported
    with pytest.raises(BundleError, match="is an ONNX export, not a bundle: predict from it with `mmfuse predict`"):
        Predictor.load(onnx_dir)


def test_cli_predict_from_an_export_in_chunks_with_skipped_rows(exported, tmp_path):
    """`mmfuse predict EXPORT` goes through the same chunked writer as a bundle: the same lines, skipped
    rows kept with their reason, also in a chunk where every row is skipped."""
    from mmfuse.cli import main

    d, bundle, onnx_dir, table = exported
    df = pd.read_csv(table)
    df.loc[10:14, "photo"] = "img/missing.png"  # every row of the third chunk of 5 is bad
    bad = d / "bad_rows.csv"
    df.to_csv(bad, index=False)
    for src, name in ((bundle, "torch.csv"), (onnx_dir, "onnx.csv")):
        main(["predict", str(src), str(bad), "-o", str(tmp_path / name), "--on-bad-input", "skip", "--chunk-rows", "5"])
    a, b = pd.read_csv(tmp_path / "torch.csv"), pd.read_csv(tmp_path / "onnx.csv")
    assert list(a.columns) == list(b.columns) and b["skipped"].notna().sum() == 5
    assert a["skipped"].fillna("").tolist() == b["skipped"].fillna("").tolist()
    assert a["prediction"].fillna("").astype(str).tolist() == b["prediction"].fillna("").astype(str).tolist()
    np.testing.assert_allclose(b["proba_yes"], a["proba_yes"], atol=1e-5)


def test_a_tabular_input_without_numbers_exports(tables):
    """Its numeric array is 0 wide and unused, so the graph has no such input: it is left out of the feeds."""
    d, by_kind = tables
    table = d / "no_numbers.csv"
    pd.read_csv(by_kind["binary"]).drop(columns=["age"]).to_csv(table, index=False)
    bundle = fit_bundle(table, d / "run_no_numbers")
    rep = export_onnx(bundle, d / "onnx_no_numbers", table)
    assert rep["max_abs_diff"] <= 1e-4
    check_same_predictions(bundle, d / "onnx_no_numbers", table)
    # an earlier export in the folder, and nothing else, is replaced
    export_onnx(bundle, d / "onnx_no_numbers", table, rows=5)
    assert json.loads((d / "onnx_no_numbers" / "export.json").read_text())["parity"]["rows"] == 5
