"""cnnkit vs PyTorch on the CPU, side by side in one run: training images/s (forward, loss,
backward, SGD-momentum step) and inference images/s for LeNet-5, a CIFAR-style CNN and a
single conv layer, with 1 and 2 threads.

Each measurement runs in its own subprocess (the two libraries bring their own OpenMP
runtimes), cnnkit and PyTorch alternate, and the table reports the median of --repeats runs.
``--via step`` (the default) times cnnkit's native step called from a plain loop over 8
prepared float32 batches, as PyTorch's loop is; ``--via fit`` times training through
``Trainer.fit`` instead (uint8 images shuffled, gathered and scaled per epoch, progress bar on,
the data checks of every fit call included); ``--via step fit`` measures both. The header says
the CPU model and the CPU kernel set in use.

    cnnkit bench --threads 1 2 --repeats 5 --json bench/results/compare_torch.json
    cnnkit bench --via step fit --cases lenet5:train:64 lenet5:train:256
    python -m cnnkit.bench ...            (the same)
    python bench/compare_torch.py ...     (the same, with --via step fit by default)
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

from .cli import _positive_float, _positive_int

# name -> (input shape per image, builder key)
NETS = {
    "lenet5": (1, 28, 28),
    "cifar": (3, 32, 32),
    "conv": (32, 32, 32),
    "resnet20": (3, 32, 32),
}

# infer and forward time the same thing (inference, no gradients); both names stay in results.
MODES = ("train", "infer", "forward", "fwdbwd")

VIAS = ("step", "fit")

CASES = [
    # (net, mode, batch)
    ("lenet5", "train", 64),
    ("lenet5", "train", 256),
    ("lenet5", "infer", 256),
    ("cifar", "train", 128),
    ("conv", "forward", 64),
    ("conv", "fwdbwd", 64),
    ("resnet20", "train", 128),
]


# ---- model builders -----------------------------------------------------------------------


def build_cnnkit(net: str):
    import cnnkit as ck

    L = ck.layers
    if net == "lenet5":
        return ck.models.lenet5()
    if net == "resnet20":
        return ck.models.resnet20()
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
    if net == "resnet20":
        return _torch_resnet20()
    return nn.Sequential(nn.Conv2d(32, 64, 3, padding=1))


def _torch_resnet20():
    """ck.models.resnet20 in PyTorch: the same blocks, projection shortcuts and names."""
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                             nn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    blocks, cin = [], 16
    for s, cout in enumerate([16, 32, 64]):
        for b in range(3):
            blocks.append(Block(cin, cout, 2 if s > 0 and b == 0 else 1))
            cin = cout
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


# ---- one measurement (runs in a subprocess) -------------------------------------------------


def _data(net: str, batch: int, nbatches: int = 8):
    rng = np.random.default_rng(0)
    xs = [rng.random((batch, *NETS[net]), dtype=np.float32) for _ in range(nbatches)]
    ys = [rng.integers(0, 10, batch).astype(np.int64) for _ in range(nbatches)]
    return xs, ys


def _images(net: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images of the net's input shape ((N, 28, 28) for LeNet-5, as MNIST comes) and
    labels: what Trainer.fit is given."""
    rng = np.random.default_rng(0)
    shape = (28, 28) if net == "lenet5" else NETS[net]
    return (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int64))


def fit_worker(net: str, batch: int, threads: int, seconds: float) -> dict:
    """Training images/s through Trainer.fit: epochs of uint8 images (each fit call one epoch,
    verbose=1 as fit's default, shuffled), the same SGD-momentum step as the native worker.
    An epoch is sized from a warm-up to last about a quarter of `seconds`."""
    import cnnkit as ck

    ck.set_num_threads(threads)
    trainer = ck.Trainer(build_cnnkit(net), loss="cross_entropy",
                         optimizer=ck.optim.SGD(lr=0.01, momentum=0.9), device="cpu")
    x, y = _images(net, 4 * batch)
    t0 = time.perf_counter()
    trainer.fit(x, y, epochs=1, batch_size=batch, verbose=0)  # warm-up, and the step's time
    per_batch = (time.perf_counter() - t0) / 4
    steps = max(4, int(seconds / 4 / max(per_batch, 1e-6)))
    x, y = _images(net, steps * batch)
    # warm-up of the progress bar path on the timed arrays themselves: what fit sets up once per
    # dataset (the native feed's buffers) is not in the timed epochs, as the native worker's
    # warm-up steps keep its one-time costs out
    trainer.fit(x, y, epochs=trainer.epoch + 1, batch_size=batch, verbose=1)
    n = 0
    t0 = time.perf_counter()
    while True:
        trainer.fit(x, y, epochs=trainer.epoch + 1, batch_size=batch, verbose=1)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 2:
            break
    return {"images_per_sec": n * len(x) / dt, "ms_per_step": 1000 * dt / (n * steps),
            "steps": n * steps}


