"""Model bundles: ``model.safetensors`` + ``config.json`` in a folder, and the :class:`Predictor`.

This module is the prediction path: it imports neither lightning nor optuna nor
scikit-learn, so ``mmfuse predict`` starts fast. Loading reads JSON and safetensors only.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .errors import MmfuseError

__all__ = ["Predictor", "save_bundle", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = 1  # bump on any incompatible change of config.json or of the tensor names


BUNDLE_REF = "@bundle/"


def save_bundle(path: str | os.PathLike, model, preps: dict, target, schema, spec: dict, extra: dict | None = None,
                embed_backbones: bool = False) -> Path:
    """Write a bundle atomically: everything goes to a temporary folder that is then renamed.

    ``model.safetensors`` holds the model's weights (``model/...``) and the preprocessors'
    arrays (``prep/<input>/...``); ``config.json`` holds the schema, the preprocessors' state,
    the model spec, the label names, versions and ``extra`` (metrics, training settings).

    Pretrained backbones are recorded by id or path, revision and fingerprint. Fine-tuned
    backbone weights are always in ``model.safetensors``; frozen ones are left out and loaded
    from their id/path, unless ``embed_backbones`` copies every backbone (weights, config,
    tokenizer/processor, via ``save_pretrained``) into ``backbones/<input>/``, which makes the
    bundle standalone.
    """
    from safetensors.torch import save_file

    from . import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    import copy

    spec = copy.deepcopy(spec)
    backbones, skip = _backbones(model, preps, tmp if embed_backbones else None, spec)
    tensors = {f"model/{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
               if not any(k.startswith(s) for s in skip)}
    prep_meta = {}
    for name, p in sorted(preps.items()):
        meta, arrays = p.get_state()
        if name in backbones and backbones[name]["in_bundle"]:
            meta["config"]["model"] = backbones[name]["model_in_bundle"]
        prep_meta[name] = meta
        for k, a in arrays.items():
            tensors[f"prep/{name}/{k}"] = torch.from_numpy(np.ascontiguousarray(a))
    save_file(tensors, str(tmp / "model.safetensors"))
    config = {"format": BUNDLE_FORMAT, "mmfuse_version": __version__, "torch_version": torch.__version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "schema": schema.to_dict(), "target": target.to_dict(),
              "preprocessors": prep_meta, "model": spec, "backbones": backbones, **(extra or {})}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
    if path.exists():  # replace an older bundle: move it aside first, so a crash leaves one of the two
        old = path.parent / f".{path.name}.old{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    return path


def _backbones(model, preps: dict, tmp: Path | None, spec: dict) -> tuple[dict, list[str]]:
    """Record each pretrained backbone; copy it into the bundle when ``tmp`` is given.
    Returns the records and the state-dict prefixes to leave out (frozen, not copied)."""
    from .hf import fingerprint

    out, skip = {}, []
    for name, p in preps.items():
        if not hasattr(p, "fingerprint_"):
            continue
        enc = model.encoders[name]
        frozen = not any(q.requires_grad for q in enc.parameters()) if hasattr(enc, "backbone") else True
        rec = {"model": p.model, "revision": p.revision, "fingerprint": fingerprint(p.model, p.revision, mtimes=False),
               "train": getattr(enc, "train_mode", "frozen (cached embeddings)"), "in_bundle": tmp is not None}
        if tmp is not None:
            folder = tmp / "backbones" / _safe(name)
            backbone = enc.backbone if hasattr(enc, "backbone") else p.backbone
            backbone.save_pretrained(folder)
            p.processor.save_pretrained(folder)
            rec["model_in_bundle"] = BUNDLE_REF + f"backbones/{_safe(name)}"
            if hasattr(enc, "backbone"):
                spec["encoders"][name]["config"]["model"] = rec["model_in_bundle"]
        elif hasattr(enc, "backbone") and frozen:
            skip.append(f"encoders.{name}.backbone.")
        rec["weights_in_model_file"] = hasattr(enc, "backbone") and (tmp is not None or not frozen)
        out[name] = rec
    return out, skip


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _check_backbones(backbones: dict, path: Path) -> None:
    """A backbone loaded from outside the bundle must be the one the model was trained with."""
    from .hf import fingerprint

    for name, b in backbones.items():
        if b.get("in_bundle"):
            continue
        now = fingerprint(b["model"], b.get("revision"), mtimes=False)
        if now != b["fingerprint"]:
            raise MmfuseError(f"bundle {path}: input {name!r} was trained with backbone {b['model']!r} "
                              f"(fingerprint {b['fingerprint']}), but what is there now differs ({now}). Restore "
                              "that model, retrain, or save bundles with embed_backbones=True to keep the backbone "
                              "inside them")


class Predictor:
    """A loaded bundle that predicts on new tables.

    Inputs absent from the table, or empty in some rows, are treated as missing; the model
    was built to handle that. Use :meth:`load`; the constructor takes loaded parts.
    """

    def __init__(self, model, preps: dict, target, schema, config: dict, path: Path | None = None):
        self.model, self.preprocessors, self.target, self.schema = model.eval(), preps, target, schema
        self.config, self.path = config, path

    @property
    def threshold(self) -> float:
        """Binary tasks: the positive class's probability from which :meth:`predict` says positive."""
        return float(self.config.get("decision_threshold") or 0.5)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Predictor":
        """Load a bundle folder. Refuses bundles of another format version with a clear message."""
        from safetensors.torch import load_file

        from ._build import model_from_spec
        from .preprocessing import Preprocessor, TargetEncoder
        from .schema import Schema

        path = Path(path)
        cfg_path = path / "config.json"
        if not cfg_path.is_file() or not (path / "model.safetensors").is_file():
            raise MmfuseError(f"{path} is not an mmfuse bundle (expected config.json and model.safetensors in it)")
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        fmt = config.get("format")
        if fmt != BUNDLE_FORMAT:
            raise MmfuseError(f"bundle {path} has format {fmt!r} (written by mmfuse {config.get('mmfuse_version')}); "
                              f"this mmfuse reads format {BUNDLE_FORMAT}. Load it with the mmfuse version that wrote it, "
                              "or retrain")
        tensors = load_file(str(path / "model.safetensors"))
        backbones = config.get("backbones", {})
        _check_backbones(backbones, path)

        def resolve(d: dict) -> dict:
            m = d.get("model")
            if isinstance(m, str) and m.startswith(BUNDLE_REF):
                d = {**d, "model": str(path.resolve() / m[len(BUNDLE_REF):])}
            return d

        preps = {}
        for name, meta in config["preprocessors"].items():
            arrays = {k.split("/", 2)[2]: v.numpy() for k, v in tensors.items() if k.startswith(f"prep/{name}/")}
            preps[name] = Preprocessor.from_state({**meta, "config": resolve(meta["config"])}, arrays)
        model = model_from_spec(config["model"], resolve)
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        allowed = tuple(f"encoders.{n}.backbone." for n, b in backbones.items() if not b.get("weights_in_model_file"))
        bad = [k for k in missing if not k.startswith(allowed)] + list(unexpected)
        if bad:
            raise MmfuseError(f"bundle {path}: model.safetensors does not match the model in config.json "
                              f"(e.g. {bad[:3]}); the bundle is damaged")
        return cls(model, preps, TargetEncoder.from_dict(config["target"]), Schema.from_dict(config["schema"]), config,
                   path)

    def save(self, path, embed_backbones: bool = False) -> Path:
        extra = {k: v for k, v in self.config.items() if k in ("metrics", "training", "decision_threshold")}
        return save_bundle(path, self.model, self.preprocessors, self.target, self.schema, self.config["model"], extra,
                           embed_backbones=embed_backbones)

    @property
    def classes_(self) -> list | None:
        return self.target.classes_

    @property
    def task(self):
        return self.target.task

    def _dataset(self, data, on_bad_input="raise", root=None, allow_outside_root=False):
        from .data import MultimodalDataset

        return MultimodalDataset(data, self.preprocessors, None, on_bad_input=on_bad_input, root=root,
                                 allow_outside_root=allow_outside_root)

    @torch.no_grad()
    def logits(self, data, batch_size: int = 256, absent=(), on_bad_input="raise", root=None, num_workers: int = 0,
               dataset=None) -> tuple[torch.Tensor, np.ndarray]:
        """Raw outputs ``[N, K]`` and the table positions they belong to (rows skipped by policy are left out)."""
        from .data import make_loader

        ds = dataset if dataset is not None else self._dataset(data, on_bad_input, root)
        outs, rows = [], []
        for b in make_loader(ds, batch_size=batch_size, num_workers=num_workers):
            outs.append(self.model(b["inputs"], b["mask"], absent=absent)["logits"].float())
            rows.append(b["row"])
        if not outs:
            raise MmfuseError("no rows to predict on (every row was skipped as bad input)")
        self.last_report = ds.report
        return torch.cat(outs), torch.cat(rows).numpy()

    def predict_proba(self, data, **kw) -> np.ndarray:
        """Class probabilities ``[N, K]`` (columns in :attr:`classes_` order); for regression, the values."""
        from .tasks import Task, logits_to_proba

        z, _ = self.logits(data, **kw)
        p = logits_to_proba(self.target.task, z).numpy()
        return self.target.inverse_regression(p) if self.target.task is Task.REGRESSION else p

    def predict(self, data, threshold: float | None = None, **kw) -> np.ndarray:
        """Labels (strings from training, in their original order), label lists (multilabel) or values.

        ``threshold``: binary and multilabel tasks label a class present from this probability
        (default: the bundle's decision threshold for binary tasks, 0.5 otherwise)."""
        from .tasks import Task

        p = self.predict_proba(data, **kw)
        task = self.target.task
        if task is Task.REGRESSION:
            return p
        classes = self.target.labels()
        if task is Task.MULTILABEL:
            return np.array([list(classes[row >= (0.5 if threshold is None else threshold)]) for row in p],
                            dtype=object)
        if task is Task.BINARY:
            from .evaluation import binary_labels

            return classes[binary_labels(p, self.threshold if threshold is None else threshold)]
        return classes[p.argmax(1)]
