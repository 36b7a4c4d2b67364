"""The Net's gradient reducer (what data-parallel training plugs its all-reduce into), in one
process: called between backward and update with the flat gradients, scaled, and joined by
non-finite steps. Runs on CUDA too where there is a device (or the CUDA emulation)."""

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import _core

DEVICES = ["cpu"] + (["cuda"] if ck.cuda_available() else [])


def _setup(device, seed=0):
    ck.manual_seed(seed)
    m = ck.Sequential(ck.Conv2d(1, 3, 3), ck.ReLU(), ck.Flatten(), ck.Linear(3 * 6 * 6, 4))
    t = ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1, momentum=0.9), device=device)
    rng = np.random.default_rng(1)
    return m, t, rng.random((16, 1, 8, 8), dtype=np.float32), rng.integers(0, 4, 16)


@pytest.mark.parametrize("device", DEVICES)
def test_reducer_sees_the_gradients_and_its_result_is_used(device):
    ref, tr, x, y = _setup(device)
    tr.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)

    m, t, x, y = _setup(device)
    seen = []
    flat_size = m._net.flat_params().shape[0]  # (the Net is locked while the reducer runs)

    def double(g):  # two identical "processes": the sum is twice the gradient
        assert g.dtype == np.float32 and g.ndim == 1  # the flat buffer (aligned parameters)
        assert g.shape[0] == flat_size >= m.num_parameters()
        seen.append(g.copy())
        g *= 2

    _core.set_grad_reducer(m._net, double, 0.5)
    assert _core.has_grad_reducer(m._net)
    t.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    _core.set_grad_reducer(m._net, None)
    assert not _core.has_grad_reducer(m._net)
    assert len(seen) == 4
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=k)  # x2 then x0.5: exact

    # the first call's gradients are the model's gradients of the first batch
    g, _, xx, yy = _setup(device)
    g.forward(xx[:8], training=True)
    logits = g.forward(xx[:8], training=True)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(8), yy[:8]] -= 1
    g.zero_grad()
    g.backward(p / 8)
    # the flat buffer holds each parameter at a 64-byte aligned offset, in order
    params, at, got = g.state_dict(), 0, []
    flat_p = np.asarray(g._net.flat_params())
    for k, gr in g.grad_dict().items():
        np.testing.assert_array_equal(flat_p[at:at + gr.size], params[k].ravel())
        got.append((seen[0][at:at + gr.size], gr.ravel()))
        at += -(-gr.size // 16) * 16
    for a, b in got:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_reducer_errors_propagate_and_skip_the_update():
    m, t, x, y = _setup("cpu")
    before = m.state_dict()

    def boom(g):
        raise TimeoutError("peer gone")

    _core.set_grad_reducer(m._net, boom, 1.0)
    with pytest.raises(TimeoutError, match="peer gone"):
        t.fit(x, y, epochs=1, batch_size=8, verbose=0)
    _core.set_grad_reducer(m._net, None)
    for k, v in before.items():
        np.testing.assert_array_equal(m.state_dict()[k], v)


def test_a_non_finite_step_still_joins_the_reduction():
    m, t, x, y = _setup("cpu")
    before = m.state_dict()
    calls = []
    _core.set_grad_reducer(m._net, lambda g: calls.append(bool(np.isnan(g).all())), 1.0)
    bad = x.copy()
    bad[0] = 3e38  # overflows to inf - inf in the layers: a NaN loss
    loss, _ = m._net.train_step(bad[:8], y[:8])
    _core.set_grad_reducer(m._net, None)
    assert calls == [True]  # NaN gradients, so every process refuses the same update
    assert not np.isfinite(loss)
    for k, v in before.items():
        np.testing.assert_array_equal(m.state_dict()[k], v)


def test_bad_arguments():
    m, _, _, _ = _setup("cpu")
    with pytest.raises(ValueError, match="callable"):
        _core.set_grad_reducer(m._net, 3, 1.0)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        _core.set_grad_reducer(m._net, lambda g: None, 0.0)
