"""The ``cnnkit`` command line: train, evaluate, predict, export, report, info, bench.

cnnkit train --epochs 2                   # LeNet-5 on MNIST, best device
cnnkit train --epochs 2 --tensorboard logs   # also TensorBoard files: tensorboard --logdir logs
cnnkit train --dataset fashion-mnist --model fashion_cnn --epochs 15
cnnkit evaluate runs/mnist-lenet5/model.cnnkit --dataset mnist
cnnkit predict runs/mnist-lenet5/model.cnnkit digit.png batch.npy
cnnkit export runs/mnist-lenet5/model.cnnkit lenet5.onnx   # evaluate/predict/train read .onnx
cnnkit report runs/mnist-lenet5           # rebuild the run's report.html
cnnkit info
cnnkit bench --threads 1 2

Errors (a missing, corrupt or special file, unusable data, no memory) are one line on stderr
and a non-zero exit status; CNNKIT_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import stat
import sys
import time
import warnings

import numpy as np

from ._checks import DEVICES, parse_device

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad")
CLASS_NAMES = {"fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")}


# ---- helpers ----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (the message names the value)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid positive int value: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {v}")
    return v


def _number(text: str, positive: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise argparse.ArgumentTypeError(
            f"must be a finite number {'> 0' if positive else '>= 0'}, got {text}")
    return v


def _positive_float(text: str) -> float:
    return _number(text, True)


def _nonneg_float(text: str) -> float:
    return _number(text, False)


# ---- files ------------------------------------------------------------------------------------


def _special_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for is_kind, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                          (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if is_kind(mode):
            return name
    return "not a regular file"


def _check_regular_file(path: str, what: str) -> None:
    """Refuse `path` unless it is a regular file (or a link to one), before anything opens it:
    open() on a FIFO waits for a writer forever, a device can stream without end, and opening
    some devices has side effects. OSError (with the path) when it does not exist."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: the {what} is {_special_kind(st.st_mode)}, not a regular file")


