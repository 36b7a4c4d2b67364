"""ONNX export and import: ``ck.onnx.export(model, "m.onnx", input_shape=(1, 28, 28))`` writes
standard ONNX operators (opset 17 by default, a dynamic batch dimension "N", initializers
named by the state_dict keys); ``ck.onnx.load("m.onnx")`` builds a trainable :class:`Model`
from them, PyTorch's own ``torch.onnx.export`` files included.

Needs the ``onnx`` package (``pip install "cnnkit[onnx]"``), imported only when these
functions run. Import reads the protobuf and numbers only: nothing in a file is executed, and
external tensor data is read only from files inside the model's folder. docs/onnx.md has the
operator table and the limits.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core, _files, _seeding
from . import layers as L

__all__ = ["export", "to_proto", "load", "from_proto", "OnnxExportError", "OnnxImportError",
           "DEFAULT_OPSET", "OPSETS"]

DEFAULT_OPSET = 17
OPSETS = range(11, 22)  # opsets of the default domain that export writes and import reads
MAX_MODEL_BYTES = (2 << 30) - 1  # protobuf's limit for one message
_DOC = "cnnkit:"  # node doc_string prefix naming the cnnkit layer type a node came from


class OnnxExportError(ValueError):
    """The model (or one of its layers) has no faithful ONNX form."""


class OnnxImportError(ValueError):
    """The ONNX file uses operators, opsets or attributes cnnkit cannot build faithfully."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError('cnnkit.onnx needs the onnx package: pip install "cnnkit[onnx]" '
                          "(or pip install onnx onnxruntime)") from None
    return onnx


def _check_opset(opset: Any, where: str) -> int:
    if not isinstance(opset, int) or isinstance(opset, bool) or opset not in OPSETS:
        raise ValueError(f"{where}: opset must be an int in {OPSETS.start}-{OPSETS.stop - 1}, "
                         f"got {opset!r}")
    return opset


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


class _Emitter:
    """Collects the nodes and initializers of the graph being written."""

    def __init__(self, onnx: Any, opset: int, reserved: set[str]) -> None:
        self.onnx, self.opset = onnx, opset
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.reserved = set(reserved)  # the state_dict keys: initializers of those names
        self.used: set[str] = {"input", "output"}  # value and initializer names
        self.node_names: set[str] = set()

    def fresh(self, base: str, used: set[str] | None = None) -> str:
        used = self.used if used is None else used
        name, k = base, 1
        while name in used or (used is self.used and name in self.reserved):
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    def const(self, name: str, value: Any, dtype: Any = np.float32, key: bool = False) -> str:
        """An initializer named `name`: as is for a state_dict key (`key`), else made unique."""
        if not key or name in self.used:
            name = self.fresh(name)
        self.used.add(name)
        arr = np.array(value, dtype=dtype, order="C")  # 0-d stays 0-d (scalars)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, doc: str,
             **attrs: Any) -> None:
        n = self.onnx.helper.make_node(op, inputs, outputs, name=self.fresh(name, self.node_names),
                                      **attrs)
        n.doc_string = doc
        self.nodes.append(n)


@dataclass
class _Ctx:
    """One layer's export: its emitter, name, inputs, output and shapes (batch of 1)."""

    em: _Emitter
    layer: L.Layer
    cfg: dict[str, Any]
    name: str
    xs: list[str]
    y: str
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]
    state: dict[str, np.ndarray]
    n_nodes: int = field(default=0)

    @property
    def opset(self) -> int:
        return self.em.opset

    def param(self, p: str) -> str:
        key = f"{self.name}.{p}"
        return self.em.const(key, self.state[key], key=True)

    def const(self, what: str, value: Any, dtype: Any = np.float32) -> str:
        return self.em.const(f"{self.name}::{what}", value, dtype)

    def tmp(self, what: str) -> str:
        return self.em.fresh(f"{self.name}::{what}")

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        """A node of this layer: the first is named like the layer, the others
        "<name>/<op>"; their doc_string names the layer type (the first's its config too).
        Returns its output."""
        out = output if output is not None else self.tmp(op.lower())
        first = self.n_nodes == 0
        nm = self.name if first else f"{self.name}/{op}"
        doc = _DOC + self.layer.type
        if first:  # the exact config, which import takes when it exports to this very node
            doc += " " + json.dumps(self.cfg, default=list, sort_keys=True)
        self.em.node(op, inputs, [out], nm, doc, **attrs)
        self.n_nodes += 1
        return out

    def fail(self, why: str) -> OnnxExportError:
        return OnnxExportError(f"{self.layer.type} '{self.name}' has no faithful ONNX form: "
                               f"{why}")


def _pads(p: tuple[int, int]) -> list[int]:
    return [p[0], p[1], p[0], p[1]]


def _e_conv(c: _Ctx) -> None:
    cfg = c.cfg
    ins = [c.xs[0], c.param("weight")] + ([c.param("bias")] if cfg["bias"] else [])
    c.node("Conv", ins, c.y, kernel_shape=list(cfg["kernel_size"]), strides=list(cfg["stride"]),
           pads=_pads(cfg["padding"]), dilations=list(cfg["dilation"]), group=cfg["groups"])


def _e_conv_transpose(c: _Ctx) -> None:
    cfg = c.cfg
    ins = [c.xs[0], c.param("weight")] + ([c.param("bias")] if cfg.get("bias", True) else [])
    c.node("ConvTranspose", ins, c.y, kernel_shape=list(cfg["kernel_size"]),
           strides=list(cfg["stride"]), pads=_pads(cfg["padding"]),
           output_padding=list(cfg.get("output_padding", (0, 0))),
           dilations=list(cfg.get("dilation", (1, 1))), group=cfg.get("groups", 1))


