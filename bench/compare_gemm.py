"""cnnkit's own SGEMM vs numpy's (OpenBLAS) np.matmul on float32, at 1 and 2 threads.

Each thread count runs in a fresh subprocess (thread pools fixed before numpy is imported,
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed, OpenMP threads pinned); ours and numpy alternate
inside it and the medians are reported. Usage:
    python bench/compare_gemm.py [--threads 1 2] [--sizes 256 512 1024 2048] [--repeats 7]
                                 [--skinny] [--json out.json]
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

# im2col convolution GEMMs (M, N, K, op): forward W.col, backward-weight dY.col^T and
# backward-input W^T.dY of LeNet- and VGG-like layers.
SKINNY = []
for _m, _n, _k in [(6, 784, 25), (16, 100, 150), (64, 4096, 288), (128, 512, 4096)]:
    SKINNY += [(_m, _n, _k, "nn"), (_m, _k, _n, "nt"), (_k, _n, _m, "tn")]

# Settings that slow OpenBLAS down on this machine; never let them reach the benchmark.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---- worker (one thread count, runs in its own process) -------------------------------------


def _numpy_threads(np, threadpoolctl) -> int | None:
    """Threads numpy's BLAS will use: from threadpoolctl, else measured as CPU time / wall."""
    if threadpoolctl is not None:
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        return blas[0]["num_threads"] if blas else None
    a = np.ones((1536, 1536), np.float32)
    a @ a
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < 0.5:
        a @ a
    return round((time.process_time() - c0) / (time.perf_counter() - t0))


def _timed_batch(fn, min_seconds: float, cooldown: float) -> float:
    """Seconds per call, over a batch of calls lasting at least min_seconds.

    Sleeps `cooldown` first: OpenBLAS's idle threads spin for a while (up to ~0.1 s) after a
    call, as do OpenMP's, and would steal the cores from the other library's batch.
    """
    time.sleep(cooldown)
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


def worker(threads: int, shapes: list, repeats: int, min_seconds: float, cooldown: float) -> dict:
    import numpy as np  # imported here: OPENBLAS_NUM_THREADS is already set

    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    import cnnkit
    from cnnkit import _core
    from cnnkit._core import _testing

    cnnkit.set_num_threads(threads)
    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    np_threads = _numpy_threads(np, threadpoolctl)
    if np_threads != threads:
        raise SystemExit(f"numpy uses {np_threads} BLAS threads, wanted {threads}")
    info = {
        "threads": threads,
        "cnnkit_threads": cnnkit.get_num_threads(),
        "numpy_threads": np_threads,
        "kernel": _core.sgemm_kernel_name(),
        "numpy": np.__version__,
        "blas": [
            {k: v for k, v in i.items() if k != "filepath"}
            for i in (threadpoolctl.threadpool_info() if threadpoolctl else [])
            if i["user_api"] == "blas"
        ],
        "env": {k: os.environ.get(k) for k in ("OMP_PROC_BIND", "OMP_PLACES", *OPENBLAS_OVERRIDES)},
    }
    rng = np.random.default_rng(0)
    rows = []
    for m, n, k, op in shapes:
        ta, tb = op[0] == "t", op[1] == "t"
        a = rng.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
        b = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
        opa, opb = (a.T if ta else a), (b.T if tb else b)  # views: numpy passes trans flags
        c_ours = np.empty((m, n), np.float32)
        c_np = np.empty((m, n), np.float32)

        def ours(a=a, b=b, ta=ta, tb=tb, c=c_ours):
            _testing.sgemm(a, b, trans_a=ta, trans_b=tb, c=c)

        def theirs(a=opa, b=opb, c=c_np):
            np.matmul(a, b, out=c)

        ours()
        theirs()
        err = float(np.max(np.abs(c_ours - c_np)) / max(1e-30, float(np.max(np.abs(c_np)))))
        _timed_batch(ours, 0.05, cooldown)  # warm up both
        _timed_batch(theirs, 0.05, cooldown)
        t_ours, t_np = [], []
        for _ in range(repeats):  # alternate so drifts in machine load hit both alike
            t_ours.append(_timed_batch(ours, min_seconds, cooldown))
            t_np.append(_timed_batch(theirs, min_seconds, cooldown))
        flops = 2.0 * m * n * k
        med_ours, med_np = statistics.median(t_ours), statistics.median(t_np)
        # Median over the alternating pairs of (numpy time / ours): each pair ran within a
        # second, so a drift in machine speed cancels inside it.
        paired = statistics.median(tn / to for to, tn in zip(t_ours, t_np, strict=True))
        rows.append(
            {
                "m": m,
                "n": n,
                "k": k,
                "op": op,
                "threads": threads,
                "ours_ms": med_ours * 1e3,
                "numpy_ms": med_np * 1e3,
                "ours_gflops": flops / med_ours * 1e-9,
                "numpy_gflops": flops / med_np * 1e-9,
                "ratio": med_np / med_ours,
                "ratio_paired": paired,
                "max_rel_diff": err,
                "ours_runs_ms": [t * 1e3 for t in t_ours],
                "numpy_runs_ms": [t * 1e3 for t in t_np],
            }
        )
    return {"info": info, "rows": rows}


# ---- driver ---------------------------------------------------------------------------------


def run_threads(threads: int, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_OVERRIDES}
    env.update(
        OPENBLAS_NUM_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        OMP_PROC_BIND="close",
        OMP_PLACES="cores",
    )
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(threads)]
    cmd += ["--repeats", str(args.repeats), "--min-seconds", str(args.min_seconds)]
    cmd += ["--cooldown", str(args.cooldown), "--sizes", *map(str, args.sizes)]
    cmd += ["--skinny"] if args.skinny else []
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def shapes_of(args) -> list:
    shapes = [(s, s, s, "nn") for s in args.sizes]
    return shapes + (SKINNY if args.skinny else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024, 2048])
    p.add_argument("--skinny", action="store_true", help="add conv-like skinny shapes")
    p.add_argument("--repeats", type=int, default=7, help="timed batches per shape (>= 5)")
    p.add_argument("--min-seconds", type=float, default=0.03, help="length of one batch")
    p.add_argument("--cooldown", type=float, default=0.25, help="idle seconds before a batch")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.repeats = max(5, args.repeats)
    if args.worker is not None:
        res = worker(args.worker, shapes_of(args), args.repeats, args.min_seconds, args.cooldown)
        print(json.dumps(res))
        return

    results = {"machine": platform.processor() or platform.machine(), "runs": []}
    for t in args.threads:
        res = run_threads(t, args)
        results["runs"].append(res)
        info = res["info"]
        print(
            f"# {t} thread(s): cnnkit kernel {info['kernel']} ({info['cnnkit_threads']} "
            f"OpenMP threads), numpy {info['numpy']} with {info['numpy_threads']} BLAS "
            f"threads: {info['blas'] or 'threadpoolctl not installed'}"
        )
    print(
        f"{'shape':>22} {'op':>3} {'thr':>4} {'ours GFLOP/s':>13} {'numpy GFLOP/s':>14} "
        f"{'ratio':>6} {'paired':>7}"
    )
    for res in results["runs"]:
        for r in res["rows"]:
            shape = f"{r['m']}x{r['n']}x{r['k']}"
            print(
                f"{shape:>22} {r['op']:>3} {r['threads']:>4} {r['ours_gflops']:13.1f} "
                f"{r['numpy_gflops']:14.1f} {r['ratio']:6.2f} {r['ratio_paired']:7.2f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
