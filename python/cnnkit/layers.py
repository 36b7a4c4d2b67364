"""CNN layers with PyTorch's names, arguments and defaults.

Each layer wraps a native layer object. Layers are normally used inside
:class:`cnnkit.Sequential`; a layer may also be called on its own (``layer.forward(x)``),
which runs it as a one-layer model. Shapes are NCHW, float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._seeding import next_seed

__all__ = [
    "Layer",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Linear",
    "Flatten",
    "Dropout",
    "BatchNorm2d",
]


def _pair(v: Any, name: str, layer: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    if (
        isinstance(v, (tuple, list))
        and len(v) == 2
        and all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v)
    ):
        return int(v[0]), int(v[1])
    raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {v!r}")


def _int(v: Any, name: str, layer: str) -> int:
    """An int argument (not a bool, float or string: int(2.7) or int("3") would pass)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{layer}: {name} must be an int, got {v!r}")
    if abs(int(v)) > 2**62:
        raise ValueError(f"{layer}: {name} is out of range, got {v!r}")
    return int(v)


def _float(v: Any, name: str, layer: str) -> float:
    """A finite float argument (the native layer checks the range)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not np.isfinite(float(v)):
        raise ValueError(f"{layer}: {name} must be a number, got {v!r}")
    return float(v)


class Layer:
    """Base class: holds the native layer and its constructor arguments (for saving)."""

    def __init__(self, native: Any, **config: Any) -> None:
        self._native = native
        self._config = config
        self._owner = None  # the Sequential this layer belongs to, if any
        self._solo = None  # a private one-layer model for standalone use
        if native.param_names():
            native.reset_parameters(next_seed())

    # -- introspection ------------------------------------------------------------------
    @property
    def type(self) -> str:
        return type(self).__name__

    def get_config(self) -> dict:
        """Constructor arguments, enough to rebuild this layer (used by save/load)."""
        return dict(self._config)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self._native.output_shape(list(input_shape)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{self.type}({args})"

    # -- standalone use -----------------------------------------------------------------
    def _model(self):
        if self._owner is not None:
            raise ValueError(
                f"{self.type}: this layer belongs to a Sequential; call the model instead"
            )
        if self._solo is None:
            from .model import Sequential

            self._solo = Sequential([self], _solo=True)
        return self._solo

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        return self._model().forward(x, training=training)

    __call__ = forward

    def backward(self, dy: Any) -> np.ndarray:
        return self._model().backward(dy)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self._model().state_dict()

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        self._model().load_state_dict(state, strict=strict)

    def grad_dict(self) -> dict[str, np.ndarray]:
        return self._model().grad_dict()

    def zero_grad(self) -> None:
        self._model().zero_grad()


class Conv2d(Layer):
    """2-D convolution. x (N, in_channels, H, W) -> y (N, out_channels, P, Q).

    weight is (out_channels, in_channels // groups, kh, kw), bias (out_channels,);
    P = (H + 2*pad - dilation*(kh-1) - 1) // stride + 1 (same for Q).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        in_channels = _int(in_channels, "in_channels", "Conv2d")
        out_channels = _int(out_channels, "out_channels", "Conv2d")
        groups = _int(groups, "groups", "Conv2d")
        k = _pair(kernel_size, "kernel_size", "Conv2d")
        s = _pair(stride, "stride", "Conv2d")
        p = _pair(padding, "padding", "Conv2d")
        d = _pair(dilation, "dilation", "Conv2d")
        native = _core.conv2d(in_channels, out_channels, *k, *s, *p, *d, groups, bool(bias))
        super().__init__(
            native,
            in_channels=int(in_channels),
            out_channels=int(out_channels),
            kernel_size=k,
            stride=s,
            padding=p,
            dilation=d,
            groups=int(groups),
            bias=bool(bias),
        )


class MaxPool2d(Layer):
    """Max pooling over (kh, kw) windows; stride defaults to kernel_size (PyTorch)."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
    ) -> None:
        k = _pair(kernel_size, "kernel_size", "MaxPool2d")
        s = k if stride is None else _pair(stride, "stride", "MaxPool2d")
        p = _pair(padding, "padding", "MaxPool2d")
        super().__init__(
            _core.maxpool2d(*k, *s, *p, bool(ceil_mode)),
            kernel_size=k,
            stride=s,
            padding=p,
            ceil_mode=bool(ceil_mode),
        )


class AvgPool2d(Layer):
    """Average pooling; stride defaults to kernel_size, count_include_pad=True (PyTorch)."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        k = _pair(kernel_size, "kernel_size", "AvgPool2d")
        s = k if stride is None else _pair(stride, "stride", "AvgPool2d")
        p = _pair(padding, "padding", "AvgPool2d")
        super().__init__(
            _core.avgpool2d(*k, *s, *p, bool(ceil_mode), bool(count_include_pad)),
            kernel_size=k,
            stride=s,
            padding=p,
            ceil_mode=bool(ceil_mode),
            count_include_pad=bool(count_include_pad),
        )


class ReLU(Layer):
    """max(x, 0), element-wise; any shape."""

    def __init__(self) -> None:
        super().__init__(_core.activation("ReLU"))


class LeakyReLU(Layer):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        negative_slope = _float(negative_slope, "negative_slope", "LeakyReLU")
        super().__init__(
            _core.activation("LeakyReLU", negative_slope),
            negative_slope=negative_slope,
        )


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), element-wise."""

    def __init__(self) -> None:
        super().__init__(_core.activation("Sigmoid"))


class Tanh(Layer):
    """tanh(x), element-wise."""

    def __init__(self) -> None:
        super().__init__(_core.activation("Tanh"))


class Linear(Layer):
    """Fully connected: x (N, in_features) -> x @ weight.T + bias, weight (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        in_features = _int(in_features, "in_features", "Linear")
        out_features = _int(out_features, "out_features", "Linear")
        super().__init__(
            _core.linear(in_features, out_features, bool(bias)),
            in_features=in_features,
            out_features=out_features,
            bias=bool(bias),
        )


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def __init__(self) -> None:
        super().__init__(_core.flatten())


class Dropout(Layer):
    """Zeroes each element with probability p while training and scales the rest by 1/(1-p).

    The mask comes from a counter-based RNG: the same seed gives the same mask.
    """

    def __init__(self, p: float = 0.5) -> None:
        p = _float(p, "p", "Dropout")
        super().__init__(_core.dropout(p), p=p)


class BatchNorm2d(Layer):
    """Per-channel batch normalisation of (N, C, H, W) with running statistics (PyTorch)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        num_features = _int(num_features, "num_features", "BatchNorm2d")
        eps = _float(eps, "eps", "BatchNorm2d")
        momentum = _float(momentum, "momentum", "BatchNorm2d")
        super().__init__(
            _core.batchnorm2d(
                num_features,
                eps,
                momentum,
                bool(affine),
                bool(track_running_stats),
            ),
            num_features=num_features,
            eps=eps,
            momentum=momentum,
            affine=bool(affine),
            track_running_stats=bool(track_running_stats),
        )


LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (
        Conv2d,
        MaxPool2d,
        AvgPool2d,
        ReLU,
        LeakyReLU,
        Sigmoid,
        Tanh,
        Linear,
        Flatten,
        Dropout,
        BatchNorm2d,
    )
}


def from_config(type_name: str, config: dict) -> Layer:
    """Rebuild a layer from its type name and get_config() (used by cnnkit.load)."""
    if type_name not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {type_name!r}")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return LAYER_TYPES[type_name](**cfg)
