"""Eval forwards of many images on the CPU run in chunks of a few images (their values stay in
the core's caches from layer to layer): graph models in forward and predict, chains in predict
only (a chain may run backward after an eval forward); never around a layer that mixes the
images of a batch. With a team of threads, each thread runs whole chunks on its own (thread 0
on the model's Net, the others on eval replicas sharing its parameters). The bits are those of
one pass on one thread."""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck
from cnnkit._core import _testing


@pytest.fixture
def chunk_switch():
    """Restores the chunk budget and the thread count; runs the test on one thread."""
    before, threads = _testing.eval_chunk_kb(), ck.get_num_threads()
    ck.set_num_threads(1)
    yield
    _testing.set_eval_chunk_kb(before)
    ck.set_num_threads(threads)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def _stats(model, rng):
    model.load_state_dict({k: (rng.uniform(0.3, 2.0, v.shape) if k.endswith("running_var")
                               else rng.uniform(-0.5, 0.5, v.shape)).astype(np.float32)
                           for k, v in model.state_dict().items() if "running_" in k},
                          strict=False)


def _one_pass_and_chunked(model, x, kb, call):
    _testing.set_eval_chunk_kb(0)
    a = call(model, x)
    assert model._net.last_eval_chunks() == 1
    _testing.set_eval_chunk_kb(kb)
    b = call(model, x)
    return a, b, model._net.last_eval_chunks()


@pytest.mark.parametrize("n", [9, 15, 16, 33])
@pytest.mark.parametrize("threads", [1, 2])
def test_resnet20_chunks_give_the_bits_of_one_pass(n, threads, rng, chunk_switch):
    ck.manual_seed(0)
    model = ck.models.resnet20()
    _stats(model, rng)
    x = rng.random((n, 3, 32, 32), dtype=np.float32)
    ck.set_num_threads(threads)
    # 64 KB is one image (the largest value, 16 x 32 x 32, is 64 KB): chunks of at least
    # 8 (the floor), as many as fit, on one thread or shared out among two
    for call in (lambda m, v: m.forward(v), lambda m, v: m.predict(v, batch_size=n)):
        a, b, chunks = _one_pass_and_chunked(model, x, 64, call)
        assert chunks == (n // 8 if n >= 16 else 1)
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_uneven_chunks_and_the_arena_between_them(rng, chunk_switch):
    """33 images in chunks of 9 and 8 (two plans), then a training step and back."""
    ck.manual_seed(1)
    model = ck.models.resnet20()
    x = rng.random((33, 3, 32, 32), dtype=np.float32)
    y = np.arange(33) % 10
    _testing.set_eval_chunk_kb(0)
    ref = model.forward(x)
    _testing.set_eval_chunk_kb(64)
    out = model.forward(x)
    assert model._net.last_eval_chunks() == 4
    np.testing.assert_array_equal(_bits(ref), _bits(out))
    t = ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.0), seed=0)  # lr 0: weights unchanged
    t.fit(x, y, epochs=1, batch_size=16, verbose=0)
    _testing.set_eval_chunk_kb(0)
    ref2 = model.forward(x)
    _testing.set_eval_chunk_kb(64)
    np.testing.assert_array_equal(_bits(ref2), _bits(model.forward(x)))


def test_chunks_pack_weights_once_per_call_and_see_new_weights(rng, chunk_switch):
    """The chunks of one forward share the convolutions' packed weight panels (the second and
    later chunks reuse them); the next call packs afresh, so weights changed in between (in
    place, by an optimizer or by hand) are what it computes with, folded BatchNorm or not."""
    ck.manual_seed(2)
    model = ck.models.resnet20()
    _stats(model, rng)
    x = rng.random((24, 3, 32, 32), dtype=np.float32)
    _testing.set_eval_chunk_kb(64)
    before = _testing.packed_weight_reuses()
    a = model.predict(x)
    assert model._net.last_eval_chunks() == 3
    convs = sum(1 for k in model.state_dict() if k.endswith("weight") and
                model.state_dict()[k].ndim == 4)
    # every direct convolution in chunks 2 and 3 (the 1x1 shortcuts are not direct ones)
    assert _testing.packed_weight_reuses() - before >= 2 * (convs - 2)
    # written into the same parameter buffer (the pointers the packed panels were keyed by)
    model.load_state_dict({k: v * np.float32(0.5) for k, v in model.state_dict().items()
                           if k.endswith("weight")}, strict=False)
    b = model.predict(x)
    _testing.set_eval_chunk_kb(0)
    ref = model.predict(x)
    assert model._net.last_eval_chunks() == 1
    np.testing.assert_array_equal(_bits(ref), _bits(b))
    assert not np.array_equal(a, b)


def test_chains_chunk_in_predict_only_and_keep_backward(rng, chunk_switch):
    ck.manual_seed(2)
    model = ck.Sequential(ck.Conv2d(1, 8, 3, padding=1), ck.ReLU(), ck.MaxPool2d(2),
                          ck.Conv2d(8, 8, 3, padding=1), ck.BatchNorm2d(8), ck.ReLU(),
                          ck.Dropout(0.5), ck.Flatten(), ck.Linear(8 * 7 * 7, 10))
    _stats(model, rng)
    x = rng.random((40, 1, 14, 14), dtype=np.float32)
    a, b, chunks = _one_pass_and_chunked(model, x, 16, lambda m, v: m.predict(v))
    assert chunks == 5
    np.testing.assert_array_equal(_bits(a), _bits(b))
    # forward is one pass (a backward after it needs every image's activations)
    model.forward(x)
    assert model._net.last_eval_chunks() == 1
    plain = ck.Sequential(ck.Conv2d(1, 4, 3), ck.ReLU(), ck.Flatten(), ck.Linear(4 * 12 * 12, 3))
    plain.forward(x)
    dx = plain.backward(np.ones((40, 3), np.float32))
    assert dx.shape == x.shape and np.isfinite(dx).all()


