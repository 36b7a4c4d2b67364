"""Small images without an imaging library: numpy arrays to PNG bytes (zlib), and tile grids
of filters or samples. Used by the TensorBoard callback and the run report, which must work
without matplotlib or Pillow."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

__all__ = ["encode_png", "to_uint8", "grid", "upscale"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(img: np.ndarray) -> bytes:
    """(H, W) grayscale or (H, W, 3) RGB uint8 -> the bytes of a PNG file (8 bits a channel)."""
    a = np.ascontiguousarray(img, dtype=np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or 0 in a.shape:
        raise ValueError(f"encode_png: expected (H, W) or (H, W, 3), got shape {a.shape}")
    h, w = a.shape[:2]
    color = 0 if a.ndim == 2 else 2
    rows = a.reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0
    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale the finite values of `a` to 0..255 (a constant array -> 128; NaN/Inf -> 0)."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):
        return np.where(finite, 128, 0).astype(np.uint8)
    out = np.where(finite, (a - lo) / (hi - lo), 0.0)
    return np.round(out * 255).astype(np.uint8)


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W) or (H, W, 3) image by an integer factor."""
    f = max(1, int(factor))
    return np.repeat(np.repeat(img, f, axis=0), f, axis=1)


def grid(tiles: list[np.ndarray], ncols: int | None = None, gap: int = 2,
         borders: list[tuple[int, int, int]] | None = None, background: int = 255) -> np.ndarray:
    """Tiles (each (h, w) or (h, w, 3) uint8, all the same size) side by side in rows, `gap`
    pixels apart; with `borders`, each tile is framed (1 px inside the gap) in its RGB colour.
    Returns (H, W, 3) uint8 (RGB as soon as one tile or a border is in colour, else (H, W))."""
    if not tiles:
        raise ValueError("grid: no tiles")
    rgb = borders is not None or any(t.ndim == 3 for t in tiles)
    ts = [np.repeat(t[:, :, None], 3, axis=2) if rgb and t.ndim == 2 else t for t in tiles]
    h, w = ts[0].shape[:2]
    n = len(ts)
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    pad = gap + (2 if borders is not None else 0)
    shape = (nrows * (h + 2 * pad), ncols * (w + 2 * pad)) + ((3,) if rgb else ())
    out = np.full(shape, background, np.uint8)
    for i, t in enumerate(ts):
        r, c = divmod(i, ncols)
        y, x = r * (h + 2 * pad) + pad, c * (w + 2 * pad) + pad
        if borders is not None:
            out[y - 2 : y + h + 2, x - 2 : x + w + 2] = borders[i]
        out[y : y + h, x : x + w] = t
    return out
