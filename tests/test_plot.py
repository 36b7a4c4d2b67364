"""Tests for cnnkit.plot: each function writes a valid PNG; bad input gives clear errors."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib.image  # noqa: E402

import cnnkit as ck  # noqa: E402
from cnnkit import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path, min_bytes: int = 3000) -> tuple[int, int]:
    """Assert path is a real, non-trivial PNG; returns its (height, width) in pixels."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC, f"{path} is not a PNG"
    assert os.path.getsize(path) >= min_bytes, f"{path} is suspiciously small"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    h, w = img.shape[:2]
    assert h >= 100 and w >= 100
    # Not a blank canvas: some pixels differ from white.
    assert (img[..., :3] < 0.9).any()
    return h, w


def no_temp_files(d) -> None:
    left = [f for f in os.listdir(d) if f.endswith(".tmp")]
    assert not left, f"temporary files left behind: {left}"


@pytest.fixture
def lenet():
    ck.manual_seed(0)
    return ck.Sequential([
        ck.Conv2d(1, 6, 5, padding=2), ck.ReLU(), ck.MaxPool2d(2),
        ck.Conv2d(6, 16, 5), ck.ReLU(), ck.MaxPool2d(2),
        ck.Flatten(), ck.Linear(400, 10),
    ])  # fmt: skip


@pytest.fixture
def rgb_net():
    ck.manual_seed(1)
    return ck.Sequential([ck.Conv2d(3, 8, 3), ck.ReLU(), ck.Conv2d(8, 4, 3)])


@pytest.fixture
def mlp():
    ck.manual_seed(2)
    return ck.Sequential([ck.Flatten(), ck.Linear(16, 4), ck.ReLU(), ck.Linear(4, 2)])


FULL = {
    "loss": [2.3, 1.1, 0.7, 0.5, 0.42],
    "accuracy": [0.31, 0.62, 0.78, 0.84, 0.87],
    "val_loss": [1.9, 1.0, 0.8, 0.75, 0.77],
    "val_accuracy": [0.40, 0.65, 0.74, 0.79, 0.80],
    "lr": [0.1, 0.1, 0.05, 0.05, 0.01],
}


class FakeHistory:
    """Stands in for cnnkit's History: only the .history dict is used."""

    def __init__(self, history: dict) -> None:
        self.history = history
        self.epoch = list(range(len(next(iter(history.values())))))


