"""The native fit path: batches gathered (shuffled, uint8 scaled to [0, 1]) and trained on in C++
(``cnnkit._core.BatchFeed``) give the bits of the Python path it replaces -- the batches, the
weights, the History -- and keep its behaviour: callbacks, the remainder batch, validation,
divergence, Ctrl-C and bit-exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import _core, optim
from cnnkit import callbacks as cb
from cnnkit import trainer as trainer_mod
from cnnkit.data import DataLoader, as_input


@pytest.fixture(autouse=True)
def one_thread():
    before = ck.get_num_threads()
    ck.set_num_threads(1)
    yield
    ck.set_num_threads(before)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def images(n: int, seed: int = 0, shape=(1, 8, 8), classes: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return x, rng.integers(0, classes, n)


def make_trainer(seed: int = 3, loss: str = "cross_entropy", out: int = 3) -> ck.Trainer:
    """Dropout, BatchNorm and Adam moments: state a different batch or order would show."""
    ck.manual_seed(seed)
    model = ck.Sequential([
        ck.Conv2d(1, 4, 3), ck.BatchNorm2d(4), ck.ReLU(), ck.MaxPool2d(2), ck.Flatten(),
        ck.Dropout(0.25), ck.Linear(4 * 3 * 3, out),
    ])  # fmt: skip
    return ck.Trainer(model, loss=loss, optimizer=optim.Adam(lr=3e-3), device="cpu", seed=7)


def identity(xb, yb):
    return xb, yb


def fingerprint(t: ck.Trainer) -> dict:
    h = {k: v for k, v in t.history.history.items() if k not in ("time", "images_per_sec")}
    return {"weights": t.model.state_dict(), "history": h, "epochs": t.history.epoch,
            "opt": t.optimizer.state_dict()["buffers"], "rng": t.model._net.rng_state(),
            "steps": t.optimizer.step_count, "stop": t.stop_reason}


def assert_same(a: dict, b: dict) -> None:
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert np.array_equal(bits(a["weights"][k]), bits(b["weights"][k])), f"weight {k}"
    for k in a["opt"]:
        assert np.array_equal(bits(a["opt"][k]), bits(b["opt"][k])), f"optimizer {k}"
    assert a["history"] == b["history"]
    for k in ("epochs", "rng", "steps", "stop"):
        assert a[k] == b[k], k


class Counter(cb.Callback):
    """Takes batch hooks (so fit makes one native call per batch) and records them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch, logs["size"]))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("end", batch, logs["size"], logs["loss"], logs.get("accuracy")))


# ---- the gather --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("shuffle", [False, True])
def test_native_gather_is_the_python_batch_bit_for_bit(dtype, shuffle):
    x, y = images(103, shape=(1, 5, 7))
    if dtype == np.float32:
        x = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    loader = DataLoader(x, y, batch_size=16, shuffle=shuffle, seed=5)
    assert loader.x.dtype == dtype  # uint8 is stored as uint8
    feed = _core.BatchFeed(loader.x, y.astype(np.int64), loader.batch_size)
    for epoch in (0, 3):
        order = loader.order(epoch)
        feed.set_order(order if shuffle else None)
        loader.set_epoch(epoch)
        want = list(loader)
        assert feed.num_batches == len(want) == 7  # the last batch has 7 samples
        for b, (xb, yb) in enumerate(want):
            gx, gy = feed.gather(b)
            assert gx.dtype == np.float32 and gx.shape == xb.shape
            assert np.array_equal(bits(gx), bits(xb)), (epoch, b)
            assert np.array_equal(gy, yb)
            ids = order[b * 16 : (b + 1) * 16]
            assert np.array_equal(bits(gx), bits(as_input(x[ids])))  # as_input's arithmetic


