"""Decoded-item cache shared by DataLoader workers: in memory (shared memory) or on disk (memmap).

Every preprocessor returns arrays of a fixed shape, so the cache for an input is one array
``[N, *shape]`` per key plus a status byte per row (0 = not decoded yet, 1 = decoded,
2 = absent). Workers fill it as they decode; later epochs slice it instead of decoding.
The disk cache lives in a folder named by a hash of the preprocessor configuration and
state, of every cell (with each file's size and modification time, also for ``{"bytes": ...,
"path": ...}`` cells) and of the mmfuse, torch and transformers versions, so a changed file,
row, setting or library never reuses a stale entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

UNKNOWN, PRESENT, ABSENT = 0, 1, 2


class ItemCache:
    """Arrays ``[N, *shape]`` per key and a status ``uint8 [N]``.

    Args:
        n: Number of rows.
        spec: ``{key: (shape, dtype)}`` of one item.
        directory: ``None`` for shared memory, else a folder for memory-mapped ``.npy`` files.
    """

    def __init__(self, n: int, spec: dict, directory: str | os.PathLike | None = None):
        self.n, self.spec = n, {k: (tuple(s), np.dtype(d)) for k, (s, d) in spec.items()}
        self.directory = Path(directory) if directory is not None else None
        self._arrays: dict[str, np.ndarray] | None = None
        self._status: np.ndarray | None = None
        if self.directory is None:
            # Shared-memory tensors survive fork and are passed by handle under spawn.
            self._tensors = {k: torch.from_numpy(np.zeros((n, *s), d)).share_memory_()
                             for k, (s, d) in self.spec.items()}
            self._tensors["__status__"] = torch.zeros(n, dtype=torch.uint8).share_memory_()
        else:
            self._tensors = None
            self.directory.mkdir(parents=True, exist_ok=True)
            for k, (s, d) in {**self.spec, "__status__": ((), np.dtype(np.uint8))}.items():
                f = self.directory / f"{k}.npy"
                if not f.exists():
                    tmp = self.directory / f".{k}.npy.tmp{os.getpid()}"
                    np.lib.format.open_memmap(tmp, mode="w+", dtype=d, shape=(n, *s)).flush()
                    try:  # created once: processes that start together (distributed training) share one file
                        os.link(tmp, f)
                    except FileExistsError:
                        pass
                    except OSError:  # a file system without hard links
                        if not f.exists():
                            os.replace(tmp, f)
                    tmp.unlink(missing_ok=True)
            (self.directory / "meta.json").write_text(json.dumps({"n": n, "keys": sorted(self.spec)}))

    def _open(self) -> None:
        if self._arrays is not None:
            return
        if self._tensors is not None:
            views = {k: t.numpy() for k, t in self._tensors.items()}
        else:
            views = {k: np.load(self.directory / f"{k}.npy", mmap_mode="r+")
                     for k in [*self.spec, "__status__"]}
        self._status = views.pop("__status__")
        self._arrays = views

    @property
    def status(self) -> np.ndarray:
        self._open()
        return self._status

    def get(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        self._open()
        return {k: a[positions] for k, a in self._arrays.items()}

    def put(self, position: int, item: dict[str, np.ndarray] | None) -> None:
        self._open()
        if item is None:
            self._status[position] = ABSENT
            return
        for k, a in item.items():
            self._arrays[k][position] = a
        self._status[position] = PRESENT  # written last: a reader never sees half an item

    def flush(self) -> None:
        """Write a disk cache's pages to its files (other processes map the same files)."""
        if self._arrays is not None and self.directory is not None:
            for a in [*self._arrays.values(), self._status]:
                a.flush()

    def __getstate__(self):
        d = dict(self.__dict__)
        if self.directory is not None:  # reopen the memmaps in the worker
            d["_arrays"] = d["_status"] = None
        return d


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries whose code shapes a cached item (``None`` when not installed).

    transformers is looked up in the package metadata, not imported (importing it is slow).
    """
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        transformers = version("transformers")
    except PackageNotFoundError:
        transformers = None
    return {"mmfuse": __version__, "torch": str(torch.__version__), "transformers": transformers}


def cache_key(parts) -> str:
    """A stable hash of JSON-able parts (configuration, state, cells with file stats) and of
    :func:`library_versions`: an upgrade of mmfuse, torch or transformers starts a new entry."""
    h = hashlib.sha256()
    h.update(json.dumps({"parts": parts, "versions": library_versions()}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def file_stamp(value, root: Path):
    """What a cache key records of a cell: the value, and for an existing file its size and mtime.

    A ``{"bytes": ..., "path": ...}`` cell (Hugging Face datasets' image and audio columns)
    is stamped field by field, so its path also records the file's size and mtime.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(value)).hexdigest()[:16]
    if isinstance(value, dict):
        return {str(k): file_stamp(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return hashlib.sha256(np.asarray(value, dtype=np.float64).tobytes()).hexdigest()[:16]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        p = Path(value)
        p = p if p.is_absolute() else root / p
        try:
            st = p.stat()
            return [value, st.st_size, st.st_mtime_ns]
        except OSError:
            return [value, None]
    return repr(value)


def default_cache_dir() -> Path:
    """``$MMFUSE_CACHE_DIR``, else ``~/.cache/mmfuse``."""
    return Path(os.environ.get("MMFUSE_CACHE_DIR") or Path.home() / ".cache" / "mmfuse")


def list_cache(root: str | os.PathLike | None = None) -> list[dict]:
    """Entries under the cache folder: name, size in bytes, rows."""
    root = Path(root) if root else default_cache_dir()
    out = []
    if not root.exists():
        return out
    for d in sorted(p for p in root.rglob("meta.json")):
        size = sum(f.stat().st_size for f in d.parent.iterdir() if f.is_file())
        meta = json.loads(d.read_text())
        out.append({"entry": str(d.parent.relative_to(root)), "bytes": size, "rows": meta.get("n")})
    return out


def clear_cache(root: str | os.PathLike | None = None) -> int:
    """Delete every cache entry; returns the number removed."""
    entries = list_cache(root)
    root = Path(root) if root else default_cache_dir()
    for e in entries:
        shutil.rmtree(root / e["entry"], ignore_errors=True)
    return len(entries)