# -- training_curves ------------------------------------------------------------------------
def test_training_curves_full(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")  # replaced (atomically) by the new picture
    out = plot.training_curves(FULL, target, title="LeNet on MNIST")
    assert out == os.fspath(target)
    h, w = check_png(out)
    assert w > 2 * h  # two panels side by side
    no_temp_files(tmp_path)


def test_training_curves_history_object_single_panel(tmp_path):
    # Accuracy only, under Keras' short names, in a History-like object: one panel.
    hist = FakeHistory({"acc": FULL["accuracy"], "val_acc": FULL["val_accuracy"]})
    h, w = check_png(plot.training_curves(hist, tmp_path / "acc.png"))
    assert w < 2 * h


@pytest.mark.parametrize(
    "hist",
    [
        {"loss": FULL["loss"], "accuracy": FULL["accuracy"]},  # no validation keys
        {"val_loss": FULL["val_loss"], "val_accuracy": FULL["val_accuracy"]},  # only validation
    ],
    ids=["train-only", "val-only"],
)
def test_training_curves_missing_keys(tmp_path, hist):
    check_png(plot.training_curves(hist, tmp_path / "c.png"))


def test_training_curves_one_epoch(tmp_path):
    hist = {"loss": [0.9], "val_loss": [1.0], "accuracy": [0.7], "val_accuracy": [0.65]}
    check_png(plot.training_curves(hist, tmp_path / "one_epoch.png"))


def test_training_curves_nan_and_long_runs(tmp_path):
    nan, inf = float("nan"), float("inf")
    hist = {
        "loss": [2.0, nan, 1.5, inf, 1.0, None, 0.9],
        "val_loss": np.array([1.9, 1.4, nan, nan, nan, nan, nan]),
        "accuracy": [nan] * 7,  # a panel with no finite value at all
    }
    check_png(plot.training_curves(hist, tmp_path / "nan.png"))
    rng = np.random.default_rng(0)
    long = {"loss": list(np.exp(-np.arange(300) / 60) + rng.random(300) * 0.05)}
    long["loss"][150] = nan
    long["val_loss"] = [1e4] + long["loss"][1:]  # spans orders of magnitude: log scale
    h, w = check_png(plot.training_curves(long, tmp_path / "long.png"))
    assert w < 2 * h  # no accuracy keys: a single panel


def test_training_curves_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no 'loss'"):
        plot.training_curves({"lr": [0.1, 0.01]}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="no 'loss'"):
        plot.training_curves({"loss": []}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="History"):
        plot.training_curves([1.0, 0.5], tmp_path / "c.png")
    with pytest.raises(ValueError, match="list of numbers"):
        plot.training_curves({"loss": 0.5}, tmp_path / "c.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot.training_curves(FULL, tmp_path / "missing" / "c.png")
    assert os.listdir(tmp_path) == []


# -- conv_filters ---------------------------------------------------------------------------
def test_conv_filters_gray_and_mean(tmp_path, lenet):
    first = check_png(plot.conv_filters(lenet, tmp_path / "f0.png"))
    second = check_png(plot.conv_filters(lenet, tmp_path / "f3.png", layer=-5))  # layer 3
    assert second[0] > first[0]  # 16 filters need more rows than 6
    no_temp_files(tmp_path)


def test_conv_filters_rgb_and_max_filters(tmp_path, rgb_net):
    rgb = check_png(plot.conv_filters(rgb_net, tmp_path / "rgb.png"))  # 8 filters, 3x3
    one = check_png(plot.conv_filters(rgb_net, tmp_path / "one.png", layer=2, max_filters=1))
    assert one[0] < rgb[0]


def test_conv_filters_errors(tmp_path, lenet, mlp):
    with pytest.raises(ValueError, match="no Conv2d"):
        plot.conv_filters(mlp, tmp_path / "f.png")
    with pytest.raises(ValueError, match="not a Conv2d"):
        plot.conv_filters(lenet, tmp_path / "f.png", layer=1)
    with pytest.raises(ValueError, match="out of range"):
        plot.conv_filters(lenet, tmp_path / "f.png", layer=8)
    with pytest.raises(ValueError, match="max_filters"):
        plot.conv_filters(lenet, tmp_path / "f.png", max_filters=0)
    assert os.listdir(tmp_path) == []


# -- feature_maps ---------------------------------------------------------------------------
def conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """float64 reference: x (C, H, W), w (K, C, R, S), stride 1 -> (K, P, Q)."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(1, 2))
    return np.einsum("cpqrs,kcrs->kpq", win, w.astype(np.float64)) + b[:, None, None]


def test_feature_maps_activations_are_right(lenet, rgb_net):
    rng = np.random.default_rng(3)
    img = (rng.random((28, 28)) * 255).astype(np.uint8)
    x1 = plot._one_input(img)
    assert x1.shape == (1, 1, 28, 28) and x1.dtype == np.float32 and x1.max() <= 1.0
    assert plot._one_input(np.zeros((1, 1, 5, 5), np.float64)).shape == (1, 1, 5, 5)
    assert plot._one_input(np.zeros((3, 5, 5), np.uint8)).shape == (1, 3, 5, 5)
    acts = plot._activations(lenet, x1, [0, 3])
    assert [a.shape for a in acts] == [(6, 28, 28), (16, 10, 10)]
    sd = lenet.state_dict()
    ref0 = conv_ref(img[None] / 255.0, sd["0.weight"], sd["0.bias"], pad=2)
    np.testing.assert_allclose(acts[0], ref0, atol=1e-4, rtol=1e-4)
    # uint8 is scaled to [0, 1]: the same as passing img / 255 as float32.
    same = plot._activations(lenet, plot._one_input(img[None] / np.float32(255)), [0, 3])
    np.testing.assert_allclose(same[1], acts[1], atol=1e-5)
    # The last layer of rgb_net is a Conv2d: its map is the model's own output.
    x = rng.random((1, 3, 12, 12)).astype(np.float32)
    last = plot._activations(rgb_net, x, [0, 2])[-1]
    np.testing.assert_allclose(last, rgb_net.forward(x)[0], atol=1e-5)


def test_feature_maps_png(tmp_path, lenet, rgb_net):
    rng = np.random.default_rng(4)
    before = {k: v.copy() for k, v in lenet.state_dict().items()}
    gray = check_png(plot.feature_maps(lenet, rng.random((1, 28, 28)), tmp_path / "gray.png"))
    u8 = (rng.random((28, 28)) * 255).astype(np.uint8)  # (H, W) uint8: a channel is added
    few = check_png(plot.feature_maps(lenet, u8, tmp_path / "few.png", max_channels=4))
    assert few[1] < gray[1]  # 4 maps per row instead of 16
    check_png(plot.feature_maps(rgb_net, rng.random((3, 20, 24)), tmp_path / "rgb.png"))
    # The model is left as it was and still works.
    after = lenet.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert all(layer._owner is lenet for layer in lenet.layers)
    assert lenet.forward(rng.random((2, 1, 28, 28))).shape == (2, 10)
    no_temp_files(tmp_path)


def test_feature_maps_errors(tmp_path, lenet, mlp):
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="no Conv2d"):
        plot.feature_maps(mlp, rng.random((1, 4, 4)), tmp_path / "m.png")
    with pytest.raises(ValueError, match="ONE input"):
        plot.feature_maps(lenet, rng.random((2, 1, 28, 28)), tmp_path / "m.png")
    with pytest.raises(ValueError, match="numeric"):
        plot.feature_maps(lenet, np.array([["a"]]), tmp_path / "m.png")
    with pytest.raises(ValueError, match="max_channels"):
        plot.feature_maps(lenet, rng.random((1, 28, 28)), tmp_path / "m.png", max_channels=-1)
    with pytest.raises(ValueError, match="expected input of shape"):
        plot.feature_maps(lenet, rng.random((3, 28, 28)), tmp_path / "m.png")  # 3 channels
    assert os.listdir(tmp_path) == []


# -- without matplotlib ---------------------------------------------------------------------
def test_missing_matplotlib_gives_install_hint(tmp_path, monkeypatch, lenet):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    x = np.zeros((1, 28, 28), np.float32)
    calls = [
        lambda: plot.training_curves(FULL, tmp_path / "c.png"),
        lambda: plot.conv_filters(lenet, tmp_path / "f.png"),
        lambda: plot.feature_maps(lenet, x, tmp_path / "m.png"),
    ]
    for call in calls:
        with pytest.raises(ImportError, match=r"cnnkit\[plot\]"):
            call()
    assert os.listdir(tmp_path) == []
