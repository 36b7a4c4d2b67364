"""Layers written in Python: inside Sequential and graph models, trained with Trainer (and
matching the equivalent native model), saved and loaded by their registered name, checked by
ck.utils.gradcheck, and every way a Python layer can go wrong reported with its name."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.utils import GradcheckError


class Swish(ck.Layer):
    def forward(self, x, training):
        self.x = x
        return x / (1 + np.exp(-x))

    def backward(self, dy):
        s = 1 / (1 + np.exp(-self.x))
        return dy * (s + self.x * s * (1 - s))


class Scale(ck.Layer):
    """A learnable per-channel scale of (N, C, H, W)."""

    def __init__(self, channels, init=1.0, *, name=None):
        super().__init__(name=name)
        self.add_parameter("weight", np.full(channels, init))

    def forward(self, x, training):
        self.x = x
        return x * self.weight[None, :, None, None]

    def backward(self, dy):
        return (dy * self.weight[None, :, None, None],
                {"weight": (dy * self.x).sum(axis=(0, 2, 3))})


class Pick(ck.Layer):
    """Keeps the first `k` features of (N, F): its own output_shape."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def output_shape(self, input_shape):
        return (input_shape[0], self.k)

    def forward(self, x, training):
        self.shape = x.shape
        return x[:, : self.k]

    def backward(self, dy):
        dx = np.zeros(self.shape, np.float32)
        dx[:, : self.k] = dy
        return dx


class Bad(ck.Layer):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, x, training):
        m = self.mode
        if m == "shape":
            return np.zeros((x.shape[0], x.shape[1] + 1), np.float32)
        if m == "dtype":
            return x.astype(np.int64)
        if m == "list":
            return x.tolist()
        if m == "raise":
            raise ZeroDivisionError("no luck")
        if m == "nan":
            return np.where(x > 0, np.nan, x)
        if m == "overflow":
            return x.astype(np.float64) * 1e300
        if m == "inplace":
            x += 1
        return x

    def backward(self, dy):
        m = self.mode
        if m == "braise":
            raise KeyError("missing")
        if m == "bshape":
            return dy[:1]
        if m == "bnan":
            return dy * np.inf
        if m == "bdtype":
            return dy.astype(np.float16)
        return dy


for _cls in (Swish, Scale, Pick, Bad):
    ck.register_layer(_cls)


def _copy_weights(src, dst):
    dst.load_state_dict({k: v for k, v in src.state_dict().items()})


def _data(rng, n=32, c=3, hw=6, classes=4):
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    y = rng.integers(0, classes, n)
    return x, y


# ---- inside models, trained ------------------------------------------------------------------


def test_swish_and_scale_match_native_sequential(rng):
    x, y = _data(rng)
    ck.manual_seed(3)
    ours = ck.Sequential(ck.Conv2d(3, 4, 3, padding=1), Swish(), Scale(4, 0.5), ck.Flatten(),
                         ck.Linear(4 * 36, 4))
    native = ck.Sequential(ck.Conv2d(3, 4, 3, padding=1), ck.SiLU(),
                           ck.Conv2d(4, 4, 1, groups=4, bias=False), ck.Flatten(),
                           ck.Linear(4 * 36, 4))
    sd = ours.state_dict()
    native.load_state_dict({**sd, "2.weight": sd["2.weight"].reshape(4, 1, 1, 1)})
    np.testing.assert_allclose(ours.forward(x), native.forward(x), rtol=1e-5, atol=1e-5)

    hist = []
    for m in (ours, native):
        t = ck.Trainer(m, loss="cross_entropy", optimizer=ck.optim.SGD(lr=0.05, momentum=0.9),
                       device="cpu", seed=1)
        hist.append(t.fit(x, y, epochs=4, batch_size=8, verbose=0).history["loss"])
    assert hist[0][-1] < hist[0][0]
    np.testing.assert_allclose(hist[0], hist[1], rtol=1e-4)
    a, b = ours.state_dict(), native.state_dict()
    np.testing.assert_allclose(a["2.weight"], b["2.weight"].reshape(4), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["4.weight"], b["4.weight"], rtol=1e-4, atol=1e-5)
    # the parameter the layer reads is the model's: trained values
    np.testing.assert_array_equal(ours[2].weight, a["2.weight"])


