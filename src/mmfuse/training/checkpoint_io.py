"""Lightning checkpoints as one safetensors file: tensors as tensors, everything else as JSON.

Lightning's default writes checkpoints with ``torch.save`` (pickle). This CheckpointIO
keeps the whole checkpoint dict (weights, optimizer and scheduler state, loop progress,
callback state, RNG state) without pickle: every tensor goes into the safetensors body,
and the rest of the structure into its JSON metadata, with tuples, integer dict keys and
tensor references tagged so that loading rebuilds exactly the same structure.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO

from ..errors import MmfuseError

_META_KEY = "mmfuse_checkpoint"


def flatten(obj: Any, tensors: dict, prefix: str = "t") -> Any:
    """Replace tensors by references (stored in ``tensors``) and tag non-JSON containers."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu()  # written at once, by save_checkpoint_file: no copy needed
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: flatten(v, tensors, prefix) for k, v in obj.items()}}
        return {"__items__": [[flatten(k, tensors, prefix), flatten(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten(v, tensors, prefix) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        return obj.item()
    raise MmfuseError(f"cannot store a {type(obj).__name__} in a safetensors checkpoint: {obj!r}")


def unflatten(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
    return obj


def save_checkpoint_file(checkpoint: dict, path: str | os.PathLike, durable: bool = False) -> None:
    """Write atomically: a temporary file, then a rename over the old one, so a killed process leaves the
    old file or the new one, never half of one. ``durable=True`` also flushes the file to disk before
    the rename (against power loss; an epoch's checkpoint is not worth the wait)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    structure = flatten(checkpoint, tensors)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    meta = {_META_KEY: json.dumps(structure)}
    if all(t.dtype in _NUMPY_DTYPES for t in tensors.values()):
        # through numpy: safetensors' torch writer checks every tensor's storage for sharing, which costs
        # more than the write itself for the few hundred small tensors of an optimizer state
        from safetensors.numpy import save_file

        save_file({k: _c_order(t.numpy()) for k, t in tensors.items()}, str(tmp), metadata=meta)
    else:  # bfloat16 and other dtypes numpy lacks; views of one storage cannot share a file: copies
        from safetensors.torch import save_file

        save_file({k: t.clone().contiguous() for k, t in tensors.items()}, str(tmp), metadata=meta)
    if durable:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)


_NUMPY_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
                           torch.int8, torch.uint8, torch.bool})


def _c_order(a):
    """``a`` itself when C-contiguous, else a C-ordered copy (0-d arrays stay 0-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def load_checkpoint_file(path: str | os.PathLike, map_location=None) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if _META_KEY not in meta:
            raise MmfuseError(f"{path} is not an mmfuse checkpoint")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return unflatten(json.loads(meta[_META_KEY]), tensors)


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning CheckpointIO plugin that never pickles."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint_file(path, map_location)

    def remove_checkpoint(self, path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
