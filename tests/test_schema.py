import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmfuse.errors import SchemaError
from mmfuse.schema import Modality, Role, Schema, describe_schema, infer_schema, parse_column_overrides

from conftest import require_shared_data


def test_all_five_modalities_are_inferred_with_reasons(mm_table):
    s = infer_schema(mm_table, target="label")
    assert {c: r.value for c, r in s.roles.items()} == {
        "review": "text", "photo": "image", "clip": "audio", "motion": "timeseries", "age": "numeric",
        "color": "categorical", "label": "target"}
    assert "end in .png" in s.reasons["photo"] and "exist" in s.reasons["photo"]
    inputs = {i.name: (i.modality, i.columns) for i in s.inputs()}
    assert inputs == {"review": (Modality.TEXT, ("review",)), "photo": (Modality.IMAGE, ("photo",)),
                      "clip": (Modality.AUDIO, ("clip",)), "motion": (Modality.TIMESERIES, ("motion",)),
                      "tabular": (Modality.TABULAR, ("age", "color"))}


def test_rules_on_hand_made_columns():
    n = 60
    df = pd.DataFrame({
        "id": range(n),
        "price": np.linspace(1, 2, n),
        "mostly_numbers": ["1.5"] * (n - 1) + ["abc"],
        "flag": [0, 1] * (n // 2),
        "city": ["Paris", "Rome", "Oslo"] * (n // 3),
        "note": ["this is a long free text value"] * n,
        "empty": [None] * n,
        "fold": ["train", "test"] * (n // 2),
        "seq": [[1.0, 2.0, 3.0]] * n,
        "blob": [b"\x89PNG\r\n\x1a\n" + bytes(10)] * n,
    })
    s = infer_schema(df)
    got = {c: r.value for c, r in s.roles.items()}
    assert got == {"id": "id", "price": "numeric", "mostly_numbers": "numeric", "flag": "categorical",
                   "city": "categorical", "note": "text", "empty": "ignore", "fold": "split", "seq": "timeseries",
                   "blob": "image"}
    assert "'abc'" in s.reasons["mostly_numbers"]


def test_overrides_from_python_cli_and_file(mm_table, tmp_path):
    s = infer_schema(mm_table, target="label", overrides={"color": "text", "age": Role.IGNORE})
    assert s.roles["color"] is Role.TEXT and s.roles["age"] is Role.IGNORE and s.reasons["age"] == "set by the user"
    assert parse_column_overrides(["age=categorical"]) == {"age": Role.CATEGORICAL}
    f = tmp_path / "schema.yaml"
    f.write_text("target: label\ncolumns:\n  age: categorical\ngroups:\n  texts: [review, color]\n")
    s = infer_schema(mm_table, schema_file=f, overrides={"color": "text"})
    assert s.target == "label" and s.roles["age"] is Role.CATEGORICAL
    assert [i.columns for i in s.inputs() if i.name == "texts"] == [("review", "color")]


def test_schema_json_round_trip(mm_table, tmp_path):
    s = infer_schema(mm_table, target="label", groups={"both": ["review"]})
    s.save(tmp_path / "s.json")
    back = Schema.from_dict(json.loads((tmp_path / "s.json").read_text()))
    assert back.roles == s.roles and back.groups == s.groups and back.inputs() == s.inputs()


def test_bad_roles_groups_and_target_are_clear_errors(mm_table):
    with pytest.raises(SchemaError, match="unknown role for column 'age' 'numbr'.*Did you mean 'numeric'"):
        infer_schema(mm_table, overrides={"age": "numbr"})
    with pytest.raises(SchemaError, match="unknown target column 'lable'.*Did you mean 'label'"):
        infer_schema(mm_table, target="lable")
    with pytest.raises(SchemaError, match="mixes roles"):
        infer_schema(mm_table, groups={"g": ["review", "photo"]})
    with pytest.raises(SchemaError, match="mixes roles"):
        infer_schema(mm_table, groups={"g": ["photo", "age"]})
    with pytest.raises(SchemaError, match="cannot be grouped"):
        infer_schema(mm_table, overrides={"review": "image"}, groups={"g": ["review", "photo"]})
    with pytest.raises(SchemaError, match="--column expects NAME=ROLE"):
        parse_column_overrides(["age"])


def test_describe_counts_missing_and_shows_examples(mm_table):
    s = infer_schema(mm_table, target="label")
    d = describe_schema(s, mm_table).set_index("column")
    assert d.loc["review", "missing"] == 1 and d.loc["photo", "missing"] == 1 and d.loc["clip", "missing"] == 0
    assert d.loc["photo", "example"] == "img/0.png" and d.loc["age", "input"] == "tabular"


# --- real data sets ---------------------------------------------------------------------------


@pytest.mark.realdata
def test_inspect_fsdd():
    from mmfuse.datasets import fsdd_table

    t = fsdd_table(require_shared_data("fsdd"))
    assert len(t) == 3000
    s = infer_schema(t, target="digit")
    assert {c: r.value for c, r in s.roles.items()} == {"audio": "audio", "digit": "target", "speaker": "categorical",
                                                        "take": "numeric"}


@pytest.mark.realdata
def test_inspect_mnist(tmp_path):
    from mmfuse.datasets import mnist_table

    t = mnist_table(require_shared_data("mnist"), tmp_path, limit=200)
    s = infer_schema(t, target="label")
    assert {c: r.value for c, r in s.roles.items()} == {"image": "image", "label": "target"}


@pytest.mark.realdata
def test_inspect_sphar_recordings_with_subject_info():
    from mmfuse.datasets import sphar_recordings_table

    t = sphar_recordings_table(require_shared_data("sp-sw-har"))
    assert len(t) == 223
    s = infer_schema(t, overrides={"subject_id": "group"})
    roles = {c: r.value for c, r in s.roles.items()}
    assert roles["phone"] == roles["watch"] == "timeseries"
    assert roles["age"] == roles["height"] == roles["weight"] == "numeric"
    assert roles["gender"] == roles["dominant_hand"] == roles["orientation"] == "categorical"
    assert roles["execution_id"] == "id" and roles["subject_id"] == "group"
    s2 = infer_schema(t, groups={"devices": ["phone", "watch"]})
    assert [i.columns for i in s2.inputs() if i.modality is Modality.TIMESERIES] == [("phone", "watch")]


@pytest.mark.realdata
def test_inspect_womens_clothing():
    from mmfuse.datasets import womens_clothing_table

    t = womens_clothing_table(require_shared_data("womens-clothing"))
    s = infer_schema(t, target="Recommended IND")
    roles = {c: r.value for c, r in s.roles.items()}
    assert roles == {"Clothing ID": "categorical", "Age": "numeric", "Title": "text", "Review Text": "text",
                     "Rating": "numeric", "Recommended IND": "target", "Positive Feedback Count": "numeric",
                     "Division Name": "categorical", "Department Name": "categorical", "Class Name": "categorical",
                     "split": "split"}


def test_text_group_with_numeric_and_categorical_columns(mm_table):
    s = infer_schema(mm_table, target="label", groups={"all_text": ["age", "review", "color"]})
    inputs = {i.name: (i.modality, i.columns) for i in s.inputs()}
    assert inputs["all_text"] == (Modality.TEXT, ("age", "review", "color"))
    assert inputs["tabular"] == (Modality.TABULAR, ("age", "color"))  # still there: choose with inputs=[...]
    assert "review" not in inputs
    from mmfuse import build_preprocessors

    p = build_preprocessors(s, mm_table, inputs={"all_text"})["all_text"]
    assert p.labeled == ["age", "color"]


def test_split_column_found_when_a_split_is_rare_or_sorted_last():
    n = 300
    df = pd.DataFrame({"x": np.arange(n, dtype=float),
                       "fold": ["train"] * 200 + ["val"] * 50 + ["test"] * 50})
    assert infer_schema(df).roles["fold"] is Role.SPLIT
    df["fold"] = ["train"] * (n - 1) + ["test"]
    assert infer_schema(df).roles["fold"] is Role.SPLIT


# --- "is this cell missing?": one answer for inspect and for training ------------------------

MISSING_CASES = [
    (None, True), (float("nan"), True), (np.float32("nan"), True), (pd.NA, True), (pd.NaT, True),
    ("", True), (" \t\n", True), (b"", True), (bytearray(), True), ([], True), ((), True),
    (np.array([]), True), ({"bytes": None, "path": None}, True), ({}, True),
    ("x", False), ("nan", False), (0, False), (0.0, False), (False, False), (b"ok", False), ([1.0], False),
    (np.array([np.nan]), False), ({"bytes": None, "path": "a.png"}, False),
]


@pytest.mark.parametrize("value,missing", MISSING_CASES, ids=[repr(v) for v, _ in MISSING_CASES])
def test_missing_cells_agree_between_inspect_and_training(value, missing):
    from mmfuse import MultimodalDataset
    from mmfuse.preprocessing import ReadContext, TextPreprocessor, is_missing

    assert is_missing(value) is missing
    df = pd.DataFrame({"t": pd.Series([value, "some words here"], dtype=object)})
    # inspect: the missing count, and a column of only such cells is ignored as all missing
    schema = Schema({"t": Role.TEXT})
    assert describe_schema(schema, df).loc[0, "missing"] == int(missing)
    alone = infer_schema(pd.DataFrame({"t": pd.Series([value, value], dtype=object)}))
    assert (alone.reasons["t"] == "every value is missing") is missing
    # training: the dataset's presence mask of that row
    prep = TextPreprocessor(["t"], min_freq=1).fit(df, ReadContext(Path(".")))
    b = MultimodalDataset(df, {"t": prep})[0]
    assert b["mask"]["t"].tolist() == [not missing]
