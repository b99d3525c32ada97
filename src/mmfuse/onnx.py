"""Predicting from an exported model with ONNX Runtime, without torch.

``mmfuse export BUNDLE --format onnx`` (:func:`mmfuse.export.export_onnx`) writes a folder::

    model.onnx                      the graph: preprocessed arrays and presence masks in, logits out
    preprocessors.json/.safetensors the preprocessors' fitted state (vocabularies, statistics, ...)
    export.json                     the graph's inputs, the task (labels, threshold), the schema,
                                    and the parity check's result

:class:`OnnxPredictor` reads a table with the same preprocessors as the bundle (the cells' reading,
the bad-input policy and the report are :mod:`mmfuse.reading`'s), runs the graph and decodes the
logits with the bundle's task: its predictions are the bundle's, to the parity reported at export.
Nothing on this path imports torch: a service can ship ``onnxruntime``, numpy, pandas, Pillow and
soundfile instead of a deep-learning framework.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import BundleError, MmfuseError
from .reading import TablePredictions

__all__ = ["OnnxPredictor", "EXPORT_FORMAT", "read_export_meta", "input_layout"]

EXPORT_FORMAT = 1  # the version of export.json's layout
EXPORT_REF = "export://"  # a path inside the export folder, in preprocessors.json


def input_layout(preprocessors: dict, raw=()) -> list[dict]:
    """The graph's inputs, in order: for each model input (sorted by name), one graph input per
    array its preprocessor produces (``item_spec``: shape after the batch axis, dtype), then one
    presence mask (bool) per model input. Inputs named in ``raw`` (a frozen backbone whose
    embeddings the bundle computes in preprocessing) take what the preprocessor reads instead
    (``read_spec``: token ids), and the graph runs the backbone (``"raw": true``). Names are ``<input>.<array>`` and ``<input>.present``,
    ``<input>`` the name with characters other than letters, digits and ``_-`` written as ``_`` (and
    ``~i``, its position, added when two names would then meet)."""
    import re

    layout, used = [], set()
    for i, name in enumerate(sorted(preprocessors)):
        clean = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"
        if clean in used:
            clean = f"{clean}~{i}"
        used.add(clean)
        spec = preprocessors[name].read_spec() if name in raw else preprocessors[name].item_spec()
        layout.append({"name": name, "raw": name in raw,
                       "arrays": [{"key": k, "onnx": f"{clean}.{k}", "shape": list(spec[k][0]),
                                   "dtype": np.dtype(spec[k][1]).name} for k in sorted(spec)],
                       "mask": f"{clean}.present"})
    return layout


def read_export_meta(path: Path) -> dict:
    """``export.json`` of an export folder, checked; one clear line when it is not one."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path} does not exist; give the folder `mmfuse export` wrote")
    if not path.is_dir():
        raise BundleError(f"{path} is a file; give the folder `mmfuse export` wrote (it holds export.json and "
                          "model.onnx)")
    meta_file = path / "export.json"
    if not meta_file.is_file():
        hint = (" It is a bundle: export it first with `mmfuse export {p} --format onnx --data TABLE`".format(p=path)
                if (path / "config.json").is_file() else
                f" It is a run folder: export its bundle with `mmfuse export {path / 'bundle'} --data TABLE`"
                if (path / "bundle" / "config.json").is_file() else "")
        raise BundleError(f"{path} is not an ONNX export: it has no export.json.{hint}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{meta_file} is damaged ({type(e).__name__}: {e}); export the bundle again") from None
    if not isinstance(meta, dict) or meta.get("format") != "mmfuse-onnx":
        raise BundleError(f"{meta_file} is not an mmfuse ONNX export's description; export the bundle again")
    if meta.get("format_version") != EXPORT_FORMAT:
        raise BundleError(f"{path} is an export of format {meta.get('format_version')}; this mmfuse reads format "
                          f"{EXPORT_FORMAT}: export the bundle again with this version")
    if not _layout_ok(meta.get("inputs")) or not isinstance(meta.get("target"), dict) or \
            not isinstance(meta.get("schema"), dict) or not isinstance(meta.get("graph", "model.onnx"), str):
        raise BundleError(f"{meta_file} is damaged: its inputs, target, schema or graph entry is missing or malformed; "
                          "export the bundle again")
    graph = meta.get("graph", "model.onnx")
    if Path(graph).is_absolute() or ".." in Path(graph).parts:
        raise BundleError(f"{meta_file} names a graph outside its folder ({graph!r}); export the bundle again")
    for f in (graph, "preprocessors.json", "preprocessors.safetensors"):
        if not (path / f).is_file():
            raise BundleError(f"{path} is damaged: {f} is missing; export the bundle again")
    return meta