def _pool_geometry(c: _Ctx) -> tuple[int, list[int]]:
    """ONNX's ceil_mode and pads for cnnkit's (PyTorch's) pooling. onnxruntime follows
    PyTorch's ceil mode (a last window starting in the right padding is dropped), ONNX's shape
    formula does not, so ceil_mode=1 is written only where it adds a window, and an axis where
    PyTorch drops the window gets its tail padding shortened (its windows stay whole, so the
    averages are the same) or, failing that, the other axis gets the ceil window from extra
    tail padding (max, or averages that do not count padding)."""
    cfg = c.cfg
    ks, ss, ps = cfg["kernel_size"], cfg["stride"], list(cfg["padding"])
    if not cfg["ceil_mode"]:
        return 0, ps + ps
    ns, outs = c.in_shapes[0][1:3], c.out_shape[1:3]
    span = [n + 2 * p - k for n, k, p in zip(ns, ks, ps, strict=True)]
    floor = [sp // s + 1 for sp, s in zip(span, ss, strict=True)]
    ceil = [-(-sp // s) + 1 for sp, s in zip(span, ss, strict=True)]
    adds = [o != f for o, f in zip(outs, floor, strict=True)]
    drops = [o < ce for o, ce in zip(outs, ceil, strict=True)]
    if not any(adds):
        return 0, ps + ps
    if not any(drops):
        return 1, ps + ps
    tails = [p - (sp - (o - 1) * s) if d else p
             for p, sp, o, s, d in zip(ps, span, outs, ss, drops, strict=True)]
    if min(tails) >= 0:
        return 1, ps + tails
    if c.layer.type == "MaxPool2d" or not cfg["count_include_pad"]:
        tails = [p + ((o - 1) * s - sp) if a else p
                 for p, sp, o, s, a in zip(ps, span, outs, ss, adds, strict=True)]
        return 0, ps + tails
    raise c.fail(f"ceil_mode=True with count_include_pad=True on a {ns[0]}x{ns[1]} input adds "
                 "a window on one axis and drops one on the other; ONNX's AveragePool has one "
                 "ceil_mode for both")


def _e_maxpool(c: _Ctx) -> None:
    cfg = c.cfg
    ceil, pads = _pool_geometry(c)
    c.node("MaxPool", [c.xs[0]], c.y, kernel_shape=list(cfg["kernel_size"]),
           strides=list(cfg["stride"]), pads=pads, ceil_mode=ceil)


def _e_avgpool(c: _Ctx) -> None:
    cfg = c.cfg
    ceil, pads = _pool_geometry(c)
    c.node("AveragePool", [c.xs[0]], c.y, kernel_shape=list(cfg["kernel_size"]),
           strides=list(cfg["stride"]), pads=pads, ceil_mode=ceil,
           count_include_pad=int(cfg["count_include_pad"]))


def _e_adaptive(c: _Ctx) -> None:
    h, w = c.in_shapes[0][1:3]
    p, q = c.out_shape[1:3]
    avg = c.layer.type == "AdaptiveAvgPool2d"
    if (p, q) == (1, 1):
        c.node("GlobalAveragePool" if avg else "GlobalMaxPool", [c.xs[0]], c.y)
        return
    if h % p or w % q:
        raise c.fail(f"output_size {(p, q)} does not divide the input size {(h, w)} (the input "
                     "shape given to export), so its bins are uneven; ONNX pools have one "
                     "window size")
    k = [h // p, w // q]
    c.node("AveragePool" if avg else "MaxPool", [c.xs[0]], c.y, kernel_shape=k, strides=k)


def _unary(op: str, **attrs: Any) -> Any:
    def emit(c: _Ctx) -> None:
        c.node(op, [c.xs[0]], c.y, **{k: v(c.cfg) if callable(v) else v
                                      for k, v in attrs.items()})
    return emit


def _e_silu(c: _Ctx) -> None:
    s = c.node("Sigmoid", [c.xs[0]])
    c.node("Mul", [c.xs[0], s], c.y)


def _e_gelu(c: _Ctx) -> None:
    x, tanh = c.xs[0], c.cfg["approximate"] == "tanh"
    if c.opset >= 20:
        c.node("Gelu", [x], c.y, approximate="tanh" if tanh else "none")
        return
    # PyTorch's own decompositions (torch.onnx.export, opsets below 20), so import reads one form
    if tanh:
        sq = c.node("Mul", [x, x])
        cube = c.node("Mul", [x, sq])
        k = c.node("Mul", [c.const("kappa", 0.044715), cube])
        s = c.node("Add", [x, k])
        inner = c.node("Mul", [c.const("beta", math.sqrt(2.0 / math.pi)), s])
        t = c.node("Tanh", [inner])
        a = c.node("Add", [c.const("one", 1.0), t])
        m = c.node("Mul", [x, a])
        c.node("Mul", [c.const("half", 0.5), m], c.y)
    else:
        d = c.node("Div", [x, c.const("sqrt2", math.sqrt(2.0))])
        e = c.node("Erf", [d])
        a = c.node("Add", [e, c.const("one", 1.0)])
        m = c.node("Mul", [x, a])
        c.node("Mul", [m, c.const("half", 0.5)], c.y)


def _e_relu6(c: _Ctx) -> None:
    c.node("Clip", [c.xs[0], c.const("min", 0.0), c.const("max", 6.0)], c.y)


def _e_hardswish(c: _Ctx) -> None:
    if c.opset >= 14:
        c.node("HardSwish", [c.xs[0]], c.y)
        return
    s = c.node("HardSigmoid", [c.xs[0]], alpha=1.0 / 6.0, beta=0.5)
    c.node("Mul", [c.xs[0], s], c.y)


def _e_linear(c: _Ctx) -> None:
    ins = [c.xs[0], c.param("weight")] + ([c.param("bias")] if c.cfg["bias"] else [])
    c.node("Gemm", ins, c.y, transB=1)


def _e_dropout(c: _Ctx) -> None:
    # inference: the identity (onnxruntime runs Dropout without training_mode as a copy)
    p = float(c.cfg["p"])
    if p >= 1.0:
        raise c.fail("p=1 (ONNX's Dropout ratio must be below 1)")
    if c.opset >= 12:
        c.node("Dropout", [c.xs[0], c.const("ratio", p)], c.y)
    else:
        c.node("Dropout", [c.xs[0]], c.y, ratio=p)


def _e_batchnorm(c: _Ctx) -> None:
    cfg = c.cfg
    if not cfg["track_running_stats"]:
        raise c.fail("track_running_stats=False normalises with each batch's statistics even "
                     "in eval, and ONNX's BatchNormalization (inference form) uses stored ones")
    n = cfg["num_features"]
    if cfg["affine"]:
        scale, bias = c.param("weight"), c.param("bias")
    else:
        scale, bias = c.const("scale", np.ones(n)), c.const("shift", np.zeros(n))
    # ONNX's momentum weighs the running value, PyTorch's the batch's: 1 - momentum
    c.node("BatchNormalization", [c.xs[0], scale, bias, c.param("running_mean"),
                                  c.param("running_var")], c.y,
           epsilon=float(cfg["eps"]), momentum=1.0 - float(cfg["momentum"]))


def _e_softmax(c: _Ctx) -> None:
    full = (1, *c.in_shapes[0])
    axis = c.cfg["dim"] % len(full)
    if c.opset < 13 and any(d != 1 for d in full[axis + 1:]):
        raise c.fail(f"dim={c.cfg['dim']} on a rank-{len(full)} input: before opset 13 ONNX's "
                     "Softmax normalises over all the dimensions from its axis on; export "
                     "with opset >= 13")
    c.node("Softmax", [c.xs[0]], c.y, axis=axis)


def _e_upsample(c: _Ctx) -> None:
    cfg = c.cfg
    mode = cfg.get("mode", "nearest")
    if mode == "nearest":
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
    elif mode == "bilinear":  # PyTorch's half-pixel rule, or its align_corners one
        attrs = dict(mode="linear", coordinate_transformation_mode="align_corners"
                     if cfg.get("align_corners") else "pytorch_half_pixel")
        if not cfg.get("align_corners") and any(
                o == 1 < n for o, n in zip(c.out_shape[1:3], c.in_shapes[0][1:3], strict=True)):
            raise c.fail("bilinear to a size of 1 from a larger axis: ONNX's half-pixel rule "
                         "reads the first row there, PyTorch's the middle")
    else:
        raise c.fail(f"mode={mode!r} (exported: 'nearest', 'bilinear')")
    x = c.xs[0]
    empty = c.const("empty", np.zeros(0)) if c.opset < 13 else ""
    if cfg["size"] is None:
        sf = float(cfg["scale_factor"])
        h, w = c.in_shapes[0][1:3]
        onnx_size = [math.floor(float(np.float32(sf)) * n) for n in (h, w)]
        if tuple(onnx_size) != tuple(c.out_shape[1:3]):
            raise c.fail(f"scale_factor={sf:g} on a {h}x{w} input: ONNX's Resize sizes the "
                         f"output from the float32 scale as {tuple(onnx_size)}, cnnkit gives "
                         f"{tuple(c.out_shape[1:3])}; give the layer size= instead")
        if tuple(onnx_size) == (h, w) and sf != 1.0:
            raise c.fail(f"scale_factor={sf:g} on a {h}x{w} input keeps the size but moves "
                         "rows and columns, and onnxruntime runs a Resize that keeps the size "
                         "as a copy")
        c.node("Resize", [x, empty, c.const("scales", [1.0, 1.0, sf, sf])], c.y, **attrs)
        return
    # sizes = shape(x)[:2] ++ (P, Q): the batch stays dynamic
    shape = c.node("Shape", [x])
    nc = c.node("Slice", [shape, c.const("start", [0], np.int64),
                          c.const("end", [2], np.int64)])
    sizes = c.node("Concat", [nc, c.const("size", list(c.out_shape[1:3]), np.int64)], axis=0)
    c.node("Resize", [x, empty, empty, sizes], c.y, **attrs)


def _e_add(c: _Ctx) -> None:
    c.node("Add" if len(c.xs) == 2 else "Sum", list(c.xs), c.y)


def _e_concat(c: _Ctx) -> None:
    c.node("Concat", list(c.xs), c.y, axis=int(c.cfg["dim"]))


_EXPORT = {
    "Conv2d": _e_conv,
    "ConvTranspose2d": _e_conv_transpose,
    "MaxPool2d": _e_maxpool,
    "AvgPool2d": _e_avgpool,
    "AdaptiveAvgPool2d": _e_adaptive,
    "AdaptiveMaxPool2d": _e_adaptive,
    "ReLU": _unary("Relu"),
    "LeakyReLU": _unary("LeakyRelu", alpha=lambda cfg: float(cfg["negative_slope"])),
    "Sigmoid": _unary("Sigmoid"),
    "Tanh": _unary("Tanh"),
    "ELU": _unary("Elu", alpha=lambda cfg: float(cfg["alpha"])),
    "SiLU": _e_silu,
    "GELU": _e_gelu,
    "ReLU6": _e_relu6,
    "Hardswish": _e_hardswish,
    "Linear": _e_linear,
    "Flatten": _unary("Flatten", axis=1),
    "Dropout": _e_dropout,
    "Dropout2d": _e_dropout,
    "BatchNorm2d": _e_batchnorm,
    "BatchNorm1d": _e_batchnorm,
    "SyncBatchNorm": _e_batchnorm,  # the same inference form (its statistics are the job's)
    "Identity": _unary("Identity"),
    "Softmax": _e_softmax,
    "Upsample": _e_upsample,
    "Add": _e_add,
    "Concat": _e_concat,
}


def _resolve_model(model: Any) -> Any:
    from .model import Sequential

    if isinstance(model, L.Layer):
        return model._model()
    if not isinstance(model, Sequential):
        raise ValueError(f"export: expected a cnnkit Sequential or Model, got "
                         f"{type(model).__name__}")
    return model


def _input_shape(model: Any, input_shape: Any) -> tuple[int, ...]:
    if input_shape is None:
        input_shape = model._input_shape or tuple(model._net.input_shape()) or None
    if input_shape is None:
        raise ValueError("export: give input_shape=(C, H, W) (or (features,)): the model does "
                         "not know the size of its input")
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list)) or not 1 <= len(input_shape) <= 3 or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
            for d in input_shape):
        raise ValueError(f"export: input_shape must be the per-sample shape (C, H, W) or "
                         f"(features,) of positive ints, got {input_shape!r}")
    return tuple(int(d) for d in input_shape)


def to_proto(model: Any, input_shape: Any = None, *, opset: int = DEFAULT_OPSET) -> Any:
    """The ``onnx.ModelProto`` of `model` for per-sample `input_shape` ((C, H, W) or
    (features,); default: the model's own, when it knows it), checked with
    ``onnx.checker.check_model(full_check=True)``. OnnxExportError names a layer with no
    faithful ONNX form."""
    onnx = _onnx()
    from . import __version__

    opset = _check_opset(opset, "export")
    model = _resolve_model(model)
    shape = _input_shape(model, input_shape)
    try:
        shapes = [tuple(s[1:]) for s in model._net.shapes([1, *shape])]
    except ValueError as e:
        raise ValueError(f"export: the model cannot run on input shape {shape}: {e}") from None
    state = model.state_dict()
    em = _Emitter(onnx, opset, set(state))
    values = ["input"]
    last = len(model._nodes) - 1
    for i, (layer, name, ins) in enumerate(zip(model._nodes, model._names, model._inputs,
                                               strict=True)):
        emit = _EXPORT.get(layer.type)
        if emit is None:
            raise OnnxExportError(f"{layer.type} '{name}': no ONNX mapping for this layer type")
        y = "output" if i == last else em.fresh(name)
        ctx = _Ctx(em, layer, layer.get_config(), name, [values[v] for v in ins], y,
                   [shapes[v] for v in ins], shapes[i + 1], state)
        emit(ctx)
        values.append(y)
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    graph = h.make_graph(
        em.nodes, model.name or "cnnkit",
        [h.make_tensor_value_info("input", f32, ["N", *shape])],
        [h.make_tensor_value_info("output", f32, ["N", *shapes[-1]])],
        initializer=em.inits)
    opsets = [h.make_opsetid("", opset)]
    proto = h.make_model(graph, opset_imports=opsets, producer_name="cnnkit",
                         producer_version=__version__)
    # the oldest IR version that carries this opset: what any onnxruntime that runs it reads
    proto.ir_version = h.find_min_ir_version_for(opsets)
    nbytes = proto.ByteSize()
    if nbytes > MAX_MODEL_BYTES:
        raise OnnxExportError(f"export: the model is {nbytes} bytes, above protobuf's 2 GiB "
                              "limit for one ONNX file")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model: Any, path: str | os.PathLike, input_shape: Any = None, *,
           opset: int = DEFAULT_OPSET) -> str:
    """Write `model` as an ONNX file at `path` (atomically): standard operators of `opset`
    (11-21, default 17), a dynamic batch dimension "N", the input named "input" with
    per-sample `input_shape` ((C, H, W) or (features,); default: the model's own), the
    output (the logits, as ``model.forward`` gives them) named "output", initializers named
    by the state_dict keys. Returns the path."""
    proto = to_proto(model, input_shape, opset=opset)
    data = proto.SerializeToString()
    return _files.atomic_write(path, lambda f: f.write(data), what="onnx.export")


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------


