"""ImageFolder: torchvision's class order and extensions, PNG/JPEG/grayscale/RGBA/palette
files, corrupt and non-image files skipped with a count, resizing, the on-disk cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.datasets import ImageFolder

Image = pytest.importorskip("PIL.Image")


def _tree(root):
    g = np.random.default_rng(0)
    (root / "dog").mkdir(parents=True)
    (root / "Cat" / "sub").mkdir(parents=True)
    (root / "bird").mkdir()
    rgb = g.integers(0, 256, (8, 6, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(root / "dog" / "b.png")
    Image.fromarray(rgb).save(root / "dog" / "a.JPG", quality=95)
    Image.fromarray(rgb[:, :, 0]).save(root / "Cat" / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((8, 6), 128, np.uint8)])).save(
        root / "Cat" / "sub" / "rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "bird" / "pal.png")
    (root / "bird" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "bird" / "notes.txt").write_text("not an image")
    return rgb


def test_layout_modes_and_skips(tmp_path):
    rgb = _tree(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable .* ignored 1 file"):
        ds = ImageFolder(tmp_path)
    assert ds.classes == ["Cat", "bird", "dog"]  # sorted like torchvision (case-sensitive)
    names = [os.path.relpath(p, tmp_path) for p, _ in ds.samples]
    assert names == ["Cat/gray.png", "Cat/sub/rgba.png", "bird/pal.png", "dog/a.JPG",
                     "dog/b.png"]
    assert ds.y.tolist() == [0, 0, 1, 2, 2] and ds.x.shape == (5, 3, 8, 6)
    assert ds.x.dtype == np.uint8 and len(ds.skipped) == 1 and "broken.png" in ds.skipped[0][0]
    np.testing.assert_array_equal(ds.x[4], rgb.transpose(2, 0, 1))  # PNG: exact
    np.testing.assert_array_equal(ds.x[0], np.stack([rgb[:, :, 0]] * 3))  # L -> RGB
    np.testing.assert_array_equal(ds.x[1], rgb.transpose(2, 0, 1))  # RGBA: alpha dropped
    jpg = np.asarray(Image.open(tmp_path / "dog" / "a.JPG").convert("RGB"))
    np.testing.assert_array_equal(ds.x[3], jpg.transpose(2, 0, 1))  # JPEG: Pillow's decode
    x0, y0 = ds[0]
    assert x0.shape == (3, 8, 6) and y0 == 0


def test_channels_resize_and_cache(tmp_path):
    _tree(tmp_path / "data")
    with pytest.warns(UserWarning):
        ds = ImageFolder(tmp_path / "data", size=(4, 5), channels=1,
                         cache_dir=tmp_path / "cache")
    assert ds.x.shape == (5, 1, 4, 5)
    assert len(list((tmp_path / "cache").glob("imagefolder-*.npz"))) == 1
    with pytest.warns(UserWarning):
        again = ImageFolder(tmp_path / "data", size=(4, 5), channels=1,
                            cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.x, ds.x)
    assert again.samples == ds.samples and len(again.skipped) == 1
    ds4 = ImageFolder(tmp_path / "data", size=4, channels=4, verbose=False)
    assert ds4.x.shape == (5, 4, 4, 4)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="class folder"):
        ImageFolder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "a" / "y.png")
    with pytest.raises(ValueError, match="pass size"):
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no valid image for the classes b"):
        ImageFolder(tmp_path, size=4)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(tmp_path, channels=2)


def test_trains_through_a_loader(tmp_path):
    _tree(tmp_path)
    ds = ImageFolder(tmp_path, size=8, verbose=False)
    tf = ck.transforms.Compose([ck.transforms.RandomCrop(8, padding=1),
                                ck.transforms.RandomHorizontalFlip()])
    loader = ck.data.DataLoader(ds.x, ds.y, batch_size=2, shuffle=True, transform=tf)
    m = ck.Sequential(ck.Conv2d(3, 2, 3), ck.Flatten(), ck.Linear(2 * 6 * 6, 3))
    h = ck.Trainer(m, optimizer="sgd").fit(loader, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0])


def test_cli_dataset_choices_and_augmentation(tmp_path):
    import argparse

    from cnnkit import cli

    assert cli._dataset_arg("cifar100") == "cifar100"
    assert cli._dataset_arg(f"folder:{tmp_path}") == f"folder:{tmp_path}"
    with pytest.raises(argparse.ArgumentTypeError, match="folder:PATH"):
        cli._dataset_arg("imagenet")
    _tree(tmp_path)
    with pytest.warns(UserWarning):
        (xt, yt), (xs, ys) = cli._load_dataset(f"folder:{tmp_path}", None)
    assert xt.shape[1:] == (3, 32, 32) and len(xt) + len(xs) == 5 and len(xs) == 1
    tf = cli._augmentation(np.zeros((1, 1, 28, 28), np.uint8), "mnist")
    assert [type(t).__name__ for t in tf.transforms] == ["RandomCrop"]
    assert tf.transforms[0]._pad == [2, 2, 2, 2]
    tf = cli._augmentation(xt, "cifar10")
    assert [type(t).__name__ for t in tf.transforms] == ["RandomCrop", "RandomHorizontalFlip"]
    assert tf.transforms[0]._pad == [4, 4, 4, 4]
