import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmfuse.errors import InputError, MmfuseError
from mmfuse.preprocessing import ImagePreprocessor, ReadContext, load_preprocessors, save_preprocessors
from mmfuse.preprocessing.image import augment_images


def halves(w=4, h=2, mode="L"):
    """Left half black (0), right half white (255)."""
    a = np.zeros((h, w), np.uint8)
    a[:, w // 2:] = 255
    return Image.fromarray(a, "L").convert(mode)


def fitted(tmp_path, **kw):
    halves(16, 16).save(tmp_path / "fit.png")
    p = ImagePreprocessor(["im"], **kw)
    return p.fit(pd.DataFrame({"im": ["fit.png"]}), ReadContext(tmp_path))


def test_center_crop_pad_and_channels_by_hand(tmp_path):
    ctx = ReadContext(tmp_path)
    halves(4, 2).save(tmp_path / "a.png")
    p = fitted(tmp_path, size=2, resize="crop", min_size=1)
    assert p.channels == 1  # every fit image was grayscale
    # 4x2 -> short side already 2 -> center crop keeps columns 1 and 2: black, white
    assert p.read(["a.png"], 0, ctx)["image"].tolist() == [[[0, 255], [0, 255]]]
    q = fitted(tmp_path, size=2, resize="pad", min_size=1, channels=3)
    out = q.read(["a.png"], 0, ctx)["image"]  # 4x2 -> 2x1 on the top row, black padding below
    assert out.shape == (3, 2, 2) and out[:, 1].tolist() == [[0, 0]] * 3 and out[0, 0, 1] > 200


def test_exif_orientation_is_applied(tmp_path):
    ctx = ReadContext(tmp_path)
    im = halves(4, 2)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    p = fitted(tmp_path, size=2, resize="crop", min_size=1)
    row = p.read(["r.jpg"], 0, ctx)["image"][0, 0]
    assert row[0] > 200 and row[1] < 50  # white left, black right after the rotation


def test_rgba_palette_and_bytes_cells(tmp_path):
    ctx = ReadContext(tmp_path)
    p = fitted(tmp_path, size=8, channels=3)
    Image.new("RGBA", (10, 10), (255, 0, 0, 128)).save(tmp_path / "rgba.png")
    Image.new("P", (10, 10)).save(tmp_path / "p.png")
    assert p.read(["rgba.png"], 0, ctx)["image"].shape == (3, 8, 8)
    assert p.read(["p.png"], 0, ctx)["image"].shape == (3, 8, 8)
    raw = (tmp_path / "rgba.png").read_bytes()
    assert (p.read([raw], 0, ctx)["image"] == p.read(["rgba.png"], 0, ctx)["image"]).all()
    assert p.read([{"bytes": raw, "path": None}], 0, ctx)["image"].shape == (3, 8, 8)
    assert p.read([None], 0, ctx) is None


def test_normalization_stats_from_training_images(tmp_path):
    p = fitted(tmp_path, size=16)  # no resampling, so pixels stay exactly 0 or 255
    # half the pixels 0, half 1 -> mean 0.5, std 0.5
    assert p.mean_.tolist() == pytest.approx([0.5], abs=1e-6) and p.std_.tolist() == pytest.approx([0.5], abs=1e-6)
    x = p.batch({"image": torch.tensor([[[[0, 255]]]], dtype=torch.uint8)})
    assert x.flatten().tolist() == pytest.approx([-1.0, 1.0])


def test_augmentation_keeps_shape_and_flip_mirrors():
    torch.manual_seed(0)
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    y = augment_images(x, ("flip",))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    same = (y == x).flatten(1).all(1)
    assert bool((flipped | same).all()) and 10 < int(flipped.sum()) < 54
    assert augment_images(x, ("crop", "flip")).shape == x.shape


def png_with_header_size(path: Path, w: int, h: int):
    """A 1x1 PNG whose IHDR claims w x h pixels (a decompression-bomb header)."""
    Image.new("L", (1, 1)).save(path)
    b = bytearray(path.read_bytes())
    ihdr = bytes(b[12:17 + 12])  # b'IHDR' + 13 data bytes
    data = struct.pack(">II", w, h) + ihdr[12:]
    b[16:29] = data
    b[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + data) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("case,match", [
    ("missing", r"row 5, column 'im': file 'case.png' does not exist \(resolved to .*case.png\)"),
    ("empty", r"file 'case.png' is empty \(0 bytes\)"),
    ("truncated", r"is a truncated or corrupt image"),
    ("corrupt", r"is not a readable image"),
    ("bomb", r"decompression bomb"),
    ("tiny", r"is only 2x2 pixels, smaller than min_size=8"),
    ("escape", r"is outside the data root"),
])
def test_bad_images_name_row_column_file_and_reason(tmp_path, case, match):
    ctx = ReadContext(tmp_path)
    p = fitted(tmp_path, size=8)
    f = tmp_path / "case.png"
    if case == "empty":
        f.write_bytes(b"")
    elif case == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(f)
        f.write_bytes(f.read_bytes()[:300])
    elif case == "corrupt":
        f.write_bytes(b"\x89PNG garbage" * 10)
    elif case == "bomb":
        png_with_header_size(f, 30000, 30000)
    elif case == "tiny":
        Image.new("L", (2, 2)).save(f)
    cell = "../../etc/passwd" if case == "escape" else "case.png"
    with pytest.raises(InputError, match=match):
        p.read([cell], 5, ctx)


def test_state_round_trip(tmp_path):
    p = fitted(tmp_path, size=4, augment=("flip",))
    save_preprocessors({"im": p}, tmp_path / "s")
    q = load_preprocessors(tmp_path / "s")["im"]
    assert q.config() == p.config() and (q.mean_ == p.mean_).all() and (q.std_ == p.std_).all()
    ctx = ReadContext(tmp_path)
    assert (q.read(["fit.png"], 0, ctx)["image"] == p.read(["fit.png"], 0, ctx)["image"]).all()


def test_fit_that_reads_no_image_fails_naming_column_and_reasons(tmp_path):
    (tmp_path / "b.png").write_bytes(b"not an image")
    df = pd.DataFrame({"im": ["a.png", None, "b.png"]})
    with pytest.raises(MmfuseError, match=r"^no value of column 'im' could be read while fitting \(2 tried; does not "
                                          r"exist: 1, is not a readable image \(UnidentifiedImageError: .*\): 1\)\. "
                                          r"First failure: row 0, column 'im': file 'a.png' does not exist"):
        ImagePreprocessor(["im"]).fit(df, ReadContext(tmp_path))  # not the old fallback: mean 0.5, std 0.25
