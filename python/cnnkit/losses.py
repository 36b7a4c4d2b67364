"""Losses with forward/backward, computed by the native kernels (float64 sums).

>>> loss = CrossEntropyLoss(); value = loss.forward(logits, labels); dlogits = loss.backward()
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._checks import to_numpy

__all__ = ["Loss", "CrossEntropyLoss", "MSELoss", "get"]


class Loss:
    name = "none"

    def __init__(self) -> None:
        self._grad: np.ndarray | None = None

    def backward(self) -> np.ndarray:
        """dL/d(input) of the last forward."""
        if self._grad is None:
            raise ValueError(f"{type(self).__name__}.backward: call forward first")
        return self._grad

    __call__ = None  # set by subclasses


def _labels(y: Any, where: str) -> np.ndarray:
    a = to_numpy(y)
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"{where}: labels must be integer class indices, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _values(v: Any, where: str, name: str) -> np.ndarray:
    """float32 C-contiguous; ValueError for non-numeric dtypes and NaN/Inf."""
    a = to_numpy(v)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise ValueError(f"{where}: {name} must be a numeric array, got dtype {a.dtype}")
    with np.errstate(over="ignore"):
        a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: {name} contain{'' if name.endswith('s') else 's'} NaN or Inf")
    return a


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy from logits (N, C) and integer labels (N,), mean over the batch."""

    name = "cross_entropy"

    def forward(self, logits: Any, labels: Any) -> float:
        z = _values(logits, "CrossEntropyLoss", "logits")
        loss, correct, grad = _core.softmax_cross_entropy(z, _labels(labels, "CrossEntropyLoss"))
        self._grad = grad
        self.correct = int(correct)
        return float(loss)

    __call__ = forward


class MSELoss(Loss):
    """Mean squared error over all elements."""

    name = "mse"

    def forward(self, pred: Any, target: Any) -> float:
        p = _values(pred, "MSELoss", "input")
        t = _values(target, "MSELoss", "target")
        loss, grad = _core.mse_loss(p, t)
        self._grad = grad
        return float(loss)

    __call__ = forward


_ALIASES = {
    "cross_entropy": CrossEntropyLoss,
    "crossentropy": CrossEntropyLoss,
    "categorical_crossentropy": CrossEntropyLoss,
    "sparse_categorical_crossentropy": CrossEntropyLoss,
    "mse": MSELoss,
    "mean_squared_error": MSELoss,
}


def get(loss: str | Loss) -> Loss:
    """A loss object from a name ("cross_entropy", "mse") or a Loss instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in _ALIASES:
        return _ALIASES[loss.lower()]()
    raise ValueError(f"unknown loss {loss!r} (expected 'cross_entropy' or 'mse' or a Loss)")
