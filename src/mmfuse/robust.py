"""Robustness to noisy and missing inputs: ``mmfuse.robustness`` and ``mmfuse robustness``.

(The module is named ``robust`` so that ``mmfuse.robustness`` stays the function.) The test rows are corrupted at levels from 0 to 0.9, one input at a time and all inputs together,
with noise suited to each modality (:data:`CORRUPTIONS`), and each input is also removed entirely.
Corruption is applied to the decoded values, not to a model's features: an image file is decoded,
corrupted and written again losslessly (PNG), a recording likewise (float WAV), text, numbers and
in-table series are corrupted in the table. Every model compared is scored on the very same
corrupted rows, whatever its preprocessing, and the corruption of a row is seeded by the seed, the
row, the input and the kind of noise, never by the level: a higher level corrupts the same draws
more (the pixels hidden at 0.3 are hidden at 0.6 too), so a curve is not noisier than its model.

Summaries, as MultiBench defines them (Liang et al. 2021, ``eval_scripts/robustness.py``):

- *relative robustness*: the area under the metric-vs-level curve (trapezoids over the levels);
- *effective robustness*: against a baseline model's curve ``b`` (MultiBench uses late fusion),
  ``sum_l (f_l - (b_l + f_0 - b_0))``: how much less the model loses than the baseline loses,
  once both start from the same clean score.

Example::

    from mmfuse import robustness
    res = robustness({"fused": "runs/av/bundle", "audio": "runs/a/bundle"}, "test.csv", out="runs/robust")
    res.table()        # one row per model, input, corruption and level
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .errors import MmfuseError

__all__ = ["robustness", "RobustnessResult", "corrupt_table", "blank_inputs", "inputs_of", "CORRUPTIONS", "LEVELS",
           "relative_robustness", "effective_robustness"]

LEVELS = tuple(round(0.1 * i, 1) for i in range(10))
# modality -> the kinds of noise it gets (the first is the one used when all inputs are corrupted together)
CORRUPTIONS = {
    "image": ("gaussian_noise", "blur", "occlusion"),
    "audio": ("white_noise", "dropout"),
    "text": ("typos", "word_drop"),
    "tabular": ("drop", "swap"),
    "timeseries": ("gaussian_noise", "step_drop"),
}
_DESCRIBE = {
    ("image", "gaussian_noise"): "Gaussian noise of std = level (pixels in [0, 1])",
    ("image", "blur"): "Gaussian blur of radius level x the longer side / 10",
    ("image", "occlusion"): "a black square covering the fraction level of the image",
    ("audio", "white_noise"): "white noise at SNR 10 log10((1 - level) / level) dB (0.5: 0 dB; 0.9: -9.5 dB)",
    ("audio", "dropout"): "20 ms chunks set to silence, each with probability level",
    ("text", "typos"): "one typo (swap, drop, repeat or replace a letter) in each word with probability level",
    ("text", "word_drop"): "each word dropped with probability level",
    ("tabular", "drop"): "each entry blanked (missing) with probability level",
    ("tabular", "swap"): "each entry replaced by the same column's entry of a random row, with probability level",
    ("timeseries", "gaussian_noise"): "Gaussian noise of std = level x the channel's std over the rows",
    ("timeseries", "step_drop"): "each time step dropped with probability level (the last kept value is held)",
}


def relative_robustness(levels, values) -> float:
    """Area under the curve (MultiBench's relative robustness): trapezoids over ``levels``."""
    x, y = np.asarray(levels, float), np.asarray(values, float)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x) / 2))


def effective_robustness(values, baseline) -> float:
    """MultiBench's effective robustness: ``sum_l (f_l - (b_l + f_0 - b_0))`` against a baseline curve."""
    f, b = np.asarray(values, float), np.asarray(baseline, float)
    return float(np.sum(f - (b + f[0] - b[0])))


# --- corruptions of decoded values ---------------------------------------------------------------
def _rng(seed: int, row: int, input_name: str, kind: str) -> np.random.Generator:
    """Draws that depend on the row, the input and the kind of noise, never on the level."""
    return np.random.default_rng([seed, row, zlib.crc32(input_name.encode()), zlib.crc32(kind.encode())])


