"""cnnkit's predict vs onnxruntime's CPU session on the same exported ONNX model: LeNet-5 and
ResNet-20, batch 1 and 256, 1 and 2 threads (onnxruntime's intra-op threads set to match,
inter-op 1, sequential execution). Each run is its own process (the two libraries bring their
own thread pools, which would spin against each other), the libraries alternate, and the table
shows the median of --repeats runs with the load average around them.

    python bench/compare_onnxruntime.py --repeats 5 --json bench/results/compare_onnxruntime.json
    python bench/compare_onnxruntime.py --threads 1 --repeats 1 --paired 9   (one process)

cnnkit runs the model ck.onnx.load reads back from the file onnxruntime runs; "cnnkit
predict" is Model.predict (input checks, eval forward, softmax), "cnnkit forward" the logits
alone (what the onnxruntime session returns).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

NETS = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def export_models(folder: str) -> dict[str, str]:
    """LeNet-5 and ResNet-20 (random weights, non-trivial BatchNorm statistics) as ONNX."""
    import numpy as np

    import cnnkit as ck

    ck.manual_seed(0)
    rng = np.random.default_rng(0)
    paths = {}
    for net, shape in NETS.items():
        model = ck.models.lenet5() if net == "lenet5" else ck.models.resnet20()
        stats = {k: rng.uniform(0.5, 1.5, v.shape) if k.endswith("running_var") else
                 rng.uniform(-0.1, 0.1, v.shape)
                 for k, v in model.state_dict().items() if "running_" in k}
        model.load_state_dict(stats, strict=False)
        paths[net] = os.path.join(folder, f"{net}.onnx")
        ck.onnx.export(model, paths[net], input_shape=shape)
    return paths


def ort_session(path: str, threads: int):
    """onnxruntime's CPU session as the table runs it: intra-op threads = cnnkit's, inter-op 1,
    sequential, every graph optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def worker(lib: str, path: str, net: str, batch: int, threads: int, seconds: float) -> dict:
    """Images/s of one library on one configuration (this process only)."""
    import numpy as np

    x = np.random.default_rng(1).random((batch, *NETS[net])).astype(np.float32)
    if lib == "cnnkit":
        import cnnkit as ck

        ck.set_num_threads(threads)
        model = ck.onnx.load(path)
        fns = {"predict": lambda: model.predict(x, batch_size=batch),
               "forward": lambda: model.forward(x)}
    else:
        sess = ort_session(path, threads)
        fns = {"run": lambda: sess.run(None, {"input": x})}
    out = {}
    for name, fn in fns.items():
        for _ in range(3):  # warm-up: buffers, plans, thread pools
            fn()
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds and n >= 5:
                break
        out[name] = n * batch / dt
    return out


def paired_worker(path: str, net: str, batch: int, rounds: int, seconds: float) -> dict:
    """One thread, both libraries in this process, alternating round by round: the ratio of
    each round is taken under the same conditions (this VM's speed drifts by 15% and more
    between processes). Only at one thread, where neither library has a pool of its own."""
    import numpy as np

    import cnnkit as ck

    x = np.random.default_rng(1).random((batch, *NETS[net])).astype(np.float32)
    ck.set_num_threads(1)
    model = ck.onnx.load(path)
    sess = ort_session(path, 1)
    fns = {"cnnkit": lambda: model.predict(x, batch_size=batch),
           "ort": lambda: sess.run(None, {"input": x})}

    def rate(fn) -> float:
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds and n >= 3:
                return n * batch / dt

    for fn in fns.values():
        for _ in range(3):
            fn()
    runs: dict[str, list[float]] = {"cnnkit": [], "ort": []}
    for r in range(rounds):
        for lib in (["cnnkit", "ort"] if r % 2 == 0 else ["ort", "cnnkit"]):
            runs[lib].append(rate(fns[lib]))
    return runs


