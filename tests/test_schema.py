"""The layer schema: one description per layer type that the constructors, the Python facades
and the file loader all go through. Every option that changes a layer's parameter set
round-trips through save/load; files of the previous release still load; sizes that overflow
are clean errors, in constructors, in forward and in files."""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers, serialization
from cnnkit._core import _testing
from cnnkit.io import CheckpointError

DATA = Path(__file__).parent / "data" / "format_v1"

# Smallest valid arguments of every layer type, and the input (per sample) it takes.
BASE = {
    "Conv2d": ({"in_channels": 2, "out_channels": 4, "kernel_size": 3}, (2, 6, 6)),
    "MaxPool2d": ({"kernel_size": 2}, (2, 6, 6)),
    "AvgPool2d": ({"kernel_size": 2}, (2, 6, 6)),
    "ReLU": ({}, (3, 4)),
    "LeakyReLU": ({}, (3, 4)),
    "Sigmoid": ({}, (3, 4)),
    "Tanh": ({}, (3, 4)),
    "Linear": ({"in_features": 5, "out_features": 3}, (5,)),
    "Flatten": ({}, (2, 3, 3)),
    "Dropout": ({}, (3, 4)),
    "BatchNorm2d": ({"num_features": 2}, (2, 3, 3)),
    "ELU": ({}, (3, 4)),
    "SiLU": ({}, (3, 4)),
    "GELU": ({}, (3, 4)),
    "ReLU6": ({}, (3, 4)),
    "Hardswish": ({}, (3, 4)),
    "Identity": ({}, (3, 4)),
    "Softmax": ({}, (3, 4)),
    "AdaptiveAvgPool2d": ({"output_size": 2}, (2, 5, 5)),
    "AdaptiveMaxPool2d": ({"output_size": 2}, (2, 5, 5)),
    "Dropout2d": ({}, (2, 3, 3)),
    "BatchNorm1d": ({"num_features": 2}, (2, 3)),
    "Upsample": ({"scale_factor": 2.0, "mode": "bilinear"}, (2, 3, 3)),  # align_corners both
    "ConvTranspose2d": ({"in_channels": 2, "out_channels": 4, "kernel_size": 3}, (2, 4, 4)),
    "SyncBatchNorm": ({"num_features": 2}, (2, 3, 3)),
}


MERGE = {"Add", "Concat"}  # graph nodes with several inputs: tests/test_graph.py


def test_every_schema_type_has_a_facade_with_the_schema_signature():
    schemas = layers.schemas()
    assert set(schemas) == set(layers.LAYER_TYPES) == set(BASE) | MERGE
    for t, sc in schemas.items():
        cls = layers.LAYER_TYPES[t]
        assert getattr(ck, t) is cls and getattr(ck.layers, t) is cls
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name not in ("self", "name")]
        assert [p.name for p in params] == [a["name"] for a in sc["args"]], t
        for p, a in zip(params, sc["args"], strict=True):
            if a["required"]:
                assert p.default is inspect.Parameter.empty, (t, p.name)
            else:
                d = a["default"]
                want = d[0] if isinstance(d, tuple) and d[0] == d[1] else d
                assert p.default == want, (t, p.name, p.default, d)


def _bool_variants(t: str) -> list[dict]:
    """Every combination of the type's boolean arguments (they decide its parameter set)."""
    flags = [a["name"] for a in layers.schemas()[t]["args"] if a["kind"] == "bool"]
    return [dict(zip(flags, combo, strict=True))
            for combo in itertools.product([False, True], repeat=len(flags))]


@pytest.mark.parametrize("t", sorted(BASE))
def test_every_option_combination_round_trips(t, tmp_path, rng):
    base, sample = BASE[t]
    for flags in _bool_variants(t):
        layer = layers.from_config(t, {**base, **flags})
        model = ck.Sequential([layer])
        x = rng.standard_normal((4, *sample)).astype(np.float32)
        if t in ("BatchNorm2d", "BatchNorm1d", "SyncBatchNorm"):
            model.forward(x, training=True)  # running statistics away from their init
        y = model.forward(x)
        p = tmp_path / f"{t}.cnnkit"
        ck.save(model, p)
        back = ck.load(p)
        assert back.get_config() == model.get_config(), flags
        sd, sd2 = model.state_dict(), back.state_dict()
        assert list(sd) == list(sd2), flags
        for k in sd:
            np.testing.assert_array_equal(sd[k], sd2[k])
        np.testing.assert_array_equal(back.forward(x), y)


