"""Pictures of training runs and of what a CNN has learned, written as PNG files.

Three functions, each writing one PNG (atomically: a temporary file in the same directory,
then :func:`os.replace`) and returning its path:

* :func:`training_curves` - loss and accuracy per epoch, train vs validation;
* :func:`conv_filters` - the kernels of a Conv2d layer as a grid of small images;
* :func:`feature_maps` - the output of every Conv2d layer for one input.

:func:`report` writes a whole run (curves, metrics, confusion matrix, misclassified images,
filters, feature maps, settings, provenance) as one self-contained HTML file (cnnkit.report).

matplotlib is an optional dependency (``pip install "cnnkit[plot]"``). It is imported only
when a function is called, and figures are drawn with ``matplotlib.figure.Figure`` and the Agg
canvas directly, so pyplot's global state (current figure, chosen backend) is left untouched.

>>> import cnnkit as ck
>>> from cnnkit import plot
>>> plot.training_curves(history, "curves.png")
>>> plot.conv_filters(model, "filters.png")
>>> plot.feature_maps(model, x_test[0], "maps.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _files
from ._checks import positive_int

__all__ = ["training_curves", "conv_filters", "feature_maps", "report"]

_DPI = 100
_INSTALL_HINT = 'cnnkit.plot needs matplotlib; install it with: pip install "cnnkit[plot]"'
_TRAIN_COLOR = "#1f77b4"
_VAL_COLOR = "#d62728"


# -- helpers --------------------------------------------------------------------------------
def _require_matplotlib() -> None:
    """Import matplotlib (lazily), or raise ImportError with the install hint."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e


