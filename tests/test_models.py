"""Ready-made models and the shipped pretrained LeNet-5."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck


def test_lenet5_architecture():
    m = ck.models.lenet5()
    assert m.num_parameters() == 61706
    assert m.output_shapes((1, 28, 28))[-1] == (10,)


def test_fashion_cnn_architecture():
    m = ck.models.fashion_cnn()
    assert m.output_shapes((1, 28, 28))[-1] == (10,)
    assert any(isinstance(layer, ck.BatchNorm2d) for layer in m)


def test_pretrained_lenet5_loads():
    m = ck.models.lenet5(pretrained=True)
    w = m.state_dict()
    assert all(np.all(np.isfinite(v)) for v in w.values())
    assert not np.allclose(w["0.weight"], ck.models.lenet5().state_dict()["0.weight"])
    with pytest.raises(ValueError):
        ck.models.lenet5(pretrained=True, num_classes=5)


def _mnist_test_set():
    try:
        _, test = ck.datasets.load_mnist(download=False, verbose=False)
    except Exception as e:  # no cached data on this machine
        pytest.skip(f"MNIST not available offline: {e}")
    return test


def test_pretrained_lenet5_scores_99_percent_on_mnist():
    x, y = _mnist_test_set()
    trainer = ck.Trainer(ck.models.lenet5(pretrained=True), loss="cross_entropy", device="cpu")
    r = trainer.evaluate(x, y, batch_size=1000)
    assert r["accuracy"] >= 0.99, r
