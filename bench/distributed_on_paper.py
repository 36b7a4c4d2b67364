"""On paper: the data-parallel step time at N processes over a network, from a measured step.

    python bench/distributed_on_paper.py --step-ms lenet5=5.9 resnet20=2100 resnet18=9000

Model: a ring all-reduce of the flat float32 gradient buffer moves 2 (N - 1) / N x its bytes
through every link and takes 2 (N - 1) message steps, so without overlap

    step(N) = compute + 2 (N - 1) / N x bytes / bandwidth + 2 (N - 1) x latency

with `compute` the measured single-process step at the per-process batch (it does not
change with N: data parallelism keeps the per-process batch fixed). Efficiency is
compute / step(N); the table marks where it drops below 50% ("scaling stops"). Overlapping
the all-reduce with the backward (bucketed, as DDP and Horovod do) could hide up to the
backward's share of `compute` (about two thirds) of the communication.
"""

from __future__ import annotations

import argparse

import cnnkit as ck

PARAMS = {
    "lenet5": lambda: ck.models.lenet5().num_parameters(),
    "resnet20": lambda: ck.models.resnet20().num_parameters(),
    "resnet18": lambda: ck.models.resnet18().num_parameters(),
}
LINKS = {"10 Gb/s": 10e9 / 8, "25 Gb/s": 25e9 / 8, "100 Gb/s": 100e9 / 8}
NS = (2, 4, 8, 16, 32, 64, 128, 256)


def step_ms(compute_ms: float, nbytes: int, n: int, bw: float, latency_s: float) -> float:
    comm = 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * latency_s
    return compute_ms + 1e3 * comm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step-ms", nargs="+", required=True, metavar="NET=MS",
                    help="measured single-process step time per net (ms)")
    ap.add_argument("--latency-us", type=float, default=10.0,
                    help="per-message latency (TCP over Ethernet: ~10 us; RDMA: ~2 us)")
    a = ap.parse_args()
    lat = a.latency_us * 1e-6
    for item in a.step_ms:
        net, _, ms = item.partition("=")
        compute = float(ms)
        nbytes = 4 * PARAMS[net]()
        print(f"\n{net}: {nbytes / 1e6:.2f} MB of gradients, measured step {compute:g} ms")
        print("| link | " + " | ".join(f"N={n}" for n in NS) + " | scaling stops |")
        print("|---|" + "---|" * (len(NS) + 1))
        for name, bw in LINKS.items():
            cells, stop = [], None
            for n in NS:
                t = step_ms(compute, nbytes, n, bw, lat)
                eff = compute / t
                cells.append(f"{t:.3g} ms ({100 * eff:.0f}%)" if t < 100 else
                             f"{t:.0f} ms ({100 * eff:.0f}%)")
                if stop is None and eff < 0.5:
                    stop = n
            print(f"| {name} | " + " | ".join(cells) + f" | {f'N={stop}' if stop else '> 256'} |")


if __name__ == "__main__":
    main()
