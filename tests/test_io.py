"""cnnkit.io: model and trainer files round-trip, resuming is bit-identical, writes are
atomic, and truncated/corrupted/foreign files are rejected before anything is changed."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import callbacks as cb
from cnnkit import io, optim
from cnnkit.io import CheckpointError
from cnnkit.trainer import Trainer


def make_model(seed: int = 0) -> ck.Sequential:
    ck.manual_seed(seed)
    return ck.Sequential([
        ck.Conv2d(1, 4, 3), ck.BatchNorm2d(4), ck.ReLU(), ck.MaxPool2d(2), ck.Flatten(),
        ck.Linear(36, 16), ck.ReLU(), ck.Dropout(0.3), ck.Linear(16, 3),
    ])


def make_data(n: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = 0.3 * rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    for k in range(3):
        x[y == k, :, 1 + 2 * k : 3 + 2 * k, :] += 1.0
    return x, y


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.cnnkit"
    model = make_model()
    io.save(model, path)
    return path, model


def read_parts(path) -> tuple[dict, bytes]:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[8:16])
    return json.loads(raw[16 : 16 + n]), raw[16 + n :]


def write_parts(path, header, data: bytes, header_text: str | None = None) -> None:
    hb = (header_text if header_text is not None else json.dumps(header)).encode()
    Path(path).write_bytes(io.MAGIC + struct.pack("<Q", len(hb)) + hb + data)


def rewrite(path, fn) -> None:
    """Apply fn to the JSON header of a file (the data section, and so its CRC, unchanged)."""
    header, data = read_parts(path)
    fn(header)
    write_parts(path, header, data)


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


def test_model_round_trip(model_file, rng):
    path, model = model_file
    loaded = io.load(path)
    assert isinstance(loaded, ck.Sequential)
    assert loaded.get_config() == model.get_config()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert io.load_model(path).get_config() == model.get_config()
    raw = Path(path).read_bytes()
    assert raw[:8] == b"CNNKIT01" and len(raw) % 64 == 0


def test_loading_does_not_disturb_the_init_seed_stream(model_file):
    path, _ = model_file
    ck.manual_seed(7)
    a = ck.Linear(3, 3).state_dict()["0.weight"]
    ck.manual_seed(7)
    io.load(path)
    b = ck.Linear(3, 3).state_dict()["0.weight"]
    np.testing.assert_array_equal(a, b)


def test_trainer_round_trip(tmp_path):
    x, y = make_data()
    opt = optim.Adam(lr=0.01, betas=(0.8, 0.99), weight_decay=1e-3)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    trainer = Trainer(make_model(), optimizer=opt, seed=11, lr_scheduler=sched, device="cpu")
    trainer.fit(x, y, epochs=2, batch_size=32, verbose=0, validation_split=0.25)
    path = tmp_path / "t.cnnkit"
    trainer.save(path)
    t2 = io.load(path, device="cpu")
    assert isinstance(t2, Trainer)
    assert t2.epoch == 2 and t2.seed == 11 and t2.loss.name == "cross_entropy"
    assert t2.history.history == trainer.history.history and t2.history.epoch == [0, 1]
    assert isinstance(t2.optimizer, optim.Adam)
    assert t2.optimizer.get_config() == opt.get_config()
    assert t2.optimizer.lr == opt.lr == pytest.approx(0.0025)
    a, b = opt.state_dict(), t2.optimizer.state_dict()
    assert a["step"] == b["step"] == 10
    for k in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(a["buffers"][k], b["buffers"][k])
    assert t2.model._net.rng_state() == trainer.model._net.rng_state()
    assert t2.lr_scheduler.state_dict() == sched.state_dict()
    for k, v in trainer.model.state_dict().items():
        np.testing.assert_array_equal(t2.model.state_dict()[k], v)
    assert isinstance(io.load_model(path), ck.Sequential)


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------

RESUME_CASES = {
    "sgd-momentum": lambda: (optim.SGD(lr=0.05, momentum=0.9, nesterov=True), None),
    "adam": lambda: (optim.Adam(lr=0.01), None),
    "adamw-steplr": lambda: _with(optim.AdamW(lr=0.01), lambda o: optim.StepLR(o, 1, 0.7)),
    "rmsprop-warmup-cosine": lambda: _with(
        optim.RMSprop(lr=0.01, momentum=0.5),
        lambda o: optim.LinearWarmup(o, 7, 0.2, after=optim.CosineAnnealingLR(o, T_max=4)),
    ),
}


def _with(opt, make_sched):
    return opt, make_sched(opt)


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_is_bit_identical(tmp_path, case):
    x, y = make_data()
    val = make_data(48, seed=1)
    fit = dict(batch_size=32, verbose=0, validation_data=val)

    def trainer(model_seed: int = 0, seed: int = 5) -> Trainer:
        opt, sched = RESUME_CASES[case]()
        return Trainer(make_model(model_seed), optimizer=opt, lr_scheduler=sched, seed=seed,
                       device="cpu")

    full = trainer()
    full.fit(x, y, epochs=4, **fit)

    first = trainer()
    first.fit(x, y, epochs=2, callbacks=[cb.ModelCheckpoint(tmp_path / "ck-{epoch}.cnnkit")],
              **fit)
    assert sorted(os.listdir(tmp_path)) == ["ck-1.cnnkit", "ck-2.cnnkit"]
    ckpt = tmp_path / "ck-2.cnnkit"

    # a fresh trainer (other init, other seed): the checkpoint's state wins
    resumed = trainer(model_seed=9, seed=0)
    hist = resumed.fit(x, y, epochs=4, resume_from=ckpt, **fit)
    assert hist.epoch == [2, 3]
    # a Trainer loaded from the file continues where it stopped
    loaded = io.load(ckpt, device="cpu")
    loaded.fit(x, y, epochs=4, **fit)

    want = full.model.state_dict()
    for t in (resumed, loaded):
        for k, v in t.model.state_dict().items():
            np.testing.assert_array_equal(v, want[k], err_msg=f"{case}: {k} differs")
        assert t.history.history["loss"] == full.history.history["loss"]
        assert t.history.history["val_loss"] == full.history.history["val_loss"]
        assert t.history.history["lr"] == full.history.history["lr"]
        assert t.optimizer.step_count == full.optimizer.step_count
        assert t.model._net.rng_state() == full.model._net.rng_state()


def test_resume_with_a_schedule_made_anew(tmp_path):
    """The command-line flow: each run builds its SchedulerCallback afresh; resuming hands the
    checkpoint's schedule state to the new schedule."""
    x, y = make_data()
    ckpt = tmp_path / "ck.cnnkit"

    def run(trainer, epochs, resume=None, extra=()):
        sched = optim.CosineAnnealingLR(trainer.optimizer, T_max=4, eta_min=0.01)
        trainer.fit(x, y, epochs=epochs, batch_size=32, verbose=0, resume_from=resume,
                    callbacks=[cb.SchedulerCallback(sched), *extra])
        return trainer

    def fresh(seed=0):
        return Trainer(make_model(seed), optimizer=optim.SGD(lr=0.1, momentum=0.9), device="cpu")

    full = run(fresh(), 4)
    run(fresh(), 2, extra=[cb.ModelCheckpoint(ckpt)])
    for resumed in (run(io.load(ckpt, device="cpu"), 4, resume=ckpt),
                    run(fresh(seed=3), 4, resume=ckpt)):
        assert resumed.history.history["lr"] == full.history.history["lr"]
        np.testing.assert_array_equal(resumed.model._net.flat_params(),
                                      full.model._net.flat_params())


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------


