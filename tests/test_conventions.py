"""One convention per question: how input is converted, what predict returns, how a run is
made reproducible, how a finished run is extended, what CSVLogger leaves after Ctrl-C, which
device strings are accepted, what one layer object in two places and two concurrent fits do.
"""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import callbacks, cli, optim
from cnnkit.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import fake_mnist, one_thread, write_fake_mnist  # noqa: E402, F401

ROOT = Path(__file__).resolve().parent.parent


def lenet() -> ck.Sequential:
    ck.manual_seed(0)
    return ck.models.lenet5()


def softmax64(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def uint8_images(n: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


# ---- cnnkit train --resume of a finished run ---------------------------------------------------


def _train_args(data_dir: Path, out: Path, epochs: int) -> list[str]:
    return ["train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", str(epochs),
            "--val-size", "16", "--batch-size", "32", "--verbose", "2", "--device", "cpu",
            "--threads", "1"]  # fmt: skip


def _epoch_lrs(text: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"Epoch (\d+)/\d+ .* lr: ([0-9.e+-]+)", text)}


@pytest.mark.usefixtures("one_thread")
def test_resume_of_a_finished_run_with_more_epochs_continues_the_schedule(
        tmp_path, fake_mnist, capsys):  # noqa: F811
    """`cnnkit train --epochs 2`, then `--resume ... --epochs 4`: the cosine schedule is
    re-planned over 4 epochs from where the run stopped (epoch 3 at lr/2, not at 0), and the
    resumed epochs learn."""
    out = tmp_path / "run"
    ckpt = out / "checkpoint.cnnkit"
    assert cli.main(_train_args(fake_mnist, out, 2)) == 0
    first = _epoch_lrs(capsys.readouterr().out)
    base = 1e-3  # adam's default in the CLI
    assert first == pytest.approx({1: base, 2: base / 2})
    before = ck.load_model(ckpt).state_dict()

    assert cli.main(_train_args(fake_mnist, out, 4) + ["--resume", str(ckpt)]) == 0
    text = capsys.readouterr().out
    resumed = _epoch_lrs(text)
    # epochs 3 and 4 of a 4-epoch cosine: base * (1 + cos(pi * t / 4)) / 2 for t = 2, 3
    want = [base, base / 2, base / 2, base * (1 + math.cos(3 * math.pi / 4)) / 2]
    assert resumed == pytest.approx({3: want[2], 4: want[3]}, rel=5e-3)  # printed with %.3g
    assert ck.load(ckpt, device="cpu").history.history["lr"] == pytest.approx(want)
    after = ck.load_model(ckpt).state_dict()
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # it learned

    # the same again with the step schedule: its step_size is re-planned over 4 epochs too
    out2 = tmp_path / "run-step"
    assert cli.main(_train_args(fake_mnist, out2, 2) + ["--schedule", "step"]) == 0
    capsys.readouterr()
    assert cli.main(_train_args(fake_mnist, out2, 4)
                    + ["--resume", str(out2 / "checkpoint.cnnkit")]) == 0
    lrs = _epoch_lrs(capsys.readouterr().out)
    assert set(lrs) == {3, 4} and min(lrs.values()) > 0  # step_size 1: 1e-5, 1e-6


@pytest.mark.usefixtures("one_thread")
def test_resume_keeps_the_schedule_kind_of_the_checkpoint(tmp_path, fake_mnist, capsys):  # noqa: F811
    """The resume command that `cnnkit train` prints has no --schedule: a run trained with
    `--schedule none` stays at a constant lr when resumed (not a fresh cosine); an explicit
    `--schedule none` on a resumed cosine run continues at the run's base lr."""
    out = tmp_path / "run"
    ckpt = out / "checkpoint.cnnkit"
    assert cli.main(_train_args(fake_mnist, out, 2) + ["--schedule", "none"]) == 0
    assert cli.main(_train_args(fake_mnist, out, 4) + ["--resume", str(ckpt)]) == 0
    assert ck.load(ckpt, device="cpu").history.history["lr"] == pytest.approx([1e-3] * 4)

    out2 = tmp_path / "run-cosine"
    ckpt2 = out2 / "checkpoint.cnnkit"
    assert cli.main(_train_args(fake_mnist, out2, 2)) == 0
    assert cli.main(_train_args(fake_mnist, out2, 3)
                    + ["--resume", str(ckpt2), "--schedule", "none"]) == 0
    t = ck.load(ckpt2, device="cpu")
    assert t.history.history["lr"] == pytest.approx([1e-3, 5e-4, 1e-3])
    assert t.lr_scheduler is None
    capsys.readouterr()


# ---- reproducibility as the README shows it ---------------------------------------------------


def python_block(path: Path, first_line: str) -> str:
    """The ```python block of a Markdown file that starts with `first_line`."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"{path.name}: no single python block starting {first_line!r}"
    return found[0]


def test_readme_example_as_written_is_reproducible(tmp_path, monkeypatch, capsys):
    """The README's Python example run twice in one process (MNIST replaced by a small fake
    of the same dtype and shape) gives bit-identical weights and results."""
    code = python_block(ROOT / "README.md", "import numpy as np\nimport cnnkit as ck\n")
    rng = np.random.default_rng(0)
    fake = []
    for n in (160, 40):
        y = rng.integers(0, 10, n)
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 4 + 2 * c : 8 + 2 * c, 4:24] = 255
        fake.append((x, y))
    monkeypatch.setattr(ck.datasets, "load_mnist", lambda *a, **k: tuple(fake))
    monkeypatch.chdir(tmp_path)
    runs = []
    for _ in range(2):
        env: dict = {}
        exec(compile(code, "README.md", "exec"), env)
        runs.append((env["model"].state_dict(), env["history"].history["loss"],
                     env["trainer"].evaluate(fake[1][0], fake[1][1])))
        assert (tmp_path / "lenet5.cnnkit").exists()
    capsys.readouterr()
    (w1, loss1, ev1), (w2, loss2, ev2) = runs
    assert loss1 == loss2 and ev1 == ev2
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)


# ---- one input conversion, one meaning of predict ---------------------------------------------


def test_every_entry_point_converts_uint8_images_the_same_way():
    """uint8 (N, 28, 28) means images in [0, 1] with one channel, at every entry point."""
    model = lenet()
    x8 = uint8_images()
    xf = (x8.astype(np.float32) * np.float32(1 / 255))[:, None]
    want = model.forward(xf)
    assert np.abs(want).max() < 50  # logits of a fresh net on [0, 1] input
    assert np.array_equal(model.forward(x8), want)
    assert np.array_equal(model(x8), want)
    assert np.array_equal(model.predict(x8), model.predict(xf))
    trainer = ck.Trainer(model, device="cpu")
    assert np.array_equal(trainer.predict(x8), model.predict(xf))
    xb, _ = next(iter(DataLoader(x8, batch_size=len(x8))))
    assert xb.dtype == np.float32 and np.array_equal(xb, xf)
    labels = np.arange(len(x8)) % 10
    assert trainer.evaluate(x8, labels) == trainer.evaluate(xf, labels)
    conv = ck.Conv2d(1, 2, 3)  # a layer on its own takes the same input
    assert np.array_equal(conv.forward(x8), conv.forward(xf))


def test_float_and_integer_arrays_keep_their_values_and_3d_stays_3d_where_it_fits():
    model = lenet()
    x = np.random.default_rng(1).random((5, 1, 28, 28))
    assert np.array_equal(model.forward(x), model.forward(x.astype(np.float32)))
    ints = np.random.default_rng(2).integers(0, 3, (5, 1, 28, 28)).astype(np.int64)
    assert np.array_equal(model.forward(ints), model.forward(ints.astype(np.float32)))
    # (N, H, W) gains a channel axis only where the model wants (N, 1, H, W)
    relu = ck.ReLU()
    assert relu.forward(np.ones((2, 3, 4), np.float32)).shape == (2, 3, 4)
    mlp = ck.Sequential([ck.Flatten(), ck.Linear(12, 2)])
    assert mlp.forward(np.ones((2, 3, 4), np.float32)).shape == (2, 2)
    pooled = ck.Sequential([ck.ReLU(), ck.MaxPool2d(2)])
    assert pooled.forward(np.ones((2, 4, 4), np.float32)).shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(2, 3, 8\)"):
        ck.Conv2d(3, 8, 3).forward(np.zeros((2, 3, 8)))  # not a 1-channel model: as given


def test_torch_tensors_are_accepted_at_every_entry_point():
    torch = pytest.importorskip("torch")
    model = lenet()
    x8 = uint8_images(6)
    t8 = torch.from_numpy(x8)
    want = model.forward(x8)
    assert np.array_equal(model.forward(t8), want)
    assert np.array_equal(model.predict(t8), model.predict(x8))
    trainer = ck.Trainer(model, optimizer=optim.SGD(lr=0.0), device="cpu")
    assert np.array_equal(trainer.predict(t8), model.predict(x8))
    y = torch.arange(6) % 10
    assert trainer.evaluate(t8, y) == trainer.evaluate(x8, y.numpy())
    xb, yb = next(iter(DataLoader(t8, y, batch_size=6)))
    assert np.array_equal(xb, DataLoader(x8, batch_size=6)._batch(np.arange(6))[0])
    trainer.fit(t8, y, epochs=1, batch_size=3, verbose=0)
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)


@pytest.mark.parametrize("call", [
    lambda m, x: m.forward(x),
    lambda m, x: m.predict(x),
    lambda m, x: ck.Trainer(m, device="cpu").predict(x),
    lambda m, x: ck.Trainer(m, device="cpu").evaluate(x, np.zeros(len(x), np.int64)),
    lambda m, x: ck.Trainer(m, optimizer="sgd", device="cpu").fit(
        x, np.zeros(len(x), np.int64), verbose=0),
    lambda m, x: ck.Trainer(m, optimizer="sgd", device="cpu").fit(
        DataLoader(x, np.zeros(len(x), np.int64)), verbose=0),
], ids=["forward", "predict", "trainer-predict", "evaluate", "fit", "fit-dataloader"])
@pytest.mark.parametrize("channels", [1, 3])
def test_nhwc_input_is_refused_with_the_transpose_that_fixes_it(call, channels):
    ck.manual_seed(0)
    model = ck.Sequential([ck.Conv2d(channels, 4, 3), ck.ReLU(), ck.Flatten(),
                           ck.Linear(4 * 6 * 6, 10)])
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, channels), dtype=np.uint8)
    with pytest.raises(ValueError, match=re.escape(
            "looks like NHWC; transpose to NCHW with x.transpose(0, 3, 1, 2)")):
        call(model, x)
    call(model, x.transpose(0, 3, 1, 2))  # the suggested fix works


def test_predict_means_probabilities_everywhere_and_forward_gives_logits():
    model = lenet()
    x = uint8_images(20)
    logits = model.forward(x)
    proba = model.predict(x, batch_size=7)
    np.testing.assert_allclose(proba, softmax64(logits), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert np.array_equal(ck.Trainer(model, device="cpu").predict(x), proba)
    # a model trained with mse predicts its raw outputs, through the model and the trainer
    ck.manual_seed(0)
    reg = ck.Sequential([ck.Flatten(), ck.Linear(784, 3)])
    t = ck.Trainer(reg, loss="mse", device="cpu")
    assert np.array_equal(reg.predict(x), reg.forward(x))
    assert np.array_equal(t.predict(x), reg.forward(x))
    # an output that is not (N, C >= 2) is never passed through a softmax
    one = ck.Sequential([ck.Flatten(), ck.Linear(784, 1)])
    assert np.array_equal(one.predict(x), one.forward(x))


def test_the_pytorch_style_loop_gives_the_numbers_of_trainer_predict():
    """docs/training.md's PyTorch-style loop on uint8 MNIST-like arrays, then the README's
    `model.forward(x)`: the same numbers as Trainer.predict on the same uint8 batch, and the
    loop trains as Trainer.fit does on the same batches."""
    x = uint8_images(64, seed=3)
    y = np.random.default_rng(4).integers(0, 10, 64)
    code = python_block(ROOT / "docs" / "training.md", "opt = optim.SGD(model, ")
    model = lenet()
    exec(compile(code, "training.md", "exec"), {"ck": ck, "optim": optim, "model": model,
                                                "x": x, "y": y})
    trainer = ck.Trainer(model, device="cpu")
    xb = x[:16]
    np.testing.assert_allclose(softmax64(model.forward(xb)), trainer.predict(xb), rtol=1e-5,
                               atol=1e-7)
    assert np.array_equal(model.predict(xb), trainer.predict(xb))

    fitted = lenet()
    ref = ck.Trainer(fitted, optimizer=optim.SGD(lr=0.1, momentum=0.9), device="cpu", seed=0)
    ref.fit(x, y, epochs=1, batch_size=64, shuffle=True, verbose=0)
    mine = model.state_dict()
    for k, v in fitted.state_dict().items():
        np.testing.assert_allclose(mine[k], v, rtol=1e-4, atol=1e-6, err_msg=k)


# ---- history.csv after Ctrl-C -------------------------------------------------------------------


@pytest.fixture
def sigint_delivered():
    """SIGINT delivered like a Ctrl-C even when the runner started the tests with it ignored
    (as tests/test_hardening_interrupt.py does)."""
    prev = signal.getsignal(signal.SIGINT)
    if prev is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, prev)


class SigintAt(callbacks.Callback):
    """A real SIGINT to this process at the end of the given global batch (1-based)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.n = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.n += 1
        if self.n == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def small_run() -> tuple[ck.Trainer, np.ndarray, np.ndarray, tuple]:
    ck.manual_seed(2)
    model = ck.Sequential([ck.Conv2d(1, 3, 3), ck.ReLU(), ck.Flatten(), ck.Linear(3 * 6 * 6, 4)])
    rng = np.random.default_rng(5)
    x, y = rng.random((48, 1, 8, 8), dtype=np.float32), rng.integers(0, 4, 48)
    val = (rng.random((16, 1, 8, 8), dtype=np.float32), rng.integers(0, 4, 16))
    return ck.Trainer(model, optimizer=optim.Adam(lr=1e-2), device="cpu"), x, y, val


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.usefixtures("sigint_delivered")
def test_history_csv_is_complete_after_ctrl_c_and_after_resuming(tmp_path):
    log, ckpt = tmp_path / "history.csv", tmp_path / "ck.cnnkit"
    t, x, y, val = small_run()  # 6 batches of 8 per epoch
    t.fit(x, y, epochs=5, batch_size=8, validation_data=val, verbose=0, checkpoint_path=ckpt,
          callbacks=[callbacks.CSVLogger(log), SigintAt(15)])  # Ctrl-C in epoch 3
    assert t.interrupted and t.epoch == 2
    rows = read_csv(log)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
                            "time", "images_per_sec"}
    assert float(rows[1]["loss"]) == pytest.approx(t.history.history["loss"][1], rel=1e-12)

    resumed = ck.load(ckpt, device="cpu")  # a new process would do this, with a new logger
    resumed.fit(x, y, epochs=5, batch_size=8, validation_data=val, verbose=0,
                callbacks=[callbacks.CSVLogger(log)])
    rows = read_csv(log)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]  # the whole run, not 2..4
    for k, values in resumed.history.history.items():
        assert [float(r[k]) for r in rows] == pytest.approx(values, rel=1e-12), k


