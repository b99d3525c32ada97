import json
import subprocess
import sys

import numpy as np
import pytest

from mmfuse.api import MultimodalPredictor
from mmfuse.bundle import Predictor
from mmfuse.errors import MmfuseError

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