def run_worker(lib: str, path: str, net: str, batch: int, threads: int, seconds: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="close",
               OMP_PLACES="cores", PYTHONSAFEPATH="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, path, net, str(batch),
           str(threads), str(seconds)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        raise RuntimeError(f"{lib} worker for {net} batch {batch}, {threads} thread(s): {tail}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def kernel_set() -> str:
    import cnnkit as ck

    parts = []
    if hasattr(ck, "get_cpu_kernels"):
        parts.append(f"kernels {ck.get_cpu_kernels()}")
    core = ck._core
    if hasattr(core, "sgemm_kernel_name"):
        parts.append(f"sgemm {core.sgemm_kernel_name()}")
    parts.append(f"cpu features: {core.cpu_features() or 'baseline'}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5,
                    help="runs per library and configuration, alternating (default: 5)")
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="timed seconds per run after 3 warm-up calls (at least 5 calls)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                    help="also run both libraries in one process at one thread, alternating "
                         "ROUNDS rounds of --seconds each, and report the median per-round "
                         "ratio (the same conditions for both sides of each ratio)")
    ap.add_argument("--worker", nargs=6, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--paired-worker", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.paired_worker:
        path, net, batch, rounds, seconds = args.paired_worker
        print(json.dumps(paired_worker(path, net, int(batch), int(rounds), float(seconds))))
        return 0
    if args.worker:
        lib, path, net, batch, threads, seconds = args.worker
        print(json.dumps(worker(lib, path, net, int(batch), int(threads), float(seconds))))
        return 0

    import onnxruntime as ort

    import cnnkit as ck

    t_start = time.time()
    from cnnkit.bench import cpu_model

    cpu, kernels = cpu_model(), kernel_set()  # asked once, before any timing
    print(f"cnnkit {ck.__version__} vs onnxruntime {ort.__version__} (CPUExecutionProvider, "
          f"intra-op threads = cnnkit's, inter-op 1, sequential); {cpu}, "
          f"{os.cpu_count()} cpus; cnnkit: {kernels}; median of {args.repeats} "
          f"alternating runs of {args.seconds:g} s")
    head = (f"{'net':9}{'batch':>6}{'thr':>4}{'cnnkit predict':>16}{'cnnkit forward':>16}"
            f"{'onnxruntime':>13}{'predict/ort':>13}{'load':>12}")
    print(f"{'':19}{'images/s':>16}{'images/s':>16}{'images/s':>13}")
    print(head)
    print("-" * len(head))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = export_models(folder)
        for net in args.nets:
            for batch in args.batches:
                for t in args.threads:
                    mine: dict[str, list[float]] = {"predict": [], "forward": []}
                    theirs: list[float] = []
                    load0 = os.getloadavg()[0]
                    for r in range(args.repeats):
                        order = ["cnnkit", "ort"] if r % 2 == 0 else ["ort", "cnnkit"]
                        for lib in order:
                            res = run_worker(lib, paths[net], net, batch, t, args.seconds)
                            if lib == "cnnkit":
                                mine["predict"].append(res["predict"])
                                mine["forward"].append(res["forward"])
                            else:
                                theirs.append(res["run"])
                    load1 = os.getloadavg()[0]
                    p, f = statistics.median(mine["predict"]), statistics.median(mine["forward"])
                    o = statistics.median(theirs)
                    rows.append({"net": net, "batch": batch, "threads": t,
                                 "cnnkit_predict": p, "cnnkit_forward": f, "onnxruntime": o,
                                 "ratio": p / o, "load": [load0, load1],
                                 "runs": {"predict": mine["predict"],
                                          "forward": mine["forward"], "onnxruntime": theirs}})
                    print(f"{net:9}{batch:6d}{t:4d}{p:16.0f}{f:16.0f}{o:13.0f}{p / o:13.2f}"
                          f"{f'{load0:.1f}-{load1:.1f}':>12}", flush=True)
        paired = []
        if args.paired:
            print(f"paired: one process, 1 thread, {args.paired} alternating rounds of "
                  f"{args.seconds:g} s; median of the per-round ratios")
            print(f"{'net':9}{'batch':>6}{'cnnkit predict':>16}{'onnxruntime':>13}"
                  f"{'ratio':>8}{'ratios (min-max)':>20}")
            for net in args.nets:
                for batch in args.batches:
                    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONSAFEPATH="1")
                    cmd = [sys.executable, os.path.abspath(__file__), "--paired-worker",
                           paths[net], net, str(batch), str(args.paired), str(args.seconds)]
                    pr = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if pr.returncode != 0:
                        tail = (pr.stderr.strip().splitlines() or ["failed"])[-1]
                        raise RuntimeError(f"paired worker for {net} batch {batch}: {tail}")
                    runs = json.loads(pr.stdout.strip().splitlines()[-1])
                    ratios = [a / b for a, b in zip(runs["cnnkit"], runs["ort"], strict=True)]
                    med = statistics.median(ratios)
                    paired.append({"net": net, "batch": batch, "threads": 1, "ratio": med,
                                   "ratios": ratios, "runs": runs})
                    print(f"{net:9}{batch:6d}{statistics.median(runs['cnnkit']):16.0f}"
                          f"{statistics.median(runs['ort']):13.0f}{med:8.2f}"
                          f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>20}", flush=True)
    took = time.time() - t_start
    print(f"took {took:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"cnnkit": ck.__version__, "onnxruntime": ort.__version__,
                       "date": time.strftime("%Y-%m-%d"), "cpu": cpu,
                       "cnnkit_kernels": kernels, "repeats": args.repeats,
                       "seconds": args.seconds, "took_s": took, "rows": rows,
                       "paired": paired}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
