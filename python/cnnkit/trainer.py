"""Trainer: Keras-style ``fit`` / ``evaluate`` / ``predict`` over a Sequential.

>>> trainer = Trainer(model, loss="cross_entropy", optimizer=cnnkit.optim.Adam(lr=1e-3))
>>> history = trainer.fit(x_train, y_train, epochs=5, batch_size=64, validation_split=0.1)
>>> trainer.evaluate(x_test, y_test)          # {"loss": ..., "accuracy": ...}

Python owns the loop, the progress bar, callbacks and files; the batches of array data are
gathered (shuffled, uint8 scaled to [0, 1]) and trained on natively, many per call
(``cnnkit._core.BatchFeed``: gather, forward, loss, backward and optimizer update in C++ with
the GIL released), or one per call when a callback takes per-batch hooks. Training is
reproducible: the shuffling of epoch ``e`` depends only on (seed, e) and the Dropout masks on a
counter saved in checkpoints, so ``fit(..., resume_from=checkpoint)`` continues bit-identically
on the CPU.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.std import tqdm

from . import _core
from . import _trainer_state as _state
from . import callbacks as _callbacks
from . import distributed as _dist
from . import losses as _losses
from . import optim as _optim
from . import serialization as _io
from . import transforms as _transforms
from ._checks import parse_device, positive_int, to_numpy
from ._seeding import derive_seed
from .data import (
    DataLoader,
    _is_dataset,
    _prepared,
    as_input,
    as_labels,
    as_targets,
    check_labels,
)
from .model import _predictions

__all__ = ["Trainer", "History"]

_DEFAULT_METRICS = ("accuracy",)
_DROPOUT_STREAM = 0xD0
_METRIC_ALIASES = {"accuracy": "accuracy", "acc": "accuracy"}
# Seconds of training per native call when no callback takes batch hooks: the progress bar,
# the checkpoint position and Ctrl-C are looked at between calls (<= 10 times a second).
_NATIVE_RUN_SECONDS = 0.1


def _as_value(v: Any) -> Any:
    """A log value as History keeps it: numbers as float, strings/None/bools as they are."""
    if isinstance(v, (bool, np.bool_, str)) or v is None:
        return v if not isinstance(v, np.bool_) else bool(v)
    return float(v)


class History:
    """Per-epoch records of a training run (Keras).

    ``history``: {"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...],
    "lr": [...], "time": [...seconds...], "images_per_sec": [...]}, one entry per epoch;
    ``epoch``: the epoch indices (0-based). ``diverged`` / ``stop_reason`` say why a run
    ended early.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = {}
        self.diverged = False
        self.interrupted = False
        self.stop_reason: str | None = None

    def append(self, epoch: int, logs: dict[str, Any]) -> None:
        """Record one epoch's logs (numbers as floats; NaN fills keys missing this epoch)."""
        self.epoch.append(int(epoch))
        n = len(self.epoch)
        for k, v in logs.items():
            col = self.history.setdefault(k, [math.nan] * (n - 1))
            col.append(_as_value(v))
        for col in self.history.values():  # keys missing this epoch
            if len(col) < n:
                col.append(math.nan)

    def to_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()},
                "epoch": list(self.epoch), "diverged": self.diverged,
                "interrupted": self.interrupted, "stop_reason": self.stop_reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Rebuild from :meth:`to_dict`; raises ValueError (naming the field) for anything
        else, e.g. a corrupted checkpoint."""
        if not isinstance(d, dict):
            raise ValueError(f"history must be an object, got {type(d).__name__}")
        h = cls()
        hist, epochs = d.get("history", {}), d.get("epoch", [])
        if not isinstance(hist, dict) or not all(isinstance(v, list) for v in hist.values()):
            raise ValueError("history.history must map keys to lists")
        if not isinstance(epochs, list) or not all(
                isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in epochs):
            raise ValueError("history.epoch must be a list of non-negative ints")
        for k, v in hist.items():
            if len(v) != len(epochs):
                raise ValueError(f"history[{k!r}] has {len(v)} values for {len(epochs)} epochs")
            if not all(isinstance(x, (int, float, str, bool)) or x is None for x in v):
                raise ValueError(f"history[{k!r}] holds a value that is not a number or string")
        flags = {k: d.get(k, False) for k in ("diverged", "interrupted")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise ValueError("history.diverged/interrupted must be booleans")
        reason = d.get("stop_reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("history.stop_reason must be a string or null")
        try:
            h.history = {str(k): [_as_value(x) for x in v] for k, v in hist.items()}
        except OverflowError:
            raise ValueError("history holds a number too large for a float") from None
        h.epoch = list(epochs)
        h.diverged, h.interrupted, h.stop_reason = flags["diverged"], flags["interrupted"], reason
        return h

    def __len__(self) -> int:
        return len(self.epoch)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


# Held while checking and marking a model as being fitted (two Trainers, one model).
_FITTING_LOCK = threading.Lock()


class _Progress:
    """Where training is inside an unfinished epoch: saved in checkpoints (``meta.trainer.
    progress``) so that a run interrupted mid-epoch resumes at the next batch, bit-identically.

    ``batch`` batches of epoch ``epoch`` (0-based) are done; ``seen``/``correct``/``loss_sum``/
    ``time`` are the epoch's running sums so far; ``batches``/``batch_size``/``samples``/
    ``shuffle`` describe the data, and must match when resuming.
    """

    FIELDS = ("epoch", "batch", "batches", "batch_size", "samples", "shuffle", "seen", "correct",
              "loss_sum", "time")

    def __init__(self, epoch: int, batch: int, batches: int, batch_size: int, samples: int,
                 shuffle: bool, seen: int = 0, correct: int = 0, loss_sum: float = 0.0,
                 time: float = 0.0) -> None:
        self.epoch, self.batch, self.batches = epoch, batch, batches
        self.batch_size, self.samples, self.shuffle = batch_size, samples, shuffle
        self.seen, self.correct, self.loss_sum, self.time = seen, correct, loss_sum, time

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.FIELDS}

    def __repr__(self) -> str:
        return f"_Progress(epoch={self.epoch}, batch={self.batch}/{self.batches})"


class _SilentBar:
    """The progress bar of a fit at verbose != 1: takes tqdm's calls and shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _SigintGuard:
    """While active (in the main thread), Ctrl-C / SIGINT only sets ``hit``: the Trainer
    stops after the current step. A second SIGINT raises KeyboardInterrupt at once. The
    previous handler is restored on exit. Not installed outside the main thread (Python
    delivers signals there only), nor when SIGINT is ignored or handled outside Python."""

    def __init__(self, enabled: bool = True) -> None:
        self.hit = 0
        self._previous: Any = None
        self._installed = False
        self._enabled = enabled

    def _handler(self, signum: int, frame: Any) -> None:
        self.hit += 1
        if self.hit > 1:
            raise KeyboardInterrupt

    def __enter__(self) -> _SigintGuard:
        if self._enabled and threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGINT)
            if prev is not None and prev is not signal.SIG_IGN:
                self._previous = prev
                signal.signal(signal.SIGINT, self._handler)
                self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


