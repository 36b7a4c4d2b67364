"""CNN layers with PyTorch's names, arguments and defaults.

Each layer wraps a native layer object. Layers are normally used inside
:class:`cnnkit.Sequential`; a layer may also be called on its own (``layer.forward(x)``),
which runs it as a one-layer model. Shapes are NCHW, float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core, _py_layer
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
    "ELU",
    "SiLU",
    "GELU",
    "ReLU6",
    "Hardswish",
    "Identity",
    "Softmax",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "Dropout2d",
    "BatchNorm1d",
    "Upsample",
    "Add",
    "Concat",
    "ConvTranspose2d",
    "SyncBatchNorm",
]


class Layer:
    """Base class of every layer: a thin facade over a native layer built from the layer
    schema (``_core.make_layer(type, args)``), which checks the arguments (kinds, ranges, sizes)
    for the constructors and the file loader alike.

    ``name``: an optional name for the layer (graph models use it for parameter keys).

    A subclass that defines ``forward(self, x, training)`` and ``backward(self, dy)`` is a
    layer written in Python (docs/training.md, "Writing a layer in Python"): x and dy are
    read-only float32 numpy arrays (the batch first), forward returns y and backward returns
    dx -- or ``(dx, {name: gradient})`` when the layer declared parameters with
    :meth:`add_parameter` in ``__init__``. ``output_shape(self, input_shape)`` (the batch
    first) defaults to the input's shape. The keyword arguments of ``__init__`` are its
    config; :func:`cnnkit.register_layer` lets files record it by name. Check it with
    :func:`cnnkit.utils.gradcheck` first.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if is_python_layer(cls) and "__init__" in cls.__dict__:
            cls.__init__ = _py_layer.recording_init(cls.__dict__["__init__"])

    def __init__(self, *, name: str | None = None, **args: Any) -> None:
        if name is not None and (not isinstance(name, str) or not all(name.split("."))):
            raise ValueError(f"{self.type}: name must be a non-empty string (dotted paths like "
                             f"'layer1.0.conv1' are fine), got {name!r}")
        if is_python_layer(type(self)):
            if args:
                raise TypeError(f"{self.type}: a layer written in Python passes no arguments "
                                f"to Layer.__init__ but name= (got {sorted(args)}); its config "
                                "is the keyword arguments of its own __init__")
            if "_py_params" not in self.__dict__:  # __init__ may run twice: keep the first
                self.__dict__.setdefault("_py_config", {})
                self.__dict__["_py_params"] = {}
                self._owner = None
                self._solo = None
            self.name = name
            return  # the native node is made on first use, once the parameters are known
        self._native = _core.make_layer(self.type, args)
        self._config = dict(self._native.args())  # complete, normalised (pairs as tuples)
        self.name = name
        self._owner = None  # the Sequential this layer belongs to, if any
        self._solo = None  # a private one-layer model for standalone use
        if self._native.param_names():
            self._native.reset_parameters(next_seed())

    # -- layers written in Python ---------------------------------------------------------
    def add_parameter(self, name: str, value: Any) -> None:
        """Declare a trainable parameter of a layer written in Python (in ``__init__``), with
        its initial values (any numeric array; stored as float32). It lives in the model's
        parameter buffer like a native layer's: optimizers, state_dict ("<layer>.<name>"),
        save/load and gradient all-reduce see it. Read it as ``self.<name>``, a numpy view
        (assigning to it copies values in); backward returns its gradient by name."""
        if not is_python_layer(type(self)):
            raise TypeError(f"{self.type}: add_parameter is for layers written in Python")
        if "_py_params" not in self.__dict__:
            raise TypeError(f"{self.type}: call super().__init__() before add_parameter")
        _py_layer.add_parameter(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes not found the usual way: a Python layer's native node
        # (made on first use) and its parameters
        d = self.__dict__
        params = d.get("_py_params")
        if params is not None:
            if name == "_native":
                return _py_layer.build_native(self)
            if name in params:
                return _py_layer.get_parameter(self, name)
        elif name in ("_native", "_owner", "_solo", "name", "_py_params") \
                and is_python_layer(type(self)):
            raise AttributeError(f"{type(self).__name__}: Layer.__init__ was not called (call "
                                 "super().__init__() in __init__)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_py_params")
        if params is not None and name in params:
            _py_layer.set_parameter(self, name, value)
        else:
            object.__setattr__(self, name, value)

    # the native node's calls into a layer written in Python (cnnkit/_py_layer.py)
    def _ck_forward(self, label: str, x: np.ndarray, training: bool, y: np.ndarray) -> None:
        _py_layer.call_forward(self, label, x, training, y)

    def _ck_backward(self, label: str, x_shape: list[int], dy: np.ndarray,
                     dx: np.ndarray | None, grads: list[np.ndarray]) -> None:
        _py_layer.call_backward(self, label, x_shape, dy, dx, grads)

    def _ck_output_shape(self, label: str, in_shape: list[int]) -> list[int]:
        return _py_layer.call_output_shape(self, label, in_shape)

    # -- introspection ------------------------------------------------------------------
    @property
    def type(self) -> str:
        """The layer's type name, as files record it (a Python layer's registered name)."""
        cls = type(self)
        return _py_layer.type_name(cls) if is_python_layer(cls) else cls.__name__

    def get_config(self) -> dict:
        """Constructor arguments, enough to rebuild this layer (used by save/load); for a
        layer written in Python, the keyword arguments its ``__init__`` was called with."""
        if is_python_layer(type(self)):
            return dict(self.__dict__.get("_py_config", {}))
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict) -> Layer:
        """The layer rebuilt from get_config(): ``cls(**config)`` (as Keras)."""
        return cls(**config)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self._native.output_shape(list(input_shape)))

    def __repr__(self) -> str:
        args = [f"{k}={v!r}" for k, v in self.get_config().items()]
        if self.name is not None:
            args.append(f"name={self.name!r}")
        return f"{self.type}({', '.join(args)})"

    # -- standalone use -----------------------------------------------------------------
    def _model(self):
        if self.__dict__.get("_py_busy"):
            raise RuntimeError(f"{self.type}: its own model was called from inside its forward/"
                               "backward (which runs while that model is locked)")
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

    def __call__(self, x: Any, training: bool = False) -> Any:
        """forward(x, training) on arrays; on a ck.Input / GraphTensor (or a list of them, for
        Add and Concat), a node of a graph model."""
        from .graph import is_symbolic, own_path, trace

        if is_symbolic(x):
            return trace(self, x, own_path(self))
        return self.forward(x, training=training)

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


