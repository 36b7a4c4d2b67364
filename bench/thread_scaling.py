"""2-thread over 1-thread training throughput of the native step, in one process: the same
network, ``cnnkit.set_num_threads`` switched between 1 and 2 round by round (alternating which
goes first); the median of the per-round ratios. Networks and data as in cnnkit.bench.

python bench/thread_scaling.py --cases lenet5:256 cifar:128 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import cnnkit as ck
from cnnkit import bench


def measure(net_name: str, batch: int, rounds: int, seconds: float) -> dict:
    net = bench.build_cnnkit(net_name)._net
    net.set_loss("cross_entropy")
    net.set_optimizer("sgd", {"lr": 0.01, "momentum": 0.9})
    xs, ys = bench._data(net_name, batch)
    t0 = time.perf_counter()
    net.train_step(xs[0], ys[0])
    steps = max(3, int(seconds / max(time.perf_counter() - t0, 1e-6)))

    def run(threads: int) -> float:
        ck.set_num_threads(threads)
        net.train_step(xs[0], ys[0])
        t0 = time.perf_counter()
        for i in range(steps):
            net.train_step(xs[i % len(xs)], ys[i % len(xs)])
        return steps * batch / (time.perf_counter() - t0)

    one, two, ratio = [], [], []
    for r in range(rounds):
        a, b = (run(1), run(2)) if r % 2 == 0 else (run(2), run(1))[::-1]
        one.append(a)
        two.append(b)
        ratio.append(b / a)
    return {"one": statistics.median(one), "two": statistics.median(two),
            "ratio": statistics.median(ratio), "ratios": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["lenet5:256", "cifar:128"],
                    metavar="NET:BATCH", help="networks (cnnkit.bench's) and batch sizes")
    ap.add_argument("--rounds", type=int, default=9, help="1-thread/2-thread pairs (median)")
    ap.add_argument("--seconds", type=float, default=1.0, help="about how long one run takes")
    args = ap.parse_args()
    print(f"{'net':8} {'batch':>5} {'1 thr img/s':>11} {'2 thr img/s':>11} {'2/1':>5}  rounds")
    for case in args.cases:
        name, batch = case.split(":")
        r = measure(name, int(batch), args.rounds, args.seconds)
        rs = " ".join(f"{v:.2f}" for v in r["ratios"])
        print(f"{name:8} {int(batch):5d} {r['one']:11.0f} {r['two']:11.0f} {r['ratio']:5.2f}  {rs}",
              flush=True)


if __name__ == "__main__":
    main()