@pytest.mark.usefixtures("sigint_delivered")
def test_history_csv_has_its_header_when_ctrl_c_comes_in_the_first_epoch(tmp_path):
    log = tmp_path / "history.csv"
    t, x, y, _ = small_run()
    t.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callbacks.CSVLogger(log),
                                                              SigintAt(2)])
    assert t.interrupted and t.epoch == 0
    assert log.read_text().splitlines() == [
        "epoch,accuracy,images_per_sec,loss,lr,time"]


# ---- one device parser ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["Sequential.to", "Trainer", "load", "cnnkit --device"])
def test_one_device_parser_accepts_torch_spellings_for_one_gpu(where, tmp_path, capsys):
    t0 = ck.Trainer(lenet(), optimizer="adam", device="cpu")
    path = tmp_path / "t.cnnkit"
    ck.save(t0, path)

    def use(device):
        if where == "Sequential.to":
            return lenet().to(device).device
        if where == "Trainer":
            return ck.Trainer(lenet(), device=device).device
        if where == "load":
            return ck.load(path, device=device).device
        return cli._pick_device(device)

    assert use("cpu") == "cpu"
    assert use("auto") == ("cuda" if ck.cuda_available() else "cpu")
    for spelling in ("cuda", "cuda:0"):
        if ck.cuda_available():
            assert use(spelling) == "cuda"
        else:
            with pytest.raises(RuntimeError, match=r"device='cuda(:0)?' but no CUDA device is "
                                                   r"available.*use device='cpu' or 'auto'"):
                use(spelling)
    for bad in ("gpu", "cuda:1", "CPU", "", None):
        with pytest.raises(ValueError, match=r"unknown device .* \(expected 'auto', 'cpu', "
                                             r"'cuda' or 'cuda:0'; cnnkit drives one GPU\)"):
            use(bad)
    torch = pytest.importorskip("torch")
    assert use(torch.device("cpu")) == "cpu"
    capsys.readouterr()