def _figure(figsize: tuple[float, float]) -> Any:
    """A new Figure on its own Agg canvas (no pyplot, no global state)."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_dir(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    d = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(d):
        raise FileNotFoundError(f"cnnkit.plot: directory {d!r} does not exist")
    return p


def _save(fig: Any, path: str) -> str:
    """Write fig as a PNG to path atomically (cnnkit's one atomic writer); returns path."""
    return _files.atomic_write(
        path, lambda fh: fig.savefig(fh, format="png", dpi=_DPI, facecolor="white"),
        what="cnnkit.plot")


_positive_int = positive_int  # the package's one integer check


def _unit(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] using the finite values; a constant (or all non-finite) array -> 0.5."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.full(a.shape, 0.5)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):
        return np.where(finite, 0.5, 0.0)
    return np.where(finite, (a - lo) / (hi - lo), 0.0)


def _nodes(model: Any) -> list[Any]:
    """The model's layers in node order (a Sequential's, nested containers flattened, or a
    graph Model's); their names are ``model._names``."""
    if getattr(model, "_nodes", None) is None or getattr(model, "_names", None) is None:
        raise ValueError(f"cnnkit.plot: expected a cnnkit Sequential or Model, got "
                         f"{type(model).__name__}")
    return model._nodes


def _conv_indices(model: Any) -> list[int]:
    return [i for i, layer in enumerate(_nodes(model)) if type(layer).__name__ == "Conv2d"]


def _node_label(model: Any, i: int) -> str:
    name = model._names[i]
    return f"layer {name}" if name.isdigit() else name


def _pick_nodes(model: Any, which: Any, where: str) -> list[int]:
    """Node indices for `which`: layer names ("layer1.0.conv1") or node indices."""
    nodes = _nodes(model)
    if isinstance(which, (str, int, np.integer)) and not isinstance(which, bool):
        which = [which]
    if not isinstance(which, (list, tuple)) or not which:
        raise ValueError(f"{where}: layers must be a list of layer names or indices, got "
                         f"{which!r:.80}")
    index = {n: i for i, n in enumerate(model._names)}
    out = []
    for w in which:
        if isinstance(w, str):
            if w not in index:
                close = [n for n in model._names if w in n or n in w][:5] or model._names[:5]
                raise ValueError(f"{where}: the model has no layer named {w!r} (layers: "
                                 f"{', '.join(close)}, ...)")
            out.append(index[w])
        elif isinstance(w, (int, np.integer)) and not isinstance(w, bool):
            if not -len(nodes) <= w < len(nodes):
                raise ValueError(f"{where}: layer {w} is out of range for a model of "
                                 f"{len(nodes)} layers")
            out.append(int(w) % len(nodes))
        else:
            raise ValueError(f"{where}: layers must be names or indices, got {w!r:.60}")
    return out


def _as_image(chw: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) -> something imshow can draw: (H, W) gray, (H, W, 3) RGB or channel mean."""
    if chw.shape[0] == 3:
        return _unit(chw).transpose(1, 2, 0), None
    if chw.shape[0] == 1:
        return _unit(chw[0]), "gray"
    return _unit(chw.mean(axis=0)), "gray"


# Tile grids are drawn on ONE axes (one image per tile, placed by extent): far faster than an
# axes per tile. Units: a tile is 1 wide and h / w high (at most 1: the longer side is 1);
# columns are _GAP apart, each row has _HEAD above its tiles for their labels. The y axis
# points down.
_GAP = 0.15
_HEAD = 0.3
_SEP = 0.25  # extra space between the blocks of two layers (feature_maps)
_WRAP = 16  # feature_maps: at most this many maps side by side; more wrap onto new lines


def _tile_axes(fig: Any, width: float, height: float) -> Any:
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_aspect("equal")
    ax.set_xlim(0.0, width)
    ax.set_ylim(height, 0.0)
    return ax


def _tile(
    ax: Any, img: np.ndarray, cmap: str | None, x: float, y: float, label: str | None
) -> None:
    """Draw img (values in [0, 1]) with its top at y, centred in the unit column from x."""
    from matplotlib.patches import Rectangle

    h, w = img.shape[:2]
    tw, th = w / max(h, w), h / max(h, w)
    left, top = x + (1.0 - tw) / 2, y
    ax.imshow(
        img,
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        origin="upper",
        extent=(left, left + tw, top + th, top),
    )
    ax.add_patch(Rectangle((left, top), tw, th, fill=False, linewidth=0.6, edgecolor="#888888"))
    if label is not None:
        ax.text(x + 0.5, top - 0.04, label, ha="center", va="bottom", fontsize=7)


# -- training curves ------------------------------------------------------------------------
_ALIASES = {
    "loss": ("loss",),
    "val_loss": ("val_loss",),
    "accuracy": ("accuracy", "acc"),
    "val_accuracy": ("val_accuracy", "val_acc"),
}


def _series(hist: Mapping[str, Any], key: str) -> np.ndarray | None:
    for k in _ALIASES[key]:
        if k in hist and hist[k] is not None:
            try:
                a = np.asarray(
                    [np.nan if v is None else v for v in hist[k]], dtype=np.float64
                ).ravel()
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"training_curves: history[{k!r}] must be a list of numbers"
                ) from e
            a[~np.isfinite(a)] = np.nan
            return a if a.size else None
    return None


def _curve(ax: Any, y: np.ndarray, label: str, color: str, style: str, cross_y: float) -> None:
    x = np.arange(1, y.size + 1)
    small = y.size <= 40
    ok = np.isfinite(y)
    if ok.any():
        _line(ax, x, y, label, color, style, small)
    if not small:
        # Long runs are drawn without markers; a finite value between NaNs would vanish.
        prev = np.concatenate([[False], ok[:-1]])
        nxt = np.concatenate([ok[1:], [False]])
        lone = ok & ~prev & ~nxt
        if lone.any():
            ax.plot(x[lone], y[lone], "o", color=color, markersize=4)
    if not ok.all():
        # Where the values were NaN/Inf: crosses along the bottom edge, in the curve's colour.
        bad = x[~ok]
        ax.plot(
            bad,
            np.full(bad.size, cross_y),
            "x",
            color=color,
            markersize=6,
            markeredgewidth=1.5,
            transform=ax.get_xaxis_transform(),
            label="_nolegend_",
        )


def _line(
    ax: Any, x: np.ndarray, y: np.ndarray, label: str, color: str, style: str, small: bool
) -> None:
    ax.plot(
        x,
        y,
        style,
        color=color,
        label=label,
        linewidth=1.8,
        marker="o" if small else None,
        markersize=5 if y.size <= 3 else 4,
    )


def _panel(
    ax: Any, name: str, train: np.ndarray | None, val: np.ndarray | None, higher_better: bool
) -> None:
    from matplotlib.ticker import MaxNLocator

    n = max(a.size for a in (train, val) if a is not None)
    hidden = 0
    drawn = False
    for y, label, color, style, cross_y in (
        (train, "train", _TRAIN_COLOR, "-", 0.03),
        (val, "validation", _VAL_COLOR, "--", 0.075),
    ):
        if y is None:
            continue
        hidden += int(np.isnan(y).sum())
        if np.isfinite(y).any():
            drawn = True
        _curve(ax, y, label, color, style, cross_y)
    if val is not None and np.isfinite(val).any():
        best = int(np.nanargmax(val) if higher_better else np.nanargmin(val))
        ax.plot(
            best + 1,
            val[best],
            marker="*",
            markersize=13,
            linestyle="none",
            color=_VAL_COLOR,
            markeredgecolor="black",
            markeredgewidth=0.6,
            label=f"best val: {val[best]:.4g} (epoch {best + 1})",
        )
    finite = np.concatenate([a[np.isfinite(a)] for a in (train, val) if a is not None])
    if not higher_better and finite.size and finite.min() > 0 and finite.max() > 100 * finite.min():
        # A loss spanning orders of magnitude (or one that blew up) is unreadable linearly.
        ax.set_yscale("log")
        name += " (log scale)"
    ax.set_title(name)
    xlabel = "epoch"
    if hidden:
        xlabel += f"      (\u00d7 = NaN/Inf, not plotted: {hidden})"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(name.split(" ")[0].lower())
    if n <= 12:
        ax.set_xticks(np.arange(1, n + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, n + 0.5)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc="best", fontsize=9)
    else:
        ax.set_yticks([])
        ax.text(
            0.5,
            0.5,
            "no finite values",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="gray",
        )


def training_curves(history: Any, path: str | os.PathLike[str], title: str | None = None) -> str:
    """Plot loss and accuracy per epoch (train vs validation) and write a PNG.

    Args:
        history: a cnnkit ``History`` (anything with a ``.history`` dict) or a plain dict of
            per-epoch lists. Keys used: ``"loss"``, ``"val_loss"``, ``"accuracy"``,
            ``"val_accuracy"`` (``"acc"``/``"val_acc"`` also accepted); others (``"lr"``...)
            are ignored. Missing keys are simply not drawn: without accuracy the picture has a
            single loss panel. NaN/Inf entries (and ``None``) leave gaps in the curve and are
            marked with a cross on the bottom edge of the panel.
        path: where to write the PNG (its directory must exist).
        title: figure title; default ``"Training curves"``.

    Returns:
        ``path`` (as a string).

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: the history has neither loss nor accuracy values.
    """
    _require_matplotlib()
    hist = getattr(history, "history", history)
    if not isinstance(hist, Mapping):
        raise ValueError(
            "training_curves: expected a History (with a .history dict) or a dict of lists, "
            f"got {type(history).__name__}"
        )
    p = _check_dir(path)
    s = {k: _series(hist, k) for k in _ALIASES}
    panels = []
    if s["loss"] is not None or s["val_loss"] is not None:
        panels.append(("Loss", s["loss"], s["val_loss"], False))
    if s["accuracy"] is not None or s["val_accuracy"] is not None:
        panels.append(("Accuracy", s["accuracy"], s["val_accuracy"], True))
    if not panels:
        raise ValueError(
            "training_curves: history has no 'loss', 'val_loss', 'accuracy' or 'val_accuracy' "
            f"values (keys: {sorted(map(str, hist))})"
        )
    fig = _figure((5.5 * len(panels) + 0.5, 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, train, val, higher_better) in zip(axes, panels, strict=True):
        _panel(ax, name, train, val, higher_better)
    fig.suptitle(title if title is not None else "Training curves", fontsize=13)
    return _save(fig, p)


# -- conv filters ---------------------------------------------------------------------------
def conv_filters(
    model: Any, path: str | os.PathLike[str], layer: int | str | None = None,
    max_filters: int = 64
) -> str:
    """Draw the kernels of a Conv2d layer as a grid of tiles and write a PNG.

    The weight (K, C, R, S) of the layer gives K tiles of R x S pixels: grayscale when C == 1,
    RGB when C == 3, otherwise the mean over the C input channels (grayscale). Each tile is
    scaled to [0, 1] on its own, so the picture shows the pattern of each filter, not its size.

    Args:
        model: a :class:`cnnkit.Sequential` or graph :class:`cnnkit.Model`.
        path: where to write the PNG (its directory must exist).
        layer: the Conv2d to show: its name (as in ``state_dict`` keys, e.g. ``"conv1"``) or
            its index among the model's layers in node order (for a flat Sequential,
            ``model.layers``; negative counts from the end); default: the first Conv2d.
        max_filters: show at most this many filters (the first ones).

    Returns:
        ``path`` (as a string).

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: the model has no Conv2d, or ``layer`` is not a Conv2d.
    """
    _require_matplotlib()
    where = "conv_filters"
    max_filters = _positive_int(max_filters, "max_filters", where)
    convs = _conv_indices(model)
    if not convs:
        raise ValueError(f"{where}: the model has no Conv2d layer")
    nodes = _nodes(model)
    n_layers = len(nodes)
    if layer is None:
        i = convs[0]
    else:
        if isinstance(layer, str):
            i = _pick_nodes(model, [layer], where)[0]
        elif not isinstance(layer, (int, np.integer)) or isinstance(layer, bool):
            raise ValueError(f"{where}: layer must be a layer name or an int index, got "
                             f"{layer!r}")
        elif not -n_layers <= layer < n_layers:
            raise ValueError(
                f"{where}: layer {layer} is out of range for a model of {n_layers} layers "
                f"(Conv2d layers: {convs})"
            )
        else:
            i = int(layer) % n_layers
        if i not in convs:
            raise ValueError(
                f"{where}: layer {layer} is a {type(nodes[i]).__name__}, not a Conv2d "
                f"(Conv2d layers: {[model._names[j] for j in convs]})"
            )
    p = _check_dir(path)
    w = np.asarray(model.state_dict()[f"{model._names[i]}.weight"], dtype=np.float64)
    k_all, c, r, s = w.shape
    k = min(k_all, max_filters)
    mode = "RGB" if c == 3 else ("grayscale" if c == 1 else f"mean of {c} input channels")

    ncols = math.ceil(math.sqrt(k))
    nrows = math.ceil(k / ncols)
    tile = 0.75 if k > 16 else 1.0  # inches per tile cell
    pitch = r / max(r, s) + _HEAD
    width, height = ncols * (1 + _GAP), nrows * pitch
    fig = _figure((max(width * tile, 4.8) + 0.2, height * tile + 0.6))
    ax = _tile_axes(fig, width, height)
    for j in range(k):
        img, cmap = _as_image(w[j])
        r0, c0 = divmod(j, ncols)
        _tile(ax, img, cmap, c0 * (1 + _GAP) + _GAP / 2, r0 * pitch + _HEAD, str(j))
    shown = f"{k} filters" if k == k_all else f"first {k} of {k_all} filters"
    fig.suptitle(f"Conv2d {_node_label(model, i)}: {shown}, {r}\u00d7{s}, {mode}", fontsize=11)
    return _save(fig, p)


# -- feature maps ---------------------------------------------------------------------------
def _one_input(x: Any) -> np.ndarray:
    """(H, W), (C, H, W) or (1, C, H, W), any numeric dtype -> float32 (1, C, H, W)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a PyTorch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if (
        a.dtype == object
        or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_)
        or np.issubdtype(a.dtype, np.complexfloating)
    ):
        raise ValueError(f"feature_maps: expected a numeric array, got dtype {a.dtype}")
    scale = a.dtype == np.uint8
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[None]
    elif not (a.ndim == 4 and a.shape[0] == 1):
        raise ValueError(
            f"feature_maps: expected ONE input of shape (C, H, W), (1, C, H, W) or (H, W), "
            f"got shape {a.shape}"
        )
    a = a.astype(np.float32)
    if scale:
        a /= 255.0
    return np.ascontiguousarray(a)


