"""Shared fixtures: a tiny table with all five modalities, written to a temporary folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    """Each test process (``make test`` runs two, pytest-xdist) keeps embeddings in its own temporary cache folder,
    not in the user's ~/.cache/mmfuse: no test reads what another wrote, and nothing is left behind."""
    import tempfile

    if "MMFUSE_CACHE_DIR" not in os.environ:
        config._mmfuse_cache = tempfile.TemporaryDirectory(prefix="mmfuse_test_cache_")
        os.environ["MMFUSE_CACHE_DIR"] = config._mmfuse_cache.name


def pytest_unconfigure(config):
    tmp = getattr(config, "_mmfuse_cache", None)
    if tmp is not None:
        os.environ.pop("MMFUSE_CACHE_DIR", None)
        tmp.cleanup()


def require_shared_data(name: str) -> Path:
    """The folder of a real data set; skip when absent, fail when MMFUSE_REQUIRE_REAL_DATA=1."""
    path = Path(os.environ.get("MMFUSE_SHARED_DATA", SHARED_DATA)) / name
    if not path.exists():
        msg = f"real data set {name!r} not found at {path}"
        if os.environ.get("MMFUSE_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg + " (MMFUSE_REQUIRE_REAL_DATA=1 requires it)")
        pytest.skip(msg)
    return path


def write_png(path: Path, rng, size=(16, 16), mode="L"):
    from PIL import Image

    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def write_wav(path: Path, rng, sr=8000, seconds=0.25, freq=440.0):
    import soundfile as sf

    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32), sr)


@pytest.fixture
def mm_table(tmp_path) -> Path:
    """A CSV with text, image, audio, timeseries, numeric and categorical columns and a target."""
    return make_mm_table(tmp_path)


def make_mm_table(tmp_path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "wav").mkdir()
    (tmp_path / "ts").mkdir()
    rows = []
    words = ["good", "bad", "great", "awful", "fine", "nice", "poor", "okay"]
    for i in range(n):
        y = i % 2
        write_png(tmp_path / "img" / f"{i}.png", rng, size=(20, 16))
        write_wav(tmp_path / "wav" / f"{i}.wav", rng, freq=300 + 200 * y)
        pd.DataFrame(rng.standard_normal((30, 3)), columns=["ax", "ay", "az"]).assign(
            timestamp=np.arange(30)).to_csv(tmp_path / "ts" / f"{i}.csv", index=False)
        rows.append({"review": " ".join(rng.choice(words, 6)), "photo": f"img/{i}.png", "clip": f"wav/{i}.wav",
                     "motion": f"ts/{i}.csv", "age": float(rng.integers(18, 70)), "color": ["red", "blue", "green"][i % 3],
                     "label": ["no", "yes"][y]})
    df = pd.DataFrame(rows)
    df.loc[3, "review"] = None
    df.loc[5, "age"] = None
    df.loc[7, "photo"] = None
    df.to_csv(tmp_path / "table.csv", index=False)
    return tmp_path / "table.csv"


def make_tabular_text_table(n: int = 160, seed: int = 0, task: str = "multiclass") -> pd.DataFrame:
    """A learnable table: numbers, a category and a short text, with the target depending on all three."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    cat = rng.choice(["u", "v", "w"], n)
    word = rng.choice(["alpha", "beta"], n)
    text = [f"the item is {w} today" for w in word]
    if task == "regression":
        y = 3 * x1 - 2 * x2 + (cat == "u") * 2.0 + (word == "alpha") * 1.5 + rng.normal(0, 0.1, n)
    elif task == "binary":
        y = np.where(x1 + (word == "alpha") * 1.5 - 0.75 > 0, "pos", "neg")
    elif task == "multilabel":
        y = ["|".join(l for l, on in (("big", x1 > 0), ("alpha", w == "alpha"), ("u", c == "u")) if on) or "none"
             for w, c, x1 in zip(word, cat, x1)]
    else:
        y = np.where(word == "alpha", 0, 2) + (x1 > 0).astype(int)  # 4 classes: text and numbers are both needed
    return pd.DataFrame({"x1": x1, "x2": x2, "cat": cat, "note": text, "y": y})


def word_table(n: int, seed: int = 0) -> pd.DataFrame:
    """Short notes of sentiment words, a number, and a label read from the notes."""
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "fine", "poor", "great", "awful"]
    df = pd.DataFrame({"note": [" ".join(rng.choice(words, 4)) for _ in range(n)], "a": rng.normal(size=n)})
    df["y"] = np.where(df["note"].str.count("good|great|fine") >= 2, "pos", "neg")
    return df


def count_reads(monkeypatch, name: str) -> list:
    """The table index of every row whose input ``name`` a MultimodalDataset reads (decodes or embeds)."""
    from mmfuse.data import MultimodalDataset

    read, real = [], MultimodalDataset._read_rows

    def counting(self, input_name, pos, issues):
        if input_name == name:
            read.extend(self.table.df.index[pos].tolist())
        return real(self, input_name, pos, issues)

    monkeypatch.setattr(MultimodalDataset, "_read_rows", counting)
    return read
