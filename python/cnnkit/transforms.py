"""Batch image transforms (augmentation) with torchvision's names, arguments and definitions.

>>> tf = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(),
...               Normalize(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))])
>>> loader = cnnkit.data.DataLoader(x, y, batch_size=128, shuffle=True, transform=tf)

A transform takes a whole batch (N, C, H, W) -- uint8 (scaled to [0, 1] as ``ToTensor`` does)
or float -- and returns float32; a Compose of these runs as ONE native call per batch, with
OpenMP over the images and the GIL released. Each image's random draws are a pure function of
(seed, epoch, the image's index in the data set), so training is the same at any thread count,
with or without prefetch, and a resumed run sees the same augmented batches. Inside a
DataLoader the keys are the loader's seed, the epoch and the sample indices (also when the
transform is called from a plain ``fn(xb, yb)`` wrapper); called directly, ``index=``,
``epoch=`` and ``seed=`` may be given (by default index 0..N-1, epoch 0 and a fresh seed per
call).

Each transform is defined as torchvision's tensor transform (its ``get_params`` and its
functional kernel): see docs/datasets.md for the few documented differences (the draws come
from cnnkit's counter-based generator, not torch's; interpolation without antialias; uint8
input is converted to float first, so no rounding back to uint8 between transforms).
"""

from __future__ import annotations

import itertools
import math
import numbers
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _core
from ._checks import to_numpy
from ._seeding import derive_seed

__all__ = [
    "Transform", "Compose", "RandomCrop", "RandomHorizontalFlip", "RandomResizedCrop",
    "RandomRotation", "RandomAffine", "ColorJitter", "Normalize", "Resize",
]

_NO_LABELS = object()
_calls = itertools.count()
_keys = threading.local()  # the DataLoader's (seed, epoch, index) while it runs a transform


def augment_seed(loader_seed: int) -> int:
    """The transform seed of a DataLoader with `seed` (its shuffling uses another stream)."""
    return derive_seed(int(loader_seed), 0xA06_3E47)


class _BatchKeys:
    """Context: the keys a native transform called inside it uses (DataLoader batches)."""

    def __init__(self, seed: int, epoch: int, index: np.ndarray) -> None:
        self.keys = (int(seed), int(epoch), np.ascontiguousarray(index, dtype=np.int64))

    def __enter__(self) -> _BatchKeys:
        self.prev = getattr(_keys, "current", None)
        _keys.current = self.keys
        return self

    def __exit__(self, *exc: Any) -> None:
        _keys.current = self.prev


# ---------------------------------------------------------------------------------------------
# argument parsing (torchvision's rules)
# ---------------------------------------------------------------------------------------------


