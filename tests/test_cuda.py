"""CPU vs CUDA parity for every kernel and layer, optimizer steps, LeNet-5 training through
Trainer(device="cuda"), run-to-run determinism on the GPU, the caching allocator, and errors.

Everything here needs a CUDA device (the ``requires_cuda`` mark; skipped without one). The CPU
results are the reference: both devices run float32, so most comparisons use a tolerance scaled
to the length of the sums involved; a few kernels are bit-identical by construction (im2col and
col2im, pooling, dropout masks: same arithmetic in the same order) and are compared exactly.

Without a GPU, ``tests/cuda_emu/run.sh`` runs this file against the CUDA kernels compiled for a
CPU emulation (CNNKIT_CUDA_EMULATED=1 then shrinks a few of the larger cases).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import _core
from cnnkit._core import _testing

pytestmark = pytest.mark.requires_cuda

EMULATED = os.environ.get("CNNKIT_CUDA_EMULATED") == "1"


# ---- helpers ------------------------------------------------------------------------------------


def assert_parity(ours, ref, what: str, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """max |ours - ref| <= atol + rtol * max |ref| (a norm-wise check, robust for long sums)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert np.all(np.isfinite(ours)), f"{what}: non-finite values on the GPU"
    err = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
    bound = atol + rtol * (float(np.max(np.abs(ref))) if ref.size else 0.0)
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def twin(layer_factory, seed: int = 0):
    """The same one-layer model on the CPU and on the GPU, with identical parameters."""
    ck.manual_seed(seed)
    cpu = ck.Sequential([layer_factory()])
    ck.manual_seed(seed)
    gpu = ck.Sequential([layer_factory()]).to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


def fwd_bwd(model, x, dy, training=True):
    model.zero_grad()
    y = model.forward(x, training=training)
    dx = model.backward(dy)
    return y, dx, model.grad_dict()


def lenet(dropout: float = 0.0, bn: bool = False):
    L = ck.layers
    layers = [L.Conv2d(1, 6, 5, padding=2)]
    if bn:
        layers.append(L.BatchNorm2d(6))
    layers += [
        L.ReLU(),
        L.MaxPool2d(2),
        L.Conv2d(6, 16, 5),
        L.ReLU(),
        L.MaxPool2d(2),
        L.Flatten(),
        L.Linear(400, 120),
        L.ReLU(),
    ]
    if dropout:
        layers.append(L.Dropout(dropout))
    layers += [L.Linear(120, 84), L.ReLU(), L.Linear(84, 10)]
    return ck.Sequential(layers)


def digits(rng, n: int):
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return x, y


# ---- runtime ------------------------------------------------------------------------------------


def test_cuda_runtime_surface():
    assert ck.built_with_cuda() and ck.cuda_available()
    assert _core.cuda_device_count() >= 1
    assert isinstance(_core.cuda_device_name(0), str) and _core.cuda_device_name(0)
    _core.cuda_synchronize()
    st = _core.cuda_memory_stats()
    assert set(st) == {
        "in_use_bytes",
        "cached_bytes",
        "peak_in_use_bytes",
        "device_mallocs",
        "cache_hits",
    }


# ---- GEMM ---------------------------------------------------------------------------------------

GEMM_SHAPES = [
    # M, N, K: covers the 16x128, 64x64 and 128x128 tiles, ragged edges and split-K
    (1, 1, 1),
    (5, 7, 3),
    (16, 130, 40),  # 16-row tile
    (17, 65, 33),  # 64x64 tile, ragged
    (70, 65, 129),
    (6, 25, 3000),  # split-K (weight gradient shape)
    (120, 400, 256),
    (64, 64, 0),  # K = 0: C = beta * C
    (1536, 1540, 20) if not EMULATED else (1450, 1460, 9),  # 128x128 tile
]


@pytest.mark.parametrize("M,N,K", GEMM_SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_sgemm_matches_cpu_and_reference(M, N, K, ta, tb, rng):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    c = rng.standard_normal((M, N)).astype(np.float32)
    ref = 1.5 * ((a.T if ta else a).astype(np.float64) @ (b.T if tb else b)) - 0.5 * c
    ours = _testing.cuda_sgemm(a, b, ta, tb, 1.5, -0.5, c)
    cpu = _testing.sgemm(a, b, ta, tb, 1.5, -0.5, c.copy())
    scale = max(1.0, np.sqrt(K))
    assert_parity(ours, ref, "cuda sgemm vs float64", rtol=1e-5 * scale, atol=1e-5 * scale)
    assert_parity(ours, cpu, "cuda sgemm vs cpu", rtol=2e-5 * scale, atol=1e-5 * scale)


@pytest.mark.parametrize("misalign", [1, 2, 3])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True), (False, True)])
def test_sgemm_unaligned_pointers_and_odd_leading_dims(misalign, ta, tb, rng):
    M, N, K = 37, 132, 44  # leading dims divisible by 4, pointers shifted: no float4 path
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
    assert_parity(_testing.cuda_sgemm(a, b, ta, tb, misalign=misalign), ref, "unaligned", rtol=1e-4)
    a2 = rng.standard_normal((13, 7)).astype(np.float32)  # odd leading dims
    b2 = rng.standard_normal((7, 11)).astype(np.float32)
    assert_parity(_testing.cuda_sgemm(a2, b2), a2.astype(np.float64) @ b2, "odd ld", rtol=1e-5)


