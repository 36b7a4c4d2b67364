"""Trainer.state_dict() / load_state_dict() / from_state_dict(): the checkpoint as a plain dict.

The file format stores exactly the state dict (serialization.py only converts), so resuming
from a state dict and from a file must be the same, bit for bit."""

import ast
import pathlib
import threading

import numpy as np
import pytest

import cnnkit as ck


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 12, 12), dtype=np.float32), rng.integers(0, 3, n)


def _model(seed=1):
    ck.manual_seed(seed)
    return ck.Sequential(ck.Conv2d(1, 4, 3), ck.ReLU(), ck.MaxPool2d(2), ck.Flatten(),
                         ck.Dropout(0.2), ck.Linear(4 * 5 * 5, 3))


def _trainer(model=None, **kw):
    opt = ck.optim.SGD(lr=0.05, momentum=0.9)
    t = ck.Trainer(model or _model(), optimizer=opt, device="cpu", seed=3, **kw)
    t.lr_scheduler = None
    return t


def _same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_state_dict_layout():
    x, y = _data()
    t = _trainer()
    t.fit(x, y, epochs=1, batch_size=16, verbose=0)
    sd = t.state_dict()
    assert set(sd) == {"model", "loss", "metrics", "seed", "epoch", "rng", "history",
                       "progress", "optimizer", "lr_scheduler"}
    assert sd["epoch"] == 1 and sd["loss"] == "cross_entropy" and sd["seed"] == 3
    assert sd["optimizer"]["kind"] == "sgd" and sd["optimizer"]["step"] == 6
    assert set(sd["optimizer"]["buffers"]) == {"momentum_buffer"}
    assert sd["optimizer"]["buffers"]["momentum_buffer"].shape == (sd["optimizer"]["flat_size"],)
    assert list(sd["model"]) == list(t.model.state_dict())
    # copies: changing them does not change the trainer
    sd["model"]["0.weight"][...] = 0
    assert np.any(t.model.state_dict()["0.weight"] != 0)


@pytest.mark.parametrize("how", ["load_state_dict", "from_state_dict", "file"])
def test_resume_from_state_is_bit_exact(tmp_path, how):
    x, y = _data()
    ref = _trainer()
    ref.fit(x, y, epochs=2, batch_size=16, verbose=0)

    t = _trainer()
    t.fit(x, y, epochs=1, batch_size=16, verbose=0)
    sd = t.state_dict()
    if how == "load_state_dict":
        t2 = _trainer(_model(seed=7))  # other initial weights: all replaced
        t2.load_state_dict(sd)
    elif how == "from_state_dict":
        t2 = ck.Trainer.from_state_dict(_model(seed=7), sd, device="cpu")
    else:
        ck.save(t, tmp_path / "t.cnnkit")
        t2 = ck.load(tmp_path / "t.cnnkit", device="cpu")
        sd2 = t2.state_dict()
        for k in sd:
            if k not in ("model", "optimizer"):
                assert sd2[k] == sd[k], k
    assert t2.epoch == 1
    t2.fit(x, y, epochs=2, batch_size=16, verbose=0)
    _same_weights(ref, t2)
    assert t2.history.history["loss"] == ref.history.history["loss"]


def _bad(sd, path, value):
    import copy
    sd = copy.deepcopy(sd)
    d = sd
    for p in path[:-1]:
        d = d[p]
    if value is KeyError:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return sd


@pytest.mark.parametrize("path,value,match", [
    (("loss",), "mse", "trained with loss 'mse', this trainer uses 'cross_entropy'"),
    (("loss",), "hinge", "unknown loss"),
    (("epoch",), -1, "trainer.epoch must be a non-negative int"),
    (("rng",), {"seed": 1}, "trainer.rng must be"),
    (("history",), {"epoch": "x"}, "bad history"),
    (("optimizer", "kind"), "adam", "bad optimizer: adam"),
    (("optimizer", "buffers", "momentum_buffer"), np.zeros(3, np.float32), "must be float32"),
    (("optimizer", "flat_size"), 5, "must be float32 \\(5,\\), got float32 \\(384,\\)"),
    (("optimizer", "step"), -2, "step must be a non-negative int"),
    (("model", "0.weight"), np.zeros((2, 2), np.float32), "expects shape"),
    (("model", "5.bias"), KeyError, "missing keys"),
    (("progress",), {"epoch": 1}, "trainer.progress must be null or an object"),
    (("lr_scheduler",), {"kind": "nope"}, "bad lr schedule"),
    (("metrics",), ["f1"], "bad metrics"),
    (("seed",), KeyError, "missing keys \\['seed'\\]"),
])
def test_bad_state_is_refused_and_changes_nothing(path, value, match):
    x, y = _data()
    t = _trainer()
    t.fit(x, y, epochs=1, batch_size=16, verbose=0)
    good = t.state_dict()
    other = _trainer(_model(seed=9))
    before = other.state_dict()
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(_bad(good, path, value))
    after = other.state_dict()
    for k in before["model"]:
        np.testing.assert_array_equal(before["model"][k], after["model"][k])
    assert after["epoch"] == before["epoch"] and after["rng"] == before["rng"]
    assert other.optimizer.state_dict()["step"] == 0


def test_not_a_dict():
    with pytest.raises(ValueError, match="expected a trainer state dict, got list"):
        _trainer().load_state_dict([1, 2])


def test_refused_from_another_thread_while_fitting():
    x, y = _data(2048)
    t = _trainer()
    seen = {}
    started = threading.Event()

    class Probe(ck.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            started.set()

    def fit():
        t.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[Probe()])

    th = threading.Thread(target=fit)
    th.start()
    assert started.wait(30)
    for name, call in [("state_dict", t.state_dict), ("save", lambda: t.save("unused.ck")),
                       ("load_state_dict", lambda: t.load_state_dict({}))]:
        try:
            call()
            seen[name] = None
        except RuntimeError as e:
            seen[name] = str(e)
    th.join()
    for name, msg in seen.items():
        assert msg is not None and "fitting in another thread" in msg, (name, msg)
    t.state_dict()  # fine again once fit returned


def test_serialization_does_not_touch_trainer_internals():
    src = pathlib.Path(ck.serialization.__file__).read_text()
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "trainer":
            assert not node.attr.startswith("_"), f"serialization.py uses trainer.{node.attr}"


def test_load_model_file_on_device(tmp_path):
    m = _model()
    ck.save(m, tmp_path / "m.cnnkit")
    assert ck.load(tmp_path / "m.cnnkit").device == "cpu"
    assert ck.load(tmp_path / "m.cnnkit", device="cpu").device == "cpu"
    with pytest.raises(ValueError, match="device"):
        ck.load(tmp_path / "m.cnnkit", device="tpu")
