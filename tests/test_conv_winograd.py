"""The Winograd F(2x2, 3x3) path for stride-1 3x3 layers (on by default for the AVX-512 set on
Intel cores and for the AVX2 set on layers of 32+ channels; CNNKIT_CONV_WINOGRAD=1 forces it
for every set and layer) against float64, on random layers and on shapes that take each of the
routines' layouts (AVX-512: tile rows of >= 16 tiles, of 8 and of 4 in registers; AVX2: rows
of a multiple of 8 tiles, or of 4 in pairs, in registers; other widths through planes), and
its bits across thread counts, batch splits, chunked eval forwards and the two AVX2
routines. The AVX2 set's Winograd weight gradient (the adjoint of the forward's transforms)
against float64 and the direct tiles, and its bits across thread counts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# One layer's forward and backward-input, and their float64 references.
CASE = r"""
import numpy as np, cnnkit as ck
from tests import reference as ref


def case(rng, N, C, K, H, W, p, bias, relu, w_scale):
    m = ck.Sequential([ck.Conv2d(C, K, 3, padding=p, bias=bias)] + ([ck.ReLU()] if relu else []))
    w = (rng.standard_normal((K, C, 3, 3)) * w_scale).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32) if bias else None
    m.load_state_dict({"0.weight": w, **({"0.bias": b} if bias else {})})
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    y = m.forward(x, training=True)
    want = ref.conv2d(x, w, b, (1, 1), (p, p))
    if relu:
        want = np.maximum(want, 0)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = m.backward(dy)
    rdx = ref.conv2d_backward(x, w, dy * (y > 0) if relu else dy, (1, 1), (p, p))[0]
    return (y, want), (dx, rdx)
"""

SCRIPT = CASE + r"""
rng = np.random.default_rng(7)
for ks in ck.available_cpu_kernels():
    ck.set_cpu_kernels(ks)
    for _ in range(25):
        N = int(rng.integers(1, 4)); C = int(rng.integers(16, 70)); K = int(rng.integers(16, 70))
        H = int(rng.integers(4, 34)); W = int(rng.integers(4, 34)); p = int(rng.integers(0, 3))
        bias = bool(rng.integers(0, 2)); relu = bool(rng.integers(0, 2))
        fwd, bwd = case(rng, N, C, K, H, W, p, bias, relu, 0.3)
        what = f"{ks} N={N} C={C} K={K} H={H} W={W} p={p} bias={bias} relu={relu}"
        # float32 sums of 9*C (9*K) products: atol 1e-5 per ~100 terms, grown like sqrt
        for (ours, ref_), n in ((fwd, C), (bwd, K)):
            tol = 1e-5 * max(1.0, np.sqrt(9 * n) / 10) + 1e-4 * np.abs(ref_)
            assert (np.abs(ours - ref_) <= tol).all(), what
print("ok")
"""


SHAPES = CASE + r"""
rng = np.random.default_rng(11)
# (N, C, K, H, W, pad): output widths 32, 56 (28 tiles a row: a partial vector each row), 16,
# 15, 8, 7, 14, 5 (through the planes), 1-2 rows of tiles, and batches whose blocks cut images;
# for the AVX2 register routine also 15 and 31 wide (the last tile's second column masked), 7
# wide with an even and an odd number of tile rows, and 8 tiles a row with padding 0 and 2
shapes = [(3, 16, 16, 32, 32, 1), (1, 16, 24, 56, 56, 1), (5, 32, 32, 16, 16, 1),
          (3, 20, 17, 15, 15, 1), (9, 64, 64, 8, 8, 1), (4, 16, 40, 9, 9, 0),
          (2, 24, 16, 14, 14, 1), (3, 16, 16, 7, 5, 1), (2, 16, 16, 3, 40, 2),
          (1, 33, 18, 18, 18, 0), (7, 16, 32, 10, 12, 2), (3, 17, 16, 15, 31, 1),
          (5, 16, 19, 7, 7, 1), (4, 16, 16, 5, 7, 1), (3, 16, 16, 9, 18, 0),
          (2, 16, 16, 12, 14, 2)]
for ks in ck.available_cpu_kernels():
    if ks == "generic":
        continue
    ck.set_cpu_kernels(ks)
    for N, C, K, H, W, p in shapes:
        for relu in (False, True):
            pairs = case(rng, N, C, K, H, W, p, True, relu, 1 / np.sqrt(9 * C))
            what = f"{ks} N={N} C={C} K={K} H={H} W={W} p={p} relu={relu}"
            for ours, r in pairs:
                err = np.abs(ours - r).max() / max(1e-6, np.abs(r).max())
                assert err < 2e-6, (what, err)
