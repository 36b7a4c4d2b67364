"""Ctrl-C (SIGINT) during training: stop after the current step, write a resumable checkpoint,
restore the previous handler, return the History so far; resuming continues bit-identically,
including from the middle of an epoch. Real signals: os.kill from a callback, and a parent
process interrupting a child (a script using cnnkit, and `cnnkit train`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import callbacks, cli, optim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import (  # noqa: E402, F401
    PATCH_CHECKSUMS,
    fake_mnist,
    one_thread,
    script_env,
    write_fake_mnist,
)

pytestmark = pytest.mark.usefixtures("one_thread")
N, BATCH, EPOCHS = 96, 16, 3  # 6 batches per epoch


def data():
    rng = np.random.default_rng(1)
    x = rng.random((N, 1, 10, 10), dtype=np.float32)
    y = rng.integers(0, 4, N)
    xv = rng.random((24, 1, 10, 10), dtype=np.float32)
    yv = rng.integers(0, 4, 24)
    return x, y, (xv, yv)


def make_trainer() -> ck.Trainer:
    """Dropout, BatchNorm, Adam moments and a per-step warm-up schedule: every piece of state
    that a resume must restore."""
    ck.manual_seed(4)
    model = ck.Sequential([
        ck.Conv2d(1, 4, 3), ck.BatchNorm2d(4), ck.ReLU(), ck.MaxPool2d(2), ck.Flatten(),
        ck.Dropout(0.3), ck.Linear(4 * 4 * 4, 4),
    ])  # fmt: skip
    opt = optim.Adam(lr=5e-3)
    sched = optim.LinearWarmup(opt, warmup_steps=8, after=optim.StepLR(opt, 1, gamma=0.7))
    return ck.Trainer(model, optimizer=opt, device="cpu", seed=11, lr_scheduler=sched)


@pytest.fixture(autouse=True)
def sigint_delivered():
    """A runner that starts the tests in the background (`nohup ... &`) hands them SIGINT
    ignored, and the Trainer leaves an ignored SIGINT ignored; these tests need it delivered
    like a Ctrl-C, here and in the child processes they start."""
    prev = signal.getsignal(signal.SIGINT)
    if prev is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, prev)


def sigint_default() -> None:
    """preexec_fn for children: Python installs its KeyboardInterrupt handler only when it
    starts with SIGINT at the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SigintAt(callbacks.Callback):
    """Sends a real SIGINT to this process at the end of the given global batches."""

    def __init__(self, *at: int) -> None:
        super().__init__()
        self.at, self.n = set(at), 0

    def on_train_batch_end(self, batch, logs=None):
        self.n += 1
        if self.n in self.at:
            os.kill(os.getpid(), signal.SIGINT)


def fingerprint(t: ck.Trainer) -> dict:
    """Everything that must be bit-identical between an interrupted+resumed run and a
    straight one (not times)."""
    h = {k: v for k, v in t.history.history.items() if k not in ("time", "images_per_sec")}
    opt = t.optimizer.state_dict()
    return {"weights": t.model.state_dict(), "history": h, "epochs": t.history.epoch,
            "opt_step": opt["step"], "opt_buffers": opt["buffers"], "lr": t.optimizer.lr,
            "rng": t.model._net.rng_state(), "epoch": t.epoch}


def assert_identical(a: dict, b: dict) -> None:
    for k in a["weights"]:
        assert np.array_equal(a["weights"][k], b["weights"][k]), f"weight {k} differs"
    for k in a["opt_buffers"]:
        assert np.array_equal(a["opt_buffers"][k], b["opt_buffers"][k]), f"optimizer {k}"
    assert a["history"] == b["history"]
    for k in ("epochs", "opt_step", "lr", "rng", "epoch"):
        assert a[k] == b[k], k


@pytest.fixture(scope="module")
def straight() -> dict:
    x, y, val = data()
    t = make_trainer()
    t.fit(x, y, epochs=EPOCHS, batch_size=BATCH, validation_data=val, verbose=0)
    return fingerprint(t)


# global batch at which SIGINT lands -> (epoch index, batches done in it)
POINTS = {1: (0, 1), 9: (1, 3), 12: (1, 6), 18: (2, 6)}