def test_never_split_around_a_layer_that_mixes_images(rng, chunk_switch):
    ck.manual_seed(3)
    inp = ck.Input((4, 8, 8))
    h = ck.Conv2d(4, 4, 3, padding=1)(inp)
    batch_stats = ck.BatchNorm2d(4, track_running_stats=False)(h)  # eval: batch statistics
    model = ck.Model(inp, ck.Flatten()(ck.Add()([batch_stats, inp])))
    x = rng.random((30, 4, 8, 8), dtype=np.float32)
    a, b, chunks = _one_pass_and_chunked(model, x, 1, lambda m, v: m.forward(v))
    assert chunks == 1
    np.testing.assert_array_equal(_bits(a), _bits(b))

    class Center(ck.Layer):  # written in Python: may mix images, so never split
        def forward(self, x, training=False):
            return x - x.mean(axis=0, keepdims=True)

        def backward(self, dy):
            return dy - dy.mean(axis=0, keepdims=True)

    inp = ck.Input((4, 8, 8))
    c = ck.Conv2d(4, 4, 3, padding=1)(inp)
    model = ck.Model(inp, ck.Flatten()(ck.Add()([Center()(c), c])))
    a, b, chunks = _one_pass_and_chunked(model, x, 1, lambda m, v: m.forward(v))
    assert chunks == 1
    np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_forward_checks_the_whole_input_first(threads, chunk_switch):
    ck.set_num_threads(threads)
    _testing.set_eval_chunk_kb(1)
    model = ck.models.resnet20()
    with pytest.raises(ValueError, match="expected"):
        model.forward(np.zeros((40, 4, 32, 32), np.float32))
    bad = np.zeros((40, 3, 32, 32), np.float32)
    bad[37, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.forward(bad)
    out = model.forward(np.zeros((40, 3, 32, 32), np.float32))
    assert model._net.last_eval_chunks() == 5 and np.isfinite(out).all()


@pytest.mark.parametrize("n", [40, 48, 256])
def test_a_team_shares_out_the_chunks_with_the_bits_of_one_thread(n, rng, chunk_switch):
    """ResNet-20 (graph) and LeNet-5 (chain, predict) at 2 threads: the chunks are shared out,
    a multiple of the threads where each keeps >= 8 images, and every output bit is the
    one-thread, one-pass bit."""
    ck.manual_seed(4)
    resnet = ck.models.resnet20()
    _stats(resnet, rng)
    lenet = ck.models.lenet5()
    x = rng.random((n, 3, 32, 32), dtype=np.float32)
    xl = rng.random((n, 1, 28, 28), dtype=np.float32)
    _testing.set_eval_chunk_kb(0)
    ref = resnet.forward(x)
    ref_p = resnet.predict(x, batch_size=n)
    ref_l = lenet.predict(xl, batch_size=n)
    ck.set_num_threads(2)
    _testing.set_eval_chunk_kb(64)
    out = resnet.forward(x)
    chunks = resnet._net.last_eval_chunks()
    assert chunks == {40: 5, 48: 6, 256: 32}[n]
    np.testing.assert_array_equal(_bits(ref), _bits(out))
    np.testing.assert_array_equal(_bits(ref_p), _bits(resnet.predict(x, batch_size=n)))
    _testing.set_eval_chunk_kb(16)
    out_l = lenet.predict(xl, batch_size=n)
    assert lenet._net.last_eval_chunks() > 1
    np.testing.assert_array_equal(_bits(ref_l), _bits(out_l))


def test_a_team_sees_weights_changed_between_calls(rng, chunk_switch):
    """The replicas share the model's parameters and buffers: what load_state_dict or a
    training step writes in place is what the next chunked forward computes with."""
    ck.manual_seed(5)
    model = ck.models.resnet20()
    _stats(model, rng)
    x = rng.random((32, 3, 32, 32), dtype=np.float32)
    y = np.arange(32) % 10
    ck.set_num_threads(2)
    _testing.set_eval_chunk_kb(64)
    first = model.forward(x)
    assert model._net.last_eval_chunks() == 4
    model.load_state_dict({k: v * np.float32(0.5) for k, v in model.state_dict().items()
                           if k.endswith("weight") or k.endswith("running_mean")},
                          strict=False)
    second = model.forward(x)
    t = ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.05), seed=0)
    t.fit(x, y, epochs=1, batch_size=16, verbose=0)
    third = model.forward(x)
    assert model._net.last_eval_chunks() == 4
    ck.set_num_threads(1)
    _testing.set_eval_chunk_kb(0)
    ref = model.forward(x)
    np.testing.assert_array_equal(_bits(ref), _bits(third))
    assert not np.array_equal(first, second) and not np.array_equal(second, third)

