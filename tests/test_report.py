"""cnnkit.report / plot.report / `cnnkit report`: one self-contained HTML file. Parsed as HTML
(every section, every image a PNG data URI, nothing fetched), its numbers checked against
Trainer.evaluate and numpy, and rendered as a user sees it in headless Chromium (a screenshot,
and the DOM after load: every image decoded, no console message)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import cli, datasets, plot
from cnnkit import report as rep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import fake_mnist, isolate_datasets, one_thread  # noqa: E402, F401
from test_tensorboard import data, png_size, small_model  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_BROWSER = ("no chromium or chromium-browser binary on PATH (Debian: apt-get install -y "
              "chromium)")


class Page(HTMLParser):
    """What the tests look at: section ids, images, tables by id, links, scripts, the
    misclassified figures and the metrics table's rows."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections, self.imgs, self.refs, self.scripts, self.figures = [], [], [], [], []
        self.tables: dict[str, list[list[str]]] = {}
        self.kv: dict[str, str] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "script":
            self.scripts.append(a)
        elif tag == "figure":
            self.figures.append(a)
        elif tag == "table":
            self._table = a.get("id") or a.get("class") or f"t{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        for k in ("href", "src", "action"):
            if k in a:
                self.refs.append(a[k])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            if self._table == "kv" and len(self._row) == 2:
                self.kv.setdefault(self._row[0], self._row[1])
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, d):
        if self._cell is not None:
            self._cell.append(d)


@pytest.fixture(scope="module")
def trained():
    """A small classifier trained for 2 epochs, and a test set it gets partly wrong."""
    before = ck.get_num_threads()
    ck.set_num_threads(1)
    x, y = data(160)
    t = ck.Trainer(small_model(), optimizer=ck.optim.Adam(lr=3e-3), device="cpu", seed=3)
    t.fit(x, y, epochs=2, batch_size=16, validation_data=data(32, seed=1), verbose=0)
    xt, yt = data(120, seed=5)
    yt[:30] = (yt[:30] + 1) % 4  # wrong labels: there are confident mistakes to show
    yield t, xt, yt
    ck.set_num_threads(before)


@pytest.fixture(scope="module")
def page(trained, tmp_path_factory):
    t, xt, yt = trained
    path = tmp_path_factory.mktemp("report") / "report.html"
    out = plot.report(t, xt, yt, path, class_names=["TL", "TR", "BL", "BR"], top_k=12,
                      settings={"batch size": 16}, data_checksums={"test.idx": "ab" * 32})
    assert out == str(path)
    return path, Page(path.read_text(encoding="utf-8"))


