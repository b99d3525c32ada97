"""Typed configuration, one dataclass per component. JSON/YAML only serialize these."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import MmfuseError

__all__ = ["ModelConfig", "TrainConfig", "from_dict", "validate", "CONSTRAINTS", "setting_help", "settings_reference"]


def _doc(default=dataclasses.MISSING, help: str = "", factory=dataclasses.MISSING):
    """A dataclass field whose meaning lives in ``metadata["help"]``: the one source of the settings
    reference (``mmfuse config --defaults``, ``docs/config.md``) and of the command line's help."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class ModelConfig:
    """What the model is made of. Each field's meaning is its ``metadata["help"]``;
    ``mmfuse config --defaults`` prints them all (and ``docs/config.md`` holds the same reference)."""

    fusion: str = _doc("concat", "A registered fusion name (`mmfuse fusions` lists them).")
    fusion_kwargs: dict = _doc(help='Extra arguments of that fusion (e.g. `{"weights": [0.7, 0.3]}`).',
                               factory=dict)
    dim: int = _doc(128, "Width D of the fused representation (and of each encoder's output unless set).")
    encoders: dict = _doc(help='Per input name or modality, `{"name": encoder, **kwargs}`; for a pretrained model '
                               '`{"name": "hf", "model": id_or_folder, "train": "frozen"/"full"/"last", "last_n": 2, '
                               '"pooling": "mean", "max_length": 128, "cache": true}`; a frozen, cached text '
                               'backbone may run on `"runtime": "onnx"` or `"onnx-int8"` (ONNX Runtime; '
                               '`mmfuse[onnx]`). Unset: the modality\'s default encoder.', factory=dict)
    head_hidden: int = _doc(128, "Hidden width of the prediction head.")
    dropout: float = _doc(0.1, "Dropout in the head.")
    modality_dropout: float = _doc(0.0, "Probability of dropping each input of each row in training.")
    aux_weight: float = _doc(0.0, "Weight of the auxiliary unimodal losses (0 disables them).")
    shared_dim: int = _doc(0, "Width of the shared embedding space: a linear projection head per input maps its encoder "
                              "output there (`Predictor.embed`, retrieval, alignment, filling in). 0: `dim` when "
                              "`align_weight` > 0 or `fill_missing` is on, else no projection heads.")
    align_weight: float = _doc(0.0, "Weight of the contrastive alignment loss (symmetric InfoNCE between the shared "
                                    "embeddings of `align_pairs`), added to the supervised loss (0 disables it).")
    align_pairs: list = _doc(help='Pairs of inputs to align, e.g. `["audio:image"]`; empty: every pair of inputs.',
                             factory=list)
    align_temperature: float = _doc(0.07, "Initial temperature of the alignment loss (learned; the inverse "
                                          "temperature is capped at 100).")
    align_queue: int = _doc(0, "Past embeddings of each aligned pair kept as extra negatives of the alignment loss "
                               "(a MoCo-style queue, without a momentum encoder); 0: the batch's rows only.")
    fill_missing: bool = _doc(False, "Fill an absent input with an estimate of its shared embedding, predicted from "
                                     "the inputs present by a small regressor trained on rows where it is present "
                                     "(hidden from the regressor); see the setting `fill_space` (`model:` in --config) for what the fusion reads "
                                     "(attention fusions attend over one vector per input, not over tokens). "
                                     "False: absent inputs are zeros.")
    fill_weight: float = _doc(1.0, "Weight of the filling regressor's loss (cosine distance to the hidden input's "
                                   "shared embedding) when `fill_missing` is on.")
    fill_space: str = _doc("features", "With `fill_missing`, what the fusion reads. `features`: the network learns "
                                       "as without filling in (the input-masked output trains it); a second output "
                                       "reads an absent input's features mapped from its estimate, trains only the "
                                       "filler, and is mixed in where an input is absent by a weight per input "
                                       "chosen on the validation rows (`Predictor.fill_mix`); `shared`: every "
                                       "input's shared embedding as a unit vector.")

    def __post_init__(self):  # every way of making a config (Python, CLI, config file, replace) is checked
        validate(self)