print("ok")
"""

BITS = r"""
import numpy as np, cnnkit as ck
from cnnkit._core import _testing
rng = np.random.default_rng(5)
# Every tile's values come from the same operations whatever the block or thread: 1 and 2
# threads, a batch and its halves, forward and backward-input
m = ck.Sequential([ck.Conv2d(32, 48, 3, padding=1), ck.ReLU(), ck.Conv2d(48, 32, 3, padding=1)])
x = rng.standard_normal((21, 32, 16, 16)).astype(np.float32)
outs = []
for threads in (1, 2):
    ck.set_num_threads(threads)
    y = m.forward(x, training=True)
    dx = m.backward(np.ones_like(y))
    halves = np.concatenate([m.forward(x[:8], training=False), m.forward(x[8:], training=False)])
    outs.append((y.copy(), dx.copy(), halves))
for a, b in zip(*outs):
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
np.testing.assert_array_equal(outs[0][0].view(np.uint32), outs[0][2].view(np.uint32))
# and it is the Winograd path that ran: the direct tiles give other bits
_testing.set_conv_winograd(False)
ck.set_num_threads(1)
assert not np.array_equal(m.forward(x, training=True), outs[0][0])
np.testing.assert_allclose(m.forward(x, training=True), outs[0][0], rtol=1e-4, atol=1e-5)
print("ok")
"""


def _run(script, **env):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", script], cwd=root, env=dict(os.environ, **env),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr[-3000:]


def test_winograd_layouts_match_float64_reference():
    _run(SHAPES, CNNKIT_CONV_WINOGRAD="1")


def test_winograd_bits_do_not_depend_on_threads_or_batch_split():
    _run(BITS, CNNKIT_CONV_WINOGRAD="1")


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU vendor there")
def test_winograd_default_is_on_for_avx512_on_intel_and_avx2_and_can_be_switched():
    import cnnkit as ck
    from cnnkit._core import _testing

    before = ck._core.requested_cpu_kernels()
    try:
        with open("/proc/cpuinfo") as f:
            intel = "GenuineIntel" in f.read()
        for ks in ck.available_cpu_kernels():
            ck.set_cpu_kernels(ks)
            _testing.set_conv_winograd(None)
            assert _testing.conv_winograd() == ((ks == "avx512" and intel) or ks == "avx2"), ks
            _testing.set_conv_winograd(True)
            assert _testing.conv_winograd()
            _testing.set_conv_winograd(False)
            assert not _testing.conv_winograd()
    finally:
        ck.set_cpu_kernels(before)
        _testing.set_conv_winograd(None)


def test_winograd_matches_float64_reference():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CNNKIT_CONV_WINOGRAD="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


DEFAULT = r"""
import numpy as np, cnnkit as ck
from cnnkit._core import _testing
# By default a call needs 512 output tiles (8 x 8 = 64 a 16 x 16 image): 7 images stay on the
# direct tiles, 8 take Winograd, and so do chunks of a larger eval forward that has them (the
# filters are transformed once for all its chunks)
rng = np.random.default_rng(3)
conv = ck.Sequential([ck.Conv2d(16, 16, 3, padding=1)])
x = rng.standard_normal((16, 16, 16, 16)).astype(np.float32)
def bits(v):
    return np.ascontiguousarray(v).view(np.uint32)
_testing.set_conv_winograd(False)
direct = conv.forward(x, training=True)
_testing.set_conv_winograd(True)
forced = conv.forward(x, training=True)
_testing.set_conv_winograd(None)
assert not np.array_equal(bits(direct), bits(forced))
np.testing.assert_array_equal(bits(conv.forward(x[:7], training=True)), bits(direct[:7]))
np.testing.assert_array_equal(bits(conv.forward(x[:8], training=True)), bits(forced[:8]))
# 8 x 8 images (16 tiles each): 32 images in chunks of 8 (128 tiles each) are computed as the
# one pass of 512 tiles is, by Winograd
x8 = rng.standard_normal((32, 16, 8, 8)).astype(np.float32)
_testing.set_conv_winograd(True)
forced8 = conv.forward(x8, training=True)
_testing.set_conv_winograd(None)
np.testing.assert_array_equal(bits(conv.forward(x8, training=True)), bits(forced8))
assert not np.array_equal(bits(conv.forward(x8[:8], training=True)), bits(forced8[:8]))
inp = ck.Input((16, 8, 8))
model = ck.Model(inp, ck.Add()([ck.Conv2d(16, 16, 3, padding=1, name="c")(inp), inp]))
model.load_state_dict({"c." + k[2:]: v for k, v in conv.state_dict().items()})
_testing.set_eval_chunk_kb(4)  # 4 KB = one image: chunks of the floor, 8 images
out = model.forward(x8)
assert model._net.last_eval_chunks() == 4
np.testing.assert_array_equal(bits(out), bits(forced8 + x8))
print("ok")
"""


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU vendor there")
def test_winograd_by_default_only_for_calls_with_enough_tiles():
    import cnnkit as ck

    with open("/proc/cpuinfo") as f:
        if "GenuineIntel" not in f.read() or "avx512" not in ck.available_cpu_kernels():
            pytest.skip("Winograd is on by default for the AVX-512 set on Intel cores only")
    _run(DEFAULT)


DEFAULT_AVX2 = r"""
import numpy as np, cnnkit as ck
from cnnkit._core import _testing
# The AVX2 set by default: layers of 32+ input and output channels with 512+ output tiles
# (8 images of 16 x 16), never 16-channel ones
ck.set_cpu_kernels("avx2")
rng = np.random.default_rng(4)
def bits(v):
    return np.ascontiguousarray(v).view(np.uint32)