def _layout_ok(layout) -> bool:
    """``export.json``'s inputs: a list of ``{name, raw, arrays: [{key, onnx, shape, dtype}], mask}``."""
    try:
        return isinstance(layout, list) and bool(layout) and all(
            isinstance(e["name"], str) and isinstance(e["mask"], str) and isinstance(e["arrays"], list)
            and all(isinstance(a["key"], str) and isinstance(a["onnx"], str) and np.dtype(a["dtype"]) is not None
                    for a in e["arrays"]) for e in layout)
    except (KeyError, TypeError, ValueError):
        return False


class _AsRead:
    """A preprocessor whose items are what it reads (token ids), not its features: the graph runs the
    frozen backbone that the bundle runs in preprocessing."""

    def __init__(self, p):
        self.p = p

    def read(self, cells, row, ctx):
        return self.p.read(cells, row, ctx)

    def item_spec(self):
        return self.p.read_spec()

    def featurize(self, arrays):
        return arrays


class _Reader:
    """A table's cells, checked once, read into graph inputs a slice of rows at a time."""

    def __init__(self, pred: "OnnxPredictor", table, on_bad_input, allow_outside_root: bool):
        from .preprocessing import ReadContext
        from .reading import BadInputPolicy, InputReport, check_columns, input_cells

        df = table.df
        self.layout, self.preps = pred.layout, pred.preprocessors
        self.policy = BadInputPolicy.parse(on_bad_input)
        self.report = InputReport(self.policy)
        self.ctx = ReadContext(table.root, allow_outside_root)
        self.n = len(df)
        self.row_ids = df.index.to_numpy()
        self.cells = {e["name"]: input_cells(e["name"], self.preps[e["name"]], df) for e in self.layout}
        self.absent = [name for name, cells in self.cells.items() if cells is None]
        self.unread = check_columns(self.preps, pred.schema, df.columns, self.absent)

    def __call__(self, positions: np.ndarray) -> tuple[dict, np.ndarray]:
        """The graph inputs of the rows at ``positions`` that the policy keeps, and those rows' positions."""
        from .reading import read_rows

        issues: list[dict] = []
        read, drop = {}, np.zeros(len(positions), bool)
        for entry in self.layout:
            p = self.preps[entry["name"]]
            reader = _AsRead(p) if entry.get("raw") else p
            r = read_rows(reader, self.cells[entry["name"]], positions, self.row_ids, self.ctx, self.policy, issues)
            read[entry["name"]] = r
            drop |= r.drop
            if hasattr(p, "unknown_counts"):
                self.report.unknown_categories.update(p.unknown_counts)
                p.unknown_counts.clear()
        for issue in issues:
            self.report.add(issue)
        keep = np.flatnonzero(~drop)
        feeds = {}
        for entry in self.layout:
            r = read[entry["name"]]
            for a in entry["arrays"]:
                feeds[a["onnx"]] = np.ascontiguousarray(r.arrays[a["key"]][keep])
            feeds[entry["mask"]] = np.ascontiguousarray(r.present[keep])
        return feeds, positions[keep]