@dataclass
class TrainConfig:
    """How the model is trained. Each field's meaning is its ``metadata["help"]``;
    ``mmfuse config --defaults`` prints them all (and ``docs/config.md`` holds the same reference)."""

    epochs: int = _doc(30, "Maximum epochs.")
    batch_size: int = _doc(64, "Rows per batch.")
    lr: float = _doc(1e-3, "Peak learning rate of AdamW.")
    backbone_lr: float = _doc(3e-5, "Peak learning rate of fine-tuned pretrained backbones (lower than `lr`).")
    layer_decay: float = _doc(1.0, "Layer-wise learning-rate decay for backbones: layer i of L gets "
                                   "`backbone_lr * layer_decay^(L-1-i)` (1.0: the same rate for every layer).")
    weight_decay: float = _doc(1e-2, "AdamW weight decay (not applied to biases and norms).")
    warmup: float = _doc(0.05, "Fraction of the steps with a linear warm-up before the cosine decay.")
    grad_clip: float = _doc(1.0, "Clip the gradient norm to this (0 disables).")
    patience: int = _doc(5, "Early stopping after this many epochs without improvement of the monitored metric.")
    monitor: str = _doc("loss", "What early stopping and the best checkpoint follow on the validation rows: `loss` "
                                "(the training objective) or a metric computed each epoch: `accuracy` or "
                                "`macro_f1` (classification), `rmse` (regression). A metric can keep improving "
                                "after the loss has turned up (an overconfident model still ranks well).")
    # a small MLP or CNN at lr 1e-3 needs a few hundred AdamW steps before its validation loss means much
    min_steps: int = _doc(300, "Early stopping waits for at least this many optimizer steps, so that a small table "
                               "(a few batches per epoch) is not stopped after a few dozen steps; `epochs` still caps "
                               "training (0: epochs and patience alone decide).")
    max_time: Optional[float] = _doc(None, "Stop after this many seconds (null: no limit).")
    precision: str = _doc("auto", "`auto` (bf16/fp16 mixed on GPU, 32 on CPU) or a Lightning precision string.")
    accelerator: str = _doc("auto", "`auto` (a GPU when there is one), `cpu` or `gpu`.")
    devices: Any = _doc(1, "Training processes per machine (Lightning's `devices`): a number of GPUs, or of CPU "
                           "processes under DDP; `auto`: every GPU (1 on CPU). Over 1, each process trains on its "
                           "own share of every epoch's rows with `batch_size` rows per step (the effective batch is "
                           "`batch_size` x devices x num_nodes); only the first process writes.")
    num_nodes: int = _doc(1, "Machines training together (Lightning's `num_nodes`; under torchrun or SLURM).")
    strategy: str = _doc("auto", "How processes train together: `auto` (one process: none; several: DDP that "
                                 "tolerates parameters without a gradient in a step), `ddp` (DDP; every trainable "
                                 "parameter must get a gradient in every step) or `ddp_find_unused_parameters_true`.")
    seed: int = _doc(0, "Seed for weights, data order, augmentation and splits.")
    num_workers: int = _doc(0, "DataLoader workers decoding files. Forked, but for a streamed table or distributed "
                                "training, where they start from a fork server and import the training script: a "
                                "script keeps its code under `if __name__ == \"__main__\":`.")
    cache: Optional[str] = _doc("memory", "Cache of decoded inputs: `memory`, a folder, or null (none).")
    group_by_length: Optional[bool] = _doc(None, "Batch training texts of similar length together, so that fine-tuned "
                                                 "text backbones spend less time on padding (null: on when a "
                                                 "pretrained text backbone is trained, off otherwise).")
    class_weight: Any = _doc("auto", "Loss weight per class: `auto` (`balanced` for a multiclass target whose "
                                     "largest training class has 3 or more times the rows of its rarest, for "
                                     "macro-F1; else all 1), null (all 1), `balanced` (N / (K * count), from the "
                                     "training rows) or a list of per-class weights.")
    regression_loss: str = _doc("mse", "Loss of regression targets: `mse` or `huber`.")
    decision_threshold: Any = _doc(None, "Binary tasks: the probability of the positive class from which a row is "
                                         "labelled positive. A number, or a metric (`f1`, `balanced_accuracy`, "
                                         "`accuracy`, `mcc`) to choose the threshold that maximizes it on the "
                                         "validation rows (test rows are never used); null: 0.5.")
    val_fraction: float = _doc(0.1, "Fraction of the rows held out for validation when no validation table or "
                                    "split column is given.")
    test_fraction: float = _doc(0.1, "Fraction of the rows held out for testing when no test table or split "
                                     "column is given.")
    checkpoint_every: int = _doc(0, "Also save the resumable checkpoint every this many optimizer steps, with the "
                                    "position in the epoch: a run killed mid-epoch resumes from that step, on "
                                    "the batches it had not trained on yet (0: at the end of each epoch only).")
    shuffle_buffer: int = _doc(10_000, "Streamed tables (`stream`): rows held in the shuffle buffer of each process "
                                       "(split among its loader workers, each shuffling its own row groups); the "
                                       "order of an epoch depends on the seed, the epoch and the number of "
                                       "workers. Larger mixes better and holds more rows in memory.")
    sample_rows: int = _doc(10_000, "Streamed tables: rows of the sample the column roles are inferred from, and "
                                    "that preprocessors without a streamed fit (images, audio, time series) are "
                                    "fitted on (numbers, categories and texts are fitted on every training row).")
    log: Optional[str] = _doc("tensorboard", "Training logs in the run folder: `tensorboard`, `csv` or null.")
    progress: bool = _doc(True, "Show Lightning's progress bar.")

    def __post_init__(self):
        validate(self)


