"""The readers under adversarial input: loading is linear in the file size (worst-case headers
of the largest size the format allows), special files are refused without blocking, malformed
headers and IDX files raise only their documented errors, the dataset loader falls back past a
corrupt cache or mirror file, one atomic writer, and the fuzz corpus replays clean.

docs/reliability.md quotes the figures these tests print (``HARDENING ...`` lines).
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_hardening_support import (
    figures_line,
    isolate_datasets,
    script_env,
    tiny_model,
    write_fake_mnist,
)

import cnnkit as ck
from cnnkit import _files, datasets
from cnnkit import serialization as io
from cnnkit.serialization import CheckpointError

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import targets as fuzz_targets  # noqa: E402

FILES = datasets.FILES


def _container(header: dict | bytes, data: bytes = b"") -> bytes:
    """A cnnkit file around `header` (an object, or raw JSON bytes)."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    hb += b" " * ((-16 - len(hb)) % 64)
    return io.MAGIC + struct.pack("<Q", len(hb)) + hb + data


def _child(code: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `code` with `args` in a fresh interpreter; a timeout fails the test and shows what
    the child printed until then (one line per finished case)."""
    try:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=timeout, env=script_env())
    except subprocess.TimeoutExpired as e:
        done = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"timed out after {timeout:.0f} s (a reader blocked or took too long); "
                    f"finished cases:\n{done}")


def _parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (h,) = struct.unpack("<Q", raw[8:16])
    return json.loads(raw[16 : 16 + h]), raw[16 + h :]


# ---------------------------------------------------------------------------------------------
# 1. Loading is linear in the file size
# ---------------------------------------------------------------------------------------------

# Each construct fills a header of exactly MAX_HEADER_BYTES with the costliest thing of its
# kind; the child times ck.load on each and prints one JSON line per construct.
WORST_CASES = r"""
import json, struct, sys, time
import cnnkit as ck
from cnnkit import serialization as io

M = io.MAX_HEADER_BYTES
HEAD = '{"format":"cnnkit","version":1,"kind":"model","data_nbytes":0,"data_crc32":0,'

def fill(item, budget, sep=","):
    # as many items (a function of the index) as fit in `budget` characters
    out, size, i = [], 0, 0
    while True:
        s = item(i)
        if size + len(s) + len(sep) > budget:
            return sep.join(out)
        out.append(s); size += len(s) + len(sep); i += 1

def header(construct):
    room = M - len(HEAD) - 64
    if construct == "duplicate-keys":       # one object of ~1M keys, the repeated one last
        body = '"tensors":{},"meta":{' + fill(lambda i: f'"{i:x}":0', room - 40) + ',"0":0}'
    elif construct == "tensor-entries":     # the most tensor entries (valid, zero-size)
        e = '"t{:x}":{{"dtype":"uint8","shape":[0],"offset":0,"nbytes":0}}'
        body = '"meta":{},"tensors":{' + fill(lambda i: e.format(i), room - 40) + '}'
    elif construct == "empty-arrays":       # the most JSON values per byte
        body = '"tensors":{},"meta":{"x":[' + ",".join(["[]"] * ((room - 40) // 3)) + ']}'
    elif construct == "empty-objects":      # ... each one a call of the object hook
        body = '"tensors":{},"meta":{"x":[' + ",".join(["{}"] * ((room - 40) // 3)) + ']}'
    elif construct == "special-floats":     # {"$float": "nan"} objects
        body = '"tensors":{},"meta":{"x":[' + fill(lambda i: '{"$float":"nan"}', room - 40) + ']}'
    elif construct == "long-integers":      # integers of the longest length read
        n = "9" * io.MAX_INT_DIGITS
        body = '"tensors":{},"meta":{"x":[' + fill(lambda i: n, room - 40) + ']}'
    elif construct == "one-huge-integer":   # one integer of ~8M digits
        body = '"tensors":{},"meta":{"x":' + "7" * (room - 40) + '}'
    elif construct == "long-string":
        body = '"tensors":{},"meta":{"x":"' + "a" * (room - 40) + '"}'
    elif construct == "deep-nesting":
        body = '"tensors":{},"meta":{"x":' + "[" * (room - 40)
    text = (HEAD + body + "}").encode()
    assert len(text) <= M, (construct, len(text), M)
    return text + b" " * (M - len(text))

sys.set_int_max_str_digits(0)  # the reader must not rely on Python's own digit limit
for construct in sys.argv[2:]:
    hb = header(construct)
    with open(sys.argv[1], "wb") as f:
        f.write(b"CNNKIT01" + struct.pack("<Q", len(hb)) + hb)
    t = time.perf_counter()
    try:
        ck.load(sys.argv[1])
        err = None
    except io.CheckpointError as e:
        err = str(e)
    took = time.perf_counter() - t
    print(json.dumps({"construct": construct, "header_bytes": len(hb), "seconds": took,
                      "error": err and err[:200]}), flush=True)
"""

CONSTRUCTS = ["duplicate-keys", "tensor-entries", "empty-objects", "long-integers",
              "one-huge-integer", "long-string", "deep-nesting"]
# A complexity guard, not a benchmark: each load takes 0.01-4 s on a busy 2-core machine (16 s
# with both cores taken by other work); the quadratic duplicate-key check took 25 s for 30,000
# keys, and would take hours for the million keys of this header.
WORST_CASE_LIMIT_S = 60.0


def test_worst_case_headers_of_the_largest_size_load_in_linear_time(tmp_path: Path) -> None:
    path = tmp_path / "worst.cnnkit"
    p = _child(WORST_CASES, [str(path), *CONSTRUCTS], len(CONSTRUCTS) * WORST_CASE_LIMIT_S)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["construct"] for r in rows] == CONSTRUCTS
    for r in rows:
        assert r["header_bytes"] == io.MAX_HEADER_BYTES
        assert r["error"] is not None and "header length" not in r["error"], r
        assert r["error"].startswith(str(path)), r
        assert r["seconds"] < WORST_CASE_LIMIT_S, r
    print(figures_line("worst_case_headers", {r["construct"]: round(r["seconds"], 2)
                                              for r in rows}))


def test_a_header_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    p = tmp_path / "big.cnnkit"
    hb = b"{" + b" " * io.MAX_HEADER_BYTES + b"}"
    p.write_bytes(io.MAGIC + struct.pack("<Q", len(hb)) + hb)
    with pytest.raises(CheckpointError, match=rf"header length {len(hb)} .*at most "
                                              rf"{io.MAX_HEADER_BYTES}"):
        ck.load(p)


def test_save_refuses_a_header_the_reader_would_refuse(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file save writes can be loaded again: a header over the limit is an error at
    save time (the limit is lowered here so that a small model exceeds it)."""
    model = tiny_model()
    ck.save(model, tmp_path / "ok.cnnkit")
    _, data = _parts(tmp_path / "ok.cnnkit")
    monkeypatch.setattr(io, "MAX_HEADER_BYTES", 512)
    with pytest.raises(ValueError, match=r"header would be \d+ bytes; the format allows at "
                                         r"most 512"):
        ck.save(model, tmp_path / "big.cnnkit")
    assert not (tmp_path / "big.cnnkit").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ok.cnnkit"]


# ---------------------------------------------------------------------------------------------
# 2. Special files are refused, never waited on
# ---------------------------------------------------------------------------------------------

# Every reader on every kind of special file, in a child with a watchdog: a reader that blocks
# (a FIFO's open waits for a writer, /dev/zero never ends) shows up as a timeout naming it.
SPECIAL = r"""
import faulthandler, json, os, socket, sys
faulthandler.dump_traceback_later(60, exit=True)
from pathlib import Path
import numpy as np
import cnnkit as ck
from cnnkit import _files, datasets
sys.path.insert(0, sys.argv[2])
from test_hardening_support import tiny_model

d = Path(sys.argv[1])
os.mkfifo(d / "fifo.cnnkit")
os.mkfifo(d / "fifo-idx1-ubyte.gz")
(d / "dir.cnnkit").mkdir()
sock = socket.socket(socket.AF_UNIX)
sock.bind(str(d / "sock"))
specials = {"fifo": d / "fifo.cnnkit", "fifo-gz": d / "fifo-idx1-ubyte.gz",
            "chardev": Path("/dev/zero"), "directory": d / "dir.cnnkit", "socket": d / "sock"}
trainer = ck.Trainer(tiny_model(), optimizer=ck.optim.SGD(lr=0.1), device="cpu")
model = tiny_model()
readers = {
    "ck.load": ck.load, "ck.load_model": ck.load_model, "io.read": ck.io.read,
    "io.load_weights": lambda p: ck.io.load_weights(model, p),
    "Trainer.load_checkpoint": trainer.load_checkpoint, "datasets.read_idx": datasets.read_idx,
}
for kind, path in specials.items():
    for name, fn in readers.items():
        try:
            fn(path)
            out = {"type": None}
        except Exception as e:
            out = {"type": type(e).__name__, "msg": str(e)}
        print(json.dumps({"case": f"{name} {kind}", "path": str(path), **out}), flush=True)

# the race: a regular file at os.stat, a FIFO by the time it is opened
real_stat = os.stat
regular = d / "regular"
regular.write_bytes(b"x")
def swapped(p, *a, **k):
    return real_stat(regular if str(p) == str(specials["fifo"]) else p, *a, **k)
os.stat = swapped
for name in ("ck.load", "datasets.read_idx"):
    try:
        readers[name](specials["fifo"])
        out = {"type": None}
    except Exception as e:
        out = {"type": type(e).__name__, "msg": str(e)}
    print(json.dumps({"case": f"{name} fifo-after-stat", "path": str(specials["fifo"]), **out}),
          flush=True)
os.stat = real_stat
print(json.dumps({"case": "done"}), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="needs FIFOs and /dev/zero (POSIX)")
def test_special_files_are_refused_before_they_are_opened() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # short: a socket path has <= 108 bytes
        p = _child(SPECIAL, [d, str(Path(__file__).parent)], 120)
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert rows and rows[-1] == {"case": "done"}, (p.returncode, p.stdout[-2000:],
                                                   p.stderr[-3000:])
    rows = rows[:-1]
    assert len(rows) == 5 * 6 + 2
    for r in rows:
        want = "NotARegularFileError" if r["case"].startswith("datasets.") else "CheckpointError"
        assert r["type"] == want, r
        assert r["msg"].startswith(r["path"]) and "not a regular file" in r["msg"], r
    kinds = {r["case"].split()[1]: r["msg"] for r in rows if r["case"].startswith("ck.load ")}
    assert "FIFO" in kinds["fifo"] and "character device" in kinds["chardev"]
    assert "directory" in kinds["directory"] and "socket" in kinds["socket"]
    print(figures_line("special_files", {"cases": len(rows), "clean_errors": len(rows)}))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_dataset_loader_skips_special_files_in_cache_and_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FIFOs where the loader expects cache or source files: it never blocks on them; a good
    source replaces a FIFO in the cache, a FIFO-only source is a reason in the error."""
    sums = write_fake_mnist(tmp_path / "good")
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", sums)
    isolate_datasets(monkeypatch)
    cache = tmp_path / "data" / "mnist"
    cache.mkdir(parents=True)
    os.mkfifo(cache / FILES[0])
    fifo_src = tmp_path / "fifos"
    fifo_src.mkdir()
    for n in FILES:
        os.mkfifo(fifo_src / n)

    result: list = []

    def run() -> None:
        try:
            with pytest.raises(datasets.DatasetUnavailableError, match="neither"):
                datasets.load_mnist(tmp_path / "data", download=False, verbose=False,
                                    source_dir=fifo_src)
            result.append(datasets.load_mnist(tmp_path / "data", download=False,
                                              verbose=False, source_dir=tmp_path / "good" /
                                              "mnist"))
        except BaseException as e:  # reported below
            result.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(60)
    if th.is_alive():  # unblock a reader stuck in open(): open the FIFOs for writing
        for f in [cache / FILES[0], *fifo_src.iterdir()]:
            with contextlib.suppress(OSError):
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the dataset loader blocked on a FIFO")
    assert len(result) == 1 and not isinstance(result[0], BaseException), result
    (x, _), _ = result[0]
    assert x.shape == (256, 28, 28)
    assert stat.S_ISREG(os.stat(cache / FILES[0]).st_mode)  # the FIFO was replaced


# ---------------------------------------------------------------------------------------------
# 3. Malformed headers and tensor records: CheckpointError, and nothing else
# ---------------------------------------------------------------------------------------------


def _tensor(h: dict) -> dict:
    return h["tensors"]["model/0.weight"]


def _set(path: tuple, value) -> Callable[[dict], None]:
    def edit(h: dict) -> None:
        d = h
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return edit


def _zero_size(shape: list) -> Callable[[dict], None]:
    def edit(h: dict) -> None:
        h["tensors"]["z"] = {"dtype": "uint8", "shape": shape, "offset": 0, "nbytes": 0}

    return edit


BAD_HEADERS: dict[str, Callable[[dict], None]] = {
    # shapes numpy cannot hold although the product (0) fits: numpy's "Maximum allowed
    # dimension exceeded" / "array is too big" before
    "zero-size-shape-over-int64": _zero_size([0, 2**70]),
    "zero-size-shape-product-over-int64": _zero_size([0, 2**62, 2**62]),
    "zero-size-shape-2^40-squared": _zero_size([0, 2**40, 2**40]),
    # a special float whose value is not a string: TypeError (unhashable) before
    "special-float-list": _set(("meta", "x"), {"$float": ["nan"]}),
    "special-float-object": _set(("meta", "x"), {"$float": {"a": 1}}),
    "special-float-number": _set(("meta", "x"), {"$float": 1}),
    # version true / 1.0 compared equal to 1 and loaded before
    "version-true": _set(("version",), True),
    "version-float": _set(("version",), 1.0),
    # values of the wrong JSON type everywhere
    "kind-list": _set(("kind",), ["model"]),
    "format-object": _set(("format",), {"cnnkit": 1}),
    "data_nbytes-list": _set(("data_nbytes",), [0]),
    "data_crc32-object": _set(("data_crc32",), {}),
    "tensors-list": _set(("tensors",), []),
    "meta-list": _set(("meta",), [1]),
    "entry-list": _set(("tensors", "model/0.weight"), [1, 2]),
    "dtype-list": lambda h: _tensor(h).update(dtype=["float32"]),
    "dtype-object": lambda h: _tensor(h).update(dtype={"float32": 1}),
    "dtype-number": lambda h: _tensor(h).update(dtype=4),
    "dtype-null": lambda h: _tensor(h).update(dtype=None),
    "shape-nested": lambda h: _tensor(h).update(shape=[[4, 2]]),
    "shape-object": lambda h: _tensor(h).update(shape={"0": 4}),
    "shape-string": lambda h: _tensor(h).update(shape="4,2"),
    "shape-bools": lambda h: _tensor(h).update(shape=[True, True]),
    "shape-floats": lambda h: _tensor(h).update(shape=[4.0, 2.0]),
    "shape-9-dims": lambda h: _tensor(h).update(shape=[1] * 9),
    "offset-list": lambda h: _tensor(h).update(offset=[0]),
    "offset-float": lambda h: _tensor(h).update(offset=0.0),
    "nbytes-object": lambda h: _tensor(h).update(nbytes={}),
    "nbytes-huge": lambda h: _tensor(h).update(nbytes=2**200),
    "offset-negative": lambda h: _tensor(h).update(offset=-64),
    "extra-entry-key": lambda h: _tensor(h).update(stride=[1]),
    "architecture-object": _set(("meta", "architecture"), {"type": "Linear"}),
    "architecture-entry-list": _set(("meta", "architecture"), [["Linear", {}]]),
    "layer-type-list": _set(("meta", "architecture"), [{"type": ["Linear"], "config": {}}]),
    "layer-config-list": _set(("meta", "architecture"), [{"type": "Linear", "config": []}]),
}


@pytest.fixture(scope="module")
def linear_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("bad") / "linear.cnnkit"
    ck.manual_seed(0)
    ck.save(ck.Sequential([ck.Linear(2, 4)]), p)
    return p


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_malformed_headers_raise_checkpoint_error(tmp_path: Path, linear_file: Path,
                                                  case: str) -> None:
    header, data = _parts(linear_file)
    BAD_HEADERS[case](header)
    p = tmp_path / f"{case}.cnnkit"
    p.write_bytes(_container(header, data))
    readers = [ck.load, ck.load_model,
               lambda q: ck.io.load_weights(ck.Sequential([ck.Linear(2, 4)]), q)]
    if not case.startswith(("architecture", "layer")):
        readers.append(ck.io.read)  # the container alone
    for load in readers:
        with pytest.raises(CheckpointError) as info:
            load(p)
        msg = str(info.value)
        assert msg.startswith(str(p)) and len(msg) < 600, msg


@pytest.mark.parametrize("what", ["huge-shape", "many-duplicates", "huge-name", "huge-kind",
                                  "many-missing-weights"])
def test_messages_stay_short_for_huge_values(tmp_path: Path, linear_file: Path,
                                             what: str) -> None:
    """A message quotes a value read from the file only in part: a 1 MB file gives a
    one-line message, not a 1 MB one."""
    header, data = _parts(linear_file)
    if what == "huge-shape":
        _tensor(header)["shape"] = [1] * 100_000
        raw = _container(header, data)
    elif what == "many-duplicates":
        raw = _container(b'{"meta":{' + b",".join(b'"k%d":0,"k%d":0' % (i, i)
                                                   for i in range(20_000)) + b"}}")
    elif what == "huge-name":
        header["tensors"]["n" * 100_000] = header["tensors"].pop("model/0.weight")
        raw = _container(header, data)
    elif what == "huge-kind":
        header["kind"] = "k" * 100_000
        raw = _container(header, data)
    else:
        header["meta"]["architecture"] = [{"type": "Linear", "config": {"in_features": 2,
                                                                         "out_features": 4}}]
        for i in range(20_000):
            header["tensors"][f"model/{i}.extra"] = {"dtype": "uint8", "shape": [0],
                                                      "offset": 0, "nbytes": 0}
        raw = _container(header, data)
    p = tmp_path / "huge.cnnkit"
    p.write_bytes(raw)
    with pytest.raises(CheckpointError) as info:
        ck.load(p)
    assert len(str(info.value)) < 600, str(info.value)[:2000]


def test_integers_longer_than_the_limit_are_refused_whatever_python_allows(
        tmp_path: Path) -> None:
    p = tmp_path / "int.cnnkit"
    p.write_bytes(_container(b'{"meta":{"x":' + b"7" * (io.MAX_INT_DIGITS + 1) + b"}}"))
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(CheckpointError, match=rf"integer of {io.MAX_INT_DIGITS + 1} "
                                                  rf"digits .*at most {io.MAX_INT_DIGITS}"):
            ck.load(p)
    finally:
        sys.set_int_max_str_digits(before)
    q = tmp_path / "ok.cnnkit"  # the longest allowed one parses (and fails later, as a header)
    q.write_bytes(_container(b'{"meta":{"x":' + b"7" * io.MAX_INT_DIGITS + b"}}"))
    with pytest.raises(CheckpointError, match="not a cnnkit file"):
        ck.load(q)


# ---------------------------------------------------------------------------------------------
# 4. IDX files: IDXFormatError, and the loader falls back past a corrupt file
# ---------------------------------------------------------------------------------------------


def _idx_header(code: int, shape: tuple[int, ...]) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


BAD_IDX: dict[str, bytes] = {
    # numpy's "maximum supported dimension" ValueError before
    "65-dims": _idx_header(8, (1,) * 65) + b"\x07",
    "255-dims-zero-size": _idx_header(8, (0,) + (2**32 - 1,) * 254),
    "33-dims": _idx_header(8, (1,) * 33) + b"\x07",
    # numpy's "array is too big" ValueError before
    "zero-size-impossible": _idx_header(8, (0, 2**32 - 1, 2**32 - 1, 2**32 - 1)),
    "zero-size-impossible-f8": _idx_header(0x0E, (0, 2**32 - 1, 2**32 - 1)),
    # rejected before too (regression)
    "short-payload": _idx_header(8, (2, 2)) + b"\x00\x01\x02",
    "unknown-code": _idx_header(0x0A, (1,)) + b"\x00",
}


@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_malformed_idx_raises_idx_format_error(tmp_path: Path, case: str) -> None:
    with pytest.raises(datasets.IDXFormatError):
        datasets.read_idx(BAD_IDX[case])
    p = tmp_path / "x-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(BAD_IDX[case]))
    with pytest.raises(datasets.IDXFormatError):
        datasets.read_idx(p)


def _corrupt_deflate(raw: bytes) -> bytes:
    """A gzip file with a valid header whose deflate data is garbage (zlib.error, not
    OSError, from the gzip module)."""
    gz = bytearray(gzip.compress(raw, mtime=0))
    gz[10] = 0xFF  # first deflate block header: BTYPE 11 (reserved) -> "invalid block type"
    return bytes(gz)


def test_corrupt_deflate_data_raises_idx_format_error(tmp_path: Path) -> None:
    bad = _corrupt_deflate(BAD_IDX["short-payload"])
    with pytest.raises(zlib.error):  # what the gzip module raises for it
        gzip.decompress(bad)
    p = tmp_path / "x-idx1-ubyte.gz"
    p.write_bytes(bad)
    with pytest.raises(datasets.IDXFormatError, match="not a valid gzip file"):
        datasets.read_idx(p)


@pytest.mark.parametrize("corruption", ["65-dims", "zero-size-impossible", "33-dims",
                                        "short-payload"])
def test_corrupt_cache_file_falls_back_to_the_next_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corruption: str) -> None:
    sums = write_fake_mnist(tmp_path / "good")
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", sums)
    isolate_datasets(monkeypatch)
    root = tmp_path / "data"
    write_fake_mnist(root)
    (root / "mnist" / FILES[0]).write_bytes(BAD_IDX[corruption])
    (x, y), (xt, yt) = datasets.load_mnist(root, download=False, verbose=False,
                                           source_dir=tmp_path / "good" / "mnist")
    assert x.shape == (256, 28, 28) and xt.shape == (64, 28, 28)
    good = (tmp_path / "good" / "mnist" / FILES[0]).read_bytes()
    assert (root / "mnist" / FILES[0]).read_bytes() == good  # replaced in the cache


@contextlib.contextmanager
def _http(routes: dict[str, bytes]) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                          daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        th.join(10)


@pytest.mark.parametrize("corruption", ["deflate", "65-dims", "zero-size-impossible"])
def test_corrupt_mirror_file_falls_back_to_the_next_mirror(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corruption: str) -> None:
    sums = write_fake_mnist(tmp_path / "good")
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", sums)
    isolate_datasets(monkeypatch)
    good = {n: (tmp_path / "good" / "mnist" / n).read_bytes() for n in FILES}
    bad = (_corrupt_deflate(good[FILES[0]]) if corruption == "deflate"
           else gzip.compress(BAD_IDX[corruption]))
    routes = {f"/bad/{n}.gz": gzip.compress(b) for n, b in good.items()}
    routes[f"/bad/{FILES[0]}.gz"] = bad
    routes.update({f"/good/{n}.gz": gzip.compress(b) for n, b in good.items()})
    with _http(routes) as base:
        (x, _), _ = datasets.load_mnist(tmp_path / "data", verbose=False,
                                        mirrors=[f"{base}/bad/", f"{base}/good/"])
    assert x.shape == (256, 28, 28)


# ---------------------------------------------------------------------------------------------
# 5. One atomic writer
# ---------------------------------------------------------------------------------------------


def _save_model(path: Path) -> None:
    ck.save(tiny_model(), path)


def _save_cache_file(path: Path) -> None:
    datasets._atomic_write(path, b"cache bytes")


def _save_plot(path: Path) -> None:
    pytest.importorskip("matplotlib")
    from cnnkit import plot

    plot.conv_filters(tiny_model(), path)


WRITERS = {"model": _save_model, "dataset-cache": _save_cache_file, "plot": _save_plot}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_goes_through_the_one_atomic_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    calls: list[str] = []
    real = _files.atomic_write

    def spy(path, write, what="save"):
        calls.append(os.fspath(path))
        return real(path, write, what)

    monkeypatch.setattr(_files, "atomic_write", spy)
    target = tmp_path / "out.bin"
    WRITERS[writer](target)
    assert calls == [str(target)] and target.exists()


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path,
                                                             writer: str) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    WRITERS[writer](target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert target.read_bytes() != b"old"


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path: Path, writer: str) -> None:
    old = os.umask(0o027)
    try:
        WRITERS[writer](tmp_path / "out.bin")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.bin").st_mode) == 0o640


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_leaves_the_old_file_when_it_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        WRITERS[writer](target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_removes_the_stale_temp_file_of_a_killed_writer(
        tmp_path: Path, writer: str) -> None:
    stale = tmp_path / ".out.bin.999999999.deadbeef.tmp"  # no such process, an hour old
    stale.write_bytes(b"partial")
    os.utime(stale, (os.path.getmtime(stale) - 3600,) * 2)
    WRITERS[writer](tmp_path / "out.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


# ---------------------------------------------------------------------------------------------
# 6. The fuzz corpus (seeds and past findings) replays clean
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(fuzz_targets.TARGETS))
def test_fuzz_corpus_replays_clean(target: str) -> None:
    """Every seed of tests/fuzz/corpus/<target> and every input a fuzzing run found (kept
    there as crash-*/timeout-*) goes through the target once: documented errors only."""
    if target == "image":
        pytest.importorskip("PIL")
    files = sorted((FUZZ / "corpus" / target).iterdir())
    assert files, f"no seed files for {target}"
    n = fuzz_targets.replay(target, files)  # warnings are ignored, as under the fuzzer
    assert n == len(files)


def test_fuzz_fixup_makes_a_mutated_file_pass_the_cheap_checks(tmp_path: Path) -> None:
    """The fuzzer's structure-aware half: after a mutation, the length and CRC fields are
    made consistent so that mutants reach the checks behind the CRC."""
    import fuzz

    raw = (FUZZ / "corpus" / "load" / "seed-model.cnnkit").read_bytes()
    mutated = bytearray(raw)
    mutated[-100] ^= 0xFF  # a tensor byte: the CRC no longer matches
    p = tmp_path / "m.cnnkit"
    p.write_bytes(bytes(mutated))
    with pytest.raises(CheckpointError, match="CRC"):
        ck.io.read(p)
    p.write_bytes(fuzz.fix_lengths_and_crc(bytes(mutated)))
    ck.io.read(p)  # consistent again: the mutated weight is read as it is
