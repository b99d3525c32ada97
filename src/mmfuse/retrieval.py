"""Cross-modal retrieval in a bundle's shared space: search, saved indexes (exact or FAISS) and metrics.

A query row's ``from`` input and the index rows' ``to`` input are embedded by
:meth:`mmfuse.Predictor.embed` (unit length, so the score is the cosine similarity) and the top ``k``
index rows are returned. Search is exact by default (a matrix product in blocks). With the optional
``faiss-cpu`` (``pip install mmfuse[faiss]``), :func:`build_index` also builds an approximate index
(HNSW, or IVF for large collections) that is saved beside the embeddings and reused; its recall
against exact search is measured when it is built and by :func:`evaluate_retrieval`.

Metrics (:func:`retrieval_metrics`), over the queries whose true match is known:

- paired rows (query row i matches index row i, the same table embedded twice): ``recall@k`` is the
  share of queries whose match is in the top k, ``median_rank`` the median rank of the match (1 = first);
- a ``match`` rule (index rows that share the query's values in some columns are hits, e.g. the
  same digit): ``precision@k`` is the mean share of hits among the top k, ``recall@k`` the share of
  queries with at least one hit in the top k, ``median_rank`` the median rank of the first hit;
  ``chance_precision`` is the mean share of hits in the whole index (what a random order gives).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import MmfuseError

__all__ = ["exact_search", "retrieval_metrics", "RetrievalIndex", "build_index", "retrieve", "evaluate_retrieval",
           "FAISS_KINDS"]

FAISS_KINDS = ("hnsw", "ivf", "flat")
_BLOCK = 2048  # query rows scored at once (a block's score matrix is _BLOCK x index rows)


def exact_search(queries: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` index rows with the highest inner product for each query: ``(positions [Q, k], scores [Q, k])``,
    best first (ties: the lower position first). Embeddings of unit length make it cosine similarity."""
    q, x = np.asarray(queries, np.float32), np.asarray(index, np.float32)
    k = min(int(k), len(x))
    pos, val = np.empty((len(q), k), np.int64), np.empty((len(q), k), np.float32)
    for s in range(0, len(q), _BLOCK):
        sims = q[s:s + _BLOCK] @ x.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(x) else np.tile(np.arange(len(x)), (len(sims), 1))
        top_s = np.take_along_axis(sims, top, 1)
        order = np.lexsort((top, -top_s), axis=1)  # by score, then position
        pos[s:s + _BLOCK] = np.take_along_axis(top, order, 1)
        val[s:s + _BLOCK] = np.take_along_axis(top_s, order, 1)
    return pos, val


