"""Eval forwards of graph models fold a BatchNorm into the Conv2d before it (its weights and bias
scaled per output channel, in the convolution's own output pass, as inference engines do):
the result matches the two layers run apart within float32 rounding, on every convolution
path (direct, strided, 1x1, grouped, depthwise, Winograd), with and without the ReLU and the
residual Add after it, and only where the fold is exact in meaning: the convolution's output
read by the BatchNorm alone, running statistics in use, the CPU."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import cnnkit as ck
from cnnkit._core import _testing


@pytest.fixture
def fold_switch():
    before = _testing.fold_batchnorm()
    yield
    _testing.set_fold_batchnorm(before)


def _randomize_stats(model, rng):
    """Non-trivial running statistics and affine parameters (a fresh BatchNorm is identity)."""
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("running_var"):
            state[k] = rng.uniform(0.3, 2.0, v.shape)
        elif k.endswith("running_mean"):
            state[k] = rng.uniform(-0.5, 0.5, v.shape)
        elif ".bn" in k or k.split(".")[-2].startswith("bn"):
            state[k] = rng.uniform(0.5, 1.5, v.shape) if k.endswith("weight") else \
                rng.uniform(-0.3, 0.3, v.shape)
    model.load_state_dict({k: v.astype(np.float32) for k, v in state.items()}, strict=False)


def _both(model, x, folds=None):
    """Eval forwards without and with the fold; `folds`: the pairs the plan must fold."""
    _testing.set_fold_batchnorm(False)
    a = model.forward(x)
    assert model._net.folded_pairs() == []
    _testing.set_fold_batchnorm(True)
    b = model.forward(x)
    if folds is not None:
        assert len(model._net.folded_pairs()) == folds
    return a, b


def _close(a, b):
    scale = max(1.0, float(np.abs(a).max()))
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6 * scale)


# (in_channels, out_channels, kernel, stride, padding, groups, bias, H): the direct path, its
# strided form, 1x1 (one GEMM), grouped and depthwise (im2col, direct loops: the folded
# weights are copied), a 5x5, odd sizes.
CONVS = [
    (3, 16, 3, 1, 1, 1, False, 12),
    (16, 32, 3, 2, 1, 1, False, 11),
    (8, 24, 1, 1, 0, 1, True, 9),
    (8, 12, 3, 1, 1, 4, True, 10),
    (6, 6, 3, 1, 1, 6, False, 9),
    (5, 7, 5, 1, 2, 1, True, 13),
    (4, 20, 3, 1, 0, 1, True, 7),
]


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: "x".join(map(str, c[:6])))
@pytest.mark.parametrize("after", ["none", "relu", "add_relu"])
def test_fold_matches_the_two_layers(conv, after, rng, cpu_kernels, fold_switch):
    C, K, k, s, p, g, bias, H = conv
    ck.manual_seed(int(rng.integers(1 << 30)))
    inp = ck.Input((C, H, H))
    y = ck.BatchNorm2d(K, name="bn")(ck.Conv2d(C, K, k, stride=s, padding=p, groups=g,
                                                bias=bias, name="conv")(inp))
    side = ck.Conv2d(C, K, k, stride=s, padding=p, name="side")(inp)  # a graph, not a chain
    if after == "relu":
        y = ck.Add()([ck.ReLU()(y), side])
    elif after == "add_relu":
        y = ck.ReLU()(ck.Add()([y, side]))
    else:
        y = ck.Add()([y, side])
    model = ck.Model(inp, ck.Flatten()(y))
    _randomize_stats(model, rng)
    for n in (1, 5):
        x = rng.standard_normal((n, C, H, H)).astype(np.float32)
        a, b = _both(model, x, folds=1)
        _close(a, b)
        if after == "add_relu":
            assert (b >= 0).all()


WINOGRAD = r"""
import numpy as np, cnnkit as ck
from cnnkit._core import _testing
rng = np.random.default_rng(2)
ck.manual_seed(1)
inp = ck.Input((32, 16, 16))
y = ck.ReLU()(ck.BatchNorm2d(32, name="bn")(ck.Conv2d(32, 32, 3, padding=1, bias=False)(inp)))
model = ck.Model(inp, ck.Add()([y, inp]))
model.load_state_dict({"bn.running_var": rng.uniform(0.3, 2, 32).astype(np.float32),
                       "bn.running_mean": rng.uniform(-.5, .5, 32).astype(np.float32),
                       "bn.weight": rng.uniform(.5, 1.5, 32).astype(np.float32)}, strict=False)
