"""Exporting a bundle to ONNX, with a parity check against PyTorch on real rows.

:func:`export_onnx` traces the model as a prediction sees it: for each input the arrays its
preprocessor produces (the cached items, e.g. token ids, uint8 pixels, a log-mel spectrogram)
and its presence mask, then the preprocessor's own normalization (:meth:`Preprocessor.batch`),
the encoder, the fusion and the head, to the logits. The batch axis is dynamic. Every encoder runs
on every row and the rows where its input is absent are replaced by zeros (``torch.where``), which
is what the PyTorch path computes by encoding only the present rows (encoders in evaluation mode
treat rows independently). Encoders whose ``encode`` depends on the values' shapes (the BiLSTM
packs and trims) trace their :meth:`~mmfuse.encoders.Encoder.encode_fixed` instead.

The folder it writes is what :class:`mmfuse.onnx.OnnxPredictor` loads (see there for the layout).
The parity check loads that folder as a deployment does (its saved preprocessors, tokenizers and
processors), reads the given rows with it, runs the graph with ONNX Runtime (in batches of 7 rows,
and one row at a time: batch sizes other than the traced one) and compares the logits with the
bundle's (:meth:`mmfuse.Predictor.logits`): the rows as they are, each input absent in every row,
and a seeded mix of absent inputs per row. The largest absolute difference of each is written to
``export.json``; an export above the tolerance, or with a NaN, fails and writes nothing. The
tracer's warnings (a value or shape taken as a constant) are kept in ``export.json`` too.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import MmfuseError

__all__ = ["export_onnx", "ExportedModel", "ExportReport", "FORMATS"]

FORMATS = ("onnx",)
EXPORTERS = ("torchscript", "dynamo")


class ExportedModel(nn.Module):
    """The model as an exported graph runs it: graph inputs (see :func:`mmfuse.onnx.input_layout`)
    in, logits ``[B, K]`` out."""

    def __init__(self, model, preprocessors: dict, layout: list[dict]):
        super().__init__()
        self.model = model.eval()
        self.preps = dict(preprocessors)  # plain objects: their state becomes constants of the graph
        self.layout = layout
        # frozen backbones that the bundle runs in preprocessing (cached embeddings) run in the graph
        self.backbones = nn.ModuleList([preprocessors[e["name"]].backbone for e in layout if e.get("raw")])
        self._raw = {e["name"]: i for i, e in enumerate(e for e in layout if e.get("raw"))}

    def forward(self, *tensors):
        arrays, masks, i = {}, {}, 0
        for entry in self.layout:
            arrays[entry["name"]] = {a["key"]: tensors[i + j] for j, a in enumerate(entry["arrays"])}
            i += len(entry["arrays"])
        for entry in self.layout:
            masks[entry["name"]] = tensors[i]
            i += 1
        m = self.model
        feats, tokens = {}, {}
        for n in m.names:
            present = masks[n]
            if n in self._raw:
                from .hf import pool_output

                x = _zero_absent(arrays[n], present)
                x = pool_output(self.backbones[self._raw[n]](**x), x, self.preps[n].pooling)[0].float()
            else:
                x = _zero_absent(self.preps[n].batch(arrays[n], train=False), present)
            pooled, tok, tmask = m.encoders[n].encode_fixed(x)
            feats[n] = torch.where(present[:, None], pooled, torch.zeros_like(pooled))
            if tok is not None:
                tok = torch.where(present[:, None, None], tok, torch.zeros_like(tok))
                tmask = tmask & present[:, None]
            tokens[n] = (tok, tmask)
        return m.fuse(feats, tokens, masks)["logits"]


def _zero_absent(x, present):
    """Absent rows as zeros after normalization, as the data set gives them (``where``, so that no
    value of an absent row, not even a NaN, reaches the encoder)."""
    if isinstance(x, dict):
        return {k: _zero_absent(v, present) for k, v in x.items()}
    p = present.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(p, x, torch.zeros_like(x))


class ExportReport(dict):
    """What :func:`export_onnx` wrote and measured (also in ``export.json`` under ``parity``)."""

    def summary(self) -> str:
        worst = max(c["max_abs_diff"] for c in self["checks"])
        cases = ", ".join(f"{c['case']} {c['max_abs_diff']:.2e}" for c in self["checks"])
        absent = self.get("absent_inputs") or []
        note = (f"; note: --data lacks the inputs {', '.join(absent)}, so they were checked only as absent; give "
                "rows that hold them to check them on real values") if absent else ""
        return (f"exported to {self['out']} ({self['graph_bytes'] / 1e6:.1f} MB, opset {self.get('opset')}); parity "
                f"with PyTorch on {self['rows']} rows, largest absolute difference of the logits {worst:.2e} (tolerance "
                f"{self['tolerance']:.0e}): {cases}{note}")


def export_onnx(bundle, out, data, *, rows: int = 256, tolerance: float = 1e-4, root=None,
                allow_outside_root: bool = False, seed: int = 0, opset: int | None = None,
                exporter: str = "torchscript") -> ExportReport:
    """Export a bundle to an ONNX folder and check it against PyTorch.

    Args:
        bundle: A bundle folder (or a loaded :class:`mmfuse.Predictor`).
        out: The folder to write (replaced atomically; it must not be the bundle).
        data: A table of real rows (path or DataFrame) for the parity check and the example batch;
            its first ``rows`` rows are used (the target column, if present, is not read).
        rows: Rows of ``data`` checked.
        tolerance: The largest absolute difference of the logits accepted.
        root, allow_outside_root: Where the table's file paths are resolved, as for ``predict``.
        seed: Seeds the rows' mix of absent inputs.
        opset: ONNX opset (default: 17 for ``torchscript``, the exporter's own for ``dynamo``).
        exporter: ``torchscript`` (``torch.onnx.export(dynamo=False)``: traces the model in well under a
            second and keeps LSTMs and GRUs as ONNX's own LSTM/GRU operators) or ``dynamo``
            (``torch.export``; it unrolls recurrent layers over time, which takes tens of seconds for
            a BiLSTM and gives a larger graph).

    Returns:
        The :class:`ExportReport`.

    Raises:
        MmfuseError: when an encoder cannot be exported, the exporter fails (its first line), or
            the parity check finds a difference above ``tolerance`` (nothing is written then).
    """
    from . import __version__
    from .bundle import Predictor, _json_default, replace_folder
    from .errors import require
    from .io import Table, read_table
    from .onnx import EXPORT_FORMAT, OnnxPredictor, input_layout
    from .preprocessing import save_preprocessors

    if exporter not in EXPORTERS:
        raise MmfuseError(f"exporter must be one of {', '.join(EXPORTERS)}; got {exporter!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise MmfuseError(f"tolerance must be a positive number, got {tolerance!r}")
    if not (isinstance(rows, int) and rows >= 2):
        raise MmfuseError(f"rows must be an integer >= 2 (the parity check's rows), got {rows!r}")
    lo, hi = (17, torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET) if exporter == "torchscript" else (18, None)
    if opset is not None and (opset < lo or (hi is not None and opset > hi)):
        raise MmfuseError(f"--opset {opset}: the {exporter} exporter writes opsets {lo} to {hi or 'its newest'}")
    ort = require("onnxruntime", "onnx")
    require("onnx", "onnx")
    require("onnxscript", "onnx")
    out = Path(out)
    _check_out(out, None if isinstance(bundle, Predictor) else Path(bundle))
    pred = bundle if isinstance(bundle, Predictor) else Predictor.load(bundle)
    if not isinstance(pred, Predictor):
        raise MmfuseError(f"{bundle} is an ensemble; export each of its member bundles (its members/ folder) instead")
    pred._refuse_aligned("be exported as a predicting graph")
    if pred.path is not None:
        _check_out(out, Path(pred.path))
    for n, p in pred.preprocessors.items():
        if getattr(p, "embed", False) and getattr(p, "runtime", "torch") == "onnx-int8":
            raise MmfuseError(f"input {n!r}: the bundle's embeddings come from an int8-quantized backbone (runtime "
                              "onnx-int8), which the graph cannot reproduce; export a bundle trained with runtime "
                              "'torch' or 'onnx'")

    table = read_table(data, root=root)
    if len(table.df) < 2:
        raise MmfuseError(f"the parity check needs at least 2 rows of real data; the table has {len(table.df)}")
    table = Table(table.df.iloc[:rows], table.root, table.source)
    raw = [n for n, p in pred.preprocessors.items() if getattr(p, "embed", False)]
    layout = input_layout(pred.preprocessors, raw)
    started = time.perf_counter()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        graph = tmp / "model.onnx"
        reader = OnnxPredictor(None, pred.preprocessors, pred.target, pred.schema, {"inputs": layout})
        feeds, kept, _, _ = reader.feeds(table, "raise", None, allow_outside_root)
        names = [a["onnx"] for e in layout for a in e["arrays"]] + [e["mask"] for e in layout]
        wrapper = ExportedModel(pred.model, pred.preprocessors, layout).eval()  # the exporter restores this mode
        example = tuple(torch.from_numpy(feeds[k]) for k in names)
        try:
            with _quiet_exporter() as traced, _no_fastpath():
                if exporter == "dynamo":
                    batch = torch.export.Dim("batch", min=1)
                    shapes = (tuple({0: batch} for _ in names),)  # forward(*tensors): the varargs are one entry
                    torch.onnx.export(wrapper, example, str(graph), input_names=names, output_names=["logits"],
                                      dynamic_shapes=shapes, dynamo=True, external_data=False,
                                      **({"opset_version": opset} if opset else {}))
                else:
                    torch.onnx.export(wrapper, example, str(graph), input_names=names, output_names=["logits"],
                                      dynamic_axes={k: {0: "batch"} for k in [*names, "logits"]}, dynamo=False,
                                      opset_version=opset or 17)
        except Exception as e:  # the exporter's own errors, of many types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MmfuseError(f"the model could not be exported to ONNX by the {exporter} exporter ({type(e).__name__}: "
                              f"{first}); --debug shows its traceback"
                              + ("; try --exporter dynamo" if exporter == "torchscript" else "")) from e
        # the folder as it will be read: the preprocessors' saved state and processors, loaded back
        save_preprocessors(pred.preprocessors, tmp)
        _save_processors(pred.preprocessors, layout, tmp)
        meta = {"format": "mmfuse-onnx", "format_version": EXPORT_FORMAT, "mmfuse_version": __version__,
                "torch_version": torch.__version__, "onnxruntime_version": ort.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "graph": "model.onnx", "output": "logits",
                "exporter": exporter, "bundle": str(Path(pred.path).resolve()) if pred.path else None, "inputs": layout,
                "target": pred.target.to_dict(), "decision_threshold": _threshold_setting(pred),
                "schema": pred.schema.to_dict(), "model": pred.config.get("model"),
                "processors": {e["name"]: type(pred.preprocessors[e["name"]].processor).__name__ for e in layout
                               if hasattr(pred.preprocessors[e["name"]], "processor")},
                "tracer_warnings": traced}
        import onnx

        meta["opset"] = next((o.version for o in onnx.load(str(graph), load_external_data=False).opset_import
                              if o.domain in ("", "ai.onnx")), None)
        if opset is not None and meta["opset"] != opset:
            raise MmfuseError(f"the {exporter} exporter wrote opset {meta['opset']}, not the requested {opset}; "
                              "use --exporter torchscript for opsets 17 to 20")
        (tmp / "export.json").write_text(json.dumps(meta, indent=2, default=_json_default), encoding="utf-8")
        runner = OnnxPredictor.load(tmp)
        checks = _parity(pred, runner, table, kept, seed, allow_outside_root)
        worst = max(c["max_abs_diff"] for c in checks)
        report = ExportReport(out=str(out), format="onnx", exporter=exporter, rows=int(len(kept)),
                              tolerance=float(tolerance), checks=checks, max_abs_diff=worst,
                              graph_bytes=graph.stat().st_size, seconds=round(time.perf_counter() - started, 2),
                              tracer_warnings=traced, opset=meta["opset"], absent_inputs=list(reader.last_absent))
        if not worst <= tolerance:  # NaN and inf fail too
            raise MmfuseError(f"the exported graph differs from the bundle by up to {worst:.2e} on the logits (tolerance "
                              f"{tolerance:.0e}): " + ", ".join(f"{c['case']} {c['max_abs_diff']:.2e}" for c in checks)
                              + "; nothing was written. Please report it with the bundle's config.json")
        meta["parity"] = {k: report[k] for k in ("rows", "tolerance", "max_abs_diff", "checks")}
        (tmp / "export.json").write_text(json.dumps(meta, indent=2, default=_json_default), encoding="utf-8")
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
        tmp.chmod(0o755)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


_EXPORT_FILES = {"export.json", "model.onnx", "preprocessors.json", "preprocessors.safetensors", "hf"}


def _check_out(out: Path, bundle: Path | None) -> None:
    """Refuse an output folder whose replacement would lose something: the bundle, a folder holding or
    inside it, a file, or a folder of other files (an earlier export is replaced)."""
    o = out.resolve()
    if bundle is not None:
        b = bundle.resolve()
        if o == b or o in b.parents or b in o.parents:
            raise MmfuseError(f"--out {out} is the bundle, holds it or is inside it; export to a folder of its own "
                              f"(e.g. {bundle.parent / (b.name + '-onnx')})")
    if out.exists() and not out.is_dir():
        raise MmfuseError(f"--out {out} is a file; give a folder to write the export to")
    if out.is_dir() and any(out.iterdir()):
        others = sorted(f.name for f in out.iterdir() if f.name not in _EXPORT_FILES)
        if not (out / "export.json").is_file() or others:
            raise MmfuseError(f"--out {out} is a folder with other files in it ({', '.join(others[:5])}); give a new "
                              "folder (only a folder holding an earlier export and nothing else is replaced)")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines, its optimizer's notes and its warnings about operators of packages
    that are not installed (torchvision) stay off the console. Yields a list that collects, once each,
    the tracer's warnings (a value or shape of the example taken as a constant of the graph): they go
    into ``export.json``, as the parity rows cannot exercise every branch."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    traced: list[str] = []
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("always")
            yield traced
        for w in caught:
            if issubclass(w.category, torch.jit.TracerWarning):
                line = f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0]}"
                if line not in traced:
                    traced.append(line)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _no_fastpath():
    """Attention layers' fused inference kernels (``_transformer_encoder_layer_fwd``, ``_native_multi_head_
    attention``) have no ONNX form; the exporter must trace their plain operations."""
    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha else None
    try:
        if mha:
            mha.set_fastpath_enabled(False)
        yield
    finally:
        if mha:
            mha.set_fastpath_enabled(before)


def _save_processors(preps: dict, layout: list[dict], folder: Path) -> None:
    """Hugging Face inputs: their tokenizer or processor goes into ``hf/<input>/`` and preprocessors.json
    names it there, so the export reads its rows without the bundle's backbone folder or the hub."""
    from .onnx import EXPORT_REF

    metas = json.loads((folder / "preprocessors.json").read_text(encoding="utf-8"))
    for e in layout:
        p = preps[e["name"]]
        if not hasattr(p, "processor"):
            continue
        where = f"hf/{e['mask'][:-len('.present')]}"
        p.processor.save_pretrained(str(folder / where))
        metas[e["name"]]["config"]["model"] = EXPORT_REF + where
    (folder / "preprocessors.json").write_text(json.dumps(metas, indent=2, sort_keys=True), encoding="utf-8")


def _threshold_setting(pred):
    """The decision threshold as ``task_from_dict`` takes it back (binary: a number, multilabel: a list)."""
    t = pred.target.threshold
    if t is None:
        return None
    return np.asarray(t).tolist() if np.ndim(t) else float(t)


def _parity(pred, runner, table, kept, seed, allow_outside_root) -> list[dict]:
    """Largest absolute differences of the logits, the exported folder (read back as a deployment reads it)
    against the bundle: the rows as read (in batches of 7, and one row at a time), each input absent in
    every row, and absent inputs mixed per row."""
    checks = []
    feeds, rows, _, _ = runner.feeds(table, "raise", None, allow_outside_root)
    if not np.array_equal(rows, kept):
        raise MmfuseError("the exported folder's preprocessors read other rows than the bundle's; please report it")
    layout = runner.layout

    def compare(case, z_torch, feeds_case, batch_size=7):  # other batch sizes than the traced one
        z_onnx = runner.run(feeds_case, batch_size=batch_size)
        n = len(z_onnx)
        z_torch = z_torch[:n]
        if not (np.isfinite(z_onnx).all() and np.isfinite(z_torch).all()):
            diff = float("inf")  # a NaN anywhere fails the check
        else:
            diff = float(np.max(np.abs(z_onnx.astype(np.float64) - z_torch.astype(np.float64)))) if n else 0.0
        checks.append({"case": case, "rows": int(n), "max_abs_diff": diff})

    with torch.no_grad():
        z, _ = pred.logits(table, allow_outside_root=allow_outside_root)
        compare("as read", z.numpy(), feeds)
        compare("one row at a time", z.numpy(), {k: v[:8] for k, v in feeds.items()}, batch_size=1)
        for entry in layout:  # each input absent in every row
            z, _ = pred.logits(table, absent=(entry["name"],), allow_outside_root=allow_outside_root)
            f = dict(feeds)
            f[entry["mask"]] = np.zeros_like(feeds[entry["mask"]])
            compare(f"without {entry['name']}", z.numpy(), f)
        compare("absent inputs mixed per row", *_mixed(pred, table, feeds, layout, seed, allow_outside_root))
    return checks


def _mixed(pred, table, feeds, layout, seed, allow_outside_root):
    """Each input of each row dropped with probability 1/2 (seeded): the bundle's logits with those
    masks (its own path: only present rows encoded) and the graph inputs with the same masks."""
    from .data import MultimodalDataset, make_loader
    from .data import _zero_absent as _zero_absent_rows  # the data set's own zeroing

    rng = np.random.default_rng(seed)
    n = len(next(iter(feeds.values())))
    drop = {e["name"]: rng.random(n) < 0.5 for e in layout}
    f = dict(feeds)
    for e in layout:
        f[e["mask"]] = feeds[e["mask"]] & ~drop[e["name"]]
    ds = MultimodalDataset(table, pred.preprocessors, allow_outside_root=allow_outside_root)
    outs, start = [], 0
    for b in make_loader(ds, batch_size=256):
        k = len(b["row"])
        masks = {name: m & torch.from_numpy(~drop[name][start:start + k]) for name, m in b["mask"].items()}
        inputs = {name: _zero_absent_rows(x, masks[name]) for name, x in b["inputs"].items()}
        outs.append(pred.model(inputs, masks)["logits"].float())
        start += k
    return torch.cat(outs).numpy(), f
