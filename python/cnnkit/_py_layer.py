"""Layers written in Python: the registry that saves and loads them by name, and the calls the
native step makes into them (checking what they return, naming the layer in every error).

A subclass of :class:`cnnkit.Layer` that defines ``forward(x, training)`` and ``backward(dy)``
is a Python layer. Its native node (``_core.PyLayer``) takes the GIL for that node's calls
only; the rest of the step runs natively.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

import numpy as np

from . import _core

__all__ = ["register_layer", "registered_layers"]

# name -> class; class -> name (a subclass does not inherit its parent's name)
_REGISTRY: dict[str, type] = {}
_NAMES: dict[type, str] = {}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _native_types() -> set[str]:
    return {d["type"] for d in _core.layer_schemas()}


def register_layer(cls: type | None = None, name: str | None = None) -> Any:
    """Register a layer written in Python under `name` (its class name by default), so that
    :func:`cnnkit.save` records it by that name and :func:`cnnkit.load` rebuilds it with
    ``cls.from_config(config)`` -- never by importing or unpickling anything from the file.

    Works as a call (``ck.register_layer(Swish)``) or a decorator (``@ck.register_layer`` or
    ``@ck.register_layer(name="my.Swish")``); returns the class. Registering a class again
    under its name replaces the entry (re-running a notebook cell); a name taken by a native
    layer, or by another class, is refused."""
    if cls is None:
        return lambda c: register_layer(c, name)
    from .layers import Layer, is_python_layer

    if not (isinstance(cls, type) and issubclass(cls, Layer) and is_python_layer(cls)):
        raise ValueError(f"register_layer: expected a cnnkit.Layer subclass defining forward and "
                         f"backward, got {cls!r:.80}")
    name = cls.__name__ if name is None else name
    if not isinstance(name, str) or not name or len(name) > 128 or not name.isprintable():
        raise ValueError(f"register_layer: name must be a non-empty string, got {name!r:.80}")
    if name in _native_types():
        raise ValueError(f"register_layer: {name!r} is a native layer type; register "
                         f"{cls.__name__} under another name (register_layer(cls, name=...))")
    old = _REGISTRY.get(name)
    if old is not None and old is not cls and _qualname(old) != _qualname(cls):
        raise ValueError(f"register_layer: {name!r} is already registered for {_qualname(old)}; "
                         f"choose another name for {_qualname(cls)}")
    if old is not None:
        _NAMES.pop(old, None)
    _NAMES.pop(cls, None)
    for k in [k for k, v in _REGISTRY.items() if v is cls]:
        del _REGISTRY[k]
    _REGISTRY[name] = cls
    _NAMES[cls] = name
    return cls


def registered_layers() -> dict[str, type]:
    """The registered Python layer types, by name."""
    return dict(_REGISTRY)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def type_name(cls: type) -> str:
    """The name a Python layer is saved under: its registered name, else its class name."""
    return _NAMES.get(cls, cls.__name__)


def lookup(type_name: str) -> type | None:
    return _REGISTRY.get(type_name)


def unknown_type_hint(type_name: str) -> str:
    return (f"if {type_name[:60]!r} is a layer written in Python, import the module defining "
            f"it and call cnnkit.register_layer on its class before loading")


# ---- configuration: the keyword arguments of __init__ -------------------------------------


def recording_init(init: Any) -> Any:
    """`init` wrapped to record the arguments of the outermost __init__ call as the layer's
    config (by parameter name, defaults filled in; `name` is kept apart)."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        d = self.__dict__
        if "_py_config" not in d:
            try:
                bound = sig.bind(self, *args, **kwargs)
            except TypeError:
                init(self, *args, **kwargs)  # raises the usual signature error
                return
            bound.apply_defaults()
            config: dict[str, Any] = {}
            extra = False
            for i, (k, v) in enumerate(bound.arguments.items()):
                kind = sig.parameters[k].kind
                if i == 0 or k == "name":
                    continue
                if kind is inspect.Parameter.VAR_KEYWORD:
                    config.update(v)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    extra = extra or bool(v)
                else:
                    config[k] = v
            d["_py_config"] = config
            d["_py_varargs"] = extra
        init(self, *args, **kwargs)

    return __init__


def checked_config(layer: Any, config: Any) -> dict[str, Any]:
    """`config` (the layer's get_config()) if a file can hold it: a dict of JSON values."""
    t = layer.type
    if layer.__dict__.get("_py_varargs") and config == layer.__dict__.get("_py_config"):
        raise ValueError(f"{t}: __init__ took *args, which a file cannot record; give the "
                         "arguments names or define get_config()")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"{t}: get_config() must return a dict with string keys, got "
                         f"{config!r:.80}")
    for k, v in config.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"{t}: config argument {k!r} = {v!r:.60} cannot be saved (JSON "
                             "values only: numbers, strings, booleans, None, lists, dicts); "
                             "define get_config()/from_config() to store it") from None
    return dict(config)


# ---- the native node ----------------------------------------------------------------------


