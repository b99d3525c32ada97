"""Settings are checked in one place, however a config is made."""
import dataclasses

import pytest

from mmfuse.config import ModelConfig, TrainConfig, from_dict
from mmfuse.errors import MmfuseError


def test_every_way_of_making_a_config_is_checked():
    with pytest.raises(MmfuseError, match=r"setting 'batch_size' must be an integer >= 1; got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(MmfuseError, match=r"setting 'seed' must be an integer >= 0; got -1"):
        dataclasses.replace(TrainConfig(), seed=-1)
    with pytest.raises(MmfuseError, match=r"setting 'fusion' must be a registered fusion .*Did you mean 'concat'"):
        ModelConfig(fusion="concta")
    with pytest.raises(MmfuseError, match=r"unknown training setting 'lr_rate'"):
        from_dict(TrainConfig, {"lr_rate": 1}, "training")
    with pytest.raises(MmfuseError, match=r"setting 'accelerator' must be one of .*Did you mean 'cuda'"):
        TrainConfig(accelerator="cdua")
    with pytest.raises(MmfuseError, match=r"'val_fraction' \+ 'test_fraction' must be < 1"):
        TrainConfig(val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize("field, good, bad", [
    ("epochs", 3, 2.5), ("lr", 1e-4, 0), ("dropout", 0.5, 1.0), ("warmup", 0.0, -0.1), ("patience", 0, -1),
    ("max_time", None, 0), ("class_weight", "balanced", "even"), ("class_weight", [1, 2], [1, -2]),
    ("decision_threshold", "f1", "f2"), ("decision_threshold", [0.2, 0.7], [0.2, 1.5]), ("log", None, "wandb"),
    ("progress", False, "no"), ("cache", None, 3), ("regression_loss", "huber", "l1"),
])
def test_each_constraint_accepts_the_good_and_refuses_the_bad(field, good, bad):
    cls = ModelConfig if field in {f.name for f in dataclasses.fields(ModelConfig)} else TrainConfig
    assert getattr(cls(**{field: good}), field) == good
    with pytest.raises(MmfuseError, match=f"setting {field!r} must be"):
        cls(**{field: bad})
