"""Mini-batches for training: a seeded DataLoader and the input checks the Trainer uses.

>>> loader = DataLoader(x_train, y_train, batch_size=64, shuffle=True, seed=0)
>>> for xb, yb in loader:        # xb: (B, C, H, W) float32, yb: (B,) as given
...     ...

Shuffling is a pure function of (seed, epoch): epoch ``e`` always visits the samples in the
same order, whatever happened before, so an interrupted run can resume exactly. Images are
prepared once: (N, H, W) gets a channel axis and everything becomes contiguous; uint8 images
stay uint8 (a quarter of the memory) and each batch is scaled to [0, 1] with the arithmetic of
:func:`as_input`, other dtypes become float32 up front. ``Trainer.fit`` gathers the batches of
array data natively (``cnnkit._core.BatchFeed``), with the same orders and the same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import _core
from ._checks import positive_int, to_numpy
from ._seeding import derive_seed
from .transforms import _BatchKeys, augment_seed, native_pipeline

__all__ = ["DataLoader", "as_input", "as_images", "as_labels", "as_targets", "check_labels"]

Batch = tuple[np.ndarray, Any]
Transform = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]


# ---------------------------------------------------------------------------------------------
# Input preparation and checks
# ---------------------------------------------------------------------------------------------


def as_input(x: Any, where: str = "x", name: str = "x", *, model: Any = None) -> np.ndarray:
    """Model input as contiguous float32: the one conversion behind every entry point
    (Sequential.forward/predict/__call__, Layer.forward, Trainer.fit/evaluate/predict,
    DataLoader).

    - numpy arrays, nested lists and PyTorch tensors (detached, copied to the CPU) are taken;
    - uint8 images are scaled to [0, 1]; every other numeric dtype becomes float32 with its
      values unchanged;
    - a 3-D array (N, H, W) becomes (N, 1, H, W) when `model` takes 4-D input with one
      channel (or any channel count: a pooling layer first); without a model (a DataLoader,
      which does not know it) every 3-D array is taken as (N, H, W) images;
    - with a model that takes C channels, a 4-D (N, H, W, C) array is refused as NHWC (with
      the transpose that fixes it).

    Raises ValueError for non-numeric or empty input, for anything but (N, C, H, W),
    (N, H, W) or (N, features), and for NaN/Inf (naming the first bad sample).
    """
    return _to_float(_prepared(x, where, name, model))


as_images = as_input  # the earlier name

# float32(1/255): uint8 images are scaled by exactly this (data/batch.h kU8Scale likewise)
_U8_SCALE = np.float32(1.0 / 255.0)


def _to_float(a: np.ndarray) -> np.ndarray:
    """A prepared array (see :func:`_prepared`) as model input: uint8 scaled to [0, 1]."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) * _U8_SCALE
    return a


