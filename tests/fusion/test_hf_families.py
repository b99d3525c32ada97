"""Every fusion with every family of Hugging Face backbone (tiny random models from hf_fixtures).

Backbones differ in what they hand to a fusion: CLIP towers pool to ``projection_dim`` but
their tokens are ``hidden_size`` wide; convolutional ones give feature maps; Whisper and AST
take spectrogram features. Each case is one forward and backward pass of a small model
(the backbone, a tabular input, the fusion, a head) on three rows, one without the backbone's input.
"""
import numpy as np
import pytest
import torch

import hf_fixtures as H
from mmfuse._build import assemble
from mmfuse.config import ModelConfig
from mmfuse.encoders import create_encoder
from mmfuse.encoders.hf import HFEncoder
from mmfuse.fusion import list_fusions

# family -> (fixture, modality, pooling)
FAMILIES = {
    "bert": ("bert", "text", "auto"),
    "clip_text": ("clip", "text", "auto"),  # pooled: projection_dim 12, tokens: hidden_size 16
    "clip_text_mean_pooled": ("clip", "text", "mean"),  # pooled from the tokens: 16, not the projection's 12
    "clip_vision": ("clip", "image", "auto"),
    "vit": ("vit", "image", "auto"),
    "dinov2": ("dinov2", "image", "auto"),
    "resnet": ("resnet", "image", "auto"),
    "convnext": ("convnext", "image", "auto"),
    "wav2vec2": ("wav2vec2", "audio", "auto"),
    "hubert": ("hubert", "audio", "auto"),
    "ast": ("ast", "audio", "auto"),
    "whisper": ("whisper", "audio", "auto"),
}
FUSIONS_AND_OPTIONS = [(f, {}) for f in list_fusions()] + [("attention", {"use_tokens": True})]
B, K = 3, 2


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Fixture folder, encoder and a batch for each family, made once."""
    d = tmp_path_factory.mktemp("families")
    folders = {f: getattr(H, f"tiny_{f}")(d / f) for f in {fx for fx, _, _ in FAMILIES.values()}}
    out = {}
    for family, (fixture, modality, pooling) in FAMILIES.items():
        torch.manual_seed(0)
        enc = HFEncoder(str(folders[fixture]), modality, pooling=pooling, train="full")
        out[family] = enc, raw_inputs(str(folders[fixture]), modality)
    return out


def raw_inputs(folder: str, modality: str) -> dict:
    """What the hf_* preprocessors give for B rows."""
    from mmfuse.hf import load_processor

    proc = load_processor(folder, modality)
    rng = np.random.default_rng(0)
    if modality == "text":
        enc = proc(["good item", "the dress is great today", "bad"], padding="max_length", max_length=8,
                   truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if modality == "image":
        from PIL import Image

        ims = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(B)]
        return {"pixel_values": proc(images=ims, return_tensors="pt")["pixel_values"]}
    waves = [rng.normal(size=1600).astype(np.float32) for _ in range(B)]
    feats = proc(waves, sampling_rate=16000, return_tensors="pt")
    return {k: v for k, v in feats.items() if k in ("input_values", "input_features")}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("fusion,options", FUSIONS_AND_OPTIONS,
                         ids=[f + ("_tokens" if o else "") for f, o in FUSIONS_AND_OPTIONS])
def test_every_fusion_with_every_backbone_family(fusion, options, family, backbones):
    enc, x = backbones[family]
    encoders = {"hf": enc, "tabular": create_encoder("tabular_mlp", n_numeric=2, dim=8)}
    torch.manual_seed(0)
    cfg = ModelConfig(fusion=fusion, fusion_kwargs=options, dim=8, head_hidden=8)
    model = assemble({}, encoders, K, cfg)[0].train()  # the model as fit and Predictor.load build it
    model.zero_grad(set_to_none=True)
    f = model.fusion
    masks = {"hf": torch.tensor([True, True, False]), "tabular": torch.ones(B, dtype=torch.bool)}
    out = model({"hf": x, "tabular": {"num": torch.randn(B, 4)}}, masks)["logits"]
    assert out.shape == (B, K) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    no_grad = [n for n, p in f.named_parameters() if p.grad is None]
    assert no_grad == []
    backbone_grads = [p.grad for p in enc.backbone.parameters() if p.grad is not None]
    assert backbone_grads and all(torch.isfinite(g).all() for g in backbone_grads)


def test_clip_tokens_are_wider_than_the_pooled_output(backbones):
    """The case the fixtures were chosen for: CLIP's widths differ, and each encoder says so."""
    enc, x = backbones["clip_text"]
    pooled, tokens, _ = enc.eval().forward_with_tokens(x)
    assert (enc.output_dim, enc.token_dim) == (12, 16)
    assert pooled.shape[1] == enc.output_dim and tokens.shape[2] == enc.token_dim
    mean_pooled = backbones["clip_text_mean_pooled"][0]
    assert (mean_pooled.output_dim, mean_pooled.token_dim) == (16, 16)
    enc.train()
