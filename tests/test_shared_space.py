"""The shared space of a model: projection heads, the alignment and filling losses, filling in absent
inputs with every fusion, embeddings through save and load, and fit from aligned encoders."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmfuse import MultimodalPredictor, Predictor
from mmfuse.encoders import create_encoder
from mmfuse.fusion import FUSIONS, create_fusion, list_fusions
from mmfuse.model import Head, MultimodalModel, parse_pairs


def model(fusion="concat", fill=False, pairs=(("a", "b"),), S=6, seed=0, space="features"):
    torch.manual_seed(seed)
    enc = {"a": create_encoder("tabular_mlp", n_numeric=2, dim=8), "b": create_encoder("tabular_mlp", n_numeric=3, dim=8),
           "c": create_encoder("tabular_mlp", n_numeric=1, dim=8)}
    logits = FUSIONS.get(fusion).produces_logits
    width = S if fill and space == "shared" else 8
    f = create_fusion(fusion, {n: width for n in enc}, dim=3 if logits else 8,
                      **({"rank_dim": 2} if fusion == "tensor" else {}))
    m = MultimodalModel(enc, f, None if logits else Head(8, 3, 8), shared_dim=S, align_pairs=pairs,
                        fill_missing=fill, fill_space=space)
    if fill and space == "features":  # the filled-in output where an input is absent (0 until fit chooses)
        m.fill_mix = {n: 1.0 for n in m.names}
    return m


def batch(B=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = {"a": {"num": torch.randn(B, 4, generator=g)}, "b": {"num": torch.randn(B, 6, generator=g)},
         "c": {"num": torch.randn(B, 2, generator=g)}}
    return x, {n: torch.ones(B, dtype=torch.bool) for n in x}


def test_pairs_parse_against_the_inputs():
    assert parse_pairs([], ["b", "a", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert parse_pairs(["x:y:z"], ["x:y", "z"]) == [("x:y", "z")]  # a name holding ':' is found
    assert parse_pairs(["b:a", "a:b"], ["a", "b"]) == [("b", "a")]  # a pair once
    for bad in (["a:q"], ["a:a"], ["ab"]):
        with pytest.raises(ValueError, match="pair"):
            parse_pairs(bad, ["a", "b"])


def test_rows_with_an_absent_input_leave_the_pair_loss_unchanged():
    m = model().eval()  # (in training, batch norm would let one row's values reach the others)
    x, masks = batch()
    masks["b"][:5] = False
    loss = m.alignment_loss(m(x, masks))
    x2 = {**x, "a": {"num": x["a"]["num"].clone()}}
    x2["a"]["num"][:5] = 100.0  # the absent-b rows' a changes: neither positive nor negative anywhere
    assert float(m.alignment_loss(m(x2, masks)).detach()) == pytest.approx(float(loss.detach()), abs=1e-6)
    x2["a"]["num"][7] = 100.0  # a present row changes: the loss changes
    assert float(m.alignment_loss(m(x2, masks)).detach()) != pytest.approx(float(loss.detach()), abs=1e-4)


@pytest.mark.parametrize("space", ["features", "shared"])
@pytest.mark.parametrize("fusion", list_fusions())
def test_every_fusion_reads_the_filled_estimate_of_an_absent_input(fusion, space):
    m = model(fusion, fill=True, space=space).eval()
    x, masks = batch(8)
    masks["b"][:4] = False
    out = m(x, masks)
    assert torch.isfinite(out["logits"]).all()
    with torch.no_grad():  # the filler's estimate reaches the output: changing it changes the absent rows only
        m.filler.nets["b"][-1].bias += 1.0
    out2 = m(x, masks)
    changed = (out2["logits"] - out["logits"]).abs().amax(1) > 1e-6
    assert changed[:4].all() and not changed[4:].any()
    # the absent input's own values never matter
    x3 = {**x, "b": {"num": x["b"]["num"].clone()}}
    x3["b"]["num"][:4] = 50.0
    assert torch.allclose(m(x3, masks)["logits"], out2["logits"], atol=1e-6)


@pytest.mark.parametrize("space", ["features", "shared"])
def test_the_fill_loss_is_taught_where_the_input_is_present_and_not_what_it_fills(space):
    m = model(fill=True, space=space).train()
    with torch.no_grad():  # the estimators of a and c ignore b: only b's own term could reach b's embedding
        for n in ("a", "c"):
            m.filler.nets[n][0].weight.zero_()
    x, masks = batch()
    masks["b"][:5] = False
    out = m(x, masks)
    loss = m.fill_loss(out)
    # the target is the detached shared embedding: b's own term sends no gradient to it
    (g_b,) = torch.autograd.grad(loss, out["shared"]["b"], retain_graph=True, allow_unused=True)
    assert g_b is None or float(g_b.abs().sum()) == 0.0
    (g_est,) = torch.autograd.grad(loss, out["filled"]["b"], retain_graph=True)
    assert float(g_est[:5].abs().sum()) == 0.0 and float(g_est[5:].abs().sum()) > 0  # taught where b is present
    # by hand: the mean over inputs of each one's mean cosine distance on its present rows
    cos = torch.nn.functional.cosine_similarity
    terms = [(1 - cos(out["filled"][n][masks[n]], out["shared"][n][masks[n]], dim=-1)).mean() for n in "abc"]
    if space == "features":  # and each decoder's relative squared error to the encoder's output
        for n in "abc":
            f = out["features"][n][masks[n]]
            d = m.decoders[n](torch.nn.functional.normalize(out["filled"][n][masks[n]], dim=-1))
            terms.append(((d - f) ** 2).mean() / ((f ** 2).mean() + 1e-6))
    assert float(loss) == pytest.approx(float(torch.stack(terms).mean()), abs=1e-6)


def test_filling_in_features_leaves_a_row_with_every_input_as_without_filling_in():
    """fill_space="features": the fusion reads the encoders' outputs; a row with every input present gives
    the logits of the same weights without a filler, and an absent input's logits differ from zeroing it."""
    filled, plain = model("gated", fill=True), model("gated", fill=False)
    plain.load_state_dict({k: v for k, v in filled.state_dict().items() if k in plain.state_dict()})
    filled.eval(), plain.eval()
    x, masks = batch(8)
    assert torch.allclose(filled(x, masks)["logits"], plain(x, masks)["logits"], atol=1e-6)
    masks["b"][:4] = False
    a, b = filled(x, masks)["logits"], plain(x, masks)["logits"]
    assert torch.allclose(a[4:], b[4:], atol=1e-6) and not torch.allclose(a[:4], b[:4], atol=1e-4)
    filled.use_estimates = False  # the ablation: estimates replaced by zeros is exactly zeroing
    assert torch.allclose(filled(x, masks)["logits"], b, atol=1e-6)


