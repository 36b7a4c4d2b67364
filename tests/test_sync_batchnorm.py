"""SyncBatchNorm in one process: BatchNorm when no job is running; with the statistics
collective set (here a stand-in for the MPI all-reduce), the pieces of the synced pass give
BatchNorm's bits for one process, and two identical "processes" (every sum doubled) give
the statistics of their combined batch. The real two-process runs are in
tests/test_distributed.py."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import _core


@pytest.fixture
def reducer():
    """Install a stats reducer for one test: calls records the size of every call; `scale`
    multiplies the sums (1: one process; 2: two processes holding the same batch)."""

    class R:
        calls: list[int] = []
        scale = 1.0

        def __call__(self, a):
            assert a.dtype == np.float64 and a.flags.c_contiguous
            self.calls.append(a.shape[0])
            a *= self.scale

    r = R()
    r.calls = []
    _core.set_stats_reducer(r)
    try:
        yield r
    finally:
        _core.set_stats_reducer(None)
    assert not _core.has_stats_reducer()


def _pair(shape, seed=0, **kw):
    C = shape[1]
    ck.manual_seed(seed)
    bn = ck.Sequential([ck.BatchNorm2d(C, **kw) if len(shape) == 4 else ck.BatchNorm1d(C, **kw)])
    ck.manual_seed(seed)
    sync = ck.Sequential([ck.SyncBatchNorm(C, **kw)])
    rng = np.random.default_rng(seed)
    if kw.get("affine", True):
        sd = {k: rng.standard_normal(v.shape).astype(np.float32)
              for k, v in bn.state_dict().items() if k.endswith(("weight", "bias"))}
        bn.load_state_dict(sd, strict=False)
        sync.load_state_dict(sd, strict=False)
    return bn, sync


def _step(model, x, dy):
    model.zero_grad()
    y = model.forward(x, training=True)
    dx = model.backward(dy)
    return y, dx, model.grad_dict(), model.state_dict()


SHAPES = [(4, 3, 5, 6), (7, 5), (3, 4, 9), (2, 16, 8, 8)]


@pytest.mark.parametrize("shape", SHAPES)
def test_without_a_job_it_is_batchnorm(shape, rng):
    bn, sync = _pair(shape)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    assert not _core.has_stats_reducer()
    for _ in range(2):
        a, b = _step(bn, x, dy), _step(sync, x, dy)
        for u, v in zip(a, b, strict=True):
            if isinstance(u, dict):
                for k in u:
                    np.testing.assert_array_equal(v[k], u[k], err_msg=k)
            else:
                np.testing.assert_array_equal(v, u)
    np.testing.assert_array_equal(sync.forward(x), bn.forward(x))  # eval


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_synced_pass_of_one_process_gives_batchnorms_bits(shape, affine, rng, reducer):
    bn, sync = _pair(shape, affine=affine)
    x = (rng.standard_normal(shape) * 3 - 2).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    for _ in range(2):  # twice: the running statistics move on from their update
        a, b = _step(bn, x, dy), _step(sync, x, dy)
        for u, v in zip(a, b, strict=True):
            if isinstance(u, dict):
                assert list(u) == list(v)
                for k in u:
                    np.testing.assert_array_equal(v[k], u[k], err_msg=k)
            else:
                np.testing.assert_array_equal(v, u)
    C = shape[1]
    # per step: the sums and the count, the squares, then the two gradient sums
    assert reducer.calls == [C + 1, C, 2 * C] * 2, reducer.calls
    reducer.calls.clear()
    np.testing.assert_array_equal(sync.forward(x), bn.forward(x))  # eval: no collective
    assert reducer.calls == []


def test_two_identical_processes_normalise_as_their_combined_batch(rng, reducer):
    """Two processes with the same batch: every sum doubles; the output and the gradients
    are BatchNorm's on the batch twice over (the same as on the batch once), the running
    variance is unbiased over the 2 * N * H * W values of the job."""
    shape = (3, 4, 5, 5)
    reducer.scale = 2.0
    bn, sync = _pair(shape, momentum=0.5)
    x = (rng.standard_normal(shape) + 4).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, dx, g, sd = _step(sync, x, dy)
    yb, dxb, gb, _ = _step(bn, x, dy)
    np.testing.assert_array_equal(y, yb)
    np.testing.assert_array_equal(dx, dxb)
    for k in gb:  # each process keeps its own share of dgamma / dbeta
        np.testing.assert_array_equal(g[k], gb[k], err_msg=k)
    x64 = x.astype(np.float64)
    M = 2 * shape[0] * shape[2] * shape[3]
    both = np.concatenate([x64, x64])
    mean = both.mean(axis=(0, 2, 3))
    var_u = both.var(axis=(0, 2, 3)) * M / (M - 1)
    np.testing.assert_allclose(sd["0.running_mean"], 0.5 * mean, rtol=1e-6)
    np.testing.assert_allclose(sd["0.running_var"], 0.5 + 0.5 * var_u, rtol=1e-6)


def test_two_different_processes_match_batchnorm_on_the_joint_batch(rng):
    """Rank 0's view of a two-process job, the other rank's sums added by the reducer:
    output, dx and the running statistics are those of BatchNorm on both batches together
    (the backward's sums of rank 1 are those of its half of the joint dy)."""
    shape = (4, 3, 6, 5)
    xa = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    xb = (rng.standard_normal(shape) * 0.5 - 3).astype(np.float32)
    dya = rng.standard_normal(shape).astype(np.float32)
    dyb = rng.standard_normal(shape).astype(np.float32)
    bn, sync = _pair((8, *shape[1:]), momentum=0.3)
    yj, dxj, gj, sdj = _step(bn, np.concatenate([xa, xb]), np.concatenate([dya, dyb]))
    # the other rank's contributions, from numpy in float64
    C = shape[1]
    b64, dyb64 = xb.astype(np.float64), dyb.astype(np.float64)
    x64 = np.concatenate([xa, xb]).astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    invstd = 1 / np.sqrt(x64.var(axis=(0, 2, 3)) + 1e-5)
    calls = []

    def other(a):
        calls.append(a.shape[0])
        if len(calls) % 3 == 1:  # sums and count
            a[:C] += b64.sum(axis=(0, 2, 3))
            a[C] += shape[0] * shape[2] * shape[3]
        elif len(calls) % 3 == 2:  # squares about the joint mean
            a += ((b64 - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3))
        else:  # sum dy, sum dy * xhat
            xhat = (b64 - mean[None, :, None, None]) * invstd[None, :, None, None]
            a[:C] += dyb64.sum(axis=(0, 2, 3))
            a[C:] += (dyb64 * xhat).sum(axis=(0, 2, 3))

    _core.set_stats_reducer(other)
    try:
        y, dx, g, sd = _step(sync, xa, dya)
    finally:
        _core.set_stats_reducer(None)
    assert calls == [C + 1, C, 2 * C]
    np.testing.assert_allclose(y, yj[:4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dxj[:4], rtol=1e-4, atol=1e-5)
    for k in ("0.running_mean", "0.running_var"):
        np.testing.assert_allclose(sd[k], sdj[k], rtol=1e-6, err_msg=k)
    # dgamma / dbeta: rank 0's share; the gradient all-reduce adds rank 1's
    xhat_a = (xa.astype(np.float64) - mean[None, :, None, None]) * invstd[None, :, None, None]
    np.testing.assert_allclose(g["0.weight"], (dya * xhat_a).sum(axis=(0, 2, 3)), rtol=1e-4)
    np.testing.assert_allclose(g["0.bias"], dya.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_gradients_by_finite_differences_in_the_synced_pass(rng, reducer):
    """The synced pass's dx and dgamma/dbeta against central differences of sum(y * dy)
    (float64 arithmetic on the float32 layer, as the other gradient checks)."""
    shape = (3, 2, 3, 3)
    _, sync = _pair(shape)
    x = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    _, dx, g, sd = _step(sync, x, dy)

    def loss(xv, state=None):
        if state is not None:
            sync.load_state_dict(state, strict=False)
        return float((sync.forward(xv, training=True).astype(np.float64) * dy).sum())

    h = 1e-2
    for idx in [(0, 0, 0, 0), (1, 1, 2, 1), (2, 0, 1, 2)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (loss(xp) - loss(xm)) / (2 * h)
        np.testing.assert_allclose(dx[idx], fd, rtol=2e-2, atol=2e-3, err_msg=str(idx))
    w = sd["0.weight"].copy()
    for c in range(2):
        wp, wm = w.copy(), w.copy()
        wp[c] += h
        wm[c] -= h
        fd = (loss(x, {"0.weight": wp}) - loss(x, {"0.weight": wm})) / (2 * h)
        np.testing.assert_allclose(g["0.weight"][c], fd, rtol=2e-2, atol=2e-3)


def test_bad_shapes_name_the_layer():
    with pytest.raises(ValueError, match=r"SyncBatchNorm.*\(N, 4, \.\.\.\).*\(2, 3\)"):
        ck.SyncBatchNorm(4).forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        ck.SyncBatchNorm(5).forward(np.zeros((5,), np.float32))
    with pytest.raises(ValueError, match="SyncBatchNorm: num_features"):
        ck.SyncBatchNorm(0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ck.SyncBatchNorm(3).forward(np.zeros((1, 3), np.float32), training=True)


def test_convert_sync_batchnorm_keeps_names_weights_and_outputs(rng, tmp_path):
    ck.manual_seed(0)
    model = ck.models.resnet20()
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    model.forward(x, training=True)  # running statistics away from their init
    conv = ck.SyncBatchNorm.convert_sync_batchnorm(model)
    types = [e["type"] for e in conv.get_config()["nodes"]]
    before = [e["type"] for e in model.get_config()["nodes"]]
    assert "BatchNorm2d" not in types and types.count("SyncBatchNorm") == \
        before.count("BatchNorm2d") == 21  # 19 in the blocks' path, 2 in the projections
    assert [e["name"] for e in conv.get_config()["nodes"]] == \
        [e["name"] for e in model.get_config()["nodes"]]
    sd, sd2 = model.state_dict(), conv.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        np.testing.assert_array_equal(sd2[k], sd[k], err_msg=k)
    np.testing.assert_array_equal(conv.forward(x), model.forward(x))
    # a stack converts to a stack; files keep the type
    seq = ck.Sequential([ck.Conv2d(1, 3, 3), ck.BatchNorm2d(3), ck.ReLU(), ck.Flatten(),
                         ck.Linear(48, 4), ck.BatchNorm1d(4)])
    s2 = ck.SyncBatchNorm.convert_sync_batchnorm(seq)
    assert [e["type"] for e in s2.get_config()] == [
        "Conv2d", "SyncBatchNorm", "ReLU", "Flatten", "Linear", "SyncBatchNorm"]
    ck.save(s2, tmp_path / "s.cnnkit")
    back = ck.load(tmp_path / "s.cnnkit")
    xi = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(xi), s2.forward(xi))
    with pytest.raises(ValueError, match="expected a Sequential or Model"):
        ck.SyncBatchNorm.convert_sync_batchnorm(ck.ReLU())


def test_trains_in_a_trainer_like_batchnorm_in_one_process(rng):
    x = rng.random((96, 1, 10, 10), dtype=np.float32)
    y = rng.integers(0, 3, 96)
    out = []
    for bn in (ck.BatchNorm2d, ck.SyncBatchNorm):
        ck.manual_seed(4)
        m = ck.Sequential([ck.Conv2d(1, 4, 3), bn(4), ck.ReLU(), ck.Flatten(),
                           ck.Linear(256, 3)])
        ck.Trainer(m, optimizer="adam", seed=1).fit(x, y, epochs=2, batch_size=16, verbose=0)
        out.append(m.state_dict())
    for k in out[0]:
        np.testing.assert_array_equal(out[1][k], out[0][k], err_msg=k)


def test_exports_to_onnx_as_batchnormalization(rng, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ck.manual_seed(2)
    m = ck.Sequential([ck.Conv2d(2, 3, 3), ck.SyncBatchNorm(3), ck.ReLU()])
    x = rng.standard_normal((5, 2, 7, 7)).astype(np.float32)
    m.forward(x, training=True)
    ck.onnx.export(m, tmp_path / "s.onnx", input_shape=(2, 7, 7))
    import onnx

    ops = [n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node]
    assert "BatchNormalization" in ops
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, m.forward(x), rtol=1e-5, atol=1e-5)
