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
import time
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
    "TensorBoard",
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


# ---------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------

_TENSORBOARD_HINT = ('cnnkit.callbacks.TensorBoard needs the tensorboard package; install it '
                     'with: pip install "cnnkit[tensorboard]"')


def _tensorboard() -> Any:
    """tensorboard's event-file writer and protocol buffers (imported lazily), as a namespace;
    ImportError with the install hint without the package."""
    try:
        from tensorboard.compat.proto import event_pb2, histogram_pb2, summary_pb2
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as e:
        raise ImportError(_TENSORBOARD_HINT) from e

    class TB:
        pass

    tb = TB()
    tb.event_pb2, tb.histogram_pb2, tb.summary_pb2 = event_pb2, histogram_pb2, summary_pb2
    tb.text_pb, tb.EventFileWriter = text_pb, EventFileWriter
    return tb


def _model_copy(model: Any) -> Any:
    """A fresh graph Model with the layers, inputs, names, weights and buffers of `model`
    (a Sequential or Model), so gradients can be taken without touching it."""
    from . import layers as _layers
    from .model import Model

    copies = [_layers.from_config(type(n).__name__, n.get_config()) for n in model._nodes]
    m = Model.from_nodes(copies, model._inputs, model._names)
    m.load_state_dict(model.state_dict())
    return m


