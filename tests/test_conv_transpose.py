"""ConvTranspose2d: forward, input gradient and weight/bias gradients against PyTorch on many
random configurations (strides, paddings, output_padding, dilation, groups, bias, non-square),
a numpy float64 reference, central differences, bad arguments and shapes, training inside a
Sequential and a graph Model, save/load and summary()."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_gradcheck import _check_layer

import cnnkit as ck

from conftest import assert_close

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not importable")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def out_extent(n: int, k: int, s: int, p: int, op: int, d: int) -> int:
    return (n - 1) * s - 2 * p + d * (k - 1) + op + 1


# ---- numpy float64 reference ---------------------------------------------------------------------


def conv_transpose_ref(x, w, b, stride, padding, output_padding, dilation, groups):
    """Scatter form: input pixel (i, j) adds x * w[r, c] at output (i*s - p + r*d, j*s - p + c*d)."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    (oph, opw), (dh, dw) = _pair(output_padding), _pair(dilation)
    N, Ci, H, W = x.shape
    _, Cog, R, S = w.shape
    P, Q = out_extent(H, R, sh, ph, oph, dh), out_extent(W, S, sw, pw, opw, dw)
    Cig = Ci // groups
    y = np.zeros((N, Cog * groups, P + 2 * ph, Q + 2 * pw))  # padded by `padding` on each side
    for g in range(groups):
        xg = x[:, g * Cig:(g + 1) * Cig]
        for r in range(R):
            for c in range(S):
                contrib = np.einsum("nihw,io->nohw", xg, w[g * Cig:(g + 1) * Cig, :, r, c])
                y[:, g * Cog:(g + 1) * Cog, r * dh:r * dh + (H - 1) * sh + 1:sh,
                  c * dw:c * dw + (W - 1) * sw + 1:sw] += contrib
    y = y[:, :, ph:ph + P, pw:pw + Q]
    if y.shape[2] < P or y.shape[3] < Q:  # output_padding rows/columns past the last tap
        y = np.pad(y, ((0, 0), (0, 0), (0, P - y.shape[2]), (0, Q - y.shape[3])))
    if b is not None:
        y = y + b[None, :, None, None]
    return y


def linear_grad(f, v, r):
    """d sum(r * f(v)) / dv for f linear in v: central differences with step 1 are exact."""
    g = np.zeros_like(v)
    for idx in np.ndindex(*v.shape):
        vp, vm = v.copy(), v.copy()
        vp[idx] += 1.0
        vm[idx] -= 1.0
        g[idx] = ((f(vp) - f(vm)) * r).sum() / 2
    return g


def run(layer, x, dy):
    model = ck.Sequential([layer])
    model.zero_grad()
    y = model.forward(x, training=True)
    dx = model.backward(dy)
    return model, y, dx, {k.split(".", 1)[1]: v for k, v in model.grad_dict().items()}


# ---- configurations ------------------------------------------------------------------------------

# in, out, kernel, stride, padding, output_padding, groups, bias, dilation, N, H, W
CASES = [
    (3, 5, 3, 1, 0, 0, 1, True, 1, 2, 5, 5),  # stride 1: the direct kernels
    (4, 6, 3, 1, 1, 0, 2, False, 1, 2, 6, 4),  # groups
    (4, 4, 3, 2, 1, 1, 4, True, 1, 2, 4, 5),  # out_channels == groups (depthwise)
    (8, 4, 3, 1, 1, 0, 4, True, 1, 2, 5, 5),  # depthwise with a channel multiplier
    (3, 2, 1, 1, 0, 0, 1, True, 1, 3, 4, 6),  # 1x1: one GEMM per image
    (3, 2, 1, 1, 0, 1, 1, True, 2, 2, 4, 3),  # 1x1 with output_padding < dilation
    (2, 3, 3, 1, 1, 1, 1, True, 2, 2, 4, 5),  # output_padding >= stride (< dilation)
    (2, 4, (3, 2), (1, 2), (2, 0), (1, 1), 2, True, (2, 1), 2, 4, 3),  # both axes extended
    (16, 8, 4, 2, 1, 0, 1, True, 1, 3, 8, 8),  # DCGAN-style 2x upsampling
    (3, 4, 2, 2, 0, 0, 1, False, 1, 2, 5, 7),  # kernel == stride: no overlap
    (2, 3, 3, 2, 3, 0, 1, True, 1, 2, 6, 6),  # padding > dilation*(kernel-1): shrinks
    (2, 2, (4, 1), (3, 1), (1, 0), (2, 0), 1, True, (1, 2), 1, 3, 4),  # non-square everything
    (4, 16, 3, 2, 1, 1, 1, True, 1, 30, 32, 32),  # im2col over two chunks of images
]


