import json
import subprocess
import sys

import numpy as np
import pytest

from mmfuse.api import MultimodalPredictor
from mmfuse.bundle import Predictor
from mmfuse.errors import BundleError, MmfuseError

from conftest import make_tabular_text_table


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("b")
    df = make_tabular_text_table(120)
    m = MultimodalPredictor(target="y", fusion="gated", epochs=2, progress=False, log=None, contribution=False)
    m.fit(df)
    m.save(d / "bundle")
    df.to_csv(d / "data.csv", index=False)
    return d


def test_bundle_holds_safetensors_and_json_only(bundle):
    files = sorted(p.name for p in (bundle / "bundle").iterdir())
    assert files == ["config.json", "model.safetensors"]
    cfg = json.loads((bundle / "bundle" / "config.json").read_text())
    assert {"format", "mmfuse_version", "torch_version", "schema", "target", "preprocessors", "model", "metrics"} <= set(cfg)
    assert cfg["target"]["classes"] == ["0", "1", "2", "3"]


def test_save_replaces_atomically_and_leaves_no_temp(bundle):
    p = Predictor.load(bundle / "bundle")
    MultimodalPredictor.load(bundle / "bundle").save(bundle / "bundle")
    assert not [x for x in bundle.iterdir() if x.name.startswith(".")]
    assert np.allclose(Predictor.load(bundle / "bundle").predict_proba(bundle / "data.csv"),
                       p.predict_proba(bundle / "data.csv"))


def test_incompatible_or_missing_bundle_is_refused(bundle, tmp_path):
    import shutil

    shutil.copytree(bundle / "bundle", tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    cfg["format"] = 999
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MmfuseError, match="has format 999.*this mmfuse reads format 1"):
        Predictor.load(tmp_path / "old")
    with pytest.raises(MmfuseError, match="is not an mmfuse bundle"):
        Predictor.load(tmp_path)


def test_prediction_path_imports_no_training_stack(bundle):
    code = (f"import sys; from mmfuse.bundle import Predictor; p = Predictor.load({str(bundle / 'bundle')!r}); "
            f"p.predict({str(bundle / 'data.csv')!r}); "
            "bad = [m for m in ('lightning', 'optuna', 'sklearn', 'matplotlib', 'transformers', 'scipy.signal') "
            "if m in sys.modules]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def names_table(text: str, number: str, category: str, n: int = 48):
    """A text, a numeric and a categorical column under the given names, and a learnable target y."""
    import pandas as pd

    rng = np.random.default_rng(0)
    word = rng.choice(["alpha", "beta"], n)
    x = rng.normal(size=n)
    return pd.DataFrame({text: [f"the item is {w}" for w in word], number: x, category: rng.choice(["u", "v"], n),
                         "y": np.where((word == "alpha") ^ (x > 0), "p", "q")})


@pytest.mark.parametrize("text,number,category", [
    ("Review.Text", "type", "a/b"),  # R's dotted name, an nn.Module attribute, a slash
    ("review/text", "a/b", "c"),  # slashes only: the model was built, but its bundle could not be loaded
])
def test_inputs_named_like_any_column_round_trip_through_a_bundle(text, number, category, tmp_path):
    df = names_table(text, number, category)
    m = MultimodalPredictor(target="y", fusion="cross_attention", epochs=1, out=tmp_path / "run",
                            groups={number: [number], category: [category]}, progress=False, log=None,
                            contribution=False, dim=16, head_hidden=16, batch_size=16, aux_weight=0.1)
    m.fit(df)
    names = sorted([text, number, category])
    assert m.predictor_.model.names == names
    proba = m.predict_proba(df)
    m.save(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert sorted(cfg["preprocessors"]) == sorted(cfg["model"]["encoders"]) == names  # the user's spelling
    loaded = Predictor.load(tmp_path / "b")
    assert loaded.model.names == names
    assert np.array_equal(loaded.predict_proba(df), proba)
    assert sorted(m.evaluate(df, contribution=True)["contribution"]["without"]) == names


def test_preprocessors_of_inputs_a_and_a_slash_b_keep_their_own_arrays(tmp_path):
    import pandas as pd

    from mmfuse import build_preprocessors
    from mmfuse.preprocessing import load_preprocessors, save_preprocessors
    from mmfuse.schema import Role, Schema

    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "a/b": [10.0, 20.0, 40.0], "y": [0, 1, 0]})
    schema = Schema({"a": Role.NUMERIC, "a/b": Role.NUMERIC, "y": Role.TARGET}, groups={"a": ["a"], "a/b": ["a/b"]})
    preps = build_preprocessors(schema, df)
    save_preprocessors(preps, tmp_path)
    loaded = load_preprocessors(tmp_path)
    assert sorted(loaded) == ["a", "a/b"]
    for name in preps:
        (meta, arrays), (meta2, arrays2) = preps[name].get_state(), loaded[name].get_state()
        assert meta == meta2 and sorted(arrays) == sorted(arrays2)
        assert all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)
    assert loaded["a/b"].get_state()[1]["num.median"].tolist() == [20.0]  # not a's 2.0


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_config(edit):
    def apply(folder):
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    return apply


