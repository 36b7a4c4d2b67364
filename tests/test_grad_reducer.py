"""The Net's gradient reducer (what data-parallel training plugs its all-reduce into), in one
process: called between backward and update with the flat gradients, scaled, and joined by
non-finite steps. Runs on CUDA too where there is a device (or the CUDA emulation)."""

import threading

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


# -- bucketed reduction, overlapped with the backward -----------------------------------------


def _residual(seed=0):
    """A residual block with BatchNorm (a graph model: the Add's input fans out)."""
    ck.manual_seed(seed)
    inp = ck.Input((2, 8, 8))
    h = ck.ReLU()(ck.BatchNorm2d(4)(ck.Conv2d(2, 4, 3, padding=1)(inp)))
    y = ck.BatchNorm2d(4)(ck.Conv2d(4, 4, 3, padding=1)(ck.ReLU()(
        ck.BatchNorm2d(4)(ck.Conv2d(4, 4, 3, padding=1)(h)))))
    h = ck.ReLU()(ck.Add()([h, y]))
    return ck.Model(inp, ck.Linear(4 * 8 * 8, 3)(ck.Flatten()(h)))


def _chain(seed=0):
    ck.manual_seed(seed)
    return ck.Sequential(ck.Conv2d(2, 6, 3), ck.ReLU(), ck.MaxPool2d(2), ck.Conv2d(6, 8, 3),
                         ck.ReLU(), ck.Flatten(), ck.Linear(8, 16), ck.ReLU(),
                         ck.Linear(16, 3))


MODELS = {"chain": _chain, "residual": _residual}


def _data(n=32):
    rng = np.random.default_rng(3)
    return rng.random((n, 2, 8, 8), dtype=np.float32), rng.integers(0, 3, n)