def _activations(model: Any, x1: np.ndarray, idxs: list[int]) -> list[np.ndarray]:
    """Output of each node in idxs for input x1 (evaluation mode), computed on fresh copies.

    A layer belongs to one model only, so for each node its ancestors are rebuilt from their
    configs into a graph Model ending at that node, with the matching weights and buffers;
    the model itself is not touched.
    """
    from . import layers as ck_layers
    from .model import Model

    state = model.state_dict()
    nodes, ins, names = model._nodes, model._inputs, model._names
    outs = []
    for k in idxs:
        need: set[int] = set()
        stack = [k]
        while stack:
            j = stack.pop()
            if j not in need:
                need.add(j)
                stack.extend(v - 1 for v in ins[j] if v > 0)
        keep = sorted(need)
        pos = {j: i for i, j in enumerate(keep)}
        copies = [ck_layers.from_config(type(nodes[j]).__name__, nodes[j].get_config())
                  for j in keep]
        sub_ins = [[0 if v == 0 else pos[v - 1] + 1 for v in ins[j]] for j in keep]
        kept = {names[j] for j in keep}
        sub = Model.from_nodes(copies, sub_ins, [names[j] for j in keep])
        sub.load_state_dict({key: v for key, v in state.items()
                             if key.rsplit(".", 1)[0] in kept})
        outs.append(np.array(sub.forward(x1, training=False))[0])
    return outs


