"""cnnkit.callbacks.TensorBoard: the event files it writes, read back with tensorboard's own
EventAccumulator: scalars per epoch (equal to the History) and per step, histograms of every
parameter and gradient, images (first conv's filters, sample predictions), the model summary;
training itself unchanged; `cnnkit train --tensorboard DIR`."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import callbacks as cb
from cnnkit import cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import fake_mnist, isolate_datasets, one_thread  # noqa: E402, F401

pytest.importorskip("tensorboard", reason='tensorboard is not installed (pip install '
                    '"cnnkit[tensorboard]")')

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

N, BATCH, EPOCHS, UPDATE = 96, 16, 2, 4  # 6 batches an epoch


def data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 12x12 images: the class is where a bright square is."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = (rng.random((n, 1, 12, 12)) * 60).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 0, 6 * r : 6 * r + 4, 6 * col : 6 * col + 4] = 255
    return x, y


def small_model() -> ck.Sequential:
    ck.manual_seed(0)
    return ck.Sequential([ck.Conv2d(1, 4, 3, padding=1), ck.BatchNorm2d(4), ck.ReLU(),
                          ck.MaxPool2d(2), ck.Flatten(), ck.Dropout(0.2), ck.Linear(4 * 36, 4)])


def fit(callbacks: list) -> ck.Trainer:
    x, y = data()
    t = ck.Trainer(small_model(), optimizer=ck.optim.Adam(lr=1e-2), device="cpu", seed=3)
    t.fit(x, y, epochs=EPOCHS, batch_size=BATCH, validation_data=data(32, seed=1),
          callbacks=callbacks, verbose=0)
    return t


def accumulator(log_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0,
                                                       "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and every chunk's CRC."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, size = 8, None
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", png[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        pos += 12 + n
    assert size is not None
    return size


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("tb")
    x, y = data(8, seed=2)
    tb = cb.TensorBoard(log_dir, histogram_freq=1, images=True, update_freq=UPDATE,
                        sample_data=(x, y))
    trainer = fit([tb])
    return trainer, accumulator(log_dir), tb


@pytest.mark.usefixtures("one_thread")
def test_epoch_scalars_equal_the_history(run):
    trainer, ea, _ = run
    hist = trainer.history.history
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_sec", "time"):
        events = ea.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == list(range(EPOCHS))
        np.testing.assert_allclose([e.value for e in events], hist[key], rtol=1e-6,
                                   err_msg=key)


@pytest.mark.usefixtures("one_thread")
def test_step_scalars_every_update_freq_steps(run):
    trainer, ea, _ = run
    steps = list(range(UPDATE, EPOCHS * N // BATCH + 1, UPDATE))  # 4, 8, 12
    for key in ("loss", "accuracy", "lr", "images_per_sec"):
        events = ea.Scalars(f"batch/{key}")
        assert [e.step for e in events] == steps, key
        assert all(np.isfinite(e.value) for e in events)
    assert all(e.value > 0 for e in ea.Scalars("batch/images_per_sec"))
    assert all(0 <= e.value <= 1 for e in ea.Scalars("batch/accuracy"))
    assert ea.Scalars("batch/lr")[0].value == pytest.approx(1e-2)


@pytest.mark.usefixtures("one_thread")
def test_histograms_of_every_parameter_and_gradient(run):
    trainer, ea, _ = run
    tags = set(ea.Tags()["histograms"])
    state = trainer.model.state_dict()
    params = trainer.model._net.param_names()
    assert {f"parameters/{k}" for k in state} <= tags  # parameters and BatchNorm buffers
    assert {f"gradients/{k}" for k in params} <= tags
    for k, v in state.items():
        events = ea.Histograms(f"parameters/{k}")
        assert [e.step for e in events] == list(range(EPOCHS))
        last = events[-1].histogram_value  # written after the last epoch: the final weights
        assert last.num == v.size
        assert sum(last.bucket) == v.size
        assert last.min == pytest.approx(float(v.min()), abs=1e-6)
        assert last.max == pytest.approx(float(v.max()), abs=1e-6)
        assert last.sum == pytest.approx(float(v.astype(np.float64).sum()), rel=1e-4, abs=1e-5)
    for k in params:
        g = ea.Histograms(f"gradients/{k}")[-1].histogram_value
        assert g.num == state[k].size
        assert g.sum_squares > 0, f"the gradient of {k} is zero"


@pytest.mark.usefixtures("one_thread")
def test_gradients_are_those_of_the_sample_batch(run, tmp_path):
    """The gradient histogram of the last epoch is the gradient of the loss on the sample
    data, with the final weights, in training mode: recompute it on a copy by hand."""
    trainer, ea, tb = run
    x, y = tb._samples
    m = cb._model_copy(trainer.model)
    out = m._net.forward(x, True)
    loss = ck.losses.CrossEntropyLoss()
    loss.forward(out, y)
    m._net.backward(loss.backward(), False)
    g = m.grad_dict()["6.weight"].astype(np.float64)
    h = ea.Histograms("gradients/6.weight")[-1].histogram_value
    assert h.sum == pytest.approx(g.sum(), rel=1e-3, abs=1e-7)
    assert h.sum_squares == pytest.approx(float((g * g).sum()), rel=1e-3)


@pytest.mark.usefixtures("one_thread")
def test_images_and_text(run):
    trainer, ea, _ = run
    assert set(ea.Tags()["images"]) == {"filters/0", "predictions/samples"}
    for tag in ("filters/0", "predictions/samples"):
        events = ea.Images(tag)
        assert [e.step for e in events] == list(range(EPOCHS))
        im = events[-1]
        assert png_size(im.encoded_image_string) == (im.width, im.height)
        assert im.width > 20 and im.height > 20
    summary = ea.Tensors("model/summary")[0].tensor_proto.string_val[0].decode()
    assert "Total params" in summary and "Conv2d" in summary
    assert f"{trainer.model.num_parameters():,}" in summary
    labels = ea.Tensors("predictions/labels")[-1].tensor_proto.string_val[0].decode()
    assert labels.count("\n") == 8 + 1  # header, rule, 8 samples
    probs = trainer.predict(data(8, seed=2)[0])
    assert f"| 0 | {int(data(8, seed=2)[1][0])} | {int(probs[0].argmax())} |" in labels


@pytest.mark.usefixtures("one_thread")
def test_training_is_unchanged_by_the_callback(run):
    """Gradients are taken on a copy: the weights, BatchNorm statistics and Dropout stream
    of a run with the callback are those of a run without it."""
    with_tb, _, _ = run
    without = fit([])
    for k, v in without.model.state_dict().items():
        np.testing.assert_array_equal(with_tb.model.state_dict()[k], v, err_msg=k)
    assert with_tb.history.history["loss"] == without.history.history["loss"]


def test_options_and_hooks(tmp_path):
    tb = cb.TensorBoard(tmp_path, update_freq="epoch")
    assert not tb.uses_batch_hooks()
    assert cb.TensorBoard(tmp_path).uses_batch_hooks()
    assert cb.TensorBoard.main_process_only  # data-parallel: rank 0 writes
    for bad in (dict(update_freq=0), dict(update_freq="batch"), dict(histogram_freq=-1),
                dict(sample_data=np.zeros(3)), dict(log_dir="")):
        with pytest.raises(ValueError, match="TensorBoard"):
            cb.TensorBoard(**{"log_dir": tmp_path, **bad})


@pytest.mark.usefixtures("one_thread")
def test_epoch_only_without_sample_data(tmp_path):
    """update_freq='epoch' writes no step scalars; without sample data there are parameter
    histograms and the filters, no gradients and no prediction images."""
    fit([cb.TensorBoard(tmp_path, update_freq="epoch", histogram_freq=2)])
    ea = accumulator(tmp_path)
    tags = ea.Tags()
    assert not any(t.startswith("batch/") for t in tags["scalars"])
    assert "epoch/loss" in tags["scalars"]
    assert [e.step for e in ea.Histograms("parameters/0.weight")] == [1]  # every 2nd epoch
    assert not any(t.startswith("gradients/") for t in tags["histograms"])
    assert tags["images"] == ["filters/0"]


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    with pytest.raises(ImportError, match=r'pip install "cnnkit\[tensorboard\]"'):
        cb.TensorBoard(tmp_path)


@pytest.mark.usefixtures("one_thread")
def test_cli_train_tensorboard(fake_mnist, tmp_path):  # noqa: F811
    out, logs = tmp_path / "run", tmp_path / "logs"
    code = cli.main(["train", "--data-dir", str(fake_mnist), "--out", str(out), "--epochs", "1",
                     "--val-size", "32", "--verbose", "0", "--device", "cpu", "--tensorboard",
                     str(logs)])
    assert code == 0
    assert list(logs.glob("events.out.tfevents.*"))
    ea = accumulator(logs)
    assert [e.step for e in ea.Scalars("epoch/val_accuracy")] == [0]
    assert "predictions/samples" in ea.Tags()["images"]
    assert (out / "report.html").stat().st_size > 10_000
