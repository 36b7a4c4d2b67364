"""CIFAR-10 and CIFAR-100 from their binary (non-pickle) distributions, verified and cached.

    (x_train, y_train), (x_test, y_test) = load_cifar10()
    # x: uint8 (50000, 3, 32, 32) / (10000, 3, 32, 32) NCHW; y: int64 (N,) in 0..9

The archive (``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz`` from
https://www.cs.toronto.edu/~kriz/) is kept in ``<data_dir>/cifar-10/`` (``data_dir``, else
``$CNNKIT_DATA``, else ``~/.cache/cnnkit``) and its SHA-256 is checked at every load; the
records are read from it directly (no pickle). Sources, in order: the cache; ``source_dir=``
(a folder with the archive, or with its extracted ``.bin`` files, which have no published
digest and are checked for structure only); the mirrors (``mirrors=``, else
``$CNNKIT_CIFAR10_MIRRORS`` / ``$CNNKIT_CIFAR100_MIRRORS``, else :data:`CIFAR_MIRRORS`), unless
``download=False``. When none can supply the data, :class:`DatasetUnavailableError` names each
place looked at and what was missing there.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DatasetUnavailableError, _progress_bar, default_data_dir

Split = tuple[np.ndarray, np.ndarray]
PathLike = str | os.PathLike[str]

#: Where each archive comes from, its SHA-256 and its layout.
CIFAR_SPECS: dict[str, dict[str, Any]] = {
    "cifar-10": {
        "display": "CIFAR-10",
        "archive": "cifar-10-binary.tar.gz",
        "sha256": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        "folder": "cifar-10-batches-bin",
        "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": ["test_batch.bin"],
        "label_bytes": 1,
        "env": "CNNKIT_CIFAR10",
    },
    "cifar-100": {
        "display": "CIFAR-100",
        "archive": "cifar-100-binary.tar.gz",
        "sha256": "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
        "folder": "cifar-100-binary",
        "train": ["train.bin"],
        "test": ["test.bin"],
        "label_bytes": 2,  # coarse, then fine
        "env": "CNNKIT_CIFAR100",
    },
}

#: Base URLs tried in order (``<base><archive>``); integrity comes from the SHA-256.
CIFAR_MIRRORS: dict[str, list[str]] = {
    "cifar-10": ["https://www.cs.toronto.edu/~kriz/"],
    "cifar-100": ["https://www.cs.toronto.edu/~kriz/"],
}

_IMAGE_BYTES = 3 * 32 * 32


class _Missing(Exception):
    """A source cannot supply the data; the message says what is missing or wrong."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse(name: str, data: bytes, label_bytes: int, where: str) -> tuple[np.ndarray, ...]:
    """Records of one .bin file: (images uint8 (N, 3, 32, 32), labels uint8 (N, label_bytes))."""
    rec = label_bytes + _IMAGE_BYTES
    if len(data) == 0 or len(data) % rec:
        raise _Missing(f"{name} in {where} is {len(data)} bytes, not a whole number of "
                       f"{rec}-byte records")
    a = np.frombuffer(data, np.uint8).reshape(-1, rec)
    return np.ascontiguousarray(a[:, label_bytes:].reshape(-1, 3, 32, 32)), a[:, :label_bytes]


def _read_split(spec: dict[str, Any], files: dict[str, bytes], where: str,
                label: int, classes: int) -> tuple[Split, Split]:
    out = []
    for part in ("train", "test"):
        xs, ys = [], []
        for name in spec[part]:
            x, lab = _parse(name, files[name], spec["label_bytes"], where)
            y = lab[:, label].astype(np.int64)
            if y.size and int(y.max()) >= classes:
                raise _Missing(f"{name} in {where} has label {int(y.max())} (expected "
                               f"0..{classes - 1}): not a {spec['display']} file")
            xs.append(x)
            ys.append(y)
        out.append((np.concatenate(xs), np.concatenate(ys)))
    return out[0], out[1]


