"""A Linear layer's forward called from Python vs numpy's x @ w.T (OpenBLAS), at 1 and 2 threads.

Each thread count runs in a fresh subprocess (thread pools fixed before numpy is imported);
inside it cnnkit's `layer.forward(x)` (every kernel set asked for, in turn), the bare GEMM with
its fused bias (into a new and into a reused output array: the per-call overhead), numpy's
`x @ w.T` and `x @ w.T + b` alternate in batches, and the medians of the per-round ratios are
reported (ratio > 1: faster than numpy's matmul). OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are
removed from the workers' environment (OpenBLAS picks its own kernels). Usage:
    python bench/compare_linear.py [--threads 1 2] [--shape 1024 1024 1024] [--repeats 7]
                                   [--kernels auto avx2] [--json out.json]
--shape is batch, in_features, out_features.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _timed_batch(fn, min_seconds: float, cooldown: float) -> float:
    """Seconds per call over a batch lasting at least min_seconds, after an idle `cooldown`
    (OpenBLAS's and OpenMP's idle threads spin for a while after a call)."""
    time.sleep(cooldown)
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


def worker(threads: int, shape: list, kernels: list, repeats: int, min_seconds: float,
           cooldown: float) -> dict:
    import numpy as np  # imported here: OPENBLAS_NUM_THREADS is already set

    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    import cnnkit

    cnnkit.set_num_threads(threads)
    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    n, i, o = shape
    rng = np.random.default_rng(0)
    layer = cnnkit.Linear(i, o)
    w = rng.uniform(-1, 1, (o, i)).astype(np.float32)
    b = rng.uniform(-1, 1, o).astype(np.float32)
    layer.load_state_dict({"0.weight": w, "0.bias": b})
    x = rng.uniform(-1, 1, (n, i)).astype(np.float32)

    sets = list(kernels)
    resolved = {}
    for k in sets:
        cnnkit.set_cpu_kernels(k)
        resolved[k] = cnnkit.get_cpu_kernels()
        err = float(np.max(np.abs(layer.forward(x) - (x @ w.T + b))))
        scale = float(np.max(np.abs(x @ w.T + b)))
        if not err <= 1e-5 * scale:
            raise SystemExit(f"{k}: Linear forward disagrees with numpy: max error {err}")

    def numpy_mm():
        x @ w.T

    def numpy_mm_bias():
        x @ w.T + b

    def ours(k):
        def run():
            layer.forward(x)

        return run

    from cnnkit._core import _testing

    c = np.empty((n, o), np.float32)

    def gemm_fresh():  # the GEMM + bias alone, a new output array per call
        _testing.sgemm(x, w, trans_b=True, bias=b)

    def gemm_reused():  # ... into one output array
        _testing.sgemm(x, w, trans_b=True, bias=b, c=c)

    fns = {f"cnnkit[{resolved[k]}]": (k, ours(k)) for k in sets}
    # what a call from Python costs beyond the GEMM (first kernel set): the layer's forward
    # also checks x for NaN/Inf and copies it into its arena (a backward may follow and reads it);
    # y is written straight into the returned array
    fns[f"sgemm+bias[{resolved[sets[0]]}], new output"] = (sets[0], gemm_fresh)
    fns[f"sgemm+bias[{resolved[sets[0]]}], reused output"] = (sets[0], gemm_reused)
    fns["numpy x@w.T"] = (None, numpy_mm)
    fns["numpy x@w.T+b"] = (None, numpy_mm_bias)
    for k, fn in fns.values():  # warm up
        if k:
            cnnkit.set_cpu_kernels(k)
        _timed_batch(fn, 0.05, cooldown)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (k, fn) in fns.items():
            if k:
                cnnkit.set_cpu_kernels(k)
            times[name].append(_timed_batch(fn, min_seconds, cooldown))
    ref = times["numpy x@w.T"]
    out = {"threads": threads, "shape": shape, "numpy": np.__version__, "rows": []}
    for name, t in times.items():
        out["rows"].append({
            "what": name,
            "ms": statistics.median(t) * 1e3,
            "ratio_vs_matmul": statistics.median(r / s for r, s in zip(ref, t, strict=True)),
            "times_s": t,
        })
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shape", type=int, nargs=3, default=[1024, 1024, 1024])
    ap.add_argument("--kernels", nargs="+", default=["auto"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.3, help="minimum seconds per batch")
    ap.add_argument("--cooldown", type=float, default=0.15)
    ap.add_argument("--json", help="write the raw runs here")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        res = worker(args.worker, args.shape, args.kernels, args.repeats, args.seconds,
                     args.cooldown)
        print(json.dumps(res))
        return 0
    results = []
    for t in args.threads:
        env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_OVERRIDES}
        env.update(OPENBLAS_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
        cmd = [sys.executable, __file__, "--worker", str(t), "--shape", *map(str, args.shape),
               "--kernels", *args.kernels, "--repeats", str(args.repeats), "--seconds",
               str(args.seconds), "--cooldown", str(args.cooldown)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return r.returncode
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    n, i, o = args.shape
    print(f"Linear({i}, {o}) forward on a batch of {n} from Python, {platform.processor() or ''}"
          f" load {os.getloadavg()[0]:.2f}")
    print("| threads | what | ms (median) | numpy x@w.T time / this (median of rounds) |")
    print("|---|---|---|---|")
    for res in results:
        for row in res["rows"]:
            print(f"| {res['threads']} | {row['what']} | {row['ms']:.2f} | "
                  f"{row['ratio_vs_matmul']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
