"""A Trainer's state as one plain dict, checked before anything is applied.

``Trainer.state_dict()`` returns, and ``Trainer.load_state_dict()`` takes::

    {"model": {name: array},                        # the model's state_dict
     "loss": "cross_entropy" | "mse", "metrics": ["accuracy"] | [],
     "seed": int, "epoch": int,                     # epochs completed
     "rng": {"seed": int, "counter": int},          # the Dropout stream's position
     "history": History.to_dict(),
     "progress": None | {...},                      # position inside an unfinished epoch
     "optimizer": None | {"kind", "config", "step", "initial_lr", "flat_size",
                          "buffers": {name: float32 (flat_size,)}},
     "lr_scheduler": None | LRScheduler.state_dict()}

The file format (cnnkit.serialization) stores exactly this: the arrays as tensors, the rest in
``meta.trainer``. Everything here is checked (types, ranges, optimizer and schedule) by
:func:`check`, and applied by :func:`load_into` all or nothing: on any error the trainer is
unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import optim as _optim

__all__ = ["check", "load_into", "state_of"]

_MAX_INT = 2**63 - 1
_KEYS = ("model", "loss", "metrics", "seed", "epoch", "rng", "history", "progress",
         "optimizer", "lr_scheduler")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _short(v: Any, limit: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


def _finite_float(v: Any) -> float | None:
    """v as a finite float, or None when it is not a finite number."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                              np.floating)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


@dataclass
class Checked:
    """A state that passed :func:`check`: values normalized, History/optimizer rebuilt."""
    model: dict[str, Any]
    loss: str
    metrics: list[str]
    seed: int
    epoch: int
    rng: tuple[int, int]
    history: Any
    progress: dict[str, Any] | None
    optimizer: dict[str, Any] | None  # kind, config (complete), step, initial_lr, flat_size
    opt_buffers: dict[str, np.ndarray]
    scheduler: dict[str, Any] | None


def state_of(trainer: Any) -> dict[str, Any]:
    """The state dict of `trainer` (arrays copied to host numpy)."""
    net = trainer.model._net
    seed, counter = net.rng_state()
    progress = trainer._progress
    state: dict[str, Any] = {
        "model": trainer.model.state_dict(),
        "loss": trainer.loss.name, "metrics": list(trainer.metrics), "seed": int(trainer.seed),
        "epoch": int(trainer.epoch), "rng": {"seed": int(seed), "counter": int(counter)},
        "history": trainer.history.to_dict(),
        "progress": progress.to_dict() if progress is not None else None,
        "optimizer": None, "lr_scheduler": None,
    }
    opt = trainer.optimizer
    if opt is not None:
        st = opt.state_dict()
        state["optimizer"] = {"kind": opt.kind, "config": st["config"], "step": st["step"],
                              "initial_lr": opt.initial_lr,
                              "flat_size": int(net.flat_params().shape[0]),
                              "buffers": dict(st["buffers"])}
        if trainer.lr_scheduler is not None:
            state["lr_scheduler"] = trainer.lr_scheduler.state_dict()
    return state


def _check_progress(p: Any, epoch: int, where: str, error: type[Exception]) -> Any:
    """state["progress"]: None, or the position inside an unfinished epoch."""
    if p is None:
        return None
    from .trainer import _Progress

    if not isinstance(p, dict) or set(p) != set(_Progress.FIELDS):
        raise error(f"{where}: trainer.progress must be null or an object with "
                    f"{list(_Progress.FIELDS)}")
    ints = ("epoch", "batch", "batches", "batch_size", "samples", "seen", "correct")
    if not all(_is_int(p[k]) and 0 <= p[k] < 2**63 for k in ints):
        raise error(f"{where}: trainer.progress: {', '.join(ints)} must be non-negative ints")
    if not isinstance(p["shuffle"], (bool, np.bool_)):
        raise error(f"{where}: trainer.progress.shuffle must be a boolean")
    out = {k: int(p[k]) for k in ints}
    out["shuffle"] = bool(p["shuffle"])
    for k in ("loss_sum", "time"):
        v = _finite_float(p[k])
        if v is None or v < 0:
            raise error(f"{where}: trainer.progress.{k} must be a finite number >= 0")
        out[k] = v
    if out["epoch"] != epoch:
        raise error(f"{where}: trainer.progress is for epoch {out['epoch']}, but the "
                    f"checkpoint has {epoch} epochs done")
    if not (1 <= out["batch_size"] and out["batch"] <= out["batches"] <= out["samples"]
            and out["correct"] <= out["seen"] <= out["samples"]
            and out["seen"] <= out["batch"] * out["batch_size"]):
        raise error(f"{where}: trainer.progress is inconsistent: {p}")
    return out


