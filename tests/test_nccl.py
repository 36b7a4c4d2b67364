"""The NCCL gradient all-reduce of CUDA models (csrc/cuda/nccl.h, cnnkit.distributed's
backend choice). Everywhere: argument and backend checks, where the library is looked for,
load errors. With the CUDA emulation (tests/cuda_emu/run.sh tests/test_nccl.py), against its
stand-in for libnccl (tests/cuda_emu/fake_nccl.cpp): a one-rank step equals a step without
the reducer, and under `mpirun -n 2` the NCCL backend gives the MPI backend's weights, the
backends fall back or refuse as documented, and a peer that never arrives becomes an error.
On a GPU machine with NCCL installed (bench/gpu_check.sh) the one-rank test runs on the real
library."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import _core
from cnnkit import distributed as dist

EMULATED = os.environ.get("CNNKIT_CUDA_EMULATED") == "1"
FAKE = os.environ.get("CNNKIT_EMU_FAKE_NCCL") if EMULATED else None


def _library() -> str | None:
    """The NCCL to test with: the emulation's stand-in, or a real one on a GPU machine."""
    if not ck.cuda_available():
        return None
    if EMULATED:
        return FAKE
    try:
        _core.nccl_load(dist._nccl_library())
    except RuntimeError:
        return None
    return dist._nccl_library()


LIB = _library()
needs_nccl = pytest.mark.skipif(LIB is None, reason="needs CUDA and NCCL (a GPU machine with "
                                "the nvidia-nccl wheel, or tests/cuda_emu/run.sh)")


def test_backend_is_validated(monkeypatch):
    before = dist._S.backend
    try:
        with pytest.raises(ValueError, match="backend must be 'auto', 'mpi' or 'nccl'"):
            dist.init(backend="gloo")
        monkeypatch.setenv("CNNKIT_DISTRIBUTED_BACKEND", "NCCL")
        with pytest.raises(ValueError, match="CNNKIT_DISTRIBUTED_BACKEND must be"):
            dist.init()
        monkeypatch.setenv("CNNKIT_DISTRIBUTED_BACKEND", "mpi")
        dist.init()
        assert dist._S.backend == "mpi"
        dist.init(backend="nccl")  # the argument wins over the environment
        assert dist._S.backend == "nccl"
    finally:
        dist._S.backend = before