class OnnxPredictor(TablePredictions):
    """An exported model that predicts on tables, as :class:`mmfuse.Predictor` does, with ONNX Runtime.

    Inputs absent from the table, or empty in some rows, are missing, as with the bundle. Use
    :meth:`load`.

    Attributes:
        meta: ``export.json``.
        preprocessors: Input name -> fitted preprocessor.
        task: The bundle's task (labels, decision threshold); decodes the graph's logits.
    """

    def __init__(self, session, preprocessors: dict, task, schema, meta: dict, path: Path | None = None):
        self.session, self.preprocessors, self.task, self.target = session, preprocessors, task, task
        self.schema, self.meta, self.path = schema, meta, path
        self.layout = meta["inputs"]
        self.last_report = None
        self._graph_inputs = None  # the session's input names, read on first use

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None) -> "OnnxPredictor":
        """Load an export folder.

        Args:
            path: The folder ``mmfuse export`` wrote.
            threads: ONNX Runtime's intra-op threads (default: its own choice).

        Raises:
            BundleError: one line naming the folder, when it is missing, is not an export (a bundle
                gets the export command), is of another format, or is damaged.
        """
        from .errors import require
        from .preprocessing import load_preprocessors
        from .schema import Schema
        from .tasks import task_from_dict

        ort = require("onnxruntime", "onnx")
        path = Path(path)
        meta = read_export_meta(path)

        def resolve(config: dict) -> dict:  # a Hugging Face tokenizer or processor saved inside the export
            m = config.get("model")
            if isinstance(m, str) and m.startswith(EXPORT_REF):
                folder = path.resolve() / m[len(EXPORT_REF):]
                if not folder.is_dir():
                    raise BundleError(f"{path} is damaged: {m[len(EXPORT_REF):]}/ (a tokenizer or processor) is "
                                      "missing; export the bundle again")
                config = {**config, "model": str(folder)}
            return config

        try:
            preps = load_preprocessors(path, resolve=resolve)
            task = task_from_dict(meta["target"], meta.get("decision_threshold"))
            schema = Schema.from_dict(meta["schema"])
        except MmfuseError:
            raise
        except Exception as e:  # json, safetensors (its own error type), a state of the wrong shape
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise BundleError(f"{path} is damaged: its preprocessors or task cannot be read ({type(e).__name__}: "
                              f"{first}); export the bundle again") from None
        if sorted(preps) != [i["name"] for i in meta["inputs"]]:
            raise BundleError(f"{path} is damaged: preprocessors.json has inputs {sorted(preps)}, export.json "
                              f"{[i['name'] for i in meta['inputs']]}; export the bundle again")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            session = ort.InferenceSession(str(path / meta.get("graph", "model.onnx")), opts,
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own errors (a truncated or foreign file)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{path / meta.get('graph', 'model.onnx')} cannot be loaded by ONNX Runtime ({first}); "
                              "export the bundle again") from None
        want = {a["onnx"] for e in meta["inputs"] for a in e["arrays"]} | {e["mask"] for e in meta["inputs"]}
        have = {i.name for i in session.get_inputs()}
        if not have <= want:  # an array the model never reads (no numeric column: 0 wide) is not a graph input
            raise BundleError(f"{path} is damaged: the graph takes inputs that export.json does not describe "
                              f"({sorted(have - want)[:6]}); export the bundle again")
        return cls(session, preps, task, schema, meta, path)

    # --- the same surface as mmfuse.Predictor ------------------------------------------------
    @property
    def classes_(self) -> list | None:
        return self.task.classes_

    @property
    def threshold(self):
        return self.task.threshold

    def feeds(self, data, on_bad_input="raise", root=None, allow_outside_root: bool = False):
        """Read a whole table into the graph's inputs: ``(feeds, rows, report, n)`` with ``feeds`` the
        arrays by graph input name (rows kept by the bad-input policy), ``rows`` their table positions,
        ``report`` the :class:`~mmfuse.reading.InputReport` and ``n`` the table's rows. Also used by
        the export's parity check, so that the graph is checked on what this reads."""
        reader = self._reader(data, on_bad_input, root, allow_outside_root)
        feeds, rows = reader(np.arange(reader.n))
        return feeds, rows, reader.report, reader.n

    def _reader(self, data, on_bad_input, root, allow_outside_root) -> "_Reader":
        from .io import read_table

        table = read_table(data, root=root)
        reader = _Reader(self, table, on_bad_input, allow_outside_root)
        self.last_absent, self.last_unread = reader.absent, reader.unread
        return reader

    def run(self, feeds: dict, batch_size: int = 256) -> np.ndarray:
        """The graph's logits ``[N, K]`` for arrays by graph input name, ``batch_size`` rows per call."""
        n = len(next(iter(feeds.values())))
        if self._graph_inputs is None:
            self._graph_inputs = {i.name for i in self.session.get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in self._graph_inputs}  # arrays the graph never reads are not its inputs
        outs = [self.session.run(None, {k: v[i:i + batch_size] for k, v in feeds.items()})[0]
                for i in range(0, n, batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.task.n_outputs), np.float32)

    def logits(self, data, batch_size: int = 256, on_bad_input="raise", root=None,
               allow_outside_root: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs ``[N, K]`` and the table positions they belong to (rows skipped by policy are
        left out; :attr:`last_report` lists them). Rows are read ``batch_size`` at a time, so memory
        holds one batch of decoded files, not the table's."""
        reader = self._reader(data, on_bad_input, root, allow_outside_root)
        outs, kept, none = [], [], []
        masks = [e["mask"] for e in self.layout]
        for start in range(0, reader.n, batch_size):
            feeds, rows = reader(np.arange(start, min(start + batch_size, reader.n)))
            if len(rows):
                outs.append(self.run(feeds, batch_size))
                kept.append(rows)
                none.append(rows[~np.any([feeds[m] for m in masks], axis=0)])
        self.last_report = reader.report
        self.last_no_input = reader.row_ids[np.concatenate(none)].tolist() if none else []
        if not outs:
            raise MmfuseError("no rows to predict on (every row was skipped as bad input: "
                              f"{reader.report.summary()})" if reader.n else "the table has no rows to predict on")
        return np.concatenate(outs), np.concatenate(kept)