for C, K, wino in ((32, 32, True), (32, 48, True), (16, 32, False), (48, 16, False)):
    conv = ck.Sequential([ck.Conv2d(C, K, 3, padding=1)])
    x = rng.standard_normal((8, C, 16, 16)).astype(np.float32)
    _testing.set_conv_winograd(False)
    direct = conv.forward(x, training=True)
    dx_direct = conv.backward(np.ones_like(direct))
    _testing.set_conv_winograd(True)
    forced = conv.forward(x, training=True)
    dx_forced = conv.backward(np.ones_like(forced))
    _testing.set_conv_winograd(None)
    assert not np.array_equal(bits(direct), bits(forced))
    y = conv.forward(x, training=True)
    dx = conv.backward(np.ones_like(y))
    want, want_dx = (forced, dx_forced) if wino else (direct, dx_direct)
    np.testing.assert_array_equal(bits(y), bits(want), err_msg=f"{C}->{K}")
    np.testing.assert_array_equal(bits(dx), bits(want_dx), err_msg=f"{C}->{K}")
    if wino:  # 7 images: 448 tiles, the direct tiles
        np.testing.assert_array_equal(bits(conv.forward(x[:7], training=True)), bits(direct[:7]))
print("ok")
"""


def test_winograd_default_for_the_avx2_set_takes_layers_of_32_channels():
    import cnnkit as ck

    if "avx2" not in ck.available_cpu_kernels():
        pytest.skip("this CPU has no AVX2")
    _run(DEFAULT_AVX2)


PLANES = CASE + r"""
import json, sys
rng = np.random.default_rng(int(sys.argv[1]))
ck.set_cpu_kernels("avx2")
out = []
for N, C, K, H, W, p in ((3, 16, 20, 32, 32, 1), (2, 24, 16, 16, 16, 1), (5, 16, 16, 8, 8, 1),
                         (3, 17, 16, 15, 31, 1), (5, 16, 19, 7, 7, 1), (3, 16, 16, 9, 18, 0),
                         (2, 16, 16, 12, 14, 2), (4, 16, 16, 5, 7, 1)):
    (y, _), (dx, _) = case(rng, N, C, K, H, W, p, True, True, 0.2)
    out.append([y.view(np.uint32).tolist(), dx.view(np.uint32).tolist()])
print(json.dumps(out))
"""


def test_winograd_avx2_register_transforms_give_the_planes_bits():
    # the AVX2 register routine (8 tiles a vector, straight from x into y) against the same
    # transforms through planes in memory: the same adds in the same order, so the same bits
    import json

    import cnnkit as ck

    if "avx2" not in ck.available_cpu_kernels():
        pytest.skip("this CPU has no AVX2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = []
    for extra in ({}, {"CNNKIT_CONV_WINOGRAD_AVX2": "planes"}):
        env = dict(os.environ, CNNKIT_CONV_WINOGRAD="1", **extra)
        r = subprocess.run([sys.executable, "-c", PLANES, "9"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]


WGT = r"""
import sys
import numpy as np, cnnkit as ck
from cnnkit._core import _testing
from tests import reference as ref
ck.set_cpu_kernels("avx2")
rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
def bits(v):
    return np.ascontiguousarray(v).view(np.uint32)
def grads(m, x, dy, threads):
    ck.set_num_threads(threads)
    m.zero_grad()
    m.forward(x, training=True)
    m.backward(dy)
    return m.grad_dict()["0.weight"].copy()
# (N, C, K, H, W, pad): tile rows of 16 and 8 tiles (32 and 16 wide), of 8 with the last
# tile's second column and the last row masked (15 wide), 4 tiles in pairs of rows (8 and 7
# wide), padding 0 and 2, more images than the 16 image groups, and channel counts that 3
# and 4 (the dot products' register tile) do not divide
shapes = [(2, 16, 16, 32, 32, 1), (3, 32, 32, 16, 16, 1), (20, 64, 64, 8, 8, 1),
          (4, 17, 19, 15, 15, 1), (5, 33, 35, 7, 7, 1), (3, 18, 21, 18, 18, 0),
          (2, 16, 22, 14, 14, 2), (18, 37, 16, 8, 8, 1), (1, 16, 16, 17, 17, 0),
          # 192 x 192 channels: 14 groups (their partials capped at 32 MB), not 16
          (16, 192, 192, 8, 8, 1)]
