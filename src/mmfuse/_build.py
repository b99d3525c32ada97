"""Building a model from fitted preprocessors, and rebuilding it from its JSON spec."""
from __future__ import annotations

import dataclasses

from torch import nn

from .config import ModelConfig
from .encoders import DEFAULT_ENCODERS, encoder_for
from .encoders._base import ENCODERS
from .fusion import FUSIONS, create_fusion
from .model import Head, MultimodalModel


HF_PREP_KEYS = ("model", "revision", "pooling", "max_length", "duration", "runtime")
HF_ENC_KEYS = ("train", "last_n", "lora_r", "lora_alpha", "lora_dropout")


def encoder_options(cfg: ModelConfig, name: str, modality: str) -> dict:
    """An input's encoder settings: its modality's entry, overridden by its own."""
    return {**cfg.encoders.get(modality, {}), **cfg.encoders.get(name, {})}


def hf_preprocessing(cfg: ModelConfig, name: str, modality: str, cache: bool) -> dict | None:
    """Preprocessor arguments for an input whose encoder is a Hugging Face model, else None.

    A frozen backbone with the cache on is run once, inside preprocessing (``embed=True``)."""
    opts = encoder_options(cfg, name, modality)
    if opts.get("name") != "hf":
        return None
    from .errors import MmfuseError

    if "model" not in opts:
        raise MmfuseError(f"encoder of input {name!r}: 'hf' needs model=<hub id or local folder>")
    unknown = set(opts) - set(HF_PREP_KEYS) - set(HF_ENC_KEYS) - {"name", "cache"}
    if unknown:
        raise MmfuseError(f"encoder of input {name!r}: unknown hf settings {sorted(unknown)}; "
                          f"known: {sorted(HF_PREP_KEYS + HF_ENC_KEYS + ('cache',))}")
    out = {k: opts[k] for k in HF_PREP_KEYS if k in opts}
    out["embed"] = opts.get("train", "full") == "frozen" and opts.get("cache", True) and cache
    return out


def build_model(preps: dict, n_outputs: int, cfg: ModelConfig, aligned: bool = False) -> tuple[MultimodalModel, dict]:
    """The model for these inputs, and the JSON spec that rebuilds it (for bundles).

    With one input the fusion is ``single`` (the encoder feeds the head), whatever ``cfg.fusion`` says.
    ``aligned``: encoders and projections only, for contrastive pretraining (:func:`mmfuse.align.align`)."""
    encoders, enc_spec = {}, {}
    for name in sorted(preps):
        p = preps[name]
        opts = encoder_options(cfg, name, p.modality)
        enc_name = opts.pop("name", DEFAULT_ENCODERS[p.modality])
        if len(preps) == 1 and enc_name in ENCODERS and not aligned:  # the only input: its encoder feeds the head directly
            opts = {**ENCODERS.get(enc_name).alone_kwargs(), **opts}
        if enc_name == "hf":
            opts = {k: v for k, v in opts.items() if k in HF_ENC_KEYS}
            if getattr(p, "embed", False):
                enc_name, opts = "precomputed", {}
        if enc_name not in ("hf", "precomputed") and "dim" in _init_args(ENCODERS.get(enc_name)):
            opts.setdefault("dim", cfg.dim)  # pretrained and cached widths are the backbone's own
        enc = encoder_for(p, enc_name, **opts)
        encoders[name] = enc
        enc_spec[name] = {"name": enc_name, "config": enc.init_config}
    if len(encoders) == 1:  # nothing to fuse; the spec records it, so bundles rebuild what was trained
        cfg = dataclasses.replace(cfg, fusion="single", fusion_kwargs={})
    return assemble(enc_spec, encoders, n_outputs, cfg, aligned=aligned)


def _init_args(cls) -> set:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def shared_space(cfg: ModelConfig, names, aligned: bool = False) -> ModelConfig:
    """``cfg`` with its shared space settled: ``shared_dim`` (``dim`` when left 0 and alignment or
    filling in needs one) and ``align_pairs`` checked against the inputs. A model of aligned encoders
    (``aligned``) always has one. Raises :class:`MmfuseError` for a pair naming an unknown input."""
    from .errors import MmfuseError
    from .model import parse_pairs

    needs = aligned or cfg.align_weight > 0 or cfg.fill_missing
    if cfg.fill_missing and len(names) < 2:
        raise MmfuseError(f"fill_missing (--fill-missing) needs at least two inputs, and this model has one "
                          f"({', '.join(map(repr, names))}): an absent input is estimated from the others. Split the "
                          "columns into inputs (--group NAME=COL,COL; groups= in Python), or leave fill_missing out")
    if needs and not cfg.shared_dim:
        cfg = dataclasses.replace(cfg, shared_dim=cfg.dim)
    if cfg.align_pairs and not (aligned or cfg.align_weight > 0):
        raise MmfuseError(f"align_pairs {cfg.align_pairs} are aligned only with align_weight > 0 (--align-weight W); "
                          "set it, or leave align_pairs out")
    if aligned or cfg.align_weight > 0:
        if len(names) < 2:
            raise MmfuseError("alignment needs at least two inputs (pairs of inputs are aligned)")
        try:
            parse_pairs(cfg.align_pairs, names)
        except ValueError as e:
            raise MmfuseError(str(e)) from None
    return cfg


