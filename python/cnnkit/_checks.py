"""Argument checks shared by the Python API: one integer check, one array conversion, one
device parser, so that every entry point accepts the same spellings and says the same thing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core

__all__ = ["positive_int", "to_numpy", "parse_device", "DEVICES"]

# What every `device=` argument accepts (torch's spellings for one GPU, plus "auto").
DEVICES = ("auto", "cpu", "cuda", "cuda:0")


def positive_int(v: Any, name: str, where: str, allow_zero: bool = False) -> int:
    """`v` as an int >= 1 (>= 0 with allow_zero); bools, floats and strings are refused."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if allow_zero else 1):
        what = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{where}: {name} must be {what} integer, got {v!r}")
    return int(v)


def to_numpy(v: Any) -> np.ndarray:
    """numpy view of an array-like; a PyTorch tensor is detached and copied to the CPU."""
    if hasattr(v, "detach") and hasattr(v, "cpu") and hasattr(v, "numpy"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def parse_device(device: Any, where: str) -> str:
    """"cpu" or "cuda" for a `device=` argument.

    Accepts "auto" (CUDA when a device is present, else the CPU), "cpu", "cuda" and "cuda:0"
    (and a ``torch.device`` of those). ValueError for anything else; RuntimeError when CUDA
    is asked for and no CUDA device is available.
    """
    name = device if isinstance(device, str) else None
    if name is None and type(device).__name__ == "device" and hasattr(device, "type"):
        name = str(device)  # torch.device("cuda:0") -> "cuda:0"
    if name not in DEVICES:
        raise ValueError(
            f"{where}: unknown device {device!r} (expected 'auto', 'cpu', 'cuda' or 'cuda:0'; "
            "cnnkit drives one GPU)"
        )
    if name == "auto":
        return "cuda" if _core.cuda_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if not _core.cuda_available():
        why = "" if _core.built_with_cuda() else " (cnnkit was built without CUDA)"
        raise RuntimeError(
            f"{where}: device={name!r} but no CUDA device is available{why}; use device='cpu' "
            "or 'auto'"
        )
    return "cuda"
