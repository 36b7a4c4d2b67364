"""Files under attack: a seeded mutation fuzzer for the model/checkpoint loader, and atomic
saves under SIGKILL.

Fuzzer rule (docs/reliability.md). Every mutant of a valid model or trainer file must either

* raise ``cnnkit.io.CheckpointError`` (a ValueError) whose message starts with the path, and
  leave a trainer it was being loaded into unchanged; or
* load *faithfully*: the weights (and, for trainer files, the optimizer buffers, step, epoch
  and seed) are exactly what an independent reader (the one in docs/file-format.md) decodes
  from the mutant bytes, with the architecture the mutant declares; when those tensors and the
  architecture are the seed file's, the model's outputs on a probe batch are bit-identical to
  the seed model's.

Mutations that change the data section without fixing the header's CRC-32 must be rejected
(a loaded one is reported as a failure). Never another exception type, never a crash (the
loop runs in a subprocess whose exit status is checked), never a hang (a per-mutant alarm),
and never an allocation the file size does not justify (tracemalloc peak per load, and the
process's peak RSS over the loop).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
import traceback
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import callbacks, optim
from cnnkit.io import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import figures_line, script_env, tiny_data, tiny_model  # noqa: E402

N_MUTANTS = 1500  # total over the three seed files
PER_MUTANT_SECONDS = 5.0  # alarm per mutant
ALLOC_FACTOR, ALLOC_SLACK = 32, 1 << 20  # tracemalloc peak <= 32 x file size + 1 MiB
# (32: the Python objects of a parsed JSON header take ~20 times its bytes)
RSS_GROWTH_LIMIT_MB = 64  # peak RSS of the whole fuzz loop over the baseline
DTYPES = {"float32": "<f4", "int64": "<i8", "uint8": "u1"}

# ---------------------------------------------------------------------------------------------
# An independent reader (docs/file-format.md) and a writer of raw headers
# ---------------------------------------------------------------------------------------------


def reference_read(raw: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The reader from docs/file-format.md, with no checks beyond what it needs."""
    assert raw[:8] == b"CNNKIT01"
    (h,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16 : 16 + h])
    data = raw[16 + h :]
    tensors = {}
    for name, e in header["tensors"].items():
        dt = np.dtype(DTYPES[e["dtype"]])
        tensors[name] = np.frombuffer(data, dt, count=e["nbytes"] // dt.itemsize,
                                      offset=e["offset"]).reshape(e["shape"])
    return header, tensors


def split(raw: bytes) -> tuple[dict, bytes, int]:
    (h,) = struct.unpack("<Q", raw[8:16])
    return json.loads(raw[16 : 16 + h]), raw[16 + h :], h


def assemble(header_text: bytes, data: bytes) -> bytes:
    """magic + length + header (padded so the data starts 64-byte aligned) + data."""
    hb = header_text + b" " * ((-(16 + len(header_text))) % 64)
    return b"CNNKIT01" + struct.pack("<Q", len(hb)) + hb + data


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def dumps_dup(obj, rnd: random.Random) -> bytes:
    """JSON text of obj where one randomly chosen object repeats one of its keys."""
    dicts = [d for d in _nodes(obj) if isinstance(d[1], dict) and d[1]]
    _, target = rnd.choice(dicts)
    key = rnd.choice(list(target))

    def enc(v) -> str:
        if isinstance(v, dict):
            items = [f"{json.dumps(k)}:{enc(x)}" for k, x in v.items()]
            if v is target:
                items.append(f"{json.dumps(key)}:{enc(v[key])}")
            return "{" + ",".join(items) + "}"
        if isinstance(v, list):
            return "[" + ",".join(enc(x) for x in v) + "]"
        return json.dumps(v)

    return enc(obj).encode()


