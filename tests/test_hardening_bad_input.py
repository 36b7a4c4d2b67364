"""Bad input, systematically: one table of cases over every public entry point.

Each case calls one entry point with one kind of bad input (wrong rank, wrong size, wrong dtype
- object, str, complex -, empty batch, NaN/Inf, labels out of range, negative or zero
hyper-parameters, a device that is not there, missing or corrupt files, bad command-line
arguments) and names the exception type and a regex that its message must match: the message
must say what was wrong. Command-line cases must exit non-zero with a message and no
traceback. test_table_size checks (and prints) how many cases there are.
"""

from __future__ import annotations

import contextlib
import io as _stdio
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import cli, data, datasets, losses, optim
from cnnkit.io import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import (  # noqa: E402, F401
    fake_mnist,
    figures_line,
    one_thread,
    tiny_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MIN_CASES = 150
NAN, INF = float("nan"), float("inf")


@dataclass
class Case:
    id: str
    fn: Callable[[Ctx], object]
    exc: type[BaseException]
    match: str


class CliFailed(Exception):
    """The command line exited non-zero; the message is its exit code and output."""


class Ctx:
    """Files and objects the cases need, made on demand in a temporary directory."""

    def __init__(self, tmp: Path, data_dir: Path) -> None:
        self.tmp, self.data_dir = tmp, data_dir
        self._cache: dict[str, object] = {}

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def model_file(self) -> str:
        p = self.tmp / "model.cnnkit"
        if not p.exists():
            ck.save(ck.models.MODELS["lenet5"](), p)
        return str(p)

    def trainer_file(self) -> str:
        p = self.tmp / "trainer.cnnkit"
        if not p.exists():
            t = ck.Trainer(tiny_model(), optimizer=optim.Adam(), device="cpu")
            t.fit(*xy(16), epochs=1, batch_size=8, verbose=0)
            t.save(p)
        return str(p)

    def file_with(self, name: str, content: bytes) -> str:
        p = self.tmp / name
        p.write_bytes(content)
        return str(p)

    def npy(self, name: str, arr: np.ndarray) -> str:
        p = self.tmp / name
        np.save(p, arr, allow_pickle=True)
        return str(p)


def xy(n: int = 8, c: int = 1, h: int = 8, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    return rng.random((n, c, h, h), dtype=np.float32), rng.integers(0, classes, n)


def trainer(loss: str = "cross_entropy", opt: object = "adam", **kw) -> ck.Trainer:
    return ck.Trainer(tiny_model(), loss=loss, optimizer=opt, device="cpu", **kw)


def nan_at(a: np.ndarray, i: int, v: float = NAN) -> np.ndarray:
    a = a.copy()
    a.reshape(len(a), -1)[i, 0] = v
    return a


def run_cli(ctx: Ctx, *args: str) -> None:
    """cnnkit.cli.main(args); raises CliFailed(code + output) when it exits non-zero."""
    out, err = _stdio.StringIO(), _stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as e:
            code = e.code
    text = f"{out.getvalue()}{err.getvalue()}"
    if isinstance(code, str):  # SystemExit("message"): Python prints it and exits 1
        text, code = text + code, 1
    if "Traceback" in text:
        raise AssertionError(f"the command line printed a traceback:\n{text}")
    if code not in (0, None):
        raise CliFailed(f"exit {code}: {text}")


def train_args(ctx: Ctx, *extra: str) -> list[str]:
    return ["train", "--data-dir", str(ctx.data_dir), "--out", ctx.path("run"), "--epochs", "1",
            "--val-size", "16", "--verbose", "0", "--device", "cpu", *extra]


X8, Y8 = xy(8)
OBJ = np.array([[None] * 64] * 8, dtype=object).reshape(8, 1, 8, 8)
STR = np.full((8, 1, 8, 8), "a")
CPLX = X8.astype(np.complex64)
NEED_NO_GPU = not ck.cuda_available()


def _no_gpu(fn: Callable[[Ctx], object]) -> Callable[[Ctx], object]:
    def run(ctx: Ctx) -> object:
        if not NEED_NO_GPU:
            pytest.skip("a CUDA device is present")
        return fn(ctx)

    return run


V = ValueError
CE = CheckpointError
CASES: list[Case] = [
    # ---- layers: construction --------------------------------------------------------------
    Case("conv-in-channels-0", lambda c: ck.Conv2d(0, 4, 3), V, r"Conv2d.*in_channels"),
    Case("conv-out-channels-neg", lambda c: ck.Conv2d(3, -4, 3), V, r"Conv2d.*out_channels"),
    Case("conv-in-channels-float", lambda c: ck.Conv2d(3.5, 4, 3), V,
         r"Conv2d: in_channels must be an int.*3\.5"),
    Case("conv-in-channels-str", lambda c: ck.Conv2d("3", 4, 3), V,
         r"Conv2d: in_channels must be an int"),
    Case("conv-in-channels-bool", lambda c: ck.Conv2d(True, 4, 3), V,
         r"Conv2d: in_channels must be an int"),
    Case("conv-kernel-0", lambda c: ck.Conv2d(3, 4, 0), V, r"Conv2d.*kernel_size"),
    Case("conv-kernel-neg", lambda c: ck.Conv2d(3, 4, -3), V, r"Conv2d.*kernel_size"),
    Case("conv-kernel-str", lambda c: ck.Conv2d(3, 4, "3"), V,
         r"kernel_size must be an int or a pair"),
    Case("conv-kernel-triple", lambda c: ck.Conv2d(3, 4, (3, 3, 3)), V,
         r"kernel_size must be an int or a pair"),
    Case("conv-kernel-complex", lambda c: ck.Conv2d(3, 4, 3 + 1j), V, r"kernel_size"),
    Case("conv-stride-0", lambda c: ck.Conv2d(3, 4, 3, stride=0), V, r"stride"),
    Case("conv-padding-neg", lambda c: ck.Conv2d(3, 4, 3, padding=-1), V, r"padding"),
    Case("conv-dilation-0", lambda c: ck.Conv2d(3, 4, 3, dilation=0), V, r"dilation"),
    Case("conv-groups-0", lambda c: ck.Conv2d(3, 4, 3, groups=0), V, r"groups"),
    Case("conv-groups-indivisible", lambda c: ck.Conv2d(3, 4, 3, groups=2), V,
         r"divisible by groups"),
    Case("maxpool-kernel-0", lambda c: ck.MaxPool2d(0), V, r"MaxPool2d.*kernel_size"),
    Case("maxpool-stride-0", lambda c: ck.MaxPool2d(2, stride=0), V, r"MaxPool2d.*stride"),
    Case("maxpool-padding-too-big", lambda c: ck.MaxPool2d(2, padding=2), V, r"padding"),
    Case("avgpool-kernel-neg", lambda c: ck.AvgPool2d(-2), V, r"AvgPool2d.*kernel_size"),
    Case("avgpool-stride-float", lambda c: ck.AvgPool2d(2, stride=1.5), V, r"stride"),
    Case("linear-in-0", lambda c: ck.Linear(0, 3), V, r"Linear.*in_features"),
    Case("linear-out-neg", lambda c: ck.Linear(3, -1), V, r"Linear.*out_features"),
    Case("linear-in-float", lambda c: ck.Linear(2.5, 3), V, r"Linear: in_features must be an int"),
    Case("dropout-p-1", lambda c: ck.Dropout(1.0), V, r"p must be in \[0, 1\)"),
    Case("dropout-p-neg", lambda c: ck.Dropout(-0.1), V, r"p must be"),
    Case("dropout-p-nan", lambda c: ck.Dropout(NAN), V, r"Dropout.*p"),
    Case("dropout-p-str", lambda c: ck.Dropout("half"), V, r"Dropout: p must be a number"),
    Case("batchnorm-features-0", lambda c: ck.BatchNorm2d(0), V, r"num_features"),
    Case("batchnorm-eps-0", lambda c: ck.BatchNorm2d(3, eps=0), V, r"eps"),
    Case("batchnorm-eps-nan", lambda c: ck.BatchNorm2d(3, eps=NAN), V, r"eps"),
    Case("batchnorm-momentum-2", lambda c: ck.BatchNorm2d(3, momentum=2), V, r"momentum"),
    Case("batchnorm-momentum-neg", lambda c: ck.BatchNorm2d(3, momentum=-0.1), V, r"momentum"),
    Case("leakyrelu-slope-nan", lambda c: ck.LeakyReLU(NAN), V, r"LeakyReLU.*negative_slope"),
    Case("leakyrelu-slope-str", lambda c: ck.LeakyReLU("x"), V,
         r"LeakyReLU: negative_slope must be a number"),
    # ---- layers: forward / backward --------------------------------------------------------
    Case("conv-wrong-channels", lambda c: ck.Conv2d(3, 8, 3).forward(np.zeros((2, 1, 8, 8))), V,
         r"Conv2d \(layer 0\): expected input of shape \(N, 3, H, W\), got \(2, 1, 8, 8\)"),
    Case("conv-wrong-rank", lambda c: ck.Conv2d(3, 8, 3).forward(np.zeros((2, 3, 8))), V,
         r"Conv2d.*expected input of shape \(N, 3, H, W\), got \(2, 3, 8\)"),
    Case("conv-too-small", lambda c: ck.Conv2d(3, 8, 5).forward(np.zeros((2, 3, 4, 4))), V,
         r"smaller than the dilated kernel"),
    Case("conv-empty-batch", lambda c: ck.Conv2d(1, 2, 3).forward(np.zeros((0, 1, 8, 8))), V,
         r"non-empty batch"),
    Case("conv-object", lambda c: ck.Conv2d(1, 2, 3).forward(OBJ), V, r"numeric.*object"),
    Case("conv-str", lambda c: ck.Conv2d(1, 2, 3).forward(STR), V, r"numeric.*<U1"),
    Case("conv-complex", lambda c: ck.Conv2d(1, 2, 3).forward(CPLX), V, r"numeric.*complex64"),
    Case("conv-nan", lambda c: ck.Conv2d(1, 2, 3).forward(nan_at(X8, 3)), V,
         r"Sequential.forward: x contains NaN or Inf.*index 3"),
    Case("conv-inf", lambda c: ck.Conv2d(1, 2, 3).forward(nan_at(X8, 5, INF)), V,
         r"contains NaN or Inf.*index 5"),
    Case("pool-too-small", lambda c: ck.MaxPool2d(3).forward(np.zeros((2, 3, 2, 2))), V,
         r"MaxPool2d.*smaller than the window"),
    Case("avgpool-rank-2", lambda c: ck.AvgPool2d(2).forward(np.zeros((2, 3))), V,
         r"AvgPool2d.*expected input of shape \(N, C, H, W\)"),
    Case("linear-wrong-features", lambda c: ck.Linear(10, 3).forward(np.zeros((4, 9))), V,
         r"Linear \(layer 0\): expected input of shape \(N, 10\), got \(4, 9\)"),
    Case("linear-rank-3", lambda c: ck.Linear(10, 3).forward(np.zeros((4, 2, 5))), V,
         r"Linear.*\(N, 10\), got \(4, 2, 5\)"),
    Case("batchnorm-wrong-channels", lambda c: ck.BatchNorm2d(4).forward(np.ones((2, 3, 5, 5))),
         V, r"BatchNorm2d.*\(N, 4, H, W\), got \(2, 3, 5, 5\)"),
    Case("batchnorm-one-value", lambda c: ck.BatchNorm2d(2).forward(np.ones((1, 2, 1, 1)), True),
         V, r"more than 1 value per channel"),
    Case("flatten-rank-1", lambda c: ck.Flatten().forward(np.zeros(5)), V,
         r"x must be \(N, C, H, W\), \(N, H, W\) or \(N, features\), got shape \(5,\)"),
    Case("forward-scalar", lambda c: ck.ReLU().forward(np.float32(3)), V, r"non-empty batch"),
    Case("backward-before-forward", lambda c: ck.Linear(3, 2).backward(np.zeros((1, 2))), V,
         r"call forward first"),
    Case("backward-wrong-shape", lambda c: _fwd_bwd(ck.Linear(3, 2), (4, 3), (4, 3)), V,
         r"expected a gradient of shape \(4, 2\).*got \(4, 3\)"),
    Case("backward-nan", lambda c: _fwd_bwd(ck.Linear(3, 2), (4, 3), (4, 2), NAN), V,
         r"Sequential.backward: dy contains NaN or Inf"),
    Case("backward-object", lambda c: _fwd_bwd(ck.Linear(3, 2), (4, 3), None), V,
         r"Sequential.backward: expected a numeric array, got dtype object"),
    Case("backward-eval-batchnorm", lambda c: _bn_eval_backward(), V, r"eval-mode"),
    Case("layer-owned-by-model", lambda c: _owned_layer_forward(), V,
         r"belongs to a Sequential; call the model instead"),
    # ---- Sequential ------------------------------------------------------------------------
    Case("seq-not-a-layer", lambda c: ck.Sequential([ck.ReLU(), "conv"]), V,
         r"layer 1 is not a cnnkit layer"),
    Case("seq-layers-none", lambda c: ck.Sequential(None), V,
         r"Sequential: layers must be an iterable of cnnkit layers, got None"),
    Case("seq-layer-shared", lambda c: _shared_layer(), V, r"already belongs to another model"),
    Case("seq-to-tpu", lambda c: tiny_model().to("tpu"), V, r"unknown device 'tpu'"),
    Case("seq-to-cuda-no-gpu", _no_gpu(lambda c: tiny_model().to("cuda")), RuntimeError,
         r"no CUDA device is available"),
    Case("seq-forward-wrong-size", lambda c: tiny_model().forward(np.zeros((2, 1, 12, 12))),
         V, r"Linear \(layer 6\): expected input of shape \(N, 48\), got \(2, 108\)"),
    Case("seq-forward-wrong-channels", lambda c: tiny_model().forward(np.zeros((2, 3, 8, 8))),
         V, r"Conv2d \(layer 0\).*\(N, 1, H, W\)"),
    Case("seq-predict-batch-0", lambda c: tiny_model().predict(X8, batch_size=0), V,
         r"batch_size must be a positive int"),
    Case("seq-predict-batch-str", lambda c: tiny_model().predict(X8, batch_size="8"), V,
         r"batch_size must be a positive int"),
    Case("seq-predict-empty", lambda c: tiny_model().predict(np.zeros((0, 1, 8, 8))), V,
         r"empty"),
    Case("seq-predict-nan", lambda c: tiny_model().predict(nan_at(X8, 2)), V,
         r"Sequential.predict: x contains NaN or Inf.*index 2"),
    Case("seq-predict-str", lambda c: tiny_model().predict(STR), V, r"numeric.*<U1"),
    Case("seq-load-missing-key", lambda c: tiny_model().load_state_dict({}), V, r"missing keys"),
    Case("seq-load-unexpected-key", lambda c: _load_extra_key(), V,
         r"unexpected keys \['9.weight'\]"),
    Case("seq-load-wrong-shape", lambda c: _load_patched("0.bias", np.zeros(4, np.float32)), V,
         r"'0.bias' expects shape \(3,\), got \(4,\)"),
    Case("seq-load-nan", lambda c: _load_patched("0.bias", np.array([1, NAN, 2], np.float32)),
         V, r"'0.bias' contains NaN or Inf"),
    Case("seq-load-object", lambda c: _load_patched("0.bias", np.array(["a", "b", "c"])), V,
         r"'0.bias' must be a numeric array, got dtype <U1"),
    Case("seq-load-complex", lambda c: _load_patched("0.bias", np.ones(3, np.complex64)), V,
         r"'0.bias' must be a numeric array, got dtype complex64"),
    Case("seq-load-not-a-dict", lambda c: tiny_model().load_state_dict([1, 2]), V,
         r"load_state_dict: expected a dict.*got list"),
    Case("seq-output-shapes-bad", lambda c: tiny_model().output_shapes((1, 2, 2)), V,
         r"smaller than|expected input"),
    Case("seq-add-while-training", lambda c: _add_while_training(), V,
         r"cannot change a model that is being trained"),
    # ---- losses ----------------------------------------------------------------------------
    Case("ce-label-too-big", lambda c: losses.CrossEntropyLoss().forward(np.zeros((3, 4)),
                                                                         [0, 4, 1]), V,
         r"label 4 at index 1 is out of range \[0, 4\)"),
    Case("ce-label-negative", lambda c: losses.CrossEntropyLoss().forward(np.zeros((3, 4)),
                                                                          [0, -1, 1]), V,
         r"label -1"),
    Case("ce-labels-wrong-length", lambda c: losses.CrossEntropyLoss().forward(
        np.zeros((3, 4)), [0, 1]), V, r"expected labels of shape \(3,\)"),
    Case("ce-labels-fractional", lambda c: losses.CrossEntropyLoss().forward(
        np.zeros((3, 4)), [0.5, 1, 2]), V, r"integer class indices"),
    Case("ce-labels-object", lambda c: losses.CrossEntropyLoss().forward(
        np.zeros((3, 4)), np.array([0, None, 1], dtype=object)), V,
         r"integer class indices, got dtype object"),
    Case("ce-labels-nan", lambda c: losses.CrossEntropyLoss().forward(
        np.zeros((3, 4)), [0, NAN, 1]), V, r"integer class indices"),
    Case("ce-logits-rank-1", lambda c: losses.CrossEntropyLoss().forward(np.zeros(3), [0, 1, 2]),
         V, r"expected logits of shape \(N, C\)"),
    Case("ce-logits-nan", lambda c: losses.CrossEntropyLoss().forward(
        np.array([[0, NAN], [1, 2]]), [0, 1]), V, r"CrossEntropyLoss: logits contain NaN or Inf"),
    Case("ce-logits-str", lambda c: losses.CrossEntropyLoss().forward(np.full((2, 2), "a"),
                                                                      [0, 1]), V,
         r"CrossEntropyLoss: logits must be a numeric array, got dtype <U1"),
    Case("ce-logits-complex", lambda c: losses.CrossEntropyLoss().forward(
        np.ones((2, 2), np.complex128), [0, 1]), V,
         r"CrossEntropyLoss: logits must be a numeric array, got dtype complex128"),
    Case("ce-backward-first", lambda c: losses.CrossEntropyLoss().backward(), V,
         r"call forward first"),
    Case("mse-shape", lambda c: losses.MSELoss().forward(np.zeros((2, 3)), np.zeros((3, 2))), V,
         r"MSELoss: expected target of shape"),
    Case("mse-target-nan", lambda c: losses.MSELoss().forward(np.zeros((2, 3)),
                                                              np.full((2, 3), NAN)), V,
         r"MSELoss: target contains NaN or Inf"),
    Case("mse-target-str", lambda c: losses.MSELoss().forward(np.zeros((2, 1)), [["a"], ["b"]]),
         V, r"MSELoss: target must be a numeric array, got dtype <U1"),
    Case("loss-unknown", lambda c: losses.get("hinge"), V, r"unknown loss 'hinge'"),
    # ---- optimizers and schedules ----------------------------------------------------------
    Case("sgd-lr-negative", lambda c: optim.SGD(lr=-0.1), V,
         r"SGD: lr must be a finite number >= 0, got -0.1"),
    Case("sgd-lr-nan", lambda c: optim.SGD(lr=NAN), V, r"SGD: lr must be a finite number"),
    Case("sgd-lr-inf", lambda c: optim.SGD(lr=INF), V, r"SGD: lr must be a finite number"),
    Case("sgd-lr-str", lambda c: optim.SGD(lr="0.1"), V, r"SGD: lr must be a number, got '0.1'"),
    Case("sgd-lr-complex", lambda c: optim.SGD(lr=0.1j), V, r"SGD: lr must be a number"),
    Case("sgd-momentum-negative", lambda c: optim.SGD(momentum=-1), V, r"SGD: momentum"),
    Case("sgd-dampening-negative", lambda c: optim.SGD(dampening=-1), V, r"SGD: dampening"),
    Case("sgd-weight-decay-negative", lambda c: optim.SGD(weight_decay=-1), V,
         r"SGD: weight_decay"),
    Case("sgd-nesterov-no-momentum", lambda c: optim.SGD(nesterov=True), V,
         r"nesterov momentum requires a momentum > 0"),
    Case("sgd-nesterov-str", lambda c: optim.SGD(momentum=0.9, nesterov="yes"), V,
         r"nesterov must be a bool"),
    Case("sgd-positional-lr", lambda c: optim.SGD(0.1), V, r"pass the learning rate by keyword"),
    Case("adam-beta1-1", lambda c: optim.Adam(betas=(1.0, 0.999)), V, r"Adam: betas\[0\]"),
    Case("adam-betas-single", lambda c: optim.Adam(betas=(0.9,)), V, r"betas must be a pair"),
    Case("adam-eps-negative", lambda c: optim.Adam(eps=-1e-8), V, r"Adam: eps"),
    Case("adam-lr-zero-ok-but-neg", lambda c: optim.Adam(lr=-1e-3), V, r"Adam: lr"),
    Case("adamw-weight-decay-negative", lambda c: optim.AdamW(weight_decay=-0.1), V,
         r"AdamW: weight_decay"),
    Case("adagrad-lr-decay-negative", lambda c: optim.Adagrad(lr_decay=-1), V,
         r"Adagrad: lr_decay"),
    Case("rmsprop-alpha-negative", lambda c: optim.RMSprop(alpha=-0.5), V, r"RMSprop: alpha"),
    Case("rmsprop-momentum-nan", lambda c: optim.RMSprop(momentum=NAN), V, r"RMSprop: momentum"),
    Case("optim-unknown-name", lambda c: optim.get("lbfgs"), V, r"lbfgs"),
    Case("optim-unknown-hyper", lambda c: optim.from_config("sgd", {"lr": 0.1, "betas": [0.9]}),
         V, r"unexpected keyword argument 'betas'"),
    Case("optim-step-unattached", lambda c: optim.SGD().step(), V, r"not attached to a model"),
    Case("optim-set-lr-negative", lambda c: setattr(optim.SGD(), "lr", -1.0), V, r"SGD: lr"),
    Case("optim-load-state-garbage", lambda c: optim.SGD().load_state_dict({"x": 1}), V,
         r"expected a dict from state_dict"),
    Case("steplr-step-size-0", lambda c: optim.StepLR(optim.SGD(), step_size=0), V,
         r"step_size"),
    Case("cosine-tmax-0", lambda c: optim.CosineAnnealingLR(optim.SGD(), T_max=0), V, r"T_max"),
    Case("plateau-factor-big", lambda c: optim.ReduceLROnPlateau(optim.SGD(), factor=1.5), V,
         r"factor"),
    Case("warmup-steps-negative", lambda c: optim.LinearWarmup(optim.SGD(), -1), V,
         r"warmup_steps"),
    # ---- Trainer: construction -------------------------------------------------------------
    Case("trainer-model-str", lambda c: ck.Trainer("lenet"), V,
         r"model must be a cnnkit.Sequential, got str"),
    Case("trainer-loss-unknown", lambda c: ck.Trainer(tiny_model(), loss="hinge"), V,
         r"unknown loss 'hinge'"),
    Case("trainer-metric-unknown", lambda c: ck.Trainer(tiny_model(), metrics=["f1"]), V,
         r"unknown metric 'f1'"),
    Case("trainer-mse-accuracy", lambda c: trainer("mse", metrics=["accuracy"]), V,
         r"'accuracy' metric needs the cross_entropy loss"),
    Case("trainer-device-tpu", lambda c: ck.Trainer(tiny_model(), device="tpu"), V,
         r"unknown device 'tpu'"),
    Case("trainer-device-cuda-no-gpu", _no_gpu(lambda c: ck.Trainer(tiny_model(),
                                                                    device="cuda")),
         RuntimeError, r"device='cuda' but no CUDA device is available"),
    Case("trainer-seed-negative", lambda c: trainer(seed=-1), V,
         r"seed must be a non-negative integer"),
    Case("trainer-optimizer-unknown", lambda c: trainer(opt="lbfgs"), V, r"lbfgs"),
    Case("trainer-scheduler-other-opt", lambda c: trainer(
        lr_scheduler=optim.StepLR(optim.SGD(), 1)), V, r"must schedule the trainer's optimizer"),
    # ---- Trainer.fit -----------------------------------------------------------------------
    Case("fit-no-optimizer", lambda c: trainer(opt=None).fit(X8, Y8, verbose=0), V,
         r"fit: the trainer has no optimizer"),
    Case("fit-x-rank-1", lambda c: trainer().fit(np.zeros(8), Y8, verbose=0), V,
         r"fit: x must be \(N, C, H, W\), \(N, H, W\) or \(N, features\), got shape \(8,\)"),
    Case("fit-x-rank-5", lambda c: trainer().fit(np.zeros((8, 1, 1, 8, 8)), Y8, verbose=0), V,
         r"got shape \(8, 1, 1, 8, 8\)"),
    Case("fit-x-wrong-size", lambda c: trainer().fit(np.zeros((8, 1, 12, 12)), Y8, verbose=0),
         V, r"x has per-sample shape \(1, 12, 12\), which the model cannot take"),
    Case("fit-x-wrong-channels", lambda c: trainer().fit(np.zeros((8, 3, 8, 8)), Y8, verbose=0),
         V, r"per-sample shape \(3, 8, 8\).*Conv2d"),
    Case("fit-x-object", lambda c: trainer().fit(OBJ, Y8, verbose=0), V,
         r"fit: x must be numeric, got dtype object"),
    Case("fit-x-str", lambda c: trainer().fit(STR, Y8, verbose=0), V,
         r"fit: x must be numeric, got dtype <U1"),
    Case("fit-x-complex", lambda c: trainer().fit(CPLX, Y8, verbose=0), V,
         r"fit: x must be numeric, got dtype complex64"),
    Case("fit-x-ragged", lambda c: trainer().fit([[1, 2], [3]], [0, 1], verbose=0), V,
         r"fit: x is not an array"),
    Case("fit-x-empty", lambda c: trainer().fit(np.zeros((0, 1, 8, 8)), [], verbose=0), V,
         r"fit: x is empty"),
    Case("fit-x-nan", lambda c: trainer().fit(nan_at(X8, 5), Y8, verbose=0), V,
         r"x contains NaN or Inf \(1 bad samples, first at index 5\)"),
    Case("fit-x-inf", lambda c: trainer().fit(nan_at(X8, 0, -INF), Y8, verbose=0), V,
         r"x contains NaN or Inf.*first at index 0"),
    Case("fit-y-missing", lambda c: trainer().fit(X8, None, verbose=0), V, r"y is required"),
    Case("fit-y-wrong-length", lambda c: trainer().fit(X8, Y8[:5], verbose=0), V,
         r"x has 8 samples but y has 5"),
    Case("fit-y-scalar", lambda c: trainer().fit(X8, 3, verbose=0), V,
         r"y must have one entry per sample"),
    Case("fit-label-out-of-range", lambda c: trainer().fit(X8, np.full(8, 5), verbose=0), V,
         r"label 5 at index 0 is out of range for a model with 5 output classes"),
    Case("fit-label-negative", lambda c: trainer().fit(X8, np.r_[Y8[:7], -1], verbose=0), V,
         r"label -1 at index 7 is out of range"),
    Case("fit-label-fraction", lambda c: trainer().fit(X8, np.r_[0.5, Y8[1:]], verbose=0), V,
         r"y\[0\] = 0.5 is not a whole number"),
    Case("fit-label-nan", lambda c: trainer().fit(X8, np.r_[Y8[:3], NAN, Y8[4:]], verbose=0), V,
         r"labels contain NaN or Inf \(first at index 3\)"),
    Case("fit-label-object", lambda c: trainer().fit(X8, np.array(["a"] * 8, object),
                                                     verbose=0), V,
         r"labels must be integer class indices, got dtype object"),
    Case("fit-label-str", lambda c: trainer().fit(X8, np.array(["1"] * 8), verbose=0), V,
         r"labels must be integer class indices, got dtype <U1"),
    Case("fit-label-complex", lambda c: trainer().fit(X8, Y8 + 0j, verbose=0), V,
         r"labels must be integer class indices, got dtype complex128"),
    Case("fit-label-2d-not-onehot", lambda c: trainer().fit(X8, np.ones((8, 3)), verbose=0), V,
         r"not one-hot"),
    Case("fit-mse-target-shape", lambda c: trainer("mse").fit(X8, np.zeros((8, 3)), verbose=0),
         V, r"targets must have per-sample shape \(5,\)"),
    Case("fit-mse-target-nan", lambda c: trainer("mse").fit(X8, np.full((8, 5), NAN),
                                                            verbose=0), V,
         r"targets contain NaN or Inf"),
    Case("fit-epochs-negative", lambda c: trainer().fit(X8, Y8, epochs=-1, verbose=0), V,
         r"epochs must be a non-negative integer, got -1"),
    Case("fit-epochs-float", lambda c: trainer().fit(X8, Y8, epochs=2.5, verbose=0), V,
         r"epochs must be a non-negative integer, got 2.5"),
    Case("fit-batch-size-0", lambda c: trainer().fit(X8, Y8, batch_size=0, verbose=0), V,
         r"batch_size must be a positive integer, got 0"),
    Case("fit-batch-size-negative", lambda c: trainer().fit(X8, Y8, batch_size=-4, verbose=0),
         V, r"batch_size must be a positive integer, got -4"),
    Case("fit-batch-size-nan", lambda c: trainer().fit(X8, Y8, batch_size=NAN, verbose=0), V,
         r"batch_size must be a positive integer, got nan"),
    Case("fit-validation-split-1", lambda c: trainer().fit(X8, Y8, validation_split=1.0,
                                                           verbose=0), V,
         r"validation_split must be in \[0, 1\)"),
    Case("fit-validation-split-negative", lambda c: trainer().fit(
        X8, Y8, validation_split=-0.1, verbose=0), V, r"validation_split must be in \[0, 1\)"),
    Case("fit-validation-split-tiny", lambda c: trainer().fit(X8, Y8, validation_split=0.05,
                                                              verbose=0), V,
         r"leaves 0 for validation"),
    Case("fit-validation-data-bad", lambda c: trainer().fit(X8, Y8, validation_data=X8,
                                                            verbose=0), V,
         r"validation_data must be \(x_val, y_val\)"),
    Case("fit-validation-labels-bad", lambda c: trainer().fit(
        X8, Y8, validation_data=(X8, np.full(8, 9)), verbose=0), V,
         r"fit\(validation_data\): label 9"),
    Case("fit-verbose-5", lambda c: trainer().fit(X8, Y8, verbose=5), V,
         r"verbose must be 0, 1 or 2"),
    Case("fit-callback-not-callback", lambda c: trainer().fit(X8, Y8, callbacks=[print],
                                                              verbose=0), V,
         r"is not a cnnkit.callbacks.Callback"),
    Case("fit-initial-epoch-negative", lambda c: trainer().fit(X8, Y8, initial_epoch=-1,
                                                               verbose=0), V,
         r"initial_epoch must be a non-negative integer"),
    Case("fit-resume-missing", lambda c: trainer().fit(X8, Y8, resume_from=c.path("no.cnnkit"),
                                                       verbose=0), FileNotFoundError,
         r"no.cnnkit"),
    Case("fit-resume-model-file", lambda c: trainer().fit(X8, Y8, resume_from=c.model_file(),
                                                          verbose=0), CE,
         r"model file, not a trainer checkpoint"),
    Case("fit-checkpoint-dir-missing", lambda c: trainer().fit(
        X8, Y8, checkpoint_path=c.path("nodir/ck.cnnkit"), verbose=0), V,
         r"checkpoint_path .*nodir.* does not exist"),
    Case("fit-checkpoint-path-int", lambda c: trainer().fit(X8, Y8, checkpoint_path=3,
                                                            verbose=0), V,
         r"checkpoint_path must be a non-empty path, got 3"),
    Case("fit-dataloader-plus-y", lambda c: trainer().fit(data.DataLoader(X8, Y8), Y8,
                                                          verbose=0), V,
         r"pass y=None when x is a DataLoader"),
    # ---- Trainer.evaluate / predict --------------------------------------------------------
    Case("evaluate-label-out-of-range", lambda c: trainer().evaluate(X8, np.full(8, 7)), V,
         r"evaluate: label 7 at index 0 is out of range"),
    Case("evaluate-batch-size-0", lambda c: trainer().evaluate(X8, Y8, batch_size=0), V,
         r"evaluate: batch_size must be a positive integer"),
    Case("evaluate-x-nan", lambda c: trainer().evaluate(nan_at(X8, 1), Y8), V,
         r"evaluate: x contains NaN or Inf"),
    Case("evaluate-empty", lambda c: trainer().evaluate(np.zeros((0, 1, 8, 8)), []), V,
         r"evaluate: x is empty"),
    Case("predict-wrong-size", lambda c: trainer().predict(np.zeros((2, 1, 12, 12))), V,
         r"predict: x has per-sample shape \(1, 12, 12\), which the model cannot take"),
    Case("predict-batch-size-0", lambda c: trainer().predict(X8, batch_size=0), V,
         r"predict: batch_size must be a positive integer"),
    Case("predict-object", lambda c: trainer().predict(OBJ), V,
         r"predict: x must be numeric, got dtype object"),
    Case("predict-complex", lambda c: trainer().predict(CPLX), V,
         r"predict: x must be numeric, got dtype complex64"),
    Case("predict-empty", lambda c: trainer().predict(np.zeros((0, 1, 8, 8))), V,
         r"predict: x is empty"),
    Case("predict-nan", lambda c: trainer().predict(nan_at(X8, 4)), V,
         r"predict: x contains NaN or Inf.*index 4"),
    # ---- DataLoader ------------------------------------------------------------------------
    Case("loader-batch-size-0", lambda c: data.DataLoader(X8, Y8, batch_size=0), V,
         r"DataLoader: batch_size must be a positive integer"),
    Case("loader-seed-negative", lambda c: data.DataLoader(X8, Y8, seed=-1), V,
         r"DataLoader: seed must be a non-negative integer"),
    Case("loader-y-length", lambda c: data.DataLoader(X8, Y8[:3]), V,
         r"x has 8 samples but y has 3"),
    Case("loader-transform-not-callable", lambda c: data.DataLoader(X8, Y8, transform=5), V,
         r"transform must be callable"),
    Case("loader-drop-last-empty", lambda c: data.DataLoader(X8, Y8, batch_size=16,
                                                             drop_last=True), V,
         r"drop_last with batch_size 16 > 8 samples leaves no batch"),
    Case("loader-empty-dataset", lambda c: data.DataLoader(_EmptyDataset()), V,
         r"the dataset is empty"),
    Case("loader-x-str", lambda c: data.DataLoader(STR, Y8), V,
         r"DataLoader: x must be numeric, got dtype <U1"),
    Case("loader-set-epoch-negative", lambda c: data.DataLoader(X8, Y8).set_epoch(-1), V,
         r"set_epoch: epoch must be an int >= 0"),
    # ---- save / load -----------------------------------------------------------------------
    Case("save-not-a-model", lambda c: ck.save("model", c.path("m.cnnkit")), V,
         r"save: expected a cnnkit.Sequential or Trainer, got str"),
    Case("save-missing-dir", lambda c: ck.save(tiny_model(), c.path("nodir/m.cnnkit")),
         FileNotFoundError, r"save: directory .*nodir.* does not exist"),
    Case("load-missing", lambda c: ck.load(c.path("nothing.cnnkit")), FileNotFoundError,
         r"nothing.cnnkit"),
    Case("load-directory", lambda c: ck.load(c.tmp), CE, r"cannot open"),
    Case("load-empty-file", lambda c: ck.load(c.file_with("e.cnnkit", b"")), CE,
         r"e.cnnkit: not a cnnkit file \(0 bytes; too short\)"),
    Case("load-text-file", lambda c: ck.load(c.file_with("t.cnnkit", b"hello world, hello!")),
         CE, r"not a cnnkit file \(bad magic"),
    Case("load-npy-file", lambda c: ck.load(c.npy("a.npy", X8)), CE, r"bad magic"),
    Case("load-truncated", lambda c: ck.load(c.file_with(
        "tr.cnnkit", Path(c.model_file()).read_bytes()[:-100])), CE,
         r"truncated or corrupted"),
    Case("load-future-version", lambda c: ck.load(c.file_with(
        "v2.cnnkit", b"CNNKIT02" + Path(c.model_file()).read_bytes()[8:])), CE,
         r"unsupported cnnkit format"),
    Case("load-device-cuda-no-gpu", _no_gpu(lambda c: ck.load(c.trainer_file(), device="cuda")),
         RuntimeError, r"no CUDA device is available"),
    Case("load-weights-other-architecture", lambda c: ck.io.load_weights(tiny_model(),
                                                                        c.model_file()), CE,
         r"the architecture differs from the model's"),
    Case("load-checkpoint-model-file", lambda c: trainer().load_checkpoint(c.model_file()), CE,
         r"model file, not a trainer checkpoint"),
    Case("load-checkpoint-other-loss", lambda c: trainer("mse").load_checkpoint(
        c.trainer_file()), CE, r"trained with loss 'cross_entropy', this trainer uses 'mse'"),
    Case("load-checkpoint-other-optimizer", lambda c: trainer(opt="sgd").load_checkpoint(
        c.trainer_file()), CE, r"optimizer is adam, this trainer's is sgd"),
    # ---- datasets --------------------------------------------------------------------------
    Case("dataset-unknown", lambda c: datasets._load_dataset("cifar10", c.tmp, download=False),
         V, r"unknown dataset 'cifar10'"),
    Case("dataset-empty-dir", lambda c: datasets.load_mnist(data_dir=c.path("empty"),
                                                            download=False, verbose=False),
         datasets.DatasetUnavailableError, r"MNIST.*missing|no IDX files"),
    Case("dataset-corrupt-file", lambda c: _corrupt_dataset(c), datasets.DatasetUnavailableError,
         r"SHA-256|sha256"),
    Case("dataset-truncated-file", lambda c: _truncated_dataset(c),
         datasets.DatasetUnavailableError, r"too short|truncated|declares|SHA-256"),
    Case("dataset-dir-is-file", lambda c: datasets.load_mnist(
        data_dir=c.file_with("f", b"x"), download=False, verbose=False),
         datasets.DatasetUnavailableError, r"MNIST"),
    Case("idx-too-short", lambda c: datasets.read_idx(b"\0\0"), datasets.IDXFormatError,
         r"too short"),
    Case("idx-bad-type", lambda c: datasets.read_idx(b"\0\0\x42\x01\0\0\0\x01\0"),
         datasets.IDXFormatError, r"unknown IDX element type code 0x42"),
    Case("idx-size-mismatch", lambda c: datasets.read_idx(b"\0\0\x08\x01\0\0\0\x09\0"),
         datasets.IDXFormatError, r"IDX"),
    # ---- command line ----------------------------------------------------------------------
    Case("cli-no-command", lambda c: run_cli(c), CliFailed, r"exit 2.*required: command"),
    Case("cli-unknown-command", lambda c: run_cli(c, "frobnicate"), CliFailed,
         r"exit 2.*invalid choice: 'frobnicate'"),
    Case("cli-epochs-not-int", lambda c: run_cli(c, "train", "--epochs", "x"), CliFailed,
         r"exit 2.*--epochs: invalid positive int value: 'x'"),
    Case("cli-epochs-0", lambda c: run_cli(c, "train", "--epochs", "0"), CliFailed,
         r"exit 2.*--epochs: .*must be a positive integer, got 0"),
    Case("cli-batch-size-negative", lambda c: run_cli(c, "train", "--batch-size", "-1"),
         CliFailed, r"exit 2.*--batch-size.*must be a positive integer, got -1"),
    Case("cli-lr-negative", lambda c: run_cli(c, "train", "--lr", "-1"), CliFailed,
         r"exit 2.*--lr.*must be a finite number > 0, got -1"),
    Case("cli-lr-nan", lambda c: run_cli(c, "train", "--lr", "nan"), CliFailed,
         r"exit 2.*--lr.*must be a finite number > 0, got nan"),
    Case("cli-momentum-negative", lambda c: run_cli(c, "train", "--momentum", "-0.5"),
         CliFailed, r"exit 2.*--momentum.*must be a finite number >= 0"),
    Case("cli-threads-0", lambda c: run_cli(c, "train", "--threads", "0"), CliFailed,
         r"exit 2.*--threads.*must be a positive integer, got 0"),
    Case("cli-val-size-negative", lambda c: run_cli(c, "train", "--val-size", "-5"), CliFailed,
         r"exit 2.*--val-size.*must be a non-negative integer, got -5"),
    Case("cli-optimizer-unknown", lambda c: run_cli(c, "train", "--optimizer", "lbfgs"),
         CliFailed, r"exit 2.*invalid choice: 'lbfgs'"),
    Case("cli-dataset-unknown", lambda c: run_cli(c, "train", "--dataset", "cifar"), CliFailed,
         r"exit 2.*invalid choice: 'cifar'"),
    Case("cli-model-unknown", lambda c: run_cli(c, *train_args(c, "--model", "resnet")),
         CliFailed, r"--model must be one of \['fashion_cnn', 'lenet5', 'resnet18', 'resnet20'\] "
         r"or a model file"),
    Case("cli-val-size-too-big", lambda c: run_cli(c, *train_args(c, "--val-size", "999")),
         CliFailed, r"--val-size must be in \[0, 256\), got 999"),
    Case("cli-resume-missing", lambda c: run_cli(c, *train_args(c, "--resume",
                                                               c.path("no.cnnkit"))),
         CliFailed, r"exit 1.*No such file or directory: '.*no.cnnkit'"),
    Case("cli-resume-model-file", lambda c: run_cli(c, *train_args(c, "--resume",
                                                                  c.model_file())),
         CliFailed, r"is a model file, not a training checkpoint"),
    Case("cli-resume-corrupt", lambda c: run_cli(c, *train_args(c, "--resume", c.file_with(
        "bad.cnnkit", b"CNNKIT01" + b"\xff" * 40))), CliFailed,
         r"exit 1.*bad.cnnkit: header length"),
    Case("cli-train-device-cuda-no-gpu", _no_gpu(lambda c: run_cli(c, *train_args(
        c, "--device", "cuda"))), CliFailed,
         r"--device: device='cuda' but no CUDA device is available"),
    Case("cli-train-no-data", lambda c: run_cli(c, "train", "--data-dir", c.path("nodata"),
                                                "--epochs", "1", "--out", c.path("r")),
         CliFailed, r"exit 1.*MNIST.*(unavailable|could not|no source)"),
    Case("cli-evaluate-missing", lambda c: run_cli(c, "evaluate", c.path("none.cnnkit")),
         CliFailed, r"exit 1.*No such file or directory: '.*none.cnnkit'"),
    Case("cli-evaluate-corrupt", lambda c: run_cli(c, "evaluate", c.file_with("c.cnnkit",
                                                                              b"junk" * 10)),
         CliFailed, r"exit 1.*c.cnnkit: not a cnnkit file"),
    Case("cli-evaluate-batch-0", lambda c: run_cli(c, "evaluate", c.model_file(),
                                                   "--batch-size", "0"), CliFailed,
         r"exit 2.*--batch-size.*must be a positive integer"),
    Case("cli-predict-no-images", lambda c: run_cli(c, "predict", c.model_file()), CliFailed,
         r"exit 2.*required: images"),
    Case("cli-predict-missing-image", lambda c: run_cli(c, "predict", c.model_file(),
                                                        c.path("no.npy")), CliFailed,
         r"exit 1.*No such file or directory: '.*no.npy'"),
    Case("cli-predict-wrong-shape", lambda c: run_cli(c, "predict", c.model_file(), c.npy(
        "s.npy", np.zeros((5, 5)))), CliFailed, r"expected a 28x28 image, got shape \(5, 5\)"),
    Case("cli-predict-object-npy", lambda c: run_cli(c, "predict", c.model_file(), c.npy(
        "o.npy", np.array([None, 1], dtype=object))), CliFailed,
         r"exit 1.*o.npy.*(pickle|object)"),
    Case("cli-predict-nan-image", lambda c: run_cli(c, "predict", c.model_file(), c.npy(
        "n.npy", np.full((28, 28), NAN))), CliFailed, r"exit 1.*n.npy.*NaN"),
    Case("cli-predict-top-0", lambda c: run_cli(c, "predict", c.model_file(), "x.npy", "--top",
                                                "0"), CliFailed,
         r"exit 2.*--top.*must be a positive integer"),
    Case("cli-predict-model-is-garbage", lambda c: run_cli(c, "predict", c.file_with(
        "g.cnnkit", b""), "x.npy"), CliFailed, r"exit 1.*g.cnnkit: not a cnnkit file"),
]


# -- helpers used by the cases -----------------------------------------------------------------


def _fwd_bwd(layer, xshape, dyshape, fill=0.0):
    layer.forward(np.ones(xshape, np.float32), training=True)
    if dyshape is None:
        return layer.backward(np.array([[None, None]] * xshape[0], dtype=object))
    return layer.backward(np.full(dyshape, fill, np.float32))


def _bn_eval_backward():
    bn = ck.BatchNorm2d(2)
    bn.forward(np.ones((2, 2, 2, 2), np.float32), training=False)
    bn.backward(np.ones((2, 2, 2, 2), np.float32))


def _owned_layer_forward():
    layer = ck.ReLU()
    ck.Sequential([layer])
    layer.forward(np.ones((1, 2), np.float32))


def _shared_layer():
    layer = ck.ReLU()
    ck.Sequential([layer])
    ck.Sequential([layer])


def _load_extra_key():
    m = tiny_model()
    sd = m.state_dict()
    sd["9.weight"] = np.zeros(3, np.float32)
    m.load_state_dict(sd)


def _load_patched(key, value):
    m = tiny_model()
    sd = m.state_dict()
    sd[key] = value
    m.load_state_dict(sd)


def _add_while_training():
    t = trainer()
    t.model.add(ck.ReLU())


class _EmptyDataset:
    def __len__(self):
        return 0

    def __getitem__(self, i):
        raise IndexError(i)


def _corrupt_dataset(c: Ctx):
    files = c.data_dir / "mnist"
    raw = bytearray((files / datasets.FILES[1]).read_bytes())
    raw[-1] ^= 1  # a label flipped: the checksum must catch it
    d = c.tmp / "corrupt" / "mnist"
    d.mkdir(parents=True)
    for name in datasets.FILES:
        (d / name).write_bytes((files / name).read_bytes())
    (d / datasets.FILES[1]).write_bytes(bytes(raw))
    datasets.load_mnist(data_dir=c.tmp / "corrupt", download=False, verbose=False)


def _truncated_dataset(c: Ctx):
    files = c.data_dir / "mnist"
    d = c.tmp / "trunc" / "mnist"
    d.mkdir(parents=True)
    for name in datasets.FILES:
        (d / name).write_bytes((files / name).read_bytes()[:10])
    datasets.load_mnist(data_dir=c.tmp / "trunc", download=False, verbose=False)


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path, fake_mnist: Path) -> Ctx:  # noqa: F811
    return Ctx(tmp_path, fake_mnist)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ctx: Ctx) -> None:
    with pytest.raises(case.exc) as info:
        case.fn(ctx)
    if info.type is not case.exc and not (case.exc is V and info.type is CE):
        # a subclass is fine only where it is the documented one (CheckpointError is a
        # ValueError); anything else must be the exact type
        assert issubclass(info.type, case.exc), info.type
    msg = str(info.value)
    assert re.search(case.match, msg, re.S), f"message does not say what is wrong:\n{msg}"
    assert "Traceback" not in msg


def test_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("n", [len(CASES)], ids=[f"{len(CASES)}-cases"])
def test_table_size(n: int) -> None:
    print(figures_line("bad_input", {"cases": n}))
    assert n >= MIN_CASES
    assert not math.isnan(n)
