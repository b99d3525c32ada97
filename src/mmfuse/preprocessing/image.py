"""Images: decode with Pillow, fix EXIF orientation, resize/crop to ``size``, normalize.

Decoded images are kept as ``uint8 [C, H, W]`` (what the cache stores); normalization and
the optional training augmentation (random crop, horizontal flip) run per batch in torch.
"""
from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where it runs: reading and decoding work without it (mmfuse.onnx)
    import torch

from ..errors import MmfuseError
from ._base import (PREPROCESSORS, Preprocessor, ReadContext, bad, check_choice, check_number, is_missing, open_file_cell,
                    present_rows, read_for_fit, sample_rows)

RESIZE = ("crop", "squash", "pad", "letterbox")  # "letterbox" is another name for "pad"
_AUGMENT = ("crop", "flip")
# Warn when the training images' median aspect ratio and the output size's differ by more than this factor.
ASPECT_TOLERANCE = 1.5


def parse_image_size(value, where: str = "image size") -> int | tuple[int, int]:
    """An image size as an int (square) or a ``(width, height)`` pair.

    Accepts ``64``, ``"64"``, ``"128x32"`` (a command-line flag) and ``[128, 32]`` or
    ``(128, 32)`` (YAML/JSON or Python). ``where`` names the setting in the error.

    Raises:
        MmfuseError: for anything else, or a side under 1 pixel.
    """
    v = value
    if isinstance(v, str):
        parts = v.strip().lower().replace("×", "x").split("x")
        v = [int(p) if p.strip().isdigit() else p for p in parts]
        v = v[0] if len(v) == 1 else v
    if isinstance(v, (list, tuple)) and len(v) == 2:
        if all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v):
            return (v[0], v[1]) if v[0] != v[1] else v[0]
    elif isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return v
    raise MmfuseError(f"{where} must be a side in pixels (64) or WIDTHxHEIGHT (128x32, or [128, 32] in a "
                      f"config file); got {value!r}")


def _wh(size) -> tuple[int, int]:
    """``(width, height)`` of a size that :func:`parse_image_size` accepts."""
    size = parse_image_size(size)
    return (size, size) if isinstance(size, int) else size


