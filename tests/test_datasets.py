"""mmfuse.datasets: the audio-visual digits (fsdd_mnist), the clothing reviews, and downloads."""
import hashlib
import zipfile

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmfuse import datasets
from mmfuse.datasets import fsdd_mnist, read_idx, womens_clothing
from mmfuse.errors import MmfuseError

from conftest import require_shared_data


@pytest.mark.realdata
def test_fsdd_mnist_pairs_digits_by_speaker_with_disjoint_image_pools(tmp_path):
    fsdd, mnist = require_shared_data("fsdd"), require_shared_data("mnist")
    t = fsdd_mnist(fsdd, mnist, tmp_path, seed=0)
    df = t.df
    assert len(df) == 3000 and df["split"].value_counts().to_dict() == {"train": 1500, "test": 1000, "val": 500}
    assert set(df.loc[df["split"] == "val", "speaker"]) == {"lucas"}
    assert set(df.loc[df["split"] == "test", "speaker"]) == {"nicolas", "theo"}
    assert not set(df.loc[df["split"] == "train", "speaker"]) & {"nicolas", "theo", "lucas"}  # heard in training
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")
    assert (labels[df["mnist_index"]] == df["label"]).all()  # each recording has an image of its digit
    tr, te = df[df["split"] != "test"], df[df["split"] == "test"]
    assert not set(tr["mnist_index"]) & set(te["mnist_index"])  # disjoint pools ...
    pool = set(np.random.default_rng([0, 1]).permutation(10000)[:5000])
    assert set(tr["mnist_index"]) <= pool and not set(te["mnist_index"]) & pool  # ... random halves of the 10,000
    assert 0.4 < (te["mnist_index"] < 5000).mean() < 0.6  # not MNIST's first and last 5,000
    assert df["mnist_index"].is_unique  # no image is used twice
    assert (df["audio"].str.extract(r"audio/(\d)_")[0].astype(int) == df["label"]).all()
    # the image is rebuilt from the 4 leading components of a PCA fitted on the training pool only
    imgs = read_idx(mnist / "t10k-images-idx3-ubyte.gz").reshape(10000, -1) / 255.0

    def rebuilt(rows):
        mean = imgs[rows].mean(0)
        vt = np.linalg.svd(imgs[rows] - mean, full_matrices=False)[2][:4]
        return lambda i: np.clip(mean + (imgs[i] - mean) @ vt.T @ vt, 0, 1) * 255

    from_train, from_all = rebuilt(np.sort(np.random.default_rng([0, 1]).permutation(10000)[:5000])), rebuilt(np.arange(10000))
    gaps = {"train": [], "all": []}
    for _, r in te.head(20).iterrows():
        png = np.asarray(Image.open(t.root / r["image"]), np.float64).ravel()
        gaps["train"].append(np.abs(png - from_train(r["mnist_index"])).max())
        gaps["all"].append(np.abs(png - from_all(r["mnist_index"])).max())
    assert max(gaps["train"]) <= 0.51 and max(gaps["all"]) > 1  # a PCA that saw the test pool would differ
    # the audio carries white noise at 0 dB below its own power
    snrs = []
    for _, r in df.head(20).iterrows():
        clean, _ = sf.read(fsdd / "recordings" / r["audio"].split("/")[1], dtype="float64")
        noisy, sr = sf.read(t.root / r["audio"], dtype="float64")
        assert sr == 8000 and len(noisy) == len(clean)
        snrs.append(10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2)))
    assert abs(np.mean(snrs)) < 0.3 and np.std(snrs) < 0.5
    # a second call with the same settings reuses the files; another seed pairs other images
    stamp = (t.root / "table.csv").stat().st_mtime_ns
    assert fsdd_mnist(fsdd, mnist, tmp_path, seed=0).root == t.root and (t.root / "table.csv").stat().st_mtime_ns == stamp
    other = fsdd_mnist(fsdd, mnist, tmp_path, seed=1, audio_snr_db=20)
    assert other.root != t.root and (other.df["mnist_index"] != df["mnist_index"]).mean() > 0.9
    with pytest.raises(MmfuseError, match="test_speakers \\['bob'\\] are not FSDD speakers; choose among george"):
        fsdd_mnist(fsdd, mnist, tmp_path, test_speakers=("bob",))
    with pytest.raises(MmfuseError, match="\\['theo'\\] are both test and validation speakers"):
        fsdd_mnist(fsdd, mnist, tmp_path, val_speakers=("theo",))


@pytest.mark.realdata
def test_womens_clothing_gives_the_published_split_and_either_target():
    root = require_shared_data("womens-clothing")
    t = womens_clothing(root)
    assert t.df["split"].value_counts().to_dict() == {"train": 18788, "val": 2349, "test": 2349}
    assert "Recommended IND" in t.df and "Rating" in t.df
    r = womens_clothing(root, target="Rating")
    assert "Recommended IND" not in r.df and len(r.df) == 23486  # it would all but give the rating away
    with pytest.raises(MmfuseError, match="target must be 'Recommended IND' or 'Rating'"):
        womens_clothing(root, target="rating")


def test_download_fetches_files_and_archives_into_the_loaders_layout(tmp_path, monkeypatch):
    """The public homes cannot be reached here; file:// URLs stand in for them, through the same code."""
    site = tmp_path / "site"
    site.mkdir()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(site / "fsdd.zip", "w") as z:  # a GitHub archive: one top folder
        for name in ("0_ann_0.wav", "1_ann_0.wav"):
            sf.write(tmp_path / name, rng.normal(size=800).astype(np.float32), 8000)
            z.write(tmp_path / name, f"free-spoken-digit-dataset-26eb9aa/recordings/{name}")
        z.writestr("free-spoken-digit-dataset-26eb9aa/README.md", "not extracted")
    (site / "labels.gz").write_bytes(b"some bytes")
    sha = hashlib.sha256(b"some bytes").hexdigest()
    monkeypatch.setitem(datasets.SOURCES, "fsdd", {**datasets.SOURCES["fsdd"], "archive": (site / "fsdd.zip").as_uri()})
    monkeypatch.setitem(datasets.SOURCES, "mnist", {"files": {"labels.gz": ((site / "labels.gz").as_uri(), sha)}})
    root = tmp_path / "fsdd"
    t = datasets.fsdd_table(datasets.download("fsdd", root))
    assert t.df["audio"].tolist() == ["recordings/0_ann_0.wav", "recordings/1_ann_0.wav"]
    assert sorted(p.name for p in root.iterdir()) == ["recordings"]  # no zip or staging folder left behind
    datasets.download("mnist", tmp_path / "mnist")
    assert (tmp_path / "mnist" / "labels.gz").read_bytes() == b"some bytes"
    # a changed file, a missing site, an unknown data set: one line each, and nothing half-written
    monkeypatch.setitem(datasets.SOURCES, "mnist", {"files": {"labels.gz": ((site / "labels.gz").as_uri(), "0" * 64)}})
    with pytest.raises(MmfuseError, match="has SHA-256 .*expected 0000"):
        datasets.download("mnist", tmp_path / "m2")
    assert not list((tmp_path / "m2").iterdir())
    monkeypatch.setitem(datasets.SOURCES, "mnist", {"files": {"labels.gz": ((site / "nope.gz").as_uri(), None)}})
    with pytest.raises(MmfuseError, match="could not download file://.*nope.gz.*put your copy of the data set in"):
        datasets.download("mnist", tmp_path / "m3")
    with pytest.raises(MmfuseError, match="unknown data set 'fsd'.*Did you mean 'fsdd'"):
        datasets.download("fsd", tmp_path)
