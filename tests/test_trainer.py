"""Trainer, callbacks and DataLoader: LeNet-5 learns a synthetic image task, History and
callbacks behave like Keras, training is reproducible (seeds, threads), and bad input gives
ValueErrors that name the problem."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import callbacks as cb
from cnnkit import io, optim
from cnnkit.data import DataLoader
from cnnkit.trainer import History, Trainer

# ---------------------------------------------------------------------------------------------
# data and models
# ---------------------------------------------------------------------------------------------


def _prototypes() -> np.ndarray:
    """10 class patterns on 28x28: a horizontal bar (row band k % 5) and a vertical bar
    (left/right by k // 5, bright or dim by parity)."""
    protos = np.zeros((10, 28, 28), np.float32)
    for k in range(10):
        r, c = k % 5, k // 5
        protos[k, 4 + 4 * r : 7 + 4 * r, 3:25] = 1.0
        protos[k, 3:25, 6 + 12 * c : 9 + 12 * c] = 1.0 if k % 2 == 0 else 0.5
    return protos


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images (patterns shifted by up to 2 px, plus noise), labels (n,)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = _prototypes()[y]
    shifts = rng.integers(-2, 3, (n, 2))
    for i in range(n):
        x[i] = np.roll(x[i], tuple(shifts[i]), axis=(0, 1))
    x = np.clip(x + 0.3 * rng.standard_normal(x.shape).astype(np.float32), 0, 1)
    return (x * 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def images():
    return make_images(2500, 0), make_images(600, 1)


def lenet5() -> ck.Sequential:
    return ck.Sequential([
        ck.Conv2d(1, 6, 5, padding=2), ck.ReLU(), ck.MaxPool2d(2),
        ck.Conv2d(6, 16, 5), ck.ReLU(), ck.MaxPool2d(2), ck.Flatten(),
        ck.Linear(400, 120), ck.ReLU(), ck.Linear(120, 84), ck.ReLU(), ck.Linear(84, 10),
    ])


def small_data(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A quick 3-class task on (n, 1, 8, 8): the class sets which third of the rows is bright."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = 0.3 * rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    for k in range(3):
        x[y == k, :, 1 + 2 * k : 3 + 2 * k, :] += 1.0
    return x, y


def small_model(seed: int = 0, dropout: bool = False) -> ck.Sequential:
    ck.manual_seed(seed)
    layers = [ck.Conv2d(1, 4, 3), ck.ReLU(), ck.MaxPool2d(2), ck.Flatten(), ck.Linear(36, 16),
              ck.ReLU()]
    if dropout:
        layers.append(ck.Dropout(0.3))
    return ck.Sequential([*layers, ck.Linear(16, 3)])


def small_trainer(lr: float = 0.05, seed: int = 0, **kw) -> Trainer:
    return Trainer(small_model(seed, kw.pop("dropout", False)),
                   optimizer=optim.SGD(lr=lr, momentum=0.9), device="cpu", **kw)


# ---------------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------------


def test_lenet5_learns_synthetic_images(images):
    (x, y), (xt, yt) = images
    ck.manual_seed(0)
    trainer = Trainer(lenet5(), loss="cross_entropy", optimizer=optim.Adam(lr=2e-3), seed=0,
                      device="cpu")
    hist = trainer.fit(x, y, epochs=3, batch_size=32, validation_split=0.1, verbose=0)
    assert isinstance(hist, History)
    assert hist.epoch == [0, 1, 2]
    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time", "images_per_sec"):
        assert len(hist.history[k]) == 3, k
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert hist.history["lr"] == pytest.approx([2e-3] * 3)
    assert all(v > 0 for v in hist.history["images_per_sec"])
    res = trainer.evaluate(xt, yt)
    assert set(res) == {"loss", "accuracy"}
    assert res["accuracy"] > 0.95, res
    proba = trainer.predict(xt)
    assert proba.shape == (len(xt), 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    classes = trainer.predict_classes(xt)
    assert np.mean(classes == yt) == pytest.approx(res["accuracy"])
    assert trainer.epoch == 3 and len(trainer.history) == 3


def test_validation_data_and_continued_fit():
    x, y = small_data()
    xv, yv = small_data(60, seed=1)
    trainer = small_trainer()
    h1 = trainer.fit(x, y, epochs=2, batch_size=16, validation_data=(xv, yv), verbose=0)
    assert h1.epoch == [0, 1] and len(h1.history["val_accuracy"]) == 2
    # fit continues from the epochs already done (epochs is the epoch to stop at)
    h2 = trainer.fit(x, y, epochs=3, batch_size=16, validation_data=(xv, yv), verbose=0)
    assert h2.epoch == [2] and trainer.history.epoch == [0, 1, 2]
    assert trainer.evaluate(xv, yv)["accuracy"] > 0.9


def test_mse_regression_and_predict_raw():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 5)).astype(np.float32)
    w = rng.standard_normal((5, 2)).astype(np.float32)
    t = x @ w
    ck.manual_seed(0)
    trainer = Trainer(ck.Sequential([ck.Linear(5, 2)]), loss="mse",
                      optimizer=optim.SGD(lr=0.1), device="cpu")
    hist = trainer.fit(x, t, epochs=20, batch_size=16, verbose=0)
    assert "accuracy" not in hist.history
    assert hist.history["loss"][-1] < 1e-3
    np.testing.assert_allclose(trainer.predict(x), t, atol=0.05)
    assert set(trainer.evaluate(x, t)) == {"loss"}


# ---------------------------------------------------------------------------------------------
# reproducibility
# ---------------------------------------------------------------------------------------------


def _train_weights(threads: int | None = None, **fit_kw) -> np.ndarray:
    old = ck.get_num_threads()
    try:
        if threads is not None:
            ck.set_num_threads(threads)
        x, y = small_data()
        trainer = small_trainer(dropout=True, seed=3)
        data = fit_kw.pop("data", (x, y))
        trainer.fit(*data, epochs=2, verbose=0, **fit_kw)
        return trainer.model._net.flat_params()
    finally:
        ck.set_num_threads(old)


def test_same_seed_gives_identical_weights_with_1_or_2_threads():
    a = _train_weights(1, batch_size=16)
    b = _train_weights(2, batch_size=16)
    np.testing.assert_array_equal(a, b)
    c = _train_weights(None, batch_size=16)
    np.testing.assert_array_equal(a, c)


def test_lenet_forward_backward_thread_count_invariant(images):
    """The LeNet-5 kernels (conv, pool, linear) give bit-identical steps with 1 and 2 threads."""
    (x, y), _ = images
    out = []
    old = ck.get_num_threads()
    try:
        for threads in (1, 2):
            ck.set_num_threads(threads)
            ck.manual_seed(0)
            trainer = Trainer(lenet5(), optimizer=optim.SGD(lr=0.01, momentum=0.9),
                              device="cpu")
            trainer.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
            out.append(trainer.model.state_dict())
    finally:
        ck.set_num_threads(old)
    for k in out[0]:
        np.testing.assert_array_equal(out[0][k], out[1][k], err_msg=f"{k} differs")


def test_arrays_loader_and_dataset_train_identically():
    x, y = small_data()

    class Samples:
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], y[i]

    a = _train_weights(data=(x, y), batch_size=16)
    b = _train_weights(data=(DataLoader(x, y, batch_size=16, shuffle=True, seed=0),))
    c = _train_weights(data=(Samples(),), batch_size=16)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    d = _train_weights(data=(x, y), batch_size=16, shuffle=False)
    assert not np.array_equal(a, d)


# ---------------------------------------------------------------------------------------------
# callbacks
# ---------------------------------------------------------------------------------------------


def scripted(values, key="score"):
    """A callback that writes values[epoch] into the epoch logs under `key`."""
    def put(epoch, logs):
        logs[key] = values[epoch]
    return cb.LambdaCallback(on_epoch_end=put)


def test_early_stopping_restores_best_weights():
    x, y = small_data()
    trainer = small_trainer()
    weights = []
    record = cb.LambdaCallback(on_epoch_end=lambda e, logs: weights.append(
        trainer.model.state_dict()))
    stop = cb.EarlyStopping(monitor="score", patience=2, restore_best_weights=True)
    hist = trainer.fit(x, y, epochs=10, batch_size=32, verbose=0,
                       callbacks=[scripted([3.0, 2.0, 2.5, 2.6, 1.0, 0.5]), record, stop])
    # best at epoch 1, no improvement at 2 and 3 -> stop after epoch 3
    assert hist.epoch == [0, 1, 2, 3] and hist.history["score"] == [3.0, 2.0, 2.5, 2.6]
    assert stop.stopped_epoch == 3 and stop.best_epoch == 1 and trainer.stop_training
    assert "EarlyStopping" in trainer.stop_reason
    for k, v in trainer.model.state_dict().items():
        np.testing.assert_array_equal(v, weights[1][k])
    assert not np.array_equal(weights[1]["0.weight"], weights[3]["0.weight"])


def test_early_stopping_mode_min_delta_and_baseline():
    x, y = small_data(64)
    stop = cb.EarlyStopping(monitor="score", patience=1, min_delta=0.5, mode="max")
    small_trainer().fit(x, y, epochs=5, verbose=0,
                        callbacks=[scripted([1.0, 1.4, 1.45, 3.0, 4.0]), stop])
    assert stop.stopped_epoch == 1  # +0.4 is not an improvement of more than 0.5
    for baseline, epochs_run in [(None, [0, 1, 2]), (0.5, [0, 1])]:
        # with a baseline that is never beaten, the first epoch does not reset the counter
        stop = cb.EarlyStopping(monitor="score", patience=2, baseline=baseline)
        hist = small_trainer().fit(x, y, epochs=5, verbose=0,
                                   callbacks=[scripted([1.0] * 5), stop])
        assert hist.epoch == epochs_run


def test_missing_monitor_is_a_clear_error():
    x, y = small_data(64)
    with pytest.raises(ValueError, match="'val_loss' is not in the logs.*validation_data"):
        small_trainer().fit(x, y, epochs=1, verbose=0, callbacks=[cb.EarlyStopping()])


def test_model_checkpoint_save_best_only(tmp_path):
    x, y = small_data()
    scores = [1.0, 0.8, 0.9, 0.5, 0.6]
    ckpt = cb.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{score:.2f}.cnnkit"),
                              monitor="score", save_best_only=True)
    trainer = small_trainer()
    trainer.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[scripted(scores), ckpt])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["m-01-1.00.cnnkit", "m-02-0.80.cnnkit", "m-04-0.50.cnnkit"]
    restored = io.load(tmp_path / "m-04-0.50.cnnkit")
    assert isinstance(restored, Trainer) and restored.epoch == 4
    assert restored.history.history["score"] == scores[:4]