def _graph(python: bool):
    inp = ck.Input((3, 6, 6))
    a = ck.Conv2d(3, 4, 3, padding=1, name="conv")(inp)
    if python:
        b = Scale(4, 0.5, name="scale")(Swish(name="act")(a))
    else:
        b = ck.Conv2d(4, 4, 1, groups=4, bias=False, name="scale")(ck.SiLU(name="act")(a))
    c = ck.Add(name="add")([a, b])
    out = ck.Linear(4, 4, name="fc")(ck.Flatten(name="flat")(ck.AdaptiveAvgPool2d(1,
                                                                             name="pool")(c)))
    return ck.Model(inp, out)


def test_graph_model_with_add_matches_native(rng):
    x, y = _data(rng)
    ours, native = _graph(True), _graph(False)
    sd = ours.state_dict()
    native.load_state_dict({**sd, "scale.weight": sd["scale.weight"].reshape(4, 1, 1, 1)})
    hist = []
    for m in (ours, native):
        t = ck.Trainer(m, loss="cross_entropy", optimizer=ck.optim.Adam(lr=1e-2), device="cpu",
                       seed=2)
        hist.append(t.fit(x, y, epochs=3, batch_size=8, verbose=0).history["loss"])
    assert hist[0][-1] < hist[0][0]
    np.testing.assert_allclose(hist[0], hist[1], rtol=1e-4)
    text = ours.summary((3, 6, 6), print_fn=None)
    assert "scale (Scale)" in text and "act (Swish)" in text
    row = next(line for line in text.splitlines() if "scale (Scale)" in line)
    assert row.split()[-2] == "4"  # its parameter count, then its input ("act")


def test_own_output_shape_and_standalone_use(rng):
    m = ck.Sequential(ck.Linear(6, 5), Pick(3), ck.Linear(3, 2))
    assert m.output_shapes((6,)) == [(5,), (3,), (2,)]
    x = rng.standard_normal((4, 6)).astype(np.float32)
    assert m.forward(x).shape == (4, 2)
    assert m.backward(np.ones((4, 2), np.float32)).shape == (4, 6)
    # on its own, a Python layer is its own Python code; its state through a one-layer model
    s = Scale(2, 3.0)
    assert s(np.ones((1, 2, 1, 1))).tolist() == [[[[3.0]], [[3.0]]]]
    assert list(s.state_dict()) == ["0.weight"]
    s.weight = [1.0, 2.0]  # assigning copies the values in
    np.testing.assert_array_equal(s.state_dict()["0.weight"], [1.0, 2.0])
    assert repr(Scale(2, 0.5)) == "Scale(channels=2, init=0.5)"


# ---- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", [False, True])
def test_save_load_round_trip_by_registered_name(tmp_path, rng, graph):
    x, y = _data(rng, n=8)
    m = _graph(True) if graph else ck.Sequential(ck.Conv2d(3, 4, 3), Swish(), Scale(4, 0.25),
                                                  ck.Flatten(), ck.Linear(64, 4))
    t = ck.Trainer(m, loss="cross_entropy", optimizer=ck.optim.SGD(lr=0.1), device="cpu")
    t.fit(x, y, epochs=1, batch_size=4, verbose=0)
    ck.save(m, tmp_path / "m.cnnkit")
    arch = ck.io.read(tmp_path / "m.cnnkit").meta["architecture"]
    entries = arch["nodes"] if graph else arch
    assert {"type": "Scale", "config": {"channels": 4, "init": 0.5 if graph else 0.25}} in [
        {"type": e["type"], "config": e["config"]} for e in entries]
    m2 = ck.load(tmp_path / "m.cnnkit")
    assert type(m2) is type(m)
    np.testing.assert_array_equal(m2.forward(x), m.forward(x))
    assert any(isinstance(layer, Scale) for layer in m2._nodes)
    ck.save(t, tmp_path / "t.cnnkit")  # a trainer checkpoint continues
    t2 = ck.load(tmp_path / "t.cnnkit", device="cpu")
    t2.fit(x, y, epochs=2, batch_size=4, verbose=0)


def test_unregistered_type_in_file_is_refused(tmp_path):
    class Local(Swish):
        pass

    m = ck.Sequential(ck.Linear(3, 3), Local())
    with pytest.raises(ValueError, match=r"Local \(node 1\).*not registered.*register_layer"):
        ck.save(m, tmp_path / "x.cnnkit")
    ck.register_layer(Local, name="test.Local")
    assert m[1].type == "test.Local"
    ck.save(m, tmp_path / "x.cnnkit")
    del ck._py_layer._REGISTRY["test.Local"]
    with pytest.raises(ck.io.CheckpointError,
                       match=r"unknown layer type 'test.Local'.*register_layer"):
        ck.load(tmp_path / "x.cnnkit")


