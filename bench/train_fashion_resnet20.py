"""The augmentation recipes of docs/accuracy.md: ResNet-20 (1 input channel) on Fashion-MNIST
with crop + flip, and LeNet-5 on MNIST with crop, each printing the per-epoch test accuracy
and wall time and writing them to OUT/history.json.

    python bench/train_fashion_resnet20.py                      # ResNet-20, Fashion-MNIST, 40 ep
    python bench/train_fashion_resnet20.py --recipe lenet5-mnist  # LeNet-5, MNIST, 20 epochs
    python bench/train_fashion_resnet20.py --epochs 1 --train-samples 12800   # a smoke run

ResNet-20: SGD (momentum 0.9, nesterov, weight decay 5e-4), lr 0.1 cosine-annealed per epoch
over --epochs, batch 128, RandomCrop(28, padding=2) + RandomHorizontalFlip, prefetch 2.
LeNet-5: Adam lr 1e-3 cosine over 20 epochs, batch 64, RandomCrop(28, padding=2) (no flip
for digits). The test set is evaluated after every epoch (the curve); nothing is selected by
it (the reported number is the last epoch's, and the best is listed separately).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cnnkit as ck
from cnnkit import transforms as T

RECIPES = {
    "resnet20-fashion": dict(dataset="fashion-mnist", epochs=40, batch_size=128, flip=True),
    "lenet5-mnist": dict(dataset="mnist", epochs=20, batch_size=64, flip=False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="resnet20-fashion")
    ap.add_argument("--dataset", default=None, help="override the recipe's dataset")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-samples", type=int, default=None, help="first N training images")
    ap.add_argument("--test-samples", type=int, default=None, help="first N test images")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    r = dict(RECIPES[args.recipe])
    dataset = args.dataset or r["dataset"]
    epochs = args.epochs or r["epochs"]
    if args.threads:
        ck.set_num_threads(args.threads)
    load = ck.datasets.load_fashion_mnist if dataset == "fashion-mnist" else ck.datasets.load_mnist
    (x, y), (xt, yt) = load(data_dir=args.data_dir)
    x, y = x[: args.train_samples], y[: args.train_samples]
    xt, yt = xt[: args.test_samples], yt[: args.test_samples]
    x, xt = x[:, None], xt[:, None]  # (N, 1, 28, 28) uint8
    ck.manual_seed(args.seed)
    if args.recipe == "resnet20-fashion":
        model = ck.models.resnet20(num_classes=10, in_channels=1)
        opt = ck.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        model = ck.models.lenet5()
        opt = ck.optim.Adam(lr=1e-3)
    steps = [T.RandomCrop(28, padding=2)] + ([T.RandomHorizontalFlip()] if r["flip"] else [])
    loader = ck.data.DataLoader(x, y.astype("int64"), batch_size=r["batch_size"], shuffle=True,
                                seed=args.seed, transform=T.Compose(steps), prefetch=2)
    tr = ck.Trainer(model, optimizer=opt, metrics=["accuracy"], seed=args.seed)
    sched = ck.optim.CosineAnnealingLR(tr.optimizer, T_max=epochs)
    cbs = [ck.callbacks.SchedulerCallback(sched, per="epoch")]
    out = args.out or os.path.join("runs", f"{args.recipe}-augment")
    os.makedirs(out, exist_ok=True)
    print(f"# {args.recipe} on {dataset}: {len(x)} train / {len(xt)} test images, {epochs} "
          f"epochs, {len(loader)} steps per epoch, {ck.get_num_threads()} threads", flush=True)
    t0 = time.perf_counter()
    h = tr.fit(loader, epochs=epochs, validation_data=(xt, yt.astype("int64")), callbacks=cbs,
               verbose=2)
    wall = time.perf_counter() - t0
    acc = [float(a) for a in h.history["val_accuracy"]]
    rec = {"recipe": args.recipe, "dataset": dataset, "epochs": epochs,
           "train_samples": len(x), "test_samples": len(xt), "wall_s": wall,
           "epoch_s": [float(t) for t in h.history["time"]], "test_accuracy": acc,
           "final_test_accuracy": acc[-1], "best_test_accuracy": max(acc)}
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(json.dumps({k: rec[k] for k in ("wall_s", "final_test_accuracy",
                                          "best_test_accuracy")}))
    ck.save(model, os.path.join(out, "model.cnnkit"))


if __name__ == "__main__":
    main()
