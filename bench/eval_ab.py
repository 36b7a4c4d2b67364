"""A/B of the eval-forward optimisations in one process: BatchNorm folded into the convolution
before it (on / off) and eval forwards in chunks of images (on / off), alternating rounds,
medians, for ResNet-20 or LeNet-5 predict at one batch size.

    python bench/eval_ab.py --net resnet20 --batch 256 --threads 1 --rounds 5

Each round times every configuration for --seconds, in turn; the table shows the median
images/s and the median of the per-round ratios to the configuration with both off.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import cnnkit as ck
from cnnkit._core import _testing

CONFIGS = {"both off": (False, 0), "fold": (True, 0), "chunks": (False, 512),
           "fold + chunks": (True, 512)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=["resnet20", "lenet5"], default="resnet20")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    ck.set_num_threads(args.threads)
    ck.manual_seed(0)
    rng = np.random.default_rng(0)
    model = ck.models.resnet20() if args.net == "resnet20" else ck.models.lenet5()
    model.load_state_dict({k: (rng.uniform(0.5, 1.5, v.shape) if k.endswith("running_var")
                               else rng.uniform(-0.1, 0.1, v.shape)).astype(np.float32)
                           for k, v in model.state_dict().items() if "running_" in k},
                          strict=False)
    shape = (3, 32, 32) if args.net == "resnet20" else (1, 28, 28)
    x = rng.random((args.batch, *shape), dtype=np.float32)
    fold0, kb0 = _testing.fold_batchnorm(), _testing.eval_chunk_kb()
    rates: dict[str, list[float]] = {k: [] for k in CONFIGS}
    try:
        for _ in range(args.rounds):
            for name, (fold, kb) in CONFIGS.items():
                _testing.set_fold_batchnorm(fold)
                _testing.set_eval_chunk_kb(kb)
                model.predict(x, batch_size=args.batch)
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < args.seconds:
                    model.predict(x, batch_size=args.batch)
                    n += args.batch
                rates[name].append(n / (time.perf_counter() - t0))
    finally:
        _testing.set_fold_batchnorm(fold0)
        _testing.set_eval_chunk_kb(kb0)
    print(f"{args.net} predict, batch {args.batch}, {args.threads} thread(s), kernels "
          f"{ck.get_cpu_kernels()}, {args.rounds} alternating rounds of {args.seconds} s")
    base = rates["both off"]
    for name, r in rates.items():
        ratio = statistics.median(b / a for a, b in zip(base, r, strict=True))
        print(f"  {name:14s} {statistics.median(r):10.0f} img/s   x{ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
