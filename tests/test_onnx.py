"""ONNX export and import (cnnkit.onnx): every layer type on random configurations exported,
checked with onnx.checker (full_check) and run by onnxruntime against cnnkit's forward; the
ready-made models; export -> import round trips (predictions and state_dict identical);
PyTorch's own torch.onnx.export files imported; clear errors for what cannot be mapped;
external data outside the model's folder refused; the CLI's export and .onnx models."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck

onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'cnnkit[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'cnnkit[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_graph import _torch_resnet18  # noqa: E402
from test_hardening_support import fake_mnist  # noqa: E402, F401

# |onnxruntime - cnnkit| <= ATOL * scale + RTOL * |cnnkit| (float32, different summation orders)
ATOL, RTOL = 2e-5, 1e-4


def _session(proto, threads: int = 1):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _close(a, b, what: str, scale: float = 1.0) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    err = np.abs(a - b) - (ATOL * scale + RTOL * np.abs(b))
    assert err.max(initial=-1) <= 0, f"{what}: max error {np.abs(a - b).max():.3g}"


def _randomize_stats(model, rng) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (export must carry them)."""
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        if k.endswith("running_mean"):
            new[k] = rng.uniform(-0.3, 0.3, v.shape)
        elif k.endswith("running_var"):
            new[k] = rng.uniform(0.5, 2.0, v.shape)
        elif k.endswith(".weight") and v.ndim == 1:
            new[k] = rng.uniform(0.5, 1.5, v.shape)
        elif k.endswith(".bias"):
            new[k] = rng.uniform(-0.2, 0.2, v.shape)
    model.load_state_dict(new, strict=False)


def _node_configs(model):
    return [(layer.type, layer.get_config(), name, list(ins)) for layer, name, ins in
            zip(model._nodes, model._names, model._inputs, strict=True)]


def check_export(model, shape, rng, tmp_path, opset=ck.onnx.DEFAULT_OPSET, scale=1.0,
                 x=None, batch=3):
    """Export -> full check -> onnxruntime matches forward (batch 1 and `batch`) -> import
    gives identical predictions, state_dict and layers. Returns the proto."""
    path = tmp_path / "m.onnx"
    ck.onnx.export(model, path, input_shape=shape, opset=opset)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    sess = _session(proto)
    x = rng.standard_normal((batch, *shape)).astype(np.float32) if x is None else x
    want = model.forward(x)
    for xb, wb in ((x[:1], want[:1]), (x, want)):
        _close(sess.run(None, {"input": xb})[0], wb, f"onnxruntime vs cnnkit, opset {opset}",
               scale)
    back = ck.onnx.load(path)
    assert isinstance(back, ck.Model)
    np.testing.assert_array_equal(back.forward(x), want)
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    a, b = model.state_dict(), back.state_dict()
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _node_configs(back) == _node_configs(model)
    return proto


def _seq(*layers):
    return ck.Sequential(list(layers))


# ---- every layer type, random configurations ---------------------------------------------


def _conv_case(rng):
    g = int(rng.choice([1, 1, 2, 3]))
    cin, cout = g * int(rng.integers(1, 4)), g * int(rng.integers(1, 4))
    k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    s = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    pad = rng.choice(["int", "pair", "same", "valid"])
    if pad == "same" and all(kk % 2 for kk in k):
        s, p = (1, 1), "same"
    else:
        p = {"int": int(rng.integers(0, 3)), "pair": (int(rng.integers(0, 3)),
                                                     int(rng.integers(0, 2))),
             "same": 1, "valid": "valid"}[pad]
    layer = ck.Conv2d(cin, cout, k, s, p, d, g, bias=bool(rng.integers(0, 2)))
    return _seq(layer), (cin, int(rng.integers(7, 12)), int(rng.integers(7, 12)))


def _pool_case(rng, avg: bool):
    k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
    kw = dict(stride=s, padding=p, ceil_mode=bool(rng.integers(0, 2)))
    if avg:
        kw["count_include_pad"] = bool(rng.integers(0, 2))
    layer = (ck.AvgPool2d if avg else ck.MaxPool2d)(k, **kw)
    return _seq(layer), (2, int(rng.integers(k[0], 12)), int(rng.integers(k[1], 12)))


