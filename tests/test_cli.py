"""The `cnnkit` command line: every option documented, `--version`, `cnnkit bench` in all its
forms (end to end when PyTorch is installed), `predict` on image files and .npy batches, and
errors: a bad file, a special file (FIFO, device, directory, socket), a corrupt model, no
memory, a dataset that cannot be had -- each one line on stderr and a non-zero exit, never a
traceback or a hang.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io as _stdio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import bench, cli, datasets
from cnnkit.serialization import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import (  # noqa: E402, F401
    PATCH_CHECKSUMS,
    fake_mnist,
    isolate_datasets,
    one_thread,
    run_script,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(ck.__file__).resolve().parent
MODEL = PACKAGE / "weights" / "lenet5_mnist.cnnkit"  # shipped with the package: LeNet-5
TIMEOUT = 120  # seconds for one command in a subprocess (a hang fails instead of blocking)

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

try:
    from PIL import Image

    HAVE_PIL = True
except ImportError:
    HAVE_PIL = False


def run(*args: str) -> tuple[int, str, str]:
    """cli.main(args) in this process: (exit status, stdout, stderr)."""
    out, err = _stdio.StringIO(), _stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                err.write(e.code + "\n")
    return code, out.getvalue(), err.getvalue()


def run_process(*args: str, cwd: Path | None = None, timeout: float = TIMEOUT):
    """A fresh interpreter; the command is killed (and the test fails) after `timeout`."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def assert_one_line_error(err: str, *parts: str) -> None:
    """stderr holds `cnnkit: error: ...` lines only (no traceback), one naming all `parts`."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("cnnkit") for ln in lines), err
    assert any(ln.startswith("cnnkit: error: ") and all(p in ln for p in parts)
               for ln in lines), err


# ---- modules and options ---------------------------------------------------------------------


def test_no_module_shadows_the_standard_library():
    """Run as a script, a module's directory goes first on sys.path: a cnnkit/random.py would
    replace the standard library's random for everything the script imports."""
    names = {p.stem for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.iterdir()
                                                        if p.is_dir()}
    names |= {p.stem for p in (ROOT / "bench").glob("*.py")}
    names |= {p.name.split(".")[0] for p in PACKAGE.glob("*.so")}
    assert "cli" in names and "compare_torch" in names  # the walk found the files
    clash = sorted(n for n in names if n in sys.stdlib_module_names)
    assert not clash, f"modules named like standard-library ones: {clash}"


def _parsers(p: argparse.ArgumentParser, path: str = "cnnkit"):
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _parsers(sp, f"{path} {name}")


def test_every_option_of_every_command_has_help():
    seen = 0
    for path, p in _parsers(cli.build_parser()):
        for a in p._actions:
            label = "/".join(a.option_strings) or a.dest
            assert a.help and a.help != argparse.SUPPRESS and a.help.strip(), \
                f"{path}: {label} has no help text"
            if isinstance(a, argparse._SubParsersAction):
                for c in a._choices_actions:
                    assert c.help, f"{path}: command {c.dest} has no help text"
            seen += 1
    assert seen > 40  # train, evaluate, predict, info, bench and their options


def test_version():
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"cnnkit {ck.__version__}"
    p = run_process("-m", "cnnkit", "--version")
    assert p.returncode == 0 and p.stdout.strip() == f"cnnkit {ck.__version__}", p.stderr


# ---- cnnkit bench ----------------------------------------------------------------------------


def test_bench_options_are_real_options():
    a = cli.build_parser().parse_args(["bench", "--threads", "1", "2"])  # docs/performance.md
    assert a.threads == [1, 2] and a.func is cli.cmd_bench
    a = cli.build_parser().parse_args(["bench", "--threads", "1", "--repeats", "3", "--seconds",
                                       "0.5", "--cases", "lenet5:train:8", "conv:fwdbwd:4",
                                       "--json", "x.json"])
    assert (a.threads, a.repeats, a.seconds, a.json) == ([1], 3, 0.5, "x.json")
    assert a.cases == [("lenet5", "train", 8), ("conv", "fwdbwd", 4)]
    for bad in (["--threads", "0"], ["--cases", "lenet5:train"], ["--cases", "vgg:train:8"],
                ["--cases", "lenet5:train:0"], ["--cases", "conv:train:8"],
                ["--seconds", "nan"], ["--frobnicate"]):
        code, _, err = run("bench", *bad)
        assert code == 2 and "Traceback" not in err, (bad, err)
    code, _, err = run("bench", "--cases", "conv:train:8")
    assert "conv:fwdbwd:BATCH" in err, err  # says what to ask for instead