# --- through the estimator and the bundle ---------------------------------------------------------------
def paired_table(n=400, seed=0):
    """Two inputs that share a latent (A: the latent; B: a rotation of it, squashed), and a label of it."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 4))
    rot = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    a, b = z + 0.1 * rng.standard_normal((n, 4)), np.tanh(z @ rot) + 0.1 * rng.standard_normal((n, 4))
    df = pd.DataFrame({**{f"a{i}": a[:, i] for i in range(4)}, **{f"b{i}": b[:, i] for i in range(4)}})
    df["y"] = np.where(z[:, 0] + z[:, 1] > 0, "pos", "neg")
    return df


GROUPS = {"A": [f"a{i}" for i in range(4)], "B": [f"b{i}" for i in range(4)]}
QUIET = dict(progress=False, log=None)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    from mmfuse.align import align

    out = tmp_path_factory.mktemp("align") / "run"
    df = paired_table()
    return align(df.drop(columns="y"), ["A:B"], out, groups=GROUPS, shared_dim=16, dim=32, epochs=15, seed=0,
                 **QUIET), df


def test_alignment_learns_to_retrieve_the_pair(aligned):
    from mmfuse.retrieval import evaluate_retrieval

    pred, df = aligned
    m = pred.config["metrics"]
    assert m["pairs"] == ["A:B"] and m["shared_dim"] == 16
    test = df.tail(100)
    res = evaluate_retrieval(pred, test, test, "A", "B")
    assert res["recall@1"] > 0.5 and res["recall@10"] > 0.9  # chance: 0.01 and 0.1
    # against the same architecture before alignment
    from mmfuse._build import model_from_spec

    fresh = Predictor(model_from_spec(pred.config["model"]), pred.preprocessors, None, pred.schema, pred.config)
    assert evaluate_retrieval(fresh, test, test, "A", "B")["recall@1"] < 0.2


def test_embeddings_survive_save_and_load_and_are_unit_length(aligned, tmp_path):
    pred, df = aligned
    loaded = Predictor.load(pred.path)
    e1, e2 = pred.embed(df.head(30)), loaded.embed(df.head(30))
    assert e1["space"] == "shared" and set(e1["inputs"]) == {"A", "B"}
    for n in ("A", "B"):
        np.testing.assert_array_equal(e1["inputs"][n], e2["inputs"][n])
        np.testing.assert_allclose(np.linalg.norm(e1["inputs"][n], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(e1["fused"], e2["fused"])
    only = loaded.embed(df.head(30)[GROUPS["B"]], input="B")  # one input: its columns are enough
    np.testing.assert_array_equal(only["inputs"]["B"], e1["inputs"]["B"])
    assert "fused" not in only and set(only["inputs"]) == {"B"} and e1["aligned_pairs"] == ["A:B"]
    again = Predictor.load(loaded.save(tmp_path / "copy"))
    np.testing.assert_array_equal(again.embed(df.head(30))["inputs"]["A"], e1["inputs"]["A"])
    with pytest.raises(Exception, match="aligned encoders"):
        loaded.predict(df.head(3))


def test_fit_from_aligned_encoders_starts_from_them(aligned):
    pred, df = aligned
    m = MultimodalPredictor("y", init_from=pred.path, epochs=1, min_steps=0, lr=1e-9, **QUIET).fit(df.head(200))
    assert m.metrics_["init_from"]["aligned"] == ["A", "B"]
    # at a learning rate of ~0, the encoders and projections are the aligned ones
    e_new, e_old = m.predictor_.embed(df.head(20)), pred.embed(df.head(20))
    for n in ("A", "B"):
        np.testing.assert_allclose(e_new["inputs"][n], e_old["inputs"][n], atol=1e-4)
    scratch = MultimodalPredictor("y", groups=GROUPS, epochs=1, min_steps=0, shared_dim=16, dim=32, **QUIET).fit(df.head(200))
    assert not np.allclose(scratch.predictor_.embed(df.head(20))["inputs"]["A"], e_old["inputs"]["A"], atol=1e-2)


def test_a_fill_model_saves_loads_and_predicts_with_an_input_absent(tmp_path):
    from mmfuse.errors import MmfuseError

    df = paired_table(300)
    m = MultimodalPredictor("y", groups=GROUPS, fill_missing=True, modality_dropout=0.3, align_weight=0.5,
                            fusion="gated", epochs=2, min_steps=0, **QUIET).fit(df)
    hist = m.history_[-1]
    assert "val_fill_loss" in hist and "val_align_loss" in hist
    p = Predictor.load(m.save(tmp_path / "b"))
    no_b = df.head(20).drop(columns=GROUPS["B"])
    np.testing.assert_allclose(p.predict_proba(no_b), m.predict_proba(no_b), atol=1e-6)
    assert p.model.filler is not None and p.model.fusion.input_dims == {"A": 128, "B": 128}
    # the ablation: estimates replaced by zeros change the rows without B, and only those (with the filled-in
    # output alone where B is absent, whatever weight fit chose)
    p.fill_mix = {"B": 1.0}
    half = df.head(20).copy()
    half.loc[:9, GROUPS["B"]] = np.nan
    filled = p.predict_proba(half)
    assert p.fill_estimates is True
    p.fill_estimates = False
    zeroed = p.predict_proba(half)
    moved = np.abs(filled - zeroed).max(1) > 1e-6
    assert moved[:10].all() and not moved[10:].any()
    p.fill_estimates = True
    np.testing.assert_allclose(p.predict_proba(half), filled, atol=1e-6)
    plain = MultimodalPredictor("y", groups=GROUPS, epochs=1, min_steps=0, **QUIET).fit(df.head(60)).predictor_
    assert plain.fill_estimates is None
    with pytest.raises(MmfuseError, match="without fill_missing"):
        plain.fill_estimates = False


@pytest.mark.parametrize("fusion, align", [("concat", 0.5), ("gated", 0.0)])
def test_filling_in_changes_nothing_the_rest_of_the_network_learns(fusion, align):
    """fill_space features: the encoders, projections, fusion and head of a model that fills in learn exactly what
    they learn without filling in, from the same seed (the filled-in output trains the filler alone, its gradient
    norm is clipped apart, its pass does not draw from the run's random generator; without alignment, the inputs
    dropout hid are encoded aside, in eval mode, as the filler's targets): the same weights and validation losses,
    and at weight 0 the same predictions with an input absent (validation scores the input-masked output: rows
    of every split lack B)."""
    df = paired_table(300)
    df.loc[df.sample(frac=0.2, random_state=0).index, GROUPS["B"]] = np.nan
    kw = dict(groups=GROUPS, modality_dropout=0.3, align_weight=align, fusion=fusion, dropout=0.3, epochs=3,
              min_steps=0, grad_clip=0.05, contribution=False, seed=3, **QUIET)  # a clip that acts at every step
    filled = MultimodalPredictor("y", fill_missing=True, **kw).fit(df)
    zeroed = MultimodalPredictor("y", **kw).fit(df)
    a, b = filled.predictor_.model.state_dict(), zeroed.predictor_.model.state_dict()
    assert set(b) < set(a) and [k for k in b if not torch.equal(a[k], b[k])] == []
    assert [h["val_loss"] for h in filled.history_] == [h["val_loss"] for h in zeroed.history_]
    half = df.head(40).copy()
    half.loc[:19, GROUPS["B"]] = np.nan
    half.loc[20:, GROUPS["B"]] = paired_table(300).loc[20:39, GROUPS["B"]]
    filled.predictor_.fill_mix = {"A": 0.0, "B": 0.0}
    np.testing.assert_array_equal(filled.predict_proba(half), zeroed.predict_proba(half))
    filled.predictor_.fill_mix = {"A": 1.0, "B": 1.0}  # the estimates do reach the rows without B
    moved = np.abs(filled.predict_proba(half) - zeroed.predict_proba(half)).max(1) > 1e-6
    assert moved[:20].all() and not moved[20:].any()


def test_a_bundle_saved_before_fill_space_loads_as_it_was_trained(tmp_path):
    """Bundles from before the ``fill_space`` setting have no such key and read shared embeddings."""
    import json

    df = paired_table(120)
    m = MultimodalPredictor("y", groups=GROUPS, fill_missing=True, fill_space="shared", fusion="gated", epochs=1,
                            min_steps=0, **QUIET).fit(df)
    path = m.save(tmp_path / "b")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["model"]["model"]["fill_space"]
    (path / "config.json").write_text(json.dumps(cfg))
    p = Predictor.load(path)
    assert p.model.fill_space == "shared" and p.model.decoders is None
    no_b = df.head(20).drop(columns=GROUPS["B"])
    np.testing.assert_allclose(p.predict_proba(no_b), m.predict_proba(no_b), atol=1e-6)


def test_a_continued_old_fill_bundle_keeps_its_fill_space():
    from mmfuse.feedback import mixed_model_config
    from mmfuse.config import ModelConfig

    assert mixed_model_config({"model": {"fill_missing": True}}, ModelConfig()).fill_space == "shared"
    assert mixed_model_config({"model": {"fill_missing": True, "fill_space": "features"}},
                              ModelConfig()).fill_space == "features"


def test_settings_that_need_a_shared_space_are_checked():
    from mmfuse.errors import MmfuseError

    df = paired_table(60)
    with pytest.raises(MmfuseError, match=r"needs at least two inputs, and this model has one \('A'\).*--group NAME=COL,COL"):
        MultimodalPredictor("y", inputs=["A"], groups=GROUPS, fill_missing=True, epochs=1, **QUIET).fit(df)
    with pytest.raises(MmfuseError, match="pair"):
        MultimodalPredictor("y", groups=GROUPS, align_weight=1.0, align_pairs=["A:Q"], epochs=1, **QUIET).fit(df)
    with pytest.raises(MmfuseError, match="align_pairs"):
        MultimodalPredictor("y", groups=GROUPS, align_pairs=["AB"], epochs=1, **QUIET).fit(df)


def test_alignment_without_rows_holding_both_inputs_is_refused(tmp_path):
    from mmfuse.align import align
    from mmfuse.errors import MmfuseError

    df = paired_table(80).drop(columns="y")
    df.loc[:39, GROUPS["A"]] = np.nan  # A only in the second half, B only in the first: never together
    df.loc[40:, GROUPS["B"]] = np.nan
    with pytest.raises(MmfuseError, match="nothing to align.*A:B has 0 row"):
        align(df, ["A:B"], tmp_path / "x", groups=GROUPS, epochs=1, **QUIET)


def test_align_pairs_without_an_alignment_weight_are_refused():
    from mmfuse.errors import MmfuseError

    with pytest.raises(MmfuseError, match="align_weight > 0"):
        MultimodalPredictor("y", groups=GROUPS, align_pairs=["A:B"], epochs=1, **QUIET).fit(paired_table(60))


def test_retrieval_refuses_a_shared_space_never_aligned():
    from mmfuse.errors import MmfuseError
    from mmfuse.retrieval import retrieve

    df = paired_table(100)
    m = MultimodalPredictor("y", groups=GROUPS, fill_missing=True, epochs=1, min_steps=0, **QUIET).fit(df)
    assert m.predictor_.model.projections is not None and m.predictor_.aligned_pairs == []
    with pytest.raises(MmfuseError, match="never trained to match"):
        retrieve(m.predictor_, df, df, "A", "B")


def test_the_filler_never_reads_the_input_it_estimates():
    """On rows where b is present (where the filler learns), its estimate of b is the same whatever b holds."""
    m = model(fill=True).eval()
    x, masks = batch()
    est = m(x, masks)["filled"]
    x2 = {**x, "b": {"num": x["b"]["num"] + 5.0}}
    est2 = m(x2, masks)["filled"]
    assert torch.allclose(est["b"], est2["b"], atol=1e-6)
    assert not torch.allclose(est["a"], est2["a"], atol=1e-3)  # b does inform the others' estimates


@pytest.mark.parametrize("space", ["features", "shared"])
def test_an_absent_input_informs_no_estimate_and_no_output(space):
    """Rows where a and b are both absent: c's estimate, b's estimate and the logits are the same whatever a
    holds (an absent input is zeros for the filler, however its cells were filled), and a does inform them
    where it is present."""
    m = model(fill=True, space=space).eval()
    x, masks = batch()
    masks = {**masks, "a": torch.arange(16) >= 8, "b": torch.arange(16) < 12}  # rows 0-7: a absent; 12-15: b
    masks["b"][:4] = False  # rows 0-3: a and b absent, only c present
    x2 = {**x, "a": {"num": x["a"]["num"] * 3.0 + 1.0}}
    o1, o2 = m(x, masks), m(x2, masks)
    for key in ("b", "c"):
        assert torch.allclose(o1["filled"][key][:8], o2["filled"][key][:8], atol=1e-6)
    assert torch.allclose(o1["logits"][:8], o2["logits"][:8], atol=1e-6)
    assert not torch.allclose(o1["logits"][8:], o2["logits"][8:], atol=1e-3)
    assert not torch.allclose(o1["filled"]["b"][12:], o2["filled"]["b"][12:], atol=1e-3)
    with torch.no_grad():  # nor whatever its encoder and projection make of nothing (marked absent, not zero)
        for p in m.projections["a"].parameters():
            p.add_(0.5)
    o3 = m(x, masks)
    assert torch.allclose(o1["filled"]["b"][:8], o3["filled"]["b"][:8], atol=1e-6)
    assert torch.allclose(o1["logits"][:8], o3["logits"][:8], atol=1e-6)


def test_the_output_mixes_the_filled_in_and_the_input_masked_fusions_where_an_input_is_absent():
    """fill_space features: a row with every input is the same whatever the mix; a row with b absent is the
    input-masked output at weight 0 (as with the estimates off), the filled-in one at 1, the mean at 0.5; and
    the task's loss is the input-masked output's, the filled-in one's (on the rows with b absent) its own term."""
    from mmfuse.tasks import create_task
    from mmfuse.training.module import LitMultimodal
    from mmfuse.config import ModelConfig, TrainConfig

    m = model(fill=True).eval()
    x, masks = batch()
    masks = {**masks, "b": torch.arange(16) >= 6}  # rows 0-5: b absent
    outs = {}
    for lam in (0.0, 0.5, 1.0):
        m.fill_mix = {"b": lam}
        outs[lam] = m(x, masks)
    m.use_estimates = False
    off = m(x, masks)["logits"]
    m.use_estimates = True
    f, z = outs[1.0]["logits_filled"], outs[1.0]["logits_masked"]
    assert not torch.allclose(f[:6], z[:6], atol=1e-3) and torch.equal(f[6:], z[6:])
    for lam, o in outs.items():
        assert torch.equal(o["logits"][6:], f[6:])
    assert torch.allclose(outs[0.0]["logits"][:6], off[:6], atol=1e-6)
    assert torch.equal(outs[1.0]["logits"][:6], f[:6])
    assert torch.allclose(outs[0.5]["logits"][:6], (f[:6] + z[:6]) / 2, atol=1e-6)
    task = create_task("multiclass", "t").fit(pd.DataFrame({"t": ["x", "y", "z"] * 6}))
    y = torch.tensor([0, 1, 2, 1] * 4)
    lit = LitMultimodal(m, task, None, None, TrainConfig(), ModelConfig(fill_missing=True), None)
    parts = lit.loss_parts(outs[0.5], y)
    assert torch.allclose(parts["task"], task.loss(z, y, None))
    assert torch.allclose(parts["fill_task"], task.loss(f[:6], y[:6], None))


@pytest.mark.parametrize("fusion", list_fusions())
def test_the_filled_in_output_and_the_filling_loss_train_the_filler_alone(fusion):
    """In training, the gradient of ``fill_task`` (the filled-in output's loss) and of ``fill`` reaches the filler
    and its decoders, each of them, and nothing else; ``fill_task`` is a term of the objective, at weight 1."""
    from mmfuse.config import ModelConfig, TrainConfig
    from mmfuse.tasks import create_task
    from mmfuse.training.module import LitMultimodal

    m = model(fusion, fill=True).train()
    x, masks = batch()
    masks = {**masks, "b": torch.arange(16) >= 6, "c": torch.arange(16) % 3 > 0}
    task = create_task("multiclass", "t").fit(pd.DataFrame({"t": ["x", "y", "z"] * 6}))
    y = torch.tensor([0, 1, 2, 1] * 4)
    lit = LitMultimodal(m, task, None, None, TrainConfig(), ModelConfig(fill_missing=True, align_weight=0.5), None)
    out = m(x, masks)
    parts = lit.loss_parts(out, y)
    assert float(lit.loss(out, y)) == pytest.approx(float(parts["task"] + 0.5 * parts["align"] + parts["fill"]
                                                         + parts["fill_task"]), rel=1e-6)
    named = [(k, p) for k, p in m.named_parameters() if p.requires_grad]
    for part in ("fill_task", "fill"):
        grads = torch.autograd.grad(parts[part], [p for _, p in named], retain_graph=True, allow_unused=True)
        moved = {k for (k, _), g in zip(named, grads) if g is not None and float(g.abs().sum()) > 0}
        assert moved and all(k.startswith(("filler.", "decoders.")) for k in moved), (part, moved)
        if part == "fill_task":  # the estimates of b and c, their confidence, their decoders
            assert {k.split(".")[2] for k in moved if k.startswith("filler.")} == {"b", "c"}
            assert {k.split(".")[1] for k in moved if k.startswith("decoders.")} == {"b", "c"}


def test_a_fill_weight_is_kept_only_where_it_helps_by_more_than_one_standard_error():
    """Scores that are minus the loss (regression's squared error): the rule on the loss alone."""
    from mmfuse.pipeline import pick_fill_weight

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 2.0, 400)
    noise = rng.normal(0, 0.5, 400)

    def pick(loss):
        return pick_fill_weight(loss, {w: -v for w, v in loss.items()})

    clear = {0.0: base, 0.5: base - 0.2 + 0.1 * noise, 1.0: base - 0.1 + 0.1 * noise}
    assert pick(clear)[0] == 0.5  # the best weight, its gain far beyond its standard error
    slight = {0.0: base, 0.5: base - 0.01 + noise, 1.0: base + noise}  # a lower mean, within noise
    w, (gain, se) = pick(slight)
    assert w == 0.0 and 0 < gain < se
    assert pick({0.0: base, 1.0: base})[0] == 0.0  # a tie: no filling in
    assert pick({0.0: base[:29], 1.0: base[:29] - 1})[0] == 0.0  # 29 rows: too few to measure a gain
    assert pick({0.0: base[:30], 1.0: base[:30] - 1 + 0.1 * noise[:30]})[0] == 1.0  # 30: enough
    nan = clear[0.5].copy()
    nan[7] = np.nan  # a weight whose output is not finite on one row is out, whatever its mean elsewhere
    assert pick({**clear, 0.5: nan})[0] == 1.0


