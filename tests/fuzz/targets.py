"""Fuzz targets for cnnkit's file readers: each takes the bytes of one file, feeds them to one
reader, and returns when the reader either accepted the file or raised one of its documented
errors. Anything else escaping (another exception type, a failed invariant) is a finding;
crashes and hangs are caught by the fuzzer around it (tests/fuzz/fuzz.py).

Used by tests/fuzz/fuzz.py (atheris, coverage-guided), tests/fuzz/make_corpus.py (the seed
corpus) and tests/test_hardening_readers.py (every seed and past finding replayed in pytest).
Needs no atheris itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import cnnkit as ck
from cnnkit import cli, datasets
from cnnkit.serialization import CheckpointError, _encode

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


def tiny_model(seed: int = 0) -> ck.Sequential:
    """The architecture of the checkpoint seeds: (N, 1, 8, 8) -> 5 classes, every kind of
    state (conv, BatchNorm running statistics, Dropout, linear)."""
    ck.manual_seed(seed)
    return ck.Sequential([
        ck.Conv2d(1, 3, 3, padding=1), ck.BatchNorm2d(3), ck.ReLU(), ck.MaxPool2d(2),
        ck.Dropout(0.25), ck.Flatten(), ck.Linear(3 * 4 * 4, 5),
    ])  # fmt: skip


def mnist_model(seed: int = 0) -> ck.Sequential:
    """A small model for 28x28 images (what `cnnkit predict` reads)."""
    ck.manual_seed(seed)
    return ck.Sequential([ck.Conv2d(1, 2, 5, stride=4), ck.ReLU(), ck.Flatten(),
                          ck.Linear(2 * 6 * 6, 10)])


class Finding(AssertionError):
    """A reader broke its contract without raising (e.g. a failed load changed a trainer)."""


_work: Path | None = None


def _dir() -> Path:
    """One scratch directory per process (in RAM when /dev/shm exists)."""
    global _work
    if _work is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        _work = Path(tempfile.mkdtemp(prefix="cnnkit-fuzz-", dir=base))
    return _work


def _put(data: bytes, name: str) -> Path:
    p = _dir() / name
    p.write_bytes(data)
    return p


def _same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    # NaN equals NaN here: a diverged run's optimizer buffers may hold NaN, and load as such
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


# ---------------------------------------------------------------------------------------------
# cnnkit files
# ---------------------------------------------------------------------------------------------


def load(data: bytes) -> None:
    """`ck.load`: CheckpointError, or a Sequential/Trainer that saves and loads back to the
    same architecture and weights."""
    p = _put(data, "in.cnnkit")
    try:
        obj = ck.load(p, device="cpu")
    except CheckpointError:
        return
    model = obj.model if isinstance(obj, ck.Trainer) else obj
    again = _dir() / "again.cnnkit"
    ck.save(obj, again)
    back = ck.load(again, device="cpu")
    model2 = back.model if isinstance(back, ck.Trainer) else back
    if model2.get_config() != model.get_config() or not _same_state(model.state_dict(),
                                                                    model2.state_dict()):
        raise Finding("a loaded file did not survive save + load unchanged")


_trainer: ck.Trainer | None = None
_model: ck.Sequential | None = None


def _fixtures() -> tuple[ck.Trainer, ck.Sequential]:
    global _trainer, _model
    if _trainer is None:
        _trainer = ck.Trainer(tiny_model(1), optimizer=ck.optim.Adam(lr=1e-2), device="cpu",
                              seed=5)
        _model = tiny_model(2)
    assert _model is not None
    return _trainer, _model


def _canonical(v: object) -> str:
    """JSON text of a header-like value, NaN included (NaN != NaN would hide equality)."""
    return json.dumps(_encode(v), sort_keys=True)


def _trainer_state(t: ck.Trainer) -> tuple:
    opt = t.optimizer.state_dict() if t.optimizer is not None else None
    sched = t.lr_scheduler.state_dict() if t.lr_scheduler is not None else None
    progress = t._progress.to_dict() if t._progress is not None else None
    return (t.model.state_dict(), t.model._net.rng_state(), t.epoch, t.seed,
            _canonical([t.history.to_dict(), sched, progress, getattr(t.optimizer, "lr", None),
                        getattr(t.optimizer, "initial_lr", None)]),
            None if opt is None else (opt["step"], _canonical(opt["config"]),
                                      dict(opt["buffers"])))


def _same_trainer_state(a: tuple, b: tuple) -> bool:
    (wa, ra, *rest_a), (wb, rb, *rest_b) = a, b
    if not _same_state(wa, wb) or tuple(ra) != tuple(rb) or rest_a[:3] != rest_b[:3]:
        return False
    oa, ob = rest_a[3], rest_b[3]
    if (oa is None) != (ob is None):
        return False
    return oa is None or (oa[:2] == ob[:2] and _same_state(oa[2], ob[2]))


def checkpoint(data: bytes) -> None:
    """`Trainer.load_checkpoint` and `cnnkit.io.load_weights` into existing objects of the
    seeds' architecture: CheckpointError leaving them exactly as they were, or a load."""
    t, m = _fixtures()
    p = _put(data, "in.cnnkit")
    before = _trainer_state(t)
    try:
        t.load_checkpoint(p)
    except CheckpointError:
        if not _same_trainer_state(before, _trainer_state(t)):
            raise Finding("a failed load_checkpoint changed the trainer") from None
    w = m.state_dict()
    try:
        ck.io.load_weights(m, p)
    except CheckpointError:
        if not _same_state(w, m.state_dict()):
            raise Finding("a failed load_weights changed the model") from None
    try:
        ck.io.read(p)
    except CheckpointError:
        pass


