"""Saving and loading models and trainer checkpoints in one documented, pickle-free file.

>>> cnnkit.io.save(model, "lenet.cnnkit")         # architecture + weights
>>> model = cnnkit.io.load("lenet.cnnkit")         # a Sequential
>>> cnnkit.io.save(trainer, "ckpt.cnnkit")         # + optimizer, schedule, RNG, epoch, history
>>> trainer = cnnkit.io.load("ckpt.cnnkit")        # a Trainer that fit() continues exactly

Layout (docs/file-format.md): the 8-byte magic ``CNNKIT01``, the header length as an unsigned
64-bit little-endian integer, a UTF-8 JSON header {format, version, kind, tensors, meta,
data_nbytes, data_crc32}, then the raw little-endian tensor bytes. Files are written
atomically (temporary file in the same directory, fsync, rename). Reading checks the whole
file before anything is built or changed and raises :class:`CheckpointError` for truncated,
corrupted or foreign files; it never allocates more than the file size justifies.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from . import _architecture as _arch
from . import _files, _py_layer, _seeding
from . import _trainer_state as _tstate
from .layers import from_config as _layer_from_config

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save",
    "load",
    "load_model",
    "load_weights",
    "read",
    "restore_trainer",
    "MAGIC",
]

MAGIC = b"CNNKIT01"
FORMAT_VERSION = 2  # 2: graph models (meta.architecture {"nodes": [...]}); 1: stacks only
READ_VERSIONS = (1, 2)
ALIGN = 64  # tensor offsets (and the start of the data section) are multiples of this
MAX_HEADER_BYTES = 8 << 20  # docs/file-format.md, reading rule 2, says why 8 MiB
MAX_INT_DIGITS = 4300  # longest JSON integer read (Python's default int() limit)
MAX_NDIM = 8
DTYPES = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8"), "uint8": np.dtype("u1")}
_PREFIX_MODEL, _PREFIX_OPT = "model/", "optimizer/"


class CheckpointError(ValueError):
    """The file is not a valid cnnkit file, or does not fit the model/trainer given."""


@dataclass
class Checkpoint:
    """A checked file: kind ("model" | "trainer"), meta (JSON), tensors by name."""

    path: str
    kind: str
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# JSON with non-finite floats (encoded as {"$float": "nan" | "inf" | "-inf"})
# ---------------------------------------------------------------------------------------------


def _encode(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isfinite(f):
            return f
        return {"$float": "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")}
    if v is None or isinstance(v, str):
        return v
    raise TypeError(f"cannot store {type(v).__name__} in a checkpoint header")


def _pairs_hook(pairs: list[tuple[str, Any]]) -> Any:
    """One JSON object: refuse duplicate keys (in time linear in the number of keys) and
    decode {"$float": ...}."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for dup, _ in pairs:
            if dup in seen:
                break
            seen.add(dup)
        raise CheckpointError(f"duplicate key {_short(dup)} in the header "
                              f"({len(pairs) - len(d)} repeated keys in one object)")
    if len(d) == 1 and "$float" in d:
        special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
        v = d["$float"]
        if not isinstance(v, str) or v not in special:
            raise CheckpointError(f"bad special float {_short(v)} in the header")
        return special[v]
    return d


def _few(names: list[str], n: int = 5) -> str:
    """The first `n` names, and how many more (messages stay short for any file)."""
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return "[" + ", ".join(_short(k) for k in names[:n]) + "]" + more


