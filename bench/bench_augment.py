"""An augmented vs a plain epoch through Trainer.fit, prefetch off and on.

    python bench/bench_augment.py [--runs 5] [--threads 2]

Configurations: LeNet-5 on MNIST-shaped uint8 data (1x28x28, RandomCrop(28, padding=2)) and a
small CNN on CIFAR-shaped data (3x32x32, RandomCrop(32, padding=4) + RandomHorizontalFlip).
Each run is one epoch; the runs of all variants alternate, and the table gives the median
seconds per epoch and the ratio to the plain epoch without prefetch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import cnnkit as ck
from cnnkit import transforms as T
from cnnkit.bench import cpu_model


def small_cifar_cnn() -> ck.Sequential:
    return ck.Sequential(
        ck.Conv2d(3, 16, 3, padding=1), ck.ReLU(), ck.MaxPool2d(2),
        ck.Conv2d(16, 32, 3, padding=1), ck.ReLU(), ck.MaxPool2d(2),
        ck.Flatten(), ck.Linear(32 * 8 * 8, 10))


CONFIGS = {
    "lenet5 1x28x28": (ck.models.lenet5, (1, 28, 28),
                       lambda: T.Compose([T.RandomCrop(28, padding=2)]), 12000),
    "small CNN 3x32x32": (small_cifar_cnn, (3, 32, 32),
                          lambda: T.Compose([T.RandomCrop(32, padding=4),
                                             T.RandomHorizontalFlip()]), 6000),
}


def epoch_time(factory, x, y, tf, prefetch, batch_size):
    ck.manual_seed(0)
    tr = ck.Trainer(factory(), optimizer="sgd")
    loader = ck.data.DataLoader(x, y, batch_size=batch_size, shuffle=True, transform=tf,
                                prefetch=prefetch)
    t0 = time.perf_counter()
    tr.fit(loader, epochs=1, verbose=0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    if args.threads:
        ck.set_num_threads(args.threads)
    print(f"# {cpu_model()}, {ck.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.runs} alternating runs, median s/epoch")
    print("| model, input | samples | plain | plain + prefetch 2 | augmented | "
          "augmented + prefetch 2 |")
    print("|---|---|---|---|---|---|")
    g = np.random.default_rng(0)
    for name, (factory, shape, make_tf, n) in CONFIGS.items():
        x = g.integers(0, 256, (n, *shape)).astype(np.uint8)
        y = g.integers(0, 10, n).astype(np.int64)
        variants = [(None, 0), (None, 2), (make_tf(), 0), (make_tf(), 2)]
        epoch_time(factory, x[:512], y[:512], variants[2][0], 0, args.batch_size)  # warm up
        times: list[list[float]] = [[] for _ in variants]
        for _ in range(args.runs):
            for i, (tf, pf) in enumerate(variants):
                times[i].append(epoch_time(factory, x, y, tf, pf, args.batch_size))
        med = [statistics.median(t) for t in times]
        cells = " | ".join(f"{m:.2f} s ({m / med[0]:.2f}x)" for m in med)
        print(f"| {name} | {n} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
