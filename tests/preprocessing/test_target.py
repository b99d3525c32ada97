import pandas as pd
import pytest

from mmfuse.errors import InputError, SchemaError
from mmfuse.preprocessing import TargetEncoder, Task, infer_task


def test_task_inference():
    assert infer_task(pd.Series([0, 1, 1])) is Task.BINARY
    assert infer_task(pd.Series(["a", "b", "c"])) is Task.MULTICLASS
    assert infer_task(pd.Series([0.1 * i + 0.05 for i in range(50)])) is Task.REGRESSION


def test_labels_are_sorted_naturally_and_encoded():
    t = TargetEncoder("y").fit(pd.DataFrame({"y": [10, 9, 2, 10]}))
    assert t.classes_ == ["2", "9", "10"]
    assert t.transform(pd.DataFrame({"y": [2, 10]})).tolist() == [0, 2]
    assert TargetEncoder.from_dict(t.to_dict()).transform(pd.DataFrame({"y": [9]})).tolist() == [1]


def test_absent_target_single_class_and_missing_label():
    with pytest.raises(SchemaError, match="unknown target column 'z'"):
        TargetEncoder("z").fit(pd.DataFrame({"y": [1, 2]}))
    with pytest.raises(SchemaError, match="single class"):
        TargetEncoder("y").fit(pd.DataFrame({"y": ["a", "a", None]}))
    t = TargetEncoder("y").fit(pd.DataFrame({"y": ["a", "b"]}))
    with pytest.raises(InputError, match="row 1, column 'y': has no target value"):
        t.transform(pd.DataFrame({"y": ["a", None]}))