def test_sgemm_beta_zero_does_not_read_c(rng):
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((30, 50)).astype(np.float32)
    poison = np.full((40, 50), np.nan, dtype=np.float32)
    out = _testing.cuda_sgemm(a, b, c=poison, beta=0.0)
    assert np.all(np.isfinite(out))
    assert_parity(out, a.astype(np.float64) @ b, "beta=0", rtol=1e-5)
    poison6 = np.full((6, 25), np.nan, dtype=np.float32)  # split-K path
    a6 = rng.standard_normal((6, 2000)).astype(np.float32)
    b6 = rng.standard_normal((2000, 25)).astype(np.float32)
    out6 = _testing.cuda_sgemm(a6, b6, c=poison6, beta=0.0)
    assert_parity(out6, a6.astype(np.float64) @ b6, "beta=0 split-K", rtol=1e-4)


def test_sgemm_is_deterministic(rng):
    for M, N, K in [(6, 25, 5000), (200, 300, 100)]:
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        first = _testing.cuda_sgemm(a, b)
        for _ in range(3):
            np.testing.assert_array_equal(_testing.cuda_sgemm(a, b), first)


# ---- im2col / col2im ----------------------------------------------------------------------------

IM2COL_CASES = [
    (1, 5, 5, (3, 3), (1, 1), (0, 0), (1, 1)),
    (2, 7, 6, (3, 2), (2, 1), (1, 0), (1, 1)),
    (3, 9, 8, (3, 3), (2, 3), (2, 1), (2, 1)),
    (2, 4, 4, (1, 1), (1, 1), (0, 0), (1, 1)),
    (1, 6, 10, (5, 5), (1, 1), (2, 2), (1, 1)),
    (2, 8, 8, (2, 2), (3, 3), (1, 1), (3, 2)),
]


@pytest.mark.parametrize("C,H,W,k,s,p,d", IM2COL_CASES)
def test_im2col_col2im_bit_identical_to_cpu(C, H, W, k, s, p, d, rng):
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    args = (list(k), list(s), list(p), list(d))
    np.testing.assert_array_equal(_testing.im2col(x, *args, device="cuda"), _testing.im2col(x, *args))
    col = _testing.im2col(x, *args)
    col = rng.standard_normal(col.shape).astype(np.float32)
    # the gather adds each pixel's entries in the CPU's order: the same bits
    np.testing.assert_array_equal(
        _testing.col2im(col, [C, H, W], *args, device="cuda"), _testing.col2im(col, [C, H, W], *args)
    )


