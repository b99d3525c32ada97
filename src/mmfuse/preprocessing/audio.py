"""Audio: decode with soundfile, mix to mono, resample, pad/crop, then a batched log-mel.

Decoded waveforms (``float32 [L]``) are what the cache stores; the log-mel spectrogram is
computed for a whole batch at once with numpy's real FFT. Nothing here needs torch, so an
exported model (:mod:`mmfuse.onnx`) reads audio without it; only :meth:`AudioPreprocessor.batch`
(normalization, inside the model graph) does.
"""
from __future__ import annotations

import io
import math
import struct

import numpy as np
import scipy.fft
import pandas as pd

from ._base import (PREPROCESSORS, Preprocessor, ReadContext, bad, check_choice, check_number, is_missing, open_file_cell,
                    present_rows, read_for_fit, sample_rows)

_FORMATS = ("WAV", "FLAC", "OGG", "MP3", "AIFF", "AU", "WAVEX", "W64", "RF64", "CAF")


def hz_to_mel(f):
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None):
    """Triangular HTK mel filters, ``(n_mels, n_fft // 2 + 1)``, each peaking at 1 on its center.

    Filter m rises linearly from mel point m to m+1 and falls to m+2, where the n_mels + 2
    points are evenly spaced on the mel scale between f_min and f_max.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
    return np.clip(np.minimum(up, down), 0, None).astype(np.float32)


def resample(wave: np.ndarray, orig_sr: int, new_sr: int, taps: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """Band-limited polyphase resampling with a Hann-windowed sinc (as in torchaudio and libsamplerate).

    With ``g = gcd(orig, new)``, ``o = orig / g``, ``n = new / g``, each of the n output phases
    is a sinc low-pass at ``min(o, n) * rolloff`` (relative to the slower rate), ``taps`` zero
    crossings wide, applied with stride o. Output length: ``ceil(len * new / orig)``.
    """
    g = math.gcd(int(orig_sr), int(new_sr))
    o, n = int(orig_sr) // g, int(new_sr) // g
    base = min(o, n) * rolloff
    width = math.ceil(taps * o / base)
    idx = np.arange(-width, width + o, dtype=np.float64)[None] / o  # (1, K)
    t = (np.arange(0, -n, -1, dtype=np.float64)[:, None] / n + idx) * base  # (n, K)
    t = np.clip(t, -taps, taps)
    window = np.cos(t * math.pi / taps / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t) * window * (base / o)  # (n, K): one filter per output phase
    x = np.pad(np.asarray(wave, np.float64), (width, width + o))
    frames = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[1])[::o]  # (frames, K), stride o
    y = (frames @ kernel.T).reshape(-1)  # (frames, n) -> frame-major: output sample f * n + phase
    return y[: math.ceil(n * len(wave) / o)].astype(np.float32)


class LogMel:
    """Batched log-mel spectrogram: ``(B, L)`` waveform -> ``(B, n_mels, T)``, in numpy.

    ``log(mel @ |STFT|^2 + eps)`` with a periodic Hann window and centered frames (the signal
    reflect-padded by ``n_fft // 2`` on both sides; T = L // hop + 1), as ``torch.stft`` with
    ``center=True`` computes it. Rows are transformed ``chunk`` at a time to bound memory.
    """

    chunk = 256

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, eps: float = 1e-6):
        self.n_fft, self.hop_length, self.eps = n_fft, hop_length, eps
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        self.fb = mel_filterbank(n_fft, n_mels, sample_rate)  # (n_mels, n_fft // 2 + 1)

    def __call__(self, wav) -> np.ndarray:
        wav = np.asarray(wav, dtype=np.float32)
        out = [self._chunk(wav[i:i + self.chunk]) for i in range(0, len(wav), self.chunk)]
        return np.concatenate(out) if out else np.zeros((0, self.fb.shape[0], 0), np.float32)

    def _chunk(self, wav: np.ndarray) -> np.ndarray:
        half = self.n_fft // 2
        x = np.pad(wav, ((0, 0), (half, half)), mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft, axis=1)[:, ::self.hop_length]  # (b, T, n_fft)
        spec = scipy.fft.rfft(frames * self.window, axis=-1)  # (b, T, F), complex64
        power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
        return np.log(np.matmul(self.fb, power.transpose(0, 2, 1)) + np.float32(self.eps))  # (b, n_mels, T)


@PREPROCESSORS.register("audio")
class AudioPreprocessor(Preprocessor):
    """Audio cells (a path or raw bytes) to a fixed-length mono waveform, then log-mel per batch.

    Args:
        columns: One audio column.
        sample_rate: Target rate in Hz; files are resampled (polyphase) to it.
        duration: Seconds kept: shorter clips are zero-padded at the end, longer ones cropped
            (``crop="start"`` keeps the beginning, ``"center"`` the middle).
        n_mels: Mel bands.
        win_ms, hop_ms: STFT window and hop in milliseconds (n_fft is the window rounded up
            to a power of two).
    """

    modality = "audio"
    _config_keys = ("sample_rate", "duration", "n_mels", "win_ms", "hop_ms", "crop")

    def __init__(self, columns, sample_rate: int = 16000, duration: float = 1.0, n_mels: int = 64,
                 win_ms: float = 25.0, hop_ms: float = 10.0, crop: str = "start"):
        super().__init__(columns)
        self.sample_rate, self.duration, self.n_mels = sample_rate, duration, n_mels
        self.win_ms, self.hop_ms, self.crop = win_ms, hop_ms, crop
        self._logmel = None

    @property
    def length(self) -> int:
        return int(round(self.sample_rate * self.duration))

    @property
    def n_fft(self) -> int:
        return 1 << math.ceil(math.log2(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return max(1, int(round(self.sample_rate * self.hop_ms / 1000)))

    @property
    def n_frames(self) -> int:
        return self.length // self.hop_length + 1

    def logmel(self) -> LogMel:
        if self._logmel is None:
            self._logmel = LogMel(self.sample_rate, self.n_fft, self.hop_length, self.n_mels)
        return self._logmel

    def fit(self, df: pd.DataFrame, ctx: ReadContext):
        name = type(self).__name__
        check_choice(name, "crop", self.crop, ("start", "center"))
        check_number(name, "sample_rate", self.sample_rate, 1)
        check_number(name, "n_mels", self.n_mels, 1)
        for what in ("duration", "win_ms", "hop_ms"):
            check_number(name, what, getattr(self, what), 0, integer=False, low_open=True)
        sample = sample_rows(present_rows(df[self.columns]), 128)
        waves = read_for_fit(sample, lambda cells, row: self.read(cells, row, ctx)["wave"])
        m = self.logmel()(np.stack(waves)).astype(np.float64)  # (N, n_mels, T)
        self.mean_ = m.mean(axis=(0, 2)).astype(np.float32)
        self.std_ = np.maximum(m.transpose(1, 0, 2).reshape(m.shape[1], -1).std(axis=1, ddof=1), 1e-3).astype(np.float32)
        return super().fit(df, ctx)

    def read(self, cells, row, ctx):
        import soundfile as sf

        (v,) = cells
        if is_missing(v):
            return None
        col, file, resolved = self.columns[0], None, None
        if isinstance(v, (bytes, bytearray, memoryview)):
            raw = bytes(v)
        else:
            path = open_file_cell(v, ctx, col, row)
            file, resolved = str(v), str(path)
            try:
                raw = path.read_bytes()
            except OSError as e:
                raise bad(row, col, f"cannot be read ({type(e).__name__}: {e})", file, resolved) from None
        _check_wav_complete(raw, row, col, file, resolved)
        try:
            data, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)  # (N, channels)
        except Exception as e:  # libsndfile's errors for unknown or broken formats
            import re

            why = re.sub(r"Error opening <[^>]*>: ", "", " ".join(str(e).split())).strip("() ")
            raise bad(row, col, f"is not a readable audio file ({why})", file, resolved,
                      f"supported formats: {', '.join(_FORMATS)}; re-encode the file as WAV or FLAC") from None
        if data.shape[0] == 0:
            raise bad(row, col, "holds no audio samples", file, resolved)
        if not np.isfinite(data).all():
            raise bad(row, col, "holds NaN or infinite samples", file, resolved)
        wave = data.mean(axis=1)  # mono
        if sr != self.sample_rate:
            wave = resample(wave, sr, self.sample_rate)
        L = self.length
        if len(wave) >= L:
            start = 0 if self.crop == "start" else (len(wave) - L) // 2
            wave = wave[start:start + L]
        else:
            wave = np.pad(wave, (0, L - len(wave)))
        return {"wave": np.ascontiguousarray(wave, dtype=np.float32)}

    def read_spec(self):
        return {"wave": ((self.length,), np.dtype(np.float32))}

    def item_spec(self):
        return {"logmel": ((self.n_mels, self.n_frames), np.dtype(np.float32))}

    def featurize(self, arrays):
        """Batched log-mel of freshly decoded waveforms; this, not the waveform, is cached."""
        return {"logmel": self.logmel()(arrays["wave"])}  # (b, n_mels, T)

    def batch(self, arrays, train=False, generator=None):
        import torch

        m = arrays["logmel"]  # (B, n_mels, T)
        return (m - torch.as_tensor(self.mean_)[:, None]) / torch.as_tensor(self.std_)[:, None]

    def extra_state(self):
        return {}, {"mean": self.mean_, "std": self.std_}

    def load_extra_state(self, meta, arrays):
        self.mean_, self.std_ = arrays["mean"], arrays["std"]

    def __getstate__(self):  # the LogMel module is rebuilt lazily in each worker
        d = dict(self.__dict__)
        d["_logmel"] = None
        return d


def _check_wav_complete(raw: bytes, row, col, file, resolved) -> None:
    """libsndfile reads a WAV cut short without complaint; compare the data chunk's declared size."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        if cid == b"data":
            have = len(raw) - pos - 8
            if size not in (0, 0xFFFFFFFF) and have < size:
                raise bad(row, col, f"is a truncated WAV: its header declares {size} bytes of audio but only "
                                    f"{have} are present", file, resolved, "re-export or re-download the file")
            return
        pos += 8 + size + (size & 1)