@pytest.mark.parametrize("i", range(8))
def test_conv2d_random_configurations(i, rng, tmp_path):
    for _ in range(3):
        model, shape = _conv_case(rng)
        check_export(model, shape, rng, tmp_path)


@pytest.mark.parametrize("avg", [False, True], ids=["max", "avg"])
def test_pooling_random_configurations_with_ceil_mode_and_padding(avg, rng, tmp_path):
    exported = 0
    for _ in range(24):
        model, shape = _pool_case(rng, avg)
        try:
            proto = check_export(model, shape, rng, tmp_path)
        except ck.onnx.OnnxExportError as e:  # the one refused case (about 2% of them)
            assert avg and "one ceil_mode for both" in str(e), e
            continue
        assert proto.graph.node[0].op_type == ("AveragePool" if avg else "MaxPool")
        exported += 1
    assert exported >= 20


ACTIVATIONS = [
    lambda r: ck.ReLU(), lambda r: ck.LeakyReLU(float(r.uniform(0.01, 0.5))),
    lambda r: ck.Sigmoid(), lambda r: ck.Tanh(), lambda r: ck.ELU(float(r.uniform(0.2, 2.0))),
    lambda r: ck.SiLU(), lambda r: ck.GELU(), lambda r: ck.GELU("tanh"), lambda r: ck.ReLU6(),
    lambda r: ck.Hardswish(), lambda r: ck.Identity(), lambda r: ck.Softmax(1),
    lambda r: ck.Softmax(-1), lambda r: ck.Softmax(2),
]


@pytest.mark.parametrize("opset", [11, 13, 17, 20, 21])
def test_activations_on_every_opset(opset, rng, tmp_path):
    for make in ACTIVATIONS:
        layer = make(rng)
        if opset < 13 and layer.type == "Softmax" and layer.get_config()["dim"] != -1:
            with pytest.raises(ck.onnx.OnnxExportError, match="Softmax.*opset >= 13"):
                ck.onnx.export(_seq(layer), tmp_path / "s.onnx", (2, 3, 4), opset=opset)
            continue
        x = (rng.standard_normal((3, 2, 3, 4)) * 4).astype(np.float32)
        check_export(_seq(layer), (2, 3, 4), rng, tmp_path, opset=opset, x=x)


def test_linear_flatten_dropout_batchnorm1d(rng, tmp_path):
    for opset in (11, 17):
        for bias in (True, False):
            model = _seq(ck.Flatten(), ck.Linear(24, 7, bias=bias), ck.BatchNorm1d(7),
                         ck.Dropout(0.3), ck.ReLU(), ck.Linear(7, 5))
            _randomize_stats(model, rng)
            check_export(model, (2, 3, 4), rng, tmp_path, opset=opset)
    model = _seq(ck.BatchNorm1d(4, eps=1e-3, momentum=0.2), ck.Softmax(1))  # (N, C, L)
    _randomize_stats(model, rng)
    check_export(model, (4, 6), rng, tmp_path)


def test_batchnorm2d_affine_or_not_and_dropout2d(rng, tmp_path):
    for affine in (True, False):
        bn = ck.BatchNorm2d(3, eps=float(rng.uniform(1e-5, 1e-2)),
                            momentum=float(rng.uniform(0.01, 0.9)), affine=affine)
        model = _seq(ck.Conv2d(2, 3, 3, padding=1), bn, ck.Dropout2d(0.2), ck.ReLU())
        _randomize_stats(model, rng)
        proto = check_export(model, (2, 5, 5), rng, tmp_path)
        bn_node = proto.graph.node[1]
        assert bn_node.op_type == "BatchNormalization"
        mom = [a.f for a in bn_node.attribute if a.name == "momentum"][0]
        assert abs(mom - (1 - bn.get_config()["momentum"])) < 1e-6  # ONNX's convention


