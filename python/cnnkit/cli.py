"""The ``cnnkit`` command line: train, evaluate, predict, info, bench.

cnnkit train --epochs 2                   # LeNet-5 on MNIST, best device
cnnkit train --dataset fashion-mnist --model fashion_cnn --epochs 15
cnnkit evaluate runs/mnist-lenet5/model.cnnkit --dataset mnist
cnnkit predict runs/mnist-lenet5/model.cnnkit digit.png
cnnkit info
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time

import numpy as np

DATASETS = ("mnist", "fashion-mnist")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad")


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



def _load_dataset(name: str, data_dir: str | None):
    from . import datasets

    loader = datasets.load_mnist if name == "mnist" else datasets.load_fashion_mnist
    return loader(data_dir=data_dir)


def _make_optimizer(name: str, lr: float | None, momentum: float, weight_decay: float):
    from . import optim

    defaults = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.05, "rmsprop": 1e-3, "adagrad": 1e-2}
    lr = defaults[name] if lr is None else lr
    if name == "sgd":
        return optim.SGD(lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls = {"adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSprop,
           "adagrad": optim.Adagrad}[name]  # fmt: skip
    return cls(lr=lr, weight_decay=weight_decay) if name != "adamw" else cls(lr=lr)


def _build_model(spec: str):
    from . import models
    from . import serialization as io

    if spec in models.MODELS:
        return models.MODELS[spec]()
    if os.path.exists(spec):
        return io.load_model(spec)
    raise SystemExit(
        f"cnnkit: --model must be one of {sorted(models.MODELS)} or a model file; got {spec!r}"
    )


def _pick_device(device: str) -> str:
    import cnnkit

    if device == "auto":
        return "cuda" if cnnkit.cuda_available() else "cpu"
    if device == "cuda" and not cnnkit.cuda_available():
        why = "no CUDA device is present" if cnnkit.built_with_cuda() else "built without CUDA"
        raise SystemExit(f"cnnkit: --device cuda requested but {why}; use --device cpu")
    return device


# ---- commands ---------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    import cnnkit as ck

    from . import callbacks
    from . import serialization as io

    if args.threads:
        ck.set_num_threads(args.threads)
    device = _pick_device(args.device)
    (x_train, y_train), (x_test, y_test) = _load_dataset(args.dataset, args.data_dir)
    n_val = args.val_size
    if not 0 <= n_val < len(x_train):
        raise SystemExit(f"cnnkit: --val-size must be in [0, {len(x_train)}), got {n_val}")
    x_fit, y_fit = x_train[: len(x_train) - n_val], y_train[: len(y_train) - n_val]
    val = (x_train[len(x_train) - n_val :], y_train[len(y_train) - n_val :]) if n_val else None

    out = args.out or os.path.join("runs", f"{args.dataset}-{os.path.basename(args.model)}")
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "checkpoint.cnnkit")

    if args.resume:
        trainer = io.load(args.resume, device=device)
        if not isinstance(trainer, ck.Trainer):
            raise SystemExit(f"cnnkit: {args.resume} is a model file, not a training checkpoint")
    else:
        ck.manual_seed(args.seed)
        model = _build_model(args.model)
        opt = _make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay)
        trainer = ck.Trainer(model, loss="cross_entropy", optimizer=opt, metrics=["accuracy"],
                             device=device, seed=args.seed)  # fmt: skip
    cbs = [callbacks.ModelCheckpoint(ckpt), callbacks.CSVLogger(os.path.join(out, "history.csv"))]
    if args.schedule == "cosine":
        from . import optim

        sched = optim.CosineAnnealingLR(trainer.optimizer, T_max=args.epochs)
        cbs.append(callbacks.SchedulerCallback(sched, per="epoch"))
    elif args.schedule == "step":
        from . import optim

        step = max(1, args.epochs // 3)
        cbs.append(callbacks.SchedulerCallback(
            optim.StepLR(trainer.optimizer, step_size=step, gamma=0.1), per="epoch"))  # fmt: skip

    print(f"cnnkit {ck.__version__}: training {args.model} on {args.dataset} "
          f"({len(x_fit)} train / {n_val} validation images), device={device}, "
          f"threads={ck.get_num_threads()}, optimizer={args.optimizer}")  # fmt: skip
    t0 = time.perf_counter()
    history = trainer.fit(
        x_fit, y_fit, epochs=args.epochs, batch_size=args.batch_size, validation_data=val,
        callbacks=cbs, verbose=args.verbose, resume_from=args.resume, checkpoint_path=ckpt,
    )  # fmt: skip
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
    model_path = os.path.join(out, "model.cnnkit")
    io.save(trainer.model, model_path)
    h = history.history
    epochs_run = len(h.get("loss", []))
    times = h.get("time") or [train_time / max(epochs_run, 1)]
    ips = h.get("images_per_sec") or [len(x_fit) * epochs_run / train_time]
    summary = {
        "dataset": args.dataset, "model": args.model, "epochs": epochs_run,
        "test_loss": test["loss"], "test_accuracy": test["accuracy"],
        "seconds_per_epoch": float(np.median(times)), "images_per_sec": float(np.median(ips)),
        "device": device, "threads": ck.get_num_threads(),
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
    print(f"time per epoch: {summary['seconds_per_epoch']:.1f} s, "
          f"{summary['images_per_sec']:.0f} images/s")  # fmt: skip
    print(
        f"saved: {model_path}"
        + (f", {curves}" if curves else " (pip install matplotlib for curves)")
    )
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

    from . import serialization as io

    if args.threads:
        ck.set_num_threads(args.threads)
    model = io.load_model(args.model)
    _, (x_test, y_test) = _load_dataset(args.dataset, args.data_dir)
    trainer = ck.Trainer(model, loss="cross_entropy", device=_pick_device(args.device))
    t0 = time.perf_counter()
    r = trainer.evaluate(x_test, y_test, batch_size=args.batch_size)
    dt = time.perf_counter() - t0
    print(f"{args.dataset} test: accuracy {100 * r['accuracy']:.2f}%, loss {r['loss']:.4f} "
          f"({len(x_test)} images, {len(x_test) / dt:.0f} images/s)")  # fmt: skip
    return 0


def _read_image(path: str, invert: str) -> np.ndarray:
    """One image as (1, 28, 28) float32 in [0, 1], white digit on black like MNIST."""
    if path.endswith(".npy"):
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as e:  # e.g. an object array (pickled): refused
            raise SystemExit(f"cnnkit: {path}: cannot read the array: {e}") from None
    else:
        try:
            from PIL import Image
        except ImportError as e:
            raise SystemExit(
                'cnnkit: reading PNG/JPEG needs Pillow: pip install "cnnkit[image]"'
            ) from e
        with Image.open(path) as im:
            a = np.asarray(im.convert("L").resize((28, 28), Image.BILINEAR))
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise SystemExit(f"cnnkit: {path}: expected a numeric image, got dtype {a.dtype}")
    a = np.asarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise SystemExit(f"cnnkit: {path}: the image contains NaN or Inf")
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.shape != (28, 28):
        raise SystemExit(f"cnnkit: {path}: expected a 28x28 image, got shape {a.shape}")
    if a.max() > 1.0:
        a = a / 255.0
    if invert == "yes" or (invert == "auto" and a.mean() > 0.5):
        a = 1.0 - a  # dark digit on a light background -> MNIST polarity
    return a[None]


def cmd_predict(args: argparse.Namespace) -> int:
    import cnnkit as ck

    from . import serialization as io

    model = io.load_model(args.model)
    trainer = ck.Trainer(model, loss="cross_entropy", device=_pick_device(args.device))
    x = np.stack([_read_image(p, args.invert) for p in args.images])
    probs = trainer.predict(x)
    for path, p in zip(args.images, probs, strict=True):
        top = np.argsort(p)[::-1][: args.top]
        alts = ", ".join(f"{k}: {100 * p[k]:.1f}%" for k in top)
        print(f"{path}: {int(top[0])}  ({alts})")
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

    bench.main(args.rest)
    return 0


# ---- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnkit", description="Train and run CNNs with cnnkit.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on MNIST or Fashion-MNIST")
    t.add_argument("--dataset", choices=DATASETS, default="mnist")
    t.add_argument("--model", default="lenet5", help="lenet5, fashion_cnn or a model file")
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--batch-size", type=_positive_int, default=64)
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="default: 1e-3 (adam), 0.05 (sgd)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    t.add_argument("--momentum", type=_nonneg_float, default=0.9, help="for sgd")
    t.add_argument("--weight-decay", type=_nonneg_float, default=0.0)
    t.add_argument("--schedule", choices=("cosine", "step", "none"), default="cosine")
    t.add_argument("--val-size", type=_nonneg_int, default=5000, help="training images held out")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--threads", type=_positive_int, default=None)
    t.add_argument("--seed", type=_nonneg_int, default=0)
    t.add_argument("--out", default=None, help="output directory (default runs/DATASET-MODEL)")
    t.add_argument("--resume", default=None, help="continue from a checkpoint file")
    t.add_argument("--data-dir", default=None)
    t.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test accuracy of a saved model")
    e.add_argument("model")
    e.add_argument("--dataset", choices=DATASETS, default="mnist")
    e.add_argument("--batch-size", type=_positive_int, default=512)
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--threads", type=_positive_int, default=None)
    e.add_argument("--data-dir", default=None)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="classify 28x28 images (PNG/JPEG or .npy)")
    pr.add_argument("model")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top", type=_positive_int, default=3)
    pr.add_argument("--invert", choices=("auto", "yes", "no"), default="auto")
    pr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    pr.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="version, build flags, CPU features, CUDA devices")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="compare with PyTorch (needs torch)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit status. Bad arguments exit 2 (argparse); bad input
    (missing or corrupt files, unusable data, ...) prints ``cnnkit: error: ...`` and returns 1
    (set CNNKIT_DEBUG=1 for the traceback); Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ncnnkit: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as e:
        if os.environ.get("CNNKIT_DEBUG"):
            raise
        print(f"cnnkit: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
