"""Writes the seed corpus of the fuzz targets: small real files of every kind each reader takes.

    python tests/fuzz/make_corpus.py        # rewrites tests/fuzz/corpus/<target>/seed-*

Model and trainer files come from the current cnnkit (Adam + ReduceLROnPlateau saved in the
middle of an epoch, SGD momentum + LinearWarmup(after=StepLR) after two epochs, a model file, a graph model)
plus the files of the previous release in tests/data/format_v1; IDX files are a tiny fake
MNIST (plain and gzip) and other element types; .npy files cover dtypes, orders and header
versions; images are PNG (grey, RGB, RGBA, 16-bit, palette), JPEG, BMP and GIF.
Wall-clock figures are fixed, so the files are the same bytes on every run. Files found by the
fuzzer (crash-*, timeout-*) are kept next to the seeds under their own names.
"""

from __future__ import annotations

import gzip
import io
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import targets  # noqa: E402

import cnnkit as ck  # noqa: E402
from cnnkit import callbacks, datasets, optim  # noqa: E402

REPO = targets.HERE.parent.parent


def _fixed_times(path: Path) -> None:
    t = ck.load(path, device="cpu")
    for key in ("time", "images_per_sec"):
        if key in t.history.history:
            t.history.history[key] = [1.0] * len(t.history.epoch)
    if t._progress is not None:
        t._progress.time = 1.0
    t.save(path)


def cnnkit_files(d: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((48, 1, 8, 8), dtype=np.float32), rng.integers(0, 5, 48)
    ck.save(targets.tiny_model(1), d / "seed-model.cnnkit")

    t = ck.Trainer(targets.tiny_model(2), optimizer=optim.Adam(lr=1e-2), device="cpu", seed=5)
    sched = optim.ReduceLROnPlateau(t.optimizer)
    adam = d / "seed-adam-mid-epoch.cnnkit"
    saver = callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: b == 1 and t.epoch == 1 and t.save(adam))
    t.fit(x, y, epochs=2, batch_size=16, verbose=0, lr_scheduler=sched, callbacks=[saver])
    _fixed_times(adam)

    opt = optim.SGD(lr=0.1, momentum=0.9)
    t2 = ck.Trainer(targets.tiny_model(3), optimizer=opt, device="cpu", seed=6)
    warm = optim.LinearWarmup(opt, 4, after=optim.StepLR(opt, 1, gamma=0.5))
    t2.fit(x, y, epochs=2, batch_size=16, verbose=0, lr_scheduler=warm)
    ck.save(t2, d / "seed-sgd-warmup.cnnkit")
    _fixed_times(d / "seed-sgd-warmup.cnnkit")

    ck.manual_seed(8)  # a graph model (format version 2): a residual block
    graph = ck.Sequential([ck.Conv2d(1, 2, 3, padding=1),
                           ck.Residual(ck.Sequential([ck.Conv2d(2, 2, 3, padding=1), ck.ReLU()])),
                           ck.Flatten(), ck.Linear(2 * 8 * 8, 3)])
    ck.save(graph, d / "seed-graph-residual.cnnkit")

    t3 = ck.Trainer(targets.tiny_model(4), device="cpu", seed=7)  # no optimizer state yet
    ck.save(t3, d / "seed-fresh-trainer.cnnkit")
    for f in ("all_layers.cnnkit", "all_layers_trainer.cnnkit"):
        shutil.copyfile(REPO / "tests/data/format_v1" / f, d / f"seed-v1-{f}")


def idx_files(d: Path) -> None:
    for i, (name, raw) in enumerate(targets.good_idx_files().items()):
        (d / f"seed-{name}").write_bytes(raw)
        if i % 2:
            (d / f"seed-{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
    rng = np.random.default_rng(1)
    for dt in (">i1", ">i2", ">i4", ">f4", ">f8"):
        a = rng.integers(-5, 5, (2, 3)).astype(dt)
        (d / f"seed-2x3-{dt[1:]}").write_bytes(datasets._encode_idx(a))
    (d / "seed-empty-0x28x28").write_bytes(datasets._encode_idx(np.zeros((0, 28, 28), np.uint8)))
    (d / "seed-4d").write_bytes(datasets._encode_idx(np.arange(16, dtype=np.uint8).reshape(
        2, 2, 2, 2)))


def npy_files(d: Path) -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    arrays = {
        "u8-28x28": img, "f32-1x28x28": (img / 255.0).astype(np.float32)[None],
        "f64-28x28": img / 255.0, "i16-fortran": np.asfortranarray(img.astype("<i2")),
        "bool-28x28": img > 128, "be-f4-28x28": img.astype(">f4"),
        "batch-3x28x28": np.stack([img, img.T, 255 - img]), "u8-8x8": img[:8, :8],
    }  # fmt: skip
    for name, a in arrays.items():
        np.save(d / f"seed-{name}.npy", a, allow_pickle=False)
    for version in ((2, 0), (3, 0)):
        b = io.BytesIO()
        np.lib.format.write_array(b, img, version=version, allow_pickle=False)
        (d / f"seed-u8-v{version[0]}.npy").write_bytes(b.getvalue())


def image_files(d: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    Image.fromarray(grey).save(d / "seed-grey.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(d / "seed-rgb.png")
    Image.fromarray(np.stack([grey] * 4, -1)).save(d / "seed-rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(d / "seed-grey16.png")
    Image.fromarray(grey).convert("P").save(d / "seed-palette.png")
    Image.fromarray(grey[:14, :20]).save(d / "seed-small.png")
    Image.fromarray(grey).save(d / "seed-grey.jpg", quality=50)
    Image.fromarray(grey).save(d / "seed-grey.bmp")
    Image.fromarray(grey).save(d / "seed-grey.gif")


def main() -> None:
    for target, make in (("load", cnnkit_files), ("checkpoint", cnnkit_files),
                         ("idx", idx_files), ("npy", npy_files), ("image", image_files)):
        d = targets.CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("seed-*"):
            old.unlink()
        make(d)
        print(f"{d.relative_to(REPO)}: {len(list(d.glob('seed-*')))} seed files")


if __name__ == "__main__":
    main()