for N, C, K, H, W, p in shapes:
    what = f"N={N} C={C} K={K} H={H} W={W} p={p}"
    m = ck.Sequential([ck.Conv2d(C, K, 3, padding=p)])
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    m.load_state_dict({"0.weight": w, "0.bias": rng.standard_normal(K).astype(np.float32)})
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    P = H + 2 * p - 2
    dy = rng.standard_normal((N, K, P, P if H == W else W + 2 * p - 2)).astype(np.float32)
    want = ref.conv2d_backward(x, w, dy, (1, 1), (p, p))[1]
    _testing.set_conv_winograd(True)
    dw = [grads(m, x, dy, t) for t in (1, 2, 3)]
    _testing.set_conv_winograd(False)
    direct = grads(m, x, dy, 1)
    _testing.set_conv_winograd(None)
    # sums of N P Q products: the float32 error grows like their square root
    scale = np.abs(want).max()
    err = np.abs(dw[0] - want).max() / scale
    assert err < 2e-6, (what, err)
    assert np.abs(direct - want).max() / scale < 4e-6, what
    for d in dw[1:]:
        np.testing.assert_array_equal(bits(d), bits(dw[0]), err_msg=what)
    # and it is the Winograd path that ran: the direct tiles give other bits
    assert not np.array_equal(bits(dw[0]), bits(direct)), what
# past 512 x 512 channels two groups' partials do not fit: the direct tiles, even when forced
m = ck.Sequential([ck.Conv2d(520, 520, 3, padding=1)])
x = rng.standard_normal((2, 520, 8, 8)).astype(np.float32)
dy = rng.standard_normal((2, 520, 8, 8)).astype(np.float32)
_testing.set_conv_winograd(False)
direct = grads(m, x, dy, 2)
_testing.set_conv_winograd(True)
np.testing.assert_array_equal(bits(grads(m, x, dy, 2)), bits(direct))
_testing.set_conv_winograd(None)
# a Conv2d -> ReLU pair (the Net fuses them) and a bias: the same weight gradient as the
# float64 reference of the masked dy
m = ck.Sequential([ck.Conv2d(32, 32, 3, padding=1), ck.ReLU()])
x = rng.standard_normal((4, 32, 16, 16)).astype(np.float32)
y = m.forward(x, training=True)
dy = rng.standard_normal(y.shape).astype(np.float32)
m.zero_grad()
m.backward(dy)
st = m.state_dict()
want = ref.conv2d_backward(x, st["0.weight"], dy * (y > 0), (1, 1), (1, 1))
g = m.grad_dict()
assert np.abs(g["0.weight"] - want[1]).max() / np.abs(want[1]).max() < 2e-6
np.testing.assert_allclose(g["0.bias"], want[2], rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_winograd_weight_gradient_matches_float64_and_does_not_depend_on_threads():
    import cnnkit as ck

    if "avx2" not in ck.available_cpu_kernels():
        pytest.skip("this CPU has no AVX2")
    _run(WGT)


WGT_SWITCH = r"""
import numpy as np, cnnkit as ck
ck.set_cpu_kernels("avx2")
rng = np.random.default_rng(6)
m = ck.Sequential([ck.Conv2d(16, 16, 3, padding=1)])
x = rng.standard_normal((2, 16, 32, 32)).astype(np.float32)
m.forward(x, training=True)
m.backward(np.ones((2, 16, 32, 32), np.float32))
print(np.ascontiguousarray(m.grad_dict()["0.weight"]).view(np.uint32).sum(dtype=np.uint64))
"""


def test_winograd_weight_gradient_is_on_by_default_for_the_avx2_set_and_can_be_switched_off():
    # 16-channel layers of 512+ tiles take it by default (their forward does not); the
    # switch CNNKIT_CONV_WINOGRAD_WGT=0 and CNNKIT_CONV_WINOGRAD=0 keep the direct tiles
    import cnnkit as ck

    if "avx2" not in ck.available_cpu_kernels():
        pytest.skip("this CPU has no AVX2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(**env):
        r = subprocess.run([sys.executable, "-c", WGT_SWITCH], cwd=root, capture_output=True,
                           text=True, timeout=120, env=dict(os.environ, **env))
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout.strip()

    default = run()
    assert default == run(CNNKIT_CONV_WINOGRAD="1")
    off = run(CNNKIT_CONV_WINOGRAD_WGT="0")
    assert off == run(CNNKIT_CONV_WINOGRAD="0") and off != default
