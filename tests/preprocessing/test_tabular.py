import math

import numpy as np
import pandas as pd
import pytest

from mmfuse.errors import InputError
from mmfuse.preprocessing import (CategoricalPreprocessor, NumericPreprocessor, ReadContext, TabularPreprocessor,
                                  load_preprocessors, save_preprocessors)

CTX = ReadContext(root=__import__("pathlib").Path("."))


def test_numeric_standardize_and_impute_by_hand():
    p = NumericPreprocessor(["x"]).fit(pd.DataFrame({"x": [1.0, 2.0, 3.0, None]}), CTX)
    # mean 2, population std sqrt(2/3), median 2
    s = math.sqrt(2 / 3)
    assert p.read([3.0], 0, CTX)["num"] == pytest.approx([1 / s, 0.0], rel=1e-6)
    assert p.read([None], 0, CTX) is None  # every numeric column empty -> input absent
    q = NumericPreprocessor(["x", "y"]).fit(pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0.0, 0.0, 6.0]}), CTX)
    out = q.read([np.nan, 6.0], 0, CTX)["num"]
    # x missing -> median 2 -> (2 - 2) / s = 0, indicator 1; y: mean 2, std sqrt(8) -> (6 - 2) / sqrt(8)
    assert out == pytest.approx([0.0, 4 / math.sqrt(8), 1.0, 0.0], rel=1e-6)


def test_numeric_robust_uses_median_and_iqr():
    p = NumericPreprocessor(["x"], robust=True).fit(pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 100.0]}), CTX)
    # median 3, q1 2, q3 4 -> scale 2 / 1.349
    assert p.read([5.0], 0, CTX)["num"][0] == pytest.approx((5 - 3) / (2 / 1.349), rel=1e-6)


def test_inf_and_stray_strings_are_bad_input_naming_row_and_column():
    p = NumericPreprocessor(["x"]).fit(pd.DataFrame({"x": ["1", "2", "oops"]}), CTX)
    assert p.median_[0] == 1.5  # the stray string does not poison the statistics
    with pytest.raises(InputError, match=r"row 7, column 'x': holds 'oops', which is not a number"):
        p.read(["oops"], 7, CTX)
    with pytest.raises(InputError, match=r"row 2, column 'x': holds inf, an infinite value"):
        p.read([float("inf")], 2, CTX)
    assert p.read(["2.5"], 0, CTX)["num"][1] == 0.0


def test_categorical_ids_buckets_min_freq_and_unseen_counts():
    p = CategoricalPreprocessor(["c"], min_freq=2).fit(pd.DataFrame({"c": ["a", "b", "b", "a", "z", 3.0, "3"]}), CTX)
    # counts: a=2, b=2, '3'=2 (3.0 and '3' are one category), z=1 -> dropped
    assert p.vocab_["c"] == ["3", "a", "b"]
    assert [int(p.read([v], 0, CTX)["cat"][0]) for v in ["3", "a", "b", 3]] == [2, 3, 4, 2]
    assert p.read(["z"], 0, CTX)["cat"].tolist() == [1] and p.read(["new"], 0, CTX)["cat"].tolist() == [1]
    assert p.unknown_counts["c"] == 2
    assert p.read([None], 0, CTX) is None
    assert p.cardinalities == [5]


def test_tabular_combines_and_round_trips(tmp_path):
    df = pd.DataFrame({"n": [1.0, 3.0], "c": ["x", "y"]})
    p = TabularPreprocessor(["n", "c"], numeric=["n"], categorical=["c"]).fit(df, CTX)
    out = p.read([None, "y"], 0, CTX)
    assert out["num"].tolist() == [0.0, 1.0] and out["cat"].tolist() == [3]  # median 2 == mean 2
    assert p.read([None, None], 0, CTX) is None
    save_preprocessors({"tab": p}, tmp_path)
    q = load_preprocessors(tmp_path)["tab"]
    for cells in ([1.0, "x"], [None, "q"], [5.0, None]):
        a, b = p.read(cells, 0, CTX), q.read(cells, 0, CTX)
        assert all((a[k] == b[k]).all() for k in a)