def _check_optimizer(opt: Any, bufs: Any, sched: Any, where: str,
                     error: type[Exception]) -> tuple[Any, dict[str, np.ndarray]]:
    if not isinstance(opt, dict) or not isinstance(opt.get("config"), dict):
        raise error(f"{where}: bad trainer.optimizer")
    if not isinstance(opt.get("kind"), str):
        raise error(f"{where}: bad optimizer kind {opt.get('kind')!r:.60}")
    try:
        scratch = _optim.from_config(opt["kind"], opt["config"])
    except ValueError as e:
        raise error(f"{where}: bad optimizer: {e}") from None
    if not isinstance(bufs, dict) or not all(isinstance(k, str) for k in bufs):
        raise error(f"{where}: optimizer buffers must be a dict of name -> array")
    if bufs and sorted(bufs) != sorted(scratch.state_names()):
        raise error(f"{where}: a {scratch.kind} optimizer has buffers "
                    f"{scratch.state_names()}, the state has {_short(sorted(bufs))}")
    flat = opt.get("flat_size")
    if not _is_int(flat) or not 0 <= flat <= _MAX_INT:
        raise error(f"{where}: optimizer flat_size must be a non-negative int")
    for k, a in bufs.items():
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 1 \
                or a.shape[0] != flat:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise error(f"{where}: optimizer buffer {_short(k)} must be float32 "
                        f"({_short(flat)},), got {got}")
    if not _is_int(opt.get("step")) or not 0 <= opt["step"] <= _MAX_INT:
        raise error(f"{where}: optimizer step must be a non-negative int")
    ilr = opt.get("initial_lr")
    if ilr is not None and _finite_float(ilr) is None:
        raise error(f"{where}: bad optimizer initial_lr {ilr!r:.60}")
    if sched is not None:
        scratch.initial_lr = ilr
        try:
            _optim.scheduler_from_state(scratch, sched)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
            raise error(f"{where}: bad lr schedule: {e}") from None
    out = {"kind": opt["kind"], "config": scratch.get_config(),  # complete (defaults filled)
           "step": int(opt["step"]), "initial_lr": ilr, "flat_size": int(flat)}
    return out, dict(bufs)


def check(state: Any, where: str, error: type[Exception] = ValueError) -> Checked:
    """Check every part of a trainer state dict; raises `error` naming `where` and the field."""
    from .trainer import History

    if not isinstance(state, dict):
        raise error(f"{where}: expected a trainer state dict, got {type(state).__name__}")
    missing = [k for k in _KEYS if k not in state]
    unexpected = [k for k in state if k not in _KEYS]
    if missing or unexpected:
        raise error(f"{where}: trainer state: missing keys {missing}, unexpected keys "
                    f"{unexpected}")
    if state["loss"] not in ("cross_entropy", "mse"):
        raise error(f"{where}: unknown loss {_short(state['loss'])}")
    metrics = state["metrics"]
    if not isinstance(metrics, (list, tuple)) or not all(m == "accuracy" for m in metrics):
        raise error(f"{where}: bad metrics {_short(metrics)}")
    for k in ("seed", "epoch"):
        if not _is_int(state[k]) or not 0 <= state[k] <= _MAX_INT:
            raise error(f"{where}: trainer.{k} must be a non-negative int")
    rng = state["rng"]
    if not isinstance(rng, dict) or not all(
            _is_int(rng.get(k)) and 0 <= rng[k] < 2**64 for k in ("seed", "counter")):
        raise error(f"{where}: trainer.rng must be {{seed, counter}} (64-bit ints)")
    try:
        hist = History.from_dict(state["history"] or {})
    except (TypeError, ValueError, AttributeError, OverflowError) as e:
        raise error(f"{where}: bad history: {e}") from None
    epoch = int(state["epoch"])
    progress = _check_progress(state["progress"], epoch, where, error)
    opt, sched = state["optimizer"], state["lr_scheduler"]
    bufs: dict[str, np.ndarray] = {}
    if opt is not None:
        opt, bufs = _check_optimizer(opt, opt.get("buffers", {}) if isinstance(opt, dict)
                                     else None, sched, where, error)
    elif sched is not None:
        raise error(f"{where}: optimizer state without an optimizer")
    if not hasattr(state["model"], "items"):
        raise error(f"{where}: trainer state 'model' must be a dict of name -> array")
    return Checked(dict(state["model"]), state["loss"], list(metrics), int(state["seed"]),
                   epoch, (int(rng["seed"]), int(rng["counter"])), hist, progress, opt, bufs,
                   sched)