def _starts(model):
    """Offset (floats) in the flat buffer of each layer's first parameter, and the buffer's
    size (parameters are laid out layer by layer, each at a 64-byte boundary)."""
    at, starts, layers = 0, [], set()
    for k, g in model.grad_dict().items():
        layer = k.rsplit(".", 1)[0]
        if layer not in layers:
            layers.add(layer)
            starts.append(at)
        at += -(-g.size // 16) * 16
    return starts, at


class Recorder:
    """A fake all-reduce of 2 identical processes (x2, with scale 0.5: exact), recording the
    address and size of every call and the thread it ran on."""

    def __init__(self, fail_at=None):
        self.calls, self.threads, self.fail_at = [], set(), fail_at

    def __call__(self, g):
        assert g.dtype == np.float32 and g.ndim == 1 and g.flags.c_contiguous
        self.calls.append((g.__array_interface__["data"][0], g.shape[0]))
        self.threads.add(threading.get_ident())
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise ConnectionError("the peer is gone")
        g *= 2

    def steps(self, per_step):
        """The calls as (offset, size) in floats, one list per step (offset 0: the lowest
        address, which the exact cover checked below makes the buffer's start)."""
        base = min(a for a, _ in self.calls)
        out = [((a - base) // 4, n) for a, n in self.calls]
        return [out[i:i + per_step] for i in range(0, len(out), per_step)]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_bucket_plan_covers_the_buffer_once_at_layer_boundaries(kind):
    m = MODELS[kind]()
    starts, n = _starts(m)
    assert n == m._net.flat_params().shape[0]
    assert _core.grad_buckets(m._net, 0) == [(0, n)]
    for bucket_bytes in (1, 64, 700, 2048, 4 * n - 4, 4 * n, 1 << 30):
        plan = _core.grad_buckets(m._net, bucket_bytes)
        assert plan == _core.grad_buckets(m._net, bucket_bytes)  # deterministic
        # from the end of the buffer to its start, contiguous, each byte once
        assert plan[0][0] + plan[0][1] == n and plan[-1][0] == 0
        for (o1, _), (o2, s2) in zip(plan[:-1], plan[1:], strict=True):
            assert o2 + s2 == o1
        assert sum(s for _, s in plan) == n
        assert all(o in starts for o, _ in plan)  # cut where a layer's parameters start
        assert all(4 * s >= bucket_bytes for _, s in plan[:-1])
        # a bucket closes at the first layer boundary that makes it big enough
        layer_starts = starts + [n]
        for o, s in plan[:-1]:
            nxt = layer_starts[layer_starts.index(o) + 1]
            assert 4 * (o + s - nxt) < bucket_bytes
    assert [o for o, _ in _core.grad_buckets(m._net, 1)] == starts[::-1]  # one per layer
    assert _core.grad_buckets(m._net, 4 * n) == [(0, n)]
    with pytest.raises(ValueError, match="bucket_bytes must be >= 0"):
        _core.grad_buckets(m._net, -1)


def _fit(kind, bucket_bytes, reducer=None, epochs=2, optimizer=None, device="cpu"):
    m = MODELS[kind]()
    t = ck.Trainer(m, optimizer=optimizer or ck.optim.SGD(lr=0.1, momentum=0.9), device=device,
                   seed=0)
    x, y = _data()
    if reducer is not None:
        _core.set_grad_reducer(m._net, reducer, 0.5, bucket_bytes)
    try:
        t.fit(x, y, epochs=epochs, batch_size=8, verbose=0, shuffle=False)
    finally:
        _core.set_grad_reducer(m._net, None)
    return m


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_bucketed_reduction_matches_one_reduction_bitwise(kind, device):
    # on CUDA the buckets cross to the host and back on copy streams beside the backward
    # (under the emulation those copies run only once waited for: a missing wait shows here)
    plain = _fit(kind, 0, Recorder(), device=device)
    ref = _fit(kind, 0, None, device=device)  # x2 then x0.5 is exact: the same as no reducer
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(plain.state_dict()[k], v, err_msg=k)
    n = plain._net.flat_params().shape[0]
    for bucket_bytes in (1, n, 2 * n):  # bytes: every layer, about 4 and 2 buckets
        rec = Recorder()
        m = _fit(kind, bucket_bytes, rec, optimizer=ck.optim.Adam(lr=1e-2), device=device)
        r0 = _fit(kind, 0, Recorder(), optimizer=ck.optim.Adam(lr=1e-2), device=device)
        for k, v in r0.state_dict().items():
            np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=f"{bucket_bytes} {k}")
        plan = _core.grad_buckets(m._net, bucket_bytes)
        assert len(plan) > 1
        steps = rec.steps(len(plan))
        assert len(steps) == 2 * 4  # 2 epochs of 4 batches, every step the same buckets
        assert all(s == plan for s in steps), (steps[0], plan)
        assert sum(s for _, s in plan) == n
        assert threading.get_ident() not in rec.threads  # the communication thread
    # bucket_bytes at least the buffer: one call, on the stepping thread, as bucket 0
    rec = Recorder()
    _fit(kind, 4 * n, rec, epochs=1, device=device)
    assert [s for _, s in rec.calls] == [n] * 4 and rec.threads == {threading.get_ident()}


class Gate(ck.Layer):
    """Identity whose backward waits until the reducer has been called: it returns only if
    the reduction of the later layers' gradients runs while the backward is still going."""

    def __init__(self, started):
        super().__init__()
        self.started = started
        self.waited = None

    def forward(self, x, training):
        return x

    def backward(self, dy):
        self.waited = self.started.wait(timeout=30)
        return dy


@pytest.mark.parametrize("graph", [False, True])
def test_buckets_are_reduced_while_the_backward_runs(graph):
    started = threading.Event()
    gate = Gate(started)
    ck.manual_seed(0)
    if graph:
        inp = ck.Input((2, 8, 8))
        h = ck.Conv2d(2, 4, 3, padding=1)(inp)
        h = ck.Add()([ck.Conv2d(4, 4, 3)(gate(h)), ck.Conv2d(4, 4, 3)(h)])
        m = ck.Model(inp, ck.Linear(4 * 6 * 6, 3)(ck.Flatten()(h)))
    else:
        m = ck.Sequential(ck.Conv2d(2, 4, 3), gate, ck.Flatten(), ck.Linear(4 * 6 * 6, 3))
    ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1), device="cpu")
    calls = []

    def reducer(g):
        calls.append(g.shape[0])
        started.set()

    _core.set_grad_reducer(m._net, reducer, 1.0, 1)
    x, y = _data(8)
    loss, _ = m._net.train_step(x, y)
    _core.set_grad_reducer(m._net, None)
    assert np.isfinite(loss)
    assert gate.waited is True  # the Linear's bucket was reduced before the gate's backward
    assert calls == [s for _, s in _core.grad_buckets(m._net, 1)]


