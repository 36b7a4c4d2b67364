"""ImageFolder: a class-per-folder image data set (torchvision's layout and class order),
decoded once with Pillow (the ``image`` extra) into uint8 arrays.

    root/cat/001.png, root/cat/002.jpg, root/dog/xyz.png  ->  classes ["cat", "dog"]

Unreadable files with an image extension are skipped and reported (a count and a warning);
files without one are ignored (counted too), as torchvision ignores them.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: torchvision's IMG_EXTENSIONS (compared lower-cased)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("ImageFolder needs Pillow: pip install 'cnnkit[image]' (or "
                          "pip install Pillow)") from None
    return Image


class ImageFolder:
    """Images in ``root/<class>/**/<file>``, decoded once into ``x`` uint8 (N, C, H, W) and
    ``y`` int64 (N,), class indices in the sorted order of the folder names (torchvision's
    ``find_classes``); files in sorted walk order.

    Args:
        root: the folder of class folders.
        size: (h, w) or an int: every image resized (Pillow bilinear) to it once; None: the
            images must all have one size.
        channels: 3 (RGB, what torchvision's loader gives: palette, grayscale and RGBA
            converted, alpha dropped), 1 (grayscale) or 4 (RGBA).
        extensions: file endings taken as images (lower-cased compare).
        cache_dir: where to keep the decoded arrays on disk (an .npz keyed by the file list,
            sizes and mtimes, size and channels); None: decode every time.
        verbose: warn about skipped files.

    Attributes: classes, class_to_idx, samples ((path, class index) of the images kept),
    targets, x, y, skipped ((path, reason) of unreadable files), ignored (paths without an
    image extension). ``ds[i]`` is ``(x[i], y[i])``; ``DataLoader(ds.x, ds.y, ...)`` trains
    on it natively.
    """

    def __init__(self, root: str | os.PathLike[str], size: int | Sequence[int] | None = None,
                 channels: int = 3, extensions: Sequence[str] = IMG_EXTENSIONS,
                 cache_dir: str | os.PathLike[str] | None = None, verbose: bool = True) -> None:
        w = "ImageFolder"
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{w}: {self.root} is not a folder")
        if channels not in _MODES:
            raise ValueError(f"{w}: channels must be 1, 3 or 4, got {channels!r}")
        if size is not None:
            if isinstance(size, int) and not isinstance(size, bool):
                size = (size, size)
            if (not isinstance(size, Sequence) or len(size) != 2
                    or not all(isinstance(s, int) and s >= 1 for s in size)):
                raise ValueError(f"{w}: size must be an int or (h, w) of positive ints, got "
                                 f"{size!r}")
            size = (int(size[0]), int(size[1]))
        self.size, self.channels = size, int(channels)
        exts = tuple(e.lower() for e in extensions)
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"{w}: couldn't find any class folder in {self.root}")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        files: list[tuple[str, int]] = []
        self.ignored: list[str] = []
        for c in self.classes:
            for dirpath, _, names in sorted(os.walk(self.root / c, followlinks=True)):
                for n in sorted(names):
                    p = os.path.join(dirpath, n)
                    (files.append((p, self.class_to_idx[c])) if n.lower().endswith(exts)
                     else self.ignored.append(p))
        self._load(files, cache_dir)
        if verbose and (self.skipped or self.ignored):
            first = "; ".join(f"{p}: {why}" for p, why in self.skipped[:3])
            warnings.warn(
                f"{w}: skipped {len(self.skipped)} unreadable image file(s)"
                + (f" ({first}{', ...' if len(self.skipped) > 3 else ''})" if first else "")
                + f" and ignored {len(self.ignored)} file(s) without an image extension in "
                f"{self.root}", stacklevel=2)
        counts = np.bincount(self.y, minlength=len(self.classes)) if len(self.y) else \
            np.zeros(len(self.classes), np.int64)
        empty = [c for c, k in zip(self.classes, counts, strict=True) if k == 0]
        if empty:
            raise FileNotFoundError(f"{w}: found no valid image for the classes "
                                    f"{', '.join(empty)} (supported extensions: "
                                    f"{', '.join(exts)})")

    def _key(self, files: list[tuple[str, int]]) -> str:
        h = hashlib.sha256()
        for p, c in files:
            st = os.stat(p)
            h.update(f"{p}\0{c}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(json.dumps([self.size, self.channels]).encode())
        return h.hexdigest()[:32]

    def _load(self, files: list[tuple[str, int]], cache_dir: Any) -> None:
        cache = None
        if cache_dir is not None:
            cache = Path(cache_dir).expanduser() / f"imagefolder-{self._key(files)}.npz"
            if cache.is_file():
                try:
                    with np.load(cache, allow_pickle=False) as z:
                        self.x, self.y = z["x"], z["y"]
                        meta = json.loads(str(z["meta"]))
                    self.samples = [tuple(s) for s in meta["samples"]]
                    self.skipped = [tuple(s) for s in meta["skipped"]]
                    self.targets = [c for _, c in self.samples]
                    return
                except (OSError, ValueError, KeyError):
                    pass  # a damaged cache: decode again
        image = _pillow()
        xs, self.samples, self.skipped = [], [], []
        for p, c in files:
            try:
                with image.open(p) as im:
                    im.load()
                    im = im.convert(_MODES[self.channels])
                    if self.size is not None and im.size != (self.size[1], self.size[0]):
                        im = im.resize((self.size[1], self.size[0]), image.BILINEAR)
                    a = np.asarray(im, np.uint8)
            except (OSError, ValueError, SyntaxError, image.DecompressionBombError) as e:
                self.skipped.append((p, f"{type(e).__name__}: {e}"))
                continue
            a = a[:, :, None] if a.ndim == 2 else a
            if xs and a.shape != xs[0].shape:
                raise ValueError(f"ImageFolder: {p} is {a.shape[1]}x{a.shape[0]} but "
                                 f"{self.samples[0][0]} is {xs[0].shape[1]}x{xs[0].shape[0]}; "
                                 "pass size=(h, w) to resize every image")
            xs.append(a)
            self.samples.append((p, c))
        self.targets = [c for _, c in self.samples]
        self.y = np.asarray(self.targets, np.int64)
        if xs:
            self.x = np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2))
        else:
            h, w = self.size or (0, 0)
            self.x = np.zeros((0, self.channels, h, w), np.uint8)
        if cache is not None and xs:
            cache.parent.mkdir(parents=True, exist_ok=True)
            meta = json.dumps({"samples": self.samples, "skipped": self.skipped})
            tmp = cache.with_name(cache.name + ".tmp.npz")
            np.savez(tmp, x=self.x, y=self.y, meta=np.asarray(meta))
            os.replace(tmp, cache)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.x[i], int(self.y[i])

    def __repr__(self) -> str:
        return (f"ImageFolder({str(self.root)!r}, {len(self)} images, {len(self.classes)} "
                f"classes, x{tuple(self.x.shape)}, skipped={len(self.skipped)}, "
                f"ignored={len(self.ignored)})")
