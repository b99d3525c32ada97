"""mmfuse.datasets.sp_sw_har: the phone + watch windows, and the fused windows, of Matey-Sanz et al."""
import numpy as np
import pandas as pd
import pytest

from mmfuse.datasets import SP_SW_HAR_ROLES, sp_sw_har
from mmfuse.errors import MmfuseError
from mmfuse.windowing import pair_by_batches

from conftest import require_shared_data

CH = ["x_acc", "y_acc", "z_acc", "x_gyro", "y_gyro", "z_gyro"]


def write_recording(tmp_path):
    """One recording, s01_01, laid out as the data set's DATA folder.

    phone (ms): 950..990 and 1000..1990 every 10 (105 samples), then 2000..2960 every 40 (25): 130;
    watch (ms): 1000..2980 every 20: 100. Both start at 1000, so the phone's first 5 samples go.
    Labels: the phone says A before 1500 ms, the watch A before 1600 ms, then B.
    x_acc is the time stamp; the gyroscope channels are 1.
    """
    tp = np.r_[np.arange(950, 2000, 10), np.arange(2000, 2961, 40)]
    tw = np.arange(1000, 2981, 20)
    data = tmp_path / "DATA"
    (data / "s01").mkdir(parents=True)
    for dev, t, cut in (("sp", tp, 1500), ("sw", tw, 1600)):
        d = pd.DataFrame({"x_acc": t.astype(float), "y_acc": 0.0, "z_acc": 0.0, "x_gyro": 1.0, "y_gyro": 1.0,
                          "z_gyro": 1.0, "timestamp": t, "label": np.where(t < cut, "A", "B")})
        d.to_csv(data / "s01" / f"s01_01_{dev}.csv", index=False)
    pd.DataFrame({"execution_id": ["s01_01"], "orientation": ["front"], "first_turn": ["l"],
                  "second_turn": ["r"]}).to_csv(data / "executions_info.csv", index=False)
    pd.DataFrame({"subject_id": ["s01"], "age": [54], "gender": ["M"], "height": [190], "weight": [83],
                  "dominant_hand": ["R"], "executions": [1]}).to_csv(data / "subjects_info.csv", index=False)
    return tmp_path


def test_pair_by_batches_by_hand():
    ia, ib = pair_by_batches([0, 10, 20], [5, 15, 25, 35])  # common start 5: a keeps 10, 20
    assert ia.tolist() == [1, 2] and ib.tolist() == [0, 1]
    # batches of 100: a has 3 samples in [100, 200) and 1 in [200, 300); b has 1 and 2
    ia, ib = pair_by_batches([100, 110, 120, 200], [100, 205, 210], batch=100)
    assert ia.tolist() == [0, 3] and ib.tolist() == [0, 1]
    assert pair_by_batches([0, 10, 20, 30], [0, 5, 10])[0].tolist() == [0, 1, 2]  # one batch: the first three
    assert pair_by_batches([0, 10, 20, 30], [0, 5, 10], trim_end=True)[0].tolist() == [0, 1]  # 20, 30 after b ends
    with pytest.raises(MmfuseError, match="t_b must be .* non-decreasing"):
        pair_by_batches([0, 1], [5, 3])


def test_fused_windows_pair_within_one_second_batches(tmp_path):
    root = write_recording(tmp_path)
    t = sp_sw_har(root, "both", length=20, stride=10, scale=False, batch_ms=1000)
    # second 1: phone 100, watch 50 -> 50 pairs, of which i = 30..49 disagree (phone A, watch B at
    # 1600..1980 ms) and go; second 2: phone 25, watch 50 -> 25 pairs, all B. 30 A + 25 B = 55 pairs,
    # windows start at 0, 10, 20, 30; the one at 20 holds 10 A and 10 B: the tie goes to A, which comes first.
    assert len(t) == 4 and t.df["label"].tolist() == ["A", "A", "A", "B"]
    phone, watch = np.array(t.df["phone"].tolist()), np.array(t.df["watch"].tolist())  # (W, 20, 6)
    assert phone.shape == watch.shape == (4, 20, 6)
    assert phone[0, :, 0].tolist() == list(range(1000, 1200, 10))  # the i-th phone sample of second 1 ...
    assert watch[0, :, 0].tolist() == list(range(1000, 1400, 20))  # ... with the i-th watch sample
    assert phone[3, :, 0].tolist() == list(range(2000, 2800, 40))  # pairs 30..49: second 2's first 20
    assert watch[3, :, 0].tolist() == list(range(2000, 2400, 20))