def test_adaptive_pools_as_global_or_exact_pools(rng, tmp_path):
    for cls, out, shape, op in [
        (ck.AdaptiveAvgPool2d, 1, (3, 7, 5), "GlobalAveragePool"),
        (ck.AdaptiveMaxPool2d, 1, (3, 7, 5), "GlobalMaxPool"),
        (ck.AdaptiveAvgPool2d, (2, 3), (3, 8, 9), "AveragePool"),
        (ck.AdaptiveMaxPool2d, (None, 2), (3, 6, 4), "MaxPool"),
        (ck.AdaptiveAvgPool2d, (4, 4), (2, 4, 4), "AveragePool"),
    ]:
        proto = check_export(_seq(cls(out)), shape, rng, tmp_path)
        assert proto.graph.node[0].op_type == op


def test_upsample_size_and_scale_factor(rng, tmp_path):
    for opset in (11, 13, 17, 19):
        for kw, shape in [({"scale_factor": 2.0}, (2, 3, 4)), ({"scale_factor": 3.0}, (1, 2, 5)),
                          ({"scale_factor": 1.5}, (2, 4, 6)), ({"scale_factor": 2.5}, (1, 4, 2)),
                          ({"size": (7, 9)}, (2, 3, 4)), ({"size": (5, 3)}, (1, 5, 3)),
                          ({"size": (int(rng.integers(1, 12)), int(rng.integers(1, 12)))},
                           (2, int(rng.integers(1, 8)), int(rng.integers(1, 8))))]:
            check_export(_seq(ck.Upsample(**kw)), shape, rng, tmp_path, opset=opset)


@pytest.mark.skipif("bilinear" not in str(ck.layers.schemas()["Upsample"]),
                    reason="no bilinear Upsample yet")
def test_upsample_bilinear(rng, tmp_path):
    for opset in (11, 17):
        for kw, shape in [({"scale_factor": 2.0}, (2, 3, 4)), ({"scale_factor": 1.5}, (1, 4, 6)),
                          ({"size": (7, 9)}, (2, 3, 4)), ({"size": (2, 3)}, (1, 5, 6))]:
            for ac in (None, True):
                check_export(_seq(ck.Upsample(mode="bilinear", align_corners=ac, **kw)), shape,
                             rng, tmp_path, opset=opset)


def test_add_concat_and_fan_out_graphs(rng, tmp_path):
    inp = ck.Input((3, 6, 6))
    a = ck.Conv2d(3, 4, 3, padding=1, name="a")(inp)
    b = ck.ReLU(name="b")(a)
    c = ck.Conv2d(4, 4, 1, name="c")(b)
    s2 = ck.Add(name="sum2")([a, c])
    s3 = ck.Add(name="sum3")([a, b, c])  # three inputs: ONNX Sum
    cat = ck.Concat(dim=1, name="cat")([s2, s3, inp])
    cat2 = ck.Concat(dim=3, name="cat_w")([cat, cat])
    out = ck.Linear(11 * 6 * 12, 5, name="fc")(ck.Flatten(name="flat")(cat2))
    proto = check_export(ck.Model(inp, out), (3, 6, 6), rng, tmp_path)
    assert {"Sum", "Add", "Concat"} <= {n.op_type for n in proto.graph.node}


@pytest.mark.skipif(not hasattr(ck, "ConvTranspose2d"), reason="no ConvTranspose2d layer yet")
def test_conv_transpose2d_random_configurations(rng, tmp_path):
    for _ in range(8):
        g = int(rng.choice([1, 2]))
        st = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
        d = (int(rng.integers(1, 3)), 1)
        op = tuple(int(rng.integers(0, max(a, b))) for a, b in zip(st, d, strict=True))
        layer = ck.ConvTranspose2d(2 * g, g * int(rng.integers(1, 3)), int(rng.integers(1, 4)),
                                   stride=st, padding=int(rng.integers(0, 2)),
                                   output_padding=op, groups=g, bias=bool(rng.integers(0, 2)),
                                   dilation=d)
        try:
            proto = check_export(_seq(layer), (2 * g, 5, 6), rng, tmp_path)
        except ValueError as e:  # a padding larger than the output: refused by the layer
            assert "ConvTranspose2d" in str(e), e
            continue
        assert proto.graph.node[0].op_type == "ConvTranspose"