def is_python_layer(cls: type) -> bool:
    """True for a Layer subclass computing in Python (it defines forward and backward)."""
    return cls.forward is not Layer.forward or cls.backward is not Layer.backward


class Conv2d(Layer):
    """2-D convolution. x (N, in_channels, H, W) -> y (N, out_channels, P, Q).

    weight is (out_channels, in_channels // groups, kh, kw), bias (out_channels,);
    P = (H + 2*pad - dilation*(kh-1) - 1) // stride + 1 (same for Q). padding="valid" is 0;
    padding="same" keeps H and W (stride 1, odd dilated kernels).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *,
                 name: str | None = None) -> None:
        super().__init__(in_channels=in_channels, out_channels=out_channels,
                         kernel_size=kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, name=name)


class ConvTranspose2d(Layer):
    """2-D transposed convolution (PyTorch's ConvTranspose2d): x (N, in_channels, H, W) ->
    y (N, out_channels, P, Q), the gradient of a Conv2d with respect to its input.

    weight is (in_channels, out_channels // groups, kh, kw), bias (out_channels,);
    P = (H - 1)*stride - 2*padding + dilation*(kh - 1) + output_padding + 1 (same for Q).
    output_padding must be smaller than either stride or dilation along each axis.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 output_padding: int | tuple[int, int] = 0, groups: int = 1, bias: bool = True,
                 dilation: int | tuple[int, int] = 1, *, name: str | None = None) -> None:
        super().__init__(in_channels=in_channels, out_channels=out_channels,
                         kernel_size=kernel_size, stride=stride, padding=padding,
                         output_padding=output_padding, groups=groups, bias=bias,
                         dilation=dilation, name=name)


class MaxPool2d(Layer):
    """Max pooling over (kh, kw) windows; stride defaults to kernel_size (PyTorch)."""

    def __init__(self, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = None, padding: int | tuple[int, int] = 0,
                 ceil_mode: bool = False, *, name: str | None = None) -> None:
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding,
                         ceil_mode=ceil_mode, name=name)


class AvgPool2d(Layer):
    """Average pooling; stride defaults to kernel_size, count_include_pad=True (PyTorch)."""

    def __init__(self, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = None, padding: int | tuple[int, int] = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, *,
                 name: str | None = None) -> None:
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding,
                         ceil_mode=ceil_mode, count_include_pad=count_include_pad, name=name)


