"""Tools for writing layers: :func:`gradcheck`, the first thing to run on a new layer.

>>> ck.utils.gradcheck(Swish(), np.random.randn(2, 4))      # True, or GradcheckError
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _py_layer
from ._checks import to_numpy

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """backward disagrees with central differences of forward."""


def gradcheck(layer: Any, x: Any, eps: float = 1e-3, atol: float | None = None,
              rtol: float | None = None, seed: int = 0, max_elements: int = 512) -> bool:
    """Check a layer's backward against central differences of its forward.

    The loss is L = sum(forward(x) * r) for fixed random weights r (so dL/dy = r); each
    element of the input and of every parameter is moved by +-eps and
    (L(+eps) - L(-eps)) / (2 eps) compared with the gradient backward gives, by
    ``|analytic - numeric| <= atol + rtol * |numeric|``. Returns True, or raises
    GradcheckError naming the worst element.

    A layer written in Python runs in float64: its forward and backward are called directly
    with a float64 ``x`` and float64 copies of its parameters (``self.<name>``), so the
    check is exact to the finite-difference error (defaults atol=1e-5, rtol=1e-3). A native
    layer runs as a one-layer model in float32, in training mode with its random masks held
    fixed (defaults atol=1e-2, rtol=1e-2); its parameters and buffers are restored after.
    Use small inputs, away from kinks (ReLU at 0, max-pool ties): at most `max_elements`
    elements of each tensor are checked (evenly spread).
    """
    from .layers import Layer, is_python_layer

    if not isinstance(layer, Layer):
        raise ValueError(f"gradcheck: expected a cnnkit layer, got {type(layer).__name__}")
    xa = to_numpy(x)
    if xa.dtype == object or xa.dtype.kind not in "biuf" or xa.ndim < 1 or xa.size == 0:
        raise ValueError(f"gradcheck: x must be a non-empty numeric array with a batch axis, "
                         f"got {xa.dtype} {xa.shape}")
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"gradcheck: eps must be in (0, 1), got {eps!r}")
    python = is_python_layer(type(layer))
    atol = (1e-5 if python else 1e-2) if atol is None else float(atol)
    rtol = (1e-3 if python else 1e-2) if rtol is None else float(rtol)
    rng = np.random.default_rng(seed)
    if python:
        fwd, analytic, tensors, restore = _python_case(layer, xa.astype(np.float64), rng)
    else:
        fwd, analytic, tensors, restore = _native_case(layer, xa.astype(np.float32), rng)
    try:
        for what, arr in tensors.items():
            _compare(layer.type, what, fwd, arr, analytic[what], eps, atol, rtol, max_elements)
    finally:
        restore()
    return True


def _python_case(layer: Any, x: np.ndarray, rng: np.random.Generator) -> tuple:
    d = layer.__dict__
    params = {n: np.array(_py_layer.get_parameter(layer, n), dtype=np.float64)
              for n in d.get("_py_params", {})}
    saved = d.get("_py_override")
    d["_py_override"] = params  # self.<name> reads these float64 arrays meanwhile
    label = f"{layer.type} (gradcheck)"

    def forward() -> np.ndarray:
        y = layer.forward(x, True)
        if not isinstance(y, np.ndarray):
            raise ValueError(f"{label}: forward returned {type(y).__name__}, expected an array")
        return y

    try:
        y = forward()
        r = rng.standard_normal(y.shape)
        res = layer.backward(r.copy())
        shapes = {n: p.shape for n, p in params.items()}
        dx, grads = _py_layer.split_backward(layer, label, res, x.shape, shapes)
    except BaseException:
        d["_py_override"] = saved
        raise

    def loss() -> float:
        return float((np.asarray(forward(), dtype=np.float64) * r).sum())

    def restore() -> None:
        d["_py_override"] = saved

    analytic = {"x": np.asarray(dx, np.float64),
                **{n: np.asarray(g, np.float64) for n, g in grads.items()}}
    return loss, analytic, {"x": x, **params}, restore


def _native_case(layer: Any, x: np.ndarray, rng: np.random.Generator) -> tuple:
    if layer._native.arity != 1:
        raise ValueError(f"gradcheck: {layer.type} takes several inputs; check a layer with one")
    model = layer._model()
    net = model._net
    state = model.state_dict()
    rng_state = net.rng_state()
    keys = list(net.param_names())
    xs = x.astype(np.float64)  # moved in float64; the model reads it as float32
    params = {k.split(".", 1)[1]: state[k].astype(np.float64) for k in keys}

    def forward() -> np.ndarray:
        for k in keys:
            net.set_tensor(k, params[k.split(".", 1)[1]].astype(np.float32))
        net.set_rng(*rng_state)  # the same dropout mask on every call
        return model.forward(xs.astype(np.float32), training=True)

    def restore() -> None:
        model.load_state_dict(state)
        net.set_rng(*rng_state)
        model.zero_grad()

    try:
        y = forward()
        r = rng.standard_normal(y.shape)
        model.zero_grad()
        dx = model.backward(r.astype(np.float32))
        grads = model.grad_dict()
    except BaseException:
        restore()
        raise

    def loss() -> float:
        return float((forward().astype(np.float64) * r).sum())

    analytic = {"x": dx.astype(np.float64),
                **{k.split(".", 1)[1]: g.astype(np.float64) for k, g in grads.items()}}
    return loss, analytic, {"x": xs, **params}, restore


def _compare(type_name: str, what: str, loss: Any, arr: np.ndarray, analytic: np.ndarray,
             eps: float, atol: float, rtol: float, max_elements: int) -> None:
    n = arr.size
    idx = np.arange(n) if n <= max_elements else np.linspace(0, n - 1, max_elements).astype(int)
    flat = arr.reshape(-1)  # a view: moving an element moves the tensor the loss reads
    numeric = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        lp = loss()
        flat[i] = old - eps
        lm = loss()
        flat[i] = old
        numeric[j] = (lp - lm) / (2 * eps)
    ana = analytic.reshape(-1)[idx]
    err = np.abs(ana - numeric)
    bound = atol + rtol * np.abs(numeric)
    bad = err > bound
    if not np.all(np.isfinite(ana)) or bad.any():
        worst = int(np.argmax(np.where(np.isfinite(err), err - bound, np.inf)))
        at = np.unravel_index(int(idx[worst]), arr.shape)
        name = "the input" if what == "x" else f"parameter {what!r}"
        raise GradcheckError(
            f"gradcheck {type_name}: d/d{what} of {name} disagrees at index "
            f"{tuple(int(a) for a in at)}: backward gives {ana[worst]:.6g}, central "
            f"differences {numeric[worst]:.6g} (|difference| {err[worst]:.3g} > atol {atol:g} "
            f"+ rtol {rtol:g} * |numeric|); {int(bad.sum())} of {len(idx)} checked elements "
            "disagree")
