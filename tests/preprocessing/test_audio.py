import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from mmfuse.errors import InputError, MmfuseError
from mmfuse.preprocessing import AudioPreprocessor, LogMel, ReadContext, load_preprocessors, save_preprocessors
from mmfuse.preprocessing.audio import hz_to_mel, mel_filterbank, mel_to_hz


def test_mel_scale_by_hand():
    # HTK: 2595 * log10(1 + 1000 / 700) = 2595 * 0.3767507 = 999.99
    assert hz_to_mel(1000) == pytest.approx(999.99, abs=0.01)
    assert mel_to_hz(hz_to_mel(440)) == pytest.approx(440)


def test_filterbank_single_triangle_by_hand():
    # sr 8, n_fft 8 -> bins at 0..4 Hz; one filter from 0 to 4 Hz peaking at mel midpoint 1.9986 Hz
    fb = mel_filterbank(n_fft=8, n_mels=1, sample_rate=8)
    c = 1.9986
    expected = [0.0, 1 / c, min(2 / c, 2 / (4 - c)), 1 / (4 - c), 0.0]
    assert fb.shape == (1, 5)
    assert fb[0].tolist() == pytest.approx(expected, abs=1e-3)


def test_logmel_peaks_at_the_tone_band():
    sr = 8000
    t = np.arange(sr) / sr
    wav = np.sin(2 * np.pi * 1000 * t)[None]  # (1, 8000)
    lm = LogMel(sr, n_fft=256, hop_length=80, n_mels=40)
    m = lm(wav)  # (1, 40, 101)
    assert m.shape == (1, 40, 101)
    band = int(m[0, :, 50].argmax())
    pts = mel_to_hz(np.linspace(0, hz_to_mel(sr / 2), 42))
    assert pts[band] < 1000 < pts[band + 2]


def write(path, data, sr, **kw):
    sf.write(path, data, sr, **kw)
    return path.name


@pytest.fixture
def prep(tmp_path):
    write(tmp_path / "fit.wav", np.zeros(800, np.float32), 8000)
    return AudioPreprocessor(["a"], sample_rate=16000, duration=0.5, n_mels=16).fit(
        pd.DataFrame({"a": ["fit.wav"]}), ReadContext(tmp_path))


def test_mono_mixdown_resample_and_pad(tmp_path, prep):
    ctx = ReadContext(tmp_path)
    stereo = np.stack([np.full(2000, 0.5), np.full(2000, 0.25)], 1).astype(np.float32)  # 0.25 s at 8 kHz
    name = write(tmp_path / "s.wav", stereo, 8000, subtype="FLOAT")
    w = prep.read([name], 0, ctx)["wave"]
    assert w.shape == (8000,)  # 0.5 s at 16 kHz
    assert w[1000:3000] == pytest.approx(np.full(2000, 0.375), abs=1e-3)  # mean of channels, upsampled x2
    assert np.abs(w[4100:]).max() < 1e-6  # zero padding after 0.25 s
    long = write(tmp_path / "l.wav", np.ones(16000, np.float32), 16000, subtype="FLOAT")
    assert prep.read([long], 0, ctx)["wave"].shape == (8000,)


@pytest.mark.parametrize("fmt,ext", [("FLAC", "flac"), ("OGG", "ogg")])
def test_flac_and_ogg(tmp_path, prep, fmt, ext):
    t = np.arange(16000) / 16000
    name = write(tmp_path / f"x.{ext}", (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000, format=fmt)
    w = prep.read([name], 0, ReadContext(tmp_path))["wave"]
    assert w.shape == (8000,) and 0.3 < np.abs(w).max() < 0.7


def test_batch_gives_normalized_logmel(prep):
    feats = prep.featurize({"wave": np.zeros((3, prep.length), np.float32)})
    assert feats["logmel"].shape == (3, 16, prep.n_frames)
    x = prep.batch({"logmel": torch.from_numpy(feats["logmel"])})
    assert x.shape == (3, 16, prep.n_frames) and torch.isfinite(x).all()
    # normalization by the training statistics: (m - mean) / std per band
    expected = (torch.from_numpy(feats["logmel"]) - torch.from_numpy(prep.mean_)[:, None]) / torch.from_numpy(prep.std_)[:, None]
    assert torch.allclose(x, expected)


@pytest.mark.parametrize("case,match", [
    ("missing", r"row 9, column 'a': file 'bad.wav' does not exist"),
    ("empty", r"file 'bad.wav' is empty \(0 bytes\)"),
    ("truncated", r"is a truncated WAV: its header declares 16000 bytes of audio but only 7956 are present"),
    ("unsupported", r"is not a readable audio file \(Format not recognised\.?\) \(resolved.*re-encode the file as WAV or FLAC"),
])
def test_bad_audio(tmp_path, prep, case, match):
    f = tmp_path / "bad.wav"
    if case == "empty":
        f.write_bytes(b"")
    elif case == "truncated":
        sf.write(f, np.zeros(8000, np.float32), 8000, subtype="PCM_16")
        f.write_bytes(f.read_bytes()[:8000])
    elif case == "unsupported":
        f.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))  # an AAC/M4A container
    with pytest.raises(InputError, match=match):
        prep.read(["bad.wav"], 9, ReadContext(tmp_path))


def test_state_round_trip(tmp_path, prep):
    save_preprocessors({"a": prep}, tmp_path / "s")
    q = load_preprocessors(tmp_path / "s")["a"]
    assert q.config() == prep.config() and (q.mean_ == prep.mean_).all()
    w = {"wave": np.random.default_rng(0).standard_normal((2, prep.length)).astype(np.float32)}
    fa, fb = prep.featurize(w), q.featurize(w)
    assert np.array_equal(fa["logmel"], fb["logmel"])
    x = torch.from_numpy(fa["logmel"])
    assert torch.equal(q.batch({"logmel": x}), prep.batch({"logmel": x}))


@pytest.mark.parametrize("orig,new", [(8000, 16000), (44100, 16000), (16000, 8000)])
def test_resample_keeps_a_tone_and_gives_the_right_length(orig, new):
    from mmfuse.preprocessing.audio import resample

    f = 440.0
    x = np.sin(2 * np.pi * f * np.arange(orig) / orig)  # 1 s
    y = resample(x, orig, new)
    assert len(y) == new
    expected = np.sin(2 * np.pi * f * np.arange(new) / new)
    assert np.abs(y[200:-200] - expected[200:-200]).max() < 0.01  # away from the edges


def test_fit_that_reads_no_audio_fails_naming_column_and_reasons(tmp_path):
    (tmp_path / "b.wav").write_bytes(b"RIFF" + bytes(100))
    df = pd.DataFrame({"a": ["a.wav", "", "b.wav"]})
    with pytest.raises(MmfuseError, match=r"^no value of column 'a' could be read while fitting \(2 tried; does not "
                                          r"exist: 1, is not a readable audio file .*: 1\)\. "
                                          r"First failure: row 0, column 'a': file 'a.wav' does not exist"):
        AudioPreprocessor(["a"]).fit(df, ReadContext(tmp_path))  # not the old fallback: mean 0, std 1
