"""Optimizers and learning-rate schedules with PyTorch's names, defaults and update rules.

The update itself runs in C++ (one fused kernel over the model's flat parameter buffer); the
classes here validate hyper-parameters, push them into the model's native Net, and expose the
state for checkpoints. Two ways to use them:

>>> opt = Adam(lr=1e-3)                       # Keras style: the Trainer attaches it
>>> trainer = cnnkit.Trainer(model, optimizer=opt)

>>> opt = SGD(model, lr=0.1, momentum=0.9)    # PyTorch style: a manual loop
>>> out = model.forward(x, training=True); model.backward(loss.backward_from(out))
>>> opt.step(); opt.zero_grad()

Schedules (:class:`StepLR`, :class:`CosineAnnealingLR`, :class:`ReduceLROnPlateau`,
:class:`LinearWarmup`) follow ``torch.optim.lr_scheduler``: construct them after the optimizer,
call ``step()`` once per epoch (``LinearWarmup``: once per batch), read ``get_last_lr()``.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np

from ._checks import positive_int

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "Adagrad",
    "RMSprop",
    "get",
    "from_config",
    "LRScheduler",
    "StepLR",
    "CosineAnnealingLR",
    "ReduceLROnPlateau",
    "LinearWarmup",
    "scheduler_from_state",
]

# The optimizer object currently driving each native Net (so re-attaching is a no-op and
# does not reset the state). Values are weak references too: the optimizer holds its model,
# which holds the Net, so a strong value would keep every model ever trained alive.
_ATTACHED: weakref.WeakKeyDictionary[Any, weakref.ref[Optimizer]] = weakref.WeakKeyDictionary()


def _number(value: Any, name: str, where: str, *, lo: float | None = 0.0,
            lo_open: bool = False, hi: float | None = None, hi_open: bool = False) -> float:
    """A finite float in [lo, hi] (open ends when asked), else ValueError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        hi_s = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        rng = f"in {lo_s}, {hi_s}" if lo is not None and hi is not None else (
            f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else f"<= {hi:g}")
        raise ValueError(f"{where}: {name} must be a finite number {rng}, got {value!r}")
    return v


def _model_net(model: Any, where: str) -> Any:
    net = getattr(model, "_net", None)
    if net is None or not hasattr(net, "set_optimizer"):
        raise ValueError(f"{where}: expected a cnnkit.Sequential, got {type(model).__name__}")
    return net


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------


