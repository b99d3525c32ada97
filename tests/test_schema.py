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


# --- role inference on real tables: row numbers, few integer codes, numbers written for people ---


def test_row_counters_and_saved_indexes_are_ids_with_the_reason():
    n = 30
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"Unnamed: 0": rng.permutation(n) + 100,  # a saved index of a shuffled subset
                       "row": np.arange(1, n + 1), "pos": rng.permutation(n).astype(float),
                       "gap": np.r_[np.arange(n - 1), n],  # 0..28, 30: no counter
                       "x": rng.normal(size=n)})
    s = infer_schema(df)
    assert {c: r.value for c, r in s.roles.items()} == {"Unnamed: 0": "id", "row": "id", "pos": "id",
                                                        "gap": "numeric", "x": "numeric"}
    assert "saved row index" in s.reasons["Unnamed: 0"]
    assert s.reasons["row"].startswith("counts 1..30, one value per row: a saved row number; not used for training")
    assert "counts 0..29" in s.reasons["pos"]
    why = describe_schema(s, df).set_index("column")["why"]
    assert "not used for training" in why["row"]
    # too few rows to tell a row number from a feature
    assert infer_schema(df.iloc[:19].assign(row=np.arange(19))).roles["row"] is Role.NUMERIC


def test_few_integer_codes_are_flagged_and_chosen_by_the_documented_rule():
    n = 40
    df = pd.DataFrame({"Rating": np.tile([1, 2, 3, 4, 5], n // 5), "dept": np.tile([3, 7, 12, 40], n // 4),
                       "kids": np.tile([0, 1, 2], n // 3 + 1)[:n].astype(float),
                       "flag": [1.0, 0.0, np.nan, 0.0] * (n // 4), "count": np.arange(n) % 20})
    df.loc[5, "kids"] = np.nan  # a missing cell makes pandas store the integers as floats
    s = infer_schema(df)
    assert {c: r.value for c, r in s.roles.items()} == {"Rating": "numeric", "dept": "categorical",
                                                        "kids": "numeric", "flag": "categorical", "count": "numeric"}
    assert s.reasons["Rating"] == ("numeric or categorical? 5 distinct integers 1..5: read as numeric; "
                                   "pass --column 'Rating=categorical' to treat them as categories")
    assert s.reasons["dept"] == ("numeric or categorical? 4 distinct integers with gaps (3, 7, 12, 40): read as "
                                 "category codes; pass --column 'dept=numeric' to read them as numbers")
    assert s.reasons["kids"].startswith("numeric or categorical? 3 distinct integers 0..2")
    assert "numeric or categorical?" not in s.reasons["count"]  # 20 distinct values are not few codes
    # codes must repeat: 5 distinct values in 8 rows are numbers, not codes
    small = pd.DataFrame({"v": [3, 7, 12, 40, 3, 7, 12, 41]})
    assert infer_schema(small).roles["v"] is Role.NUMERIC


PARSED = [("12,5", 12.5), ("0,125", 0.125), ("1,000", 1000.0), ("1,000,000.5", 1000000.5), ("1.000,5", 1000.5),
          ("1.000.000", 1e6), ("1 000", 1000.0), ("1'000", 1000.0), ("$1,000", 1000.0), ("-$5", -5.0),
          ("$-5", -5.0), ("5 €", 5.0), ("€ 3,50", 3.5), ("10%", 0.1), ("-12,5 %", -0.125), ("1.000", 1.0),
          ("2024.01.05", None), ("1.2.3", None), ("1,5,3", None), ("555 1234", None), ("12:30", None), ("abc", None),
          ("$", None), ("%", None)]


@pytest.mark.parametrize("text,value", PARSED, ids=[t for t, _ in PARSED])
def test_parse_number_reads_numbers_written_for_people(text, value):
    from mmfuse.schema import parse_number

    assert parse_number(text) == value


def test_decimal_commas_percents_and_currencies_are_numbers_in_inspect_and_in_training(tmp_path):
    from mmfuse.preprocessing import NumericPreprocessor, ReadContext

    n = 60
    rows = ["price;share;amount;label"] + [f"{i},5;{i}%;${i},000;{'ab'[i % 2]}" for i in range(1, n + 1)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    s = infer_schema(tmp_path / "t.csv", target="label")
    assert {c: r.value for c, r in s.roles.items()} == {"price": "numeric", "share": "numeric", "amount": "numeric",
                                                        "label": "target"}
    assert "('1,5' reads as 1.5; the column writes a decimal comma)" in s.reasons["price"] and "('1%' reads as 0.01)" in s.reasons["share"]
    df = pd.read_csv(tmp_path / "t.csv", sep=";")
    prep = NumericPreprocessor(["price", "share", "amount"]).fit(df, ReadContext(tmp_path))
    assert prep.median_.tolist() == [31.0, 0.305, 30500.0]  # medians of 1.5..60.5, 0.01..0.60, 1000..60000
    assert prep.center_.tolist() == pytest.approx([31.0, 0.305, 30500.0])
    out = prep.read(["12,5", "10%", "$1,000"], 0, ReadContext(tmp_path))["num"]
    assert out[:3] == pytest.approx((np.array([12.5, 0.1, 1000.0]) - prep.center_) / prep.scale_)


def test_a_group_named_like_a_column_that_is_an_input_of_its_own_is_refused():
    """Two inputs by one name: the column's would replace the group, whose columns were then read by nothing."""
    df = pd.DataFrame({"review": [f"w{i} x{i % 5} y{i % 3} z" for i in range(30)], "price": np.linspace(0, 1, 30) ** 2,
                       "qty": np.arange(30) % 4, "y": ["a", "b"] * 15})
    with pytest.raises(SchemaError, match=r"group 'review' has the name of the column 'review', which is an input of "
                                          r"its own \(text\); name the group otherwise, e.g. --group "
                                          r"review_group=price,qty"):
        infer_schema(df, target="y", groups={"review": ["price", "qty"]})
    s = infer_schema(df, target="y", groups={"review_group": ["price", "qty"]})
    assert {i.name: i.columns for i in s.inputs()} == {"review": ("review",), "review_group": ("price", "qty")}


def test_inspect_says_when_a_column_writes_a_decimal_comma():
    from mmfuse.schema import comma_style

    eu = pd.DataFrame({"price": ["1,234", "2,500", "3,1", "4,75"] * 5, "y": ["a", "b"] * 10})
    s = infer_schema(eu, target="y")
    assert "('1,234' reads as 1.234; the column writes a decimal comma)" in s.reasons["price"]
    us = pd.DataFrame({"price": [f"{i},{i * 37 % 1000:03d}" for i in range(1, 21)], "y": ["a", "b"] * 10})
    assert "('1,037' reads as 1037)" in infer_schema(us, target="y").reasons["price"]
    assert "commas read both ways" not in infer_schema(us, target="y").reasons["price"]
    mixed = us.assign(price=us["price"].where(us.index != 3, "3,5"))  # one decimal comma among thousands
    assert "commas read both ways here: 1 as a decimal mark (3,5 is 3.5), 19 as a thousands separator" in \
        infer_schema(mixed, target="y").reasons["price"]
    assert [comma_style(v) for v in (["0,125"], ["1.000,5", "7"], ["1,234.5", "3,1"], ["2,500"], [2.5, 3])] == [
        "decimal", "decimal", None, None, None]


def test_group_patterns_pick_data_columns_and_form_a_tabular_input():
    n = 30
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"fac_a": rng.normal(size=n), "fac_b": rng.normal(size=n), "fac_c": ["u", "v", "w"] * 10,
                       "fac_id": [f"k{i}" for i in range(n)], "x": rng.normal(size=n), "y": [0, 1] * 15})
    s = infer_schema(df, target="y", groups={"fac": ["fac_*"]})
    assert s.roles["fac_id"] is Role.ID and s.groups == {"fac": ["fac_a", "fac_b", "fac_c"]}
    inputs = {i.name: (i.modality, i.columns) for i in s.inputs()}
    assert inputs == {"fac": (Modality.TABULAR, ("fac_a", "fac_b", "fac_c")), "tabular": (Modality.TABULAR, ("x",))}
    from mmfuse import build_preprocessors

    p = build_preprocessors(s, df)["fac"]
    assert p.numeric == ["fac_a", "fac_b"] and p.categorical == ["fac_c"]
    assert infer_schema(df, target="y", groups={"g": "x, fac_?"}).groups == {"g": ["x", "fac_a", "fac_b", "fac_c"]}
    with pytest.raises(SchemaError, match=r"unknown column pattern in group 'g': 'fax_\*'.*Did you mean"):
        infer_schema(df, target="y", groups={"g": ["fax_*"]})


def test_describe_shows_a_text_groups_numbers_under_both_inputs(mm_table):
    s = infer_schema(mm_table, target="label", groups={"all_text": ["age", "review", "color"]})
    d = describe_schema(s, mm_table).set_index("column")["input"]
    assert d["age"] == "all_text, tabular" and d["color"] == "all_text, tabular" and d["review"] == "all_text"


def test_left_out_columns_lists_ids_ignored_and_unread_columns_with_reasons():
    from mmfuse.schema import left_out_columns

    n = 30
    df = pd.DataFrame({"row": np.arange(n), "empty": [None] * n, "x": np.linspace(0, 1, n),
                       "note": ["some long free text here"] * n, "y": [0, 1] * 15})
    s = infer_schema(df, target="y")
    assert left_out_columns(s) == {"row": "id: " + s.reasons["row"], "empty": "ignore: every value is missing"}
    assert list(left_out_columns(s, inputs=["note"])) == ["row", "empty", "x"]
    assert left_out_columns(s, inputs=["note"])["x"] == "numeric: not read by the chosen inputs"


def test_errors_that_list_columns_show_at_most_twenty_and_the_closest():
    df = pd.DataFrame({f"col_{i:03d}": [1.0, 2.0] for i in range(200)})
    with pytest.raises(SchemaError) as e:
        infer_schema(df, target="col_1999")
    msg = str(e.value)
    assert msg.startswith("unknown target column 'col_1999'; known: col_000, col_001,")
    assert "col_019, ... (and 180 more). Did you mean " in msg and "col_020" not in msg.split("Did you mean")[0]
    assert "'col_199'" in msg.split("Did you mean")[1] and len(msg) < 400


def test_number_rules_hold_for_numbers_stored_as_strings():
    n = 30
    df = pd.DataFrame({"row": [str(i) for i in range(1, n + 1)], "Rating": [str(i % 5 + 1) for i in range(n)],
                       "dept": ["3", "7", "12"] * 10, "price": [f"{i},5" for i in range(n)]}, dtype=object)
    s = infer_schema(df)
    assert {c: r.value for c, r in s.roles.items()} == {"row": "id", "Rating": "numeric", "dept": "categorical",
                                                        "price": "numeric"}
    assert s.reasons["Rating"].startswith("numeric or categorical? 5 distinct integers 1..5")
    assert "'0,5' reads as 0.5" in s.reasons["price"]