class ReLU(Layer):
    """max(x, 0), element-wise; any shape."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class LeakyReLU(Layer):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01, *, name: str | None = None) -> None:
        super().__init__(negative_slope=negative_slope, name=name)


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), element-wise."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class Tanh(Layer):
    """tanh(x), element-wise."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class Linear(Layer):
    """Fully connected: x (N, in_features) -> x @ weight.T + bias, weight (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 name: str | None = None) -> None:
        super().__init__(in_features=in_features, out_features=out_features, bias=bias,
                         name=name)


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class Dropout(Layer):
    """Zeroes each element with probability p while training and scales the rest by 1/(1-p).

    The mask comes from a counter-based RNG: the same seed gives the same mask.
    """

    def __init__(self, p: float = 0.5, *, name: str | None = None) -> None:
        super().__init__(p=p, name=name)


class BatchNorm2d(Layer):
    """Per-channel batch normalisation of (N, C, H, W) with running statistics (PyTorch)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 name: str | None = None) -> None:
        super().__init__(num_features=num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, name=name)


class ELU(Layer):
    """x if x > 0 else alpha * (exp(x) - 1), element-wise; any shape."""

    def __init__(self, alpha: float = 1.0, *, name: str | None = None) -> None:
        super().__init__(alpha=alpha, name=name)


class SiLU(Layer):
    """x * sigmoid(x) (swish), element-wise; any shape."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class GELU(Layer):
    """x * Phi(x), element-wise; any shape. approximate="tanh" uses PyTorch's tanh form
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def __init__(self, approximate: str = "none", *, name: str | None = None) -> None:
        super().__init__(approximate=approximate, name=name)


class ReLU6(Layer):
    """min(max(x, 0), 6), element-wise; any shape."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class Hardswish(Layer):
    """x * relu6(x + 3) / 6, element-wise; any shape."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class Identity(Layer):
    """y = x, any shape (a view: no copy, no memory)."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class Softmax(Layer):
    """exp(x) / sum(exp(x)) along ``dim`` (max-subtracted, stable); x (N, C) or (N, C, H, W),
    y the same shape."""

    def __init__(self, dim: int = 1, *, name: str | None = None) -> None:
        super().__init__(dim=dim, name=name)


def _adaptive_size(output_size: Any) -> Any:
    """PyTorch's None entries ("keep the input's size") are stored as 0."""
    if isinstance(output_size, (tuple, list)):
        return tuple(0 if v is None else v for v in output_size)
    return output_size


class AdaptiveAvgPool2d(Layer):
    """Average over PyTorch's adaptive bins: x (N, C, H, W) -> y (N, C, P, Q) with
    (P, Q) = output_size (an int or a pair; None or 0 in a pair keeps that input size).
    Bin i covers rows [floor(i*H/P), ceil((i+1)*H/P)), columns alike."""

    def __init__(self, output_size: int | tuple[int | None, int | None], *,
                 name: str | None = None) -> None:
        super().__init__(output_size=_adaptive_size(output_size), name=name)


class AdaptiveMaxPool2d(Layer):
    """Maximum over PyTorch's adaptive bins: x (N, C, H, W) -> y (N, C, P, Q) with
    (P, Q) = output_size (an int or a pair; None or 0 in a pair keeps that input size)."""

    def __init__(self, output_size: int | tuple[int | None, int | None], *,
                 name: str | None = None) -> None:
        super().__init__(output_size=_adaptive_size(output_size), name=name)


class Dropout2d(Layer):
    """Zeroes whole channels of x (N, C, H, W) with probability p while training and scales
    the rest by 1/(1-p); one counter-based draw per (n, c), so the same seed gives the same mask."""

    def __init__(self, p: float = 0.5, *, name: str | None = None) -> None:
        super().__init__(p=p, name=name)


