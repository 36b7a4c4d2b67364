"""Peak resident memory of a training loop, cnnkit vs PyTorch, under /usr/bin/time -v.

Each library runs the same loop in its own process: a dataset held as uint8 (MNIST-sized
60,000 x 1 x 28 x 28 for LeNet-5, CIFAR-sized 3 x 32 x 32 images for ResNet-20, converted to
float32 one batch at a time), cross-entropy, SGD with momentum, one pass over the data. cnnkit
runs either its native step in a Python loop (--via step, the loop PyTorch runs) or
`Trainer.fit` (--via fit: what users run; the uint8 data gathered natively). The figure is
"Maximum resident set size" as reported by GNU time (whole process: interpreter, libraries,
data, model, buffers).

    python bench/peak_memory.py --threads 2 --json bench/results/peak_memory.json
    python bench/peak_memory.py --net resnet20 --batch 128 --n 10000 --via fit
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

N_TRAIN = 60_000


SHAPES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def _data(n: int, net: str = "lenet5"):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, *SHAPES[net]), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int64)
    return x, y


def worker(lib: str, batch: int, threads: int, n: int, net: str = "lenet5",
           via: str = "step") -> None:
    x, y = _data(n, net)
    t0 = time.perf_counter()
    if lib == "cnnkit" and via == "fit":
        import cnnkit as ck

        ck.set_num_threads(threads)
        t = ck.Trainer(getattr(ck.models, net)(), optimizer=ck.optim.SGD(lr=0.01, momentum=0.9),
                       device="cpu", seed=0)
        t.fit(x, y, epochs=1, batch_size=batch, verbose=0)
    elif lib == "cnnkit":
        import cnnkit as ck

        ck.set_num_threads(threads)
        m = getattr(ck.models, net)()._net
        m.set_loss("cross_entropy")
        m.set_optimizer("sgd", {"lr": 0.01, "momentum": 0.9})
        for i in range(0, n, batch):
            xb = x[i : i + batch].astype("float32") / 255.0
            m.train_step(xb, y[i : i + batch])
    else:
        import torch

        torch.set_num_threads(threads)
        from cnnkit.bench import build_torch

        model = build_torch(net)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        for i in range(0, n, batch):
            xb = torch.from_numpy(x[i : i + batch].astype("float32") / 255.0)
            yb = torch.from_numpy(y[i : i + batch])
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            opt.step()
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def measure(lib: str, batch: int, threads: int, n: int, net: str = "lenet5",
            via: str = "step") -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, os.path.abspath(__file__), "--worker", lib,
           "--batch", str(batch), "--threads", str(threads), "--n", str(n), "--net", net,
           "--via", via]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{lib} worker failed:\n{p.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if not rss:
        raise RuntimeError("no 'Maximum resident set size' in /usr/bin/time output")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return {"lib": lib, "max_rss_mb": int(rss.group(1)) / 1024, "seconds": out["seconds"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["cnnkit", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=N_TRAIN, help="training images (one pass)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--net", choices=sorted(SHAPES), default="lenet5")
    ap.add_argument("--via", choices=["step", "fit"], default="step",
                    help="cnnkit's loop: the native step from Python, or Trainer.fit")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker, a.batch, a.threads, a.n, a.net, a.via)
        return 0
    runs = {"cnnkit": [], "torch": []}
    for _ in range(a.repeats):
        for lib in runs:  # alternate the two libraries
            runs[lib].append(measure(lib, a.batch, a.threads, a.n, a.net, a.via))
    rows = []
    print(f"{a.net} training loop (cnnkit via {a.via}), batch {a.batch}, {a.n} images, "
          f"{a.threads} threads; max RSS (MB) of {a.repeats} runs each")  # fmt: skip
    print(f"{'lib':8} {'max RSS MB (median)':>20} {'min':>8} {'max':>8} {'seconds':>8}")
    for lib, rs in runs.items():
        mem = sorted(r["max_rss_mb"] for r in rs)
        secs = sorted(r["seconds"] for r in rs)
        row = {
            "lib": lib,
            "max_rss_mb_median": mem[len(mem) // 2],
            "max_rss_mb_min": mem[0],
            "max_rss_mb_max": mem[-1],
            "seconds_median": secs[len(secs) // 2],
            "runs": rs,
        }
        rows.append(row)
        print(f"{lib:8} {row['max_rss_mb_median']:20.1f} {mem[0]:8.1f} {mem[-1]:8.1f} "
              f"{row['seconds_median']:8.2f}")  # fmt: skip
    ratio = rows[0]["max_rss_mb_median"] / rows[1]["max_rss_mb_median"]
    print(f"cnnkit / torch peak memory: {ratio:.2f}")
    if a.json:
        meta = {"net": a.net, "via": a.via, "batch": a.batch, "threads": a.threads, "n": a.n,
                "repeats": a.repeats}
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"config": meta, "results": rows, "ratio": ratio}, f, indent=1)
        os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
