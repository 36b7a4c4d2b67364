"""Data-parallel training over MPI (mpi4py), as Horovod and PyTorch's DDP do it.

>>> ck.distributed.init()        # a no-op when the script was not started by an MPI launcher
>>> trainer = ck.Trainer(model, optimizer="adam", seed=0)   # data-parallel when world_size() > 1
>>> trainer.fit(x, y, epochs=10, batch_size=64)             # batch_size per process

``mpirun -n 4 python train.py``: every process holds the whole data set and a replica of the
model; rank 0's initial weights are broadcast; each epoch's seeded permutation is cut into
disjoint, equal shards (interleaved, the last ``N % world_size`` samples of the permutation
left out on every rank); the gradients of every step are summed by an in-place all-reduce of
the model's flat gradient buffer (no copy on the CPU; CUDA gradients with NCCL on the GPUs
where it is installed, else through a host copy; with ``init(bucket_mb=...)``, in buckets
overlapped with the backward, on either) and
divided by the number of processes, so every rank applies the same update and the weights
stay bit-identical. BatchNorm running statistics are averaged at the end of each epoch, loss
and metrics are reduced, and only rank 0 prints and writes files. See docs/distributed.md.

Needs ``pip install "cnnkit[mpi]"`` (mpi4py and an MPI: the mpich wheel). cnnkit imports
mpi4py only when :func:`init` finds an MPI launcher.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import warnings
from typing import Any

import numpy as np

__all__ = ["init", "is_initialized", "rank", "world_size", "is_main", "barrier",
           "all_reduce", "broadcast", "abort", "launched_by_mpi", "DistributedError"]

# Environment variables MPI launchers set in every process they start (MPICH/Hydra, Open MPI,
# PMIx, Slurm's PMI2 and Intel MPI); any of them means "started by a launcher".
_LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS",
                 "MPIR_CVAR_CH3_INTERFACE_HOSTNAME", "HYDI_CONTROL_FD")

_DEFAULT_TIMEOUT = 300.0  # seconds one collective may wait for the other processes
_DEFAULT_BUCKET_MB = 0.0  # gradient bucket (MiB) reduced during the backward; 0: after it
_BACKENDS = ("auto", "mpi", "nccl")  # how the gradients of CUDA models are summed


class DistributedError(RuntimeError):
    """A collective failed: a peer is stuck or gone, or the processes disagree."""


class _State:
    def __init__(self) -> None:
        self.comm: Any = None
        self.mpi: Any = None
        self.rank = 0
        self.size = 1
        self.timeout = _DEFAULT_TIMEOUT
        self.bucket_mb = _DEFAULT_BUCKET_MB
        self.overlap_ok = True  # the MPI allows calls from the reducer thread
        self.multiple = True  # MPI_THREAD_MULTIPLE: two threads may call MPI at once
        self.stats_comm: Any = None  # SyncBatchNorm's communicator (a duplicate of comm)
        self.lock = threading.Lock()
        # (deadline, what) of the collective each thread is in (the step's thread and the
        # gradient reducer's thread may both be in one: SyncBatchNorm beside a bucket)
        self.pending: dict[int, tuple[float, str]] = {}
        self.warned_sync_overlap = False
        self.watchdog: threading.Thread | None = None
        self.backend = "auto"
        self.local_rank = 0  # among the processes on this host
        self.local_size = 1
        self.nccl: Any = None  # the NCCL communicator (_core.NcclComm), made on first use
        self.warned_nccl = False


_S = _State()


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpirun, mpiexec, srun)."""
    return any(k in os.environ for k in _LAUNCHER_ENV)


