"""The layers added on the layer schema: ELU, SiLU, GELU, ReLU6, Hardswish, Identity, Softmax,
AdaptiveAvgPool2d, AdaptiveMaxPool2d, Dropout2d, BatchNorm1d, Upsample (nearest, bilinear). Forward and gradients
against numpy float64 references, central differences of those references, PyTorch parity on
random configurations (when torch is importable), bad arguments and shapes, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest

import cnnkit as ck

from conftest import assert_close

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not importable")

# ---- numpy float64 references -------------------------------------------------------------------

_erf = np.vectorize(math.erf)


def act_ref(kind: str, x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    if kind == "ELU":
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
    if kind == "SiLU":
        return x / (1 + np.exp(-x))
    if kind == "GELU":
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)))
    if kind == "GELUTanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if kind == "ReLU6":
        return np.clip(x, 0, 6)
    if kind == "Hardswish":
        return x * np.clip(x + 3, 0, 6) / 6
    raise KeyError(kind)


def softmax_ref(x: np.ndarray, dim: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


def bins(n_in: int, n_out: int):
    return [(i * n_in // n_out, -(-(i + 1) * n_in // n_out)) for i in range(n_out)]


def adaptive_ref(x: np.ndarray, P: int, Q: int, op) -> np.ndarray:
    N, C, H, W = x.shape
    y = np.empty((N, C, P, Q))
    for i, (h0, h1) in enumerate(bins(H, P)):
        for j, (w0, w1) in enumerate(bins(W, Q)):
            y[:, :, i, j] = op(x[:, :, h0:h1, w0:w1], axis=(2, 3))
    return y


def upsample_ref(x: np.ndarray, P: int, Q: int, sh: float, sw: float) -> np.ndarray:
    H, W = x.shape[2:]
    rows = np.minimum(np.floor(np.arange(P, dtype=np.float32) * np.float32(sh)), H - 1)
    cols = np.minimum(np.floor(np.arange(Q, dtype=np.float32) * np.float32(sw)), W - 1)
    return x[:, :, rows.astype(int)][:, :, :, cols.astype(int)]


def linear_taps(n_in: int, n_out: int, scale: float, align_corners: bool):
    """PyTorch's bilinear source taps along one axis, in float64: (i0, i1, l0, l1)."""
    p = np.arange(n_out, dtype=np.float64)
    if n_in == n_out:  # an axis whose size does not change is copied
        return p.astype(int), p.astype(int), np.ones(n_out), np.zeros(n_out)
    src = p * scale if align_corners else np.maximum((p + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src), n_in - 1).astype(int)
    l1 = np.clip(src - i0, 0.0, 1.0)
    return i0, np.where(i0 < n_in - 1, i0 + 1, i0), 1.0 - l1, l1


def bilinear_scale(n_in: int, n_out: int, scale_factor: float | None, align_corners: bool):
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return 1.0 / scale_factor if scale_factor else n_in / n_out


def bilinear_ref(x: np.ndarray, P: int, Q: int, scale_factor: float | None,
                 align_corners: bool) -> np.ndarray:
    H, W = x.shape[2:]
    h0, h1, a0, a1 = linear_taps(H, P, bilinear_scale(H, P, scale_factor, align_corners),
                                 align_corners)
    w0, w1, b0, b1 = linear_taps(W, Q, bilinear_scale(W, Q, scale_factor, align_corners),
                                 align_corners)
    r0, r1 = x[:, :, h0], x[:, :, h1]
    return (a0[:, None] * (b0 * r0[..., w0] + b1 * r0[..., w1])
            + a1[:, None] * (b0 * r1[..., w0] + b1 * r1[..., w1]))


