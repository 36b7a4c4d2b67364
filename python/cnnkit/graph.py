"""Graph models: the Keras functional API over cnnkit layers, run by the same native Net as
Sequential (the whole graph is one fused train step in C++).

>>> inp = ck.Input((3, 32, 32))
>>> x = ck.ReLU()(ck.BatchNorm2d(16)(ck.Conv2d(3, 16, 3, padding=1, bias=False)(inp)))
>>> y = ck.Conv2d(16, 16, 3, padding=1)(x)
>>> x = ck.Add()([x, y])
>>> out = ck.Linear(16, 10)(ck.Flatten()(ck.AdaptiveAvgPool2d(1)(x)))
>>> model = ck.Model(inp, out)

Calling a layer (or a Sequential, or a Residual) on a :class:`GraphTensor` records a node
instead of computing. Parameter names are dotted module paths as in PyTorch: a layer's
``name`` (``"layer1.0.conv1"``), a container's name and the position inside it
(``"features.3.weight"``), or, for unnamed layers, the type in lower case with a counter
(``"conv2d"``, ``"conv2d_1"``), as Keras names them.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from .layers import Layer

__all__ = ["GraphTensor", "Input", "Residual", "trace", "compile_graph"]


class GraphTensor:
    """A symbolic value of a graph: the model's input, or the output of a layer applied to
    other GraphTensors. ``shape`` is the per-sample shape when known (else None)."""

    __slots__ = ("shape", "layer", "inputs", "path", "within")

    def __init__(self, shape: tuple[int, ...] | None, layer: Layer | None = None,
                 inputs: tuple[GraphTensor, ...] = (), path: tuple[Any, ...] = (),
                 within: tuple[Any, ...] = ()) -> None:
        self.shape = shape
        self.layer = layer
        self.inputs = inputs
        self.path = path  # module path parts: strings, or containers named when compiled
        self.within = within  # the Sequentials/Models whose call recorded this node

    def __repr__(self) -> str:
        what = "Input" if self.layer is None else self.layer.type
        return f"GraphTensor({what}, shape={self.shape})"


def Input(shape: tuple[int, ...] | list[int]) -> GraphTensor:  # noqa: N802 (Keras' name)
    """The input of a graph model: per-sample shape (C, H, W) or (features,)."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"Input: shape must be a tuple of positive ints, got {shape!r}")
    return GraphTensor(tuple(int(d) for d in shape))


def is_symbolic(x: Any) -> bool:
    return isinstance(x, GraphTensor) or (
        isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(e, GraphTensor) for e in x))


def _node(layer: Layer, xs: tuple[GraphTensor, ...], path: tuple[Any, ...]) -> GraphTensor:
    shape = None
    if all(x.shape is not None for x in xs):
        try:
            if layer._native.arity == 1:
                if len(xs) != 1:
                    raise ValueError(f"{layer.type}: takes one input, got {len(xs)}")
                shape = tuple(layer._native.output_shape([1, *xs[0].shape]))[1:]
            else:
                shape = tuple(layer._native.output_shape_n([[1, *x.shape] for x in xs]))[1:]
        except ValueError as e:
            where = ".".join(p for p in path if isinstance(p, str))
            raise ValueError(f"{e}{f' (in {where})' if where else ''}") from None
    elif layer._native.arity == 1 and len(xs) != 1:
        raise ValueError(f"{layer.type}: takes one input, got {len(xs)}")
    return GraphTensor(shape, layer, xs, path, tuple(_enclosing()))


_TRACING = threading.local()  # the containers being traced, outermost first


def _enclosing() -> list[Any]:
    if not hasattr(_TRACING, "stack"):
        _TRACING.stack = []
    return _TRACING.stack


def trace(module: Any, x: Any, path: tuple[Any, ...]) -> GraphTensor:
    """Apply `module` (a layer, a Sequential or a Residual) to GraphTensor(s) `x`, recording
    its nodes under the module path `path` (its full path, its own name included)."""
    from .model import Sequential

    xs = tuple(x) if isinstance(x, (list, tuple)) else (x,)
    if isinstance(module, Layer):
        return _node(module, xs, path)
    if isinstance(module, (Sequential, Residual)):
        stack = _enclosing()
        stack.append(module)
        try:
            return module._trace(xs, path)
        finally:
            stack.pop()
    raise ValueError(f"cannot call {module!r:.60} in a graph (expected a cnnkit layer, "
                     "Sequential or Residual)")


def own_path(module: Any) -> tuple[Any, ...]:
    """The path of a module called on its own in a graph: its name, or itself (auto-named)."""
    return (module.name,) if getattr(module, "name", None) is not None else (module,)