def test_registration_rules():
    with pytest.raises(ValueError, match="native layer type"):
        ck.register_layer(Swish, name="SiLU")
    with pytest.raises(ValueError, match="forward and backward"):
        ck.register_layer(ck.ReLU)

    class Swish2(Swish):
        pass

    with pytest.raises(ValueError, match="already registered"):
        ck.register_layer(Swish2, name="Swish")

    class NotJSON(Swish):
        def __init__(self, table):
            super().__init__()
            self.table = table

    ck.register_layer(NotJSON)
    with pytest.raises(ValueError, match="'table'.*cannot be saved"):
        ck._py_layer.check_saveable(ck.Sequential(NotJSON(object())))

    class ReLU(Swish):  # a native type's name: refused when used, as it would be ambiguous
        pass

    with pytest.raises(ValueError, match="native layer type"):
        ck.Sequential(ReLU())


def test_file_config_goes_to_from_config_only(tmp_path):
    class Old(Scale):
        def __init__(self, channels, bogus=1):
            super().__init__(channels)

    ck.register_layer(Old, name="test.Scale")
    ck.save(ck.Sequential(ck.Conv2d(3, 2, 1), Old(2)), tmp_path / "a.cnnkit")
    del ck._py_layer._REGISTRY["test.Scale"]
    ck.register_layer(Scale, name="test.Scale")  # this process's class takes no `bogus`
    try:
        with pytest.raises(ck.io.CheckpointError,
                           match=r"layer 1 \(test.Scale\): cannot build .*TypeError.*bogus"):
            ck.load(tmp_path / "a.cnnkit")
    finally:
        del ck._py_layer._REGISTRY["test.Scale"]
        ck.register_layer(Scale)


# ---- gradcheck -------------------------------------------------------------------------------


def test_gradcheck_python_layers(rng):
    assert ck.utils.gradcheck(Swish(), rng.standard_normal((2, 3, 2, 2)))
    s = Scale(3, 0.7)
    w0 = s.weight.copy()
    assert ck.utils.gradcheck(s, rng.standard_normal((2, 3, 2, 2)))
    np.testing.assert_array_equal(s.weight, w0)  # parameters untouched
    assert ck.utils.gradcheck(Pick(2), rng.standard_normal((3, 4)))


def test_gradcheck_finds_a_wrong_backward(rng):
    class WrongSwish(Swish):
        def backward(self, dy):
            s = 1 / (1 + np.exp(-self.x))
            return dy * s  # misses x * s * (1 - s)

    with pytest.raises(GradcheckError, match=r"WrongSwish: d/dx of the input disagrees at "
                                             r"index \(\d+, \d+\)"):
        ck.utils.gradcheck(WrongSwish(), rng.standard_normal((2, 5)))

    class WrongScale(Scale):
        def backward(self, dy):
            dx, g = super().backward(dy)
            return dx, {"weight": 2 * g["weight"]}

    with pytest.raises(GradcheckError, match="parameter 'weight'"):
        ck.utils.gradcheck(WrongScale(2), rng.standard_normal((2, 2, 3, 3)))


@pytest.mark.parametrize("make, shape", [
    (lambda: ck.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5)),
    (lambda: ck.Linear(5, 3), (4, 5)),
    (lambda: ck.BatchNorm2d(3), (4, 3, 3, 3)),
    (lambda: ck.Tanh(), (3, 4)),
    (lambda: ck.Dropout(0.3), (4, 6)),
])
def test_gradcheck_native_layers(rng, make, shape):
    layer = make()
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    assert ck.utils.gradcheck(layer, rng.standard_normal(shape))
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# ---- errors name the layer -------------------------------------------------------------------


