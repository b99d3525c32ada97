"""Fusion weights by cross-validation: the α search recovers a known best α (within one grid step)."""
import json
import re

import numpy as np
import pandas as pd
import pytest

import mmfuse
from mmfuse import MmfuseError, MultimodalPredictor
from mmfuse.alpha import search_alpha, weight_grid

FAST = dict(epochs=3, min_steps=0, progress=False, log=None, contribution=False, batch_size=32,
            groups={"a": ["a1", "a2"], "b": ["b1", "b2"]})


def two_inputs(noise_a: float, noise_b: float, n=300, seed=0):
    """Label y = sign(s); each input is s (two copies) plus noise of its own scale; an input with
    noise 'inf' carries nothing (pure noise)."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    cols = {}
    for name, noise in (("a", noise_a), ("b", noise_b)):
        signal = np.zeros(n) if noise == np.inf else s
        scale = 1.0 if noise == np.inf else noise
        for j in (1, 2):
            cols[f"{name}{j}"] = signal + scale * rng.normal(size=n)
    df = pd.DataFrame(cols)
    df["y"] = np.where(s > 0, "pos", "neg")
    return df


@pytest.mark.parametrize("noise_a, noise_b, best_alpha", [
    (0.3, np.inf, 1.0),    # b is pure noise: all weight on a
    (np.inf, 0.3, 0.0),    # a is pure noise: all weight on b
    (0.5, 0.5, 0.5),       # equally reliable, conditionally independent: equal weights
    (0.5, 1.0, 0.8),       # inverse-variance weighting: 1/0.25 : 1/1 -> alpha 0.8 on a
    (1.0, 0.5, 0.2),
])
def test_alpha_search_recovers_the_known_best_alpha(tmp_path, noise_a, noise_b, best_alpha):
    res = search_alpha(MultimodalPredictor(target="y", **FAST), two_inputs(noise_a, noise_b), folds=3,
                       out=tmp_path / "alpha", compare_late=False, metric="log_loss")
    assert res.inputs == ["a", "b"]
    alpha = res.best["weights"]["a"]
    assert abs(alpha - best_alpha) <= 0.1 + 1e-9, (alpha, [(r["weights"]["a"], round(r["mean"], 4)) for r in res.points])
    # the honest score: each fold chooses on its validation rows and is scored on its held-out rows
    chosen = [w["a"] for w in res.chosen["weights_per_fold"]]
    assert len(chosen) == 3 and len(res.chosen["scores"]) == 3
    if best_alpha in (0.0, 1.0):  # a useless input: even ~20 validation rows per fold see it (with two equally
        assert abs(np.mean(chosen) - best_alpha) <= 0.2 + 1e-9, chosen  # good inputs the choice is noise)
    d = json.loads((tmp_path / "alpha" / "alpha.json").read_text())
    assert len(d["points"]) == 11 and len(d["best"]["scores"]) == 3
    assert (tmp_path / "alpha" / "alpha.png").stat().st_size > 0
    assert "CV-chosen weights" in (tmp_path / "alpha" / "alpha.md").read_text()
    # the best point is a setting of weighted fusion: fit --config reads it
    import yaml
    cfg = yaml.safe_load((tmp_path / "alpha" / "alpha_config.yaml").read_text())
    assert cfg["model"]["fusion"] == "weighted" and cfg["model"]["fusion_kwargs"]["weights"]["a"] == alpha
    assert MultimodalPredictor.from_config(cfg).fusion_kwargs == {"weights": res.best["weights"]}


def test_one_input_is_refused_before_any_fit(tmp_path):
    df = two_inputs(0.5, 0.5, n=60).drop(columns=["b1", "b2"])
    with pytest.raises(MmfuseError, match="at least 2 inputs; the model has 1"):
        search_alpha(MultimodalPredictor(target="y", **{**FAST, "groups": {"a": ["a1", "a2"]}}), df, folds=2,
                     out=tmp_path / "alpha")
    assert not (tmp_path / "alpha" / "learned").exists()
    # Optuna's budget does not apply to the fixed grid: said, not silently ignored
    for kw, flag in (({"n_trials": 5}, "--n-trials"), ({"timeout": 60.0}, "--timeout")):
        with pytest.raises(MmfuseError, match=f"--space alpha sweeps a fixed grid.*leave out {flag}: it belongs"):
            mmfuse.search(MultimodalPredictor(target="y", **FAST), two_inputs(0.5, 0.5, n=60), space="alpha",
                          out=tmp_path / "alpha", **kw)


def test_weight_grids():
    assert weight_grid(["a", "b"])[0] == (0.0, 1.0) and len(weight_grid(["a", "b"])) == 11
    three = weight_grid(["a", "b", "c"], simplex_steps=4)
    assert len(three) == 15 and all(abs(sum(w) - 1) < 1e-9 for w in three)
    many = weight_grid(list("abcde"), samples=10)
    assert len(many) == 16 and all(abs(sum(w) - 1) < 1e-3 for w in many)
    with pytest.raises(MmfuseError, match="at least 2 inputs"):
        weight_grid(["a"])
    with pytest.raises(MmfuseError, match="alphas must be numbers in"):
        weight_grid(["a", "b"], alphas=[0.5, 2])


def test_embed_gives_each_inputs_pooled_output_and_presence(tmp_path):
    df = two_inputs(0.5, 0.5, n=60)
    m = MultimodalPredictor(target="y", **{**FAST, "epochs": 1}).fit(df)
    part = df.head(5).copy()
    part.loc[[1, 3], ["b1", "b2"]] = np.nan  # input b absent from rows 1 and 3
    e = m.predictor_.embed(part)
    assert list(e["rows"]) == [0, 1, 2, 3, 4]
    assert e["present"]["b"].tolist() == [True, False, True, False, True] and e["present"]["a"].all()
    assert not e["features"]["b"][[1, 3]].any() and e["features"]["b"][[0, 2, 4]].any()
    # the features are what the fusion receives: the fusion on them gives the model's logits
    import torch
    feats = {n: torch.from_numpy(v) for n, v in e["features"].items()}
    masks = {n: torch.from_numpy(v) for n, v in e["present"].items()}
    model = m.predictor_.model
    with torch.no_grad():
        z = model.head(model.fusion(feats, masks))
    ref, rows = m.predictor_.logits(part)
    assert torch.allclose(z, ref, atol=1e-5)


def test_search_alpha_command_refuses_other_settings_in_out_unless_overwrite(tmp_path, capsys):
    from mmfuse.cli import main

    path = tmp_path / "t.csv"
    two_inputs(0.5, 0.5, n=60).to_csv(path, index=False)
    args = ["search", str(path), "-t", "y", "--space", "alpha", "--folds", "2", "--out", str(tmp_path / "al"),
            "-g", "a=a1,a2", "-g", "b=b1,b2"]
    main(args + ["--epochs", "1"])
    printed = capsys.readouterr().out
    assert "CV-chosen weights" in printed
    curve = [line for line in printed.splitlines() if re.match(r"\| [01]\.\d\d \| [01]\.\d\d \| ", line)]
    assert len(curve) == 11  # the whole CV curve is printed
    with pytest.raises(SystemExit) as e:
        main(args + ["--epochs", "2"])
    assert e.value.code == 2 and "other settings" in capsys.readouterr().err
    main(args + ["--epochs", "2", "--overwrite"])
    assert json.loads((tmp_path / "al" / "alpha.json").read_text())["chosen"]["scores"]