def _open_regular(path: str, what: str):
    """`path` opened for reading (binary), refused unless it is a regular file. The check runs
    before the open and again on the opened descriptor (the open does not block: O_NONBLOCK),
    so a file swapped for a FIFO in between is refused too."""
    _check_regular_file(path, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path}: the {what} is {_special_kind(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (multi-line messages are joined)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    out = lines[0]
    for ln in lines[1:]:
        out += (" " if out.endswith(":") else "; ") + ln
    return out



def _load_dataset(name: str, data_dir: str | None):
    from . import datasets

    if name.startswith("folder:"):  # class-per-folder images, a seeded 90/10 split
        ds = datasets.ImageFolder(name[len("folder:"):], size=(32, 32))
        order = np.random.default_rng(0).permutation(len(ds))
        cut = len(ds) - max(1, len(ds) // 10)
        tr, te = order[:cut], order[cut:]
        return (ds.x[tr], ds.y[tr]), (ds.x[te], ds.y[te])
    loader = {"mnist": datasets.load_mnist, "fashion-mnist": datasets.load_fashion_mnist,
              "cifar10": datasets.load_cifar10, "cifar100": datasets.load_cifar100}[name]
    return loader(data_dir=data_dir)


def _dataset_arg(value: str) -> str:
    """--dataset of train: a known name or folder:PATH."""
    if value in DATASETS or (value.startswith("folder:") and len(value) > len("folder:")):
        return value
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from "
                                     f"{', '.join(DATASETS)} or folder:PATH)")


def _augmentation(x: np.ndarray, dataset: str):
    """--augment: random crop with padding (4 at 32x32 and above, else 2) and, except for
    digits, a horizontal flip."""
    from . import transforms as T

    h, w = x.shape[-2:]
    steps = [T.RandomCrop((h, w), padding=4 if min(h, w) >= 32 else 2)]
    if dataset != "mnist":
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


def _make_optimizer(name: str, lr: float | None, momentum: float, weight_decay: float):
    from . import optim

    defaults = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.05, "rmsprop": 1e-3, "adagrad": 1e-2}
    lr = defaults[name] if lr is None else lr
    if name == "sgd":
        return optim.SGD(lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls = {"adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSprop,
           "adagrad": optim.Adagrad}[name]  # fmt: skip
    return cls(lr=lr, weight_decay=weight_decay) if name != "adamw" else cls(lr=lr)


def _model_names() -> list[str]:
    from . import models

    return sorted(models.MODELS)


def _load_model_file(path: str):
    """The model of a cnnkit model or trainer file, or of an ONNX file (by its content: a
    file without cnnkit's magic that is named *.onnx)."""
    from . import serialization as io

    _check_regular_file(path, "model file")
    with _open_regular(path, "model file") as f:
        head = f.read(len(io.MAGIC))
    if head != io.MAGIC and path.lower().endswith(".onnx"):
        from . import onnx

        try:
            return onnx.load(path)
        except ImportError as e:  # no onnx package: one line saying what to install
            raise SystemExit(f"cnnkit: {e}") from None
    return io.load_model(path)


def _build_model(spec: str, in_channels: int = 1, num_classes: int | None = None):
    """A model by name (built for the dataset's channels and classes) or file."""
    import inspect

    from . import models

    if spec in models.MODELS:
        factory = models.MODELS[spec]
        params = inspect.signature(factory).parameters
        kw = {"in_channels": in_channels} if "in_channels" in params else {}
        if num_classes is not None and num_classes != 10 and "num_classes" in params:
            kw["num_classes"] = num_classes
        return factory(**kw)
    if os.path.lexists(spec):
        return _load_model_file(spec)
    raise SystemExit(
        f"cnnkit: --model must be one of {sorted(models.MODELS)} or a model file; got {spec!r}"
    )


def _pick_device(device: str) -> str:
    return parse_device(device, "--device")  # the package's one device parser


# ---- commands ---------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    import cnnkit as ck

    from . import callbacks
    from . import serialization as io

    world = 1
    if args.bucket_mb is not None and not args.distributed:
        raise SystemExit("cnnkit: --bucket-mb is for data-parallel training: add --distributed "
                         "(mpirun -n N cnnkit train --distributed --bucket-mb MIB ...)")
    if args.sync_bn and not args.distributed:
        raise SystemExit("cnnkit: --sync-bn is for data-parallel training: add --distributed "
                         "(mpirun -n N cnnkit train --distributed --sync-bn ...)")
    if args.sync_bn and args.resume:
        raise SystemExit("cnnkit: --sync-bn converts the BatchNorm layers of a new run; a "
                         "checkpoint resumes with the layers it was saved with")
    if args.distributed:  # before threads: init picks a default for the processes per host
        world = ck.distributed.init(bucket_mb=args.bucket_mb or 0.0)
        if world == 1:
            print("cnnkit: --distributed, but not started by an MPI launcher (mpirun -n N "
                  "cnnkit train --distributed ...): training in one process", file=sys.stderr)
    main = ck.distributed.is_main()
    say = print if main else (lambda *a, **k: None)  # only rank 0 prints and writes files
    if args.threads:
        ck.set_num_threads(args.threads)
    device = _pick_device(args.device)
    if args.resume:  # before the dataset: a wrong path fails at once
        _check_regular_file(args.resume, "checkpoint")
    elif args.model not in _model_names() and os.path.lexists(args.model):
        _check_regular_file(args.model, "model file")
    (x_train, y_train), (x_test, y_test) = _load_dataset(args.dataset, args.data_dir)
    n_val = args.val_size
    if not 0 <= n_val < len(x_train):
        raise SystemExit(f"cnnkit: --val-size must be in [0, {len(x_train)}), got {n_val}")
    x_fit, y_fit = x_train[: len(x_train) - n_val], y_train[: len(y_train) - n_val]
    val = (x_train[len(x_train) - n_val :], y_train[len(y_train) - n_val :]) if n_val else None

    run_name = (f"folder-{os.path.basename(os.path.normpath(args.dataset[7:]))}"
                if args.dataset.startswith("folder:") else args.dataset)
    out = args.out or os.path.join("runs", f"{run_name}-{os.path.basename(args.model)}")
    if main:
        os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "checkpoint.cnnkit")

    if args.resume:
        trainer = io.load(args.resume, device=device)
        if not isinstance(trainer, ck.Trainer):
            raise SystemExit(f"cnnkit: {args.resume} is a model file, not a training checkpoint")
    else:
        ck.manual_seed(args.seed)
        chans = x_train.shape[1] if x_train.ndim == 4 else 1
        model = _build_model(args.model, in_channels=chans,
                             num_classes=int(max(y_train.max(), y_test.max())) + 1)
        if args.sync_bn:
            model = ck.SyncBatchNorm.convert_sync_batchnorm(model)
        opt = _make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay)
        trainer = ck.Trainer(model, loss="cross_entropy", optimizer=opt, metrics=["accuracy"],
                             device=device, seed=args.seed)  # fmt: skip
    # rank 0 writes the run's files (the trainer also runs file-writing callbacks there only)
    cbs = [callbacks.ModelCheckpoint(ckpt), callbacks.CSVLogger(os.path.join(out, "history.csv"))
           ] if main else []
    if args.tensorboard:
        samples = val if val is not None else (x_fit, y_fit)
        try:
            cbs.append(callbacks.TensorBoard(args.tensorboard,
                                             sample_data=(samples[0][:64], samples[1][:64])))
        except ImportError as e:
            raise SystemExit(f"cnnkit: {e}") from None
    # The schedule is planned over --epochs. Resuming, a new schedule takes over the
    # checkpoint's position, so a finished run extended to more epochs continues on the new
    # plan (cosine over the new total) instead of at the old plan's final lr.
    schedule = args.schedule
    if schedule is None:  # a new run: cosine; resuming: the checkpoint's kind
        kinds = {"CosineAnnealingLR": "cosine", "StepLR": "step"}
        schedule = kinds.get(type(trainer.lr_scheduler).__name__, "keep") if args.resume \
            else "cosine"
    if schedule == "cosine":
        from . import optim

        sched = optim.CosineAnnealingLR(trainer.optimizer, T_max=args.epochs)
        cbs.append(callbacks.SchedulerCallback(sched, per="epoch"))
    elif schedule == "step":
        from . import optim

        step = max(1, args.epochs // 3)
        cbs.append(callbacks.SchedulerCallback(
            optim.StepLR(trainer.optimizer, step_size=step, gamma=0.1), per="epoch"))  # fmt: skip
    elif schedule == "none" and trainer.lr_scheduler is not None:
        # a resumed run told to drop its schedule: a constant lr, the run's base lr
        trainer.lr_scheduler, trainer._scheduler_restored = None, False
        trainer.optimizer.lr = trainer.optimizer.initial_lr or trainer.optimizer.lr

    procs = f", {world} processes (batch size {args.batch_size} each)" if world > 1 else ""
    say(f"cnnkit {ck.__version__}: training {args.model} on {args.dataset} "
        f"({len(x_fit)} train / {n_val} validation images), device={device}, "
        f"threads={ck.get_num_threads()}, optimizer={args.optimizer}{procs}")  # fmt: skip
    t0 = time.perf_counter()
    fit_x, fit_y = x_fit, y_fit
    if getattr(args, "augment", False):  # crop (+ flip) natively, batches prepared ahead
        fit_x = ck.data.DataLoader(x_fit, y_fit, batch_size=args.batch_size, shuffle=True,
                                   seed=args.seed, transform=_augmentation(x_fit, args.dataset),
                                   prefetch=2)
        fit_y = None
    history = trainer.fit(
        fit_x, fit_y, epochs=args.epochs, batch_size=args.batch_size, validation_data=val,
        callbacks=cbs, verbose=args.verbose, checkpoint_path=ckpt if main else None,
    )  # fmt: skip  (a --resume checkpoint is loaded above)
    train_time = time.perf_counter() - t0
    if trainer.interrupted:
        return _report_interrupt(trainer, args, ckpt, out)
    if getattr(trainer, "diverged", False):
        lr = args.lr if args.lr is not None else (trainer.optimizer.initial_lr
                                                  or trainer.optimizer.lr)
        print(
            "cnnkit: training diverged (the loss became NaN or infinite); "
            f"try a lower learning rate than --lr {lr:g} (the lr was "
            f"{trainer.optimizer.lr:g} when it diverged). {trainer.stop_reason or ''}",
            file=sys.stderr,
        )
        return 3
    test = trainer.evaluate(x_test, y_test, batch_size=512)
    if not main:
        return 0
    model_path = os.path.join(out, "model.cnnkit")
    io.save(trainer.model, model_path)
    h = history.history
    epochs_run = len(h.get("loss", []))
    # One time and the throughput derived from it: the median over epochs of an epoch's
    # training steps, and the epoch's images divided by that time.
    times = h.get("time") or [train_time / max(epochs_run, 1)]
    seconds_per_epoch = float(np.median(times))
    summary = {
        "dataset": args.dataset, "model": args.model, "epochs": epochs_run,
        "test_loss": test["loss"], "test_accuracy": test["accuracy"],
        "seconds_per_epoch": seconds_per_epoch, "images_per_epoch": len(x_fit),
        "images_per_sec": len(x_fit) / seconds_per_epoch if seconds_per_epoch > 0 else 0.0,
        "timing": "seconds_per_epoch: median over epochs of the time one epoch's training steps "
                  "take (batch preparation, forward, loss, backward, update), without "
                  "validation, testing or file writes; images_per_sec = images_per_epoch / "
                  "seconds_per_epoch; fit_seconds: the whole fit, validation and checkpoints "
                  "included",
        "fit_seconds": train_time,
        "device": device, "threads": ck.get_num_threads(), "processes": world,
        "settings": _settings(args, trainer),
        "data_sha256": _data_checksums(args.dataset),
    }  # fmt: skip
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    curves = os.path.join(out, "curves.png")
    try:
        from . import plot

        plot.training_curves(history, curves, title=f"{args.model} on {args.dataset}")
    except ImportError:
        curves = None
    print(f"test accuracy: {100 * test['accuracy']:.2f}%  (loss {test['loss']:.4f})")
    print(f"time per epoch (training steps): {summary['seconds_per_epoch']:.1f} s, "
          f"{summary['images_per_sec']:.0f} images/s")  # fmt: skip
    report_path = _write_report(trainer, x_test, y_test, out, summary, test)
    print(
        f"saved: {model_path}"
        + (f", {curves}" if curves else ' (no curves.png: pip install matplotlib)')
        + (f", {report_path}" if report_path else "")
    )
    return 0


def _settings(args: argparse.Namespace, trainer) -> dict:
    """The run's settings as summary.json records them (and the report lists them)."""
    opt = trainer.optimizer
    return {"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
            "batch_size": args.batch_size, "optimizer": args.optimizer,
            "lr": opt.initial_lr if opt.initial_lr is not None else opt.lr,
            "momentum": args.momentum, "weight_decay": args.weight_decay,
            "schedule": args.schedule or "default", "val_size": args.val_size,
            "seed": args.seed, "resumed_from": args.resume,
            "command": shlex.join(["cnnkit", *getattr(args, "argv", [])])}


def _data_checksums(dataset: str) -> dict:
    """{file: SHA-256} of the dataset files the loader verified."""
    from . import datasets

    return dict(datasets.CHECKSUMS.get(dataset, {}))


def _write_report(trainer, x_test, y_test, out: str, summary: dict, test: dict) -> str | None:
    """report.html in the run folder; a failure is a warning (the run itself succeeded)."""
    from . import report

    path = os.path.join(out, "report.html")
    settings = {k.replace("_", " "): v for k, v in summary.get("settings", {}).items()}
    try:
        report.report(trainer, x_test, y_test, path, run_dir=out,
                      class_names=CLASS_NAMES.get(summary["dataset"]),
                      title=f"{summary['model']} on {summary['dataset']}", settings=settings,
                      data_checksums=summary.get("data_sha256"), test_metrics=test)
    except (OSError, ValueError, RuntimeError) as e:
        if os.environ.get("CNNKIT_DEBUG"):
            raise
        print(f"cnnkit: warning: could not write {path}: {_one_line(e)}", file=sys.stderr)
        return None
    return path


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild RUN_DIR/report.html from the run folder's files and the dataset's test split."""
    import cnnkit as ck

    from . import report
    from . import serialization as io

    if args.threads:
        ck.set_num_threads(args.threads)
    run = args.run_dir
    if not os.path.isdir(run):
        raise ValueError(f"{run}: not a run folder (a directory written by cnnkit train)")
    summary_path = os.path.join(run, "summary.json")
    summary: dict = {}
    if os.path.lexists(summary_path):
        _check_regular_file(summary_path, "summary")
        with open(summary_path) as f:
            try:
                summary = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{summary_path}: not valid JSON: {e}") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{summary_path}: expected a JSON object")
    dataset = args.dataset or summary.get("dataset")
    if not isinstance(dataset, str) or not (dataset in DATASETS or dataset.startswith("folder:")):
        raise SystemExit(f"cnnkit: {run} does not say which dataset it was trained on; give "
                         f"--dataset ({', '.join(DATASETS)} or folder:PATH)")
    device = _pick_device(args.device)
    ckpt, model_file = os.path.join(run, "checkpoint.cnnkit"), os.path.join(run, "model.cnnkit")
    if os.path.lexists(ckpt):
        _check_regular_file(ckpt, "checkpoint")
        trainer = io.load(ckpt, device=device)
        if not isinstance(trainer, ck.Trainer):
            raise ValueError(f"{ckpt}: a model file, not a training checkpoint")
        if os.path.lexists(model_file):  # the final weights
            trainer.model.load_state_dict(_load_model_file(model_file).state_dict())
    elif os.path.lexists(model_file):
        trainer = ck.Trainer(_load_model_file(model_file), loss="cross_entropy", device=device)
    else:
        raise ValueError(f"{run}: holds neither checkpoint.cnnkit nor model.cnnkit")
    _, (x_test, y_test) = _load_dataset(dataset, args.data_dir)
    path = args.out or os.path.join(run, "report.html")
    settings = {k.replace("_", " "): v for k, v in summary.get("settings", {}).items()}
    model_name = summary.get("model", os.path.basename(os.path.abspath(run)))
    report.report(trainer, x_test, y_test, path, run_dir=run,
                  class_names=CLASS_NAMES.get(dataset), title=f"{model_name} on {dataset}",
                  settings=settings,
                  data_checksums=summary.get("data_sha256") or _data_checksums(dataset))
    print(f"saved: {path}")
    return 0


def _report_interrupt(trainer, args: argparse.Namespace, ckpt: str, out: str) -> int:
    """Ctrl-C during `cnnkit train`: say where the checkpoint is and how to resume."""
    p = trainer._progress
    where = (f"epoch {p.epoch + 1}, after batch {p.batch} of {p.batches}" if p is not None
             else f"the end of epoch {trainer.epoch}")
    print(f"\ncnnkit: interrupted at {where}.", file=sys.stderr)
    if trainer.last_checkpoint is None:
        print(f"cnnkit: {trainer.stop_reason}", file=sys.stderr)
        return 130
    cmd = ["cnnkit", "train", "--resume", ckpt, "--dataset", args.dataset, "--epochs",
           str(args.epochs), "--batch-size", str(args.batch_size), "--val-size",
           str(args.val_size), "--out", out]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    print(f"cnnkit: checkpoint saved to {ckpt}\ncnnkit: resume with: {shlex.join(cmd)}",
          file=sys.stderr)
    return 130


def cmd_evaluate(args: argparse.Namespace) -> int:
    import cnnkit as ck

    if args.threads:
        ck.set_num_threads(args.threads)
    model = _load_model_file(args.model)
    _, (x_test, y_test) = _load_dataset(args.dataset, args.data_dir)
    trainer = ck.Trainer(model, loss="cross_entropy", device=_pick_device(args.device))
    t0 = time.perf_counter()
    r = trainer.evaluate(x_test, y_test, batch_size=args.batch_size)
    dt = time.perf_counter() - t0
    print(f"{args.dataset} test: accuracy {100 * r['accuracy']:.2f}%, loss {r['loss']:.4f} "
          f"({len(x_test)} images, {len(x_test) / dt:.0f} images/s)")  # fmt: skip
    return 0


_NPY_MAGIC = b"\x93NUMPY"
_SIDE = 28  # the models' input: 28x28 grey images


def _image_count(path: str, shape: tuple[int, ...]) -> int:
    """N for an array of shape (28, 28), (N, 28, 28) or (N, 1, 28, 28); ValueError otherwise."""
    hw = (_SIDE, _SIDE)
    if len(shape) == 2 and shape == hw:
        n = 1
    elif (len(shape) == 3 and shape[1:] == hw) or (len(shape) == 4 and shape[1:] == (1, *hw)):
        n = shape[0]
    else:
        raise ValueError(f"{path}: expected a 28x28 image, got shape {tuple(shape)} (a .npy "
                         "may also hold a batch (N, 28, 28) or (N, 1, 28, 28))")  # fmt: skip
    if n == 0:
        raise ValueError(f"{path}: holds no images (shape {tuple(shape)})")
    return n


def _read_npy(f, path: str) -> np.ndarray:
    """The array of an .npy file, checked before its data is read: numeric dtype (object
    arrays, i.e. pickles, are refused), a 28x28 image or a batch of them, and as many data
    bytes as the header promises."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except MemoryError:
        raise
    except Exception as e:  # numpy's header parser also raises SyntaxError, TokenError, ...
        raise ValueError(f"{path}: not a readable .npy file: {_one_line(e)}") from None
    if dtype.hasobject:
        raise ValueError(f"{path}: holds Python objects (pickled data); cnnkit reads only "
                         "numeric arrays")  # fmt: skip
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise ValueError(f"{path}: expected a numeric image, got dtype {dtype}")
    n = _image_count(path, shape)
    nbytes = n * _SIDE * _SIDE * dtype.itemsize
    left = os.fstat(f.fileno()).st_size - f.tell()
    if left < nbytes:
        raise ValueError(f"{path}: truncated: the header promises {nbytes} bytes of data, the "
                         f"file holds {left}")  # fmt: skip
    a = np.frombuffer(f.read(nbytes), dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return a.reshape(n, _SIDE, _SIDE)


def _read_picture(f, path: str) -> np.ndarray:
    """A PNG/JPEG/... as (1, 28, 28) uint8 grey levels (resized to 28x28)."""
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(f'{path}: reading PNG/JPEG needs Pillow: pip install "cnnkit[image]" '
                         "(or give the images as a .npy array)") from None  # fmt: skip
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # huge: refused
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert("L").resize((_SIDE, _SIDE), bilinear))
        except MemoryError:
            raise
        except Exception as e:  # the decoders raise many types for malformed files
            raise ValueError(f"{path}: cannot read the image: {_one_line(e)}") from None
    return a[None]


def _read_images(path: str, invert: str) -> np.ndarray:
    """The images of one input file as (N, 1, 28, 28) float32 in [0, 1], white digits on
    black like MNIST. An .npy (recognised by its content) holds one 28x28 image or a batch
    (N, 28, 28) / (N, 1, 28, 28); anything else is read as a picture by Pillow. ValueError or
    OSError, naming the file, when it cannot be used."""
    with _open_regular(path, "input") as f:
        is_npy = f.read(len(_NPY_MAGIC)) == _NPY_MAGIC
        f.seek(0)
        if is_npy:
            a = _read_npy(f, path)
        elif path.lower().endswith(".npy"):
            raise ValueError(f"{path}: not an .npy file (no NumPy header)")
        else:
            a = _read_picture(f, path)
    uint8 = a.dtype == np.uint8
    with np.errstate(over="ignore", invalid="ignore"):  # too large for float32 -> inf
        a = a.astype(np.float32)
    finite = np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    if not finite.all():
        which = "the image" if len(a) == 1 else f"image {int(np.argmin(finite))}"
        raise ValueError(f"{path}: {which} contains NaN or Inf")
    if uint8 or a.max() > 1.0:
        a = a / np.float32(255.0)
    if invert != "no":  # dark digits on a light background -> MNIST polarity
        flip = np.full(len(a), True) if invert == "yes" else a.mean(axis=(1, 2)) > 0.5
        a[flip] = 1.0 - a[flip]
    return a[:, None]


def cmd_predict(args: argparse.Namespace) -> int:
    import cnnkit as ck

    model = _load_model_file(args.model)
    trainer = ck.Trainer(model, loss="cross_entropy", device=_pick_device(args.device))
    names: list[str] = []
    batches: list[np.ndarray] = []
    failed = 0
    for path in args.images:  # a file that cannot be used is reported, and the rest go on
        try:
            x = _read_images(path, args.invert)
        except (OSError, ValueError, MemoryError) as e:
            if isinstance(e, MemoryError):
                e = MemoryError(f"{path}: out of memory reading it")
            print(f"cnnkit: error: {_one_line(e)}", file=sys.stderr)
            failed += 1
            continue
        names += [path] if len(x) == 1 else [f"{path}[{i}]" for i in range(len(x))]
        batches.append(x)
    if batches:
        probs = trainer.predict(np.concatenate(batches))
        for name, p in zip(names, probs, strict=True):
            top = np.argsort(p)[::-1][: args.top]
            alts = ", ".join(f"{k}: {100 * p[k]:.1f}%" for k in top)
            print(f"{name}: {int(top[0])}  ({alts})")
    if failed:
        print(f"cnnkit: {failed} of {len(args.images)} input files could not be read",
              file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import onnx
    from . import serialization as io

    _check_regular_file(args.model, "model file")
    shape = args.input_shape
    if shape is None:  # the input the file records (files of trained models do)
        shape = io.read(args.model).meta.get("input_shape")
        if shape is None:
            raise SystemExit(f"cnnkit: {args.model} does not record its input shape; give "
                             "--input-shape C H W (e.g. --input-shape 1 28 28)")
    model = io.load_model(args.model)
    try:
        onnx.export(model, args.out, input_shape=tuple(shape), opset=args.opset)
    except ImportError as e:
        raise SystemExit(f"cnnkit: {e}") from None
    print(f"saved: {args.out} (ONNX opset {args.opset}, input (N, "
          f"{', '.join(map(str, shape))}))")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import cnnkit as ck

    from . import _core

    print(f"cnnkit {ck.__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")
    print(
        f"cpu features: {_core.cpu_features() or 'baseline'}; "
        f"gemm kernel: {_core.sgemm_kernel_name()}"
    )
    print(f"threads: {ck.get_num_threads()} (OpenMP; cnnkit.set_num_threads or --threads)")
    print(f"built with CUDA: {ck.built_with_cuda()}")
    n = _core.cuda_device_count()
    print(f"CUDA devices: {n}")
    for i in range(n):
        print(f"  cuda:{i}: {_core.cuda_device_name(i)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.run(args)


# ---- parser -------------------------------------------------------------------------------------


DEVICE_HELP = ("where to run: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or "
               "cuda:0 (default: auto)")
THREADS_HELP = "OpenMP threads for the CPU kernels (default: the OpenMP default)"
DATA_DIR_HELP = "directory of the dataset cache (default: see docs/datasets.md)"
MODEL_HELP = "a model file (.cnnkit, a training checkpoint, or .onnx)"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__, bench

    p = argparse.ArgumentParser(prog="cnnkit", description="Train and run CNNs with cnnkit.")
    p.add_argument("--version", action="version", version=f"cnnkit {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="command",
                           help="train, evaluate, predict, export, report, info or bench "
                                "('cnnkit COMMAND -h' for its options)")  # fmt: skip

    t = sub.add_parser("train", help="train a model on MNIST or Fashion-MNIST")
    t.add_argument("--dataset", type=_dataset_arg, default="mnist",
                   help="mnist, fashion-mnist, cifar10, cifar100 or folder:PATH (class "
                        "folders of images, resized to 32x32, 10%% held out for the test) "
                        "(default: mnist)")
    t.add_argument("--augment", action="store_true",
                   help="random crop with padding and (except mnist) horizontal flips, applied "
                        "natively with batches prepared ahead")
    t.add_argument("--model", default="lenet5",
                   help="lenet5, fashion_cnn, resnet20, resnet18 or a model file (.cnnkit or "
                        ".onnx) to start from (default: lenet5)")
    t.add_argument("--epochs", type=_positive_int, default=10,
                   help="epochs to train (default: 10)")
    t.add_argument("--batch-size", type=_positive_int, default=64,
                   help="images per training step (default: 64)")
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: 1e-3 for adam, adamw and rmsprop, 0.05 for sgd, "
                        "1e-2 for adagrad)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="optimizer (default: adam)")
    t.add_argument("--momentum", type=_nonneg_float, default=0.9,
                   help="momentum, for sgd (default: 0.9)")
    t.add_argument("--weight-decay", type=_nonneg_float, default=0.0,
                   help="L2 weight decay (decoupled for adamw) (default: 0)")
    t.add_argument("--schedule", choices=("cosine", "step", "none"), default=None,
                   help="learning-rate schedule planned over --epochs (default: cosine; with "
                        "--resume, the checkpoint's kind, re-planned over the new --epochs)")
    t.add_argument("--val-size", type=_nonneg_int, default=5000,
                   help="training images held out for validation (default: 5000)")
    t.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    t.add_argument("--threads", type=_positive_int, default=None, help=THREADS_HELP)
    t.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seed of the weights, shuffling and dropout (default: 0)")
    t.add_argument("--out", default=None, help="output directory (default: runs/DATASET-MODEL)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint file (e.g. OUT/checkpoint.cnnkit)")
    t.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training over MPI: start with `mpirun -n N cnnkit "
                        "train --distributed ...` (needs pip install \"cnnkit[mpi]\"); "
                        "--batch-size is per process; rank 0 prints and writes the files")
    t.add_argument("--bucket-mb", type=_nonneg_float, default=None, metavar="MIB",
                   help="with --distributed: all-reduce the gradients in buckets of at least "
                        "MIB MiB during the backward, overlapping it (as DDP's bucket_cap_mb); "
                        "0, the default, all-reduces them in one call after the backward")
    t.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: replace the model's BatchNorm layers by "
                        "SyncBatchNorm (batch statistics over every process, as one process "
                        "at N times the batch size; new runs only)")
    t.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="0: quiet, 1: progress bar, 2: one line per epoch (default: 1)")
    t.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write TensorBoard event files to DIR (view with tensorboard --logdir "
                        "DIR; needs pip install \"cnnkit[tensorboard]\")")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test accuracy of a saved model")
    e.add_argument("model", nargs="?", help=MODEL_HELP)
    e.add_argument("--model", dest="model_option", metavar="MODEL", default=None,
                   help="the model file, given as an option")
    e.add_argument("--dataset", choices=DATASETS, default="mnist",
                   help="whose test set to use (default: mnist)")
    e.add_argument("--batch-size", type=_positive_int, default=512,
                   help="images per forward pass (default: 512)")
    e.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    e.add_argument("--threads", type=_positive_int, default=None, help=THREADS_HELP)
    e.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    e.set_defaults(func=cmd_evaluate, subparser=e)

    pr = sub.add_parser("predict", help="classify 28x28 images (PNG/JPEG or .npy)")
    pr.add_argument("model", nargs="?", help=MODEL_HELP)
    pr.add_argument("--model", dest="model_option", metavar="MODEL", default=None,
                    help="the model file, given as an option (then every positional is an "
                         "image)")
    pr.add_argument("images", nargs="+",
                    help="image files (PNG/JPEG with Pillow) or .npy arrays: one 28x28 image or "
                         "a batch (N, 28, 28) or (N, 1, 28, 28); uint8 or values in [0, 1]")
    pr.add_argument("--top", type=_positive_int, default=3,
                    help="classes to list per image, most likely first (default: 3)")
    pr.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                    help="make digits white on black as in MNIST: auto inverts an image whose "
                         "mean is above one half (default: auto)")
    pr.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    pr.set_defaults(func=cmd_predict, subparser=pr)

    x = sub.add_parser("export", help="write a model file as ONNX (needs the onnx package)")
    x.add_argument("model", help="a model file (or a training checkpoint)")
    x.add_argument("out", help="the ONNX file to write (e.g. model.onnx)")
    x.add_argument("--input-shape", type=_positive_int, nargs="+", default=None,
                   metavar="D", help="per-sample input shape, e.g. 1 28 28 (default: the shape "
                                     "the file records)")
    x.add_argument("--opset", type=_positive_int, default=17,
                   help="ONNX opset, 11-21 (default: 17)")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser("report", help="rebuild a run folder's report.html (one HTML file)")
    r.add_argument("run_dir", metavar="RUN_DIR",
                   help="a folder written by cnnkit train (e.g. runs/mnist-lenet5)")
    r.add_argument("--out", default=None, help="the HTML file to write (default: "
                                               "RUN_DIR/report.html)")
    r.add_argument("--dataset", type=_dataset_arg, default=None,
                   help=f"whose test set to use: {', '.join(DATASETS)} or folder:PATH "
                        "(default: the one summary.json names)")
    r.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    r.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    r.add_argument("--threads", type=_positive_int, default=None, help=THREADS_HELP)
    r.set_defaults(func=cmd_report)

    i = sub.add_parser("info", help="version, build flags, CPU features, CUDA devices")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="compare with PyTorch (needs torch)",
                       description=bench.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    b.set_defaults(func=cmd_bench)
    return p


