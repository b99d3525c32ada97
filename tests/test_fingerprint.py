"""Run fingerprints (mmfuse._fingerprint): what resume compares."""
import pandas as pd

from mmfuse._fingerprint import data_fingerprint, fingerprint_differences, run_fingerprint
from mmfuse.config import ModelConfig, TrainConfig


def frame():
    return pd.DataFrame({"photo": ["img/0.png", "img/1.png", None], "age": [31.0, 47.0, 52.0], "y": ["a", "b", "a"],
                         "note": ["x", "y", "z"]})


def test_data_fingerprint_follows_content_order_and_columns():
    df, cols = frame(), ["photo", "age", "y"]
    fp = data_fingerprint(df, cols)
    assert len(fp) == 16 and data_fingerprint(df.copy(), cols[::-1]) == fp  # column order is irrelevant
    assert data_fingerprint(df.assign(note=["p", "q", "r"]), cols) == fp  # an unused column is ignored
    assert data_fingerprint(df.set_index(pd.Index([7, 8, 9])), cols) == fp  # so is the index
    changed = [df.assign(age=[31.0, 47.0, 53.0]), df.assign(photo=["img/0.png", "img/2.png", None]),
               df.assign(y=["a", "b", "b"]), df.iloc[[1, 0, 2]], df.iloc[:2]]
    fps = {data_fingerprint(d, cols) for d in changed}
    assert len(fps) == len(changed) and fp not in fps
    assert data_fingerprint(df, ["photo", "age"]) != fp


def test_data_fingerprint_of_dict_cells():
    df = pd.DataFrame({"photo": [{"bytes": b"\x89PNG1", "path": None}, {"bytes": None, "path": "a.png"}]})
    fp = data_fingerprint(df)
    assert data_fingerprint(df.copy()) == fp
    assert data_fingerprint(pd.DataFrame({"photo": [{"bytes": b"\x89PNG2", "path": None},
                                                    {"bytes": None, "path": "a.png"}]})) != fp


def test_run_fingerprint_ignores_settings_that_may_change_on_resume():
    df = frame()
    base = run_fingerprint({"train": df, "val": df}, ["age", "y"], ModelConfig(), TrainConfig())
    same = run_fingerprint({"train": df, "val": df}, ["age", "y"], ModelConfig(),
                           TrainConfig(epochs=99, max_time=60, progress=False, num_workers=4, log=None, patience=1))
    assert same == base
    other = run_fingerprint({"train": df, "val": df.iloc[:2]}, ["age", "y"], ModelConfig(fusion="gated"),
                            TrainConfig(seed=1, lr=0.5))
    assert fingerprint_differences(base, other) == [
        "on other data: other validation rows (their content, order or columns differ)",
        "with model.fusion 'concat', now 'gated'", "with train.lr 0.001, now 0.5", "with train.seed 0, now 1"]
