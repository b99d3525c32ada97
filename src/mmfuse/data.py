"""The torch Dataset: ``{input_name: tensor}`` plus a presence mask per input.

A batch is a dict::

    {"inputs": {name: Tensor | {key: Tensor}},  # encoder inputs, absent rows zero-filled
     "mask":   {name: BoolTensor [B]},          # True where the input is present
     "target": Tensor [B] (when the table has a target),
     "row":    LongTensor [B],                  # positions in the table, for reports
     "issues": [dict]}                          # bad cells met in this batch (policy skip/missing)

Cheap in-memory inputs (text, numbers, categories) are transformed once when the dataset is
built; file inputs (images, audio, time-series files) are decoded lazily in DataLoader
workers and, with a cache, only once.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ._cache import PRESENT, UNKNOWN, ItemCache, cache_key, default_cache_dir, file_stamp
from .errors import InputError, MmfuseError
from .io import Table, read_table
from .preprocessing import Preprocessor, ReadContext
from .tasks import Task
from ._names import safe_key
from .preprocessing._base import is_missing
from .reading import BadInputPolicy, InputReport, Rows, input_cells, read_rows
from ._registry import unknown_name_message

__all__ = ["BadInputPolicy", "InputReport", "MultimodalDataset", "MultimodalLoader", "make_loader",
           "build_preprocessors"]


class MultimodalDataset(Dataset):
    """Rows of a table as encoder inputs, presence masks and targets.

    Args:
        data: A table, DataFrame or path.
        preprocessors: Input name -> fitted preprocessor.
        target: A fitted :class:`Task`, or None (prediction).
        on_bad_input: ``raise``, ``skip`` or ``missing`` (see :class:`BadInputPolicy`).
        cache: ``None``, ``"memory"`` (shared memory, this process and its workers) or a
            folder for a disk cache reused across runs.
        allow_outside_root: Allow file paths that resolve outside the data root.
        train: Apply training augmentation.
        root: Folder for relative paths (defaults to the table's folder).
    """

    def __init__(self, data, preprocessors: Mapping[str, Preprocessor], target: Task | None = None, *,
                 on_bad_input: str | BadInputPolicy = "raise", cache: str | os.PathLike | None = None,
                 allow_outside_root: bool = False, train: bool = False, root=None):
        self.table: Table = read_table(data, root=root)
        self.preprocessors = {k: preprocessors[k] for k in sorted(preprocessors)}
        for p in self.preprocessors.values():
            p.check_fitted()
        self.policy = BadInputPolicy.parse(on_bad_input)
        self.ctx = ReadContext(self.table.root, allow_outside_root)
        self.train = train
        self.report = InputReport(self.policy)
        n = len(self.table.df)
        self._row_ids = self.table.df.index.to_numpy()
        keep = np.ones(n, dtype=bool)
        self._cells = {name: input_cells(name, p, self.table.df) for name, p in self.preprocessors.items()}

        self.target = target
        self._y = None
        if target is not None:
            self._y, ok = self._read_target(target)
            keep &= ok

        # eager inputs: read every row now
        self._eager: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        for name, p in self.preprocessors.items():
            if p.eager:
                issues: list[dict] = []
                r = self._read_rows(name, np.arange(n), issues)
                for issue in issues:
                    self.report.add(issue)
                self._eager[name] = (r.arrays, r.present)
                keep &= ~r.drop
            if hasattr(p, "unknown_counts"):
                self.report.unknown_categories.update(p.unknown_counts)
                p.unknown_counts.clear()
        self.positions = np.flatnonzero(keep)

        # lazy inputs: optional cache
        self._caches: dict[str, ItemCache] = {}
        self.cache_dirs: dict[str, Path] = {}
        if cache is not None:
            for name, p in self.preprocessors.items():
                if p.eager or self._cells[name] is None:
                    continue
                if str(cache) == "memory" and not getattr(p, "prefers_disk_cache", False):
                    self._caches[name] = ItemCache(n, p.item_spec())
                else:  # embeddings of frozen backbones persist across runs
                    base = default_cache_dir() / "embeddings" if str(cache) == "memory" else Path(cache)
                    # one folder per preprocessor state (model, settings, versions), one entry per set of rows in
                    # it; a new entry copies the rows other entries of that folder hold (a CV fold, a search
                    # trial, another split of the same table), so each row is featurized once
                    group = base / safe_key(name) / self._prep_key(p)  # a name like '..' or 'a/b' stays one folder
                    keys = self._row_keys(name)
                    d = group / hashlib.sha256(keys.tobytes()).hexdigest()[:24]
                    self.cache_dirs[name] = d
                    self._caches[name] = ItemCache(n, p.item_spec(), d)
                    share_rows(self._caches[name], keys, group)

    def absent_inputs(self) -> list[str]:
        """Inputs none of whose columns is in the table: absent in every row."""
        return [name for name, cells in self._cells.items() if cells is None]

    # --- construction helpers --------------------------------------------------------------
    def _prep_key(self, p: Preprocessor) -> str:
        """The preprocessor's configuration and fitted state, the data root and the library versions."""
        meta, arrays = p.get_state()
        return cache_key({"prep": meta, "arrays": {k: np.asarray(a).tolist() for k, a in arrays.items()},
                          "root": str(self.table.root)})

    def _row_keys(self, name: str) -> np.ndarray:
        """``S16`` per row: a hash of the row's cells of this input (each file with its size and mtime)."""
        cols = [[file_stamp(v, self.table.root) for v in col] for col in self._cells[name]]
        return np.array([hashlib.sha256(json.dumps(row, default=str).encode()).digest()[:16] for row in zip(*cols)],
                        dtype="S16")

    def _read_target(self, target: Task):
        n = len(self.table.df)
        ok = np.ones(n, dtype=bool)
        if target.column not in self.table.df.columns:
            raise MmfuseError(unknown_name_message("target column", target.column, self.table.df.columns))
        col = self.table.df[[target.column]]
        try:
            return target.transform(col), ok
        except InputError:
            if self.policy is not BadInputPolicy.SKIP:  # a row without a target cannot be 'missing'
                raise
        values = []
        for i in range(n):  # find and drop the bad rows one by one
            try:
                values.append(target.transform(col.iloc[i:i + 1])[0])
            except InputError as e:
                self.report.add(e.to_dict())
                ok[i] = False
                values.append(None)
        good = next(v for v in values if v is not None)
        return np.stack([v if v is not None else np.zeros_like(good) for v in values]), ok

    def _read_rows(self, name: str, rows: np.ndarray, issues: list[dict]) -> Rows:
        """Read and featurize input ``name`` at table positions ``rows``, applying the bad-input
        policy. This is the one place where cells are read: for eager inputs every row when the
        data set is built, for lazy ones a batch's uncached rows (in a worker).

        Under ``raise`` a bad cell's :class:`InputError` propagates; under ``skip`` and
        ``missing`` it is appended to ``issues`` and the input is absent in that row (and the
        row is dropped under ``skip``).
        """
        return read_rows(self.preprocessors[name], self._cells[name], rows, self._row_ids, self.ctx, self.policy, issues,
                         _FEATURIZE_AT_MOST)

    # --- torch Dataset ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.positions)

    @property
    def y(self) -> np.ndarray | None:
        return None if self._y is None else self._y[self.positions]

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def text_lengths(self) -> np.ndarray:
        """Characters of text per row, summed over the text inputs (0 without any): a cheap
        stand-in for the token count, used to batch texts of similar length together."""
        out = np.zeros(len(self.positions), dtype=np.int64)
        for name, p in self.preprocessors.items():
            cells = self._cells[name]
            if p.modality != "text" or cells is None:
                continue
            for col in cells:
                out += np.fromiter((0 if is_missing(v) else len(str(v)) for v in col[self.positions]),
                                   dtype=np.int64, count=len(self.positions))
        return out

    def warm_cache(self, rank: int = 0, world: int = 1, token: str | None = None, timeout: float = 7200.0) -> int:
        """Read and cache, now, every uncached row of the inputs whose items persist on disk (frozen
        backbones' embeddings), instead of batch by batch in the first epoch: all of them are then
        featurized together (texts sorted by length across up to 4,096 rows, each backbone batch padded
        only to its longest text). Bad cells are left for the batches that read them, which report them
        under the bad-input policy. Returns the rows featurized here.

        Distributed (``world`` processes started together, this one ``rank``; ``token`` names the launch): each
        process featurizes the uncached rows among every ``world``-th row from position ``rank`` into the one cache entry on
        disk (the processes write disjoint rows of the same memory-mapped files), marks its share done and
        waits for the others' marks, so that every process then reads one cache that all of them built. The
        wait only saves work: a row still uncached when it ends (``timeout`` seconds) is featurized by the
        batch that needs it, as without a cache."""
        import time
        import warnings

        done = 0
        for name, p in self.preprocessors.items():
            cache = self._caches.get(name)
            if cache is None or not getattr(p, "prefers_disk_cache", False):
                continue
            mine = self.positions  # the share is fixed by position, not by what is uncached when a process looks
            if world > 1 and cache.directory is not None:
                mine = mine[rank::world]
            todo = mine[cache.status[mine] == UNKNOWN]
            if len(todo):
                self._read_lazy(name, todo, [], np.zeros(len(todo), bool))
                done += len(todo)
            if world > 1 and cache.directory is not None and token:
                cache.flush()
                marks = [cache.directory / f".warm-{token}-{r}-of-{world}" for r in range(world)]
                marks[rank].touch()
                t0 = time.monotonic()
                while not all(m.exists() for m in marks):
                    if time.monotonic() - t0 > timeout:
                        missing = [str(r) for r, m in enumerate(marks) if not m.exists()]
                        warnings.warn(f"cache of input {name!r}: process(es) {', '.join(missing)} did not finish "
                                      f"their share within {timeout:.0f} s; their rows are featurized when read",
                                      stacklevel=2)
                        break
                    time.sleep(0.2)
        return done

    def fully_cached(self) -> bool:
        """True when every lazy input of every row is in the cache (nothing left to decode)."""
        lazy = [n for n, p in self.preprocessors.items() if not p.eager and self._cells[n] is not None]
        return all(n in self._caches and bool((self._caches[n].status[self.positions] != UNKNOWN).all())
                   for n in lazy)

    def __getitems__(self, indices) -> dict:
        """Build a whole batch at once (torch's DataLoader calls this with a batch of indices).

        When ``indices`` carries a ``seed`` (see :class:`EpochBatchSampler`), random
        augmentation uses it, so a batch is the same in a worker or in the main process.
        """
        seed = getattr(indices, "seed", None)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        pos = self.positions[np.asarray(indices, dtype=np.int64)]
        issues: list[dict] = []
        drop = np.zeros(len(pos), bool)
        items: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        for name in self.preprocessors:
            if name in self._eager:
                arrays, present = self._eager[name]
                items[name] = ({k: a[pos] for k, a in arrays.items()}, present[pos])
                continue
            try:
                items[name] = self._read_lazy(name, pos, issues, drop)
            except InputError as e:  # policy 'raise'
                if get_worker_info() is None:
                    raise
                return {"error": e}  # re-raised cleanly by MultimodalLoader in the main process
        keep = ~drop
        batch = {"inputs": {}, "mask": {}, "row": torch.from_numpy(pos[keep]), "issues": issues}
        for name, (arrays, present) in items.items():
            t = {k: torch.from_numpy(np.ascontiguousarray(a[keep])) for k, a in arrays.items()}
            m = torch.from_numpy(present[keep])
            x = self.preprocessors[name].batch(t, train=self.train, generator=gen)
            batch["inputs"][name] = _zero_absent(x, m)
            batch["mask"][name] = m
        if self._y is not None:
            batch["target"] = torch.from_numpy(self._y[pos[keep]])
        return batch

    def _read_lazy(self, name, pos, issues, drop):
        """A batch of a lazy input at table positions ``pos``: cached rows from the cache, the
        others read by :meth:`_read_rows` and then cached (bad cells are not cached, so a
        fixed file is picked up next time, and a skipped row is skipped again)."""
        cache = self._caches.get(name)
        if cache is None:
            r = self._read_rows(name, pos, issues)
            drop |= r.drop
            return r.arrays, r.present
        status, arrays = cache.status[pos], cache.get(pos)
        todo = np.flatnonzero(status == UNKNOWN)
        r = self._read_rows(name, pos[todo], issues)
        drop[todo] |= r.drop
        present = status == PRESENT
        present[todo] = r.present
        for k, a in r.arrays.items():
            arrays[k][todo] = a
        for j, t in enumerate(todo):
            if not r.bad[j]:
                cache.put(int(pos[t]), {k: a[j] for k, a in r.arrays.items()} if r.present[j] else None)
        return arrays, present


def share_rows(cache: ItemCache, keys: np.ndarray, group: Path) -> int:
    """Fill a disk cache entry's unknown rows from the other entries of its folder ``group`` that hold the
    same rows (same ``keys``: the same cells, files unchanged), and record ``keys`` in the entry
    (``rowkeys.npy``). Returns the rows copied."""
    f = cache.directory / "rowkeys.npy"
    if not f.exists():
        tmp = cache.directory / f".rowkeys.npy.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:  # a handle: np.save would add '.npy' to the name
            np.save(fh, keys)
        os.replace(tmp, f)
    status = cache.status
    want: dict[bytes, list[int]] = {}
    for i in np.flatnonzero(status == UNKNOWN):
        want.setdefault(bytes(keys[i]), []).append(int(i))
    copied = 0
    for other in sorted(group.iterdir()) if want else []:
        if other == cache.directory or not (other / "rowkeys.npy").exists():
            continue
        try:
            their_keys = np.load(other / "rowkeys.npy")
            their_status = np.load(other / "__status__.npy", mmap_mode="r")
            theirs = {k: np.load(other / f"{k}.npy", mmap_mode="r") for k in cache.spec}
        except (OSError, ValueError):  # an entry being written or damaged: not a source
            continue
        ours, src = [], []
        for j in np.flatnonzero(np.asarray(their_status) != UNKNOWN):
            for i in want.pop(bytes(their_keys[j]), ()):
                ours.append(i)
                src.append(int(j))
        if not ours:
            continue
        cache._open()
        for k, a in theirs.items():
            if a.shape[1:] != cache._arrays[k].shape[1:]:
                break
            cache._arrays[k][ours] = a[src]
        else:
            cache._status[ours] = np.asarray(their_status)[src]  # written last, as ItemCache.put does
            copied += len(ours)
        if not want:
            break
    return copied


_FEATURIZE_AT_MOST = 4096  # items featurized together: bounds the extra memory of reading every row eagerly


def _zero_absent(x, mask: torch.Tensor):
    """Absent rows are all zeros after normalization too, so nothing leaks from them."""
    if isinstance(x, dict):
        return {k: _zero_absent(v, mask) for k, v in x.items()}
    if bool(mask.all()):
        return x
    return x * mask.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def _passthrough(batch):
    return batch


class SeededBatch(list):
    """A list of indices with the seed for that batch's random augmentation."""

    seed: int


class EpochBatchSampler:
    """Batches of indices whose order depends only on ``(seed, epoch)``.

    The order (and each batch's augmentation seed) is the same whatever the number of
    workers, and a run resumed at epoch e sees the same batches as one that never stopped.
    ``set_epoch`` sets the epoch; otherwise it advances by one at each full pass.

    ``set_shard(rank, world)`` (distributed training): every process draws the same order, padded by its
    first rows to a multiple of ``world`` (as :class:`torch.utils.data.DistributedSampler` does), and
    process ``rank`` takes every ``world``-th row from position ``rank``; its k-th batch and the other
    processes' k-th batches together are the k-th batch of ``batch_size * world`` rows of one process.

    With ``lengths`` (one per row) and ``shuffle``, rows of similar length share a batch: the
    shuffled rows are cut into chunks of ``group_size`` batches, each chunk is sorted by length
    and cut into batches, and the batches are shuffled. Batches of short texts then carry little
    padding (see :func:`mmfuse.hf.trim_padding`) while each epoch's batches stay random.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool = False, seed: int = 0,
                 lengths=None, group_size: int = 50):
        self.n, self.batch_size, self.shuffle, self.drop_last, self.seed = n, batch_size, shuffle, drop_last, seed
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} rows")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_size = group_size
        self.epoch = 0
        self.rank, self.world = 0, 1
        self._skip = 0

    def skip(self, batches: int, layout: dict | None = None) -> None:
        """Leave out the first ``batches`` batches of the next pass (a run resumed mid-epoch): the batches
        after them are those the pass would have drawn, with the same augmentation seeds. (``layout``: the
        order depends on nothing else here.)"""
        self._skip = int(batches)

    def layout(self) -> dict:
        return {}

    def set_shard(self, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.rank, self.world = rank, world

    @property
    def _rows(self) -> int:
        """Rows this process sees per epoch."""
        return -(-self.n // self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._rows // self.batch_size if self.drop_last else -(-self._rows // self.batch_size)

    def __iter__(self):
        epoch = self.epoch
        bs = self.batch_size
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world > 1:
            order = (order + order[:self._rows * self.world - self.n])[self.rank::self.world]
        order = order[:len(self) * bs]  # drop_last drops random rows, before any grouping
        grouped = self.shuffle and self.lengths is not None
        if grouped:
            chunk = bs * self.group_size
            order = [i for c in range(0, len(order), chunk)
                     for i in sorted(order[c:c + chunk], key=lambda i: -self.lengths[i])]
        batches = [order[k * bs:(k + 1) * bs] for k in range(len(self))]
        if grouped:
            batches = [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]
        skip, self._skip = self._skip, 0
        for k, idx in enumerate(batches):
            if k < skip:
                continue
            b = SeededBatch(idx)
            b.seed = ((self.seed * 1_000_003 + epoch) * 100_003 + k) * self.world + self.rank
            yield b
        self.epoch = epoch + 1


class MultimodalLoader:
    """Iterates a :class:`MultimodalDataset` in batches; re-raises bad-input errors cleanly and
    collects skipped/missing cells into ``dataset.report``. Yields batches without ``issues``.

    Workers decode files. Once every file is in the cache there is nothing left to decode,
    and passing batches between processes would only cost time, so a fully cached dataset
    is iterated in the main process. Batches are identical either way.
    """

    def __init__(self, dataset: MultimodalDataset, sampler: EpochBatchSampler, num_workers: int = 0,
                 persistent_workers: bool = False, pin_memory: bool = False):
        self.dataset, self.batch_sampler = dataset, sampler
        self.yield_empty = False  # training: a batch whose rows were all skipped still counts (resume position)
        kw = dict(batch_sampler=sampler, collate_fn=_passthrough, pin_memory=pin_memory)
        self._main = DataLoader(dataset, num_workers=0, **kw)
        self._workers = DataLoader(dataset, num_workers=num_workers, persistent_workers=persistent_workers,
                                   **kw) if num_workers > 0 else None

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def set_shard(self, rank: int, world: int) -> None:
        """This process's share of every epoch (:meth:`EpochBatchSampler.set_shard`)."""
        self.batch_sampler.set_shard(rank, world)

    def skip(self, batches: int, layout: dict | None = None) -> None:
        """Start the next pass after its first ``batches`` batches (:meth:`EpochBatchSampler.skip`), in the order
        that ``layout`` (the sampler's :meth:`layout` when the position was saved) gave it."""
        self.batch_sampler.skip(batches, layout)

    def layout(self) -> dict:
        return self.batch_sampler.layout()

    def __iter__(self):
        if getattr(self.dataset, "counts_per_pass", False):  # a streamed split, read again on each pass
            self.dataset.report.unknown_categories.clear()
        use_workers = self._workers is not None and not self.dataset.fully_cached()
        if use_workers and self._workers.multiprocessing_context is None and (
                in_process_group() or not getattr(self.dataset, "fork_workers", True)):
            import functools

            self._workers.multiprocessing_context = worker_context()
            self._workers.worker_init_fn = functools.partial(exit_with, os.getpid(), _started(os.getpid()))
        for batch in self._batches(use_workers):
            if "error" in batch:
                raise batch["error"]
            for issue in batch.pop("issues"):
                self.dataset.report.add(issue)
            if "unknown" in batch:  # a streamed table's batch: categories its rows held that training never saw
                self.dataset.report.unknown_categories.update(batch.pop("unknown"))
            if len(batch["row"]) == 0 and not self.yield_empty:  # every row of this batch was skipped as bad input
                continue
            yield batch

    def _batches(self, use_workers: bool):
        if not use_workers:
            yield from self._main
            return
        try:
            yield from self._workers
        except RuntimeError as e:  # a fork-server worker that failed at its start, most often the script's fault
            if self._workers.multiprocessing_context is None or "exited unexpectedly" not in str(e):
                raise
            raise MmfuseError(f"{e}: its error is printed above. A loader worker started by the fork server imports "
                              "the script that started training; a script keeps its code under 'if __name__ == "
                              "\"__main__\":'. Or set num_workers=0 (--workers 0)") from e


def in_process_group() -> bool:
    """Whether this process has joined a ``torch.distributed`` process group (distributed training)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def worker_context():
    """The start method of loader workers in a process of a process group, and of a streamed table's: ``forkserver``.

    A fork copies the process at one instant, locks included. A thread of the training process that is entering
    or leaving Python (a C++ thread that calls into Python: pyarrow's thread pool, a communication library's
    threads) holds Python's thread-state lock for a moment; a worker forked then never starts (CPython 3.11: the
    child waits for that lock in ``PyOS_AfterFork_Child``), and its process waits for the worker's first batch.
    It happened once in about 30 two-process streamed runs here, at the first batch of a validation, the other
    process waiting in the next collective; the thread that held a thread state at the fork was gone by then,
    and by its thread id it was one of pyarrow's. A streamed table's workers start anew for each epoch and each
    validation, so they come from the fork server in one process too. A fork server is a process without those
    threads that forks the workers instead; it imports torch, mmfuse and the other modules loaded here that
    reading needs once, so a worker starts without importing them. A table in memory keeps forked workers in one
    process: they share its memory (in a process group each worker holds a copy of the table).
    As with ``spawn`` (macOS, Windows), a worker imports the script that started training: its code belongs under
    ``if __name__ == "__main__":`` (:func:`check_not_importing_main`).
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows: spawn, the only one there
        return None
    import sys

    ctx = multiprocessing.get_context("forkserver")
    # imported once by the fork server, not by each worker (set before the server starts; later calls do nothing):
    # the modules that reading and a training script need, those of them that this process has loaded (a worker
    # still runs the script's imports, which then find them loaded)
    needed = ["torch", "mmfuse.data", "mmfuse.streaming", "lightning", "transformers", "PIL.Image", "soundfile"]
    ctx.set_forkserver_preload([m for m in needed if m in sys.modules])
    return ctx