def _image(a: np.ndarray, kind: str, level: float, rng) -> np.ndarray:
    """``a``: uint8 (H, W) or (H, W, C); returns uint8 of the same shape."""
    x = a.astype(np.float64) / 255.0
    h, w = a.shape[:2]
    if kind == "gaussian_noise":
        x = x + level * rng.standard_normal(x.shape)
    elif kind == "blur":
        from PIL import Image, ImageFilter

        if level > 0:
            im = Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius=level * max(h, w) / 10))
            return np.asarray(im, np.uint8)
    elif kind == "occlusion":
        u = rng.uniform(size=2)  # where the square sits, as a fraction of the room left: a larger square
        side_h, side_w = int(round(np.sqrt(level) * h)), int(round(np.sqrt(level) * w))  # covers a smaller one
        top, left = int(np.floor(u[0] * (h - side_h))), int(np.floor(u[1] * (w - side_w)))
        x[top:top + side_h, left:left + side_w] = 0.0
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def _audio(wave: np.ndarray, sr: int, kind: str, level: float, rng) -> np.ndarray:
    wave = wave.astype(np.float64)
    if kind == "white_noise":
        z = rng.standard_normal(wave.shape)
        if level <= 0:
            return wave
        power = float(np.mean(wave ** 2)) or 1e-12
        return wave + z * np.sqrt(power * level / max(1e-9, 1 - level))
    chunk = max(1, int(0.02 * sr))  # dropout: 20 ms chunks of silence
    n = -(-len(wave) // chunk)
    off = np.repeat(rng.uniform(size=n) < level, chunk)[:len(wave)]
    out = wave.copy()
    out[off] = 0.0
    return out


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _text(s: str, kind: str, level: float, rng) -> str:
    words = s.split()
    u = rng.uniform(size=len(words))
    if kind == "word_drop":
        return " ".join(w for w, ui in zip(words, u) if ui >= level)
    out = []
    ops, pos, letters = rng.integers(0, 4, len(words)), rng.uniform(size=len(words)), rng.integers(0, 26, len(words))
    for w, ui, op, p, c in zip(words, u, ops, pos, letters):
        if ui < level and len(w) > 1:
            i = min(int(p * len(w)), len(w) - 1)
            if op == 0 and i < len(w) - 1:  # swap two neighbours
                w = w[:i] + w[i + 1] + w[i] + w[i + 2:]
            elif op == 1:  # drop a letter
                w = w[:i] + w[i + 1:]
            elif op == 2:  # repeat a letter
                w = w[:i + 1] + w[i] + w[i + 1:]
            else:  # replace a letter
                w = w[:i] + _LETTERS[c] + w[i + 1:]
        out.append(w)
    return " ".join(out)


def _series(a: np.ndarray, kind: str, level: float, rng, std: np.ndarray) -> np.ndarray:
    """``a``: (T, C) float."""
    if kind == "gaussian_noise":
        return a + level * rng.standard_normal(a.shape) * std
    keep = rng.uniform(size=len(a)) >= level
    keep[0] = True  # the first reading: a dropped step holds the last kept one, never a later one
    return a[np.maximum.accumulate(np.where(keep, np.arange(len(a)), 0))]


@dataclass
class _Input:
    name: str
    modality: str
    columns: tuple
    prep: object


def inputs_of(predictor) -> dict[str, _Input]:
    """The inputs a predictor reads (an ensemble: its members'), with their modality and columns."""
    bundles = [b for m in getattr(predictor, "members", []) for b in m] or [predictor]
    out = {}
    for b in bundles:
        for name, p in b.preprocessors.items():
            out.setdefault(name, _Input(name, p.modality, tuple(p.columns), p))
    return out


def _is_file_cell(v) -> bool:
    return isinstance(v, (str, os.PathLike)) and not isinstance(v, bool)


def corrupt_table(table, inputs: Mapping[str, _Input], kinds: Mapping[str, str], level: float, seed: int,
                  work: Path):
    """A copy of ``table`` whose ``inputs`` (name -> kind in ``kinds``) are corrupted at ``level``; corrupted
    files are written under ``work`` and named by absolute path. Missing cells stay missing."""
    from .io import Table, resolve_path
    from .preprocessing._base import ReadContext
    from .schema import is_missing

    df = table.df.copy()
    ctx = ReadContext(table.root, allow_outside_root=True)
    for name, kind in kinds.items():
        inp = inputs[name]
        if kind not in CORRUPTIONS[inp.modality]:
            raise MmfuseError(f"input {name!r} ({inp.modality}) has no corruption {kind!r}; its corruptions: "
                              f"{', '.join(CORRUPTIONS[inp.modality])}")
        for col in inp.columns:
            if col not in df.columns:
                continue
            values = df[col].tolist()
            if inp.modality == "tabular":
                rows = np.array([_rng(seed, i, f"{name}/{col}", kind).uniform() for i in range(len(values))])
                hit = rows < level
                if kind == "drop":
                    df[col] = df[col].astype(object).where(~hit, None)
                else:
                    other = [int(_rng(seed, i, f"{name}/{col}", kind + "/row").integers(len(values)))
                             for i in range(len(values))]
                    df[col] = [values[o] if h else v for v, h, o in zip(values, hit, other)]
                continue
            if inp.modality == "timeseries":
                arrays = [None if is_missing(v) else inp.prep._load(v, i, col, ctx) for i, v in enumerate(values)]
                present = [a for a in arrays if a is not None]
                std = np.concatenate(present).std(0) if present else 0.0
            new = []
            for i, v in enumerate(values):
                if is_missing(v):
                    new.append(v)
                    continue
                rng = _rng(seed, i, f"{name}/{col}", kind)
                if inp.modality == "text":
                    new.append(_text(str(v), kind, level, rng))
                elif inp.modality == "timeseries":
                    a = _series(arrays[i], kind, level, rng, std)
                    if _is_file_cell(v):
                        path = work / name / col / f"{i}.npy"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        np.save(path, a)
                        new.append(str(path))
                    else:
                        new.append(a.tolist())
                elif inp.modality == "image":
                    from PIL import Image

                    from PIL import ImageOps

                    src = resolve_path(str(v), table.root, row=i, column=col, allow_outside_root=True)
                    try:  # decoded as the model decodes it: EXIF orientation applied; gray stays gray
                        with Image.open(src) as im:
                            im = ImageOps.exif_transpose(im)
                            a = np.asarray(im.convert("L" if im.mode in ("L", "1", "I;16", "I", "F") else "RGB"))
                    except (OSError, ValueError) as e:
                        raise _unreadable(i, col, v, e) from None
                    path = work / name / col / f"{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_image(a, kind, level, rng)).save(path)
                    new.append(str(path))
                else:  # audio
                    import soundfile as sf

                    src = resolve_path(str(v), table.root, row=i, column=col, allow_outside_root=True)
                    try:
                        wave, sr = sf.read(src, dtype="float64", always_2d=False)
                    except (OSError, RuntimeError, ValueError) as e:  # soundfile's LibsndfileError is a RuntimeError
                        raise _unreadable(i, col, v, e) from None
                    path = work / name / col / f"{i}.wav"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    sf.write(path, _audio(wave, sr, kind, level, rng).astype(np.float32), sr, subtype="FLOAT")
                    new.append(str(path))
            df[col] = new
    return Table(df, table.root, f"{table.source} ({', '.join(f'{n}: {k}' for n, k in kinds.items())} at {level})")


def _unreadable(row, col, value, e) -> MmfuseError:
    return MmfuseError(f"row {row}, column {col!r}: {value!r} cannot be decoded to corrupt it ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}); fix or drop the row (the model could not read it "
                       "either)")


def blank_inputs(table, inputs: Mapping[str, _Input], names) -> object:
    """A copy of ``table`` with every cell of the ``names`` inputs blank: those inputs are missing in every row."""
    from .io import Table

    df = table.df.copy()
    for n in names:
        for col in inputs[n].columns:
            if col in df.columns:
                df[col] = None
    return Table(df, table.root, f"{table.source} (without {', '.join(names)})")


# --- the evaluation ------------------------------------------------------------------------------
@dataclass
class RobustnessResult:
    """Per model: its clean score, its curves (``"input/kind"`` and ``"all"`` -> one value per level), its
    score with each input missing, and the summaries. ``table()`` has one row per point."""

    metric: str
    levels: list
    seed: int
    models: dict = field(default_factory=dict)
    baseline: str | None = None
    corruptions: dict = field(default_factory=dict)

    def table(self):
        """A pandas DataFrame: model, curve, level and the metric."""
        import pandas as pd

        rows = []
        for m, r in self.models.items():
            for curve, values in r["curves"].items():
                rows += [{"model": m, "curve": curve, "level": lv, self.metric: v} for lv, v in zip(self.levels, values)]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "levels": self.levels, "seed": self.seed, "baseline": self.baseline,
                "corruptions": self.corruptions, "models": self.models}