# ---- convolution --------------------------------------------------------------------------------

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
    (40, 3, 12, 12, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # many images, one chunk
    (3, 6, 9, 9, 12, (3, 3), (2, 2), (1, 1), (1, 1), 3, True),  # groups, misaligned panels
    # more than one chunk of images (64 MiB column budget), the last chunk a single image
    (29, 16, 64, 64, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
]


@pytest.mark.parametrize("N,C,H,W,K,k,s,p,d,g,bias", CONV_CASES)
def test_conv2d_forward_backward_parity(N, C, H, W, K, k, s, p, d, g, bias, rng):
    cpu, gpu = twin(
        lambda: ck.Conv2d(C, K, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    )
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    y_cpu = cpu.forward(x, training=True)
    dy = rng.standard_normal(y_cpu.shape).astype(np.float32)
    yc, dxc, gc = fwd_bwd(cpu, x, dy)
    yg, dxg, gg = fwd_bwd(gpu, x, dy)
    assert_parity(yg, yc, "conv forward", rtol=1e-5)
    assert_parity(dxg, dxc, "conv backward input", rtol=1e-5)
    for name in gc:
        assert_parity(gg[name], gc[name], f"conv grad {name}", rtol=2e-5)


CONV_TRANSPOSE_CASES = [
    # N, in, out, H, W, kernel, stride, padding, output_padding, groups, bias, dilation
    (2, 16, 8, 8, 8, 4, 2, 1, 0, 1, True, 1),  # DCGAN-style 2x upsampling
    (2, 4, 6, 5, 4, (3, 2), (2, 1), (1, 0), (1, 0), 2, True, (1, 2)),  # groups, non-square
    (2, 4, 4, 5, 5, 3, 2, 1, 1, 4, True, 1),  # out_channels == groups: depthwise kernels
    (3, 3, 2, 4, 6, 1, 1, 0, 1, 1, True, 2),  # 1x1, output_padding >= stride (< dilation)
    (2, 2, 3, 4, 5, 3, 1, 1, 1, 1, False, 2),  # output_padding >= stride on both axes
    (2, 3, 4, 6, 6, 3, 2, 3, 0, 1, True, 1),  # padding > dilation*(kernel-1): shrinks
    # more than one chunk of images (64 MiB column budget)
    (20, 8, 64, 32, 32, 4, 2, 1, 0, 1, True, 1) if not EMULATED
    else (5, 4, 8, 16, 16, 4, 2, 1, 0, 1, True, 1),
]


@pytest.mark.parametrize("N,Ci,Co,H,W,k,s,p,op,g,bias,d", CONV_TRANSPOSE_CASES)
def test_conv_transpose2d_forward_backward_parity(N, Ci, Co, H, W, k, s, p, op, g, bias, d, rng):
    cpu, gpu = twin(lambda: ck.ConvTranspose2d(Ci, Co, k, s, p, op, g, bias, d))
    x = rng.standard_normal((N, Ci, H, W)).astype(np.float32)
    dy = rng.standard_normal(cpu.forward(x).shape).astype(np.float32)
    yc, dxc, gc = fwd_bwd(cpu, x, dy)
    yg, dxg, gg = fwd_bwd(gpu, x, dy)
    assert_parity(yg, yc, "conv_transpose forward", rtol=1e-5)
    assert_parity(dxg, dxc, "conv_transpose backward input", rtol=1e-5)
    assert set(gg) == set(gc) == {"0.weight"} | ({"0.bias"} if bias else set())
    for name in gc:
        assert_parity(gg[name], gc[name], f"conv_transpose grad {name}", rtol=2e-5)


# ---- pooling ------------------------------------------------------------------------------------

POOL_CASES = [
    # N, C, H, W, kernel, stride, padding, ceil_mode
    (2, 3, 8, 8, 2, None, 0, False),
    (2, 2, 7, 9, 3, 2, 1, False),
    (1, 3, 7, 7, 3, 2, 1, True),
    (2, 2, 6, 5, (3, 2), (2, 1), (1, 0), True),
    (3, 4, 5, 5, 3, 1, 1, False),  # overlapping windows
]


@pytest.mark.parametrize("N,C,H,W,k,s,p,ceil", POOL_CASES)
def test_maxpool_bit_identical_to_cpu(N, C, H, W, k, s, p, ceil, rng):
    cpu, gpu = twin(lambda: ck.MaxPool2d(k, stride=s, padding=p, ceil_mode=ceil))
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    x[0, 0, :2, :2] = 1.0  # ties: the first maximum wins on both devices
    y = cpu.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yc, dxc, _ = fwd_bwd(cpu, x, dy)
    yg, dxg, _ = fwd_bwd(gpu, x, dy)
    np.testing.assert_array_equal(yg, yc)
    np.testing.assert_array_equal(dxg, dxc)


@pytest.mark.parametrize("N,C,H,W,k,s,p,ceil", POOL_CASES)
@pytest.mark.parametrize("cip", [True, False])
def test_avgpool_bit_identical_to_cpu(N, C, H, W, k, s, p, ceil, cip, rng):
    cpu, gpu = twin(
        lambda: ck.AvgPool2d(k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip)
    )
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    y = cpu.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yc, dxc, _ = fwd_bwd(cpu, x, dy)
    yg, dxg, _ = fwd_bwd(gpu, x, dy)
    np.testing.assert_array_equal(yg, yc)
    np.testing.assert_array_equal(dxg, dxc)


# ---- activations, linear, flatten ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [ck.ReLU, lambda: ck.LeakyReLU(0.1), ck.Sigmoid, ck.Tanh],
    ids=["relu", "leaky", "sigmoid", "tanh"],
)
def test_activation_parity(make, rng):
    cpu, gpu = twin(make)
    x = (rng.standard_normal((3, 4, 9, 7)) * 4).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, 80.0]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    yc, dxc, _ = fwd_bwd(cpu, x, dy)
    yg, dxg, _ = fwd_bwd(gpu, x, dy)
    assert_parity(yg, yc, "activation forward", rtol=1e-6)  # CUDA expf/tanhf: a few ulp
    assert_parity(dxg, dxc, "activation backward", rtol=1e-5)  # 1 - y*y amplifies them