class _BatchDim:
    """The symbolic batch size in shape computations (Shape of the input)."""

    def __repr__(self) -> str:
        return "N"


BATCH = _BatchDim()


@dataclass
class _Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    name: str
    attrs: dict[str, Any]
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # fused patterns: their parameters

    def where(self) -> str:
        return f"{self.op} node {self.name!r}" if self.name else f"{self.op} node"


# Operators on tensors (layers), computed on constants (shapes), and only inside patterns
_LAYER_OPS = {
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Relu",
    "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Gelu", "HardSwish", "Clip", "Softmax", "Gemm",
    "MatMul", "Flatten", "Reshape", "Dropout", "BatchNormalization", "Identity", "Add", "Sum",
    "Concat", "Resize", "ConvTranspose",
}
_CONST_OPS = {
    "Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Slice", "Cast", "Concat",
    "Identity", "Reshape", "Add", "Sub", "Mul", "Div", "ConstantOfShape", "Transpose",
}
_PATTERN_OPS = {"Mul", "Div", "Erf", "HardSigmoid", "Add"}

# attributes each operator may carry (anything else is refused and listed)
_ATTRS: dict[str, set[str]] = {
    "Conv": {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"},
    "ConvTranspose": {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad",
                      "output_padding"},
    "MaxPool": {"kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad",
                "storage_order"},
    "AveragePool": {"kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad",
                    "count_include_pad"},
    "GlobalAveragePool": set(), "GlobalMaxPool": set(), "Relu": set(), "Sigmoid": set(),
    "Tanh": set(), "HardSwish": set(), "Identity": set(), "Sum": set(), "Erf": set(),
    "Shape": {"start", "end"}, "Add": set(), "Sub": set(), "Mul": set(), "Div": set(),
    "MatMul": set(), "Clip": set(),
    "LeakyRelu": {"alpha"}, "Elu": {"alpha"}, "Gelu": {"approximate"},
    "HardSigmoid": {"alpha", "beta"}, "Softmax": {"axis"},
    "Gemm": {"alpha", "beta", "transA", "transB"}, "Flatten": {"axis"},
    "Reshape": {"allowzero"}, "Dropout": {"ratio", "seed"},
    "BatchNormalization": {"epsilon", "momentum", "training_mode"},
    "Concat": {"axis"},
    "Resize": {"mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
               "exclude_outside", "extrapolation_value", "antialias", "axes",
               "keep_aspect_ratio_policy"},
    "Constant": {"value", "value_float", "value_floats", "value_int", "value_ints"},
    "Gather": {"axis"}, "Unsqueeze": {"axes"}, "Squeeze": {"axes"}, "Slice": set(),
    "Cast": {"to", "saturate", "round_mode"}, "ConstantOfShape": {"value"},
    "Transpose": {"perm"},
}


def _attr_problems(n: _Node) -> list[str]:
    """What cnnkit cannot honour in a node's attributes (checked for the whole graph before
    anything is built, so the error lists everything)."""
    out = [f"{n.where()}: attribute {k}" for k in n.attrs if k not in _ATTRS.get(n.op, set())]
    a = n.attrs

    def bad(k: str, why: str) -> None:
        out.append(f"{n.where()}: {k}={a.get(k, '(default)')!r} ({why})")

    if n.op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
        if "kernel_shape" in a and len(a["kernel_shape"]) != 2:
            bad("kernel_shape", "only 2-D (N, C, H, W) layers")
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            bad("auto_pad", "unknown")
        if n.op == "ConvTranspose" and a.get("auto_pad", "NOTSET") != "NOTSET":
            bad("auto_pad", "ConvTranspose: explicit pads only")
    if n.op in ("MaxPool", "AveragePool") and any(d != 1 for d in a.get("dilations", [])):
        bad("dilations", "cnnkit's pooling has no dilation")
    if n.op == "MaxPool" and a.get("storage_order", 0) != 0:
        bad("storage_order", "only the row-major Indices form")
    if n.op == "Gemm" and a.get("transA", 0) != 0:
        bad("transA", "the input must be (N, features)")
    if n.op == "BatchNormalization" and a.get("training_mode", 0) != 0:
        bad("training_mode", "only the inference form: training-mode statistics are not a "
                             "model")
    if n.op == "Gelu" and a.get("approximate", "none") not in ("none", "tanh"):
        bad("approximate", "none or tanh")
    if n.op == "Resize":
        mode = a.get("mode", "nearest")
        ctm = a.get("coordinate_transformation_mode", "half_pixel")
        if mode not in ("nearest", "linear"):
            bad("mode", "cnnkit's Upsample is nearest or bilinear")
        elif mode == "nearest" and ctm != "asymmetric":
            bad("coordinate_transformation_mode", "PyTorch's nearest is 'asymmetric'")
        elif mode == "nearest" and a.get("nearest_mode", "round_prefer_floor") != "floor":
            bad("nearest_mode", "PyTorch's nearest is 'floor'")
        elif mode == "linear" and ctm not in ("pytorch_half_pixel", "align_corners"):
            bad("coordinate_transformation_mode", "PyTorch's bilinear is 'pytorch_half_pixel' "
                "or 'align_corners'")
        if a.get("antialias", 0) != 0:
            bad("antialias", "no antialiasing")
        if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            bad("keep_aspect_ratio_policy", "only 'stretch'")
        if "axes" in a and sorted(int(v) % 4 for v in a["axes"]) != [2, 3]:
            bad("axes", "only the spatial axes (2, 3)")
    if n.op == "Cast" and a.get("to") not in (1, 6, 7, 11):  # float, int32, int64, double
        bad("to", "shape arithmetic casts to int or float only")
    return out


def _parse_attrs(onnx: Any, node: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for at in node.attribute:
        v = onnx.helper.get_attribute_value(at)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, (list, tuple)):
            v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
        out[at.name] = v
    return out


# ---- external data and tensors ---------------------------------------------------------------


def _external_path(onnx: Any, tensor: Any, base_dir: str | None) -> tuple[str, int, int | None]:
    """(path, offset, length) of a tensor's external data, refused unless the file lies inside
    the model's folder (no absolute paths, no '..', no links leading out)."""
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    if base_dir is None:
        raise OnnxImportError(f"tensor {tensor.name!r} keeps its data in an external file "
                              f"({loc!r}); load the model from its file so the folder is known")
    if not loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:",
                                                                                  loc):
        raise OnnxImportError(f"tensor {tensor.name!r}: external data location {loc!r} is not "
                              "a relative path inside the model's folder: refused")
    parts = re.split(r"[\\/]+", loc)
    if ".." in parts or "\x00" in loc:
        raise OnnxImportError(f"tensor {tensor.name!r}: external data location {loc!r} "
                              "escapes the model's folder: refused")
    root = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, full]) != root:
        raise OnnxImportError(f"tensor {tensor.name!r}: external data location {loc!r} "
                              "leads outside the model's folder (through a link): refused")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise OnnxImportError(f"tensor {tensor.name!r}: bad external data offset/length"
                              ) from None
    if offset < 0 or (length is not None and length < 0):
        raise OnnxImportError(f"tensor {tensor.name!r}: negative external data offset/length")
    return full, offset, length