def _nodes(obj, path=()):
    """(path, node) for every node of a JSON tree."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, (*path, i))


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


# ---------------------------------------------------------------------------------------------
# Mutations: each returns (mutant bytes, kind, crc_fixed_data_change)
# ---------------------------------------------------------------------------------------------

NASTY = [None, True, False, 0, -1, 1, 2, 3, 7, 2**31, 2**63, 2**64, -(2**63), 10**30, 1.5, -0.5,
         1e308, 1e-320, "", "x", "float32", "nan", "A" * 300, [], [0], [-1], [2**62, 2**62],
         [1, 2, 3, 4, 5, 6, 7, 8, 9], {}, {"a": 1}, {"$float": "nan"}, {"$float": "inf"},
         {"$float": "-inf"}, {"$float": "bogus"}, [[[[[]]]]], ["Conv2d"]]
GARBAGE = [b"", b"[]", b"null", b"{}", b"0", b'"cnnkit"', b"NaN", b'{"a":NaN}', b'{"a":Infinity}',
           b"[" * 50000, b"{" * 50000, b'{"format":"cnnkit"', b"\xff\xfe\x00garbage", b"1" * 5000,
           b"1e999", b"\xef\xbb\xbf{}", b'{"format":"cnnkit","version":1}',
           b'{"format":"cnnkit","version":1,"kind":"model","tensors":[],"meta":{}}']


def mutate(raw: bytes, rnd: random.Random) -> tuple[bytes, str, bool]:
    header, data, hlen = split(raw)
    size = len(raw)
    op = rnd.choice(["truncate", "extend", "flip_header", "flip_data", "flip_data_fixcrc",
                     "random_bytes", "hlen", "magic", "tensor_entry", "tensor_entry",
                     "json_value", "json_value", "json_value", "json_drop_key", "json_dup_key",
                     "json_garbage", "architecture", "swap_tensors", "data_nbytes", "empty"])
    if op == "truncate":
        return raw[: rnd.randrange(0, size)], op, False
    if op == "extend":
        return raw + bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 100))), op, False
    if op in ("flip_header", "flip_data", "flip_data_fixcrc"):
        lo, hi = (0, 16 + hlen) if op == "flip_header" else (16 + hlen, size)
        if hi <= lo:
            return raw[:-1], op, False
        b = bytearray(raw)
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(lo, hi)
            b[i] ^= 1 << rnd.randrange(8)
        if op != "flip_data_fixcrc":
            return bytes(b), op, False
        new_data = bytes(b[16 + hlen :])
        header["data_crc32"] = zlib.crc32(new_data)
        return assemble(dumps(header), new_data), op, True
    if op == "random_bytes":
        b = bytearray(raw)
        for _ in range(rnd.randint(1, 16)):
            b[rnd.randrange(size)] = rnd.randrange(256)
        return bytes(b), op, False
    if op == "hlen":
        v = rnd.choice([0, 1, 2, hlen - 1, hlen + 1, size - 16, size - 15, 64 << 20, (64 << 20) + 1,
                        2**63, 2**64 - 1, rnd.randrange(2**64)])
        return raw[:8] + struct.pack("<Q", v % 2**64) + raw[16:], op, False
    if op == "magic":
        m = rnd.choice([b"CNNKIT02", b"cnnkit01", b"\0" * 8, b"PK\x03\x04\0\0\0\0", b"CNNKIT0"])
        return m + raw[len(m) :], op, False
    if op == "tensor_entry":
        name = rnd.choice(list(header["tensors"]))
        e = header["tensors"][name]
        field = rnd.choice(["shape", "nbytes", "offset", "dtype", "consistent_shape"])
        if field == "consistent_shape":  # shape and nbytes agree: the deeper checks must catch it
            shape = rnd.choice([[0], [1], [2**20, 2**20], [e["nbytes"] // 4], [3, 3], [2**40]])
            e["shape"], e["nbytes"] = shape, math.prod(shape) * 4
        elif field == "offset":
            others = [x["offset"] for x in header["tensors"].values()]
            e["offset"] = rnd.choice([-64, 1, 3, 2**63, len(data), len(data) - 4, *others])
        elif field == "dtype":
            e["dtype"] = rnd.choice(["float64", "complex64", "int8", "FLOAT32", "int64", "uint8",
                                     5, None, [], {}])
        else:
            e[field] = rnd.choice(NASTY)
        return assemble(dumps(header), data), op, False
    if op == "json_value":
        path, _ = rnd.choice([n for n in _nodes(header) if n[0]])
        _set(header, path, copy.deepcopy(rnd.choice(NASTY)))
        return assemble(dumps(header), data), op, False
    if op == "json_drop_key":
        dicts = [(p, d) for p, d in _nodes(header) if isinstance(d, dict) and d]
        p, d = rnd.choice(dicts)
        del d[rnd.choice(list(d))]
        if rnd.random() < 0.5:
            d["unexpected_" + str(rnd.randrange(10))] = rnd.choice([1, "x", None])
        return assemble(dumps(header), data), op, False
    if op == "json_dup_key":
        return assemble(dumps_dup(header, rnd), data), op, False
    if op == "json_garbage":
        return assemble(rnd.choice(GARBAGE), data), op, False
    if op == "architecture":
        arch = header["meta"]["architecture"]
        i = rnd.randrange(len(arch))
        attack = rnd.choice([
            {"type": "Linear", "config": {"in_features": 10**9, "out_features": 10**9}},
            {"type": "Conv2d", "config": {"in_channels": 2**31, "out_channels": 2**31,
                                          "kernel_size": [2**20, 2**20]}},
            {"type": "Conv2d", "config": {"in_channels": 1, "out_channels": 3,
                                          "kernel_size": [0, 0]}},
            {"type": "Conv2d", "config": {"in_channels": 1, "out_channels": 3, "kernel_size": 3,
                                          "groups": 0}},
            {"type": "BatchNorm2d", "config": {"num_features": -3}},
            {"type": "BatchNorm2d", "config": {"num_features": 3, "eps": -1.0}},
            {"type": "Dropout", "config": {"p": 1.5}},
            {"type": "Dropout", "config": {"p": {"$float": "nan"}}},
            {"type": "MaxPool2d", "config": {"kernel_size": [2**40, 2], "padding": [2**40, 0]}},
            {"type": "LeakyReLU", "config": {"negative_slope": "x"}},
            {"type": "Sequential", "config": {}},
            {"type": "__import__", "config": {"name": "os"}},
            {"type": "ReLU", "config": {"inplace": True}},
            {"type": "ReLU"},
            [],
        ])
        if rnd.random() < 0.3:
            arch.insert(i, attack)
        else:
            arch[i] = attack
        if rnd.random() < 0.1:
            header["meta"]["architecture"] = [{"type": "ReLU", "config": {}}] * 5000
        return assemble(dumps(header), data), op, False
    if op == "swap_tensors":
        names = list(header["tensors"])
        a, b = rnd.sample(names, 2)
        t = header["tensors"]
        t[a], t[b] = t[b], t[a]
        return assemble(dumps(header), data), op, False
    if op == "data_nbytes":
        header["data_nbytes"] = rnd.choice([0, len(data) - 64, len(data) + 64, 2**63, -1, "1"])
        return assemble(dumps(header), data), op, False
    return b"", op, False


# ---------------------------------------------------------------------------------------------
# The fuzz loop (runs in a subprocess: python test_hardening_files.py fuzz DIR N SEED)
# ---------------------------------------------------------------------------------------------


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout


def make_seed_files(d: Path) -> dict[str, Path]:
    """A model file and two trainer files (Adam + ReduceLROnPlateau with best=inf, saved in
    the middle of an epoch; SGD momentum + LinearWarmup(after=StepLR), after 2 epochs)."""
    x, y = tiny_data(48)
    files = {"model": d / "model.cnnkit", "adam": d / "adam.cnnkit", "sgd": d / "sgd.cnnkit"}
    model = tiny_model(1)
    ck.save(model, files["model"])

    t = ck.Trainer(tiny_model(2), optimizer=optim.Adam(lr=1e-2), device="cpu", seed=5)
    sched = optim.ReduceLROnPlateau(t.optimizer)
    saver = callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: b == 1 and t.epoch == 1 and t.save(files["adam"]))
    t.fit(x, y, epochs=2, batch_size=16, verbose=0, lr_scheduler=sched, callbacks=[saver])
    assert files["adam"].exists()

    opt = optim.SGD(lr=0.1, momentum=0.9)
    t2 = ck.Trainer(tiny_model(3), optimizer=opt, device="cpu", seed=6)
    warm = optim.LinearWarmup(opt, 4, after=optim.StepLR(opt, 1, gamma=0.5))
    t2.fit(x, y, epochs=2, batch_size=16, verbose=0, lr_scheduler=warm)
    ck.save(t2, files["sgd"])
    for k in ("adam", "sgd"):  # no wall-clock times: the same bytes on every run
        t = ck.load(files[k], device="cpu")
        for key in ("time", "images_per_sec"):
            t.history.history[key] = [1.0] * len(t.history.epoch)
        if t._progress is not None:
            t._progress.time = 1.0
        t.save(files[k])
    return files


def _state(obj) -> dict[str, np.ndarray]:
    model = obj.model if isinstance(obj, ck.Trainer) else obj
    return model.state_dict()


def _norm(v):
    return json.loads(json.dumps(v, default=list))


def _same_architecture(loaded: list, declared: list) -> str | None:
    """The loaded layers are the declared ones: same types, every declared argument equal
    (an int k stands for the pair [k, k]), every other argument at its constructor default."""
    loaded = _norm(loaded)
    if len(loaded) != len(declared):
        return f"{len(loaded)} layers loaded, {len(declared)} declared"
    for i, (got, want) in enumerate(zip(loaded, declared, strict=True)):
        if got["type"] != want["type"]:
            return f"layer {i} loaded as {got['type']}, declared {want['type']}"
        defaults = {k: p.default for k, p in inspect.signature(
            ck.layers.LAYER_TYPES[got["type"]].__init__).parameters.items() if k != "self"}
        for k, v in got["config"].items():
            w = want["config"].get(k, defaults.get(k))
            if isinstance(v, list) and not isinstance(w, list | tuple):
                w = [w, w] if w is not None else v  # MaxPool2d stride=None: the kernel size
            if isinstance(w, tuple):
                w = list(w)
            if isinstance(v, float) and isinstance(w, int) and not isinstance(w, bool):
                w = float(w)  # a float argument declared as a JSON integer
            if v != w or type(v) is not type(w):
                return f"layer {i} ({got['type']}): {k} loaded as {v!r}, declared {w!r}"
    return None


def check_faithful(obj, raw: bytes, seed_raw: bytes, probe: np.ndarray,
                   seed_out: np.ndarray) -> str | None:
    """None when a loaded mutant is exactly what the mutant file says; else what differs."""
    try:
        header, tensors = reference_read(raw)
    except Exception as e:  # cnnkit accepted a file the plain reader cannot read
        return f"loaded, but the reference reader fails: {type(e).__name__}: {e}"
    model = obj.model if isinstance(obj, ck.Trainer) else obj
    why = _same_architecture(model.get_config(), header["meta"]["architecture"])
    if why:
        return why
    sd = model.state_dict()
    want = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    if sorted(sd) != sorted(want):
        return f"loaded keys {sorted(sd)} != file keys {sorted(want)}"
    for k, v in sd.items():
        if v.dtype != np.float32 or not np.array_equal(v, want[k].astype(np.float32)):
            return f"loaded '{k}' differs from the file's bytes"
    if isinstance(obj, ck.Trainer):
        t = header["meta"]["trainer"]
        if obj.epoch != t["epoch"] or obj.seed != t["seed"]:
            return "trainer epoch/seed differ from the file's"
        if obj.optimizer is not None:
            st = obj.optimizer.state_dict()
            if st["step"] != t["optimizer"]["step"]:
                return "optimizer step differs from the file's"
            file_bufs = {k[10:]: v for k, v in tensors.items() if k.startswith("optimizer/")}
            if sorted(st["buffers"]) != sorted(file_bufs):
                return f"optimizer buffers {sorted(st['buffers'])} != file's {sorted(file_bufs)}"
            for k, v in st["buffers"].items():
                if not np.array_equal(v, file_bufs[k]):
                    return f"optimizer buffer {k} differs from the file's"
    seed_header, seed_tensors = reference_read(seed_raw)
    same = (_norm(header["meta"]["architecture"]) == _norm(seed_header["meta"]["architecture"])
            and sorted(tensors) == sorted(seed_tensors)
            and all(np.array_equal(tensors[k], seed_tensors[k]) for k in tensors))
    if same:
        out = model.forward(probe)
        if not np.array_equal(out, seed_out):
            return "same weights as the seed file, but different outputs"
    return None


def fuzz(workdir: Path, n: int, seed: int) -> dict:
    """Run n mutants over the seed files; returns the figures (failures listed)."""
    ck.set_num_threads(1)
    files = make_seed_files(workdir)
    seeds = {k: p.read_bytes() for k, p in files.items()}
    probe = tiny_data(4, seed=9)[0]
    seed_out = {}
    for k, p in files.items():
        obj = ck.load(p, device="cpu")
        seed_out[k] = (obj.model if isinstance(obj, ck.Trainer) else obj).forward(probe)
    # a trainer of the Adam file's architecture and optimizer, to load mutants into
    target = ck.load(files["adam"], device="cpu")
    target_before = _state(target)

    rnd = random.Random(seed)
    signal.signal(signal.SIGALRM, _on_alarm)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = {"mutants": 0, "rejected": 0, "loaded_identical": 0, "loaded_different": 0,
             "max_ms": 0.0, "max_alloc_ratio": 0.0, "by_op": {}}
    failures = []
    path = workdir / "mutant.cnnkit"
    names = sorted(seeds)
    for i in range(n):
        which = names[i % len(names)]
        raw, op, crc_fixed = mutate(seeds[which], rnd)
        path.write_bytes(raw)
        stats["mutants"] += 1
        stats["by_op"][op] = stats["by_op"].get(op, 0) + 1
        entry = ("load", "load_model", "load_weights", "load_checkpoint")[i % 4]
        tracemalloc.start()
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, PER_MUTANT_SECONDS)
        result, err = None, None
        try:
            if entry == "load":
                result = ck.load(path, device="cpu")
            elif entry == "load_model":
                result = ck.load_model(path)
            elif entry == "load_weights":
                m = tiny_model(1)
                ck.io.load_weights(m, path)
                result = m
            else:
                target.load_checkpoint(path)
                result = target
        except _Timeout:
            err = "hang"
        except CheckpointError as e:
            err = None if str(e).startswith(str(path)) else f"message does not name the file: {e}"
            result = "rejected"
        except BaseException as e:  # noqa: BLE001 - any other type is the failure we look for
            where = traceback.extract_tb(e.__traceback__)[-1]
            err = f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            dt = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        stats["max_ms"] = max(stats["max_ms"], dt * 1000)
        ratio = peak / max(len(raw), 1)
        if peak > ALLOC_FACTOR * len(raw) + ALLOC_SLACK:
            err = err or f"allocated {peak} bytes for a {len(raw)}-byte file"
        stats["max_alloc_ratio"] = max(stats["max_alloc_ratio"], ratio if len(raw) > 65536 else 0)
        if err is None and result == "rejected":
            stats["rejected"] += 1
            if entry == "load_checkpoint":  # a failed load changes nothing
                now = _state(target)
                if any(not np.array_equal(now[k], target_before[k]) for k in now):
                    err = "a rejected load_checkpoint changed the trainer's weights"
        elif err is None:
            why = check_faithful(result, raw, seeds[which], probe, seed_out[which])
            if why is None and not crc_fixed and not _unchanged_data(raw, seeds[which]):
                why = "the data section changed without a CRC fix, yet the file loaded"
            if why:
                err = f"loaded unfaithfully: {why}"
            else:
                same = raw == seeds[which] or (not crc_fixed and _unchanged_data(raw, seeds[which]))
                stats["loaded_identical" if same else "loaded_different"] += 1
            if entry == "load_checkpoint":
                target_before = _state(target)  # a successful load changes it: new baseline
        if err is not None:
            if entry == "load_checkpoint":  # start the next ones from a known trainer again
                target = ck.load(files["adam"], device="cpu")
                target_before = _state(target)
            failures.append({"i": i, "seed_file": which, "op": op, "entry": entry,
                             "size": len(raw), "error": err[:300]})
    stats["rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    if stats["rss_growth_mb"] > RSS_GROWTH_LIMIT_MB:
        failures.append({"error": f"peak RSS grew by {stats['rss_growth_mb']:.0f} MB"})
    stats["seed_file_sizes"] = {k: len(v) for k, v in seeds.items()}
    stats["failures"] = failures
    stats["max_ms"] = round(stats["max_ms"], 1)
    stats["max_alloc_ratio"] = round(stats["max_alloc_ratio"], 2)
    return stats


def _unchanged_data(raw: bytes, seed_raw: bytes) -> bool:
    """True when raw's data section (per its own header length) equals the seed's."""
    try:
        (h,) = struct.unpack("<Q", raw[8:16])
        (hs,) = struct.unpack("<Q", seed_raw[8:16])
    except struct.error:
        return False
    return raw[16 + h :] == seed_raw[16 + hs :]


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_mutation_fuzzer_in_a_subprocess(tmp_path: Path) -> None:
    """N_MUTANTS seeded mutants; the subprocess must exit 0 (a crash would not) and report
    every mutant as rejected cleanly or loaded faithfully."""
    out = tmp_path / "figures.json"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import json, pathlib, test_hardening_files as f; "
            f"s = f.fuzz(pathlib.Path({str(tmp_path)!r}), {N_MUTANTS}, 20240601); "
            f"pathlib.Path({str(out)!r}).write_text(json.dumps(s)); "
            f"print('mutants run:', s['mutants']); sys.exit(1 if s['failures'] else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=240, env=script_env())
    assert p.returncode in (0, 1), f"fuzz process crashed (rc={p.returncode}):\n{p.stderr[-3000:]}"
    stats = json.loads(out.read_text())
    fails = stats.pop("failures")
    print(figures_line("fuzz", stats))
    assert f"mutants run: {N_MUTANTS}" in p.stdout
    assert not fails, f"{len(fails)} bad outcomes, first ones:\n" + "\n".join(
        json.dumps(f) for f in fails[:15])
    assert p.returncode == 0
    assert stats["mutants"] == N_MUTANTS
    # the mix really exercised both outcomes
    assert stats["rejected"] > N_MUTANTS // 2
    assert stats["loaded_identical"] + stats["loaded_different"] > 10


def test_reference_reader_agrees_on_seed_files(tmp_path: Path) -> None:
    files = make_seed_files(tmp_path)
    for p in files.values():
        header, tensors = reference_read(p.read_bytes())
        obj = ck.load(p, device="cpu")
        sd = _state(obj)
        for k, v in sd.items():
            assert np.array_equal(v, tensors["model/" + k])


def test_mutator_is_seeded(tmp_path: Path) -> None:
    raw = make_seed_files(tmp_path)["model"].read_bytes()
    (tmp_path / "again").mkdir()
    again = make_seed_files(tmp_path / "again")
    assert all((tmp_path / p.name).read_bytes() == p.read_bytes() for p in again.values())
    a = [mutate(raw, r)[0] for r in [random.Random(3)] for _ in range(30)]
    b = [mutate(raw, r)[0] for r in [random.Random(3)] for _ in range(30)]
    assert a == b


# ---------------------------------------------------------------------------------------------
# Atomic save under SIGKILL
# ---------------------------------------------------------------------------------------------

BIG = 1000  # Linear(1000, 1000): 4 MB of weights


SAVER = f"""
import os, signal, sys
import numpy as np
import cnnkit as ck
from cnnkit import io
path, mode = sys.argv[1], sys.argv[2]
ck.manual_seed(0)
m = ck.Sequential([ck.Linear({BIG}, {BIG})])
def set_version(v):
    m.load_state_dict({{"0.weight": np.full(({BIG}, {BIG}), float(v), np.float32),
                        "0.bias": np.full({BIG}, float(v), np.float32)}})