def _params(m):
    state = m.state_dict()
    return {k: state[k] for k in m.grad_dict()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("when", ["first", "second", "third"])
def test_a_failing_bucket_raises_from_fit_and_the_net_stays_usable(kind, when, device):
    def trainer():
        m = MODELS[kind]()
        return m, ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1, momentum=0.9), device=device,
                             seed=0)

    m, t = trainer()
    x, y = _data()
    nb = len(_core.grad_buckets(m._net, 1))
    # the first, the second bucket of the first step, or the first of the second step
    fail_at = {"first": 1, "second": 2, "third": nb + 1}[when]
    before = _params(m)
    rec = Recorder(fail_at=fail_at)
    _core.set_grad_reducer(m._net, rec, 0.5, 1)
    with pytest.raises(ConnectionError, match="the peer is gone"):
        t.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    assert len(rec.calls) == fail_at  # no call after the failing one
    if fail_at <= nb:
        for k, v in before.items():  # the update was not applied
            np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=k)
    for k, g in m.grad_dict().items():  # and the next step starts from zero gradients
        assert not g.any(), k
    # the Net goes on: the same parameters as a model that never saw the failed step
    _core.set_grad_reducer(m._net, Recorder(), 0.5, 1)
    m._net.train_step(x[16:24], y[16:24])
    _core.set_grad_reducer(m._net, None)
    ref, rt = trainer()
    if fail_at > nb:
        rt.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0, shuffle=False)
    ref._net.train_step(x[16:24], y[16:24])
    for k, v in _params(ref).items():
        np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=k)


class Fails(ck.Layer):
    def forward(self, x, training):
        return x

    def backward(self, dy):
        raise ArithmeticError("backward failed")


@pytest.mark.parametrize("device", DEVICES)
def test_a_failing_backward_quiesces_the_reducer_thread(device):
    ck.manual_seed(0)
    m = ck.Sequential(ck.Conv2d(2, 4, 3), Fails(), ck.Flatten(), ck.Linear(4 * 6 * 6, 3))
    ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1), device=device)
    before = m.state_dict()
    rec = Recorder()
    _core.set_grad_reducer(m._net, rec, 0.5, 1)
    x, y = _data(8)
    for _ in range(3):
        with pytest.raises(ArithmeticError, match="backward failed"):
            m._net.train_step(x, y)
    _core.set_grad_reducer(m._net, None)
    for k, v in before.items():
        np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=k)
    for k, g in m.grad_dict().items():
        assert not g.any(), k
    # the Linear's bucket was reduced (or dropped, when the error came first); never the
    # Conv2d's, whose gradients the failed backward never completed
    linear = _core.grad_buckets(m._net, 1)[0][1]
    assert len(rec.calls) <= 3 and all(n == linear for _, n in rec.calls)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_non_finite_step_joins_every_bucket(kind, device):
    m = MODELS[kind]()
    t = ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1), device=device, seed=0)
    before = m.state_dict()
    seen = []

    def reducer(g):
        seen.append((g.shape[0], bool(np.isnan(g).all())))

    _core.set_grad_reducer(m._net, reducer, 0.5, 1)
    x, y = _data(8)
    plan = _core.grad_buckets(m._net, 1)
    flat = m._net.flat_params()
    bad = flat.copy()
    bad[plan[0][0]:] = np.nan  # the last Linear's parameters: NaN logits, a NaN loss
    m._net.set_flat_params(bad)
    loss, _ = m._net.train_step(x, y)
    assert not np.isfinite(loss)
    assert seen == [(s, True) for _, s in plan]  # the same buckets as a finite step's
    np.testing.assert_array_equal(m._net.flat_params(), bad)  # no update
    m._net.set_flat_params(flat)
    for k, v in _params(m).items():
        np.testing.assert_array_equal(before[k], v, err_msg=k)
    seen.clear()
    loss, _ = m._net.train_step(x, y)  # and a finite step afterwards is an ordinary one
    _core.set_grad_reducer(m._net, None)
    assert np.isfinite(loss) and [s for s, _ in seen] == [s for _, s in plan]
    assert not any(nan for _, nan in seen)
    del t