def test_model_checkpoint_weights_only_and_every_epoch(tmp_path):
    x, y = small_data(64)
    ckpt = cb.ModelCheckpoint(tmp_path / "w{epoch}.cnnkit", save_weights_only=True)
    trainer = small_trainer()
    trainer.fit(x, y, epochs=2, verbose=0, callbacks=[ckpt])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w1.cnnkit", "w2.cnnkit"]
    model = io.load(tmp_path / "w2.cnnkit")
    assert isinstance(model, ck.Sequential)
    for k, v in trainer.model.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v)


def test_divergence_stops_training_and_says_why(capsys):
    x, y = small_data()
    trainer = small_trainer(lr=1e12)
    hist = trainer.fit(x, y, epochs=5, batch_size=16, verbose=1,
                       callbacks=[cb.TerminateOnNaN()])
    assert trainer.diverged and hist.diverged
    assert len(hist.epoch) == 1 and math.isnan(hist.history["loss"][0])
    assert "lower learning rate" in trainer.stop_reason
    assert "lower learning rate" in capsys.readouterr().err


def test_reduce_lr_on_plateau_callback():
    """One plateau rule, PyTorch's: reduce after MORE than `patience` epochs without
    improvement (the callback drives cnnkit.optim.ReduceLROnPlateau)."""
    x, y = small_data(64)
    trainer = small_trainer(lr=0.1)
    red = cb.ReduceLROnPlateau(monitor="score", factor=0.5, patience=1, min_lr=0.02)
    hist = trainer.fit(x, y, epochs=8, verbose=0, callbacks=[scripted([1.0] * 8), red])
    assert hist.history["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02])
    assert trainer.optimizer.lr == pytest.approx(0.02)
    with pytest.raises(ValueError, match="factor"):
        cb.ReduceLROnPlateau(factor=1.0)


def test_learning_rate_scheduler_and_optim_schedules():
    x, y = small_data(64)
    trainer = small_trainer(lr=0.1)
    sched = cb.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5**epoch)
    hist = trainer.fit(x, y, epochs=3, verbose=0, callbacks=[sched])
    assert hist.history["lr"] == pytest.approx([0.1, 0.05, 0.025])

    trainer = small_trainer(lr=0.1)
    step = optim.StepLR(trainer.optimizer, step_size=2, gamma=0.1)
    hist = trainer.fit(x, y, epochs=5, verbose=0, lr_scheduler=step)
    assert hist.history["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])

    trainer = small_trainer(lr=0.1)
    warm = optim.LinearWarmup(trainer.optimizer, warmup_steps=8, start_factor=0.5)
    seen = []
    spy = cb.LambdaCallback(on_train_batch_begin=lambda b, logs: seen.append(
        trainer.optimizer.lr))
    trainer.fit(x, y, epochs=1, batch_size=8, verbose=0, lr_scheduler=warm, callbacks=[spy])
    assert seen == pytest.approx([0.1 * (0.5 + 0.5 * min(i, 8) / 8) for i in range(8)])

    trainer = small_trainer(lr=0.1)
    cos = optim.CosineAnnealingLR(trainer.optimizer, T_max=4)
    hist = trainer.fit(x, y, epochs=3, verbose=0, callbacks=[cb.SchedulerCallback(cos)])
    assert hist.history["lr"] == pytest.approx(
        [0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(3)])


def test_csv_logger(tmp_path):
    x, y = small_data(64)
    xv, yv = small_data(32, seed=2)
    path = tmp_path / "log.csv"
    trainer = small_trainer()
    hist = trainer.fit(x, y, epochs=3, verbose=0, validation_data=(xv, yv),
                       callbacks=[cb.CSVLogger(path)])
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "accuracy", "images_per_sec", "loss", "lr", "time",
                       "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert [float(r[3]) for r in rows[1:]] == hist.history["loss"]
    assert [float(r[7]) for r in rows[1:]] == hist.history["val_loss"]
    trainer.fit(x, y, epochs=4, verbose=0, validation_data=(xv, yv),
                callbacks=[cb.CSVLogger(path, separator=";", append=True)])
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("3;")


def test_lambda_callback_counts_and_batch_logs():
    x, y = small_data(100)
    calls = {k: 0 for k in ("tb", "te", "eb", "ee", "bb", "be")}
    batch_logs = []

    def bump(key):
        def f(*args):
            calls[key] += 1
        return f

    lam = cb.LambdaCallback(
        on_train_begin=bump("tb"), on_train_end=bump("te"), on_epoch_begin=bump("eb"),
        on_epoch_end=bump("ee"), on_train_batch_begin=bump("bb"),
        on_train_batch_end=lambda b, logs: (bump("be")(), batch_logs.append(dict(logs))),
    )
    small_trainer().fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[lam])
    assert calls == {"tb": 1, "te": 1, "eb": 3, "ee": 3, "bb": 12, "be": 12}
    assert set(batch_logs[0]) == {"loss", "accuracy", "size"}
    assert [b["size"] for b in batch_logs[:4]] == [32, 32, 32, 4]