@pytest.mark.parametrize(
    "N,I,O,bias", [(4, 400, 120, True), (33, 17, 5, False), (1, 3, 1, True), (300, 84, 10, True)]
)
def test_linear_parity(N, I, O, bias, rng):
    cpu, gpu = twin(lambda: ck.Linear(I, O, bias=bias))
    x = rng.standard_normal((N, I)).astype(np.float32)
    dy = rng.standard_normal((N, O)).astype(np.float32)
    yc, dxc, gc = fwd_bwd(cpu, x, dy)
    yg, dxg, gg = fwd_bwd(gpu, x, dy)
    assert_parity(yg, yc, "linear forward", rtol=1e-5)
    assert_parity(dxg, dxc, "linear backward", rtol=1e-5)
    for name in gc:
        assert_parity(gg[name], gc[name], f"linear grad {name}", rtol=1e-5)


def test_flatten_parity(rng):
    cpu, gpu = twin(ck.Flatten)
    x = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    dy = rng.standard_normal((3, 40)).astype(np.float32)
    yc, dxc, _ = fwd_bwd(cpu, x, dy)
    yg, dxg, _ = fwd_bwd(gpu, x, dy)
    np.testing.assert_array_equal(yg, yc)
    np.testing.assert_array_equal(dxg, dxc)


# ---- dropout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(4, 10), (3, 5, 7, 3), (1, 1)])  # sizes not multiples of 4
def test_dropout_masks_bit_identical_to_cpu(p, shape, rng):
    cpu, gpu = twin(lambda: ck.Dropout(p))
    for m in (cpu, gpu):
        m._net.set_rng(1234, 7)
    x = rng.standard_normal(shape).astype(np.float32) + 3.0  # no zeros in x
    dy = rng.standard_normal(shape).astype(np.float32)
    for _ in range(3):  # the stream advances once per training forward, on both devices
        yc, dxc, _ = fwd_bwd(cpu, x, dy)
        yg, dxg, _ = fwd_bwd(gpu, x, dy)
        np.testing.assert_array_equal(yg, yc)
        np.testing.assert_array_equal(dxg, dxc)
    np.testing.assert_array_equal(gpu.forward(x, training=False), x)  # eval: identity


# ---- batch norm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 5, 1, 1), (1, 2, 17, 9)])
def test_batchnorm_parity(affine, track, shape, rng):
    C = shape[1]
    cpu, gpu = twin(lambda: ck.BatchNorm2d(C, affine=affine, track_running_stats=track))
    if affine:
        sd = cpu.state_dict()
        sd["0.weight"] = rng.standard_normal(C).astype(np.float32)
        sd["0.bias"] = rng.standard_normal(C).astype(np.float32)
        cpu.load_state_dict(sd)
        gpu.load_state_dict(sd)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    for _ in range(2):  # running statistics move twice
        yc, dxc, gc = fwd_bwd(cpu, x, dy)
        yg, dxg, gg = fwd_bwd(gpu, x, dy)
        assert_parity(yg, yc, "batchnorm forward", rtol=1e-5)
        assert_parity(dxg, dxc, "batchnorm backward", rtol=1e-4, atol=1e-5)
        for name in gc:
            assert_parity(gg[name], gc[name], f"batchnorm grad {name}", rtol=1e-5)
    sc, sg = cpu.state_dict(), gpu.state_dict()
    for name in sc:
        assert_parity(sg[name], sc[name], f"batchnorm state {name}", rtol=1e-6)
    if track:  # eval mode uses the running statistics
        assert_parity(gpu.forward(x), cpu.forward(x), "batchnorm eval", rtol=1e-5)


# ---- losses -------------------------------------------------------------------------------------


@pytest.mark.parametrize("N,C", [(1, 1), (7, 10), (256, 10), (33, 1000), (3, 70)])
def test_softmax_cross_entropy_parity(N, C, rng):
    logits = (rng.standard_normal((N, C)) * 5).astype(np.float32)
    labels = rng.integers(0, C, size=N).astype(np.int64)
    if N > 2 and C > 2:
        logits[1, :3] = 4.0  # a tie: the first maximum is the prediction on both devices
    loss_c, corr_c, d_c = _core.softmax_cross_entropy(logits, labels)
    loss_g, corr_g, d_g = _core.softmax_cross_entropy(logits, labels, device="cuda")
    assert abs(loss_g - loss_c) <= 1e-6 * max(1.0, abs(loss_c))
    assert corr_g == corr_c
    assert_parity(d_g, d_c, "cross-entropy gradient", rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(1,), (5, 3), (64, 10), (1000, 70)])