def worker(lib: str, net: str, mode: str, batch: int, threads: int, seconds: float,
           via: str = "step") -> dict:
    if via == "fit":
        if lib != "cnnkit" or mode != "train":
            raise ValueError("--via fit times cnnkit training (train cases) only")
        return fit_worker(net, batch, threads, seconds)
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


def run_worker(lib: str, net: str, mode: str, batch: int, threads: int, seconds: float,
               via: str = "step") -> dict:
    """One measurement in a fresh interpreter, started as a module (``python -m cnnkit.bench``,
    never as a script: a script's directory would go first on sys.path)."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        OMP_PROC_BIND="close",
        OMP_PLACES="cores",
        MKL_NUM_THREADS=str(threads),
        PYTHONSAFEPATH="1",  # nor the current directory (Python 3.11+)
    )
    if lib == "torch" and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & env.keys():
        # The worker imports cnnkit, whose libgomp PyTorch then shares: keep libgomp's own
        # default spin (300,000) for PyTorch rather than cnnkit's bounded one (cnnkit._openmp).
        env["GOMP_SPINCOUNT"] = "300000"
    cmd = [sys.executable, "-m", "cnnkit.bench", "--worker", lib, net, mode, str(batch),
           str(threads), str(seconds), via]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        what = f"the {lib} worker" + (" (via fit)" if via == "fit" else "")
        raise RuntimeError(f"{what} for {net}:{mode}:{batch} with {threads} thread(s) "
                           f"failed: {lines[-1]}")  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- command line -------------------------------------------------------------------------


def _case(text: str) -> tuple[str, str, int]:
    """argparse type: NET:MODE:BATCH, e.g. lenet5:train:64."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in NETS or parts[1] not in MODES:
        raise argparse.ArgumentTypeError(
            f"expected NET:MODE:BATCH with NET one of {', '.join(NETS)} and MODE one of "
            f"{', '.join(MODES)}, got {text!r}"
        )
    if parts[0] == "conv" and parts[1] == "train":
        # a single layer has no classifier output to train against a loss
        raise argparse.ArgumentTypeError(
            f"{text!r}: conv is one convolution layer, not a classifier; time its training "
            "pass as conv:fwdbwd:BATCH (forward + backward) or its inference as conv:forward:BATCH"
        )
    return parts[0], parts[1], _positive_int(parts[2])


def add_arguments(ap: argparse.ArgumentParser, via: tuple[str, ...] = ("step",)) -> None:
    """The options of ``cnnkit bench`` and ``bench/compare_torch.py`` (one definition); `via`
    is the default of --via."""
    ap.add_argument("--threads", type=_positive_int, nargs="+", default=[1, 2], metavar="N",
                    help="thread counts to measure, each in its own run (default: 1 2)")
    ap.add_argument("--repeats", type=_positive_int, default=5,
                    help="runs per library and configuration; the table shows the median "
                         "(default: 5)")
    ap.add_argument("--seconds", type=_positive_float, default=2.0,
                    help="timed seconds per run, after 3 warm-up steps; at least 3 timed steps "
                         "run whatever this says (default: 2.0)")
    ap.add_argument("--cases", type=_case, nargs="+", default=None, metavar="NET:MODE:BATCH",
                    help="what to measure instead of the default table, e.g. lenet5:train:64 "
                         f"(NET: {', '.join(NETS)}; MODE: {', '.join(MODES)})")
    ap.add_argument("--via", choices=VIAS, nargs="+", default=list(via),
                    help="how cnnkit trains: 'step', the native step from a plain loop over "
                         "prepared batches, or 'fit', the whole Trainer.fit path (uint8 data, "
                         "shuffling, progress bar); both give a column each (default: "
                         f"{' '.join(via)}). fit applies to train cases only")
    ap.add_argument("--json", default=None, metavar="FILE",
                    help="also write the table, with every run, as JSON to FILE")


def build_parser(prog: str = "cnnkit bench",
                 via: tuple[str, ...] = ("step",)) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap, via)
    return ap


def cpu_model() -> str:
    """'AMD EPYC 9R14 (family 25, model 17)' from /proc/cpuinfo's first processor; the
    platform's processor name elsewhere."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


def kernel_set() -> str:
    """The CPU kernel set cnnkit runs ('avx512', 'avx2', 'generic'), with the GEMM kernel's
    name where the runtime reports it."""
    from . import _core

    parts = []
    if hasattr(_core, "get_cpu_kernels"):
        parts.append(str(_core.get_cpu_kernels()))
    if hasattr(_core, "sgemm_kernel_name"):
        parts.append(f"sgemm {_core.sgemm_kernel_name()}")
    if not parts:
        parts.append(str(_core.cpu_features()))
    return ", ".join(parts)


def wait_policy() -> str:
    """How cnnkit's OpenMP threads wait between parallel regions (cnnkit._openmp)."""
    from . import _openmp

    return _openmp.wait_policy()


