"""A generated multimodal Parquet table of any size: images as PNG bytes, a text, numbers and a category.

Used by the streaming benchmark (tables larger than memory, :mod:`mmfuse.streaming`) and its tests.
Each row's class (``label``, 3 classes) shows in every input, each alone weakly: a bright square at a
position set by the class in an image of noise, class words among random words, a number whose mean
is the class, and a category that follows the class in 60% of the rows. The noise pixels make the PNG
bytes incompressible, so the file's size is the images' size (``image_size`` ** 2 * 3 bytes a row).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

__all__ = ["write_synthetic_parquet"]

_WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta"]
_CLASS_WORDS = [["red", "warm"], ["green", "calm"], ["blue", "cold"]]


def write_synthetic_parquet(path, rows: int, image_size: int = 64, row_group_size: int = 500, seed: int = 0,
                            files: int = 1, split: bool = False) -> dict:
    """Write ``rows`` rows into ``files`` Parquet files under the folder ``path`` (``part-00000.parquet``, ...),
    with row groups of ``row_group_size`` rows. Columns: ``id`` (unique text), ``image`` (PNG bytes), ``text``,
    ``x`` (a number), ``shop`` (a category), ``label`` (the class) and, with ``split``, ``split``
    (train 80% / val 10% / test 10%, by row). Returns ``{"rows", "bytes", "files"}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    written, paths = 0, []
    for f in range(files):
        n_file = min(per_file, rows - written)
        if n_file <= 0:
            break
        out = path / f"part-{f:05d}.parquet"
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        writer = None
        try:
            for start in range(0, n_file, row_group_size):
                n = min(row_group_size, n_file - start)
                first = written + start
                rng = np.random.default_rng([seed, first])
                y = rng.integers(0, 3, n)
                images = []
                for k in range(n):
                    a = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                    s = image_size // 4
                    o = y[k] * s + s // 2
                    a[o:o + s, o:o + s] = np.minimum(a[o:o + s, o:o + s], 239) + 16  # the class's square, faintly brighter
                    buf = io.BytesIO()
                    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
                    images.append(buf.getvalue())
                text = [" ".join(list(rng.choice(_WORDS, 4)) + ([rng.choice(_CLASS_WORDS[c])] if rng.random() < 0.5
                                                                 else [])) for c in y]
                cols = {"id": [f"r{first + k:09d}" for k in range(n)], "image": pa.array(images, pa.binary()),
                        "text": text, "x": (y + rng.normal(0, 1.5, n)).round(4),
                        "shop": [f"s{c}" if rng.random() < 0.6 else f"s{rng.integers(0, 3)}" for c in y],
                        "label": [f"c{c}" for c in y]}
                if split:
                    u = (np.arange(first, first + n) * 2654435761 % 100)
                    cols["split"] = np.where(u < 10, "test", np.where(u < 20, "val", "train"))
                table = pa.table(cols)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="snappy")
                writer.write_table(table, row_group_size=row_group_size)
            writer.close()
            os.replace(tmp, out)
        except BaseException:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
            raise
        written += n_file
        paths.append(out)
    return {"rows": written, "bytes": sum(p.stat().st_size for p in paths), "files": [str(p) for p in paths]}
