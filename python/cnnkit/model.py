"""Sequential: a stack of layers run by the native Net (forward, backward, state_dict).

Parameter names follow PyTorch's ``nn.Sequential`` ("0.weight", "0.bias", "3.running_mean"),
so a PyTorch state_dict of the same architecture loads as is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _core
from .layers import Layer

__all__ = ["Sequential"]


def _as_numpy(v: Any) -> np.ndarray:
    """numpy view of an array-like, including PyTorch tensors (detached, moved to the CPU)."""
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _as_input(x: Any, where: str, name: str = "x") -> np.ndarray:
    """float32 C-contiguous; ValueError for non-numeric dtypes and for NaN/Inf (naming the
    first bad sample)."""
    try:
        a = _as_numpy(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{where}: {name} is not an array: {e}") from None
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.floating)
        or np.issubdtype(a.dtype, np.integer)
        or a.dtype == np.bool_
    ):
        raise ValueError(f"{where}: expected a numeric array, got dtype {a.dtype}")
    with np.errstate(over="ignore"):  # values too large for float32 become inf: caught below
        a = np.require(a, dtype=np.float32, requirements="C")
    if a.ndim >= 1 and a.size and not np.isfinite(a).all():
        finite = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
        raise ValueError(
            f"{where}: {name} contains NaN or Inf ({int((~finite).sum())} bad samples, first "
            f"at index {int(np.argmin(finite))})"
        )
    return a


class Sequential:
    """A model made of layers applied in order.

    >>> model = Sequential([Conv2d(1, 6, 5), ReLU(), MaxPool2d(2), Flatten(), Linear(864, 10)])
    >>> y = model.forward(x)            # x: (N, 1, 28, 28) float32 -> (N, 10)
    """

    def __init__(self, layers: Iterable[Layer] = (), *, _solo: bool = False) -> None:
        if isinstance(layers, Layer) or not hasattr(layers, "__iter__"):
            raise ValueError(
                f"Sequential: layers must be an iterable of cnnkit layers, got {layers!r:.80}"
            )
        self.layers: list[Layer] = []
        self._net = None
        self._solo = _solo
        self._device = "cpu"
        self._input_shape: tuple[int, ...] | None = None
        for layer in layers:
            self._append(layer)
        self._build()

    # -- structure ----------------------------------------------------------------------
    def _append(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise ValueError(
                f"Sequential: layer {len(self.layers)} is not a cnnkit layer: {layer!r}"
            )
        if layer._owner is not None and layer._owner is not self:
            raise ValueError(f"Sequential: {layer!r} already belongs to another model")
        if not self._solo:
            if layer._solo is not None:
                layer._solo = None
            layer._owner = self
        self.layers.append(layer)

    def _build(self) -> None:
        # Binding copies each layer's current values into the new flat buffers.
        self._net = _core.Net([layer._native for layer in self.layers])
        if self._device != "cpu":
            self._net.to(self._device)

    def add(self, layer: Layer) -> Sequential:
        """Append a layer (Keras style); returns the model."""
        if self._net is not None and self._net.has_optimizer():
            raise ValueError("Sequential.add: cannot change a model that is being trained")
        self._append(layer)
        self._build()
        return self

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"

    # -- device -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._net.device

    def to(self, device: str) -> Sequential:
        """Move parameters to "cpu" or "cuda" (explicit copy); returns the model."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"Sequential.to: unknown device {device!r} (expected 'cpu' or 'cuda')")
        if device == "cuda" and not _core.cuda_available():
            raise RuntimeError(
                "Sequential.to('cuda'): no CUDA device is available"
                + ("" if _core.built_with_cuda() else " (cnnkit was built without CUDA)")
            )
        self._net.to(device)
        self._device = device
        return self

    # -- compute ------------------------------------------------------------------------
    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        """Run the model. x: (N, C, H, W) (or (N, features)) -> output as float32 numpy.

        Non-float32 or non-contiguous input is converted. training=True uses batch
        statistics in BatchNorm and drops units in Dropout, and keeps what backward needs.
        """
        xa = _as_input(x, "Sequential.forward")
        if xa.ndim == 0 or xa.shape[0] == 0:
            raise ValueError(
                f"Sequential.forward: expected a non-empty batch, got shape {xa.shape}"
            )
        out = self._net.forward(xa, bool(training))
        self._input_shape = tuple(xa.shape[1:])
        return out

    __call__ = forward

    def backward(self, dy: Any) -> np.ndarray:
        """Back-propagate dL/d(output) of the last forward; ACCUMULATES parameter gradients
        (see grad_dict) and returns dL/dx."""
        return self._net.backward(_as_input(dy, "Sequential.backward", "dy"), True)

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Inference in batches (eval mode); returns the stacked outputs."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size <= 0:
            raise ValueError(
                f"Sequential.predict: batch_size must be a positive int, got {batch_size!r}"
            )
        xa = _as_input(x, "Sequential.predict")
        outs = [
            self._net.forward(xa[i : i + batch_size], False) for i in range(0, len(xa), batch_size)
        ]
        if not outs:
            raise ValueError("Sequential.predict: empty input")
        return np.concatenate(outs, axis=0)

    # -- parameters ---------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of all parameters and buffers, in PyTorch's naming and order."""
        d = self._net.state_dict()
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for i, layer in enumerate(self.layers):
            for name in list(layer._native.param_names()) + list(layer._native.buffer_names()):
                out[f"{i}.{name}"] = d[f"{i}.{name}"]
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Load parameters/buffers by name (numpy arrays or PyTorch tensors).

        PyTorch's BatchNorm 'num_batches_tracked' entries are accepted and ignored. With
        strict=True, missing or unexpected keys raise ValueError; nothing is changed then.
        """
        if not hasattr(state, "items"):
            raise ValueError(
                f"load_state_dict: expected a dict of name -> array, got {type(state).__name__}"
            )
        own = self.state_dict()
        incoming = {k: v for k, v in state.items()
                    if not (isinstance(k, str) and k.endswith("num_batches_tracked"))}
        missing = [k for k in own if k not in incoming]
        unexpected = [k for k in incoming if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(
                f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        arrays = {}
        for k, v in incoming.items():
            if k not in own:
                continue
            a = _as_numpy(v)
            if a.dtype == object or a.dtype.kind not in "biuf":
                raise ValueError(
                    f"load_state_dict: '{k}' must be a numeric array, got dtype {a.dtype}"
                )
            if tuple(a.shape) != tuple(own[k].shape):
                raise ValueError(
                    f"load_state_dict: '{k}' expects shape {tuple(own[k].shape)}, "
                    f"got {tuple(a.shape)}"
                )
            a = np.ascontiguousarray(a, dtype=np.float32)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"load_state_dict: '{k}' contains NaN or Inf")
            arrays[k] = a
        for k, a in arrays.items():  # all checked first: nothing is half-loaded
            self._net.set_tensor(k, a)

    def grad_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of the accumulated parameter gradients."""
        g = self._net.grad_dict()
        return OrderedDict((k, g[k]) for k in self._net.param_names())

    def zero_grad(self) -> None:
        self._net.zero_grad()

    def num_parameters(self) -> int:
        return int(self._net.num_params)

    def output_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Output shape of every layer for a per-sample input shape (C, H, W)."""
        shapes = self._net.shapes([1, *input_shape])
        return [tuple(s[1:]) for s in shapes[1:]]

    def summary(self, input_shape: tuple[int, ...] | None = None, print_fn=print) -> str:
        """Keras-style table of layers, output shapes and parameter counts."""
        input_shape = input_shape or self._input_shape
        shapes = self.output_shapes(input_shape) if input_shape else [None] * len(self.layers)
        sd = self._net.state_dict()
        rows = []
        for i, (layer, shp) in enumerate(zip(self.layers, shapes, strict=True)):
            n = sum(int(sd[f"{i}.{p}"].size) for p in layer._native.param_names())
            out = "(None, " + ", ".join(map(str, shp)) + ")" if shp is not None else "?"
            rows.append((f"{i}: {layer.type}", out, n))
        w0, w1 = (
            max([24] + [len(r[0]) + 2 for r in rows]),
            max([22] + [len(r[1]) + 2 for r in rows]),
        )
        line = "=" * (w0 + w1 + 12)
        lines = [
            "Model: Sequential",
            line,
            f"{'Layer (type)':<{w0}}{'Output Shape':<{w1}}{'Param #':>12}",
            line,
        ]
        for name, out, n in rows:
            lines.append(f"{name:<{w0}}{out:<{w1}}{n:>12,}")
        total = self.num_parameters()
        lines += [line, f"Total params: {total:,}", f"Trainable params: {total:,}", line]
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    # -- saving -------------------------------------------------------------------------
    def get_config(self) -> list[dict]:
        return [{"type": layer.type, "config": layer.get_config()} for layer in self.layers]
