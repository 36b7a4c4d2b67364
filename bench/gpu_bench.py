"""cnnkit's CUDA backend against PyTorch CUDA, measured in one run, printed as one table.

    python bench/gpu_bench.py [--out DIR] [--repeats N] [--quick]
    python bench/gpu_bench.py --smoke      # every kernel family once, small (for compute-sanitizer)

Rows: our SGEMM vs torch.mm in fp32 with TF32 off (1024/4096/8192), our Conv2d forward vs
torch.nn.functional.conv2d (LeNet conv1/conv2 at batch 256, a 64x32x32x32 3x3 layer), and
LeNet-5 training images/s at batch 256 vs PyTorch eager (SGD with momentum, cross-entropy; the
batch already on the GPU for both; each step reads the loss back, as a training loop does).
Every result is checked against PyTorch before it is timed. Times are medians of `repeats`
runs after a warm-up, from CUDA events (ours: cnnkit's stream; torch: its current stream).
The table goes to stdout and, with --out (default $OUT when set), to gpu_bench.json and
gpu_bench.md. A failing row is reported as such; the others still run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import numpy as np


def _median(xs):
    return float(statistics.median(xs))


def torch_time_ms(torch, fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return _median(times)


# ---- rows -----------------------------------------------------------------------------------


def bench_gemm(torch, n: int, repeats: int) -> dict:
    from cnnkit._core import _testing

    # check first: our GEMM (through the test binding) against torch fp32 (TF32 off) at 512
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512)).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float32)
    ref = (torch.from_numpy(a).cuda().double() @ torch.from_numpy(b).cuda().double()).cpu()
    err = float(np.max(np.abs(_testing.cuda_sgemm(a, b) - ref.numpy())))
    if not err < 1e-3:
        raise AssertionError(f"our GEMM disagrees with torch at 512^3: max error {err}")
    ours = _testing.cuda_sgemm_bench(n, n, n, repeats)
    ta = torch.randn(n, n, device="cuda")
    tb = torch.randn(n, n, device="cuda")
    tc = torch.empty(n, n, device="cuda")
    theirs = torch_time_ms(torch, lambda: torch.mm(ta, tb, out=tc), repeats)
    flops = 2.0 * n * n * n
    return {
        "case": f"sgemm {n}x{n}x{n} (fp32, TF32 off)",
        "ours_ms": ours,
        "torch_ms": theirs,
        "ours_rate": flops / ours / 1e6,
        "torch_rate": flops / theirs / 1e6,
        "unit": "GFLOP/s",
        "check": f"max err {err:.1e} vs float64 at 512^3",
    }


def bench_conv(torch, name, N, C, H, W, K, k, pad, repeats: int) -> dict:
    import torch.nn.functional as F

    import cnnkit as ck

    model = ck.Sequential([ck.Conv2d(C, K, k, padding=pad)]).to("cuda")
    sd = model.state_dict()
    x = np.random.default_rng(1).standard_normal((N, C, H, W)).astype(np.float32)
    tx = torch.from_numpy(x).cuda()
    tw = torch.from_numpy(sd["0.weight"]).cuda()
    tbias = torch.from_numpy(sd["0.bias"]).cuda()
    ref = F.conv2d(tx, tw, tbias, padding=pad).cpu().numpy()
    out = model.forward(x)
    err = float(np.max(np.abs(out - ref)))
    scale = float(np.max(np.abs(ref))) + 1e-30
    if not err <= 1e-4 * scale + 1e-5:
        raise AssertionError(f"{name}: our conv disagrees with torch: max error {err}")
    from cnnkit._core import _testing

    ours = _median(_testing.time_forward(model._net, x, repeats))
    theirs = torch_time_ms(torch, lambda: F.conv2d(tx, tw, tbias, padding=pad), repeats)
    P = H + 2 * pad - k + 1
    flops = 2.0 * N * K * P * P * C * k * k
    return {
        "case": f"conv2d fwd {name}: x({N},{C},{H},{W}) {K}x{C}x{k}x{k} pad {pad}",
        "ours_ms": ours,
        "torch_ms": theirs,
        "ours_rate": flops / ours / 1e6,
        "torch_rate": flops / theirs / 1e6,
        "unit": "GFLOP/s",
        "check": f"max err {err:.1e}",
    }


def torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


def bench_lenet(torch, batch: int, repeats: int) -> dict:
    import cnnkit as ck

    rng = np.random.default_rng(2)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    ck.manual_seed(0)
    model = ck.models.lenet5().to("cuda")
    tm = torch_lenet(torch).cuda()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    net = model._net
    net.set_loss("cross_entropy")
    net.set_optimizer("sgd", {"lr": 0.01, "momentum": 0.9})
    opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss()
    tx = torch.from_numpy(x).cuda()
    ty = torch.from_numpy(y).cuda()

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = crit(tm(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()

    # check: the first step's loss agrees (same weights, same batch)
    ours_loss, _ = net.train_step(x, y)
    theirs_loss = torch_step()
    if not abs(ours_loss - theirs_loss) <= 1e-4 * max(1.0, abs(theirs_loss)):
        raise AssertionError(f"LeNet-5 first-step loss: ours {ours_loss} vs torch {theirs_loss}")
    from cnnkit._core import _testing

    ours = _median(_testing.time_train_step(net, x, y, repeats))
    theirs = torch_time_ms(torch, torch_step, repeats)
    return {
        "case": f"LeNet-5 train step, batch {batch} (SGD momentum, CE)",
        "ours_ms": ours,
        "torch_ms": theirs,
        "ours_rate": batch / ours * 1e3,
        "torch_rate": batch / theirs * 1e3,
        "unit": "images/s",
        "check": f"step-1 loss {ours_loss:.5f} vs {theirs_loss:.5f}",
    }


# ---- smoke mode (for compute-sanitizer) -----------------------------------------------------


def smoke() -> None:
    """Every CUDA kernel family once at small sizes, with no torch: for compute-sanitizer."""
    import cnnkit as ck
    from cnnkit import _core
    from cnnkit._core import _testing

    rng = np.random.default_rng(0)
    for M, N, K in [(5, 7, 3), (16, 130, 40), (70, 65, 129), (6, 25, 3000), (300, 260, 20)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
                b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
                _testing.cuda_sgemm(a, b, ta, tb, misalign=1)
                _testing.cuda_sgemm(a, b, ta, tb, beta=0.5, c=np.ones((M, N), np.float32))
    x = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
    _testing.col2im(
        _testing.im2col(x[0], [3, 3], [2, 1], [1, 1], [1, 2], device="cuda"),
        [5, 9, 8],
        [3, 3],
        [2, 1],
        [1, 1],
        [1, 2],
        device="cuda",
    )
    _core.softmax_cross_entropy(
        rng.standard_normal((33, 70)).astype(np.float32), rng.integers(0, 70, 33), device="cuda"
    )
    _core.mse_loss(x, x + 1, device="cuda")
    L = ck.layers
    model = ck.Sequential([
        L.Conv2d(3, 8, 3, padding=1), L.BatchNorm2d(8), L.LeakyReLU(0.1), L.MaxPool2d(3, 2, 1),
        L.Conv2d(8, 8, 3, padding=1, groups=8), L.Tanh(), L.AvgPool2d(2, ceil_mode=True),
        L.Conv2d(8, 4, 3, groups=2, dilation=2, padding=2), L.Conv2d(4, 6, 1), L.Sigmoid(),
        L.Flatten(), L.Dropout(0.3), L.Linear(6 * 4 * 4, 10),
    ])  # fmt: skip
    xs = rng.standard_normal((6, 3, 13, 13)).astype(np.float32)
    ys = rng.integers(0, 10, 6)
    for kind in ("sgd", "adam", "adamw", "adagrad", "rmsprop"):
        tr = ck.Trainer(model, optimizer=kind, device="cuda", seed=1)
        tr.fit(xs, ys, epochs=1, batch_size=4, verbose=0)
        tr.evaluate(xs, ys)
    model.predict(xs)
    model.forward(xs, training=True)
    model.backward(np.ones((6, 10), np.float32))
    _core.cuda_synchronize()
    print("smoke: every CUDA kernel family ran")


# ---- main -----------------------------------------------------------------------------------


def fmt_table(rows: list[dict]) -> str:
    head = (
        "| case | ours ms | torch ms | ours rate | torch rate | ours/torch speed | check |\n"
        "|---|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | FAILED | | | | | {r['error']} |")
            continue
        lines.append(
            f"| {r['case']} | {r['ours_ms']:.3f} | {r['torch_ms']:.3f} | "
            f"{r['ours_rate']:,.0f} {r['unit']} | {r['torch_rate']:,.0f} {r['unit']} | "
            f"{r['torch_ms'] / r['ours_ms']:.2f}x | {r['check']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for the JSON/markdown")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="fewer repeats, skip 8192")
    p.add_argument("--smoke", action="store_true", help="run every kernel once and exit")
    args = p.parse_args(argv)

    import cnnkit as ck
    from cnnkit import _core

    if not ck.cuda_available():
        print("gpu_bench: no CUDA device (or cnnkit built without CUDA)", file=sys.stderr)
        return 2
    if args.smoke:
        smoke()
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_bench: torch has no CUDA", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    reps = 5 if args.quick else args.repeats
    t0 = time.perf_counter()
    sizes = (1024, 4096) if args.quick else (1024, 4096, 8192)
    gemm_reps = {n: reps if n < 8192 else max(3, reps // 4) for n in sizes}
    jobs = [(f"sgemm {n}", lambda n=n: bench_gemm(torch, n, gemm_reps[n])) for n in sizes]
    convs = [  # name, N, C, H, W, K, kernel, padding
        ("LeNet conv1", 256, 1, 28, 28, 6, 5, 2),
        ("LeNet conv2", 256, 6, 14, 14, 16, 5, 0),
        ("64x32x32x32 3x3", 64, 32, 32, 32, 32, 3, 1),
    ]
    jobs += [(f"conv {c[0]}", lambda c=c: bench_conv(torch, *c, reps)) for c in convs]
    jobs.append(("LeNet-5 train", lambda: bench_lenet(torch, 256, max(reps, 20))))
    rows = []
    for name, job in jobs:
        try:
            rows.append(job())
        except Exception as e:  # one failing row must not hide the others
            traceback.print_exc()
            rows.append({"case": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        print(f"  done: {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
    meta = {
        "device": _core.cuda_device_name(0),
        "torch": torch.__version__,
        "torch_device": torch.cuda.get_device_name(0),
        "cnnkit": ck.__version__,
        "repeats": reps,
        "timing": "median of CUDA-event times after warm-up",
        "tf32": False,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    table = fmt_table(rows)
    print(f"\ncnnkit CUDA vs PyTorch on {meta['device']} (torch {meta['torch']}, TF32 off)\n")
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        clean = [
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in r.items()
            }
            for r in rows
        ]
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump({"meta": meta, "rows": clean}, f, indent=2)
        with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
            f.write(
                f"cnnkit CUDA vs PyTorch on {meta['device']} "
                f"(torch {meta['torch']}, TF32 off, {meta['timing']})\n\n{table}\n"
            )
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