def test_mse_parity(shape, rng):
    pred = rng.standard_normal(shape).astype(np.float32)
    target = rng.standard_normal(shape).astype(np.float32)
    loss_c, d_c = _core.mse_loss(pred, target)
    loss_g, d_g = _core.mse_loss(pred, target, device="cuda")
    assert abs(loss_g - loss_c) <= 1e-6 * max(1.0, abs(loss_c))
    np.testing.assert_array_equal(d_g, d_c)  # one multiply per element: the same bits


def test_losses_are_deterministic(rng):
    logits = rng.standard_normal((500, 37)).astype(np.float32)
    labels = rng.integers(0, 37, size=500).astype(np.int64)
    first = _core.softmax_cross_entropy(logits, labels, device="cuda")
    for _ in range(3):
        again = _core.softmax_cross_entropy(logits, labels, device="cuda")
        assert again[0] == first[0] and again[1] == first[1]
        np.testing.assert_array_equal(again[2], first[2])


# ---- optimizers ---------------------------------------------------------------------------------

OPTIMIZERS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("sgd", {"lr": 0.05, "momentum": 0.5, "dampening": 0.3}),
    ("adam", {"lr": 1e-2}),
    ("adam", {"lr": 1e-2, "weight_decay": 1e-2}),
    ("adamw", {"lr": 1e-2, "weight_decay": 1e-1}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 1e-3}),
    ("rmsprop", {"lr": 1e-2}),
    ("rmsprop", {"lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-3}),
]


@pytest.mark.parametrize("kind,hyper", OPTIMIZERS)
def test_optimizer_steps_parity(kind, hyper, rng):
    def make():
        return ck.Sequential([ck.Linear(12, 9), ck.Tanh(), ck.Linear(9, 4)])

    ck.manual_seed(3)
    cpu = make()
    gpu = make().to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    for m in (cpu, gpu):
        m._net.set_loss("mse")
        m._net.set_optimizer(kind, dict(hyper))
    x = rng.standard_normal((16, 12)).astype(np.float32)
    t = rng.standard_normal((16, 4)).astype(np.float32)
    for step in range(5):
        lc, _ = cpu._net.train_step(x, t)
        lg, _ = gpu._net.train_step(x, t)
        assert abs(lg - lc) <= 1e-5 * max(1.0, abs(lc)), f"step {step}: loss {lg} vs {lc}"
        assert_parity(
            gpu._net.flat_params(), cpu._net.flat_params(), f"{kind} step {step}", rtol=1e-5
        )
    sc, sg = cpu._net.optimizer_state(), gpu._net.optimizer_state()
    assert sg["step"] == sc["step"] == 5
    for name in sc:
        if name != "step":
            assert_parity(sg[name], sc[name], f"{kind} state {name}", rtol=1e-4, atol=1e-7)
    assert not np.any(gpu._net.grad_dict()["0.weight"])  # the step zeroes the gradients


# ---- whole models -------------------------------------------------------------------------------


def test_lenet_trainer_cuda_matches_cpu(rng):
    # Tolerances allow for the rare max-pool tie or ReLU input within rounding of zero that the
    # two devices resolve differently (it re-routes one gradient); typical errors are ~1e-6.
    x, y = digits(rng, 64 if not EMULATED else 24)
    ck.manual_seed(11)
    m_cpu = lenet()
    ck.manual_seed(11)
    m_gpu = lenet()
    m_gpu.load_state_dict(m_cpu.state_dict())
    histories = []
    for model, device in ((m_cpu, "cpu"), (m_gpu, "cuda")):
        tr = ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.05, momentum=0.9), device=device, seed=5)
        assert model.device == device
        histories.append(tr.fit(x, y, epochs=2, batch_size=8, verbose=0).history)
    hc, hg = histories
    for key in ("loss", "accuracy", "lr"):
        np.testing.assert_allclose(hg[key], hc[key], rtol=1e-3, atol=1e-4, err_msg=key)
    sc, sg = m_cpu.state_dict(), m_gpu.state_dict()
    for name in sc:
        assert_parity(sg[name], sc[name], f"trained {name}", rtol=1e-3, atol=1e-4)
    assert_parity(m_gpu.predict(x), m_cpu.predict(x), "predict", rtol=1e-3, atol=1e-4)
    ev_c = ck.Trainer(m_cpu, device="cpu").evaluate(x, y, verbose=0)
    ev_g = ck.Trainer(m_gpu, device="cuda").evaluate(x, y, verbose=0)
    for key in ev_c:
        assert abs(ev_g[key] - ev_c[key]) <= 1e-3 * max(1.0, abs(ev_c[key])), key