@pytest.mark.parametrize("argv", [
    ("-m", "cnnkit", "bench", "--help"),
    ("-m", "cnnkit.bench", "--help"),
    (str(ROOT / "bench" / "compare_torch.py"), "--help"),
], ids=["cnnkit-bench", "module", "script"])
def test_bench_help(argv):
    p = run_process(*argv)
    assert p.returncode == 0, p.stderr
    for opt in ("--threads", "--repeats", "--seconds", "--cases", "--json"):
        assert opt in p.stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TORCH, reason="cnnkit bench compares with PyTorch, not installed")
def test_bench_end_to_end(tmp_path):
    """`cnnkit bench` on a tiny case through the whole path: the table, one worker per library
    (started as modules, `python -m cnnkit.bench`, as bench/compare_torch.py's are), the JSON."""
    out = tmp_path / "bench.json"
    opts = ["--threads", "1", "--repeats", "1", "--seconds", "0.05", "--cases",
            "lenet5:train:8", "--json", str(out)]
    p = run_process("-m", "cnnkit", "bench", *opts, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "lenet5" in p.stdout and "ratio" in p.stdout
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1
    r = rows[0]
    assert (r["net"], r["mode"], r["batch"], r["threads"]) == ("lenet5", "train", 8, 1)
    assert r["cnnkit_images_per_sec"] > 0 and r["torch_images_per_sec"] > 0
    assert r["ratio"] == pytest.approx(r["cnnkit_images_per_sec"] / r["torch_images_per_sec"])


def test_run_worker_reports_the_workers_error(monkeypatch):
    """run_worker turns a failed worker into RuntimeError with the worker's last stderr line."""

    class Done:
        returncode, stdout, stderr = 1, "", "Traceback ...\nKeyError: 'vgg'\n"

    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: (Done.cmd.append(cmd), Done)[1])
    Done.cmd = []
    with pytest.raises(RuntimeError, match=r"cnnkit worker for lenet5:train:8 with 1 thread\(s\) "
                                           r"failed: KeyError: 'vgg'"):
        bench.run_worker("cnnkit", "lenet5", "train", 8, 1, 0.1)
    (cmd,) = Done.cmd
    assert cmd[:3] == [sys.executable, "-m", "cnnkit.bench"]  # a module, never a script path


# ---- predict ---------------------------------------------------------------------------------


@pytest.fixture
def digits() -> np.ndarray:
    """Ten MNIST-like uint8 digits (white on black): one bright bar each, at different places."""
    x = np.zeros((10, 28, 28), np.uint8)
    for i in range(10):
        x[i, 4:24, 4 + 2 * i : 7 + 2 * i] = 255
    return x


def _expected(x_uint8: np.ndarray) -> np.ndarray:
    t = ck.Trainer(ck.load_model(str(MODEL)), loss="cross_entropy", device="cpu")
    return t.predict(x_uint8[:, None].astype(np.float32) / 255.0)


def _lines(out: str) -> list[tuple[str, int]]:
    """`NAME: CLASS  (CLASS: P%, ...)` lines -> [(NAME, CLASS)]."""
    res = []
    for ln in out.splitlines():
        name, rest = ln.split(": ", 1)
        res.append((name, int(rest.split()[0])))
    return res


@pytest.mark.usefixtures("one_thread")
def test_predict_npy_batches(tmp_path, digits):
    a = tmp_path / "a.npy"
    np.save(a, digits)  # (N, 28, 28) uint8
    b = tmp_path / "b.npy"
    np.save(b, digits[:4, None].astype(np.float32) / 255.0)  # (N, 1, 28, 28) in [0, 1]
    c = tmp_path / "c.npy"
    np.save(c, digits[7])  # one (28, 28) image
    code, out, err = run("predict", str(MODEL), str(a), str(b), str(c), "--device", "cpu")
    assert code == 0, err
    want = _expected(digits).argmax(1)
    got = _lines(out)
    assert [n for n, _ in got] == ([f"{a}[{i}]" for i in range(10)]
                                   + [f"{b}[{i}]" for i in range(4)] + [str(c)])
    assert [k for _, k in got] == [*want, *want[:4], want[7]]