def _started(pid: int):
    """When process ``pid`` started (Linux: clock ticks since boot, from /proc), to tell it from a later process
    given the same id; -1 for a process that has ended but whose parent has not collected it yet (a zombie);
    None where that is not known."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return -1 if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def exit_with(pid: int, started=None, worker_id: int = 0) -> None:
    """In a loader worker started by a fork server: end the worker when process ``pid`` (which started at
    ``started``, :func:`_started`), whose loader it serves, has ended. Its parent is the fork server, which
    torch's own check watches, and the fork server lives as long as a worker does: a process killed outright
    (a pre-empted job, SIGKILL) would leave both running, holding its output open, and a parent that reads that
    output to its end before it collects the killed process (``subprocess.run``) would wait for ever."""
    import threading
    import time

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):  # gone, or another user's process given the id since
            return True
        # ended, its parent waiting for its output to close (which this worker holds), or a later process given the id
        return started is not None and _started(pid) != started

    def watch():
        while True:
            time.sleep(1.0)
            if gone():
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mmfuse-exit-with-parent").start()


def check_not_importing_main(what: str = "fit") -> None:
    """An error when a loader worker, starting, imports the script that started training and that script calls
    ``what`` outside ``if __name__ == "__main__":`` (it would start another training run in every worker)."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):  # multiprocessing's own test of this
        raise MmfuseError(f"{what}() was called while a loader worker imported the script that started training; "
                          "put the script's code under 'if __name__ == \"__main__\":' (a worker imports the "
                          "script, as on macOS and Windows), or set num_workers=0 (--workers 0)")


