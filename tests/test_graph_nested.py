"""Graph models inside graph models, containers auto-named, and the plot functions on named
layers of graph models (conv_filters, feature_maps)."""

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import plot

matplotlib = pytest.importorskip("matplotlib")


def _x(n=2, c=1, h=8, w=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)


def _inner(name=None):
    ck.manual_seed(3)
    i = ck.Input((1, 8, 8))
    y = ck.Conv2d(1, 1, 3, padding=1, name="conv")(i)
    return ck.Model(i, ck.ReLU()(ck.Add()([ck.BatchNorm2d(1, name="bn")(y), i])), name=name)


def test_model_inside_model_keeps_weights_and_names(tmp_path):
    inner = _inner(name="block")
    x = _x()
    want = inner.forward(x, training=False).copy()
    i = ck.Input((1, 8, 8))
    h = inner(i)
    out = ck.Linear(64, 3, name="fc")(ck.Flatten()(h))
    m = ck.Model(i, out)
    assert list(m.state_dict()) == ["block.conv.weight", "block.conv.bias", "block.bn.weight",
                                    "block.bn.bias", "block.bn.running_mean",
                                    "block.bn.running_var", "fc.weight", "fc.bias"]
    # the inner graph's part of the outer one computes what the inner model did
    probe = plot._activations(m, x[:1], [m._names.index("block.relu")])[0]
    np.testing.assert_allclose(probe, want[0], rtol=1e-6, atol=1e-6)
    # trains, saves and loads as any graph model
    t = ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1), device="cpu")
    t.fit(_x(32), np.arange(32) % 3, epochs=1, batch_size=8, verbose=0)
    ck.save(m, tmp_path / "m.cnnkit")
    back = ck.load(tmp_path / "m.cnnkit")
    np.testing.assert_array_equal(back.forward(x, training=False), m.forward(x, training=False))
    assert list(back.state_dict()) == list(m.state_dict())


def test_unnamed_containers_are_auto_named():
    inner = _inner()
    i = ck.Input((1, 8, 8))
    s = ck.Sequential(ck.Conv2d(1, 2, 3), ck.ReLU())
    m = ck.Model(i, ck.Flatten()(s(inner(i))))
    assert [k for k in m.state_dict() if k.endswith("weight")] == [
        "model.conv.weight", "model.bn.weight", "sequential.0.weight"]


def test_part_of_another_model_is_refused():
    inner = _inner()
    i = ck.Input((1, 8, 8))
    with pytest.raises(ValueError, match="already belongs to another model"):
        ck.Model(i, inner._nodes[0](i))


def _conv_ref(x, w, b, stride=1, pad=1):
    """float64 reference: x (C, H, W), w (K, C, R, S) -> (K, P, Q)."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(1, 2))
    win = win[:, ::stride, ::stride]
    out = np.einsum("cpqrs,kcrs->kpq", win, w.astype(np.float64))
    return out + (0 if b is None else b[:, None, None])


def test_feature_maps_on_named_layers_of_resnet20(tmp_path):
    ck.manual_seed(0)
    m = ck.models.resnet20(in_channels=1)
    x = _x(1, 1, 16, 16, seed=1)
    sd = m.state_dict()
    names = ["conv1", "layer1.0.relu1", "layer1.0.conv2", "layer2.0.add"]
    idx = plot._pick_nodes(m, names, "t")
    acts = plot._activations(m, x, idx)
    assert [a.shape for a in acts] == [(16, 16, 16), (16, 16, 16), (16, 16, 16), (32, 8, 8)]
    np.testing.assert_allclose(acts[0], _conv_ref(x[0], sd["conv1.weight"], None),
                               rtol=1e-4, atol=1e-4)
    # layer1.0.conv2 applied (numpy) to layer1.0.relu1's maps gives layer1.0.conv2's maps
    np.testing.assert_allclose(acts[2], _conv_ref(acts[1], sd["layer1.0.conv2.weight"], None),
                               rtol=1e-4, atol=1e-4)
    # the last node's maps are the model's own output
    last = plot._activations(m, x, [len(m._nodes) - 1])[0]
    np.testing.assert_allclose(last, m.forward(x, training=False)[0], rtol=1e-5, atol=1e-5)
    before = {k: v.copy() for k, v in sd.items()}
    out = plot.feature_maps(m, x[0], tmp_path / "fm.png", layers=names)
    assert (tmp_path / "fm.png").stat().st_size > 3000 and out.endswith("fm.png")
    plot.feature_maps(m, x[0], tmp_path / "all.png")  # every Conv2d
    plot.conv_filters(m, tmp_path / "f.png", layer="layer1.0.conv1")
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match="no layer named 'layer9.conv'"):
        plot.feature_maps(m, x[0], tmp_path / "x.png", layers=["layer9.conv"])
    with pytest.raises(ValueError, match=r"fc \(Linear\) gives \(10,\) per sample"):
        plot.feature_maps(m, x[0], tmp_path / "x.png", layers=["fc"])
    with pytest.raises(ValueError, match="is a BatchNorm2d, not a Conv2d"):
        plot.conv_filters(m, tmp_path / "x.png", layer="bn1")
