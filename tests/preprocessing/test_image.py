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


# --- sizes that are not square ----------------------------------------------------------------
from mmfuse.preprocessing.image import aspect_message, parse_image_size  # noqa: E402


@pytest.mark.parametrize("value,expected", [(64, 64), ("64", 64), ("128x32", (128, 32)), ("128X32", (128, 32)),
                                            ([128, 32], (128, 32)), ((128, 32), (128, 32)), ([8, 8], 8)])
def test_image_size_is_a_side_or_a_width_height_pair(value, expected):
    assert parse_image_size(value) == expected


@pytest.mark.parametrize("value", [0, -3, True, "12x", "x", "wide", [128], [128, 32, 3], [12.5, 3], 2.5, None])
def test_bad_image_size_is_refused_naming_the_setting(value, tmp_path):
    with pytest.raises(MmfuseError, match=r"^--image-size must be a side in pixels \(64\) or WIDTHxHEIGHT"):
        parse_image_size(value, "--image-size")
    with pytest.raises(MmfuseError, match=r"^ImagePreprocessor: size must be"):
        fitted(tmp_path, size=value)


def test_non_square_crop_squash_and_letterbox_by_hand(tmp_path):
    ctx = ReadContext(tmp_path)
    halves(4, 4).save(tmp_path / "sq.png")  # columns 0-1 black, 2-3 white
    halves(8, 2).save(tmp_path / "wide.png")  # columns 0-3 black, 4-7 white
    # crop to W=2, H=4: the 4x4 image already covers 2x4, so the middle columns 1 and 2 stay
    p = fitted(tmp_path, size=(2, 4), resize="crop", min_size=1)
    assert p.read(["sq.png"], 0, ctx)["image"].tolist() == [[[0, 255]] * 4]
    assert p.item_spec()["image"][0] == (1, 4, 2)  # (C, H, W)
    # squash 4x4 to W=4, H=2: rows are all alike, so halving them keeps the values
    p = fitted(tmp_path, size=[4, 2], resize="squash", min_size=1)
    assert p.read(["sq.png"], 0, ctx)["image"].tolist() == [[[0, 0, 255, 255]] * 2]
    # letterbox 8x2 into W=8, H=4: fits at scale 1, one black row above and below
    for mode in ("letterbox", "pad"):
        p = fitted(tmp_path, size="8x4", resize=mode, min_size=1)
        assert p.read(["wide.png"], 0, ctx)["image"].tolist() == [[[0] * 8, [0] * 4 + [255] * 4,
                                                                     [0] * 4 + [255] * 4, [0] * 8]]


def wide_images(tmp_path, n=6, size=(80, 20)):
    from conftest import write_png

    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(tmp_path / f"w{i}.png", rng, size=size)
    return pd.DataFrame({"im": [f"w{i}.png" for i in range(n)]})


def test_fit_warns_what_a_crop_loses_of_wide_images(tmp_path):
    df, ctx = wide_images(tmp_path), ReadContext(tmp_path)
    with pytest.warns(UserWarning, match=r"image column 'im': the training images' median aspect ratio \(width/height\) "
                                         r"is 4\.00 \(e\.g\. 80x20\) but size is 64x64: a center crop keeps 25% of "
                                         r"each 80x20 image; use resize='letterbox' \(--image-resize letterbox\) or "
                                         r"size=\(128, 32\) \(--image-size 128x32\)"):
        ImagePreprocessor(["im"]).fit(df, ctx)
    with pytest.warns(UserWarning, match=r"letterbox leaves 75% of each 64x64 image as padding; use size=\(128, 32\)"):
        ImagePreprocessor(["im"], resize="letterbox").fit(df, ctx)
    with pytest.warns(UserWarning, match=r"squashing stretches each 80x20 image 4\.0-fold out of shape"):
        ImagePreprocessor(["im"], resize="squash").fit(df, ctx)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a size of the images' shape, or a ratio within 1.5x, gives no warning
        ImagePreprocessor(["im"], size=(128, 32)).fit(df, ctx)
        ImagePreprocessor(["im"], size=(48, 16)).fit(df, ctx)  # 3 vs 4: 1.33x
    assert aspect_message([(30, 20)] * 3, 64, "crop") is None  # 1.5x exactly is tolerated


def test_non_square_augment_keeps_shape():
    x = torch.arange(24.0).view(1, 1, 4, 6).repeat(8, 1, 1, 1)  # (B, C, H, W)
    assert augment_images(x, ("crop", "flip")).shape == (8, 1, 4, 6)


def test_image_cnn_takes_non_square_and_thin_images():
    from mmfuse.encoders import ImageCNN

    enc = ImageCNN(in_channels=1, dim=8).eval()
    pooled, tokens, _ = enc.encode(torch.randn(2, 1, 32, 128))  # (B, C, H, W)
    assert pooled.shape == (2, 8) and tokens.shape == (2, 4 * 16, 8)  # three halvings: 32x128 -> 4x16
    _, tokens, _ = enc.encode(torch.randn(2, 1, 4, 64))  # a side of 1 is not halved again (MaxPool2d fails)
    assert tokens.shape == (2, 1 * 8, 8)


def test_non_square_bundle_round_trip_gives_the_same_predictions(tmp_path):
    from mmfuse.api import MultimodalPredictor

    df = wide_images(tmp_path, n=24, size=(48, 16))
    df["y"] = ["a", "b"] * 12
    df.to_csv(tmp_path / "t.csv", index=False)
    m = MultimodalPredictor(target="y", epochs=1, progress=False, log=None, batch_size=8, dim=8, head_hidden=8,
                            contribution=False, preprocessing={"image": {"size": [24, 8], "resize": "letterbox"}})
    m.fit(tmp_path / "t.csv")
    m.save(tmp_path / "b")
    m2 = MultimodalPredictor.load(tmp_path / "b")
    assert m2.predictor_.preprocessors["im"].item_spec()["image"][0] == (1, 8, 24)
    np.testing.assert_allclose(m2.predict_proba(tmp_path / "t.csv"), m.predict_proba(tmp_path / "t.csv"), atol=1e-6)