def test_native_gather_of_float_targets_and_drop_last():
    x, _ = images(50)
    t = np.random.default_rng(1).standard_normal((50, 2)).astype(np.float32)
    feed = _core.BatchFeed(np.ascontiguousarray(x), t, 16, True)
    assert feed.num_batches == 3
    order = np.random.default_rng(0).permutation(50)
    feed.set_order(order)
    gx, gt = feed.gather(2)
    assert np.array_equal(gt, t[order[32:48]])
    assert np.array_equal(bits(gx), bits(as_input(x[order[32:48]])))
    with pytest.raises(ValueError, match="out of range"):
        feed.gather(3)


def test_batch_feed_refuses_bad_input():
    x, y = images(10)
    with pytest.raises(ValueError, match="distinct indices in 0..9"):
        _core.BatchFeed(x, y.astype(np.int64), 4).set_order(np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="distinct indices in 0..9"):
        _core.BatchFeed(x, y.astype(np.int64), 4).set_order(np.array([3, 10]))
    with pytest.raises(ValueError, match="11 entries for 10 samples"):
        _core.BatchFeed(x, y.astype(np.int64), 4).set_order(np.arange(11))
    with pytest.raises(ValueError, match="uint8 or float32"):
        _core.BatchFeed(x.astype(np.float64), y.astype(np.int64), 4)
    with pytest.raises(ValueError, match="one row per sample"):
        _core.BatchFeed(x, y[:5].astype(np.int64), 4)
    t = make_trainer()
    feed = _core.BatchFeed(x, np.zeros((10, 3), np.float32), 4)
    with pytest.raises(ValueError, match="loss takes int64 labels"):
        feed.train(t.model._net, 0, 1)


# ---- fit: the same bits as the Python path ------------------------------------------------------


def fit_fingerprint(how: str, x, y, val=None, loss="cross_entropy", out=3, epochs=3,
                    batch_size=16, **kw) -> tuple[dict, ck.Trainer]:
    t = make_trainer(loss=loss, out=out)
    if how == "python":  # a transform keeps the batches in Python: the path before the feed
        data = DataLoader(x, y, batch_size=batch_size, shuffle=kw.pop("shuffle", True),
                          seed=t.seed, transform=identity)
        t.fit(data, epochs=epochs, validation_data=val, verbose=0, **kw)
    else:
        callbacks = [Counter()] if how == "per_batch" else []
        t.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=val, verbose=0,
              callbacks=callbacks, **kw)
    return fingerprint(t), t


