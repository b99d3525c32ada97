"""The scikit-learn style Python API: ``MultimodalPredictor``."""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ._registry import unknown_name_message
from .config import ModelConfig, TrainConfig, from_dict
from .errors import MmfuseError, NotFittedError

__all__ = ["MultimodalPredictor"]



class MultimodalPredictor:
    """Fit a multimodal model on a table, then predict, evaluate, save and load.

    ``__init__`` only stores its arguments; they are checked in :meth:`fit`.

    Args:
        target: The target column.
        fusion: A fusion strategy (``mmfuse fusions`` lists them).
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``; inferred when None.
        inputs: Restrict the model to these inputs (names as in ``mmfuse inspect``).
        columns: Role overrides, ``{column: role}``.
        groups: Input groups, ``{input: [columns]}``.
        schema_file: YAML/JSON schema file.
        preprocessing: Preprocessor options per input or modality (``{"image": {"size": 32}}``).
        model: :class:`~mmfuse.config.ModelConfig` or a dict of its fields.
        train: :class:`~mmfuse.config.TrainConfig` or a dict of its fields.
        out: Run folder for checkpoints, logs, reports and the bundle (a temporary folder when None).
        on_bad_input: ``raise``, ``skip`` or ``missing``.
        root: Folder for relative file paths (default: the table's folder).
        allow_outside_root: Allow file paths outside the root.
        resume: Continue an interrupted run in ``out`` from its last checkpoint.
        contribution: Measure each input's contribution on the evaluation split after fitting.
        **shortcuts: Any field of ModelConfig or TrainConfig (``epochs=10``, ``lr=3e-4``, ...).
    """

    def __init__(self, target: str, fusion: str = "concat", task: str | None = None, inputs: Sequence[str] | None = None,
                 columns: Mapping[str, str] | None = None, groups: Mapping[str, list] | None = None,
                 schema_file: str | None = None, preprocessing: Mapping[str, dict] | None = None,
                 model: ModelConfig | dict | None = None, train: TrainConfig | dict | None = None,
                 out: str | os.PathLike | None = None, on_bad_input: str = "raise", root=None,
                 allow_outside_root: bool = False, resume: bool = False, contribution: bool = True, **shortcuts):
        self.target, self.fusion, self.task, self.inputs = target, fusion, task, inputs
        self.columns, self.groups, self.schema_file, self.preprocessing = columns, groups, schema_file, preprocessing
        self.model, self.train, self.out, self.on_bad_input = model, train, out, on_bad_input
        self.root, self.allow_outside_root, self.resume, self.contribution = root, allow_outside_root, resume, contribution
        self.shortcuts = shortcuts

    # --- parameter checking -------------------------------------------------------------------
    def _configs(self) -> tuple[ModelConfig, TrainConfig]:
        from .fusion import list_fusions
        from .preprocessing.target import Task

        mcfg = self.model if isinstance(self.model, ModelConfig) else from_dict(ModelConfig, self.model, "model")
        tcfg = self.train if isinstance(self.train, TrainConfig) else from_dict(TrainConfig, self.train, "training")
        mcfg, tcfg = dataclasses.replace(mcfg), dataclasses.replace(tcfg)
        mcfg.fusion = self.fusion
        for k, v in self.shortcuts.items():
            if k in {f.name for f in dataclasses.fields(ModelConfig)}:
                setattr(mcfg, k, v)
            elif k in {f.name for f in dataclasses.fields(TrainConfig)}:
                setattr(tcfg, k, v)
            else:
                raise MmfuseError(unknown_name_message("parameter of MultimodalPredictor", k,
                                                       [f.name for f in dataclasses.fields(ModelConfig)]
                                                       + [f.name for f in dataclasses.fields(TrainConfig)]))
        if mcfg.fusion not in list_fusions():
            raise MmfuseError(f"MultimodalPredictor: parameter 'fusion' must be one of {list_fusions()}, "
                              f"got {mcfg.fusion!r}. " + unknown_name_message("fusion", mcfg.fusion, list_fusions()))
        if self.task is not None and self.task not in [t.value for t in Task]:
            raise MmfuseError(f"MultimodalPredictor: parameter 'task' must be one of {[t.value for t in Task]} or None, "
                              f"got {self.task!r}")
        if self.on_bad_input not in ("raise", "skip", "missing"):
            raise MmfuseError(f"MultimodalPredictor: parameter 'on_bad_input' must be one of ['raise', 'skip', "
                              f"'missing'], got {self.on_bad_input!r}")
        checks = [("epochs", tcfg.epochs, 1), ("batch_size", tcfg.batch_size, 1), ("dim", mcfg.dim, 1)]
        for name, v, lo in checks:
            if not isinstance(v, int) or v < lo:
                raise MmfuseError(f"MultimodalPredictor: parameter {name!r} must be an integer >= {lo}, got {v!r}")
        for name, v in (("lr", tcfg.lr), ("modality_dropout", mcfg.modality_dropout), ("aux_weight", mcfg.aux_weight)):
            if not isinstance(v, (int, float)) or v < 0 or (name == "modality_dropout" and v >= 1):
                raise MmfuseError(f"MultimodalPredictor: parameter {name!r} must be a number in "
                                  f"{'[0, 1)' if name == 'modality_dropout' else '[0, inf)'}, got {v!r}")
        if tcfg.regression_loss not in ("mse", "huber"):
            raise MmfuseError(f"MultimodalPredictor: parameter 'regression_loss' must be 'mse' or 'huber', "
                              f"got {tcfg.regression_loss!r}")
        return mcfg, tcfg

    # --- fit -----------------------------------------------------------------------------------
    def fit(self, train, val=None, test=None) -> "MultimodalPredictor":
        """Fit on ``train`` (a table, DataFrame or path); ``val``/``test`` default to splits of it.

        Without ``val``, the validation rows come from a ``split`` column, a ``group`` split, or
        a stratified random split of ``val_fraction``; likewise the test rows with ``test_fraction``.
        """
        import torch

        from .bundle import Predictor
        from .data import MultimodalDataset, build_preprocessors, make_loader
        from .evaluation import compute_metrics, modality_contribution, write_report
        from .io import read_table
        from .preprocessing import TargetEncoder
        from .preprocessing.target import Task
        from .schema import Role, Schema, infer_schema
        from .splits import split_rows
        from .training import train_model
        from ._build import build_model

        mcfg, tcfg = self._configs()
        t0 = time.perf_counter()
        table = read_table(train, root=self.root)
        schema = infer_schema(table, target=self.target, overrides=self.columns, groups=self.groups,
                              schema_file=self.schema_file)
        specs = schema.inputs()
        if self.inputs is not None:
            known = [s.name for s in specs]
            for n in self.inputs:
                if n not in known:
                    raise MmfuseError(unknown_name_message("input", n, known))
            specs = [s for s in specs if s.name in self.inputs]
        if not specs:
            raise MmfuseError("the table has no input columns besides the target; check the roles with mmfuse inspect")
        used = {c for s in specs for c in s.columns}
        roles = {c: (r if r not in (Role.TEXT, Role.IMAGE, Role.AUDIO, Role.NUMERIC, Role.CATEGORICAL, Role.TIMESERIES)
                     or c in used else Role.IGNORE) for c, r in schema.roles.items()}
        schema = Schema(roles, schema.reasons, {g: cols for g, cols in schema.groups.items() if g in
                                                {s.name for s in specs}})
        df = table.df
        y_raw = df[self.target]
        stratify = None
        target = TargetEncoder(self.target, self.task)
        if val is None:
            probe = TargetEncoder(self.target, self.task).fit(df)
            if probe.task in (Task.BINARY, Task.MULTICLASS):
                stratify = y_raw.astype(str).to_numpy()
            parts = split_rows(df, schema, tcfg.val_fraction, tcfg.test_fraction if test is None else 0.0, tcfg.seed,
                               stratify)
            tr_df, va_df = df.iloc[parts["train"]], df.iloc[parts["val"]]
            te_df = df.iloc[parts["test"]] if test is None else read_table(test, root=table.root).df
        else:
            tr_df = df
            va_df = read_table(val, root=table.root).df
            te_df = read_table(test, root=table.root).df if test is not None else df.iloc[:0]
        if len(va_df) == 0:
            raise MmfuseError("no validation rows: pass val=..., add a split column, or set val_fraction > 0")
        target.fit(tr_df)
        if tcfg.decision_threshold is not None and target.task.value != "binary":
            raise MmfuseError(f"decision_threshold applies to binary targets; {target.column!r} is "
                              f"{target.task.value}: leave it unset")
        from ._build import hf_preprocessing

        hf = {s.name: hf_preprocessing(mcfg, s.name, s.modality.value, tcfg.cache is not None) for s in specs}
        preps = build_preprocessors(schema, read_table(tr_df, root=table.root), self.preprocessing,
                                    hf={k: v for k, v in hf.items() if v}, inputs={s.name for s in specs})
        run_dir = Path(self.out) if self.out else Path(tempfile.mkdtemp(prefix="mmfuse_run_"))
        run_dir.mkdir(parents=True, exist_ok=True)
        cache = tcfg.cache
        kw = dict(on_bad_input=self.on_bad_input, allow_outside_root=self.allow_outside_root, root=table.root)
        ds_tr = MultimodalDataset(tr_df, preps, target, cache=cache, train=True, **kw)
        ds_va = MultimodalDataset(va_df, preps, target, cache=cache, **kw)
        group = tcfg.group_by_length
        if group is None:  # a trained text backbone: padding would cost real compute
            from .preprocessing import HFTextPreprocessor

            group = any(isinstance(p, HFTextPreprocessor) and not p.embed for p in preps.values())
        tr_loader = make_loader(ds_tr, tcfg.batch_size, shuffle=True, num_workers=tcfg.num_workers, seed=tcfg.seed,
                                persistent_workers=True, group_by_length=group)
        va_loader = make_loader(ds_va, max(tcfg.batch_size, 256), num_workers=tcfg.num_workers,
                                persistent_workers=True)
        torch.manual_seed(tcfg.seed)
        model, spec = build_model(preps, target.n_outputs, mcfg)
        cw = _class_weights(tcfg.class_weight, ds_tr.y, target)
        t_train = time.perf_counter()
        result = train_model(model, target.task, tr_loader, va_loader, tcfg, mcfg, run_dir, cw, resume=self.resume)
        train_seconds = time.perf_counter() - t_train
        self.predictor_ = Predictor(model, preps, target, schema, {"model": spec})
        self.schema_, self.classes_, self.task_ = schema, target.classes_, target.task
        self.history_ = result["history"]
        metrics = {"task": target.task.value, "fusion": mcfg.fusion, "inputs": sorted(preps), "classes": target.classes_,
                   "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
                   "monitor": result["monitor"], "train_seconds": train_seconds, "history": result["history"],
                   "resumed_from_epoch": result["resumed_from_epoch"],
                   "rows": {"train": len(ds_tr), "val": len(ds_va), "test": len(te_df)}}
        threshold = _decision_threshold(tcfg.decision_threshold, self.predictor_, ds_va)
        if threshold is not None:
            self.predictor_.config["decision_threshold"] = metrics["decision_threshold"] = threshold
        metrics["val"] = compute_metrics(self.predictor_, ds_va)
        eval_ds = ds_va
        if len(te_df):
            ds_te = MultimodalDataset(te_df, preps, target, cache=cache, **kw)
            metrics["test"] = compute_metrics(self.predictor_, ds_te)
            eval_ds = ds_te
        if self.contribution and len(preps) > 1:
            metrics["contribution"] = modality_contribution(self.predictor_, eval_ds)
            metrics["contribution"]["split"] = "test" if eval_ds is not ds_va else "val"
        reports = [ds_tr.report, ds_va.report] + ([ds_te.report] if len(te_df) else [])
        bad = {"issues": sum(len(r.issues) for r in reports)}
        if bad["issues"] or any(r.unknown_categories for r in reports):
            for name, r in zip(("train", "val", "test"), reports):
                r.write(run_dir / f"bad_input_{name}")
            metrics["bad_input"] = "; ".join(f"{n}: {r.summary()}" for n, r in zip(("train", "val", "test"), reports))
        metrics["fit_seconds"] = time.perf_counter() - t0
        self.metrics_ = metrics
        self.run_dir_ = run_dir
        self._spec, self._train_cfg = spec, dataclasses.asdict(tcfg)
        write_report(run_dir, metrics, target.classes_)
        if self.out:
            self.save(run_dir / "bundle")
        return self

    # --- use ------------------------------------------------------------------------------------
    def _check(self):
        if not hasattr(self, "predictor_"):
            raise NotFittedError("this MultimodalPredictor is not fitted yet; call fit(...) or MultimodalPredictor.load(path)")

    def predict(self, data, **kw) -> np.ndarray:
        self._check()
        return self.predictor_.predict(data, **kw)

    def predict_proba(self, data, **kw) -> np.ndarray:
        self._check()
        return self.predictor_.predict_proba(data, **kw)

    def evaluate(self, data, contribution: bool = False, on_bad_input: str = "raise") -> dict:
        """Metrics on a labelled table (and, optionally, each input's contribution)."""
        self._check()
        return evaluate_predictor(self.predictor_, data, contribution=contribution, on_bad_input=on_bad_input,
                                  root=self.root)

    def save(self, path, embed_backbones: bool = False) -> Path:
        """Write a bundle folder (``model.safetensors`` + ``config.json``), atomically.

        ``embed_backbones`` copies pretrained backbones into the bundle (standalone)."""
        from .bundle import save_bundle

        self._check()
        p = self.predictor_
        extra = {"metrics": {k: v for k, v in getattr(self, "metrics_", {}).items() if k != "history"},
                 "training": getattr(self, "_train_cfg", None), "decision_threshold": p.config.get("decision_threshold")}
        return save_bundle(path, p.model, p.preprocessors, p.target, p.schema, p.config["model"], extra,
                           embed_backbones=embed_backbones)

    @classmethod
    def load(cls, path) -> "MultimodalPredictor":
        from .bundle import Predictor

        pred = Predictor.load(path)
        obj = cls(target=pred.target.column, fusion=pred.config["model"]["model"]["fusion"])
        obj.predictor_, obj.schema_, obj.classes_, obj.task_ = pred, pred.schema, pred.target.classes_, pred.target.task
        obj.metrics_ = pred.config.get("metrics", {})
        return obj


