"""Concurrency: several Python threads calling predict on one model get what serial calls get;
training one model in a thread while other threads predict with another model works and gives
the same numbers as doing it alone. (The native Net serialises calls on one model with a mutex
and releases the GIL while computing.)"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import models, optim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import script_env, tiny_data, tiny_model  # noqa: E402

THREADS = 4


def batches(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((int(rng.integers(1, 33)), 1, 28, 28), dtype=np.float32) for _ in range(n)]


def test_parallel_predict_on_one_model_equals_serial():
    ck.manual_seed(0)
    t = ck.Trainer(models.MODELS["lenet5"](), device="cpu")
    xs = batches(16, 1)
    serial = [t.predict(x) for x in xs]
    # the same batch size as the threads below: a batch of 1-4 rows takes the GEMM's skinny
    # path, whose rounding differs from the tiled one in the last bit
    serial_raw = [t.model.predict(x, batch_size=5) for x in xs]
    barrier = threading.Barrier(THREADS)

    def work(k: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        barrier.wait()
        out = []
        for r in range(2):
            for i in range(k, len(xs), THREADS) if r % 2 == 0 else range(len(xs)):
                out.append((i, t.predict(xs[i]), t.model.predict(xs[i], batch_size=5)))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for f in [pool.submit(work, k) for k in range(THREADS)] for r in f.result()]
    assert len(results) == len(xs) + THREADS * len(xs)
    for i, p, raw in results:
        assert np.array_equal(p, serial[i]), f"batch {i}: a concurrent predict differs"
        assert np.array_equal(raw, serial_raw[i])


def _train(seed: int) -> tuple[dict, list[float]]:
    x, y = tiny_data(128, seed=seed)
    t = ck.Trainer(tiny_model(seed), optimizer=optim.SGD(lr=0.05, momentum=0.9), device="cpu",
                   seed=seed)
    h = t.fit(x, y, epochs=4, batch_size=16, verbose=0)
    return t.model.state_dict(), h.history["loss"]


def test_training_in_a_thread_while_other_threads_predict():
    alone_weights, alone_loss = _train(3)  # the reference: the same run, on its own
    ck.manual_seed(5)
    other = ck.Trainer(models.MODELS["lenet5"](), device="cpu")
    xs = batches(12, 2)
    expected = [other.predict(x) for x in xs]
    stop = threading.Event()
    box: dict = {}

    def trainer_thread():
        try:
            box["result"] = _train(3)
        finally:
            stop.set()

    def predictor(k: int) -> int:
        n = 0
        while not stop.is_set() or n < len(xs):
            i = (k + n) % len(xs)
            assert np.array_equal(other.predict(xs[i]), expected[i])
            n += 1
        return n

    th = threading.Thread(target=trainer_thread)
    with ThreadPoolExecutor(THREADS - 1) as pool:
        futures = [pool.submit(predictor, k) for k in range(THREADS - 1)]
        th.start()
        th.join(timeout=120)
        counts = [f.result(timeout=120) for f in futures]
    assert not th.is_alive()
    weights, loss = box["result"]
    assert loss == alone_loss  # bit-identical to training alone
    for k in weights:
        assert np.array_equal(weights[k], alone_weights[k])
    assert min(counts) >= len(xs)


def test_training_and_predicting_one_model_from_two_threads_is_safe():
    """Not a meaningful thing to do (predictions see weights mid-training), but it must not
    crash or corrupt: the native mutex serialises the calls."""
    x, y = tiny_data(128, seed=7)
    t = ck.Trainer(tiny_model(7), optimizer=optim.Adam(lr=1e-3), device="cpu")
    done = threading.Event()
    outs = []

    def pred():
        while not done.is_set():
            outs.append(t.predict(x[:16]))

    th = threading.Thread(target=pred)
    th.start()
    try:
        t.fit(x, y, epochs=3, batch_size=16, verbose=0)
    finally:
        done.set()
        th.join(timeout=60)
    assert outs and all(o.shape == (16, 5) and np.isfinite(o).all() for o in outs)
    assert all(np.allclose(o.sum(axis=1), 1, atol=1e-5) for o in outs)


# A reproduction of a native deadlock: Net.forward/backward re-acquire the GIL while still
# holding the Net's mutex (csrc/bindings/module.cpp), and set_tensor / zero_grad / to /
# set_flat_params / set_optimizer / set_optimizer_state take that mutex while holding the GIL.
# One thread predicting while another loads weights into the same model then hangs forever.
DEADLOCK = """
import faulthandler, sys, threading, time
faulthandler.dump_traceback_later(4.0, exit=True)  # a watchdog that needs no GIL: exit 1
import numpy as np
import cnnkit as ck
m = ck.Sequential([ck.Linear(4, 3)])
x = np.zeros((2, 4), np.float32)
sd = m.state_dict()
stop = time.time() + 1.5
def predict():
    while time.time() < stop:
        m.forward(x)
def reload():
    while time.time() < stop:
        m.load_state_dict(sd)
        m.zero_grad()
ts = [threading.Thread(target=predict), threading.Thread(target=reload)]
for t in ts: t.start()
for t in ts: t.join()
print("no deadlock")
"""


def test_predict_while_loading_weights_does_not_deadlock():
    try:
        p = subprocess.run([sys.executable, "-c", DEADLOCK], capture_output=True, text=True,
                           timeout=20, env=script_env())
    except subprocess.TimeoutExpired:
        pytest.fail("deadlock: forward in one thread + load_state_dict in another hung")
    assert p.returncode == 0 and "no deadlock" in p.stdout, \
        "deadlock: forward in one thread + load_state_dict in another hung:\n" + p.stderr[-2000:]