def assemble(enc_spec: dict, encoders: dict, n_outputs: int, cfg: ModelConfig,
             aux_heads: str | None = None, aligned: bool = False) -> tuple[MultimodalModel, dict]:
    """The model from built encoders: the fusion is sized by their pooled and token widths (by the
    shared width with ``fill_missing``, where it reads every input's shared embedding).

    With ``aux_weight > 0``, the auxiliary unimodal losses train the fusion's own per-input heads
    where it has them (late fusion: ``aux_heads="fusion"``), else a linear head per input
    (``"linear"``, also what bundles saved before the choice existed hold). ``aligned``: encoders and
    their projections only (``mmfuse align``), no fusion and no head."""
    from .model import parse_pairs

    cfg = shared_space(cfg, sorted(encoders), aligned)
    dims = {n: e.output_dim for n, e in encoders.items()}
    token_dims = {n: e.token_dim for n, e in encoders.items() if e.has_tokens}
    pairs = parse_pairs(cfg.align_pairs, sorted(encoders)) if aligned or cfg.align_weight > 0 else []
    shared = dict(shared_dim=cfg.shared_dim, align_pairs=pairs, align_temperature=cfg.align_temperature,
                  align_queue=cfg.align_queue, fill_missing=cfg.fill_missing and not aligned,
                  fill_space=cfg.fill_space)
    if aligned:
        model = MultimodalModel(encoders, None, **shared)
        spec = {"encoders": enc_spec, "n_outputs": 0, "model": _cfg_dict(cfg), "aligned": True}
        return model, spec
    fcls = FUSIONS.get(cfg.fusion)
    fdims = {n: cfg.shared_dim for n in dims} if cfg.fill_missing and cfg.fill_space == "shared" else dims
    fusion = create_fusion(cfg.fusion, fdims, dim=n_outputs if fcls.produces_logits else cfg.dim,
                           token_dims=None if cfg.fill_missing else token_dims, **cfg.fusion_kwargs)
    head = None if fcls.produces_logits else Head(cfg.dim, n_outputs, cfg.head_hidden, cfg.dropout)
    if aux_heads is None:
        aux_heads = "fusion" if fusion.has_unimodal_heads else "linear"
    own = cfg.aux_weight > 0 and aux_heads == "fusion"
    aux = {n: nn.Linear(d, n_outputs) for n, d in dims.items()} if cfg.aux_weight > 0 and not own else None
    model = MultimodalModel(encoders, fusion, head, aux, cfg.modality_dropout, aux_from_fusion=own, **shared)
    spec = {"encoders": enc_spec, "n_outputs": n_outputs, "model": _cfg_dict(cfg), "aux_heads": aux_heads}
    return model, spec


def model_from_spec(spec: dict, resolve=lambda c: c) -> MultimodalModel:
    """Rebuild the (untrained) model from :func:`build_model`'s spec; weights are loaded separately.

    ``resolve`` may rewrite each encoder's config (a bundle points backbones at its own folder)."""
    encoders = {n: ENCODERS.get(e["name"]).from_config(resolve(e["config"])) for n, e in spec["encoders"].items()}
    cfg = model_config_from_spec(spec)
    model = assemble(spec["encoders"], encoders, spec["n_outputs"], cfg, spec.get("aux_heads", "linear"),
                     aligned=spec.get("aligned", False))[0]
    model.fill_mix = dict(spec.get("fill_mix", {}))
    return model


def spec_settings(spec: dict) -> dict:
    """The model settings a spec (a bundle's ``config["model"]``) was built with, with the values of settings added
    since it was saved as they were then (``fill_space``: "shared")."""
    return {"fill_space": "shared", **spec["model"]}


def model_config_from_spec(spec: dict) -> ModelConfig:
    return ModelConfig(**spec_settings(spec))


def _cfg_dict(cfg: ModelConfig) -> dict:
    return dataclasses.asdict(cfg)
