"""cnnkit's own SGEMM (cnnkit._core._testing.sgemm) against a float64 numpy reference.

Covers every CPU kernel set the machine supports (AVX-512 14x32, AVX2/FMA 6x16, portable 6x16),
every transpose combination, alpha/beta, the fused bias, edge sizes around the blocking
boundaries of each set, thread-count determinism and bad input.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import cnnkit
from cnnkit import _core
from cnnkit._core import _testing

# Blocking of csrc/cpu/gemm.cpp (micro-tile MR x NR, cache blocks MC, KC, NC): shapes below
# straddle each boundary. K up to KC_SINGLE is one depth block, longer K blocks of at most KC.
# The AVX-512 kernel's tile is MR512 x NR512, its A blocks 84 rows, its depth blocks 512.
MR, NR, MC, KC, NC = 6, 16, 144, 256, 4080
MR512, NR512, MC512, KC512 = 14, 32, 84, 512
KC_SINGLE = 384
# AVX2 set with M >= TALL_M: A blocks of MC_TALL rows, depth blocks of KC_TALL
TALL_M, MC_TALL, KC_TALL = 512, 72, 512

TRANS = [(False, False), (True, False), (False, True), (True, True)]
TRANS_IDS = ["nn", "tn", "nt", "tt"]


# ---- helpers --------------------------------------------------------------------------------


GEMM_NAME = {"avx512": "avx512", "avx2": "avx2-fma", "generic": "generic"}


@pytest.fixture
def kernel(cpu_kernels):
    """Each CPU kernel set in turn (conftest.cpu_kernels), checked to drive the GEMM."""
    assert _core.sgemm_kernel_name() == GEMM_NAME[cpu_kernels]
    return cpu_kernels


@pytest.fixture
def threads():
    """Lets a test change the thread count; restores it afterwards."""
    before = cnnkit.get_num_threads()
    yield cnnkit.set_num_threads
    cnnkit.set_num_threads(before)


def _operands(rng, m, n, k, ta, tb):
    """Stored A, B (transposed storage when ta / tb) and op(A), op(B) in float64."""
    a = rng.uniform(-1, 1, size=(k, m) if ta else (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, size=(n, k) if tb else (k, n)).astype(np.float32)
    opa = a.T.astype(np.float64) if ta else a.astype(np.float64)
    opb = b.T.astype(np.float64) if tb else b.astype(np.float64)
    return a, b, opa, opb


def _check(ours, ref, k, scale=1.0, msg=""):
    """|ours - ref| <= atol + rtol * |ref|, both growing like sqrt(K) (float32 sums)."""
    tol = 2e-5 * math.sqrt(k + 1) * scale
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == ref.shape, msg
    assert np.all(np.isfinite(ours)), f"{msg}: non-finite values"
    err = np.abs(ours - ref)
    bad = err > tol + tol * np.abs(ref)
    assert not bad.any(), (
        f"{msg}: {bad.sum()} of {bad.size} out of tolerance, max err {err.max():.3g}"
    )


# ---- correctness ----------------------------------------------------------------------------

SHAPES = [
    (1, 1, 1),
    (7, 13, 5),
    (17, 33, 65),
    (MR, NR, KC),
    (MR - 1, NR - 1, KC + 1),
    (MR + 1, NR + 1, KC - 1),
    (2 * MR, 2 * NR, 2 * KC + 1),
    (MR + 1, NR, KC_SINGLE),
    (MR, NR + 3, KC_SINGLE + 1),
    (MC + 1, 37, 30),
    (2 * MC + 7, 70, 20),
    (13, NC + 5, 3),
    (1, 300, 40),
    (300, 1, 40),
    (3, 2, 3000),
    # im2col convolution shapes (forward; backward ones come from the transpose combos)
    (6, 784, 25),
    (16, 100, 150),
    (64, 1024, 288),
    (32, 96, 1200),
    # the AVX-512 tile: full, one short in each direction, masked column tails of 1..31
    (MR512, NR512, 100),
    (MR512 - 1, NR512 + 1, 33),
    (MR512 + 1, NR512 - 1, 17),
    (2 * MR512 + 3, 3 * NR512 + 17, KC + 3),
    (141, 1, 9),
    (10 * MR512 + 1, 2 * NR512 + 31, 50),
    (MC512 + 1, NR512 + 2, KC512),
    (2 * MC512 + 5, 2 * NR512 - 3, KC512 + 1),
    (MR512 + 2, 3 * NR512, 2 * KC512 + 7),
    # the AVX2 tall blocking: just below and at TALL_M, depth blocks of 512 with a tail
    (TALL_M - 1, 21, KC_TALL + 1),
    (TALL_M, NR + 5, 2 * KC_TALL + 3),
    (TALL_M + MC_TALL + 1, 19, KC_SINGLE + 1),
    # 1-4 rows (the skinny nt path: dot products, no packing), K tails of every lane count
    (1, 37, 1),
    (2, 130, 17),
    (3, 5, 33),
    (4, 64, 300),
    (4, 1001, 15),
    (1, 2, 3000),
    (5, 40, 31),
]


@pytest.mark.parametrize("ta,tb", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("m,n,k", SHAPES, ids=lambda v: str(v))
def test_shapes(kernel, rng, m, n, k, ta, tb):
    a, b, opa, opb = _operands(rng, m, n, k, ta, tb)
    c = _testing.sgemm(a, b, trans_a=ta, trans_b=tb)
    assert c.dtype == np.float32 and c.shape == (m, n)
    _check(c, opa @ opb, k, msg=f"{kernel} {m}x{n}x{k} ta={ta} tb={tb}")


@pytest.mark.parametrize("ta,tb", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize(
    "alpha,beta", [(1.0, 0.0), (-0.5, 0.0), (1.0, 1.0), (2.0, -1.5), (0.75, 0.25)]
)
def test_alpha_beta(kernel, rng, alpha, beta, ta, tb):
    m, n, k = 37, 45, 300
    a, b, opa, opb = _operands(rng, m, n, k, ta, tb)
    c0 = rng.uniform(-1, 1, size=(m, n)).astype(np.float32)
    c = c0.copy()
    if beta == 0.0:
        c[:] = np.nan  # beta == 0: C must not be read
    out = _testing.sgemm(a, b, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta, c=c)
    assert out is c or np.shares_memory(out, c)
    ref = alpha * (opa @ opb) + (beta * c0.astype(np.float64) if beta != 0.0 else 0.0)
    _check(c, ref, k, scale=abs(alpha) + abs(beta), msg=f"alpha={alpha} beta={beta}")


def test_beta_one_accumulates(kernel, rng):
    m, n, k = 50, 70, 90
    a, b, opa, opb = _operands(rng, m, n, k, False, False)
    c = np.zeros((m, n), np.float32)
    for _ in range(3):
        _testing.sgemm(a, b, beta=1.0, c=c)
    _check(c, 3 * (opa @ opb), k, scale=3.0)


def test_k_zero(kernel):
    a = np.zeros((4, 0), np.float32)
    b = np.zeros((0, 5), np.float32)
    c = np.full((4, 5), 2.0, np.float32)
    _testing.sgemm(a, b, beta=0.5, c=c)
    np.testing.assert_array_equal(c, np.ones((4, 5), np.float32))
    c[:] = np.nan
    _testing.sgemm(a, b, beta=0.0, c=c)
    np.testing.assert_array_equal(c, np.zeros((4, 5), np.float32))
    np.testing.assert_array_equal(_testing.sgemm(a, b), np.zeros((4, 5), np.float32))


def test_alpha_zero_scales_c(kernel, rng):
    a, b, _, _ = _operands(rng, 8, 9, 10, False, False)
    c = np.full((8, 9), 4.0, np.float32)
    _testing.sgemm(a, b, alpha=0.0, beta=0.25, c=c)
    np.testing.assert_array_equal(c, np.ones((8, 9), np.float32))


def test_kernels_agree(kernel, rng):
    # every set against the portable one on the same operands (and both against float64)
    a, b, opa, opb = _operands(rng, 70, 90, 500, False, True)
    ours = _testing.sgemm(a, b, trans_b=True)
    cnnkit.set_cpu_kernels("generic")
    generic = _testing.sgemm(a, b, trans_b=True)
    _check(ours, generic.astype(np.float64), 500, msg=kernel)
    _check(ours, opa @ opb, 500, msg=kernel)


@pytest.mark.parametrize("ta,tb", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize(
    "m,n,k,beta",
    [(1, 1, 1, 0.0), (7, 13, 5, 0.0), (MR512 + 1, NR512 + 5, KC + 7, 0.0), (37, 45, 300, 0.5),
     (150, 70, 2 * KC + 1, 1.0), (13, NC + 5, 3, 0.0), (3, 40, 0, 0.5)],
    ids=str,
)
def test_bias_epilogue(kernel, rng, m, n, k, beta, ta, tb):
    # The bias added in the write-back gives the bits of the GEMM followed by a separate add.
    a, b, opa, opb = _operands(rng, m, n, k, ta, tb)
    bias = rng.uniform(-1, 1, size=n).astype(np.float32)
    c0 = rng.uniform(-1, 1, size=(m, n)).astype(np.float32)
    plain = _testing.sgemm(a, b, trans_a=ta, trans_b=tb, beta=beta, c=c0.copy())
    c = c0.copy()
    if beta == 0.0:
        c[:] = np.nan  # not read
    fused = _testing.sgemm(a, b, trans_a=ta, trans_b=tb, beta=beta, c=c, bias=bias)
    np.testing.assert_array_equal(fused, plain + bias)
    ref = opa @ opb + beta * c0.astype(np.float64) + bias
    _check(fused, ref, k, scale=2.0, msg=f"{kernel} bias")


def test_bias_bad_shape():
    a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="bias"):
        _testing.sgemm(a, b, bias=np.ones(4, np.float32))


# ---- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("ta,tb", TRANS[:3], ids=TRANS_IDS[:3])
@pytest.mark.parametrize("m,n,k", [(300, 500, 700), (TALL_M + 3, 70, 1100)])
def test_thread_count_bit_identical(kernel, rng, threads, ta, tb, m, n, k):
    a, b, opa, opb = _operands(rng, m, n, k, ta, tb)
    threads(1)
    one = _testing.sgemm(a, b, trans_a=ta, trans_b=tb)
    threads(2)
    two = _testing.sgemm(a, b, trans_a=ta, trans_b=tb)
    np.testing.assert_array_equal(one, two)
    _check(two, opa @ opb, k)


@pytest.mark.parametrize("m", [1, 3, 4])
def test_skinny_thread_count_bit_identical(kernel, rng, threads, m):
    # A few rows against a large B^T (Linear at batch 1-4): split over columns by thread
    a, b, opa, opb = _operands(rng, m, 3000, 700, False, True)
    bias = rng.uniform(-1, 1, size=3000).astype(np.float32)
    threads(1)
    one = _testing.sgemm(a, b, trans_b=True, bias=bias)
    threads(2)
    two = _testing.sgemm(a, b, trans_b=True, bias=bias)
    np.testing.assert_array_equal(one, two)
    _check(two, opa @ opb + bias, 700)


def test_concurrent_python_threads(rng):
    # The GIL is released during sgemm: per-thread packing buffers must not be shared.
    cases = []
    for i in range(6):
        m, n, k = 40 + 31 * i, 200 - 17 * i, 150 + 60 * i
        a, b, opa, opb = _operands(rng, m, n, k, i % 2 == 1, i % 3 == 2)
        cases.append((a, b, i % 2 == 1, i % 3 == 2, opa @ opb, k))
    errors = []

    def work(case):
        a, b, ta, tb, ref, k = case
        try:
            for _ in range(5):
                _check(_testing.sgemm(a, b, trans_a=ta, trans_b=tb), ref, k)
        except AssertionError as e:
            errors.append(e)

    workers = [threading.Thread(target=work, args=(c,)) for c in cases]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[0]


# ---- API ------------------------------------------------------------------------------------


def test_kernel_name():
    assert _core.sgemm_kernel_name() in ("avx512", "avx2-fma", "generic")
    before = _core.requested_cpu_kernels()
    try:
        _testing.sgemm_force_generic(True)  # the older switch: the "generic" set
        assert _core.sgemm_kernel_name() == "generic" and cnnkit.get_cpu_kernels() == "generic"
        _testing.sgemm_force_generic(False)  # back to "auto"
        assert _core.requested_cpu_kernels() == "auto"
        best = cnnkit.available_cpu_kernels()[0]
        assert cnnkit.get_cpu_kernels() == best and _core.sgemm_kernel_name() == GEMM_NAME[best]
    finally:
        cnnkit.set_cpu_kernels(before)


def test_available_kernel_sets_follow_cpu_features():
    sets = cnnkit.available_cpu_kernels()
    assert sets[-1] == "generic" and len(set(sets)) == len(sets)
    assert ("avx2" in sets) == _core.cpu_has_avx2_fma()
    assert ("avx512" in sets) == _core.cpu_has_avx512()
    if "avx512" in sets:
        assert {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(_core.cpu_features().split())


def test_set_cpu_kernels_errors():
    before = _core.requested_cpu_kernels()
    try:
        with pytest.raises(ValueError, match="unknown kernel set 'sse9'"):
            cnnkit.set_cpu_kernels("sse9")
        with pytest.raises(ValueError):
            cnnkit.set_cpu_kernels(2)  # type: ignore[arg-type]
        for name in ("avx512", "avx2"):
            if name not in cnnkit.available_cpu_kernels():
                with pytest.raises(ValueError, match="needs"):
                    cnnkit.set_cpu_kernels(name)
        assert _core.requested_cpu_kernels() == before  # a refused request changes nothing
    finally:
        cnnkit.set_cpu_kernels(before)


@pytest.mark.parametrize("value", ["generic", "bogus"])
def test_cpu_kernels_environment_variable(value):
    # read when cnnkit is imported: a fresh interpreter
    code = "import cnnkit; print(cnnkit.get_cpu_kernels())"
    env = dict(os.environ, CNNKIT_CPU_KERNELS=value)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if value == "generic":
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "generic"
    else:
        assert r.returncode != 0
        assert "CNNKIT_CPU_KERNELS='bogus'" in r.stderr and "unknown kernel set" in r.stderr


def test_bad_input():
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError):
        _testing.sgemm(np.ones(4, np.float32), b)  # a not 2-D
    with pytest.raises(ValueError):
        _testing.sgemm(a, np.ones((2, 4, 5), np.float32))  # b not 2-D
    with pytest.raises(ValueError):
        _testing.sgemm(a, np.ones((5, 5), np.float32))  # inner dims 4 != 5
    with pytest.raises(ValueError):
        _testing.sgemm(a, b, trans_a=True)  # op(a) is (4, 3): 3 != 4
    with pytest.raises(ValueError):
        _testing.sgemm(a, b, c=np.zeros((3, 4), np.float32))  # c has the wrong shape
    with pytest.raises(ValueError):
        _testing.sgemm(a, b, c=np.zeros((5, 3), np.float32).T)  # c not C-contiguous