def test_where_the_library_is_looked_for(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.delenv("CNNKIT_NCCL_LIBRARY", raising=False)
    lib = tmp_path / "nccl" / "lib" / "libnccl.so.2"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        if name == "nvidia.nccl":
            return types.SimpleNamespace(submodule_search_locations=[str(tmp_path / "nccl")])
        return real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert dist._nccl_library() == str(lib)  # the nvidia-nccl wheel's library
    lib.unlink()
    assert dist._nccl_library() == "libnccl.so.2"  # else the system loader's search
    monkeypatch.setenv("CNNKIT_NCCL_LIBRARY", "/opt/nccl/lib/libnccl.so.2")
    assert dist._nccl_library() == "/opt/nccl/lib/libnccl.so.2"  # the variable first


def test_load_errors_name_the_library():
    # in a fresh process: a library, once loaded, stays loaded
    code = textwrap.dedent("""
        import cnnkit._core as c
        for path in ("/nonexistent/libnccl.so.2", "libm.so.6"):
            try:
                c.nccl_load(path)
            except RuntimeError as e:
                print("ERR", e)
        print("LOADED", c.nccl_loaded())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout
    if not _core.built_with_cuda():
        assert out.count("built without CUDA") == 2
    else:
        assert "/nonexistent/libnccl.so.2" in out
        assert "libm.so.6 has no ncclGetVersion" in out
    assert "LOADED False" in out


def test_bad_arguments():
    with pytest.raises((ValueError, RuntimeError), match="128 bytes|without CUDA"):
        _core.NcclComm(b"short", 1, 0)
    m = ck.Sequential(ck.Flatten(), ck.Linear(4, 2))
    m.forward(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="no communicator"):
        _core.set_grad_reducer_nccl(m._net, None, 1.0, 10.0)


def _setup(seed=0, lr=0.1):
    ck.manual_seed(seed)
    m = ck.Sequential(ck.Conv2d(1, 3, 3), ck.ReLU(), ck.Flatten(), ck.Linear(3 * 6 * 6, 4))
    t = ck.Trainer(m, optimizer=ck.optim.SGD(lr=lr), device="cuda")
    rng = np.random.default_rng(1)
    return m, t, rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 4, 32)


@needs_nccl
def test_one_rank_step_is_the_step_without_it():
    version = _core.nccl_load(LIB)
    assert version >= 21300
    uid = _core.nccl_unique_id()
    assert isinstance(uid, bytes) and len(uid) == 128
    comm = _core.NcclComm(uid, 1, 0)
    assert (comm.nranks, comm.rank, comm.aborted) == (1, 0, False)

    ref, tr, x, y = _setup()
    tr.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    m, t, x, y = _setup()
    m.to("cuda")
    with pytest.raises(ValueError, match="positive"):
        _core.set_grad_reducer_nccl(m._net, comm, 0.0, 10.0)
    _core.set_grad_reducer_nccl(m._net, comm, 1.0, 10.0)
    assert _core.has_grad_reducer(m._net)
    t.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    _core.set_grad_reducer(m._net, None)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=k)

    # scale 0.5 on the device is lr / 2 (a power of two: exact)
    half, th, x, y = _setup(lr=0.05)
    th.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    m, t, x, y = _setup()
    m.to("cuda")
    _core.set_grad_reducer_nccl(m._net, comm, 0.5, 10.0)
    t.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    _core.set_grad_reducer(m._net, None)
    for k, v in half.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=k)

    # a CPU model refuses the device reducer
    c = ck.Sequential(ck.Flatten(), ck.Linear(4, 2))
    c.forward(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="on the CPU"):
        _core.set_grad_reducer_nccl(c._net, comm, 1.0, 10.0)


@needs_nccl
def test_one_rank_bucketed_step_is_the_step_without_it():
    """Buckets queued on the communicator's stream while the backward runs: the same bits as
    one sum after it, every bucket summed once a step, and a diverged step still sums every
    bucket (the peers' all-reduces must match) and skips the update."""
    _core.nccl_load(LIB)
    comm = _core.NcclComm(_core.nccl_unique_id(), 1, 0)
    calls = _fake_calls()
    ref, tr, x, y = _setup()
    tr.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    m, t, x, y = _setup()
    m.to("cuda")
    with pytest.raises(ValueError, match="bucket_bytes must be >= 0"):
        _core.set_grad_reducer_nccl(m._net, comm, 1.0, 10.0, -1)
    _core.set_grad_reducer_nccl(m._net, comm, 1.0, 10.0, 64)
    assert _core.grad_bucket_bytes(m._net) == 64
    plan = _core.grad_buckets(m._net, 64)
    assert len(plan) >= 2
    n0 = calls()
    t.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    if n0 is not None:
        assert calls() - n0 == 8 * len(plan)  # 4 steps an epoch, every bucket once
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=k)

    flat = m._net.flat_params()
    bad = flat.copy()
    bad[plan[0][0]:] = np.nan  # the last Linear: NaN logits, a NaN loss
    m._net.set_flat_params(bad)
    n0 = calls()
    loss, _ = m._net.train_step(x[:8], y[:8])
    assert not np.isfinite(loss)
    if n0 is not None:
        assert calls() - n0 == len(plan)
    np.testing.assert_array_equal(m._net.flat_params(), bad)  # no update
    m._net.set_flat_params(flat)
    loss, _ = m._net.train_step(x[:8], y[:8])  # a finite step afterwards is an ordinary one
    assert np.isfinite(loss) and np.isfinite(m._net.flat_params()).all()
    _core.set_grad_reducer(m._net, None)


def _fake_calls():
    """A counter of the emulation's NCCL stand-in (None on the real library)."""
    if not FAKE:
        return lambda: None
    import ctypes
    f = ctypes.CDLL(FAKE).cnnkitFakeNcclCalls
    f.restype = ctypes.c_longlong
    return f


# ---- two processes (the emulation: both "GPUs" are host memory) ------------------------------

MPIRUN = shutil.which("mpirun") or shutil.which("mpiexec")
needs_two = pytest.mark.skipif(
    FAKE is None or MPIRUN is None,
    reason="needs the CUDA emulation's NCCL stand-in (tests/cuda_emu/run.sh tests/test_nccl.py)"
           " and an MPI launcher (pip install \".[mpi]\")")

JOB = """
import ctypes, os, sys, warnings
import numpy as np
import cnnkit as ck
ck.set_num_threads(1)
OUT = sys.argv[1]
ck.distributed.init(timeout=30, backend=os.environ["T_BACKEND"],
                  bucket_mb=float(os.environ.get("T_BUCKET_MB", "0")))
TAG = os.environ["T_BACKEND"] + os.environ.get("T_BUCKET_MB", "0")
R = ck.distributed.rank()
rng = np.random.default_rng(0)
x, y = rng.random((256, 1, 8, 8), dtype=np.float32), rng.integers(0, 4, 256)
ck.manual_seed(5 + R)
m = ck.Sequential(ck.Conv2d(1, 4, 3), ck.ReLU(), ck.Flatten(), ck.Linear(4 * 6 * 6, 4))
t = ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1, momentum=0.9), device="cuda", seed=0)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    t.fit(x, y, epochs=2, batch_size=16, verbose=0)
line = (f"REDUCER {R} {t._grad_reducer} DEVICE {ck._core.cuda_current_device()} WARN "
        f"{[str(e.message) for e in w if 'NCCL' in str(e.message)]}")
b = ck.distributed._bucket_bytes(m)
fake = ctypes.CDLL(os.environ["CNNKIT_NCCL_LIBRARY"]).cnnkitFakeNcclCalls
fake.restype = ctypes.c_longlong
calls = fake()
with open(f"{OUT}/r.{TAG}.{R}.txt", "w") as f:
    f.write(line)
with open(f"{OUT}/n.{TAG}.{R}.txt", "w") as f:  # NCCL all-reduces issued; buckets a step
    f.write(f"{calls} {len(ck._core.grad_buckets(m._net, b)) if b else 1}")
np.savez(f"{OUT}/w.{TAG}.{R}.npz", **m.state_dict())
"""


def _mpirun(tmp_path, body, backend, devices="2", timeout=240, extra=None):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "T_BACKEND": backend,
           "CNNKIT_EMU_DEVICES": devices, "CNNKIT_NCCL_LIBRARY": FAKE, **(extra or {})}
    env.pop("CNNKIT_CUDA_DEVICE", None)
    return subprocess.run([MPIRUN, "-n", "2", sys.executable, str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=timeout, env=env)


@needs_two
def test_two_ranks_nccl_gives_the_mpi_weights(tmp_path):
    # one all-reduce after the backward, and ~100-byte buckets during it (many a step)
    runs = [("nccl", "0"), ("mpi", "0"), ("nccl", "0.0001"), ("mpi", "0.0001")]
    for backend, mb in runs:
        p = _mpirun(tmp_path, JOB, backend, extra={"T_BUCKET_MB": mb})
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        for r in (0, 1):  # one GPU per local rank: rank r on device r
            line = (tmp_path / f"r.{backend}{mb}.{r}.txt").read_text()
            assert line.startswith(f"REDUCER {r} {backend} DEVICE {r} WARN []"), line
    calls = {(b, mb, r): [int(v) for v in (tmp_path / f"n.{b}{mb}.{r}.txt").read_text().split()]
             for b, mb in runs for r in (0, 1)}
    steps, one = calls["nccl", "0", 0]
    assert steps > 0 and one == 1
    for r in (0, 1):
        n, buckets = calls["nccl", "0.0001", r]
        assert buckets >= 2 and n == steps * buckets, (n, steps, buckets)  # every bucket, once
        assert calls["mpi", "0.0001", r][0] == 0  # the MPI backend never calls NCCL
    w = {(b, mb, r): dict(np.load(tmp_path / f"w.{b}{mb}.{r}.npz")) for b, mb in runs
         for r in (0, 1)}
    for k, v in w["mpi", "0", 0].items():
        # the sum of two floats and a halving: the same bits however and in whatever pieces
        # it is done
        for other in w:
            np.testing.assert_array_equal(w[other][k], v, err_msg=f"{k} {other}")


@needs_two
def test_auto_falls_back_and_nccl_refuses_with_one_gpu_for_two(tmp_path):
    p = _mpirun(tmp_path, JOB, "auto", devices="1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for r in (0, 1):
        line = (tmp_path / f"r.auto0.{r}.txt").read_text()
        assert line.startswith(f"REDUCER {r} mpi DEVICE 0"), line
        assert "2 processes share this host's 1 GPU" in line  # the warning, on every rank
    p = _mpirun(tmp_path, JOB, "nccl", devices="1")
    assert p.returncode != 0
    assert "backend 'nccl' on rank" in p.stderr and "1 GPU" in p.stderr, p.stderr[-3000:]


@needs_two
def test_a_peer_that_never_arrives_is_an_error(tmp_path):
    body = """
    import os, sys, time
    import numpy as np
    import cnnkit as ck
    ck.distributed.init(timeout=30, backend="nccl")
    R = ck.distributed.rank()
    m = ck.Sequential(ck.Flatten(), ck.Linear(4, 2)).to("cuda")
    comm = ck.distributed._nccl_comm(m)
    a = np.ones(1000, np.float32)  # emulated device memory is host memory
    if R == 1:
        time.sleep(6)  # never joins this all-reduce
    else:
        t0 = time.monotonic()
        try:
            comm.all_reduce_sum(a.ctypes.data, a.size, 20.0)
        except RuntimeError as e:
            print("ERR", round(time.monotonic() - t0, 1), e)
        print("ABORTED", comm.aborted)
        try:
            comm.all_reduce_sum(a.ctypes.data, a.size, 20.0)
        except RuntimeError as e:
            print("AGAIN", e)
    """
    p = _mpirun(tmp_path, body, "nccl", extra={"CNNKIT_FAKE_NCCL_TIMEOUT": "1.5"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "ERR" in p.stdout and "a peer did not reach the all-reduce" in p.stdout, p.stdout
    assert float(p.stdout.split("ERR ")[1].split()[0]) < 10
    assert "ABORTED True" in p.stdout
    assert "AGAIN the NCCL communicator was aborted" in p.stdout