def _fits(trainer: Any, st: Checked, where: str, error: type[Exception]) -> None:
    """Whether a checked state can go into this trainer (loss, optimizer kind, sizes)."""
    if st.loss != trainer.loss.name:
        raise error(f"{where}: the checkpoint was trained with loss {st.loss!r}, "
                    f"this trainer uses {trainer.loss.name!r}")
    if st.optimizer is not None and trainer.optimizer is not None \
            and trainer.optimizer.kind != st.optimizer["kind"]:
        raise error(f"{where}: the checkpoint's optimizer is {st.optimizer['kind']}, this "
                    f"trainer's is {trainer.optimizer.kind}")
    if st.optimizer is not None:
        n = int(trainer.model._net.flat_params().shape[0])
        if st.optimizer["flat_size"] != n:
            raise error(f"{where}: the optimizer state has flat_size "
                        f"{st.optimizer['flat_size']!r}, the model needs {n}")


def _apply(trainer: Any, st: Checked) -> None:
    """Apply a checked state (nothing here should fail)."""
    from .trainer import _Progress

    trainer.model.load_state_dict(st.model)
    net = trainer.model._net
    if st.optimizer is not None:
        opt = trainer.optimizer
        if opt is None:
            opt = _optim.from_config(st.optimizer["kind"], st.optimizer["config"])
            trainer.optimizer = opt
        opt.attach(trainer.model)
        opt.load_state_dict({"kind": opt.kind, "config": st.optimizer["config"],
                             "step": st.optimizer["step"], "buffers": st.opt_buffers})
        trainer.lr_scheduler = None
        trainer._scheduler_restored = st.scheduler is not None
        if st.scheduler is not None:
            trainer.lr_scheduler = _optim.scheduler_from_state(opt, st.scheduler)
            opt.lr = float(st.optimizer["config"]["lr"])  # the lr saved, exactly
        opt.initial_lr = st.optimizer["initial_lr"]
    net.set_rng(int(st.rng[0]), int(st.rng[1]))
    trainer.seed = st.seed
    trainer.epoch = st.epoch
    trainer.history = st.history
    trainer._progress = _Progress(**st.progress) if st.progress is not None else None


def _snapshot(trainer: Any) -> dict[str, Any]:
    """Everything _apply changes."""
    opt = trainer.optimizer
    return {"weights": trainer.model.state_dict(), "rng": trainer.model._net.rng_state(),
            "optimizer": opt, "opt_state": opt.state_dict() if opt is not None else None,
            "initial_lr": opt.initial_lr if opt is not None else None,
            **{k: getattr(trainer, k) for k in ("lr_scheduler", "_scheduler_restored", "seed",
                                                 "epoch", "history", "_progress")}}


def _restore(trainer: Any, snap: dict[str, Any]) -> None:
    trainer.model.load_state_dict(snap["weights"])
    trainer.model._net.set_rng(*snap["rng"])
    trainer.optimizer = snap["optimizer"]
    if snap["optimizer"] is not None:
        snap["optimizer"].attach(trainer.model)
        snap["optimizer"].load_state_dict(snap["opt_state"])
        snap["optimizer"].initial_lr = snap["initial_lr"]
    for k in ("lr_scheduler", "_scheduler_restored", "seed", "epoch", "history", "_progress"):
        setattr(trainer, k, snap[k])


def load_into(trainer: Any, state: Any, where: str, error: type[Exception] = ValueError) -> None:
    """Check `state` completely, then apply it to `trainer`; on any error nothing changes."""
    st = state if isinstance(state, Checked) else check(state, where, error)
    _fits(trainer, st, where, error)
    try:  # the model's own check (names, shapes, dtypes) runs before it changes anything
        st.model = trainer.model._check_state_dict(st.model)
    except ValueError as e:
        raise error(f"{where}: {e}") from None
    snapshot = _snapshot(trainer)
    try:
        _apply(trainer, st)
    except Exception as e:  # a gap in the checks above: undo, so that nothing half-loads
        _restore(trainer, snapshot)
        raise error(f"{where}: cannot apply the state: {type(e).__name__}: {e}") from e