def test_the_weight_kept_is_the_best_by_the_metric_among_those_whose_loss_is_not_higher():
    from mmfuse.pipeline import pick_fill_weight

    rng = np.random.default_rng(1)
    loss0 = rng.uniform(0.2, 2.0, 500)
    right = (rng.uniform(size=500) < 0.5).astype(float)
    wrong_rows = np.flatnonzero(right == 0)

    def more_right(k):
        out = right.copy()
        out[wrong_rows[:k]] = 1.0
        return out

    loss = {0.0: loss0, 0.25: loss0 - 0.3, 0.5: loss0 - 0.05, 0.75: loss0 + 0.01, 1.0: loss0 - 0.1}
    scores = {0.0: right, 0.25: more_right(2), 0.5: more_right(40), 0.75: more_right(60), 1.0: more_right(10)}
    # 0.25 has the lowest loss (2 rows more right: noise); 0.75 gets the most right but its loss is higher;
    # 0.5 gets more right than 1.0
    w, (gain, se) = pick_fill_weight(loss, scores)
    assert w == 0.5 and gain == pytest.approx(40 / 500) and gain > se


def test_fit_chooses_the_mix_on_validation_and_a_bundle_keeps_it(tmp_path):
    """After a fit the weights are chosen and saved; with a filler made useless (its decoders' output reversed, its
    confidence full) the chooser turns to the input-masked output (weight 0) for that input."""
    from mmfuse.pipeline import choose_fill_mix

    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 3))
    b = a @ rng.normal(size=(3, 2)) + 0.3 * rng.normal(size=(300, 2))
    df = pd.DataFrame({"a0": a[:, 0], "a1": a[:, 1], "a2": a[:, 2], "b0": b[:, 0], "b1": b[:, 1],
                       "y": np.where(a[:, 0] + b[:, 0] > 0, "p", "n")})
    m = MultimodalPredictor("y", groups={"A": ["a0", "a1", "a2"], "B": ["b0", "b1"]}, fill_missing=True,
                            modality_dropout=0.3, epochs=3, progress=False, log=None, contribution=False,
                            out=tmp_path / "run", val_fraction=0.3)
    m.fit(df)
    chosen = m.metrics_["fill_mix"]["chosen"]
    assert set(chosen) == {"A", "B"} and all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in chosen.values())
    p = Predictor.load(tmp_path / "run" / "bundle")
    assert p.fill_mix == chosen
    with torch.no_grad():  # the estimate of B turned against itself, at full confidence
        for w in p.model.decoders["B"].parameters():
            w.mul_(-10)
        p.model.filler.nets["B"][-1].bias[-1] = 30.0
    val = df.iloc[m.splits_["ids"]["val"]]
    from mmfuse.data import MultimodalDataset
    from mmfuse.io import Table

    ds = MultimodalDataset(Table(val.reset_index(drop=True), None, "val"), p.preprocessors, p.target)
    out = choose_fill_mix(p, ds)
    assert out["chosen"]["B"] == 0.0 and p.fill_mix["B"] == 0.0, out
    with pytest.raises(Exception, match="fill_mix: C=0.5"):
        p.fill_mix = {"C": 0.5}