def test_every_section_and_nothing_external(page):
    path, p = page
    assert p.sections == list(rep.SECTIONS)
    assert len(p.imgs) >= 3 + 1  # curves, filters, feature maps, misclassified images
    for a in p.imgs:
        src = a["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        w, h = png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert w > 0 and h > 0
    assert all(r.startswith(("#", "data:")) for r in p.refs), [r[:40] for r in p.refs]
    assert all("src" not in s for s in p.scripts)  # the one script is inline
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not [f for f in os.listdir(path.parent) if f.endswith(".tmp")]


def test_numbers_match_evaluate_and_numpy(trained, page):
    t, xt, yt = trained
    _, p = page
    ev = t.evaluate(xt, yt, batch_size=512)
    assert p.kv["test accuracy"] == f"{ev['accuracy']:.4f}"
    assert p.kv["test loss"] == f"{ev['loss']:.4f}"
    assert p.kv["test images"] == str(len(yt))
    pred = t.predict_classes(xt)
    # confusion matrix: rows = true, columns = predicted, totals, sums to N
    rows = p.tables["confusion-matrix"]
    assert rows[0][1:-1] == ["TL", "TR", "BL", "BR"]
    cm = np.array([[int(c) for c in r[1:-1]] for r in rows[1:-1]])
    assert cm.sum() == len(yt) == int(rows[-1][-1])
    ref = np.zeros((4, 4), np.int64)
    np.add.at(ref, (yt, pred), 1)
    np.testing.assert_array_equal(cm, ref)
    assert p.kv["misclassified"] == str(int((pred != yt).sum()))
    # per class: recall = diagonal / row sum, precision = diagonal / column sum
    table = p.tables["per-class-table"][1:]
    for i, r in enumerate(table):
        assert r[0] == ["TL", "TR", "BL", "BR"][i]
        assert int(r[1]) == (yt == i).sum()
        recall = ((pred == i) & (yt == i)).sum() / (yt == i).sum()
        assert float(r[3]) == pytest.approx(recall, abs=5e-5)
        if (pred == i).any():
            precision = ((pred == i) & (yt == i)).sum() / (pred == i).sum()
            assert float(r[2]) == pytest.approx(precision, abs=5e-5)
        else:
            assert r[2] == "\u2014"


def test_misclassified_are_the_most_confident_mistakes(trained, page):
    t, xt, yt = trained
    _, p = page
    probs = t.predict(xt)
    pred, conf = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(pred != yt)
    expect = wrong[np.argsort(-conf[wrong], kind="stable")][:12]
    assert [int(f["data-index"]) for f in p.figures] == expect.tolist()
    for f in p.figures:
        i = int(f["data-index"])
        assert int(f["data-true"]) == yt[i] != int(f["data-pred"]) == pred[i]


def test_settings_and_provenance(trained, page):
    t, xt, yt = trained
    path, p = page
    assert p.kv["optimizer"].startswith("Adam")
    assert p.kv["seed"] == "3" and p.kv["epochs trained"] == "2" and p.kv["batch size"] == "16"
    assert p.kv["cnnkit"] == ck.__version__ and p.kv["numpy"] == np.__version__
    text = path.read_text(encoding="utf-8")
    import hashlib

    for a in (xt, yt):
        assert hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() in text
    assert "ab" * 32 in text  # the data file checksum given
    assert "Total params" in text  # the model summary


def test_without_matplotlib(trained, tmp_path, monkeypatch):
    """The pictures matplotlib draws are replaced by a note; the rest stays."""
    t, xt, yt = trained

    def missing():
        raise ImportError(plot._INSTALL_HINT)

    monkeypatch.setattr(plot, "_require_matplotlib", missing)
    p = Page(Path(plot.report(t, xt, yt, tmp_path / "r.html")).read_text(encoding="utf-8"))
    assert p.sections == list(rep.SECTIONS)
    assert all(a.get("class") != "fig" for a in p.imgs)  # only the misclassified samples
    assert len(p.imgs) == len(p.figures) > 0


def test_bad_input(trained, tmp_path):
    t, xt, yt = trained
    with pytest.raises(ValueError, match="samples"):
        plot.report(t, xt, yt[:-1], tmp_path / "r.html")
    with pytest.raises(ValueError, match="class names"):
        plot.report(t, xt, yt, tmp_path / "r.html", class_names=["a"])
    with pytest.raises(FileNotFoundError):
        plot.report(t, xt, yt, tmp_path / "missing" / "r.html")


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--disable-extensions", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason=NO_BROWSER)
def test_renders_in_chromium(page, tmp_path):
    path, _ = page
    url = path.resolve().as_uri()
    shot = tmp_path / "report.png"
    r = chromium(f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", url)
    assert shot.exists(), r.stderr[-2000:]
    png = shot.read_bytes()
    assert png_size(png) == (1280, 2400)
    assert len(png) > 50_000  # text, tables and figures, not a blank page
    r = chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                 "--dump-dom", url)
    body = re.search(r"<body[^>]*>", r.stdout)
    assert body, r.stderr[-2000:]
    n = len(page[1].imgs)
    assert f'data-images="{n}/{n}"' in body.group(0), body.group(0)
    assert 'data-report="ok"' in body.group(0)
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console


@pytest.mark.usefixtures("one_thread")
def test_cli_train_writes_the_report_and_report_rebuilds_it(fake_mnist, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert cli.main(["train", "--data-dir", str(fake_mnist), "--out", str(out), "--epochs", "2",
                     "--val-size", "32", "--verbose", "0", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["batch_size"] == 64 and summary["settings"]["seed"] == 0
    assert summary["data_sha256"] == datasets.CHECKSUMS["mnist"]
    first = Page((out / "report.html").read_text(encoding="utf-8"))
    assert first.sections == list(rep.SECTIONS)
    assert first.kv["test accuracy"] == f"{summary['test_accuracy']:.4f}"
    assert first.kv["batch size"] == "64"
    assert first.kv["data file t10k-images-idx3-ubyte"].endswith(
        datasets.CHECKSUMS["mnist"]["t10k-images-idx3-ubyte"])

    (out / "report.html").unlink()
    assert cli.main(["report", str(out), "--data-dir", str(fake_mnist), "--device", "cpu"]) == 0
    again = Page((out / "report.html").read_text(encoding="utf-8"))
    assert again.kv["test accuracy"] == first.kv["test accuracy"]
    assert again.tables["confusion-matrix"] == first.tables["confusion-matrix"]
    assert again.kv["epochs trained"] == "2"  # the checkpoint's history and state
    assert len(again.imgs) == len(first.imgs)

    # without the checkpoint: the model file and history.csv
    (out / "checkpoint.cnnkit").unlink()
    assert cli.main(["report", str(out), "--data-dir", str(fake_mnist), "--device", "cpu",
                     "--out", str(tmp_path / "r2.html")]) == 0
    third = Page((tmp_path / "r2.html").read_text(encoding="utf-8"))
    assert third.kv["test accuracy"] == first.kv["test accuracy"]
    assert any("curves" in (a.get("alt") or "") for a in third.imgs)  # from history.csv


def test_cli_report_errors(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 1
    assert "not a run folder" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path), "--dataset", "mnist"]) == 1
    assert "neither checkpoint.cnnkit nor model.cnnkit" in capsys.readouterr().err