def from_dict(cls, d: dict | None, where: str):
    """Build a config dataclass from a mapping, rejecting unknown keys with a did-you-mean (the
    dataclass validates its values)."""
    return _build(cls, d, where)


def _build(cls, d, where):
    """Build a config dataclass, rejecting unknown keys with a did-you-mean."""
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise MmfuseError(f"unknown {where} setting {k!r}{hint} Known: {', '.join(sorted(names))}")
    return cls(**d)


# --- validation: allowed values as data, checked in one place -------------------------------------
class _Check:
    """One constraint: ``ok(value) -> bool`` and its description for the error message."""

    def __init__(self, ok, allowed: str, choices=()):
        self.ok, self.allowed, self.choices = ok, allowed, [c for c in choices if isinstance(c, str)]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(lo=None):
    return _Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo),
                  "an integer" + (f" >= {lo}" if lo is not None else ""))


def _real(lo=None, hi=None, lo_open=False, hi_open=False, none=False):
    def ok(v):
        if v is None:
            return none
        return (_num(v) and math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))

    rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}" \
          f"{')' if hi_open or hi is None else ']'}"
    return _Check(ok, f"a number in {rng}" + (" or None" if none else ""))


def _one_of(*values):
    return _Check(lambda v: v in values, "one of " + ", ".join(repr(v) for v in values), values)


def _fusion():
    from .fusion import list_fusions

    # `single` (one-input models) is accepted, so that saved specs rebuild, but not offered
    return _Check(lambda v: v in list_fusions(automatic=True), "a registered fusion (" + ", ".join(list_fusions()) + ")",
                  list_fusions())


def _class_weight(v) -> bool:
    return v is None or v in ("auto", "balanced") or (isinstance(v, (list, tuple))
                                                      and all(_num(x) and x > 0 for x in v))


def _threshold(v) -> bool:
    from .tasks import THRESHOLD_METRICS

    one = lambda x: _num(x) and 0 < x < 1  # noqa: E731
    return v is None or v in THRESHOLD_METRICS or one(v) or (isinstance(v, (list, tuple)) and all(map(one, v)))


