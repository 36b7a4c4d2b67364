"""A/B of the convolution paths on a whole network, old against new in alternating processes.

Each side is an environment setting (default: "before" = strided layers through im2col + GEMM
and the 12x32 tiles everywhere, CNNKIT_CONV_STRIDED_DIRECT=0 CNNKIT_CONV_TILE=12x32; "after" =
the defaults). Every run is its own process; the sides alternate; the table gives the median
images/s of --repeats runs by wall time and by the process's CPU time (with one thread, CPU
time is the time the step actually ran: it stays meaningful while other jobs share the
cores, wall time does not), and the per-round ratio after/before of each.

    python bench/conv_ab.py --cases resnet20:infer:256 resnet20:train:128 --repeats 5
    python bench/conv_ab.py --before CNNKIT_CONV_WINOGRAD=0 --after CNNKIT_CONV_WINOGRAD=

(--before / --after: each side's settings instead; NAME= leaves NAME unset, its default.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIDES = {
    "before": {"CNNKIT_CONV_STRIDED_DIRECT": "0", "CNNKIT_CONV_TILE": "12x32"},
    "after": {},
}


def worker(net: str, mode: str, batch: int, seconds: float) -> dict:
    import cnnkit as ck
    from cnnkit import bench

    ck.set_num_threads(1)
    xs, ys = bench._data(net, batch)
    m = bench.build_cnnkit(net)._net
    if mode == "train":
        m.set_loss("cross_entropy")
        m.set_optimizer("sgd", {"lr": 0.01, "momentum": 0.9})

        def step(i):
            m.train_step(xs[i], ys[i])
    else:

        def step(i):
            m.forward(xs[i], False)

    for i in range(3):
        step(i % len(xs))
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while True:
        step(n % len(xs))
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 3:
            break
    dc = time.process_time() - c0
    return {"wall": n * batch / dt, "cpu": n * batch / dc}


def run(side: str, case: str, seconds: float, trees: list[str] | None) -> dict:
    net, mode, batch = case.split(":")
    names = set(SIDES["before"]) | set(SIDES["after"])
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(OMP_NUM_THREADS="1", OMP_PROC_BIND="close", OMP_PLACES="cores")
    if trees:
        tree = trees[0] if side == "before" else trees[1]
        env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")])
    else:
        env.update({k: v for k, v in SIDES[side].items() if v})
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import conv_ab; "
            "print(json.dumps(conv_ab.worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), "
            "float(sys.argv[5]))))")
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)),
                          net, mode, batch, str(seconds)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["resnet20:infer:256", "resnet20:train:128"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--trees", nargs=2, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--before", nargs="+", metavar="NAME=VALUE",
                    help="the environment of the 'before' side (replaces the default one)")
    ap.add_argument("--after", nargs="+", metavar="NAME=VALUE",
                    help="the environment of the 'after' side (default: none set)")
    args = ap.parse_args()
    for side in ("before", "after"):
        given = getattr(args, side)
        if given:
            if any("=" not in kv for kv in given):
                ap.error(f"--{side} takes NAME=VALUE settings")
            SIDES[side] = dict(kv.split("=", 1) for kv in given)
    rows = []
    for case in args.cases:
        runs = {"before": [], "after": []}
        loads = []
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            for side in ("before", "after"):
                runs[side].append(run(side, case, args.seconds, args.trees))
        row = {"case": case, "load": [min(loads), max(loads)], "runs": runs}
        for key in ("wall", "cpu"):
            for side in ("before", "after"):
                row[f"{side}_{key}"] = statistics.median(r[key] for r in runs[side])
            row[f"ratio_{key}"] = statistics.median(
                a[key] / b[key] for a, b in zip(runs["after"], runs["before"], strict=True))
        rows.append(row)
        print(f"{case:22s} wall img/s {row['before_wall']:8.0f} -> {row['after_wall']:8.0f} "
              f"({row['ratio_wall']:.2f}x)   cpu-time img/s {row['before_cpu']:8.0f} -> "
              f"{row['after_cpu']:8.0f} ({row['ratio_cpu']:.2f}x)   load "
              f"{row['load'][0]:.1f}-{row['load'][1]:.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