@pytest.mark.parametrize("mode, exc, match", [
    ("shape", ValueError, r"Bad \(layer 1\): forward returned shape \(4, 4\), expected \(4, 3\)"),
    ("dtype", ValueError, r"Bad \(layer 1\): forward returned dtype int64, expected float32"),
    ("list", ValueError, r"Bad \(layer 1\): forward returned list, expected a numpy array"),
    ("raise", ZeroDivisionError, r"Bad \(layer 1\): forward raised ZeroDivisionError: no luck"),
    ("nan", ValueError, r"Bad \(layer 1\): forward returned NaN or Inf"),
    ("overflow", ValueError, r"Bad \(layer 1\): forward returned NaN or Inf"),
    ("inplace", ValueError, r"Bad \(layer 1\): forward raised ValueError: .*read-only"),
    ("braise", KeyError, r"Bad \(layer 1\): backward raised KeyError"),
    ("bshape", ValueError, r"Bad \(layer 1\): backward returned shape \(1, 3\), expected "
                           r"\(4, 3\)"),
    ("bnan", ValueError, r"Bad \(layer 1\): backward returned NaN or Inf"),
    ("bdtype", ValueError, r"Bad \(layer 1\): backward returned dtype float16"),
])
def test_errors_name_the_layer(rng, mode, exc, match):
    x = np.abs(rng.standard_normal((4, 3)).astype(np.float32)) + 0.1
    m = ck.Sequential(ck.Linear(3, 3), Bad(mode), ck.Linear(3, 2))
    t = ck.Trainer(m, loss="cross_entropy", optimizer=ck.optim.SGD(lr=0.1), device="cpu")
    before = m.state_dict()
    with pytest.raises(exc, match=match):
        t.fit(x, np.array([0, 1, 0, 1]), epochs=1, batch_size=4, verbose=0)
    for k, v in m.state_dict().items():  # no update was applied
        np.testing.assert_array_equal(v, before[k])
    # the model still works afterwards
    m[1].mode = "ok"
    t.fit(x, np.array([0, 1, 0, 1]), epochs=1, batch_size=4, verbose=0)


def test_backward_parameter_gradient_errors(rng):
    class NoGrads(Scale):
        def backward(self, dy):
            return dy * self.weight[None, :, None, None]

    class WrongName(Scale):
        def backward(self, dy):
            dx, g = super().backward(dy)
            return dx, {"w": g["weight"]}

    class WrongGradShape(Scale):
        def backward(self, dy):
            dx, g = super().backward(dy)
            return dx, {"weight": g["weight"][:1]}

    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    for cls, match in [(NoGrads, r"NoGrads \(layer 0\): backward returned no parameter "
                                 r"gradients; return \(dx, \{'weight': \.\.\.\}\)"),
                       (WrongName, r"gradients for \['w'\], the parameters are \['weight'\]"),
                       (WrongGradShape, r"gradient of 'weight'\) returned shape \(1,\), "
                                        r"expected \(2,\)")]:
        m = ck.Sequential(cls(2))
        m.forward(x, training=True)
        with pytest.raises(ValueError, match=match):
            m.backward(np.ones_like(x))


def test_declaration_errors():
    class Late(Swish):
        def forward(self, x, training):
            self.add_parameter("w", np.ones(1))
            return x

    with pytest.raises(ValueError, match=r"add_parameter\('w'\) after the layer was first used"):
        ck.Sequential(Late()).forward(np.ones((1, 2), np.float32))

    class NoSuper(Swish):
        def __init__(self):
            pass

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        ck.Sequential(NoSuper())

    class Clash(Swish):
        def __init__(self):
            super().__init__()
            self.add_parameter("forward", np.ones(1))

    with pytest.raises(ValueError, match="already has an attribute 'forward'"):
        Clash()

    class BadValue(Swish):
        def __init__(self):
            super().__init__()
            self.add_parameter("w", np.array([1.0, np.nan]))

    with pytest.raises(ValueError, match="'w' contains NaN"):
        BadValue()

    class BatchChange(Pick):
        def output_shape(self, input_shape):
            return (1, self.k)

    with pytest.raises(ValueError, match="the batch size .* must be kept"):
        ck.Sequential(BatchChange(2)).forward(np.ones((3, 4), np.float32))


def test_layer_object_gone_is_an_error_not_a_crash():
    m = ck.Sequential(ck.Linear(2, 2), Swish())
    net = m._net
    del m
    gc.collect()
    with pytest.raises(RuntimeError, match=r"Swish \(layer 1\): the Python layer object no "
                                           r"longer exists"):
        net.forward(np.ones((1, 2), np.float32))


# ---- threads ---------------------------------------------------------------------------------


