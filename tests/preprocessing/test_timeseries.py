import math

import numpy as np
import pandas as pd
import pytest

from mmfuse.errors import InputError, MmfuseError
from mmfuse.preprocessing import ReadContext, TimeseriesPreprocessor, load_preprocessors, save_preprocessors
from mmfuse.preprocessing.timeseries import interpolate_nans


def ctx(tmp_path=None):
    from pathlib import Path

    return ReadContext(Path(tmp_path or "."))


def test_list_cells_pad_and_standardize_by_hand():
    p = TimeseriesPreprocessor(["s"], length=5).fit(pd.DataFrame({"s": [[1.0, 2.0, 3.0]]}), ctx())
    s = math.sqrt(2 / 3)  # mean 2, population std
    assert p.read([[1.0, 2.0, 3.0]], 0, ctx())["series"][0].tolist() == pytest.approx([-1 / s, 0, 1 / s, 0, 0], rel=1e-6)
    assert p.read([None], 0, ctx()) is None


def test_resample_linearly():
    p = TimeseriesPreprocessor(["s"], length=3, mode="resample").fit(pd.DataFrame({"s": [[0.0, 10.0]]}), ctx())
    # fit: resampled [0, 5, 10] -> mean 5, std sqrt(50/3)
    z = p.read([[0.0, 10.0]], 0, ctx())["series"][0]
    assert z * math.sqrt(50 / 3) + 5 == pytest.approx([0, 5, 10], abs=1e-5)


def test_nan_interpolation_by_hand_and_raise_mode():
    assert interpolate_nans(np.array([[1.0], [np.nan], [3.0], [np.nan]]))[:, 0].tolist() == [1, 2, 3, 3]
    p = TimeseriesPreprocessor(["s"], length=3, nan="raise").fit(pd.DataFrame({"s": [[1.0, 2.0, 3.0]]}), ctx())
    with pytest.raises(InputError, match=r"row 4, column 's': holds 1 NaN values"):
        p.read([[1.0, float("nan"), 3.0]], 4, ctx())


def test_files_channels_and_grouping(tmp_path):
    pd.DataFrame({"timestamp": [0, 1, 2], "x": [1.0, 2.0, 3.0], "y": [0.0, 0.0, 0.0]}).to_csv(tmp_path / "a.csv",
                                                                                               index=False)
    np.save(tmp_path / "b.npy", np.ones((4, 3)))
    np.save(tmp_path / "c.npy", np.arange(4.0))
    df = pd.DataFrame({"f": ["a.csv"], "g": ["b.npy"]})
    p = TimeseriesPreprocessor(["f", "g"], length=4).fit(df, ctx(tmp_path))
    assert p.channels_ == [2, 3]  # the timestamp column is not a channel
    assert p.read(["a.csv", "b.npy"], 0, ctx(tmp_path))["series"].shape == (5, 4)
    with pytest.raises(InputError, match=r"row 1, column 'g': has 1 channels; the training data has 3"):
        p.read(["a.csv", "c.npy"], 1, ctx(tmp_path))
    with pytest.raises(InputError, match="does not exist"):
        p.read(["zz.csv", "b.npy"], 1, ctx(tmp_path))


def test_state_round_trip(tmp_path):
    df = pd.DataFrame({"s": [[[1.0, 2.0], [3.0, 5.0], [0.0, 1.0]]]})
    p = TimeseriesPreprocessor(["s"], length=4).fit(df, ctx())
    save_preprocessors({"s": p}, tmp_path)
    q = load_preprocessors(tmp_path)["s"]
    assert q.config() == p.config()
    a = df["s"][0]
    assert (q.read([a], 0, ctx())["series"] == p.read([a], 0, ctx())["series"]).all()


def test_fit_that_reads_no_series_fails_naming_column_and_reasons(tmp_path):
    df = pd.DataFrame({"s": ["a.csv", None, [1.0, float("inf")]]})
    with pytest.raises(MmfuseError, match=r"^no value of column 's' could be read while fitting \(2 tried; does not "
                                          r"exist: 1, holds infinite values: 1\)\. "
                                          r"First failure: row 0, column 's': file 'a.csv' does not exist"):
        TimeseriesPreprocessor(["s"]).fit(df, ctx(tmp_path))
