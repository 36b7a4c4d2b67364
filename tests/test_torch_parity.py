"""Parity with PyTorch (skipped when torch is not installed): random shapes, strides,
paddings, dilations and groups with weights copied across; the LeNet-5 forward and every
gradient to 1e-4 relative."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck

from conftest import assert_close

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.requires_torch


def _t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float32, requires_grad=True)


@pytest.mark.parametrize("trial", range(12))
def test_conv2d_random_configs_match_torch(trial):
    rng = np.random.default_rng(1000 + trial)
    groups = int(rng.choice([1, 1, 2, 3]))
    C = groups * int(rng.integers(1, 4))
    K = groups * int(rng.integers(1, 4))
    kh, kw = (int(v) for v in rng.integers(1, 5, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    dh, dw = (int(v) for v in rng.integers(1, 3, 2))
    ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
    H = int(rng.integers(dh * (kh - 1) + 1, 16))
    W = int(rng.integers(dw * (kw - 1) + 1, 16))
    N = int(rng.integers(1, 5))
    bias = bool(rng.integers(0, 2))
    tl = torch.nn.Conv2d(C, K, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, bias)
    ours = ck.Sequential([ck.Conv2d(C, K, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, bias)])
    ours.load_state_dict({"0." + k: v for k, v in tl.state_dict().items()})
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    xt = _t(x)
    yt = tl(xt)
    y = ours.forward(x, training=True)
    assert_close(y, yt.detach().numpy(), "torch", f" conv forward trial {trial}")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy))
    dx = ours.backward(dy)
    assert_close(dx, xt.grad.numpy(), "torch", " conv dx")
    g = ours.grad_dict()
    assert_close(g["0.weight"], tl.weight.grad.numpy(), "torch", " conv dw")
    if bias:
        assert_close(g["0.bias"], tl.bias.grad.numpy(), "torch", " conv db")


@pytest.mark.parametrize("trial", range(8))
def test_pooling_random_configs_match_torch(trial):
    rng = np.random.default_rng(2000 + trial)
    kh, kw = (int(v) for v in rng.integers(1, 5, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
    ceil = bool(rng.integers(0, 2))
    cip = bool(rng.integers(0, 2))
    N, C = 2, 3
    H, W = int(rng.integers(kh, 14)), int(rng.integers(kw, 14))
    x = rng.permutation(N * C * H * W).reshape(N, C, H, W).astype(np.float32) / 10
    for tl, ours in (
        (
            torch.nn.MaxPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil),
            ck.MaxPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil),
        ),
        (
            torch.nn.AvgPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil, count_include_pad=cip),
            ck.AvgPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil, count_include_pad=cip),
        ),
    ):
        xt = _t(x)
        yt = tl(xt)
        y = ours.forward(x, training=True)
        assert_close(y, yt.detach().numpy(), "torch", f" {ours.type} trial {trial}")
        dy = rng.standard_normal(y.shape).astype(np.float32)
        yt.backward(torch.tensor(dy))
        assert_close(ours.backward(dy), xt.grad.numpy(), "torch", f" {ours.type} dx")


def test_batchnorm_matches_torch_train_and_eval():
    rng = np.random.default_rng(5)
    tl = torch.nn.BatchNorm2d(4, eps=1e-3, momentum=0.3)
    with torch.no_grad():
        tl.weight.uniform_(0.5, 1.5)
        tl.bias.uniform_(-1, 1)
    ours = ck.Sequential([ck.BatchNorm2d(4, eps=1e-3, momentum=0.3)])
    ours.load_state_dict({"0." + k: v for k, v in tl.state_dict().items()})
    for step in range(3):
        x = (rng.standard_normal((5, 4, 6, 6)) * 3 + step).astype(np.float32)
        xt = _t(x)
        yt = tl(xt)
        y = ours.forward(x, training=True)
        assert_close(y, yt.detach().numpy(), "torch", " bn forward")
        dy = rng.standard_normal(y.shape).astype(np.float32)
        yt.backward(torch.tensor(dy))
        assert_close(ours.backward(dy), xt.grad.numpy(), "torch", " bn dx")
    st = ours.state_dict()
    assert_close(st["0.running_mean"], tl.running_mean.numpy(), "torch")
    assert_close(st["0.running_var"], tl.running_var.numpy(), "torch")
    g = ours.grad_dict()
    assert_close(g["0.weight"], tl.weight.grad.numpy(), "torch", " bn dgamma", scale=10)
    assert_close(g["0.bias"], tl.bias.grad.numpy(), "torch", " bn dbeta", scale=10)
    tl.eval()
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    assert_close(ours.forward(x), tl(torch.tensor(x)).detach().numpy(), "torch", " bn eval")


def test_activations_and_losses_match_torch():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((4, 9)) * 3).astype(np.float32)
    pairs = [
        (ck.ReLU(), torch.nn.ReLU()),
        (ck.LeakyReLU(0.1), torch.nn.LeakyReLU(0.1)),
        (ck.Sigmoid(), torch.nn.Sigmoid()),
        (ck.Tanh(), torch.nn.Tanh()),
    ]
    for ours, tl in pairs:
        xt = _t(x)
        yt = tl(xt)
        assert_close(ours.forward(x, training=True), yt.detach().numpy(), "torch", f" {ours.type}")
        dy = rng.standard_normal(x.shape).astype(np.float32)
        yt.backward(torch.tensor(dy))
        assert_close(ours.backward(dy), xt.grad.numpy(), "torch", f" {ours.type} dx")
    labels = rng.integers(0, 9, 4)
    zt = _t(x)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(labels))
    lt.backward()
    ce = ck.losses.CrossEntropyLoss()
    assert abs(ce.forward(x, labels) - lt.item()) < 1e-5
    assert_close(ce.backward(), zt.grad.numpy(), "torch")
    t = rng.standard_normal(x.shape).astype(np.float32)
    pt = _t(x)
    mt = torch.nn.functional.mse_loss(pt, torch.tensor(t))
    mt.backward()
    mse = ck.losses.MSELoss()
    assert abs(mse.forward(x, t) - mt.item()) < 1e-5
    assert_close(mse.backward(), pt.grad.numpy(), "torch")


def _lenet_pair():
    tm = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(400, 120),
        torch.nn.ReLU(),
        torch.nn.Linear(120, 84),
        torch.nn.ReLU(),
        torch.nn.Linear(84, 10),
    )
    ours = ck.models.lenet5()
    return tm, ours


def test_lenet5_forward_and_all_gradients_match_torch_1e4():
    torch.manual_seed(0)
    tm, ours = _lenet_pair()
    # the PyTorch state_dict loads as is: same names, same layouts
    ours.load_state_dict(tm.state_dict())
    assert list(ours.state_dict()) == list(tm.state_dict())
    rng = np.random.default_rng(7)
    x = rng.random((16, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    xt = _t(x)
    out_t = tm(xt)
    loss_t = torch.nn.functional.cross_entropy(out_t, torch.tensor(labels))
    loss_t.backward()
    out = ours.forward(x, training=True)
    ce = ck.losses.CrossEntropyLoss()
    loss = ce.forward(out, labels)
    dx = ours.backward(ce.backward())

    def rel(a, b):
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

    assert rel(out, out_t.detach().numpy()) < 1e-4
    assert abs(loss - loss_t.item()) < 1e-4 * abs(loss_t.item())
    assert rel(dx, xt.grad.numpy()) < 1e-4
    grads = ours.grad_dict()
    tgrads = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    assert set(grads) == set(tgrads)
    for k in tgrads:
        assert rel(grads[k], tgrads[k]) < 1e-4, k