@pytest.mark.parametrize("device", DEVICES)
def test_bucket_bytes_on_every_device(device):
    m, t, x, y = _setup(device)
    n = m._net.flat_params().shape[0]
    calls = []
    _core.set_grad_reducer(m._net, lambda g: calls.append(g.shape[0]), 1.0, 1)
    assert _core.grad_bucket_bytes(m._net) == 1
    t.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    _core.set_grad_reducer(m._net, None)
    assert _core.grad_bucket_bytes(m._net) == 0
    plan = [s for _, s in _core.grad_buckets(m._net, 1)]
    assert len(plan) > 1 and sum(plan) == n
    # CUDA gradients too: staged bucket by bucket through page-locked host memory
    assert calls == plan * 2
    with pytest.raises(ValueError, match="bucket_bytes must be >= 0"):
        _core.set_grad_reducer(m._net, lambda g: None, 1.0, -1)


def test_distributed_bucket_setting_and_thread_level(monkeypatch):
    from cnnkit import distributed as dist

    monkeypatch.setattr(dist._S, "bucket_mb", dist._S.bucket_mb)
    monkeypatch.setattr(dist._S, "overlap_ok", True)
    assert dist.init(bucket_mb=2.5) == 1
    assert dist._bucket_bytes() == int(2.5 * (1 << 20))
    assert dist.init(bucket_mb=0) == 1 and dist._bucket_bytes() == 0
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bucket_mb must be a number >= 0"):
            dist.init(bucket_mb=bad)

    class FakeMPI:
        THREAD_SINGLE, THREAD_FUNNELED, THREAD_SERIALIZED, THREAD_MULTIPLE = 0, 1, 2, 3

        def __init__(self, level):
            self.level = level

        def Query_thread(self):  # noqa: N802 - mpi4py's name
            return self.level

    assert dist._thread_level_ok(FakeMPI(3)) and dist._thread_level_ok(FakeMPI(2))
    with pytest.warns(RuntimeWarning, match="MPI_THREAD_FUNNELED, below MPI_THREAD_SERIALIZED"):
        assert not dist._thread_level_ok(FakeMPI(1))
    dist.init(bucket_mb=4)
    monkeypatch.setattr(dist._S, "overlap_ok", False)
    assert dist._bucket_bytes() == 0


def test_reducer_threads_end_with_their_nets_and_at_exit():
    import subprocess
    import sys

    code = """
import gc, threading, numpy as np, cnnkit as ck
from cnnkit import _core
x = np.random.default_rng(0).random((8, 2, 8, 8), dtype=np.float32)
y = np.arange(8) % 3
def net():
    ck.manual_seed(0)
    m = ck.Sequential(ck.Conv2d(2, 4, 3), ck.ReLU(), ck.Flatten(), ck.Linear(144, 3))
    ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1), device="cpu")
    _core.set_grad_reducer(m._net, lambda g: None, 1.0, 1)
    m._net.train_step(x, y)
    return m
for _ in range(50):  # each Net starts its thread and joins it when it goes
    net()
    gc.collect()
kept = net()  # and one still alive (its thread idle) when the interpreter exits
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
