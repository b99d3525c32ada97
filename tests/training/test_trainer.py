"""train_model's stopping rules: early stopping waits for ``min_steps`` optimizer steps."""
import numpy as np
import pandas as pd
import pytest

from mmfuse import MultimodalPredictor
from mmfuse.config import TrainConfig

FAST = dict(progress=False, log=None, batch_size=50, dim=8, head_hidden=8, contribution=False, seed=0)


def _noise_table(n=120):
    """A target the inputs cannot predict: the validation loss stops improving almost at once."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "y": rng.integers(0, 2, n)})


@pytest.mark.parametrize("min_steps, ran_all", [(0, False), (40, True)])
def test_early_stopping_waits_for_min_steps(min_steps, ran_all):
    # 96 training rows / 50 = 2 steps per epoch: 20 epochs are 40 steps, patience 1 stops far sooner
    m = MultimodalPredictor(target="y", epochs=20, patience=1, lr=1e-2, min_steps=min_steps, **FAST).fit(_noise_table())
    assert (len(m.history_) == 20) is ran_all


def test_min_steps_has_a_default_and_is_checked():
    assert TrainConfig().min_steps == 300
    with pytest.raises(Exception, match="min_steps"):
        TrainConfig(min_steps=-1)
