"""The scikit-learn style Python API: ``MultimodalPredictor``."""
from __future__ import annotations

import dataclasses
import inspect
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ._registry import unknown_name_message
from .config import ModelConfig, TrainConfig
from .errors import MmfuseError, NotFittedError

__all__ = ["MultimodalPredictor", "evaluate_predictor"]

_M, _T = ModelConfig, TrainConfig
_MODEL_FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
_TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
_RUN_FIELDS = ["target", "task", "inputs", "columns", "groups", "schema_file", "preprocessing", "out", "on_bad_input",
               "root", "allow_outside_root", "resume", "contribution", "init_from", "new_head", "replay",
               "replay_fraction", "stream", "split_hash"]


class MultimodalPredictor:
    """Fit a multimodal model on a table, then predict, evaluate, save and load.

    ``__init__`` only stores its arguments; they are checked in :meth:`fit` (one place for every
    entry path: Python, the command line and config files). Every setting is a named parameter,
    so :meth:`get_params`, :meth:`set_params` and ``sklearn.base.clone`` see all of them. The
    defaults of the model and training settings are those of :class:`~mmfuse.config.ModelConfig`
    and :class:`~mmfuse.config.TrainConfig`, where each is documented.

    Args:
        target: The target column.
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``; inferred when None.
        inputs: Restrict the model to these inputs (names as in ``mmfuse inspect``).
        columns: Role overrides, ``{column: role}``.
        groups: Input groups, ``{input: [columns]}``.
        schema_file: YAML/JSON schema file.
        preprocessing: Preprocessor options per input or modality (``{"image": {"size": 32}}``).
        out: Run folder for checkpoints, logs, reports and the bundle (None: checkpoints in a temporary folder,
            removed after training; no report is written).
        on_bad_input: ``raise``, ``skip`` or ``missing``.
        root: Folder for relative file paths (default: the table's folder); also used by predict.
        allow_outside_root: Allow file paths outside the root (fit, predict and evaluate).
        resume: Continue an interrupted run in ``out`` from its last checkpoint.
        contribution: Measure each input's contribution on the evaluation split after fitting.
        init_from: A bundle to continue training (the feedback loop, :mod:`mmfuse.feedback`): its schema,
            preprocessors, target and weights are kept; the table must hold the columns it reads, and its
            model settings cannot change (training settings can).
        new_head: With ``init_from``: accept labels the bundle does not know, with a head over the old and
            new classes (the old classes keep their output weights).
        replay: With ``init_from``: the old table (or any table of the same schema), whose rows are mixed
            into the training rows so that ``replay_fraction`` of them are old (limits forgetting).
        replay_fraction: With ``replay``: the share of old rows among the training rows, in [0, 1).
        stream: Train on a table larger than memory (:mod:`mmfuse.streaming`): a Parquet file or a folder of
            them, read a row group at a time (roles from a sample of ``sample_rows``, numbers, categories and
            texts fitted on a streamed pass, epochs through a shuffle buffer of ``shuffle_buffer`` rows; with
            ``checkpoint_every``, a killed run resumes mid-epoch). Its splits come from a split column or
            ``split_hash``.
        split_hash: With ``stream``: an id column; a hash of each row's id puts ``val_fraction`` and
            ``test_fraction`` of the ids into validation and test (stable without reading the table).
        fusion, fusion_kwargs, dim, encoders, head_hidden, dropout, modality_dropout, aux_weight, shared_dim,
        align_weight, align_pairs, align_temperature, align_queue, fill_missing, fill_weight, fill_space:
            model settings (:class:`~mmfuse.config.ModelConfig`).
        epochs, batch_size, lr, ... progress: training settings (:class:`~mmfuse.config.TrainConfig`).

    Attributes (after fit):
        predictor_: the fitted :class:`~mmfuse.bundle.Predictor`; task_: its :class:`~mmfuse.tasks.Task`;
        classes_, schema_, history_, metrics_, splits_ (row counts, source, rows left out, the row ids of each split),
        run_dir_ (None without ``out``: the temporary folder of its checkpoints is removed after training),
        rank_ (this process's rank in distributed training, 0 in one process: only rank 0 scores the model and
        writes the run folder; the others return after training, with ``metrics_`` holding their rank and history).
    """

    def __init__(self, target: str, *, task: str | None = None, inputs: Sequence[str] | None = None,
                 columns: Mapping[str, str] | None = None, groups: Mapping[str, list] | None = None,
                 schema_file=None, preprocessing: Mapping[str, dict] | None = None, out=None,
                 on_bad_input: str = "raise", root=None, allow_outside_root: bool = False, resume: bool = False,
                 contribution: bool = True, init_from=None, new_head: bool = False, replay=None,
                 replay_fraction: float = 0.0, stream: bool = False, split_hash: str | None = None,
                 # model (ModelConfig)
                 fusion: str = _M.fusion, fusion_kwargs: dict | None = None, dim: int = _M.dim,
                 encoders: dict | None = None, head_hidden: int = _M.head_hidden, dropout: float = _M.dropout,
                 modality_dropout: float = _M.modality_dropout, aux_weight: float = _M.aux_weight,
                 shared_dim: int = _M.shared_dim, align_weight: float = _M.align_weight,
                 align_pairs: Sequence[str] | None = None, align_temperature: float = _M.align_temperature,
                 align_queue: int = _M.align_queue, fill_missing: bool = _M.fill_missing,
                 fill_weight: float = _M.fill_weight, fill_space: str = _M.fill_space,
                 # training (TrainConfig)
                 epochs: int = _T.epochs, batch_size: int = _T.batch_size, lr: float = _T.lr,
                 backbone_lr: float = _T.backbone_lr, layer_decay: float = _T.layer_decay,
                 weight_decay: float = _T.weight_decay, warmup: float = _T.warmup, grad_clip: float = _T.grad_clip,
                 patience: int = _T.patience, monitor: str = _T.monitor, min_steps: int = _T.min_steps,
                 max_time: float | None = _T.max_time,
                 precision: str = _T.precision,
                 accelerator: str = _T.accelerator, devices: Any = _T.devices, num_nodes: int = _T.num_nodes,
                 strategy: str = _T.strategy, seed: int = _T.seed, num_workers: int = _T.num_workers,
                 cache: str | None = _T.cache, group_by_length: bool | None = _T.group_by_length,
                 class_weight: Any = _T.class_weight, regression_loss: str = _T.regression_loss,
                 decision_threshold: Any = _T.decision_threshold, val_fraction: float = _T.val_fraction,
                 test_fraction: float = _T.test_fraction, checkpoint_every: int = _T.checkpoint_every,
                 shuffle_buffer: int = _T.shuffle_buffer, sample_rows: int = _T.sample_rows,
                 log: str | None = _T.log, progress: bool = _T.progress,
                 **unknown):
        if unknown:  # a typo: say so now, with the closest name (no setting is taken from here)
            raise MmfuseError(unknown_name_message("parameter of MultimodalPredictor", next(iter(unknown)),
                                                   self._param_names()))
        params = dict(locals())
        for k in ("self", "unknown"):
            params.pop(k)
        for k, v in params.items():
            setattr(self, k, v)

    # --- scikit-learn conventions -------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [n for n, p in inspect.signature(cls.__init__).parameters.items()
                if n != "self" and p.kind is not p.VAR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict:
        """Every constructor argument, by name (scikit-learn's estimator interface)."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params) -> "MultimodalPredictor":
        """Set constructor arguments by name; an unknown name is an error with a suggestion."""
        names = self._param_names()
        for k, v in params.items():
            if k not in names:
                raise MmfuseError(unknown_name_message("parameter of MultimodalPredictor", k, names))
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()
                    if p.kind is not p.VAR_KEYWORD}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if k == "target" or v is not defaults[k]
                   and v != defaults[k]]
        return f"{type(self).__name__}({', '.join(changed)})"

    @classmethod
    def from_config(cls, config: Mapping, **overrides) -> "MultimodalPredictor":
        """Build from the nested format of config files: top-level run settings (``target``, ``task``,
        ``inputs``, ``columns``, ``groups``, ``preprocessing``, ...), ``fusion``, and the sections
        ``model:`` (ModelConfig fields) and ``train:`` (TrainConfig fields). ``overrides`` win."""
        config = dict(config or {})
        flat = {}
        for section, known in (("model", _MODEL_FIELDS), ("train", _TRAIN_FIELDS)):
            part = config.pop(section, None) or {}
            if not isinstance(part, Mapping):
                raise MmfuseError(f"config section {section!r} must be a mapping of settings, got {part!r}")
            for k, v in part.items():
                if k not in known:
                    raise MmfuseError(unknown_name_message(f"{section} setting", k, known))
                flat[k] = v
        for k in config:
            if k not in cls._param_names():
                raise MmfuseError(unknown_name_message("config key", k, cls._param_names() + ["model", "train"]))
        return cls(**{**config, **flat, **overrides})

    # --- settings, checked in one place -------------------------------------------------------
    def configs(self) -> tuple[ModelConfig, TrainConfig]:
        """The validated :class:`ModelConfig` and :class:`TrainConfig` of these parameters."""
        from .data import BadInputPolicy
        from .tasks import list_tasks

        mcfg = ModelConfig(**{k: getattr(self, k) for k in _MODEL_FIELDS}  # the dataclasses validate themselves
                           | {"fusion_kwargs": dict(self.fusion_kwargs or {}), "encoders": dict(self.encoders or {}),
                              "align_pairs": list(self.align_pairs or [])})
        tcfg = TrainConfig(**{k: getattr(self, k) for k in _TRAIN_FIELDS})
        if self.task is not None and self.task not in list_tasks():
            raise MmfuseError(unknown_name_message("task", self.task, list_tasks()) + " (or None: inferred)")
        BadInputPolicy.parse(self.on_bad_input)
        if self.split_hash is not None and not self.stream:
            raise MmfuseError("split_hash (--split-hash) splits a streamed table; add stream=True (--stream), or "
                              "split a table in memory with a split or group column (--group-column)")
        if not isinstance(self.target, str) or not self.target:
            raise MmfuseError(f"MultimodalPredictor: parameter 'target' must be a column name, got {self.target!r}")
        return mcfg, tcfg

    # --- fit: the public steps of mmfuse.pipeline, in order -----------------------------------
    def fit(self, train, val=None, test=None, *, echo=None, callbacks=()) -> "MultimodalPredictor":
        """Fit on ``train`` (a table, DataFrame or path); ``val``/``test`` default to splits of it.

        The plan of the fit (inputs and encoders, fusion, splits, settings, device;
        :func:`mmfuse.pipeline.describe_plan`) is kept in ``metrics_["plan"]`` and ``report.md``;
        ``echo``, a function of one line (the command line passes its ``echo``), also gets its
        lines before training starts.

        Without ``val``, the validation rows come from a ``split`` column, a ``group`` split, or
        a stratified random split of ``val_fraction``; likewise the test rows with ``test_fraction``
        unless ``test`` is given. With ``val`` and no ``test`` there are no test rows: every row of
        ``train`` trains. :attr:`splits_` says where each split came from.
        Rows with a blank target are left out, counted and listed in :attr:`splits_`.

        ``callbacks``: extra Lightning callbacks for this fit's training (:func:`mmfuse.pipeline.train`),
        e.g. the pruning callback of :func:`mmfuse.search`, which reads each epoch's validation metrics.
        """
        import torch

        from . import pipeline as P
        from .bundle import Predictor
        from .data import BadInputPolicy, check_not_importing_main
        from .evaluation import write_report
        from .io import read_table

        check_not_importing_main()
        for name, v in (("val", val), ("test", test)):
            if v is not None and (isinstance(v, (np.ndarray, list)) or type(v).__name__ == "Series"):
                raise MmfuseError(f"fit({name}=...) takes a table with the target column, not labels: mmfuse reads the "
                                  f"target from the column target={self.target!r} of each table (fit(train_df), "
                                  "not fit(X, y))")
        mcfg, tcfg = self.configs()
        t0 = time.perf_counter()
        if self.stream:  # a table larger than memory (mmfuse.streaming): each step streams or samples it
            base = aligned = replay = None
            schema, splits, task, preps, data = self._stream_steps(train, val, test, mcfg, tcfg)
        else:
            table = read_table(train, root=self.root)
            base = self._init_bundle(table) if self.init_from is not None else None
            aligned = base if base is not None and base.aligned_only else None  # encoders of mmfuse align
            if aligned is not None:
                from .align import aligned_schema_options

                base = None
                columns, groups = aligned_schema_options(aligned, table.df.columns, self.columns, self.groups)
                schema, inputs = P.select_inputs(table, self.target, columns, groups, self.schema_file, self.inputs)
            elif base is None:
                schema, inputs = P.select_inputs(table, self.target, self.columns, self.groups, self.schema_file,
                                                 self.inputs)
            else:
                schema, inputs = base.schema, sorted(base.preprocessors)
                from .feedback import mixed_model_config

                mcfg = mixed_model_config(base.config["model"], mcfg)  # its architecture; training settings ours
            splits = P.split_table(table, schema, self.target, base.task.name if base else self.task, val, test,
                                   tcfg.val_fraction, tcfg.test_fraction, tcfg.seed)
            replay = self._replay(splits, base, tcfg) if base is not None else None
            if base is None:
                task = P.fit_target(splits.train, self.target, splits.task, tcfg)  # the kind the split was made for
            else:
                task = self._continued_task(base, splits, tcfg)
            task.set_threshold(tcfg.decision_threshold)  # a bad setting fails now, not after training
            task.monitor_for(tcfg.monitor)  # likewise a monitor this kind of target has no per-epoch metric for
            if aligned is not None:  # the aligned inputs are read as in alignment; the others are fitted here
                from .align import aligned_preprocessors

                kept = aligned_preprocessors(aligned, inputs, schema)
                if echo is not None:
                    new = [n for n in inputs if n not in kept]
                    unused = [n for n in aligned.preprocessors if n not in kept]
                    echo(f"from the aligned bundle: the encoders of {', '.join(sorted(kept))}"
                         + (f"; new inputs: {', '.join(new)}" if new else "")
                         + (f"; aligned inputs this table lacks: {', '.join(unused)}" if unused else ""))
                preps = {**P.fit_preprocessors(schema, [n for n in inputs if n not in kept], splits.train, splits.root,
                                               mcfg, tcfg, self.preprocessing, self.allow_outside_root), **kept}
            elif base is None:
                preps = P.fit_preprocessors(schema, inputs, splits.train, splits.root, mcfg, tcfg, self.preprocessing,
                                            self.allow_outside_root)
            else:
                preps = base.preprocessors  # kept: the new rows are read as the old ones were
        run_dir = Path(self.out) if self.out else Path(tempfile.mkdtemp(prefix="mmfuse_run_"))
        run_dir.mkdir(parents=True, exist_ok=True)
        if mcfg.align_weight > 0 and len(preps) > 1:  # a pair never given together would align nothing
            from .align import check_pairs
            from .model import parse_pairs

            try:
                pairs = parse_pairs(mcfg.align_pairs, sorted(preps))
            except ValueError as e:
                raise MmfuseError(str(e)) from None
            if not self.stream:
                check_pairs(splits.train, preps, pairs)
        if not self.stream:
            data = P.make_datasets(splits, preps, task, tcfg, self.on_bad_input, self.allow_outside_root)
        torch.manual_seed(tcfg.seed)
        if aligned is not None:
            from .align import model_from_aligned

            model, spec = model_from_aligned(aligned, preps, task.n_outputs, mcfg)
        elif base is None:
            model, spec = P.build_model(preps, task.n_outputs, mcfg)
        elif task.classes_ != base.task.classes_ or task.n_outputs != base.task.n_outputs:  # a new head
            from .feedback import model_with_new_head

            model, spec = model_with_new_head(base, task)
        else:
            model, spec = base.model.train(), base.config["model"]
        if base is not None:
            spec = {**spec, "model": dataclasses.asdict(mcfg)}
            model.modality_dropout = mcfg.modality_dropout
        plan = P.describe_plan(splits, spec, preps, task, data, tcfg, schema)
        if echo is not None:
            for line in ["plan:", *(f"  {x}" for x in P.format_plan(plan))]:
                echo(line)
        policy = BadInputPolicy.parse(self.on_bad_input).value
        fingerprint = P.fit_fingerprint(splits, preps, task, mcfg, tcfg, on_bad_input=policy,
                                        **({"init_from": str(Path(self.init_from).resolve())}
                                           if base or aligned else {}),
                                        **({"split_hash": self.split_hash} if self.stream else {}))
        t_train = time.perf_counter()
        try:
            result = P.train(model, task, data, mcfg, tcfg, run_dir, self.resume, fingerprint, callbacks)
        finally:
            if not self.out:  # a temporary run folder held only checkpoints: nothing is left behind in /tmp
                shutil.rmtree(run_dir, ignore_errors=True)
        train_seconds = time.perf_counter() - t_train
        self.predictor_ = Predictor(model, preps, task, schema, {"model": spec})
        if not self.stream:  # so that evaluate can tell when it is given rows the model has seen
            self.predictor_.seen_rows = np.concatenate([self.predictor_.row_fingerprints(splits.train),
                                                        self.predictor_.row_fingerprints(splits.val)])
        self.rank_ = result.get("global_rank", 0)
        if self.rank_ != 0:  # distributed training: the first process scores and writes, the others stop here
            self.schema_, self.classes_, self.task_, self.history_ = schema, task.classes_, task, result["history"]
            self.metrics_ = {"rank": self.rank_, "world_size": result["world_size"], "history": result["history"],
                             "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
                             "embedded_rows": data.embedded}
            self.run_dir_, self._train_cfg = None, dataclasses.asdict(tcfg)
            return self
        fill_mix = None
        if getattr(model, "decoders", None) is not None:  # filling in: how far to trust it, input by input
            fill_mix = P.choose_fill_mix(self.predictor_, data.val)
            self.predictor_.config["model"]["fill_mix"] = fill_mix["chosen"]
        scores = P.choose_threshold_and_score(self.predictor_, data, tcfg, self.contribution)
        self.schema_, self.classes_, self.task_ = schema, task.classes_, task
        self.history_ = result["history"]
        self.splits_ = {"rows": splits.counts(), "source": splits.source, "blank_target": splits.blank_target,
                        "ids": {k: splits.row_ids(k) for k in ("train", "val", "test")}}
        metrics = {"task": task.name, "fusion": spec["model"]["fusion"], "inputs": sorted(preps), "classes": task.classes_,
                   "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
                   "monitor": result["monitor"], "train_seconds": train_seconds, "history": result["history"],
                   "epoch_seconds": result.get("epoch_seconds"),
                   "resumed_from_epoch": result["resumed_from_epoch"],
                   "resumed_after_steps": result.get("resumed_after_steps"), "rows": splits.counts(),
                   "world_size": result.get("world_size", 1), "embedded_rows": data.embedded,
                   "split_source": splits.source, "plan": plan, **scores}
        if splits.blank_target:
            metrics["blank_target_rows"] = splits.blank_target
        if fill_mix is not None:
            metrics["fill_mix"] = fill_mix
        if aligned is not None:
            metrics["init_from"] = {"bundle": str(self.init_from),
                                    "aligned": sorted(n for n in preps if n in aligned.preprocessors),
                                    "pairs": aligned.config.get("metrics", {}).get("pairs")}
        if base is not None:
            metrics["init_from"] = {"bundle": str(self.init_from), "new_head": task.classes_ != base.task.classes_,
                                    "classes_before": base.task.classes_, **(replay or {})}
        reports = data.reports()
        if any(r.issues or r.unknown_categories for r in reports.values()):
            for name, r in reports.items():
                if self.out:
                    r.write(run_dir / f"bad_input_{name}")
            metrics["bad_input"] = "; ".join(f"{n}: {r.summary()}" for n, r in reports.items())
        metrics["fit_seconds"] = time.perf_counter() - t0
        self.metrics_, self.run_dir_ = metrics, (run_dir if self.out else None)
        self._train_cfg = dataclasses.asdict(tcfg)
        if self.out:
            write_report(run_dir, metrics, task.classes_)
            self.save(run_dir / "bundle")
        return self

    # --- a table larger than memory ------------------------------------------------------------
    def _stream_steps(self, train, val, test, mcfg, tcfg):
        """Schema, splits, task, preprocessors and datasets of a streamed table (:mod:`mmfuse.streaming`)."""
        from . import pipeline as P
        from .io import read_table
        from .streaming import fit_preprocessors_stream, make_stream_datasets, stream_splits

        for name in ("val", "test", "init_from", "replay"):
            if (val if name == "val" else test if name == "test" else getattr(self, name)) is not None:
                raise MmfuseError(f"stream=True (--stream) takes one table whose splits come from a split column or "
                                  f"split_hash; {name} is not supported with it yet: leave it unset")
        if tcfg.group_by_length:
            raise MmfuseError("group_by_length sorts every text up front; a streamed table cannot: leave it unset")
        stream = read_table(train, root=self.root, stream=True)
        columns = dict(self.columns or {})
        if self.split_hash is not None and self.split_hash not in stream.columns:
            from ._registry import unknown_name_message

            raise MmfuseError(unknown_name_message("split_hash column", self.split_hash, stream.columns))
        if self.split_hash is not None:  # the id column decides the splits; it is not an input (a shared id would
            columns.setdefault(self.split_hash, "group")  # be a category unseen in every validation row)
        schema, inputs = P.select_inputs(stream.sample_table(tcfg.sample_rows, tcfg.seed), self.target, columns,
                                         self.groups, self.schema_file, self.inputs)
        from .schema import Role

        other = [c for c in schema.columns_with(Role.GROUP) if c != self.split_hash]
        if other:
            raise MmfuseError(f"a streamed table is split by a split column or split_hash, not by a group column "
                              f"({other[0]!r}); for rows that share a value of {other[0]!r} to share a split, pass "
                              f"--split-hash {other[0]} (split_hash={other[0]!r}) instead of --group-column")
        splits = stream_splits(stream, schema, self.target, self.task, self.split_hash, tcfg.val_fraction,
                               tcfg.test_fraction, tcfg.seed)
        task = P.fit_target(pd.DataFrame({self.target: splits.targets["train"]}), self.target, splits.task, tcfg)
        task.set_threshold(tcfg.decision_threshold)
        task.monitor_for(tcfg.monitor)
        preps = fit_preprocessors_stream(schema, inputs, splits, mcfg, tcfg, self.preprocessing,
                                         self.allow_outside_root)
        data = make_stream_datasets(splits, preps, task, tcfg, self.on_bad_input, self.allow_outside_root)
        return schema, splits, task, preps, data

    # --- the feedback loop (init_from) -----------------------------------------------------------
    def _init_bundle(self, table):
        """The bundle training continues from, checked against the new table."""
        from .bundle import Predictor
        from .feedback import check_table

        base = Predictor.load(self.init_from)
        if not hasattr(base, "model") or not hasattr(base.model, "state_dict"):
            raise MmfuseError(f"init_from={str(self.init_from)!r} is an ensemble; continue training one of its "
                              "member bundles instead")
        if base.aligned_only:  # aligned encoders: a new model is built around them (fit's own settings)
            for name in ("new_head", "replay"):
                if getattr(self, name):
                    raise MmfuseError(f"init_from={str(self.init_from)!r} holds aligned encoders without a target; "
                                      f"{name} continues a trained model, leave it unset")
            return base
        if base.target.column != self.target:
            raise MmfuseError(f"the bundle {str(self.init_from)!r} predicts {base.target.column!r}, not "
                              f"{self.target!r}; continue it on its own target")
        for name in ("inputs", "columns", "groups", "schema_file", "preprocessing"):
            if getattr(self, name):
                raise MmfuseError(f"init_from keeps the bundle's schema and preprocessors; leave {name} unset")
        check_table(base, table.df, f"the table {table.source}", self.target)
        return base

    def _continued_task(self, base, splits, tcfg):
        """The bundle's task; with ``new_head``, and only when the rows hold labels it does not know, one
        over the old and the new classes."""
        rows = pd.concat([p for p in (splits.train, splits.val, splits.test) if p is not None and len(p)])
        new = base.task.unseen_labels(rows)
        if not new:
            return base.task
        if not self.new_head:
            raise MmfuseError(f"the new rows hold {len(new)} label(s) the bundle does not know: "
                              f"{', '.join(map(repr, new[:10]))} (it knows {', '.join(map(repr, base.task.classes_))}); "
                              "pass new_head=True (--new-head) to train a head over the old and new classes, or fix "
                              "the labels")
        labelled = pd.concat([p[[self.target]] for p in (splits.train, splits.val, splits.test) if p is not None])
        return base.task.grown(labelled)  # over every split's labels

    def _replay(self, splits, base, tcfg) -> dict | None:
        """Old rows mixed into the training rows (``replay``, ``replay_fraction``)."""
        from .feedback import check_table, replay_rows
        from .io import read_table

        if self.replay is None:
            if self.replay_fraction:
                raise MmfuseError("replay_fraction needs replay=TABLE (--replay OLD.csv): the rows to mix back in")
            return None
        old = read_table(self.replay, root=self.root)
        check_table(base, old.df, f"the replay table {old.source}", self.target)
        if old.root != splits.root:
            raise MmfuseError(f"the replay table's files resolve against {old.root}, the new table's against "
                              f"{splits.root}; put both tables in one folder, or pass root=")
        labelled = old.df[~base.task.blank(old.df)]
        rows, note = replay_rows(labelled, len(splits.train), self.replay_fraction, tcfg.seed)
        rows = rows.set_axis([f"replay:{i}" for i in rows.index])  # row ids that cannot clash with the new rows'
        splits.train = pd.concat([splits.train, rows[[c for c in splits.train.columns if c in rows.columns]]])
        return {**note, "replay_table": old.source}

    # --- use ------------------------------------------------------------------------------------
    def _check(self):
        if not hasattr(self, "predictor_"):
            raise NotFittedError("this MultimodalPredictor is not fitted yet; call fit(...) or MultimodalPredictor.load(path)")

    def _read_kw(self, kw: dict) -> dict:
        return {"root": self.root, "allow_outside_root": self.allow_outside_root, **kw}

    def predict(self, data, **kw) -> np.ndarray:
        """Labels (or values) for every row of ``data``; see :meth:`mmfuse.bundle.Predictor.predict`."""
        self._check()
        return self.predictor_.predict(data, **self._read_kw(kw))

    def predict_proba(self, data, **kw) -> np.ndarray:
        self._check()
        return self.predictor_.predict_proba(data, **self._read_kw(kw))

    def evaluate(self, data, contribution: bool = False, on_bad_input: str | None = None) -> dict:
        """Metrics on a labelled table (and, optionally, each input's contribution); ``on_bad_input``
        defaults to this predictor's own setting."""
        self._check()
        policy = self.on_bad_input if on_bad_input is None else on_bad_input
        return evaluate_predictor(self.predictor_, data, contribution=contribution, on_bad_input=policy,
                                  root=self.root, allow_outside_root=self.allow_outside_root)

    def score(self, data) -> float:
        """The task's headline metric on a labelled table (accuracy, macro-F1 for multilabel; for
        regression the negated RMSE, so that greater is better, as scikit-learn's ``score`` expects)."""
        m = self.evaluate(data)
        value = m[self.predictor_.target.headline]
        return value if self.predictor_.target.higher_is_better else -value

    def save(self, path, embed_backbones: bool = False) -> Path:
        """Write a bundle folder (``model.safetensors`` + ``config.json``), atomically.

        ``embed_backbones`` copies pretrained backbones into the bundle (standalone)."""
        self._check()
        p = self.predictor_
        p.config["metrics"] = {k: v for k, v in getattr(self, "metrics_", {}).items() if k != "history"}
        p.config["training"] = getattr(self, "_train_cfg", p.config.get("training"))
        return p.save(path, embed_backbones=embed_backbones)

    @classmethod
    def load(cls, path) -> "MultimodalPredictor":
        from .bundle import Predictor

        pred = Predictor.load(path)
        if "model" not in pred.config:  # an ensemble: no single configuration to put into an estimator
            raise MmfuseError(f"{path} is an ensemble bundle; load it with mmfuse.Predictor.load(path), which "
                              "predicts and evaluates like any bundle (MultimodalPredictor.load reads one model's bundle)")
        from ._build import spec_settings

        settings = {k: v for k, v in {**spec_settings(pred.config["model"]), **(pred.config.get("training") or {})}.items()
                    if k in _MODEL_FIELDS or k in _TRAIN_FIELDS}  # get_params() and clone() see the fitted settings
        obj = cls(target=pred.target.column, task=pred.target.name, **settings)
        obj.predictor_, obj.schema_, obj.classes_, obj.task_ = pred, pred.schema, pred.target.classes_, pred.target
        obj.metrics_ = pred.config.get("metrics", {})
        return obj


def evaluate_predictor(predictor, data, contribution=False, on_bad_input="raise", root=None,
                       allow_outside_root: bool = False, test_only: bool = False) -> dict:
    """Metrics of a :class:`~mmfuse.bundle.Predictor` on a labelled table; rows with a blank target are
    left out and listed under ``blank_target_rows``.

    ``test_only``: of a table with a split column (the model's column of role ``split``, or one named
    ``split``), score only the rows marked ``test`` (``mmfuse evaluate`` does, unless ``--all-rows``); the
    metrics then say so under ``scored_rows``."""
    from .data import MultimodalDataset
    from .evaluation import compute_metrics, modality_contribution
    from .io import read_table

    if getattr(predictor, "aligned_only", False):
        predictor._refuse_aligned("be evaluated")
    table = read_table(data, root=root)
    chosen = []
    from .splits import split_column, split_names, test_rows

    schema = getattr(predictor, "schema", None)
    if test_only:
        table = test_rows(table, schema, "evaluate scores a model", chosen.append,
                          "; to score every row: --all-rows (Python: test_only=False)")
    elif (col := split_column(table.df.columns, getattr(schema, "roles", None))) is not None:
        seen = int((split_names(table.df[col]) != "test").sum())
        if seen:
            chosen.append(f"scoring every row, {seen} of them with {col} other than test: the model trained or "
                          "stopped early on those, so these metrics flatter it")
    column = predictor.target.column
    if column not in table.df.columns:
        raise MmfuseError(f"table {table.source} has no target column {column!r} to score against; "
                          "`mmfuse predict` (or .predict) works on unlabelled rows")
    blank = predictor.target.blank(table.df)
    if blank.all():
        raise MmfuseError(f"every cell of the target column {column!r} is blank: there is nothing to score against")
    ds = MultimodalDataset(table.df[~blank], predictor.preprocessors, predictor.target, on_bad_input=on_bad_input,
                           root=table.root, allow_outside_root=allow_outside_root)
    out = compute_metrics(predictor, ds)
    seen = predictor.count_seen(table.df[~blank]) if hasattr(predictor, "count_seen") else None
    if seen:
        out["rows_seen_in_training"] = seen
    if getattr(predictor, "last_no_input", None):  # the count, and the first 1,000 row ids
        out["rows_without_input_count"] = len(predictor.last_no_input)
        out["rows_without_input"] = list(predictor.last_no_input)[:1000]
    if chosen:
        out["scored_rows"] = chosen[0]
    if blank.any():
        out["blank_target_rows"] = table.df.index[blank].tolist()
    if contribution and len(predictor.preprocessors) > 1:
        out["contribution"] = modality_contribution(predictor, ds)
    if ds.report.issues or ds.report.unknown_categories:
        out["bad_input"] = ds.report.to_dict()
    return out