def feature_maps(model: Any, x: Any, path: str | os.PathLike[str], max_channels: int = 16,
                 layers: Any = None) -> str:
    """Run one input through the model and draw the output of its Conv2d layers (or of the
    layers named in `layers`) as a PNG.

    The first row shows the input; below it, one row per layer with its first
    ``max_channels`` output channels (a row of more than 16 maps wraps onto more lines). Each
    map is scaled to [0, 1] on its own (viridis: dark = lowest, yellow = highest in that map).
    A Conv2d's maps are the raw convolution outputs, before any activation that follows.
    Evaluation mode: BatchNorm uses its running statistics and Dropout does nothing. The model
    itself is not touched.

    Args:
        model: a :class:`cnnkit.Sequential` or graph :class:`cnnkit.Model`.
        layers: None (every Conv2d), or layer names as in ``state_dict`` keys
            (``"layer1.0.conv1"``, ``"3"``) or node indices, of any layers whose output per
            sample is (C, H, W).
        x: one input, (C, H, W), (1, C, H, W) or (H, W) (a channel axis is added). uint8 input
            is scaled to [0, 1]; other dtypes are used as float32 as they are.
        path: where to write the PNG (its directory must exist).
        max_channels: at most this many maps per layer.

    Returns:
        ``path`` (as a string).

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: no Conv2d in the model, more than one input, or a shape the model rejects.
    """
    _require_matplotlib()
    where = "feature_maps"
    max_channels = _positive_int(max_channels, "max_channels", where)
    if layers is None:
        convs = _conv_indices(model)
        if not convs:
            raise ValueError(f"{where}: the model has no Conv2d layer (name the layers to "
                             "show with layers=[...])")
    else:
        convs = _pick_nodes(model, layers, where)
    x1 = _one_input(x)
    p = _check_dir(path)
    acts = _activations(model, x1, convs)
    for i, a in zip(convs, acts, strict=True):
        if a.ndim != 3:
            raise ValueError(f"{where}: {_node_label(model, i)} ({type(model._nodes[i]).__name__})"
                             f" gives {tuple(a.shape)} per sample, not (C, H, W) maps")

    shown = [min(a.shape[0], max_channels) for a in acts]
    ncols = min(max(shown), _WRAP)
    # One block per row of the picture (the input, then each Conv2d), possibly several lines
    # of tiles; each block is tall enough for its label.
    lines = [1] + [math.ceil(n / ncols) for n in shown]
    shapes = [x1.shape[2:]] + [a.shape[1:] for a in acts]
    pitches = [h / max(h, w) + _HEAD for h, w in shapes]
    heights = [max(n * p_, 0.8 + _HEAD) for n, p_ in zip(lines, pitches, strict=True)]
    tops = np.concatenate([[0.0], np.cumsum([h + _SEP for h in heights])])
    label_w = 1.3  # tile units left of the tiles, for the labels
    width, height = label_w + ncols * (1 + _GAP), float(tops[-1]) - _SEP
    tile = 0.85  # inches per tile unit
    fig = _figure((max(width * tile, 4.8) + 0.2, height * tile + 0.6))
    ax = _tile_axes(fig, width, height)

    def tile_top(b: int, line: int) -> float:
        return tops[b] + (heights[b] - lines[b] * pitches[b]) / 2 + line * pitches[b] + _HEAD

    def block_label(b: int, text: str) -> None:
        mid = tops[b] + _HEAD + (heights[b] - _HEAD) / 2
        ax.text(label_w - 0.1, mid, text, ha="right", va="center", fontsize=9)

    img, cmap = _as_image(x1[0])
    _tile(ax, img, cmap, label_w + _GAP / 2, tile_top(0, 0), None)
    c_in = x1.shape[1]
    note = "" if c_in in (1, 3) else f"\n(mean of {c_in})"
    block_label(0, f"input\n{c_in}\u00d7{x1.shape[2]}\u00d7{x1.shape[3]}{note}")
    for b, (i, a, n) in enumerate(zip(convs, acts, shown, strict=True), start=1):
        for ch in range(n):
            line, col = divmod(ch, ncols)
            x0 = label_w + col * (1 + _GAP) + _GAP / 2
            _tile(ax, _unit(a[ch]), "viridis", x0, tile_top(b, line), f"ch {ch}")
        c_out = a.shape[0]
        more = f"\n(first {n})" if c_out > n else ""
        kind = type(model._nodes[i]).__name__
        block_label(b, f"{_node_label(model, i)}\n{kind}\n{c_out}\u00d7{a.shape[1]}"
                       f"\u00d7{a.shape[2]}{more}")
    fig.suptitle("Feature maps (each map scaled to its own range)", fontsize=12)
    return _save(fig, p)


# -- run report -----------------------------------------------------------------------------
def report(trainer: Any, x_test: Any, y_test: Any, path: str | os.PathLike[str],
           **kwargs: Any) -> str:
    """Write one self-contained HTML report of a trained classifier (training curves, final
    metrics, confusion matrix, per-class precision/recall, the most confidently misclassified
    test images, conv filters and feature maps, the model summary, settings and provenance);
    returns `path`. Keyword arguments and details: :func:`cnnkit.report.report`."""
    from .report import report as _report

    return _report(trainer, x_test, y_test, path, **kwargs)