def _size2(size: Any, name: str, what: str) -> tuple[int, int]:
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) == 1:
        size = (size[0], size[0])
    if (not isinstance(size, Sequence) or len(size) != 2 or
            not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
                    for s in size)):
        raise ValueError(f"{what}: {name} must be a positive int or a sequence (h, w) of "
                         f"positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _range(value: Any, name: str, what: str, *, center: float | None = None,
           bound: tuple[float, float] = (-math.inf, math.inf),
           clip_first: bool = True) -> tuple[float, float]:
    """A number v gives (center - v, center + v) (v >= 0), a pair stays (min, max)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{what}: if {name} is a single number, it must be non negative, "
                             f"got {value!r}")
        c = 0.0 if center is None else center
        lo = c - float(value)
        value = (max(lo, 0.0) if (clip_first and center is not None) else lo, c + float(value))
    elif (isinstance(value, Sequence) and len(value) == 2 and
          all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)):
        value = (float(value[0]), float(value[1]))
    else:
        raise ValueError(f"{what}: {name} must be a number or a (min, max) pair, got {value!r}")
    if not (bound[0] <= value[0] <= value[1] <= bound[1]) or not all(map(math.isfinite, value)):
        raise ValueError(f"{what}: {name} values must be finite with min <= max within "
                         f"{bound}, got {value}")
    return value


def _interp(v: Any, what: str) -> str:
    v = getattr(v, "value", v)  # torchvision's InterpolationMode
    if isinstance(v, str) and v.lower() in ("nearest", "bilinear"):
        return v.lower()
    raise ValueError(f"{what}: interpolation must be 'nearest' or 'bilinear', got {v!r}")


def _fill(fill: Any, what: str) -> list[float]:
    if fill is None:
        return [0.0]
    if isinstance(fill, numbers.Real) and not isinstance(fill, bool):
        return [float(fill)]
    if isinstance(fill, Sequence) and len(fill) >= 1 and all(
            isinstance(f, numbers.Real) and not isinstance(f, bool) for f in fill):
        return [float(f) for f in fill]
    raise ValueError(f"{what}: fill must be a number or a sequence of numbers, got {fill!r}")


def _antialias(antialias: Any, what: str) -> None:
    if antialias not in (False, None):
        raise ValueError(f"{what}: antialias=True is not supported (cnnkit resamples like "
                         "torch.nn.functional.interpolate without antialias); pass "
                         "antialias=False")


# ---------------------------------------------------------------------------------------------
# base classes
# ---------------------------------------------------------------------------------------------


class Transform:
    """A native batch transform: callable as ``t(x)`` -> x' or ``t(xb, yb)`` -> (xb', yb)
    (a DataLoader ``transform=``)."""

    def _add(self, pipe: Any) -> None:  # appends this transform's op(s) to a _core.Pipeline
        raise NotImplementedError

    def _pipeline(self) -> Any:
        """The native pipeline, or None when a member is a Python callable."""
        cached = getattr(self, "_pipe_cache", None)
        if cached is None:
            cached = _core.Pipeline()
            self._add(cached)
            self._pipe_cache = cached
        return cached

    def out_shape(self, sample: Sequence[int]) -> tuple[int, ...]:
        """Per-sample output shape (C, H', W') for input images (C, H, W)."""
        pipe = self._pipeline()
        if pipe is None:
            raise ValueError(f"{type(self).__name__}: a Python member has no known output shape")
        return tuple(pipe.out_shape([int(s) for s in sample]))

    def params(self, sample: Sequence[int], index: Any, seed: int, epoch: int = 0) -> list:
        """The random parameters drawn for each index (one (N, k) array per native op, as
        data/transforms.h lists them): for tests and inspection."""
        return self._pipeline().params([int(s) for s in sample], np.asarray(index, np.int64),
                                       int(seed), int(epoch))

    def apply(self, x: Any, index: Any, seed: int, epoch: int = 0) -> np.ndarray:
        """The transform on images x (N, C, H, W) with explicit keys: image i's draws are a
        function of (seed, epoch, index[i])."""
        a = _images(x, type(self).__name__)
        idx = np.ascontiguousarray(np.asarray(index), dtype=np.int64)
        if idx.shape != (a.shape[0],):
            raise ValueError(f"{type(self).__name__}: index must have one entry per image "
                             f"({a.shape[0]}), got shape {idx.shape}")
        if seed < 0 or epoch < 0:
            raise ValueError(f"{type(self).__name__}: seed and epoch must be >= 0")
        return self._run(a, idx, int(seed) & ((1 << 64) - 1), int(epoch))

    def _run(self, a: np.ndarray, idx: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        return self._pipeline().apply(a, idx, seed, epoch)

    def __call__(self, x: Any, y: Any = _NO_LABELS, *, index: Any = None, epoch: int | None = None,
                 seed: int | None = None) -> Any:
        single = False
        a = to_numpy(x)
        if a.ndim == 3:  # one image (C, H, W)
            a, single = a[None], True
        ctx = getattr(_keys, "current", None)
        if ctx is not None and index is None and ctx[2].shape == (a.shape[0],):
            seed = ctx[0] if seed is None else seed
            epoch = ctx[1] if epoch is None else epoch
            index = ctx[2]
        if index is None:
            index = np.arange(a.shape[0])
        if seed is None:
            seed = derive_seed(0xCA11, next(_calls))
        out = self.apply(a, index, seed, 0 if epoch is None else epoch)
        if single:
            out = out[0]
        return out if y is _NO_LABELS else (out, y)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _images(x: Any, what: str) -> np.ndarray:
    a = to_numpy(x)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise ValueError(f"{what}: images must be numeric, got dtype {a.dtype}")
    if a.ndim != 4:
        raise ValueError(f"{what}: images must be (N, C, H, W) (or one (C, H, W) image), got "
                         f"shape {a.shape}")
    if a.shape[0] == 0 or a.size == 0:
        raise ValueError(f"{what}: the batch is empty (shape {a.shape})")
    if a.dtype != np.uint8:
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: images contain NaN or Inf")
    return np.ascontiguousarray(a)


def native_pipeline(transform: Any) -> Any:
    """The native pipeline of a cnnkit transform (the Trainer's native loop applies it), or
    None for any other callable."""
    if isinstance(transform, Transform):
        return transform._pipeline()
    return None


class Compose(Transform):
    """Transforms applied in order. Members are cnnkit transforms (then the whole Compose is one
    native call per batch) or Python callables ``fn(xb, yb) -> (xb, yb)``."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
            raise ValueError(f"Compose: transforms must be a list, got {transforms!r}")
        for t in transforms:
            if not callable(t):
                raise ValueError(f"Compose: {t!r} is not callable")
        self.transforms = list(transforms)

    def _pipeline(self) -> Any:
        if not all(isinstance(t, Transform) and t._pipeline() is not None
                   for t in self.transforms):
            return None
        return super()._pipeline()

    def _add(self, pipe: Any) -> None:
        for t in self.transforms:
            pipe.extend(t._pipeline())

    def _run(self, a: np.ndarray, idx: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        pipe = self._pipeline()
        if pipe is not None:
            return pipe.apply(a, idx, seed, epoch)
        x: Any = a
        for i, t in enumerate(self.transforms):  # mixed: native members keyed per position
            if isinstance(t, Transform):
                x = t.apply(x, idx, derive_seed(seed, i), epoch)
            else:
                with _BatchKeys(derive_seed(seed, i), epoch, idx):
                    out = t(x, None)
                if not isinstance(out, tuple) or len(out) != 2:
                    raise ValueError(f"Compose: {t!r} must return a pair (xb, yb)")
                x = out[0]
        return np.ascontiguousarray(x, dtype=np.float32)

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


# ---------------------------------------------------------------------------------------------
# the transforms
# ---------------------------------------------------------------------------------------------


class RandomCrop(Transform):
    """torchvision.transforms.RandomCrop: pad (``padding``: int, (left/right, top/bottom) or
    (left, top, right, bottom); ``padding_mode`` constant/edge/reflect/symmetric), pad again
    when smaller than ``size`` with ``pad_if_needed``, then a crop at a uniform position."""

    def __init__(self, size: Any, padding: Any = None, pad_if_needed: bool = False,
                 fill: float = 0, padding_mode: str = "constant") -> None:
        w = "RandomCrop"
        self.size = _size2(size, "size", w)
        if padding is None:
            pad = (0, 0, 0, 0)
        elif isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
            pad = (int(padding),) * 4
        elif isinstance(padding, Sequence) and len(padding) in (1, 2, 4) and all(
                isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in padding):
            p = [int(v) for v in padding]
            pad = tuple(p * 4) if len(p) == 1 else (
                (p[0], p[1], p[0], p[1]) if len(p) == 2 else tuple(p))
        else:
            raise ValueError(f"{w}: padding must be an int or a sequence of 1, 2 or 4 ints, got "
                             f"{padding!r}")
        if min(pad) < 0:
            raise ValueError(f"{w}: padding must be >= 0, got {padding!r}")
        if padding_mode not in ("constant", "edge", "reflect", "symmetric"):
            raise ValueError(f"{w}: padding_mode must be 'constant', 'edge', 'reflect' or "
                             f"'symmetric', got {padding_mode!r}")
        if not isinstance(fill, numbers.Real) or isinstance(fill, bool):
            raise ValueError(f"{w}: fill must be a number for tensor images, got {fill!r}")
        self.padding, self.pad_if_needed = padding, bool(pad_if_needed)
        self.fill, self.padding_mode = float(fill), padding_mode
        self._pad = list(pad)

    def _add(self, pipe: Any) -> None:
        pipe.add_crop(self.size[0], self.size[1], self._pad, self.pad_if_needed, self.fill,
                      self.padding_mode)


class RandomHorizontalFlip(Transform):
    """torchvision.transforms.RandomHorizontalFlip: each image mirrored with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def _add(self, pipe: Any) -> None:
        pipe.add_flip(self.p)


class RandomResizedCrop(Transform):
    """torchvision.transforms.RandomResizedCrop: a crop of random area fraction ``scale`` and
    aspect ratio ``ratio`` (log-uniform; 10 tries, then the central crop), resized to
    ``size`` (bilinear or nearest, no antialias)."""

    def __init__(self, size: Any, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
                 interpolation: Any = "bilinear", antialias: Any = False) -> None:
        w = "RandomResizedCrop"
        self.size = _size2(size, "size", w)
        self.scale = _range(scale, "scale", w, bound=(1e-12, math.inf))
        self.ratio = _range(ratio, "ratio", w, bound=(1e-12, math.inf))
        self.interpolation = _interp(interpolation, w)
        _antialias(antialias, w)
        self.antialias = False

    def _add(self, pipe: Any) -> None:
        pipe.add_resized_crop(self.size[0], self.size[1], self.scale, self.ratio,
                              self.interpolation)


class RandomRotation(Transform):
    """torchvision.transforms.RandomRotation: an angle uniform in ``degrees`` (d: (-d, d)),
    counter-clockwise about ``center`` (default the image centre), outside filled with
    ``fill``; nearest or bilinear (torchvision's grid_sample and mask blend)."""

    def __init__(self, degrees: Any, interpolation: Any = "nearest", expand: bool = False,
                 center: Sequence[float] | None = None, fill: Any = 0) -> None:
        w = "RandomRotation"
        self.degrees = _range(degrees, "degrees", w)
        self.interpolation = _interp(interpolation, w)
        if expand:
            raise ValueError(f"{w}: expand=True is not supported (every image of a batch keeps "
                             "its size)")
        self.expand = False
        self.center = None if center is None else _pair(center, "center", w)
        self.fill = fill
        self._fill = _fill(fill, w)

    def _add(self, pipe: Any) -> None:
        pipe.add_affine(self.degrees, None, None, [], self.interpolation, self._fill,
                        self.center, True)


def _pair(v: Any, name: str, what: str) -> tuple[float, float]:
    if (isinstance(v, Sequence) and len(v) == 2 and
            all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)):
        return float(v[0]), float(v[1])
    raise ValueError(f"{what}: {name} must be a pair of numbers, got {v!r}")


class RandomAffine(Transform):
    """torchvision.transforms.RandomAffine: rotation ``degrees``, translation up to
    ``translate`` = (fx, fy) of the width/height (rounded to whole pixels), ``scale`` (min, max)
    and ``shear`` (x range, or x and y ranges), about the centre; nearest or bilinear."""

    def __init__(self, degrees: Any, translate: Any = None, scale: Any = None,
                 shear: Any = None, interpolation: Any = "nearest", fill: Any = 0,
                 center: Sequence[float] | None = None) -> None:
        w = "RandomAffine"
        self.degrees = _range(degrees, "degrees", w)
        self.translate = None if translate is None else _pair(translate, "translate", w)
        if self.translate is not None and not all(0.0 <= t <= 1.0 for t in self.translate):
            raise ValueError(f"{w}: translation values should be between 0 and 1, got "
                             f"{translate!r}")
        self.scale = None if scale is None else _pair(scale, "scale", w)
        if self.scale is not None and not (0 < self.scale[0] <= self.scale[1]):
            raise ValueError(f"{w}: scale values should be positive with min <= max, got "
                             f"{scale!r}")
        if shear is None:
            self._shear: list[float] = []
        elif isinstance(shear, numbers.Real) and not isinstance(shear, bool):
            self._shear = list(_range(shear, "shear", w))
        elif isinstance(shear, Sequence) and len(shear) in (2, 4):
            self._shear = [float(s) for s in shear]
        else:
            raise ValueError(f"{w}: shear must be a number or a sequence of 2 or 4 numbers, got "
                             f"{shear!r}")
        self.shear = shear
        self.interpolation = _interp(interpolation, w)
        self.fill = fill
        self._fill = _fill(fill, w)
        self.center = None if center is None else _pair(center, "center", w)

    def _add(self, pipe: Any) -> None:
        pipe.add_affine(self.degrees, self.translate, self.scale, self._shear,
                        self.interpolation, self._fill, self.center, False)


class ColorJitter(Transform):
    """torchvision.transforms.ColorJitter, brightness and contrast only: factors uniform in
    [max(0, 1 - b), 1 + b] (or a (min, max) pair), applied in a random order as
    adjust_brightness (x * f) and adjust_contrast (blend with the grayscale mean), clamped to
    [0, 1]. saturation and hue are not implemented (must be 0)."""

    def __init__(self, brightness: Any = 0, contrast: Any = 0, saturation: Any = 0,
                 hue: Any = 0) -> None:
        w = "ColorJitter"
        self.brightness = _jitter_range(brightness, "brightness", w)
        self.contrast = _jitter_range(contrast, "contrast", w)
        if saturation not in (0, None) or hue not in (0, None):
            raise ValueError(f"{w}: only brightness and contrast are implemented; pass "
                             "saturation=0 and hue=0")
        self.saturation, self.hue = None, None

    def _add(self, pipe: Any) -> None:
        pipe.add_jitter(self.brightness, self.contrast)


def _jitter_range(v: Any, name: str, what: str) -> tuple[float, float] | None:
    r = _range(v, name, what, center=1.0, bound=(0.0, math.inf))
    return None if r[0] == r[1] == 1.0 else r


class Normalize(Transform):
    """torchvision.transforms.Normalize: (x - mean[c]) / std[c] per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        w = "Normalize"
        m = [float(v) for v in np.atleast_1d(np.asarray(mean, dtype=np.float64))]
        s = [float(v) for v in np.atleast_1d(np.asarray(std, dtype=np.float64))]
        if len(m) != len(s) or not m:
            raise ValueError(f"{w}: mean and std must have the same non-zero length, got "
                             f"{mean!r} and {std!r}")
        if any(v == 0 for v in s):
            raise ValueError(f"{w}: std evaluated to zero after conversion to float32, leading "
                             "to division by zero")
        self.mean, self.std, self.inplace = tuple(m), tuple(s), bool(inplace)

    def _add(self, pipe: Any) -> None:
        pipe.add_normalize(list(self.mean), list(self.std))


class Resize(Transform):
    """torchvision.transforms.Resize: to (h, w), or an int: the smaller edge to ``size``
    keeping the aspect ratio (the longer one truncated); bilinear or nearest, no antialias."""

    def __init__(self, size: Any, interpolation: Any = "bilinear", max_size: Any = None,
                 antialias: Any = False) -> None:
        w = "Resize"
        if max_size is not None:
            raise ValueError(f"{w}: max_size is not supported")
        if isinstance(size, numbers.Integral) and not isinstance(size, bool) or (
                isinstance(size, Sequence) and len(size) == 1):
            s = int(size if isinstance(size, numbers.Integral) else size[0])
            if s < 1:
                raise ValueError(f"{w}: size must be positive, got {size!r}")
            self._hw = (-1, s)
        else:
            self._hw = _size2(size, "size", w)
        self.size = size
        self.interpolation = _interp(interpolation, w)
        _antialias(antialias, w)
        self.max_size, self.antialias = None, False

    def _add(self, pipe: Any) -> None:
        pipe.add_resize(self._hw[0], self._hw[1], self.interpolation)

