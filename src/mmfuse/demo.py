"""The offline demo: a multimodal table built from material that ships with the dependencies.

Each of the 1,797 rows of scikit-learn's bundled handwritten digits becomes a row with five
inputs, each of which carries only part of the answer (the digit 0-9):

- ``photo`` (image): the 8x8 digit, upscaled, with noise and a random quarter blacked out;
- ``voice`` (audio): a 0.25 s tone whose pitch encodes ``digit mod 5`` (one of five), in noise,
  and with a wrong pitch in 15% of rows;
- ``note`` (text): a sentence saying whether the digit is even or odd, wrong in 15% of rows,
  amid filler words;
- ``size``/``batch`` (numbers, categories): ``size`` is noisy evidence of ``digit >= 5``;
  ``batch`` is pure noise;
- ``motion`` (time series): 2 channels whose frequency encodes ``digit mod 3``, in noise.

No single input determines the digit; together they do (``mod 5`` and ``>= 5`` alone would).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["make_demo_table", "run_demo", "DEMO_MODEL", "DEMO_PREPROCESSING"]

FILLER = ["honestly", "we", "think", "that", "this", "one", "probably", "maybe", "it", "really", "quite", "looks"]


def make_demo_table(folder: str | Path, seed: int = 0) -> Path:
    """Write ``demo.csv`` and its image, audio and time-series files into ``folder``; returns the CSV path."""
    import soundfile as sf
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = Path(folder)
    out = folder / "demo.csv"
    if out.exists():
        return out
    for sub in ("photos", "voices", "motion"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    sr, dur = 8000, 0.25
    t = np.arange(int(sr * dur)) / sr
    rows = []
    for i, (img, y) in enumerate(zip(digits.images, digits.target)):
        y = int(y)
        a = img / 16.0 + rng.normal(0, 0.35, img.shape)  # (8, 8), noisy
        q = rng.integers(4)
        r0, c0 = (q // 2) * 4, (q % 2) * 4
        a[r0:r0 + 4, c0:c0 + 4] = 0  # a quarter is blacked out
        a = np.clip(a, 0, 1)
        Image.fromarray((a * 255).astype(np.uint8)).resize((16, 16), Image.NEAREST).save(folder / f"photos/{i}.png")
        k = y % 5 if rng.random() > 0.15 else int(rng.integers(5))
        tone = 0.4 * np.sin(2 * np.pi * (400 + 300 * k) * t + rng.uniform(0, 6.28)) + rng.normal(0, 0.3, len(t))
        sf.write(folder / f"voices/{i}.wav", tone.astype(np.float32), sr)
        parity = y % 2 if rng.random() > 0.15 else 1 - y % 2
        words = list(rng.choice(FILLER, 5)) + ["odd" if parity else "even"]
        rng.shuffle(words)
        m = y % 3
        steps = np.arange(48)
        series = np.stack([np.sin(2 * np.pi * (m + 1) * steps / 24 + rng.uniform(0, 6.28)),
                           np.cos(2 * np.pi * (m + 1) * steps / 24)], 1) + rng.normal(0, 0.8, (48, 2))
        pd.DataFrame(series, columns=["ax", "ay"]).to_csv(folder / f"motion/{i}.csv", index=False, float_format="%.4f")
        rows.append({"photo": f"photos/{i}.png", "voice": f"voices/{i}.wav", "note": " ".join(words),
                     "motion": f"motion/{i}.csv", "size": round(float((y >= 5) + rng.normal(0, 0.45)), 3),
                     "batch": f"b{rng.integers(4)}", "digit": y})
    df = pd.DataFrame(rows)
    df.to_csv(out, index=False)
    return out


DEMO_PREPROCESSING = {"image": {"size": 16}, "audio": {"sample_rate": 8000, "duration": 0.25, "n_mels": 32},
                      "timeseries": {"length": 48}, "text": {"min_freq": 1, "max_length": 8}}
DEMO_MODEL = {"dim": 64, "head_hidden": 64,
              "encoders": {"image": {"widths": [16, 32]}, "audio": {"widths": [16, 32]},
                           "text": {"embed_dim": 32, "hidden": 32}, "timeseries": {"widths": [32, 32]}}}


def run_demo(out: str | Path = "runs/demo", epochs: int = 8, fusions=None, seed: int = 0, progress: bool = False,
             echo=print) -> list[dict]:
    """Train one model per single input and one per fusion strategy; write ``comparison.json``.

    Returns the comparison rows: model, inputs, fusion, accuracy, macro_f1, train_seconds.
    """
    from .api import MultimodalPredictor
    from .fusion import list_fusions
    from .io import read_table
    from .schema import infer_schema

    from .config import ModelConfig, TrainConfig

    for f in fusions or []:
        ModelConfig(fusion=f)  # an unknown fusion fails now, not after the single-input models
    TrainConfig(epochs=epochs, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table_path = make_demo_table(out / "data", seed=seed)
    echo(f"demo data: {table_path} ({time.perf_counter() - t0:.1f} s)")
    inputs = [s.name for s in infer_schema(read_table(table_path), target="digit").inputs()]
    common = dict(target="digit", preprocessing=DEMO_PREPROCESSING, **DEMO_MODEL, epochs=epochs, batch_size=64,
                  lr=3e-3, patience=4, seed=seed, progress=progress, val_fraction=0.15, test_fraction=0.2,
                  log="csv", cache=str(out / "cache"))
    runs = [(f"only {n}", [n], "concat") for n in inputs]
    runs += [(f"fusion {f}", None, f) for f in (fusions or list_fusions())]
    rows = []
    for name, only, fusion in runs:
        slug = name.replace(" ", "_")
        kw = dict(common)
        if fusion == "tensor":
            kw["fusion_kwargs"] = {"rank_dim": 6}
        m = MultimodalPredictor(fusion=fusion, inputs=only, out=out / "models" / slug, contribution=only is None, **kw)
        m.fit(table_path)
        test = m.metrics_["test"]
        row = {"model": name, "inputs": sorted(m.metrics_["inputs"]), "fusion": fusion if only is None else "none",
               "accuracy": round(test["accuracy"], 4), "macro_f1": round(test["macro_f1"], 4),
               "train_seconds": round(m.metrics_["train_seconds"], 1), "best_epoch": m.metrics_["best_epoch"]}
        rows.append(row)
        echo(f"  {name:24s} accuracy {row['accuracy']:.3f}  macro-F1 {row['macro_f1']:.3f}  "
             f"{row['train_seconds']:5.1f} s")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    return rows