def test_cli_device_options_accept_the_same_spellings():
    parser = cli.build_parser()
    for command in (["train"], ["evaluate", "m.cnnkit"], ["predict", "m.cnnkit", "a.npy"]):
        for spelling in ("auto", "cpu", "cuda", "cuda:0"):
            assert parser.parse_args([*command, "--device", spelling]).device == spelling


# ---- one integer check, one plateau rule ------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: ck.Trainer(lenet(), optimizer="sgd").fit(uint8_images(2), [0, 1], epochs=1,
                                                     batch_size=1.5),
    lambda: ck.Trainer(lenet()).evaluate(uint8_images(2), [0, 1], batch_size=1.5),
    lambda: lenet().predict(uint8_images(2), batch_size=1.5),
    lambda: DataLoader(uint8_images(2), batch_size=1.5),
    lambda: optim.StepLR(optim.SGD(lr=0.1), step_size=1.5),
    lambda: optim.CosineAnnealingLR(optim.SGD(lr=0.1), T_max=1.5),
    lambda: callbacks.EarlyStopping(patience=1.5),
    lambda: callbacks.ReduceLROnPlateau(patience=1.5),
], ids=["fit", "evaluate", "predict", "loader", "steplr", "cosine", "early", "plateau"])
def test_one_integer_check_says_the_same_everywhere(call):
    with pytest.raises(ValueError, match=r"must be a (positive|non-negative) integer, got 1.5"):
        call()


