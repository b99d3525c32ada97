"""train_model's stopping rules: early stopping waits for ``min_steps`` optimizer steps."""
import numpy as np
import pandas as pd
import pytest

from mmfuse import MultimodalPredictor
from mmfuse.config import TrainConfig
from mmfuse.pipeline import format_plan

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


def _overfit_table(n=200):
    """A small, noisy, learnable target: with a high learning rate the validation loss turns up (the model
    grows overconfident) while the validation accuracy is still moving, so the two choose other epochs."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 6))
    y = (x[:, 0] + 0.8 * rng.normal(size=n) > 0).astype(int)
    return pd.DataFrame({**{f"x{i}": x[:, i] for i in range(6)}, "y": np.where(y, "p", "n")})


@pytest.mark.parametrize("monitor, key, pick", [("loss", "val_loss", min), ("accuracy", "val_accuracy", max),
                                                ("macro_f1", "val_macro_f1", max)])
def test_the_best_epoch_follows_the_monitored_validation_value(monitor, key, pick):
    m = MultimodalPredictor(target="y", epochs=25, patience=100, lr=3e-2, min_steps=0, monitor=monitor,
                            val_fraction=0.3, test_fraction=0.0, **{**FAST, "dim": 64, "head_hidden": 64})
    m.fit(_overfit_table())
    h = m.history_
    assert m.metrics_["monitor"] == key
    best = pick(h, key=lambda e: e[key])  # the first of equal values, as the checkpoint keeps it
    assert m.metrics_["best_epoch"] == best["epoch"]
    by_loss = min(h, key=lambda e: e["val_loss"])["epoch"]
    if monitor != "loss":  # the data makes the choice matter: the loss would have chosen another epoch
        assert best["epoch"] != by_loss
    assert f"without improvement of validation {monitor.replace('_', '-')})" in "\n".join(format_plan(m.metrics_["plan"]))


def test_a_monitor_the_target_has_no_epoch_metric_for_fails_before_training():
    with pytest.raises(Exception, match=r"monitor 'rmse' is not computed each epoch for a binary target; choose one "
                                        r"of loss, accuracy, macro_f1"):
        MultimodalPredictor(target="y", monitor="rmse", **FAST).fit(_noise_table())
    with pytest.raises(Exception, match=r"monitor.*'acuracy'.*Did you mean 'accuracy'"):
        TrainConfig(monitor="acuracy")