@pytest.mark.skipif(not hasattr(ck, "ConvTranspose2d"), reason="no ConvTranspose2d layer yet")
def test_torch_exported_conv_transpose2d_imports(rng, tmp_path):
    t = pytest.importorskip("torch")
    t.manual_seed(0)
    tm = t.nn.Sequential(t.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                                              groups=2), t.nn.ReLU()).eval()
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    _torch_export(tm, x[:1], tmp_path / "ct.onnx")
    model = ck.onnx.load(tmp_path / "ct.onnx")
    with t.no_grad():
        _close(model.forward(x), tm(t.from_numpy(x)).numpy(), "imported ConvTranspose2d")
    assert model._nodes[0].type == "ConvTranspose2d"


# ---- the ready-made models -------------------------------------------------------------------


@pytest.mark.parametrize("name,shape,scale", [
    ("lenet5", (1, 28, 28), 1), ("fashion_cnn", (1, 28, 28), 1), ("resnet20", (3, 32, 32), 4),
    ("resnet18", (3, 64, 64), 10)])
def test_models_match_onnxruntime_and_round_trip(name, shape, scale, rng, tmp_path):
    ck.manual_seed(1)
    model = ck.models.MODELS[name]() if name != "resnet18" else ck.models.resnet18(10)
    _randomize_stats(model, rng)
    x = rng.random((2, *shape)).astype(np.float32)
    check_export(model, shape, rng, tmp_path, scale=scale, x=x)


def test_export_to_proto_defaults_and_ir_version(rng):
    model = ck.models.resnet20()  # knows its input (3, 32, 32)
    proto = ck.onnx.to_proto(model)
    assert proto.ir_version == helper.find_min_ir_version_for(list(proto.opset_import))
    assert proto.ir_version <= onnx.IR_VERSION
    names = {t.name for t in proto.graph.initializer}
    assert set(model.state_dict()) <= names  # initializers are the state_dict keys
    dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", 10]


# ---- PyTorch's own exporter ------------------------------------------------------------------


