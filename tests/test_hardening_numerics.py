"""Numerics: a diverging run (absurd learning rate) is detected and stopped, the update that
produced the non-finite loss is not applied, the weights stay finite, and the command line
exits non-zero saying so and suggesting a lower learning rate."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import callbacks, cli, models, optim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import fake_mnist, one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")


class Snapshots(callbacks.Callback):
    """The weights before every update."""

    def __init__(self) -> None:
        super().__init__()
        self.before: dict | None = None
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.before = self.model.state_dict()
        self.batches += 1


def data(n: int = 256):
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("make", [
    lambda: optim.SGD(lr=1e6),
    lambda: optim.SGD(lr=1e6, momentum=0.9, nesterov=True),
    lambda: optim.RMSprop(lr=1e6),
], ids=["sgd", "sgd-nesterov", "rmsprop"])
@pytest.mark.parametrize("terminate_cb", [False, True], ids=["builtin", "TerminateOnNaN"])
def test_divergence_is_detected_and_weights_stay_finite(make, terminate_cb, capsys):
    x, y = data()
    ck.manual_seed(0)
    t = ck.Trainer(models.MODELS["lenet5"](), optimizer=make(), device="cpu")
    snap = Snapshots()
    cbs = [snap] + ([callbacks.TerminateOnNaN()] if terminate_cb else [])
    h = t.fit(x, y, epochs=5, batch_size=16, verbose=1, callbacks=cbs)  # does not raise
    assert t.diverged and h.diverged and t.stop_training
    assert len(h) == 1 and math.isnan(h.history["loss"][0]), "stopped in the first epoch"
    assert snap.batches < 16, "stopped at once, not at the end of the epoch"
    assert re.search(r"training diverged: the loss became (nan|inf) at epoch 1, batch \d+; that "
                     r"update was not applied.*Try a lower learning rate \(lr is 1e\+06\)",
                     t.stop_reason)
    assert "Try a lower learning rate" in capsys.readouterr().err
    now = t.model.state_dict()
    for k, v in now.items():
        assert np.isfinite(v).all(), f"{k} is not finite after the stop"
        assert np.array_equal(v, snap.before[k]), f"{k}: the diverging update was applied"
    assert np.isfinite(t.model._net.flat_params()).all()  # the whole flat buffer


def test_diverged_checkpoint_round_trips(tmp_path):
    x, y = data(64)
    t = ck.Trainer(models.MODELS["lenet5"](), optimizer=optim.SGD(lr=1e6), device="cpu")
    t.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert t.diverged
    t.save(tmp_path / "d.cnnkit")
    t2 = ck.load(tmp_path / "d.cnnkit", device="cpu")
    assert t2.history.diverged and math.isnan(t2.history.history["loss"][0])
    assert t2.history.stop_reason == t.stop_reason


def test_an_overflowing_update_with_a_finite_loss_is_refused():
    """loss (1e18)^2 = 1e36 is finite, but lr * gradient = 1e6 * 2e36 overflows float32."""
    m = ck.Sequential([ck.Linear(1, 1)])
    m.load_state_dict({"0.weight": np.ones((1, 1), np.float32),
                       "0.bias": np.zeros(1, np.float32)})
    t = ck.Trainer(m, loss="mse", optimizer=optim.SGD(lr=1e6), device="cpu")
    x = np.full((4, 1), 1e18, np.float32)
    t.fit(x, np.zeros((4, 1), np.float32), epochs=3, batch_size=4, verbose=0)
    assert t.diverged
    for k, v in m.state_dict().items():
        assert np.isfinite(v).all(), f"{k} = {v} after the stop"


def test_cli_reports_divergence(fake_mnist, tmp_path, capsys):  # noqa: F811
    rc = cli.main(["train", "--data-dir", str(fake_mnist), "--out", str(tmp_path / "run"),
                   "--epochs", "2", "--val-size", "16", "--verbose", "0", "--device", "cpu",
                   "--optimizer", "sgd", "--lr", "1e6"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "Traceback" not in err
    assert re.search(r"cnnkit: training diverged .*try a lower learning rate than --lr 1e\+06",
                     err), err
    assert not (tmp_path / "run" / "model.cnnkit").exists()  # no model saved from a NaN run
