"""Ready-made architectures: LeNet-5 (with shipped MNIST weights) and a small BatchNorm CNN.

>>> model = cnnkit.models.lenet5(pretrained=True)   # 99%+ on the MNIST test set
"""

from __future__ import annotations

import os

from . import layers as L
from .model import Sequential

__all__ = ["lenet5", "fashion_cnn", "PRETRAINED_DIR", "MODELS"]

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def lenet5(pretrained: bool = False, num_classes: int = 10) -> Sequential:
    """LeNet-5 for (N, 1, 28, 28) inputs (LeCun et al. 1998, with ReLU and max pooling):

    conv 5x5 (6, pad 2) -> ReLU -> maxpool 2 -> conv 5x5 (16) -> ReLU -> maxpool 2 ->
    fc 400->120 -> ReLU -> fc 120->84 -> ReLU -> fc 84->num_classes (logits).

    pretrained=True loads the weights shipped with cnnkit, trained on MNIST (see
    ``weights/README.md`` for how they were made).
    """
    model = Sequential([
        L.Conv2d(1, 6, 5, padding=2), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(6, 16, 5), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
        L.Linear(400, 120), L.ReLU(), L.Linear(120, 84), L.ReLU(), L.Linear(84, num_classes),
    ])  # fmt: skip
    if pretrained:
        if num_classes != 10:
            raise ValueError("lenet5(pretrained=True) has 10 classes")
        from .serialization import load_model

        path = os.path.join(PRETRAINED_DIR, "lenet5_mnist.cnnkit")
        if not os.path.exists(path):
            raise FileNotFoundError(f"pretrained LeNet-5 weights not found at {path}")
        model.load_state_dict(load_model(path).state_dict())
    return model


def fashion_cnn(num_classes: int = 10, dropout: float = 0.3) -> Sequential:
    """A small CNN with BatchNorm for (N, 1, 28, 28) inputs such as Fashion-MNIST:

    conv 3x3 (32) -> BN -> ReLU -> maxpool 2 -> conv 3x3 (64) -> BN -> ReLU -> maxpool 2 ->
    fc 3136->128 -> ReLU -> dropout -> fc 128->num_classes (logits). About 422k parameters
    and 9 MFLOP per image forward.
    """
    return Sequential([
        L.Conv2d(1, 32, 3, padding=1, bias=False), L.BatchNorm2d(32), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(32, 64, 3, padding=1, bias=False), L.BatchNorm2d(64), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Linear(64 * 7 * 7, 128), L.ReLU(), L.Dropout(dropout),
        L.Linear(128, num_classes),
    ])  # fmt: skip


MODELS = {"lenet5": lenet5, "fashion_cnn": fashion_cnn}
