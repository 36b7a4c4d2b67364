"""Bad input gets a clear ValueError naming the layer and the expected and actual shapes."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck


@pytest.mark.parametrize(
    "make,shape,pattern",
    [
        (
            lambda: ck.Conv2d(3, 8, 3),
            (2, 1, 8, 8),
            r"Conv2d \(layer 0\): expected input of shape \(N, 3, H, W\), got \(2, 1, 8, 8\)",
        ),
        (
            lambda: ck.Conv2d(3, 8, 3),
            (2, 3, 8),
            r"Conv2d.*expected input of shape \(N, 3, H, W\), got \(2, 3, 8\)",
        ),
        (lambda: ck.Conv2d(3, 8, 5), (2, 3, 4, 4), r"Conv2d.*smaller than the dilated kernel"),
        (lambda: ck.MaxPool2d(3), (2, 3, 2, 2), r"MaxPool2d.*smaller than the window"),
        (lambda: ck.AvgPool2d(2), (2, 3), r"AvgPool2d.*expected input of shape \(N, C, H, W\)"),
        (
            lambda: ck.Linear(10, 3),
            (4, 9),
            r"Linear \(layer 0\): expected input of shape \(N, 10\), got \(4, 9\)",
        ),
        (lambda: ck.Linear(10, 3), (4, 2, 5), r"Linear.*\(N, 10\), got \(4, 2, 5\)"),
        (
            lambda: ck.BatchNorm2d(4),
            (2, 3, 5, 5),
            r"BatchNorm2d.*\(N, 4, H, W\), got \(2, 3, 5, 5\)",
        ),
        (lambda: ck.Flatten(), (5,), r"x must be \(N, C, H, W\), \(N, H, W\) or \(N, features\)"),
    ],
)
def test_wrong_input_shapes(make, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        make().forward(np.zeros(shape, np.float32))


def test_error_names_the_failing_layer_in_a_model():
    m = ck.Sequential([ck.Conv2d(1, 6, 5), ck.ReLU(), ck.Flatten(), ck.Linear(100, 10)])
    with pytest.raises(
        ValueError, match=r"Linear \(layer 3\): expected input of shape \(N, 100\), got \(2, 3456\)"
    ):
        m.forward(np.zeros((2, 1, 28, 28), np.float32))


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: ck.Conv2d(0, 4, 3), "in_channels"),
        (lambda: ck.Conv2d(3, 4, 0), "kernel_size"),
        (lambda: ck.Conv2d(3, 4, 3, stride=0), "stride"),
        (lambda: ck.Conv2d(3, 4, 3, padding=-1), "padding"),
        (lambda: ck.Conv2d(3, 4, 3, dilation=0), "dilation"),
        (lambda: ck.Conv2d(3, 4, 3, groups=2), "divisible by groups"),
        (lambda: ck.Conv2d(3, 4, (3, 3, 3)), "kernel_size must be an int or a pair"),
        (lambda: ck.Conv2d(3, 4, 2.5), "kernel_size"),
        (lambda: ck.MaxPool2d(2, padding=2), "padding"),
        (lambda: ck.AvgPool2d(0), "kernel_size"),
        (lambda: ck.Linear(0, 3), "in_features"),
        (lambda: ck.Dropout(1.0), r"p must be in \[0, 1\)"),
        (lambda: ck.Dropout(-0.1), "p must be"),
        (lambda: ck.BatchNorm2d(0), "num_features"),
        (lambda: ck.BatchNorm2d(3, eps=0), "eps"),
        (lambda: ck.BatchNorm2d(3, momentum=2), "momentum"),
    ],
)
def test_bad_hyper_parameters(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_empty_batch_and_non_numeric_input():
    m = ck.Sequential([ck.Linear(3, 2)])
    with pytest.raises(ValueError, match="non-empty batch"):
        m.forward(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="numeric"):
        m.forward(np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match="non-empty batch"):
        m.forward(np.float32(3.0))


def test_backward_errors():
    m = ck.Sequential([ck.Linear(3, 2)])
    with pytest.raises(ValueError, match="call forward first"):
        m.backward(np.zeros((1, 2), np.float32))
    m.forward(np.zeros((4, 3), np.float32), training=True)
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(4, 2\).*got \(4, 3\)"):
        m.backward(np.zeros((4, 3), np.float32))
    bn = ck.Sequential([ck.BatchNorm2d(2)])
    bn.forward(np.ones((2, 2, 2, 2), np.float32), training=False)
    with pytest.raises(ValueError, match="eval-mode"):
        bn.backward(np.ones((2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.forward(np.ones((1, 2, 1, 1), np.float32), training=True)


def test_loss_bad_input():
    ce = ck.losses.CrossEntropyLoss()
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"label 4 at index 1 is out of range \[0, 4\)"):
        ce.forward(z, [0, 4, 1])
    with pytest.raises(ValueError, match=r"label -1"):
        ce.forward(z, [0, -1, 1])
    with pytest.raises(ValueError, match=r"expected labels of shape \(3,\)"):
        ce.forward(z, [0, 1])
    with pytest.raises(ValueError, match="integer class indices"):
        ce.forward(z, [0.5, 1, 2])
    with pytest.raises(ValueError, match=r"expected logits of shape \(N, C\)"):
        ce.forward(np.zeros(3, np.float32), [0, 1, 2])
    with pytest.raises(ValueError, match="call forward first"):
        ck.losses.CrossEntropyLoss().backward()
    with pytest.raises(ValueError, match="MSELoss: expected target of shape"):
        ck.losses.MSELoss().forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="unknown loss"):
        ck.losses.get("hinge")


def test_sequential_rejects_non_layers():
    with pytest.raises(ValueError, match="not a cnnkit layer"):
        ck.Sequential([ck.ReLU(), "conv"])


def test_gemm_binding_bad_input():
    from cnnkit._core import _testing

    with pytest.raises(ValueError, match="inner dimensions"):
        _testing.sgemm(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        _testing.sgemm(np.zeros(3, np.float32), np.zeros((3, 2), np.float32))