def _random_cases(n: int, seed: int) -> list[tuple]:
    r = np.random.default_rng(seed)
    out: list[tuple] = []
    while len(out) < n:
        g = int(r.choice([1, 2, 4]))
        ci, co = g * int(r.integers(1, 4)), g * int(r.integers(1, 4))
        k = (int(r.integers(1, 5)), int(r.integers(1, 5)))
        s = (int(r.integers(1, 4)), int(r.integers(1, 4)))
        d = (int(r.integers(1, 3)), int(r.integers(1, 3)))
        p = (int(r.integers(0, 3)), int(r.integers(0, 3)))
        op = tuple(int(r.integers(0, max(si, di))) for si, di in zip(s, d, strict=True))
        N, H, W = int(r.integers(1, 4)), int(r.integers(1, 8)), int(r.integers(1, 8))
        if min(out_extent(H, k[0], s[0], p[0], op[0], d[0]),
               out_extent(W, k[1], s[1], p[1], op[1], d[1])) < 1:
            continue
        out.append((ci, co, k, s, p, op, g, bool(r.integers(0, 2)), d, N, H, W))
    return out


RANDOM_CASES = _random_cases(60, 1234)


def _ids(cases):
    return [f"c{i}" for i in range(len(cases))]


def _make(case):
    ci, co, k, s, p, op, g, bias, d = case[:9]
    return ck.ConvTranspose2d(ci, co, k, s, p, op, g, bias, d)


def _torch_check(case, rng):
    ci, co, k, s, p, op, g, bias, d, N, H, W = case
    layer = _make(case)
    ref = torch.nn.ConvTranspose2d(ci, co, k, s, p, op, g, bias, d)
    x = rng.standard_normal((N, ci, H, W)).astype(np.float32)
    out_shape = layer.output_shape(x.shape)
    dy = rng.standard_normal(out_shape).astype(np.float32)
    model, y, dx, grads = run(layer, x, dy)
    sd = {k.split(".", 1)[1]: torch.tensor(v) for k, v in model.state_dict().items()}
    ref.load_state_dict(sd)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    assert y.shape == tuple(yt.shape)
    # sums of in/groups * taps (forward), out/groups * taps (dx), N * pixels (weight, bias)
    kh, kw = _pair(k)
    assert_close(y, yt.detach().numpy(), "torch", " forward", scale=math.sqrt(ci * kh * kw))
    assert_close(dx, xt.grad.numpy(), "torch", " dx", scale=math.sqrt(co * kh * kw))
    taps = math.sqrt(N * out_shape[2] * out_shape[3])
    assert_close(grads["weight"], ref.weight.grad.numpy(), "torch", " dweight", scale=taps)
    if bias:
        assert_close(grads["bias"], ref.bias.grad.numpy(), "torch", " dbias", scale=taps)
    else:
        assert "bias" not in grads


# ---- PyTorch parity ------------------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_matches_torch_on_chosen_configurations(case, rng):
    _torch_check(case, rng)


@needs_torch
@pytest.mark.parametrize("case", RANDOM_CASES, ids=_ids(RANDOM_CASES))
def test_matches_torch_on_random_configurations(case, rng):
    _torch_check(case, rng)


