"""Keras-style callbacks for :class:`cnnkit.Trainer`.

A callback sees the training loop at fixed points::

    on_train_begin(logs)            once per fit
      on_epoch_begin(epoch, logs)   epoch counts from 0
        on_train_batch_begin(batch, logs)
        on_train_batch_end(batch, logs)      logs: loss, accuracy (this batch), size
                                    (called for every batch when uses_batch_hooks() is
                                    True: by default, when either batch hook is overridden)
      on_epoch_end(epoch, logs)     logs: loss, accuracy, val_loss, val_accuracy, lr, time, ...
    on_train_end(logs)

``self.trainer`` and ``self.model`` are set before training starts; setting
``self.trainer.stop_training = True`` ends training after the current epoch.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from . import optim as _optim
from . import serialization as _io
from ._checks import positive_int

__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "ModelCheckpoint",
    "TerminateOnNaN",
    "ReduceLROnPlateau",
    "CSVLogger",
    "LambdaCallback",
    "LearningRateScheduler",
    "SchedulerCallback",
]

Logs = dict[str, Any]


class Callback:
    """Base class: every hook is a no-op; override the ones you need.

    ``main_process_only``: in data-parallel training (cnnkit.distributed), run only on rank 0
    (callbacks that write files or print); the others run on every rank, where they see the
    same logs (reduced across processes) and so decide the same.
    """

    main_process_only = False

    def __init__(self) -> None:
        self.trainer: Any = None

    def set_trainer(self, trainer: Any) -> None:
        self.trainer = trainer

    @property
    def model(self) -> Any:
        """The Sequential being trained."""
        return self.trainer.model if self.trainer is not None else None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        pass

    def on_train_end(self, logs: Logs | None = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        pass

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        pass

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        pass

    def uses_batch_hooks(self) -> bool:
        """Whether fit must call on_train_batch_begin/end around every batch (one native
        call per batch) rather than run many batches per native call. Default: True when
        either hook is overridden; override to say when they are no-ops."""
        cls = type(self)
        return (cls.on_train_batch_begin is not Callback.on_train_batch_begin
                or cls.on_train_batch_end is not Callback.on_train_batch_end)


class CallbackList(Callback):
    """Calls each callback in order. In on_epoch_end, ModelCheckpoint callbacks run last, so
    a checkpoint records the lr, schedule and history after every other callback is done."""

    def __init__(self, callbacks: list[Callback] | None = None) -> None:
        super().__init__()
        self.callbacks: list[Callback] = list(callbacks or [])
        for c in self.callbacks:
            if not isinstance(c, Callback):
                raise ValueError(f"callbacks: {c!r} is not a cnnkit.callbacks.Callback")

    def set_trainer(self, trainer: Any) -> None:
        super().set_trainer(trainer)
        for c in self.callbacks:
            c.set_trainer(trainer)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        for c in self.callbacks:
            c.on_train_begin(logs)

    def on_train_end(self, logs: Logs | None = None) -> None:
        for c in self.callbacks:
            c.on_train_end(logs)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        for c in self.callbacks:
            c.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None,
                     before_checkpoints: Callable[[], None] | None = None) -> None:
        """Run the callbacks, then `before_checkpoints` (the Trainer records the epoch in its
        History there), then the ModelCheckpoint callbacks."""
        for c in self.callbacks:
            if not isinstance(c, ModelCheckpoint):
                c.on_epoch_end(epoch, logs)
        if before_checkpoints is not None:
            before_checkpoints()
        for c in self.callbacks:
            if isinstance(c, ModelCheckpoint):
                c.on_epoch_end(epoch, logs)

    def uses_batch_hooks(self) -> bool:
        return any(c.uses_batch_hooks() for c in self.callbacks)

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        for c in self.callbacks:
            c.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        for c in self.callbacks:
            c.on_train_batch_end(batch, logs)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _monitor_mode(monitor: str, mode: str, where: str) -> str:
    """'min' or 'max' for a monitored quantity ('auto': max for accuracy-like names)."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{where}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if monitor.endswith(("acc", "accuracy", "auc")) else "min"


def _monitored(logs: Logs | None, monitor: str, where: str) -> float:
    logs = logs or {}
    if monitor not in logs:
        hint = " (pass validation_data or validation_split)" if monitor.startswith("val_") else ""
        raise ValueError(
            f"{where}: monitored quantity '{monitor}' is not in the logs{hint}; available: "
            f"{sorted(logs)}"
        )
    return float(logs[monitor])


def _check_float(v: Any, name: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(v)):
        raise ValueError(f"{where}: {name} must be a finite number, got {v!r}")
    return float(v)