if mode == "loop":          # save versions start, start + 1, ... until killed
    v = int(sys.argv[3])
    while True:
        set_version(v)
        print("saving", v, flush=True)
        ck.save(m, path)
        v += 1
else:                       # kill ourselves at a chosen point inside save
    set_version(99)
    point = mode
    real_write, real_replace = io._write_payload, os.replace
    def write(f, prefix, tensors):
        f.write(prefix)
        if point == "after_header":
            f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        for a in tensors:
            f.write(memoryview(a).cast("B")[: a.nbytes // 2])
            if point == "mid_data":
                f.flush(); os.kill(os.getpid(), signal.SIGKILL)
            f.write(memoryview(a).cast("B")[a.nbytes // 2 :])
    def replace(src, dst):
        if point == "before_rename":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)
    io._write_payload = write
    io.os.replace = replace
    print("saving", flush=True)
    ck.save(m, path)
    print("survived", flush=True)
"""


def _check_intact(path: Path, versions: set[float]) -> float:
    m = ck.load(path)
    sd = m.state_dict()
    v = float(sd["0.bias"][0])
    assert v in versions, f"file holds version {v}, expected one of {sorted(versions)}"
    assert np.all(sd["0.weight"] == v) and np.all(sd["0.bias"] == v), "a mixed/partial file"
    return v


def _temp_files(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("point", ["after_header", "mid_data", "before_rename"])
def test_sigkill_inside_save_keeps_the_previous_file(tmp_path: Path, point: str) -> None:
    path = tmp_path / "big.cnnkit"
    ck.manual_seed(0)
    m = ck.Sequential([ck.Linear(BIG, BIG)])
    m.load_state_dict({"0.weight": np.full((BIG, BIG), 7.0, np.float32),
                       "0.bias": np.full(BIG, 7.0, np.float32)})
    ck.save(m, path)
    p = subprocess.run([sys.executable, "-c", SAVER, str(path), point], capture_output=True,
                       text=True, timeout=60, env=script_env())
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])
    assert "survived" not in p.stdout
    assert _check_intact(path, {7.0}) == 7.0  # the previous file, untouched
    leftovers = _temp_files(tmp_path)
    # a killed writer may leave its temp file; it never has the target's name ...
    assert all(t.name.startswith(".big.cnnkit.") and t.name != path.name for t in leftovers)
    assert len(leftovers) <= 1
    # ... and the next save removes it once it is stale (its writer is gone)
    for t in leftovers:
        old = time.time() - 3600
        os.utime(t, (old, old))
    ck.save(m, path)
    assert _temp_files(tmp_path) == []
    assert _check_intact(path, {7.0}) == 7.0


def test_sigkill_at_random_moments_of_repeated_saves(tmp_path: Path) -> None:
    """Children save versions k, k+1, ... of a 4 MB model in a loop and are SIGKILLed at
    seeded random delays; afterwards the file always loads and holds one whole version: the
    last one whose save completed (or the previous child's)."""
    rnd = random.Random(7)
    path = tmp_path / "big.cnnkit"
    ck.manual_seed(0)
    m = ck.Sequential([ck.Linear(BIG, BIG)])
    m.load_state_dict({"0.weight": np.zeros((BIG, BIG), np.float32),
                       "0.bias": np.zeros(BIG, np.float32)})
    ck.save(m, path)
    current, found = 0.0, []
    for kill in range(4):
        base = 1000 * (kill + 1)
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(path), "loop", str(base)],
                                 stdout=subprocess.PIPE, text=True, env=script_env())
        try:
            first = child.stdout.readline()
            assert first.startswith("saving"), first
            time.sleep(rnd.uniform(0.0, 0.15))
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
            started = [int(first.split()[1])] + [int(line.split()[1]) for line in child.stdout]
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
        last = max(started)  # its save was in progress or had just completed
        allowed = {float(last), float(last - 1) if last > base else current}
        current = _check_intact(path, allowed)
        found.append((len(started), current))
        assert len(_temp_files(tmp_path)) <= 1
        for t in _temp_files(tmp_path):
            os.utime(t, (0, 0))  # make the killed writer's temp file old: stale
    ck.save(m, path)  # cleans the stale temp file of the last killed writer
    assert _temp_files(tmp_path) == []
    print(figures_line("sigkill", {"kills": len(found), "saves_started_and_version_found": found}))


def test_stale_temp_of_a_live_writer_or_a_fresh_one_is_kept(tmp_path: Path) -> None:
    """Cleaning never touches a temp file that may still be written: one of a live process,
    or one modified recently."""
    path = tmp_path / "m.cnnkit"
    m = tiny_model()
    live = tmp_path / f".m.cnnkit.{os.getppid()}.abcdefgh.tmp"  # our parent is alive
    fresh = tmp_path / ".m.cnnkit.999999999.ijklmnop.tmp"  # no such pid, but just written
    other = tmp_path / ".other.cnnkit.999999999.qrstuvwx.tmp"  # another target's
    for t in (live, fresh, other):
        t.write_bytes(b"partial")
    os.utime(live, (0, 0))
    os.utime(other, (0, 0))
    ck.save(m, path)
    assert live.exists() and fresh.exists() and other.exists()
    os.utime(fresh, (0, 0))
    ck.save(m, path)
    assert not fresh.exists() and live.exists() and other.exists()
    # a temp file can never be mistaken for the target
    with pytest.raises(FileNotFoundError):
        ck.load(tmp_path / "nothing.cnnkit")
    assert np.array_equal(ck.load(path).state_dict()["0.weight"], m.state_dict()["0.weight"])


if __name__ == "__main__":  # python tests/test_hardening_files.py [N] [SEED]: the fuzzer alone
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else N_MUTANTS
        s = fuzz(Path(d), n, int(sys.argv[2]) if len(sys.argv) > 2 else 20240601)
        print(json.dumps(s, indent=1))
        sys.exit(1 if s["failures"] else 0)
