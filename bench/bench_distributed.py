"""Data-parallel scaling on one machine: N processes x T threads through Trainer.fit.

    python bench/bench_distributed.py --threads 2                  # 1 process x 2 threads
    mpirun -n 2 python bench/bench_distributed.py --threads 1      # 2 processes x 1 thread
    mpirun -n 2 python bench/bench_distributed.py --bucket-mb 0,1e-6,0.0625   # overlap off/on

Trains on synthetic data of the net's input shape (the numbers do not depend on the values)
for --epochs epochs of --samples samples in total (each process gets its shard), and prints,
from rank 0, per gradient bucket size (``distributed.init(bucket_mb=...)``; 0: one all-reduce
after the backward), the images/s of the median epoch (all processes together), the median
step time, the share of the epoch spent inside the gradient reducer (with overlap: on the
communication thread, while the backward goes on) and the 1-minute load average seen. With
several bucket sizes, the epochs alternate between them (round r starts at the r-th size),
and each size's images/s is also given as the median, over the rounds, of its ratio to the
first size's in the same round (robust to the load drifting between rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import cnnkit as ck
from cnnkit import _core
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
    ap.add_argument("--bucket-mb", default="0",
                    help="comma-separated gradient bucket sizes in MiB (0: no overlap)")
    ap.add_argument("--noop-reducer", action="store_true",
                    help="one process: a reducer that does nothing, to time the mechanism "
                         "(the bucket thread and its GIL hand-offs) without MPI")
    ap.add_argument("--sync-bn", action="store_true",
                    help="BatchNorm layers as SyncBatchNorm (statistics summed over the ranks)")
    ap.add_argument("--json", default=None, help="append the result as a JSON line here")
    a = ap.parse_args()
    dist.init()
    ck.set_num_threads(a.threads)
    shape, classes, build = NETS[a.net]
    ck.manual_seed(0)
    model = build() if build is not None else cifar_net()
    if a.sync_bn:
        model = ck.SyncBatchNorm.convert_sync_batchnorm(model)
    rng = np.random.default_rng(0)
    x = rng.random((a.samples, *shape), dtype=np.float32)
    y = rng.integers(0, classes, a.samples)
    trainer = ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.01, momentum=0.9), device="cpu")

    if a.noop_reducer and dist.world_size() > 1:
        raise SystemExit("--noop-reducer: run it in one process")
    spent = [0.0]
    reduce = (lambda g: None) if a.noop_reducer else dist._reduce_gradients

    def timed(grads: np.ndarray) -> None:
        t0 = time.perf_counter()
        reduce(grads)
        spent[0] += time.perf_counter() - t0

    dist._reduce_gradients = timed
    buckets = [float(b) for b in a.bucket_mb.split(",")]
    steps = a.samples // (dist.world_size() * a.batch)

    def use(b: float) -> None:
        dist.init(bucket_mb=b)
        if a.noop_reducer:  # (the Trainer sets the reducer only in a distributed fit)
            _core.set_grad_reducer(model._net, timed, 1.0, int(b * (1 << 20)))
        counts[b] = len(_core.grad_buckets(model._net, int(b * (1 << 20))
                                           if a.noop_reducer else dist._bucket_bytes()))

    counts: dict[float, int] = {}
    use(buckets[0])
    trainer.fit(x, y, epochs=1, batch_size=a.batch, verbose=0)  # warm-up
    runs: dict[float, list[tuple[float, float, float, float]]] = {b: [] for b in buckets}
    for r in range(a.epochs):
        for b in buckets[r % len(buckets):] + buckets[:r % len(buckets)]:
            use(b)
            spent[0] = 0.0
            h = trainer.fit(x, y, epochs=trainer.epoch + 1, batch_size=a.batch, verbose=0)
            t = h.history["time"][-1]
            share = np.array([spent[0] / t])
            dist.all_reduce(share, "max")
            runs[b].append((h.history["images_per_sec"][-1], 1e3 * t / steps, float(share[0]),
                            _load1()))
    if dist.is_main():
        for b in buckets:
            rates, step_ms, shares, loads = zip(*runs[b], strict=True)
            # against the first bucket size in the same round (adjacent epochs: drift cancels)
            ratio = statistics.median(v[0] / f[0] for v, f in
                                      zip(runs[b], runs[buckets[0]], strict=True))
            r = {"net": a.net, "processes": dist.world_size(), "threads": a.threads,
                 "batch_per_process": a.batch, "bucket_mb": b, "noop_reducer": a.noop_reducer,
                 "buckets": counts[b],
                 "images_per_sec": statistics.median(rates),
                 "step_ms": statistics.median(step_ms),
                 "allreduce_share": statistics.median(shares),
                 "vs_first_bucket_size": ratio,
                 "load1": [min(loads), max(loads)], "epochs": len(rates),
                 "all_images_per_sec": [round(v) for v in rates],
                 "params": model.num_parameters(), "cpu": cpu_model(),
                 "kernels": ck.get_cpu_kernels()}
            print(json.dumps(r))
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(r) + "\n")


def _load1() -> float:
    """The 1-minute load average (other work on the machine), -1 where it is unknown."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return -1.0

if __name__ == "__main__":
    main()