def test_callback_base_and_stop_training():
    x, y = small_data(64)

    class StopAfterOne(cb.Callback):
        def on_epoch_end(self, epoch, logs=None):
            assert self.model is self.trainer.model
            self.trainer.stop_training = True

    hist = small_trainer().fit(x, y, epochs=5, verbose=0, callbacks=[StopAfterOne()])
    assert hist.epoch == [0]
    with pytest.raises(ValueError, match="not a cnnkit.callbacks.Callback"):
        small_trainer().fit(x, y, epochs=1, verbose=0, callbacks=[lambda: None])


def test_verbose_modes(capsys):
    x, y = small_data(64)
    small_trainer().fit(x, y, epochs=2, verbose=0)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    small_trainer().fit(x, y, epochs=2, verbose=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Epoch 1/2") and "loss:" in lines[0]
    small_trainer().fit(x, y, epochs=2, verbose=1)
    err = capsys.readouterr().err
    assert "Epoch 1/2" in err and "Epoch 2/2" in err and "img/s" in err and "loss" in err


# ---------------------------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------------------------


def test_dataloader_shuffle_is_a_function_of_seed_and_epoch():
    x = np.arange(50, dtype=np.float32).reshape(50, 1)
    dl = DataLoader(x, np.arange(50), batch_size=8, shuffle=True, seed=3)

    def order(loader):
        return np.concatenate([yb for _, yb in loader])

    e0, e1 = order(dl), order(dl)  # iterating advances the epoch
    assert sorted(e0) == list(range(50)) and not np.array_equal(e0, e1)
    dl.set_epoch(0)
    np.testing.assert_array_equal(order(dl), e0)
    other = DataLoader(x, np.arange(50), batch_size=5, shuffle=True, seed=3)
    other.set_epoch(1)
    np.testing.assert_array_equal(order(other), e1)  # batch size does not change the order
    again = DataLoader(x, np.arange(50), batch_size=8, shuffle=True, seed=4)
    assert not np.array_equal(order(again), e0)
    plain = DataLoader(x, np.arange(50), batch_size=8)
    np.testing.assert_array_equal(order(plain), np.arange(50))


def test_dataloader_len_drop_last_transform_and_prep():
    x = np.full((10, 4, 4), 255, np.uint8)
    dl = DataLoader(x, np.arange(10), batch_size=4)
    assert len(dl) == 3
    shapes = [xb.shape for xb, _ in dl]
    assert shapes == [(4, 1, 4, 4), (4, 1, 4, 4), (2, 1, 4, 4)]
    xb, _ = next(iter(dl))
    assert xb.dtype == np.float32 and np.all(xb == 1.0)
    dl = DataLoader(x, np.arange(10), batch_size=4, drop_last=True)
    assert len(dl) == 2 and [len(yb) for _, yb in dl] == [4, 4]

    def flip(xb, yb):
        return xb[..., ::-1] * 0, yb + 100

    dl = DataLoader(x, np.arange(10), batch_size=4, transform=flip)
    xb, yb = next(iter(dl))
    assert np.all(xb == 0) and list(yb) == [100, 101, 102, 103]
    # the stored data (uint8 kept as uint8, scaled per batch) is not modified
    assert dl.x.dtype == np.uint8 and np.all(dl.x == 255)
    nolabels = DataLoader(x, batch_size=16)
    assert [yb for _, yb in nolabels] == [None]


def test_dataloader_dataset_mode():
    class Squares:
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return np.full((3, 3), i, np.uint8), i % 2

    dl = DataLoader(Squares(), batch_size=3)
    batches = list(dl)
    assert [b[0].shape for b in batches] == [(3, 1, 3, 3), (3, 1, 3, 3), (1, 1, 3, 3)]
    assert batches[1][0][0, 0, 0, 0] == pytest.approx(3 / 255)
    assert list(batches[0][1]) == [0, 1, 0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(x=np.zeros((4, 2)), batch_size=0), "batch_size must be a positive integer"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(3)), "x has 4 samples but y has 3"),
        (dict(x=np.zeros((0, 2))), "empty"),
        (dict(x=np.zeros(4)), "shape"),
        (dict(x=np.zeros((4, 2)), seed=-1), "seed"),
        (dict(x=np.zeros((4, 2)), batch_size=8, drop_last=True), "drop_last"),
        (dict(x=np.array([[1.0, np.nan]])), "NaN or Inf"),
    ],
)
def test_dataloader_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataLoader(**kwargs)