CONSTRAINTS = {
    "fusion": _fusion, "fusion_kwargs": lambda: _Check(lambda v: isinstance(v, dict), "a mapping"),
    "dim": lambda: _int(1), "encoders": lambda: _Check(lambda v: isinstance(v, dict), "a mapping"),
    "head_hidden": lambda: _int(1), "dropout": lambda: _real(0, 1, hi_open=True),
    "modality_dropout": lambda: _real(0, 1, hi_open=True), "aux_weight": lambda: _real(0),
    "shared_dim": lambda: _int(0), "align_weight": lambda: _real(0),
    "align_pairs": lambda: _Check(lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) and ":" in x
                                                                               for x in v),
                                  "a list of 'input_a:input_b' pairs"),
    "align_temperature": lambda: _real(0, 1, lo_open=True), "align_queue": lambda: _int(0),
    "fill_missing": lambda: _one_of(True, False), "fill_weight": lambda: _real(0),
    "fill_space": lambda: _one_of("features", "shared"),
    "epochs": lambda: _int(1), "batch_size": lambda: _int(1), "lr": lambda: _real(0, lo_open=True),
    "backbone_lr": lambda: _real(0, lo_open=True), "layer_decay": lambda: _real(0, 1, lo_open=True),
    "weight_decay": lambda: _real(0), "warmup": lambda: _real(0, 1, hi_open=True), "grad_clip": lambda: _real(0),
    "patience": lambda: _int(0), "monitor": lambda: _one_of("loss", "accuracy", "macro_f1", "rmse"),
    "min_steps": lambda: _int(0), "max_time": lambda: _real(0, lo_open=True, none=True),
    "precision": lambda: _one_of("auto", "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"),
    "accelerator": lambda: _one_of("auto", "cpu", "gpu", "cuda", "mps"), "seed": lambda: _int(0),
    "devices": lambda: _Check(lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                              "'auto' or a whole number >= 1", ["auto"]),
    "num_nodes": lambda: _int(1),
    "strategy": lambda: _one_of("auto", "ddp", "ddp_find_unused_parameters_true"),
    "num_workers": lambda: _int(0),
    "cache": lambda: _Check(lambda v: v is None or isinstance(v, (str, os.PathLike)), "None, 'memory' or a folder"),
    "group_by_length": lambda: _one_of(None, True, False),
    "class_weight": lambda: _Check(_class_weight,
                                   "'auto', None, 'balanced' or a list of positive numbers, one per class"),
    "regression_loss": lambda: _one_of("mse", "huber"),
    "decision_threshold": lambda: _Check(_threshold, "None, a probability in (0, 1), a list of them (multilabel), "
                                                     "or one of 'f1', 'balanced_accuracy', 'accuracy', 'mcc'"),
    "val_fraction": lambda: _real(0, 1, hi_open=True), "test_fraction": lambda: _real(0, 1, hi_open=True),
    "checkpoint_every": lambda: _int(0), "shuffle_buffer": lambda: _int(1), "sample_rows": lambda: _int(1),
    "log": lambda: _one_of(None, "tensorboard", "csv"), "progress": lambda: _one_of(True, False),
}


def validate(cfg):
    """Check every field of a :class:`ModelConfig` or :class:`TrainConfig` against :data:`CONSTRAINTS`.

    Every entry path (Python, command line, config file) ends here. Returns ``cfg``.

    Raises:
        MmfuseError: naming the setting, the allowed values and the value received.
    """
    for f in dataclasses.fields(cfg):
        check = CONSTRAINTS[f.name]()
        v = getattr(cfg, f.name)
        if not check.ok(v):
            close = difflib.get_close_matches(v, check.choices, n=1, cutoff=0.5) if isinstance(v, str) else []
            hint = f". Did you mean {close[0]!r}?" if close else ""
            raise MmfuseError(f"setting {f.name!r} must be {check.allowed}; got {v!r}{hint}")
    if isinstance(cfg, TrainConfig) and cfg.val_fraction + cfg.test_fraction >= 1:
        raise MmfuseError(f"settings 'val_fraction' + 'test_fraction' must be < 1 (rows are left for training); "
                          f"got {cfg.val_fraction} + {cfg.test_fraction}")
    return cfg