def _prepared(x: Any, where: str = "x", name: str = "x", model: Any = None) -> np.ndarray:
    """:func:`as_input` without the uint8 scaling: the checks, the channel axis and the
    float32 conversion of other dtypes, with uint8 images kept as uint8 (contiguous), for
    storing a whole data set at a quarter of the size. ``_to_float`` of the result is
    ``as_input(x)``, bit for bit."""
    try:
        a = to_numpy(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{where}: {name} is not an array: {e}") from None
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise ValueError(f"{where}: {name} must be numeric, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{where}: {name} is a scalar; expected a non-empty batch (N, ...)")
    if not 2 <= a.ndim <= 4:
        raise ValueError(
            f"{where}: {name} must be (N, C, H, W), (N, H, W) or (N, features), got shape "
            f"{a.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{where}: {name} is empty (shape {a.shape}); expected a non-empty batch")
    if a.size == 0:
        raise ValueError(f"{where}: {name} has a zero-sized dimension (shape {a.shape})")
    spec = model._input_spec() if model is not None else (4, None)
    if a.ndim == 4 and spec is not None and spec[1] is not None:
        _check_not_nhwc(a.shape, spec[1], where, name, x)
    if a.dtype != np.uint8:
        kind = a.dtype.kind
        with np.errstate(over="ignore", invalid="ignore"):  # too large for float32 -> inf
            a = np.ascontiguousarray(a, dtype=np.float32)
        if kind == "f" and _core.count_nonfinite(a):  # one native pass; per sample if not
            finite = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
            if not finite.all():
                i = int(np.argmin(finite))
                raise ValueError(
                    f"{where}: {name} contains NaN or Inf ({int((~finite).sum())} bad samples, "
                    f"first at index {i})"
                )
    if a.ndim == 3 and spec is not None and spec[0] == 4 and spec[1] in (None, 1):
        a = a[:, None, :, :]
    return np.ascontiguousarray(a)


def _check_not_nhwc(shape: tuple[int, ...], channels: int, where: str, name: str,
                    x: Any) -> None:
    """ValueError when a 4-D shape has the model's channel count last instead of in dim 1."""
    if shape[1] == channels or shape[3] != channels:
        return
    fix = "x.transpose(0, 3, 1, 2)"
    torch_fix = " (a torch tensor: x.permute(0, 3, 1, 2))" if hasattr(x, "permute") else ""
    raise ValueError(
        f"{where}: {name} has shape {tuple(shape)} but the model takes (N, {channels}, H, W): "
        f"it looks like NHWC; transpose to NCHW with {fix}{torch_fix}"
    )


def as_labels(y: Any, where: str = "y", num_classes: int | None = None) -> np.ndarray:
    """Class labels as int64 (N,).

    Accepts integer or bool arrays, floats holding whole numbers, (N, 1) columns and one-hot
    (N, C) rows. Raises ValueError for non-integer or non-finite values and, with
    `num_classes`, for labels outside [0, num_classes).
    """
    try:
        a = to_numpy(y)
    except Exception as e:
        raise ValueError(f"{where}: y is not an array: {e}") from None
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise ValueError(f"{where}: labels must be integer class indices, got dtype {a.dtype}")
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 2 and a.shape[1] > 1:
        onehot = a.shape[0] > 0 and np.all((a == 0) | (a == 1)) and np.all(a.sum(axis=1) == 1)
        if not onehot:
            raise ValueError(
                f"{where}: labels must be (N,) class indices or one-hot (N, C) rows, got shape "
                f"{a.shape} that is not one-hot"
            )
        a = np.argmax(a, axis=1)
    if a.ndim != 1:
        raise ValueError(f"{where}: labels must have shape (N,), got {a.shape}")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where}: labels contain NaN or Inf (first at index {i})")
        frac = a != np.round(a)
        if frac.any():
            i = int(np.argmax(frac))
            raise ValueError(
                f"{where}: labels must be integer class indices, but y[{i}] = "
                f"{a[i].item()!r} is not a whole number"
            )
        big = np.abs(a) >= 2.0**62
        if big.any():
            i = int(np.argmax(big))
            raise ValueError(f"{where}: label {a[i].item()!r} at index {i} is out of range")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if num_classes is not None:
        check_labels(a, num_classes, where)
    return a


def check_labels(labels: np.ndarray, num_classes: int, where: str = "y") -> None:
    """Raise ValueError when an int64 label is outside [0, num_classes)."""
    if labels.size == 0:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{where}: label {int(labels[i])} at index {i} is out of range for a model with "
            f"{num_classes} output classes (expected 0..{num_classes - 1})"
        )


