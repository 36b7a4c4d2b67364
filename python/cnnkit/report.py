"""A training run as one self-contained HTML page: curves, final metrics, confusion matrix,
per-class precision/recall/F1, the most confidently misclassified test images, conv filters
and feature maps, the model summary, the settings and the provenance (versions, CPU, data
checksums). Images are embedded as base64 PNG data URIs, the CSS is inline, and nothing is
fetched from anywhere (a Content-Security-Policy says so to the browser).

>>> from cnnkit import plot
>>> plot.report(trainer, x_test, y_test, "report.html")

``cnnkit train`` writes ``report.html`` into its run folder; ``cnnkit report RUN_DIR``
rebuilds it from the folder's files. The pictures drawn by matplotlib (curves, filters,
feature maps) need ``pip install "cnnkit[plot]"``; without it the report says so and keeps
everything else.
"""

from __future__ import annotations

import base64
import csv
import datetime
import hashlib
import html
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _files, _png

__all__ = ["report", "confusion_matrix", "per_class_metrics"]

SECTIONS = ("metrics", "curves", "confusion", "per-class", "misclassified", "filters",
            "feature-maps", "model", "settings", "provenance")


# -- numbers ----------------------------------------------------------------------------------
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (NaN where a
    ratio has no denominator: a class never predicted has no precision)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / cm.sum(axis=0)
        recall = tp / cm.sum(axis=1)
        f1 = 2 * precision * recall / (precision + recall)
    f1 = np.where((precision + recall) == 0, 0.0, f1)
    return {"precision": precision, "recall": recall, "f1": f1,
            "support": cm.sum(axis=1).astype(np.int64)}


def _sha256_array(a: Any) -> str:
    arr = np.ascontiguousarray(np.asarray(a))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with _files.open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- HTML pieces ------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