def _tensor(onnx: Any, t: Any, base_dir: str | None) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        path, offset, length = _external_path(onnx, t, base_dir)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        need = int(np.prod(t.dims, dtype=np.int64)) * np.dtype(dtype).itemsize
        if length is not None and length != need:
            raise OnnxImportError(f"tensor {t.name!r}: external length {length}, its shape "
                                  f"needs {need} bytes")
        with _files.open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if offset + need > size:
                raise OnnxImportError(f"tensor {t.name!r}: external data runs past the end of "
                                      f"{os.path.basename(path)}")
            f.seek(offset)
            raw = f.read(need)
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(tuple(t.dims))
        return arr.astype(dtype)
    return onnx.numpy_helper.to_array(t)


# ---- graph patterns (several ONNX nodes that are one cnnkit layer) ----------------------------

_X = "X"  # the pattern's input


def _c(value: float, rtol: float = 1e-6) -> tuple[str, float, float]:
    return ("const", value, rtol)


_GELU_ERF = ("Mul", ("Mul", _X, ("Add", ("Erf", ("Div", _X, _c(math.sqrt(2.0)))), _c(1.0))),
             _c(0.5))
_GELU_ERF_B = ("Mul", ("Mul", _X, _c(0.5)), ("Add", ("Erf", ("Div", _X, _c(math.sqrt(2.0)))),
                                                      _c(1.0)))
_GELU_ERF_C = ("Mul", ("Mul", _X, ("Add", ("Erf", ("Mul", _X, _c(math.sqrt(0.5)))), _c(1.0))),
               _c(0.5))


def _gelu_tanh(cube: Any) -> Any:
    """0.5 * (x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * cube)))), PyTorch's form."""
    inner = ("Mul", _c(math.sqrt(2.0 / math.pi), 1e-5),
             ("Add", _X, ("Mul", _c(0.044715, 1e-5), cube)))
    return ("Mul", _c(0.5), ("Mul", _X, ("Add", _c(1.0), ("Tanh", inner))))


_GELU_TANH = _gelu_tanh(("Mul", _X, ("Mul", _X, _X)))
_GELU_TANH_POW = _gelu_tanh(("Pow", _X, _c(3.0)))
_PATTERNS: list[tuple[str, dict[str, Any], Any]] = [
    ("GELU", {"approximate": "none"}, _GELU_ERF),
    ("GELU", {"approximate": "none"}, _GELU_ERF_B),
    ("GELU", {"approximate": "none"}, _GELU_ERF_C),
    ("GELU", {"approximate": "tanh"}, _GELU_TANH),
    ("GELU", {"approximate": "tanh"}, _GELU_TANH_POW),
    ("SiLU", {}, ("Mul", _X, ("Sigmoid", _X))),
    ("Hardswish", {}, ("Mul", _X, ("HardSigmoid", _X))),
]
_COMMUTATIVE = {"Add", "Mul"}


class _Graph:
    """Producers, consumers and plain constants of an ONNX graph (read-only views)."""

    def __init__(self, nodes: list[_Node], consts: dict[str, np.ndarray], outputs: set[str]):
        self.nodes = nodes
        self.producer = {o: n for n in nodes for o in n.outputs if o}
        self.consumers: dict[str, list[_Node]] = {}
        for n in nodes:
            for i in n.inputs:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = outputs
        self.consts = dict(consts)
        for n in nodes:  # Constant nodes are plain constants too
            if n.op == "Constant" and len(n.outputs) == 1 and "value" in n.attrs:
                self.consts[n.outputs[0]] = n.extra["value"]

    def scalar(self, v: str) -> float | None:
        a = self.consts.get(v)
        if a is None and v in self.producer and self.producer[v].op == "Identity":
            a = self.consts.get(self.producer[v].inputs[0])
        if a is None or a.size != 1:
            return None
        return float(a.reshape(()))


def _match(g: _Graph, pat: Any, v: str, env: dict[str, str], used: list[_Node]) -> bool:
    if pat == _X:
        if "x" in env:
            return env["x"] == v
        if v in g.consts:
            return False
        env["x"] = v
        return True
    if pat[0] == "const":
        s = g.scalar(v)
        return s is not None and abs(s - pat[1]) <= pat[2] * max(1.0, abs(pat[1]))
    n = g.producer.get(v)
    if n is None or n.op != pat[0] or len(n.inputs) != len(pat) - 1:
        return False
    if n.op == "HardSigmoid" and not (abs(n.attrs.get("alpha", 0.2) - 1 / 6) < 1e-6
                                      and abs(n.attrs.get("beta", 0.5) - 0.5) < 1e-6):
        return False
    orders = [pat[1:]]
    if n.op in _COMMUTATIVE and len(pat) == 3:
        orders.append((pat[2], pat[1]))
    for order in orders:
        e2, u2 = dict(env), list(used)
        if all(_match(g, p, i, e2, u2) for p, i in zip(order, n.inputs, strict=True)):
            env.update(e2)
            used[:] = u2 + [n]
            return True
    return False


def _fuse(g: _Graph) -> list[_Node]:
    """The nodes with the known multi-node forms of one layer replaced by one pseudo-node
    ("cnnkit.<Type>"): GELU, SiLU, Hardswish decompositions and MatMul + Add (Linear). A form
    whose inner values are used elsewhere stays as it is (and fails as unsupported)."""
    claimed: set[int] = set()
    fused: dict[int, _Node] = {}
    for root in reversed(g.nodes):
        if id(root) in claimed or len(root.outputs) != 1:
            continue
        for typ, cfg, pat in _PATTERNS:
            env: dict[str, str] = {}
            used: list[_Node] = []
            if not _match(g, pat, root.outputs[0], env, used):
                continue
            inner = {id(n) for n in used}
            if any(id(n) in claimed for n in used) or any(
                    o in g.outputs or any(id(c) not in inner for c in g.consumers.get(o, []))
                    for n in used if n is not root for o in n.outputs):
                continue
            claimed |= inner
            fused[id(root)] = _Node(f"cnnkit.{typ}", [env["x"]], list(root.outputs),
                                    _first_name(used), {}, root.doc, {"config": cfg})
            break
        else:
            if root.op == "Add" and len(root.inputs) == 2:
                _fuse_linear(g, root, claimed, fused)
    out = []
    for n in g.nodes:
        if id(n) in fused:
            out.append(fused[id(n)])
        elif id(n) not in claimed:
            out.append(n)
    return out


def _first_name(nodes: list[_Node]) -> str:
    """The name of a fused form: its last-listed (earliest) node's, as export names them."""
    return min(nodes, key=lambda n: len(n.name) if n.name else 1 << 30).name


def _fuse_linear(g: _Graph, add: _Node, claimed: set[int], fused: dict[int, _Node]) -> None:
    for mi, bi in ((0, 1), (1, 0)):
        mm = g.producer.get(add.inputs[mi])
        b = add.inputs[bi]
        if (mm is None or mm.op != "MatMul" or b not in g.consts or id(mm) in claimed
                or len(g.consumers.get(mm.outputs[0], [])) != 1
                or mm.outputs[0] in g.outputs or mm.inputs[1] not in g.consts):
            continue
        w = g.consts[mm.inputs[1]]
        if w.ndim != 2 or g.consts[b].size not in (1, w.shape[1]):
            continue
        claimed.add(id(mm))
        fused[id(add)] = _Node("cnnkit.Linear", [mm.inputs[0]], list(add.outputs),
                               mm.name or add.name, {}, mm.doc,
                               {"weight": (mm.inputs[1], w.T), "bias": (b, g.consts[b])})
        return


# ---- conversion ------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


def _scope_name(onnx_name: str) -> str | None:
    """A dotted module path from an ONNX node name: our own ("layer1.0.conv1"), or PyTorch's
    scopes ("/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1")."""
    if _NAME_RE.match(onnx_name) and "/" not in onnx_name:
        return onnx_name
    segs = [s for s in onnx_name.split("/") if s]
    if len(segs) < 2:
        return None
    acc = ""
    for s in segs[:-1]:
        s = re.sub(r"[^A-Za-z0-9_.]", "_", s)
        if acc and s.startswith(acc + "."):
            acc = s
        else:
            acc = f"{acc}.{s}" if acc else s
    return acc if _NAME_RE.match(acc) else None