def as_targets(y: Any, where: str = "y", shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Regression targets (for the mse loss) as float32, checked for NaN/Inf and, with
    `shape`, against the model's per-sample output shape ((N,) is taken as (N, 1))."""
    try:
        a = np.ascontiguousarray(to_numpy(y), dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: targets must be numeric: {e}") from None
    if a.ndim == 0:
        raise ValueError(f"{where}: targets need a batch dimension, got a scalar")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: targets contain NaN or Inf")
    if shape is not None:
        if a.ndim == 1 and tuple(shape) == (1,):
            a = a[:, None]
        if tuple(a.shape[1:]) != tuple(shape):
            raise ValueError(
                f"{where}: targets must have per-sample shape {tuple(shape)} (the model "
                f"output), got {tuple(a.shape[1:])}"
            )
    return a


# ---------------------------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------------------------


def _native_transform(t: Any) -> bool:
    """A cnnkit transform that runs natively (not a Compose with Python members)."""
    return native_pipeline(t) is not None


def _is_dataset(x: Any) -> bool:
    """A sequence of samples (not an array): has __len__/__getitem__, no shape."""
    return (
        hasattr(x, "__len__") and hasattr(x, "__getitem__") and not hasattr(x, "shape")
        and not isinstance(x, (list, tuple, str, bytes))
    )


class DataLoader:
    """Mini-batches from arrays (x, y) or from a dataset.

    Args:
        x: images (N, C, H, W) / (N, H, W) / (N, features), uint8 or float (prepared as
            :func:`as_input` says; uint8 is kept and scaled per batch), or a dataset: any
            object with ``__len__`` and ``__getitem__(i)`` returning ``(x_i, y_i)`` (or
            just ``x_i``) — for data that does not fit one array. Dataset batches are
            stacked and prepared per batch.
        y: labels or targets (N, ...) for array input, kept as given; None for a dataset.
        batch_size: samples per batch (the last batch may be smaller unless drop_last).
        shuffle: visit the samples in a new order each epoch.
        seed: the order of epoch ``e`` is a pure function of (seed, e).
        drop_last: skip the final incomplete batch.
        transform: ``fn(xb, yb) -> (xb, yb)`` applied to every batch (augmentation), or a
            :mod:`cnnkit.transforms` transform / Compose: run natively on the whole batch,
            each sample's draws keyed by (seed, epoch, sample index), and inside
            ``Trainer.fit``'s native loop.
        prefetch: batches ``Trainer.fit`` prepares ahead on a background native thread
            (gather, uint8 conversion, transform) while the current step runs; 0: none. The
            results do not depend on it.

    Iterating yields ``(xb, yb)`` with ``yb`` None when there are no labels. Each iteration
    uses :attr:`epoch` and then advances it; :meth:`set_epoch` picks the epoch explicitly
    (the Trainer calls it before every epoch).
    """

    def __init__(
        self,
        x: Any,
        y: Any = None,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        transform: Transform | None = None,
        prefetch: int = 0,
    ) -> None:
        where = "DataLoader"
        batch_size = positive_int(batch_size, "batch_size", where)
        seed = positive_int(seed, "seed", where, allow_zero=True)
        prefetch = positive_int(prefetch, "prefetch", where, allow_zero=True)
        if prefetch > 64:
            raise ValueError(f"{where}: prefetch must be in [0, 64], got {prefetch}")
        self.prefetch = int(prefetch)
        if transform is not None and not callable(transform):
            raise ValueError(f"{where}: transform must be callable, got {transform!r}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.epoch = 0
        self._checked = False  # set by the Trainer when x/y were fully checked up front
        self.dataset: Sequence[Any] | None = None
        self.x: np.ndarray | None = None
        self.y: np.ndarray | None = None
        if _is_dataset(x):
            if y is not None:
                raise ValueError(f"{where}: pass y=None with a dataset (it yields (x_i, y_i))")
            self.dataset = x
            n = len(x)
            if n == 0:
                raise ValueError(f"{where}: the dataset is empty")
        else:
            self.x = _prepared(x, where)
            n = self.x.shape[0]
            if y is not None:
                ya = to_numpy(y)
                if ya.ndim == 0:
                    raise ValueError(f"{where}: y must have one entry per sample, got a scalar")
                if ya.shape[0] != n:
                    raise ValueError(
                        f"{where}: x has {n} samples but y has {ya.shape[0]} (they must match)"
                    )
                self.y = ya
        self.num_samples = int(n)  # per epoch (this process's shard: see shard())
        self._total = int(n)
        self.num_shards, self.shard_index, self._drop_remainder = 1, 0, True
        if self.drop_last and self.num_samples < self.batch_size:
            raise ValueError(
                f"{where}: drop_last with batch_size {self.batch_size} > {self.num_samples} "
                "samples leaves no batch"
            )

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of `epoch` for the next iteration."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"DataLoader.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def shard(self, index: int, num_shards: int, drop_remainder: bool = True) -> DataLoader:
        """Visit only shard `index` of `num_shards` each epoch (data-parallel training, like
        PyTorch's DistributedSampler): the epoch's order (the same seeded permutation on every
        process) is cut interleaved, entry i going to shard i % num_shards. With
        `drop_remainder` the last N % num_shards entries are left out so that every shard has
        the same size (training: every process runs the same number of steps); without it
        shards differ by at most one sample and together cover every sample (evaluation).
        Returns self."""
        num_shards = positive_int(num_shards, "num_shards", "DataLoader.shard")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) \
                or not 0 <= index < num_shards:
            raise ValueError(f"DataLoader.shard: index must be in [0, {num_shards}), got "
                             f"{index!r}")
        n = self._total
        size = n // num_shards if drop_remainder else len(range(int(index), n, num_shards))
        if size < 1:
            raise ValueError(f"DataLoader.shard: {n} samples leave shard {index} of "
                             f"{num_shards} empty")
        if self.drop_last and size < self.batch_size:
            raise ValueError(f"DataLoader.shard: drop_last with batch_size {self.batch_size} > "
                             f"{size} samples per shard leaves no batch")
        self.num_shards, self.shard_index = int(num_shards), int(index)
        self._drop_remainder = bool(drop_remainder)
        self.num_samples = size
        return self

    def order(self, epoch: int) -> np.ndarray:
        """Sample indices visited in `epoch` (identity without shuffle), this shard's part."""
        if not self.shuffle:
            full = np.arange(self._total)
        else:
            rng = np.random.default_rng(derive_seed(self.seed, epoch))
            full = rng.permutation(self._total)
        if self.num_shards == 1:
            return full
        if self._drop_remainder:
            full = full[:(self._total // self.num_shards) * self.num_shards]
        return np.ascontiguousarray(full[self.shard_index::self.num_shards])

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        idx = self.order(epoch)
        self.epoch += 1
        stop = len(self) * self.batch_size if self.drop_last else self.num_samples
        for start in range(0, stop, self.batch_size):
            yield self._batch(idx[start : start + self.batch_size], epoch)

    def _batch(self, ids: np.ndarray, epoch: int = 0) -> Batch:
        if self.dataset is not None:
            xb, yb = self._collate(ids)
        else:
            if self.shuffle or self.num_shards > 1:
                xb = self.x[ids]
                yb = self.y[ids] if self.y is not None else None
            else:  # contiguous slices: views (copied when a transform might modify them)
                s = slice(int(ids[0]), int(ids[-1]) + 1)
                xb = self.x[s]
                yb = self.y[s] if self.y is not None else None
                if self.transform is not None:
                    xb = xb.copy() if xb.dtype != np.uint8 else xb  # uint8: scaled to a copy
                    yb = yb.copy() if yb is not None else None
            if self.transform is not None and _native_transform(self.transform):
                # uint8 stays uint8: the native transform scales it as _to_float does
                xb = self.transform.apply(xb, ids, augment_seed(self.seed), epoch)
                return xb, yb
            xb = _to_float(xb)
        if self.transform is not None:
            with _BatchKeys(augment_seed(self.seed), epoch, ids):  # a wrapped native transform
                out = self.transform(xb, yb)
            if not isinstance(out, tuple) or len(out) != 2:
                raise ValueError("DataLoader: transform must return a pair (xb, yb)")
            xb, yb = out
        return xb, yb

    def _collate(self, ids: np.ndarray) -> Batch:
        xs, ys = [], []
        for i in ids:
            item = self.dataset[int(i)]
            if isinstance(item, (tuple, list)) and len(item) == 2:
                xs.append(to_numpy(item[0]))
                ys.append(to_numpy(item[1]))
            else:
                xs.append(to_numpy(item))
        try:
            xb = np.stack(xs)
        except ValueError as e:
            raise ValueError(f"DataLoader: dataset samples differ in shape: {e}") from None
        if ys and len(ys) != len(xs):
            raise ValueError("DataLoader: some dataset items have labels and some do not")
        yb = np.stack(ys) if ys else None
        return as_input(xb, "DataLoader", "dataset batch"), yb

    def __repr__(self) -> str:
        src = type(self.dataset).__name__ if self.dataset is not None else f"x{self.x.shape}"
        return (f"DataLoader({src}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, drop_last={self.drop_last})")
