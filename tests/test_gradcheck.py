"""Every layer's backward against central differences of its own forward.

The loss is L = sum(r * y) for a fixed random r, so dL/dy = r. Finite differences run in
float32 through the native forward with a step suited to float32; inputs avoid kinks (ReLU
near 0, max-pool ties), which are skipped by construction.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck

from conftest import assert_close

H = 1e-2  # float32 central-difference step


def _numeric_grad(f, x, idxs):
    g = np.zeros(len(idxs))
    for j, idx in enumerate(idxs):
        xp, xm = x.copy(), x.copy()
        xp[idx] += H
        xm[idx] -= H
        g[j] = (f(xp) - f(xm)) / (2 * H)
    return g


def _sample(shape, rng, k=25):
    all_idx = list(np.ndindex(*shape))
    pick = rng.choice(len(all_idx), size=min(k, len(all_idx)), replace=False)
    return [all_idx[i] for i in pick]


def _check_layer(make, x, rng, smooth_x=True, params=True):
    model = ck.Sequential([make()])
    y = model.forward(x, training=True)
    r = rng.standard_normal(y.shape).astype(np.float32)

    def loss_of_x(xx):
        return float(
            (model.forward(xx.astype(np.float32), training=True).astype(np.float64) * r).sum()
        )

    model.forward(x, training=True)
    model.zero_grad()
    dx = model.backward(r)
    grads = model.grad_dict()
    idx = _sample(x.shape, rng)
    num = _numeric_grad(loss_of_x, x.astype(np.float64), idx)
    assert_close(np.array([dx[i] for i in idx]), num, "gradcheck", " dx")
    if not params:
        return
    state = model.state_dict()
    for name, g in grads.items():
        w0 = state[name].astype(np.float64)

        def loss_of_w(w, name=name):
            model.load_state_dict({**state, name: w.astype(np.float32)})
            return loss_of_x(x)

        pidx = _sample(w0.shape, rng, 15)
        num = _numeric_grad(loss_of_w, w0, pidx)
        model.load_state_dict(state)
        assert_close(np.array([g[i] for i in pidx]), num, "gradcheck", f" d{name}")


def test_gradcheck_conv2d(rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    _check_layer(lambda: ck.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)), x, rng)


def test_gradcheck_conv2d_groups(rng):
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    _check_layer(lambda: ck.Conv2d(4, 6, 3, padding=1, groups=2), x, rng)


def test_gradcheck_depthwise(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    _check_layer(lambda: ck.Conv2d(3, 6, 3, stride=2, padding=1, groups=3), x, rng)


def test_gradcheck_linear(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    _check_layer(lambda: ck.Linear(5, 4), x, rng)


def test_gradcheck_maxpool(rng):
    # well-separated distinct values: no ties, and a +-H step cannot change the argmax
    x = (rng.permutation(2 * 2 * 6 * 6).reshape(2, 2, 6, 6) * 0.1).astype(np.float32)
    _check_layer(lambda: ck.MaxPool2d(3, 2, 1), x, rng, params=False)


def test_gradcheck_avgpool(rng):
    x = rng.standard_normal((2, 2, 7, 7)).astype(np.float32)
    _check_layer(lambda: ck.AvgPool2d(3, 2, 1, count_include_pad=False), x, rng, params=False)


@pytest.mark.parametrize("name", ["ReLU", "LeakyReLU", "Sigmoid", "Tanh"])
def test_gradcheck_activations(name, rng):
    x = rng.standard_normal((3, 20)).astype(np.float32)
    x = np.where(np.abs(x) < 0.05, 0.5, x).astype(np.float32)  # away from ReLU's kink
    _check_layer(getattr(ck, name), x, rng, params=False)


def test_gradcheck_batchnorm(rng):
    x = (rng.standard_normal((4, 3, 3, 3)) * 2).astype(np.float32)
    _check_layer(lambda: ck.BatchNorm2d(3), x, rng)


def test_gradcheck_lenet_end_to_end(rng):
    """The whole LeNet-5 stack: dx and a few weights by central differences."""

    def make_model():
        return ck.Sequential(
            [
                ck.Conv2d(1, 6, 5, padding=2),
                ck.Tanh(),
                ck.AvgPool2d(2),
                ck.Conv2d(6, 16, 5),
                ck.Tanh(),
                ck.AvgPool2d(2),
                ck.Flatten(),
                ck.Linear(400, 120),
                ck.Tanh(),
                ck.Linear(120, 84),
                ck.Tanh(),
                ck.Linear(84, 10),
            ]
        )

    model = make_model()
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    r = rng.standard_normal((2, 10)).astype(np.float32)
    model.forward(x, training=True)
    dx = model.backward(r)

    def f(xx):
        return float((model.forward(xx.astype(np.float32)).astype(np.float64) * r).sum())

    idx = _sample(x.shape, rng, 15)
    assert_close(
        np.array([dx[i] for i in idx]), _numeric_grad(f, x.astype(np.float64), idx), "gradcheck"
    )