class Trainer:
    """Fits a :class:`cnnkit.Sequential` with a loss, an optimizer and callbacks.

    Args:
        model: the Sequential to train (moved to `device`).
        loss: "cross_entropy" (logits (N, C), integer labels (N,)) or "mse" (float targets
            shaped like the output), or a :class:`cnnkit.losses.Loss`.
        optimizer: a :mod:`cnnkit.optim` optimizer or a name ("adam", "sgd", ...). May be None
            for evaluate/predict only.
        metrics: ("accuracy",) or () — the loss is always reported. Accuracy needs
            cross_entropy.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:0".
        seed: drives the data shuffling and the Dropout masks (the initial weights come
            from ``cnnkit.manual_seed``, called before the model is built).
        lr_scheduler: an optional :mod:`cnnkit.optim` schedule of `optimizer`, stepped by
            fit and saved in checkpoints.
    """

    def __init__(self, model: Any, loss: str | _losses.Loss = "cross_entropy",
                 optimizer: str | _optim.Optimizer | None = None,
                 metrics: Sequence[str] = _DEFAULT_METRICS, device: str = "auto",
                 seed: int = 0, lr_scheduler: _optim.LRScheduler | None = None) -> None:
        from .model import Sequential

        if not isinstance(model, Sequential):
            raise ValueError(f"Trainer: model must be a cnnkit.Sequential, got "
                             f"{type(model).__name__}")
        if model._fitting is not None:
            raise RuntimeError("Trainer: the model is already being trained by a Trainer's "
                               "fit; wait for that fit to return")
        self.model = model
        self.loss = _losses.get(loss)
        if self.loss.name not in ("cross_entropy", "mse"):
            raise ValueError(f"Trainer: unsupported loss {self.loss.name!r} "
                             "(expected 'cross_entropy' or 'mse')")
        self.metrics = self._check_metrics(metrics)
        self.seed = positive_int(seed, "seed", "Trainer", allow_zero=True)
        self.device = parse_device(device, "Trainer")
        if model.device != self.device:
            model.to(self.device)
        model._net.set_loss(self.loss.name)
        model._loss = self.loss.name  # Sequential.predict: probabilities unless mse
        model._net.set_rng(derive_seed(self.seed, _DROPOUT_STREAM), 0)
        self.optimizer: _optim.Optimizer | None = None
        if optimizer is not None:
            self.optimizer = _optim.get(optimizer)
            self.optimizer.attach(model)
        self.lr_scheduler: _optim.LRScheduler | None = None
        self._scheduler_restored = False  # lr_scheduler was rebuilt from a checkpoint
        if lr_scheduler is not None:
            self._set_scheduler(lr_scheduler)
        self.epoch = 0  # epochs completed (restored from checkpoints)
        self.history = History()  # every epoch this trainer has run, across fit calls
        self.stop_training = False
        self.diverged = False
        self.interrupted = False  # the last fit was stopped by SIGINT (Ctrl-C)
        self.stop_reason: str | None = None
        self.last_checkpoint: str | None = None  # written when fit was interrupted
        self._grad_reducer: str | None = None  # data-parallel: "nccl" or "mpi" (last fit)
        self._progress: _Progress | None = None  # position inside an unfinished epoch
        self._fit_lock = threading.Lock()  # held while fit runs: a second fit is refused
        self._fit_thread: int | None = None  # the thread running fit
        self._epoch_keys: list[str] = []  # the keys fit logs per epoch (CSVLogger's header)
        self._rank_rng: tuple[int, int] | None = None  # data-parallel: (rank 0's, this rank's)

    # -- configuration ------------------------------------------------------------------------
    def _check_metrics(self, metrics: Sequence[str]) -> tuple[str, ...]:
        if isinstance(metrics, str):
            metrics = (metrics,)
        out = []
        for m in metrics:
            if not isinstance(m, str) or m.lower() not in _METRIC_ALIASES:
                if isinstance(m, str) and m.lower() == "loss":
                    continue
                raise ValueError(f"Trainer: unknown metric {m!r} (supported: 'accuracy')")
            out.append(_METRIC_ALIASES[m.lower()])
        if "accuracy" in out and self.loss.name != "cross_entropy":
            if metrics is _DEFAULT_METRICS:
                return ()
            raise ValueError("Trainer: the 'accuracy' metric needs the cross_entropy loss")
        return tuple(dict.fromkeys(out))

    def _set_scheduler(self, sched: _optim.LRScheduler) -> None:
        if not isinstance(sched, _optim.LRScheduler):
            raise ValueError(f"Trainer: lr_scheduler must be a cnnkit.optim schedule, got "
                             f"{sched!r}")
        if self.optimizer is None or sched.optimizer is not self.optimizer:
            raise ValueError("Trainer: lr_scheduler must schedule the trainer's optimizer")
        if sched is self.lr_scheduler:
            return
        if self._scheduler_restored and type(self.lr_scheduler) is type(sched):
            # a schedule made anew for a resumed run continues from the checkpoint's state
            sched.load_state_dict(self.lr_scheduler.state_dict())
        self.lr_scheduler = sched
        self._scheduler_restored = False

    def _output_shape(self, sample_shape: tuple[int, ...], where: str) -> tuple[int, ...]:
        """Per-sample output shape of the model for a per-sample input shape."""
        try:
            shapes = self.model._net.shapes([1, *sample_shape])
        except ValueError as e:
            raise ValueError(
                f"{where}: x has per-sample shape {tuple(sample_shape)}, which the model cannot "
                f"take: {e}"
            ) from None
        out = tuple(int(d) for d in shapes[-1][1:])
        if self.loss.name == "cross_entropy" and len(out) != 1:
            raise ValueError(
                f"{where}: cross_entropy needs a model output of shape (N, classes), but the "
                f"model gives (N, {', '.join(map(str, out))})"
            )
        return out

    def _prep_y(self, y: Any, out_shape: tuple[int, ...], where: str) -> np.ndarray:
        if self.loss.name == "cross_entropy":
            return as_labels(y, where, num_classes=out_shape[0])
        return as_targets(y, where, out_shape)

    def _prep_arrays(self, x: Any, y: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
        xa = _prepared(x, where, model=self.model)  # uint8 stays uint8: scaled per batch
        if y is None:
            raise ValueError(f"{where}: y is required when x is an array")
        ya_raw = to_numpy(y)
        if ya_raw.ndim == 0:
            raise ValueError(f"{where}: y must have one entry per sample, got a scalar")
        if ya_raw.shape[0] != xa.shape[0]:
            raise ValueError(
                f"{where}: x has {xa.shape[0]} samples but y has {ya_raw.shape[0]} "
                "(they must match)"
            )
        out = self._output_shape(tuple(xa.shape[1:]), where)
        return xa, self._prep_y(ya_raw, out, where)

    def _loader(self, x: Any, y: Any, batch_size: int, shuffle: bool, where: str) -> DataLoader:
        """A DataLoader over checked data (x may already be a DataLoader or a dataset)."""
        if isinstance(x, DataLoader):
            if y is not None:
                raise ValueError(f"{where}: pass y=None when x is a DataLoader")
            return x
        if _is_dataset(x):
            if y is not None:
                raise ValueError(f"{where}: pass y=None when x is a dataset")
            return DataLoader(x, batch_size=batch_size, shuffle=shuffle, seed=self.seed)
        xa, ya = self._prep_arrays(x, y, where)
        loader = DataLoader(xa, ya, batch_size=batch_size, shuffle=shuffle, seed=self.seed)
        loader._checked = True  # batches need no further checks
        return loader

    def _feed(self, loader: DataLoader, where: str) -> Any:
        """The native batch feed over `loader`'s arrays (kept on the loader for its next
        epochs), or None when the batches come from Python: a dataset, a transform, a
        DataLoader subclass, no labels, or data that fails the whole-array checks (the Python
        path then raises at the batch where it always did)."""
        pipe = _transforms.native_pipeline(loader.transform)  # a native transform: applied
        if (type(loader) is not DataLoader or loader.x is None or loader.y is None  # in the feed
                or (loader.transform is not None and pipe is None)
                or loader.x.dtype not in (np.uint8, np.float32)):
            return None
        x, y = loader.x, loader.y
        key = (id(x), id(y), loader.batch_size, loader.drop_last, id(self.model),
               self.loss.name, id(loader.transform), loader.prefetch)
        cached = getattr(loader, "_native_feed", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        if pipe is not None:
            if x.ndim != 4:
                return None  # the Python path raises the transform's error
            try:
                x1 = pipe.apply(x[:1], np.zeros(1, np.int64), 0, 0)  # the shape the model sees
            except ValueError:
                return None
        if not getattr(loader, "_checked", False) or pipe is not None:
            x1 = x1 if pipe is not None else x[:1]
            try:  # what _batch checks per batch, once for the whole arrays
                as_input(x1, where, model=self.model)
                y = self._prep_y(y, self._output_shape(tuple(x1.shape[1:]), where), where)
            except ValueError:
                return None
        want = np.int64 if self.loss.name == "cross_entropy" else np.float32
        if y.dtype != want or not y.flags.c_contiguous or len(y) != len(x):
            return None
        feed = _core.BatchFeed(x, y, loader.batch_size, loader.drop_last)
        if pipe is not None or loader.prefetch:
            feed.set_transform(pipe if pipe is not None else _core.Pipeline(),
                               _transforms.augment_seed(loader.seed), loader.prefetch)
        loader._native_feed = (key, feed)  # holds x and y (as the loader does)
        return feed

    def _batch(self, xb: Any, yb: Any, loader: DataLoader, where: str) -> tuple[np.ndarray, Any]:
        if getattr(loader, "_checked", False):
            return xb, yb
        xb = as_input(xb, where, model=self.model)
        if yb is None:
            raise ValueError(f"{where}: the data has no labels/targets")
        out = self._output_shape(tuple(xb.shape[1:]), where)
        yb = self._prep_y(yb, out, where)
        if len(yb) != len(xb):
            raise ValueError(f"{where}: a batch has {len(xb)} inputs but {len(yb)} labels")
        if self.loss.name == "cross_entropy":
            check_labels(yb, out[0], where)
        return xb, yb

    # -- training -----------------------------------------------------------------------------
    def fit(
        self,
        x: Any,
        y: Any = None,
        epochs: int = 1,
        batch_size: int = 32,
        validation_data: Any = None,
        validation_split: float = 0.0,
        shuffle: bool = True,
        callbacks: Sequence[_callbacks.Callback] | None = None,
        verbose: int = 1,
        initial_epoch: int | None = None,
        resume_from: str | None = None,
        lr_scheduler: _optim.LRScheduler | None = None,
        checkpoint_path: str | os.PathLike | None = None,
    ) -> History:
        """Train for epochs ``initial_epoch .. epochs-1``; returns this call's History.

        Args:
            x: images (N, C, H, W) / (N, H, W) (uint8 is scaled to [0, 1]) / (N, features),
                a :class:`cnnkit.data.DataLoader`, or a dataset yielding (x_i, y_i).
            y: labels (N,) for cross_entropy, targets for mse; None with a loader/dataset.
            epochs: the epoch to stop at (Keras): with initial_epoch 0, the number of epochs.
            batch_size: samples per update (ignored when x is a DataLoader).
            validation_data: (x_val, y_val) or a DataLoader, evaluated after every epoch.
            validation_split: fraction of the array data (taken from the end, before
                shuffling) held out for validation instead.
            shuffle: reshuffle the training samples every epoch (seeded by (seed, epoch)).
            callbacks: :mod:`cnnkit.callbacks` objects.
            verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
            initial_epoch: the first epoch index; default: the epochs this trainer has already
                completed (0 for a fresh trainer, the checkpoint's epoch after resuming).
            resume_from: a trainer checkpoint (from ModelCheckpoint or cnnkit.io.save) to
                restore first: weights, optimizer state, lr schedule, RNG, epoch, history.
            lr_scheduler: a :mod:`cnnkit.optim` schedule of the trainer's optimizer, stepped
                at its ``interval`` and saved in checkpoints (so is the schedule of the first
                SchedulerCallback in `callbacks`). A schedule made anew for a resumed run takes
                over the checkpoint's schedule state.
            checkpoint_path: where to write a resumable checkpoint when training is
                interrupted by Ctrl-C (SIGINT). Default: the path of a ModelCheckpoint in
                `callbacks` that writes full checkpoints to a fixed name (no format fields,
                no save_best_only); else none is written.

        Ctrl-C (SIGINT, in the main thread) stops training after the current step: the
        checkpoint is written (it records the position inside the epoch), the previous SIGINT
        handler is restored, ``trainer.interrupted`` is True, ``trainer.stop_reason`` says
        where it stopped, and the History so far is returned. Resuming (``resume_from`` or
        ``cnnkit.load(path).fit(...)``, same data and batch_size) skips the batches already
        done and continues bit-identically. A second Ctrl-C raises KeyboardInterrupt at once.

        One fit at a time: a second ``fit`` on this Trainer while one runs (another thread, or
        a callback) raises RuntimeError at once, as does a fit of the same model by another
        Trainer. ``evaluate`` and ``predict`` may be called from other threads meanwhile:
        they run between two updates and see the weights of that moment.
        """
        if not self._fit_lock.acquire(blocking=False):
            raise RuntimeError(
                "fit: this Trainer is already fitting (in another thread, or fit was called "
                "from one of its callbacks); wait for that fit to return"
            )
        model = self.model
        try:
            with _FITTING_LOCK:
                if model._fitting is not None:
                    raise RuntimeError(
                        "fit: the model is already being trained by another Trainer; one "
                        "model trains in one fit at a time"
                    )
                model._fitting = self
            self._fit_thread = threading.get_ident()
            try:
                return self._fit(x, y, epochs, batch_size, validation_data, validation_split,
                                 shuffle, callbacks, verbose, initial_epoch, resume_from,
                                 lr_scheduler, checkpoint_path)
            finally:
                model._fitting = None
                self._fit_thread = None
        finally:
            self._fit_lock.release()

    def _fit(self, x: Any, y: Any, epochs: int, batch_size: int, validation_data: Any,
             validation_split: float, shuffle: bool,
             callbacks: Sequence[_callbacks.Callback] | None, verbose: int,
             initial_epoch: int | None, resume_from: str | None,
             lr_scheduler: _optim.LRScheduler | None,
             checkpoint_path: str | os.PathLike | None) -> History:
        where = "fit"
        if self.optimizer is None:
            raise ValueError(
                "fit: the trainer has no optimizer; create it with e.g. "
                "Trainer(model, optimizer=cnnkit.optim.Adam(lr=1e-3)) (or optimizer='adam')"
            )
        epochs = positive_int(epochs, "epochs", where, allow_zero=True)
        batch_size = positive_int(batch_size, "batch_size", where)
        if verbose not in (0, 1, 2):
            raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose!r}")
        if isinstance(validation_split, bool) or not isinstance(
                validation_split, (int, float, np.floating)) or not 0 <= validation_split < 1:
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
        if initial_epoch is not None:
            initial_epoch = positive_int(initial_epoch, "initial_epoch", where, allow_zero=True)
        cb_list = _callbacks.CallbackList(list(callbacks or []))  # checks the types
        if lr_scheduler is not None and not isinstance(lr_scheduler, _optim.LRScheduler):
            raise ValueError(f"fit: lr_scheduler must be a cnnkit.optim schedule, got "
                             f"{lr_scheduler!r}")
        if checkpoint_path is not None:
            if isinstance(checkpoint_path, os.PathLike):
                checkpoint_path = os.fspath(checkpoint_path)
            if not isinstance(checkpoint_path, str) or not checkpoint_path:
                raise ValueError(f"fit: checkpoint_path must be a non-empty path, got "
                                 f"{checkpoint_path!r}")
            parent = os.path.dirname(os.path.abspath(checkpoint_path))
            if not os.path.isdir(parent):
                raise ValueError(f"fit: checkpoint_path {checkpoint_path!r}: directory "
                                 f"{parent!r} does not exist")
        else:
            checkpoint_path = self._default_checkpoint_path(cb_list)

        # Data: everything is checked before the first update.
        val_loader: DataLoader | None = None
        if validation_split > 0:
            if isinstance(x, DataLoader) or _is_dataset(x):
                raise ValueError("fit: validation_split needs array data; pass validation_data "
                                 "with a DataLoader or dataset")
            xa, ya = self._prep_arrays(x, y, where)
            n_val = int(len(xa) * validation_split)
            if n_val < 1 or n_val >= len(xa):
                raise ValueError(
                    f"fit: validation_split={validation_split} of {len(xa)} samples leaves "
                    f"{n_val} for validation and {len(xa) - n_val} for training (both need >= 1)"
                )
            x, y = xa[:-n_val], ya[:-n_val]
            val_loader = DataLoader(xa[-n_val:], ya[-n_val:], batch_size=max(batch_size, 256))
            val_loader._checked = True
        if validation_data is not None:
            if val_loader is not None:
                raise ValueError("fit: pass validation_data or validation_split, not both")
            val_loader = self._val_loader(validation_data, max(batch_size, 256))
        loader = self._loader(x, y, batch_size, bool(shuffle), where)

        if resume_from is not None:
            self.load_checkpoint(resume_from)  # may change self.seed (the checkpoint's wins)
            if loader is not x:  # a loader we made: shuffle with the restored seed
                loader.seed = self.seed
        # The schedule saved in checkpoints: lr_scheduler, else the first SchedulerCallback's.
        stepped = [c.scheduler for c in cb_list.callbacks
                   if isinstance(c, _callbacks.SchedulerCallback)]
        if lr_scheduler is not None:
            self._set_scheduler(lr_scheduler)
        elif stepped and not any(s is self.lr_scheduler for s in stepped):
            self._set_scheduler(stepped[0])
        start = self.epoch if initial_epoch is None else initial_epoch
        self._check_progress(loader, start, initial_epoch)
        history = History()
        history.params = {"epochs": epochs, "steps": len(loader), "verbose": verbose}
        if start >= epochs:
            if verbose:
                print(f"fit: nothing to do: training starts at epoch {start} and stops at "
                      f"{epochs} (pass a larger epochs, or initial_epoch=0 to start over)")
            return history

        dist = _dist._active()
        if dist:
            self._setup_distributed(loader, val_loader, cb_list, epochs, start)
            if not _dist.is_main():
                verbose, checkpoint_path = 0, None
        if self.lr_scheduler is not None and not any(s is self.lr_scheduler for s in stepped):
            cb_list.callbacks.insert(0, _callbacks.SchedulerCallback(self.lr_scheduler))
        cb_list.set_trainer(self)
        acc = ["accuracy"] if "accuracy" in self.metrics else []
        val = ["val_loss"] + (["val_accuracy"] if acc else []) if val_loader is not None else []
        self._epoch_keys = ["loss", *acc, *val, "lr", "time", "images_per_sec"]
        self.stop_training = False
        self.diverged = False
        self.interrupted = False
        self.stop_reason = None
        # Data-parallel: Ctrl-C is not caught (the processes would stop at different steps
        # and wait for each other): it ends the job, which resumes from a checkpoint.
        with _SigintGuard(enabled=not dist) as guard:
            if dist:
                self._grad_reducer = _dist._install_reducer(self.model)  # "nccl" or "mpi"
            cb_list.on_train_begin({})
            try:
                for epoch in range(start, epochs):
                    logs = self._run_epoch(loader, val_loader, epoch, epochs, cb_list, verbose,
                                           guard)
                    if logs is None:  # interrupted inside the epoch
                        break
                    self.epoch = epoch + 1

                    def record(epoch: int = epoch, logs: dict[str, float] = logs) -> None:
                        history.append(epoch, logs)
                        self.history.append(epoch, logs)
                        self._mark(history)

                    cb_list.on_epoch_end(epoch, logs, before_checkpoints=record)
                    if self.stop_training or self.diverged or guard.hit:
                        break
                if guard.hit and not self.diverged:
                    # before on_train_end, which may change the weights (restore_best_weights)
                    self._interrupt(checkpoint_path, verbose)
            finally:
                if dist:
                    _core.set_grad_reducer(self.model._net, None)
                cb_list.on_train_end({})
        self._mark(history)
        return history

    def _setup_distributed(self, loader: DataLoader, val_loader: DataLoader | None,
                           cb_list: _callbacks.CallbackList, epochs: int, start: int) -> None:
        """Data-parallel fit (cnnkit.distributed): this rank's shards of the data, rank 0's
        weights, a Dropout stream per rank, file-writing callbacks on rank 0 only; refuses
        (DistributedError) processes that disagree on the sizes that decide the collectives."""
        r, w = _dist.rank(), _dist.world_size()
        if loader.num_shards != w or loader.shard_index != r:
            loader.shard(r, w)
        if val_loader is not None:
            val_loader.shard(r, w, drop_remainder=False)
        _dist._check_same([len(loader), loader.num_samples, loader.batch_size, epochs, start,
                           self.model.num_parameters(), self.epoch],
                          "(batches per epoch, samples per process, batch size, epochs, first "
                          "epoch, parameters, epochs done)")
        _dist._sync_model(self.model)
        net = self.model._net
        seed, counter = net.rng_state()
        if r > 0:  # rank 0 keeps the single-process stream (the one checkpoints record)
            base = self._rank_rng[0] if self._rank_rng and seed == self._rank_rng[1] else seed
            mine = derive_seed(base, 1 + r)
            self._rank_rng = (base, mine)
            net.set_rng(mine, counter)
        if r > 0:
            cb_list.callbacks = [c for c in cb_list.callbacks if not c.main_process_only]

    @staticmethod
    def _default_checkpoint_path(cb_list: _callbacks.CallbackList) -> str | None:
        for c in cb_list.callbacks:
            if (isinstance(c, _callbacks.ModelCheckpoint) and not c.save_weights_only
                    and not c.save_best_only and "{" not in c.filepath):
                return c.filepath
        return None

    def _check_progress(self, loader: DataLoader, start: int, initial_epoch: int | None) -> None:
        """Keep a saved mid-epoch position only when this fit continues that epoch, and check
        that the data is batched the same way (else the skipped batches would be wrong)."""
        p = self._progress
        if p is None:
            return
        if initial_epoch is not None or start != p.epoch:
            self._progress = None  # an explicit restart: the epoch starts from its beginning
            return
        mine = (len(loader), loader.batch_size, loader.num_samples, loader.shuffle)
        if mine != (p.batches, p.batch_size, p.samples, p.shuffle):
            raise ValueError(
                f"fit: training stopped (interrupted) after batch {p.batch} of {p.batches} in "
                f"epoch {p.epoch + 1} (batch_size {p.batch_size}, {p.samples} samples, shuffle="
                f"{p.shuffle}), but this run has {mine[0]} batches (batch_size {mine[1]}, "
                f"{mine[2]} samples, shuffle={mine[3]}); pass the same data and batch_size to "
                f"continue exactly, or initial_epoch={p.epoch} to restart that epoch"
            )

    def _interrupt(self, path: str | None, verbose: int) -> None:
        """Ctrl-C: record why, and write a resumable checkpoint when there is a path."""
        self.interrupted = True
        self.stop_training = True
        p = self._progress
        where = (f"epoch {p.epoch + 1}, after batch {p.batch} of {p.batches}" if p is not None
                 else f"the end of epoch {self.epoch}")
        msg = f"training interrupted (SIGINT / Ctrl-C) at {where}"
        if path is not None:
            try:
                _io.save(self, path)
            except Exception as e:  # report it: the History so far is still returned
                msg += f"; could NOT write the checkpoint {path}: {type(e).__name__}: {e}"
                verbose = 1
            else:
                self.last_checkpoint = path
                msg += (f"; checkpoint saved to {path} (resume with fit(..., resume_from="
                        f"{path!r}) or cnnkit.load({path!r}).fit(...))")
        else:
            msg += "; no checkpoint written (pass fit(checkpoint_path=...) to get one)"
        self.stop_reason = msg
        if verbose:
            print(msg, file=sys.stderr)

    def _mark(self, history: History) -> None:
        """Copy why this run stopped (if it did) into its History and the trainer's."""
        for h in (history, self.history):
            h.diverged = self.diverged
            h.interrupted = self.interrupted
            h.stop_reason = self.stop_reason

    def _val_loader(self, data: Any, batch_size: int) -> DataLoader:
        if isinstance(data, DataLoader) or _is_dataset(data):
            return self._loader(data, None, batch_size, False, "fit(validation_data)")
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError("fit: validation_data must be (x_val, y_val) or a DataLoader")
        return self._loader(data[0], data[1], batch_size, False, "fit(validation_data)")

    @staticmethod
    def _batches(loader: DataLoader, epoch: int, skip: int) -> Any:
        """(index, batch) pairs of `epoch`, without the first `skip` batches."""
        loader.set_epoch(epoch)
        if skip == 0:
            return enumerate(loader)
        if type(loader) is not DataLoader:  # a subclass may iterate its own way: drop batches
            return ((b, batch) for b, batch in enumerate(loader) if b >= skip)
        idx = loader.order(epoch)  # the same order as iterating: a function of (seed, epoch)
        loader.epoch = epoch + 1
        bs = loader.batch_size
        return ((b, loader._batch(idx[b * bs : (b + 1) * bs], epoch))
                for b in range(skip, len(loader)))

    def _run_epoch(self, loader: DataLoader, val_loader: DataLoader | None, epoch: int,
                   epochs: int, cbs: _callbacks.CallbackList, verbose: int,
                   guard: _SigintGuard) -> dict[str, float] | None:
        """One epoch; returns its logs, or None when Ctrl-C stopped it (self._progress then
        says where)."""
        acc = "accuracy" in self.metrics
        p = self._progress
        if p is None or p.epoch != epoch:
            cbs.on_epoch_begin(epoch, {})
            p = _Progress(epoch, 0, len(loader), loader.batch_size, loader.num_samples,
                          loader.shuffle)
            self._progress = p
        # else: resuming inside this epoch, whose on_epoch_begin ran before the checkpoint
        # No tqdm object at all unless it shows: any tqdm, even a disabled one, starts tqdm's
        # monitor thread, which then outlives a silent fit.
        bar = tqdm(total=len(loader), initial=p.batch, desc=f"Epoch {epoch + 1}/{epochs}",
                   unit="batch", leave=True, dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.2) if verbose == 1 else _SilentBar()
        t0 = time.perf_counter() - p.time
        feed = None
        try:
            feed = self._feed(loader, "fit")
            if feed is not None:
                stopped = self._train_native(feed, loader, epoch, p, t0, cbs, verbose, guard, bar)
            else:
                stopped = self._train_python(loader, epoch, p, t0, cbs, verbose, guard, bar)
            if stopped:
                return None
            seen, correct, loss_sum = p.seen, p.correct, p.loss_sum
            self._progress = None  # the epoch's batches are done
            dt = time.perf_counter() - t0
            if loader.num_shards > 1 and _dist.world_size() > 1:
                seen, correct, loss_sum, dt = self._reduce_epoch(seen, correct, loss_sum, dt)
            logs: dict[str, float] = {}
            if self.diverged:
                logs["loss"] = math.nan
                if acc:
                    logs["accuracy"] = correct / seen if seen else math.nan
            else:
                logs["loss"] = loss_sum / seen if seen else math.nan
                if acc:
                    logs["accuracy"] = correct / seen if seen else math.nan
            if val_loader is not None:
                if self.diverged:
                    val = {"loss": math.nan, "accuracy": math.nan}
                else:
                    val = self._evaluate_loader(val_loader, "fit(validation_data)")
                logs["val_loss"] = val["loss"]
                if acc:
                    logs["val_accuracy"] = val["accuracy"]
            logs["lr"] = self.optimizer.lr
            logs["time"] = dt
            logs["images_per_sec"] = seen / dt if dt > 0 else 0.0
            if verbose == 1:
                bar.set_postfix(self._summary(logs, short=True), refresh=False)
        finally:
            bar.close()
            if feed is not None:
                feed.close()  # no prefetch thread outlives the epoch (Ctrl-C, errors included)
        if verbose == 2:
            print(f"Epoch {epoch + 1}/{epochs} - {dt:.1f}s - "
                  + " - ".join(f"{k}: {v}" for k, v in self._summary(logs).items()))
        return logs

    def _reduce_epoch(self, seen: int, correct: int, loss_sum: float,
                      dt: float) -> tuple[int, int, float, float]:
        """Data-parallel: the epoch's sums over every process (the same logs everywhere), the
        slowest process's time, and BatchNorm running statistics averaged."""
        sums = _dist.all_reduce(np.array([seen, correct, loss_sum], np.float64), "sum")
        slow = _dist.all_reduce(np.array([dt], np.float64), "max")
        _dist._average_buffers(self.model)
        return int(sums[0]), int(sums[1]), float(sums[2]), float(slow[0])

    def _show(self, bar: Any, p: _Progress, t0: float, advance: int) -> None:
        """The progress bar's postfix (running loss, accuracy, img/s) after `advance` more
        batches."""
        dt = time.perf_counter() - t0
        post = {"loss": f"{p.loss_sum / p.seen:.4f}"}
        if "accuracy" in self.metrics:
            post["acc"] = f"{p.correct / p.seen:.4f}"
        post["img/s"] = f"{p.seen / max(dt, 1e-9):.0f}"
        bar.set_postfix(post, refresh=False)
        bar.update(advance)

    def _batch_logs(self, loss: float, corr: int, n: int) -> dict[str, float]:
        blogs: dict[str, float] = {"loss": float(loss)}
        if "accuracy" in self.metrics:
            blogs["accuracy"] = corr / n
        blogs["size"] = n
        return blogs

    def _train_native(self, feed: Any, loader: DataLoader, epoch: int, p: _Progress, t0: float,
                      cbs: _callbacks.CallbackList, verbose: int, guard: _SigintGuard,
                      bar: Any) -> bool:
        """The batches p.batch.. of `epoch` through the native feed; True when Ctrl-C stopped
        them. With callbacks that take batch hooks, one native call (gather + step) per batch
        and the hooks around it; else runs of batches lasting about _NATIVE_RUN_SECONDS. The
        sums continue in p exactly as the Python loop adds them."""
        net = self.model._net
        feed.set_epoch(epoch)  # keys the transform's draws
        feed.set_order(loader.order(epoch) if loader.shuffle or loader.num_shards > 1 else None)
        loader.epoch = epoch + 1  # as iterating the loader would leave it
        per_batch = cbs.uses_batch_hooks()
        nb, bs, total = len(loader), loader.batch_size, loader.num_samples
        b = p.batch
        while b < nb:
            if per_batch:
                cbs.on_train_batch_begin(b, {"size": min(bs, total - b * bs)})
            done, seen, correct, loss_sum, loss, corr, n, bad = feed.train(
                net, b, 1 if per_batch else nb - b, _NATIVE_RUN_SECONDS, p.seen, p.correct,
                p.loss_sum)  # each step atomic: Ctrl-C is handled after the run
            b += done
            # the sums hold the finite batches; a non-finite last one is not in them
            p.batch, p.seen, p.correct, p.loss_sum = b - bad, seen, correct, loss_sum
            p.time = time.perf_counter() - t0
            if bad:  # the last batch's loss is not finite; its update was not applied
                self._diverge(loss, epoch, b - 1, verbose)
                cbs.on_train_batch_end(b - 1, self._batch_logs(loss, corr, n))
                return False
            if per_batch:
                cbs.on_train_batch_end(b - 1, self._batch_logs(loss, corr, n))
            if verbose == 1:
                self._show(bar, p, t0, done)
            if guard.hit:
                return True
        return False

    def _train_python(self, loader: DataLoader, epoch: int, p: _Progress, t0: float,
                      cbs: _callbacks.CallbackList, verbose: int, guard: _SigintGuard,
                      bar: Any) -> bool:
        """The batches p.batch.. of `epoch` from the loader's iterator (datasets, transforms,
        DataLoader subclasses), one native train step per batch; True when Ctrl-C stopped
        them."""
        net = self.model._net
        for b, (xb, yb) in self._batches(loader, epoch, p.batch):
            xb, yb = self._batch(xb, yb, loader, "fit")
            n = int(xb.shape[0])
            cbs.on_train_batch_begin(b, {"size": n})
            loss, corr = net.train_step(xb, yb)  # atomic: Ctrl-C is handled after it
            blogs = self._batch_logs(loss, corr, n)
            if not math.isfinite(loss):
                self._diverge(loss, epoch, b, verbose)
                cbs.on_train_batch_end(b, blogs)
                break
            p.batch, p.seen = b + 1, p.seen + n
            p.correct += int(corr)
            p.loss_sum += float(loss) * n
            p.time = time.perf_counter() - t0
            cbs.on_train_batch_end(b, blogs)
            if verbose == 1:
                self._show(bar, p, t0, 1)
            if guard.hit:
                return True
        return False

    @staticmethod
    def _summary(logs: dict[str, float], short: bool = False) -> dict[str, str]:
        out = {}
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if k in logs:
                out[k.replace("accuracy", "acc") if short else k] = f"{logs[k]:.4f}"
        out["lr"] = f"{logs['lr']:.3g}"
        out["img/s"] = f"{logs['images_per_sec']:.0f}"
        return out

    def _diverge(self, loss: float, epoch: int, batch: int, verbose: int) -> None:
        self.diverged = True
        self.stop_training = True
        self.stop_reason = (
            f"training diverged: the loss became {loss} at epoch {epoch + 1}, batch {batch + 1}; "
            f"that update was not applied and training stopped. Try a lower learning rate "
            f"(lr is {self.optimizer.lr:g})."
        )
        if verbose:
            print(self.stop_reason, file=sys.stderr)

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate_loader(self, loader: DataLoader, where: str) -> dict[str, float]:
        net = self.model._net
        feed = self._feed(loader, where)
        if feed is not None:  # every batch in one native call, summed as below
            feed.set_epoch(0)
            feed.set_order(loader.order(0) if loader.shuffle or loader.num_shards > 1 else None)
            loader.epoch = 1  # as iterating epoch 0 would leave it
            try:
                seen, correct, loss_sum = feed.evaluate(net)
            finally:
                feed.close()
            return self._means(loader, seen, correct, loss_sum)
        seen, correct, loss_sum = 0, 0, 0.0
        loader.set_epoch(0)
        for xb, yb in loader:
            xb, yb = self._batch(xb, yb, loader, where)
            loss, corr = net.eval_step(xb, yb)
            n = int(xb.shape[0])
            seen += n
            correct += int(corr)
            loss_sum += float(loss) * n
        return self._means(loader, seen, correct, loss_sum)

    def _means(self, loader: DataLoader, seen: int, correct: int,
               loss_sum: float) -> dict[str, float]:
        """{"loss", "accuracy"} from the sums; a sharded loader's over every process."""
        if loader.num_shards > 1 and _dist.world_size() > 1:
            sums = _dist.all_reduce(np.array([seen, correct, loss_sum], np.float64), "sum")
            seen, correct, loss_sum = int(sums[0]), int(sums[1]), float(sums[2])
        out = {"loss": loss_sum / seen}
        if "accuracy" in self.metrics:
            out["accuracy"] = correct / seen
        return out

    def evaluate(self, x: Any, y: Any = None, batch_size: int = 256,
                 verbose: int = 0) -> dict[str, float]:
        """Mean loss (and accuracy) over (x, y) in eval mode: {"loss", "accuracy"}."""
        batch_size = positive_int(batch_size, "batch_size", "evaluate")
        loader = self._loader(x, y, batch_size, False, "evaluate")
        t0 = time.perf_counter()
        out = self._evaluate_loader(loader, "evaluate")
        if verbose:
            print(f"evaluate - {time.perf_counter() - t0:.1f}s - "
                  + " - ".join(f"{k}: {v:.4f}" for k, v in out.items()))
        return out

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Outputs for x in eval mode, as :meth:`cnnkit.Sequential.predict`: class
        probabilities (N, C) (a stable softmax of the logits) for cross_entropy, raw outputs
        for mse. x: an array, a dataset, or a DataLoader (iterated as it is: use
        shuffle=False to keep the sample order). Safe to call from another thread while
        ``fit`` runs (it sees the weights between two updates)."""
        batch_size = positive_int(batch_size, "batch_size", "predict")
        net = self.model._net
        outs = []
        if isinstance(x, DataLoader) or _is_dataset(x):
            loader = x if isinstance(x, DataLoader) else DataLoader(x, batch_size=batch_size)
            loader.set_epoch(0)
            for xb, _ in loader:
                xb = as_input(xb, "predict", model=self.model)
                self._output_shape(tuple(xb.shape[1:]), "predict")
                outs.append(net.forward(xb, False))
        else:
            xa = as_input(x, "predict", model=self.model)
            self._output_shape(tuple(xa.shape[1:]), "predict")
            for i in range(0, len(xa), batch_size):
                outs.append(net.forward(xa[i : i + batch_size], False))
        return _predictions(np.concatenate(outs, axis=0), self.loss.name)

    def predict_classes(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Predicted class indices (N,) int64 (argmax of the outputs)."""
        out = self.predict(x, batch_size)
        return np.argmax(out.reshape(out.shape[0], -1), axis=1).astype(np.int64)

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds, as a plain dict (arrays as numpy copies): the
        model's state_dict under "model", the loss, metrics, seed, epochs done, the Dropout
        stream's position, the history, the position inside an unfinished epoch, and the
        optimizer's hyper-parameters, step and buffers and the lr schedule. cnnkit.save
        writes exactly this; :meth:`load_state_dict` takes it back. Refused (RuntimeError)
        from another thread while this Trainer is fitting."""
        self._refuse_while_fitting("state_dict")
        return _state.state_of(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: every part is checked first (ValueError naming the
        field); on any error this Trainer is unchanged. The loss and, when this Trainer has
        one, the optimizer type must match. Refused (RuntimeError) while fitting in another
        thread."""
        self._refuse_while_fitting("load_state_dict")
        _state.load_into(self, state, "Trainer.load_state_dict")

    @classmethod
    def from_state_dict(cls, model: Any, state: dict[str, Any],
                        device: str = "auto") -> Trainer:
        """A Trainer for `model` (same architecture as the one `state` came from) with the
        loss, metrics, seed and optimizer that `state` records, restored from it."""
        st = state if isinstance(state, _state.Checked) else \
            _state.check(state, "Trainer.from_state_dict")
        opt = None
        if st.optimizer is not None:
            opt = _optim.from_config(st.optimizer["kind"], st.optimizer["config"])
        trainer = cls(model, loss=st.loss, optimizer=opt, metrics=tuple(st.metrics),
                      device=device, seed=st.seed)
        _state.load_into(trainer, st, "Trainer.from_state_dict")
        return trainer

    def _refuse_while_fitting(self, what: str) -> None:
        if self._fit_thread is not None and self._fit_thread != threading.get_ident():
            raise RuntimeError(f"{what}: this Trainer is fitting in another thread; "
                               "wait for fit to return")

    def save(self, path: str) -> None:
        """Write a full checkpoint (see cnnkit.io.save). Refused (RuntimeError) from another
        thread while this Trainer is fitting: the weights would be read between steps' halves
        (callbacks, which run in fit's thread, may save)."""
        self._refuse_while_fitting("save")
        _io.save(self, path)

    def load_checkpoint(self, path: str) -> None:
        """Restore weights, optimizer state, schedule, RNG, epoch and history from a trainer
        checkpoint; the file is fully checked first (CheckpointError), nothing half-loads.
        Refused (RuntimeError) from another thread while this Trainer is fitting."""
        self._refuse_while_fitting("load_checkpoint")
        _io.restore_trainer(self, path)

    def __repr__(self) -> str:
        return (f"Trainer(loss={self.loss.name!r}, optimizer={self.optimizer!r}, "
                f"device={self.device!r}, seed={self.seed}, epoch={self.epoch})")