class _Importer:
    def __init__(self, onnx: Any, proto: Any, base_dir: str | None, where: str) -> None:
        self.onnx, self.proto, self.base_dir, self.where = onnx, proto, base_dir, where
        self.vals: dict[str, Any] = {}  # name -> GraphTensor or numpy (constants, shapes)
        self.state: dict[str, np.ndarray] = {}
        self.names: set[str] = set()
        self.auto: dict[str, int] = {}
        self.opset = 0
        self.static_batch: int | None = None

    def fail(self, msg: str) -> OnnxImportError:
        return OnnxImportError(f"{self.where}: {msg}")

    # -- checks before building ---------------------------------------------------------------
    def check_header(self) -> None:
        p = self.proto
        versions = {o.domain or "ai.onnx": o.version for o in p.opset_import}
        if "ai.onnx" not in versions:
            raise self.fail("no opset of the default ONNX domain is imported")
        self.opset = int(versions["ai.onnx"])
        if self.opset not in OPSETS:
            raise self.fail(f"opset {self.opset} is not supported (cnnkit imports opsets "
                            f"{OPSETS.start}-{OPSETS.stop - 1}); convert it with "
                            "onnx.version_converter first")
        g = p.graph
        problems = []
        if p.functions:
            problems.append(f"model-local functions ({', '.join(f.name for f in p.functions)})")
        if g.sparse_initializer:
            problems.append("sparse initializers")
        ops: dict[str, list[str]] = {}
        for n in g.node:
            if (n.domain or "ai.onnx") != "ai.onnx":
                ops.setdefault(f"{n.domain}::{n.op_type}", []).append(n.name)
            elif n.op_type not in _LAYER_OPS | _CONST_OPS | _PATTERN_OPS | {"Pow"}:
                ops.setdefault(n.op_type, []).append(n.name)
            for at in n.attribute:
                if at.type in (at.GRAPH, at.GRAPHS):
                    problems.append(f"{n.op_type} node {n.name!r}: subgraph attribute "
                                    f"{at.name} (control flow)")
        if ops:
            listed = ", ".join(f"{op} ({len(ns)} node{'s' if len(ns) > 1 else ''}"
                               + (f", e.g. {ns[0]!r}" if ns[0] else "") + ")"
                               for op, ns in sorted(ops.items()))
            problems.insert(0, f"unsupported operators: {listed}")
        if problems:
            raise self.fail("cannot import: " + "; ".join(problems))

    # -- naming ----------------------------------------------------------------------------------
    def layer_name(self, node: _Node, typ: str, params: dict[str, str]) -> str:
        cands = []
        pre = {v.rsplit(".", 1)[0] for p, v in params.items() if v.endswith("." + p)}
        if len(pre) == 1:
            cands.append(pre.pop())
        if node.name:
            s = _scope_name(node.name)
            if s:
                cands.append(s)
        for c in cands:
            if _NAME_RE.match(c) and len(c) <= 200 and c not in self.names:
                self.names.add(c)
                return c
        base = typ.lower()
        while True:
            k = self.auto.get(base, 0)
            self.auto[base] = k + 1
            c = base if k == 0 else f"{base}_{k}"
            if c not in self.names:
                self.names.add(c)
                return c

    # -- values ----------------------------------------------------------------------------------
    def tensor(self, node: _Node, i: int = 0) -> Any:
        from .graph import GraphTensor

        if i >= len(node.inputs) or not node.inputs[i]:
            raise self.fail(f"{node.where()}: input {i} is missing")
        v = self.vals.get(node.inputs[i])
        if not isinstance(v, GraphTensor):
            raise self.fail(f"{node.where()}: input {node.inputs[i]!r} must be computed from "
                            "the model's input (a constant here cannot become a layer)")
        return v

    def const(self, node: _Node, i: int, what: str, optional: bool = False) -> Any:
        if i >= len(node.inputs) or not node.inputs[i]:
            if optional:
                return None
            raise self.fail(f"{node.where()}: the {what} input is missing")
        v = self.vals.get(node.inputs[i])
        if not isinstance(v, np.ndarray):
            raise self.fail(f"{node.where()}: the {what} must be a constant (an initializer "
                            "or computed from constants and shapes only)")
        return v

    def numbers(self, node: _Node, i: int, what: str, optional: bool = False) -> Any:
        v = self.const(node, i, what, optional)
        if v is None:
            return None
        if v.dtype == object:
            raise self.fail(f"{node.where()}: the {what} depends on the batch size")
        return v

    def add_layer(self, node: _Node, typ: str, cfg: dict[str, Any] | None, xs: list[Any],
                  params: dict[str, tuple[str, np.ndarray]] | None = None,
                  alternatives: list[dict[str, Any]] = ()) -> None:
        """The layer `typ(cfg)` for `node`, or the config its doc_string names (our own
        exports: exact floats, negative dims, adaptive pools, Dropout2d) when that layer
        exports to this very node. `cfg` None: the first of `alternatives` that does."""
        params = params or {}
        cands = [_hint(node.doc)] + [(typ, c) for c in alternatives]
        chosen = next((tc for tc in cands if tc is not None
                       and self.exports_to(node, tc[0], tc[1], xs, params)), None)
        if chosen is None:
            if cfg is None:
                raise self.fail(f"{node.where()}: no {typ} configuration gives this node "
                                f"(attributes {node.attrs})")
            chosen = (typ, cfg)
        typ, cfg = chosen
        name = self.layer_name(node, typ, {p: v for p, (v, _) in params.items()})
        try:
            layer = L.from_config(typ, dict(cfg), name=name)
            y = layer(xs if len(xs) > 1 else xs[0])
        except ValueError as e:
            raise self.fail(f"{node.where()} as {typ}: {e}") from None
        for p, (_, arr) in params.items():
            self.state[f"{name}.{p}"] = np.ascontiguousarray(arr, dtype=np.float32)
        self.vals[node.outputs[0]] = y

    def exports_to(self, node: _Node, typ: str, cfg: dict[str, Any], xs: list[Any],
                   params: dict[str, tuple[str, np.ndarray]]) -> bool:
        """True when layer `typ(cfg)` on these inputs exports to exactly `node`: one node, the
        same operator, attributes and constant inputs, the parameters in their places."""
        emit = _EXPORT.get(typ)
        if emit is None or not isinstance(cfg, dict) or typ not in L.LAYER_TYPES:
            return False
        try:
            # the tensors the config implies, sized without allocating: they must be the
            # node's own (a config naming huge layers is never built)
            _, tensors, _ = _core.layer_state_specs(typ, dict(cfg))
            if {n: tuple(sh) for n, sh in tensors} != {p: a.shape for p, (_, a) in
                                                       params.items()}:
                return False
            layer = L.from_config(typ, dict(cfg))
            nat = layer._native
            shapes = [x.shape for x in xs]
            out = (nat.output_shape([1, *shapes[0]]) if nat.arity == 1 else
                   nat.output_shape_n([[1, *s] for s in shapes]))
            em = _Emitter(self.onnx, self.opset, {f"h.{p}" for p in params})
            state = {f"h.{p}": a for p, (_, a) in params.items()}
            emit(_Ctx(em, layer, layer.get_config(), "h", [f"in{i}" for i in range(len(xs))],
                      "out", shapes, tuple(out)[1:], state))
        except (ValueError, TypeError, KeyError):
            return False
        if len(em.nodes) != 1 or em.nodes[0].op_type != node.op:
            return False
        e = em.nodes[0]
        if not _same_attrs(_parse_attrs(self.onnx, e), node.attrs):
            return False
        inits = {t.name: self.onnx.numpy_helper.to_array(t) for t in em.inits}
        ein, nin = list(e.input), list(node.inputs)
        while ein and not ein[-1]:
            ein.pop()
        while nin and not nin[-1]:
            nin.pop()
        if len(ein) != len(nin):
            return False
        pmap = {f"h.{p}": v for p, (v, _) in params.items()}
        for ie, iv in zip(ein, nin, strict=True):
            if ie in pmap:
                if iv != pmap[ie]:
                    return False
            elif ie in inits:
                v = self.vals.get(iv)
                if not isinstance(v, np.ndarray) or v.dtype == object or v.shape != inits[
                        ie].shape or not np.array_equal(v, inits[ie]):
                    return False
            elif not ie or not iv:
                return False
        return True

    # -- one node --------------------------------------------------------------------------------
    def convert(self, n: _Node) -> None:
        from .graph import GraphTensor

        args = [self.vals.get(i) if i else None for i in n.inputs]
        missing = [i for i, a in zip(n.inputs, args, strict=True) if i and a is None]
        if missing:
            raise self.fail(f"{n.where()}: input {missing[0]!r} is not defined before it")
        tensors = any(isinstance(a, GraphTensor) for a in args)
        if n.op == "Constant":
            self.vals[n.outputs[0]] = n.extra["value"]
            return
        if not tensors and n.op in _CONST_OPS and not n.op.startswith("cnnkit."):
            self.vals[n.outputs[0]] = self.fold(n, args)
            return
        if n.op == "Shape":
            x = self.tensor(n)
            n.extra["of_tensor"] = True
            self.vals[n.outputs[0]] = self.fold(n, [np.array([BATCH, *x.shape], dtype=object)])
            return
        conv = getattr(self, "op_" + n.op.replace(".", "_"), None)
        if conv is None:
            raise self.fail(f"{n.where()}: {n.op} on a tensor is supported only as part of a "
                            "recognised layer form (GELU, SiLU, Hardswish, MatMul + Add)")
        extra = [o for o in n.outputs[1:] if o and self.used(o)]
        if extra:
            raise self.fail(f"{n.where()}: its extra output {extra[0]!r} is used (only the "
                            "first output of an operator can be imported)")
        conv(n)

    def used(self, v: str) -> bool:
        return bool(self.graph.consumers.get(v)) or v in self.graph.outputs

    # -- constant folding (shapes) ---------------------------------------------------------------
    def fold(self, n: _Node, args: list[Any]) -> np.ndarray:
        out = self._fold(n, args)
        if isinstance(out, np.ndarray):
            return out
        if isinstance(out, np.generic):
            return np.asarray(out)
        return np.array(out, dtype=object)  # an element of a shape: the batch or a size

    def _fold(self, n: _Node, args: list[Any]) -> Any:
        op, a = n.op, n.attrs
        try:
            if op == "Identity":
                return args[0]
            if op == "Shape":  # of a constant here; of a tensor: convert() passes its shape
                s = args[0] if args[0].dtype == object and n.extra.get("of_tensor") else \
                    np.array(args[0].shape, dtype=np.int64)
                return s[slice(a.get("start", 0), a.get("end"))]
            if op == "Cast":
                if args[0].dtype == object:
                    return args[0]
                to = {1: np.float32, 6: np.int32, 7: np.int64, 11: np.float64}[a["to"]]
                return args[0].astype(to)
            if op == "Gather":
                return np.take(args[0], args[1].astype(np.int64), axis=a.get("axis", 0))
            if op in ("Unsqueeze", "Squeeze"):
                axes = a.get("axes") if len(args) < 2 or args[1] is None else list(args[1])
                x = args[0]
                if op == "Squeeze":
                    return np.squeeze(x, axis=None if axes is None else tuple(
                        int(v) for v in axes))
                out_rank = x.ndim + len(axes)
                for ax in sorted(int(v) % out_rank for v in axes):
                    x = np.expand_dims(x, ax)
                return x
            if op == "Concat":
                parts = [np.atleast_1d(x) for x in args]
                obj = any(x.dtype == object for x in parts)
                return np.concatenate([x.astype(object) if obj else x for x in parts],
                                      axis=a.get("axis", 0))
            if op == "Slice":
                x = args[0]
                starts, ends = args[1].astype(np.int64), args[2].astype(np.int64)
                axes = list(args[3]) if len(args) > 3 and args[3] is not None else list(
                    range(len(starts)))
                steps = list(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(
                    starts)
                sl = [slice(None)] * x.ndim
                for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
                    big = 1 << 62
                    sl[int(ax)] = slice(int(s), None if abs(int(e)) >= big else int(e), int(st))
                return x[tuple(sl)]
            if op == "Reshape":
                return np.reshape(args[0], [int(v) for v in args[1]])
            if op == "Transpose":
                return np.transpose(args[0], a.get("perm"))
            if op == "ConstantOfShape":
                v = n.extra.get("value", np.zeros(1, np.float32))
                return np.full([int(d) for d in args[0]], v.reshape(-1)[0], dtype=v.dtype)
            if op in ("Add", "Sub", "Mul", "Div"):
                x, y = args
                if op == "Div" and x.dtype != object and x.dtype.kind in "iu":
                    return x // y
                return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                        "Div": np.divide}[op](x, y)
        except (TypeError, ValueError, IndexError, KeyError) as e:
            raise self.fail(f"{n.where()}: cannot compute it from constants and shapes "
                            f"({e})") from None
        raise self.fail(f"{n.where()}: {op} on constants only is not supported")

    # -- layers ----------------------------------------------------------------------------------
    def _conv_pads(self, n: _Node, x: Any, k: list[int], s: list[int], d: list[int]
                   ) -> tuple[int, int]:
        auto = n.attrs.get("auto_pad", "NOTSET")
        if auto == "VALID":
            return (0, 0)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, kk, ss, dd in zip(x.shape[1:3], k, s, d, strict=True):
                out = -(-size // ss)
                total = max(0, (out - 1) * ss + (kk - 1) * dd + 1 - size)
                if total % 2:
                    raise self.fail(f"{n.where()}: auto_pad={auto} needs uneven padding "
                                    f"({total} in all) on a size-{size} axis; cnnkit pads "
                                    "symmetrically")
                pads.append(total // 2)
            return (pads[0], pads[1])
        p = list(n.attrs.get("pads", [0, 0, 0, 0]))
        if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
            raise self.fail(f"{n.where()}: pads={p} are not symmetric (cnnkit pads top and "
                            "bottom, left and right alike)")
        return (int(p[0]), int(p[1]))

    def _spatial(self, n: _Node, x: Any) -> tuple[list[int], list[int], list[int]]:
        if x.shape is None or len(x.shape) != 3:
            raise self.fail(f"{n.where()}: needs an (N, C, H, W) input, got per-sample shape "
                            f"{x.shape}")
        a = n.attrs
        k = [int(v) for v in a.get("kernel_shape", [])]
        s = [int(v) for v in a.get("strides", [1, 1])]
        d = [int(v) for v in a.get("dilations", [1, 1])]
        return k, s, d

    def op_Conv(self, n: _Node) -> None:
        x = self.tensor(n)
        w = self.numbers(n, 1, "weight")
        b = self.numbers(n, 2, "bias", optional=True)
        if w.ndim != 4:
            raise self.fail(f"{n.where()}: only 2-D convolutions (a 4-D weight), got weight "
                            f"shape {w.shape}")
        k, s, d = self._spatial(n, x)
        k = k or list(w.shape[2:])
        g = int(n.attrs.get("group", 1))
        pad = self._conv_pads(n, x, k, s, d)
        params = {"weight": (n.inputs[1], w)}
        if b is not None:
            params["bias"] = (n.inputs[2], b)
        cfg = dict(in_channels=int(w.shape[1]) * g, out_channels=int(w.shape[0]),
                   kernel_size=tuple(k), stride=tuple(s), padding=pad, dilation=tuple(d),
                   groups=g, bias=b is not None)
        if x.shape[0] != cfg["in_channels"]:
            raise self.fail(f"{n.where()}: weight {w.shape} with group={g} wants "
                            f"{cfg['in_channels']} input channels, the input has {x.shape[0]}")
        self.add_layer(n, "Conv2d", cfg, [x], params)

    def op_ConvTranspose(self, n: _Node) -> None:
        if "ConvTranspose2d" not in L.LAYER_TYPES:
            raise self.fail(f"{n.where()}: this cnnkit has no ConvTranspose2d layer")
        x = self.tensor(n)
        w = self.numbers(n, 1, "weight")
        b = self.numbers(n, 2, "bias", optional=True)
        if w.ndim != 4:
            raise self.fail(f"{n.where()}: only 2-D transposed convolutions, got weight "
                            f"shape {w.shape}")
        k, s, d = self._spatial(n, x)
        g = int(n.attrs.get("group", 1))
        pad = self._conv_pads(n, x, k or list(w.shape[2:]), s, d)
        params = {"weight": (n.inputs[1], w)}
        if b is not None:
            params["bias"] = (n.inputs[2], b)
        op = [int(v) for v in n.attrs.get("output_padding", [0, 0])]
        cfg = dict(in_channels=int(w.shape[0]), out_channels=int(w.shape[1]) * g,
                   kernel_size=tuple(k or w.shape[2:]), stride=tuple(s), padding=pad,
                   output_padding=tuple(op), groups=g, bias=b is not None, dilation=tuple(d))
        self.add_layer(n, "ConvTranspose2d", cfg, [x], params)

    def _pool(self, n: _Node, avg: bool) -> None:
        x = self.tensor(n)
        k, s, _ = self._spatial(n, x)
        if len(k) != 2:
            raise self.fail(f"{n.where()}: kernel_shape must be 2-D, got {k}")
        typ = "AvgPool2d" if avg else "MaxPool2d"
        extra = {"count_include_pad": bool(n.attrs.get("count_include_pad", 0))} if avg else {}
        p = list(n.attrs.get("pads", [0, 0, 0, 0]))
        if n.attrs.get("auto_pad", "NOTSET") == "NOTSET" and len(p) == 4 and (
                p[0] != p[2] or p[1] != p[3]):
            # uneven pads: cnnkit's ceil mode as export writes it (a longer or shorter tail)
            alts = [dict(kernel_size=tuple(k), stride=tuple(s), padding=(p[0], p[1]),
                         ceil_mode=ceil, **extra) for ceil in (True, False)]
            self.add_layer(n, typ, None, [x], alternatives=alts)
            return
        pad = self._conv_pads(n, x, k, s, [1, 1])
        cfg: dict[str, Any] = dict(kernel_size=tuple(k), stride=tuple(s), padding=pad,
                                   ceil_mode=bool(n.attrs.get("ceil_mode", 0)), **extra)
        self.add_layer(n, typ, cfg, [x])

    def op_MaxPool(self, n: _Node) -> None:
        self._pool(n, avg=False)

    def op_AveragePool(self, n: _Node) -> None:
        self._pool(n, avg=True)

    def op_GlobalAveragePool(self, n: _Node) -> None:
        x = self.tensor(n)
        self._spatial(n, x)
        self.add_layer(n, "AdaptiveAvgPool2d", {"output_size": 1}, [x])

    def op_GlobalMaxPool(self, n: _Node) -> None:
        x = self.tensor(n)
        self._spatial(n, x)
        self.add_layer(n, "AdaptiveMaxPool2d", {"output_size": 1}, [x])

    def _act(self, n: _Node, typ: str, **cfg: Any) -> None:
        self.add_layer(n, typ, cfg, [self.tensor(n)])

    def op_Relu(self, n: _Node) -> None:
        self._act(n, "ReLU")

    def op_LeakyRelu(self, n: _Node) -> None:
        self._act(n, "LeakyReLU", negative_slope=_f32(n.attrs.get("alpha", 0.01)))

    def op_Sigmoid(self, n: _Node) -> None:
        self._act(n, "Sigmoid")

    def op_Tanh(self, n: _Node) -> None:
        self._act(n, "Tanh")

    def op_Elu(self, n: _Node) -> None:
        self._act(n, "ELU", alpha=_f32(n.attrs.get("alpha", 1.0)))

    def op_Gelu(self, n: _Node) -> None:
        self._act(n, "GELU", approximate=n.attrs.get("approximate", "none"))

    def op_HardSwish(self, n: _Node) -> None:
        self._act(n, "Hardswish")

    def op_cnnkit_GELU(self, n: _Node) -> None:
        self._act(n, "GELU", **n.extra["config"])

    def op_cnnkit_SiLU(self, n: _Node) -> None:
        self._act(n, "SiLU")

    def op_cnnkit_Hardswish(self, n: _Node) -> None:
        self._act(n, "Hardswish")

    def op_Clip(self, n: _Node) -> None:
        lo = self.numbers(n, 1, "min", optional=True)
        hi = self.numbers(n, 2, "max", optional=True)
        lo = None if lo is None else float(lo.reshape(-1)[0])
        hi = None if hi is None else float(hi.reshape(-1)[0])
        if lo == 0.0 and hi == 6.0:
            self._act(n, "ReLU6")
        elif lo == 0.0 and (hi is None or hi == math.inf):
            self._act(n, "ReLU")
        else:
            raise self.fail(f"{n.where()}: Clip(min={lo}, max={hi}) has no cnnkit layer "
                            "(supported: min 0 with max 6 (ReLU6) or none (ReLU))")

    def op_Softmax(self, n: _Node) -> None:
        x = self.tensor(n)
        rank = len(x.shape) + 1
        axis = int(n.attrs.get("axis", 1 if self.opset < 13 else -1)) % rank
        if self.opset < 13 and any(d != 1 for d in (1, *x.shape)[axis + 1:]):
            raise self.fail(f"{n.where()}: opset-{self.opset} Softmax with axis={axis} "
                            f"normalises over all dimensions from {axis} on; cnnkit's Softmax "
                            "takes one")
        self.add_layer(n, "Softmax", {"dim": axis}, [x])

    def _linear(self, n: _Node, x: Any, w: np.ndarray, wname: str,
                b: np.ndarray | None, bname: str) -> None:
        if x.shape is None or len(x.shape) != 1:
            raise self.fail(f"{n.where()}: a Linear layer needs an (N, features) input, got "
                            f"per-sample shape {x.shape}")
        out, inp = w.shape
        params = {"weight": (wname, w)}
        if b is not None:
            b = np.broadcast_to(b.reshape(-1) if b.size == out else b.reshape(-1)[:1], (out,))
            params["bias"] = (bname, b)
        self.add_layer(n, "Linear", dict(in_features=int(inp), out_features=int(out),
                                         bias=b is not None), [x], params)

    def op_Gemm(self, n: _Node) -> None:
        x = self.tensor(n)
        w = self.numbers(n, 1, "weight (B)")
        c = self.numbers(n, 2, "bias (C)", optional=True)
        if w.ndim != 2:
            raise self.fail(f"{n.where()}: B must be 2-D, got {w.shape}")
        if not n.attrs.get("transB", 0):
            w = w.T
        alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
        if alpha != 1.0:
            w = w * np.float32(alpha)
        if c is not None:
            if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
                raise self.fail(f"{n.where()}: C of shape {c.shape} is not a bias of "
                                f"{w.shape[0]} outputs")
            if beta != 1.0:
                c = c * np.float32(beta)
        self._linear(n, x, w, n.inputs[1], c, n.inputs[2] if c is not None else "")

    def op_MatMul(self, n: _Node) -> None:
        x = self.tensor(n)
        w = self.numbers(n, 1, "weight")
        if w.ndim != 2:
            raise self.fail(f"{n.where()}: only x @ W with a constant 2-D W, got {w.shape}")
        self._linear(n, x, w.T, n.inputs[1], None, "")

    def op_cnnkit_Linear(self, n: _Node) -> None:
        (wn, w), (bn, b) = n.extra["weight"], n.extra["bias"]
        self._linear(n, self.tensor(n), w, wn, b, bn)

    def op_Flatten(self, n: _Node) -> None:
        x = self.tensor(n)
        axis = int(n.attrs.get("axis", 1)) % (len(x.shape) + 1)
        if axis != 1:
            raise self.fail(f"{n.where()}: Flatten with axis={axis} (cnnkit flattens all but "
                            "the batch dimension: axis 1)")
        self.add_layer(n, "Flatten", {}, [x])

    def op_Reshape(self, n: _Node) -> None:
        x = self.tensor(n)
        target = self.const(n, 1, "shape")
        dims = list((1, *x.shape))
        total = math.prod(x.shape)
        out: list[Any] = []
        for i, t in enumerate(target.reshape(-1).tolist()):
            if t is BATCH or (i == 0 and t == self.static_batch):
                out.append("N")
            elif t == 0 and not n.attrs.get("allowzero", 0):
                out.append("N" if i == 0 else (dims[i] if i < len(dims) else None))
            else:
                out.append(int(t))
        ok = len(out) == 2 and out[0] in ("N", -1) and out[1] in (-1, total)
        ok = ok and not (out[0] == -1 and out[1] == -1)
        if not ok:
            raise self.fail(f"{n.where()}: Reshape to {out} of per-sample shape {x.shape} is "
                            "not a flatten to (N, features), the only reshape cnnkit has")
        if len(x.shape) == 1:
            self.add_layer(n, "Identity", {}, [x])
        else:
            self.add_layer(n, "Flatten", {}, [x])

    def op_Dropout(self, n: _Node) -> None:
        x = self.tensor(n)
        ratio = n.attrs.get("ratio", 0.5)
        r = self.numbers(n, 1, "ratio", optional=True)
        if r is not None:
            ratio = float(r.reshape(-1)[0])
        t = self.numbers(n, 2, "training_mode", optional=True)
        if t is not None and bool(t.reshape(-1)[0]):
            raise self.fail(f"{n.where()}: training_mode=True (an inference graph drops "
                            "nothing)")
        self.add_layer(n, "Dropout", {"p": _f32(ratio)}, [x])

    def op_BatchNormalization(self, n: _Node) -> None:
        x = self.tensor(n)
        scale, bias = self.numbers(n, 1, "scale"), self.numbers(n, 2, "B")
        mean, var = self.numbers(n, 3, "mean"), self.numbers(n, 4, "var")
        c = x.shape[0]
        if any(t.shape != (c,) for t in (scale, bias, mean, var)):
            raise self.fail(f"{n.where()}: scale, B, mean and var must all be ({c},)")
        names = n.inputs[1:5]
        affine = not (np.all(scale == 1) and np.all(bias == 0)
                      and not names[0].endswith(".weight") and not names[1].endswith(".bias"))
        params = {"running_mean": (names[2], mean), "running_var": (names[3], var)}
        if affine:
            params = {"weight": (names[0], scale), "bias": (names[1], bias), **params}
        momentum = round(1.0 - float(np.float32(n.attrs.get("momentum", 0.9))), 7)
        typ = "BatchNorm2d" if len(x.shape) == 3 else "BatchNorm1d"
        self.add_layer(n, typ, dict(num_features=c, eps=_f32(n.attrs.get("epsilon", 1e-5)),
                                    momentum=momentum, affine=affine), [x], params)

    def op_Identity(self, n: _Node) -> None:
        self.add_layer(n, "Identity", {}, [self.tensor(n)])

    def op_Add(self, n: _Node) -> None:
        self.op_Sum(n)

    def op_Sum(self, n: _Node) -> None:
        xs = [self.tensor(n, i) for i in range(len(n.inputs))]
        if len(xs) < 2:
            self.add_layer(n, "Identity", {}, xs)
            return
        if len({x.shape for x in xs}) != 1:
            raise self.fail(f"{n.where()}: inputs of shapes {[x.shape for x in xs]}: cnnkit "
                            "adds tensors of one shape (no broadcasting)")
        self.add_layer(n, "Add", {}, xs)

    def op_Concat(self, n: _Node) -> None:
        xs = [self.tensor(n, i) for i in range(len(n.inputs))]
        rank = len(xs[0].shape) + 1
        axis = int(n.attrs.get("axis", 1)) % rank
        if axis == 0:
            raise self.fail(f"{n.where()}: concatenation along the batch axis")
        self.add_layer(n, "Concat", {"dim": axis}, xs)

    def op_Resize(self, n: _Node) -> None:
        x = self.tensor(n)
        self._spatial(n, x)
        scales = self.numbers(n, 2, "scales", optional=True)
        sizes = self.const(n, 3, "sizes", optional=True)
        if scales is not None and scales.size == 0:
            scales = None
        if sizes is not None and sizes.size == 0:
            sizes = None
        axes = n.attrs.get("axes")
        if (scales is None) == (sizes is None):
            raise self.fail(f"{n.where()}: give exactly one of scales and sizes")
        if scales is not None:
            s = [float(v) for v in scales.reshape(-1)]
            if axes is None:
                if len(s) != 4 or s[0] != 1 or s[1] != 1:
                    raise self.fail(f"{n.where()}: scales {s}: only the spatial axes scale")
                s = s[2:]
            if s[0] != s[1]:
                raise self.fail(f"{n.where()}: scales {s} differ between height and width; "
                                "cnnkit's Upsample has one scale_factor (or give sizes)")
            self.add_layer(n, "Upsample", {"scale_factor": _f32(s[0]), **self._resize_mode(n)},
                           [x])
            return
        z = list(sizes.reshape(-1))
        if axes is None:
            if len(z) != 4 or not (z[0] is BATCH or z[0] == self.static_batch) or \
                    z[1] != x.shape[0]:
                raise self.fail(f"{n.where()}: sizes {z}: only the spatial axes resize")
            z = z[2:]
        if not all(isinstance(v, (int, np.integer)) and v > 0 for v in z):
            raise self.fail(f"{n.where()}: sizes {z} are not positive numbers")
        self.add_layer(n, "Upsample", {"size": (int(z[0]), int(z[1])), **self._resize_mode(n)},
                       [x])

    def _resize_mode(self, n: _Node) -> dict[str, Any]:
        if n.attrs.get("mode", "nearest") == "nearest":
            return {}
        if "mode" not in {a["name"] for a in L.schemas()["Upsample"]["args"]} or \
                "bilinear" not in next(a["choices"] for a in L.schemas()["Upsample"]["args"]
                                       if a["name"] == "mode"):
            raise self.fail(f"{n.where()}: this cnnkit's Upsample has no bilinear mode")
        ac = n.attrs.get("coordinate_transformation_mode") == "align_corners"
        return {"mode": "bilinear", "align_corners": True if ac else None}

    # -- the whole graph ---------------------------------------------------------------------
    def build(self, name: str | None) -> Any:
        from .graph import Input
        from .model import Model

        onnx, g = self.onnx, self.proto.graph
        self.check_header()
        consts: dict[str, np.ndarray] = {}
        for t in g.initializer:
            consts[t.name] = _tensor(onnx, t, self.base_dir)
        nodes = []
        for nd in g.node:
            n = _Node(nd.op_type, list(nd.input), list(nd.output), nd.name,
                      _parse_attrs(onnx, nd), nd.doc_string)
            for k in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                if n.op == "Constant" and k in n.attrs:
                    v = n.attrs[k]
                    n.extra["value"] = (_tensor(onnx, v, self.base_dir) if k == "value" else
                                        np.asarray(v, np.float32 if "float" in k else np.int64))
                    n.attrs["value"] = True
            if n.op == "ConstantOfShape" and "value" in n.attrs:
                n.extra["value"] = _tensor(onnx, n.attrs["value"], self.base_dir)
            nodes.append(n)
        problems = [p for n in nodes for p in _attr_problems(n)]
        if problems:
            raise self.fail("cannot import: unsupported attributes: " + "; ".join(problems))
        real_inputs = [i for i in g.input if i.name not in consts]
        if len(real_inputs) != 1 or len(g.output) != 1:
            raise self.fail(f"cnnkit models have one input and one output, this graph has "
                            f"{len(real_inputs)} inputs and {len(g.output)} outputs")
        vi = real_inputs[0]
        tt = vi.type.tensor_type
        if vi.type.WhichOneof("value") != "tensor_type" or tt.elem_type != onnx.TensorProto.FLOAT:
            raise self.fail(f"input {vi.name!r} must be a float32 tensor")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if not 2 <= len(dims) <= 4 or any(d is None or d < 1 for d in dims[1:]):
            raise self.fail(f"input {vi.name!r} must be (N, C, H, W), (N, C, L) or "
                            f"(N, features) with known sizes after the batch, got "
                            f"{['?' if d is None else d for d in dims]}")
        inp = Input(tuple(int(d) for d in dims[1:]))
        # a file with a fixed batch size (exported without a dynamic axis) holds it in its
        # shape constants: there it stands for the batch, which cnnkit keeps free
        self.static_batch = dims[0]
        for k, v in consts.items():
            self.vals[k] = v
        self.vals[vi.name] = inp
        self.graph = _Graph(nodes, consts, {o.name for o in g.output})
        for n in _fuse(self.graph):
            self.convert(n)
        out = self.vals.get(g.output[0].name)
        from .graph import GraphTensor

        if not isinstance(out, GraphTensor) or out is inp:
            raise self.fail("the graph's output is not computed by any layer from its input")
        model = Model(inp, out, name=name)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in self.state.items() if k in own})
        return model