x = rng.standard_normal((4, 32, 16, 16)).astype(np.float32)
_testing.set_fold_batchnorm(False); a = model.forward(x)
_testing.set_fold_batchnorm(True); b = model.forward(x)
assert len(model._net.folded_pairs()) == 1
np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)
print("ok")
"""


def test_fold_on_the_winograd_path():
    env = dict(os.environ, CNNKIT_CONV_WINOGRAD="1")
    r = subprocess.run([sys.executable, "-c", WINOGRAD], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_resnet20_predict_folded_matches_unfolded_and_pytorch_layout(rng, fold_switch):
    ck.manual_seed(3)
    model = ck.models.resnet20()
    _randomize_stats(model, rng)
    x = rng.random((3, 3, 32, 32), dtype=np.float32)
    a, b = _both(model, x, folds=21)  # 19 3x3 convolutions and 2 projection shortcuts
    _close(a, b)
    _testing.set_fold_batchnorm(False)
    pa = model.predict(x)
    _testing.set_fold_batchnorm(True)
    pb = model.predict(x)
    np.testing.assert_allclose(pb, pa, atol=1e-5)
    assert (pa.argmax(1) == pb.argmax(1)).all()


def test_fold_is_deterministic_across_threads(rng, fold_switch):
    ck.manual_seed(4)
    model = ck.models.resnet20()
    _randomize_stats(model, rng)
    x = rng.random((2, 3, 32, 32), dtype=np.float32)
    before = ck.get_num_threads()
    try:
        ck.set_num_threads(1)
        a = model.forward(x)
        ck.set_num_threads(2)
        b = model.forward(x)
    finally:
        ck.set_num_threads(before)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_not_folded_where_the_meaning_would_change(rng, fold_switch):
    """The convolution's output read twice, batch statistics in eval (track_running_stats=
    False), training: each runs the layers apart, so the fold switch changes no bits."""
    ck.manual_seed(5)
    inp = ck.Input((4, 8, 8))
    c = ck.Conv2d(4, 6, 3, padding=1)(inp)
    twice = ck.Add()([ck.BatchNorm2d(6)(c), c])                      # conv read twice
    batch = ck.BatchNorm2d(6, track_running_stats=False)(ck.Conv2d(4, 6, 3, padding=1)(inp))
    model = ck.Model(inp, ck.Add()([twice, batch]))
    _randomize_stats(model, rng)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    a, b = _both(model, x, folds=0)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    _testing.set_fold_batchnorm(False)
    ta = model.forward(x, training=True)
    _testing.set_fold_batchnorm(True)
    tb = model.forward(x, training=True)
    assert model._net.folded_pairs() == []
    np.testing.assert_array_equal(ta.view(np.uint32), tb.view(np.uint32))


def test_fold_follows_parameter_changes_and_training(rng, fold_switch):
    """Nothing is cached: new weights, statistics from a fit, load_state_dict all show."""
    ck.manual_seed(6)
    model = ck.models.resnet20()
    x = rng.random((8, 3, 32, 32), dtype=np.float32)
    y = np.arange(8) % 10
    first = model.forward(x)
    ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.05, momentum=0.9), seed=0).fit(
        x, y, epochs=1, batch_size=4, verbose=0)
    a, b = _both(model, x)
    _close(a, b)
    assert not np.allclose(first, b)
    state = model.state_dict()
    state["bn1.running_var"] = state["bn1.running_var"] * 4
    model.load_state_dict(state)
    a2, b2 = _both(model, x)
    _close(a2, b2)
    assert not np.allclose(b, b2)


@pytest.mark.parametrize("relu", [False, True])
def test_chains_fold_too(relu, rng, cpu_kernels, fold_switch):
    """Sequential models (and Models without branches) fold as graphs do; backward after an
    eval forward is refused by the BatchNorm there, so nothing reads the skipped output."""
    ck.manual_seed(8)
    layers = [ck.Conv2d(3, 8, 3, padding=1), ck.BatchNorm2d(8)] + ([ck.ReLU()] if relu else [])
    model = ck.Sequential(*layers, ck.Conv2d(8, 4, 3, bias=False), ck.BatchNorm2d(4),
                          ck.Flatten(), ck.Linear(4 * 4 * 4, 3))
    _randomize_stats(model, rng)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    a, b = _both(model, x, folds=2)
    _close(a, b)
    _testing.set_fold_batchnorm(False)
    pa = model.predict(x)
    _testing.set_fold_batchnorm(True)
    np.testing.assert_allclose(model.predict(x), pa, atol=1e-6)
    # the last layer a folded BatchNorm: the output written straight into the caller's array
    tail = ck.Sequential(ck.Conv2d(3, 5, 3), ck.BatchNorm2d(5))
    _randomize_stats(tail, rng)
    a, b = _both(tail, x, folds=1)
    _close(a, b)
    with pytest.raises(ValueError, match="eval-mode forward"):
        model.backward(np.ones((2, 3), np.float32))
    out = model.forward(x, training=True)
    assert model._net.folded_pairs() == []
    assert model.backward(np.ones_like(out)).shape == x.shape


def test_backward_after_an_eval_forward_still_refused(rng, fold_switch):
    ck.manual_seed(7)
    model = ck.models.resnet20()
    x = rng.random((2, 3, 32, 32), dtype=np.float32)
    out = model.forward(x)
    with pytest.raises(ValueError, match="eval mode"):
        model.backward(np.ones_like(out))


@pytest.mark.parametrize("chain", [True, False])
def test_backward_after_a_folded_eval_forward_that_followed_training(chain, rng, fold_switch):
    """train forward, eval forward (folded: the BatchNorm's own forward never runs), backward:
    refused as after an unfolded eval forward, never gradients of stale activations."""
    ck.manual_seed(9)
    if chain:
        model = ck.Sequential(ck.Conv2d(3, 4, 3), ck.BatchNorm2d(4), ck.ReLU(), ck.Flatten(),
                              ck.Linear(4 * 4 * 4, 2))
    else:
        inp = ck.Input((3, 6, 6))
        h = ck.ReLU()(ck.BatchNorm2d(4)(ck.Conv2d(3, 4, 3)(inp)))
        model = ck.Model(inp, ck.Linear(4 * 4 * 4, 2)(ck.Flatten()(ck.Add()([h, h]))))
    x = rng.standard_normal((3, 3, 6, 6)).astype(np.float32)
    model.forward(x, training=True)
    out = model.forward(x)
    assert len(model._net.folded_pairs()) == 1
    with pytest.raises(ValueError, match="eval"):
        model.backward(np.ones_like(out))

