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
from typing import Literal

import numpy as np
import pandas as pd

from .errors import MmfuseError
from .io import Table

__all__ = ["fsdd_table", "mnist_table", "sp_sw_har", "sphar_recordings_table", "sphar_windows_table",
           "womens_clothing_table", "read_idx", "SPHAR_CHANNELS", "SPHAR_RANGES", "SP_SW_HAR_ROLES"]


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


def _sphar_data(root: str | os.PathLike) -> Path:
    """The sp-sw-har ``DATA`` folder, given it or the folder above it."""
    root = Path(root)
    return _need(root / "DATA", "sp-sw-har DATA/ folder") if (root / "DATA").exists() else _need(root, "sp-sw-har")


def _sphar_subjects(data: Path) -> pd.DataFrame:
    """``subjects_info.csv``: ``subject_id`` and the subject's information (age, gender, height, weight,
    dominant_hand); its ``executions`` column (a count of recordings) is not information about the subject."""
    return pd.read_csv(_need(data / "subjects_info.csv", "sp-sw-har subjects_info.csv")).drop(
        columns=["executions"], errors="ignore")


def sphar_recordings_table(root: str | os.PathLike) -> Table:
    """Smartphone + smartwatch HAR: one row per recording, ``phone``/``watch`` CSV paths plus
    the subject's information and the execution's settings. Labels are per sample inside
    the CSVs; see :func:`sp_sw_har` for labelled windows."""
    data = _sphar_data(root)
    subjects = _sphar_subjects(data)
    execs = pd.read_csv(_need(data / "executions_info.csv", "sp-sw-har executions_info.csv"))
    execs["subject_id"] = execs["execution_id"].str.split("_").str[0]
    rows = []
    for _, e in execs.iterrows():
        sid, eid = e["subject_id"], e["execution_id"]
        rows.append({"execution_id": eid, "subject_id": sid, "phone": f"{sid}/{eid}_sp.csv",
                     "watch": f"{sid}/{eid}_sw.csv", "orientation": e["orientation"],
                     "first_turn": e["first_turn"], "second_turn": e["second_turn"]})
    df = pd.DataFrame(rows).merge(subjects, on="subject_id", how="left")
    return Table(df, data.resolve(), str(data))


SPHAR_CHANNELS = ("x_acc", "y_acc", "z_acc", "x_gyro", "y_gyro", "z_gyro")
# The sensors' full ranges, from the authors' code (GeoTecINIT/har-performance-study,
# lib/pipeline/raw_data_processing.py): accelerometer in m/s^2, gyroscope in rad/s, per device.
SPHAR_RANGES = {"sp": {"acc": 78.45317840576172, "gyro": 17.45274543762207},
                "sw": {"acc": 78.4532, "gyro": 34.906586}}
# Roles to pass to ``select_inputs``/``MultimodalPredictor(columns=...)`` with an :func:`sp_sw_har` table:
# by name alone both ids would be read as categories (each value is shared by many windows).
SP_SW_HAR_ROLES = {"subject_id": "group", "execution_id": "ignore"}
_SPHAR_DEVICES = {"sp": ("phone",), "sw": ("watch",), "both": ("phone", "watch")}


