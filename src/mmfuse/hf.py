"""Loading Hugging Face models and processors by hub id or local path (the ``hf`` extra).

Everything here imports ``transformers`` lazily, and turns "cannot reach the hub" into one
clear error instead of a long retry loop.
"""
from __future__ import annotations

import hashlib
import os
import socket
import warnings
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it runs: the processors (tokenizers) load without it (mmfuse.onnx)
    from torch import nn

from .errors import MmfuseError, require

__all__ = ["load_backbone", "load_processor", "fingerprint", "backbone_forward", "pool_output", "trim_padding",
           "onnx_session", "RUNTIMES", "layer_list", "resolve_model_path"]


def resolve_model_path(model: str) -> str:
    """A local folder as an absolute path; anything else is taken as a hub id."""
    p = Path(os.path.expanduser(model))
    return str(p.resolve()) if p.exists() else model


def _offline_error(model: str, err: Exception | None = None) -> MmfuseError:
    return MmfuseError(
        f"cannot load Hugging Face model {model!r}: it is not a local folder, and the hub cannot be reached "
        "(this machine is offline) or has no such id. Point to a local folder that holds the model "
        "(config.json and weights, e.g. written with save_pretrained), or set HF_HUB_OFFLINE=1 with the model in "
        f"your Hugging Face cache{f' ({type(err).__name__}: {str(err).splitlines()[0][:200]})' if err else ''}")


def _hub_reachable(timeout: float = 2.0) -> bool:
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo("huggingface.co", 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


def _quiet():
    """transformers' load reports and progress bars are noise in a training log."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _from_pretrained(factory, model: str, revision: str | None, **kw):
    """Local folders and cached hub ids load offline; a hub id is fetched only when the hub answers."""
    _quiet()
    local = Path(model).exists()
    try:
        return factory.from_pretrained(model, revision=revision, local_files_only=True, **kw)
    except (OSError, ValueError) as e:
        if local or os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
            if local:
                raise MmfuseError(f"cannot load Hugging Face model from folder {model!r}: {e}") from None
            raise _offline_error(model, e) from None
    try:
        return factory.from_pretrained(model, revision=revision, **kw)
    except OSError as e:
        raise _offline_error(model, e) from None


def model_config(model: str, revision: str | None = None):
    transformers = require("transformers", "hf")
    return _from_pretrained(transformers.AutoConfig, model, revision)


def model_type(model: str, revision: str | None = None) -> str:
    return model_config(model, revision).model_type


def load_backbone(model: str, modality: str, revision: str | None = None) -> nn.Module:
    """The backbone for one modality: CLIP-style dual encoders give their text or vision tower
    (with projection), encoder-decoder audio models (Whisper) their encoder, others ``AutoModel``."""
    transformers = require("transformers", "hf")
    kind = model_type(model, revision)
    if kind == "clip":
        cls = transformers.CLIPTextModelWithProjection if modality == "text" else transformers.CLIPVisionModelWithProjection
        return _from_pretrained(cls, model, revision)
    m = _from_pretrained(transformers.AutoModel, model, revision)
    if getattr(m.config, "is_encoder_decoder", False) and hasattr(m, "get_encoder"):
        return m.get_encoder()
    return m


def load_processor(model: str, modality: str, revision: str | None = None):
    transformers = require("transformers", "hf")
    factory = {"text": transformers.AutoTokenizer, "image": transformers.AutoImageProcessor,
               "audio": transformers.AutoFeatureExtractor}[modality]
    return _from_pretrained(factory, model, revision)


def fingerprint(model: str, revision: str | None = None, mtimes: bool = True) -> str:
    """Identifies the exact weights: the folder's files (name, size and, with ``mtimes``,
    modification time) for a local path or the snapshot (commit) folder of a cached hub id.
    Without ``mtimes`` a copied folder keeps its fingerprint (used to check bundles)."""
    path = Path(model)
    if not path.exists():
        if path.is_absolute() or model.count("/") > 1:
            raise MmfuseError(f"backbone folder {model!r} does not exist (any more); restore it, or keep backbones "
                              "inside bundles with embed_backbones=True")
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "config.json", revision=revision)
            path = Path(found).parent if isinstance(found, str) else None
        except Exception:  # not in the local hub cache: the id and revision alone identify it
            path = None
    h = hashlib.sha256(f"{model if mtimes else ''}@{revision}".encode())
    if path is not None and path.exists():
        if mtimes:
            h.update(str(path.resolve()).encode())
        for f in sorted(path.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns if mtimes else ''}".encode())
    return h.hexdigest()[:16]


def output_dim(backbone: nn.Module) -> int:
    """Width of the pooled output with ``pooling="auto"``: a CLIP tower's projection, else :func:`token_dim`."""
    proj = getattr(backbone.config, "projection_dim", None)
    if proj and (hasattr(backbone, "text_projection") or hasattr(backbone, "visual_projection")):
        return int(proj)
    return token_dim(backbone)


def token_dim(backbone: nn.Module) -> int:
    """Width of the last hidden states, the tokens (and the pooled output of ``cls``, ``mean``, ``last``)."""
    cfg = backbone.config
    for k in ("hidden_size", "d_model"):
        if getattr(cfg, k, None):
            return int(getattr(cfg, k))
    if getattr(cfg, "hidden_sizes", None):  # convolutional backbones (ResNet, ConvNeXt): the last stage's width
        return int(cfg.hidden_sizes[-1])
    raise MmfuseError(f"cannot tell the output width of {type(backbone).__name__}")


