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


def save_bundle(path: str | os.PathLike, model, preps: dict, target, schema, spec: dict, extra: dict | None = None) -> Path:
    """Write a bundle atomically: everything goes to a temporary folder that is then renamed.

    ``model.safetensors`` holds the model's weights (``model/...``) and the preprocessors'
    arrays (``prep/<input>/...``); ``config.json`` holds the schema, the preprocessors' state,
    the model spec, the label names, versions and ``extra`` (metrics, training settings).
    """
    from safetensors.torch import save_file

    from . import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    prep_meta = {}
    for name, p in sorted(preps.items()):
        meta, arrays = p.get_state()
        prep_meta[name] = meta
        for k, a in arrays.items():
            tensors[f"prep/{name}/{k}"] = torch.from_numpy(np.ascontiguousarray(a))
    save_file(tensors, str(tmp / "model.safetensors"))
    config = {"format": BUNDLE_FORMAT, "mmfuse_version": __version__, "torch_version": torch.__version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "schema": schema.to_dict(), "target": target.to_dict(),
              "preprocessors": prep_meta, "model": spec, **(extra or {})}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
    if path.exists():  # replace an older bundle: move it aside first, so a crash leaves one of the two
        old = path.parent / f".{path.name}.old{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    return path


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


class Predictor:
    """A loaded bundle that predicts on new tables.

    Inputs absent from the table, or empty in some rows, are treated as missing; the model
    was built to handle that. Use :meth:`load`; the constructor takes loaded parts.
    """

    def __init__(self, model, preps: dict, target, schema, config: dict, path: Path | None = None):
        self.model, self.preprocessors, self.target, self.schema = model.eval(), preps, target, schema
        self.config, self.path = config, path

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
        preps = {}
        for name, meta in config["preprocessors"].items():
            arrays = {k.split("/", 2)[2]: v.numpy() for k, v in tensors.items() if k.startswith(f"prep/{name}/")}
            preps[name] = Preprocessor.from_state(meta, arrays)
        model = model_from_spec(config["model"])
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        model.load_state_dict(state, strict=True)
        return cls(model, preps, TargetEncoder.from_dict(config["target"]), Schema.from_dict(config["schema"]), config,
                   path)

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

    def predict(self, data, threshold: float = 0.5, **kw) -> np.ndarray:
        """Labels (strings from training, in their original order), label lists (multilabel) or values."""
        from .tasks import Task

        p = self.predict_proba(data, **kw)
        task = self.target.task
        if task is Task.REGRESSION:
            return p
        classes = self.target.labels()
        if task is Task.MULTILABEL:
            return np.array([list(classes[row >= threshold]) for row in p], dtype=object)
        return classes[p.argmax(1)]
