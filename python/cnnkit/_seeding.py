"""Global seeding for parameter initialisation (like ``torch.manual_seed``).

Each new layer draws a 64-bit seed from (global seed, counter) with SplitMix64, so a model
built after ``manual_seed(s)`` gets the same initial weights every time, on any machine.
"""

from __future__ import annotations

import threading

from ._checks import positive_int

_MASK = (1 << 64) - 1
_lock = threading.Lock()
_state = {"seed": 0, "counter": 0}


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def manual_seed(seed: int) -> None:
    """Seed the initialisation of every layer created from now on."""
    seed = positive_int(seed, "seed", "manual_seed", allow_zero=True)
    with _lock:
        _state["seed"] = seed & _MASK
        _state["counter"] = 0


def next_seed() -> int:
    """A fresh 64-bit seed for one layer's parameters."""
    with _lock:
        c = _state["counter"]
        _state["counter"] = c + 1
        return _splitmix64(_splitmix64(_state["seed"]) ^ c)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed mixed from integers (for data shuffling, dropout streams)."""
    x = 0x5EED
    for p in parts:
        x = _splitmix64(x ^ (int(p) & _MASK))
    return x