class Residual:
    """``block(x) + shortcut(x)``: a residual connection (He et al. 2016). `block` and
    `shortcut` are layers or Sequentials; ``shortcut=None`` is the identity. Use it inside a
    Sequential or call it on a GraphTensor; parameter names nest as ``<name>.block.<...>`` and
    ``<name>.shortcut.<...>``."""

    def __init__(self, block: Any, shortcut: Any = None, *, name: str | None = None) -> None:
        from .model import Sequential

        for what, m in (("block", block), ("shortcut", shortcut)):
            if m is not None and not isinstance(m, (Layer, Sequential, Residual)):
                raise ValueError(f"Residual: {what} must be a cnnkit layer or Sequential, "
                                 f"got {m!r:.60}")
        if block is None:
            raise ValueError("Residual: block is required")
        self.block, self.shortcut, self.name = block, shortcut, name
        from .layers import Add

        self._add = Add()

    @property
    def type(self) -> str:
        return "Residual"

    def _trace(self, xs: tuple[GraphTensor, ...], path: tuple[Any, ...]) -> GraphTensor:
        if len(xs) != 1:
            raise ValueError(f"Residual: takes one input, got {len(xs)}")
        b = trace(self.block, xs[0], path + ("block",))
        s = xs[0] if self.shortcut is None else trace(self.shortcut, xs[0], path + ("shortcut",))
        return _node(self._add, (b, s), path + ("add",))

    def __call__(self, x: Any) -> Any:
        if not is_symbolic(x):
            raise ValueError("Residual: call it on a GraphTensor (ck.Input) or put it in a "
                             "Sequential")
        return trace(self, x, own_path(self))

    def modules(self) -> list[Any]:
        return [m for m in (self.block, self.shortcut) if m is not None]

    def __repr__(self) -> str:
        return f"Residual(block={self.block!r}, shortcut={self.shortcut!r})"


def containers(out: GraphTensor) -> list[Any]:
    """The Sequentials and Models called to build the graph ending at `out`: the graph takes
    their layers over (a layer of another model, used on its own, stays refused)."""
    found: dict[int, Any] = {}
    seen: set[int] = set()
    stack = [out]
    while stack:
        t = stack.pop()
        if id(t) in seen or not isinstance(t, GraphTensor):
            continue
        seen.add(id(t))
        for c in t.within:
            found[id(c)] = c
        stack.extend(t.inputs)
    return list(found.values())


def compile_graph(inp: GraphTensor, out: GraphTensor, where: str = "Model"
                  ) -> tuple[list[Layer], list[list[int]], list[str]]:
    """The nodes between `inp` and `out` in topological order (out last): their layers, the
    value ids each reads (0 is the input, node i computes value i + 1) and their names."""
    if not isinstance(inp, GraphTensor) or inp.layer is not None:
        raise ValueError(f"{where}: inputs must be the ck.Input(...) the graph starts from")
    if not isinstance(out, GraphTensor):
        raise ValueError(f"{where}: outputs must be a GraphTensor (a layer applied to the input)")
    if out is inp:
        raise ValueError(f"{where}: the graph has no layers")
    order: list[GraphTensor] = []
    state: dict[int, int] = {}  # id -> 1 visiting, 2 done
    stack: list[tuple[GraphTensor, int]] = [(out, 0)]
    while stack:  # iterative post-order DFS (deep ResNets would overflow recursion)
        t, k = stack.pop()
        if k == 0:
            if state.get(id(t)) == 2:
                continue
            if t.layer is None:
                if t is not inp:
                    raise ValueError(f"{where}: the output depends on an input that is not the "
                                     "model's input")
                state[id(t)] = 2
                continue
            state[id(t)] = 1
        if k < len(t.inputs):
            stack.append((t, k + 1))
            stack.append((t.inputs[k], 0))
        else:
            state[id(t)] = 2
            order.append(t)
    ids = {id(inp): 0}
    layers: list[Layer] = []
    inputs: list[list[int]] = []
    seen: dict[int, int] = {}
    for i, t in enumerate(order):
        if id(t.layer) in seen:
            raise ValueError(
                f"{where}: the same {t.layer.type} object is applied twice (nodes "
                f"{seen[id(t.layer)]} and {i}); weights are not shared between nodes: create a "
                "new layer")
        seen[id(t.layer)] = i
        ids[id(t)] = i + 1
        layers.append(t.layer)
        inputs.append([ids[id(x)] for x in t.inputs])
    return layers, inputs, _names(order)


def _names(order: list[GraphTensor]) -> list[str]:
    """Dotted names: explicit path parts as given, containers and unnamed layers auto-named
    per type (Keras style: "conv2d", "conv2d_1", ...), unique."""
    auto: dict[int, str] = {}
    counts: dict[str, int] = {}

    def name_of(obj: Any) -> str:
        if isinstance(obj, str):
            return obj
        if id(obj) not in auto:
            base = getattr(obj, "name", None)
            if base is None:
                base = obj.type.lower()
                k = counts.get(base, 0)
                counts[base] = k + 1
                base = base if k == 0 else f"{base}_{k}"
            auto[id(obj)] = base
        return auto[id(obj)]

    names = [".".join(name_of(p) for p in t.path) for t in order]
    dup = {n for n, c in Counter(names).items() if c > 1}
    if dup:
        raise ValueError(f"Model: layer names must be unique, got {sorted(dup)[:5]} more than once")
    return names