@pytest.mark.parametrize("at", sorted(POINTS), ids=[f"after-batch-{a}" for a in sorted(POINTS)])
@pytest.mark.parametrize("how", ["load", "resume_from"])
def test_sigint_stops_after_the_step_and_resumes_bit_identically(tmp_path, straight, at, how):
    x, y, val = data()
    ckpt = tmp_path / "ck.cnnkit"
    previous = signal.getsignal(signal.SIGINT)
    t = make_trainer()
    h = t.fit(x, y, epochs=EPOCHS, batch_size=BATCH, validation_data=val, verbose=0,
              callbacks=[SigintAt(at)], checkpoint_path=ckpt)
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is restored
    epoch, done = POINTS[at]
    assert t.interrupted and h.interrupted and t.stop_training and not t.diverged
    assert t.last_checkpoint == str(ckpt)
    assert re.search(rf"interrupted \(SIGINT / Ctrl-C\) at epoch {epoch + 1}, after batch "
                     rf"{done} of 6; checkpoint saved to .*ck.cnnkit", t.stop_reason)
    assert h.epoch == list(range(epoch)), "the History holds the completed epochs only"
    # the step is atomic: exactly `at` updates were applied, and the checkpoint says where
    assert t.optimizer.step_count == at
    meta = ck.io.read(ckpt).meta["trainer"]
    assert meta["epoch"] == epoch and meta["optimizer"]["step"] == at
    assert meta["progress"]["batch"] == done and meta["progress"]["batches"] == 6

    if how == "load":
        t2 = ck.load(ckpt, device="cpu")
        t2.fit(x, y, epochs=EPOCHS, batch_size=BATCH, validation_data=val, verbose=0)
    else:  # a script that builds its trainer (and schedule) anew, then resumes
        t2 = make_trainer()
        t2.fit(x, y, epochs=EPOCHS, batch_size=BATCH, validation_data=val, verbose=0,
               resume_from=ckpt)
    assert not t2.interrupted
    assert_identical(fingerprint(t2), straight)


def test_interrupted_twice_and_continued_in_memory(tmp_path, straight):
    """Two interrupts in one run; the same trainer object simply continues with fit()."""
    x, y, val = data()
    t = make_trainer()
    kw = dict(epochs=EPOCHS, batch_size=BATCH, validation_data=val, verbose=0)
    t.fit(x, y, callbacks=[SigintAt(4)], checkpoint_path=tmp_path / "a.cnnkit", **kw)
    t.fit(x, y, callbacks=[SigintAt(7)], checkpoint_path=tmp_path / "b.cnnkit", **kw)
    assert t.interrupted and t.optimizer.step_count == 11
    t.fit(x, y, **kw)
    assert_identical(fingerprint(t), straight)
    t3 = ck.load(tmp_path / "b.cnnkit", device="cpu")  # and the second checkpoint resumes the same way
    t3.fit(x, y, **kw)
    assert_identical(fingerprint(t3), straight)


def test_resume_needs_the_same_batching(tmp_path):
    x, y, val = data()
    ckpt = tmp_path / "ck.cnnkit"
    make_trainer().fit(x, y, epochs=2, batch_size=BATCH, verbose=0, callbacks=[SigintAt(3)],
                       checkpoint_path=ckpt)
    t = ck.load(ckpt, device="cpu")
    with pytest.raises(ValueError, match=r"stopped \(interrupted\) after batch 3 of 6 in epoch 1 "
                                         r"\(batch_size 16.*this run has 3 batches \(batch_size "
                                         r"32.*initial_epoch=0 to restart"):
        t.fit(x, y, epochs=2, batch_size=32, verbose=0)
    # an explicit initial_epoch restarts that epoch from its beginning
    t.fit(x, y, epochs=1, batch_size=32, verbose=0, initial_epoch=0)
    assert t.epoch == 1 and t._progress is None


def test_without_a_checkpoint_path(tmp_path, capsys):
    x, y, _ = data()
    t = make_trainer()
    h = t.fit(x, y, epochs=2, batch_size=BATCH, verbose=1, callbacks=[SigintAt(2)])
    assert t.interrupted and len(h) == 0 and t.last_checkpoint is None
    assert "no checkpoint written (pass fit(checkpoint_path=...)" in t.stop_reason
    assert "interrupted" in capsys.readouterr().err


def test_model_checkpoint_path_is_the_default(tmp_path):
    x, y, _ = data()
    plain = tmp_path / "plain.cnnkit"
    t = make_trainer()
    t.fit(x, y, epochs=2, batch_size=BATCH, verbose=0, callbacks=[
        callbacks.ModelCheckpoint(tmp_path / "ep-{epoch}.cnnkit"),  # formatted: not used
        callbacks.ModelCheckpoint(plain), SigintAt(8)])
    assert t.last_checkpoint == str(plain)
    assert ck.io.read(plain).meta["trainer"]["progress"]["batch"] == 2


def test_second_sigint_aborts_at_once():
    x, y, _ = data()
    previous = signal.getsignal(signal.SIGINT)
    t = make_trainer()

    class Twice(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        t.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[Twice()])
    assert signal.getsignal(signal.SIGINT) is previous


