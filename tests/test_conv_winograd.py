"""The Winograd F(2x2, 3x3) path (off by default; CNNKIT_CONV_WINOGRAD=1) against float64."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import numpy as np, cnnkit as ck
from tests import reference as ref
rng = np.random.default_rng(7)
for ks in ck.available_cpu_kernels():
    ck.set_cpu_kernels(ks)
    for _ in range(25):
        N = int(rng.integers(1, 4)); C = int(rng.integers(16, 70)); K = int(rng.integers(16, 70))
        H = int(rng.integers(4, 34)); W = int(rng.integers(4, 34)); p = int(rng.integers(0, 3))
        bias = bool(rng.integers(0, 2)); relu = bool(rng.integers(0, 2))
        m = ck.Sequential([ck.Conv2d(C, K, 3, padding=p, bias=bias)] + ([ck.ReLU()] if relu else []))
        w = (rng.standard_normal((K, C, 3, 3)) * 0.3).astype(np.float32)
        sd = {"0.weight": w}
        b = rng.standard_normal(K).astype(np.float32) if bias else None
        if bias:
            sd["0.bias"] = b
        m.load_state_dict(sd)
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        y = m.forward(x, training=True)
        want = ref.conv2d(x, w, b, (1, 1), (p, p))
        if relu:
            want = np.maximum(want, 0)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = m.backward(dy)
        g = dy * (y > 0) if relu else dy
        rdx = ref.conv2d_backward(x, w, g, (1, 1), (p, p))[0]
        what = f"{ks} N={N} C={C} K={K} H={H} W={W} p={p} bias={bias} relu={relu}"
        # float32 sums of 9*C (9*K) products: atol 1e-5 per ~100 terms, grown like sqrt
        for ours, ref_, n in ((y, want, C), (dx, rdx, K)):
            tol = 1e-5 * max(1.0, np.sqrt(9 * n) / 10) + 1e-4 * np.abs(ref_)
            assert (np.abs(ours - ref_) <= tol).all(), what
print("ok")
"""


def test_winograd_matches_float64_reference():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CNNKIT_CONV_WINOGRAD="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