def test_plot_uses_the_same_integer_check():
    pytest.importorskip("matplotlib")
    from cnnkit import plot

    with pytest.raises(ValueError, match=r"max_filters must be a positive integer, got 0"):
        plot.conv_filters(lenet(), "f.png", max_filters=0)


def test_reduce_lr_on_plateau_callback_and_schedule_follow_torch():
    """The Keras-style callback and cnnkit.optim.ReduceLROnPlateau are one rule: PyTorch's."""
    torch = pytest.importorskip("torch")
    metrics = [1.0, 0.9, 0.95, 0.92, 0.91, 0.9, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91]
    kw = dict(factor=0.5, patience=2, cooldown=1, min_lr=0.01)
    p = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([p], lr=0.1)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, threshold=0.02,
                                                        threshold_mode="abs", **kw)
    want = []
    for m in metrics:
        want.append(topt.param_groups[0]["lr"])
        tsched.step(m)

    ours = optim.SGD(lr=0.1)
    sched = optim.ReduceLROnPlateau(ours, threshold=0.02, threshold_mode="abs", **kw)
    got_sched = []
    for m in metrics:
        got_sched.append(ours.lr)
        sched.step(m)

    t, x, y, _ = small_run()
    t.optimizer.lr = 0.1
    values = iter(metrics)
    feed = callbacks.LambdaCallback(on_epoch_end=lambda e, logs: logs.update(score=next(values)))
    h = t.fit(x, y, epochs=len(metrics), batch_size=48, verbose=0,
              callbacks=[feed, callbacks.ReduceLROnPlateau(monitor="score", min_delta=0.02,
                                                            **kw)])
    assert got_sched == pytest.approx(want)
    assert h.history["lr"] == pytest.approx(want)
    assert min(want) < 0.1  # the sequence does reduce


