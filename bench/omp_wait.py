"""How cnnkit's OpenMP wait policy and another thread pool in the same process slow each other:
LeNet-5 training steps (batch 64, 2 threads) alternate with numpy matmuls (384x384, OpenBLAS's
own pthreads pool) or small PyTorch convolutions (which share cnnkit's libgomp), or with nothing;
each side is timed interleaved and alone. Every policy runs in its own process (libgomp reads
its settings once), the policies alternate, medians over the processes.

python bench/omp_wait.py --spin 3000 10000 300000 passive --other numpy torch none --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(spin: str, other: str, rounds: int) -> dict:
    if spin == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    elif spin != "cnnkit":
        os.environ["GOMP_SPINCOUNT"] = spin  # 300000: libgomp's own default
    import numpy as np

    import cnnkit as ck

    ck.set_num_threads(2)
    rng = np.random.default_rng(0)
    net = ck.models.lenet5()._net
    net.set_loss("cross_entropy")
    net.set_optimizer("sgd", {"lr": 0.01, "momentum": 0.9})
    x = rng.random((64, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 64).astype(np.int64)
    if other == "numpy":
        a = rng.random((384, 384), dtype=np.float32)
        b = rng.random((384, 384), dtype=np.float32)

        def op() -> None:
            a @ b
    elif other == "torch":
        import torch

        torch.set_num_threads(2)
        conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        tx = torch.randn(8, 16, 28, 28)

        def op() -> None:
            with torch.no_grad():
                conv(tx)
    else:
        def op() -> None:
            pass
    for _ in range(20):
        net.train_step(x, y)
        op()
    mine, theirs, mine_alone, theirs_alone = [], [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        net.train_step(x, y)
        t1 = time.perf_counter()
        op()
        mine.append(t1 - t0)
        theirs.append(time.perf_counter() - t1)
    for _ in range(rounds):
        t0 = time.perf_counter()
        net.train_step(x, y)
        mine_alone.append(time.perf_counter() - t0)
    for _ in range(rounds):
        t0 = time.perf_counter()
        op()
        theirs_alone.append(time.perf_counter() - t0)
    ms = lambda v: 1e3 * statistics.median(v)  # noqa: E731
    return {"step": ms(mine), "step_alone": ms(mine_alone), "op": ms(theirs),
            "op_alone": ms(theirs_alone), "policy": ck._openmp.wait_policy()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spin", nargs="+", default=["3000", "10000", "300000", "passive"],
                    help="GOMP_SPINCOUNT values, 'passive' (OMP_WAIT_POLICY) or 'cnnkit' "
                         "(cnnkit's default)")
    ap.add_argument("--other", nargs="+", default=["numpy", "torch", "none"],
                    choices=("numpy", "torch", "none"), help="what runs between the steps")
    ap.add_argument("--repeats", type=int, default=5, help="processes per configuration")
    ap.add_argument("--rounds", type=int, default=200, help="step/op pairs per process")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    print(f"{'other':6} {'spin':>8}  {'cnnkit step ms':>14} {'(alone)':>8}  {'other op ms':>11} "
          f"{'(alone)':>8}")
    for other in args.other:
        res: dict[str, list[dict]] = {s: [] for s in args.spin}
        for r in range(args.repeats):
            k = r % len(args.spin)
            for spin in args.spin[k:] + args.spin[:k]:
                out = subprocess.run([sys.executable, __file__, "--worker", spin, other,
                                      str(args.rounds)], env=env, capture_output=True,
                                     text=True, check=True)
                res[spin].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for spin, runs in res.items():
            med = {k: statistics.median(x[k] for x in runs)
                   for k in ("step", "step_alone", "op", "op_alone")}
            print(f"{other:6} {spin:>8}  {med['step']:14.3f} {med['step_alone']:8.3f}  "
                  f"{med['op']:11.3f} {med['op_alone']:8.3f}", flush=True)


if __name__ == "__main__":
    main()