def sp_sw_har(root: str | os.PathLike, devices: Literal["both", "sp", "sw"] = "both", length: int = 50, stride: int = 25,
              scale: bool = True, subject_info: bool = True, batch_ms: int = 10 ** 9) -> Table:
    """Labelled windows of the smartphone + smartwatch HAR data set (Matey-Sanz et al., Data in Brief 2023),
    cut as its authors cut them (GeoTecINIT/har-performance-study, ``lib/pipeline``).

    Per recording: ``devices="sp"`` or ``"sw"`` windows that device's samples (all of them); ``"both"``
    first pairs the phone and watch samples (:func:`~mmfuse.windowing.pair_by_batches`: start both at the
    later first time stamp, pair the i-th samples of each batch, drop the rest), drops the pairs whose two
    labels differ (as the authors do), and windows the pairs (12 channels, split back into the two columns). Windows are ``length`` samples every ``stride``; a
    trailing partial window is dropped, and a window's label is its most frequent sample label (ties: the
    one that comes first), as :func:`~mmfuse.windowing.make_windows` labels. With the defaults this
    gives the authors' 10,042 phone, 10,170 watch and 9,365 fused windows; the fused pairs are the ones
    their ``fuse_data`` makes, and all 9,365 labels agree with their ``compute_best_class``.

    ``batch_ms``: the authors meant 1-second batches, but their code reads the millisecond stamps as
    nanoseconds (``pd.to_datetime`` of integers), so each "second" spans 10^9 ms (11.6 days): one batch
    per recording, in which the first ``min(n_phone, n_watch)`` samples after the common start are
    paired. The default, ``10**9``, does the same and so reproduces their 9,365 windows;
    ``batch_ms=1000`` pairs within true seconds (9,892 windows).

    ``scale``: divide each channel by its sensor's full range (:data:`SPHAR_RANGES`), the authors'
    min-max scaling from ``[-range, range]`` to ``[-1, 1]``. The ranges are fixed constants of the devices,
    not statistics of the data, so nothing leaks between cross-validation folds; and mmfuse's time-series
    preprocessor standardizes each channel from the training rows anyway, which undoes any per-channel
    scale, so the setting changes the table, not what a model sees.

    Returns:
        A table with one row per window: ``phone`` and/or ``watch`` (each a ``(length, 6)`` list:
        :data:`SPHAR_CHANNELS` in time order), ``label``, ``subject_id`` (the group for
        leave-one-subject-out), ``execution_id`` and, with ``subject_info``, the subject's ``age``,
        ``gender``, ``height``, ``weight`` and ``dominant_hand`` (tabular inputs). Pass
        :data:`SP_SW_HAR_ROLES` as the column roles so that neither id becomes an input.
    """
    from .windowing import make_windows, pair_by_batches

    if devices not in _SPHAR_DEVICES:
        raise MmfuseError(f"sp_sw_har: devices must be one of {', '.join(map(repr, _SPHAR_DEVICES))}; got {devices!r}")
    data = _sphar_data(root)
    rec = sphar_recordings_table(data)
    cols = _SPHAR_DEVICES[devices]
    windows, labels, recs = [], [], []
    for _, r in rec.df.iterrows():
        parts = {}
        for col in cols:
            d = pd.read_csv(rec.root / r[col], usecols=[*SPHAR_CHANNELS, "timestamp", "label"])
            x = d[list(SPHAR_CHANNELS)].to_numpy(np.float64)  # (T, 6)
            if scale:
                rng = SPHAR_RANGES["sp" if col == "phone" else "sw"]
                x = x / np.array([rng["acc"]] * 3 + [rng["gyro"]] * 3)
            parts[col] = (x, d["timestamp"].to_numpy(), d["label"].to_numpy())
        if devices == "both":
            (xa, ta, la), (xb, tb, lb) = parts["phone"], parts["watch"]
            ia, ib = pair_by_batches(ta, tb, batch_ms)
            same = la[ia] == lb[ib]
            x, lab = np.concatenate([xa[ia[same]], xb[ib[same]]], axis=1), la[ia[same]]  # (P, 12)
        else:
            x, _, lab = parts[cols[0]]
        w, wl, _, _ = make_windows(x.astype(np.float32), lab, length, stride)  # (W, C, length)
        windows.append(w.transpose(0, 2, 1))  # (W, length, C)
        labels.append(wl)
        recs += [r.name] * len(w)
    w = np.concatenate(windows) if windows else np.zeros((0, length, 6 * len(cols)), np.float32)
    df = pd.DataFrame({col: w[:, :, 6 * k:6 * k + 6].tolist() for k, col in enumerate(cols)})  # (length, 6) lists
    df["label"] = np.concatenate(labels) if labels else []
    df[["subject_id", "execution_id"]] = rec.df.loc[recs, ["subject_id", "execution_id"]].to_numpy()
    if subject_info:
        df = df.merge(_sphar_subjects(data), on="subject_id", how="left")
    return Table(df, rec.root, rec.source)


def sphar_windows_table(root: str | os.PathLike, device: str = "sp", length: int = 50, stride: int = 25) -> Table:
    """Unscaled windows of one device (``sp`` phone or ``sw`` watch) in a column ``series``, with
    ``label``, ``subject_id`` and ``execution_id``: :func:`sp_sw_har` without the subject's information."""
    if device not in ("sp", "sw"):
        raise MmfuseError(f"sphar_windows_table: device must be 'sp' or 'sw'; got {device!r}")
    t = sp_sw_har(root, device, length, stride, scale=False, subject_info=False)
    return Table(t.df.rename(columns={"phone": "series", "watch": "series"}), t.root, t.source)


def womens_clothing_table(root: str | os.PathLike) -> Table:
    """Women's E-Commerce Clothing Reviews with the published train/val/test ``split`` column."""
    root = Path(root)
    df = pd.read_parquet(_need(root / "reviews.parquet", "reviews.parquet"))
    split = root / "split.csv"
    if split.exists():
        s = pd.read_csv(split).set_index("row")["split"]
        df["split"] = s.reindex(range(len(df))).to_numpy()
    return Table(df, root.resolve(), str(root))