def _from_archive(spec: dict[str, Any], path: Path, sha256: str | None) -> dict[str, bytes]:
    if not path.is_file():
        raise _Missing(f"{spec['archive']} is missing")
    if sha256 is not None:
        actual = _sha256_file(path)
        if actual != sha256:
            raise _Missing(f"checksum mismatch for {path}: expected SHA-256 {sha256}, got "
                           f"{actual}")
    files = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in spec["train"] + spec["test"]:
                try:
                    member = tar.getmember(f"{spec['folder']}/{name}")
                    f = tar.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise _Missing(f"{path} has no member {spec['folder']}/{name}")
                files[name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _Missing(f"{path} is not a readable .tar.gz ({e})") from None
    return files


def _from_folder(spec: dict[str, Any], folder: Path) -> dict[str, bytes]:
    for d in (folder / spec["folder"], folder):
        names = spec["train"] + spec["test"]
        missing = [n for n in names if not (d / n).is_file()]
        if not missing:
            return {n: (d / n).read_bytes() for n in names}
    raise _Missing(f"no {spec['archive']} and no extracted files (missing "
                   f"{', '.join(missing)} in {folder / spec['folder']} and {folder})")


def _download(url: str, dest: Path, sha256: str | None, timeout: float, verbose: bool,
              retries: int = 3) -> None:
    """Stream `url` into `dest` (atomically: a temporary file, then os.replace), checking the
    SHA-256 before the file takes its name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    last = ""
    for attempt in range(retries):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
        try:
            h = hashlib.sha256()
            req = urllib.request.Request(url, headers={"User-Agent": "cnnkit-datasets"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, os.fdopen(fd, "wb") as f:
                fd = -1
                total = resp.headers.get("Content-Length")
                bar = _progress_bar(int(total) if total and total.isdigit() else None,
                                    dest.name) if verbose else None
                try:
                    for chunk in iter(lambda: resp.read(1 << 16), b""):
                        f.write(chunk)
                        h.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
            if sha256 is not None and h.hexdigest() != sha256:
                raise _Missing(f"checksum mismatch for {url}: expected SHA-256 {sha256}, got "
                               f"{h.hexdigest()}")
            os.replace(tmp, dest)
            return
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} {e.reason}"
            if e.code < 500:
                break
        except (urllib.error.URLError, OSError) as e:
            last = f"cannot download: {getattr(e, 'reason', e)}"
            if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, TimeoutError):
                break  # unreachable host: not retried
        finally:
            if fd >= 0:
                os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)
        time.sleep(min(4.0, 0.5 * 2 ** attempt))
    raise _Missing(last)


def _load(key: str, data_dir: PathLike | None, download: bool, verbose: bool,
          source_dir: PathLike | None, mirrors: Sequence[str] | None, timeout: float,
          sha256: str | None, label: int, classes: int) -> tuple[Split, Split]:
    spec = CIFAR_SPECS[key]
    expected = spec["sha256"] if sha256 is None else (sha256.lower() or None)
    cache = default_data_dir(data_dir) / key
    archive = cache / spec["archive"]
    failures: list[tuple[str, str]] = []

    def attempt(desc: str, get: Any) -> tuple[Split, Split] | None:
        try:
            return _read_split(spec, get(), desc, label, classes)
        except _Missing as e:
            failures.append((desc, str(e)))
            return None

    got = attempt(f"cache {archive}", lambda: _from_archive(spec, archive, expected))
    if got is None:
        got = attempt(f"extracted files in {cache}", lambda: _from_folder(spec, cache))
    if got is None and source_dir is not None:
        src = Path(source_dir).expanduser()
        if (src / spec["archive"]).is_file():
            got = attempt(f"source_dir {src / spec['archive']}",
                          lambda: _from_archive(spec, src / spec["archive"], expected))
        else:
            got = attempt(f"source_dir {src}", lambda: _from_folder(spec, src))
    if got is None:
        env = os.environ.get(f"{spec['env']}_MIRRORS")
        bases = list(mirrors) if mirrors is not None else (
            env.split(",") if env else CIFAR_MIRRORS[key])
        if not download:
            failures.append(("download", "disabled (download=False)"))
        for base in bases if download else []:
            url = base if base.endswith(".tar.gz") else base.rstrip("/") + "/" + spec["archive"]
            if verbose:
                print(f"cnnkit: downloading {url}", file=sys.stderr)
            try:
                _download(url, archive, expected, timeout, verbose)
            except _Missing as e:
                failures.append((f"download {url}", str(e)))
                continue
            got = attempt(f"downloaded {archive}", lambda: _from_archive(spec, archive, None))
            if got is not None:
                break
    if got is None:
        raise DatasetUnavailableError(
            spec["display"], cache, failures,
            hints=[f"download {spec['archive']} from https://www.cs.toronto.edu/~kriz/ "
                   f"(SHA-256 {spec['sha256']}) and put it in {cache}, or pass "
                   "source_dir= a folder holding it"])
    return got


def load_cifar10(data_dir: PathLike | None = None, download: bool = True, verbose: bool = True,
                 *, source_dir: PathLike | None = None, mirrors: Sequence[str] | None = None,
                 timeout: float = 30.0, sha256: str | None = None) -> tuple[Split, Split]:
    """CIFAR-10 (binary version), official split: ``(x_train, y_train), (x_test, y_test)``
    with x uint8 (N, 3, 32, 32) (NCHW, RGB) and y int64 in 0..9 (airplane, automobile, bird,
    cat, deer, dog, frog, horse, ship, truck). ``sha256`` replaces the official digest of the
    archive (a private mirror; ``""`` skips the check). Raises DatasetUnavailableError naming
    each source tried and what was missing there."""
    return _load("cifar-10", data_dir, download, verbose, source_dir, mirrors, timeout, sha256,
                 0, 10)


def load_cifar100(data_dir: PathLike | None = None, download: bool = True,
                  verbose: bool = True, *, label_mode: str = "fine",
                  source_dir: PathLike | None = None, mirrors: Sequence[str] | None = None,
                  timeout: float = 30.0, sha256: str | None = None) -> tuple[Split, Split]:
    """CIFAR-100 (binary version), as :func:`load_cifar10`; ``label_mode`` "fine" (100 classes,
    the default) or "coarse" (the 20 superclasses)."""
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"load_cifar100: label_mode must be 'fine' or 'coarse', got "
                         f"{label_mode!r}")
    fine = label_mode == "fine"
    return _load("cifar-100", data_dir, download, verbose, source_dir, mirrors, timeout, sha256,
                 1 if fine else 0, 100 if fine else 20)


def write_cifar_binary(path: PathLike | io.BufferedIOBase, x: np.ndarray,
                       labels: Sequence[np.ndarray]) -> None:
    """Write records in the CIFAR binary format (label bytes, then 3072 bytes R, G, B planes):
    for tests and for converting other data. x is uint8 (N, 3, 32, 32); labels one (N,) array
    per label byte (CIFAR-100: coarse, then fine)."""
    x = np.asarray(x, np.uint8).reshape(len(x), -1)
    cols = [np.asarray(v, np.uint8).reshape(-1, 1) for v in labels]
    data = np.concatenate(cols + [x], axis=1).tobytes()
    if isinstance(path, (str, os.PathLike)):
        Path(path).write_bytes(data)
    else:
        path.write(data)
