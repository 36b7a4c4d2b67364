"""Sequential and the package surface: names, state_dict round trips, threads, summary."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck


def lenet():
    return ck.models.lenet5()


def test_package_surface():
    assert isinstance(ck.__version__, str) and ck.__version__.count(".") == 2
    assert isinstance(ck.built_with_cuda(), bool)
    assert isinstance(ck.cuda_available(), bool)
    assert ck.layers.Conv2d is ck.Conv2d


def test_set_num_threads_really_changes_openmp():
    old = ck.get_num_threads()
    try:
        ck.set_num_threads(1)
        assert ck.get_num_threads() == 1
        ck.set_num_threads(3)
        assert ck.get_num_threads() == 3
    finally:
        ck.set_num_threads(old)
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError):
            ck.set_num_threads(bad)


def test_parameter_names_follow_torch_sequential():
    m = ck.Sequential(
        [
            ck.Conv2d(1, 2, 3),
            ck.BatchNorm2d(2),
            ck.ReLU(),
            ck.Flatten(),
            ck.Linear(2 * 4 * 4, 3, bias=False),
        ]
    )
    assert list(m.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "4.weight",
    ]
    assert list(m.grad_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight"]


def test_kaiming_uniform_init_bounds_and_seed():
    ck.manual_seed(42)
    a = ck.Conv2d(6, 16, 5).state_dict()
    ck.manual_seed(42)
    b = ck.Conv2d(6, 16, 5).state_dict()
    c = ck.Conv2d(6, 16, 5).state_dict()
    assert np.array_equal(a["0.weight"], b["0.weight"])
    assert not np.array_equal(b["0.weight"], c["0.weight"])
    bound = 1 / np.sqrt(6 * 25)
    w = a["0.weight"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(w.mean()) < 0.1 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound
    bn = ck.BatchNorm2d(3).state_dict()
    assert np.all(bn["0.weight"] == 1) and np.all(bn["0.bias"] == 0)
    assert np.all(bn["0.running_var"] == 1)


def test_state_dict_round_trip_and_copy_semantics(rng):
    m = lenet()
    st = m.state_dict()
    st["0.weight"][...] = 0  # a copy: the model is unchanged
    assert not np.all(m.state_dict()["0.weight"] == 0)
    m2 = lenet()
    m2.load_state_dict(m.state_dict())
    x = rng.random((3, 1, 28, 28)).astype(np.float32)
    assert np.array_equal(m.forward(x), m2.forward(x))


def test_load_state_dict_errors_leave_model_untouched():
    m = lenet()
    before = m.state_dict()
    bad = dict(before)
    bad["7.weight"] = np.zeros((3, 3), np.float32)
    bad["0.weight"] = np.zeros_like(before["0.weight"])
    with pytest.raises(ValueError, match="7.weight"):
        m.load_state_dict(bad)
    assert np.array_equal(m.state_dict()["0.weight"], before["0.weight"])
    with pytest.raises(ValueError, match="missing"):
        m.load_state_dict({"0.weight": before["0.weight"]})
    with pytest.raises(ValueError, match="unexpected"):
        m.load_state_dict({**before, "99.weight": np.zeros(1)})
    nan = dict(before)
    nan["0.bias"] = np.full_like(before["0.bias"], np.nan)
    with pytest.raises(ValueError, match="NaN"):
        m.load_state_dict(nan)
    m.load_state_dict({"0.bias": np.ones(6)}, strict=False)
    assert np.all(m.state_dict()["0.bias"] == 1)


def test_input_conversion_non_float32_and_non_contiguous(rng):
    m = lenet()
    x = rng.random((4, 1, 28, 28))
    ref = m.forward(x.astype(np.float32))
    assert np.array_equal(m.forward(x), ref)  # float64 converted
    xf = np.asfortranarray(x.astype(np.float32))
    assert np.array_equal(m.forward(xf), ref)
    big = rng.random((4, 1, 56, 28)).astype(np.float32)
    assert np.array_equal(
        m.forward(big[:, :, ::2, :]), m.forward(np.ascontiguousarray(big[:, :, ::2]))
    )
    assert m.forward((x * 255).astype(np.uint8)).shape == (4, 10)


def test_varying_batch_sizes_reuse_buffers(rng):
    m = lenet()
    xs = rng.random((9, 1, 28, 28)).astype(np.float32)
    full = m.forward(xs)
    for n in (1, 4, 9, 2):
        assert np.allclose(m.forward(xs[:n]), full[:n], atol=1e-6)
    assert m.forward(rng.random((20, 1, 28, 28)).astype(np.float32)).shape == (20, 10)


def test_predict_batches(rng):
    """predict runs in batches and returns probabilities: the softmax of forward's logits."""
    m = lenet()
    x = rng.random((37, 1, 28, 28)).astype(np.float32)
    z = m.forward(x).astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert np.allclose(m.predict(x, batch_size=8), p, atol=1e-6)


