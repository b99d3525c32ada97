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
import torch

from ._names import safe_key
from .errors import BundleError, MmfuseError
from .reading import TablePredictions, check_columns

__all__ = ["Predictor", "save_bundle", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = 1  # bump on any incompatible change of config.json or of the tensor names


BUNDLE_REF = "@bundle/"


def save_bundle(path: str | os.PathLike, model, preps: dict, target, schema, spec: dict, extra: dict | None = None,
                embed_backbones: bool = False, seen_rows=None) -> Path:
    """Write a bundle atomically: everything goes to a temporary folder that is then renamed.

    ``model.safetensors`` holds the model's weights (``model/...``) and the preprocessors'
    arrays (``prep/<key>/...``, the input's :func:`~mmfuse._names.safe_key`); ``config.json``
    holds the schema, the preprocessors' state, the model spec, the label names, versions and
    ``extra`` (metrics, training settings), all under the input names themselves.

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
            tensors[f"prep/{safe_key(name)}/{k}"] = torch.from_numpy(np.ascontiguousarray(a))
    if seen_rows is not None:  # fingerprints of the rows it trained and validated on (row_fingerprints)
        tensors["rows/seen"] = torch.from_numpy(np.ascontiguousarray(seen_rows, dtype=np.uint64).view(np.int64))
    save_file(tensors, str(tmp / "model.safetensors"))
    config = {"format": BUNDLE_FORMAT, "mmfuse_version": __version__, "torch_version": torch.__version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "schema": schema.to_dict(),
              "target": target.to_dict() if target is not None else {},  # {}: aligned encoders (mmfuse align)
              "preprocessors": prep_meta, "model": spec, "backbones": backbones,
              "input_keys": {n: safe_key(n) for n in sorted(preps)}, **(extra or {})}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
    return replace_folder(tmp, path)


def replace_folder(tmp: Path, path: Path) -> Path:
    """Move the finished folder ``tmp`` to ``path``; an older folder there is moved aside first, so a
    crash leaves one of the two whole. Its files get the usual modes (``mkdtemp`` and some writers make them
    private): a server running as another user can read the bundle."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [tmp, *tmp.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
    if path.exists():
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
            skip.append(f"encoders.{safe_key(name)}.backbone.")
        rec["weights_in_model_file"] = hasattr(enc, "backbone") and (tmp is not None or not frozen)
        out[name] = rec
    return out, skip


def _safe(name: str) -> str:
    """A folder name for an input: the name itself where it is one, else a cleaned name and a hash
    of the name (so ``a/b`` and ``a_b`` get different folders)."""
    clean = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if clean == name and name.strip("."):
        return name
    import hashlib

    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


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
            raise BundleError(f"bundle {path}: input {name!r} was trained with backbone {b['model']!r} "
                              f"(fingerprint {b['fingerprint']}), but what is there now differs ({now}). Restore "
                              "that model, retrain, or save bundles with embed_backbones=True to keep the backbone "
                              "inside them")


_CONFIG_KEYS = ("schema", "target", "preprocessors", "model")  # the parts load() builds from config.json


def _damaged(path: Path, what: str) -> BundleError:
    return BundleError(f"bundle {str(path)!r} is damaged: {what}. Copy the bundle again from where it was saved, "
                       "or retrain")


def _read_bundle(path: Path) -> tuple[dict, dict]:
    """A bundle folder's ``config.json`` (checked: a mapping of this format version, with every
    part) and ``model.safetensors`` tensors. Every failure of the OS, json or safetensors is a
    one-line :class:`BundleError` naming the bundle and what to do."""
    from safetensors.torch import load_file

    if not path.exists():
        raise BundleError(f"bundle folder {str(path)!r} does not exist (resolved to {path.resolve()}); pass the "
                          "bundle/ folder of a run, or a folder written by save()")
    if not path.is_dir():
        hint = (f"pass the folder it is in, {str(path.parent)!r}" if path.name in ("config.json", "model.safetensors")
                else "pass the bundle folder, which holds config.json and model.safetensors")
        raise BundleError(f"{str(path)!r} is a file, not a bundle folder; {hint}")
    cfg_path, st_path = path / "config.json", path / "model.safetensors"
    if not cfg_path.is_file() or not st_path.is_file():
        if (path / "bundle" / "config.json").is_file():
            raise BundleError(f"{str(path)!r} is a run folder, not a bundle; did you mean {str(path / 'bundle')!r}?")
        if (path / "model.onnx").is_file() and not (path / "export.json").is_file():
            raise BundleError(f"{str(path)!r} holds a model.onnx but no export.json: an ONNX export that lost its "
                              "description, not a bundle; export the bundle again")
        if (path / "export.json").is_file():
            raise BundleError(f"{str(path)!r} is an ONNX export, not a bundle: predict from it with `mmfuse predict` "
                              "or mmfuse.onnx.OnnxPredictor; serve, evaluate, export and fit --init-from take the bundle "
                              "it was exported from")
        lacks = " and ".join(p.name for p in (cfg_path, st_path) if not p.is_file())
        raise BundleError(f"{str(path)!r} is not an mmfuse bundle: it has no {lacks}. Pass the bundle/ folder of a "
                          "run, or a folder written by save()")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise _damaged(path, f"config.json is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                             "it may be truncated") from e
    except UnicodeDecodeError as e:
        raise _damaged(path, "config.json is not text (another kind of file is in its place)") from e
    except OSError as e:
        raise BundleError(f"bundle {str(path)!r}: config.json cannot be read ({e.strerror or e}); check that you "
                          "may read it") from e
    if not isinstance(config, dict):
        raise _damaged(path, f"config.json holds a JSON {type(config).__name__}, not an object")
    if "format" not in config and "mmfuse_version" not in config:
        raise BundleError(f"{str(path)!r} is not an mmfuse bundle: its config.json has no 'format' nor "
                          "'mmfuse_version' (another library's model folder?). Pass the bundle/ folder of an "
                          "mmfuse run")
    if "format" not in config:
        raise _damaged(path, "config.json lacks 'format'")
    fmt = config["format"]
    if fmt != BUNDLE_FORMAT:
        raise BundleError(f"bundle {str(path)!r} has format {fmt!r} (written by mmfuse "
                          f"{config.get('mmfuse_version')}); "
                          f"this mmfuse reads format {BUNDLE_FORMAT}. Load it with the mmfuse version that wrote it, "
                          "or retrain")
    for key in _CONFIG_KEYS:
        if not isinstance(config.get(key), dict):
            what = "lacks" if key not in config else f"has a {type(config[key]).__name__}, not an object, as"
            raise _damaged(path, f"config.json {what} {key!r}")
    try:
        tensors = load_file(str(st_path))
    except Exception as e:  # safetensors raises its own SafetensorError (truncated file, another format) or OSError
        raise _damaged(path, f"model.safetensors cannot be read ({' '.join(str(e).split())}); it may be truncated "
                             "or another kind of file") from e
    return config, tensors


def _damaged_if_inconsistent(load):
    """Wrap :meth:`Predictor.load`: a bundle whose files read well but do not fit together (a key
    missing deep in config.json, a tensor of the wrong shape) is reported as damaged, in one line,
    instead of a KeyError or RuntimeError from deep inside the building code."""
    import functools

    @functools.wraps(load)
    def wrapper(cls, path, *args, **kwargs):
        try:
            return load(cls, path, *args, **kwargs)
        except BundleError:
            raise
        except MmfuseError as e:  # an unknown fusion, task, preprocessor or role, a bad target description
            raise _damaged(Path(path), f"config.json describes what this mmfuse cannot build ({e})") from e
        except RuntimeError as e:  # torch: size mismatch in load_state_dict
            if "state_dict" not in str(e):
                raise
            detail = next((line.strip() for line in str(e).splitlines() if "mismatch" in line), str(e).strip())
            detail = " ".join(detail.split()).rstrip(".")
            raise _damaged(Path(path), f"model.safetensors does not match the model in config.json ({detail})") from e
        except KeyError as e:
            raise _damaged(Path(path), f"config.json or model.safetensors lacks {e.args[0]!r}") from e
        except (TypeError, ValueError, IndexError, AttributeError) as e:
            raise _damaged(Path(path), "config.json and model.safetensors do not describe a model this mmfuse can "
                                       f"build ({type(e).__name__}: {' '.join(str(e).split())})") from e

    return wrapper


def _legacy_tensor_names(tensors: dict, names: list[str]) -> dict:
    """Rename the tensors of a bundle written before :func:`~mmfuse._names.safe_key` existed, whose keys
    hold input names as they are (``prep/Discount %/median``, ``model/encoders.get.…``), to today's keys.
    Only names that are escaped today move (``%``, ``>``, container attribute names such as ``get``);
    names with ``.`` or ``/`` could not be saved then."""
    moved = {n: safe_key(n) for n in names if safe_key(n) != n}
    if not moved:
        return tensors
    pairs = {f"{a}->{b}": f"{safe_key(a)}->{safe_key(b)}" for a in names for b in names if a != b}
    out = {}
    for key, value in tensors.items():
        if key.startswith("prep/"):
            name = next((n for n in moved if key.startswith(f"prep/{n}/")), None)
            if name is not None:
                key = f"prep/{moved[name]}/" + key[len(f"prep/{name}/"):]
        else:  # input names anywhere in the module path; "a->b" pairs only as cross-attention block names
            parts = key.split(".")
            key = ".".join(pairs.get(part, part) if i and parts[i - 1] == "blocks" else moved.get(part, part)
                           for i, part in enumerate(parts))
        out[key] = value
    return out


class Predictor(TablePredictions):
    """A loaded bundle that predicts on new tables.

    Inputs absent from the table, or empty in some rows, are treated as missing; the model
    was built to handle that. Use :meth:`load`; the constructor takes loaded parts.
    """

    seen_rows = None  # fingerprints of the training and validation rows (row_fingerprints; None: not kept)

    def __init__(self, model, preps: dict, target, schema, config: dict, path: Path | None = None):
        self.model, self.preprocessors, self.target, self.schema = model.eval(), preps, target, schema
        self.config, self.path = config, path

    @property
    def threshold(self):
        """The task's decision threshold: a probability (binary), one per label (multilabel), or None."""
        return self.target.threshold if self.target is not None else None

    @property
    def aligned_only(self) -> bool:
        """True for a bundle of aligned encoders (``mmfuse align``): it embeds and retrieves, and
        ``fit --init-from`` continues from it, but it has no target to predict."""
        return self.model.fusion is None

    @property
    def aligned_pairs(self) -> list[str]:
        """The pairs of inputs whose shared embeddings were trained to match (``"a:b"``): by the alignment
        loss (``mmfuse align``, ``align_weight``), or in the aligned bundle this model was trained from
        (``fit --init-from``). Empty: the inputs' embeddings cannot be compared with each other."""
        own = [f"{a}:{b}" for a, b in self.model.align_pairs]
        return own or list(self.config.get("model", {}).get("aligned_from", {}).get("pairs", []))

    @property
    def fill_estimates(self) -> bool | None:
        """Whether absent inputs reach the fusion as the filler's estimates (a ``fill_missing`` model; None for
        other models). Set it to False to zero them instead, the filler's own contribution measured on the same
        weights (the fusion was trained on estimates, so this is an ablation, not a model trained to zero; with
        ``fill_space: features`` the absent input is masked out as without filling in, with ``shared`` it reaches
        the fusion as a zero vector still marked as filled). Not saved with the bundle."""
        return None if self.model.filler is None else self.model.use_estimates

    @fill_estimates.setter
    def fill_estimates(self, on: bool) -> None:
        if self.model.filler is None:
            raise MmfuseError("fill_estimates: this model does not fill in absent inputs (trained without fill_missing)")
        self.model.use_estimates = bool(on)

    @property
    def fill_mix(self) -> dict | None:
        """Per input, the weight of the filled-in output against the input-masked one on rows where that input
        is absent (a ``fill_missing`` model with ``fill_space: features``; None for others): chosen on the
        validation rows by ``fit`` (:func:`mmfuse.pipeline.choose_fill_mix`), saved with the bundle. Set it
        (``{input: weight in [0, 1]}``) to override; an input left out weighs 1."""
        return None if self.model.decoders is None else {n: float(self.model.fill_mix.get(n, 1.0))
                                                         for n in self.model.names}

    @fill_mix.setter
    def fill_mix(self, mix: dict) -> None:
        if self.model.decoders is None:
            raise MmfuseError("fill_mix: this model has no input-masked output to mix with (it needs fill_missing "
                              "with fill_space 'features')")
        bad = [f"{k}={v!r}" for k, v in dict(mix).items() if k not in self.model.names or isinstance(v, bool)
               or not isinstance(v, (int, float)) or not 0 <= v <= 1]
        if bad:
            raise MmfuseError(f"fill_mix: {', '.join(bad)}: give a weight in [0, 1] for inputs among "
                              f"{', '.join(self.model.names)}")
        self.model.fill_mix = {k: float(v) for k, v in mix.items()}
        self.config.setdefault("model", {})["fill_mix"] = dict(self.model.fill_mix)

    def _refuse_aligned(self, what: str) -> None:
        if self.aligned_only:
            where = f" {str(self.path)!r}" if self.path else ""
            raise MmfuseError(f"the bundle{where} holds aligned encoders (mmfuse align) and no target, so it cannot "
                              f"{what}; retrieve with it (mmfuse retrieve, mmfuse index; Predictor.embed in Python), "
                              "or train a model from it: "
                              "mmfuse fit TABLE --target COLUMN --init-from BUNDLE")

    @classmethod
    @_damaged_if_inconsistent
    def load(cls, path: str | os.PathLike) -> "Predictor":
        """Load a bundle folder, or an ensemble folder (one holding ``ensemble.json``: an
        :class:`~mmfuse.ensemble.EnsemblePredictor` is returned). Refuses bundles of another format
        version with a clear message.

        Raises:
            BundleError: one line naming the bundle, when the folder is missing, is not a bundle
                (a run folder gets "did you mean runs/x/bundle?"), or is damaged.
        """
        from ._build import model_from_spec
        from .preprocessing import Preprocessor
        from .tasks import task_from_dict
        from .schema import Schema

        path = Path(path)
        if (path / "ensemble.json").is_file():  # an ensemble folder (mmfuse.ensemble) loads as one predictor
            from .ensemble import EnsemblePredictor

            return EnsemblePredictor.load(path)
        config, tensors = _read_bundle(path)
        if "input_keys" not in config:  # written before input names were escaped: keys hold the names as they are
            tensors = _legacy_tensor_names(tensors, list(config["preprocessors"]))
        backbones = config.get("backbones", {})
        _check_backbones(backbones, path)

        def resolve(d: dict) -> dict:
            m = d.get("model")
            if isinstance(m, str) and m.startswith(BUNDLE_REF):
                d = {**d, "model": str(path.resolve() / m[len(BUNDLE_REF):])}
            return d

        preps = {}
        for name, meta in config["preprocessors"].items():
            prefix = f"prep/{safe_key(name)}/"
            arrays = {k[len(prefix):]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
            preps[name] = Preprocessor.from_state({**meta, "config": resolve(meta["config"])}, arrays)
        model = model_from_spec(config["model"], resolve)
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        allowed = tuple(f"encoders.{safe_key(n)}.backbone." for n, b in backbones.items()
                        if not b.get("weights_in_model_file"))
        bad = [k for k in missing if not k.startswith(allowed)] + list(unexpected)
        if bad:
            raise _damaged(path, f"model.safetensors does not match the model in config.json (e.g. {bad[:3]})")
        task = task_from_dict(config["target"], config.get("decision_threshold")) if config["target"] else None
        out = cls(model, preps, task, Schema.from_dict(config["schema"]), config, path)
        if "rows/seen" in tensors:
            out.seen_rows = tensors["rows/seen"].numpy().view(np.uint64)
        return out

    def save(self, path, embed_backbones: bool = False) -> Path:
        extra = {k: v for k, v in self.config.items() if k in ("metrics", "training")}
        return save_bundle(path, self.model, self.preprocessors, self.target, self.schema, self.config["model"], extra,
                           embed_backbones=embed_backbones, seen_rows=self.seen_rows)

    def row_fingerprints(self, df) -> np.ndarray:
        """One 64-bit hash per row of ``df``, of the cells this model reads and its target, as text (the rows'
        ids and other columns aside): a row of a later table that matches one the model trained or validated
        on (:attr:`seen_rows`) is the same row. A column the table lacks hashes as blank. The text of 10,000
        rows at a time is built (a cell of image bytes becomes text several times its size)."""
        import pandas as pd

        cols = sorted({str(c) for p in self.preprocessors.values() for c in p.columns}
                      | ({self.target.column} if self.target is not None else set()))
        out = np.empty(len(df), np.uint64)
        for i in range(0, len(df), 10_000):
            part = df.iloc[i:i + 10_000]
            cells = pd.DataFrame({c: part[c].map(str) if c in part.columns else "" for c in cols}, index=part.index)
            out[i:i + len(part)] = pd.util.hash_pandas_object(cells, index=False).to_numpy(np.uint64)
        return out

    def count_seen(self, df) -> int | None:
        """How many rows of ``df`` the model trained or validated on (None: the bundle keeps no fingerprints)."""
        if self.seen_rows is None:
            return None
        return int(np.isin(self.row_fingerprints(df), self.seen_rows).sum())

    @property
    def classes_(self) -> list | None:
        return self.target.classes_ if self.target is not None else None

    @property
    def task(self):
        """The fitted :class:`~mmfuse.tasks.Task`: it turns logits into probabilities and labels."""
        return self.target

    def _dataset(self, data, on_bad_input="raise", root=None, allow_outside_root=False, cache=None):
        from .data import MultimodalDataset

        return MultimodalDataset(data, self.preprocessors, None, on_bad_input=on_bad_input, root=root,
                                 allow_outside_root=allow_outside_root, cache=cache)

    @torch.no_grad()
    def logits(self, data, batch_size: int = 256, absent=(), on_bad_input="raise", root=None, num_workers: int = 0,
               dataset=None, allow_outside_root: bool = False, cache=None) -> tuple[torch.Tensor, np.ndarray]:
        """Raw outputs ``[N, K]`` and the table positions they belong to (rows skipped by policy are left
        out; :attr:`last_report` lists them). ``cache``: as for :class:`~mmfuse.data.MultimodalDataset`
        (``"memory"`` reuses the embeddings a frozen backbone cached on disk for these rows)."""
        from .data import make_loader

        self._refuse_aligned("predict")
        ds = dataset if dataset is not None else self._dataset(data, on_bad_input, root, allow_outside_root, cache)
        self.check_inputs(ds)
        outs, rows, none = [], [], []
        for b in make_loader(ds, batch_size=batch_size, num_workers=num_workers):
            outs.append(self.model(b["inputs"], b["mask"], absent=absent)["logits"].float())
            rows.append(b["row"])
            none.append(b["row"][~torch.stack(list(b["mask"].values())).any(0)])
        self.last_report = ds.report
        self.last_no_input = ds.table.df.index[torch.cat(none).numpy()].tolist() if none else []
        if not outs:
            raise MmfuseError("no rows to predict on (every row was skipped as bad input: "
                              f"{ds.report.summary()})" if len(ds.table.df) else "the table has no rows to predict on")
        return torch.cat(outs), torch.cat(rows).numpy()

    @torch.no_grad()
    def embed(self, data, batch_size: int = 256, on_bad_input="raise", root=None, num_workers: int = 0,
              allow_outside_root: bool = False, cache=None, *, input: str | None = None) -> dict:
        """Embeddings of the rows of a table: each input's and the fused one, L2-normalised.

        Returns a dict with:

        - ``inputs``: ``{input: float32 [N, S]}``, each input's embedding, normalised to unit length: in the
          shared space (the projection head's output) when the model has one (``shared_dim``, alignment,
          filling in, ``mmfuse align``), where the inputs can be compared with each other; else the encoder's
          pooled output (``space`` says which). Rows where the input is absent are zeros.
        - ``fused``: ``float32 [N, D]``, the fused representation the head reads (late fusion: the combined
          logits; a bundle of aligned encoders: the mean of the present inputs' shared embeddings),
          normalised. Left out with ``input``.
        - ``features``: ``{input: [N, D_m]}``, the encoders' pooled outputs as the fusion receives them (not
          normalised; used to refit a fusion on frozen encoders, :func:`mmfuse.alpha.search_alpha`).
        - ``present``: ``{input: bool [N]}``; ``rows``: the table positions of the rows read; ``space``:
          ``"shared"`` or ``"encoder"``; ``aligned_pairs``: the pairs whose embeddings were trained to match
          (:attr:`aligned_pairs`; without any, embeddings of different inputs are not comparable).

        ``input``: embed only this input (the table needs only its columns), e.g. the items of a retrieval
        index."""
        import torch.nn.functional as F

        from .data import MultimodalDataset, make_loader

        m = self.model
        if input is not None and input not in m.names:
            raise MmfuseError(f"embed: the model has no input {input!r}; its inputs: {', '.join(m.names)}")
        names = [input] if input is not None else m.names
        if input is not None:
            ds = MultimodalDataset(data, {input: self.preprocessors[input]}, None, on_bad_input=on_bad_input,
                                   root=root, allow_outside_root=allow_outside_root, cache=cache)
            if ds.absent_inputs():
                cols = ", ".join(map(repr, self.preprocessors[input].columns))
                raise MmfuseError(f"embed: the table lacks the column(s) of input {input!r} ({cols}); it has "
                                  f"{list(ds.table.df.columns)[:20]}")
        else:
            ds = self._dataset(data, on_bad_input, root, allow_outside_root, cache)
            self.check_inputs(ds)
        keys = ("inputs", "features", "present")
        acc = {k: {n: [] for n in names} for k in keys}
        fused, rows = [], []
        for b in make_loader(ds, batch_size=batch_size, num_workers=num_workers):
            ref = b["row"]
            masks = {n: b["mask"].get(n, torch.zeros(len(ref), dtype=torch.bool)) for n in m.names}
            feats, tokens = m.encode(b["inputs"], masks, names)
            feats = {n: f.float() * masks[n].unsqueeze(1) for n, f in feats.items()}
            emb = m.project(feats) if m.projections is not None else feats
            for n in names:
                acc["inputs"][n].append(F.normalize(emb[n].float(), dim=-1) * masks[n].unsqueeze(1))
                acc["features"][n].append(feats[n])
                acc["present"][n].append(masks[n])
            if input is None:
                if m.fusion is None:  # aligned encoders: the mean of the present inputs' unit embeddings
                    f = sum(acc["inputs"][n][-1] for n in names)
                else:
                    f = m.fuse(feats, tokens, masks)["fused"].float()
                fused.append(F.normalize(f, dim=-1))
            rows.append(ref)
        self.last_report = ds.report
        if not rows:
            raise MmfuseError("no rows to embed (every row was skipped as bad input)")
        out = {k: {n: torch.cat(v).numpy() for n, v in acc[k].items()} for k in keys}
        if input is None:
            out["fused"] = torch.cat(fused).numpy()
        out.update(rows=torch.cat(rows).numpy(), space="shared" if m.projections is not None else "encoder",
                   aligned_pairs=self.aligned_pairs)
        return out

    def check_inputs(self, dataset) -> list[str]:
        """The inputs absent from this table (kept in :attr:`last_absent`); an error when all are: every
        prediction would then be the same, whatever the row."""
        absent = dataset.absent_inputs()
        self.last_absent = absent
        self.last_unread = check_columns(self.preprocessors, self.schema, dataset.table.df.columns, absent)
        return absent