def _edit_tensors(edit):
    def apply(folder):
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(folder / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(folder / "model.safetensors"))
    return apply


def _reshape_first_matrix(tensors):
    import torch

    key = next(k for k, v in sorted(tensors.items()) if k.startswith("model/") and v.ndim == 2)
    tensors[key] = torch.zeros(3, 3)


DAMAGE = [
    ("truncated config.json", lambda d: _cut(d / "config.json"),
     r"config\.json is not valid JSON \(line \d+, column \d+: .*\); it may be truncated"),
    ("image as config.json", lambda d: (d / "config.json").write_bytes(PNG), r"config\.json is not text"),
    ("list as config.json", lambda d: (d / "config.json").write_text("[1, 2]"),
     "config.json holds a JSON list, not an object"),
    ("config.json without preprocessors", _edit_config(lambda c: c.pop("preprocessors")),
     "config.json lacks 'preprocessors'"),
    ("config.json without format", _edit_config(lambda c: c.pop("format")), "config.json lacks 'format'"),
    ("model spec is a list", _edit_config(lambda c: c.update(model=[])),
     "config.json has a list, not an object, as 'model'"),
    ("a key missing deep inside", _edit_config(lambda c: next(iter(c["preprocessors"].values())).pop("config")),
     "config.json or model.safetensors lacks 'config'"),
    ("truncated model.safetensors", lambda d: _cut(d / "model.safetensors"),
     r"model\.safetensors cannot be read \(.*\); it may be truncated"),
    ("CSV as model.safetensors", lambda d: (d / "model.safetensors").write_text("a,b\n1,2\n"),
     r"model\.safetensors cannot be read"),
    ("a tensor of the wrong shape", _edit_tensors(_reshape_first_matrix),
     r"model\.safetensors does not match the model in config\.json \(size mismatch for .*torch\.Size\(\[3, 3\]\)"),
    ("a preprocessor array missing",
     _edit_tensors(lambda t: t.pop(next(k for k in sorted(t) if k.startswith("prep/")))),
     "config.json or model.safetensors lacks '"),
]


@pytest.mark.parametrize("damage, message", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damaged_bundle_is_named_damaged_in_one_line(bundle, tmp_path, damage, message):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle / "bundle", copy)
    damage(copy)
    with pytest.raises(BundleError, match=message) as e:
        Predictor.load(copy)
    msg = str(e.value)
    assert msg.startswith(f"bundle {str(copy)!r} is damaged: ") and msg.endswith("or retrain") and "\n" not in msg