def _check_paths(table, inputs: Mapping[str, _Input], allow_outside_root: bool) -> None:
    """File cells are checked against the table's folder once, as ``evaluate`` checks them (later reads allow the
    corrupted copies, which live elsewhere)."""
    from .io import resolve_path
    from .schema import is_missing

    for n, inp in inputs.items():
        if inp.modality not in ("image", "audio", "timeseries"):
            continue
        for col in inp.columns:
            if col not in table.df.columns:
                continue
            for i, v in zip(table.df.index, table.df[col]):
                if _is_file_cell(v) and not is_missing(v):
                    resolve_path(str(v), table.root, row=i, column=col, allow_outside_root=allow_outside_root)


def _load(model):
    from .api import MultimodalPredictor
    from .bundle import Predictor

    if isinstance(model, MultimodalPredictor):
        model._check()
        return model.predictor_
    if isinstance(model, (str, os.PathLike)):
        return Predictor.load(model)
    return model


def _score(pred, table, metric: str) -> float:
    from .api import evaluate_predictor

    res = evaluate_predictor(pred, table, allow_outside_root=True)
    if metric not in res:
        from .tasks import METRIC_NAMES

        numbers = [k for k in METRIC_NAMES if isinstance(res.get(k), (int, float)) and not isinstance(res.get(k), bool)]
        raise MmfuseError(f"metric {metric!r} is not reported for this task; its metrics: {', '.join(numbers)}")
    return float(res[metric])


