"""Trainer.fit against the native step it drives, in one process: epochs through
``Trainer.fit`` (uint8 (N, 28, 28) images, shuffled, progress bar on unless --verbose 0)
alternate with plain loops of ``Net.train_step`` over the same samples already converted to
float32; the ratio of each pair, median over the rounds. LeNet-5, SGD with momentum.

python bench/fit_vs_step.py --threads 1 2 --batch 64 256 --rounds 11
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import numpy as np

import cnnkit as ck


def measure(threads: int, batch: int, batches: int, rounds: int, verbose: int) -> dict:
    ck.set_num_threads(threads)
    rng = np.random.default_rng(0)
    n = batch * batches
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int64)
    ck.manual_seed(0)
    model = ck.models.lenet5()
    trainer = ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.01, momentum=0.9), device="cpu")
    net = model._net
    xs = (x.astype(np.float32) * np.float32(1 / 255))[:, None]

    def steps() -> float:
        t0 = time.perf_counter()
        for i in range(batches):
            net.train_step(xs[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
        return n / (time.perf_counter() - t0)

    def fit() -> float:
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # the progress bar runs, unseen
            trainer.fit(x, y, epochs=trainer.epoch + 1, batch_size=batch, verbose=verbose)
        return n / (time.perf_counter() - t0)

    fit(), steps()  # warm-up
    f, s, r = [], [], []
    for k in range(rounds):  # alternate which goes first
        a, b = (fit(), steps()) if k % 2 == 0 else (steps(), fit())[::-1]
        f.append(a)
        s.append(b)
        r.append(a / b)
    return {"threads": threads, "batch": batch, "fit": statistics.median(f),
            "step": statistics.median(s), "ratio": statistics.median(r), "ratios": r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256], help="batch sizes")
    ap.add_argument("--rounds", type=int, default=11, help="fit/step pairs (median)")
    ap.add_argument("--seconds", type=float, default=0.5,
                    help="about how long one epoch takes (sizes the data set)")
    ap.add_argument("--verbose", type=int, default=1, choices=(0, 1),
                    help="fit's verbose (1: progress bar)")
    args = ap.parse_args()
    print(f"{'thr':>3} {'batch':>5} {'fit img/s':>10} {'step img/s':>11} {'fit/step':>8}  rounds")
    for t in args.threads:
        for b in args.batch:
            per_batch = b / 25000 * (1 if t == 1 else 0.6)  # seconds, roughly
            batches = max(20, int(args.seconds / per_batch))
            r = measure(t, b, batches, args.rounds, args.verbose)
            rs = " ".join(f"{v:.2f}" for v in r["ratios"])
            print(f"{t:3d} {b:5d} {r['fit']:10.0f} {r['step']:11.0f} {r['ratio']:8.3f}  {rs}",
                  flush=True)


if __name__ == "__main__":
    main()
