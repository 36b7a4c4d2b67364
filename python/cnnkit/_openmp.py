"""How cnnkit's OpenMP threads wait between parallel regions, chosen before the OpenMP runtime
starts.

GNU OpenMP (libgomp, which the native module links) reads ``OMP_WAIT_POLICY`` and
``GOMP_SPINCOUNT`` once, when the module loads it. Unset, an idle worker spins for 300,000
iterations (milliseconds) after every parallel region before it sleeps; between two cnnkit
steps, or while numpy's OpenBLAS or PyTorch (each with its own thread pool) run in the same
process, those spinning workers hold the cores the others' threads need, and the others'
spinning threads hold cnnkit's (docs/performance.md measures it both ways round). cnnkit sets a
bounded spin, :data:`SPINCOUNT`, for the runtime it loads: the variable is set just while the
native module loads and removed afterwards, so child processes keep their defaults. One
process has one libgomp (PyTorch's bundled copy has the same soname and is shared with cnnkit,
whichever is imported first), so the runtime loaded first decides for both; when it is already
loaded nothing is set. A user's ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is left alone and
wins.
"""

from __future__ import annotations

import importlib
import os

__all__ = ["SPINCOUNT", "wait_policy"]

# Spin iterations before an idle worker sleeps (about 0.1 ms here, against libgomp's 300,000:
# about 10 ms): enough to bridge the gaps between the parallel regions of one step (as fast as
# the default), short enough not to hold a core against OpenBLAS's threads (numpy's matmuls
# between cnnkit steps ran 3x faster). 10,000 and 30,000 were worse: the worker spun on while
# preempted by OpenBLAS's yielding threads (cnnkit's steps 3x slower). See
# docs/performance.md.
SPINCOUNT = "3000"

_USER_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_policy = "not set up"


def _libgomp_loaded() -> bool:
    """Whether a GNU OpenMP runtime is already in this process: it has read its settings, and
    cnnkit's module will use it (the dynamic loader shares one library per soname, so with
    PyTorch imported first cnnkit runs on PyTorch's bundled libgomp.so.1, and vice versa)."""
    try:
        with open("/proc/self/maps") as f:
            return any("/libgomp" in line and ".so" in line for line in f)
    except OSError:
        return False


def before_loading() -> bool:
    """Set cnnkit's wait policy for the OpenMP runtime about to load; returns whether a
    variable was set (then call :func:`after_loading`)."""
    global _policy
    user = [f"{k}={os.environ[k]}" for k in _USER_VARS if k in os.environ]
    if user:
        _policy = f"{', '.join(user)} (environment)"
        return False
    if _libgomp_loaded():
        _policy = "runtime default (libgomp was loaded before cnnkit)"
        return False
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
    _policy = f"GOMP_SPINCOUNT={SPINCOUNT} (cnnkit default)"
    return True


def after_loading(was_set: bool) -> None:
    """Remove the variable :func:`before_loading` set: it was for cnnkit's runtime only."""
    if was_set and os.environ.get("GOMP_SPINCOUNT") == SPINCOUNT:
        del os.environ["GOMP_SPINCOUNT"]


def wait_policy() -> str:
    """How cnnkit's OpenMP threads wait, e.g. 'GOMP_SPINCOUNT=10000 (cnnkit default)' or
    'OMP_WAIT_POLICY=passive (environment)'."""
    return _policy


def _load_native_module() -> None:
    """Load cnnkit._core (and with it libgomp) under cnnkit's wait policy."""
    was_set = before_loading()
    try:
        importlib.import_module(f"{__package__}._core")
    finally:
        after_loading(was_set)


_load_native_module()  # cnnkit/__init__.py imports this module before anything else