def aspect_message(sizes, size, resize: str) -> str | None:
    """What resizing images of ``sizes`` (``(w, h)`` each) to ``size`` with ``resize`` loses, when
    their median aspect ratio is more than :data:`ASPECT_TOLERANCE` times off the size's; else None.

    With ratio factor r: ``crop`` keeps 1/r of each image, ``squash`` stretches it r-fold out of
    shape, ``pad``/``letterbox`` leave 1 - 1/r of the output as padding. The suggested size keeps
    the pixel count and matches the images' ratio (sides rounded to multiples of 8).
    """
    if not sizes:
        return None
    W, H = _wh(size)
    by_ratio = sorted(sizes, key=lambda s: s[0] / s[1])
    w0, h0 = by_ratio[len(by_ratio) // 2]
    a = float(np.median([w / h for w, h in sizes]))
    r = max(a / (W / H), (W / H) / a)
    if r <= ASPECT_TOLERANCE:
        return None
    sw, sh = (max(8, int(round(np.sqrt(W * H * k) / 8)) * 8) for k in (a, 1 / a))
    effect = {"crop": f"a center crop keeps {1 / r:.0%} of each {w0}x{h0} image",
              "squash": f"squashing stretches each {w0}x{h0} image {r:.1f}-fold out of shape"}.get(
        resize, f"{resize} leaves {1 - 1 / r:.0%} of each {W}x{H} image as padding")
    fix = ("" if resize in ("pad", "letterbox") else "resize='letterbox' (--image-resize letterbox) or ")
    return (f"the training images' median aspect ratio (width/height) is {a:.2f} (e.g. {w0}x{h0}) but size is "
            f"{W}x{H}: {effect}; use {fix}size=({sw}, {sh}) (--image-size {sw}x{sh})")


@PREPROCESSORS.register("image")
class ImagePreprocessor(Preprocessor):
    """Image cells (a path, raw bytes, or ``{"bytes": ..., "path": ...}``) to ``[C, H, W]``.

    Args:
        columns: One image column.
        size: Output size: a side S in pixels (S x S), or a ``(width, height)`` pair W x H
            (a list from YAML/JSON, or a ``"128x32"`` string, works too).
        channels: 1 (grayscale) or 3 (RGB); ``None`` infers it in ``fit`` (1 if every sampled
            training image is grayscale).
        resize: ``crop`` (scale to cover W x H, center crop: keeps the aspect ratio, loses the
            edges), ``squash`` (scale to W x H: distorts the aspect ratio) or ``pad`` / ``letterbox``
            (the same: scale to fit inside W x H, keeping the aspect ratio, and pad the rest with
            black, i.e. pixel value 0). ``fit`` warns when the training images' median aspect ratio
            is more than :data:`ASPECT_TOLERANCE` times off W/H, saying what the resize loses.
        augment: Training-time augmentations: any of ``crop`` (pad 1/8 and random crop
            back, a random translation) and ``flip`` (horizontal, p=0.5).
        max_pixels: Larger images are refused (decompression bombs); Pillow's default.
        min_size: Images with a side under this many pixels are refused as broken.
    """

    modality = "image"
    _config_keys = ("size", "channels", "resize", "augment", "max_pixels", "min_size")

    def __init__(self, columns, size: int | tuple[int, int] = 64, channels: int | None = None, resize: str = "crop",
                 augment=(), max_pixels: int = 89_478_485, min_size: int = 8):
        super().__init__(columns)
        self.size, self.channels, self.resize, self.augment = size, channels, resize, tuple(augment)
        self.max_pixels, self.min_size = max_pixels, min_size

    def _validate(self):
        name = type(self).__name__
        check_choice(name, "resize", self.resize, RESIZE)
        for op in self.augment:
            check_choice(name, "each augment", op, _AUGMENT)
        check_choice(name, "channels", self.channels, (None, 1, 3))
        parse_image_size(self.size, f"{name}: size")
        check_number(name, "min_size", self.min_size, 1)

    def fit(self, df: pd.DataFrame, ctx: ReadContext):
        self._validate()
        sample = sample_rows(present_rows(df[self.columns]), 64)
        probes = read_for_fit(sample, lambda cells, row: self._probe(cells[0], row, ctx))  # (mode, (w, h))
        if self.channels is None:
            modes = {m for m, _ in probes}
            self.channels = 1 if modes <= {"1", "L", "LA", "I", "I;16", "F"} else 3
        note = aspect_message([wh for _, wh in probes], self.size, self.resize)
        if note:
            warnings.warn(f"image column {self.columns[0]!r}: {note}", stacklevel=2)
        imgs = read_for_fit(sample, lambda cells, row: self.read(cells, row, ctx)["image"])
        x = np.stack(imgs).astype(np.float64) / 255.0  # (N, C, H, W)
        self.mean_ = x.mean(axis=(0, 2, 3)).astype(np.float32)
        self.std_ = np.maximum(x.std(axis=(0, 2, 3)), 1e-3).astype(np.float32)
        return super().fit(df, ctx)

    def _probe(self, v, row, ctx: ReadContext) -> tuple[str, tuple[int, int]]:
        """An image's mode and upright ``(width, height)``, from its header (not decoded)."""
        im, _, _ = self._open(v, row, ctx)
        with im:
            w, h = im.size
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
            return im.mode, ((h, w) if turned else (w, h))

    def aspect_warning(self, df: pd.DataFrame, ctx: ReadContext) -> str | None:
        """The warning ``fit`` gives about this column's aspect ratio (see :func:`aspect_message`),
        from a sample of ``df``'s images, without fitting; None when they fit ``size`` or none can be read."""
        sample = sample_rows(present_rows(df[self.columns]), 64)
        try:
            probes = read_for_fit(sample, lambda cells, row: self._probe(cells[0], row, ctx))
        except MmfuseError:
            return None
        note = aspect_message([wh for _, wh in probes], self.size, self.resize)
        return f"image column {self.columns[0]!r}: {note}" if note else None

    def _open(self, v, row, ctx: ReadContext):
        """Open (not decode) an image cell and check its size: ``(image, file, resolved)``."""
        from PIL import Image

        col = self.columns[0]
        file = resolved = None
        if isinstance(v, Mapping):
            v = v.get("bytes") or v.get("path")
        if isinstance(v, (bytes, bytearray, memoryview)):
            src = io.BytesIO(bytes(v))
        else:
            src = open_file_cell(v, ctx, col, row)
            file, resolved = str(v), str(src)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(src)
        except Image.DecompressionBombError as e:
            raise bad(row, col, f"is refused as a decompression bomb: {e}", file, resolved) from None
        except Exception as e:  # Pillow raises many types for a file it cannot identify
            why = type(e).__name__ if file is None else f"{type(e).__name__}: {e}"  # (bytes: no object repr)
            raise bad(row, col, f"is not a readable image ({why})", file, resolved) from None
        w, h = im.size
        if w * h > self.max_pixels:
            im.close()
            raise bad(row, col, f"is refused as a possible decompression bomb: {w}x{h} = {w * h} pixels > "
                                f"max_pixels={self.max_pixels}", file, resolved,
                      "raise max_pixels if the image is genuine")
        if min(w, h) < self.min_size:
            im.close()
            raise bad(row, col, f"is only {w}x{h} pixels, smaller than min_size={self.min_size}", file, resolved,
                      "lower min_size if such tiny images are genuine")
        return im, file, resolved

    def decode(self, v, row, ctx: ReadContext, mode: str):
        """A present image cell as a PIL image: opened, checked, decoded, turned upright by its
        EXIF orientation and converted to ``mode``. Any failure is an :class:`InputError`."""
        from PIL import Image, ImageOps

        im, file, resolved = self._open(v, row, ctx)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()
                return ImageOps.exif_transpose(im).convert(mode)
        except Exception as e:  # a truncated or corrupt file fails here, in many ways
            raise bad(row, self.columns[0], f"is a truncated or corrupt image ({type(e).__name__}: {e})",
                      file, resolved) from None

    def read(self, cells, row, ctx):
        (v,) = cells
        if is_missing(v):
            return None
        im = self._resize(self.decode(v, row, ctx, "L" if self.channels == 1 else "RGB"))
        a = np.asarray(im, dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)
        return {"image": np.ascontiguousarray(a)}

    def _resize(self, im):
        from PIL import Image

        (W, H), (w, h) = _wh(self.size), im.size
        if self.resize == "squash":
            return im.resize((W, H), Image.BILINEAR)
        if self.resize == "crop":  # scale to cover W x H, then cut the middle
            k = max(W / w, H / h)
            im = im.resize((max(W, round(w * k)), max(H, round(h * k))), Image.BILINEAR)
            l, t = (im.size[0] - W) // 2, (im.size[1] - H) // 2
            return im.crop((l, t, l + W, t + H))
        k = min(W / w, H / h)  # pad / letterbox: scale to fit inside W x H, center on black
        im = im.resize((max(1, min(W, round(w * k))), max(1, min(H, round(h * k)))), Image.BILINEAR)
        canvas = Image.new(im.mode, (W, H))
        canvas.paste(im, ((W - im.size[0]) // 2, (H - im.size[1]) // 2))
        return canvas

    def item_spec(self):
        W, H = _wh(self.size)
        return {"image": ((self.channels, H, W), np.dtype(np.uint8))}

    def batch(self, arrays, train=False, generator=None):
        import torch

        x = arrays["image"].float().div_(255.0)  # (B, C, H, W)
        if train and self.augment:
            x = augment_images(x, self.augment, generator)
        mean = torch.as_tensor(self.mean_).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std_).view(1, -1, 1, 1)
        return (x - mean) / std

    def extra_state(self):
        return {}, {"mean": self.mean_, "std": self.std_}

    def load_extra_state(self, meta, arrays):
        self.mean_, self.std_ = arrays["mean"], arrays["std"]


def augment_images(x: torch.Tensor, ops, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation (pad min(H, W)/8, crop back) and horizontal flip, per sample. x: (B, C, H, W)."""
    import torch

    B, _, H, W = x.shape
    if "crop" in ops:
        p = max(1, min(H, W) // 8)
        padded = torch.nn.functional.pad(x, (p, p, p, p), mode="replicate")
        off = torch.randint(0, 2 * p + 1, (B, 2), generator=generator)
        x = torch.stack([padded[i, :, o[0]:o[0] + H, o[1]:o[1] + W] for i, o in enumerate(off.tolist())])
    if "flip" in ops:
        flip = torch.rand(B, generator=generator) < 0.5
        x = torch.where(flip.view(B, 1, 1, 1), x.flip(-1), x)
    return x