def test_training_on_gpu_is_bit_deterministic(rng):
    # Dropout + BatchNorm + every reduction: two runs from one seed give the same bits.
    x, y = digits(rng, 32 if not EMULATED else 16)
    finals = []
    for _ in range(2):
        ck.manual_seed(21)
        model = lenet(dropout=0.3, bn=True)
        tr = ck.Trainer(model, optimizer=ck.optim.Adam(lr=1e-3), device="cuda", seed=9)
        tr.fit(x, y, epochs=2, batch_size=8, verbose=0)
        finals.append(model._net.flat_params())
    np.testing.assert_array_equal(finals[0], finals[1])


def test_dropout_bn_model_cuda_matches_cpu(rng):
    # Same seed on both devices: the same dropout masks, so training stays in step.
    x, y = digits(rng, 16)
    params = []
    for device in ("cpu", "cuda"):
        ck.manual_seed(4)
        model = lenet(dropout=0.5, bn=True)
        tr = ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.01), device=device, seed=2)
        tr.fit(x, y, epochs=1, batch_size=8, verbose=0)
        params.append(model._net.flat_params())
    assert_parity(params[1], params[0], "dropout+bn training", rtol=1e-3, atol=1e-4)


def test_model_moves_between_devices_with_optimizer_state(rng):
    x, y = digits(rng, 16)
    ck.manual_seed(8)
    model = lenet()
    tr = ck.Trainer(model, optimizer=ck.optim.Adam(lr=1e-3), device="cpu", seed=1)
    tr.fit(x, y, epochs=1, batch_size=8, verbose=0)
    state = model._net.optimizer_state()
    model.to("cuda")
    moved = model._net.optimizer_state()
    for name in state:
        np.testing.assert_array_equal(moved[name], state[name])
    loss_gpu, _ = model._net.train_step(x[:8], y[:8])
    model.to("cpu")
    assert model.device == "cpu" and np.isfinite(loss_gpu)


# ---- caching allocator --------------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get("CNNKIT_CUDA_NO_CACHE") == "1", reason="cache disabled")
def test_caching_allocator_reuses_blocks(rng):
    x, y = digits(rng, 16)
    model = lenet()
    tr = ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.01), device="cuda", seed=0)
    tr.fit(x, y, epochs=1, batch_size=8, verbose=0)  # warm up: arenas, workspace, state
    before = _core.cuda_memory_stats()
    tr.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = _core.cuda_memory_stats()
    assert after["device_mallocs"] == before["device_mallocs"], (before, after)
    assert after["cache_hits"] > before["cache_hits"]  # per-step temporaries come from the cache
    assert after["in_use_bytes"] == before["in_use_bytes"]
    del tr, model
    _core.cuda_empty_cache()
    assert _core.cuda_memory_stats()["cached_bytes"] == 0


# ---- errors -------------------------------------------------------------------------------------


def test_out_of_memory_names_the_bytes():
    with pytest.raises(RuntimeError, match=r"out of memory: cudaMalloc of \d+ bytes"):
        _testing.cuda_sgemm_bench(1 << 20, 1 << 20, 1 << 20, 1)
    # the allocator is still usable afterwards
    a = np.ones((4, 4), np.float32)
    np.testing.assert_array_equal(_testing.cuda_sgemm(a, a), a @ a)


def test_bad_arguments_are_value_errors():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        _testing.cuda_sgemm(a, a)
    with pytest.raises(ValueError, match="unknown device"):
        _testing.im2col(np.ones((1, 4, 4), np.float32), [2, 2], [1, 1], [0, 0], [1, 1], device="tpu")
    with pytest.raises(ValueError, match="out of range"):
        _core.softmax_cross_entropy(np.ones((2, 3), np.float32), np.array([0, 3]), device="cuda")


def test_wrong_input_on_a_cuda_model_is_a_clear_error(rng):
    model = lenet().to("cuda")
    with pytest.raises(ValueError, match=r"Conv2d \(layer 0\)"):
        model.forward(rng.standard_normal((2, 3, 28, 28)).astype(np.float32))
    model._net.set_loss("cross_entropy")
    model._net.set_optimizer("sgd", {"lr": 0.1})
    with pytest.raises(ValueError, match="out of range"):
        model._net.train_step(rng.random((2, 1, 28, 28), dtype=np.float32), np.array([0, 10]))