@pytest.mark.parametrize("how", ["runs", "per_batch"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_fit_gives_the_bits_of_the_python_path(how, dtype):
    x, y = images(90)  # 6 batches, the last of 10
    xv, yv = images(20, seed=1)
    if dtype == np.float32:
        x = as_input(x)
    want, _ = fit_fingerprint("python", x, y, val=(xv, yv))
    got, t = fit_fingerprint(how, x, y, val=(xv, yv))
    assert_same(got, want)
    assert t.evaluate(xv, yv) == t.evaluate(DataLoader(xv, yv, batch_size=256,
                                                       transform=identity))


def test_fit_without_shuffle_with_mse_and_a_drop_last_loader():
    x, _ = images(70)
    target = np.random.default_rng(4).standard_normal((70, 2)).astype(np.float32)
    want, _ = fit_fingerprint("python", x, target, loss="mse", out=2, shuffle=False)
    got, _ = fit_fingerprint("runs", x, target, loss="mse", out=2, shuffle=False)
    assert_same(got, want)
    # a user DataLoader without a transform goes through the feed, drop_last included
    a, b = make_trainer(), make_trainer()
    y = np.arange(70) % 3
    a.fit(DataLoader(x, y, batch_size=16, drop_last=True, transform=identity), epochs=2,
          verbose=0)
    b.fit(DataLoader(x, y, batch_size=16, drop_last=True), epochs=2, verbose=0)
    assert a.optimizer.step_count == b.optimizer.step_count == 8
    assert_same(fingerprint(b), fingerprint(a))


def test_a_user_loader_with_bad_labels_still_fails_at_its_batch():
    x, y = images(64)
    y = y.astype(np.float64)
    y[40] = 0.5  # in batch 2
    t = make_trainer()
    with pytest.raises(ValueError, match="not a whole number"):
        t.fit(DataLoader(x, y, batch_size=16), epochs=1, verbose=0)
    assert t.optimizer.step_count == 2  # the two batches before it were trained, as before


def test_divergence_stops_at_the_same_batch():
    x, y = images(96)
    runs = []
    for how in ("python", "runs", "per_batch"):
        t = make_trainer()
        t.optimizer.lr = 1e30
        if how == "python":
            t.fit(DataLoader(x, y, batch_size=16, shuffle=True, seed=t.seed,
                             transform=identity), epochs=2, verbose=0)
        else:
            t.fit(x, y, epochs=2, batch_size=16, verbose=0,
                  callbacks=[Counter()] if how == "per_batch" else [])
        assert t.diverged and "training diverged" in t.stop_reason
        runs.append(fingerprint(t))
    assert_same(runs[1], runs[0])
    assert_same(runs[2], runs[0])


# ---- callbacks, the progress bar, memory --------------------------------------------------------


def test_callbacks_get_every_batch_call_with_sizes_and_logs():
    x, y = images(40)
    mine = Counter()
    t = make_trainer()
    t.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[mine])
    sizes = [16, 16, 8]
    want_begin = [("begin", b, n) for _ in range(2) for b, n in enumerate(sizes)]
    assert [c for c in mine.calls if c[0] == "begin"] == want_begin
    ends = [c for c in mine.calls if c[0] == "end"]
    assert [(c[1], c[2]) for c in ends] == [(b, n) for _ in range(2) for b, n in enumerate(sizes)]
    assert all(np.isfinite(c[3]) and 0 <= c[4] <= 1 for c in ends)
    assert mine.calls[0][0] == "begin" and mine.calls[1][0] == "end"  # around each batch


def test_which_callbacks_need_batch_hooks():
    opt = optim.SGD(lr=0.1)
    assert not cb.Callback().uses_batch_hooks()
    assert Counter().uses_batch_hooks()
    assert not cb.EarlyStopping().uses_batch_hooks()
    assert not cb.TerminateOnNaN().uses_batch_hooks()
    assert not cb.LambdaCallback(on_epoch_end=print).uses_batch_hooks()
    assert cb.LambdaCallback(on_train_batch_end=print).uses_batch_hooks()
    assert cb.SchedulerCallback(optim.LinearWarmup(opt, warmup_steps=3)).uses_batch_hooks()
    assert not cb.SchedulerCallback(optim.StepLR(opt, 1)).uses_batch_hooks()
    assert not cb.CallbackList([cb.EarlyStopping()]).uses_batch_hooks()
    assert cb.CallbackList([cb.EarlyStopping(), Counter()]).uses_batch_hooks()


def test_per_step_schedule_matches_the_python_path():
    x, y = images(64)
    runs = []
    for python in (True, False):
        t = make_trainer()
        sched = optim.LinearWarmup(t.optimizer, warmup_steps=5)
        data = (DataLoader(x, y, batch_size=16, shuffle=True, seed=t.seed, transform=identity),
                None) if python else (x, y)
        t.fit(*data, epochs=2, batch_size=16, verbose=0, lr_scheduler=sched)
        runs.append(fingerprint(t))
    assert_same(runs[1], runs[0])


def test_the_progress_bar_is_updated_per_native_run(monkeypatch, capsys):
    shown = []
    monkeypatch.setattr(trainer_mod, "_NATIVE_RUN_SECONDS", 1e9)
    real = trainer_mod.Trainer._show
    monkeypatch.setattr(trainer_mod.Trainer, "_show",
                        lambda self, bar, p, t0, n: (shown.append(n), real(self, bar, p, t0, n)))
    x, y = images(200)
    make_trainer().fit(x, y, epochs=1, batch_size=8, verbose=1)
    assert shown == [25]  # one update for the 25 batches of the epoch, not 25
    assert "25/25" in capsys.readouterr().err


def test_no_batch_sized_arrays_are_allocated_per_batch():
    x, y = images(2048, shape=(1, 16, 16))
    ck.manual_seed(0)
    t = ck.Trainer(ck.Sequential([ck.Conv2d(1, 4, 3), ck.ReLU(), ck.Flatten(),
                                  ck.Linear(4 * 14 * 14, 3)]),
                   optimizer=optim.SGD(lr=0.01), device="cpu")
    t.fit(x, y, epochs=1, batch_size=128, verbose=0)  # warm up
    tracemalloc.start()
    try:
        t.fit(x, y, epochs=t.epoch + 1, batch_size=128, verbose=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    batch_bytes = 128 * 16 * 16 * 4  # one float32 batch: 128 KiB; the Python path makes one
    assert peak < batch_bytes, peak  # per batch (and the whole float copy of x up front)


# ---- Ctrl-C and resume ----------------------------------------------------------------------------


@pytest.fixture
def sigint_delivered():
    prev = signal.getsignal(signal.SIGINT)
    if prev is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, prev)


def test_ctrl_c_during_a_native_run_saves_and_resumes_bit_exactly(tmp_path, sigint_delivered):
    x, y = images(4096, shape=(1, 8, 8))
    epochs = 3
    straight = make_trainer()
    straight.fit(x, y, epochs=epochs, batch_size=8, verbose=0)
    want = fingerprint(straight)
    seconds = sum(straight.history.history["time"])

    ckpt = tmp_path / "run.cnnkit"
    t = make_trainer()
    previous = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(seconds / 3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        t.fit(x, y, epochs=epochs, batch_size=8, verbose=0, checkpoint_path=ckpt)
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGINT) is previous
    assert t.interrupted and "checkpoint saved to" in t.stop_reason
    st = ck.io.read(ckpt).meta["trainer"]
    assert st["optimizer"]["step"] == t.optimizer.step_count  # nothing lost, nothing half-done
    assert 0 < t.optimizer.step_count <= epochs * 512
    resumed = ck.load(ckpt, device="cpu")
    resumed.fit(x, y, epochs=epochs, batch_size=8, verbose=0)
    assert_same(fingerprint(resumed), want)


# ---- the OpenMP wait policy ----------------------------------------------------------------------


def _policy_in_child(env_extra: dict, code: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    prog = ("import os, cnnkit\n" + code +
            "print(cnnkit._openmp.wait_policy(), 'GOMP_SPINCOUNT' in os.environ, "
            "os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_wait_policy_is_set_for_cnnkits_runtime_only_and_yields_to_the_environment():
    from cnnkit import _openmp

    mine = _policy_in_child({})
    assert mine == f"GOMP_SPINCOUNT={_openmp.SPINCOUNT} (cnnkit default) False None"  # removed
    assert _policy_in_child({"GOMP_SPINCOUNT": "77"}) == \
        "GOMP_SPINCOUNT=77 (environment) True 77"
    assert _policy_in_child({"OMP_WAIT_POLICY": "passive"}).startswith(
        "OMP_WAIT_POLICY=passive (environment) False")


# ---- cnnkit bench --via fit -----------------------------------------------------------------------


def test_bench_via_fit_and_its_header():
    from cnnkit import bench, cli

    a = cli.build_parser().parse_args(["bench", "--via", "step", "fit"])
    assert a.via == ["step", "fit"]
    assert cli.build_parser().parse_args(["bench"]).via == ["step"]
    assert bench.build_parser(via=("step", "fit")).parse_args([]).via == ["step", "fit"]
    r = bench.worker("cnnkit", "lenet5", "train", 8, 1, 0.05, "fit")
    assert r["images_per_sec"] > 0 and r["steps"] >= 8
    with pytest.raises(ValueError, match="train cases"):
        bench.worker("cnnkit", "lenet5", "infer", 8, 1, 0.05, "fit")
    assert bench.cpu_model() and bench.kernel_set() and bench.wait_policy()
