"""Sequential: a stack of layers run by the native Net (forward, backward, state_dict).

Parameter names follow PyTorch's ``nn.Sequential`` ("0.weight", "0.bias", "3.running_mean"),
so a PyTorch state_dict of the same architecture loads as is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from . import _core
from ._checks import parse_device, positive_int, to_numpy
from .data import as_input
from .layers import Layer

__all__ = ["Sequential", "Model"]


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
    """Row-wise softmax of logits (N, C), stable (max subtracted), computed in float64
    (natively; a row holding NaN or +inf comes out NaN)."""
    return _core.softmax_rows(z)


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
    >>> model = Sequential(Conv2d(1, 6, 5), ReLU(), ...)      # the same, as PyTorch writes it
    >>> logits = model.forward(x)       # x: (N, 1, 28, 28) or (N, 28, 28); uint8 -> [0, 1]
    >>> proba = model.predict(x)        # (N, 10) class probabilities (softmax of the logits)

    Each layer object sits at one position: the same object twice is refused (create a new
    layer; weights are not shared between positions).
    """

    def __init__(self, *layers: Any, name: str | None = None, _solo: bool = False) -> None:
        # Sequential([a, b, c]) as Keras, or Sequential(a, b, c) as PyTorch
        if len(layers) == 1 and not isinstance(layers[0], (Layer, Sequential)):
            layers = layers[0]
            if not hasattr(layers, "__iter__") or isinstance(layers, (str, bytes, dict)):
                raise ValueError(
                    f"Sequential: layers must be an iterable of cnnkit layers, got "
                    f"{layers!r:.80}")
        self._setup(name, _solo)
        self._append(list(layers), "Sequential")
        self._build()

    @property
    def type(self) -> str:
        """"Sequential" or "Model" (unnamed containers in a graph are auto-named from it)."""
        return type(self).__name__

    def _setup(self, name: str | None, solo: bool = False) -> None:
        if name is not None and (not isinstance(name, str) or not all(name.split("."))):
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string, got "
                             f"{name!r}")
        self.name = name
        self.layers: list[Any] = []  # Sequential: its items; Model: its nodes' layers
        self._nodes: list[Layer] = []  # the leaf layers, in node order
        self._names: list[str] = []  # their dotted names (parameter key prefixes)
        self._inputs: list[list[int]] = []  # the values each node reads
        self._net = None
        self._solo = solo
        self._device = "cpu"
        self._input_shape: tuple[int, ...] | None = None
        self._spec: tuple[int, int | None] | None = None
        self._loss: str | None = None  # set by a Trainer: decides what predict returns
        self._fitting: Any = None  # the Trainer whose fit is running on this model

    # -- structure ----------------------------------------------------------------------
    def _append(self, new: list[Any], where: str, absorb: tuple[Any, ...] = ()) -> None:
        """Check every new layer first (nothing is taken over on error), then own them.
        Items are layers, or containers (a nested Sequential, a Residual). Layers of the
        models in `absorb` (called whole inside this graph) are taken over."""
        from .graph import Residual

        at = {id(layer): i for i, item in enumerate(self.layers) for layer in _leaves(item)}
        for k, item in enumerate(new):
            i = len(self.layers) + k
            if isinstance(item, (Sequential, Residual)) and item is not self:
                for layer in _leaves(item):
                    if id(layer) in at:
                        raise ValueError(f"{where}: layer {i} contains a {layer.type} object "
                                         f"that is already at position {at[id(layer)]}")
                    at[id(layer)] = i
                continue
            layer = item
            if not isinstance(layer, Layer):
                raise ValueError(f"{where}: layer {i} is not a cnnkit layer: {layer!r}")
            if id(layer) in at:
                raise ValueError(
                    f"{where}: layer {i} is the same {layer.type} object as layer "
                    f"{at[id(layer)]}; a layer object can sit at one position only (weights are "
                    f"not shared between positions). Create a new layer for position {i}, "
                    f"e.g. {layer!r}"
                )
            if layer._owner is not None and layer._owner is not self \
                    and not any(layer._owner is c for c in absorb):
                raise ValueError(f"{where}: {layer!r} already belongs to another model")
            at[id(layer)] = i
        for item in new:
            if not self._solo:
                for layer in _leaves(item):
                    if layer._solo is not None:
                        layer._solo = None
                    layer._owner = self
            self.layers.append(item)

    def _compile(self) -> None:
        """The nodes: a chain of positions, containers traced into their nodes ("3.0.weight",
        "2.block.1.weight")."""
        from .graph import GraphTensor, compile_graph

        if all(isinstance(m, Layer) for m in self.layers):
            self._nodes = list(self.layers)
            self._names = [str(i) for i in range(len(self.layers))]
            self._inputs = [[i] for i in range(len(self.layers))]
            return
        inp = GraphTensor(None)
        out = self._trace((inp,), ())
        self._nodes, self._inputs, self._names = compile_graph(inp, out, "Sequential")

    def _trace(self, xs: tuple[Any, ...], path: tuple[Any, ...]) -> Any:
        from .graph import trace

        if len(xs) != 1:
            raise ValueError(f"Sequential: takes one input, got {len(xs)}")
        x = xs[0]
        for i, m in enumerate(self.layers):
            x = trace(m, x, path + (str(i),))
        return x

    def _build(self) -> None:
        # Binding copies each layer's current values into the new flat buffers.
        self._compile()
        natives = [layer._native for layer in self._nodes]
        plain = all(isinstance(m, Layer) for m in self.layers) and type(self) is Sequential
        if plain or not natives:  # positions as names, "Conv2d (layer 3)" in errors
            self._net = _core.Net(natives)
        else:
            self._net = _core.Net(natives, self._inputs, self._names, len(natives))
        if self._device != "cpu":
            self._net.to(self._device)
        self._spec = _input_spec(self._nodes)

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

    def __call__(self, x: Any, training: bool = False) -> Any:
        """forward(x, training) on arrays; on a ck.Input / GraphTensor, this model's layers
        as nodes of a graph model (parameter names nest under its name)."""
        from .graph import is_symbolic, own_path, trace

        if is_symbolic(x):
            return trace(self, x, own_path(self))
        return self.forward(x, training=training)

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
        if len(xa) <= batch_size:  # one call (serving one request): nothing to join
            return _predictions(self._net.forward(xa, False, True), self._loss)
        outs = [
            self._net.forward(xa[i : i + batch_size], False, True)
            for i in range(0, len(xa), batch_size)
        ]
        return _predictions(np.concatenate(outs, axis=0), self._loss)

    # -- parameters ---------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of all parameters and buffers, in PyTorch's naming and order."""
        d = self._net.state_dict()
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for prefix, layer in zip(self._names, self._nodes, strict=True):
            for name in list(layer._native.param_names()) + list(layer._native.buffer_names()):
                out[f"{prefix}.{name}"] = d[f"{prefix}.{name}"]
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Load parameters/buffers by name (numpy arrays or PyTorch tensors).

        PyTorch's BatchNorm 'num_batches_tracked' entries are accepted and ignored. With
        strict=True, missing or unexpected keys raise ValueError; nothing is changed then.
        """
        for k, a in self._check_state_dict(state, strict).items():  # all checked first
            self._net.set_tensor(k, a)

    def _check_state_dict(self, state: Any, strict: bool = True) -> dict[str, np.ndarray]:
        """The arrays load_state_dict would set (float32, contiguous), after every check."""
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
        return arrays

    def grad_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of the accumulated parameter gradients."""
        g = self._net.grad_dict()
        return OrderedDict((k, g[k]) for k in self._net.param_names())

    def zero_grad(self) -> None:
        self._net.zero_grad()

    def num_parameters(self) -> int:
        return int(self._net.num_params)

    def output_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Output shape of every node (layer) for a per-sample input shape (C, H, W)."""
        shapes = self._net.shapes([1, *input_shape])
        return [tuple(s[1:]) for s in shapes[1:]]

    def summary(self, input_shape: tuple[int, ...] | None = None, print_fn=print) -> str:
        """Keras-style table of layers (their inputs, for graphs), output shapes and parameter
        counts, and the activation memory the forward plans (bytes per batch of 1 in eval)."""
        input_shape = input_shape or self._input_shape
        shapes = self.output_shapes(input_shape) if input_shape else [None] * len(self._nodes)
        sd = self._net.state_dict()
        graph = not self._net.is_chain
        rows = []
        for i, (layer, prefix, shp) in enumerate(
                zip(self._nodes, self._names, shapes, strict=True)):
            n = sum(int(sd[f"{prefix}.{p}"].size) for p in layer._native.param_names())
            out = "(None, " + ", ".join(map(str, shp)) + ")" if shp is not None else "?"
            ins = ", ".join("input" if v == 0 else self._names[v - 1] for v in self._inputs[i])
            rows.append((f"{prefix} ({layer.type})", out, n, ins))
        w0 = max([24] + [len(r[0]) + 2 for r in rows])
        w1 = max([22] + [len(r[1]) + 2 for r in rows])
        w3 = max([12] + [len(r[3]) + 2 for r in rows]) if graph else 0
        line = "=" * (w0 + w1 + 12 + w3)
        head = f"{'Layer (type)':<{w0}}{'Output Shape':<{w1}}{'Param #':>12}"
        lines = [f"Model: {type(self).__name__}", line,
                 head + (f"  {'Inputs':<{w3 - 2}}" if graph else ""), line]
        for name, out, n, ins in rows:
            lines.append(f"{name:<{w0}}{out:<{w1}}{n:>12,}" + (f"  {ins}" if graph else ""))
        total = self.num_parameters()
        lines += [line, f"Total params: {total:,}", f"Trainable params: {total:,}"]
        if input_shape and graph:  # the plan of an eval forward at batch 1
            self._net.forward(np.zeros((1, *input_shape), np.float32), False)
            nbytes = self._net.activation_bytes()
            lines.append(f"Activation memory (eval, batch 1, planned): {nbytes:,} bytes")
        elif input_shape:
            nbytes = 4 * (int(np.prod(input_shape)) + sum(int(np.prod(s)) for s in shapes))
            lines.append(f"Activation memory (batch 1): {nbytes:,} bytes")
        lines.append(line)
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    # -- saving -------------------------------------------------------------------------
    def get_config(self) -> list[dict] | dict:
        """The architecture as files record it: a list of {type, config} for a plain stack of
        layers, else the graph {"nodes": [{type, config, name, inputs}]} (loaded as a Model)."""
        if all(isinstance(m, Layer) for m in self.layers) and type(self) is Sequential:
            return [{"type": layer.type, "config": layer.get_config()} for layer in self.layers]
        return {"nodes": [{"type": layer.type, "config": layer.get_config(), "name": name,
                           "inputs": list(ins)}
                          for layer, name, ins in zip(self._nodes, self._names, self._inputs,
                                                      strict=True)]}


def _leaves(item: Any) -> list[Layer]:
    """The layers inside a layer, a Sequential or a Residual, in order."""
    from .graph import Residual

    if isinstance(item, Layer):
        return [item]
    if isinstance(item, Sequential):
        return [leaf for m in item.layers for leaf in _leaves(m)]
    if isinstance(item, Residual):
        return [leaf for m in item.modules() for leaf in _leaves(m)] + [item._add]
    return []


class Model(Sequential):
    """A graph model (Keras' functional API): ``Model(inputs, outputs)`` with ``inputs`` a
    :func:`cnnkit.Input` and ``outputs`` what the layers applied to it give. It has all of
    Sequential's API (forward, backward, predict, state_dict, summary, to, ...) and trains
    with :class:`cnnkit.Trainer` in one native step per batch.

    >>> inp = ck.Input((1, 28, 28))
    >>> x = ck.ReLU()(ck.Conv2d(1, 8, 3, padding=1)(inp))
    >>> out = ck.Linear(8, 10)(ck.Flatten()(ck.AdaptiveAvgPool2d(1)(ck.Add()([x, x]))))
    >>> model = ck.Model(inp, out)
    """

    def __init__(self, inputs: Any, outputs: Any, *, name: str | None = None) -> None:
        from .graph import compile_graph, containers

        inputs = _single(inputs, "inputs")
        outputs = _single(outputs, "outputs")
        self._setup(name)
        nodes, ins, names = compile_graph(inputs, outputs, "Model")
        self._own(nodes, ins, names, tuple(containers(outputs)))
        self._input_shape = inputs.shape

    @classmethod
    def from_nodes(cls, nodes: list[Layer], inputs: list[list[int]], names: list[str],
                   name: str | None = None) -> Model:
        """A Model from its nodes as get_config() lists them (used by cnnkit.load)."""
        m = cls.__new__(cls)
        m._setup(name)
        m._own(list(nodes), [list(i) for i in inputs], list(names))
        return m

    def _own(self, nodes: list[Layer], ins: list[list[int]], names: list[str],
             absorb: tuple[Any, ...] = ()) -> None:
        self._append(nodes, "Model", absorb)
        self._graph = (ins, names)
        self._build()

    def _compile(self) -> None:
        self._nodes = list(self.layers)
        self._inputs, self._names = self._graph

    def _trace(self, xs: tuple[Any, ...], path: tuple[Any, ...]) -> Any:
        """Inline this graph's nodes into the graph being traced, named under `path`
        ("<name>.<node name>"); the enclosing model takes its layers over."""
        from .graph import _node

        if len(xs) != 1:
            raise ValueError(f"Model: takes one input, got {len(xs)}")
        vals = [xs[0]]
        for layer, ins, name in zip(self._nodes, self._inputs, self._names, strict=True):
            vals.append(_node(layer, tuple(vals[j] for j in ins), path + tuple(name.split("."))))
        return vals[-1]

    def add(self, layer: Layer) -> Model:
        raise ValueError("Model.add: a graph model is fixed; build a new one with ck.Model")

    def __repr__(self) -> str:
        inner = "".join(
            f"\n  ({n}): {layer!r} <- "
            + ", ".join("input" if v == 0 else self._names[v - 1] for v in ins)
            for layer, n, ins in zip(self._nodes, self._names, self._inputs, strict=True))
        return f"Model({inner}\n)"


def _single(x: Any, what: str) -> Any:
    if isinstance(x, (list, tuple)):
        if len(x) != 1:
            raise ValueError(f"Model: one {what[:-1]} is supported, got {len(x)}")
        return x[0]
    return x