def init(timeout: float = _DEFAULT_TIMEOUT, bucket_mb: float = _DEFAULT_BUCKET_MB,
         backend: str | None = None) -> int:
    """Join the MPI job this process was launched in; returns the number of processes.

    A no-op (1 process, mpi4py not imported) when no MPI launcher started this process.
    `timeout`: seconds a collective (the per-step gradient all-reduce included) may wait for
    the other processes; past it a watchdog prints which rank waited for what and ends the
    whole job (MPI_Abort): a stuck peer becomes an error, never a hang. An uncaught
    exception in any process prints its rank and aborts the job (as ``python -m mpi4py``
    does). `bucket_mb` (as DDP's ``bucket_cap_mb``, in MiB): > 0 cuts the gradients into
    buckets of at least that size, at layer boundaries, each all-reduced as soon as the
    backward has completed it (overlapping the all-reduce with the backward): by a
    communication thread for MPI (CUDA gradients copied to the host and back bucket by
    bucket, on copy streams beside the backward's kernels), queued on the GPU for NCCL; 0
    all-reduces them in one call after the backward. Overlap over MPI needs an MPI that
    allows calls from a second thread (MPI_THREAD_SERIALIZED or better): with a lower thread
    level, init warns and reduces after the backward. Every process must use the same
    value.

    `backend` says how the gradients of CUDA models are summed (default: the environment
    variable ``CNNKIT_DISTRIBUTED_BACKEND``, else "auto"): "nccl" on the GPUs with NCCL
    (the nvidia-nccl wheel, ``pip install "cnnkit[nccl]"``, or ``CNNKIT_NCCL_LIBRARY``; its
    unique id is broadcast over MPI), "mpi" through a pinned host copy into the MPI
    all-reduce, "auto" NCCL where every process can use it (one GPU per process, NCCL found)
    and MPI otherwise, with a warning. CPU models always use MPI. With several GPUs on a
    host, init gives each local rank its own (local rank modulo the device count) unless
    ``CNNKIT_CUDA_DEVICE`` names one. Calling init again only updates the timeout,
    bucket_mb and backend.
    """
    t = float(timeout)
    if not t > 0 or t != t:
        raise ValueError(f"distributed.init: timeout must be a positive number of seconds, "
                         f"got {timeout!r}")
    b = float(bucket_mb)
    if not (b >= 0 and b < float("inf")):
        raise ValueError(f"distributed.init: bucket_mb must be a number >= 0 (MiB; 0: no "
                         f"overlap), got {bucket_mb!r}")
    name = backend if backend is not None else os.environ.get("CNNKIT_DISTRIBUTED_BACKEND",
                                                              "auto")
    if name not in _BACKENDS:
        where = "backend" if backend is not None else "CNNKIT_DISTRIBUTED_BACKEND"
        raise ValueError(f"distributed.init: {where} must be 'auto', 'mpi' or 'nccl', got "
                         f"{name!r}")
    with _S.lock:
        _S.timeout = t
        _S.bucket_mb = b
        _S.backend = name
        if _S.comm is not None or not launched_by_mpi():
            return _S.size
        try:
            from mpi4py import MPI  # MPI_THREAD_MULTIPLE: the watchdog may abort the job
        except ImportError as e:
            raise ImportError("cnnkit.distributed: this process was started by an MPI "
                              "launcher, but mpi4py is not installed: pip install "
                              "\"cnnkit[mpi]\"") from e
        _S.mpi = MPI
        _S.comm = MPI.COMM_WORLD
        _S.rank = _S.comm.Get_rank()
        _S.size = _S.comm.Get_size()
        _S.overlap_ok = _thread_level_ok(MPI)
        _S.multiple = MPI.Query_thread() >= MPI.THREAD_MULTIPLE
        if _S.size > 1:
            from . import _core

            # SyncBatchNorm's statistics travel on a communicator of their own: the step's
            # thread sums them while the reducer thread may be summing a gradient bucket
            _S.stats_comm = _S.comm.Dup()
            _core.set_stats_reducer(_reduce_stats)
            atexit.register(_core.set_stats_reducer, None)
            atexit.register(_release_nccl)
            _install_abort_hook()
            local = _S.comm.Split_type(MPI.COMM_TYPE_SHARED)
            _S.local_rank, _S.local_size = local.Get_rank(), local.Get_size()
            local.Free()
            _share_cores()
            _pick_device()
            _S.watchdog = threading.Thread(target=_watch, name="cnnkit-mpi-watchdog",
                                           daemon=True)
            _S.watchdog.start()
        return _S.size


def _thread_level_ok(mpi: Any) -> bool:
    """Whether the MPI lets the gradient reducer thread call it (the step's only MPI caller
    while the step runs): MPI_THREAD_SERIALIZED or better. Otherwise warn: no overlap."""
    provided = mpi.Query_thread()
    if provided >= mpi.THREAD_SERIALIZED:
        return True
    names = {mpi.THREAD_SINGLE: "MPI_THREAD_SINGLE", mpi.THREAD_FUNNELED: "MPI_THREAD_FUNNELED"}
    warnings.warn(f"cnnkit.distributed: the MPI provides {names.get(provided, provided)}, "
                  "below MPI_THREAD_SERIALIZED, so the gradient all-reduce cannot run on a "
                  "thread of its own; it runs after the backward (bucket_mb is ignored)",
                  RuntimeWarning, stacklevel=3)
    return False