def test_failed_write_keeps_the_previous_file(model_file, monkeypatch):
    path, _ = model_file
    before = Path(path).read_bytes()

    def broken(f, prefix, tensors):
        f.write(prefix[: len(prefix) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(io, "_write_payload", broken)
    with pytest.raises(OSError, match="disk full"):
        io.save(make_model(seed=3), path)
    assert Path(path).read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    with pytest.raises(OSError, match="disk full"):
        io.save(make_model(), path.parent / "new.cnnkit")
    assert os.listdir(path.parent) == [path.name]


def test_save_rejects_other_objects(tmp_path):
    with pytest.raises(ValueError, match="Sequential or Trainer"):
        io.save({"a": 1}, tmp_path / "x.cnnkit")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# rejected files
# ---------------------------------------------------------------------------------------------


def _truncate(n):
    def f(path):
        raw = Path(path).read_bytes()
        Path(path).write_bytes(raw[: n if n >= 0 else len(raw) + n])
    return f


def _raw(content: bytes):
    def f(path):
        Path(path).write_bytes(content)
    return f


def _flip(where: str):
    def f(path):
        raw = bytearray(Path(path).read_bytes())
        (n,) = struct.unpack("<Q", raw[8:16])
        i = 16 + n + 100 if where == "data" else 16 + n // 2
        raw[i] ^= 0x5A
        Path(path).write_bytes(bytes(raw))
    return f


def _append(path):
    with open(path, "ab") as f:
        f.write(b"\0" * 64)


def _tensor(fn):
    def f(path):
        def g(h):
            fn(h["tensors"])
        rewrite(path, g)
    return f


def _meta(fn):
    def f(path):
        rewrite(path, lambda h: fn(h["meta"]))
    return f


def _set(d, k, v):
    d[k] = v


def _overlap(t):
    t["model/0.bias"]["offset"] = t["model/0.weight"]["offset"]


def _duplicate_key(path):
    header, data = read_parts(path)
    text = json.dumps(header)
    entry = json.dumps(header["tensors"]["model/0.bias"])
    text = text.replace('"tensors": {', '"tensors": {"model/0.bias": ' + entry + ", ", 1)
    write_parts(path, header, data, header_text=text)


def _nan_constant(path):
    header, data = read_parts(path)
    header["meta"]["x"] = float("nan")
    write_parts(path, header, data, header_text=json.dumps(header))  # writes bare NaN


def _huge_architecture(m):
    m["architecture"][5]["config"].update(in_features=1_000_000, out_features=1_000_000)


BAD_FILES = {
    "empty": (_raw(b""), "too short"),
    "truncated-magic": (_truncate(5), "too short"),
    "truncated-length": (_truncate(12), "too short"),
    "truncated-header": (_truncate(40), "header length"),
    "truncated-data": (_truncate(-1), "truncated|data section"),
    "half": (_truncate(-300), "truncated|data section"),
    "trailing-garbage": (_append, "data section has"),
    "foreign-png": (_raw(b"\x89PNG\r\n\x1a\n" + b"\0" * 64), "not a cnnkit file"),
    "foreign-text": (_raw(b"hello world, this is not a checkpoint\n" * 3), "not a cnnkit file"),
    "other-version": (_raw(b"CNNKIT99" + b"\0" * 64), "unsupported cnnkit format"),
    "huge-header-length": (_raw(io.MAGIC + struct.pack("<Q", 2**62) + b"{}"), "header length"),
    "header-length-past-end": (_raw(io.MAGIC + struct.pack("<Q", 100) + b"{}" * 10),
                               "header length"),
    "header-not-json": (_raw(io.MAGIC + struct.pack("<Q", 4) + b"{{{{"), "not valid JSON"),
    "header-not-utf8": (_raw(io.MAGIC + struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc"),
                        "not valid JSON"),
    "header-array": (_raw(io.MAGIC + struct.pack("<Q", 2) + b"[]"), "not a JSON object"),
    "flipped-data-byte": (_flip("data"), "CRC"),
    "flipped-header-byte": (_flip("header"), "."),
    "bad-dtype": (_tensor(lambda t: _set(t["model/0.weight"], "dtype", "float64")), "dtype"),
    "object-dtype": (_tensor(lambda t: _set(t["model/0.weight"], "dtype", "object")), "dtype"),
    "negative-shape": (_tensor(lambda t: _set(t["model/0.bias"], "shape", [-4])), "shape"),
    "nbytes-mismatch": (_tensor(lambda t: _set(t["model/0.bias"], "nbytes", 12)), "declares"),
    "offset-outside": (_tensor(lambda t: _set(t["model/0.bias"], "offset", 1 << 40)),
                       "outside the file"),
    "huge-shape": (_tensor(lambda t: _set(t["model/0.bias"], "shape", [2**40])), "declares"),
    "overlap": (_tensor(_overlap), "overlap"),
    "missing-tensor": (_tensor(lambda t: t.pop("model/5.bias")), "needs|missing"),
    "renamed-tensor": (_tensor(lambda t: _set(t, "model/5.bogus", t.pop("model/5.bias"))),
                       r"missing \['5.bias'\], unexpected \['5.bogus'\]"),
    "extra-key": (_tensor(lambda t: _set(t["model/0.bias"], "crc", 1)), "exactly"),
    "duplicate-name": (_duplicate_key, "duplicate"),
    "nan-constant": (_nan_constant, "constant"),
    "huge-architecture": (_meta(_huge_architecture), "needs"),
    "unknown-layer": (_meta(lambda m: _set(m["architecture"][2], "type", "Evil")),
                      "cannot build"),
    "bad-layer-config": (_meta(lambda m: _set(m["architecture"][0]["config"], "groups", 3)),
                         "groups"),
    "no-architecture": (_meta(lambda m: m.pop("architecture")), "architecture"),
    "unknown-kind": (lambda p: rewrite(p, lambda h: _set(h, "kind", "weights")), "kind"),
    "wrong-format": (lambda p: rewrite(p, lambda h: _set(h, "format", "safetensors")),
                     "not a cnnkit file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_rejected_and_nothing_changes(model_file, case):
    path, _ = model_file
    mutate, match = BAD_FILES[case]
    mutate(path)
    target = make_model(seed=4)
    before = target.state_dict()
    with pytest.raises(CheckpointError, match=match):
        io.load(path)
    with pytest.raises(CheckpointError):
        io.load_model(path)
    with pytest.raises(CheckpointError):
        io.load_weights(target, path)
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_nan_weights_are_rejected(tmp_path):
    model = make_model()
    meta, tensors = io._model_payload(model)
    tensors["model/5.weight"] = tensors["model/5.weight"].copy()
    tensors["model/5.weight"][3, 3] = np.inf
    io._write_file(tmp_path / "nan.cnnkit", "model", meta, tensors)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        io.load(tmp_path / "nan.cnnkit")


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_failed_resume_leaves_the_trainer_unchanged(tmp_path, model_file):
    x, y = make_data(64)
    trainer = Trainer(make_model(), optimizer=optim.SGD(lr=0.05, momentum=0.9), device="cpu")
    trainer.fit(x, y, epochs=1, verbose=0)
    good = tmp_path / "good.cnnkit"
    trainer.save(good)

    def snapshot():
        return (trainer.model._net.flat_params(), trainer.optimizer.state_dict(), trainer.epoch,
                trainer.model._net.rng_state(), trainer.optimizer.lr, len(trainer.history))

    before = snapshot()
    raw = Path(good).read_bytes()
    bad = tmp_path / "bad.cnnkit"
    Path(bad).write_bytes(raw[:-10])
    other_arch = tmp_path / "other.cnnkit"
    Trainer(ck.Sequential([ck.Flatten(), ck.Linear(64, 3)]), optimizer="sgd").save(other_arch)
    other_opt = tmp_path / "adam.cnnkit"
    Trainer(make_model(), optimizer="adam").save(other_opt)
    model_path, _ = model_file
    for path, match in [(bad, "truncated"), (other_arch, "architecture differs"),
                        (other_opt, "optimizer is adam"), (model_path, "model file")]:
        with pytest.raises(CheckpointError, match=match):
            trainer.fit(x, y, epochs=3, verbose=0, resume_from=path)
        after = snapshot()
        np.testing.assert_array_equal(after[0], before[0])
        assert after[1]["step"] == before[1]["step"]
        np.testing.assert_array_equal(after[1]["buffers"]["momentum_buffer"],
                                      before[1]["buffers"]["momentum_buffer"])
        assert after[2:] == before[2:]
    with pytest.raises(CheckpointError, match="architecture differs"):
        io.load_weights(ck.Sequential([ck.Flatten(), ck.Linear(64, 3)]), good)
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "missing.cnnkit")
