"""A loop of the native training step for profiling: `perf record -g python
bench/profile_step.py NET BATCH [SECONDS] [THREADS]` (NET as in cnnkit.bench: lenet5, cifar,
conv, resnet20), then `perf report --no-children --sort symbol`. Prints the step time."""

import sys
import time

import cnnkit as ck
from cnnkit import bench


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    net, batch = argv[0], int(argv[1])
    seconds = float(argv[2]) if len(argv) > 2 else 15.0
    ck.set_num_threads(int(argv[3]) if len(argv) > 3 else 1)
    m = bench.build_cnnkit(net)._net
    m.set_loss("cross_entropy")
    m.set_optimizer("sgd", {"lr": 0.01, "momentum": 0.9})
    xs, ys = bench._data(net, batch)
    for _ in range(3):
        m.train_step(xs[0], ys[0])
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        m.train_step(xs[n % len(xs)], ys[n % len(ys)])
        n += 1
    print(f"{net} batch {batch}: {n} steps, {(time.perf_counter() - t0) / n * 1e3:.2f} ms a step")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
