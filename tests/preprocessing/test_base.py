"""The shared parts of preprocessing: opening file cells, reading for fit, checking settings."""
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from mmfuse.errors import InputError, MmfuseError
from mmfuse.preprocessing import (AudioPreprocessor, ImagePreprocessor, ReadContext, TextPreprocessor,
                                  TimeseriesPreprocessor)
from mmfuse.preprocessing._base import read_for_fit


def fitted_file_preprocessors(tmp_path):
    """An image, an audio and a time-series preprocessor, each fit on one good file."""
    Image.new("L", (16, 16), 51).save(tmp_path / "ok.png")
    sf.write(tmp_path / "ok.wav", np.zeros(800, np.float32), 8000)
    np.save(tmp_path / "ok.npy", np.arange(4.0))
    ctx = ReadContext(tmp_path)
    return {"png": ImagePreprocessor(["c"], size=8).fit(pd.DataFrame({"c": ["ok.png"]}), ctx),
            "wav": AudioPreprocessor(["c"], sample_rate=8000, duration=0.1, n_mels=8).fit(
                pd.DataFrame({"c": ["ok.wav"]}), ctx),
            "npy": TimeseriesPreprocessor(["c"], length=4).fit(pd.DataFrame({"c": ["ok.npy"]}), ctx)}


@pytest.mark.parametrize("case,match", [
    ("folder", r"row 3, column 'c': file 'thing\.(png|wav|npy)' is a folder, not a file \(resolved to .*\)\. "
               r"Fix the path"),
    ("absent", r"row 3, column 'c': file 'thing\.(png|wav|npy)' does not exist \(resolved to .*\)\. Fix the path"),
    ("empty", r"row 3, column 'c': file 'thing\.(png|wav|npy)' is empty \(0 bytes\)"),
    ("outside", r"row 3, column 'c': file '\.\./thing\.(png|wav|npy)' is outside the data root"),
    ("nul", r"row 3, column 'c': file 'thing\.(png|wav|npy)\\x00' cannot be opened \(ValueError: embedded null byte\)"),
])
def test_every_file_input_opens_its_cells_the_same_way(tmp_path, case, match):
    (tmp_path / "data").mkdir()
    preps = fitted_file_preprocessors(tmp_path / "data")
    ctx = ReadContext(tmp_path / "data")
    for ext, p in preps.items():
        cell = {"outside": f"../thing.{ext}", "nul": f"thing.{ext}\x00"}.get(case, f"thing.{ext}")
        if case == "folder":
            (tmp_path / "data" / cell).mkdir()
        elif case == "empty":
            (tmp_path / "data" / cell).write_bytes(b"")
        elif case == "outside":
            (tmp_path / f"thing.{ext}").write_bytes((tmp_path / "data" / f"ok.{ext}").read_bytes())
        with pytest.raises(InputError, match=match):
            p.read([cell], 3, ctx)


def test_read_for_fit_passes_over_bad_rows_and_fails_when_nothing_is_read():
    def read(cells, row):
        if cells[0] == "bad":
            raise InputError(row, "c", "is bad", hint="fix it")
        return cells[0]

    df = pd.DataFrame({"c": [None, "bad", "good", "", "also good"]}, index=[10, 11, 12, 13, 14])
    assert read_for_fit(df, read) == ["good", "also good"]  # missing cells are not read at all
    assert read_for_fit(df, read, limit=1) == ["good"]
    with pytest.raises(MmfuseError, match=r"^no value of column 'c' could be read while fitting "
                                          r"\(2 tried; is bad: 2\)\. First failure: row 10, column 'c': is bad\. "
                                          r"fix it$"):
        read_for_fit(pd.DataFrame({"c": [None, "bad", "bad"]}, index=[11, 10, 12]), read)
    with pytest.raises(MmfuseError, match=r"^no value of column 'c' could be read while fitting: all 2 training rows "
                                          r"are missing; give it values, or set its role to ignore$"):
        read_for_fit(pd.DataFrame({"c": [None, " "]}), read)


@pytest.mark.parametrize("make,match", [
    (lambda: ImagePreprocessor(["c"], resize="zoom"), r"ImagePreprocessor: resize must be one of 'crop', 'squash', "
                                                      r"'pad', 'letterbox'; got 'zoom'"),
    (lambda: ImagePreprocessor(["c"], augment=("flip", "blur")), r"ImagePreprocessor: each augment must be one of "
                                                                 r"'crop', 'flip'; got 'blur'"),
    (lambda: ImagePreprocessor(["c"], channels=2), r"ImagePreprocessor: channels must be one of None, 1, 3; got 2"),
    (lambda: AudioPreprocessor(["c"], crop="end"), r"AudioPreprocessor: crop must be one of 'start', 'center'; "
                                                   r"got 'end'"),
    (lambda: TimeseriesPreprocessor(["c"], mode="stretch"), r"TimeseriesPreprocessor: mode must be one of 'pad', "
                                                            r"'resample'; got 'stretch'"),
    (lambda: TimeseriesPreprocessor(["c"], nan="drop"), r"TimeseriesPreprocessor: nan must be one of 'interpolate', "
                                                        r"'raise'; got 'drop'"),
])
def test_bad_settings_are_mmfuse_errors_naming_owner_setting_allowed_and_received(make, match):
    with pytest.raises(MmfuseError, match=match):
        make().fit(pd.DataFrame({"c": ["x.png"]}), ReadContext(__import__("pathlib").Path(".")))


@pytest.mark.parametrize("make, message", [
    (lambda: ImagePreprocessor(["c"], size=0), r"size must be a side in pixels \(64\) or WIDTHxHEIGHT .*; got 0"),
    (lambda: AudioPreprocessor(["c"], duration=-1), "duration must be a number > 0; got -1"),
    (lambda: TimeseriesPreprocessor(["c"], length=0), "length must be an integer >= 1"),
    (lambda: TextPreprocessor(["c"], max_length=0), "max_length must be an integer >= 1"),
])
def test_number_settings_of_preprocessors_are_checked_before_reading(make, message, tmp_path):
    with pytest.raises(MmfuseError, match=message):
        make().fit(pd.DataFrame({"c": ["x"]}), ReadContext(tmp_path))