# --- the settings reference, generated from the fields' metadata -----------------------------------
def setting_help(cls, name: str) -> str:
    """The meaning and default of one field of ``cls`` (``ModelConfig`` or ``TrainConfig``), for the
    command line's help (e.g. "Maximum epochs. Default: 30 (train.epochs)")."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    section = "model" if cls is ModelConfig else "train"
    return f"{f.metadata['help']} Default: {_yaml_value(_default(f))} ({section}.{name})."


def _default(f):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _yaml_value(v) -> str:
    import yaml

    return yaml.safe_dump({"k": v}, default_flow_style=True, width=10_000).strip()[4:-1]  # "{k: V}" -> "V"


def _run_settings() -> list[tuple[str, Any, str]]:
    """``(name, default, help)`` of the top-level keys of a config file: the run parameters of
    :class:`~mmfuse.api.MultimodalPredictor`, documented in its ``Args:``."""
    import inspect
    import re

    from .api import _RUN_FIELDS, MultimodalPredictor

    helps, name = {}, None
    doc = inspect.getdoc(MultimodalPredictor)
    for line in doc.split("Args:", 1)[1].splitlines()[1:]:
        m = re.match(r"^    (\w+): (.*)$", line)
        if m:
            name = m.group(1)
            helps[name] = m.group(2)
        elif line.startswith("        ") and name:
            helps[name] += " " + line.strip()
        elif line.strip():  # a line of several names (the model and training settings), or the next section
            name = None
    params = inspect.signature(MultimodalPredictor.__init__).parameters
    out = []
    for n in _RUN_FIELDS:
        default = params[n].default
        required = default is inspect.Parameter.empty
        text = helps[n].replace("``", "`") + (" Required (`mmfuse fit --target` sets it)." if required else "")
        out.append((n, None if required else default, text))
    return out


def settings_reference(markdown: bool = False) -> str:
    """Every setting of a config file, at its default, with its meaning and allowed values: the format
    that ``mmfuse fit --config`` and :meth:`~mmfuse.api.MultimodalPredictor.from_config` accept.

    Generated from the fields' ``metadata["help"]``, :data:`CONSTRAINTS` and the run parameters of
    :class:`~mmfuse.api.MultimodalPredictor`. ``markdown=False``: a YAML file with a comment above
    each key (``mmfuse config --defaults``); ``True``: the Markdown page ``docs/config.md``.
    """
    import textwrap

    sections = [("", "Run settings (top level)", _run_settings())]
    for cls, key, title in ((ModelConfig, "model", "Model settings (`model:`, ModelConfig)"),
                            (TrainConfig, "train", "Training settings (`train:`, TrainConfig)")):
        sections.append((key, title, [(f.name, _default(f), f"{f.metadata['help']} Allowed: "
                                      f"{CONSTRAINTS[f.name]().allowed}.") for f in dataclasses.fields(cls)]))
    intro = ("mmfuse settings, every one at its default: the format of `mmfuse fit --config FILE` and of "
             "MultimodalPredictor.from_config. Keep only the keys you change; options given on the command line "
             "win over the file.")
    if markdown:
        lines = ["# Configuration reference", "",
                 "<!-- Generated by `mmfuse config --defaults --markdown > docs/config.md`; do not edit by hand. -->",
                 "", intro.replace("mmfuse settings, every one at its default", "Every setting of mmfuse"), "",
                 "`mmfuse config --defaults` prints the same settings as a YAML file with a comment on each key.", ""]
        for key, title, items in sections:
            lines += [f"## {title}", "", "| key | default | meaning |", "|---|---|---|"]
            lines += [f"| `{n}` | `{_yaml_value(v)}` | {h.replace('|', '&#124;')} |" for n, v, h in items]
            lines.append("")
        return "\n".join(lines)
    lines = [f"# {line}" for line in textwrap.wrap(intro, 98)]
    for key, title, items in sections:
        lines += ["", f"# --- {title} " + "-" * max(3, 90 - len(title))]
        if key:
            lines.append(f"{key}:")
        pad = "  " if key else ""
        for n, v, h in items:
            lines += [f"{pad}# {line}" for line in textwrap.wrap(h, 98 - len(pad))]
            lines.append(f"{pad}{n}: {_yaml_value(v)}")
    return "\n".join(lines) + "\n"