class TensorBoard(Callback):
    """Write TensorBoard event files under `log_dir` (view them with
    ``tensorboard --logdir LOG_DIR``); needs ``pip install "cnnkit[tensorboard]"``.

    What is written (tags; epochs count from 0, as in the History):

    * ``epoch/<key>``: every number of the epoch logs (loss, accuracy, val_loss, val_accuracy,
      lr, time, images_per_sec), at step = epoch;
    * ``batch/loss``, ``batch/accuracy``, ``batch/lr``, ``batch/images_per_sec``: every
      `update_freq` training steps, at step = updates done in the run (epoch * batches per
      epoch + batch + 1). loss and accuracy are those of that batch; images_per_sec is measured
      over the steps since the previous point. ``update_freq="epoch"`` writes none: fit then
      runs many batches per native call, else one a call (the hook is cheap, but a GPU run
      syncs every step);
    * ``parameters/<name>`` (every parameter and buffer) and ``gradients/<name>`` (every
      parameter), histograms every `histogram_freq` epochs (0: none). The step zeroes the
      gradients, so they are taken afresh, in training mode on a copy of the model (the
      model itself, its BatchNorm statistics and its Dropout stream are untouched), on up to
      64 samples of `sample_data`; without sample data only the parameters are written;
    * with `images`: ``filters/<layer>``, the first Conv2d's kernels as a grid (each scaled
      to its own range), and ``predictions/samples``, up to `max_images` samples of
      `sample_data` framed green (right) or red (wrong), with ``predictions/labels`` (text:
      true, predicted, confidence), every epoch;
    * ``model/summary`` (text): the model's summary, once at the start.

    `sample_data`: (x, y) arrays, e.g. a few validation samples. In data-parallel training
    only rank 0 writes.
    """

    main_process_only = True  # writes files

    def __init__(self, log_dir: str | os.PathLike = "logs", histogram_freq: int = 1,
                 images: bool = True, update_freq: int | str = 100,
                 sample_data: tuple[Any, Any] | None = None, max_images: int = 16) -> None:
        super().__init__()
        w = "TensorBoard"
        self.log_dir = os.fspath(log_dir)
        if not self.log_dir:
            raise ValueError(f"{w}: log_dir is empty")
        self.histogram_freq = positive_int(histogram_freq, "histogram_freq", w, allow_zero=True)
        self.images = bool(images)
        if update_freq != "epoch":
            update_freq = positive_int(update_freq, "update_freq", w)
        self.update_freq = update_freq
        self.max_images = positive_int(max_images, "max_images", w)
        if sample_data is not None and (not isinstance(sample_data, (tuple, list))
                                        or len(sample_data) != 2):
            raise ValueError(f"{w}: sample_data must be (x, y), got {type(sample_data).__name__}")
        self.sample_data = sample_data
        _tensorboard()  # fail now, with the install hint, rather than when training starts
        self.writer: Any = None
        self._epoch = 0
        self._steps_done = 0
        self._t_last = 0.0
        self._seen_since = 0

    # -- writing ------------------------------------------------------------------------------
    def _emit(self, step: int, values: list[Any]) -> None:
        tb = self._tb
        self.writer.add_event(tb.event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=tb.summary_pb2.Summary(value=values)))

    def _scalar(self, tag: str, v: float) -> Any:
        return self._tb.summary_pb2.Summary.Value(tag=tag, simple_value=float(v))

    def _histogram(self, tag: str, a: np.ndarray) -> Any:
        a = np.asarray(a, dtype=np.float64).ravel()
        a = a[np.isfinite(a)]
        h = self._tb.histogram_pb2.HistogramProto()
        if a.size:
            lo, hi = float(a.min()), float(a.max())
            counts, edges = np.histogram(a, bins=30 if hi > lo else 1,
                                         range=(lo, hi) if hi > lo else (lo - 0.5, lo + 0.5))
            h.min, h.max, h.num = lo, hi, float(a.size)
            h.sum, h.sum_squares = float(a.sum()), float(np.dot(a, a))
            h.bucket_limit.extend(edges[1:].tolist())
            h.bucket.extend(counts.astype(np.float64).tolist())
        return self._tb.summary_pb2.Summary.Value(tag=tag, histo=h)

    def _image(self, tag: str, img: np.ndarray) -> Any:
        from . import _png

        sp = self._tb.summary_pb2
        return sp.Summary.Value(tag=tag, image=sp.Summary.Image(
            height=img.shape[0], width=img.shape[1], colorspace=1 if img.ndim == 2 else 3,
            encoded_image_string=_png.encode_png(img)))

    def _text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_event(self._tb.event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=self._tb.text_pb(tag, text)))

    # -- hooks --------------------------------------------------------------------------------
    def uses_batch_hooks(self) -> bool:
        return self.update_freq != "epoch"

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._tb = _tensorboard()
        os.makedirs(self.log_dir, exist_ok=True)
        self.writer = self._tb.EventFileWriter(self.log_dir, flush_secs=10)
        self._samples = self._prepare_samples()
        shape = self._samples[0].shape[1:] if self._samples is not None else None
        try:
            text = self.model.summary(input_shape=shape, print_fn=None)
        except ValueError:  # an input shape the model cannot take: the table without shapes
            text = self.model.summary(print_fn=None)
        # four spaces: a preformatted block in TensorBoard's markdown
        self._text(0, "model/summary", "\n".join("    " + ln for ln in text.splitlines()))
        self.writer.flush()

    def _prepare_samples(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.sample_data is None:
            return None
        from .data import as_input

        x, y = self.sample_data
        xs = as_input(x, "TensorBoard(sample_data)", model=self.model)
        ys = np.asarray(y)
        if len(ys) != len(xs):
            raise ValueError(f"TensorBoard: sample_data has {len(xs)} inputs but {len(ys)} "
                             "labels")
        n = min(len(xs), 64)
        return np.ascontiguousarray(xs[:n]), ys[:n]

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._epoch = epoch
        self._t_last, self._seen_since = time.perf_counter(), 0

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if self.writer is None or self.update_freq == "epoch":
            return
        logs = logs or {}
        self._seen_since += int(logs.get("size", 0))
        progress = getattr(self.trainer, "_progress", None)  # batches per epoch
        per_epoch = progress.batches if progress is not None else 0
        step = self._epoch * per_epoch + batch + 1
        if step % self.update_freq:
            return
        now = time.perf_counter()
        values = [self._scalar(f"batch/{k}", logs[k]) for k in ("loss", "accuracy") if k in logs]
        values.append(self._scalar("batch/lr", self.trainer.optimizer.lr))
        if now > self._t_last:
            values.append(self._scalar("batch/images_per_sec",
                                       self._seen_since / (now - self._t_last)))
        self._emit(step, values)
        self._t_last, self._seen_since = now, 0

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self.writer is None:
            return
        values = [self._scalar(f"epoch/{k}", v) for k, v in (logs or {}).items()
                  if isinstance(v, (int, float, np.integer, np.floating))
                  and not isinstance(v, bool)]
        self._emit(epoch, values)
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            self._emit(epoch, self._histograms())
        if self.images:
            self._write_images(epoch)
        self.writer.flush()

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # -- histograms and images ----------------------------------------------------------------
    def _histograms(self) -> list[Any]:
        values = [self._histogram(f"parameters/{k}", v) for k, v in self.model.state_dict().items()]
        grads = self._gradients()
        if grads is not None:
            values += [self._histogram(f"gradients/{k}", v) for k, v in grads.items()]
        return values

    def _gradients(self) -> dict[str, np.ndarray] | None:
        """Gradients of the loss on the sample data (training mode, a copy of the model)."""
        if self._samples is None:
            return None
        from . import losses as _losses

        x, y = self._samples
        copy = _model_copy(self.model)
        out = np.asarray(copy._net.forward(x, True))
        loss = _losses.get(self.trainer.loss.name)
        if loss.name == "cross_entropy":
            loss.forward(out, np.asarray(y, dtype=np.int64).reshape(-1))
        else:
            loss.forward(out, np.asarray(y, dtype=np.float32).reshape(out.shape))
        copy._net.backward(loss.backward(), False)
        return dict(copy.grad_dict())

    def _write_images(self, epoch: int) -> None:
        from . import _png

        values = []
        conv = next((i for i, n in enumerate(self.model._nodes)
                     if type(n).__name__ == "Conv2d"), None)
        if conv is not None:
            name = self.model._names[conv]
            wt = np.asarray(self.model.state_dict()[f"{name}.weight"])  # (K, C, R, S)
            tiles = []
            for k in wt[: 64]:
                t = k.transpose(1, 2, 0) if k.shape[0] == 3 else k.mean(axis=0)
                scale = max(1, 48 // max(t.shape[:2]))
                tiles.append(_png.upscale(_png.to_uint8(t), scale))
            values.append(self._image(f"filters/{name}", _png.grid(tiles, gap=2)))
        s = self._samples
        if s is not None and s[0].ndim == 4 and s[0].shape[1] in (1, 3) \
                and self.trainer.loss.name == "cross_entropy":
            x, y = s[0][: self.max_images], np.asarray(s[1][: self.max_images]).reshape(-1)
            probs = self.trainer.predict(x)
            pred = probs.argmax(axis=1)
            tiles, borders, rows = [], [], ["| # | true | predicted | confidence |",
                                            "|---|---|---|---|"]
            for i, img in enumerate(x):
                t = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
                scale = max(1, 56 // max(t.shape[:2]))
                tiles.append(_png.upscale(np.round(np.clip(t, 0, 1) * 255).astype(np.uint8)
                                          if t.min() >= 0 and t.max() <= 1 else _png.to_uint8(t),
                                          scale))
                ok = int(pred[i]) == int(y[i])
                borders.append((40, 160, 40) if ok else (210, 40, 40))
                rows.append(f"| {i} | {int(y[i])} | {int(pred[i])} | "
                            f"{100 * probs[i, pred[i]]:.1f}% |")
            values.append(self._image("predictions/samples",
                                      _png.grid(tiles, gap=2, borders=borders)))
            self._text(epoch, "predictions/labels", "\n".join(rows))
        if values:
            self._emit(epoch, values)