def run(args: argparse.Namespace) -> int:
    """Measure and print the table; returns the exit status (1 without PyTorch). A worker that
    fails raises RuntimeError with its last line of error output."""
    try:
        import torch
    except ImportError:
        print("cnnkit bench: PyTorch is not installed (pip install torch); it is what cnnkit "
              "is compared with", file=sys.stderr)  # fmt: skip
        return 1
    import cnnkit

    cases = [tuple(c) for c in args.cases] if args.cases else CASES
    vias = list(dict.fromkeys(getattr(args, "via", None) or ["step"]))
    rows = []
    print(
        f"cnnkit {cnnkit.__version__} vs torch {torch.__version__}; {cpu_model()}, "
        f"{os.cpu_count()} cpus; cnnkit CPU kernels: {kernel_set()}; OpenMP wait: "
        f"{wait_policy()}; median of {args.repeats} x {args.seconds:g} s runs"
    )
    cols = "".join(f" {'cnnkit ' + v + ' img/s':>17}" for v in vias)
    ratios = "".join(f" {(v + ' ratio') if len(vias) > 1 else 'ratio':>10}" for v in vias)
    header = f"{'net':8} {'mode':8} {'batch':>5} {'thr':>3}{cols} {'torch img/s':>12}{ratios}"
    print(header)
    print("-" * len(header))
    for net, mode, batch in cases:
        mine = [v for v in vias if v == "step" or mode == "train"]  # fit trains only
        if not mine:
            print(f"{net:8} {mode:8} {batch:5d}     (skipped: --via fit times train cases)")
            continue
        for t in args.threads:
            ours: dict[str, list[float]] = {v: [] for v in mine}
            theirs: list[float] = []
            for r in range(args.repeats):  # alternate A/B so drift hits both
                jobs = [("cnnkit", v, ours[v]) for v in mine] + [("torch", "step", theirs)]
                if r % 2:
                    jobs.reverse()
                for lib, via, dst in jobs:
                    dst.append(run_worker(lib, net, mode, batch, t, args.seconds,
                                          via)["images_per_sec"])
            b = statistics.median(theirs)
            med = {v: statistics.median(ours[v]) for v in mine}
            a = med[mine[0]]
            row = {"net": net, "mode": mode, "batch": batch, "threads": t,
                   "cnnkit_images_per_sec": a, "torch_images_per_sec": b, "ratio": a / b,
                   "via": mine[0], "cnnkit_runs": ours[mine[0]], "torch_runs": theirs}
            for v in mine:
                row[f"cnnkit_{v}_images_per_sec"] = med[v]
                row[f"{v}_ratio"] = med[v] / b
                row[f"cnnkit_{v}_runs"] = ours[v]
            if "fit" in med and "step" in med:
                row["fit_vs_step"] = med["fit"] / med["step"]
            rows.append(row)
            figs = "".join(f" {med[v]:17.0f}" if v in med else f" {'-':>17}" for v in vias)
            rs = "".join(f" {med[v] / b:10.2f}" if v in med else f" {'-':>10}" for v in vias)
            print(f"{net:8} {mode:8} {batch:5d} {t:3d}{figs} {b:12.0f}{rs}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {
                    "cnnkit": cnnkit.__version__,
                    "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"),
                    "repeats": args.repeats,
                    "seconds": args.seconds,
                    "cpu": cpu_model(),
                    "cpu_kernels": kernel_set(),
                    "omp_wait_policy": wait_policy(),
                    "via": vias,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    return 0


def main(argv: list[str] | None = None, prog: str = "cnnkit bench",
         via: tuple[str, ...] = ("step",)) -> int:
    """``python -m cnnkit.bench [options]`` (the same as ``cnnkit bench``); returns the exit
    status; `via` is the default of --via. ``--worker LIB NET MODE BATCH THREADS SECONDS
    [VIA]`` is the internal one-measurement form that run_worker starts."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        lib, net, mode, batch, threads, seconds = argv[1:7]
        how = argv[7] if len(argv) > 7 else "step"
        print(json.dumps(worker(lib, net, mode, int(batch), int(threads), float(seconds),
                                how)))
        return 0
    args = build_parser(prog, via).parse_args(argv)
    try:
        return run(args)
    except RuntimeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