def _require_optimizer(trainer: Any, where: str) -> _optim.Optimizer:
    opt = getattr(trainer, "optimizer", None)
    if opt is None:
        raise ValueError(f"{where}: the trainer has no optimizer")
    return opt


# ---------------------------------------------------------------------------------------------
# callbacks
# ---------------------------------------------------------------------------------------------


class EarlyStopping(Callback):
    """Stop when `monitor` has stopped improving (Keras semantics).

    An epoch improves when it beats the best value by more than `min_delta`. Training stops
    once `patience` epochs in a row have not improved. With a `baseline`, the counter is only
    reset by epochs that also beat the baseline. With `restore_best_weights`, the weights
    (and BatchNorm statistics) of the best epoch are loaded back at the end of training.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", restore_best_weights: bool = False,
                 baseline: float | None = None, verbose: int = 0) -> None:
        super().__init__()
        w = "EarlyStopping"
        self.monitor = str(monitor)
        self.mode = _monitor_mode(self.monitor, mode, w)
        self.min_delta = abs(_check_float(min_delta, "min_delta", w))
        self.patience = positive_int(patience, "patience", w, allow_zero=True)
        self.restore_best_weights = bool(restore_best_weights)
        self.baseline = None if baseline is None else _check_float(baseline, "baseline", w)
        self.verbose = int(verbose)
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: dict[str, np.ndarray] | None = None

    def _is_improvement(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._reset()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        current = _monitored(logs, self.monitor, "EarlyStopping")
        if math.isnan(current):
            current = math.inf if self.mode == "min" else -math.inf
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.state_dict()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True
            if self.trainer.stop_reason is None:
                self.trainer.stop_reason = (
                    f"EarlyStopping: '{self.monitor}' did not improve for {self.wait} epochs"
                )

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch "
                      f"({self.best_epoch + 1})")
            self.model.load_state_dict(self.best_weights)


class ModelCheckpoint(Callback):
    """Save after every epoch (or only when `monitor` improves, with save_best_only).

    `filepath` may hold format fields: ``{epoch}`` (1-based, Keras) and any epoch log,
    e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.cnnkit"``. The file is a full trainer checkpoint
    that ``fit(resume_from=...)`` / ``cnnkit.io.load`` continue from; with
    save_weights_only, a model file (architecture + weights) instead.
    """

    main_process_only = True  # writes files

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "auto",
                 save_weights_only: bool = False, verbose: int = 0) -> None:
        super().__init__()
        self.filepath = os.fspath(filepath)
        if not self.filepath:
            raise ValueError("ModelCheckpoint: filepath is empty")
        self.monitor = str(monitor)
        self.mode = _monitor_mode(self.monitor, mode, "ModelCheckpoint")
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.verbose = int(verbose)
        self.best: float | None = None
        self.last_saved: str | None = None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.best = None

    def _path(self, epoch: int, logs: Logs) -> str:
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"ModelCheckpoint: cannot format filepath {self.filepath!r} with epoch and "
                f"logs {sorted(logs)}: {e!r}"
            ) from None

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        logs = logs or {}
        if self.save_best_only:
            current = _monitored(logs, self.monitor, "ModelCheckpoint")
            if math.isnan(current):
                return
            better = self.best is None or (
                current < self.best if self.mode == "min" else current > self.best
            )
            if not better:
                return
            self.best = current
        path = self._path(epoch, logs)
        target = self.model if self.save_weights_only else self.trainer
        _io.save(target, path)
        self.last_saved = path
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: saved {path}")


class TerminateOnNaN(Callback):
    """Stop as soon as a batch loss is NaN or Inf.

    The Trainer already does this on its own (the native step refuses a non-finite update);
    the callback is kept for Keras compatibility and for losses reported by other callbacks.
    """

    def uses_batch_hooks(self) -> bool:
        return False  # it acts on a non-finite loss only, where fit stops and calls the hooks

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.trainer.stop_training = True
            self.trainer.diverged = True
            if self.trainer.stop_reason is None:
                self.trainer.stop_reason = f"TerminateOnNaN: invalid loss at batch {batch}"


class ReduceLROnPlateau(Callback):
    """Multiply the lr by `factor` when `monitor` has stopped improving: the Keras interface
    over the one plateau rule, :class:`cnnkit.optim.ReduceLROnPlateau` (PyTorch's).

    An epoch improves when it beats the best value by more than `min_delta` (torch's
    ``threshold`` with ``threshold_mode="abs"``). After more than `patience` epochs in a row
    without improvement, lr = max(lr * factor, min_lr); then `cooldown` epochs are not
    counted. ``mode="auto"``: max for names ending in ``acc``/``accuracy``, else min.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0, verbose: int = 0) -> None:
        super().__init__()
        w = "ReduceLROnPlateau"
        self.monitor = str(monitor)
        self.factor = _check_float(factor, "factor", w)
        if not 0.0 <= self.factor < 1.0:
            raise ValueError(f"{w}: factor must be in [0, 1) (it multiplies the lr), got {factor}")
        self.patience = positive_int(patience, "patience", w, allow_zero=True)
        self.mode = _monitor_mode(self.monitor, mode, w)
        self.min_delta = abs(_check_float(min_delta, "min_delta", w))
        self.cooldown = positive_int(cooldown, "cooldown", w, allow_zero=True)
        self.min_lr = _check_float(min_lr, "min_lr", w)
        if self.min_lr < 0:
            raise ValueError(f"{w}: min_lr must be >= 0, got {min_lr}")
        self.verbose = int(verbose)
        self.rule: _optim.ReduceLROnPlateau | None = None  # made in on_train_begin

    # The rule's counters, under the Keras names.
    @property
    def best(self) -> float:
        return self.rule.best if self.rule is not None else (
            math.inf if self.mode == "min" else -math.inf)

    @property
    def wait(self) -> int:
        return self.rule.num_bad_epochs if self.rule is not None else 0

    @property
    def cooldown_counter(self) -> int:
        return self.rule.cooldown_counter if self.rule is not None else 0

    def on_train_begin(self, logs: Logs | None = None) -> None:
        opt = _require_optimizer(self.trainer, "ReduceLROnPlateau")
        self.rule = _optim.ReduceLROnPlateau(
            opt, mode=self.mode, factor=self.factor, patience=self.patience,
            threshold=self.min_delta, threshold_mode="abs", cooldown=self.cooldown,
            min_lr=self.min_lr)  # fmt: skip

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self.rule is None or self.rule.optimizer is not self.trainer.optimizer:
            self.on_train_begin()
        current = _monitored(logs, self.monitor, "ReduceLROnPlateau")
        old = self.rule.optimizer.lr
        self.rule.step(current)
        if self.verbose > 0 and self.rule.optimizer.lr < old:
            print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing lr to "
                  f"{self.rule.optimizer.lr:.4g}")