def test_the_command_line_fills_in_and_states_the_weights_it_chose(tmp_path, capsys):
    from mmfuse.cli import main

    paired_table(200).to_csv(tmp_path / "t.csv", index=False)
    main(["fit", str(tmp_path / "t.csv"), "--target", "y", "--group", "A=a0,a1,a2,a3", "--group", "B=b0,b1,b2,b3",
          "--fill-missing", "--modality-dropout", "0.3", "--epochs", "2", "--no-progress", "-o", str(tmp_path / "r")])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("filling in absent inputs: share of the estimate"))
    chosen = Predictor.load(tmp_path / "r" / "bundle").fill_mix
    gains = json.loads((tmp_path / "r" / "metrics.json").read_text())["fill_mix"]["gain_se"]
    assert line.endswith(", ".join(f"{n} {v:g} ({gains[n][0]:+.4f} ± {gains[n][1]:.4f})" for n, v in chosen.items()))


def test_on_the_judged_metric_a_lower_loss_with_lower_accuracy_is_no_help():
    """With row scores (1 or 0: right or wrong), a weight that lowers the validation loss by far but gets fewer rows
    right is not kept; one that gets clearly more rows right, its loss not higher, is; a few more rows right,
    within noise, are not."""
    from mmfuse.pipeline import pick_fill_weight
    from mmfuse.tasks import fit_task

    rng = np.random.default_rng(0)
    base_loss = rng.uniform(0.2, 2.0, 500)
    right = (rng.uniform(size=500) < 0.6).astype(float)
    flip = np.flatnonzero(right == 1)[:15]
    worse = right.copy()
    worse[flip] = 0.0  # 15 rows fewer right
    loss = {0.0: base_loss, 1.0: base_loss - 0.05}  # the loss falls by far
    assert pick_fill_weight(loss, {w: -v for w, v in loss.items()})[0] == 1.0  # by the loss alone: kept
    assert pick_fill_weight(loss, {0.0: right, 1.0: worse})[0] == 0.0  # by accuracy: no
    better = right.copy()
    better[np.flatnonzero(right == 0)[:40]] = 1.0  # 40 rows more right (8 points)
    w, (gain, se) = pick_fill_weight(loss, {0.0: right, 1.0: better})
    assert w == 1.0 and gain == pytest.approx(40 / 500) and gain > se
    few = right.copy()
    few[np.flatnonzero(right == 0)[:3]] = 1.0  # 3 rows more right, 2 fewer: a net 1, within one standard error
    few[np.flatnonzero(right == 1)[:2]] = 0.0
    assert pick_fill_weight(loss, {0.0: right, 1.0: few})[0] == 0.0
    higher = {0.0: base_loss, 1.0: base_loss + 0.01}  # more rows right, but the loss rises: no
    assert pick_fill_weight(higher, {0.0: right, 1.0: better})[0] == 0.0
    # row scores by task: right/wrong, the share of labels right, minus the squared error
    df = pd.DataFrame({"y": ["a", "b", "c"] * 4})
    task = fit_task(df, "y")
    z = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    assert task.row_scores(z, torch.tensor([0, 1, 2])).tolist() == [1.0, 0.0, 1.0]