_ATTR_DEFAULTS = {"ceil_mode": 0, "count_include_pad": 0, "storage_order": 0,
                  "auto_pad": "NOTSET", "group": 1, "dilations": [1, 1], "strides": [1, 1],
                  "pads": [0, 0, 0, 0]}


def _same_attrs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Attributes equal, defaults filled in, floats compared as the float32 ONNX stores."""
    keys = set(a) | set(b)
    for k in keys:
        va, vb = a.get(k, _ATTR_DEFAULTS.get(k)), b.get(k, _ATTR_DEFAULTS.get(k))
        if isinstance(va, float) or isinstance(vb, float):
            if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)) or \
                    np.float32(va) != np.float32(vb):
                return False
        elif isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            if [np.float32(v) if isinstance(v, float) else v for v in va] != [
                    np.float32(v) if isinstance(v, float) else v for v in vb]:
                return False
        elif va != vb:
            return False
    return True


def _hint(doc: str) -> tuple[str, dict[str, Any]] | None:
    """(type, config) from a node's doc_string "cnnkit:<Type> {json}", or None. Data only: the
    config is checked by the layer schema and taken only when it exports to the node."""
    if not doc.startswith(_DOC) or len(doc) > 4096 or " " not in doc:
        return None
    typ, _, text = doc[len(_DOC):].partition(" ")
    try:
        cfg = json.loads(text)
    except ValueError:
        return None
    return (typ, cfg) if isinstance(cfg, dict) and typ in L.LAYER_TYPES else None


def _f32(v: float) -> float:
    """A float32 attribute as the shortest decimal that reads back as it (0.01, not
    0.009999999776)."""
    return float(str(np.float32(v)))


def from_proto(proto: Any, base_dir: str | None = None, *, name: str | None = None,
               where: str = "onnx") -> Any:
    """A cnnkit :class:`Model` from an ``onnx.ModelProto`` (external tensor data, if any, read
    from inside `base_dir` only)."""
    onnx = _onnx()
    imp = _Importer(onnx, proto, base_dir, where)
    gname = proto.graph.name
    if name is None and _NAME_RE.match(gname or "") and "." not in gname:
        name = gname
    with _seeding._lock:  # building the layers does not consume the global init seed stream
        saved = dict(_seeding._state)
    try:
        return imp.build(name)
    finally:
        with _seeding._lock:
            _seeding._state.update(saved)


def load(path: str | os.PathLike, *, name: str | None = None) -> Any:
    """A trainable cnnkit :class:`Model` from an ONNX file (ours or PyTorch's
    ``torch.onnx.export``): parameters named by the initializers (the state_dict keys), or by
    the nodes' module scopes. OnnxImportError lists the operators, opsets or attributes it
    cannot build faithfully."""
    onnx = _onnx()
    p = os.fspath(path)
    data = _files.read_regular(p, MAX_MODEL_BYTES, lambda n: OnnxImportError(
        f"{p}: {n} bytes, above protobuf's 2 GiB limit for an ONNX file"))
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(bytes(data))
    except Exception as e:  # protobuf's DecodeError and friends
        raise OnnxImportError(f"{p}: not an ONNX model file ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    return from_proto(proto, os.path.dirname(os.path.abspath(p)), name=name, where=p)