def make_loader(dataset: MultimodalDataset, batch_size: int = 64, shuffle: bool = False, num_workers: int = 0,
                seed: int = 0, drop_last: bool = False, persistent_workers: bool = False,
                pin_memory: bool = False, group_by_length: bool = False) -> MultimodalLoader:
    """A loader whose batches are built by ``dataset.__getitems__`` (decoding in workers).

    Batch order and augmentation depend only on ``seed`` and the epoch (see :class:`EpochBatchSampler`).
    ``group_by_length``: with ``shuffle``, put texts of similar length in one batch
    (:meth:`MultimodalDataset.text_lengths`), so that less compute goes to padding.
    """
    lengths = dataset.text_lengths() if group_by_length and shuffle else None
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, drop_last, seed, lengths=lengths)
    return MultimodalLoader(dataset, sampler, num_workers, persistent_workers, pin_memory)


def build_preprocessors(schema, data, options: Mapping[str, dict] | None = None, root=None,
                        hf: Mapping[str, dict] | None = None, inputs=None,
                        allow_outside_root: bool = False) -> dict[str, Preprocessor]:
    """Create and fit the built-in preprocessor of every input of ``schema`` on ``data``.

    Args:
        schema: A :class:`~mmfuse.schema.Schema`.
        data: The training rows only (a table, DataFrame or path).
        options: Keyword arguments per input name or per modality name, for example
            ``{"image": {"size": 32}, "Review Text": {"max_length": 200}}``; an input's own
            entry wins over its modality's.
        hf: Input name -> Hugging Face preprocessing (``{"model": ..., "embed": bool}``) for
            inputs whose encoder is a pretrained model; their own preprocessing replaces the built-in one.
        inputs: Only these input names (default: all of the schema's inputs).
        allow_outside_root: Read files whose paths resolve outside the data root (as the
            data set that trains on these rows must then do too).

    Raises:
        MmfuseError: for an input of which no value could be read (see
            :func:`~mmfuse.preprocessing._base.read_for_fit`): fitting never falls back to
            made-up statistics.
    """
    from .preprocessing import default_preprocessor

    table = read_table(data, root=root)
    options = dict(options or {})
    ctx = ReadContext(table.root, allow_outside_root)
    out = {}
    for spec in schema.inputs():
        if inputs is not None and spec.name not in inputs:
            continue
        kw = {**options.get(spec.modality.value, {}), **options.get(spec.name, {})}
        hf_kw = (hf or {}).get(spec.name)
        if hf_kw:
            kw = {k: v for k, v in kw.items() if k in ("max_length", "duration")}
        out[spec.name] = default_preprocessor(spec, schema, hf=hf_kw, **kw).fit(table.df, ctx)
    return out
