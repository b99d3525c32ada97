"""Contrastive alignment of inputs in one shared space.

:class:`ClipLoss` is the symmetric InfoNCE objective of CLIP (Radford et al. 2021): for a batch of rows
with embeddings ``a_i`` and ``b_i`` of two inputs, L2-normalised, the logits are ``s · a_i · b_j`` with a
learnable scale ``s = exp(t)`` (the inverse temperature, initialised to 1/0.07 and clamped at 100, as
CLIP does), and the loss is the mean of the cross-entropy of each row of ``a`` over the ``b``'s (the
matching one is the target) and of each ``b`` over the ``a``'s. The other rows of the batch are the
negatives. Rows where either input is absent are left out of the pair's loss entirely (neither as a
positive nor as a negative).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipLoss"]


class ClipLoss(nn.Module):
    """Symmetric InfoNCE with a learnable temperature.

    Args:
        init_temperature: The temperature ``1 / s`` to start from.
        max_scale: The largest scale ``s`` allowed (CLIP: 100), for stability.
        queue_size: Past pairs kept as extra negatives (0: none). In training, each call appends its rows'
            normalised, detached embeddings to a first-in-first-out queue of this many pairs; the next calls
            score each ``a_i`` against the batch's ``b``'s and the queue's ``b``'s (and each ``b_i`` likewise),
            the target still being its own pair. As in MoCo (He et al. 2020) but without a momentum
            encoder: the queued embeddings come from the model as it was when they were computed. The queue
            is not saved (a resumed run starts it empty), and is not used in evaluation (a validation loss
            does not depend on what training left in it). A queue as large as the training rows holds each
            row's own past partner among its negatives: keep it well below.
        dim: The embeddings' width (needed with a queue).
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0, queue_size: int = 0,
                 dim: int | None = None):
        super().__init__()
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature!r}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_scale)
        self.queue_size = int(queue_size)
        if self.queue_size:
            if not dim:
                raise ValueError("a queue needs the embeddings' width: dim")
            self.register_buffer("queue_a", torch.zeros(self.queue_size, dim), persistent=False)
            self.register_buffer("queue_b", torch.zeros(self.queue_size, dim), persistent=False)
            self.queued = 0  # pairs in the queue (up to queue_size)
            self.pointer = 0  # where the next pair goes

    def _enqueue(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.detach()[-self.queue_size:], b.detach()[-self.queue_size:]
        idx = (self.pointer + torch.arange(len(a), device=a.device)) % self.queue_size
        self.queue_a[idx] = a.to(self.queue_a.dtype)
        self.queue_b[idx] = b.to(self.queue_b.dtype)
        self.pointer = (self.pointer + len(a)) % self.queue_size
        self.queued = min(self.queue_size, self.queued + len(a))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, a: torch.Tensor, b: torch.Tensor, present_a: torch.Tensor | None = None,
                present_b: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of embeddings ``a`` ``[B, D]`` and ``b`` ``[B, D]`` (row i of each is a pair).

        ``present_a``/``present_b`` (bool ``[B]``): rows where an input is absent are left out. With
        fewer than two rows left there are no negatives: the loss is 0 (still connected to the graph)."""
        keep = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
        if present_a is not None:
            keep = keep & present_a.bool()
        if present_b is not None:
            keep = keep & present_b.bool()
        n = int(keep.sum())
        queued = self.queued if self.queue_size and self.training else 0  # evaluation: the batch's rows only
        if n == 0 or n + queued < 2:  # no negative yet (the row still joins the queue)
            if n and self.queue_size and self.training:
                self._enqueue(F.normalize(a[keep], dim=-1), F.normalize(b[keep], dim=-1))
            return (a.sum() + b.sum()) * 0.0 + self.log_scale * 0.0
        a, b = F.normalize(a[keep], dim=-1), F.normalize(b[keep], dim=-1)
        target = torch.arange(n, device=a.device)
        if queued:
            bank_a, bank_b = self.queue_a[:queued].to(a.dtype), self.queue_b[:queued].to(b.dtype)
            loss = (F.cross_entropy(self.scale * a @ torch.cat([b, bank_b]).t(), target)
                    + F.cross_entropy(self.scale * b @ torch.cat([a, bank_a]).t(), target)) / 2
        else:
            logits = self.scale * a @ b.t()  # (n, n)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        if self.queue_size and self.training:
            self._enqueue(a, b)
        return loss


# --- contrastive pretraining on unlabelled rows -----------------------------------------------------
ALIGN_TRAIN_DEFAULTS = {"batch_size": 128}  # more rows per batch: more negatives


def align(data, pairs=None, out=None, *, inputs=None, columns=None, groups=None, schema_file=None,
          preprocessing=None, encoders=None, dim: int = 128, shared_dim: int = 128, temperature: float = 0.07,
          queue: int = 0, root=None, on_bad_input: str = "raise", allow_outside_root: bool = False,
          resume: bool = False, echo=None, **train):
    """Align the inputs of a table in one shared space by contrastive pretraining; no labels are read.

    Every input of the ``pairs`` (``["audio:image", ...]``; None: every pair of ``inputs``, or of all the
    table's inputs) gets its encoder (``encoders``, as for :class:`~mmfuse.MultimodalPredictor`) and a
    linear projection into a space of width ``shared_dim``; training minimises the mean of each pair's
    :class:`ClipLoss` (its own learnable temperature, from ``temperature``; ``queue`` past pairs as extra
    negatives). Rows where either input of a pair is absent are left out of that pair's loss. A random
    ``val_fraction`` of the rows (seeded) is held out: early stopping and the best checkpoint follow its
    alignment loss, and the retrieval metrics of each pair on those rows are reported.

    ``train``: training settings (:class:`~mmfuse.config.TrainConfig` fields: ``epochs``, ``batch_size``
    (default 128 here), ``lr``, ``seed``, ...). ``epochs=0`` builds the same model and saves it untrained:
    the encoders before alignment, a baseline to measure alignment against.

    Returns the aligned :class:`~mmfuse.Predictor` (its ``config["metrics"]``: the history, the validation
    retrieval metrics). With ``out``, the run folder gets ``checkpoints/``, ``metrics.json`` and
    ``bundle/``: ``mmfuse fit TABLE --target Y --init-from OUT/bundle`` trains a model from those encoders,
    and ``mmfuse retrieve`` searches with it.
    """
    import dataclasses
    import json
    import shutil
    import tempfile
    import time
    from pathlib import Path

    import numpy as np

    from . import pipeline as P
    from ._build import build_model
    from ._fingerprint import run_fingerprint
    from .bundle import Predictor, _json_default, save_bundle
    from .config import ModelConfig, TrainConfig, from_dict
    from .data import MultimodalDataset, make_loader
    from .errors import MmfuseError
    from .io import read_table
    from .model import parse_pairs
    from .training import train_model

    t0 = time.perf_counter()
    untrained = train.get("epochs") == 0  # the encoders before alignment (a baseline): built, not trained
    if untrained:
        train = {k: v for k, v in train.items() if k != "epochs"}
    tcfg = from_dict(TrainConfig, {**ALIGN_TRAIN_DEFAULTS, **train}, "train")
    if tcfg.batch_size < 2:
        raise MmfuseError(f"batch_size {tcfg.batch_size}: a contrastive loss needs at least 2 rows per batch (the other "
                          "rows are each row's negatives); use 64 or more")
    if isinstance(pairs, str):
        pairs = [p.strip() for p in pairs.split(",") if p.strip()]
    mcfg = ModelConfig(dim=dim, encoders=dict(encoders or {}), shared_dim=shared_dim, align_pairs=list(pairs or []),
                       align_temperature=temperature, align_queue=queue, align_weight=1.0)
    table = read_table(data, root=root)
    want = None
    if pairs:
        want = sorted({x for p in pairs for x in p.split(":")})  # a first guess; names holding ':' are resolved below
        schema0 = P.select_inputs(table, None, columns, groups, schema_file)[0]
        known = [s.name for s in schema0.inputs()]
        try:
            want = sorted({x for pair in parse_pairs(pairs, known) for x in pair})
        except ValueError as e:
            raise MmfuseError(str(e)) from None
    elif inputs:
        want = list(inputs)
    schema, names = P.select_inputs(table, None, columns, groups, schema_file, want)
    if len(names) < 2:
        raise MmfuseError(f"alignment needs at least two inputs; the table has {names} (check the roles with "
                          "mmfuse inspect, or group columns with --group)")
    rng = np.random.default_rng(tcfg.seed)
    order = rng.permutation(len(table.df))
    n_val = max(1, int(round(tcfg.val_fraction * len(order)))) if len(order) > 1 else 0
    if len(order) - n_val < 2:
        raise MmfuseError(f"the table has {len(table.df)} rows; alignment needs several rows to contrast")
    df = table.df
    val_df, train_df = df.iloc[np.sort(order[:n_val])], df.iloc[np.sort(order[n_val:])]
    preps = P.fit_preprocessors(schema, names, train_df, table.root, mcfg, tcfg, preprocessing, allow_outside_root)
    pair_rows = check_pairs(train_df, preps, parse_pairs(mcfg.align_pairs, names))
    if queue and queue >= min(pair_rows.values()):
        import warnings

        warnings.warn(f"the queue ({queue} pairs) is as large as the training rows of a pair ({min(pair_rows.values())}): "
                      "each row's own past partner is then among its negatives; keep the queue well below the rows",
                      stacklevel=2)
    kw = dict(on_bad_input=on_bad_input, allow_outside_root=allow_outside_root, root=table.root, cache=tcfg.cache)
    ds_tr = MultimodalDataset(train_df, preps, None, train=True, **kw)
    ds_va = MultimodalDataset(val_df, preps, None, **kw)
    for ds in (ds_tr, ds_va):
        ds.warm_cache()
    tr = make_loader(ds_tr, tcfg.batch_size, shuffle=True, num_workers=tcfg.num_workers, seed=tcfg.seed,
                     persistent_workers=True)
    va = make_loader(ds_va, max(tcfg.batch_size, 256), num_workers=tcfg.num_workers, persistent_workers=True)
    import torch

    torch.manual_seed(tcfg.seed)
    model, spec = build_model(preps, 0, mcfg, aligned=True)
    if echo is not None:
        echo(f"aligning {', '.join(a + ':' + b for a, b in model.align_pairs)} in a {model.shared_dim}-wide space "
             f"on {len(train_df)} rows ({len(val_df)} held out; rows holding both inputs: "
             + ", ".join(f"{k} {v}" for k, v in pair_rows.items()) + "); encoders: "
             + ", ".join(f"{n}={e['name']}" for n, e in spec["encoders"].items()))
    run_dir = Path(out) if out else Path(tempfile.mkdtemp(prefix="mmfuse_align_"))
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = run_fingerprint({"train": train_df, "val": val_df}, sorted({c for p in preps.values() for c in p.columns}),
                                  mcfg, tcfg, kind="align")
    try:
        result = (train_model(model, None, tr, va, tcfg, mcfg, run_dir, None, resume=resume, fingerprint=fingerprint)
                  if not untrained else {"best_epoch": None, "epochs_run": 0, "history": []})
        model.eval()
    finally:
        if not out:
            shutil.rmtree(run_dir, ignore_errors=True)
    pred = Predictor(model, preps, None, schema, {"model": spec})
    val_metrics = {}
    if len(val_df) >= 2:
        from .retrieval import retrieval_metrics

        e = pred.embed(val_df, root=table.root, on_bad_input=on_bad_input, allow_outside_root=allow_outside_root)
        for a, b in model.align_pairs:
            both = e["present"][a] & e["present"][b]
            if both.sum() >= 2:
                ea, eb = e["inputs"][a][both], e["inputs"][b][both]
                val_metrics[f"{a}->{b}"] = retrieval_metrics(ea, eb)
                val_metrics[f"{b}->{a}"] = retrieval_metrics(eb, ea)
    temps = {f"{a}:{b}": float(1 / loss.scale.detach()) for (a, b), loss in zip(model.align_pairs, model.align_losses)}
    metrics = {"kind": "aligned", "pairs": [f"{a}:{b}" for a, b in model.align_pairs], "inputs": names,
               "pair_rows": pair_rows,
               "shared_dim": model.shared_dim, "rows": {"train": len(train_df), "val": len(val_df)},
               "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"], "history": result["history"],
               "temperatures": temps,
               "val_retrieval": val_metrics,  # on the held-out rows, which also chose the best epoch
               "fit_seconds": time.perf_counter() - t0,
               "reports": {k: ds.report.summary() for k, ds in (("train", ds_tr), ("val", ds_va))}}
    pred.config["metrics"] = metrics
    if out:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
        save_bundle(run_dir / "bundle", model, preps, None, schema, spec,
                    {"metrics": metrics, "training": dataclasses.asdict(tcfg)})
        pred.path = run_dir / "bundle"
        pred.config = json.loads((run_dir / "bundle" / "config.json").read_text())
    return pred


# --- training a model from aligned encoders (fit --init-from ALIGNED) ------------------------------------
def aligned_schema_options(aligned, table_columns, columns=None, groups=None) -> tuple[dict, dict]:
    """Role overrides and groups under which a new table (with ``table_columns``) forms the aligned
    bundle's inputs as it did (its groups, its columns' roles, for the columns the table has), merged
    under the user's own (which win)."""
    sch, have = aligned.schema, set(table_columns)
    cols = {c: (r.value if hasattr(r, "value") else r) for p in aligned.preprocessors.values() for c in p.columns
            for r in [sch.roles.get(c)] if r is not None and c in have}
    kept = {g: list(cs) for g, cs in sch.groups.items() if all(c in have for c in cs)}
    return {**cols, **dict(columns or {})}, {**kept, **dict(groups or {})}


def aligned_preprocessors(aligned, inputs, schema) -> dict:
    """The aligned bundle's fitted preprocessors for the inputs of ``inputs`` it has (same name, same
    columns), so that the new table is read as the aligned encoders learned it."""
    from .errors import MmfuseError

    out = {}
    for n in inputs:
        p = aligned.preprocessors.get(n)
        if p is None:
            continue
        spec = next(s for s in schema.inputs() if s.name == n)
        if sorted(spec.columns) != sorted(p.columns):
            raise MmfuseError(f"input {n!r} reads the columns {sorted(spec.columns)} here, but {sorted(p.columns)} in the "
                              "aligned bundle; give it the same columns (--group), or another name")
        out[n] = p
    if not out:
        raise MmfuseError(f"none of the aligned bundle's inputs ({', '.join(sorted(aligned.preprocessors))}) is an input "
                          f"of this table ({', '.join(inputs)}); check the column names and groups")
    return out


def model_from_aligned(aligned, preps: dict, n_outputs: int, mcfg):
    """A new model for ``preps`` (``mcfg``'s fusion and head) whose aligned inputs start from the aligned
    bundle's encoders and projection heads (copied: the bundle is not changed). The shared width is the
    aligned bundle's unless ``mcfg.shared_dim`` sets one. Returns ``(model, spec)``."""
    import copy
    import dataclasses

    import torch

    from ._build import assemble, build_model

    cfg = mcfg if mcfg.shared_dim else dataclasses.replace(mcfg, shared_dim=aligned.model.shared_dim)
    model0, spec0 = build_model(preps, n_outputs, cfg)
    encoders = {n: model0.encoders[n] for n in model0.names}
    enc_spec = dict(spec0["encoders"])
    for n in preps:
        if n in aligned.model.names:
            encoders[n] = copy.deepcopy(aligned.model.encoders[n])
            enc_spec[n] = {"name": aligned.config["model"]["encoders"][n]["name"], "config": encoders[n].init_config}
    cfg = type(cfg)(**spec0["model"]) if len(preps) == 1 else cfg  # one input: build_model chose `single`
    model, spec = assemble(enc_spec, encoders, n_outputs, cfg)
    spec["aligned_from"] = {"pairs": [f"{a}:{b}" for a, b in aligned.model.align_pairs],
                            "inputs": sorted(n for n in preps if n in aligned.model.names)}
    with torch.no_grad():
        if model.projections is not None:
            for n in preps:
                if n in aligned.model.names:
                    src, dst = aligned.model.projections[n], model.projections[n]
                    if src.weight.shape == dst.weight.shape:
                        dst.load_state_dict(src.state_dict())
        old = {tuple(p): loss for p, loss in zip(aligned.model.align_pairs, aligned.model.align_losses)}
        for p, loss in zip(model.align_pairs, model.align_losses):
            src = old.get(tuple(p)) or old.get(tuple(reversed(p)))
            if src is not None:
                loss.log_scale.copy_(src.log_scale)
    return model.train(), spec


def check_pairs(df, preps: dict, pairs, where: str = "the training rows", batch_size: int | None = None) -> dict:
    """Rows of ``df`` where both inputs of each pair are given (a cell not blank), per pair ``"a:b"``; an
    error when a pair has fewer than two (its loss would be zero throughout: nothing would be aligned)."""
    import numpy as np

    from .errors import MmfuseError
    from .schema import missing_mask

    def given(name):  # a cell of the input's columns holds a value (mmfuse's one rule for a missing cell)
        cols = [c for c in preps[name].columns if c in df.columns]
        if not cols:
            return np.zeros(len(df), bool)
        return ~np.logical_and.reduce([missing_mask(df[c]) for c in cols])

    counts = {}
    for a, b in pairs:
        counts[f"{a}:{b}"] = int((given(a) & given(b)).sum())
    poor = {k: v for k, v in counts.items() if v < 2}
    if poor:
        raise MmfuseError(f"nothing to align: in {where}, " + "; ".join(f"{k} has {v} row(s) with both inputs"
                                                                         for k, v in poor.items())
                          + ". Alignment learns from rows that hold both inputs of a pair; check the pairs and columns")
    return counts