def test_an_overflowing_update_is_refused_on_the_gpu_too():
    """The CPU's promise on every device: an update that would make a parameter non-finite is
    not applied (loss (1e18)^2 is finite, lr * gradient overflows float32)."""
    m = ck.Sequential([ck.Linear(1, 1)])
    m.load_state_dict({"0.weight": np.ones((1, 1), np.float32),
                       "0.bias": np.zeros(1, np.float32)})
    t = ck.Trainer(m, loss="mse", optimizer=ck.optim.SGD(lr=1e6), device="cuda")
    x = np.full((4, 1), 1e18, np.float32)
    t.fit(x, np.zeros((4, 1), np.float32), epochs=2, batch_size=4, verbose=0)
    assert t.diverged
    sd = m.state_dict()
    np.testing.assert_array_equal(sd["0.weight"], np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(sd["0.bias"], np.zeros(1, np.float32))


def test_a_good_update_is_applied_on_the_gpu(rng):
    x, y = digits(rng, 8)
    ck.manual_seed(0)
    cpu = lenet()
    ck.manual_seed(0)
    gpu = lenet().to("cuda")
    for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
        ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1), device=dev, seed=1).fit(
            x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    for k, v in cpu.state_dict().items():
        assert_parity(gpu.state_dict()[k], v, k)


def _graph_model():
    inp = ck.Input((3, 8, 8))
    a = ck.ReLU()(ck.BatchNorm2d(4)(ck.Conv2d(3, 4, 3, padding=1, bias=False)(inp)))
    b = ck.Conv2d(4, 4, 3, padding=1)(a)
    s = ck.Add()([a, b, a])
    c = ck.Concat(dim=1)([s, a])
    out = ck.Linear(8 * 4, 5)(ck.Flatten()(ck.AdaptiveAvgPool2d(2)(c)))
    return ck.Model(inp, out)


def test_graph_model_forward_backward_and_training_match_the_cpu(rng):
    """Add (fan-out, the same value twice) and Concat kernels, and the graph train step."""
    ck.manual_seed(4)
    cpu = _graph_model()
    ck.manual_seed(4)
    gpu = _graph_model().to("cuda")
    x = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    dy = rng.standard_normal((6, 5)).astype(np.float32)
    for m in (cpu, gpu):
        m.zero_grad()
        m.forward(x, training=True)
    dx_c, dx_g = cpu.backward(dy), gpu.backward(dy)
    assert_parity(dx_g, dx_c, "graph dx")
    gc, gg = cpu.grad_dict(), gpu.grad_dict()
    for k in gc:
        assert_parity(gg[k], gc[k], f"graph grad {k}")
    y = np.arange(6) % 5
    for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
        ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.05), device=dev, seed=1).fit(
            x, y, epochs=2, batch_size=3, verbose=0, shuffle=False)
    for k, v in cpu.state_dict().items():
        assert_parity(gpu.state_dict()[k], v, k)
    assert_parity(gpu.predict(x), cpu.predict(x), "graph predict")


# ---- benchmark bindings (what bench/gpu_bench.py uses) ------------------------------------------


def test_benchmark_bindings_run(rng):
    assert _testing.cuda_sgemm_bench(64, 64, 64, 2) > 0
    model = lenet().to("cuda")
    ms = _testing.time_forward(model._net, rng.random((8, 1, 28, 28), dtype=np.float32), 2)
    assert len(ms) == 2 and all(t > 0 for t in ms)
    model._net.set_loss("cross_entropy")
    model._net.set_optimizer("sgd", {"lr": 0.01})
    x, y = digits(rng, 8)
    ms = _testing.time_train_step(model._net, x, y, 2)
    assert len(ms) == 2 and all(t > 0 for t in ms)


# ---- layers on the schema: activations, softmax, adaptive pooling, dropout2d, bn1d, upsample ----


@pytest.mark.parametrize(
    "make",
    [lambda: ck.ELU(0.7), ck.SiLU, ck.GELU, lambda: ck.GELU("tanh"), ck.ReLU6, ck.Hardswish,
     lambda: ck.Softmax(1), ck.Identity],
    ids=["elu", "silu", "gelu", "gelu_tanh", "relu6", "hardswish", "softmax", "identity"],
)
def test_new_elementwise_layer_parity(make, rng):
    cpu, gpu = twin(make)
    x = (rng.standard_normal((3, 5, 6, 7)) * 4).astype(np.float32)
    x[0, 0, 0, :4] = [0.0, 6.0, -3.0, 3.0]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    yc, dxc, _ = fwd_bwd(cpu, x, dy)
    yg, dxg, _ = fwd_bwd(gpu, x, dy)
    assert_parity(yg, yc, "forward", rtol=1e-6)
    assert_parity(dxg, dxc, "backward", rtol=1e-5)