class CSVLogger(Callback):
    """Write one CSV row per epoch: ``epoch`` then the epoch logs in sorted order.

    Each row is flushed to disk (``fsync``) as its epoch ends, so the file is complete up to
    the last finished epoch whatever stops the run (Ctrl-C, a crash, a kill). The file
    mirrors the trainer's history: a fit on a trainer that already has epochs (a resumed
    checkpoint, an earlier fit) first writes the rows of those epochs, so after a resume the
    file holds the whole run. A run stopped before its first epoch ends leaves the header.
    With ``append=True`` rows are added to an existing file instead (no second header).
    """

    main_process_only = True  # writes files

    def __init__(self, filename: str | os.PathLike, separator: str = ",",
                 append: bool = False) -> None:
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = str(separator)
        self.append = bool(append)
        self._file: Any = None
        self._writer: Any = None
        self._keys: list[str] | None = None
        self._header_done = False

    def on_train_begin(self, logs: Logs | None = None) -> None:
        has_rows = (self.append and os.path.exists(self.filename)
                    and os.path.getsize(self.filename) > 0)
        self._file = open(self.filename, "a" if self.append else "w", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._file, delimiter=self.sep, lineterminator="\n")
        self._keys = None
        self._header_done = has_rows
        past = getattr(self.trainer, "history", None)
        if not self.append and past is not None and len(past.epoch) > 0:
            self._header(sorted(past.history))
            for i, epoch in enumerate(past.epoch):
                self._row(epoch, {k: v[i] for k, v in past.history.items()})
            self._sync()

    def _header(self, keys: list[str]) -> None:
        self._keys = keys
        if not self._header_done:
            self._writer.writerow(["epoch", *keys])
            self._header_done = True

    def _row(self, epoch: int, logs: Logs) -> None:
        self._writer.writerow([epoch, *(_csv_value(logs.get(k, "")) for k in self._keys)])

    def _sync(self) -> None:
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except OSError:  # not every file system syncs (pipes, some network mounts)
            pass

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        logs = logs or {}
        if self._keys is None:
            self._header(sorted(logs))
        self._row(epoch, logs)
        self._sync()

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self._file is None:
            return
        if not self._header_done:  # no epoch finished: the header of the keys fit logs
            keys = list(getattr(self.trainer, "_epoch_keys", None) or [])
            if keys:
                self._header(sorted(keys))
                self._sync()
        self._file.close()
        self._file = None