class Optimizer:
    """Base class: hyper-parameters in PyTorch's names, attached to one model at a time.

    Subclasses set ``kind`` (the native optimizer) and implement ``_validate`` and ``_native``.
    """

    kind = "none"

    def __init__(self, model: Any = None, **hyper: Any) -> None:
        self._hyper: dict[str, Any] = self._validate(dict(hyper))
        self._model: Any = None
        self._pending: dict[str, Any] | None = None  # state loaded before attach()
        self.initial_lr: float | None = None  # set by the first schedule (like torch)
        if model is not None:
            if isinstance(model, (int, float)) and not isinstance(model, bool):
                raise ValueError(
                    f"{type(self).__name__}: the first argument is the model (PyTorch style); "
                    f"pass the learning rate by keyword: {type(self).__name__}(lr={model!r})"
                )
            self.attach(model)

    # -- configuration ----------------------------------------------------------------------
    def _validate(self, h: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _native(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """Hyper-parameters in the native binding's names (lr, beta1, ...)."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (PyTorch names), enough to rebuild the optimizer."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._hyper.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper.items())
        return f"{type(self).__name__}({args})"

    @property
    def lr(self) -> float:
        """The current learning rate; setting it updates the attached model at once."""
        return float(self._hyper["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        v = _number(value, "lr", type(self).__name__)
        self._hyper["lr"] = v
        if self._is_live():
            self._model._net.set_lr(v)

    @property
    def model(self) -> Any:
        """The model this optimizer updates (None before attach)."""
        return self._model

    # -- attaching ----------------------------------------------------------------------------
    def _is_live(self) -> bool:
        if self._model is None:
            return False
        net = self._model._net
        ref = _ATTACHED.get(net)
        return ref is not None and ref() is self and net.has_optimizer()

    def attach(self, model: Any) -> Optimizer:
        """Make this optimizer update `model` (a Sequential); returns self.

        Attaching again to the same model keeps the state (momentum, moments, step count).
        Attaching to a new model starts from a fresh state.
        """
        net = _model_net(model, f"{type(self).__name__}.attach")
        if self._model is model and self._is_live():
            return self
        if self._model is not None and self._model is not model:
            self._pending = None  # state belongs to the previous model
        net.set_optimizer(self.kind, self._native())
        _ATTACHED[net] = weakref.ref(self)
        self._model = model
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._load_native_state(pending)
        return self

    def _require_live(self, where: str) -> Any:
        if self._model is None:
            raise ValueError(
                f"{type(self).__name__}.{where}: not attached to a model; "
                f"use {type(self).__name__}(model, ...) or .attach(model)"
            )
        if not self._is_live():
            raise ValueError(
                f"{type(self).__name__}.{where}: another optimizer now drives this model; "
                "call .attach(model) again"
            )
        return self._model._net

    # -- manual (PyTorch-style) loop ----------------------------------------------------------
    def step(self) -> None:
        """One update from the gradients accumulated by ``model.backward`` (then zeroes them)."""
        self._require_live("step").optimizer_step()

    def zero_grad(self) -> None:
        """Zero the model's accumulated gradients."""
        self._require_live("zero_grad").zero_grad()

    # -- state --------------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """Number of updates applied so far."""
        if self._is_live():
            return int(self._model._net.optimizer_state()["step"])
        return int(self._pending["step"]) if self._pending else 0

    def state_names(self) -> list[str]:
        """Names of the state buffers, in order (e.g. ["exp_avg", "exp_avg_sq"])."""
        return list(_STATE_NAMES[self.kind])

    def state_dict(self) -> dict[str, Any]:
        """{"kind", "config" (PyTorch names, current lr), "step", "buffers": {name: (n,) float32}}.

        The buffers run over the model's flat parameter vector (``model._net.flat_params()``),
        and are empty before the first update.
        """
        step, buffers = 0, {}
        if self._is_live():
            st = self._model._net.optimizer_state()
            step = int(st["step"])
            buffers = {k: np.array(st[k], dtype=np.float32) for k in self.state_names() if k in st}
        elif self._pending is not None:
            step = int(self._pending["step"])
            buffers = {k: v.copy() for k, v in self._pending["buffers"].items()}
        return {"kind": self.kind, "config": self.get_config(), "step": step, "buffers": buffers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore hyper-parameters, step count and buffers from :meth:`state_dict`.

        Everything is checked before anything changes. Before attach, the state is kept and
        applied when the optimizer is attached.
        """
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"{where}: expected a dict from state_dict()")
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(f"{where}: state is for '{state['kind']}', this is '{self.kind}'")
        hyper = self._validate(dict(state.get("config", self._hyper)))
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"{where}: step must be a non-negative int, got {step!r}")
        raw = state.get("buffers", {}) or {}
        names = self.state_names()
        unknown = [k for k in raw if k not in names]
        if unknown:
            raise ValueError(f"{where}: unknown buffers {unknown} (expected {names})")
        if raw and sorted(raw) != sorted(names):
            raise ValueError(f"{where}: expected buffers {names}, got {sorted(raw)}")
        buffers = {}
        for k in names:
            if k not in raw:
                continue
            a = np.asarray(raw[k])
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"{where}: buffer '{k}' must be a 1-D float array, got "
                                 f"{a.dtype} {a.shape}")
            buffers[k] = np.ascontiguousarray(a, dtype=np.float32)
        pending = {"step": int(step), "buffers": buffers}
        if self._model is not None and self._is_live():
            n = int(self._model._net.flat_params().shape[0])
            for k, a in buffers.items():
                if a.shape[0] != n:
                    raise ValueError(f"{where}: buffer '{k}' has {a.shape[0]} values, the model "
                                     f"needs {n}")
            self._hyper = hyper
            self._model._net.set_optimizer(self.kind, self._native())
            self._load_native_state(pending)
        else:
            self._hyper = hyper
            self._pending = pending

    def _load_native_state(self, st: dict[str, Any]) -> None:
        bufs = [st["buffers"][k] for k in self.state_names() if k in st["buffers"]]
        self._model._net.set_optimizer_state(int(st["step"]), bufs)


_STATE_NAMES = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "adagrad": ("sum",),
    "rmsprop": ("square_avg", "momentum_buffer"),
}


def _betas(v: Any, where: str) -> tuple[float, float]:
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {v!r}")
    b1 = _number(v[0], "betas[0]", where, lo=0.0, hi=1.0, hi_open=True)
    b2 = _number(v[1], "betas[1]", where, lo=0.0, hi=1.0, hi_open=True)
    return b1, b2


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

    Same rule as ``torch.optim.SGD``: d = g + wd*w; buf = d (first step) or
    momentum*buf + (1-dampening)*d; d = d + momentum*buf (nesterov) or buf; w -= lr*d.
    """

    kind = "sgd"

    def __init__(self, model: Any = None, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(model, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _validate(self, h: dict[str, Any]) -> dict[str, Any]:
        w = "SGD"
        out = {
            "lr": _number(h.get("lr", 1e-3), "lr", w),
            "momentum": _number(h.get("momentum", 0.0), "momentum", w),
            "dampening": _number(h.get("dampening", 0.0), "dampening", w),
            "weight_decay": _number(h.get("weight_decay", 0.0), "weight_decay", w),
            "nesterov": h.get("nesterov", False),
        }
        _no_extra(h, out, w)
        if not isinstance(out["nesterov"], (bool, np.bool_)):
            raise ValueError(f"SGD: nesterov must be a bool, got {out['nesterov']!r}")
        out["nesterov"] = bool(out["nesterov"])
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum > 0 and zero dampening")
        return out

    def _native(self) -> dict[str, Any]:
        return dict(self._hyper)


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``, no amsgrad); weight_decay is L2 added to the gradient."""

    kind = "adam"

    def __init__(self, model: Any = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    _default_wd = 0.0

    def _validate(self, h: dict[str, Any]) -> dict[str, Any]:
        w = type(self).__name__
        out = {
            "lr": _number(h.get("lr", 1e-3), "lr", w),
            "betas": _betas(h.get("betas", (0.9, 0.999)), w),
            "eps": _number(h.get("eps", 1e-8), "eps", w),
            "weight_decay": _number(h.get("weight_decay", self._default_wd), "weight_decay", w),
        }
        _no_extra(h, out, w)
        return out

    def _native(self) -> dict[str, Any]:
        h = self._hyper
        return {"lr": h["lr"], "beta1": h["betas"][0], "beta2": h["betas"][1], "eps": h["eps"],
                "weight_decay": h["weight_decay"]}


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): decoupled weight decay, w *= 1 - lr*weight_decay."""

    kind = "adamw"
    _default_wd = 1e-2

    def __init__(self, model: Any = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class Adagrad(Optimizer):
    """Adagrad (``torch.optim.Adagrad``, initial accumulator 0):
    clr = lr / (1 + (t-1)*lr_decay); sum += d*d; w -= clr * d / (sqrt(sum) + eps)."""

    kind = "adagrad"

    def __init__(self, model: Any = None, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, eps: float = 1e-10) -> None:
        super().__init__(model, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps)

    def _validate(self, h: dict[str, Any]) -> dict[str, Any]:
        w = "Adagrad"
        out = {
            "lr": _number(h.get("lr", 1e-2), "lr", w),
            "lr_decay": _number(h.get("lr_decay", 0.0), "lr_decay", w),
            "weight_decay": _number(h.get("weight_decay", 0.0), "weight_decay", w),
            "eps": _number(h.get("eps", 1e-10), "eps", w),
        }
        _no_extra(h, out, w)
        return out

    def _native(self) -> dict[str, Any]:
        return dict(self._hyper)


class RMSprop(Optimizer):
    """RMSprop (``torch.optim.RMSprop``, non-centered):
    sq = alpha*sq + (1-alpha)*d*d; buf = momentum*buf + d/(sqrt(sq)+eps); w -= lr*buf."""

    kind = "rmsprop"

    def __init__(self, model: Any = None, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0) -> None:
        super().__init__(model, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum)

    def _validate(self, h: dict[str, Any]) -> dict[str, Any]:
        w = "RMSprop"
        out = {
            "lr": _number(h.get("lr", 1e-2), "lr", w),
            "alpha": _number(h.get("alpha", 0.99), "alpha", w),
            "eps": _number(h.get("eps", 1e-8), "eps", w),
            "weight_decay": _number(h.get("weight_decay", 0.0), "weight_decay", w),
            "momentum": _number(h.get("momentum", 0.0), "momentum", w),
        }
        _no_extra(h, out, w)
        return out

    def _native(self) -> dict[str, Any]:
        return dict(self._hyper)


def _no_extra(given: dict[str, Any], known: dict[str, Any], where: str) -> None:
    extra = sorted(set(given) - set(known))
    if extra:
        raise ValueError(f"{where}: unknown hyper-parameter(s) {extra} (expected {sorted(known)})")


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD, "adam": Adam, "adamw": AdamW, "adagrad": Adagrad, "rmsprop": RMSprop,
}


def get(optimizer: str | Optimizer) -> Optimizer:
    """An optimizer from a name ("sgd", "adam", "adamw", "adagrad", "rmsprop"; PyTorch
    defaults) or an Optimizer instance (returned as is)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]()
    raise ValueError(
        f"unknown optimizer {optimizer!r} (expected one of {sorted(OPTIMIZERS)} or an "
        "cnnkit.optim.Optimizer)"
    )


def from_config(kind: str, config: dict[str, Any]) -> Optimizer:
    """Rebuild an optimizer from its kind and :meth:`Optimizer.get_config` (not attached)."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {kind!r} (expected one of {sorted(OPTIMIZERS)})")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    if not all(isinstance(k, str) for k in cfg):
        raise ValueError(f"{kind}: config keys must be strings")
    try:
        return OPTIMIZERS[kind](**cfg)
    except TypeError as e:
        raise ValueError(f"{kind}: bad config {config!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------------------------


class LRScheduler:
    """Base class of the learning-rate schedules (``torch.optim.lr_scheduler`` semantics).

    ``last_epoch`` counts the calls to :meth:`step`; construction sets the lr for step 0.
    ``interval`` says when the Trainer steps it: "epoch" (default) or "step" (every batch).
    """

    interval = "epoch"

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ValueError(
                f"{type(self).__name__}: expected a cnnkit.optim optimizer, got "
                f"{type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        if optimizer.initial_lr is None:
            optimizer.initial_lr = optimizer.lr
        self.base_lr: float = float(optimizer.initial_lr)
        self.last_epoch = 0
        self._outer: LinearWarmup | None = None
        self._last_lr = self._closed_form(0)
        self._apply()

    def _closed_form(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self) -> None:
        scale = self._outer._factor() if self._outer is not None else 1.0
        self.optimizer.lr = self._last_lr * scale

    def step(self) -> None:
        """Advance one epoch (one batch for interval="step") and set the optimizer's lr."""
        self.last_epoch += 1
        self._last_lr = self._closed_form(self.last_epoch)
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rate this schedule computed last (a one-element list, like PyTorch)."""
        return [self._last_lr]

    def get_config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: {"type", "config", "base_lr", "last_epoch", "last_lr", ...}."""
        return {"type": type(self).__name__, "config": self.get_config(),
                "base_lr": self.base_lr, "last_epoch": self.last_epoch, "last_lr": self._last_lr,
                "interval": self.interval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` and set the optimizer's lr accordingly.

        The position (``last_epoch``) always comes from `state`. When this schedule's own
        plan differs from the saved one (another ``T_max``, ``step_size``, ...: a schedule
        made anew to extend a finished run), the lr follows this schedule's plan from that
        position; with the same plan, the saved lr is restored exactly.
        """
        self._check_state(state)
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self._last_lr = float(state["last_lr"])
        if state.get("config") != self.get_config():
            self._last_lr = self._closed_form(self.last_epoch)  # re-planned
        self.interval = str(state.get("interval", self.interval))
        self._apply()

    def _check_state(self, state: dict[str, Any]) -> None:
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or state.get("type") != type(self).__name__:
            raise ValueError(f"{where}: expected a state_dict of a {type(self).__name__}")
        for k in ("base_lr", "last_epoch", "last_lr"):
            if k not in state:
                raise ValueError(f"{where}: missing '{k}'")
        _number(state["base_lr"], "base_lr", where)
        _number(state["last_lr"], "last_lr", where)
        if state.get("interval", "epoch") not in ("epoch", "step"):
            raise ValueError(f"{where}: interval must be 'epoch' or 'step'")
        le = state["last_epoch"]
        if isinstance(le, bool) or not isinstance(le, int) or le < 0:
            raise ValueError(f"{where}: last_epoch must be a non-negative int, got {le!r}")


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = positive_int(step_size, "step_size", "StepLR")
        self.gamma = _number(gamma, "gamma", "StepLR")
        super().__init__(optimizer)

    def _closed_form(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)

    def get_config(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:  # noqa: N803
        self.T_max = positive_int(T_max, "T_max", "CosineAnnealingLR")
        self.eta_min = _number(eta_min, "eta_min", "CosineAnnealingLR")
        super().__init__(optimizer)

    def _closed_form(self, epoch: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2

    def get_config(self) -> dict[str, Any]:
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class ReduceLROnPlateau(LRScheduler):
    """Multiply the lr by `factor` when a metric has not improved for `patience` epochs.

    ``step(metric)`` once per epoch (``torch.optim.lr_scheduler.ReduceLROnPlateau``; relative
    or absolute threshold, cooldown, min_lr; reductions smaller than ``eps`` are skipped).
    """

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8) -> None:
        w = "ReduceLROnPlateau"
        if mode not in ("min", "max"):
            raise ValueError(f"{w}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{w}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor = _number(factor, "factor", w, hi=1.0, hi_open=True)
        self.patience = positive_int(patience, "patience", w, allow_zero=True)
        self.threshold = _number(threshold, "threshold", w)
        self.cooldown = positive_int(cooldown, "cooldown", w, allow_zero=True)
        self.min_lr = _number(min_lr, "min_lr", w)
        self.eps = _number(eps, "eps", w)
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"{w}: expected a cnnkit.optim optimizer, got "
                             f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        self._outer = None
        self._last_lr = optimizer.lr
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _closed_form(self, epoch: int) -> float:
        return self._last_lr  # the lr is state (the reductions so far), not a plan

    def is_better(self, a: float, best: float) -> bool:
        rel = self.threshold_mode == "rel"
        if self.mode == "min":
            return a < (best * (1 - self.threshold) if rel else best - self.threshold)
        return a > (best * (1 + self.threshold) if rel else best + self.threshold)

    def step(self, metrics: float) -> None:  # type: ignore[override]
        """Record this epoch's value of the monitored metric and reduce the lr if due."""
        current = float(metrics)
        self.last_epoch += 1
        if self._outer is None:
            self._last_lr = self.optimizer.lr  # like torch: reduce whatever lr is set now
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self._last_lr * self.factor, self.min_lr)
            if self._last_lr - new_lr > self.eps:
                self._last_lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._apply()

    def get_config(self) -> dict[str, Any]:
        return {"mode": self.mode, "factor": self.factor, "patience": self.patience,
                "threshold": self.threshold, "threshold_mode": self.threshold_mode,
                "cooldown": self.cooldown, "min_lr": self.min_lr, "eps": self.eps}

    def state_dict(self) -> dict[str, Any]:
        d = super().state_dict()
        d.update(best=self.best, num_bad_epochs=self.num_bad_epochs,
                 cooldown_counter=self.cooldown_counter)
        return d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        where = "ReduceLROnPlateau.load_state_dict"
        best = state.get("best")
        if isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best):
            raise ValueError(f"{where}: best must be a number, got {best!r}")
        nb, cc = state.get("num_bad_epochs"), state.get("cooldown_counter")
        positive_int(nb, "num_bad_epochs", where, allow_zero=True)
        positive_int(cc, "cooldown_counter", where, allow_zero=True)
        self.best, self.num_bad_epochs, self.cooldown_counter = float(best), int(nb), int(cc)
        super().load_state_dict(state)


class LinearWarmup(LRScheduler):
    """Per-batch linear warm-up: the lr rises from ``start_factor * lr`` to ``lr`` over
    `warmup_steps` steps (``torch.optim.lr_scheduler.LinearLR`` with end_factor=1).

    ``after`` is another schedule (StepLR, CosineAnnealingLR, ReduceLROnPlateau) whose lr
    the warm-up scales: the optimizer's lr is ``warmup_factor * after_lr``. Step the warm-up
    every batch and ``after`` every epoch (the Trainer does both when given the warm-up).
    """

    interval = "step"

    def __init__(self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 1.0 / 3,
                 after: LRScheduler | None = None) -> None:
        w = "LinearWarmup"
        self.warmup_steps = positive_int(warmup_steps, "warmup_steps", w, allow_zero=True)
        self.start_factor = _number(start_factor, "start_factor", w, lo=0.0, lo_open=True,
                                    hi=1.0)
        if after is not None:
            if not isinstance(after, LRScheduler) or isinstance(after, LinearWarmup):
                raise ValueError(f"{w}: after must be a StepLR, CosineAnnealingLR or "
                                 f"ReduceLROnPlateau, got {after!r}")
            if after.optimizer is not optimizer:
                raise ValueError(f"{w}: after drives a different optimizer")
        self.after = after
        super().__init__(optimizer)
        if after is not None:
            after._outer = self
            self._apply()

    def _factor(self) -> float:
        if self.warmup_steps == 0 or self.last_epoch >= self.warmup_steps:
            return 1.0
        return self.start_factor + (1.0 - self.start_factor) * self.last_epoch / self.warmup_steps

    def _closed_form(self, epoch: int) -> float:
        return self.base_lr  # the scaling lives in _factor so that `after` can share it

    def _apply(self) -> None:
        inner = self.after.get_last_lr()[0] if self.after is not None else self.base_lr
        self._last_lr = inner * self._factor()
        self.optimizer.lr = self._last_lr

    def step(self) -> None:
        """Advance one batch."""
        self.last_epoch += 1
        self._apply()

    def epoch_step(self, metrics: float | None = None) -> None:
        """Advance the wrapped schedule by one epoch (metrics for ReduceLROnPlateau)."""
        if self.after is None:
            return
        if isinstance(self.after, ReduceLROnPlateau):
            if metrics is None:
                raise ValueError("LinearWarmup: the wrapped ReduceLROnPlateau needs a metric")
            self.after.step(metrics)
        else:
            self.after.step()

    def get_config(self) -> dict[str, Any]:
        return {"warmup_steps": self.warmup_steps, "start_factor": self.start_factor}

    def state_dict(self) -> dict[str, Any]:
        d = super().state_dict()
        d["after"] = self.after.state_dict() if self.after is not None else None
        return d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        inner = state.get("after")
        if (inner is None) != (self.after is None):
            raise ValueError("LinearWarmup.load_state_dict: the 'after' schedule does not match")
        if inner is not None:
            self.after.load_state_dict(inner)
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self.interval = str(state.get("interval", self.interval))
        self._apply()


SCHEDULERS: dict[str, type[LRScheduler]] = {
    c.__name__: c for c in (StepLR, CosineAnnealingLR, ReduceLROnPlateau, LinearWarmup)
}


def scheduler_from_state(optimizer: Optimizer, state: dict[str, Any]) -> LRScheduler:
    """Rebuild a schedule for `optimizer` from its :meth:`LRScheduler.state_dict`."""
    if not isinstance(state, dict) or state.get("type") not in SCHEDULERS:
        raise ValueError(f"unknown lr schedule state {state!r:.80}")
    cfg = state.get("config")
    if not isinstance(cfg, dict) or not all(isinstance(k, str) for k in cfg):
        raise ValueError("lr schedule state: 'config' must be a dict")
    cls = SCHEDULERS[state["type"]]
    saved_initial = optimizer.initial_lr
    optimizer.initial_lr = float(state.get("base_lr", optimizer.lr))
    try:
        if cls is LinearWarmup:
            after = state.get("after")
            inner = scheduler_from_state(optimizer, after) if after is not None else None
            sched: LRScheduler = LinearWarmup(optimizer, after=inner, **cfg)
        elif cls is ReduceLROnPlateau:
            sched = ReduceLROnPlateau(optimizer, **cfg)
        else:
            sched = cls(optimizer, **cfg)
        sched.load_state_dict(state)
    except TypeError as e:
        optimizer.initial_lr = saved_initial
        raise ValueError(f"lr schedule state for {state['type']}: {e}") from None
    except Exception:
        optimizer.initial_lr = saved_initial
        raise
    return sched
