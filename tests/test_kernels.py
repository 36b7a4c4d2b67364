"""Each CPU kernel against its numpy float64 reference (through the layers and raw bindings)."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import _core
from cnnkit._core import _testing

import reference as ref
from conftest import assert_close

# ---- im2col / col2im ------------------------------------------------------------------------

IM2COL_CASES = [
    # C, H, W, kernel, stride, padding, dilation
    (1, 5, 5, (3, 3), (1, 1), (0, 0), (1, 1)),
    (2, 7, 6, (3, 2), (2, 1), (1, 0), (1, 1)),
    (3, 9, 8, (3, 3), (2, 3), (2, 1), (2, 1)),
    (2, 4, 4, (1, 1), (1, 1), (0, 0), (1, 1)),
    (1, 6, 10, (5, 5), (1, 1), (2, 2), (1, 1)),
    (2, 8, 8, (2, 2), (3, 3), (1, 1), (3, 2)),
]


@pytest.mark.parametrize("C,H,W,k,s,p,d", IM2COL_CASES)
def test_im2col_matches_reference(C, H, W, k, s, p, d, rng):
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    assert_close(
        _testing.im2col(x, list(k), list(s), list(p), list(d)), ref.im2col(x, k, s, p, d), "im2col"
    )


@pytest.mark.parametrize("C,H,W,k,s,p,d", IM2COL_CASES)
def test_col2im_matches_reference(C, H, W, k, s, p, d, rng):
    P = ref.conv_out(H, k[0], s[0], p[0], d[0])
    Q = ref.conv_out(W, k[1], s[1], p[1], d[1])
    col = rng.standard_normal((C * k[0] * k[1], P * Q)).astype(np.float32)
    assert_close(
        _testing.col2im(col, [C, H, W], list(k), list(s), list(p), list(d)),
        ref.col2im(col, (C, H, W), k, s, p, d),
        "conv",
    )


# ---- convolution ----------------------------------------------------------------------------

CONV_CASES = [
    # N, C, H, W, K, kernel, stride, padding, dilation, groups, bias
    (2, 1, 28, 28, 6, (5, 5), (1, 1), (2, 2), (1, 1), 1, True),  # LeNet conv1
    (3, 6, 14, 14, 16, (5, 5), (1, 1), (0, 0), (1, 1), 1, True),  # LeNet conv2
    (2, 3, 9, 7, 4, (3, 2), (2, 1), (1, 0), (1, 1), 1, False),
    (2, 4, 10, 10, 6, (3, 3), (1, 2), (2, 1), (2, 2), 2, True),  # groups + dilation
    (2, 4, 8, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 4, True),  # depthwise x2
    (2, 3, 6, 6, 3, (3, 3), (2, 2), (1, 1), (1, 1), 3, True),  # depthwise
    (3, 5, 6, 7, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),  # pointwise
    (1, 2, 5, 5, 3, (5, 5), (1, 1), (0, 0), (1, 1), 1, True),  # 1x1 output
    (40, 3, 12, 12, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # several chunks? (big N)
    # direct (stride 1) path: dilation, uneven padding, K not a multiple of the 6-row tile
    (2, 3, 7, 9, 13, (3, 2), (1, 1), (3, 0), (2, 1), 1, True),
    # padding wider than the kernel: backward-input leaves the direct path
    (2, 2, 5, 5, 3, (3, 3), (1, 1), (3, 3), (1, 1), 1, False),
    # more images than weight-gradient groups, K > 16 (two 16-wide tiles of dy^T)
    (17, 32, 8, 8, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    # the AVX-512 12 x 32 tiles: rows of 32 and 40 outputs (full and masked tiles), 12 + 7
    # and 25 channels (a second panel, partial tiles of 7 and 1 rows), flat tiles (Q = 9)
    (2, 3, 32, 32, 19, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    (2, 5, 6, 40, 25, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    (3, 4, 11, 11, 12, (3, 3), (1, 1), (0, 0), (1, 1), 1, False),
    # strided layers on the direct path (forward and dw through the image's stride phases):
    # ResNet's 3x3/2 and 1x1/2 shapes, odd sizes (phases of unequal length), stride 3 with
    # dilation 2 (phases 0 and 2 of 3), unequal strides, padding wider than the kernel
    (2, 16, 32, 32, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1, False),
    (1, 32, 16, 16, 64, (3, 3), (2, 2), (1, 1), (1, 1), 1, False),
    (3, 16, 32, 32, 32, (1, 1), (2, 2), (0, 0), (1, 1), 1, False),
    (2, 5, 15, 13, 13, (3, 3), (2, 2), (1, 1), (1, 1), 1, True),
    (2, 3, 17, 19, 7, (5, 4), (3, 2), (2, 1), (2, 3), 1, True),
    (1, 4, 9, 20, 26, (3, 3), (1, 3), (4, 2), (1, 1), 1, True),
]


def _conv_layer(C, K, k, s, p, d, groups, bias, rng):
    layer = ck.Conv2d(C, K, k, stride=s, padding=p, dilation=d, groups=groups, bias=bias)
    w = rng.standard_normal((K, C // groups, *k)).astype(np.float32) * 0.3
    state = {"0.weight": w}
    if bias:
        state["0.bias"] = rng.standard_normal(K).astype(np.float32)
    layer.load_state_dict(state)
    return layer, w, state.get("0.bias")


@pytest.mark.parametrize("N,C,H,W,K,k,s,p,d,groups,bias", CONV_CASES)
def test_conv2d_forward_backward(N, C, H, W, K, k, s, p, d, groups, bias, rng, cpu_kernels):
    layer, w, b = _conv_layer(C, K, k, s, p, d, groups, bias, rng)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    y = layer.forward(x, training=True)
    assert_close(y, ref.conv2d(x, w, b, s, p, d, groups), "conv", " forward")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    rdx, rdw, rdb = ref.conv2d_backward(x, w, dy, s, p, d, groups)
    assert_close(dx, rdx, "conv", " dx")
    g = layer.grad_dict()
    # dw and db are float32 sums of N*P*Q products: the table's atol is for ~100 terms, and
    # rounding grows like the square root of the count
    scale = max(1.0, np.sqrt(dy[:, 0].size) / 10)
    assert_close(g["0.weight"], rdw, "conv", " dw", scale=scale)
    if bias:
        assert_close(g["0.bias"], rdb, "conv", " db", scale=scale)


@pytest.mark.parametrize(
    "C,K,H,W,k,p", [(3, 19, 32, 32, 3, 1), (5, 25, 6, 40, 3, 1), (6, 16, 14, 14, 5, 0),
                    (32, 40, 9, 9, 3, 1),
                    # narrow layers (dw through the lanes of 16 columns): LeNet's conv1, 8 and
                    # 7 channels (tap blocks of 3 and 1), columns not a multiple of 16
                    (1, 6, 28, 28, 5, 2), (5, 8, 9, 11, 3, 1), (16, 7, 7, 5, 3, 0), (2, 1, 6, 6, 2, 1)]
)
def test_direct_conv_avx512_matches_avx2_bits(C, K, H, W, k, p, rng):
    # The AVX-512 direct-conv tiles do the AVX2 kernels' operations in the same order per
    # element: forward, dx, dw and db are bit-identical between the two sets (Winograd off:
    # on Intel cores it takes the stride-1 3x3 layers of the AVX-512 set by default).
    if "avx512" not in ck.available_cpu_kernels():
        pytest.skip("this CPU has no avx512 kernels")
    model = ck.Sequential([ck.Conv2d(C, K, k, padding=p), ck.ReLU()])
    x = rng.standard_normal((4, C, H, W)).astype(np.float32)
    dy = None
    out = []
    before = _core.requested_cpu_kernels()
    _core._testing.set_conv_winograd(False)
    try:
        for name in ("avx512", "avx2"):
            ck.set_cpu_kernels(name)
            model.zero_grad()
            y = model.forward(x, training=True)
            if dy is None:
                dy = rng.standard_normal(y.shape).astype(np.float32)
            dx = model.backward(dy)
            g = model.grad_dict()
            out.append((y, dx, g["0.weight"], g["0.bias"]))
    finally:
        ck.set_cpu_kernels(before)
        _core._testing.set_conv_winograd(None)
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(a, b)
    assert_close(out[0][0], np.maximum(ref.conv2d(x, model.state_dict()["0.weight"],
                                                  model.state_dict()["0.bias"], (1, 1), (p, p)),
                                       0), "conv", scale=np.sqrt(C * k * k) / 3)


def _conv_passes_each(model, x, rng, setup, names):
    """{name: (y, dx, dw)} of a one-conv model after setup(name), for each name in turn; every
    pass backpropagates the same dy."""
    out, dy = {}, None
    for name in names:
        setup(name)
        model.zero_grad()
        y = model.forward(x, training=True)
        if dy is None:
            dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = model.backward(dy)
        out[name] = (y, dx, model.grad_dict()["0.weight"])
    return out


def _assert_same_bits(out, base):
    for name, got in out.items():
        for a, b, what in zip(got, out[base], ("y", "dx", "dw"), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{name!r} {what}")


@pytest.mark.parametrize(
    "C,K,H,W,k,p,s", [(6, 16, 14, 14, 5, 0, 1), (16, 32, 16, 16, 3, 1, 1), (3, 16, 32, 32, 3, 1, 1),
                      (16, 32, 17, 15, 3, 1, 2), (32, 64, 8, 8, 3, 1, 1), (5, 21, 9, 30, 3, 1, 1)]
)
def test_direct_conv_every_avx512_tile_and_table_gives_the_same_bits(C, K, H, W, k, p, s, rng):
    # The per-layer tile choice depends on the CPU's vendor (tables t12 and t16): every tile,
    # forced for the layer, and both tables give the bits of the 12 x 32 tiles, so a machine
    # of either vendor tests what the other runs.
    if "avx512" not in ck.available_cpu_kernels():
        pytest.skip("this CPU has no avx512 kernels")
    t = _core._testing
    model = ck.Sequential([ck.Conv2d(C, K, k, stride=s, padding=p), ck.ReLU()])
    x = rng.standard_normal((3, C, H, W)).astype(np.float32)
    before = _core.requested_cpu_kernels()
    table = t.conv_tile_table()

    def tile_or_table(what):
        if what.startswith("#"):
            t.set_conv_tile("")
            t.set_conv_tile_table(what[1:])
        else:
            t.set_conv_tile(what)

    try:
        ck.set_cpu_kernels("avx512")
        out = _conv_passes_each(model, x, rng, tile_or_table,
                                ("12x32", "4x80", "8x48", "6x64", "16x16", "kpix", "#t12", "#t16"))
    finally:
        t.set_conv_tile("")
        t.set_conv_tile_table(table)
        ck.set_cpu_kernels(before)
    _assert_same_bits(out, "12x32")
    with pytest.raises(ValueError, match="unknown tile"):
        t.set_conv_tile("7x7")
    with pytest.raises(ValueError, match="set_tile_table"):
        t.set_conv_tile_table("t99")


@pytest.mark.parametrize(
    "C,K,H,W,k,p,s", [(6, 16, 14, 14, 5, 0, 1), (64, 64, 8, 8, 3, 1, 1), (32, 64, 16, 16, 3, 1, 2),
                      (16, 20, 9, 7, 3, 1, 1), (24, 5, 10, 13, 3, 0, 1), (7, 48, 6, 11, 5, 2, 1)]
)
def test_direct_conv_avx2_channel_vector_tile_gives_the_same_bits(C, K, H, W, k, p, s, rng):
    # The AVX2 set's channel-vector tile (16 channels x 6 pixels, taken by default for
    # LeNet-5's conv2 and ResNet-20's 8x8 layers) against its 6 x 16 column tiles (forcing any
    # AVX-512 tile name under the AVX2 set keeps them): forward, dx and dw bit-identical, and
    # the forward against float64. Channel counts below 8, between 8 and 16 and past a
    # multiple of 16, pixel counts that 6 does not divide.
    if "avx2" not in ck.available_cpu_kernels():
        pytest.skip("this CPU has no avx2 kernels")
    t = _core._testing
    model = ck.Sequential([ck.Conv2d(C, K, k, stride=s, padding=p), ck.ReLU()])
    x = rng.standard_normal((3, C, H, W)).astype(np.float32)
    before = _core.requested_cpu_kernels()
    t.set_conv_winograd(False)
    try:
        ck.set_cpu_kernels("avx2")
        out = _conv_passes_each(model, x, rng, t.set_conv_tile, ("12x32", "kpix", ""))
    finally:
        t.set_conv_tile("")
        ck.set_cpu_kernels(before)
        t.set_conv_winograd(None)
    _assert_same_bits(out, "12x32")
    sd = model.state_dict()
    assert_close(out["kpix"][0], np.maximum(ref.conv2d(x, sd["0.weight"], sd["0.bias"], (s, s),
                                                       (p, p)), 0),
                 "conv", scale=np.sqrt(C * k * k) / 3)


def test_conv2d_random_strided_direct(rng, cpu_kernels):
    # Random strided geometries (the direct path's phase split: which phases exist, their
    # lengths, the row and column shifts of each tap) against the float64 reference.
    for _ in range(20):
        N = int(rng.integers(1, 4))
        C, K = int(rng.integers(1, 20)), int(rng.integers(1, 40))
        k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        s = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
        H = int(rng.integers(max(1, d[0] * (k[0] - 1) + 1 - 2 * p[0]), 24))
        W = int(rng.integers(max(1, d[1] * (k[1] - 1) + 1 - 2 * p[1]), 24))
        bias = bool(rng.integers(0, 2))
        layer, w, b = _conv_layer(C, K, k, s, p, d, 1, bias, rng)
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        what = f" N={N} C={C} H={H} W={W} K={K} k={k} s={s} p={p} d={d}"
        y = layer.forward(x, training=True)
        assert_close(y, ref.conv2d(x, w, b, s, p, d), "conv", " forward" + what,
                     scale=max(1.0, np.sqrt(C * k[0] * k[1]) / 10))
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = layer.backward(dy)
        rdx, rdw, rdb = ref.conv2d_backward(x, w, dy, s, p, d)
        assert_close(dx, rdx, "conv", " dx" + what)
        scale = max(1.0, np.sqrt(dy[:, 0].size) / 10)
        assert_close(layer.grad_dict()["0.weight"], rdw, "conv", " dw" + what, scale=scale)


def test_conv2d_direct_every_row_width(rng, cpu_kernels):
    # The padded-image copy moves rows in 16-, 8- and 4-float pieces and a tail: every width
    # from 1 to 40 (and pads 0-2) against the float64 reference, forward and dx.
    for W in range(1, 41):
        p = W % 3
        layer, w, b = _conv_layer(3, 7, (3, 3), (1, 1), (p, p), (1, 1), 1, True, rng)
        x = rng.standard_normal((2, 3, 5, W + 2)).astype(np.float32)[..., 1:W + 1]
        if W + 2 * p < 3:
            continue
        y = layer.forward(np.ascontiguousarray(x), training=True)
        assert_close(y, ref.conv2d(x, w, b, (1, 1), (p, p)), "conv", f" forward W={W} p={p}")
        dy = rng.standard_normal(y.shape).astype(np.float32)
        rdx = ref.conv2d_backward(x, w, dy, (1, 1), (p, p))[0]
        assert_close(layer.backward(dy), rdx, "conv", f" dx W={W} p={p}")


def test_conv2d_strided_im2col_path_still_works():
    # CNNKIT_CONV_STRIDED_DIRECT=0 sends strided layers back to im2col + GEMM (the A/B switch):
    # that path must stay correct too.
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, cnnkit as ck, sys; sys.path.insert(0, sys.argv[1])\n"
        "import reference as ref\n"
        "rng = np.random.default_rng(5)\n"
        "for s, k, p in [((2, 2), (3, 3), (1, 1)), ((2, 1), (1, 3), (0, 1))]:\n"
        "    layer = ck.Conv2d(6, 20, k, stride=s, padding=p)\n"
        "    w = rng.standard_normal((20, 6, *k)).astype(np.float32)\n"
        "    b = rng.standard_normal(20).astype(np.float32)\n"
        "    layer.load_state_dict({'0.weight': w, '0.bias': b})\n"
        "    x = rng.standard_normal((3, 6, 11, 12)).astype(np.float32)\n"
        "    r = ref.conv2d(x, w, b, s, p)\n"
        "    assert np.abs(layer.forward(x) - r).max() < 1e-3, s\n"
        "print('ok')\n"
    )
    env = dict(os.environ, CNNKIT_CONV_STRIDED_DIRECT="0")
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code, here], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_conv2d_large_batch_chunks(rng):
    # The column matrix is built for several images at a time; a large batch spans chunks.
    layer, w, b = _conv_layer(8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, rng)
    x = rng.standard_normal((300, 8, 16, 16)).astype(np.float32)
    y = layer.forward(x, training=True)
    assert_close(y[::37], ref.conv2d(x[::37], w, b, (1, 1), (1, 1)), "conv")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    layer.backward(dy)
    _, rdw, rdb = ref.conv2d_backward(x, w, dy, (1, 1), (1, 1))
    # dw and db sum 300*256 products each: widen atol by sqrt of that count
    assert_close(layer.grad_dict()["0.weight"], rdw, "conv", " dw", scale=300)
    assert_close(layer.grad_dict()["0.bias"], rdb, "conv", " db", scale=300)


def test_backward_accumulates_gradients(rng):
    layer, w, b = _conv_layer(2, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, rng)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    layer.backward(dy)
    g1 = layer.grad_dict()["0.weight"]
    layer.backward(dy)
    assert_close(layer.grad_dict()["0.weight"], 2 * g1, "conv")
    layer.zero_grad()
    assert np.all(layer.grad_dict()["0.weight"] == 0)


# ---- pooling --------------------------------------------------------------------------------

POOL_CASES = [
    # N, C, H, W, kernel, stride, padding, ceil_mode
    (2, 3, 8, 8, (2, 2), (2, 2), (0, 0), False),
    (2, 2, 7, 9, (3, 3), (2, 2), (1, 1), False),
    (1, 2, 7, 7, (3, 2), (2, 1), (1, 0), True),
    (2, 1, 6, 5, (2, 2), (2, 2), (0, 0), True),
    (1, 3, 5, 5, (5, 5), (1, 1), (2, 2), False),
]


@pytest.mark.parametrize("N,C,H,W,k,s,p,ceil", POOL_CASES)
def test_maxpool2d(N, C, H, W, k, s, p, ceil, rng, cpu_kernels):
    # distinct values: no ties, so the argmax is unique
    x = rng.permutation(N * C * H * W).reshape(N, C, H, W).astype(np.float32) / 7.0
    layer = ck.MaxPool2d(k, s, p, ceil_mode=ceil)
    y = layer.forward(x, training=True)
    ry, arg = ref.maxpool2d(x, k, s, p, ceil)
    assert_close(y, ry, "pool")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(layer.backward(dy), ref.maxpool2d_backward(dy, arg, x.shape), "pool")


@pytest.mark.parametrize("N,C,H,W,k,s,p,ceil", POOL_CASES)
@pytest.mark.parametrize("cip", [True, False])
def test_avgpool2d(N, C, H, W, k, s, p, ceil, cip, rng, cpu_kernels):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    layer = ck.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=cip)
    y = layer.forward(x, training=True)
    ry, _ = ref.avgpool2d(x, k, s, p, ceil, cip)
    assert_close(y, ry, "pool")
    # backward: d/dx of sum(dy * y) by linearity through the reference
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    eps_dx = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape[1:]):
        e = np.zeros(x.shape)
        e[(slice(None),) + idx] = 1.0
        eps_dx[(slice(None),) + idx] = (
            (ref.avgpool2d(e, k, s, p, ceil, cip)[0] * dy).reshape(N, -1).sum(axis=1)
        )
    assert_close(dx, eps_dx, "pool")


def test_maxpool_default_stride_is_kernel():
    assert ck.MaxPool2d(3).get_config()["stride"] == (3, 3)
    assert ck.AvgPool2d(2).get_config()["stride"] == (2, 2)


def _pool2x2_input(kind, shape, rng):
    N, C, H, W = shape
    if kind == "distinct":
        return rng.permutation(N * C * H * W).reshape(shape).astype(np.float32) / 7.0
    # small integers and signed zeros: many ties inside a window
    x = rng.integers(-2, 3, shape).astype(np.float32)
    x[rng.random(shape) < 0.2] = -0.0
    if kind == "nan":
        # a NaN at each window position in turn (none every fifth window), sometimes two
        P, Q = H // 2, W // 2
        for p in range(P):
            for q in range(Q):
                k = (p * Q + q) % 5
                if k < 4:
                    x[:, :, 2 * p + k // 2, 2 * q + k % 2] = np.nan
                if (p + q) % 3 == 0:
                    x[::2, :, 2 * p + 1, 2 * q + 1] = np.nan
    elif kind == "neg_inf":
        x[rng.random(shape) < 0.6] = -np.inf
        x[:, :, : 2 * (H // 4), : 2 * (W // 4)] = -np.inf  # whole windows of -inf
    return x


# The 2x2 / stride 2 path is vectorised in blocks of 8 and 4 outputs with overlapping or scalar
# tails, and its backward writes dx directly: rows of 3..20 outputs, odd sizes whose last row or
# column no window covers, and the exact tie and NaN rules (the first maximum, or the first NaN,
# in row-major window order wins), compared bit for bit through the raw binding (the Python
# API refuses NaN input).
@pytest.mark.parametrize("H,W", [(28, 28), (10, 10), (17, 35), (9, 7), (6, 6), (4, 40), (32, 33)])
@pytest.mark.parametrize("kind", ["distinct", "ties", "nan", "neg_inf"])
def test_maxpool2x2_exact(H, W, kind, rng, cpu_kernels):
    x = _pool2x2_input(kind, (2, 3, H, W), rng)
    net = _core.Net([ck.MaxPool2d(2)._native])
    y = net.forward(x, True)
    ry, arg = ref.maxpool2d(x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(y, ry.astype(np.float32))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy.flat[::5] = -0.0  # dx gets 0 + dy at the argmax: +0, as a zero fill then add gives
    dx = net.backward(dy)
    rdx = ref.maxpool2d_backward(dy, arg, x.shape).astype(np.float32)
    np.testing.assert_array_equal(dx.view(np.uint32), rdx.view(np.uint32))


# Bit for bit against the same float32 operations in the same order (the general loop's), with
# signed zeros and subnormals, whose quarter underflows to -0 before the + 0.
@pytest.mark.parametrize("H,W", [(28, 28), (10, 10), (17, 35), (9, 7), (4, 40)])
def test_avgpool2x2_exact(H, W, rng, cpu_kernels):
    def specials(shape):
        v = rng.standard_normal(shape).astype(np.float32)
        tiny = np.array([0.0, -0.0, 1e-45, -1e-45, -3e-45, 1e-38, -1e-38], np.float32)
        return np.where(rng.random(shape) < 0.3, rng.choice(tiny, shape), v)

    x = specials((2, 3, H, W))
    layer = ck.AvgPool2d(2)
    y = layer.forward(x, training=True)
    P, Q = H // 2, W // 2
    s = np.zeros((2, 3, P, Q), np.float32)
    for dh, dw in ((0, 0), (0, 1), (1, 0), (1, 1)):
        s = s + x[:, :, dh : 2 * P : 2, dw : 2 * Q : 2]
    np.testing.assert_array_equal(y.view(np.uint32), (s / np.float32(4)).view(np.uint32))
    dy = specials(y.shape)
    rdx = np.zeros(x.shape, np.float32)
    quarter = np.float32(0) + dy / np.float32(4)
    rdx[:, :, : 2 * P, : 2 * Q] = np.repeat(np.repeat(quarter, 2, 2), 2, 3)
    np.testing.assert_array_equal(layer.backward(dy).view(np.uint32), rdx.view(np.uint32))


def test_pool_and_relu_independent_of_threads(rng, cpu_kernels):
    # large enough for the kernels to split across threads
    x = _pool2x2_input("ties", (8, 32, 28, 28), rng)
    dy = rng.standard_normal((8, 32, 14, 14)).astype(np.float32)
    out, before = [], ck.get_num_threads()
    try:
        for t in (1, 2):
            ck.set_num_threads(t)
            net = _core.Net([ck.ReLU()._native, ck.MaxPool2d(2)._native])
            out.append((net.forward(x, True), net.backward(dy)))
    finally:
        ck.set_num_threads(before)
    for a, b in zip(out[0], out[1], strict=True):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ---- activations ----------------------------------------------------------------------------


def _act_ref(name, x, alpha=0.01):
    x = x.astype(np.float64)
    if name == "ReLU":
        return np.maximum(x, 0), (x > 0).astype(np.float64)
    if name == "LeakyReLU":
        return np.where(x > 0, x, alpha * x), np.where(x > 0, 1.0, alpha)
    if name == "Sigmoid":
        s = 1 / (1 + np.exp(-x))
        return s, s * (1 - s)
    t = np.tanh(x)
    return t, 1 - t * t


@pytest.mark.parametrize("name", ["ReLU", "LeakyReLU", "Sigmoid", "Tanh"])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5, 5), (70000, 1)])
def test_activation(name, shape, rng, cpu_kernels):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    layer = ck.LeakyReLU(0.2) if name == "LeakyReLU" else getattr(ck, name)()
    y = layer.forward(x, training=True)
    ry, rd = _act_ref(name, x, 0.2)
    assert_close(y, ry, "activation")
    dy = rng.standard_normal(shape).astype(np.float32)
    assert_close(layer.backward(dy), dy * rd, "activation")


def test_sigmoid_tanh_saturate_without_nan():
    x = np.array([[-1e4, -100.0, 0.0, 100.0, 1e4]], np.float32)
    for layer in (ck.Sigmoid(), ck.Tanh()):
        y = layer.forward(x)
        assert np.all(np.isfinite(y))


# The ReLU family is vectorised with compare-and-select; specials must give exactly what the
# scalar `x > 0 ? a : b` gives (NaN and -0 are not > 0), for lengths with every tail size.
@pytest.mark.parametrize("name", ["ReLU", "LeakyReLU"])
def test_relu_family_exact_on_special_values(name, rng, cpu_kernels):
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45], np.float32)
    for n in (1, 7, 8, 15, 16, 17, 40, 1003):
        x, dy = rng.standard_normal((2, n)).astype(np.float32)
        x = np.where(rng.random(n) < 0.4, rng.choice(specials, n), x)
        dy = np.where(rng.random(n) < 0.4, rng.choice(specials, n), dy)
        layer = ck.LeakyReLU(0.2) if name == "LeakyReLU" else ck.ReLU()
        net = _core.Net([layer._native])
        y = net.forward(x.reshape(1, n), True).ravel()
        dx = net.backward(dy.reshape(1, n)).ravel()
        a = np.float32(0.2 if name == "LeakyReLU" else 0.0)
        with np.errstate(invalid="ignore"):
            pos = x > 0
            ry = np.where(pos, x, a * x if name == "LeakyReLU" else np.float32(0))
            rdx = np.where(pos, dy, a * dy if name == "LeakyReLU" else np.float32(0))
        np.testing.assert_array_equal(y.view(np.uint32), ry.astype(np.float32).view(np.uint32))
        np.testing.assert_array_equal(dx.view(np.uint32), rdx.astype(np.float32).view(np.uint32))


# BatchNorm's per-channel affine (x * a + b, then ReLU) and the residual Add (+ ReLU) are
# vectorised too; the same float32 operations in numpy give their bits, specials included.
def test_batchnorm_eval_and_add_relu_exact(rng, cpu_kernels):
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45], np.float32)
    for hw in (1, 3, 16, 17, 35):
        C = 3
        x = rng.standard_normal((2, C, 1, hw)).astype(np.float32)
        x = np.where(rng.random(x.shape) < 0.3, rng.choice(specials, x.shape), x)
        bn = ck.BatchNorm2d(C)
        net = _core.Net([bn._native, ck.ReLU()._native])
        mean = rng.uniform(-1, 1, C).astype(np.float32)
        var = rng.uniform(0.5, 2, C).astype(np.float32)
        gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
        beta = rng.uniform(-1, 1, C).astype(np.float32)
        for k, v in {"0.running_mean": mean, "0.running_var": var, "0.weight": gamma,
                     "0.bias": beta}.items():
            net.set_tensor(k, v)
        y = net.forward(x, False)
        a = (gamma * (np.float32(1) / np.sqrt(var + np.float32(1e-5)))).astype(np.float32)
        b = (beta - mean * a).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            v = x * a[None, :, None, None] + b[None, :, None, None]
            ref = np.where(v > 0, v, np.float32(0)).astype(np.float32)
        np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32))
    inp = ck.Input((5, 7))
    model = ck.Model(inp, ck.ReLU()(ck.Add()([inp, ck.Identity()(inp)])))
    for n in (1, 3, 40):
        x = rng.standard_normal((n, 5, 7)).astype(np.float32)
        x = np.where(rng.random(x.shape) < 0.3, np.float32(-0.0), x)
        y = model.forward(x)
        ref = np.where(x + x > 0, x + x, np.float32(0)).astype(np.float32)
        np.testing.assert_array_equal(y.reshape(ref.shape).view(np.uint32), ref.view(np.uint32))


# ---- linear / flatten -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "N,I,O,bias",
    [(1, 1, 1, True), (5, 7, 3, True), (64, 400, 120, False), (33, 300, 47, True),
     (130, 600, 1030, True)],
)
def test_linear(N, I, O, bias, rng, cpu_kernels):
    layer = ck.Linear(I, O, bias=bias)
    w = rng.standard_normal((O, I)).astype(np.float32)
    st = {"0.weight": w}
    b = rng.standard_normal(O).astype(np.float32) if bias else None
    if bias:
        st["0.bias"] = b
    layer.load_state_dict(st)
    x = rng.standard_normal((N, I)).astype(np.float32)
    y = layer.forward(x, training=True)
    ry = x.astype(np.float64) @ w.T.astype(np.float64) + (b if bias else 0)
    # float32 sums of n unit-variance products: rounding grows like sqrt(n)
    assert_close(y, ry, "linear", scale=np.sqrt(I))
    dy = rng.standard_normal((N, O)).astype(np.float32)
    dx = layer.backward(dy)
    assert_close(dx, dy.astype(np.float64) @ w, "linear", " dx", scale=np.sqrt(O))
    g = layer.grad_dict()
    assert_close(g["0.weight"], dy.T.astype(np.float64) @ x, "linear", " dw", scale=np.sqrt(N))
    if bias:
        assert_close(g["0.bias"], dy.astype(np.float64).sum(0), "linear", " db")


@pytest.mark.parametrize("N,I,O", [(1, 3, 1), (29, 70, 45), (300, 385, 1030)])
def test_linear_bias_fused_bit_identical(N, I, O, rng, cpu_kernels):
    # The bias is added in the GEMM's write-back: the bits of the GEMM followed by a separate
    # float32 add, for any thread count.
    layer = ck.Linear(I, O)
    w = rng.standard_normal((O, I)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    layer.load_state_dict({"0.weight": w, "0.bias": b})
    x = rng.standard_normal((N, I)).astype(np.float32)
    expected = _testing.sgemm(x, w, trans_b=True) + b
    before = ck.get_num_threads()
    try:
        for t in (1, 2):
            ck.set_num_threads(t)
            np.testing.assert_array_equal(layer.forward(x), expected)
    finally:
        ck.set_num_threads(before)


def test_flatten(rng):
    x = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    f = ck.Flatten()
    y = f.forward(x, training=True)
    assert y.shape == (3, 40) and np.array_equal(y, x.reshape(3, 40))
    assert np.array_equal(f.backward(y), x)


# ---- batch norm -----------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm2d_train_eval_backward(affine, rng):
    N, C, H, W = 4, 3, 5, 6
    bn = ck.BatchNorm2d(C, eps=1e-5, momentum=0.2, affine=affine)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    if affine:
        bn.load_state_dict(
            {
                "0.weight": gamma,
                "0.bias": beta,
                "0.running_mean": np.zeros(C, np.float32),
                "0.running_var": np.ones(C, np.float32),
            }
        )
    else:
        gamma, beta = np.ones(C), np.zeros(C)
    x = (rng.standard_normal((N, C, H, W)) * 2 + 1).astype(np.float32)
    y = bn.forward(x, training=True)
    ry, mean, var = ref.batchnorm_train(x, gamma, beta, 1e-5)
    assert_close(y, ry, "batchnorm")
    st = bn.state_dict()
    M = N * H * W
    assert_close(st["0.running_mean"], 0.2 * mean, "batchnorm")
    assert_close(st["0.running_var"], 0.8 + 0.2 * var * M / (M - 1), "batchnorm")
    # backward vs central differences of L = sum(dy * y) in float64 through the reference
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = bn.backward(dy)
    x64 = x.astype(np.float64)
    num = np.zeros_like(x64)
    h = 1e-6
    for idx in list(np.ndindex(*x.shape))[::7]:
        xp, xm = x64.copy(), x64.copy()
        xp[idx] += h
        xm[idx] -= h
        num[idx] = (
            (
                ref.batchnorm_train(xp, gamma, beta, 1e-5)[0]
                - ref.batchnorm_train(xm, gamma, beta, 1e-5)[0]
            )
            * dy
        ).sum() / (2 * h)
    sel = tuple(np.array(list(np.ndindex(*x.shape))[::7]).T)
    assert_close(dx[sel], num[sel], "batchnorm", " dx")
    if affine:
        xhat = (x64 - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
        g = bn.grad_dict()
        assert_close(g["0.weight"], (dy * xhat).sum(axis=(0, 2, 3)), "batchnorm", " dgamma")
        assert_close(g["0.bias"], dy.astype(np.float64).sum(axis=(0, 2, 3)), "batchnorm", " dbeta")
    # eval mode uses the running statistics
    ye = bn.forward(x, training=False)
    rm, rv = st["0.running_mean"], st["0.running_var"]
    re = (x64 - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    assert_close(ye, re * gamma[None, :, None, None] + beta[None, :, None, None], "batchnorm")


# ---- dropout --------------------------------------------------------------------------------


def test_dropout_mask_statistics_and_backward(rng):
    d = ck.Dropout(0.3)
    x = np.ones((64, 1000), np.float32)
    y = d.forward(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    assert np.allclose(y[kept], 1 / 0.7)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    assert np.array_equal(d.backward(dy), dy * (y / x))
    assert np.array_equal(d.forward(x, training=False), x)


def test_dropout_same_seed_same_mask():
    def run():
        model = ck.Sequential([ck.Dropout(0.5)])
        model._net.set_rng(1234, 0)
        return model.forward(np.ones((4, 100), np.float32), training=True)

    a, b = run(), run()
    assert np.array_equal(a, b)
    model = ck.Sequential([ck.Dropout(0.5)])
    model._net.set_rng(1235, 0)
    assert not np.array_equal(a, model.forward(np.ones((4, 100), np.float32), training=True))


def test_dropout_mask_independent_of_threads():
    masks = []
    for t in (1, 2):
        ck.set_num_threads(t)
        model = ck.Sequential([ck.Dropout(0.5)])
        model._net.set_rng(7, 3)
        masks.append(model.forward(np.ones((8, 50000), np.float32), training=True))
    ck.set_num_threads(2)
    assert np.array_equal(masks[0], masks[1])


# ---- losses ---------------------------------------------------------------------------------


def test_softmax_cross_entropy(rng):
    z = (rng.standard_normal((7, 5)) * 4).astype(np.float32)
    y = rng.integers(0, 5, 7)
    loss = ck.losses.CrossEntropyLoss()
    v = loss.forward(z, y)
    rv, rd = ref.softmax_cross_entropy(z, y)
    assert abs(v - rv) <= 1e-5 * abs(rv) + 1e-6
    assert_close(loss.backward(), rd, "loss")
    assert loss.correct == int((z.argmax(1) == y).sum())


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], np.float32)
    loss = ck.losses.CrossEntropyLoss()
    v = loss.forward(z, np.array([0, 0]))
    assert np.isfinite(v) and abs(v - 1e4) < 1.0
    assert np.all(np.isfinite(loss.backward()))


def test_mse(rng):
    p = rng.standard_normal((4, 3)).astype(np.float32)
    t = rng.standard_normal((4, 3)).astype(np.float32)
    loss = ck.losses.MSELoss()
    v = loss.forward(p, t)
    d = p.astype(np.float64) - t
    assert abs(v - (d**2).mean()) < 1e-6
    assert_close(loss.backward(), 2 * d / d.size, "loss")


@pytest.mark.parametrize("n,c,k,hw,ks,pad,stride", [(37, 1, 6, 28, 5, 2, 1), (5, 3, 8, 11, 3, 1, 2),
                                                   (20, 16, 7, 9, 3, 0, 1)])
def test_narrow_conv_weight_gradient_same_bits_at_any_thread_count(cpu_kernels, n, c, k, hw,
                                                                   ks, pad, stride):
    # Layers of at most 8 output channels take the weight gradient through lanes of 16
    # columns, summed per image group (groups fixed by the batch, not the threads): the bits do
    # not change with the thread count, and the values match float64.
    rng = np.random.default_rng(n * 100 + k)
    m = ck.Sequential(ck.Conv2d(c, k, ks, stride=stride, padding=pad))
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    y = m.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    before = ck.get_num_threads()
    grads = []
    try:
        for t in (1, 2, 3):
            ck.set_num_threads(t)
            m.zero_grad()
            m.forward(x, training=True)
            m.backward(dy)
            grads.append(m.grad_dict()["0.weight"])
    finally:
        ck.set_num_threads(before)
    for g in grads[1:]:
        np.testing.assert_array_equal(g, grads[0])
    sd = m.state_dict()
    _, rdw, _ = ref.conv2d_backward(x, sd["0.weight"], dy, (stride, stride), (pad, pad), (1, 1), 1)
    # float32 sums of up to 29 K products (the portable kernels add them in one running sum)
    assert_close(grads[0], rdw, "conv", " dw", scale=max(1.0, dy[:, 0].size / 1000))


@pytest.mark.parametrize("n,c,k,hw", [(1, 64, 64, 8), (1, 16, 16, 32), (1, 32, 32, 16),
                                      (2, 64, 40, 8), (3, 5, 30, 9)])
def test_conv_forward_small_batch_same_bits_at_any_thread_count(cpu_kernels, n, c, k, hw):
    # At batch 1-3 the forward (and the backward-input, the same driver) splits the output
    # columns into smaller blocks and the output channels into groups across threads (whole
    # tiles): the bits do not change with the thread count; the values match float64.
    rng = np.random.default_rng(n * 1000 + k)
    m = ck.Sequential(ck.Conv2d(c, k, 3, padding=1), ck.ReLU())
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    dy = rng.standard_normal((n, k, hw, hw)).astype(np.float32)
    before = ck.get_num_threads()
    outs = []
    try:
        for t in (1, 2, 3):
            ck.set_num_threads(t)
            y = m.forward(x, training=True)
            outs.append((y, m.backward(dy)))
    finally:
        ck.set_num_threads(before)
    one, two = outs[0][0], outs[1][0]
    for y, dx in outs[1:]:
        np.testing.assert_array_equal(y, one)
        np.testing.assert_array_equal(dx, outs[0][1])
    sd = m.state_dict()
    want = np.maximum(ref.conv2d(x.astype(np.float64), sd["0.weight"].astype(np.float64),
                                 sd["0.bias"].astype(np.float64), padding=(1, 1)), 0)
    np.testing.assert_allclose(two, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [1, 17, 1000, (1 << 18) + 5])
def test_count_nonfinite_matches_numpy(n, rng):
    # the input check of forward/predict/fit: a test on the exponent bits, every NaN payload,
    # both infinities, and the largest finite, the smallest subnormal and -0 counted right
    a = rng.standard_normal(n).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, np.finfo(np.float32).max, -0.0,
                        np.float32(1e-45)], np.float32)
    idx = rng.integers(0, n, min(n, 6))
    a[idx] = special[: len(idx)]
    bits = a.view(np.uint32)
    if n > 10:
        bits[-1] = 0xFFC00001  # a negative NaN with a payload
    assert _core.count_nonfinite(a) == int((~np.isfinite(a)).sum())
    assert _core.count_nonfinite(a.reshape(1, -1)) == int((~np.isfinite(a)).sum())