# ---------------------------------------------------------------------------------------------
# IDX files and the dataset loader
# ---------------------------------------------------------------------------------------------

_IMAGES, _LABELS = datasets.FILES[0], datasets.FILES[1]
_good: dict[str, bytes] | None = None


def good_idx_files() -> dict[str, bytes]:
    """A tiny valid fake MNIST: 6 training and 3 test images (the fuzzed file replaces one)."""
    global _good
    if _good is None:
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6),
                  rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 10, 3)]
        _good = {n: datasets._encode_idx(a.astype(np.uint8))
                 for n, a in zip(datasets.FILES, arrays, strict=True)}
    return _good


def _sums() -> dict[str, str]:
    return {n: datasets._sha256(b) for n, b in good_idx_files().items()}


def idx(data: bytes) -> None:
    """`read_idx` on bytes and on a (.gz) path: IDXFormatError or an array. Then the whole
    loader with the fuzzed file as a corrupt cache entry and a good source directory: it must
    fall back to the source and return the good data (never stop on the corrupt file)."""
    for src in (data, _put(data, "in-idx1-ubyte"), _put(data, "in-idx1-ubyte.gz")):
        try:
            a = datasets.read_idx(src)
        except datasets.IDXFormatError:
            continue
        for name in (_IMAGES, _LABELS):
            try:
                datasets._check_structure(name, a)
            except datasets.IDXFormatError:
                pass
    good = good_idx_files()
    root, source = _dir() / "data", _dir() / "source"
    cache = root / "mnist"
    if not source.is_dir():
        source.mkdir()
        cache.mkdir(parents=True)
        for n, b in good.items():
            (source / n).write_bytes(b)
            (cache / n).write_bytes(b)
    (cache / _IMAGES).write_bytes(data)  # the other three stay good
    (x, y), _ = datasets._load_dataset("mnist", root, download=False, verbose=False,
                                       source_dir=source, checksums=_sums(), system_dirs=[])
    if x.tobytes() != good[_IMAGES][16:] or (cache / _IMAGES).read_bytes() != good[_IMAGES]:
        raise Finding("the loader did not replace a corrupt cache file from a good source")


# ---------------------------------------------------------------------------------------------
# The command line's readers (cnnkit predict MODEL FILE)
# ---------------------------------------------------------------------------------------------

_cli_model: Path | None = None


def _predict(path: Path) -> None:
    """`cnnkit predict` on one file, in this process: it may succeed or fail, with exit
    status 1 (or a SystemExit with a message), and never with a traceback."""
    global _cli_model
    if _cli_model is None:
        _cli_model = _dir() / "cli-model.cnnkit"
        ck.save(mnist_model(), _cli_model)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(["predict", "--device", "cpu", str(_cli_model), str(path)])
        except SystemExit as e:  # argparse, or a reader's message
            rc = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, (int, str)) and e.code is not None:
                raise Finding(f"SystemExit({e.code!r})") from None
    if rc not in (0, 1):
        raise Finding(f"cnnkit predict exited {rc}: {err.getvalue()[-300:]}")
    if "Traceback" in err.getvalue():
        raise Finding(f"cnnkit predict printed a traceback: {err.getvalue()[-300:]}")


def npy(data: bytes) -> None:
    """`cnnkit predict MODEL FILE.npy`."""
    _predict(_put(data, "in.npy"))


def image(data: bytes) -> None:
    """`cnnkit predict MODEL FILE.png` (Pillow reads any format it knows by content)."""
    _predict(_put(data, "in.png"))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "load": load, "checkpoint": checkpoint, "idx": idx, "npy": npy, "image": image,
}  # fmt: skip

def replay(target: str, paths: list[Path]) -> int:
    """Run `target` on every file (or every file in every directory) of `paths`; returns how
    many inputs ran. A finding propagates."""
    import warnings

    fn, n = TARGETS[target], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as under the fuzzer: warnings are not findings
        for p in paths:
            for f in sorted(p.iterdir()) if p.is_dir() else [p]:
                if f.is_file():
                    fn(f.read_bytes())
                    n += 1
    return n