def _csv_value(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


class LambdaCallback(Callback):
    """A callback from plain functions, e.g. ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``.

    Signatures: on_epoch_begin/on_epoch_end(epoch, logs),
    on_train_batch_begin/on_train_batch_end(batch, logs), on_train_begin/on_train_end(logs).
    """

    def __init__(self, on_epoch_begin: Callable | None = None,
                 on_epoch_end: Callable | None = None,
                 on_train_batch_begin: Callable | None = None,
                 on_train_batch_end: Callable | None = None,
                 on_train_begin: Callable | None = None,
                 on_train_end: Callable | None = None) -> None:
        super().__init__()
        fns = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                   on_train_batch_begin=on_train_batch_begin,
                   on_train_batch_end=on_train_batch_end, on_train_begin=on_train_begin,
                   on_train_end=on_train_end)
        for name, fn in fns.items():
            if fn is not None and not callable(fn):
                raise ValueError(f"LambdaCallback: {name} must be callable, got {fn!r}")
        self._fns = fns

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        if self._fns["on_epoch_begin"]:
            self._fns["on_epoch_begin"](epoch, logs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self._fns["on_epoch_end"]:
            self._fns["on_epoch_end"](epoch, logs)

    def uses_batch_hooks(self) -> bool:
        return bool(self._fns["on_train_batch_begin"] or self._fns["on_train_batch_end"])

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        if self._fns["on_train_batch_begin"]:
            self._fns["on_train_batch_begin"](batch, logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if self._fns["on_train_batch_end"]:
            self._fns["on_train_batch_end"](batch, logs)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        if self._fns["on_train_begin"]:
            self._fns["on_train_begin"](logs)

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self._fns["on_train_end"]:
            self._fns["on_train_end"](logs)


class LearningRateScheduler(Callback):
    """Set the lr at the start of each epoch from ``schedule(epoch, lr) -> new_lr`` (Keras).

    A one-argument ``schedule(epoch)`` is accepted too.
    """

    def __init__(self, schedule: Callable[..., float], verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"LearningRateScheduler: schedule must be callable, got {schedule!r}")
        self.schedule = schedule
        self.verbose = int(verbose)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        opt = _require_optimizer(self.trainer, "LearningRateScheduler")
        try:
            lr = self.schedule(epoch, opt.lr)
        except TypeError:
            lr = self.schedule(epoch)
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(lr)) or float(lr) < 0:
            raise ValueError(
                f"LearningRateScheduler: schedule({epoch}) must return a finite lr >= 0, "
                f"got {lr!r}"
            )
        opt.lr = float(lr)
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting lr to {opt.lr:.4g}")


class SchedulerCallback(Callback):
    """Step a :mod:`cnnkit.optim` schedule from the training loop.

    per="epoch" steps after every epoch, per="step" after every batch; None uses the
    schedule's own ``interval`` (LinearWarmup: per step, the others per epoch).
    ReduceLROnPlateau is stepped with ``logs[monitor]`` (falling back to "loss" when there is
    no validation data). A LinearWarmup's ``after`` schedule is stepped once per epoch.
    ``fit(lr_scheduler=...)`` wraps its schedule in one of these (and saves it in
    checkpoints).
    """

    def __init__(self, scheduler: _optim.LRScheduler, per: str | None = None,
                 monitor: str = "val_loss") -> None:
        super().__init__()
        if not isinstance(scheduler, _optim.LRScheduler):
            raise ValueError(f"SchedulerCallback: expected a cnnkit.optim schedule, got "
                             f"{scheduler!r}")
        per = scheduler.interval if per is None else per
        if per not in ("epoch", "step"):
            raise ValueError(f"SchedulerCallback: per must be 'epoch' or 'step', got {per!r}")
        if per == "step" and isinstance(scheduler, _optim.ReduceLROnPlateau):
            raise ValueError("SchedulerCallback: ReduceLROnPlateau can only step per epoch")
        self.scheduler, self.per, self.monitor = scheduler, per, str(monitor)

    def _metric(self, logs: Logs | None) -> float:
        logs = logs or {}
        key = self.monitor if self.monitor in logs else "loss"
        return _monitored(logs, key, "SchedulerCallback")

    def uses_batch_hooks(self) -> bool:
        return self.per == "step"

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if self.per == "step":
            self.scheduler.step()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        s = self.scheduler
        if isinstance(s, _optim.LinearWarmup):
            if self.per == "epoch":
                s.step()
            if s.after is not None:
                plateau = isinstance(s.after, _optim.ReduceLROnPlateau)
                s.epoch_step(self._metric(logs) if plateau else None)
        elif self.per == "epoch":
            if isinstance(s, _optim.ReduceLROnPlateau):
                s.step(self._metric(logs))
            else:
                s.step()
