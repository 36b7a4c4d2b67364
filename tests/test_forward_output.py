"""The array that forward() returns: the caller owns it. The Net writes the last layer's output
straight into it where that layer's backward does not read its output (Linear, Conv2d, ...),
and reuses its memory on the next call once the caller has let go of it; neither may ever
change an array the caller still holds, nor the gradients of a later backward."""

import gc

import numpy as np
import pytest

import cnnkit as ck

L = ck.layers


def _mlp(last):
    m = ck.Sequential([L.Linear(6, 5), L.ReLU(), last])
    return m


def _data(seed, n=4, f=6):
    return np.random.default_rng(seed).standard_normal((n, f)).astype(np.float32)


@pytest.mark.parametrize("last", ["linear", "sigmoid", "relu", "flatten"])
def test_an_array_the_caller_holds_never_changes(last):
    tail = {"linear": L.Linear(5, 3), "sigmoid": L.Sigmoid(), "relu": L.ReLU(),
            "flatten": L.Flatten()}[last]
    m = _mlp(tail)
    x1, x2 = _data(1), _data(2)
    y1 = m.forward(x1)
    keep = y1.copy()
    y2 = m.forward(x2)  # y1 still held: a new buffer
    assert not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, keep)
    np.testing.assert_array_equal(m.forward(x1), keep)  # and the same values again
    view = y2[1:]  # a view keeps the buffer alive too
    want = view.copy()
    del y2
    gc.collect()
    m.forward(x1)
    np.testing.assert_array_equal(view, want)


def test_the_buffer_is_reused_once_released():
    m = ck.Sequential([L.Linear(64, 32)])
    x = _data(0, 16, 64)
    y = m.forward(x)
    addr = y.__array_interface__["data"][0]
    del y
    gc.collect()
    y = m.forward(x)  # no new allocation (and no page faults) for the common loop
    assert y.__array_interface__["data"][0] == addr
    # a larger batch needs a larger buffer; a smaller one fits the old one
    assert m.forward(_data(1, 32, 64)).shape == (32, 32)
    assert m.forward(_data(2, 8, 64)).shape == (8, 32)


@pytest.mark.parametrize("last", ["linear", "sigmoid", "softmax_free_relu"])
@pytest.mark.parametrize("training", [False, True])
def test_backward_ignores_changes_to_the_returned_output(last, training):
    """Gradients after forward are those of the forward, whatever the caller does to the
    array it got (the Net kept what backward needs, or needs nothing of it)."""
    tail = {"linear": L.Linear(5, 3), "sigmoid": L.Sigmoid(), "softmax_free_relu": L.ReLU()}[last]
    a, b = _mlp(tail), _mlp(type(tail)(**tail.get_config()))
    b.load_state_dict(a.state_dict())
    x = _data(5)
    dy = _data(6, 4, 3 if last == "linear" else 5)
    ya = a.forward(x, training=training)
    ya[...] = 123.0  # the caller scribbles over its array
    dxa = a.backward(dy)
    b.forward(x, training=training)
    dxb = b.backward(dy)
    np.testing.assert_array_equal(dxa, dxb)
    for k, g in a.grad_dict().items():
        np.testing.assert_array_equal(g, b.grad_dict()[k])


def test_conv_output_matches_and_a_layer_error_leaves_the_net_usable():
    m = ck.Sequential([L.Conv2d(2, 3, 3, padding=1)])
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    y = m.forward(x)
    ref = m.forward(x.copy())
    np.testing.assert_array_equal(y, ref)
    with pytest.raises(ValueError):
        m.forward(np.zeros((2, 3, 5, 5), np.float32))  # wrong channels
    np.testing.assert_array_equal(m.forward(x), ref)