def test_handler_restored_after_an_exception_and_fit_in_a_thread():
    x, y, _ = data()
    previous = signal.getsignal(signal.SIGINT)

    class Boom(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        make_trainer().fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[Boom()])
    assert signal.getsignal(signal.SIGINT) is previous
    # outside the main thread no handler can be installed: fit still works
    out = {}
    th = threading.Thread(target=lambda: out.setdefault(
        "h", make_trainer().fit(x, y, epochs=1, batch_size=BATCH, verbose=0)))
    th.start()
    th.join(timeout=60)
    assert len(out["h"]) == 1 and signal.getsignal(signal.SIGINT) is previous


def test_a_user_handler_is_restored():
    x, y, _ = data()
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGINT, mine)
    try:
        t = make_trainer()
        t.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[SigintAt(2)])
        assert t.interrupted and seen == []  # fit handled it
        assert signal.getsignal(signal.SIGINT) is mine
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, old)


# ---- real signals from another process --------------------------------------------------------

CHILD = """
import json, os, signal, sys
import numpy as np
import cnnkit as ck
from cnnkit import callbacks, optim
ck.manual_seed(0)
rng = np.random.default_rng(0)
x = rng.random((4096, 1, 8, 8), dtype=np.float32); y = rng.integers(0, 3, 4096)
m = ck.Sequential([ck.Conv2d(1, 4, 3), ck.ReLU(), ck.Flatten(), ck.Linear(144, 3)])
t = ck.Trainer(m, optimizer=optim.SGD(lr=0.01, momentum=0.9), device="cpu")
class Tell(callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print("batch", batch, flush=True)
h = t.fit(x, y, epochs=1000, batch_size=8, verbose=0, callbacks=[Tell()],
          checkpoint_path=sys.argv[1])
print(json.dumps({"interrupted": t.interrupted, "epochs": len(h),
                  "steps": t.optimizer.step_count, "reason": t.stop_reason}), flush=True)
try:  # the default handler is back: a second SIGINT is a KeyboardInterrupt again
    os.kill(os.getpid(), signal.SIGINT)
    import time; time.sleep(5)
    print("handler not restored")
except KeyboardInterrupt:
    print("handler restored", flush=True)
"""


def test_sigint_from_another_process(tmp_path):
    ckpt = tmp_path / "child.cnnkit"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=script_env(),
                         preexec_fn=sigint_default)
    try:
        for line in p.stdout:
            if line.startswith("batch") and int(line.split()[1]) >= 20:
                break
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err[-2000:]
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert result["interrupted"] and "checkpoint saved to" in result["reason"]
    assert "handler restored" in out
    st = ck.io.read(ckpt).meta["trainer"]
    assert st["optimizer"]["step"] == result["steps"] >= 21  # nothing lost, nothing half-done
    assert st["progress"]["batch"] == result["steps"] - 512 * st["epoch"]
    t = ck.load(ckpt, device="cpu")
    assert t.optimizer.step_count == result["steps"]


CLI_CHILD = PATCH_CHECKSUMS + """
import sys
from cnnkit import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_cnnkit_train_ctrl_c_says_how_to_resume(tmp_path, fake_mnist, capsys):  # noqa: F811
    out = tmp_path / "run"
    sums = json.dumps(write_fake_mnist(fake_mnist))  # the same files the fixture wrote
    args = ["train", "--data-dir", str(fake_mnist), "--out", str(out), "--epochs", "3000",
            "--val-size", "16", "--batch-size", "16", "--verbose", "0", "--device", "cpu",
            "--threads", "1", "--schedule", "none"]
    p = subprocess.Popen([sys.executable, "-c", CLI_CHILD, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=script_env(HARDENING_SUMS=sums),
                         preexec_fn=sigint_default)
    ckpt = out / "checkpoint.cnnkit"
    try:
        deadline = time.time() + 60
        while not ckpt.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)  # the first epoch's checkpoint: fit is running
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, (p.returncode, stderr[-3000:])
    assert "Traceback" not in stderr
    assert f"checkpoint saved to {ckpt}" in stderr
    m = re.search(r"resume with: (cnnkit train --resume .*)", stderr)
    assert m, stderr
    cmd = shlex.split(m.group(1))[1:]
    assert cmd[:3] == ["train", "--resume", str(ckpt)]
    # run the printed command (in-process), stopping one epoch later
    done = ck.io.read(ckpt).meta["trainer"]["epoch"]
    cmd[cmd.index("--epochs") + 1] = str(done + 1)
    capsys.readouterr()
    assert cli.main(cmd + ["--verbose", "0", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text
    assert (out / "model.cnnkit").exists()
