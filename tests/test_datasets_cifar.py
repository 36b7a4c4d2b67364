"""CIFAR-10/100 loaders on synthetic files written in the exact binary format (no real CIFAR
data exists on the test machines): archive and extracted layouts, the SHA-256 check, errors
naming what is missing where, no network."""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest

from cnnkit import datasets
from cnnkit._cifar import write_cifar_binary

RNG = np.random.default_rng(7)


def _records(n, classes, label_bytes):
    x = RNG.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    labels = [RNG.integers(0, 20, n), RNG.integers(0, classes, n)][-label_bytes:]
    return x, labels


def _write_archive(path, key, n=4):
    spec = datasets.CIFAR_SPECS[key]
    lb = spec["label_bytes"]
    parts = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in spec["train"] + spec["test"]:
            x, labels = _records(n, 10 if key == "cifar-10" else 100, lb)
            buf = io.BytesIO()
            write_cifar_binary(buf, x, labels)
            data = buf.getvalue()
            info = tarfile.TarInfo(f"{spec['folder']}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            parts[name] = (x, labels)
    return parts, hashlib.sha256(path.read_bytes()).hexdigest()


def test_cifar10_from_the_cache_archive(tmp_path):
    cache = tmp_path / "cifar-10"
    cache.mkdir()
    parts, sha = _write_archive(cache / "cifar-10-binary.tar.gz", "cifar-10")
    (xt, yt), (xs, ys) = datasets.load_cifar10(tmp_path, download=False, verbose=False,
                                               sha256=sha)
    assert xt.shape == (20, 3, 32, 32) and xt.dtype == np.uint8 and yt.dtype == np.int64
    assert xs.shape == (4, 3, 32, 32)
    want_x = np.concatenate([parts[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    want_y = np.concatenate([parts[f"data_batch_{i}.bin"][1][0] for i in range(1, 6)])
    np.testing.assert_array_equal(xt, want_x)
    np.testing.assert_array_equal(yt, want_y)
    np.testing.assert_array_equal(ys, parts["test_batch.bin"][1][0])
    # R plane first: byte 1 of a record is the top-left red value
    raw = io.BytesIO()
    write_cifar_binary(raw, xs[:1], [ys[:1]])
    assert raw.getvalue()[1] == xs[0, 0, 0, 0] and raw.getvalue()[1 + 1024] == xs[0, 1, 0, 0]


def test_cifar100_fine_and_coarse_from_extracted_files(tmp_path):
    folder = tmp_path / "cifar-100" / "cifar-100-binary"
    folder.mkdir(parents=True)
    x, (coarse, fine) = _records(6, 100, 2)
    write_cifar_binary(folder / "train.bin", x, [coarse, fine])
    write_cifar_binary(folder / "test.bin", x[:2], [coarse[:2], fine[:2]])
    (xt, yt), (xs, ys) = datasets.load_cifar100(tmp_path, download=False, verbose=False)
    np.testing.assert_array_equal(xt, x)
    np.testing.assert_array_equal(yt, fine)
    (_, yc), _ = datasets.load_cifar100(tmp_path, download=False, verbose=False,
                                        label_mode="coarse")
    np.testing.assert_array_equal(yc, coarse)
    with pytest.raises(ValueError, match="label_mode"):
        datasets.load_cifar100(tmp_path, download=False, label_mode="super")


def test_checksum_mismatch_is_reported(tmp_path):
    cache = tmp_path / "cifar-10"
    cache.mkdir()
    _write_archive(cache / "cifar-10-binary.tar.gz", "cifar-10")
    with pytest.raises(datasets.DatasetUnavailableError, match="checksum mismatch") as e:
        datasets.load_cifar10(tmp_path, download=False, verbose=False)  # the official digest
    assert datasets.CIFAR_SPECS["cifar-10"]["sha256"] in str(e.value)


def test_missing_files_are_named_with_where(tmp_path):
    folder = tmp_path / "cifar-10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    x, labels = _records(2, 10, 1)
    write_cifar_binary(folder / "data_batch_1.bin", x, labels)
    with pytest.raises(datasets.DatasetUnavailableError) as e:
        datasets.load_cifar10(tmp_path, download=False, verbose=False)
    msg = str(e.value)
    assert "cifar-10-binary.tar.gz is missing" in msg and "data_batch_2.bin" in msg
    assert "test_batch.bin" in msg and str(tmp_path) in msg and "download=False" in msg
    assert "https://www.cs.toronto.edu/~kriz/" in msg


def test_truncated_record_and_bad_label(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    x, (coarse, fine) = _records(2, 100, 2)
    write_cifar_binary(folder / "train.bin", x, [coarse, fine])
    (folder / "test.bin").write_bytes(b"\0" * 100)
    with pytest.raises(datasets.DatasetUnavailableError, match="whole number of 3074-byte"):
        datasets.load_cifar100(tmp_path / "cache", download=False, verbose=False,
                               source_dir=folder)
    write_cifar_binary(folder / "test.bin", x, [coarse, np.full(2, 200)])
    with pytest.raises(datasets.DatasetUnavailableError, match="label 200"):
        datasets.load_cifar100(tmp_path / "cache", download=False, verbose=False,
                               source_dir=folder)


def test_unreachable_mirror_is_reported(tmp_path):
    with pytest.raises(datasets.DatasetUnavailableError, match="download http://127.0.0.1:9/"):
        datasets.load_cifar10(tmp_path, verbose=False, mirrors=["http://127.0.0.1:9/"],
                              timeout=2)
    assert not list((tmp_path / "cifar-10").glob("*"))  # no partial download left behind