def test_fused_windows_with_the_authors_batches(tmp_path):
    root = write_recording(tmp_path)
    t = sp_sw_har(root, "both", length=20, stride=10, scale=False)
    # one batch: phone 125, watch 100 -> pairs k < 100 (phone 1000 + 10k, watch 1000 + 20k); k = 30..49
    # disagree; 30 A + 50 B = 80 pairs -> windows at 0, 10, ..., 60
    assert t.df["label"].tolist() == ["A", "A", "A", "B", "B", "B", "B"]
    phone, watch = np.array(t.df["phone"].tolist()), np.array(t.df["watch"].tolist())
    assert phone[6, -1, 0] == 1000 + 10 * 99 and watch[6, -1, 0] == 1000 + 20 * 99  # the last pair, k = 99


def test_device_windows_scaling_and_subject_columns(tmp_path):
    root = write_recording(tmp_path)
    sp = sp_sw_har(root, "sp", length=20, stride=10)
    sw = sp_sw_har(root, "sw", length=20, stride=10)
    assert len(sp) == (130 - 20) // 10 + 1 == 12 and len(sw) == (100 - 20) // 10 + 1 == 9  # every sample
    assert list(sp.df.columns) == ["phone", "label", "subject_id", "execution_id", "age", "gender", "height",
                                   "weight", "dominant_hand"]
    assert sp.df.iloc[0][["subject_id", "execution_id", "age", "gender", "dominant_hand"]].tolist() == \
        ["s01", "s01_01", 54, "M", "R"]
    first = np.array(sp.df["phone"][0])  # (20, 6): the sensors' ranges from the authors' code
    assert first[0, 0] == pytest.approx(950 / 78.45317840576172) and first[0, 3] == pytest.approx(1 / 17.45274543762207)
    assert np.array(sw.df["watch"][0])[0, 5] == pytest.approx(1 / 34.906586)
    bare = sp_sw_har(root, "sw", length=20, stride=10, scale=False, subject_info=False)
    assert list(bare.df.columns) == ["watch", "label", "subject_id", "execution_id"]
    assert np.array(bare.df["watch"][0])[0, 5] == 1.0
    with pytest.raises(MmfuseError, match="devices must be one of 'sp', 'sw', 'both'; got 'tablet'"):
        sp_sw_har(root, "tablet")


def test_windows_are_timeseries_inputs_that_the_preprocessor_reads(tmp_path):
    from mmfuse import select_inputs
    from mmfuse.preprocessing._base import ReadContext
    from mmfuse.preprocessing.timeseries import TimeseriesPreprocessor

    t = sp_sw_har(write_recording(tmp_path), length=20, stride=10)
    schema, inputs = select_inputs(t, "label", columns=SP_SW_HAR_ROLES)
    assert schema.roles["phone"].value == schema.roles["watch"].value == "timeseries"
    p = TimeseriesPreprocessor(["phone"], length=20).fit(t.df, ReadContext(t.root))
    assert p.read([t.df["phone"][0]], 0, ReadContext(t.root))["series"].shape == (6, 20)  # (C, length)


@pytest.mark.realdata
@pytest.mark.parametrize("devices,n", [("sp", 10042), ("sw", 10170), ("both", 9365)])
def test_window_counts_match_the_authors(devices, n):
    t = sp_sw_har(require_shared_data("sp-sw-har"), devices)
    assert len(t) == n  # as published by the data set's authors
    assert set(t.df["label"]) == {"WALKING", "TURNING", "SEATED", "SITTING_DOWN", "STANDING_UP"}
    assert t.df["subject_id"].nunique() == 23 and t.df["execution_id"].nunique() == 223


@pytest.mark.realdata
def test_true_one_second_batches_give_more_fused_windows():
    # the README's wording (1-second batches) rather than what the authors' code does (see sp_sw_har)
    assert len(sp_sw_har(require_shared_data("sp-sw-har"), batch_ms=1000, subject_info=False)) == 9892


@pytest.mark.realdata
def test_roles_ids_are_not_inputs_and_subject_info_is_tabular():
    from mmfuse import select_inputs

    t = sp_sw_har(require_shared_data("sp-sw-har"))
    schema, inputs = select_inputs(t, "label", columns=SP_SW_HAR_ROLES)
    assert inputs == ["phone", "tabular", "watch"]
    spec = {s.name: (s.modality.value, s.columns) for s in schema.inputs()}
    assert spec == {"phone": ("timeseries", ("phone",)), "watch": ("timeseries", ("watch",)),
                    "tabular": ("tabular", ("age", "gender", "height", "weight", "dominant_hand"))}
    roles = {c: r.value for c, r in schema.roles.items()}
    assert roles["subject_id"] == "group" and roles["execution_id"] == "ignore"
    assert roles["age"] == roles["height"] == roles["weight"] == "numeric"
    assert roles["gender"] == roles["dominant_hand"] == "categorical"