def _short(v: Any, limit: int = 60) -> str:
    """repr(v) cut to `limit` characters, for messages about values read from a file."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _no_constants(name: str) -> Any:
    raise CheckpointError(f"non-standard JSON constant {name} in the header")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _pad(n: int) -> int:
    return (-n) % ALIGN


def _layout(tensors: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Header entries, total data size, and the CRC-32 of the data section."""
    entries: dict[str, dict[str, Any]] = {}
    offset, crc = 0, 0
    for name, a in tensors.items():
        dt = next((k for k, v in DTYPES.items() if v == a.dtype), None)
        if dt is None:
            raise ValueError(f"save: tensor {name!r} has unsupported dtype {a.dtype}")
        entries[name] = {"dtype": dt, "shape": [int(s) for s in a.shape], "offset": offset,
                         "nbytes": int(a.nbytes)}
        crc = zlib.crc32(memoryview(a).cast("B"), crc)
        offset += a.nbytes
        pad = _pad(offset)
        crc = zlib.crc32(b"\0" * pad, crc)
        offset += pad
    return entries, offset, crc


def _write_payload(f: IO[bytes], prefix: bytes, tensors: Iterable[np.ndarray]) -> None:
    """Write magic + header, then every tensor followed by its alignment padding."""
    f.write(prefix)
    for a in tensors:
        f.write(memoryview(a).cast("B"))
        f.write(b"\0" * _pad(a.nbytes))


def _write_file(path: str | os.PathLike, kind: str, meta: dict[str, Any],
                tensors: dict[str, np.ndarray]) -> None:
    """Atomically write a cnnkit file (temp file in the same directory, fsync, rename)."""
    arrays = {}
    for name, a in tensors.items():
        a = np.asarray(a)
        want = next((d for d in DTYPES.values()
                     if a.dtype.kind == d.kind and a.dtype.itemsize == d.itemsize), None)
        if want is None:
            raise ValueError(f"save: tensor {name!r} has unsupported dtype {a.dtype} "
                             f"(allowed: {sorted(DTYPES)})")
        arrays[name] = np.ascontiguousarray(a, dtype=want)
    entries, data_nbytes, crc = _layout(arrays)
    # a file any release reads that can: version 1 unless the model is a graph
    version = FORMAT_VERSION if isinstance(meta.get("architecture"), dict) else 1
    header = {"format": "cnnkit", "version": version, "kind": kind, "tensors": entries,
              "data_nbytes": data_nbytes, "data_crc32": crc, "meta": _encode(meta)}
    hb = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    hb += b" " * _pad(16 + len(hb))
    if len(hb) > MAX_HEADER_BYTES:  # the reader would refuse it: never write such a file
        raise ValueError(f"save: the header would be {len(hb)} bytes; the format allows at "
                         f"most {MAX_HEADER_BYTES} ({len(entries)} tensors)")
    prefix = MAGIC + struct.pack("<Q", len(hb)) + hb
    # _write_payload is looked up at call time (tests replace it to simulate failures)
    _files.atomic_write(path, lambda f: _write_payload(f, prefix, arrays.values()))