def _value_text(v) -> str | None:
    """A match value as text, None when blank; numbers in one form (``1``, ``1.0`` and ``"1"`` match)."""
    from .schema import is_missing

    if is_missing(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    s = str(v).strip()
    try:
        f = float(s)
        return str(int(f)) if f.is_integer() else repr(f)
    except ValueError:
        return s


def _keys(df: pd.DataFrame, cols: Sequence[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's match key (its values in ``cols``, as text) and whether it has one (no blank value:
    rows with one have no known match and are left out)."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise MmfuseError(f"the {what} table lacks the match column(s) {', '.join(map(repr, missing))} (it has "
                          f"{list(df.columns)[:20]}); --match names columns both tables hold")
    values = [[_value_text(v) for v in df[c].tolist()] for c in cols]
    rows = list(zip(*values)) if values else []
    ok = np.array([all(v is not None for v in r) for r in rows], bool)
    keys = np.array(["\x1f".join(v or "" for v in r) if o else None for r, o in zip(rows, ok)], object)
    return keys, ok


def retrieval_metrics(queries: np.ndarray, index: np.ndarray, query_keys: np.ndarray | None = None,
                      index_keys: np.ndarray | None = None, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Retrieval quality of exact search (see the module docstring). Without keys, query i's match is index
    row i (both the same length); with keys, an index row is a hit when its key equals the query's.

    Returns ``recall@k`` for each k, ``precision@k`` (with keys), ``median_rank``, ``mean_reciprocal_rank``,
    ``queries`` and, with keys, ``chance_precision`` and ``queries_without_hit`` (no index row shares the
    key: left out of every metric)."""
    q, x = np.asarray(queries, np.float32), np.asarray(index, np.float32)
    paired = query_keys is None
    if paired and len(q) != len(x):
        raise MmfuseError(f"paired retrieval needs as many index rows as query rows (row i matches row i); got "
                          f"{len(q)} queries and {len(x)} index rows. Pass a match rule (--match COLUMNS) instead")
    kmax = min(max(ks), len(x))
    first_rank, hits_at = [], {k: [] for k in ks}
    chance, without = [], 0
    if not paired:
        query_keys, index_keys = np.asarray(query_keys, object), np.asarray(index_keys, object)
        counts = pd.Series(index_keys).value_counts()
    for s in range(0, len(q), _BLOCK):
        sims = q[s:s + _BLOCK] @ x.T
        if paired:
            rel = np.zeros_like(sims, dtype=bool)
            rel[np.arange(len(sims)), np.arange(s, s + len(sims))] = True
        else:
            rel = query_keys[s:s + _BLOCK, None] == index_keys[None, :]
        has = rel.any(1)
        without += int((~has).sum())
        sims, rel = sims[has], rel[has]
        if not len(sims):
            continue
        best_rel = np.where(rel, sims, -np.inf).max(1)
        # items scoring at least the best hit's score come first (ties count against the query: collapsed
        # embeddings rank every item equal and must not score as perfect)
        first_rank.append(1 + ((sims >= best_rel[:, None]) & ~rel).sum(1))
        top, _ = exact_search(q[s:s + _BLOCK][has], x, kmax)
        top_rel = np.take_along_axis(rel, top, 1)
        for k in ks:
            hits_at[k].append(top_rel[:, :k].sum(1))
        if not paired:
            chance.append(rel.sum(1) / len(x))
    if not first_rank:
        example = next((k for k in (query_keys if not paired else []) if k is not None), None)
        raise MmfuseError("no query has a true match in the index (no index row shares a query's key"
                          + (f", e.g. {example!r}" if example is not None else "") + "); check the match columns and "
                          "the tables")
    ranks = np.concatenate(first_rank)
    out = {"queries": int(len(ranks)), "index_rows": int(len(x)), "median_rank": float(np.median(ranks)),
           "mean_reciprocal_rank": float(np.mean(1.0 / ranks))}
    for k in ks:
        h = np.concatenate(hits_at[k])
        out[f"recall@{k}"] = float(np.mean(h > 0))
        if not paired:
            out[f"precision@{k}"] = float(np.mean(h / min(k, len(x))))
    if not paired:
        out["chance_precision"] = float(np.mean(np.concatenate(chance)))
        out["queries_without_hit"] = without
        out["distinct_keys_in_index"] = int(len(counts))
    else:
        out["chance_recall@1"] = 1.0 / len(x)
    return out


# --- saved indexes ----------------------------------------------------------------------------------
def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise MmfuseError("approximate search needs FAISS: pip install 'mmfuse[faiss]' (faiss-cpu); or leave "
                          "--faiss out for exact search") from e
    return faiss


def _make_faiss(x: np.ndarray, kind: str, seed: int = 0):
    faiss = _faiss()
    d = x.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    elif kind == "ivf":
        nlist = max(1, min(4096, int(np.sqrt(len(x))), len(x) // 39))  # FAISS wants >= 39 points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nlist, max(8, nlist // 4))  # its recall against exact search is measured and reported
    elif kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        raise MmfuseError(f"unknown FAISS index {kind!r}; choose one of {', '.join(FAISS_KINDS)}")
    index.add(x)
    return index


class RetrievalIndex:
    """The embeddings of a table's rows for one input, searchable exactly or with FAISS.

    Build with :func:`build_index` (or :meth:`from_embeddings`), save with :meth:`save`, reload with
    :meth:`load` (``embeddings.safetensors``, ``index.json`` and, with FAISS, ``faiss.index``)."""

    def __init__(self, embeddings: np.ndarray, row_ids: Sequence, input: str, bundle: dict | None = None,
                 faiss_kind: str | None = None, faiss_index=None, info: dict | None = None):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.row_ids = list(row_ids)
        self.input, self.bundle, self.faiss_kind = input, bundle or {}, faiss_kind
        self._faiss = faiss_index
        self.info = dict(info or {})
        if faiss_kind and faiss_index is None:
            self._faiss = _make_faiss(self.embeddings, faiss_kind)

    @classmethod
    def from_embeddings(cls, embeddings, row_ids=None, input: str = "", faiss: str | None = None, **kw):
        ids = list(range(len(embeddings))) if row_ids is None else row_ids
        return cls(embeddings, ids, input, faiss_kind=faiss, **kw)

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(positions [Q, k], scores [Q, k])``: with FAISS unless ``exact`` (or the index has none)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self._faiss is None or exact or exact is None and self.faiss_kind is None:
            return exact_search(q, self.embeddings, k)
        val, pos = self._faiss.search(q, min(int(k), len(self)))
        return pos.astype(np.int64), val  # -1 where FAISS found fewer than k (dropped by retrieve)

    def recall_against_exact(self, queries: np.ndarray, k: int = 10) -> float | None:
        """The share of the exact top ``k`` that the approximate search also returns (None without FAISS)."""
        if self._faiss is None:
            return None
        approx, _ = self.search(queries, k)
        exact, _ = exact_search(queries, self.embeddings, k)
        return float(np.mean([len(set(a[a >= 0]) & set(e)) / len(e) for a, e in zip(approx, exact)]))

    def save(self, folder) -> Path:
        """Write the index into ``folder`` atomically (a temporary folder renamed into place)."""
        import torch
        from safetensors.torch import save_file

        from .bundle import replace_folder

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.tmp{os.getpid()}"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({"embeddings": torch.from_numpy(self.embeddings)}, str(tmp / "embeddings.safetensors"))
        if self._faiss is not None:
            _faiss().write_index(self._faiss, str(tmp / "faiss.index"))
        meta = {"kind": "mmfuse-retrieval-index", "input": self.input, "rows": len(self), "faiss": self.faiss_kind,
                "bundle": self.bundle, "row_ids": [_jsonable(r) for r in self.row_ids], **self.info}
        (tmp / "index.json").write_text(json.dumps(meta, indent=1))
        return replace_folder(tmp, folder)

    @classmethod
    def load(cls, folder) -> "RetrievalIndex":
        """Load a folder written by :meth:`save`; every failure is one line naming the folder."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta_path = folder / "index.json"
        if not meta_path.is_file():
            raise MmfuseError(f"{str(folder)!r} is not a retrieval index (no index.json); build one with "
                              "mmfuse index BUNDLE TABLE --input NAME --out FOLDER")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            emb = load_file(str(folder / "embeddings.safetensors"))["embeddings"]
        except Exception as e:
            raise MmfuseError(f"retrieval index {str(folder)!r} is damaged ({' '.join(str(e).split())[:200]}); build it "
                              "again with mmfuse index") from e
        if not isinstance(meta, dict) or meta.get("kind") != "mmfuse-retrieval-index" or \
                len(meta.get("row_ids", [])) != len(emb):
            raise MmfuseError(f"retrieval index {str(folder)!r} is damaged (index.json does not describe its "
                              "embeddings); build it again with mmfuse index")
        index = None
        if meta.get("faiss"):
            try:
                index = _faiss().read_index(str(folder / "faiss.index"))
            except MmfuseError:
                raise
            except Exception as e:
                raise MmfuseError(f"retrieval index {str(folder)!r}: faiss.index cannot be read ({e}); build it "
                                  "again with mmfuse index") from e
            if index.ntotal != len(emb):
                raise MmfuseError(f"retrieval index {str(folder)!r} is damaged: faiss.index holds {index.ntotal} rows, "
                                  f"the embeddings {len(emb)}; build it again")
        info = {k: v for k, v in meta.items() if k not in ("kind", "input", "rows", "faiss", "bundle", "row_ids")}
        return cls(emb, meta["row_ids"], meta["input"], meta.get("bundle"), meta.get("faiss"), index, info)


def _jsonable(v):
    return v.item() if isinstance(v, np.generic) else v


def _bundle_id(predictor, input: str) -> dict:
    """What ties an index to the bundle that embedded it: a hash of the weights that embed ``input`` (its
    encoder and projection head) and of its preprocessor's state, so a copy of the bundle matches and
    another bundle does not."""
    import hashlib

    h = hashlib.sha256()
    m = predictor.model
    for mod in (m.encoders[input], m.projections[input] if m.projections is not None else None):
        for k, v in sorted((mod.state_dict() if mod is not None else {}).items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    meta, arrays = predictor.preprocessors[input].get_state()
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for k, a in sorted(arrays.items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return {"path": str(predictor.path.resolve()) if predictor.path else None, "weights_sha256": h.hexdigest()}


def build_index(predictor, table, input: str, *, faiss: str | None = None, match: Sequence[str] | None = None,
                root=None, on_bad_input: str = "raise", allow_outside_root: bool = False, batch_size: int = 256,
                recall_queries: int = 1000, seed: int = 0) -> RetrievalIndex:
    """Embed ``table``'s ``input`` with ``predictor`` into a :class:`RetrievalIndex` (rows where the input
    is absent are left out, counted in ``info["absent_rows"]``). With ``faiss`` (``hnsw``, ``ivf`` or
    ``flat``), the approximate index is built and its recall@10 against exact search is measured on up to
    ``recall_queries`` of the index's own embeddings (seeded) and kept in ``info``. ``match``: columns whose
    values are kept with each row, so that :func:`evaluate_retrieval` can score against the saved index."""
    from .io import read_table

    _check_input(predictor, input, "--input")
    t = read_table(table, root=root)
    e = predictor.embed(t, input=input, root=root, on_bad_input=on_bad_input, allow_outside_root=allow_outside_root,
                        batch_size=batch_size)
    present = e["present"][input]
    ids = t.df.index.to_numpy()[e["rows"][present]]
    emb = e["inputs"][input][present]
    if not len(emb):
        raise MmfuseError(f"no row of the table has input {input!r}: nothing to index")
    info = {"absent_rows": int((~present).sum()), "space": e["space"],
            "skipped_rows": [_jsonable(r) for r in getattr(predictor, "last_skipped", [])]}
    if match:
        keys, ok = _keys(t.df.iloc[e["rows"][present]], list(match), "index")
        sub = t.df.iloc[e["rows"][present]]
        _keys(sub, list(match), "index")  # a missing column fails now
        info["match_values"] = {c: [_value_text(v) for v in sub[c].tolist()] for c in match}
    index = RetrievalIndex(emb, ids, input, _bundle_id(predictor, input), faiss, info=info)
    if faiss:
        rng = np.random.default_rng(seed)
        sample = emb[rng.choice(len(emb), min(recall_queries, len(emb)), replace=False)]
        index.info["recall@10_vs_exact"] = index.recall_against_exact(sample, 10)
        index.info["recall_measured_on"] = f"{len(sample)} of the index's own embeddings"
    return index


def _check_input(predictor, name: str, flag: str) -> None:
    from .model import parse_pairs

    if name not in predictor.model.names:
        raise MmfuseError(f"{flag} {name!r}: the bundle has no such input; its inputs: {', '.join(predictor.model.names)}")
    if predictor.model.projections is None:
        raise MmfuseError("this bundle has no shared space (no projection heads), so its inputs cannot be compared "
                          "with each other; align them first (mmfuse align, or fit with align_weight > 0)")
    aligned = {x for p in predictor.aligned_pairs for x in parse_pairs([p], predictor.model.names)[0]}
    if predictor.aligned_pairs and name not in aligned:
        raise MmfuseError(f"{flag} {name!r}: this input was never aligned with another (aligned pairs: "
                          f"{', '.join(predictor.aligned_pairs)}), so its embeddings cannot be compared across inputs")
    if not predictor.aligned_pairs:
        raise MmfuseError("this bundle's shared space was never trained to match its inputs (no alignment loss: "
                          "projection heads alone map each input its own way), so scores across inputs mean nothing; "
                          "align them (mmfuse align, or fit with align_weight > 0)")


def _index_for(predictor, index, to: str, root, on_bad_input, allow_outside_root, faiss) -> RetrievalIndex:
    """A saved index folder as is (checked against the bundle and ``to``), or a table embedded now."""
    if isinstance(index, RetrievalIndex):
        return index
    if isinstance(index, (str, os.PathLike)) and Path(index).is_dir():
        idx = RetrievalIndex.load(index)
        if idx.input != to:
            raise MmfuseError(f"the index {str(index)!r} holds input {idx.input!r}, not {to!r} (--to)")
        mine = _bundle_id(predictor, to)
        if idx.bundle.get("weights_sha256") != mine["weights_sha256"]:
            raise MmfuseError(f"the index {str(index)!r} was built with another bundle ({idx.bundle.get('path')}); "
                              "build it again with this one: mmfuse index")
        return idx
    return build_index(predictor, index, to, faiss=faiss, root=root, on_bad_input=on_bad_input,
                       allow_outside_root=allow_outside_root)


def _queries(predictor, query, from_: str, root, on_bad_input, allow_outside_root):
    from .io import read_table

    t = read_table(query, root=root)
    e = predictor.embed(t, input=from_, root=root, on_bad_input=on_bad_input, allow_outside_root=allow_outside_root)
    present = e["present"][from_]
    return t, e["inputs"][from_][present], e["rows"][present], int((~present).sum())


def retrieve(predictor, query, index, from_: str, to: str, k: int = 10, *, root=None, on_bad_input: str = "raise",
             allow_outside_root: bool = False, faiss: str | None = None, exact: bool | None = None) -> pd.DataFrame:
    """The top ``k`` index rows for each query row: a long table with ``query_row``, ``rank`` (1 = best),
    ``index_row`` and ``score`` (cosine similarity). Query rows whose ``from_`` input is absent get no
    results (:attr:`retrieve.skipped` is not kept: the returned frame's ``attrs["absent_queries"]`` counts
    and lists them).

    ``index``: a table (embedded now), or a folder written by :meth:`RetrievalIndex.save` (``mmfuse index``;
    searched with its FAISS index when it has one, unless ``exact``)."""
    if not isinstance(k, int) or k < 1:
        raise MmfuseError(f"k must be a positive integer, got {k!r}")
    _check_input(predictor, from_, "--from")
    _check_input(predictor, to, "--to")
    idx = _index_for(predictor, index, to, root, on_bad_input, allow_outside_root, faiss)
    t, q, rows, absent = _queries(predictor, query, from_, root, on_bad_input, allow_outside_root)
    pos, val = idx.search(q, k, exact)
    qid = t.df.index.to_numpy()[rows]
    ids = np.asarray(idx.row_ids, dtype=object)
    kk = pos.shape[1]
    found = pos.ravel() >= 0  # an approximate search may find fewer than k
    out = pd.DataFrame({"query_row": np.repeat(qid, kk)[found], "rank": np.tile(np.arange(1, kk + 1), len(qid))[found],
                        "index_row": ids[pos.ravel()[found]], "score": val.ravel()[found]})
    present = np.zeros(len(t.df), bool)
    present[rows] = True
    out.attrs["absent_queries"] = t.df.index[~present].tolist()
    return out


def evaluate_retrieval(predictor, query, index, from_: str, to: str, *, match: Sequence[str] | None = None,
                       ks: Sequence[int] = (1, 5, 10), root=None, on_bad_input: str = "raise",
                       allow_outside_root: bool = False, faiss: str | None = None) -> dict:
    """Retrieval metrics (:func:`retrieval_metrics`) of ``from_`` -> ``to`` on the query rows whose true
    match is known. Without ``match``, ``query`` and ``index`` are the same rows (row i matches row i;
    rows where either input is absent are left out and counted); with ``match`` (columns both tables
    hold), an index row is a hit when it has the query's values there. With a FAISS index (a saved one
    or ``faiss``), ``approx_recall@10_vs_exact`` measures its top 10 against exact search on these queries."""
    from .io import read_table

    _check_input(predictor, from_, "--from")
    _check_input(predictor, to, "--to")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise MmfuseError(f"the cut-offs (--k) must be positive integers, got {ks!r}")
    tq = read_table(query, root=root)
    q_all = predictor.embed(tq, input=from_, root=root, on_bad_input=on_bad_input,
                            allow_outside_root=allow_outside_root)
    if match is None:
        if isinstance(index, (str, os.PathLike)) and Path(index).is_dir():
            raise MmfuseError("paired evaluation (no --match) embeds the query table's own rows as the index; pass "
                              "the same table as --index, or a match rule (--match COLUMNS) to use a saved index")
        ti = read_table(index, root=root)
        if len(ti.df) != len(tq.df) or not ti.df.index.equals(tq.df.index):
            raise MmfuseError(f"paired evaluation needs the same rows in both tables (row i of the query table matches "
                              f"row i of the index table); got {len(tq.df)} and {len(ti.df)} rows. Pass --match "
                              "COLUMNS when a hit is any row sharing those columns' values")
        i_all = predictor.embed(ti, input=to, root=root, on_bad_input=on_bad_input,
                                allow_outside_root=allow_outside_root)
        pos_q = dict(zip(q_all["rows"], range(len(q_all["rows"]))))
        pos_i = dict(zip(i_all["rows"], range(len(i_all["rows"]))))
        both = [r for r in q_all["rows"] if r in pos_i and q_all["present"][from_][pos_q[r]]
                and i_all["present"][to][pos_i[r]]]
        if len(both) < 2:
            raise MmfuseError(f"{len(both)} row(s) hold both {from_!r} (in the query table) and {to!r} (in the index "
                              "table); paired evaluation needs rows with both inputs")
        q = q_all["inputs"][from_][[pos_q[r] for r in both]]
        x = i_all["inputs"][to][[pos_i[r] for r in both]]
        out = retrieval_metrics(q, x, ks=ks)
        out["rows_left_out"] = int(len(tq.df) - len(both))
        idx = RetrievalIndex.from_embeddings(x, both, to, faiss=faiss) if faiss else None
    else:
        match = list(match)
        idx = _index_for(predictor, index, to, root, on_bad_input, allow_outside_root, faiss)
        saved = isinstance(index, RetrievalIndex) or isinstance(index, (str, os.PathLike)) and Path(index).is_dir()
        ti_df = None if saved else read_table(index, root=root).df
        present = q_all["present"][from_]
        rows = q_all["rows"][present]
        qkeys, qok = _keys(tq.df.iloc[rows], match, "query")
        if ti_df is None:
            kept = idx.info.get("match_values") or {}
            lacking = [c for c in match if c not in kept]
            if lacking:
                raise MmfuseError(f"this saved index keeps the values of {sorted(kept) or 'no column'}, not of "
                                  f"{lacking}; build it with --match {','.join(match)}, or evaluate against the index "
                                  "table itself (--index TABLE)")
            rows = list(zip(*[kept[c] for c in match]))
            ikeys = np.array(["\x1f".join(r) if all(v is not None for v in r) else None for r in rows], object)
        else:
            pos = ti_df.index.get_indexer(idx.row_ids)
            ikeys, iok = _keys(ti_df.iloc[pos], match, "index")
            ikeys = np.where(iok, ikeys, None)
        q = q_all["inputs"][from_][present][qok]
        out = retrieval_metrics(q, idx.embeddings, qkeys[qok], ikeys, ks=ks)
        out["rows_left_out"] = int(len(tq.df) - len(q))
        out["match"] = match
    if idx is not None and idx._faiss is not None:
        out["approx_recall@10_vs_exact"] = idx.recall_against_exact(q, 10)
        out["faiss"] = idx.faiss_kind
    out.update({"from": from_, "to": to})
    return out