class BatchNorm1d(Layer):
    """Per-feature batch normalisation of (N, C) or (N, C, L) with running statistics
    (PyTorch)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 name: str | None = None) -> None:
        super().__init__(num_features=num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, name=name)


class SyncBatchNorm(Layer):
    """BatchNorm over the whole batch of a data-parallel job (PyTorch's ``SyncBatchNorm``):
    while training under ``cnnkit.distributed`` with more than one process, the mean and
    variance of each channel are those of every process's batch together (each forward sums
    the per-channel statistics over the processes, each backward the two gradient sums), so
    W processes at batch B normalise as one process at batch W x B. Otherwise (one process,
    or eval mode) it is BatchNorm. x is (N, C, ...) with 2 to 5 dimensions. Every process must
    run the same training steps: a forward on one process alone waits for the others (up to
    the distributed timeout). ``SyncBatchNorm.convert_sync_batchnorm(model)`` swaps the
    BatchNorm layers of a model for these."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 name: str | None = None) -> None:
        super().__init__(num_features=num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, name=name)

    @classmethod
    def convert_sync_batchnorm(cls, model: Any) -> Any:
        """A copy of `model` (a Sequential or Model) with every BatchNorm1d and BatchNorm2d
        replaced by a SyncBatchNorm of the same arguments and name, the weights and running
        statistics copied, on the model's device; the other layers are rebuilt from their
        configs. (PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``.)"""
        from .model import Model, Sequential

        if not isinstance(model, Sequential):
            raise ValueError(f"SyncBatchNorm.convert_sync_batchnorm: expected a Sequential or "
                             f"Model, got {type(model).__name__}")
        config = model.get_config()
        entries = config["nodes"] if isinstance(config, dict) else config
        swap = ("BatchNorm1d", "BatchNorm2d")
        layers = [from_config("SyncBatchNorm" if e["type"] in swap else e["type"],
                              e["config"], name=e.get("name")) for e in entries]
        if isinstance(config, dict):
            out: Any = Model.from_nodes(layers, [e["inputs"] for e in entries],
                                        [e["name"] for e in entries])
        else:
            out = Sequential(layers)
        out.load_state_dict(model.state_dict())
        return out.to(model.device) if model.device != "cpu" else out


class Upsample(Layer):
    """Upsampling: x (N, C, H, W) -> y (N, C, P, Q) with (P, Q) = size, or
    (floor(H * scale_factor), floor(W * scale_factor)); give exactly one.

    mode="nearest": output row p reads input row min(floor(p * s), H - 1), s = 1/scale_factor
    (or H/P), as PyTorch's "nearest". mode="bilinear": PyTorch's bilinear interpolation between
    the two nearest rows and columns, source = (p + 0.5) * s - 0.5 (clamped at 0), or with
    align_corners=True source = p * (H - 1) / (P - 1) (corners on corners). align_corners may
    only be set with mode="bilinear"; None there means False, as in PyTorch."""

    def __init__(self, size: int | tuple[int, int] | None = None,
                 scale_factor: float | None = None, mode: str = "nearest",
                 align_corners: bool | None = None, *, name: str | None = None) -> None:
        super().__init__(size=size, scale_factor=scale_factor, mode=mode,
                         align_corners=align_corners, name=name)


class Add(Layer):
    """Element-wise sum of two or more inputs of one shape (the residual connection):
    ``ck.Add()([x, y])`` in a graph model."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class Concat(Layer):
    """Concatenation of two or more inputs along `dim` (1: channels); the other dimensions
    must agree: ``ck.Concat(dim=1)([a, b])`` in a graph model."""

    def __init__(self, dim: int = 1, *, name: str | None = None) -> None:
        super().__init__(dim=dim, name=name)


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
        ELU,
        SiLU,
        GELU,
        ReLU6,
        Hardswish,
        Identity,
        Softmax,
        AdaptiveAvgPool2d,
        AdaptiveMaxPool2d,
        Dropout2d,
        BatchNorm1d,
        Upsample,
        Add,
        Concat,
        ConvTranspose2d,
        SyncBatchNorm,
    )
}


def schemas() -> dict[str, dict]:
    """The native layer schema: {type: {"args": [{name, kind, required, nullable, default,
    range, choices}]}} for every layer type."""
    return {d["type"]: d for d in _core.layer_schemas()}


def from_config(type_name: str, config: dict, name: str | None = None) -> Layer:
    """Rebuild a layer from its type name and get_config() (used by cnnkit.load). The
    arguments go to the native schema as they are (no Python signature in between), so a file
    is checked exactly as a constructor call is. A layer written in Python is looked up by
    name among the registered ones (cnnkit.register_layer) and built by its from_config."""
    if not isinstance(config, dict):
        raise ValueError(f"{type_name}: config must be a dict, got {type(config).__name__}")
    if type_name not in LAYER_TYPES:
        py = _py_layer.lookup(type_name)
        if py is None:
            raise ValueError(f"unknown layer type {type_name!r} (known: {sorted(LAYER_TYPES)}; "
                             f"{_py_layer.unknown_type_hint(type_name)})")
        layer = py.from_config(dict(config))
        if not isinstance(layer, py):
            raise ValueError(f"{type_name}: from_config returned {type(layer).__name__}, not "
                             f"a {py.__name__}")
        if name is not None:
            Layer.__init__(layer, name=name)
        return layer
    cls = LAYER_TYPES[type_name]
    layer = cls.__new__(cls)
    Layer.__init__(layer, name=name, **config)
    return layer