def _model_payload(model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from . import __version__

    _py_layer.check_saveable(model)  # layers written in Python: registered, JSON configs
    meta = {"cnnkit_version": __version__, "architecture": model.get_config()}
    shape = model._net.input_shape()  # per-sample shape of the last batch, when there was one
    if shape:
        meta["input_shape"] = [int(d) for d in shape]
    tensors = {_PREFIX_MODEL + k: v for k, v in model.state_dict().items()}
    return meta, tensors


def _trainer_payload(trainer: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """meta + tensors of a trainer file: Trainer.state_dict(), its arrays as tensors."""
    state = trainer.state_dict()
    meta, tensors = _model_payload(trainer.model)
    t = {k: v for k, v in state.items() if k != "model"}
    opt = state["optimizer"]
    if opt is not None:
        t["optimizer"] = {**opt, "buffers": list(opt["buffers"])}
        for k, v in opt["buffers"].items():
            tensors[_PREFIX_OPT + k] = v
    meta["trainer"] = t
    return meta, tensors


def save(obj: Any, path: str | os.PathLike) -> None:
    """Save a Sequential (architecture + weights) or a Trainer (a full checkpoint: also the
    loss, optimizer hyper-parameters and state, lr schedule, RNG state, epoch and history)."""
    from .model import Sequential
    from .trainer import Trainer

    if isinstance(obj, Trainer):
        meta, tensors = _trainer_payload(obj)
        _write_file(path, "trainer", meta, tensors)
    elif isinstance(obj, Sequential):
        meta, tensors = _model_payload(obj)
        _write_file(path, "model", meta, tensors)
    else:
        raise ValueError(f"save: expected a cnnkit.Sequential or Trainer, got {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_int(text: str) -> int:
    """JSON integers of at most MAX_INT_DIGITS digits: converting a longer digit string
    costs time quadratic in its length (whatever sys.set_int_max_str_digits allows)."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise CheckpointError(f"an integer of {len(text)} digits in the header (at most "
                              f"{MAX_INT_DIGITS})")
    return int(text)


def _parse_header(hb: bytes, where: str) -> Any:
    """The JSON header, in time and memory linear in its size; CheckpointError otherwise."""
    try:
        text = hb.decode("utf-8")
        # json's own int parsing is fast and bounded by Python's digit limit when that is at
        # most ours; otherwise (e.g. sys.set_int_max_str_digits(0)) every integer is checked
        limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
        ints = None if 0 < limit <= MAX_INT_DIGITS else _parse_int
        return json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_no_constants,
                          parse_int=ints)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError: ValueError
        why = "nested too deeply" if isinstance(e, RecursionError) else _short(str(e), 200)
        raise CheckpointError(f"{where}: the header is not valid JSON ({why})") from None
    except MemoryError:
        raise CheckpointError(f"{where}: the header ({len(hb)} bytes) does not fit in "
                              "memory") from None


def read(path: str | os.PathLike) -> Checkpoint:
    """Read and fully check a cnnkit file; raises CheckpointError when anything is wrong
    (FileNotFoundError when there is no such file)."""
    path = os.fspath(path)
    where = f"{path}"
    try:
        f = _files.open_regular(path)
    except FileNotFoundError:
        raise
    except _files.NotARegularFileError as e:  # never opened, so never waited on
        raise CheckpointError(f"{path}: cannot open: not a regular file ({e.kind}); a cnnkit "
                              "file must be a regular file") from None
    except OSError as e:  # no permission, ...
        raise CheckpointError(f"{path}: cannot open: {e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 16:
            raise CheckpointError(f"{where}: not a cnnkit file ({size} bytes; too short)")
        head = f.read(16)
        if len(head) != 16:
            raise CheckpointError(f"{where}: truncated file")
        if head[:8] != MAGIC:
            if head[:6] == MAGIC[:6]:
                raise CheckpointError(f"{where}: unsupported cnnkit format {head[:8]!r}")
            raise CheckpointError(f"{where}: not a cnnkit file (bad magic {head[:8]!r})")
        (hlen,) = struct.unpack("<Q", head[8:])
        if hlen < 2 or hlen > size - 16 or hlen > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{where}: header length {hlen} is impossible for a file of {size} bytes "
                f"(truncated or corrupted; the format allows at most {MAX_HEADER_BYTES})"
            )
        hb = f.read(hlen)
        if len(hb) != hlen:
            raise CheckpointError(f"{where}: truncated header")
        header = _parse_header(hb, where)
        del hb
        entries, data_nbytes, crc, kind, meta = _check_header(header, size - 16 - hlen, where)
        data = f.read(data_nbytes)
        if len(data) != data_nbytes:
            raise CheckpointError(f"{where}: truncated data section")
    if zlib.crc32(data) != crc:
        raise CheckpointError(f"{where}: the data section is corrupted (CRC-32 mismatch)")
    tensors = {}
    for name, e in entries.items():
        dt = DTYPES[e["dtype"]]
        a = np.frombuffer(data, dtype=dt, count=e["nbytes"] // dt.itemsize, offset=e["offset"])
        tensors[name] = a.reshape(e["shape"]).astype(dt.newbyteorder("="), copy=True)
    return Checkpoint(path, kind, meta, tensors)


_MAX_ARRAY_BYTES = int(np.iinfo(np.intp).max)  # numpy's limit on one array (zero-size too)
_ENTRY_KEYS = {"dtype", "shape", "offset", "nbytes"}


def _check_header(h: Any, data_size: int,
                  where: str) -> tuple[dict[str, Any], int, int, str, dict[str, Any]]:
    """The container part of the header (reading rules 3-5); returns (tensor entries,
    data_nbytes, data_crc32, kind, meta). Linear in the number of entries, plus a sort."""
    if not isinstance(h, dict):
        raise CheckpointError(f"{where}: the header is not a JSON object")
    if h.get("format") != "cnnkit":
        raise CheckpointError(f"{where}: not a cnnkit file (format {_short(h.get('format'))})")
    if not _is_int(h.get("version")) or h["version"] not in READ_VERSIONS:
        raise CheckpointError(f"{where}: unsupported format version {_short(h.get('version'))}")
    kind = h.get("kind")
    if not isinstance(kind, str) or kind not in ("model", "trainer"):
        raise CheckpointError(f"{where}: unknown kind {_short(kind)} (expected 'model' or "
                              "'trainer')")
    meta, entries = h.get("meta"), h.get("tensors")
    if not isinstance(meta, dict) or not isinstance(entries, dict):
        raise CheckpointError(f"{where}: the header needs 'meta' and 'tensors' objects")
    data_nbytes, crc = h.get("data_nbytes"), h.get("data_crc32")
    if not _is_int(data_nbytes) or data_nbytes != data_size:
        raise CheckpointError(
            f"{where}: the data section has {data_size} bytes but the header declares "
            f"{_short(data_nbytes)} (truncated or corrupted)"
        )
    if not _is_int(crc) or not 0 <= crc < 2**32:
        raise CheckpointError(f"{where}: bad data_crc32 {_short(crc)}")
    spans = []
    for name, e in entries.items():
        if not name or not isinstance(e, dict):
            raise CheckpointError(f"{where}: bad tensor entry {_short(name)}")
        if e.keys() != _ENTRY_KEYS:
            raise CheckpointError(f"{where}: tensor {_short(name)} needs exactly dtype, shape, "
                                  f"offset, nbytes; got {_short(sorted(e))}")
        dtype = e["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CheckpointError(f"{where}: tensor {_short(name)} has dtype {_short(dtype)} "
                                  f"(allowed: {sorted(DTYPES)})")
        itemsize = DTYPES[dtype].itemsize
        shape = e["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
                _is_int(s) and s >= 0 for s in shape):
            raise CheckpointError(f"{where}: tensor {_short(name)} has a bad shape "
                                  f"{_short(shape)} (at most {MAX_NDIM} non-negative ints)")
        # numpy refuses a shape whose non-zero sizes multiply past its limit, even when
        # another size is 0; the product of all sizes is checked against nbytes below
        if math.prod(s for s in shape if s) * itemsize > _MAX_ARRAY_BYTES:
            raise CheckpointError(f"{where}: tensor {_short(name)} has an impossible shape "
                                  f"{_short(shape)}")
        off, nb = e["offset"], e["nbytes"]
        if not (_is_int(off) and _is_int(nb) and off >= 0 and nb >= 0):
            raise CheckpointError(f"{where}: tensor {_short(name)} has a bad offset/nbytes "
                                  f"({_short(off)}, {_short(nb)})")
        want = math.prod(shape) * itemsize
        if nb != want:
            raise CheckpointError(f"{where}: tensor {_short(name)} declares {_short(nb)} bytes "
                                  f"but its shape {shape} and dtype need {want}")
        if off + nb > data_size:
            raise CheckpointError(f"{where}: tensor {_short(name)} lies outside the file "
                                  "(truncated or corrupted)")
        if off % itemsize:
            raise CheckpointError(f"{where}: tensor {_short(name)} is misaligned")
        spans.append((off, off + nb, name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise CheckpointError(f"{where}: tensors {_short(a)} and {_short(b)} overlap")
    return entries, data_nbytes, crc, kind, meta


# ---------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------


_MAX_INT = 2**62  # any larger size or index is corrupt (and would overflow the native int64)


def _specs(ck: Checkpoint) -> list[dict[str, Any]]:
    """The file's architecture checked against the layer schema (nothing built yet)."""
    try:
        return _arch.layer_specs(ck.meta.get("architecture"))
    except _arch.ArchitectureError as e:
        raise CheckpointError(f"{ck.path}: {e}") from None


def _model_tensors(ck: Checkpoint) -> dict[str, np.ndarray]:
    return {k[len(_PREFIX_MODEL):]: v for k, v in ck.tensors.items()
            if k.startswith(_PREFIX_MODEL)}


def _check_weights(ck: Checkpoint, expected: dict[str, tuple[int, ...]],
                   model_tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The file's tensors are exactly the ones the architecture needs (names, float32, shapes,
    finite values): checked before the model is built, so nothing is allocated for a file that
    does not hold its weights."""
    missing = [k for k in expected if k not in model_tensors]
    extra = [k for k in model_tensors if k not in expected]
    if missing or extra:
        raise CheckpointError(f"{ck.path}: weights do not match the architecture: missing "
                              f"{_few(missing)}, unexpected {_few(extra)}")
    for k, shape in expected.items():
        a = model_tensors[k]
        if a.dtype != np.float32 or a.shape != shape:
            raise CheckpointError(f"{ck.path}: '{k}' is {a.dtype} {a.shape}, the model needs "
                                  f"float32 {shape}")
        if not np.all(np.isfinite(a)):
            raise CheckpointError(f"{ck.path}: '{k}' contains NaN or Inf")
    return {k: model_tensors[k] for k in expected}


def _build(ck: Checkpoint) -> Any:
    """A Sequential built from the file's architecture and loaded with its weights.

    Everything is checked first -- the arguments by the layer schema, the weights against the
    shapes it implies, the activations for the recorded (or a plausible) input -- and building
    does not consume the global init seed stream."""
    from .model import Model, Sequential

    specs = _specs(ck)
    weights = _check_weights(ck, _arch.expected_tensors(specs), _model_tensors(ck))
    with _seeding._lock:
        saved = dict(_seeding._state)
    try:
        layers = [e["layer"] if "layer" in e else _layer_from_config(e["type"], e["config"])
                  for e in specs]
        if _arch.is_graph(specs):
            model = Model.from_nodes(layers, [e["inputs"] for e in specs],
                                     [e["name"] for e in specs])
        else:
            model = Sequential(layers)
        _arch.check_runs(model._net, specs, ck.meta.get("input_shape"))
    except _arch.ArchitectureError as e:
        raise CheckpointError(f"{ck.path}: {e}") from None
    except (ValueError, TypeError, RuntimeError, MemoryError) as e:
        raise CheckpointError(f"{ck.path}: cannot build the architecture: {e}") from None
    finally:
        with _seeding._lock:
            _seeding._state.update(saved)
    model.load_state_dict(weights)
    return model


def _arch_graph(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries with the inputs a chain has when they list none."""
    return [{**e, "inputs": e.get("inputs", [i])} for i, e in enumerate(entries)]


def _check_same_architecture(ck: Checkpoint, model: Any) -> dict[str, np.ndarray]:
    specs = _specs(ck)
    mine = model.get_config()
    graph = isinstance(mine, dict)
    mine = mine["nodes"] if graph else mine
    if _arch.is_graph(specs) != graph \
            or [e["inputs"] for e in specs] != [e["inputs"] for e in _arch_graph(mine)]:
        raise CheckpointError(f"{ck.path}: the architecture differs from the model's: the "
                              "layers are connected differently")
    if len(specs) != len(mine):
        raise CheckpointError(f"{ck.path}: the architecture differs from the model's: "
                              f"{len(specs)} layers in the file, {len(mine)} in the model")
    for i, (a, b) in enumerate(zip(specs, mine, strict=True)):
        if a["type"] != b["type"] or not _arch.same_config(a["config"], b["config"]):
            raise CheckpointError(f"{ck.path}: the architecture differs from the model's: layer "
                                  f"{i} is {a['type']}{a['config']} in the file but "
                                  f"{b['type']}{b['config']} in the model")
    return _check_weights(ck, _arch.expected_tensors(specs), _model_tensors(ck))


# ---------------------------------------------------------------------------------------------
# Trainer state: the file's meta.trainer + optimizer tensors -> Trainer.state_dict() form
# ---------------------------------------------------------------------------------------------


def _trainer_state(ck: Checkpoint, weights: dict[str, np.ndarray]) -> _tstate.Checked:
    """The trainer state a checkpoint holds, checked (CheckpointError naming the file)."""
    p = ck.path
    if ck.kind != "trainer":
        raise CheckpointError(f"{p}: this is a model file, not a trainer checkpoint (use "
                              "cnnkit.io.load_model or load_weights)")
    t = ck.meta.get("trainer")
    if not isinstance(t, dict):
        raise CheckpointError(f"{p}: meta.trainer is missing")
    opt_tensors = {k[len(_PREFIX_OPT):]: v for k, v in ck.tensors.items()
                   if k.startswith(_PREFIX_OPT)}
    opt = t.get("optimizer")
    if isinstance(opt, dict):
        names = opt.get("buffers")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
                or sorted(names) != sorted(opt_tensors):
            raise CheckpointError(f"{p}: optimizer buffers {_short(names)} do not match the "
                                  f"tensors {_few(sorted(opt_tensors))}")
        opt = {**opt, "buffers": opt_tensors}
    elif opt is None and opt_tensors:
        raise CheckpointError(f"{p}: optimizer state without an optimizer")
    state = {"model": weights, "optimizer": opt,
             **{k: t.get(k) for k in ("loss", "metrics", "seed", "epoch", "rng", "history",
                                      "progress", "lr_scheduler")}}
    return _tstate.check(state, p, CheckpointError)


def restore_trainer(trainer: Any, path: str | os.PathLike) -> None:
    """Load a trainer checkpoint into `trainer` (whose model must have the same
    architecture). The file is fully checked first; on any error nothing changes."""
    ck = read(path)
    if ck.kind != "trainer":
        _trainer_state(ck, {})  # the "model file, not a checkpoint" error
    weights = _check_same_architecture(ck, trainer.model)
    _tstate.load_into(trainer, _trainer_state(ck, weights), ck.path, CheckpointError)


# ---------------------------------------------------------------------------------------------
# Public loading
# ---------------------------------------------------------------------------------------------


def load_model(path: str | os.PathLike) -> Any:
    """The Sequential (architecture + weights, on the CPU) of a model or trainer file."""
    return _build(read(path))


def load_weights(model: Any, path: str | os.PathLike) -> None:
    """Load the weights of a model or trainer file into `model`, which must have the same
    architecture. Everything is checked first: on error the model is unchanged."""
    ck = read(path)
    model.load_state_dict(_check_same_architecture(ck, model))


_UNSET: Any = object()  # load's device when not given


def load(path: str | os.PathLike, device: str = _UNSET) -> Any:
    """A Sequential/Model for a model file (on `device`, the CPU when not given); a Trainer
    (on `device`, "auto" when not given: CUDA when available) for a trainer checkpoint,
    ready to ``fit`` on from where it stopped."""
    from .trainer import Trainer

    ck = read(path)
    model = _build(ck)
    if ck.kind == "model":
        return model if device is _UNSET else model.to(device)
    st = _trainer_state(ck, model.state_dict())
    return Trainer.from_state_dict(model, st, device="auto" if device is _UNSET else device)