def build_native(layer: Any) -> Any:
    """The layer's native node, made once (on first use): its parameters are fixed from then
    on."""
    from .layers import Layer

    d = layer.__dict__
    t = layer.type
    if t in _native_types():
        raise ValueError(f"{t}: a layer written in Python may not be called like a native layer "
                         f"type; rename the class or register it under another name "
                         f"(cnnkit.register_layer(cls, name=...))")
    params = d["_py_params"]
    own_shape = type(layer).output_shape is not Layer.output_shape
    native = _core.PyLayer(layer, t, list(params.items()), own_shape)
    d["_py_index"] = {n: i for i, n in enumerate(params)}
    d["_native"] = native
    return native


def add_parameter(layer: Any, name: Any, value: Any) -> None:
    d = layer.__dict__
    t = layer.type
    if "_native" in d:
        raise ValueError(f"{t}: add_parameter({name!r}) after the layer was first used; declare "
                         "every parameter in __init__")
    params = d["_py_params"]
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"{t}: a parameter name must be an identifier not starting with '_', "
                         f"got {name!r:.60}")
    if name in params or name in d or hasattr(type(layer), name):
        raise ValueError(f"{t}: add_parameter({name!r}): the layer already has an attribute "
                         f"{name!r}")
    from ._checks import to_numpy

    a = to_numpy(value)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise ValueError(f"{t}: parameter {name!r} must be a numeric array, got dtype {a.dtype}")
    if a.ndim < 1 or a.size < 1:
        raise ValueError(f"{t}: parameter {name!r} must have at least one axis and one element, "
                         f"got shape {a.shape}")
    with np.errstate(over="ignore"):
        a = np.array(a, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(a).all():
        raise ValueError(f"{t}: parameter {name!r} contains NaN or Inf (or values too large "
                         "for float32)")
    params[name] = a


def get_parameter(layer: Any, name: str) -> np.ndarray:
    """The parameter as numpy: float64 copies inside gradcheck, the pending array in __init__,
    else a view of the model's storage (a read-only copy on a CUDA model)."""
    d = layer.__dict__
    override = d.get("_py_override")
    if override is not None and name in override:
        return override[name]
    native = d.get("_native")
    if native is None:
        return d["_py_params"][name]
    return native.param(d["_py_index"][name])


def set_parameter(layer: Any, name: str, value: Any) -> None:
    """``layer.<name> = value``: the values copied into the parameter (same shape)."""
    cur = get_parameter(layer, name)
    a = np.asarray(value)
    if a.shape != cur.shape or a.dtype.kind not in "biuf":
        raise ValueError(f"{layer.type}: parameter {name!r} is {cur.shape}; cannot set it to an "
                         f"array of shape {a.shape} and dtype {a.dtype}")
    if not cur.flags.writeable:
        raise ValueError(f"{layer.type}: the model is on CUDA; set parameter {name!r} with "
                         "load_state_dict")
    cur[...] = a


# ---- the calls the native node makes (GIL held) -------------------------------------------


def _raised(label: str, what: str, e: Exception) -> Exception:
    """The exception `e` of a layer's method, its message prefixed with the layer; the same
    type when it can be built from one message, else RuntimeError."""
    msg = f"{label}: {what} raised {type(e).__name__}: {e}"
    try:
        new = type(e)(msg)
        if type(new) is type(e) and new.args == (msg,):
            return new
    except Exception:
        pass
    return RuntimeError(msg)


def _checked_array(label: str, what: str, v: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        raise ValueError(f"{label}: {what} returned {type(v).__name__}, expected a numpy array "
                         f"of shape {shape}")
    if v.dtype not in _FLOATS:
        raise ValueError(f"{label}: {what} returned dtype {v.dtype}, expected float32 (float64 "
                         "is converted)")
    if tuple(v.shape) != tuple(shape):
        raise ValueError(f"{label}: {what} returned shape {tuple(v.shape)}, expected "
                         f"{tuple(shape)}")
    return v


def _as_float32(label: str, what: str, v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        a = v.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise ValueError(f"{label}: {what} returned NaN or Inf ({bad} of {a.size} values; "
                         "float64 values beyond float32's range count as Inf)")
    return a


def _user_method(layer: Any, label: str, name: str) -> Any:
    """The layer's own `name` method; NotImplementedError when it only has Layer's (which
    would run the layer's model from inside its own step)."""
    from .layers import Layer

    if getattr(type(layer), name) is getattr(Layer, name):
        args = "x, training" if name == "forward" else "dy"
        raise NotImplementedError(f"{label}: {type(layer).__name__} defines no {name}(self, "
                                  f"{args}); a layer written in Python needs forward and backward")
    return getattr(layer, name)


def _busy(layer: Any, on: bool) -> None:
    layer.__dict__["_py_busy"] = on  # Layer._model() refuses meanwhile (it would wait for itself)


def call_forward(layer: Any, label: str, x: np.ndarray, training: bool, y: np.ndarray) -> None:
    fn = _user_method(layer, label, "forward")
    _busy(layer, True)
    try:
        out = fn(x, bool(training))
    except Exception as e:
        raise _raised(label, "forward", e) from e
    finally:
        _busy(layer, False)
    y[...] = _as_float32(label, "forward", _checked_array(label, "forward", out, y.shape))


def split_backward(layer: Any, label: str, res: Any, x_shape: tuple[int, ...],
                   shapes: dict[str, tuple[int, ...]]) -> tuple[np.ndarray, dict]:
    """(dx, {name: gradient}) from what backward returned, every array checked."""
    names = list(shapes)
    if isinstance(res, tuple):
        if len(res) != 2 or not isinstance(res[1], dict):
            raise ValueError(f"{label}: backward must return dx, or (dx, {{parameter name: "
                             f"gradient}}), got a tuple of {len(res)}")
        dx, grads = res
    else:
        dx, grads = res, None
    if grads is None:
        if names:
            raise ValueError(f"{label}: backward returned no parameter gradients; return (dx, "
                             f"{{{', '.join(repr(n) + ': ...' for n in names)}}})")
        grads = {}
    unknown = [k for k in grads if k not in shapes]
    missing = [n for n in names if n not in grads]
    if unknown or missing:
        raise ValueError(f"{label}: backward returned gradients for {sorted(map(str, grads))}, "
                         f"the parameters are {names}")
    dx = _checked_array(label, "backward", dx, x_shape)
    grads = {n: _checked_array(label, f"backward (gradient of {n!r})", grads[n], shapes[n])
             for n in names}
    return dx, grads


def call_backward(layer: Any, label: str, x_shape: list[int], dy: np.ndarray,
                  dx: np.ndarray | None, grads: list[np.ndarray]) -> None:
    fn = _user_method(layer, label, "backward")
    _busy(layer, True)
    try:
        res = fn(dy)
    except Exception as e:
        raise _raised(label, "backward", e) from e
    finally:
        _busy(layer, False)
    names = list(layer.__dict__["_py_params"])
    shapes = {n: g.shape for n, g in zip(names, grads, strict=True)}
    gx, gp = split_backward(layer, label, res, tuple(x_shape), shapes)
    gx = _as_float32(label, "backward", gx)  # every value checked before anything changes
    gp = {n: _as_float32(label, f"backward (gradient of {n!r})", g) for n, g in gp.items()}
    if dx is not None:
        dx[...] = gx
    for n, g in zip(names, grads, strict=True):
        g += gp[n]  # parameter gradients accumulate (the step zeroes them)


def call_output_shape(layer: Any, label: str, in_shape: list[int]) -> list[int]:
    _busy(layer, True)
    try:
        out = layer.output_shape(tuple(in_shape))
    except Exception as e:
        raise _raised(label, "output_shape", e) from e
    finally:
        _busy(layer, False)
    try:
        out = list(out)
        ok = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in out)
    except TypeError:
        ok = False
    out = [int(s) for s in out] if ok else out
    if not ok or not out or min(out) < 0:
        raise ValueError(f"{label}: output_shape{tuple(in_shape)} must return a tuple of sizes, "
                         f"got {out!r:.60}")
    if out[0] != in_shape[0]:
        raise ValueError(f"{label}: output_shape{tuple(in_shape)} returned {tuple(out)}: the "
                         f"batch size (the first axis, {in_shape[0]}) must be kept")
    return out


# ---- files --------------------------------------------------------------------------------


def check_saveable(model: Any) -> None:
    """ValueError unless every Python layer of `model` is registered and has a JSON config."""
    from .layers import is_python_layer

    for i, layer in enumerate(model._nodes):
        cls = type(layer)
        if not is_python_layer(cls):
            continue
        if lookup(type_name(cls)) is not cls:
            raise ValueError(f"save: {layer.type} (node {i}) is a layer written in Python that "
                             f"is not registered; call cnnkit.register_layer({cls.__name__}) so "
                             "that files can record it by name")
        checked_config(layer, layer.get_config())


def spec_of(i: int, type_name: str, config: dict, error: type) -> tuple[Any, dict, list]:
    """(layer, config, [(parameter, shape)]) of a file's entry naming a registered Python
    layer, built by its from_config; `error` (naming the entry) for anything that fails."""
    cls = lookup(type_name)
    if cls is None:
        raise error(f"layer {i}: unknown layer type {type_name[:60]!r} "
                    f"({unknown_type_hint(type_name)})")
    try:
        layer = cls.from_config(dict(config))
        if not isinstance(layer, cls):
            raise ValueError(f"from_config returned {type(layer).__name__}, not a {cls.__name__}")
        layer._native  # noqa: B018  (the native node: the parameters are fixed)
        conf = checked_config(layer, layer.get_config())
    except Exception as e:
        raise error(f"layer {i} ({type_name}): cannot build the registered Python layer "
                    f"{_qualname(cls)} from the file's config: {type(e).__name__}: {e}") from None
    tensors = [(n, tuple(a.shape)) for n, a in layer.__dict__["_py_params"].items()]
    return layer, conf, tensors