nav{padding:8px 32px;background:#e8ecf2;font-size:13px}nav a{margin-right:14px;color:#1f3a5f}
main{padding:8px 32px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;margin:16px 0;
padding:12px 20px}
h2{font-size:17px;margin:6px 0 12px;color:#1f3a5f}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 9px;border:1px solid #dde2ea}
th{background:#f0f3f7;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
table.cm td{text-align:center;min-width:34px}table.cm th{text-align:center}
.note{color:#666;font-size:12px}
pre{background:#f6f7f9;padding:10px;overflow-x:auto;font-size:12px;line-height:1.35}
img.fig{max-width:100%;height:auto;border:1px solid #eee}
.mis{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;text-align:center;font-size:12px;width:104px}
figure img{width:84px;height:84px;image-rendering:pixelated;border:2px solid #d62728}
.kv td:first-child{font-weight:600;background:#fafbfc}
code{font-size:12px;word-break:break-all}
"""

# Sets body[data-images] = "<loaded>/<total>" and body[data-report] = "ok" once the page has
# loaded with every image decoded and no script error, else "error": what a browser test reads.
_SCRIPT = """
(function(){var errors=0;
window.addEventListener('error',function(){errors++;},true);
window.addEventListener('load',function(){var imgs=document.images,ok=0;
for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-images',ok+'/'+imgs.length);
document.body.setAttribute('data-report',(ok===imgs.length&&errors===0)?'ok':'error');});
})();
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" alt="{_e(alt)}" src="{_data_uri(png)}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "\u2014"
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) \
            else f"{v:.{digits}f}"
    return str(v)


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v)) if not isinstance(v, _Raw) else v}"
                   f"</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


class _Raw(str):
    """HTML that _kv_table puts in as it is (already escaped)."""


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>\n{body}\n</section>\n'


# -- pictures ---------------------------------------------------------------------------------
def _matplotlib_png(draw: Any) -> bytes | None:
    """Run draw(path) (a cnnkit.plot function writing a PNG) in a temporary directory and
    return the bytes; None when matplotlib is missing."""
    with tempfile.TemporaryDirectory(prefix="cnnkit-report-") as d:
        p = os.path.join(d, "fig.png")
        try:
            draw(p)
        except ImportError:
            return None
        with open(p, "rb") as f:
            return f.read()


def _sample_png(x: np.ndarray) -> bytes:
    """One input (C, H, W) as a PNG enlarged to about 84 px (RGB for 3 channels, else the
    first channel in gray), values in [0, 1] shown as they are, others scaled."""
    img = x.transpose(1, 2, 0) if x.shape[0] == 3 else x[0]
    if np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1:
        u8 = np.round(img * 255).astype(np.uint8)
    else:
        u8 = _png.to_uint8(img)
    return _png.encode_png(_png.upscale(u8, max(1, 84 // max(img.shape[:2]))))


def _no_plot(what: str) -> str:
    return (f'<p class="note">No {_e(what)}: matplotlib is not installed '
            '(pip install "cnnkit[plot]").</p>')


# -- the report -------------------------------------------------------------------------------
def _history_from_csv(path: str) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.items():
            if k == "epoch" or k is None:
                continue
            try:
                out.setdefault(k, []).append(float(v))
            except (TypeError, ValueError):
                out.setdefault(k, []).append(math.nan)
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _trainer_settings(trainer: Any) -> list[tuple[str, Any]]:
    opt = trainer.optimizer
    rows: list[tuple[str, Any]] = [("loss", trainer.loss.name),
                                   ("metrics", ", ".join(trainer.metrics) or "\u2014")]
    if opt is not None:
        cfg = opt.get_config() if hasattr(opt, "get_config") else {}
        rows.append(("optimizer", type(opt).__name__ + (
            " (" + ", ".join(f"{k}={_fmt(v)}" for k, v in cfg.items() if k != "lr") + ")"
            if cfg else "")))
        rows.append(("learning rate (initial)", opt.initial_lr if opt.initial_lr is not None
                     else opt.lr))
        rows.append(("learning rate (final)", opt.lr))
    sched = trainer.lr_scheduler
    rows.append(("lr schedule", type(sched).__name__ if sched is not None else "none"))
    rows += [("epochs trained", trainer.epoch), ("seed", trainer.seed),
             ("device", trainer.device)]
    return rows


def report(trainer: Any, x_test: Any, y_test: Any, path: str | os.PathLike[str], *,
           run_dir: str | os.PathLike[str] | None = None,
           class_names: Sequence[str] | None = None, history: Any = None, top_k: int = 16,
           title: str | None = None, settings: Mapping[str, Any] | None = None,
           data_checksums: Mapping[str, str] | None = None, batch_size: int = 512,
           test_metrics: Mapping[str, float] | None = None) -> str:
    """Write one self-contained HTML report of a trained classifier; returns `path`.

    Args:
        trainer: a :class:`cnnkit.Trainer` with the cross_entropy loss (its model, history,
            optimizer and seed are reported).
        x_test, y_test: the test images (N, C, H, W) / (N, H, W) and labels (N,).
        path: the HTML file to write (atomically; its directory must exist).
        run_dir: a ``cnnkit train`` run folder: its ``summary.json`` (timings) and, when the
            trainer has no history, ``history.csv`` are read, and the model file's SHA-256
            is recorded.
        class_names: a name per class (default: the class indices).
        history: a History or dict of per-epoch lists (default: ``trainer.history``).
        top_k: how many misclassified images to show, most confident first.
        title: the page title (default: "cnnkit run report").
        settings: extra settings to list (e.g. the batch size, the command line).
        data_checksums: {file name: SHA-256} of the data files (the dataset loaders verify
            these); the SHA-256 of the test arrays given is recorded either way.
        batch_size: images per forward pass for evaluating the test set.
        test_metrics: ``trainer.evaluate(x_test, y_test)`` when already computed (saves a
            pass over the test set); else it is computed here.
    """
    from . import __version__, _core, built_with_cuda
    from . import plot as _plot
    from ._checks import positive_int
    from .data import as_input, as_labels

    where = "report"
    top_k = positive_int(top_k, "top_k", where, allow_zero=True)
    if trainer.loss.name != "cross_entropy":
        raise ValueError(f"{where}: needs a classifier (the cross_entropy loss), got "
                         f"{trainer.loss.name!r}")
    model = trainer.model
    xs = as_input(x_test, where, "x_test", model=model)
    ys = as_labels(y_test, where)
    if len(xs) != len(ys):
        raise ValueError(f"{where}: x_test has {len(xs)} samples but y_test has {len(ys)}")
    run_dir = os.fspath(run_dir) if run_dir is not None else None
    run_summary: dict[str, Any] = {}
    if run_dir is not None and os.path.isfile(os.path.join(run_dir, "summary.json")):
        with open(os.path.join(run_dir, "summary.json")) as f:
            run_summary = json.load(f)
    hist = getattr(history if history is not None else trainer.history, "history",
                   history if history is not None else {})
    if not hist and run_dir is not None and os.path.isfile(os.path.join(run_dir,
                                                                        "history.csv")):
        hist = _history_from_csv(os.path.join(run_dir, "history.csv"))

    # numbers
    test = dict(test_metrics) if test_metrics is not None else \
        trainer.evaluate(xs, ys, batch_size=batch_size)
    probs = trainer.predict(xs, batch_size=batch_size)
    n_classes = probs.shape[1]
    if ys.size and (ys.min() < 0 or ys.max() >= n_classes):
        raise ValueError(f"{where}: y_test holds labels outside [0, {n_classes})")
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(pred)), pred]
    cm = confusion_matrix(ys, pred, n_classes)
    pc = per_class_metrics(cm)
    names = [str(c) for c in class_names] if class_names is not None else \
        [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{where}: {len(names)} class names for {n_classes} classes")
    n = len(ys)
    errors = int((pred != ys).sum())

    parts: list[str] = []

    # final metrics
    rows: list[tuple[str, Any]] = [
        ("test accuracy", test.get("accuracy", 1 - errors / n)), ("test loss", test["loss"]),
        ("test images", n), ("misclassified", errors),
        ("macro precision", float(np.nanmean(pc["precision"]))),
        ("macro recall", float(np.nanmean(pc["recall"]))),
        ("macro F1", float(np.nanmean(pc["f1"])))]
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if hist.get(k):
            rows.append((f"final {k.replace('val_', 'validation ')} (epoch {len(hist[k])})",
                         hist[k][-1]))
    for k, label in (("seconds_per_epoch", "seconds per epoch (training steps)"),
                     ("images_per_sec", "images per second"), ("fit_seconds", "fit seconds")):
        if k in run_summary:
            rows.append((label, run_summary[k]))
    parts.append(_section("metrics", "Final metrics", _kv_table(rows)))

    # curves
    if hist and any(hist.get(k) for k in ("loss", "val_loss", "accuracy", "val_accuracy")):
        png = _matplotlib_png(lambda p: _plot.training_curves(hist, p))
        body = _img(png, "training curves") if png is not None else _no_plot("training curves")
    else:
        body = '<p class="note">No history: the model has not been trained by this trainer.</p>'
    parts.append(_section("curves", "Training curves", body))

    # confusion matrix
    head = "".join(f"<th>{_e(c)}</th>" for c in names)
    trs = []
    for i in range(n_classes):
        total = cm[i].sum()
        cells = []
        for j in range(n_classes):
            frac = cm[i, j] / total if total else 0.0
            rgb = "31,119,180" if i == j else "214,39,40"
            color = "#fff" if frac > 0.55 else "#222"
            cells.append(f'<td style="background:rgba({rgb},{frac:.3f});color:{color}" '
                         f'title="true {_e(names[i])}, predicted {_e(names[j])}: {cm[i, j]}">'
                         f"{cm[i, j]}</td>")
        trs.append(f"<tr><th>{_e(names[i])}</th>{''.join(cells)}<td class='n'>{total}</td></tr>")
    col_tot = "".join(f"<td class='n'>{v}</td>" for v in cm.sum(axis=0))
    body = (f'<table class="cm" id="confusion-matrix"><tr><th>true \\ predicted</th>{head}'
            f"<th>total</th></tr>{''.join(trs)}<tr><th>total</th>{col_tot}"
            f"<td class='n'>{int(cm.sum())}</td></tr></table>"
            '<p class="note">Rows: the true class; columns: the predicted class. Shading: the '
            "fraction of the row (blue: correct, red: errors).</p>")
    parts.append(_section("confusion", "Confusion matrix", body))

    # per class
    trs = [f"<tr><td>{_e(names[i])}</td><td class='n'>{pc['support'][i]}</td>"
           f"<td class='n'>{_fmt(pc['precision'][i])}</td>"
           f"<td class='n'>{_fmt(pc['recall'][i])}</td>"
           f"<td class='n'>{_fmt(pc['f1'][i])}</td></tr>" for i in range(n_classes)]
    body = ('<table id="per-class-table"><tr><th>class</th><th>support</th><th>precision</th>'
            f"<th>recall</th><th>F1</th></tr>{''.join(trs)}</table>")
    parts.append(_section("per-class", "Per-class precision, recall and F1", body))

    # misclassified
    wrong = np.flatnonzero(pred != ys)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:top_k]
    images = xs.ndim == 4
    if not len(wrong):
        body = '<p class="note">No test image is misclassified.</p>'
    else:
        figs = []
        for i in wrong:
            cap = (f"#{i}: true <b>{_e(names[ys[i]])}</b><br>predicted <b>{_e(names[pred[i]])}"
                   f"</b> ({100 * conf[i]:.1f}%)")
            pic = _img(_sample_png(xs[i]), f"test image {i}", cls="") if images else ""
            figs.append(f'<figure data-index="{i}" data-true="{ys[i]}" data-pred="{pred[i]}">'
                        f"{pic}<figcaption>{cap}</figcaption></figure>")
        body = (f'<p class="note">The {len(wrong)} misclassified test images the model was '
                f"most sure about (of {errors}).</p><div class=\"mis\">{''.join(figs)}</div>")
    parts.append(_section("misclassified", "Most confidently misclassified", body))

    # filters and feature maps
    convs = _plot._conv_indices(model)[:4]  # the first four: a deep model's would fill pages
    if convs:
        png = _matplotlib_png(lambda p: _plot.conv_filters(model, p))
        body = _img(png, "first Conv2d filters") if png is not None else _no_plot("filters")
        png = _matplotlib_png(lambda p: _plot.feature_maps(model, xs[0], p, max_channels=8,
                                                           layers=convs))
        maps = (_img(png, "feature maps of test image 0") +
                f'<p class="note">Test image 0 (true class {_e(names[ys[0]])}, predicted '
                f"{_e(names[pred[0]])}).</p>") if png is not None else _no_plot("feature maps")
    else:
        body = maps = '<p class="note">The model has no Conv2d layer.</p>'
    parts.append(_section("filters", "Conv filters", body))
    parts.append(_section("feature-maps", "Feature maps", maps))

    # model summary
    try:
        text = model.summary(input_shape=tuple(xs.shape[1:]), print_fn=None)
    except ValueError:
        text = model.summary(print_fn=None)
    parts.append(_section("model", "Model summary", f"<pre>{_e(text)}</pre>"))

    # settings
    rows = _trainer_settings(trainer)
    known = {k for k, _ in rows}
    rows += [(str(k), v) for k, v in (settings or {}).items() if str(k) not in known]
    parts.append(_section("settings", "Settings", _kv_table(rows)))

    # provenance
    rows = [("cnnkit", __version__), ("Python", sys.version.split()[0]),
            ("numpy", np.__version__), ("platform", platform.platform()), ("CPU", _cpu_name()),
            ("CPU features", _core.cpu_features() or "baseline"),
            ("GEMM kernel", _core.sgemm_kernel_name()),
            ("built with CUDA", built_with_cuda()),
            ("report written",
             datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))]
    for k in ("dataset", "model", "device", "threads", "processes"):
        if k in run_summary:
            rows.append((f"run {k}", run_summary[k]))
    rows.append(("x_test", _Raw(f"{_e(tuple(np.shape(x_test)))} {_e(np.asarray(x_test).dtype)}"
                                f", SHA-256 <code>{_sha256_array(x_test)}</code>")))
    rows.append(("y_test", _Raw(f"{_e(tuple(np.shape(y_test)))} {_e(np.asarray(y_test).dtype)}"
                                f", SHA-256 <code>{_sha256_array(y_test)}</code>")))
    for name, digest in (data_checksums or {}).items():
        rows.append((f"data file {name}", _Raw(f"SHA-256 <code>{_e(digest)}</code>")))
    if run_dir is not None:
        for name in ("model.cnnkit", "checkpoint.cnnkit"):
            p = os.path.join(run_dir, name)
            if os.path.isfile(p):
                rows.append((name, _Raw(f"SHA-256 <code>{_sha256_file(p)}</code>")))
    parts.append(_section("provenance", "Provenance", _kv_table(rows)))

    title = title or "cnnkit run report"
    acc = test.get("accuracy", 1 - errors / n)
    nav = "".join(f'<a href="#{s}">{s.replace("-", " ")}</a>' for s in SECTIONS)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>\n"
        f"<body><header><h1>{_e(title)}</h1><p>test accuracy {100 * acc:.2f}% on {n:,} images "
        f"\u00b7 {trainer.epoch} epochs \u00b7 cnnkit {_e(__version__)}</p></header>\n"
        f"<nav>{nav}</nav>\n<main>\n{''.join(parts)}</main></body></html>\n")
    data = page.encode("utf-8")
    return _files.atomic_write(path, lambda fh: fh.write(data), what=where)
