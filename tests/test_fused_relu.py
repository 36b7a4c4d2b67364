"""Layers that run the ReLU after them in their own pass (Conv2d, BatchNorm1d/2d -> ReLU, fused
by the Net) give the bits of the unfused pair: outputs, input gradients, parameter gradients
and running statistics, in training and eval mode, in Sequential and graph models."""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck


def _pair(block, fused: bool):
    """Sequential of `block` layers; unfused: an Identity between each layer and its ReLU."""
    layers = []
    for layer in block():
        if isinstance(layer, ck.ReLU) and not fused:
            layers.append(ck.Identity())
        layers.append(layer)
    return ck.Sequential(*layers)


BLOCKS = {
    "bn2d": (lambda: [ck.BatchNorm2d(3), ck.ReLU(), ck.Conv2d(3, 4, 3, padding=1)], (5, 3, 6, 7)),
    "conv-bn": (lambda: [ck.Conv2d(2, 4, 3, padding=1), ck.BatchNorm2d(4), ck.ReLU(),
                         ck.Conv2d(4, 3, 3), ck.ReLU(), ck.Flatten(), ck.Linear(3 * 4 * 4, 5)],
                (4, 2, 6, 6)),
    "bn1d": (lambda: [ck.Linear(6, 8), ck.BatchNorm1d(8), ck.ReLU(), ck.Linear(8, 3)], (7, 6)),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("cpu_kernels_set", ["auto", "generic"])
def test_fused_relu_gives_the_bits_of_the_unfused_pair(name, cpu_kernels_set):
    make, shape = BLOCKS[name]
    before = ck.get_cpu_kernels()
    ck.set_cpu_kernels(cpu_kernels_set)
    try:
        rng = np.random.default_rng(3)
        ck.manual_seed(0)
        fused = _pair(make, True)
        plain = _pair(make, False)
        plain._net.set_flat_params(fused._net.flat_params())
        x = rng.standard_normal(shape).astype(np.float32)
        for training in (True, False, True):
            yf, yp = fused.forward(x, training=training), plain.forward(x, training=training)
            np.testing.assert_array_equal(yf, yp)
            if training:
                dy = rng.standard_normal(yf.shape).astype(np.float32)
                fused.zero_grad()
                plain.zero_grad()
                np.testing.assert_array_equal(fused.backward(dy), plain.backward(dy))
                gf, gp = fused.grad_dict(), plain.grad_dict()
                assert [g.tobytes() for g in gf.values()] == [g.tobytes() for g in gp.values()]
        sf = [v for k, v in fused.state_dict().items() if "running" in k]
        sp = [v for k, v in plain.state_dict().items() if "running" in k]
        assert sf and all(np.array_equal(a, b) for a, b in zip(sf, sp, strict=True))
    finally:
        ck.set_cpu_kernels(before)


def test_fused_relu_in_a_graph_model_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    inp = ck.Input((3, 8, 8))
    h = ck.ReLU()(ck.BatchNorm2d(3)(inp))
    out = ck.ReLU()(ck.Add()([h, ck.Conv2d(3, 3, 3, padding=1)(h)]))
    m = ck.Model(inp, out)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = m.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = m.backward(dy)
    sd = m.state_dict()
    bn = torch.nn.BatchNorm2d(3)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    names = [k for k in sd if k.endswith("weight")]
    bn_w = next(k for k in names if sd[k].ndim == 1)
    conv_w = next(k for k in names if sd[k].ndim == 4)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(sd[bn_w]))
        conv.weight.copy_(torch.from_numpy(sd[conv_w]))
        conv.bias.copy_(torch.from_numpy(sd[conv_w.replace("weight", "bias")]))
    tx = torch.from_numpy(x).requires_grad_(True)
    th = torch.relu(bn(tx))
    ty = torch.relu(th + conv(th))
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("arity", [2, 3])
def test_fused_add_relu_gives_the_bits_of_the_unfused_pair(arity):
    # a residual Add -> ReLU runs as one pass; an Identity between them keeps them apart
    def build(fused: bool):
        ck.manual_seed(1)
        inp = ck.Input((3, 5, 5))
        a = ck.Conv2d(3, 3, 3, padding=1, name="a")(inp)
        b = ck.BatchNorm2d(3, name="bn")(ck.Conv2d(3, 3, 1, name="b")(a))
        s = ck.Add(name="s")([a, b, inp][:arity])
        if not fused:
            s = ck.Identity(name="id")(s)
        out = ck.ReLU(name="r")(s)
        return ck.Model(inp, ck.Linear(75, 4, name="fc")(ck.Flatten(name="f")(out)))

    rng = np.random.default_rng(2)
    fused, plain = build(True), build(False)
    plain.load_state_dict(fused.state_dict())
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    for training in (True, False):
        yf, yp = fused.forward(x, training=training), plain.forward(x, training=training)
        np.testing.assert_array_equal(yf, yp)
    yf = fused.forward(x, training=True)
    plain.forward(x, training=True)
    dy = rng.standard_normal(yf.shape).astype(np.float32)
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(dy))
    gf, gp = fused.grad_dict(), plain.grad_dict()
    assert gf.keys() == gp.keys()
    assert all(np.array_equal(gf[k], gp[k]) for k in gf)


def test_a_view_of_a_fused_relu_in_a_graph_reads_the_fused_storage():
    # Conv -> ReLU (fused) -> Flatten in a branching graph: the view takes the storage the
    # conv writes the rectified values into
    rng = np.random.default_rng(4)
    ck.manual_seed(2)
    inp = ck.Input((2, 4, 4))
    a = ck.Conv2d(2, 2, 3, padding=1, name="a")(inp)
    s = ck.Add(name="s")([a, inp])
    h = ck.Flatten(name="f")(ck.ReLU(name="r")(ck.Conv2d(2, 3, 3, padding=1, name="c")(s)))
    m = ck.Model(inp, ck.Linear(48, 2, name="fc")(h))
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    sd = m.state_dict()
    conv = lambda z, w, b: np.stack([  # noqa: E731
        sum(np.pad(z[:, ci], ((0, 0), (1, 1), (1, 1)))[:, i:i + 4, j:j + 4] * w[co, ci, i, j]
            for ci in range(w.shape[1]) for i in range(3) for j in range(3)) + b[co]
        for co in range(w.shape[0])], axis=1)
    ref = conv(x, sd["a.weight"], sd["a.bias"]) + x
    ref = np.maximum(conv(ref, sd["c.weight"], sd["c.bias"]), 0).reshape(3, -1)
    ref = ref @ sd["fc.weight"].T + sd["fc.bias"]
    for training in (True, False):
        np.testing.assert_allclose(m.forward(x, training=training), ref, rtol=1e-4, atol=1e-5)
