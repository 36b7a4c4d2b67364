"""Graph models (ck.Model, ck.Input, Add, Concat, Residual, nested Sequential): forward and
backward against PyTorch, gradients summed where a value fans out, torchvision's ResNet-18
names and numerics, save/load and Trainer round trips, bad graphs rejected with names."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import io

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hardening_support import fake_mnist  # noqa: E402, F401


def _torch():
    return pytest.importorskip("torch")


def issue_example():
    inp = ck.Input((3, 32, 32))
    x = ck.ReLU()(ck.BatchNorm2d(16, name="bn1")(
        ck.Conv2d(3, 16, 3, padding=1, bias=False, name="conv1")(inp)))
    y = ck.Conv2d(16, 16, 3, padding=1)(x)
    x = ck.Add()([x, y])
    out = ck.Linear(16, 10)(ck.Flatten()(ck.AdaptiveAvgPool2d(1)(x)))
    return ck.Model(inp, out)


def test_the_functional_example_builds_names_and_trains(rng):
    ck.manual_seed(0)
    model = issue_example()
    assert list(model.state_dict())[:5] == ["conv1.weight", "bn1.weight", "bn1.bias",
                                            "bn1.running_mean", "bn1.running_var"]
    text = model.summary(print_fn=None)
    assert "Inputs" in text and "relu, conv2d" in text and "Activation memory" in text
    x = rng.random((16, 3, 32, 32), dtype=np.float32)
    y = np.arange(16) % 10
    t = ck.Trainer(model, optimizer=ck.optim.Adam(lr=1e-2), device="cpu", seed=0)
    h = t.fit(x, y, epochs=4, batch_size=8, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    p = t.predict(x)
    assert p.shape == (16, 10) and np.allclose(p.sum(1), 1, atol=1e-5)


def _copy_to_torch(model, tmod):
    sd = {k: _torch().tensor(v) for k, v in model.state_dict().items()}
    missing, unexpected = tmod.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)


def _check_fwd_bwd(model, tmod, x, training, rtol=1e-4, atol=1e-5):
    t = _torch()
    tmod.train(training)
    tx = t.tensor(x, requires_grad=True)
    ty = tmod(tx)
    y = model.forward(x, training=training)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    if not training:
        return
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    model.zero_grad()
    dx = model.backward(dy)
    ty.backward(t.tensor(dy))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol)
    grads = model.grad_dict()
    for k, p in tmod.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=rtol, atol=atol, err_msg=k)


def test_fan_out_add_and_concat_match_torch(rng):
    t = _torch()
    ck.manual_seed(3)
    inp = ck.Input((2, 6, 6))
    a = ck.Conv2d(2, 3, 3, padding=1, name="a")(inp)
    r = ck.ReLU(name="r")(a)                 # r feeds three nodes
    b = ck.Conv2d(3, 3, 1, name="b")(r)
    s = ck.Add(name="s")([r, b, r])          # the same value twice in one node
    c = ck.Concat(dim=1, name="c")([s, r])
    out = ck.Linear(6 * 36, 4, name="fc")(ck.Flatten(name="f")(c))
    model = ck.Model(inp, out)

    class T(t.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = t.nn.Conv2d(2, 3, 3, padding=1), t.nn.Conv2d(3, 3, 1)
            self.fc = t.nn.Linear(6 * 36, 4)

        def forward(self, x):
            r = t.relu(self.a(x))
            s = r + self.b(r) + r
            return self.fc(t.cat([s, r], 1).flatten(1))

    tm = T()
    _copy_to_torch(model, tm)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    _check_fwd_bwd(model, tm, x, training=True)


def test_shared_gradient_buffers_with_a_long_skip_match_torch(rng):
    # Gradient buffers are shared between values whose gradients are never live together: a
    # value feeding a node far ahead (r) keeps its gradient across the whole chain between.
    t = _torch()
    ck.manual_seed(4)
    inp = ck.Input((2, 5, 5))
    r = ck.ReLU(name="r")(ck.Conv2d(2, 3, 3, padding=1, name="a")(inp))
    h = r
    for i in range(4):
        h = ck.ReLU(name=f"q{i}")(ck.Conv2d(3, 3, 3, padding=1, name=f"c{i}")(h))
    s = ck.Add(name="s")([r, h])
    c = ck.Concat(dim=1, name="cat")([s, r, h])
    out = ck.Linear(9 * 25, 4, name="fc")(ck.Flatten(name="f")(c))
    model = ck.Model(inp, out)

    class T(t.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = t.nn.Conv2d(2, 3, 3, padding=1)
            for i in range(4):
                setattr(self, f"c{i}", t.nn.Conv2d(3, 3, 3, padding=1))
            self.fc = t.nn.Linear(9 * 25, 4)

        def forward(self, x):
            r = t.relu(self.a(x))
            h = r
            for i in range(4):
                h = t.relu(getattr(self, f"c{i}")(h))
            return self.fc(t.cat([r + h, r, h], 1).flatten(1))

    tm = T()
    _copy_to_torch(model, tm)
    for n in (3, 5, 2):  # other batch sizes re-plan the buffers
        x = rng.standard_normal((n, 2, 5, 5)).astype(np.float32)
        model.zero_grad()
        tm.zero_grad()
        _check_fwd_bwd(model, tm, x, training=True)


def _torch_resnet18(num_classes):
    t = _torch()
    nn = t.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            out = t.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return t.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):  # torchvision's resnet18, written out (module paths alike)
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, layers = 64, []
            for s, cout in enumerate([64, 128, 256, 512]):
                layers.append(nn.Sequential(Block(cin, cout, 1 if s == 0 else 2),
                                            Block(cout, cout, 1)))
                cin = cout
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(t.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(t.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return ResNet18()


def test_resnet18_matches_a_hand_built_torchvision_resnet18(rng):
    t = _torch()
    t.manual_seed(0)
    tm = _torch_resnet18(10)
    model = ck.models.resnet18(num_classes=10)
    tsd = tm.state_dict()
    ours = model.state_dict()
    assert [k for k in tsd if not k.endswith("num_batches_tracked")] == list(ours)
    assert all(tuple(tsd[k].shape) == ours[k].shape for k in ours)
    assert model.num_parameters() == sum(p.numel() for p in tm.parameters())
    model.load_state_dict(tsd)  # torch's state_dict loads as is
    with t.no_grad():  # non-trivial running statistics
        for m in tm.modules():
            if isinstance(m, t.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.load_state_dict(tm.state_dict())
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    _check_fwd_bwd(model, tm, x, training=False, rtol=1e-3, atol=1e-4)
    _check_fwd_bwd(model, tm, x, training=True, rtol=2e-3, atol=2e-4)


def test_resnet20_shape_parameters_and_round_trip(tmp_path, rng):
    ck.manual_seed(0)
    m = ck.models.resnet20()
    assert 0.26e6 < m.num_parameters() < 0.28e6
    x = rng.random((4, 3, 32, 32), dtype=np.float32)
    t = ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.05, momentum=0.9), device="cpu", seed=1)
    t.fit(x, np.arange(4) % 10, epochs=1, batch_size=4, verbose=0)
    y = m.forward(x)
    ck.save(m, tmp_path / "r20.cnnkit")
    back = ck.load(tmp_path / "r20.cnnkit")
    assert isinstance(back, ck.Model) and back.get_config() == m.get_config()
    np.testing.assert_array_equal(back.forward(x), y)
    assert io.read(tmp_path / "r20.cnnkit").meta["architecture"]["nodes"][0]["name"] == "conv1"


def test_graph_checkpoint_resumes_bit_identically(tmp_path, rng):
    x = rng.random((12, 3, 8, 8), dtype=np.float32)
    y = np.arange(12) % 3

    def make():
        ck.manual_seed(5)
        inp = ck.Input((3, 8, 8))
        h = ck.ReLU()(ck.BatchNorm2d(4)(ck.Conv2d(3, 4, 3, padding=1)(inp)))
        h = ck.Add()([h, ck.Conv2d(4, 4, 3, padding=1)(h)])
        h = ck.Dropout(0.2)(ck.Flatten()(ck.AdaptiveAvgPool2d(2)(h)))
        return ck.Model(inp, ck.Linear(16, 3)(h))

    full = ck.Trainer(make(), optimizer="adam", device="cpu", seed=2)
    full.fit(x, y, epochs=4, batch_size=4, verbose=0)
    part = ck.Trainer(make(), optimizer="adam", device="cpu", seed=2)
    part.fit(x, y, epochs=2, batch_size=4, verbose=0)
    ck.save(part, tmp_path / "ck.cnnkit")
    resumed = ck.load(tmp_path / "ck.cnnkit", device="cpu")
    resumed.fit(x, y, epochs=4, batch_size=4, verbose=0)
    for k, v in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)


def test_graph_training_is_the_same_at_any_thread_count(rng):
    x = rng.random((8, 3, 16, 16), dtype=np.float32)
    out = []
    for n in (1, 2):
        ck.set_num_threads(n)
        ck.manual_seed(0)
        m = ck.models.resnet20()
        ck.Trainer(m, optimizer="sgd", device="cpu").fit(x, np.arange(8) % 10, epochs=1,
                                                          batch_size=4, verbose=0)
        out.append(m.state_dict())
    ck.set_num_threads(2)
    for k in out[0]:
        np.testing.assert_array_equal(out[0][k], out[1][k], err_msg=k)


def test_nested_sequential_and_residual_take_torch_names(rng):
    t = _torch()
    ck.manual_seed(1)
    m = ck.Sequential([
        ck.Conv2d(1, 2, 3), ck.Sequential([ck.ReLU(), ck.Conv2d(2, 2, 1)]),
        ck.Residual(ck.Sequential([ck.Conv2d(2, 2, 3, padding=1), ck.ReLU()])),
        ck.Flatten(), ck.Linear(2 * 4 * 4, 3),
    ])
    assert list(m.state_dict()) == ["0.weight", "0.bias", "1.1.weight", "1.1.bias",
                                    "2.block.0.weight", "2.block.0.bias", "4.weight", "4.bias"]
    tm = t.nn.Sequential(t.nn.Conv2d(1, 2, 3),
                         t.nn.Sequential(t.nn.ReLU(), t.nn.Conv2d(2, 2, 1)))
    sd = {k: v for k, v in m.state_dict().items() if k[0] in "01"}
    tm.load_state_dict({k: t.tensor(v) for k, v in sd.items()})
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    inner = ck.Sequential([ck.Conv2d(1, 2, 3), ck.Sequential([ck.ReLU(), ck.Conv2d(2, 2, 1)])])
    inner.load_state_dict(sd)
    np.testing.assert_allclose(inner.forward(x), tm(t.tensor(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    # a residual adds its block's output to its input
    y0 = m.forward(x)
    assert y0.shape == (2, 3)


def test_eval_memory_is_planned_from_liveness(rng):
    m = ck.models.resnet20()
    x = rng.random((2, 3, 32, 32), dtype=np.float32)
    m.forward(x, training=True)
    train_bytes = m._net.activation_bytes()
    m.forward(x, training=False)
    assert m._net.activation_bytes() < train_bytes / 4
    # the reused buffers give the same outputs as a forward that kept every value
    ys = [m.forward(x, training=False) for _ in range(2)]
    np.testing.assert_array_equal(ys[0], ys[1])


@pytest.mark.parametrize("build,match", [
    (lambda i: ck.Add()([ck.Conv2d(1, 2, 3)(i), ck.Conv2d(1, 3, 3)(i)]),
     r"Add.*same shape.*\(1, 2, 4, 4\).*\(1, 3, 4, 4\)"),
    (lambda i: ck.Concat()([ck.Conv2d(1, 2, 3)(i), ck.Conv2d(1, 2, 1)(i)]),
     r"Concat.*agree on all but dim 1"),
    (lambda i: ck.Linear(5, 2)(ck.Flatten()(i)), r"Linear.*expected input of shape \(N, 5\)"),
    (lambda i: ck.ReLU()([i, i]), r"ReLU: takes one input, got 2"),
])
def test_bad_graphs_are_refused_with_the_layer_and_shapes(build, match):
    with pytest.raises(ValueError, match=match):
        build(ck.Input((1, 6, 6)))


def test_the_same_layer_twice_in_a_graph_is_refused():
    inp = ck.Input((4,))
    lin = ck.Linear(4, 4)
    with pytest.raises(ValueError, match="same Linear object is applied twice"):
        ck.Model(inp, lin(lin(inp)))


def test_backward_after_an_eval_forward_of_a_graph_is_a_clear_error(rng):
    m = issue_example()
    m.forward(rng.random((2, 3, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="eval mode"):
        m.backward(np.ones((2, 10), np.float32))


def test_graph_files_are_checked_like_stacks(tmp_path):
    m = issue_example()
    ck.save(m, tmp_path / "g.cnnkit")
    ckpt = io.read(tmp_path / "g.cnnkit")
    arch = ckpt.meta["architecture"]
    tensors = {k[len("model/"):]: v for k, v in ckpt.tensors.items()}
    for bad, match in [
        ({"nodes": [{**arch["nodes"][0], "inputs": [3]}] + arch["nodes"][1:]}, "inputs"),
        ({"nodes": arch["nodes"][:-1]}, "never used|missing|unexpected"),
        ({"nodes": [{**n, "name": "x"} for n in arch["nodes"]]}, "unique"),
    ]:
        io._write_file(tmp_path / "bad.cnnkit", "model",
                       {**ckpt.meta, "architecture": bad},
                       {"model/" + k: v for k, v in tensors.items()})
        with pytest.raises(io.CheckpointError, match=match):
            ck.load(tmp_path / "bad.cnnkit")


def test_cli_trains_evaluates_and_resumes_resnet20(fake_mnist, tmp_path):  # noqa: F811
    from cnnkit import cli

    out = tmp_path / "run"
    common = ["--data-dir", str(fake_mnist), "--device", "cpu"]
    assert cli.main(["train", "--model", "resnet20", "--epochs", "1", "--val-size", "16",
                     "--batch-size", "32", "--out", str(out), "--verbose", "0", *common]) == 0
    model = ck.load(out / "model.cnnkit")
    assert isinstance(model, ck.Model) and "layer3.2.conv2.weight" in model.state_dict()
    assert cli.main(["evaluate", str(out / "model.cnnkit"), *common]) == 0
    assert cli.main(["train", "--resume", str(out / "checkpoint.cnnkit"), "--epochs", "2",
                     "--val-size", "16", "--batch-size", "32", "--out", str(out), "--verbose", "0",
                     *common]) == 0
    assert ck.load(out / "checkpoint.cnnkit", device="cpu").epoch == 2


@pytest.mark.parametrize("k,d", [(3, 1), (5, 2), ((3, 5), (2, 1)), (1, 1)])
def test_conv_padding_same_and_valid_match_torch(k, d, rng):
    t = _torch()
    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)
    for mode in ("same", "valid"):
        ck.manual_seed(0)
        ours = ck.Conv2d(3, 4, k, padding=mode, dilation=d)
        theirs = t.nn.Conv2d(3, 4, k, padding=mode, dilation=d)
        sd = ours.state_dict()
        theirs.load_state_dict({"weight": t.tensor(sd["0.weight"]),
                                "bias": t.tensor(sd["0.bias"])})
        np.testing.assert_allclose(ours.forward(x), theirs(t.tensor(x)).detach().numpy(),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw,match", [
    ({"kernel_size": 2, "padding": "same"}, "uneven padding"),
    ({"kernel_size": 3, "stride": 2, "padding": "same"}, "needs stride 1"),
    ({"kernel_size": 3, "padding": "full"}, "one of 'same', 'valid', got 'full'"),
])
def test_conv_padding_strings_refused_where_torch_differs(kw, match):
    with pytest.raises(ValueError, match=match):
        ck.Conv2d(3, 4, **kw)
