"""Long runs: 2,000 training steps of LeNet-5 without resident-memory growth after warm-up,
and no file descriptors, threads or memory leaking across repeated
fit / evaluate / predict / save / load cycles (with the file-writing callbacks)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import callbacks, models, optim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import (  # noqa: E402, F401
    figures_line,
    one_thread,
    tiny_data,
    tiny_model,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="needs Linux /proc")
PAGE = os.sysconf("SC_PAGE_SIZE")
STEPS, WARMUP, BATCH = 2000, 200, 8
RSS_GROWTH_LIMIT = 4 << 20  # bytes, between step 200 and step 2000


try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


def rss() -> int:
    """Resident set size in bytes, after returning free heap pages to the OS (glibc's arenas
    otherwise keep freed memory resident, which looks like growth but is not a leak)."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


class RssProbe(callbacks.Callback):
    def __init__(self, at: tuple[int, ...]) -> None:
        super().__init__()
        self.at, self.n, self.rss = set(at), 0, {}

    def on_train_batch_end(self, batch, logs=None):
        self.n += 1
        if self.n in self.at:
            self.rss[self.n] = rss()


@pytest.mark.usefixtures("one_thread")
def test_2000_lenet5_steps_do_not_grow_memory():
    rng = np.random.default_rng(0)
    n = 50 * BATCH  # 50 steps per epoch, 40 epochs
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n)
    ck.manual_seed(0)
    t = ck.Trainer(models.MODELS["lenet5"](), optimizer=optim.SGD(lr=0.01, momentum=0.9),
                   device="cpu")
    probe = RssProbe((WARMUP, 1000, STEPS))
    h = t.fit(x, y, epochs=STEPS // 50, batch_size=BATCH, verbose=0, callbacks=[probe])
    assert probe.n == STEPS and t.optimizer.step_count == STEPS and len(h) == STEPS // 50
    assert all(np.isfinite(v).all() for v in t.model.state_dict().values())
    growth = probe.rss[STEPS] - probe.rss[WARMUP]
    print(figures_line("longrun", {"steps": STEPS, "batch": BATCH,
                                   "rss_mb_at_step": {k: round(v / 2**20, 2)
                                                      for k, v in probe.rss.items()},
                                   "growth_kb": growth // 1024}))
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MB after warm-up"


def _cycle(tmp: Path, i: int) -> list[weakref.ref]:
    x, y = tiny_data(64, seed=i)
    t = ck.Trainer(tiny_model(i), optimizer=optim.Adam(lr=1e-3), device="cpu", seed=i)
    t.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0, callbacks=[
        callbacks.CSVLogger(tmp / "log.csv"),
        callbacks.ModelCheckpoint(tmp / "ck-{epoch}.cnnkit"),
        callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
    ])
    t.evaluate(x, y)
    t.predict(x)
    t.predict_classes(x, batch_size=7)
    ck.save(t, tmp / "t.cnnkit")
    ck.save(t.model, tmp / "m.cnnkit")
    t2 = ck.load(tmp / "t.cnnkit", device="cpu")
    t2.fit(x, y, epochs=3, batch_size=16, verbose=0)
    ck.load_model(tmp / "m.cnnkit").predict(x)
    ck.io.load_weights(t.model, tmp / "ck-2.cnnkit")
    with pytest.raises(ck.io.CheckpointError):
        ck.load(tmp / "log.csv")
    return [weakref.ref(o) for o in (t, t.model, t.optimizer, t2, t2.model, t2.optimizer)]


def test_no_fd_thread_or_memory_leak_across_cycles(tmp_path, monkeypatch):
    # fsync can take a second on a busy disk and is not what this test is about; the
    # stand-in still needs a valid open descriptor
    monkeypatch.setattr(os, "fsync", os.fstat)
    _cycle(tmp_path, 0)  # warm-up, with the default threads: the OpenMP pool exists now
    threads = ck.get_num_threads()
    ck.set_num_threads(1)  # fast on a busy machine (see one_thread)
    try:
        _check_cycles(tmp_path)
    finally:
        ck.set_num_threads(threads)


def _check_cycles(tmp_path: Path) -> None:
    for i in range(1, 3):  # warm-up: allocator arenas, imports
        _cycle(tmp_path, i)
    gc.collect()
    before = {"fds": open_fds(), "os_threads": os_threads(),
              "py_threads": threading.active_count(), "rss": rss()}
    cycles = 30
    refs = []
    for i in range(cycles):
        refs += _cycle(tmp_path, 100 + i)
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} trainers/models/optimizers of finished cycles are still alive"
    after = {"fds": open_fds(), "os_threads": os_threads(),
             "py_threads": threading.active_count(), "rss": rss()}
    print(figures_line("cycles", {"cycles": cycles, "before": before, "after": after,
                                  "rss_growth_kb": (after["rss"] - before["rss"]) // 1024}))
    assert after["fds"] == before["fds"], "file descriptors leaked"
    assert after["os_threads"] == before["os_threads"], "threads leaked"
    assert after["py_threads"] == before["py_threads"]
    assert after["rss"] - before["rss"] < 4 << 20, "memory grew across cycles"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