def test_summary_lists_layers_shapes_params():
    text = lenet().summary((1, 28, 28), print_fn=None)
    assert "Conv2d" in text and "(None, 6, 28, 28)" in text and "(None, 10)" in text
    assert "Total params: 61,706" in text


def test_layer_standalone_and_ownership():
    conv = ck.Conv2d(1, 2, 3)
    y = conv.forward(np.ones((1, 1, 5, 5), np.float32))
    w = conv.state_dict()["0.weight"]
    m = ck.Sequential([conv])  # the layer keeps its weights when it joins a model
    assert np.array_equal(m.state_dict()["0.weight"], w)
    assert np.allclose(m.forward(np.ones((1, 1, 5, 5), np.float32)), y)
    with pytest.raises(ValueError, match="belongs to a Sequential"):
        conv.forward(np.ones((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="another model"):
        ck.Sequential([conv])


def test_add_keras_style():
    m = ck.Sequential()
    m.add(ck.Linear(4, 3)).add(ck.ReLU())
    assert m.forward(np.ones((2, 4), np.float32)).shape == (2, 3)
    assert len(m) == 2 and isinstance(m[0], ck.Linear)


def test_to_cuda_without_gpu_is_a_clear_error():
    if ck.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        lenet().to("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        lenet().to("tpu")


def test_forward_is_deterministic_across_threads(rng):
    m = lenet()
    x = rng.random((64, 1, 28, 28)).astype(np.float32)
    outs = []
    grads = []
    for t in (1, 2):
        ck.set_num_threads(t)
        m.zero_grad()
        outs.append(m.forward(x, training=True))
        m.backward(np.ones_like(outs[-1]))
        grads.append(m.grad_dict())
    ck.set_num_threads(2)
    assert np.array_equal(outs[0], outs[1])
    for k in grads[0]:
        assert np.array_equal(grads[0][k], grads[1][k]), k


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),  # direct path, fused pass
        dict(in_channels=3, out_channels=7, kernel_size=5, padding=2),  # 7 = 6 + 1 output rows
        dict(in_channels=32, out_channels=8, kernel_size=3, padding=1),  # 288 taps: 2 blocks
        dict(in_channels=3, out_channels=8, kernel_size=3, stride=2),  # im2col path + ReLU pass
        dict(in_channels=4, out_channels=8, kernel_size=3, groups=2, padding=1),
    ],
)
def test_conv_relu_fusion_is_bit_identical(conv, cpu_kernels, rng):
    # Conv2d -> ReLU runs as one fused pass inside the Net; Conv2d -> Flatten -> ReLU computes
    # the same function without the fusion. Outputs and every gradient must match exactly.
    def build(fused: bool):
        c = ck.Conv2d(**conv)
        layers = [c, ck.ReLU(), ck.Flatten()] if fused else [c, ck.Flatten(), ck.ReLU()]
        return ck.Sequential(layers)

    x = rng.standard_normal((3, conv["in_channels"], 11, 11)).astype(np.float32)
    x[0, 0, :, :] = 0.0  # zero pre-activations where the padding-only taps meet the bias
    a, b = build(True), build(False)
    b.load_state_dict(a.state_dict())
    ya, yb = a.forward(x, training=True), b.forward(x, training=True)  # in each kernel set
    assert np.array_equal(ya, yb) and (ya >= 0).all() and (ya == 0).any()
    dy = rng.standard_normal(ya.shape).astype(np.float32)
    np.testing.assert_array_equal(a.backward(dy), b.backward(dy))
    for (ka, ga), (kb, gb) in zip(a.grad_dict().items(), b.grad_dict().items(), strict=True):
        assert ka == kb
        np.testing.assert_array_equal(ga, gb)


def test_sequential_takes_layers_as_arguments_like_pytorch():
    ck.manual_seed(0)
    a = ck.Sequential([ck.Conv2d(1, 2, 3), ck.ReLU(), ck.Flatten(), ck.Linear(2 * 4 * 4, 3)])
    ck.manual_seed(0)
    b = ck.Sequential(ck.Conv2d(1, 2, 3), ck.ReLU(), ck.Flatten(), ck.Linear(2 * 4 * 4, 3))
    assert list(a.state_dict()) == list(b.state_dict()) == ["0.weight", "0.bias", "3.weight",
                                                            "3.bias"]
    x = np.random.default_rng(0).random((2, 1, 6, 6), dtype=np.float32)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    one = ck.Sequential(ck.ReLU())
    assert len(one.layers) == 1
    with pytest.raises(ValueError, match="layer 1 is not a cnnkit layer"):
        ck.Sequential(ck.ReLU(), "conv")
    with pytest.raises(ValueError, match="must be an iterable of cnnkit layers, got 'conv'"):
        ck.Sequential("conv")