def test_files_of_the_previous_release_load_and_give_the_same_outputs():
    x = np.load(DATA / "all_layers_input.npy")
    want = np.load(DATA / "all_layers_output.npy")
    model = ck.load(DATA / "all_layers.cnnkit")
    # The outputs were written by eval forwards that ran BatchNorm after the convolution; the
    # bits are those with the fold turned off, and within float32 rounding with it.
    np.testing.assert_allclose(model.forward(x), want, rtol=1e-5, atol=1e-6)
    fold = _testing.fold_batchnorm()
    _testing.set_fold_batchnorm(False)
    try:
        np.testing.assert_array_equal(model.forward(x), want)
        trainer = ck.load(DATA / "all_layers_trainer.cnnkit", device="cpu")
        assert trainer.epoch == 2
        np.testing.assert_array_equal(trainer.model.forward(x), want)
    finally:
        _testing.set_fold_batchnorm(fold)
    trainer.fit(x, np.array([0, 1, 2, 0, 1]), epochs=3, batch_size=5, verbose=0)
    assert trainer.epoch == 3
    # the shipped pretrained weights are a previous-release file too
    assert ck.load(Path(ck.__file__).parent / "weights" / "lenet5_mnist.cnnkit").num_parameters()


def test_new_files_record_the_input_shape(tmp_path):
    m = ck.Sequential([ck.Conv2d(1, 2, 3), ck.Flatten(), ck.Linear(2 * 4 * 4, 3)])
    m.forward(np.zeros((2, 1, 6, 6), np.float32))
    ck.save(m, tmp_path / "m.cnnkit")
    assert serialization.read(tmp_path / "m.cnnkit").meta["input_shape"] == [1, 6, 6]


# ---- sizes that do not fit ---------------------------------------------------------------------

HUGE_LAYERS = [
    lambda: ck.Linear(2**31, 2**31, bias=False),
    lambda: ck.Linear(2**62, 4),
    lambda: ck.Linear(3, 2**61),
    lambda: ck.Conv2d(1, 1, 2**31, bias=False),
    lambda: ck.Conv2d(2**40, 2**30, 1),
    lambda: ck.Conv2d(4, 2**62, (1, 2)),
    lambda: ck.BatchNorm2d(2**62),
    lambda: ck.BatchNorm2d(2**61, affine=False),
    lambda: ck.Linear(2**40, 2**21),
]


@pytest.mark.parametrize("make", HUGE_LAYERS)
def test_parameter_sizes_that_overflow_are_clean_errors(make):
    with pytest.raises((ValueError, MemoryError)) as e:
        make()
    msg = str(e.value)
    assert e.type is MemoryError or any(w in msg for w in ("64-bit", "any machine")), msg


def test_huge_but_representable_parameters_are_a_memory_error():
    with pytest.raises(MemoryError, match="could not allocate"):
        ck.Linear(2**22, 2**22)  # 64 TiB


@pytest.mark.parametrize("layer,x_shape", [
    (lambda: ck.Conv2d(1, 2, 3, padding=2**40), (1, 1, 4, 4)),
    (lambda: ck.Conv2d(1, 2, 3, padding=(1, 2**61)), (1, 1, 4, 4)),
    (lambda: ck.Conv2d(1, 2, 2, dilation=2**62, padding=2**61), (1, 1, 4, 4)),
    (lambda: ck.MaxPool2d(2**41, stride=1, padding=2**40), (1, 1, 4, 4)),
    (lambda: ck.AvgPool2d((1, 2**62), stride=1, padding=(0, 2**61)), (1, 1, 4, 4)),
    (lambda: ck.AvgPool2d(2**40, stride=1, padding=2**39), (1, 1, 4, 4)),
])
def test_output_sizes_that_overflow_are_clean_errors(layer, x_shape):
    x = np.ones(x_shape, np.float32)
    try:
        m = layer()
    except ValueError:
        return  # refused at construction: fine
    with pytest.raises((ValueError, MemoryError)):
        m.forward(x)