def test_a_folder_that_is_not_a_bundle_says_what_to_pass(bundle, tmp_path):
    import shutil

    with pytest.raises(BundleError, match=r"bundle folder '.*nope' does not exist"):
        Predictor.load(tmp_path / "nope")
    with pytest.raises(BundleError, match=r"config\.json' is a file, not a bundle folder; pass the folder it is in, "
                                          r"'.*bundle'"):
        Predictor.load(bundle / "bundle" / "config.json")
    with pytest.raises(BundleError, match=r"data\.csv' is a file, not a bundle folder"):
        Predictor.load(bundle / "data.csv")
    with pytest.raises(BundleError, match=r"is a run folder, not a bundle; did you mean '.*/bundle'\?"):
        Predictor.load(bundle)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="is not an mmfuse bundle: it has no config.json and model.safetensors"):
        Predictor.load(tmp_path / "empty")
    hf = tmp_path / "hf"  # another library's model folder holds files of the same names
    shutil.copytree(bundle / "bundle", hf)
    (hf / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 8}))
    with pytest.raises(BundleError, match="not an mmfuse bundle: its config.json has no 'format' nor 'mmfuse_version'"):
        Predictor.load(hf)


def test_embedded_backbone_folders_of_two_inputs_never_collide():
    from mmfuse.bundle import _safe

    names = ["a/b", "a_b", "a:b", "..", ".", "review", "Review.Text"]
    folders = [_safe(n) for n in names]
    assert len(set(folders)) == len(names)  # "a/b" and "a_b" used to share backbones/a_b
    assert all(f.strip(".") and "/" not in f for f in folders)  # never "..", never a sub-folder
    assert _safe("review") == "review" and _safe("Review.Text") == "Review.Text"  # plain names as before


def test_a_format_1_bundle_with_names_escaped_today_still_loads_and_predicts_the_same():
    """tests/data/format1_bundle was written by mmfuse at 1dc8a8b (make.py beside it): inputs named
    'Discount %', 'get' and 'num %' (a tabular group, so its preprocessor arrays are renamed too), which
    today's safe keys escape, with cross-attention pair keys and aux heads."""
    from pathlib import Path

    import pandas as pd

    from mmfuse.bundle import Predictor

    d = Path(__file__).parent / "data" / "format1_bundle"
    pred = Predictor.load(d / "bundle")
    assert sorted(pred.model.names) == ["Discount %", "get", "num %"]
    expected = pd.read_csv(d / "expected.csv")
    table = pd.read_csv(d / "table.csv")
    np.testing.assert_allclose(pred.predict_proba(table)[:, 1], expected["proba_yes"], atol=1e-5)
    assert pred.predict(table).tolist() == expected["prediction"].tolist()


@pytest.mark.parametrize("damage, message", [
    (lambda c: c["model"]["model"].update(fusion="nope"), "setting 'fusion' must be a registered fusion"),
    (lambda c: c["target"].update(classes=None), "needs a list of at least two class names"),
    (lambda c: c["target"].update(task="ranking"), "unknown task 'ranking'"),
])
def test_a_config_that_cannot_be_built_is_named_damaged(tmp_path, damage, message):
    import shutil

    from pathlib import Path

    src = Path(__file__).parent / "data" / "format1_bundle" / "bundle"
    shutil.copytree(src, tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    damage(cfg)
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match=f"is damaged: config.json describes what this mmfuse cannot build .*{message}"):
        Predictor.load(tmp_path / "b")


def test_a_saved_bundle_is_readable_by_other_users(tmp_path):
    import os
    import stat

    from mmfuse import MultimodalPredictor

    from conftest import make_tabular_text_table

    MultimodalPredictor(target="y", epochs=1, progress=False, log=None, contribution=False).fit(
        make_tabular_text_table(60)).save(tmp_path / "b")
    umask = os.umask(0o022)
    os.umask(umask)
    for p in [tmp_path / "b", *(tmp_path / "b").rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o777 if p.is_dir() else 0o666) & ~umask, (p.name, oct(mode))