def _decision_threshold(setting, predictor, val_ds) -> float | None:
    """A binary task's decision threshold: the number given, or the one that maximizes the named
    metric on the validation rows."""
    from .evaluation import THRESHOLD_METRICS, choose_threshold
    from .tasks import logits_to_proba

    if setting is None:
        return None
    if isinstance(setting, str):
        z, rows = predictor.logits(None, dataset=val_ds)
        return choose_threshold(logits_to_proba(predictor.target.task, z).numpy(), val_ds._y[rows], setting)
    if isinstance(setting, bool) or not isinstance(setting, (int, float)) or not 0 < setting < 1:
        raise MmfuseError(f"decision_threshold must be a probability between 0 and 1 or a metric name "
                          f"({', '.join(THRESHOLD_METRICS)}), got {setting!r}")
    return float(setting)


def evaluate_predictor(predictor, data, contribution=False, on_bad_input="raise", root=None) -> dict:
    from .data import MultimodalDataset
    from .evaluation import compute_metrics, modality_contribution

    ds = MultimodalDataset(data, predictor.preprocessors, predictor.target, on_bad_input=on_bad_input, root=root)
    out = compute_metrics(predictor, ds)
    if contribution and len(predictor.model.names) > 1:
        out["contribution"] = modality_contribution(predictor, ds)
    if ds.report.issues or ds.report.unknown_categories:
        out["bad_input"] = ds.report.to_dict()
    return out


def _class_weights(setting, y, target):
    import torch

    from .preprocessing.target import Task

    if setting is None or target.task in (Task.REGRESSION, Task.MULTILABEL):
        return None
    k = len(target.classes_)
    if setting == "balanced":
        counts = np.bincount(y, minlength=k).astype(float)
        w = len(y) / (k * np.maximum(counts, 1))
    else:
        w = np.asarray(setting, float)
        if len(w) != k:
            raise MmfuseError(f"class_weight must have {k} values (one per class {target.classes_}), got {len(w)}")
    return torch.tensor(w, dtype=torch.float32)