def test_numbers_written_for_people_are_read_as_inspect_reads_them():
    # "12,5" (decimal comma), "$1 000" and "10%": numbers, with the statistics computed on them
    p = NumericPreprocessor(["x"]).fit(pd.DataFrame({"x": ["12,5", "$1 000", "10%", "oops"]}), CTX)
    assert p.median_[0] == 12.5  # median of 12.5, 1000, 0.1; the stray string left out
    assert p.center_[0] == pytest.approx((12.5 + 1000 + 0.1) / 3)
    x = p.read(["1.000,5"], 0, CTX)["num"][0]
    assert x == pytest.approx((1000.5 - p.center_[0]) / p.scale_[0])
    with pytest.raises(InputError, match=r"row 3, column 'x': holds '1,5,3', which is not a number"):
        p.read(["1,5,3"], 3, CTX)


def test_a_column_with_a_decimal_comma_reads_every_comma_as_one_in_training_and_prediction(tmp_path):
    """'2,500' is 2500 by itself, but 2.5 in a column that writes '3,1': the column decides, from its
    training cells, and the bundle keeps the decision, so one row to predict reads as training did."""
    df = pd.DataFrame({"eu": ["3,1", "2,500", "1,5", "4"], "us": ["3,100", "2,500", "1,500", "4"]})
    p = NumericPreprocessor(["eu", "us"]).fit(df, CTX)
    assert p.comma_ == ["decimal", None]
    assert p.median_.tolist() == pytest.approx([2.8, 2000.0])  # eu: 1.5, 2.5, 3.1, 4; us: 4, 1500, 2500, 3100
    save_preprocessors({"t": p}, tmp_path)
    q = load_preprocessors(tmp_path)["t"]
    for r in (p, q):
        out = r.read(["2,500", "2,500"], 0, CTX)["num"][:2]
        assert out == pytest.approx((np.array([2.5, 2500.0]) - r.center_) / r.scale_)
    # a column that writes thousands separators both ways (1,234,567) is read cell by cell, as before; so is
    # one where a lone decimal-only cell (a typo: 1,50) meets more cells that read either way
    mixed = NumericPreprocessor(["x"]).fit(pd.DataFrame({"x": ["1,234,567", "3,1", "2,500"]}), CTX)
    assert mixed.comma_ == [None] and sorted(mixed.median_.tolist()) == [2500.0]
    us = NumericPreprocessor(["x"]).fit(pd.DataFrame({"x": ["2,500", "12,000", "999,999", "1,50"]}), CTX)
    assert us.comma_ == [None] and us.median_[0] == pytest.approx((2500 + 12000) / 2)


def test_a_streamed_fit_reads_a_column_one_way_from_its_first_piece_to_its_last():
    """The pieces of a streamed pass: the comma is decided before the first statistic (by the sample fit, else
    the first piece) and never flips after, so every value of the column is read one way."""
    sample = pd.DataFrame({"x": ["3,1", "2,500", "1,5"]})
    pieces = [pd.DataFrame({"x": ["2,500", "1,500", "2,000"]}), pd.DataFrame({"x": ["3,1", "2,500"]})]
    p = NumericPreprocessor(["x"]).fit(sample, CTX)  # as a streamed table's preprocessors are first fitted
    state = p.fit_stream_start(sample=None)
    for df in pieces:
        p.fit_stream_update(state, df)
    p.fit_stream_finish(state, CTX)
    assert p.comma_ == ["decimal"] and p.median_[0] == 2.5  # 1.5, 2, 2.5, 2.5, 3.1
    q = NumericPreprocessor(["x"])  # no sample fit: the first piece (no decimal comma) decides, for every piece
    state = q.fit_stream_start(sample=None)
    for df in pieces:
        q.fit_stream_update(state, df)
    q.fit_stream_finish(state, CTX)
    assert q.comma_ == [None] and q.median_[0] == 2000.0  # 3.1, 1500, 2000, 2500, 2500
