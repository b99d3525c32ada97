"""Building a model from fitted preprocessors, and rebuilding it from its JSON spec."""
from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .encoders import DEFAULT_ENCODERS, encoder_for
from .encoders._base import ENCODERS
from .fusion import FUSIONS, create_fusion
from .model import Head, MultimodalModel


def build_model(preps: dict, n_outputs: int, cfg: ModelConfig) -> tuple[MultimodalModel, dict]:
    """The model for these inputs, and the JSON spec that rebuilds it (for bundles)."""
    encoders, enc_spec = {}, {}
    for name in sorted(preps):
        p = preps[name]
        opts = dict(cfg.encoders.get(p.modality, {}))
        opts.update(cfg.encoders.get(name, {}))
        enc_name = opts.pop("name", DEFAULT_ENCODERS[p.modality])
        if "dim" in _init_args(ENCODERS.get(enc_name)):
            opts.setdefault("dim", cfg.dim)
        enc = encoder_for(p, enc_name, **opts)
        encoders[name] = enc
        enc_spec[name] = {"name": enc_name, "config": enc.init_config}
    return assemble(enc_spec, encoders, n_outputs, cfg)


def _init_args(cls) -> set:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def assemble(enc_spec: dict, encoders: dict, n_outputs: int, cfg: ModelConfig) -> tuple[MultimodalModel, dict]:
    dims = {n: e.output_dim for n, e in encoders.items()}
    fcls = FUSIONS.get(cfg.fusion)
    fusion = create_fusion(cfg.fusion, dims, dim=n_outputs if fcls.produces_logits else cfg.dim, **cfg.fusion_kwargs)
    head = None if fcls.produces_logits else Head(cfg.dim, n_outputs, cfg.head_hidden, cfg.dropout)
    aux = {n: nn.Linear(d, n_outputs) for n, d in dims.items()} if cfg.aux_weight > 0 else None
    model = MultimodalModel(encoders, fusion, head, aux, cfg.modality_dropout)
    spec = {"encoders": enc_spec, "n_outputs": n_outputs, "model": _cfg_dict(cfg)}
    return model, spec


def model_from_spec(spec: dict) -> MultimodalModel:
    """Rebuild the (untrained) model from :func:`build_model`'s spec; weights are loaded separately."""
    encoders = {n: ENCODERS.get(e["name"]).from_config(e["config"]) for n, e in spec["encoders"].items()}
    cfg = ModelConfig(**spec["model"])
    return assemble(spec["encoders"], encoders, spec["n_outputs"], cfg)[0]


def _cfg_dict(cfg: ModelConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
