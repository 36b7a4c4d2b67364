"""Shared test fixtures: the tolerance table, the device fixture, and seeded RNGs."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import cnnkit

# One table of per-op tolerances: |ours - reference| <= atol + rtol * |reference|,
# references computed in float64.
TOL = {
    "gemm": (1e-5, 1e-4),
    "im2col": (0.0, 0.0),
    "conv": (1e-5, 1e-4),
    "pool": (1e-6, 1e-6),
    "activation": (1e-6, 1e-5),
    "linear": (1e-5, 1e-4),
    "batchnorm": (1e-5, 1e-4),
    "loss": (1e-6, 1e-5),
    "optim": (1e-6, 1e-5),
    "torch": (1e-5, 1e-4),
    "gradcheck": (2e-3, 2e-2),
}


def assert_close(ours, ref, op: str, msg: str = "", scale: float = 1.0) -> None:
    """Check against the reference; `scale` widens atol for long float32 sums (e.g. sqrt(K))."""
    atol, rtol = TOL[op]
    atol *= scale
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{op}{msg}: shape {ours.shape} != {ref.shape}"
    assert np.all(np.isfinite(ours)), f"{op}{msg}: non-finite values"
    err = np.abs(ours - ref)
    bound = atol + rtol * np.abs(ref)
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{op}{msg}: {bad.sum()} of {bad.size} elements out of tolerance "
            f"(atol={atol}, rtol={rtol}); worst at {i}: ours={ours[i]!r} ref={ref[i]!r}"
        )


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not cnnkit.cuda_available():
        pytest.skip("no CUDA device")
    return request.param


# Every CPU kernel set (cnnkit.set_cpu_kernels); a test taking the `cpu_kernels` fixture runs
# once per set, skipped where this CPU (or build) lacks it. The ids do not depend on the machine.
CPU_KERNEL_SETS = ["avx512", "avx2", "generic"]


@pytest.fixture(params=CPU_KERNEL_SETS)
def cpu_kernels(request):
    """Selects one CPU kernel set for the test; restores the previous selection afterwards."""
    if request.param not in cnnkit.available_cpu_kernels():
        pytest.skip(f"this CPU has no {request.param} kernels ({cnnkit._core.cpu_features()})")
    before = cnnkit._core.requested_cpu_kernels()
    cnnkit.set_cpu_kernels(request.param)
    try:
        assert cnnkit.get_cpu_kernels() == request.param
        yield request.param
    finally:
        cnnkit.set_cpu_kernels(before)


@pytest.fixture
def rng(request):
    # A fresh, reproducible stream per test: the seed depends on the test's name only (not on
    # Python's per-process string hashing, nor on the directory pytest was started from).
    seed = zlib.crc32(request.node.name.encode())
    return np.random.default_rng(seed)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "requires_cuda" in item.keywords and not cnnkit.cuda_available():
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))
