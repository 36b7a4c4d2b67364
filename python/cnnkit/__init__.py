"""cnnkit: convolutional neural networks with a fast C++/OpenMP core (CUDA when available).

>>> import cnnkit as ck
>>> model = ck.Sequential([ck.Conv2d(1, 6, 5, padding=2), ck.ReLU(), ck.MaxPool2d(2), ...])
>>> trainer = ck.Trainer(model, loss="cross_entropy", optimizer=ck.optim.Adam(lr=1e-3))
"""

from __future__ import annotations

import os as _os
import sys as _sys

from . import _openmp  # noqa: F401  (first: sets the OpenMP wait policy, loads _core)

# isort: split
from . import (
    _core,
    callbacks,
    data,
    datasets,
    distributed,
    layers,
    losses,
    models,
    optim,
    serialization,
    transforms,
    utils,
)
from ._py_layer import register_layer
from ._seeding import manual_seed
from .graph import GraphTensor, Input, Residual
from .layers import (
    ELU,
    GELU,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    Add,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Concat,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Dropout2d,
    Flatten,
    Hardswish,
    Identity,
    Layer,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    SyncBatchNorm,
    Tanh,
    Upsample,
)
from .model import Model, Sequential
from .serialization import load, load_model, save
from .trainer import History, Trainer

# The file format module is cnnkit.serialization; `cnnkit.io` stays its public name. (No module
# of ours is called like a standard-library one: run as a script, it would shadow it.)
io = serialization
_sys.modules[__name__ + ".io"] = serialization

__version__: str = _core.__version__


def __getattr__(name: str):
    # cnnkit.onnx loads on first use; it imports the onnx package only when its functions run
    if name == "onnx":
        import importlib

        return importlib.import_module(".onnx", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cuda_available() -> bool:
    """True when cnnkit was built with CUDA and a CUDA device is present."""
    return bool(_core.cuda_available())


def built_with_cuda() -> bool:
    """True when the native core was compiled with the CUDA backend."""
    return bool(_core.built_with_cuda())


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads used by the CPU kernels."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Number of OpenMP threads the CPU kernels use."""
    return int(_core.get_num_threads())


def set_cpu_kernels(name: str) -> None:
    """Choose the CPU kernel set for GEMM, convolution, pooling and element-wise kernels:
    "auto" (the best this CPU supports: the default), "avx512", "avx2" or "generic" (portable).
    Results differ between sets in the last bits (FMA contraction, tile shapes), never between
    thread counts within one set. Asking for a set this CPU lacks raises ValueError. The
    environment variable CNNKIT_CPU_KERNELS sets it when cnnkit is imported."""
    if not isinstance(name, str):
        raise ValueError(f"set_cpu_kernels: expected a string, got {name!r}")
    _core.set_cpu_kernels(name)


def get_cpu_kernels() -> str:
    """The CPU kernel set in use now: "avx512", "avx2" or "generic"."""
    return str(_core.get_cpu_kernels())


def available_cpu_kernels() -> list[str]:
    """The CPU kernel sets this machine and build support, best first (ends with "generic")."""
    return list(_core.available_cpu_kernels())


def _kernels_from_environment() -> None:
    name = _os.environ.get("CNNKIT_CPU_KERNELS", "").strip()
    if name:
        try:
            set_cpu_kernels(name)
        except ValueError as e:
            raise ValueError(f"CNNKIT_CPU_KERNELS={name!r}: {e}") from None


_kernels_from_environment()


__all__ = [
    "__version__", "cuda_available", "built_with_cuda", "set_num_threads", "get_num_threads",
    "set_cpu_kernels", "get_cpu_kernels", "available_cpu_kernels",
    "manual_seed", "layers", "losses", "models", "optim", "callbacks", "data", "datasets", "io",
    "transforms",
    "onnx", "distributed", "Sequential", "Trainer", "History", "save", "load", "load_model",
    "Layer", "Conv2d", "MaxPool2d", "AvgPool2d", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Linear",
    "Flatten", "Dropout", "BatchNorm2d", "ELU", "SiLU", "GELU", "ReLU6", "Hardswish", "Identity",
    "Softmax", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Dropout2d", "BatchNorm1d", "Upsample",
    "Add", "Concat", "ConvTranspose2d", "SyncBatchNorm", "Model", "Input", "GraphTensor",
    "Residual", "register_layer", "utils",
]  # fmt: skip