# ---------------------------------------------------------------------------------------------
# bad input to the Trainer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet_trainer():
    ck.manual_seed(0)
    return Trainer(lenet5(), optimizer=optim.SGD(lr=0.01), device="cpu")


_X = np.zeros((8, 1, 28, 28), np.float32)
_Y = np.zeros(8, np.int64)


def _nan_x():
    x = _X.copy()
    x[5, 0, 3, 3] = np.nan
    return x


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t: t.fit(np.zeros((8, 3, 28, 28)), _Y, verbose=0),
         r"per-sample shape \(3, 28, 28\).*model cannot take"),
        (lambda t: t.fit(np.zeros((8, 28)), _Y, verbose=0), "per-sample shape"),
        (lambda t: t.fit(np.zeros(8), _Y, verbose=0), "must be .N, C, H, W."),
        (lambda t: t.fit(_X, _Y[:5], verbose=0), "x has 8 samples but y has 5"),
        (lambda t: t.fit(_X, _Y + 10, verbose=0),
         "label 10 at index 0 is out of range for a model with 10 output classes"),
        (lambda t: t.fit(_X, _Y - 1, verbose=0), "label -1 at index 0 is out of range"),
        (lambda t: t.fit(_X, np.full(8, 0.5), verbose=0), r"y\[0\] = 0.5 is not a whole number"),
        (lambda t: t.fit(_X, np.array(["a"] * 8), verbose=0), "labels must be integer"),
        (lambda t: t.fit(_X, np.full(8, 1e30), verbose=0), "label 1e.30 at index 0 is out of"),
        (lambda t: t.fit(np.full((8, 1, 28, 28), 1e300), _Y, verbose=0), "NaN or Inf"),
        (lambda t: t.fit(_nan_x(), _Y, verbose=0), "NaN or Inf.*first at index 5"),
        (lambda t: t.fit(np.zeros((0, 1, 28, 28)), np.zeros(0), verbose=0), "empty"),
        (lambda t: t.fit(_X, _Y, batch_size=0, verbose=0), "batch_size must be a positive"),
        (lambda t: t.fit(_X, _Y, epochs=-1, verbose=0), "epochs"),
        (lambda t: t.fit(_X, None, verbose=0), "y is required"),
        (lambda t: t.fit(_X, _Y, validation_split=1.5, verbose=0), "validation_split"),
        (lambda t: t.fit(_X, _Y, validation_split=0.01, verbose=0), "validation_split"),
        (lambda t: t.fit(_X, _Y, verbose=3), "verbose"),
        (lambda t: t.fit(_X, _Y, verbose=0, validation_data=(_X, _Y[:3])), "x has 8 samples"),
        (lambda t: t.evaluate(_X, _Y[:3]), "x has 8 samples but y has 3"),
        (lambda t: t.evaluate(_X, _Y + 20), "out of range"),
        (lambda t: t.evaluate(np.zeros((0, 1, 28, 28)), np.zeros(0)), "empty"),
        (lambda t: t.evaluate(_X, _Y, batch_size=0), "batch_size"),
        (lambda t: t.predict(np.zeros((4, 1, 20, 20))), "per-sample shape"),
        (lambda t: t.predict(_nan_x()), "NaN"),
        (lambda t: t.predict(_X, batch_size=-2), "batch_size"),
    ],
)
def test_bad_input_names_the_problem(lenet_trainer, call, match):
    before = lenet_trainer.model._net.flat_params()
    with pytest.raises(ValueError, match=match):
        call(lenet_trainer)
    np.testing.assert_array_equal(lenet_trainer.model._net.flat_params(), before)