def batchnorm1d_ref(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    axes = (0,) if x.ndim == 2 else (0, 2)
    shp = (1, -1) if x.ndim == 2 else (1, -1, 1)
    m = x.mean(axis=axes, keepdims=True)
    v = x.var(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g.reshape(shp) + b.reshape(shp)


def numeric_grad(f, x: np.ndarray, dy: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d/dx of sum(f(x) * dy), central differences in float64."""
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = np.sum(f(x) * dy)
        flat[i] = old - h
        fm = np.sum(f(x) * dy)
        flat[i] = old
        gf[i] = (fp - fm) / (2 * h)
    return g


def run(layer, x, dy, training=True):
    model = ck.Sequential([layer])
    y = model.forward(x.astype(np.float32), training=training)
    dx = model.backward(dy.astype(np.float32))
    return model, y, dx


# ---- activations --------------------------------------------------------------------------------

ACTS = {
    "ELU": lambda: ck.ELU(),
    "ELU0.3": lambda: ck.ELU(0.3),
    "SiLU": ck.SiLU,
    "GELU": ck.GELU,
    "GELUTanh": lambda: ck.GELU("tanh"),
    "ReLU6": ck.ReLU6,
    "Hardswish": ck.Hardswish,
}


def _ref_of(name):
    kind = "ELU" if name.startswith("ELU") else name
    alpha = 0.3 if name == "ELU0.3" else 1.0
    return lambda x: act_ref(kind, x, alpha)


@pytest.mark.parametrize("name", sorted(ACTS))
def test_activation_forward_backward_and_finite_differences(name, rng):
    x = (rng.standard_normal((3, 4, 5, 6)) * 4).astype(np.float32)
    dy = rng.standard_normal(x.shape)
    _, y, dx = run(ACTS[name](), x, dy)
    f = _ref_of(name)
    x64 = x.astype(np.float64)
    assert_close(y, f(x64), "activation")
    kinks = np.zeros(x.shape, bool)
    for k in (0.0, 6.0, -3.0, 3.0):
        kinks |= np.abs(x64 - k) < 1e-3
    g = numeric_grad(f, x64.copy(), dy)
    assert_close(np.where(kinks, 0, dx), np.where(kinks, 0, g), "gradcheck")


@needs_torch
@pytest.mark.parametrize("trial", range(4))
def test_activations_match_torch(trial, rng):
    alpha = float(rng.uniform(0.05, 2.0))
    approx = ["none", "tanh"][trial % 2]
    pairs = [(ck.ELU(alpha), torch.nn.ELU(alpha)), (ck.SiLU(), torch.nn.SiLU()),
             (ck.GELU(approx), torch.nn.GELU(approximate=approx)), (ck.ReLU6(), torch.nn.ReLU6()),
             (ck.Hardswish(), torch.nn.Hardswish())]
    shape = tuple(int(v) for v in rng.integers(1, 6, size=4))
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    for ours, ref in pairs:
        _, y, dx = run(ours, x, dy)
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        yt.backward(torch.tensor(dy))
        assert_close(y, yt.detach().numpy(), "torch", f" {ours!r} forward")
        assert_close(dx, xt.grad.numpy(), "torch", f" {ours!r} backward")


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match="GELU: approximate must be one of 'none', 'tanh'"):
        ck.GELU("erf")


# ---- Identity, Softmax --------------------------------------------------------------------------


def test_identity_is_a_view(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, y, dx = run(ck.Identity(), x, dy)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, dy)


@pytest.mark.parametrize("shape,dim", [((5, 7), 1), ((3, 4, 5, 2), 1), ((3, 4, 5, 2), -1),
                                       ((2, 3, 4), 2), ((4, 6), 0)])
def test_softmax_against_reference_and_finite_differences(shape, dim, rng):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1)[0] = 80.0  # stable: no overflow
    dy = rng.standard_normal(shape)
    _, y, dx = run(ck.Softmax(dim), x, dy)
    x64 = x.astype(np.float64)
    assert_close(y, softmax_ref(x64, dim), "activation")
    assert_close(dx, numeric_grad(lambda v: softmax_ref(v, dim), x64.copy(), dy), "gradcheck")


@needs_torch
def test_softmax_matches_torch(rng):
    for _ in range(4):
        shape = tuple(int(v) for v in rng.integers(1, 7, size=4))
        x = (rng.standard_normal(shape) * 4).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        _, y, dx = run(ck.Softmax(1), x, dy)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.softmax(xt, 1)
        yt.backward(torch.tensor(dy))
        assert_close(y, yt.detach().numpy(), "torch")
        assert_close(dx, xt.grad.numpy(), "torch")


def test_softmax_rejects_a_dim_outside_the_input():
    with pytest.raises(ValueError, match=r"Softmax.*dim 3 is out of range.*\(2, 5\)"):
        ck.Softmax(3).forward(np.zeros((2, 5), np.float32))


# ---- adaptive pooling ---------------------------------------------------------------------------


@pytest.mark.parametrize("H,W,P,Q", [(5, 7, 3, 2), (6, 6, 1, 1), (4, 3, 4, 3), (3, 5, 7, 8),
                                     (10, 9, 4, 6)])
def test_adaptive_pools_against_reference(H, W, P, Q, rng):
    x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
    dy = rng.standard_normal((2, 3, P, Q))
    x64 = x.astype(np.float64)
    _, y, dx = run(ck.AdaptiveAvgPool2d((P, Q)), x, dy)
    avg = lambda v: adaptive_ref(v, P, Q, np.mean)  # noqa: E731
    assert_close(y, avg(x64), "pool")
    assert_close(dx, numeric_grad(avg, x64.copy(), dy), "gradcheck")
    _, y, dx = run(ck.AdaptiveMaxPool2d((P, Q)), x, dy)
    mx = lambda v: adaptive_ref(v, P, Q, np.max)  # noqa: E731
    assert_close(y, mx(x64), "pool")
    assert_close(dx, numeric_grad(mx, x64.copy(), dy), "gradcheck")  # random data: no ties


def test_adaptive_pool_none_keeps_the_input_size(rng):
    x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    assert ck.AdaptiveAvgPool2d((None, 2)).forward(x).shape == (1, 2, 5, 2)
    assert ck.AdaptiveMaxPool2d((3, None)).forward(x).shape == (1, 2, 3, 4)


@needs_torch
@pytest.mark.parametrize("trial", range(6))
def test_adaptive_pools_match_torch(trial, rng):
    H, W = (int(v) for v in rng.integers(1, 12, size=2))
    P, Q = (int(v) for v in rng.integers(1, 9, size=2))
    x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
    dy = rng.standard_normal((2, 3, P, Q)).astype(np.float32)
    for ours, ref in [(ck.AdaptiveAvgPool2d((P, Q)), torch.nn.AdaptiveAvgPool2d((P, Q))),
                      (ck.AdaptiveMaxPool2d((P, Q)), torch.nn.AdaptiveMaxPool2d((P, Q)))]:
        _, y, dx = run(ours, x, dy)
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        yt.backward(torch.tensor(dy))
        assert_close(y, yt.detach().numpy(), "torch", f" {ours!r} H,W={H},{W}")
        assert_close(dx, xt.grad.numpy(), "torch", f" {ours!r} H,W={H},{W}")


def test_adaptive_pool_rejects_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match="AdaptiveAvgPool2d: output_size"):
        ck.AdaptiveAvgPool2d(-1)
    with pytest.raises(ValueError, match=r"AdaptiveMaxPool2d.*\(N, C, H, W\).*\(2, 3\)"):
        ck.AdaptiveMaxPool2d(2).forward(np.zeros((2, 3), np.float32))


# ---- Dropout2d ----------------------------------------------------------------------------------


def test_dropout2d_zeroes_whole_channels(rng):
    x = rng.standard_normal((8, 16, 3, 4)).astype(np.float32) + 5.0
    dy = rng.standard_normal(x.shape).astype(np.float32)
    model, y, dx = run(ck.Dropout2d(0.5), x, dy)
    kept = (y != 0).reshape(8, 16, -1)
    assert np.all(kept.all(axis=2) | ~kept.any(axis=2))  # a channel is all kept or all dropped
    mask = kept.all(axis=2)[:, :, None, None]
    assert 0.2 < mask.mean() < 0.8
    np.testing.assert_allclose(y, np.where(mask, x * 2.0, 0), rtol=1e-6)
    np.testing.assert_allclose(dx, np.where(mask, dy * 2.0, 0), rtol=1e-6)
    np.testing.assert_array_equal(model.forward(x, training=False), x)


def test_dropout2d_rejects_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match="Dropout2d: p must be in"):
        ck.Dropout2d(1.0)
    with pytest.raises(ValueError, match=r"Dropout2d.*\(N, C, H, W\).*\(2, 3\)"):
        ck.Dropout2d().forward(np.zeros((2, 3), np.float32), training=True)


# ---- BatchNorm1d --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5)])
def test_batchnorm1d_against_reference(shape, rng):
    C = shape[1]
    layer = ck.BatchNorm1d(C)
    g = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    model = ck.Sequential([layer])
    model.load_state_dict({**model.state_dict(), "0.weight": g, "0.bias": b})
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape)
    y = model.forward(x, training=True)
    dx = model.backward(dy.astype(np.float32))
    f = lambda v: batchnorm1d_ref(v, g.astype(np.float64), b.astype(np.float64), 1e-5)  # noqa: E731
    x64 = x.astype(np.float64)
    assert_close(y, f(x64), "batchnorm")
    assert_close(dx, numeric_grad(f, x64.copy(), dy), "gradcheck")
    grads = model.grad_dict()
    axes = (0,) if len(shape) == 2 else (0, 2)
    xhat = batchnorm1d_ref(x64, np.ones(C), np.zeros(C), 1e-5)
    assert_close(grads["0.weight"], (dy * xhat).sum(axis=axes), "batchnorm")
    assert_close(grads["0.bias"], dy.sum(axis=axes), "batchnorm")


@needs_torch
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7)])
def test_batchnorm1d_matches_torch(shape, rng):
    C = shape[1]
    ours = ck.Sequential([ck.BatchNorm1d(C, momentum=0.3)])
    ref = torch.nn.BatchNorm1d(C, momentum=0.3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(rng.standard_normal(C)))
        ref.bias.copy_(torch.tensor(rng.standard_normal(C)))
    ours.load_state_dict({k: v.detach().numpy().astype(np.float32) for k, v in
                          {"0." + k: v for k, v in ref.state_dict().items()
                           if k != "num_batches_tracked"}.items()})
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = ours.forward(x, training=True)
    dx = ours.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), "torch")
    assert_close(dx, xt.grad.numpy(), "torch")
    g = ours.grad_dict()
    assert_close(g["0.weight"], ref.weight.grad.numpy(), "torch")
    assert_close(g["0.bias"], ref.bias.grad.numpy(), "torch")
    sd = ours.state_dict()
    assert_close(sd["0.running_mean"], ref.running_mean.numpy(), "torch")
    assert_close(sd["0.running_var"], ref.running_var.numpy(), "torch")
    ref.eval()
    assert_close(ours.forward(x), ref(torch.tensor(x)).detach().numpy(), "torch")


def test_batchnorm1d_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"BatchNorm1d.*\(N, 4\) or \(N, 4, L\).*\(2, 3\)"):
        ck.BatchNorm1d(4).forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="BatchNorm1d: num_features"):
        ck.BatchNorm1d(0)


# ---- Upsample -----------------------------------------------------------------------------------


@pytest.mark.parametrize("H,W,s", [(3, 4, 2.0), (5, 3, 1.5), (4, 4, 3.0), (7, 5, 0.5)])
def test_upsample_nearest_against_reference(H, W, s, rng):
    x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
    P, Q = int(math.floor(H * s)), int(math.floor(W * s))
    dy = rng.standard_normal((2, 3, P, Q))
    _, y, dx = run(ck.Upsample(scale_factor=s), x, dy)
    f = lambda v: upsample_ref(v, P, Q, 1.0 / s, 1.0 / s)  # noqa: E731
    x64 = x.astype(np.float64)
    assert_close(y, f(x64), "pool")
    assert_close(dx, numeric_grad(f, x64.copy(), dy), "gradcheck")


@needs_torch
@pytest.mark.parametrize("trial", range(5))
def test_upsample_matches_torch(trial, rng):
    H, W = (int(v) for v in rng.integers(1, 9, size=2))
    s = float(rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 0.75]))
    x = rng.standard_normal((2, 2, H, W)).astype(np.float32)
    if math.floor(H * s) < 1 or math.floor(W * s) < 1:
        return
    layer = ck.Upsample(scale_factor=s) if trial % 2 else ck.Upsample(size=(H + 2, W * 2))
    ref = (torch.nn.Upsample(scale_factor=s) if trial % 2
           else torch.nn.Upsample(size=(H + 2, W * 2)))
    y0 = layer.output_shape(x.shape)
    dy = rng.standard_normal(y0).astype(np.float32)
    _, y, dx = run(layer, x, dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), "torch")
    assert_close(dx, xt.grad.numpy(), "torch")


def test_upsample_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Upsample: give exactly one of size and scale_factor"):
        ck.Upsample()
    with pytest.raises(ValueError, match="Upsample: give exactly one"):
        ck.Upsample(size=4, scale_factor=2.0)
    with pytest.raises(ValueError, match="Upsample: mode must be one of 'nearest', 'bilinear'"):
        ck.Upsample(scale_factor=2.0, mode="bicubic")
    for ac in (True, False):  # as PyTorch: only the interpolating mode takes align_corners
        with pytest.raises(ValueError, match="Upsample: align_corners can only be set with "
                                             "mode='bilinear', got mode='nearest'"):
            ck.Upsample(scale_factor=2.0, align_corners=ac)
    with pytest.raises(ValueError, match="Upsample: align_corners must be True or False"):
        ck.Upsample(scale_factor=2.0, mode="bilinear", align_corners=1)
    for mode in ("nearest", "bilinear"):
        with pytest.raises(ValueError, match=r"Upsample.*\(N, C, H, W\).*\(2, 3\)"):
            ck.Upsample(scale_factor=2.0, mode=mode).forward(np.zeros((2, 3), np.float32))


BILINEAR_CASES = [
    # H, W, Upsample arguments (besides mode)
    (3, 4, {"scale_factor": 2.0}),
    (5, 3, {"scale_factor": 1.5, "align_corners": True}),
    (4, 4, {"scale_factor": 3.0, "align_corners": False}),
    (7, 5, {"scale_factor": 0.5}),
    (6, 5, {"scale_factor": 0.4, "align_corners": True}),
    (3, 4, {"size": (5, 9)}),
    (3, 4, {"size": (1, 7), "align_corners": True}),  # one output row: scale 0
    (1, 5, {"size": (4, 5)}),  # one input row; the columns are copied
    (2, 3, {"scale_factor": 1.4}),  # 2 -> 2 rows (copied), 3 -> 4 columns
    (4, 6, {"size": (2, 3), "align_corners": True}),
]


@pytest.mark.parametrize("H,W,kw", BILINEAR_CASES)
def test_upsample_bilinear_against_reference(H, W, kw, rng):
    layer = ck.Upsample(mode="bilinear", **kw)
    x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
    P, Q = layer.output_shape(x.shape)[2:]
    dy = rng.standard_normal((2, 3, P, Q))
    _, y, dx = run(layer, x, dy)
    f = lambda v: bilinear_ref(v, P, Q, kw.get("scale_factor"),  # noqa: E731
                               bool(kw.get("align_corners")))
    x64 = x.astype(np.float64)
    assert_close(y, f(x64), "conv")
    assert_close(dx, numeric_grad(f, x64.copy(), dy), "gradcheck")


@needs_torch
@pytest.mark.parametrize("trial", range(12))
def test_upsample_bilinear_matches_torch(trial, rng):
    H, W = (int(v) for v in rng.integers(1, 9, size=2))
    s = float(rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 0.75, 0.5, 1.3]))
    ac = [None, False, True][trial % 3]
    if trial % 2:
        kw = {"scale_factor": s}
    else:
        kw = {"size": (int(rng.integers(1, 12)), int(rng.integers(1, 12)))}
    if math.floor(H * s) < 1 or math.floor(W * s) < 1:
        kw = {"size": (H + 1, W + 2)}
    layer = ck.Upsample(mode="bilinear", align_corners=ac, **kw)
    ref = torch.nn.Upsample(mode="bilinear", align_corners=ac, **kw)
    x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
    dy = rng.standard_normal(layer.output_shape(x.shape)).astype(np.float32)
    _, y, dx = run(layer, x, dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    assert y.shape == tuple(yt.shape)
    assert_close(y, yt.detach().numpy(), "torch")
    assert_close(dx, xt.grad.numpy(), "torch", scale=4.0)  # sums of up to ~(2 * s)^2 terms


def test_upsample_files_without_align_corners_still_load(tmp_path, rng):
    """A file written before Upsample had align_corners loads (the argument is then None)."""
    from cnnkit import serialization

    model = ck.Sequential([ck.Conv2d(2, 3, 3, padding=1), ck.Upsample(scale_factor=2.0)])
    x = rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    want = model.forward(x)
    meta, tensors = serialization._model_payload(model)
    for entry in meta["architecture"]:
        entry["config"].pop("align_corners", None)
    assert "align_corners" not in str(meta)
    serialization._write_file(tmp_path / "old.cnnkit", "model", meta, tensors)
    back = ck.load(tmp_path / "old.cnnkit")
    assert back.get_config()[1]["config"]["align_corners"] is None
    np.testing.assert_array_equal(back.forward(x), want)


def test_upsample_bilinear_round_trips_and_trains(tmp_path, rng):
    ck.manual_seed(0)
    model = ck.Sequential([ck.Conv2d(1, 4, 3, stride=2, padding=1), ck.ReLU(),
                           ck.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True),
                           ck.Conv2d(4, 1, 3, padding=1)])
    x = rng.random((8, 1, 8, 8), dtype=np.float32)
    t = ck.Trainer(model, loss="mse", optimizer=ck.optim.Adam(lr=1e-2), device="cpu", seed=0)
    h = t.fit(x, x, epochs=5, batch_size=4, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    ck.save(model, tmp_path / "m.cnnkit")
    back = ck.load(tmp_path / "m.cnnkit")
    assert back.get_config()[2]["config"] == {"size": None, "scale_factor": 2.0,
                                              "mode": "bilinear", "align_corners": True}
    np.testing.assert_array_equal(back.forward(x), model.forward(x))
    assert "Upsample" in model.summary((1, 8, 8), print_fn=None)


# ---- save / load --------------------------------------------------------------------------------


def test_a_model_with_every_new_layer_round_trips(tmp_path, rng):
    model = ck.Sequential([
        ck.Upsample(scale_factor=2.0), ck.ELU(0.5), ck.AdaptiveMaxPool2d((5, None)), ck.SiLU(),
        ck.Dropout2d(0.2), ck.GELU("tanh"), ck.ReLU6(), ck.Hardswish(), ck.Identity(),
        ck.AdaptiveAvgPool2d(2), ck.Flatten(), ck.BatchNorm1d(12), ck.Softmax(1),
    ])
    x = rng.standard_normal((4, 3, 4, 5)).astype(np.float32)
    model.forward(x, training=True)
    y = model.forward(x)
    p = tmp_path / "m.cnnkit"
    ck.save(model, p)
    back = ck.load(p)
    assert back.get_config() == model.get_config()
    np.testing.assert_array_equal(back.forward(x), y)
    sd, sd2 = model.state_dict(), back.state_dict()
    assert list(sd) == list(sd2)