def test_random_configurations_cover_the_options():
    """The random cases exercise every option the brief of the layer names."""
    cases = RANDOM_CASES
    assert {max(c[3]) for c in cases} >= {1, 2, 3}
    assert {c[6] for c in cases} == {1, 2, 4}
    assert {c[7] for c in cases} == {True, False}
    assert {max(c[8]) for c in cases} == {1, 2}
    assert any(max(c[5]) > 0 for c in cases) and any(max(c[4]) > 0 for c in cases)
    assert any(o >= s for c in cases for o, s in zip(c[5], c[3], strict=True))
    assert any(c[2][0] != c[2][1] for c in cases)


@needs_torch
def test_weights_from_a_torch_state_dict_give_torch_outputs(rng):
    ref = torch.nn.Sequential(torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1,
                                                       output_padding=1))
    model = ck.Sequential([ck.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)])
    model.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    assert_close(model.forward(x), ref(torch.tensor(x)).detach().numpy(), "torch")


def test_parameter_shapes_keys_and_default_init():
    layer = ck.ConvTranspose2d(6, 8, (3, 2), groups=2)
    sd = layer.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {"0.weight": (6, 4, 3, 2), "0.bias": (8,)}
    assert list(layer._native.param_names()) == ["weight", "bias"]
    # PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = out_channels/groups * kh * kw
    big = ck.ConvTranspose2d(64, 32, 4).state_dict()
    bound = 1 / math.sqrt(32 * 16)
    w = big["0.weight"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(float(w.mean())) < 0.05 * bound
    assert np.abs(big["0.bias"]).max() <= bound
    assert "bias" not in str(ck.ConvTranspose2d(2, 2, 3, bias=False)._native.param_names())


# ---- numpy float64 reference and central differences --------------------------------------------


@pytest.mark.parametrize("case", [
    (4, 6, (3, 2), (2, 1), (1, 0), (1, 0), 2, True, (1, 2), 2, 3, 4),
    (2, 3, 3, 1, 1, 1, 1, True, 2, 2, 3, 3),  # output_padding >= stride
    (4, 4, 2, 3, 0, 2, 4, False, 1, 1, 3, 2),  # depthwise, stride 3
], ids=["groups_nonsquare", "extended", "depthwise"])
def test_forward_and_gradients_against_numpy_float64(case, rng):
    ci, co, k, s, p, op, g, bias, d, N, H, W = case
    layer = _make(case)
    x = rng.standard_normal((N, ci, H, W)).astype(np.float32)
    dy = rng.standard_normal(layer.output_shape(x.shape))
    model, y, dx, grads = run(layer, x, dy.astype(np.float32))
    sd = model.state_dict()
    w64 = sd["0.weight"].astype(np.float64)
    b64 = sd["0.bias"].astype(np.float64) if bias else None
    x64 = x.astype(np.float64)

    def f(xx=x64, ww=w64, bb=b64):
        return conv_transpose_ref(xx, ww, bb, s, p, op, d, g)

    assert_close(y, f(), "conv")
    assert_close(dx, linear_grad(lambda v: f(xx=v), x64, dy), "conv")
    assert_close(grads["weight"], linear_grad(lambda v: f(ww=v), w64, dy), "conv",
                 scale=math.sqrt(dy[:, 0].size))
    if bias:
        assert_close(grads["bias"], dy.sum(axis=(0, 2, 3)), "conv", scale=math.sqrt(dy[:, 0].size))


def test_numpy_reference_agrees_with_torch_in_float64(rng):
    """The reference itself, against torch's float64 transposed convolution."""
    if torch is None:
        pytest.skip("torch not importable")
    x = rng.standard_normal((2, 4, 3, 5))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(6)
    for s, p, op, d in [((2, 1), (1, 0), (1, 0), (1, 2)), (1, 1, 1, 2), (3, 2, 2, 1)]:
        want = torch.nn.functional.conv_transpose2d(
            torch.tensor(x), torch.tensor(w), torch.tensor(b), s, p, op, 2, d).numpy()
        np.testing.assert_allclose(conv_transpose_ref(x, w, b, s, p, op, d, 2), want,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make,shape", [
    (lambda: ck.ConvTranspose2d(3, 4, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)),
     (2, 3, 4, 3)),
    (lambda: ck.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
     (2, 4, 3, 3)),
    (lambda: ck.ConvTranspose2d(2, 3, 3, padding=1, output_padding=(1, 0), dilation=2),
     (2, 2, 3, 4)),
], ids=["strided", "groups_output_padding", "extended"])
def test_central_differences(make, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    _check_layer(make, x, rng)


# ---- bad arguments and shapes --------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"in_channels": 3, "out_channels": 4, "kernel_size": 3, "groups": 2},
     r"ConvTranspose2d: in_channels \(3\) and out_channels \(4\) must both be divisible by "
     r"groups \(2\)"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "stride": 2, "output_padding": 2},
     r"ConvTranspose2d: output_padding \(2, 2\) must be smaller than either stride \(2, 2\) or "
     r"dilation \(1, 1\)"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "output_padding": (0, 1)},
     r"output_padding \(0, 1\) must be smaller than either stride \(1, 1\) or dilation"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "stride": 2, "dilation": 3,
      "output_padding": 3}, r"output_padding \(3, 3\) must be smaller"),
    ({"in_channels": 0, "out_channels": 2, "kernel_size": 3}, "ConvTranspose2d: in_channels"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 0}, "ConvTranspose2d: kernel_size"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "stride": 0},
     "ConvTranspose2d: stride"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": -1},
     "ConvTranspose2d: padding"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": "same"},
     "ConvTranspose2d: padding"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "dilation": 0},
     "ConvTranspose2d: dilation"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "output_padding": -1},
     "ConvTranspose2d: output_padding"),
    ({"in_channels": 2, "out_channels": 2, "kernel_size": (1, 2, 3)},
     "ConvTranspose2d: kernel_size"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ck.ConvTranspose2d(**kwargs)


def test_output_padding_below_dilation_is_allowed_as_in_torch():
    layer = ck.ConvTranspose2d(1, 1, 3, stride=1, output_padding=1, dilation=2)
    assert layer.output_shape((1, 1, 4, 4)) == (1, 1, 9, 9)


def test_bad_input_shapes_name_the_layer_and_both_shapes():
    layer = ck.ConvTranspose2d(4, 2, 3)
    with pytest.raises(ValueError, match=r"ConvTranspose2d \(layer 0\): expected input of "
                                         r"shape \(N, 4, H, W\), got \(2, 3, 5, 5\)"):
        layer.forward(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*\(N, 4, H, W\).*got \(2, 4\)"):
        layer.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*\(N, 4, H, W\).*got \(2, 4, 5, 5, 1\)"):
        layer.output_shape((2, 4, 5, 5, 1))
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*expected input of shape \(N, 4, H, W\)"):
        layer.output_shape((2, 4, 0, 5))
    # an output that would be empty: (1 - 1) * 1 - 2 * 1 + 0 + 1 = -1 rows
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*input spatial size \(1, 1\) gives an "
                                         r"output of \(-1, -1\), which is too small"):
        ck.ConvTranspose2d(1, 1, 1, padding=1).forward(np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(ValueError, match="does not fit in a 64-bit size"):
        ck.ConvTranspose2d(1, 1, 3, stride=2**40).output_shape((1, 1, 2**30, 2))
    # the wrong gradient shape in backward
    layer.forward(np.zeros((2, 4, 5, 5), np.float32), training=True)
    with pytest.raises(ValueError, match=r"gradient of shape \(2, 2, 7, 7\).*got \(2, 2, 6, 6\)"):
        layer.backward(np.zeros((2, 2, 6, 6), np.float32))


def test_a_layer_used_twice_as_the_wrong_input_still_works_afterwards(rng):
    """A refused input leaves the layer usable (no state half-updated)."""
    layer = ck.ConvTranspose2d(2, 3, 3, stride=2, output_padding=1)
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    y = layer.forward(x)
    with pytest.raises(ValueError):
        layer.forward(np.zeros((1, 3, 3, 3), np.float32))
    np.testing.assert_array_equal(layer.forward(x), y)


# ---- in models: training, save/load, summary ------------------------------------------------------


def _sequential():
    return ck.Sequential([
        ck.Conv2d(1, 4, 3, stride=2, padding=1), ck.ReLU(),
        ck.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1), ck.ReLU(),
        ck.Flatten(), ck.Linear(2 * 8 * 8, 3),
    ])


def _graph():
    """A small U-Net step: down, up with a transposed convolution, concatenated with the skip."""
    inp = ck.Input((2, 8, 8))
    down = ck.ReLU()(ck.Conv2d(2, 4, 3, stride=2, padding=1, name="down")(inp))
    up = ck.ConvTranspose2d(4, 2, 2, stride=2, name="up")(down)
    x = ck.Concat(dim=1)([inp, up])
    x = ck.ConvTranspose2d(4, 3, 3, padding=1, groups=1, bias=False, name="mix")(x)
    out = ck.Linear(3, 3)(ck.Flatten()(ck.AdaptiveAvgPool2d(1)(ck.ReLU()(x))))
    return ck.Model(inp, out)


def _data(rng, c: int):
    y = np.arange(24) % 3
    x = rng.standard_normal((24, c, 8, 8)).astype(np.float32) * 0.3
    for i, k in enumerate(y):
        x[i, :, 2 * k:2 * k + 3, :] += 1.5
    return x, y


@pytest.mark.parametrize("kind", ["sequential", "graph"])
def test_trains_in_a_model_and_round_trips_through_save_load(kind, tmp_path, rng):
    ck.manual_seed(0)
    model = _sequential() if kind == "sequential" else _graph()
    x, y = _data(rng, 1 if kind == "sequential" else 2)
    t = ck.Trainer(model, optimizer=ck.optim.Adam(lr=1e-2), device="cpu", seed=0)
    h = t.fit(x, y, epochs=6, batch_size=8, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    before = model.state_dict()
    assert all(np.isfinite(v).all() for v in before.values())
    p = tmp_path / "m.cnnkit"
    ck.save(model, p)
    back = ck.load(p)
    assert back.get_config() == model.get_config()
    sd = back.state_dict()
    assert list(sd) == list(before)
    for k in sd:
        np.testing.assert_array_equal(sd[k], before[k])
    np.testing.assert_array_equal(back.forward(x), model.forward(x))
    if kind == "graph":
        assert "up.weight" in sd and "mix.weight" in sd and "mix.bias" not in sd


def test_an_autoencoder_trains_with_mse(rng):
    ck.manual_seed(1)
    model = ck.Sequential([
        ck.Conv2d(1, 4, 4, stride=2, padding=1), ck.ReLU(),
        ck.ConvTranspose2d(4, 1, 4, stride=2, padding=1),
    ])
    x = rng.random((16, 1, 8, 8), dtype=np.float32)
    t = ck.Trainer(model, loss="mse", optimizer=ck.optim.Adam(lr=1e-2), device="cpu", seed=0)
    h = t.fit(x, x, epochs=8, batch_size=8, verbose=0)
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]


def test_summary_names_the_layer_and_counts_its_parameters():
    model = _sequential()
    text = model.summary((1, 8, 8), print_fn=None)
    assert "(ConvTranspose2d)" in text and "(None, 2, 8, 8)" in text
    assert f"{4 * 2 * 3 * 3 + 2:>12,}" in text
    graph = _graph().summary(print_fn=None)
    assert "up (ConvTranspose2d)" in graph and "mix (ConvTranspose2d)" in graph
    assert f"{4 * 3 * 3 * 3:>12,}" in graph  # mix: no bias
    r = repr(ck.ConvTranspose2d(2, 4, 3, stride=2, output_padding=1, bias=False))
    assert r.startswith("ConvTranspose2d(in_channels=2, out_channels=4, kernel_size=(3, 3)")
    assert "output_padding=(1, 1)" in r and "bias=False" in r