@pytest.mark.skipif(not HAVE_PIL, reason="reading PNG needs Pillow, not installed")
@pytest.mark.usefixtures("one_thread")
def test_predict_png_and_keeps_going_past_bad_files(tmp_path, digits):
    png = tmp_path / "digit.png"
    Image.fromarray(255 - digits[3]).save(png)  # dark on light: inverted by --invert auto
    good = tmp_path / "good.npy"
    np.save(good, digits[:2])
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an array")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    missing = tmp_path / "missing.npy"
    code, out, err = run("predict", str(MODEL), str(bad), str(png), str(missing), str(good),
                         str(junk), "--device", "cpu")
    assert code == 1
    want = _expected(digits).argmax(1)
    assert _lines(out) == [(str(png), want[3]), (f"{good}[0]", want[0]),
                           (f"{good}[1]", want[1])]
    assert_one_line_error(err, str(bad), "not an .npy file")
    assert_one_line_error(err, str(missing), "No such file or directory")
    assert_one_line_error(err, str(junk), "cannot read the image")
    assert "3 of 5 input files could not be read" in err
    assert len(err.splitlines()) == 4


def _npy_header(shape, descr="<f4", text: bytes | None = None) -> bytes:
    h = text if text is not None else repr({"descr": descr, "fortran_order": False,
                                             "shape": tuple(shape)}).encode()
    h += b" " * (63 - (10 + len(h)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h


BAD_INPUTS = {
    # name: (file content or a function of the path, what the message must say)
    "empty.npy": (b"", "not an .npy file"),
    "text.npy": (b"hello", "not an .npy file"),
    "garbage-header.npy": (b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n", "not a readable .npy"),
    "unclosed-header.npy": (_npy_header((), text=b"{'descr': '<f4', 'shape': (28, 28"),
                            "not a readable .npy"),  # numpy's tokenizer: TokenError
    "truncated.npy": (_npy_header((28, 28)) + b"\0" * 100, "truncated"),
    "huge-shape.npy": (_npy_header((10**15, 28, 28)), "truncated"),
    "object.npy": (lambda p: np.save(p, np.array([None] * 784, dtype=object).reshape(28, 28),
                                     allow_pickle=True), "pickled"),
    "strings.npy": (lambda p: np.save(p, np.full((28, 28), "a")), "numeric"),
    "complex.npy": (lambda p: np.save(p, np.zeros((28, 28), np.complex64)), "numeric"),
    "wrong-shape.npy": (lambda p: np.save(p, np.zeros((5, 5))), "expected a 28x28 image"),
    "nhwc.npy": (lambda p: np.save(p, np.zeros((2, 28, 28, 1))), "expected a 28x28 image"),
    "no-images.npy": (lambda p: np.save(p, np.zeros((0, 28, 28))), "holds no images"),
    "nan.npy": (lambda p: np.save(p, np.full((3, 28, 28), np.nan)), "NaN"),
    "inf-in-2.npy": (lambda p: np.save(p, np.where(np.arange(3)[:, None, None] == 2, np.inf,
                                                   np.zeros((3, 28, 28)))), "image 2"),
    "zip.npy": (lambda p: zipfile.ZipFile(p, "w").writestr("a.npy", b"x"), "not an .npy"),
    "random.png": (bytes(range(256)) * 4, "cannot read the image"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_predict_bad_input_file(tmp_path, name):
    content, says = BAD_INPUTS[name]
    path = tmp_path / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    if name.endswith(".png") and not HAVE_PIL:
        says = "Pillow"
    code, out, err = run("predict", str(MODEL), str(path), "--device", "cpu")
    assert code == 1 and out == ""
    assert_one_line_error(err, str(path), says)


@pytest.fixture
def special_files(tmp_path):
    """{kind: path} of files that are not regular files: a FIFO, a directory, a character
    device and (where there are Unix sockets) a bound socket."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs os.mkfifo (POSIX)")
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    out = {"fifo": str(fifo), "directory": str(tmp_path), "device": os.devnull}
    with contextlib.ExitStack() as stack:
        if hasattr(socket, "AF_UNIX"):
            d = stack.enter_context(tempfile.TemporaryDirectory())  # a short path: <= 107 bytes
            sock = stack.enter_context(socket.socket(socket.AF_UNIX))
            sock.bind(os.path.join(d, "s.npy"))
            out["socket"] = os.path.join(d, "s.npy")
        yield out


WHAT = {"fifo": "a FIFO", "directory": "a directory", "device": "a character device",
        "socket": "a socket"}


def test_predict_refuses_special_files(tmp_path, special_files, digits):
    """A FIFO, a device, a directory or a socket, as the model or as an input, is refused
    before it is opened, with its path: no hang (the command runs in a subprocess with a
    timeout), no traceback; the regular inputs next to a special one are still classified."""
    good = tmp_path / "good.npy"
    np.save(good, digits[:1])
    for kind, path in special_files.items():
        p = run_process("-m", "cnnkit", "predict", path, str(good), "--device", "cpu",
                        timeout=60)
        assert p.returncode == 1 and p.stdout == "", (kind, p.stdout, p.stderr)
        assert_one_line_error(p.stderr, path, f"the model file is {WHAT[kind]}",
                              "not a regular file")
        p = run_process("-m", "cnnkit", "predict", str(MODEL), path, str(good), "--device",
                        "cpu", timeout=60)
        assert p.returncode == 1, (kind, p.stdout, p.stderr)
        assert_one_line_error(p.stderr, path, f"the input is {WHAT[kind]}",
                              "not a regular file")
        assert p.stdout.startswith(f"{good}: "), p.stdout


def test_evaluate_and_train_refuse_a_fifo_model(fake_mnist, tmp_path):  # noqa: F811
    """`evaluate FIFO`, `train --resume FIFO` and `train --model FIFO` are refused too (in a
    child process with a timeout, the fake MNIST patched in as the hardening tests do)."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs os.mkfifo (POSIX)")
    fifo = tmp_path / "m.cnnkit"
    os.mkfifo(fifo)
    common = ["--data-dir", str(fake_mnist), "--device", "cpu"]
    for args, what in ((["evaluate", str(fifo)], "model file"),
                       (["train", "--resume", str(fifo), "--out", str(tmp_path / "r")],
                        "checkpoint"),
                       (["train", "--model", str(fifo), "--out", str(tmp_path / "r")],
                        "model file")):
        code = (PATCH_CHECKSUMS + "import sys\nfrom cnnkit import cli\n"
                f"sys.exit(cli.main({[*args, *common]!r}))\n")
        p = run_script(code, timeout=60,
                       HARDENING_SUMS=json.dumps(datasets.CHECKSUMS["mnist"]))
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert_one_line_error(p.stderr, str(fifo), f"the {what} is a FIFO")


# ---- errors are one line ---------------------------------------------------------------------


def _unavailable() -> Exception:
    return datasets.DatasetUnavailableError(
        "mnist", Path("/cache/mnist"), [("cache /cache/mnist", "no IDX files"),
                                        ("mirror https://example.org", "HTTP 404")],
        ["put the files in a directory"])


@pytest.mark.parametrize("exc, says", [
    (lambda: CheckpointError("m.cnnkit: truncated header"), "m.cnnkit: truncated header"),
    (lambda: datasets.IDXFormatError("train-images-idx3-ubyte: bad magic"), "bad magic"),
    (lambda: datasets.ChecksumError("t10k-labels-idx1-ubyte", "ab", "cd"), "checksum mismatch"),
    (_unavailable, "could not obtain MNIST (cache directory /cache/mnist); sources tried: "
                   "1. cache /cache/mnist: no IDX files; 2. mirror https://example.org: HTTP 404; "
                   "hint: put the files in a directory"),
    (lambda: FileNotFoundError(2, "No such file or directory", "/x/t10k"), "/x/t10k"),
    (lambda: PermissionError(13, "Permission denied", "/x/cache"), "Permission denied"),
    (lambda: ValueError("predict: x must be numeric"), "x must be numeric"),
    (lambda: RuntimeError("Linear: CUDA error"), "CUDA error"),
    (lambda: MemoryError("Unable to allocate 9.9 GiB for an array"), "out of memory: Unable"),
    (lambda: MemoryError(), "out of memory"),
], ids=["checkpoint", "idx", "checksum", "unavailable", "missing", "permission", "value",
        "runtime", "memory", "memory-bare"])
def test_documented_errors_are_one_line(monkeypatch, exc, says):
    def fail(*a, **k):
        raise exc()

    monkeypatch.setattr(cli, "_load_dataset", fail)
    monkeypatch.delenv("CNNKIT_DEBUG", raising=False)
    code, out, err = run("evaluate", str(MODEL), "--device", "cpu")
    assert code == 1
    assert_one_line_error(err, says)
    assert len(err.strip().splitlines()) == 1, err


def test_memory_error_reading_a_model(monkeypatch, tmp_path):
    def fail(path):
        raise MemoryError("Unable to allocate 64.0 GiB for an array with shape (2**34,)")

    monkeypatch.setattr(ck.serialization, "load_model", fail)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((28, 28), np.uint8))
    code, _, err = run("predict", str(MODEL), str(x))
    assert code == 1
    assert_one_line_error(err, "out of memory", "64.0 GiB")


def test_corrupt_and_missing_models(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((28, 28), np.uint8))
    corrupt = tmp_path / "c.cnnkit"
    corrupt.write_bytes(MODEL.read_bytes()[:300])
    for model, says in ((corrupt, str(corrupt)), (tmp_path / "none.cnnkit", "No such file"),
                        (x, str(x))):
        for cmd in (["predict", str(model), str(x)], ["evaluate", str(model)]):
            code, out, err = run(*cmd, "--device", "cpu")
            assert code == 1 and out == "", (cmd, out)
            assert_one_line_error(err, says)


def test_debug_shows_the_traceback(monkeypatch):
    def fail(*a, **k):
        raise CheckpointError("boom")

    monkeypatch.setattr(cli, "_load_dataset", fail)
    monkeypatch.setenv("CNNKIT_DEBUG", "1")
    with pytest.raises(CheckpointError, match="boom"):
        cli.main(["evaluate", str(MODEL), "--device", "cpu"])


def test_dataset_unavailable_is_one_line(tmp_path, monkeypatch):
    isolate_datasets(monkeypatch)
    code, _, err = run("evaluate", str(MODEL), "--data-dir", str(tmp_path / "empty"),
                       "--device", "cpu")
    assert code == 1
    assert_one_line_error(err, "could not obtain MNIST", "sources tried")
    # the loader's progress lines come first; the error is one line
    assert len([ln for ln in err.splitlines() if ln.startswith("cnnkit: error")]) == 1, err


# ---- cnnkit train: summary.json --------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_train_summary_is_one_consistent_pair(fake_mnist, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    code, stdout, err = run("train", "--data-dir", str(fake_mnist), "--out", str(out),
                            "--epochs", "3", "--val-size", "16", "--verbose", "0",
                            "--device", "cpu")
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["epochs"] == 3 and s["images_per_epoch"] == 256 - 16
    assert s["images_per_sec"] == pytest.approx(s["images_per_epoch"] / s["seconds_per_epoch"],
                                                rel=1e-12)
    with open(out / "history.csv") as f:
        times = [float(r["time"]) for r in csv.DictReader(f)]
    assert len(times) == 3
    assert s["seconds_per_epoch"] == pytest.approx(statistics.median(times), rel=1e-6)
    assert "training steps" in s["timing"] and "validation" in s["timing"]
    assert s["fit_seconds"] >= sum(times) * (1 - 1e-6)
    assert f"{s['images_per_sec']:.0f} images/s" in stdout


def test_sync_bn_needs_distributed_and_a_new_run(tmp_path):
    code, _, err = run("train", "--sync-bn", "--epochs", "1", "--out", str(tmp_path))
    assert code != 0 and "--sync-bn is for data-parallel training" in err, err
    code, _, err = run("train", "--distributed", "--sync-bn", "--resume",
                       str(tmp_path / "c.cnnkit"), "--out", str(tmp_path))
    assert code != 0 and "a checkpoint resumes with the layers" in err, err
