"""Ready-made architectures: LeNet-5 (with shipped MNIST weights), a small BatchNorm CNN, and
the residual networks ResNet-20 (CIFAR) and ResNet-18 (torchvision's names and numerics).

>>> model = cnnkit.models.lenet5(pretrained=True)   # 99%+ on the MNIST test set
"""

from __future__ import annotations

import os

from . import layers as L
from .graph import GraphTensor, Input
from .model import Model, Sequential

__all__ = ["lenet5", "fashion_cnn", "resnet20", "resnet18", "PRETRAINED_DIR", "MODELS"]

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


def _basic_block(x: GraphTensor, cin: int, cout: int, stride: int, name: str) -> GraphTensor:
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the
    shortcut a 1x1 conv + BN ("downsample") where the shape changes, else the identity."""
    out = L.Conv2d(cin, cout, 3, stride, 1, bias=False, name=f"{name}.conv1")(x)
    out = L.ReLU(name=f"{name}.relu1")(L.BatchNorm2d(cout, name=f"{name}.bn1")(out))
    out = L.Conv2d(cout, cout, 3, 1, 1, bias=False, name=f"{name}.conv2")(out)
    out = L.BatchNorm2d(cout, name=f"{name}.bn2")(out)
    if stride != 1 or cin != cout:
        x = L.Conv2d(cin, cout, 1, stride, bias=False, name=f"{name}.downsample.0")(x)
        x = L.BatchNorm2d(cout, name=f"{name}.downsample.1")(x)
    return L.ReLU(name=f"{name}.relu2")(L.Add(name=f"{name}.add")([out, x]))


def _stages(x: GraphTensor, cin: int, widths: list[int], blocks: int) -> tuple[GraphTensor, int]:
    for s, cout in enumerate(widths):
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            x = _basic_block(x, cin, cout, stride, f"layer{s + 1}.{b}")
            cin = cout
    return x, cin


def resnet20(num_classes: int = 10, in_channels: int = 3) -> Model:
    """ResNet-20 for 32x32 images (He et al. 2016, section 4.2): conv 3x3 (16) -> BN -> ReLU,
    three stages of three basic blocks (16, 32, 64 channels; stride 2 at the start of stages 2
    and 3, with 1x1 conv + BN projection shortcuts there), global average pooling, fc.
    About 0.27 M parameters. Names as torchvision's ResNets: conv1, bn1, layer1.0.conv1, fc."""
    inp = Input((in_channels, 32, 32))
    x = L.Conv2d(in_channels, 16, 3, 1, 1, bias=False, name="conv1")(inp)
    x = L.ReLU(name="relu")(L.BatchNorm2d(16, name="bn1")(x))
    x, c = _stages(x, 16, [16, 32, 64], 3)
    x = L.Flatten(name="flatten")(L.AdaptiveAvgPool2d(1, name="avgpool")(x))
    return Model(inp, L.Linear(c, num_classes, name="fc")(x), name="resnet20")


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> Model:
    """ResNet-18 with torchvision's ``resnet18`` state_dict keys, shapes and numerics (conv1
    7x7/2, bn1, relu, maxpool 3x3/2, layer1..layer4 of two BasicBlocks each, avgpool, fc), so
    its published weights load with ``model.load_state_dict(torch_state_dict)``."""
    inp = Input((in_channels, 224, 224))
    x = L.Conv2d(in_channels, 64, 7, 2, 3, bias=False, name="conv1")(inp)
    x = L.ReLU(name="relu")(L.BatchNorm2d(64, name="bn1")(x))
    x = L.MaxPool2d(3, 2, 1, name="maxpool")(x)
    x, c = _stages(x, 64, [64, 128, 256, 512], 2)
    x = L.Flatten(name="flatten")(L.AdaptiveAvgPool2d(1, name="avgpool")(x))
    return Model(inp, L.Linear(c, num_classes, name="fc")(x), name="resnet18")


MODELS = {"lenet5": lenet5, "fashion_cnn": fashion_cnn, "resnet20": resnet20,
          "resnet18": resnet18}
