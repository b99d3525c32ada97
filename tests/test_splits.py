"""Where each split comes from (Splits.labels / Splits.source), grouped splits, and the warning
about a validation split too small for early stopping (mmfuse.pipeline.split_table)."""
import warnings

import numpy as np
import pandas as pd
import pytest

from mmfuse.io import read_table
from mmfuse.pipeline import select_inputs, split_table


def table(n=60, seed=0, **cols):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=n), "y": ["a", "b"] * (n // 2), **cols})


def split(data, columns=None, **kw):
    t = read_table(data)
    schema, _ = select_inputs(t, "y", columns=columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # these tables are small on purpose
        return split_table(t, schema, "y", **kw)


def test_held_out_rows_are_called_held_out_rows_of_the_data(tmp_path):
    table().to_csv(tmp_path / "data.csv", index=False)
    s = split(tmp_path / "data.csv", val_fraction=0.2)
    name = str(tmp_path / "data.csv")
    assert s.labels == {"val": f"held-out 20% of {name}, stratified random",
                        "test": f"held-out 10% of {name}, stratified random"}
    assert s.source == f"validation: {s.labels['val']}; test: {s.labels['test']}"
    assert s.counts() == {"train": 42, "val": 12, "test": 6}
    assert split(table(), task="regression").labels["val"] == "held-out 10% of the training table, random"
    assert split(table(), test_fraction=0.0).labels["test"] == "none"


def test_a_given_test_file_is_the_test_split_and_named(tmp_path):
    table(20, seed=1).to_csv(tmp_path / "test.csv", index=False)
    s = split(table(), test=tmp_path / "test.csv")
    assert s.labels == {"val": "held-out 10% of the training table, stratified random", "test": str(tmp_path / "test.csv")}
    assert len(s.test) == 20 and len(s.train) + len(s.val) == 60  # nothing held out of the data for testing


def test_only_a_validation_file_means_no_test_rows_and_says_so(tmp_path):
    table(20, seed=1).to_csv(tmp_path / "val.csv", index=False)
    s = split(table(), val=tmp_path / "val.csv")
    assert s.labels == {"val": str(tmp_path / "val.csv"), "test": "none"}
    assert s.source == f"validation: {tmp_path / 'val.csv'}; test: none"
    assert s.counts() == {"train": 60, "val": 20, "test": 0}  # every row of the data trains


def test_group_column_keeps_each_group_in_one_split():
    df = table(120, subj=[f"s{i // 6}" for i in range(120)])  # 20 subjects of 6 rows
    s = split(df, columns={"subj": "group"}, val_fraction=0.2, test_fraction=0.2)
    groups = [set(part["subj"]) for part in (s.train, s.val, s.test)]
    assert [len(g) for g in groups] == [12, 4, 4] and not (groups[0] & groups[1] or groups[0] & groups[2]
                                                          or groups[1] & groups[2])
    assert s.labels == {"val": "held-out 20% of the groups of 'subj' in the training table",
                        "test": "held-out 20% of the groups of 'subj' in the training table"}


def test_blank_groups_are_one_clear_error():
    subj = [f"s{i // 6}" for i in range(120)]
    subj[7] = subj[30] = None
    with pytest.raises(Exception, match=r"2 rows have a blank group 'subj' \(rows 7, 30\): fill them in"):
        split(table(120, subj=subj), columns={"subj": "group"}, val_fraction=0.2, test_fraction=0.2)


def test_split_column_is_named():
    df = table(30, part=["train"] * 20 + ["val"] * 5 + ["test"] * 5)
    s = split(df, columns={"part": "split"})
    assert s.labels == {"val": "rows of the training table with split column 'part' = val",
                        "test": "rows of the training table with split column 'part' = test"}


def warned(df, **kw):
    t = read_table(df)
    schema, _ = select_inputs(t, "y")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        split_table(t, schema, "y", **kw)
    return [str(x.message) for x in w if "validation split is small" in str(x.message)]


def test_a_small_validation_split_warns_that_early_stopping_is_noisy():
    # 1,000 rows: 10% is 100 validation rows, under 500
    (msg,) = warned(table(1000))
    assert msg.startswith("the validation split is small: 100 rows (fewer than 500); early stopping")
    assert "cross-validation" in msg
    # 6,000 rows, 50/50: 600 validation rows, 300 per class: no warning
    assert warned(table(6000)) == []
    # 6,000 rows with a rare class of 200 rows: 20 of them validate
    df = table(6000)
    df.loc[:199, "y"], df.loc[200:, "y"] = "rare", ["a", "b"] * 2900
    (msg,) = warned(df)
    assert "20 rows of class 'rare' (fewer than 30)" in msg and "rows (fewer than 500)" not in msg
    # regression has no classes to count
    assert warned(table(6000).assign(y=np.arange(6000) * 0.5)) == []


@pytest.mark.parametrize("n, k", [(6, 2), (9, 2), (30, 4)])
def test_small_tables_split_without_stratifying_when_a_part_cannot_hold_every_class(n, k):
    """scikit-learn refuses a stratified part smaller than the number of classes; such tables split at random."""
    import warnings

    from mmfuse import read_table, select_inputs, split_table

    df = pd.DataFrame({"x": np.arange(n) + 0.5, "y": [f"c{i % k}" for i in range(n)]})
    t = read_table(df)
    schema, _ = select_inputs(t, "y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-validation warning
        s = split_table(t, schema, "y")
    assert sum(s.counts().values()) == n and s.source.endswith("random") and "stratified" not in s.source


def test_a_split_column_without_val_rows_validates_on_part_of_its_train_rows():
    """train/test only: the validation rows come from the train rows (grouped when a group column exists);
    the test rows stay the split column's."""
    df = table(80, split=["test" if i % 4 == 0 else "train" for i in range(80)], subject=[f"s{i % 8}" for i in range(80)])
    s = split(df, val_fraction=0.25)
    test_rows, train_rows = set(df.index[df["split"] == "test"]), set(df.index[df["split"] == "train"])
    assert set(s.test.index) == test_rows and set(s.train.index) | set(s.val.index) == train_rows
    assert len(s.val) == 15 and not set(s.val.index) & set(s.train.index)
    assert s.labels["val"].startswith("25% of the rows of the training table with split column 'split' = train")
    g = split(df, columns={"subject": "group"}, val_fraction=0.25)
    assert not set(g.val["subject"]) & set(g.train["subject"]) and set(g.test.index) == test_rows
