"""The architecture recorded in a model file, checked against the native layer schema before
anything is built: every layer's arguments exactly as a constructor call checks them, the
parameter shapes the file must hold (sized with overflow checks, nothing allocated), and the
activation shapes for a plausible input, so a file that loads also runs.
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import _core, _py_layer

# A model whose activations for ONE sample need more than this is not a model anyone can run:
# a file implying it is corrupt or hostile (ResNet-18 at 224x224 needs about 0.1 GiB).
MAX_SAMPLE_BYTES = 1 << 34
# Square input sizes tried when a file does not record its input shape (files written before
# it did): the first the architecture accepts is the one it is checked with.
_CANDIDATE_SIZES = (28, 32, 224, *range(1, 257), 299, 384, 448, 512)
_SIZE_ERRORS = ("64-bit size", "any machine can hold")


class ArchitectureError(ValueError):
    """The recorded architecture is not one cnnkit can build and run."""


def layer_specs(arch: Any) -> list[dict[str, Any]]:
    """[{type, config (complete, normalised), name, inputs, tensors: [(name, shape)]}] for a
    file's architecture (a registered Python layer's entry also holds the "layer" built from
    its config): a list of {type, config} (a stack: names "0", "1", ...) or a graph
    {"nodes": [{type, config, name, inputs}]}; ArchitectureError naming the layer for
    anything the schema refuses or a graph that is not a DAG ending in its last node."""
    graph = isinstance(arch, dict)
    if graph:
        if set(arch) != {"nodes"} or not isinstance(arch["nodes"], list):
            raise ArchitectureError("meta.architecture must be a list of layers or "
                                    "{\"nodes\": [...]}")
        arch = arch["nodes"]
    keys = {"type", "config", "name", "inputs"} if graph else {"type", "config"}
    if not isinstance(arch, list) or not all(
        isinstance(e, dict) and set(e) == keys and isinstance(e["type"], str)
        and isinstance(e["config"], dict) for e in arch
    ):
        raise ArchitectureError(f"meta.architecture must be a list of {sorted(keys)} objects")
    if graph:
        _check_graph(arch)
    known = {d["type"] for d in _core.layer_schemas()}
    out = []
    for i, e in enumerate(arch):
        t = e["type"]
        if t not in known and _py_layer.lookup(t) is not None:
            # a registered layer written in Python, found by name (nothing is imported)
            layer, config, tensors = _py_layer.spec_of(i, t, e["config"], ArchitectureError)
            out.append({"type": t, "config": config, "name": e["name"] if graph else str(i),
                        "inputs": list(e["inputs"]) if graph else [i], "graph": graph,
                        "tensors": tensors, "layer": layer})
            continue
        if t not in known:
            raise ArchitectureError(f"layer {i}: unknown layer type {t[:60]!r}, cannot build the "
                                    f"architecture (known: {sorted(known)}; "
                                    f"{_py_layer.unknown_type_hint(t)})")
        try:
            config, tensors, _ = _core.layer_state_specs(t, e["config"])
        except ValueError as err:
            raise ArchitectureError(f"layer {i} ({t}): {err}") from None
        out.append({"type": t, "config": dict(config),
                    "name": e["name"] if graph else str(i),
                    "inputs": list(e["inputs"]) if graph else [i], "graph": graph,
                    "tensors": [(n, tuple(s)) for n, s in tensors]})
    return out


def _check_graph(nodes: list[dict[str, Any]]) -> None:
    if not nodes:
        raise ArchitectureError("a graph needs at least one node")
    names, used = set(), set()
    for i, e in enumerate(nodes):
        n, ins = e["name"], e["inputs"]
        if not isinstance(n, str) or not all(n.split(".")) or len(n) > 256 or n in names:
            raise ArchitectureError(f"node {i}: name must be a unique dotted path, got "
                                    f"{str(n)[:60]!r}")
        names.add(n)
        if not isinstance(ins, list) or not ins or len(ins) > 64 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= i for v in ins):
            raise ArchitectureError(f"node {i} ({n}): inputs must be a list of earlier value "
                                    f"ids (0 is the input, node k gives k + 1), got "
                                    f"{str(ins)[:60]}")
        used.update(ins)
    dead = [v for v in range(len(nodes)) if v not in used]
    if dead:
        raise ArchitectureError(f"value {dead[0]} is never used (every node but the last must "
                                "feed another)")


def is_graph(specs: list[dict[str, Any]]) -> bool:
    return bool(specs) and specs[0]["graph"]


def expected_tensors(specs: list[dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes the model has ("<name>.<param>")."""
    return {f"{spec['name']}.{n}": s for spec in specs for n, s in spec["tensors"]}


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Configs equal as JSON gives them back (tuples and lists alike)."""
    return json.dumps(a, sort_keys=True, default=list) == json.dumps(b, sort_keys=True,
                                                                     default=list)


def _shapes_ok(net: Any, sample: tuple[int, ...]) -> tuple[bool, str]:
    try:
        shapes = net.shapes([1, *sample])
    except ValueError as e:
        return False, str(e)
    nbytes = 4 * sum(math.prod(s) for s in shapes)
    if nbytes > MAX_SAMPLE_BYTES:
        return False, (f"for input {tuple(sample)} one sample's activations need {nbytes} "
                       f"bytes (more than {MAX_SAMPLE_BYTES})")
    return True, ""


def check_runs(net: Any, specs: list[dict[str, Any]], input_shape: Any) -> None:
    """The activation shapes of the built network for the recorded input shape, or else for a
    plausible one, must be computable and bounded; ArchitectureError otherwise."""
    if input_shape is not None:
        if not isinstance(input_shape, list) or not 1 <= len(input_shape) <= 7 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 2**31
                for d in input_shape):
            raise ArchitectureError(f"meta.input_shape must be a list of positive sizes, got "
                                    f"{str(input_shape)[:60]}")
        ok, why = _shapes_ok(net, tuple(input_shape))
        if not ok:
            raise ArchitectureError(f"the architecture cannot run on its recorded input shape "
                                    f"{tuple(input_shape)}: {why}")
        return
    first = next((s for s in specs
                  if s["type"] in ("Linear", "Conv2d", "ConvTranspose2d", "BatchNorm2d",
                                 "SyncBatchNorm")), None)
    if first is None:
        candidates = [(1, n, n) for n in _CANDIDATE_SIZES]
    elif first["type"] == "Linear":
        candidates = [(first["config"]["in_features"],)]
    else:
        c = first["config"].get("in_channels", first["config"].get("num_features"))
        candidates = [(c, n, n) for n in _CANDIDATE_SIZES]
    size_error = None
    for sample in candidates:
        ok, why = _shapes_ok(net, sample)
        if ok:
            return
        if size_error is None and (any(w in why for w in _SIZE_ERRORS) or "bytes (more" in why):
            size_error = why
    if size_error is not None:  # sizes that overflow for every plausible input
        raise ArchitectureError(f"the architecture's activations cannot be sized: {size_error}")
    # No square input fits (a non-square model saved without its input shape): every forward
    # still checks its sizes at run time.
