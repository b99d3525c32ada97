"""Images: decode with Pillow, fix EXIF orientation, resize/crop to a square, normalize.

Decoded images are kept as ``uint8 [C, S, S]`` (what the cache stores); normalization and
the optional training augmentation (random crop, horizontal flip) run per batch in torch.
"""
from __future__ import annotations

import io
import warnings
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from ._base import (PREPROCESSORS, Preprocessor, ReadContext, bad, check_choice, check_number, is_missing, open_file_cell,
                    present_rows, read_for_fit, sample_rows)

_RESIZE = ("crop", "squash", "pad")
_AUGMENT = ("crop", "flip")


@PREPROCESSORS.register("image")
class ImagePreprocessor(Preprocessor):
    """Image cells (a path, raw bytes, or ``{"bytes": ..., "path": ...}``) to ``[C, S, S]``.

    Args:
        columns: One image column.
        size: Output side length S in pixels.
        channels: 1 (grayscale) or 3 (RGB); ``None`` infers it in ``fit`` (1 if every sampled
            training image is grayscale).
        resize: ``crop`` (scale the short side to S, center crop), ``squash`` (scale to SxS)
            or ``pad`` (scale the long side to S, pad with black).
        augment: Training-time augmentations: any of ``crop`` (pad 1/8 and random crop
            back, a random translation) and ``flip`` (horizontal, p=0.5).
        max_pixels: Larger images are refused (decompression bombs); Pillow's default.
        min_size: Images with a side under this many pixels are refused as broken.
    """

    modality = "image"
    _config_keys = ("size", "channels", "resize", "augment", "max_pixels", "min_size")

    def __init__(self, columns, size: int = 64, channels: int | None = None, resize: str = "crop",
                 augment=(), max_pixels: int = 89_478_485, min_size: int = 8):
        super().__init__(columns)
        self.size, self.channels, self.resize, self.augment = size, channels, resize, tuple(augment)
        self.max_pixels, self.min_size = max_pixels, min_size

    def _validate(self):
        name = type(self).__name__
        check_choice(name, "resize", self.resize, _RESIZE)
        for op in self.augment:
            check_choice(name, "each augment", op, _AUGMENT)
        check_choice(name, "channels", self.channels, (None, 1, 3))
        check_number(name, "size", self.size, 1)
        check_number(name, "min_size", self.min_size, 1)

    def fit(self, df: pd.DataFrame, ctx: ReadContext):
        self._validate()
        sample = sample_rows(present_rows(df[self.columns]), 64)
        if self.channels is None:
            modes = set(read_for_fit(sample, lambda cells, row: self._mode(cells[0], row, ctx)))
            self.channels = 1 if modes <= {"1", "L", "LA", "I", "I;16", "F"} else 3
        imgs = read_for_fit(sample, lambda cells, row: self.read(cells, row, ctx)["image"])
        x = np.stack(imgs).astype(np.float64) / 255.0  # (N, C, S, S)
        self.mean_ = x.mean(axis=(0, 2, 3)).astype(np.float32)
        self.std_ = np.maximum(x.std(axis=(0, 2, 3)), 1e-3).astype(np.float32)
        return super().fit(df, ctx)

    def _mode(self, v, row, ctx: ReadContext) -> str:
        im, _, _ = self._open(v, row, ctx)
        with im:
            return im.mode

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
            raise bad(row, col, f"is not a readable image ({type(e).__name__}: {e})", file, resolved) from None
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
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, S, S)
        return {"image": np.ascontiguousarray(a)}

    def _resize(self, im):
        from PIL import Image

        s, (w, h) = self.size, im.size
        if self.resize == "squash":
            return im.resize((s, s), Image.BILINEAR)
        if self.resize == "crop":
            k = s / min(w, h)
            im = im.resize((max(s, round(w * k)), max(s, round(h * k))), Image.BILINEAR)
            l, t = (im.size[0] - s) // 2, (im.size[1] - s) // 2
            return im.crop((l, t, l + s, t + s))
        k = s / max(w, h)
        im = im.resize((max(1, round(w * k)), max(1, round(h * k))), Image.BILINEAR)
        canvas = Image.new(im.mode, (s, s))
        canvas.paste(im, ((s - im.size[0]) // 2, (s - im.size[1]) // 2))
        return canvas

    def item_spec(self):
        return {"image": ((self.channels, self.size, self.size), np.dtype(np.uint8))}

    def batch(self, arrays, train=False, generator=None):
        x = arrays["image"].float().div_(255.0)  # (B, C, S, S)
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
    """Random translation (pad S/8, crop back) and horizontal flip, per sample. x: (B, C, S, S)."""
    B, _, S, _ = x.shape
    if "crop" in ops:
        p = max(1, S // 8)
        padded = torch.nn.functional.pad(x, (p, p, p, p), mode="replicate")
        off = torch.randint(0, 2 * p + 1, (B, 2), generator=generator)
        x = torch.stack([padded[i, :, o[0]:o[0] + S, o[1]:o[1] + S] for i, o in enumerate(off.tolist())])
    if "flip" in ops:
        flip = torch.rand(B, generator=generator) < 0.5
        x = torch.where(flip.view(B, 1, 1, 1), x.flip(-1), x)
    return x