@pytest.mark.parametrize("make", [ck.AdaptiveAvgPool2d, ck.AdaptiveMaxPool2d])
@pytest.mark.parametrize("H,W,P,Q", [(7, 5, 3, 2), (4, 4, 4, 4), (3, 5, 7, 8), (9, 9, 1, 1)])
def test_adaptive_pool_bit_identical_to_cpu(make, H, W, P, Q, rng):
    cpu, gpu = twin(lambda: make((P, Q)))
    x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
    dy = rng.standard_normal((2, 3, P, Q)).astype(np.float32)
    yc, dxc, _ = fwd_bwd(cpu, x, dy)
    yg, dxg, _ = fwd_bwd(gpu, x, dy)
    np.testing.assert_array_equal(yg, yc)
    np.testing.assert_array_equal(dxg, dxc)


@pytest.mark.parametrize("kw", [{"scale_factor": 2.0}, {"scale_factor": 1.5},
                                {"scale_factor": 0.5}, {"size": (5, 9)}])
def test_upsample_bit_identical_to_cpu(kw, rng):
    cpu, gpu = twin(lambda: ck.Upsample(**kw))
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    dy = rng.standard_normal(ck.Upsample(**kw).output_shape(x.shape)).astype(np.float32)
    yc, dxc, _ = fwd_bwd(cpu, x, dy)
    yg, dxg, _ = fwd_bwd(gpu, x, dy)
    np.testing.assert_array_equal(yg, yc)
    np.testing.assert_array_equal(dxg, dxc)


@pytest.mark.parametrize("kw", [{"scale_factor": 2.0}, {"scale_factor": 1.5, "align_corners": True},
                                {"scale_factor": 0.5}, {"size": (5, 9)},
                                {"size": (1, 7), "align_corners": True}, {"size": (6, 3)}])
def test_upsample_bilinear_parity(kw, rng):
    cpu, gpu = twin(lambda: ck.Upsample(mode="bilinear", **kw))
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    dy = rng.standard_normal(cpu.forward(x).shape).astype(np.float32)
    yc, dxc, _ = fwd_bwd(cpu, x, dy)
    yg, dxg, _ = fwd_bwd(gpu, x, dy)
    # the same taps and summation order; only FMA contraction on the GPU can differ
    assert_parity(yg, yc, "bilinear forward", rtol=1e-6)
    assert_parity(dxg, dxc, "bilinear backward", rtol=1e-6)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout2d_masks_bit_identical_to_cpu(p, rng):
    cpu, gpu = twin(lambda: ck.Dropout2d(p))
    for m in (cpu, gpu):
        m._net.set_rng(99, 3)
    x = rng.standard_normal((3, 5, 4, 3)).astype(np.float32) + 3.0
    dy = rng.standard_normal(x.shape).astype(np.float32)
    for _ in range(2):
        yc, dxc, _ = fwd_bwd(cpu, x, dy)
        yg, dxg, _ = fwd_bwd(gpu, x, dy)
        np.testing.assert_array_equal(yg, yc)
        np.testing.assert_array_equal(dxg, dxc)


@pytest.mark.parametrize("shape", [(3, 5, 4, 3), (6, 4), (2, 3, 4, 5)])
def test_sync_batchnorm_synced_pass_parity(shape, rng):
    """SyncBatchNorm's synced pass (statistics collective set: here one process) on the GPU
    against the CPU: its four kernels and the host-side combination between them."""
    C = shape[1]
    calls = []
    ck._core.set_stats_reducer(lambda a: calls.append(a.shape[0]))
    try:
        cpu, gpu = twin(lambda: ck.SyncBatchNorm(C, momentum=0.3))
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        for _ in range(2):
            yc, dxc, gc = fwd_bwd(cpu, x, dy)
            yg, dxg, gg = fwd_bwd(gpu, x, dy)
            assert_parity(yg, yc, "sync bn forward", rtol=1e-5)
            assert_parity(dxg, dxc, "sync bn backward", rtol=1e-4)
            for k in gc:
                assert_parity(gg[k], gc[k], f"sync bn grad {k}", rtol=1e-4)
        sc, sg = cpu.state_dict(), gpu.state_dict()
        for k in sc:
            assert_parity(sg[k], sc[k], f"sync bn state {k}", rtol=1e-5)
    finally:
        ck._core.set_stats_reducer(None)
    assert calls == [C + 1, C, 2 * C] * 4, calls  # 2 steps on each device


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5)])
def test_batchnorm1d_parity(shape, rng):
    cpu, gpu = twin(lambda: ck.BatchNorm1d(shape[1]))
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    yc, dxc, gc = fwd_bwd(cpu, x, dy)
    yg, dxg, gg = fwd_bwd(gpu, x, dy)
    assert_parity(yg, yc, "bn1d forward", rtol=1e-5)
    assert_parity(dxg, dxc, "bn1d backward", rtol=1e-4)
    for k in gc:
        assert_parity(gg[k], gc[k], f"bn1d grad {k}", rtol=1e-4)
