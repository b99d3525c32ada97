"""Tables built from public multimodal data sets that the user already has on disk.

Each builder takes the data set's folder (as laid out in its public repository) and
returns a :class:`~mmfuse.io.Table` whose file paths are relative to that folder. Nothing
here downloads: point ``root`` at your copy.
"""
from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MmfuseError
from .io import Table

__all__ = ["fsdd_table", "mnist_table", "sphar_recordings_table", "sphar_windows_table", "womens_clothing_table",
           "read_idx"]


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise MmfuseError(f"{what} not found at {path}; pass the folder that holds your copy of the data set")
    return path


def fsdd_table(root: str | os.PathLike) -> Table:
    """Free Spoken Digit Dataset: ``audio`` (path), ``digit``, ``speaker``, ``take``."""
    root = Path(root)
    rec = _need(root / "recordings", "FSDD recordings/ folder")
    rows = []
    for f in sorted(rec.glob("*.wav")):
        m = re.fullmatch(r"(\d)_([a-z]+)_(\d+)", f.stem)
        if m:
            rows.append({"audio": f"recordings/{f.name}", "digit": int(m[1]), "speaker": m[2], "take": int(m[3])})
    return Table(pd.DataFrame(rows), root.resolve(), str(root))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or plain), as used by MNIST."""
    path = Path(path)
    op = gzip.open if path.suffix == ".gz" else open
    with op(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise MmfuseError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_table(root: str | os.PathLike, out_dir: str | os.PathLike, limit: int | None = None,
                split: str = "t10k") -> Table:
    """MNIST as PNG files written once to ``out_dir``: ``image`` (path), ``label``."""
    from PIL import Image

    root, out = Path(root), Path(out_dir)
    images = read_idx(_need(root / f"{split}-images-idx3-ubyte.gz", "MNIST images"))
    labels = read_idx(_need(root / f"{split}-labels-idx1-ubyte.gz", "MNIST labels"))
    n = len(images) if limit is None else min(limit, len(images))
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"images/{split}_{i:05d}.png"
        if not (out / name).exists():
            Image.fromarray(images[i]).save(out / name)
        rows.append({"image": name, "label": int(labels[i])})
    return Table(pd.DataFrame(rows), out.resolve(), str(root))


def sphar_recordings_table(root: str | os.PathLike) -> Table:
    """Smartphone + smartwatch HAR: one row per recording, ``phone``/``watch`` CSV paths plus
    the subject's information and the execution's settings. Labels are per sample inside
    the CSVs; see :func:`sphar_windows_table` for labelled windows."""
    root = Path(root)
    data = _need(root / "DATA", "sp-sw-har DATA/ folder") if (root / "DATA").exists() else _need(root, "sp-sw-har")
    subjects = pd.read_csv(data / "subjects_info.csv").drop(columns=["executions"], errors="ignore")
    execs = pd.read_csv(data / "executions_info.csv")
    execs["subject_id"] = execs["execution_id"].str.split("_").str[0]
    rows = []
    for _, e in execs.iterrows():
        sid, eid = e["subject_id"], e["execution_id"]
        rows.append({"execution_id": eid, "subject_id": sid, "phone": f"{sid}/{eid}_sp.csv",
                     "watch": f"{sid}/{eid}_sw.csv", "orientation": e["orientation"],
                     "first_turn": e["first_turn"], "second_turn": e["second_turn"]})
    df = pd.DataFrame(rows).merge(subjects, on="subject_id", how="left")
    return Table(df, data.resolve(), str(data))


def sphar_windows_table(root: str | os.PathLike, device: str = "sp", length: int = 50, stride: int = 25) -> Table:
    """Labelled windows of one device (``sp`` phone or ``sw`` watch), as the data set's authors cut them:
    per recording, windows of ``length`` samples with ``stride`` (50 / 25 gives their 10,042
    phone and 10,170 watch windows). Columns: ``series`` (a ``(length, 6)`` list), ``label``,
    ``subject_id``, ``execution_id``."""
    from .windowing import make_windows

    rec = sphar_recordings_table(root)
    col = {"sp": "phone", "sw": "watch"}[device]
    rows = []
    for _, r in rec.df.iterrows():
        d = pd.read_csv(rec.root / r[col])
        w, lab, _, _ = make_windows(d.iloc[:, :6].to_numpy(np.float32), d["label"].to_numpy(), length, stride)
        for k in range(len(w)):
            rows.append({"series": w[k].T.tolist(), "label": lab[k], "subject_id": r["subject_id"],
                         "execution_id": r["execution_id"]})
    return Table(pd.DataFrame(rows), rec.root, rec.source)


def womens_clothing_table(root: str | os.PathLike) -> Table:
    """Women's E-Commerce Clothing Reviews with the published train/val/test ``split`` column."""
    root = Path(root)
    df = pd.read_parquet(_need(root / "reviews.parquet", "reviews.parquet"))
    split = root / "split.csv"
    if split.exists():
        s = pd.read_csv(split).set_index("row")["split"]
        df["split"] = s.reindex(range(len(df))).to_numpy()
    return Table(df, root.resolve(), str(root))
