"""cnnkit vs PyTorch on the CPU, side by side in one run: training images/s (forward, loss,
backward, SGD-momentum step) and inference images/s for LeNet-5, a CIFAR-style CNN and a
single conv layer, with 1 and 2 threads.

Each measurement runs in its own subprocess (the two libraries bring their own OpenMP
runtimes), cnnkit and PyTorch alternate, and the table reports the median of --repeats runs.

    python bench/compare_torch.py --threads 1 2 --repeats 5 --json bench/results/compare_torch.json
    cnnkit bench --threads 1 2            (the same, from the command line)
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

import numpy as np

# name -> (input shape per image, builder key)
NETS = {
    "lenet5": (1, 28, 28),
    "cifar": (3, 32, 32),
    "conv": (32, 32, 32),
}

CASES = [
    # (net, mode, batch)
    ("lenet5", "train", 64),
    ("lenet5", "train", 256),
    ("lenet5", "infer", 256),
    ("cifar", "train", 128),
    ("conv", "forward", 64),
    ("conv", "fwdbwd", 64),
]


# ---- model builders -----------------------------------------------------------------------


def build_cnnkit(net: str):
    import cnnkit as ck

    L = ck.layers
    if net == "lenet5":
        return ck.models.lenet5()
    if net == "cifar":
        layers = [
            L.Conv2d(3, 32, 3, padding=1),
            L.ReLU(),
            L.Conv2d(32, 32, 3, padding=1),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Conv2d(32, 64, 3, padding=1),
            L.ReLU(),
            L.Conv2d(64, 64, 3, padding=1),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Flatten(),
            L.Linear(64 * 8 * 8, 512),
            L.ReLU(),
            L.Linear(512, 10),
        ]
    else:
        layers = [L.Conv2d(32, 64, 3, padding=1)]
    return ck.Sequential(layers)


def build_torch(net: str):
    import torch.nn as nn

    if net == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )
    if net == "cifar":
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )
    return nn.Sequential(nn.Conv2d(32, 64, 3, padding=1))


# ---- one measurement (runs in a subprocess) -------------------------------------------------


def _data(net: str, batch: int, nbatches: int = 8):
    rng = np.random.default_rng(0)
    xs = [rng.random((batch, *NETS[net]), dtype=np.float32) for _ in range(nbatches)]
    ys = [rng.integers(0, 10, batch).astype(np.int64) for _ in range(nbatches)]
    return xs, ys


def worker(lib: str, net: str, mode: str, batch: int, threads: int, seconds: float) -> dict:
    xs, ys = _data(net, batch)
    if lib == "cnnkit":
        import cnnkit as ck

        ck.set_num_threads(threads)
        model = build_cnnkit(net)
        m = model._net
        if mode == "train":
            m.set_loss("cross_entropy")
            m.set_optimizer("sgd", {"lr": 0.01, "momentum": 0.9})

            def step(i):
                m.train_step(xs[i], ys[i])
        elif mode == "fwdbwd":

            def step(i):
                out = m.forward(xs[i], True)
                m.backward(np.ones_like(out), False)
        else:

            def step(i):
                m.forward(xs[i], False)
    else:
        import torch

        torch.set_num_threads(threads)
        model = build_torch(net)
        txs = [torch.from_numpy(x) for x in xs]
        tys = [torch.from_numpy(y) for y in ys]
        if mode == "train":
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            lossf = torch.nn.CrossEntropyLoss()

            def step(i):
                opt.zero_grad()
                lossf(model(txs[i]), tys[i]).backward()
                opt.step()
        elif mode == "fwdbwd":

            def step(i):
                model.zero_grad()
                out = model(txs[i])
                out.backward(torch.ones_like(out))
        else:
            model.eval()

            def step(i):
                with torch.no_grad():
                    model(txs[i])

    for i in range(3):  # warm-up: first-touch allocations, thread pools
        step(i % len(xs))
    n = 0
    t0 = time.perf_counter()
    while True:
        step(n % len(xs))
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 3:
            break
    return {"images_per_sec": n * batch / dt, "ms_per_step": 1000 * dt / n, "steps": n}


def run_worker(lib, net, mode, batch, threads, seconds) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        OMP_PROC_BIND="close",
        OMP_PLACES="cores",
        MKL_NUM_THREADS=str(threads),
    )
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        lib,
        net,
        mode,
        str(batch),
        str(threads),
        str(seconds),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        lib, net, mode, batch, threads, seconds = argv[1:7]
        print(json.dumps(worker(lib, net, mode, int(batch), int(threads), float(seconds))))
        return
    ap = argparse.ArgumentParser(
        prog="cnnkit bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per run")
    ap.add_argument("--cases", nargs="*", help="subset, e.g. lenet5:train:64")
    ap.add_argument("--json", help="write the table as JSON here")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("compare_torch: PyTorch is not installed (pip install torch)")
    import cnnkit

    cases = CASES
    if args.cases:
        want = {tuple(c.split(":")) for c in args.cases}
        cases = [c for c in CASES if (c[0], c[1], str(c[2])) in want]
    rows = []
    print(
        f"cnnkit {cnnkit.__version__} vs torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus; median of {args.repeats} x {args.seconds:.1f} s runs"
    )
    header = (
        f"{'net':8} {'mode':8} {'batch':>5} {'thr':>3} "
        f"{'cnnkit img/s':>13} {'torch img/s':>12} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for net, mode, batch in cases:
        for t in args.threads:
            ours, theirs = [], []
            for r in range(args.repeats):  # alternate A/B so drift hits both
                pair = [("cnnkit", ours), ("torch", theirs)]
                if r % 2:
                    pair.reverse()
                for lib, dst in pair:
                    dst.append(run_worker(lib, net, mode, batch, t, args.seconds)["images_per_sec"])
            a, b = statistics.median(ours), statistics.median(theirs)
            rows.append(
                {
                    "net": net,
                    "mode": mode,
                    "batch": batch,
                    "threads": t,
                    "cnnkit_images_per_sec": a,
                    "torch_images_per_sec": b,
                    "ratio": a / b,
                    "cnnkit_runs": ours,
                    "torch_runs": theirs,
                }
            )
            print(
                f"{net:8} {mode:8} {batch:5d} {t:3d} {a:13.0f} {b:12.0f} {a / b:6.2f}", flush=True
            )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {
                    "cnnkit": cnnkit.__version__,
                    "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"),
                    "repeats": args.repeats,
                    "rows": rows,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