def trim_padding(inputs: dict) -> dict:
    """Drop the trailing columns that are padding in every row of the batch.

    Tokenizers pad to ``max_length``; a batch of short texts then spends most of its compute on
    padding. Only trailing all-padding columns go, so every real token keeps its position and the
    result is the same (attention never looks at padding)."""
    import torch

    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2 or mask.shape[1] == 0:
        return inputs
    used = mask.bool().any(0)
    keep = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    if keep == mask.shape[1]:
        return inputs
    T = mask.shape[1]
    return {k: v[:, :keep] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[:2] == (mask.shape[0], T) else v
            for k, v in inputs.items()}


def backbone_forward(backbone: nn.Module, inputs: dict, pooling: str = "auto"):
    """Run a backbone; ``(pooled [B, D], tokens [B, T, D] | None, token_mask [B, T] | None)``.

    Pooling: ``auto`` (projected embeddings of CLIP-style models, else the pooler output, else
    mean), ``cls`` (first token), ``mean`` (masked mean) or ``last`` (last non-padding token).
    """
    inputs = trim_padding(inputs)
    return pool_output(backbone(**inputs), inputs, pooling)


def pool_output(out, inputs: dict, pooling: str = "auto"):
    """The pooled output of a backbone's output ``out`` for ``inputs`` (see :func:`backbone_forward`)."""
    import torch

    hidden = getattr(out, "last_hidden_state", None)
    if hidden is not None and hidden.dim() == 4:  # a feature map [B, C, H, W] (ResNet, ConvNeXt): H*W tokens
        hidden = hidden.flatten(2).transpose(1, 2)
    mask = inputs.get("attention_mask")
    tok_mask = None
    if hidden is not None:
        if mask is not None and mask.shape[1] == hidden.shape[1]:
            tok_mask = mask.bool()
        else:
            tok_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    if pooling == "auto":
        for k in ("text_embeds", "image_embeds"):
            if getattr(out, k, None) is not None:
                return getattr(out, k), hidden, tok_mask
        if getattr(out, "pooler_output", None) is not None:
            return out.pooler_output.flatten(1), hidden, tok_mask  # ResNet pools to [B, C, 1, 1]
        pooling = "mean"
    if pooling == "cls":
        return hidden[:, 0], hidden, tok_mask
    if pooling == "last":
        idx = tok_mask.long().sum(1).clamp_min(1) - 1
        return hidden[torch.arange(len(hidden), device=hidden.device), idx], hidden, tok_mask
    m = tok_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1), hidden, tok_mask


def layer_list(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer layers: its largest ``nn.ModuleList``."""
    from torch import nn

    best, size = None, -1
    for _, mod in backbone.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            n = sum(p.numel() for p in mod.parameters())
            if n > size:
                best, size = mod, n
    if best is None:
        raise MmfuseError(f"{type(backbone).__name__} has no layer list; use train='frozen' or 'full'")
    return best


# --- ONNX Runtime for frozen text backbones --------------------------------------------------------
RUNTIMES = ("torch", "onnx", "onnx-int8")


def onnx_session(backbone: nn.Module, example: dict, pooling: str, runtime: str, key: str):
    """An ONNX Runtime session that maps a text backbone's inputs (the keys of ``example``, in order) to
    its pooled output, as :func:`backbone_forward` pools it (``runtime="onnx"``), or the same graph with
    its weights quantized to int8 for dynamic int8 matrix products (``"onnx-int8"``).

    The graph is exported once per ``key`` (the weights' fingerprint, the pooling and the library
    versions) into the cache folder (``onnx/``), written atomically, and reused afterwards."""
    import torch
    from torch import nn

    import json

    from ._cache import default_cache_dir, library_versions

    ort = require("onnxruntime", "onnx")
    require("onnx", "onnx")
    names = list(example)
    versions = {**library_versions(), "onnxruntime": ort.__version__}
    tag = hashlib.sha256(json.dumps([key, pooling, names, versions], sort_keys=True).encode()).hexdigest()[:20]
    folder = default_cache_dir() / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / f"{tag}.onnx"
    if not fp32.exists():
        if names != ["input_ids", "attention_mask"]:
            raise MmfuseError(f"ONNX runtime: a text backbone's inputs are input_ids and attention_mask; got {names}; "
                              "use runtime 'torch' for this model")

        class Pooled(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
                return pool_output(self.m(**inputs), inputs, pooling)[0]

        tmp = folder / f".{tag}.{os.getpid()}.onnx"
        args = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))  # shapes are dynamic
        dim = torch.export.Dim.DYNAMIC
        shapes = {k: {0: dim, 1: dim} for k in names}
        try:
            import contextlib
            import io

            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
                warnings.simplefilter("ignore")
                torch.onnx.export(Pooled(backbone).eval(), args, str(tmp), input_names=names, output_names=["pooled"],
                                  dynamic_shapes=shapes, dynamo=True, external_data=False)
            os.replace(tmp, fp32)
        except Exception as e:  # the exporter's own errors, of many types
            tmp.unlink(missing_ok=True)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise MmfuseError(f"could not export the backbone to ONNX ({type(e).__name__}: {first}); use runtime "
                              "'torch' for it") from None
    path = fp32
    if runtime == "onnx-int8":
        path = folder / f"{tag}.int8.onnx"
        if not path.exists():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            tmp = folder / f".{tag}.{os.getpid()}.int8.onnx"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
                os.replace(tmp, path)
            except Exception as e:  # ONNX Runtime's own errors
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise MmfuseError(f"could not quantize the ONNX graph to int8 ({type(e).__name__}: {first}); use "
                                  "runtime 'onnx' (fp32) for it") from None
            finally:
                tmp.unlink(missing_ok=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