def robustness(models, data, *, levels=LEVELS, corruptions: Mapping[str, list] | None = None, together: bool = True,
               missing: bool = True, seed: int = 0, metric: str | None = None, baseline: str | None = None,
               root=None, out=None, echo: Callable[[str], None] | None = None,
               keep_files: bool = False, allow_outside_root: bool = False) -> RobustnessResult:
    """Score models on corrupted copies of ``data`` (their test rows).

    Args:
        models: A bundle path, :class:`~mmfuse.bundle.Predictor` or fitted
            :class:`~mmfuse.MultimodalPredictor`, or a mapping of names to them (compared on the same rows).
        data: The labelled test table.
        levels: Corruption levels in [0, 1) (default 0, 0.1, ..., 0.9); the first must be 0 (the clean score).
        corruptions: Input name -> kinds of noise (:data:`CORRUPTIONS` of its modality); default: every kind
            for every input any model reads.
        together: Also corrupt all inputs at once (each with the first kind chosen for it in ``corruptions``,
            else its modality's first), curve ``"all"``.
        missing: Also score each model with each of its inputs blank in every row (entirely missing).
        seed: Seeds every draw (per row, input and kind; the same draws at every level).
        metric: Default: the first model's headline metric (accuracy for classes, rmse for numbers).
        baseline: The model (a name in ``models``) the others' effective robustness is measured against;
            default: none (effective robustness is left out), or the only other model when there are two.
        out: A folder for ``robustness.json``, ``robustness.md`` and ``robustness.png``.
        keep_files: Keep the corrupted files (under ``out/corrupted``); by default they are deleted after scoring.
        allow_outside_root: Allow file cells outside the table's folder (as for ``evaluate``).

    A table with a split column is cut to its test rows. Every input of every model must be in the table:
    an absent column would make its curves flat and its clean score a score without it.
    """
    from .io import atomic_write_text, read_table
    from .tasks import LOWER_IS_BETTER, check_metric_name

    say = echo or (lambda line: None)
    named = dict(models) if isinstance(models, Mapping) else {"model": models}
    if not named:
        raise MmfuseError("robustness: give at least one model (a bundle path or a fitted predictor)")
    preds = {n: _load(m) for n, m in named.items()}
    for p in preds.values():
        if getattr(p, "aligned_only", False):
            p._refuse_aligned("be scored for robustness")
    levels = [float(x) for x in levels]
    if not levels or levels[0] != 0 or any(not 0 <= x < 1 for x in levels) or levels != sorted(set(levels)):
        raise MmfuseError(f"levels (--levels) must rise from 0 (the clean rows) and stay below 1, e.g. 0,0.3,0.6,0.9; "
                          f"got {levels}")
    if len(levels) < 2:
        raise MmfuseError("levels (--levels): give at least one level above 0, e.g. 0,0.5")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MmfuseError(f"seed (--seed) must be an integer >= 0, got {seed!r}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise MmfuseError(f"--out {out} is a file; give a folder for robustness.json, .md and .png")
    if baseline is not None and baseline not in preds:
        raise MmfuseError(f"baseline {baseline!r} is not one of the models: {', '.join(preds)}")
    if baseline is None and len(preds) == 2:
        baseline = list(preds)[1]
    first = next(iter(preds.values()))
    metric = metric or first.target.headline
    check_metric_name(metric)
    table = read_table(data, root=root)
    from .splits import test_rows

    table = test_rows(table, getattr(first, "schema", None), "robustness is measured", say)
    inputs = {}
    for p in preds.values():
        for n, inp in inputs_of(p).items():
            inputs.setdefault(n, inp)
    absent = [f"{n} (columns {', '.join(map(str, i.columns))})" for n, i in inputs.items()
              if not any(c in table.df.columns for c in i.columns)]
    if absent:
        raise MmfuseError(f"the table lacks inputs the models read: {'; '.join(absent)}; robustness needs them all "
                          "(renamed columns? another table?); to score a model without an input, see the missing-input "
                          "scores it reports")
    _check_paths(table, inputs, allow_outside_root)
    say(f"scoring {len(table.df)} rows of {table.source}")
    chosen = corruptions is not None
    if corruptions is None:
        corruptions = {n: list(CORRUPTIONS[i.modality]) for n, i in inputs.items()}
    corruptions = {n: list(dict.fromkeys(k)) for n, k in corruptions.items()}  # a kind named twice runs once
    for n, kinds in corruptions.items():
        if n not in inputs:
            from ._registry import unknown_name_message

            raise MmfuseError(unknown_name_message("input", n, list(inputs)))
        bad = [k for k in kinds if k not in CORRUPTIONS[inputs[n].modality]]
        if bad:
            raise MmfuseError(f"input {n!r} ({inputs[n].modality}) has no corruption {bad[0]!r}; its corruptions: "
                              f"{', '.join(CORRUPTIONS[inputs[n].modality])}")
    settings = [(f"{n}/{k}", {n: k}) for n, kinds in corruptions.items() for k in kinds]
    together_inputs = [n for n in inputs if n in corruptions] if chosen else list(inputs)  # 'all': those chosen
    if together and len(together_inputs) > 1:
        settings.append(("all", {n: (corruptions.get(n) or CORRUPTIONS[inputs[n].modality])[0] for n in together_inputs}))
    res = RobustnessResult(metric, levels, seed, baseline=baseline,
                           corruptions={c: {n: _DESCRIBE[(inputs[n].modality, k)] for n, k in kinds.items()}
                                        for c, kinds in settings})
    reads = {m: set(inputs_of(p)) for m, p in preds.items()}
    clean = {m: _score(p, table, metric) for m, p in preds.items()}
    say("clean: " + ", ".join(f"{m} {v:.4f}" for m, v in clean.items()))
    for m in preds:
        res.models[m] = {"clean": clean[m], "inputs": sorted(reads[m]), "curves": {}, "missing": {}}
    out = Path(out) if out is not None else None
    work_root = (out / "corrupted") if (out is not None and keep_files) else Path(tempfile.mkdtemp(prefix="mmfuse-robust-"))
    try:
        for curve, kinds in settings:
            users = [m for m in preds if curve == "all" or set(kinds) & reads[m]]
            values = {m: [clean[m]] for m in users}
            for level in levels[1:]:
                work = work_root / curve.replace("/", "_") / f"{level:.2f}"
                corrupted = corrupt_table(table, inputs, kinds, level, seed, work)
                for m in users:
                    values[m].append(_score(preds[m], corrupted, metric))
                if not keep_files:
                    shutil.rmtree(work, ignore_errors=True)
            for m in users:
                res.models[m]["curves"][curve] = values[m]
            say(f"{curve}: " + "; ".join(f"{m} " + " ".join(f"{v:.3f}" for v in values[m]) for m in users))
        if missing:
            for m, p in preds.items():
                if len(reads[m]) < 2:
                    continue  # without its only input a model has nothing to go on
                for n in sorted(reads[m]):
                    res.models[m]["missing"][n] = _score(p, blank_inputs(table, inputs, [n]), metric)
                say(f"{m} with one input missing: " + ", ".join(f"{n} {v:.4f}" for n, v in res.models[m]["missing"].items()))
    finally:
        if not keep_files:
            shutil.rmtree(work_root, ignore_errors=True)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    hit = {c: set(kinds) for c, kinds in settings}  # the inputs each curve corrupts
    for m, r in res.models.items():
        r["relative_robustness"] = {c: relative_robustness(levels, v) for c, v in r["curves"].items()}
        if baseline is not None and m != baseline:
            # only against a baseline that meets the same corruption: a single-input model's 'all' curve corrupts
            # its own input, the baseline's corrupts every input, and the two are not comparable
            base = res.models[baseline]["curves"]
            r["effective_robustness"] = {c: sign * effective_robustness(v, base[c]) for c, v in r["curves"].items()
                                         if c in base and hit[c] & reads[m] == hit[c] & reads[baseline]}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "robustness.json", json.dumps(res.to_dict(), indent=1))
        atomic_write_text(out / "robustness.md", _markdown(res))
        plot_robustness(res, out / "robustness.png")
        say(f"written: {out / 'robustness.json'}, {out / 'robustness.md'}, {out / 'robustness.png'}")
    return res


