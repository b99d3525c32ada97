"""Tables larger than memory: a folder of Parquet files, or one large file, read a row group at a time.

``read_table(path, stream=True)`` gives a :class:`ParquetStream`: the files' metadata (row groups and
their row counts), never the rows. Training on it (``MultimodalPredictor(stream=True)``, ``mmfuse fit
--stream``) takes these steps, none of which holds the table:

1. the column roles are inferred from a sample of ``sample_rows`` rows drawn from random row groups (fewer
   when rows are large: at most about 128 MiB of them);
2. the splits come from a split column or from a hash of an id column (``split_hash``), read in one
   pass over those columns only: a row's split never depends on the other rows, so it is stable as
   files are added, and the pass also counts each split's rows and finds blank targets;
3. the target is fitted on every training row's target (one column); numbers, categories and texts
   are fitted on a streamed pass over their columns (:func:`fit_preprocessors_stream`), the other
   inputs (images, audio, time series, which learn little: a size, a mean) on the sample;
4. :class:`StreamSampler` draws each epoch's order from the seed, the epoch and the number of loader
   workers: the row groups are shuffled and laid end to end, process ``rank`` of ``world`` takes a
   contiguous ``world``-th of them and each of its workers a contiguous piece of that, whose rows
   pass through the worker's shuffle buffer. The order is computed on row numbers first, so a run
   resumed mid-epoch starts exactly after the batches it had trained on (in the killed run's order,
   whatever its workers now),
   and each batch tells the worker that builds it which rows to read and keep:
   :class:`StreamingDataset` reads a row group when a batch first needs it, keeps only the rows
   its own batches will use, and lets each go once it is in a batch. Memory holds about the
   shuffle buffer and one row group, whatever the size of the table.

Row groups are read whole (Parquet's unit of reading): write large tables with row groups of at most
some thousands of rows (``pyarrow.parquet.write_table(..., row_group_size=1000)``).
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info

from .errors import InputError, MmfuseError, SchemaError
from .io import Table

__all__ = ["ParquetStream", "StreamSplits", "stream_splits", "fit_preprocessors_stream", "StreamSampler",
           "StreamingDataset", "make_stream_datasets", "hash_split"]

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_LEFT_OUT = -1  # a blank target


class ParquetStream:
    """One Parquet file, or every ``*.parquet`` file under a folder (sorted by path), as row groups.

    Rows are numbered across the files in that order (file by file, row group by row group): the row
    id of messages and reports. Only metadata is read here.

    Attributes:
        source: The path given. root: The folder relative file paths in cells resolve against (the
        folder given, or the file's folder). columns: The column names. n_rows: Rows in all.
        rows_of, start_of: Rows of each row group (a "unit") and the row id of its first row.
    """

    def __init__(self, path, root=None):
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise SchemaError(f"table {path} does not exist; check the path")
        self.skipped_files: list = []
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
            files = [p for p in found if p.suffix.lower() in (".parquet", ".pq")]
            self.skipped_files = [str(p.relative_to(path)) for p in found if p not in files and p.suffix.lower()
                                  not in (".crc", ".json", ".md", ".txt")]
            if self.skipped_files and files:
                import warnings

                warnings.warn(f"folder {path}: {len(self.skipped_files)} file(s) that are not Parquet are not read: "
                              f"{', '.join(self.skipped_files[:5])}{' ...' if len(self.skipped_files) > 5 else ''}",
                              stacklevel=2)
            if not files:
                raise SchemaError(f"folder {path} holds no .parquet files; streaming reads a Parquet file or a "
                                  "folder of them (convert a CSV with pandas: pd.read_csv(f).to_parquet(...))")
        elif path.suffix.lower() in (".parquet", ".pq"):
            files = [path]
        else:
            raise SchemaError(f"table {path}: streaming reads Parquet (a .parquet file or a folder of them), not "
                              f"{path.suffix or 'a file without extension'}; convert it once, e.g. with "
                              "pandas: pd.read_csv(f).to_parquet('table.parquet', row_group_size=1000), or drop --stream")
        self.source, self.files = str(path), files
        self.root = Path(root).resolve() if root else (path.resolve() if path.is_dir() else path.resolve().parent)
        file_of, group_of, rows_of, names = [], [], [], None
        for i, f in enumerate(files):
            try:
                with pq.ParquetFile(f) as pf:
                    meta, cols = pf.metadata, list(pf.schema_arrow.names)
            except Exception as e:  # pyarrow's errors differ by version: each becomes one line naming the file
                raise SchemaError(f"table {f} is not a readable Parquet file ({' '.join(str(e).split())[:200]}); "
                                  "copy or export it again, or remove it from the folder") from None
            if names is None:
                names = cols
            elif set(cols) != set(names):
                extra, lacks = sorted(set(cols) - set(names)), sorted(set(names) - set(cols))
                raise SchemaError(f"table {f} has other columns than {files[0]}"
                                  + (f": it adds {extra}" if extra else "") + (f", it lacks {lacks}" if lacks else "")
                                  + "; every file of a streamed folder needs the same columns")
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n:
                    file_of.append(i), group_of.append(g), rows_of.append(n)
        if not rows_of:
            raise SchemaError(f"table {path} has no rows")
        self.columns = names
        self.file_of, self.group_of = np.asarray(file_of), np.asarray(group_of)
        self.rows_of = np.asarray(rows_of, dtype=np.int64)
        self.start_of = np.concatenate([[0], np.cumsum(self.rows_of)[:-1]]).astype(np.int64)
        self.n_rows = int(self.rows_of.sum())
        self._handles: dict = {}

    @property
    def n_units(self) -> int:
        return len(self.rows_of)

    def locate(self, row_id: int) -> str:
        """Where row ``row_id`` (numbered across the files) is: ``"row 45 of part-003.parquet"`` (counted from 0,
        as pandas counts a file's rows; the file named under the folder given)."""
        u = int(np.searchsorted(self.start_of, row_id, side="right") - 1)
        i = int(self.file_of[u])
        first = int(self.start_of[int(np.flatnonzero(self.file_of == i)[0])])
        f, src = self.files[i], Path(self.source)
        name = str(f.relative_to(src)) if src.is_dir() else f.name
        return f"row {int(row_id) - first} of {name}"

    def __len__(self) -> int:
        return self.n_rows

    _OPEN_FILES = 8  # handles kept open per process (a folder may hold thousands of part files)

    def _file(self, i: int):
        import pyarrow.parquet as pq

        if self._handles.get("pid") != os.getpid():  # a forked worker opens its own
            self._handles = {"pid": os.getpid(), "open": OrderedDict()}
        open_ = self._handles["open"]
        if i in open_:
            open_.move_to_end(i)
        else:
            open_[i] = pq.ParquetFile(self.files[i])
            while len(open_) > self._OPEN_FILES:
                open_.popitem(last=False)[1].close()
        return open_[i]

    def __getstate__(self):  # open files do not travel to another process (spawned workers): each opens its own
        return {**self.__dict__, "_handles": {}}

    def read_unit(self, u: int, columns):
        """Row group ``u`` as a pyarrow Table of ``columns`` (those the files have)."""
        cols = [c for c in columns if c in self.columns]
        f = self.files[self.file_of[u]]
        try:
            return self._file(int(self.file_of[u])).read_row_group(int(self.group_of[u]), columns=cols)
        except Exception as e:
            raise SchemaError(f"table {f}: row group {int(self.group_of[u])} (rows {int(self.start_of[u])}.."
                              f"{int(self.start_of[u] + self.rows_of[u] - 1)}) cannot be read "
                              f"({' '.join(str(e).split())[:200]}); the file is damaged or changed while training: "
                              "export it again") from None

    def unit_frame(self, u: int, columns, rows=None) -> pd.DataFrame:
        """Row group ``u`` (its rows ``rows``, positions in the group, when given) as a DataFrame indexed by row id."""
        t = self.read_unit(u, columns)
        if rows is not None:
            t = t.take(np.asarray(rows, dtype=np.int64))
        local = np.arange(self.rows_of[u]) if rows is None else np.asarray(rows)
        df = t.to_pandas(types_mapper=None, ignore_metadata=True)
        df.index = self.start_of[u] + local
        return df

    _SAMPLE_BYTES = 128 * 2 ** 20  # a sample of large rows (images as bytes) holds at most this much

    def sample_size(self, n: int) -> int:
        """``n``, or fewer rows when the rows are large: at most about 128 MiB of data (from the files' metadata:
        uncompressed bytes per row), and at least 500 rows."""
        import pyarrow.parquet as pq

        with pq.ParquetFile(self.files[0]) as pf:
            g = pf.metadata.row_group(0)
            per_row = max(1.0, g.total_byte_size / max(1, g.num_rows))
        return int(min(n, max(500, self._SAMPLE_BYTES // per_row)))

    def sample(self, n: int, seed: int = 0, units=None, rows_of=None, salt: int = 7) -> pd.DataFrame:
        """About ``n`` rows (all, when there are fewer; fewer when rows are large: :meth:`sample_size`), drawn from
        row groups taken in a seeded random order (``units``: only from these; ``rows_of(u)``: only these rows of
        row group ``u``), every column; indexed by row id, in row order. ``salt`` keeps samples of different
        purposes apart."""
        n = self.sample_size(n)
        rng = np.random.default_rng([seed, salt])
        units = np.arange(self.n_units) if units is None else np.asarray(units)
        parts, got = [], 0
        for u in rng.permutation(units):
            if got >= n:
                break
            parts.append(self.unit_frame(int(u), self.columns, None if rows_of is None else rows_of(int(u))))
            got += len(parts[-1])
        df = pd.concat(parts)
        if len(df) > n:
            df = df.iloc[np.sort(rng.choice(len(df), n, replace=False))]
        return df.sort_index()

    def sample_table(self, n: int, seed: int = 0) -> Table:
        """A :class:`~mmfuse.io.Table` of :meth:`sample` (for :func:`mmfuse.schema.infer_schema`)."""
        return Table(self.sample(n, seed), self.root, self.source)

    def describe(self) -> str:
        return (f"{self.source}: {self.n_rows:,} rows in {self.n_units} row groups of {len(self.files)} "
                f"file{'s' if len(self.files) != 1 else ''}"
                + (f" ({len(self.skipped_files)} other files not read)" if self.skipped_files else ""))


def hash_split(values, val_fraction: float, test_fraction: float, seed: int = 0) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) from a hash of each id: a row's split depends on its id, the
    fractions and the seed only (BLAKE2b of the id's text, with 17, 17.0 and "17" the same id; the same on
    every machine and version). Rows sharing an id share a split."""
    from .preprocessing.tabular import category_key

    key = str(seed).encode()  # category_key: 17, 17.0 and "17" are one id (an int column with a null reads as floats)
    u = np.fromiter((int.from_bytes(hashlib.blake2b(str(category_key(v)).encode(), digest_size=8, key=key).digest(),
                                    "big") for v in values), dtype=np.float64, count=len(values)) / 2.0 ** 64
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0)).astype(np.int8)


@dataclass
class StreamSplits:
    """Which split each row of a :class:`ParquetStream` belongs to, and the targets of the labelled rows.

    Attributes:
        codes: Per row group, ``int8`` per row: 0 train, 1 val, 2 test, -1 left out (a blank target).
        targets: ``{split: object array}``, the target cells of each split's rows, in row order.
        source: Where the splits come from, in words. blank_target: ``{split: [row ids]}`` (the first 1,000 of
        each) of the rows left out for a blank target; ``n_blank_rows`` counts them all.
    """

    stream: ParquetStream
    codes: list
    targets: dict
    source: str
    labels: dict
    blank_target: dict = field(default_factory=dict)
    n_blank_rows: int = 0
    task: str | None = None

    @property
    def root(self) -> Path:
        return self.stream.root

    def ids(self, split: str) -> np.ndarray:
        """Row ids of ``split``, in row order."""
        c = _SPLIT_CODE[split]
        return np.concatenate([self.stream.start_of[u] + np.flatnonzero(k == c) for u, k in enumerate(self.codes)]
                              or [np.zeros(0, np.int64)]).astype(np.int64)

    def counts(self) -> dict:
        return {s: int(sum(int((k == c).sum()) for k in self.codes)) for s, c in _SPLIT_CODE.items()}

    def n_blank(self) -> int:
        return self.n_blank_rows

    def row_ids(self, split: str) -> list:
        return self.ids(split).tolist()

    def frames(self, columns, split: str = "train"):
        """The rows of ``split``, ``columns`` only, one row group at a time (DataFrames indexed by row id)."""
        c = _SPLIT_CODE[split]
        for u, k in enumerate(self.codes):
            rows = np.flatnonzero(k == c)
            if len(rows):
                yield self.stream.unit_frame(u, columns, rows)

    def sample(self, split: str, n: int, seed: int = 0) -> pd.DataFrame:
        """About ``n`` rows of ``split`` from random row groups, every column (:meth:`ParquetStream.sample`)."""
        c = _SPLIT_CODE[split]
        units = [u for u, k in enumerate(self.codes) if (k == c).any()]
        if not units:
            raise MmfuseError(f"the streamed table {self.stream.source} has no {split} rows to sample")
        return self.stream.sample(n, seed, units, lambda u: np.flatnonzero(self.codes[u] == c), salt=11)

    def fingerprint(self) -> dict:
        """What a resume must find unchanged: the files (path, size, modification time) and each row's split."""
        h = hashlib.sha256()
        for f in self.stream.files:
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        for k in self.codes:
            h.update(k.tobytes())
        return {"stream": h.hexdigest()[:16]}


def stream_splits(stream: ParquetStream, schema, target: str, task: str | None = None, split_hash: str | None = None,
                  val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> StreamSplits:
    """The splits of a streamed table, from one pass over its split (or id) column and its target column.

    A split column (role ``split``: values train / val / test) is used as given; else ``split_hash`` names
    an id column whose hash (:func:`hash_split`) puts ``val_fraction`` and ``test_fraction`` of the ids into
    validation and test. Rows with a blank target are left out (counted, the first listed).
    """
    from .schema import Role
    from .splits import SPLIT_NAMES, split_names
    from .tasks import blank_targets, infer_task

    if target not in stream.columns:
        from ._registry import unknown_name_message

        raise SchemaError(unknown_name_message("target column", target, stream.columns))
    split_cols = schema.columns_with(Role.SPLIT)
    if split_hash is not None and split_hash not in stream.columns:
        from ._registry import unknown_name_message

        raise SchemaError(unknown_name_message("split_hash column", split_hash, stream.columns))
    if split_hash is None and not split_cols and "split" in stream.columns:
        values = sorted({str(v) for u in range(min(stream.n_units, 50))
                         for v in stream.unit_frame(u, ["split"])["split"].unique()
                         if split_names(pd.Series([v])).map(SPLIT_NAMES).isna().all()})
        raise MmfuseError(f"the column 'split' of {stream.source} holds values other than train / val / test "
                          f"({', '.join(repr(v) for v in values[:8])}); write train, val or test in every row, or "
                          "split by an id column's hash (--split-hash ID_COLUMN)")
    if split_hash is None and not split_cols:
        raise MmfuseError(f"a streamed table is split without reading it whole: give it a split column (values "
                          f"train / val / test), or name an id column whose hash decides each row's split "
                          f"(--split-hash ID_COLUMN, split_hash=...); {stream.source} has neither a split column "
                          f"nor a given id column (columns: {', '.join(stream.columns[:12])})")
    by = split_hash if split_hash is not None else split_cols[0]
    codes, targets, blank, n_blank = [], {s: [] for s in _SPLIT_CODE}, {}, 0
    for u in range(stream.n_units):
        df = stream.unit_frame(u, list(dict.fromkeys([by, target])))
        if split_hash is not None:
            from .preprocessing._base import is_missing

            null = df[by].map(is_missing).to_numpy(dtype=bool)
            if null.any():
                i = int(np.flatnonzero(null)[0])
                raise InputError(df.index[i], by, "has no id to hash into a split",
                                 hint="give every row an id, or drop the rows without one")
            code = hash_split(df[by].to_numpy(), val_fraction, test_fraction, seed)
        else:
            names = split_names(df[by]).map(SPLIT_NAMES)
            bad = names.isna().to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputError(df.index[i], by, f"holds {df[by].iloc[i]!r}, not a split name",
                                 hint="write train, val or test in every row of the split column")
            code = names.map(_SPLIT_CODE).to_numpy(dtype=np.int8)
        miss = blank_targets(df[target])
        if miss.any():
            n_blank += int(miss.sum())
            for name, c in _SPLIT_CODE.items():
                rows = df.index[miss & (code == c)].tolist()
                if rows and len(blank.setdefault(name, [])) < 1000:
                    blank[name] += rows[:1000 - len(blank[name])]
            code = np.where(miss, _LEFT_OUT, code).astype(np.int8)
        codes.append(code)
        y = df[target].to_numpy(dtype=object)
        for s, c in _SPLIT_CODE.items():
            targets[s].append(y[code == c])
    targets = {s: np.concatenate(v) if v else np.zeros(0, object) for s, v in targets.items()}
    counts = {s: len(v) for s, v in targets.items()}
    if n_blank == stream.n_rows:
        raise MmfuseError(f"every cell of the target column {target!r} of {stream.source} is blank: there is "
                          "nothing to learn from; check the column name (--target)")
    if counts["train"] == 0 or counts["val"] == 0:
        raise MmfuseError(f"the streamed table {stream.source} has {counts['train']} training and {counts['val']} "
                          f"validation rows by {'the hash of ' + repr(by) if split_hash else 'its split column ' + repr(by)}; "
                          "both are needed" + ("" if not split_hash else " (raise val_fraction, or check the id column)"))
    if split_hash is not None:
        import warnings

        kept = sum(counts.values())
        for name, want in (("val", val_fraction), ("test", test_fraction)):
            got = counts[name] / max(1, kept)
            if want > 0 and abs(got - want) > want / 2:
                warnings.warn(f"the hash of {by!r} put {got:.1%} of the rows in the {name} split, for a fraction "
                              f"of {want:.0%}: the ids are few, or a few ids hold many rows; a split column gives "
                              "exact shares", stacklevel=2)
        labels = {"val": f"{val_fraction:.0%} of the ids of {by!r} by hash", "test":
                  f"{test_fraction:.0%} of the ids of {by!r} by hash" if counts["test"] else "none"}
    else:
        labels = {"val": f"rows with split column {by!r} = val",
                  "test": f"rows with split column {by!r} = test" if counts["test"] else "none"}
    kind = task if task is not None else infer_task(pd.Series(targets["train"], name=target))
    if n_blank:
        import warnings

        first = sorted(r for v in blank.values() for r in v)[:10]
        warnings.warn(f"{n_blank} rows with a blank target {target!r} were left out (rows "
                      f"{', '.join(map(str, first))}{', ...' if n_blank > 10 else ''})", stacklevel=2)
    return StreamSplits(stream, codes, targets, f"validation: {labels['val']}; test: {labels['test']}", labels,
                        blank, n_blank, kind)


def fit_preprocessors_stream(schema, inputs, splits: StreamSplits, mcfg=None, tcfg=None, options=None,
                             allow_outside_root: bool = False) -> dict:
    """Preprocessors of a streamed table: each is fitted on a sample of ``tcfg.sample_rows`` training rows,
    then those that learn from every row (numbers, categories, texts: ``fit_stream_start``, ``_update`` and ``_finish`` methods) are fitted
    again on one streamed pass over the training rows of their columns."""
    from .config import TrainConfig
    from .pipeline import fit_preprocessors
    from .preprocessing import ReadContext

    import dataclasses

    tcfg = tcfg or TrainConfig()
    sample = splits.sample("train", tcfg.sample_rows, tcfg.seed)
    # no embedding cache for a streamed table: a frozen backbone runs in the model (on the GPU where there is one)
    # rather than in the loader's workers every epoch
    preps = fit_preprocessors(schema, inputs, sample, splits.root, mcfg, dataclasses.replace(tcfg, cache=None),
                              options, allow_outside_root)
    streamed = {n: p for n, p in preps.items() if hasattr(p, "fit_stream_start")}
    if streamed:
        ctx = ReadContext(splits.root, allow_outside_root)
        cols = sorted({c for p in streamed.values() for c in p.columns if c in splits.stream.columns})
        states = {n: p.fit_stream_start() for n, p in streamed.items()}
        for df in splits.frames(cols, "train"):
            for n, p in streamed.items():
                p.fit_stream_update(states[n], df.reindex(columns=p.columns))
        for n, p in streamed.items():
            p.fit_stream_finish(states[n], ctx)
    return preps


class StreamSampler:
    """Batches of positions (rows of one split, in row order) whose order depends only on the seed and the epoch.

    The rows of each row group are contiguous positions; ``groups`` gives, per row group, its first
    position and its row count. Each epoch the row groups are permuted (with ``shuffle``; in order
    without) and their rows laid end to end; ``set_shard(rank, world)`` cuts that run into ``world``
    contiguous equal shares, one a process, and each share into one contiguous piece per loader worker.
    A row group is thus read by one worker of one process, but for those cut at a boundary (at most
    ``world * workers - 1`` an epoch), each of whose two readers reads it for its part. With ``shuffle``,
    each worker's rows pass through its own shuffle buffer of ``buffer // workers`` rows (a process holds
    about ``buffer`` rows waiting). Every process gets the same number of batches: with ``world > 1``,
    ``len(rows) // (world * batch_size)`` full batches, the rows over (at the end of the run, so a
    different few each epoch) left out of that epoch.

    Workers take batches in turn (batch k of the pass goes to worker k mod ``workers``), as torch's
    DataLoader hands them out, so batch k is the (k // workers)-th batch of worker k mod ``workers``'s piece.
    Each batch carries ``seed`` (augmentation), ``load`` (``{row group: positions}``: the rows of each
    row group that the worker building this batch needs from now to the end of the pass, given to the
    first batch of that worker that needs the group) and ``fresh`` (the worker's first batch of the pass).
    """

    def __init__(self, groups: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0, buffer: int = 10_000,
                 workers: int = 0):
        self.first, self.count = np.asarray(groups[0], np.int64), np.asarray(groups[1], np.int64)
        self.batch_size, self.shuffle, self.seed, self.buffer = batch_size, shuffle, seed, max(1, buffer)
        self.workers = max(1, workers)
        self.epoch, self.rank, self.world, self._skip, self._pieces = 0, 0, 1, 0, None
        self.unit_of = np.repeat(np.arange(len(self.count)), self.count)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_shard(self, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.rank, self.world = rank, world

    def layout(self) -> dict:
        """What besides the seed and the epoch decides a pass's order (kept with a mid-epoch position)."""
        return {"pieces": self.workers}

    def skip(self, batches: int, layout: dict | None = None) -> None:
        """Start the next pass after its first ``batches`` batches, in the order it had with ``layout`` (a run
        resumed mid-epoch with another number of workers goes on in the order of the run that was killed)."""
        self._skip, self._pieces = int(batches), (layout or {}).get("pieces")

    @property
    def n_rows(self) -> int:
        """The rows each process takes an epoch."""
        n = int(self.count.sum())
        return n if self.world == 1 else n // (self.world * self.batch_size) * self.batch_size

    def __len__(self) -> int:
        return -(-self.n_rows // self.batch_size)

    def pieces(self, epoch: int, n: int | None = None) -> list[np.ndarray]:
        """Each worker's positions for ``epoch`` in this process, in the order that worker draws them (``n``
        pieces instead of one a worker: the order of a pass with ``n`` workers)."""
        units = np.flatnonzero(self.count > 0)
        if self.shuffle:
            units = np.random.default_rng([self.seed, epoch, 3]).permutation(units)
        run = np.concatenate([np.arange(self.first[u], self.first[u] + self.count[u]) for u in units]
                             or [np.zeros(0, np.int64)])
        rows, bs, w = self.n_rows, self.batch_size, n or self.workers
        share = run[self.rank * rows:(self.rank + 1) * rows]
        batches = len(self)
        sizes = [len(range(k, batches, w)) * bs for k in range(w)]  # full batches; the last one may be short
        if batches:
            sizes[(batches - 1) % w] -= batches * bs - rows
        cuts = np.cumsum([0, *sizes])
        out = [share[cuts[k]:cuts[k + 1]] for k in range(w)]
        if self.shuffle:
            size = max(1, self.buffer // w)
            out = [shuffle_buffer(p, size, np.random.default_rng([self.seed, epoch, self.rank, k, 5]))
                   for k, p in enumerate(out)]
        return out

    def order(self, epoch: int, n: int | None = None) -> np.ndarray:
        """This process's positions for ``epoch``, batch after batch (batch k from worker k mod ``workers``; of
        piece k mod ``n`` with ``n`` pieces)."""
        pieces, bs = self.pieces(epoch, n), self.batch_size
        w = len(pieces)
        batches = [pieces[k % w][k // w * bs:(k // w + 1) * bs] for k in range(len(self))]
        return np.concatenate(batches or [np.zeros(0, np.int64)])

    def __iter__(self):
        epoch, bs = self.epoch, self.batch_size
        n = len(self)
        order = self.order(epoch, self._pieces)
        start, self._skip, self._pieces = min(self._skip, n), 0, None
        pos = order[start * bs:]
        k = start + np.arange(len(pos)) // bs  # the batch of each position
        worker = (k - start) % self.workers  # the loader hands the first batch it asks for to worker 0
        key = worker * len(self.count) + self.unit_of[pos]
        srt = np.argsort(key, kind="stable")  # by (worker, row group), in draw order within each
        keys, first = np.unique(key[srt], return_index=True)
        bounds = np.append(first, len(srt))
        loads: dict[int, dict] = {}
        for j, kk in enumerate(keys):
            idx = srt[bounds[j]:bounds[j + 1]]
            loads.setdefault(int(k[idx[0]]), {})[int(kk % len(self.count))] = pos[idx]
        for b in range(start, n):
            batch = _StreamBatch(order[b * bs:(b + 1) * bs].tolist())
            batch.seed = ((self.seed * 1_000_003 + epoch) * 100_003 + b) * self.world + self.rank
            batch.load = loads.get(b, {})
            batch.fresh = b - start < self.workers
            yield batch
        self.epoch = epoch + 1


class _StreamBatch(list):
    seed: int
    load: dict
    fresh: bool


def shuffle_buffer(stream: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``stream`` through a shuffle buffer of ``size`` items that is filled whole, emptied in random order, then
    filled again: an item moves less than ``size`` places, and no more than ``size`` items wait at once. (The
    buffer that swaps each new item for a random waiting one mixes no better within the same reach, and keeps
    a few items waiting for many times ``size`` draws, and with them, here, the rows read beside them.)"""
    out = stream.copy()
    for a in range(0, len(stream), size):
        part = stream[a:a + size]
        out[a:a + len(part)] = part[rng.permutation(len(part))]
    return out


class StreamingDataset(Dataset):
    """The rows of one split of a streamed table, as :class:`~mmfuse.data.MultimodalDataset` batches.

    Positions ``0..len-1`` are the split's rows in row order (``row_ids`` maps them to the table's row ids,
    which messages and reports name). A batch from :class:`StreamSampler` says which rows to read; one of
    another sampler (in order, as prediction reads) reads its row groups as it meets them, keeping the last two.
    ``y``: the split's targets, transformed (None to predict).
    """

    def __init__(self, splits: StreamSplits, split: str, preprocessors, target=None, y=None, *,
                 on_bad_input="raise", allow_outside_root: bool = False, train: bool = False):
        from .data import BadInputPolicy, InputReport

        self.stream = splits.stream
        self.row_ids = splits.ids(split)
        self.preprocessors = {k: preprocessors[k] for k in sorted(preprocessors)}
        self.policy = BadInputPolicy.parse(on_bad_input)
        self.report = InputReport(self.policy)
        self.target, self._y, self.train, self.allow_outside_root = target, y, train, allow_outside_root
        self.table = Table(pd.DataFrame(columns=self.stream.columns), self.stream.root, self.stream.source)
        self._cols = sorted({c for p in self.preprocessors.values() for c in p.columns if c in self.stream.columns})
        unit = np.searchsorted(self.stream.start_of, self.row_ids, side="right") - 1
        counts = np.bincount(unit, minlength=self.stream.n_units)
        self.groups = (np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        self._unit = unit
        self._pending: dict[int, dict] = {}
        self._recent: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self.row_ids)

    @property
    def y(self):
        return self._y

    counts_per_pass = True  # rows are read again on each pass: unseen categories are counted over the last one
    # its workers start anew for each epoch and each validation, from a process with pyarrow's thread pool: they
    # come from a fork server (mmfuse.data.worker_context), not from a fork of the training process
    fork_workers = False

    def absent_inputs(self) -> list[str]:
        return [n for n, p in self.preprocessors.items() if not any(c in self.stream.columns for c in p.columns)]

    def fully_cached(self) -> bool:
        return False

    def text_lengths(self) -> np.ndarray:
        raise MmfuseError("group_by_length reads every text up front; it is off for streamed tables")

    def sampler(self, batch_size: int, shuffle: bool, seed: int, buffer: int, workers: int) -> StreamSampler:
        return StreamSampler(self.groups, batch_size, shuffle, seed, buffer, workers)

    def _rows(self, positions: np.ndarray, load) -> list:
        """The rows at ``positions``. With ``load`` (a training batch from :class:`StreamSampler`): read the rows it
        names and keep them until their batch; every row of the batch must then be kept already. Without: read
        the row groups the rows are in (the last two stay open: reading in order meets each once)."""
        for u, pos in (load or {}).items():  # this worker's rows of these row groups for the rest of the pass
            pos = np.asarray(pos)
            local = self.row_ids[pos] - self.stream.start_of[u]
            rows = self.stream.read_unit(u, self._cols).take(local).to_pylist()
            self._pending.update(zip(pos.tolist(), rows))
        if load is not None:
            missing = [p for p in positions.tolist() if p not in self._pending]
            if missing:  # the sampler's plan and the loader's hand-out of batches to workers disagree
                raise MmfuseError(f"streaming: rows {missing[:5]} of this batch were not read ahead; the DataLoader "
                                  "did not give batches to its workers in turn (report this as a bug)")
            return [self._pending.pop(p) for p in positions.tolist()]
        out: list = [None] * len(positions)
        units = self._unit[positions]
        for u in dict.fromkeys(units.tolist()):
            if u not in self._recent:
                self._recent[u] = self.stream.read_unit(u, self._cols)
                while len(self._recent) > 2:
                    self._recent.popitem(last=False)
            at = np.flatnonzero(units == u)
            local = self.row_ids[positions[at]] - self.stream.start_of[u]
            for j, row in zip(at.tolist(), self._recent[u].take(local).to_pylist()):
                out[j] = row
        return out

    def __getitems__(self, indices) -> dict:
        from .data import MultimodalDataset, SeededBatch

        if getattr(indices, "fresh", False):
            self._pending.clear()  # rows an interrupted pass left behind
        positions = np.asarray(indices, dtype=np.int64)
        try:  # a bad cell (policy 'raise') or a file that cannot be read: one line, re-raised by the loader
            rows = self._rows(positions, getattr(indices, "load", None))
            df = pd.DataFrame.from_records(rows, columns=self._cols, index=self.row_ids[positions]) if self._cols \
                else pd.DataFrame(index=self.row_ids[positions])
            ds = MultimodalDataset(Table(df, self.stream.root, self.stream.source), self.preprocessors, None,
                                   on_bad_input=self.policy, allow_outside_root=self.allow_outside_root,
                                   train=self.train)
            local = SeededBatch(range(len(ds)))  # the rows the up-front reads kept (under 'skip')
            local.seed = getattr(indices, "seed", None)
            batch = ds.__getitems__(local) if local.seed is not None else ds.__getitems__(list(local))
        except MmfuseError as e:
            if get_worker_info() is None:
                raise self._located(e) from e
            return {"error": self._located(e)}
        if "error" in batch:  # (raised in a loader worker)
            return {**batch, "error": self._located(batch["error"])}
        batch["issues"] = list(ds.report.issues.values()) + batch["issues"]
        batch["unknown"] = dict(ds.report.unknown_categories)
        kept = positions[batch["row"].numpy()]
        batch["row"] = torch.from_numpy(kept)
        if self._y is not None:
            batch["target"] = torch.from_numpy(self._y[kept])
        return batch

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def _located(self, e: Exception) -> Exception:
        """A bad cell's error that also names the file that holds its row, and the row there."""
        from .errors import InputError

        if isinstance(e, InputError) and isinstance(e.row, (int, np.integer)):
            return InputError(f"{e.row} ({self.stream.locate(e.row)})", e.column, e.reason, e.file, e.resolved,
                              e.hint)
        return e


def make_stream_datasets(splits: StreamSplits, preps: dict, task, tcfg, on_bad_input: str = "raise",
                         allow_outside_root: bool = False):
    """The :class:`~mmfuse.pipeline.FitData` of a streamed table: a :class:`StreamingDataset` per split, the
    training loader shuffled through the buffer, the validation loader in row order."""
    from .data import MultimodalLoader
    from .pipeline import FitData

    def dataset(split, train=False):
        y = task.transform(pd.DataFrame({task.column: splits.targets[split]}, index=splits.ids(split))) \
            if len(splits.targets[split]) else None  # (indexed by row id: an unseen label names its row)
        splits.targets[split] = np.zeros(len(splits.targets[split]), np.int8)  # the cells are no longer needed
        return StreamingDataset(splits, split, preps, task, y, on_bad_input=on_bad_input,
                                allow_outside_root=allow_outside_root, train=train)

    import gc

    from .training.trainer import check_launch, world_size

    check_launch(tcfg)
    gc.collect()  # the samples' rows are gone before the workers fork (their pages would be copied into each)
    tr, va = dataset("train", train=True), dataset("val")
    te = dataset("test") if len(splits.targets["test"]) else None
    sampler = tr.sampler(tcfg.batch_size, True, tcfg.seed, tcfg.shuffle_buffer, tcfg.num_workers)
    train_loader = MultimodalLoader(tr, sampler, tcfg.num_workers)
    # validation: every row, in row order but for each worker reading its own piece of the row groups; its
    # workers end with each validation (kept, they would hold their memory through training beside the others)
    val_loader = MultimodalLoader(va, va.sampler(max(tcfg.batch_size, 256), False, tcfg.seed, tcfg.shuffle_buffer,
                                                 tcfg.num_workers), tcfg.num_workers, persistent_workers=False)
    world = world_size(tcfg)
    shard = tr.sampler(tcfg.batch_size, True, tcfg.seed, tcfg.shuffle_buffer, tcfg.num_workers)
    shard.set_shard(0, world)
    if len(shard) == 0:
        raise MmfuseError(f"{len(tr)} training rows do not give each of {world} processes one batch of "
                          f"{tcfg.batch_size} rows; lower batch_size (--batch-size) or run on fewer devices")
    sampled = min(splits.stream.sample_size(tcfg.sample_rows), len(tr))
    info = {"source": splits.stream.describe(), "shuffle_buffer": tcfg.shuffle_buffer, "sample_rows": sampled,
            "left_out_per_epoch": len(tr) - len(shard) * tcfg.batch_size * world if world > 1 else 0}
    return FitData(tr, va, te, train_loader, val_loader, {}, info)
