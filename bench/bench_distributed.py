"""Data-parallel scaling on one machine: N processes x T threads through Trainer.fit.

    python bench/bench_distributed.py --threads 2                  # 1 process x 2 threads
    mpirun -n 2 python bench/bench_distributed.py --threads 1      # 2 processes x 1 thread

Trains on synthetic data of the net's input shape (the numbers do not depend on the values)
for --epochs epochs of --samples samples in total (each process gets its shard), and prints,
from rank 0, the images/s of the median epoch (all processes together) and the share of the
step spent in the gradient all-reduce (time inside the reducer / time of the epoch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import cnnkit as ck
from cnnkit import distributed as dist
from cnnkit.bench import cpu_model

NETS = {
    "lenet5": ((1, 28, 28), 10, lambda: ck.models.lenet5()),
    "cifar": ((3, 32, 32), 10, None),
    "resnet20": ((3, 32, 32), 10, lambda: ck.models.resnet20()),
}


def cifar_net() -> ck.Sequential:
    """The CIFAR-style CNN of `cnnkit bench` and docs/performance.md."""
    from cnnkit.bench import build_cnnkit

    return build_cnnkit("cifar")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", choices=sorted(NETS), default="lenet5")
    ap.add_argument("--batch", type=int, default=64, help="batch size per process")
    ap.add_argument("--samples", type=int, default=16384, help="samples per epoch, all ranks")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="append the result as a JSON line here")
    a = ap.parse_args()
    dist.init()
    ck.set_num_threads(a.threads)
    shape, classes, build = NETS[a.net]
    ck.manual_seed(0)
    model = build() if build is not None else cifar_net()
    rng = np.random.default_rng(0)
    x = rng.random((a.samples, *shape), dtype=np.float32)
    y = rng.integers(0, classes, a.samples)
    trainer = ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.01, momentum=0.9), device="cpu")

    spent = [0.0]
    reduce = dist._reduce_gradients

    def timed(grads: np.ndarray) -> None:
        t0 = time.perf_counter()
        reduce(grads)
        spent[0] += time.perf_counter() - t0

    dist._reduce_gradients = timed
    trainer.fit(x, y, epochs=1, batch_size=a.batch, verbose=0)  # warm-up
    rates, shares = [], []
    for _ in range(a.epochs):
        spent[0] = 0.0
        h = trainer.fit(x, y, epochs=trainer.epoch + 1, batch_size=a.batch, verbose=0)
        t = h.history["time"][-1]
        share = np.array([spent[0] / t])
        dist.all_reduce(share, "max")
        rates.append(h.history["images_per_sec"][-1])
        shares.append(float(share[0]))
    if dist.is_main():
        r = {"net": a.net, "processes": dist.world_size(), "threads": a.threads,
             "batch_per_process": a.batch, "images_per_sec": statistics.median(rates),
             "allreduce_share": statistics.median(shares), "params": model.num_parameters(),
             "cpu": cpu_model(), "kernels": ck.get_cpu_kernels()}
        print(json.dumps(r))
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