class _TwoOutputs:
    """A stand-in predictor for :func:`choose_fill_mix`: the input-masked output ``z0`` (weight 0) and the
    filled-in one ``z1`` (weight 1) of one input, A."""

    def __init__(self, task, z0, z1):
        from types import SimpleNamespace

        self.target, self.z = task, {0.0: z0, 1.0: z1}
        self.model = SimpleNamespace(names=["A"], fill_mix=None)

    def logits(self, data, dataset=None, absent=()):
        return self.z[self.model.fill_mix["A"]], np.arange(len(dataset._y))


def test_the_chooser_judges_by_the_headline_metric_not_the_loss():
    """Through choose_fill_mix: a filled-in output with a far lower loss but fewer rows right is not used; for
    multilabel, one that raises the share of labels right by predicting every label absent (macro-F1 falls to 0)
    is not used either; one that gets more rows right, its loss not higher, is."""
    from types import SimpleNamespace

    from mmfuse.pipeline import choose_fill_mix
    from mmfuse.tasks import fit_task

    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 3, n)
    task = fit_task(pd.DataFrame({"y": ["a", "b", "c"] * 2}), "y")
    z0 = torch.tensor(np.eye(3)[y] * 1.0 + rng.normal(0, 1.0, (n, 3)), dtype=torch.float32)  # right ~ 60 %
    right0 = (z0.argmax(1).numpy() == y)
    z1 = z0.clone()  # wrong rows: still wrong, but nearly even (their loss falls by far); 60 right rows: the same
    wrong = np.concatenate([np.flatnonzero(~right0), np.flatnonzero(right0)[:60]])
    z1[wrong] = torch.tensor(np.roll(np.eye(3)[y[wrong]], 1, axis=1) * 0.1, dtype=torch.float32)
    ds = SimpleNamespace(_y=y)
    out = choose_fill_mix(_TwoOutputs(task, z0, z1), ds)
    assert out["val_loss"]["A"]["1.0"] < out["val_loss"]["A"]["0.0"]  # the loss alone would fill in
    assert out["chosen"]["A"] == 0.0
    better = torch.tensor(np.eye(3)[y] * 3.0, dtype=torch.float32)  # every row right and sure
    assert choose_fill_mix(_TwoOutputs(task, z0, better), ds)["chosen"]["A"] > 0
    # multilabel: 4 rare labels; the filled-in output predicts none of them. Mixing a little of it in lowers the
    # loss and keeps the share of labels right, but lowers macro-F1, the headline: judged by macro-F1 (on
    # resamples), the best weight's gain is macro-F1's, and it is not used
    ml = fit_task(pd.DataFrame({"y": [["p"], ["q"], ["r"], ["s"]]}), "y")
    Y = (rng.uniform(size=(n, 4)) < 0.06).astype(np.float32)
    m0 = torch.tensor(np.where(Y > 0, 0.5, -2.0) + rng.normal(0, 1.0, (n, 4)), dtype=torch.float32)
    m1 = torch.full((n, 4), -3.0)
    f1 = {w: ml.quick_metrics(w * m1 + (1 - w) * m0, torch.from_numpy(Y))["macro_f1"] for w in (0.0, 0.25)}
    out = choose_fill_mix(_TwoOutputs(ml, m0, m1), SimpleNamespace(_y=Y))
    assert out["val_loss"]["A"]["0.25"] < out["val_loss"]["A"]["0.0"] and f1[0.25] < f1[0.0] - 0.05
    assert out["chosen"]["A"] == 0.0 and out["gain_se"]["A"][0] == pytest.approx(f1[0.25] - f1[0.0], abs=0.03)