def _model_argument(args: argparse.Namespace) -> None:
    """evaluate/predict take the model as their first positional or as --model MODEL."""
    if args.command not in ("evaluate", "predict"):
        return
    sub = args.subparser
    if args.model_option is not None:
        if args.command == "predict":
            args.images = ([args.model] if args.model is not None else []) + args.images
        elif args.model is not None:
            sub.error(f"two models given: {args.model} and --model {args.model_option}")
        args.model = args.model_option
    elif args.model is None:
        sub.error("the following arguments are required: "
                  + ("images" if args.command == "predict" else "model"))


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit status. Bad arguments exit 2 (argparse); bad input
    (missing, corrupt or special files, unusable data, no memory, a dataset that cannot be
    obtained, ...) prints one line ``cnnkit: error: ...`` and returns 1 (set CNNKIT_DEBUG=1 for
    the traceback); Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as summary.json records it
    _model_argument(args)
    from . import distributed

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ncnnkit: interrupted", file=sys.stderr)
        distributed.abort(130)  # in a distributed run, the other processes stop too
        return 130
    except (OSError, ValueError, RuntimeError, MemoryError) as e:
        # CheckpointError, the datasets' IDXFormatError / ChecksumError /
        # DatasetUnavailableError and the native core's errors are among these.
        if os.environ.get("CNNKIT_DEBUG"):
            raise
        msg = _one_line(e)
        if isinstance(e, MemoryError):
            msg = "out of memory" + (f": {msg}" if msg != type(e).__name__ else "")
        rank = f"rank {distributed.rank()}: " if distributed.world_size() > 1 else ""
        print(f"cnnkit: error: {rank}{msg}", file=sys.stderr)
        distributed.abort(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
