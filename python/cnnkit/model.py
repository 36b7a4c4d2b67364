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
from ._checks import parse_device, positive_int, to_numpy
from .data import as_input
from .layers import Layer

__all__ = ["Sequential"]


def _as_values(v: Any, where: str, name: str) -> np.ndarray:
    """float32 C-contiguous values (a gradient, not an image: no scaling); ValueError for
    non-numeric dtypes and for NaN/Inf (naming the first bad sample)."""
    try:
        a = to_numpy(v)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{where}: {name} is not an array: {e}") from None
    if a.dtype == object or a.dtype.kind not in "biuf":
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


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (N, C), stable (max subtracted), computed in float64."""
    z = z.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite logits give NaN rows
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


def _predictions(out: np.ndarray, loss: str | None) -> np.ndarray:
    """What ``predict`` returns for model outputs `out`: class probabilities (a softmax of the
    logits) for a classifier — an (N, C) output, C >= 2, of a model not trained with mse —
    and the outputs as they are otherwise."""
    if loss != "mse" and out.ndim == 2 and out.shape[1] >= 2:
        return _softmax(out)
    return out


def _keeps_shape(layer: Layer) -> bool:
    """True for element-wise layers (the output has the input's shape, whatever its rank)."""
    try:
        return all(tuple(layer.output_shape(s)) == tuple(s) for s in ((2, 3), (2, 3, 4, 5)))
    except Exception:  # the layer refuses one of the ranks
        return False


def _input_spec(layers: list[Layer]) -> tuple[int, int | None] | None:
    """(4, channels) when the first layer that is not element-wise takes 4-D NCHW input
    (channels None when any count will do, as for pooling); None otherwise."""
    for layer in layers:
        if _keeps_shape(layer):
            continue
        if not layer.type.endswith("2d"):
            return None
        cfg = layer.get_config()
        ch = cfg.get("in_channels", cfg.get("num_features"))
        ok = isinstance(ch, (int, np.integer)) and not isinstance(ch, bool)
        return 4, (int(ch) if ok else None)
    return None


class Sequential:
    """A model made of layers applied in order.

    >>> model = Sequential([Conv2d(1, 6, 5), ReLU(), MaxPool2d(2), Flatten(), Linear(864, 10)])
    >>> logits = model.forward(x)       # x: (N, 1, 28, 28) or (N, 28, 28); uint8 -> [0, 1]
    >>> proba = model.predict(x)        # (N, 10) class probabilities (softmax of the logits)

    Each layer object sits at one position: the same object twice is refused (create a new
    layer; weights are not shared between positions).
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
        self._spec: tuple[int, int | None] | None = None
        self._loss: str | None = None  # set by a Trainer: decides what predict returns
        self._fitting: Any = None  # the Trainer whose fit is running on this model
        self._append(list(layers), "Sequential")
        self._build()

    # -- structure ----------------------------------------------------------------------
    def _append(self, new: list[Layer], where: str) -> None:
        """Check every new layer first (nothing is taken over on error), then own them."""
        at = {id(layer): i for i, layer in enumerate(self.layers)}
        for k, layer in enumerate(new):
            i = len(self.layers) + k
            if not isinstance(layer, Layer):
                raise ValueError(f"{where}: layer {i} is not a cnnkit layer: {layer!r}")
            if id(layer) in at:
                raise ValueError(
                    f"{where}: layer {i} is the same {layer.type} object as layer "
                    f"{at[id(layer)]}; a layer object can sit at one position only (weights are "
                    f"not shared between positions). Create a new layer for position {i}, "
                    f"e.g. {layer!r}"
                )
            if layer._owner is not None and layer._owner is not self:
                raise ValueError(f"{where}: {layer!r} already belongs to another model")
            at[id(layer)] = i
        for layer in new:
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
        self._spec = _input_spec(self.layers)

    def _input_spec(self) -> tuple[int, int | None] | None:
        """(4, channels) when the model takes NCHW images (channels None: any), else None;
        decides the (N, H, W) and NHWC handling of :func:`cnnkit.data.as_input`."""
        return self._spec

    def add(self, layer: Layer) -> Sequential:
        """Append a layer (Keras style); returns the model."""
        if self._net is not None and self._net.has_optimizer():
            raise ValueError("Sequential.add: cannot change a model that is being trained")
        self._append([layer], "Sequential.add")
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
        """Move parameters to "cpu", "cuda" (or "cuda:0"), or "auto" (CUDA when available);
        an explicit copy. Returns the model."""
        device = parse_device(device, "Sequential.to")
        self._net.to(device)
        self._device = device
        return self

    # -- compute ------------------------------------------------------------------------
    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        """Run the model: x (N, C, H, W) (or (N, features)) -> the raw outputs (logits for a
        classifier) as float32 numpy.

        The input is converted as everywhere in cnnkit (:func:`cnnkit.data.as_input`): uint8
        images are scaled to [0, 1], (N, H, W) is taken as (N, 1, H, W) when the model wants
        one channel, other dtypes become float32 unchanged, torch tensors are accepted.
        training=True uses batch statistics in BatchNorm and drops units in Dropout, and
        keeps what backward needs.
        """
        xa = as_input(x, "Sequential.forward", model=self)
        out = self._net.forward(xa, bool(training))
        self._input_shape = tuple(xa.shape[1:])
        return out

    __call__ = forward

    def backward(self, dy: Any) -> np.ndarray:
        """Back-propagate dL/d(output) of the last forward; ACCUMULATES parameter gradients
        (see grad_dict) and returns dL/dx."""
        return self._net.backward(_as_values(dy, "Sequential.backward", "dy"), True)

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Inference in batches, in eval mode, as Keras' ``predict``: class probabilities
        (N, C) for a classifier, the raw outputs otherwise.

        The probabilities are a stable softmax of the logits that :meth:`forward` returns.
        A model counts as a classifier when its output is (N, C) with C >= 2, unless a
        :class:`cnnkit.Trainer` was made for it with ``loss="mse"`` (then predict returns
        the outputs as they are). The input is converted as for :meth:`forward`.
        """
        batch_size = positive_int(batch_size, "batch_size", "Sequential.predict")
        xa = as_input(x, "Sequential.predict", model=self)
        outs = [
            self._net.forward(xa[i : i + batch_size], False) for i in range(0, len(xa), batch_size)
        ]
        return _predictions(np.concatenate(outs, axis=0), self._loss)

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
            a = to_numpy(v)
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