def _markdown(res: RobustnessResult) -> str:
    lv = res.levels
    lines = [f"# Robustness ({res.metric}, seed {res.seed})", "",
             "| model | curve | " + " | ".join(f"{x:g}" for x in lv) + " | relative robustness | effective robustness |",
             "|---|---|" + "---|" * (len(lv) + 2)]
    for m, r in res.models.items():
        for c, v in r["curves"].items():
            eff = r.get("effective_robustness", {}).get(c)
            lines.append(f"| {m} | {c} | " + " | ".join(f"{x:.4f}" for x in v)
                         + f" | {r['relative_robustness'][c]:.4f} | " + ("" if eff is None else f"{eff:+.4f}") + " |")
    if any(r["missing"] for r in res.models.values()):
        lines += ["", "| model | clean | " + " | ".join(f"without {n}" for n in sorted(
            {n for r in res.models.values() for n in r["missing"]})) + " |"]
        names = sorted({n for r in res.models.values() for n in r["missing"]})
        lines.append("|---|---|" + "---|" * len(names))
        for m, r in res.models.items():
            if r["missing"]:
                lines.append(f"| {m} | {r['clean']:.4f} | " + " | ".join(
                    f"{r['missing'][n]:.4f}" if n in r["missing"] else "" for n in names) + " |")
    lines += ["", "Corruptions:"] + [f"- {c}: " + "; ".join(f"{n}: {d}" for n, d in ds.items())
                                     for c, ds in res.corruptions.items()]
    if res.baseline:
        lines += ["", f"Effective robustness is measured against {res.baseline!r} (MultiBench's definition)."]
    return "\n".join(lines) + "\n"


def plot_robustness(res: RobustnessResult, path) -> Path:
    from .evaluation import _plt
    from .io import save_figure

    plt = _plt()
    curves = list(dict.fromkeys(c for r in res.models.values() for c in r["curves"]))
    cols = min(3, len(curves)) or 1
    rows = -(-len(curves) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, c in zip(axes.ravel(), curves):
        for m, r in res.models.items():
            if c in r["curves"]:
                ax.plot(res.levels, r["curves"][c], marker="o", ms=3, label=m)
        ax.set_title(c, fontsize=10)
        ax.set_xlabel("corruption level")
        ax.set_ylabel(res.metric)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(curves):]:
        ax.axis("off")
    handles = {}
    for ax in axes.ravel():  # one legend for the figure, with every model (a panel may lack some)
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=8)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)