def test_two_threads_train_models_with_python_layers(rng):
    """Each step takes the GIL only for its Python node: two threads training two models
    (one with Python layers) and a third doing Python work all finish, no deadlock."""
    x, y = _data(rng, n=64)
    models = [ck.Sequential(ck.Conv2d(3, 4, 3, padding=1), Swish(), Scale(4), ck.Flatten(),
                            ck.Linear(144, 4)),
              ck.Sequential(ck.Conv2d(3, 4, 3, padding=1), ck.ReLU(), ck.Flatten(),
                            ck.Linear(144, 4))]
    results, errors = {}, []

    def train(i):
        try:
            t = ck.Trainer(models[i], loss="cross_entropy", optimizer=ck.optim.SGD(lr=0.05),
                           device="cpu")
            results[i] = t.fit(x, y, epochs=3, batch_size=8, verbose=0).history["loss"]
        except Exception as e:  # reported below
            errors.append(e)

    stop = threading.Event()
    count = [0]

    def spin():
        while not stop.is_set():
            count[0] += 1

    threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
    spinner = threading.Thread(target=spin)
    spinner.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    stop.set()
    spinner.join(timeout=10)
    assert not errors, errors
    assert not any(th.is_alive() for th in threads)
    assert sorted(results) == [0, 1] and count[0] > 0
    assert all(np.isfinite(r).all() for r in results.values())


# ---- CUDA: staged through host copies --------------------------------------------------------


@pytest.mark.requires_cuda
def test_python_layers_on_cuda_match_cpu(rng):
    if not ck.cuda_available():
        pytest.skip("no CUDA device")
    x, y = _data(rng, n=16)
    cpu = ck.Sequential(ck.Conv2d(3, 4, 3, padding=1), Swish(), Scale(4, 0.5), ck.Flatten(),
                        ck.Linear(144, 4))
    gpu = ck.Sequential(ck.Conv2d(3, 4, 3, padding=1), Swish(), Scale(4, 0.5), ck.Flatten(),
                        ck.Linear(144, 4))
    _copy_weights(cpu, gpu)
    gpu.to("cuda")
    np.testing.assert_allclose(gpu.forward(x), cpu.forward(x), rtol=1e-4, atol=1e-5)
    hist = []
    for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
        t = ck.Trainer(m, loss="cross_entropy", optimizer=ck.optim.SGD(lr=0.05), device=dev,
                       seed=4)
        hist.append(t.fit(x, y, epochs=2, batch_size=8, verbose=0).history["loss"])
    np.testing.assert_allclose(hist[0], hist[1], rtol=1e-3)
    assert not gpu[2].weight.flags.writeable  # a copy of the device values
    np.testing.assert_allclose(gpu[2].weight, cpu[2].weight, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="load_state_dict"):
        gpu[2].weight = np.ones(4)


# ---- the worked example of docs/training.md --------------------------------------------------


def test_docs_worked_example_runs(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    section = text.split("## Writing a layer in Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    saved, names = dict(ck._py_layer._REGISTRY), dict(ck._py_layer._NAMES)
    for k in ("Swish", "Scale"):  # the example registers its own classes by these names
        ck._py_layer._REGISTRY.pop(k, None)
    try:
        ns: dict = {"__name__": "docs_example"}
        exec(compile(code, "docs/training.md", "exec"), ns)
        assert isinstance(ns["again"][2], ns["Scale"])
    finally:
        ck._py_layer._REGISTRY.clear()
        ck._py_layer._REGISTRY.update(saved)
        ck._py_layer._NAMES.clear()
        ck._py_layer._NAMES.update(names)


def test_calls_that_would_wait_for_themselves_are_refused():
    class ForwardOnly(ck.Layer):
        def forward(self, x, training):
            return x

    class BackwardOnly(ck.Layer):
        def backward(self, dy):
            return dy

    class PeeksAtItself(Swish):
        def forward(self, x, training):
            self.state_dict()  # the layer's own one-layer model, locked by this very step
            return x

    x = np.ones((2, 3), np.float32)
    m = ck.Sequential(ck.Linear(3, 3), ForwardOnly())
    m.forward(x, training=True)  # forward-only layers run for inference
    with pytest.raises(NotImplementedError, match=r"ForwardOnly \(layer 1\): ForwardOnly "
                                                  r"defines no backward\(self, dy\)"):
        m.backward(np.ones((2, 3), np.float32))
    with pytest.raises(NotImplementedError, match="defines no forward"):
        ck.Sequential(BackwardOnly()).forward(x)
    with pytest.raises(RuntimeError, match=r"PeeksAtItself \(layer 0\): forward raised "
                                           r"RuntimeError: PeeksAtItself: its own model"):
        layer = PeeksAtItself()
        layer.state_dict()
        layer._solo.forward(x)