def _bucket_bytes(model: Any = None) -> int:
    """The bucket size the Trainer gives the Net's reducer (0: one all-reduce after the
    backward). A model with SyncBatchNorm layers overlaps only under MPI_THREAD_MULTIPLE
    (its statistics are summed by the step's thread while the reducer thread sums a
    bucket)."""
    if not _S.overlap_ok:
        return 0
    b = int(_S.bucket_mb * (1 << 20))
    if b and not _S.multiple and model is not None and _has_sync_bn(model):
        if not _S.warned_sync_overlap:
            _S.warned_sync_overlap = True
            warnings.warn("cnnkit.distributed: SyncBatchNorm sums its statistics during the "
                          "backward, beside the gradient buckets, which needs "
                          "MPI_THREAD_MULTIPLE; this MPI provides less, so the gradients are "
                          "all-reduced after the backward (bucket_mb is ignored)",
                          RuntimeWarning, stacklevel=3)
        return 0
    return b


def _has_sync_bn(model: Any) -> bool:
    config = model.get_config()
    entries = config["nodes"] if isinstance(config, dict) else config
    return any(e["type"] == "SyncBatchNorm" for e in entries)


def _watch() -> None:
    """Ends the job when a collective waits past the timeout (a stuck or dead peer): the
    collectives block inside MPI, which no Python exception can interrupt."""
    while True:
        time.sleep(min(0.5, _S.timeout / 4))
        now = time.monotonic()
        for p in list(_S.pending.values()):
            if now > p[0]:
                sys.stderr.write(
                    f"cnnkit.distributed: rank {_S.rank}: {p[1]} waited more than "
                    f"{_S.timeout:g} s for the other processes (a peer is stuck or has died); "
                    "ending the job\n")
                _abort_job(1)