# ---- one layer object, one position -------------------------------------------------------------


def test_the_same_layer_object_twice_is_refused_naming_both_positions():
    conv, relu, lin = ck.Conv2d(1, 2, 3), ck.ReLU(), ck.Linear(4, 4)
    with pytest.raises(ValueError, match=r"layer 3 is the same ReLU object as layer 1.*Create a "
                                         r"new layer for position 3, e\.g\. ReLU\(\)"):
        ck.Sequential([conv, relu, ck.MaxPool2d(2), relu])
    # nothing was taken over: the layers still make a model
    model = ck.Sequential([conv, relu, ck.Flatten()])
    with pytest.raises(ValueError, match=r"Sequential.add: layer 3 is the same ReLU object as "
                                         r"layer 1"):
        model.add(relu)
    assert len(model) == 3
    with pytest.raises(ValueError, match=r"layer 1 is the same Linear object as layer 0.*"
                                         r"Linear\(in_features=4, out_features=4, bias=True\)"):
        ck.Sequential([lin, lin])
    ck.Sequential([lin, ck.Linear(4, 4)])  # two layers of the same kind are fine


# ---- one fit at a time ------------------------------------------------------------------------


class Hold(callbacks.Callback):
    """Holds the first batch of a fit until released."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.release = threading.Event(), threading.Event()

    def on_train_batch_begin(self, batch, logs=None):
        if not self.inside.is_set():
            self.inside.set()
            assert self.release.wait(30)


def test_a_second_fit_on_a_fitting_trainer_raises_at_once():
    t, x, y, _ = small_run()
    hold = Hold()
    box: dict = {}
    th = threading.Thread(target=lambda: box.update(
        h=t.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[hold])))
    th.start()
    try:
        assert hold.inside.wait(30)
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match="this Trainer is already fitting"):
            t.fit(x, y, epochs=4, batch_size=8, verbose=0)
        assert time.perf_counter() - start < 5  # at once, not after the other fit
        with pytest.raises(RuntimeError, match="model is already being trained by"):
            ck.Trainer(t.model, optimizer="sgd")
        with pytest.raises(RuntimeError, match="fitting in another thread"):
            t.load_checkpoint("unused.cnnkit")
    finally:
        hold.release.set()
        th.join(60)
    assert box["h"].epoch == [0, 1] and t.history.epoch == [0, 1]  # history not corrupted
    # from inside its own callbacks too, and the trainer is usable again afterwards
    inner = callbacks.LambdaCallback(on_train_begin=lambda logs: t.fit(x, y, verbose=0))
    with pytest.raises(RuntimeError, match="this Trainer is already fitting"):
        t.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[inner])
    t.fit(x, y, epochs=4, batch_size=8, verbose=0)
    assert t.history.epoch == [0, 1, 2, 3]


def test_evaluate_and_predict_from_another_thread_during_fit_change_nothing():
    """Allowed: they run between two updates (the native step is atomic) and see the weights
    of that moment; the training run is bit-identical to one without them."""
    alone, x, y, val = small_run()
    alone.fit(x, y, epochs=3, batch_size=8, validation_data=val, verbose=0)

    t, x, y, val = small_run()
    stop = threading.Event()
    seen = []

    def watch():
        while not stop.is_set():
            seen.append((t.evaluate(*val), t.predict(val[0]), t.model.predict(val[0])))

    th = threading.Thread(target=watch)
    th.start()
    try:
        t.fit(x, y, epochs=3, batch_size=8, validation_data=val, verbose=0)
    finally:
        stop.set()
        th.join(60)
    assert seen
    for ev, p, _ in seen:
        assert math.isfinite(ev["loss"]) and p.shape == (16, 4)
        np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)
    assert t.history.history["loss"] == alone.history.history["loss"]
    for k, v in alone.model.state_dict().items():
        assert np.array_equal(t.model.state_dict()[k], v), k


def test_losses_and_manual_seed_use_the_same_conversions():
    torch = pytest.importorskip("torch")
    logits = torch.zeros(2, 3, requires_grad=True)  # np.asarray alone refuses this tensor
    assert ck.losses.CrossEntropyLoss()(logits, torch.tensor([0, 1])) == pytest.approx(
        math.log(3))
    assert ck.losses.MSELoss()(torch.ones(2, 2, requires_grad=True), np.ones((2, 2))) == 0.0
    ck.manual_seed(np.int64(3))
    with pytest.raises(ValueError, match=r"manual_seed: seed must be a non-negative integer"):
        ck.manual_seed(True)