def _torch_export(tm, x, path, dynamic=True, **kw):
    t = pytest.importorskip("torch")
    axes = {"dynamic_axes": {"x": {0: "batch"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        t.onnx.export(tm, (t.from_numpy(x),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], **axes, **kw)


def _torch_lenet(view: bool):
    t = pytest.importorskip("torch")
    nn = t.nn

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(),
                                          nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                                          nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                                            nn.ReLU(), nn.Linear(84, 10))

        def forward(self, x):
            x = self.features(x)
            x = x.view(x.size(0), -1) if view else t.flatten(x, 1)
            return self.classifier(x)

    return LeNet().eval()


@pytest.mark.parametrize("view,dynamic", [(False, True), (True, True), (True, False)],
                         ids=["flatten", "view", "view-fixed-batch"])
def test_torch_exported_lenet5_imports_and_matches_torch(view, dynamic, rng, tmp_path):
    t = pytest.importorskip("torch")
    t.manual_seed(0)
    tm = _torch_lenet(view)
    x = rng.random((4, 1, 28, 28)).astype(np.float32)
    _torch_export(tm, x[:1], tmp_path / "lenet.onnx", dynamic=dynamic)
    model = ck.onnx.load(tmp_path / "lenet.onnx")
    with t.no_grad():
        want = tm(t.from_numpy(x)).numpy()
    _close(model.forward(x), want, "imported torch LeNet-5 vs torch")
    assert list(model.state_dict()) == list(tm.state_dict())
    assert [layer.type for layer in model._nodes].count("Linear") == 3


@pytest.mark.parametrize("training", ["PRESERVE", "EVAL"])
def test_torch_exported_resnet18_imports_and_matches_torch(training, rng, tmp_path):
    t = pytest.importorskip("torch")
    t.manual_seed(0)
    tm = _torch_resnet18(10)
    with t.no_grad():
        for m in tm.modules():
            if isinstance(m, t.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    tm.eval()
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    _torch_export(tm, x[:1], tmp_path / "r18.onnx",
                  training=getattr(t.onnx.TrainingMode, training),
                  do_constant_folding=training == "EVAL")
    model = ck.onnx.load(tmp_path / "r18.onnx")
    with t.no_grad():
        want = tm(t.from_numpy(x)).numpy()
    _close(model.forward(x), want, "imported torch ResNet-18 vs torch", scale=10)
    if training == "PRESERVE":  # Conv + BatchNorm stay two trainable layers, torch's names
        tsd = {k: v for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
        assert list(model.state_dict()) == list(tsd)
        assert [n.type for n in model._nodes].count("BatchNorm2d") == 20
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, tsd[k].numpy(), err_msg=k)


def _torch_many_layers():
    t = pytest.importorskip("torch")
    nn = t.nn

    class Net(nn.Module):  # most layer types, in the forms torch.onnx.export writes them
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
            self.up = nn.Upsample(scale_factor=2)
            self.pool = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
            self.mp = nn.MaxPool2d(2, ceil_mode=True)
            self.acts = nn.Sequential(nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.LeakyReLU(0.1),
                                      nn.ELU(0.7), nn.ReLU6(), nn.Tanh(), nn.Sigmoid(),
                                      nn.GELU(approximate="tanh"))
            self.ap, self.fc = nn.AdaptiveAvgPool2d(2), nn.Linear(16 * 4, 10)
            self.bn1, self.drop, self.sm = nn.BatchNorm1d(10), nn.Dropout(0.3), nn.Softmax(1)

        def forward(self, x):
            a = t.relu(self.bn(self.c1(x)))
            y = self.acts(self.up(t.cat([a, self.c2(a)], 1)))
            y = self.ap(self.mp(self.pool(y)))
            return self.sm(self.drop(self.bn1(self.fc(y.view(y.size(0), -1)))))

    return Net()


@pytest.mark.parametrize("opset", [11, 14, 18, 21])
def test_torch_exported_layer_zoo_imports_on_every_opset(opset, rng, tmp_path):
    t = pytest.importorskip("torch")
    t.manual_seed(opset)
    tm = _torch_many_layers()
    with t.no_grad():
        for m in tm.modules():
            if isinstance(m, (t.nn.BatchNorm2d, t.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    tm.eval()
    x = rng.standard_normal((3, 3, 7, 7)).astype(np.float32)
    path = tmp_path / "zoo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.onnx.export(tm, (t.from_numpy(x[:1]),), str(path), dynamo=False, opset_version=opset,
                      input_names=["x"], dynamic_axes={"x": {0: "b"}}, do_constant_folding=False,
                      training=t.onnx.TrainingMode.PRESERVE)
    model = ck.onnx.load(path)
    with t.no_grad():
        want = tm(t.from_numpy(x)).numpy()
    _close(model.forward(x), want, f"imported torch layer zoo (opset {opset}) vs torch")
    types = {layer.type for layer in model._nodes}
    assert {"GELU", "SiLU", "Hardswish", "ReLU6", "Upsample", "Concat", "BatchNorm1d",
            "AvgPool2d", "Softmax", "Flatten"} <= types  # (an eval export drops Dropout)
    assert [layer.get_config()["approximate"] for layer in model._nodes
            if layer.type == "GELU"] == ["none", "tanh"]


def test_imported_model_trains_saves_and_loads(rng, tmp_path):
    ck.manual_seed(0)
    ck.onnx.export(ck.models.fashion_cnn(), tmp_path / "f.onnx", (1, 28, 28))
    model = ck.onnx.load(tmp_path / "f.onnx")
    x = rng.random((32, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    before = model.state_dict()["0.weight"].copy()
    tr = ck.Trainer(model, loss="cross_entropy", optimizer=ck.optim.SGD(lr=0.1))
    tr.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not np.array_equal(model.state_dict()["0.weight"], before)
    ck.save(model, tmp_path / "f.cnnkit")
    again = ck.load(tmp_path / "f.cnnkit")
    np.testing.assert_array_equal(again.forward(x), model.forward(x))


# ---- errors ----------------------------------------------------------------------------------


def _tiny_graph(nodes, inits=(), opset=17, in_shape=(1, 2, 4, 4)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", *in_shape[1:]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _write(tmp_path, proto, name="m.onnx"):
    p = tmp_path / name
    p.write_bytes(proto.SerializeToString())
    return p


def test_unsupported_operators_are_listed(tmp_path):
    m = _tiny_graph([helper.make_node("Sin", ["x"], ["a"], name="s1"),
                     helper.make_node("Cos", ["a"], ["b"], name="c1"),
                     helper.make_node("Sin", ["b"], ["y"], name="s2")])
    with pytest.raises(ck.onnx.OnnxImportError, match=r"unsupported operators: Cos \(1 node.*"
                                                      r"Sin \(2 nodes"):
        ck.onnx.load(_write(tmp_path, m))


def test_unsupported_opset_is_refused(tmp_path):
    m = _tiny_graph([helper.make_node("Relu", ["x"], ["y"])], opset=9)
    with pytest.raises(ck.onnx.OnnxImportError, match="opset 9 is not supported.*11-21"):
        ck.onnx.load(_write(tmp_path, m))


def test_unsupported_attributes_are_listed(tmp_path):
    m = _tiny_graph([
        helper.make_node("MaxPool", ["x"], ["a"], name="pool", kernel_shape=[2, 2],
                         dilations=[2, 2]),
        helper.make_node("BatchNormalization", ["a", "s", "b", "m", "v"], ["c"], name="bn",
                         training_mode=1),
        helper.make_node("Resize", ["c", "", "sc"], ["y"], name="up", mode="cubic")],
        [numpy_helper.from_array(np.ones(2, np.float32), n) for n in "sbmv"]
        + [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")])
    with pytest.raises(ck.onnx.OnnxImportError) as e:
        ck.onnx.load(_write(tmp_path, m))
    msg = str(e.value)
    for part in ("'pool'", "dilations", "'bn'", "training_mode", "'up'", "mode='cubic'"):
        assert part in msg, msg


def test_shape_dependent_refusals_name_the_node(tmp_path):
    w = numpy_helper.from_array(np.ones((3, 2, 3, 3), np.float32), "w")
    m = _tiny_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 0, 0, 0])],
                    [w])
    with pytest.raises(ck.onnx.OnnxImportError, match="'conv'.*not symmetric"):
        ck.onnx.load(_write(tmp_path, m))
    shape = numpy_helper.from_array(np.array([-1, 4, 8], np.int64), "shape")
    m = _tiny_graph([helper.make_node("Reshape", ["x", "shape"], ["y"], name="rs")], [shape])
    with pytest.raises(ck.onnx.OnnxImportError, match="'rs'.*not a flatten"):
        ck.onnx.load(_write(tmp_path, m))


def test_garbage_and_special_files_are_refused(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(ck.onnx.OnnxImportError, match="not an ONNX model"):
        ck.onnx.load(p)
    with pytest.raises(OSError):
        ck.onnx.load(tmp_path)  # a directory


def _external_model(tmp_path, location: str, data: np.ndarray):
    w = numpy_helper.from_array(data, "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(data.nbytes))):
        e = w.external_data.add()
        e.key, e.value = k, v
    return _tiny_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [w])


def test_external_data_inside_the_folder_loads_outside_is_refused(tmp_path):
    data = np.arange(2 * 2 * 1 * 1, dtype=np.float32).reshape(2, 2, 1, 1)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(data.tobytes())
    (tmp_path / "secret.bin").write_bytes(data.tobytes())
    ok = ck.onnx.load(_write(tmp_path / "model", _external_model(tmp_path, "w.bin", data)))
    np.testing.assert_array_equal(ok.state_dict()["conv.weight"], data)
    for loc in ("../secret.bin", str(tmp_path / "secret.bin"), "sub/../../secret.bin"):
        p = _write(tmp_path / "model", _external_model(tmp_path, loc, data), "evil.onnx")
        with pytest.raises(ck.onnx.OnnxImportError, match="refused"):
            ck.onnx.load(p)
    (tmp_path / "model" / "link.bin").symlink_to(tmp_path / "secret.bin")
    p = _write(tmp_path / "model", _external_model(tmp_path, "link.bin", data), "link.onnx")
    with pytest.raises(ck.onnx.OnnxImportError, match="outside the model's folder"):
        ck.onnx.load(p)


def test_layers_with_no_faithful_form_are_named(tmp_path):
    cases = [
        (_seq(ck.AdaptiveAvgPool2d(3)), (2, 8, 8), "AdaptiveAvgPool2d '0'.*does not divide"),
        (_seq(ck.BatchNorm2d(2, track_running_stats=False)), (2, 4, 4),
         "BatchNorm2d '0'.*track_running_stats"),
        (_seq(ck.Upsample(scale_factor=0.7)), (1, 10, 10), "Upsample '0'.*give the layer size"),
    ]
    for model, shape, match in cases:
        with pytest.raises(ck.onnx.OnnxExportError, match=match):
            ck.onnx.export(model, tmp_path / "x.onnx", shape)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match="input_shape"):
        ck.onnx.export(ck.models.lenet5(), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset"):
        ck.onnx.export(ck.models.lenet5(), tmp_path / "x.onnx", (1, 28, 28), opset=7)


def test_import_cnnkit_does_not_import_onnx_and_missing_onnx_is_a_clear_error():
    code = ("import sys, cnnkit as ck; ck.onnx; assert 'onnx' not in sys.modules; "
            "sys.modules['onnx'] = None\n"
            "try:\n    ck.onnx.to_proto(ck.models.lenet5(), (1, 28, 28))\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 'pip install "cnnkit[onnx]"' in out


# ---- command line ----------------------------------------------------------------------------


def test_cli_export_then_evaluate_predict_and_train_an_onnx_model(fake_mnist, tmp_path,  # noqa: F811
                                                                  capsys):
    from cnnkit import cli

    ck.manual_seed(0)
    model = ck.models.lenet5()
    model.forward(np.zeros((1, 1, 28, 28), np.float32))  # records the input shape
    ck.save(model, tmp_path / "m.cnnkit")
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(tmp_path / "m.cnnkit"), str(out), "--opset", "13"]) == 0
    assert onnx.load(str(out)).opset_import[0].version == 13
    assert cli.main(["export", str(tmp_path / "m.cnnkit"), str(out), "--input-shape", "1", "28",
                     "28"]) == 0
    images = tmp_path / "x.npy"
    x = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
    np.save(images, x)
    capsys.readouterr()
    assert cli.main(["predict", str(out), str(images), "--device", "cpu"]) == 0
    got = capsys.readouterr().out
    assert cli.main(["predict", "--model", str(out), str(images), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == got
    assert cli.main(["predict", str(tmp_path / "m.cnnkit"), str(images), "--device",
                     "cpu"]) == 0
    assert capsys.readouterr().out == got  # the same model, the same predictions
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    assert cli.main(["export", str(bad), str(tmp_path / "o.onnx")]) == 1
    assert "error" in capsys.readouterr().err
    common = ["--data-dir", str(fake_mnist), "--device", "cpu"]
    assert cli.main(["evaluate", str(out), *common]) == 0
    assert cli.main(["evaluate", "--model", str(out), *common]) == 0
    run = tmp_path / "run"
    assert cli.main(["train", "--model", str(out), "--epochs", "1", "--val-size", "16",
                     "--batch-size", "32", "--out", str(run), "--verbose", "0", *common]) == 0
    trained = ck.load(run / "model.cnnkit")
    assert list(trained.state_dict()) == list(model.state_dict())


def test_a_doc_string_config_is_taken_only_when_it_exports_to_the_node():
    def relu_model(doc):
        n = helper.make_node("Relu", ["x"], ["y"], name="r", doc_string=doc)
        return _tiny_graph([n], in_shape=(1, 4))

    for doc in ('cnnkit:Linear {"in_features": 100000000, "out_features": 100000}',
                'cnnkit:LeakyReLU {"negative_slope": 0.5}', "cnnkit:ReLU {not json",
                'cnnkit:Nonsense {"a": 1}'):
        model = ck.onnx.from_proto(relu_model(doc))
        assert [layer.type for layer in model._nodes] == ["ReLU"]
    lrelu = helper.make_node("LeakyRelu", ["x"], ["y"], name="r", alpha=0.2,
                             doc_string='cnnkit:LeakyReLU {"negative_slope": 0.2}')
    model = ck.onnx.from_proto(_tiny_graph([lrelu], in_shape=(1, 4)))
    assert model._nodes[0].get_config() == {"negative_slope": 0.2}  # exact, not float32