def _abort_job(code: int) -> None:
    """MPI_Abort after the launcher has had a moment to forward what this process wrote:
    the launcher kills every process at once, and under load the tail of the error message
    was lost."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)
    _S.comm.Abort(code)


def _share_cores() -> None:
    """Several processes on one host: each takes its share of the cores for its OpenMP
    threads (unless OMP_NUM_THREADS says otherwise), instead of every process using all."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    try:
        n_local = int(local) if local else 1
    except ValueError:
        return
    if n_local > 1:
        from . import _core

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        _core.set_num_threads(max(1, cores // n_local))


def _pick_device() -> None:
    """One GPU per process: CNNKIT_CUDA_DEVICE, else the local rank modulo the device count
    (where a host has more than one GPU; with one, every process uses it)."""
    from . import _core

    if not _core.cuda_available():
        return
    count = _core.cuda_device_count()
    env = os.environ.get("CNNKIT_CUDA_DEVICE")
    if env is not None:
        try:
            index = int(env)
        except ValueError:
            raise ValueError(f"CNNKIT_CUDA_DEVICE must be a device number, got {env!r}") \
                from None
    elif count > 1:
        index = _S.local_rank % count
    else:
        return
    try:
        _core.cuda_set_device(index)
    except RuntimeError as e:  # CUDA already used on another device in this process
        warnings.warn(f"cnnkit.distributed: rank {_S.rank} keeps its CUDA device: {e}",
                      RuntimeWarning, stacklevel=3)


def _install_abort_hook() -> None:
    previous = sys.excepthook

    def hook(kind: Any, value: Any, tb: Any) -> None:
        try:
            previous(kind, value, tb)
            sys.stderr.write(f"cnnkit.distributed: rank {_S.rank} of {_S.size} failed with "
                             f"{kind.__name__}; ending the job\n")
        finally:
            _abort_job(1)

    sys.excepthook = hook


def abort(exit_code: int = 1) -> None:
    """End the whole job now (MPI_Abort) with `exit_code`: what a process that gives up must
    do so that the others do not wait for it until their timeout. Outside a distributed job
    (one process) it does nothing."""
    if _S.comm is not None and _S.size > 1:
        _abort_job(int(exit_code))


def is_initialized() -> bool:
    """Whether :func:`init` joined an MPI job (of any size)."""
    return _S.comm is not None


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return _S.rank


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return _S.size


def is_main() -> bool:
    """Whether this is rank 0, the process that prints and writes files."""
    return _S.rank == 0


def _blocking(call: Any, what: str) -> None:
    """Run one blocking collective under the watchdog's deadline. (Blocking calls: MPICH's
    non-blocking all-reduce polled to completion took 5-9x longer on one host.)"""
    me = threading.get_ident()
    _S.pending[me] = (time.monotonic() + _S.timeout, what)
    try:
        call()
    finally:
        _S.pending.pop(me, None)


def barrier() -> None:
    """Wait until every process gets here (at most the timeout)."""
    if _S.size > 1:
        _blocking(_S.comm.Barrier, "barrier")


def _buffer(a: np.ndarray, where: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{where}: expected a numpy array, got {type(a).__name__}")
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"{where}: the array must be C-contiguous and writeable (it is "
                         "reduced in place)")
    if a.dtype not in (np.float32, np.float64, np.int32, np.int64):
        raise ValueError(f"{where}: dtype must be float32, float64, int32 or int64, got "
                         f"{a.dtype}")
    return a


def all_reduce(array: np.ndarray, op: str = "sum") -> np.ndarray:
    """Reduce `array` across processes in place ("sum", "mean", "max" or "min") and return
    it. Every process must call it with an array of the same shape and dtype."""
    a = _buffer(array, "all_reduce")
    if op not in ("sum", "mean", "max", "min"):
        raise ValueError(f"all_reduce: op must be 'sum', 'mean', 'max' or 'min', got {op!r}")
    if _S.size == 1:
        return a
    mpi = _S.mpi
    mop = {"sum": mpi.SUM, "mean": mpi.SUM, "max": mpi.MAX, "min": mpi.MIN}[op]
    _blocking(lambda: _S.comm.Allreduce(mpi.IN_PLACE, a, op=mop), "all_reduce")
    if op == "mean":
        if a.dtype.kind != "f":
            raise ValueError("all_reduce: op='mean' needs a float array")
        a /= a.dtype.type(_S.size)
    return a


def broadcast(array: np.ndarray, root: int = 0) -> np.ndarray:
    """Overwrite `array` on every process with rank `root`'s, in place, and return it."""
    a = _buffer(array, "broadcast")
    if _S.size > 1:
        _blocking(lambda: _S.comm.Bcast(a, root=root), "broadcast")
    return a


def _reduce_gradients(grads: np.ndarray) -> None:
    """The gradient reducer train_step calls (a view of the flat gradient buffer, or of one
    bucket of it from the Net's communication thread, the only MPI caller while a step
    runs)."""
    _blocking(lambda: _S.comm.Allreduce(_S.mpi.IN_PLACE, grads, op=_S.mpi.SUM),
              "the gradient all-reduce")


def _nccl_library() -> str:
    """Where NCCL is: CNNKIT_NCCL_LIBRARY, else the nvidia-nccl wheel's libnccl.so.2, else
    the name for the system's loader to find."""
    env = os.environ.get("CNNKIT_NCCL_LIBRARY")
    if env:
        return env
    import importlib.util

    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        spec = None
    for d in (spec.submodule_search_locations or []) if spec is not None else []:
        lib = os.path.join(d, "lib", "libnccl.so.2")
        if os.path.exists(lib):
            return lib
    return "libnccl.so.2"


def _nccl_problem(model: Any) -> str | None:
    """Why this process cannot sum this model's gradients with NCCL (None: it can)."""
    from . import _core

    if model.device != "cuda":
        return "the model is on the CPU"
    count = _core.cuda_device_count()
    if _S.local_size > count:
        return (f"{_S.local_size} processes share this host's {count} GPU"
                f"{'s' if count != 1 else ''} (NCCL needs one GPU per process)")
    try:
        _core.nccl_load(_nccl_library())
    except RuntimeError as e:
        return f"NCCL could not be loaded: {e}"
    return None


def _nccl_comm(model: Any) -> Any:
    """The NCCL communicator for this model's gradients, or None for the MPI path. Decided
    together: every process takes the same path (or all raise), never a mix."""
    if _S.backend == "mpi":
        return None
    problem = _nccl_problem(model)
    flags = np.array([0 if problem else 1, 1 if model.device == "cuda" else 0], np.int64)
    all_reduce(flags, "min")
    if not flags[0]:
        why = problem or "another process cannot use NCCL"
        if _S.backend == "nccl":
            raise DistributedError(f"cnnkit.distributed: backend 'nccl' on rank {_S.rank}: "
                                   f"{why}")
        if flags[1] and not _S.warned_nccl:  # a CUDA model everywhere, but no NCCL
            _S.warned_nccl = True
            warnings.warn(f"cnnkit.distributed: the gradients of this CUDA model go through "
                          f"the host and MPI, not NCCL: {why}", RuntimeWarning, stacklevel=3)
        return None
    if _S.nccl is None:
        from . import _core

        uid = np.zeros(16, np.int64)  # 128 bytes
        if _S.rank == 0:
            uid[:] = np.frombuffer(_core.nccl_unique_id(), np.int64)
        broadcast(uid)
        made: list[Any] = []
        _blocking(lambda: made.append(_core.NcclComm(uid.tobytes(), _S.size, _S.rank)),
                  "the NCCL communicator setup")
        _S.nccl = made[0]
    return _S.nccl


def _release_nccl() -> None:
    _S.nccl = None  # ncclCommDestroy once nothing holds it


def _install_reducer(model: Any) -> str:
    """Give the model's Net its gradient all-reduce for a data-parallel fit; returns which
    ("nccl" or "mpi")."""
    from . import _core

    net, scale = model._net, 1.0 / _S.size
    comm = _nccl_comm(model)
    if comm is not None:
        # queued on the GPU from the step's thread: no MPI call, so no thread level needed
        _core.set_grad_reducer_nccl(net, comm, scale, _S.timeout, int(_S.bucket_mb * (1 << 20)))
        return "nccl"
    _core.set_grad_reducer(net, _reduce_gradients, scale, _bucket_bytes(model))
    return "mpi"


def _reduce_stats(stats: np.ndarray) -> None:
    """The collective SyncBatchNorm calls while training (float64 per-channel sums, in
    place), from the step's thread, on a communicator of its own."""
    _blocking(lambda: _S.stats_comm.Allreduce(_S.mpi.IN_PLACE, stats, op=_S.mpi.SUM),
              "the SyncBatchNorm statistics all-reduce")


# -- what the Trainer uses ----------------------------------------------------------------------


def _active() -> bool:
    """Data-parallel training is on: joined (init() is called for the Trainer when a launcher
    started the process) and more than one process."""
    if _S.comm is None and launched_by_mpi():
        init()
    return _S.size > 1


def _sync_model(model: Any) -> None:
    """Every parameter and buffer from rank 0 (called before training starts)."""
    state = model.state_dict()
    for v in state.values():
        broadcast(v)
    model.load_state_dict(state)


def _check_same(values: list[int | float], what: str) -> None:
    """Raise when the processes disagree on `values` (sizes that decide the collectives)."""
    a = np.asarray(values, np.float64)
    lo, hi = a.copy(), a.copy()
    all_reduce(lo, "min")
    all_reduce(hi, "max")
    if not np.array_equal(lo, hi):
        raise DistributedError(f"cnnkit.distributed: the processes disagree on {what}: "
                               f"rank {_S.rank} has {values}, the range is "
                               f"{lo.tolist()}..{hi.tolist()}")


def _average_buffers(model: Any) -> None:
    """BatchNorm running statistics: the mean over the processes (end of each epoch)."""
    params = set(model._net.param_names())
    state = {k: v for k, v in model.state_dict().items() if k not in params}
    if not state:
        return
    flat = np.concatenate([v.ravel() for v in state.values()]).astype(np.float64)
    all_reduce(flat, "mean")
    out, at = {}, 0
    for k, v in state.items():
        out[k] = flat[at:at + v.size].reshape(v.shape).astype(np.float32)
        at += v.size
    model.load_state_dict(out, strict=False)


def _shard(order: np.ndarray) -> np.ndarray:
    """This rank's part of an epoch's sample order: the first N - N % world_size entries,
    interleaved (rank r takes entries r, r + W, r + 2W, ...), so batch b of every rank
    together is batch b of one process at W times the batch size."""
    n = (len(order) // _S.size) * _S.size
    return np.ascontiguousarray(order[:n][_S.rank::_S.size])