def test_trainer_construction_errors():
    with pytest.raises(ValueError, match="no optimizer"):
        Trainer(small_model(), device="cpu").fit(*small_data(16), verbose=0)
    with pytest.raises(ValueError, match="model must be a cnnkit.Sequential"):
        Trainer(object())
    with pytest.raises(ValueError, match="unknown loss"):
        Trainer(small_model(), loss="hinge")
    with pytest.raises(ValueError, match="unknown metric"):
        Trainer(small_model(), metrics=("f1",))
    with pytest.raises(ValueError, match="accuracy.*cross_entropy"):
        Trainer(small_model(), loss="mse", metrics=["accuracy"])
    with pytest.raises(ValueError, match="unknown device"):
        Trainer(small_model(), device="tpu")
    with pytest.raises(ValueError, match="lr_scheduler must schedule the trainer's optimizer"):
        Trainer(small_model(), optimizer="sgd", lr_scheduler=optim.StepLR(optim.SGD(), 2))
    if not ck.cuda_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            Trainer(small_model(), device="cuda")
    t = Trainer(small_model(), optimizer="adam", device="auto")
    assert isinstance(t.optimizer, optim.Adam)
    assert t.device == ("cuda" if ck.cuda_available() else "cpu")


def test_label_forms_accepted():
    x, y = small_data(48)
    onehot = np.eye(3, dtype=np.float32)[y]
    for labels in (y.astype(np.uint8), y.astype(np.float64), y[:, None], onehot):
        t = small_trainer()
        t.fit(x, labels, epochs=1, batch_size=16, verbose=0, shuffle=False)
        ref = small_trainer()
        ref.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
        np.testing.assert_array_equal(t.model._net.flat_params(), ref.model._net.flat_params())


@pytest.mark.requires_cuda
def test_fit_on_cuda_matches_cpu(tmp_path):
    x, y = small_data()
    out = {}
    for dev in ("cpu", "cuda"):
        t = Trainer(small_model(), optimizer=optim.SGD(lr=0.05, momentum=0.9), device=dev)
        h = t.fit(x, y, epochs=2, batch_size=16, verbose=0, validation_data=(x, y))
        assert t.model.device == dev
        out[dev] = (h.history["loss"], t.model.state_dict(), t.predict(x))
        t.save(tmp_path / f"{dev}.cnnkit")
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=1e-3)
    for k, v in out["cpu"][1].items():
        np.testing.assert_allclose(out["cuda"][1][k], v, rtol=1e-3, atol=1e-4, err_msg=k)
    np.testing.assert_allclose(out["cuda"][2], out["cpu"][2], atol=1e-4)
    back = io.load(tmp_path / "cuda.cnnkit", device="cpu")
    for k, v in out["cuda"][1].items():
        np.testing.assert_array_equal(back.model.state_dict()[k], v)