def test_average_pool_divisor_never_gives_inf():
    # huge padded windows: the divisor is exact (no wrapped product), the averages are finite
    m = ck.AvgPool2d(2**20, stride=2**20, padding=2**19)
    y = m.forward(np.ones((1, 1, 4, 4), np.float32))
    assert np.isfinite(y).all() and y.shape == (1, 1, 1, 1)
    np.testing.assert_allclose(y, 16.0 / 2**40, rtol=1e-6)


# ---- files whose architecture does not run ---------------------------------------------------

def _write_model(path, arch, tensors, input_shape=None):
    from cnnkit import __version__

    meta = {"cnnkit_version": __version__, "architecture": arch}
    if input_shape is not None:
        meta["input_shape"] = input_shape
    serialization._write_file(path, "model", meta, {"model/" + k: v for k, v in tensors.items()})


def _conv(c, k, ksize=3, **kw):
    cfg = {"in_channels": c, "out_channels": k, "kernel_size": [ksize, ksize], "stride": [1, 1],
           "padding": [0, 0], "dilation": [1, 1], "groups": 1, "bias": True}
    cfg.update(kw)
    return {"type": "Conv2d", "config": cfg}


def _conv_tensors(i, c, k, ksize=3):
    return {f"{i}.weight": np.zeros((k, c, ksize, ksize), np.float32),
            f"{i}.bias": np.zeros((k,), np.float32)}


@pytest.mark.parametrize("arch,input_shape", [
    ([_conv(1, 2, padding=[2**40, 2**40])], None),
    ([_conv(1, 2, padding=[2**40, 2**40])], [1, 28, 28]),
    ([_conv(1, 2, padding=[2**30, 2**30]), {"type": "Flatten", "config": {}}], None),
    ([_conv(1, 2, padding=[1, 2**61])], None),
    ([_conv(1, 2), {"type": "MaxPool2d", "config": {"kernel_size": [2**33, 2**33],
                                                     "stride": [1, 1],
                                                     "padding": [2**32, 2**32],
                                                     "ceil_mode": False}}], None),
])
def test_files_whose_activations_cannot_be_sized_are_refused_at_load(tmp_path, arch,
                                                                     input_shape):
    p = tmp_path / "bad.cnnkit"
    _write_model(p, arch, _conv_tensors(0, 1, 2), input_shape)
    assert p.stat().st_size < 8192  # a small, valid-looking file
    with pytest.raises(CheckpointError, match="bad.cnnkit"):
        ck.load(p)


@pytest.mark.parametrize("config,match", [
    ({"in_features": 4, "out_features": 2, "bias": 1}, "bias must be True or False"),
    ({"in_features": 4.0, "out_features": 2}, "in_features must be an int"),
    ({"in_features": True, "out_features": 2}, "in_features must be an int"),
    ({"in_features": [4], "out_features": 2}, "in_features must be an int"),
    ({"in_features": 4, "out_features": 2**70}, "out of range"),
    ({"in_features": 4, "out_features": 0}, r"out_features must be in \[1"),
    ({"in_features": 4, "out_features": 2, "bogus": 1}, "unknown argument 'bogus'"),
    ({"out_features": 2}, "missing required argument 'in_features'"),
])
def test_file_arguments_are_checked_exactly_as_constructor_arguments(tmp_path, config, match):
    p = tmp_path / "bad.cnnkit"
    _write_model(p, [{"type": "Linear", "config": config}],
                 {"0.weight": np.zeros((2, 4), np.float32), "0.bias": np.zeros(2, np.float32)})
    with pytest.raises(CheckpointError, match=match):
        ck.load(p)
    with pytest.raises(ValueError, match=match):
        layers.from_config("Linear", config)


def test_files_without_the_weights_they_need_are_refused_before_building(tmp_path):
    p = tmp_path / "m.cnnkit"
    # a huge layer and no tensors: refused without allocating anything
    _write_model(p, [{"type": "Linear", "config": {"in_features": 2**20, "out_features": 2**20}}],
                 {})
    with pytest.raises(CheckpointError, match="missing"):
        ck.load(p)
