"""cnnkit.transforms: each transform against a numpy float64 reference of torchvision's
definition (fed the parameters the native code drew), the draws' ranges, determinism (thread
counts, prefetch, resume), and Trainer.fit through the native feed vs the Python path."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import transforms as T

RNG = np.random.default_rng(1234)
U8_SCALE = np.float32(1.0 / 255.0)


def images(n=6, c=3, h=12, w=10, u8=False):
    if u8:
        return RNG.integers(0, 256, (n, c, h, w)).astype(np.uint8)
    return RNG.random((n, c, h, w)).astype(np.float32)


def as_float(x):
    return x.astype(np.float32) * U8_SCALE if x.dtype == np.uint8 else x


# ---------------------------------------------------------------------------------------------
# numpy references (torchvision's tensor definitions)
# ---------------------------------------------------------------------------------------------

NP_MODE = {"constant": "constant", "edge": "edge", "reflect": "reflect",
           "symmetric": "symmetric"}


def ref_pad(img, l, t, r, b, mode, fill):
    kw = {"constant_values": fill} if mode == "constant" else {}
    return np.pad(img, ((0, 0), (t, b), (l, r)), mode=NP_MODE[mode], **kw)


def ref_crop(img, tf, top, left):
    l, t, r, b = tf._pad
    img = ref_pad(img, l, t, r, b, tf.padding_mode, tf.fill)
    th, tw = tf.size
    if tf.pad_if_needed and img.shape[2] < tw:
        e = tw - img.shape[2]
        img = ref_pad(img, e, 0, e, 0, tf.padding_mode, tf.fill)
    if tf.pad_if_needed and img.shape[1] < th:
        e = th - img.shape[1]
        img = ref_pad(img, 0, e, 0, e, tf.padding_mode, tf.fill)
    return img[:, top:top + th, left:left + tw]


def ref_axis(n_in, n_out):
    """torch interpolate bilinear (align_corners=False) taps of one axis."""
    if n_in == n_out:
        i = np.arange(n_out)
        return i, i, np.zeros(n_out)
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def ref_resize(img, oh, ow, interp="bilinear"):
    c, h, w = img.shape
    if interp == "nearest":
        ys = np.minimum(np.floor(np.arange(oh) * np.float32(h / oh)).astype(int), h - 1)
        xs = np.minimum(np.floor(np.arange(ow) * np.float32(w / ow)).astype(int), w - 1)
        return img[:, ys][:, :, xs]
    y0, y1, ly = ref_axis(h, oh)
    x0, x1, lx = ref_axis(w, ow)
    a = img.astype(np.float64)
    top = a[:, y0][:, :, x0] * (1 - lx) + a[:, y0][:, :, x1] * lx
    bot = a[:, y1][:, :, x0] * (1 - lx) + a[:, y1][:, :, x1] * lx
    return top * (1 - ly)[:, None] + bot * ly[:, None]


def ref_inverse_affine(center, angle, translate, scale, shear):
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m = [v / scale for v in m]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def ref_affine(img, prm, interp, fill):
    """F_t.affine: _gen_affine_grid, grid_sample(align_corners=False, zeros) and the mask
    blend of the fill."""
    c, h, w = img.shape
    m = ref_inverse_affine((0.0, 0.0), prm[0], (prm[1], prm[2]), prm[3], (prm[4], prm[5]))
    xs = np.arange(w) - w * 0.5 + 0.5
    ys = np.arange(h) - h * 0.5 + 0.5
    X, Y = np.meshgrid(xs, ys)
    gx = (m[0] * X + m[1] * Y + m[2]) / (0.5 * w)
    gy = (m[3] * X + m[4] * Y + m[5]) / (0.5 * h)
    ix = ((gx + 1) * w - 1) / 2
    iy = ((gy + 1) * h - 1) / 2
    fill = np.broadcast_to(np.asarray(fill, np.float64), (c,))
    out = np.empty((c, h, w))
    if interp == "nearest":
        nx, ny = np.rint(ix).astype(int), np.rint(iy).astype(int)
        ok = (nx >= 0) & (nx < w) & (ny >= 0) & (ny < h)
        for k in range(c):
            out[k] = np.where(ok, img[k][np.clip(ny, 0, h - 1), np.clip(nx, 0, w - 1)], fill[k])
        return out
    x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
    v = np.zeros((c, h, w))
    mask = np.zeros((h, w))
    for dx in (0, 1):
        for dy in (0, 1):
            xx, yy = x0 + dx, y0 + dy
            wt = (1 - np.abs(ix - xx)) * (1 - np.abs(iy - yy))
            ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            wt = np.where(ok, wt, 0.0)
            mask += wt
            v += wt * img[:, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
    return v * mask + (1 - mask) * fill[:, None, None]


def ref_jitter(img, prm, tf):
    x = img.astype(np.float64)

    def bright(x):
        return np.clip(prm[1] * x, 0, 1)

    def contrast(x):
        if x.shape[0] == 3:
            mean = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
        else:
            mean = x.mean()
        return np.clip(prm[2] * x + (1 - prm[2]) * mean, 0, 1)

    steps = [f for f, on in ((bright, tf.brightness), (contrast, tf.contrast)) if on]
    if prm[0]:
        steps = steps[::-1]
    for f in steps:
        x = f(x)
    return x


def run(tf, x, seed=7, epoch=3, index=None):
    idx = np.arange(len(x)) * 5 + 11 if index is None else index
    out = tf.apply(x, idx, seed, epoch)
    prm = tf.params(x.shape[1:], idx, seed, epoch)
    return out, prm, as_float(x)


# ---------------------------------------------------------------------------------------------
# each transform vs its reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric"])
@pytest.mark.parametrize("u8", [False, True])
def test_random_crop_padding_modes(mode, u8):
    tf = T.RandomCrop((9, 8), padding=(1, 3, 4, 2), padding_mode=mode, fill=0.25)
    x = images(u8=u8)
    out, (prm,), xf = run(tf, x)
    assert out.shape == (6, 3, 9, 8) and out.dtype == np.float32
    for b in range(len(x)):
        ref = ref_crop(xf[b], tf, int(prm[b, 0]), int(prm[b, 1]))
        np.testing.assert_array_equal(out[b], ref.astype(np.float32))
    assert prm[:, 0].max() <= 12 + 5 - 9 and prm[:, 1].max() <= 10 + 5 - 8


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_random_crop_pad_if_needed(mode):
    tf = T.RandomCrop((14, 13), padding=1, pad_if_needed=True, padding_mode=mode)
    x = images(h=6, w=7)
    out, (prm,), xf = run(tf, x)
    for b in range(len(x)):
        np.testing.assert_array_equal(out[b], ref_crop(xf[b], tf, int(prm[b, 0]),
                                                       int(prm[b, 1])))


def test_random_crop_offsets_cover_range():
    tf = T.RandomCrop(28, padding=4)
    idx = np.arange(4000)
    (prm,) = tf.params((1, 28, 28), idx, 3, 0)
    assert prm.min() == 0 and prm.max() == 8
    counts = np.bincount(prm[:, 0].astype(int), minlength=9)
    assert counts.min() > 4000 / 9 * 0.75


def test_flip_and_rate():
    tf = T.RandomHorizontalFlip(p=0.3)
    x = images(n=400, h=4, w=5)
    out, (prm,), xf = run(tf, x)
    for b in range(len(x)):
        np.testing.assert_array_equal(out[b], xf[b][:, :, ::-1] if prm[b, 0] else xf[b])
    assert abs(prm.mean() - 0.3) < 0.08


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_random_resized_crop(interp):
    tf = T.RandomResizedCrop((11, 9), scale=(0.2, 1.0), interpolation=interp)
    x = images(n=8, h=20, w=16)
    out, (prm,), xf = run(tf, x)
    for b in range(len(x)):
        i, j, h, w = (int(v) for v in prm[b])
        assert 0 < h <= 20 and 0 < w <= 16 and i + h <= 20 and j + w <= 16
        assert 0.2 * 320 - 40 <= h * w  # roughly the area drawn (rounding of sqrt)
        ref = ref_resize(xf[b][:, i:i + h, j:j + w], 11, 9, interp)
        np.testing.assert_allclose(out[b], ref, rtol=0, atol=2e-6)


def test_random_resized_crop_fallback_is_the_center_crop():
    # an area fraction above 1 never fits: after 10 tries torchvision takes the central crop
    tf = T.RandomResizedCrop(8, scale=(2.0, 3.0), ratio=(1.0, 1.0))
    (prm,) = tf.params((3, 20, 12), np.arange(5), 0, 0)
    # in_ratio 12/20 < min(ratio) = 1: w = width, h = round(w / 1)
    np.testing.assert_array_equal(prm, np.tile([(20 - 12) // 2, 0, 12, 12], (5, 1)))


@pytest.mark.parametrize("interp", ["nearest", "bilinear"])
def test_random_rotation(interp):
    tf = T.RandomRotation(10, interpolation=interp, fill=0.5)
    x = images(n=8, h=15, w=13)
    out, (prm,), xf = run(tf, x)
    assert np.all(np.abs(prm[:, 0]) <= 10) and np.all(prm[:, 3] == 1)
    check_affine(out, prm, xf, interp, 0.5)


@pytest.mark.parametrize("interp", ["nearest", "bilinear"])
def test_random_affine(interp):
    tf = T.RandomAffine(8, translate=(0.1, 0.2), scale=(0.9, 1.1), shear=(-5, 5, -3, 3),
                        interpolation=interp, fill=(0.1, 0.2, 0.3))
    x = images(n=8, h=16, w=14)
    out, (prm,), xf = run(tf, x)
    assert np.all(np.abs(prm[:, 1]) <= 1.4 + 0.5) and np.all(np.abs(prm[:, 2]) <= 3.2 + 0.5)
    assert np.all(prm[:, 1] == np.round(prm[:, 1]))  # whole-pixel translations
    check_affine(out, prm, xf, interp, (0.1, 0.2, 0.3))


def check_affine(out, prm, xf, interp, fill):
    bad = 0
    for b in range(len(out)):
        ref = ref_affine(xf[b], prm[b], interp, fill)
        if interp == "bilinear":
            np.testing.assert_allclose(out[b], ref, rtol=0, atol=2e-5)
        else:  # a source coordinate within float32 rounding of .5 may round the other way
            bad += int((np.abs(out[b] - ref) > 1e-6).sum())
    assert bad <= out.size * 0.002


def test_rotation_turns_counter_clockwise():
    img = np.zeros((1, 1, 9, 9), np.float32)
    img[0, 0, 1, 4] = 1.0  # above the centre
    tf = T.RandomRotation((90, 90))
    out = tf.apply(img, [0], 0, 0)
    assert out[0, 0, 4, 1] == 1.0  # counter-clockwise: to the left of the centre


@pytest.mark.parametrize("c", [1, 3])
def test_color_jitter(c):
    tf = T.ColorJitter(brightness=0.4, contrast=0.5)
    x = images(n=40, c=c, h=6, w=5)
    out, (prm,), xf = run(tf, x)
    assert np.all((prm[:, 1] >= 0.6) & (prm[:, 1] <= 1.4))
    assert np.all((prm[:, 2] >= 0.5) & (prm[:, 2] <= 1.5))
    assert 0 < prm[:, 0].mean() < 1  # both orders occur
    for b in range(len(x)):
        np.testing.assert_allclose(out[b], ref_jitter(xf[b], prm[b], tf), rtol=0, atol=1e-5)


def test_normalize_exact():
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    tf = T.Normalize(mean, std)
    x = images(u8=True)
    out = tf.apply(x, np.arange(6), 0, 0)
    ref = (as_float(x) - np.float32(mean).reshape(3, 1, 1)) / np.float32(std).reshape(3, 1, 1)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("size,shape", [((7, 9), (7, 9)), (6, (7, 6)), (16, (19, 16))])
def test_resize(size, shape):
    x = images(n=3, h=12, w=10)
    tf = T.Resize(size)
    out = tf.apply(x, np.arange(3), 0, 0)
    assert out.shape == (3, 3) + shape  # an int: the smaller edge, the longer truncated
    for b in range(3):
        np.testing.assert_allclose(out[b], ref_resize(x[b], *shape), rtol=0, atol=2e-6)


def test_compose_is_one_pipeline_and_matches_the_steps():
    parts = [T.RandomCrop(10, padding=2, padding_mode="reflect"), T.RandomHorizontalFlip(),
             T.Normalize((0.5,), (0.25,))]
    tf = T.Compose(parts)
    assert len(tf._pipeline()) == 3
    x = images(c=1)
    out, prm, xf = run(tf, x)
    for b in range(len(x)):
        r = ref_crop(xf[b], parts[0], int(prm[0][b, 0]), int(prm[0][b, 1]))
        r = r[:, :, ::-1] if prm[1][b, 0] else r
        np.testing.assert_allclose(out[b], (r - 0.5) / 0.25, rtol=0, atol=1e-6)


def test_call_forms():
    tf = T.Compose([T.RandomCrop(8, padding=1), T.RandomHorizontalFlip()])
    x = images(n=4, h=8, w=8, u8=True)
    y = np.arange(4)
    xo, yo = tf(x, y, index=np.arange(4), seed=5)
    assert yo is y and xo.shape == (4, 3, 8, 8)
    np.testing.assert_array_equal(tf(x, index=np.arange(4), seed=5), xo)
    assert tf(x[0], index=[0], seed=5).shape == (3, 8, 8)
    a, b = tf(x), tf(x)  # directly called: a fresh seed per call
    assert not np.array_equal(a, b)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="padding_mode"):
        T.RandomCrop(8, padding_mode="wrap")
    with pytest.raises(ValueError, match="reflect padding"):
        T.RandomCrop(8, padding=6, padding_mode="reflect").apply(images(h=5, w=5), range(6), 0)
    with pytest.raises(ValueError, match="larger than the padded image"):
        T.RandomCrop(20).apply(images(), np.arange(6), 0)
    with pytest.raises(ValueError, match="std evaluated to zero"):
        T.Normalize((0.5,), (0.0,))
    with pytest.raises(ValueError, match="channels"):
        T.Normalize((0.5, 0.5), (1.0, 1.0)).apply(images(c=3), np.arange(6), 0)
    with pytest.raises(ValueError, match="saturation"):
        T.ColorJitter(saturation=0.2)
    with pytest.raises(ValueError, match="antialias"):
        T.Resize(8, antialias=True)
    with pytest.raises(ValueError, match="expand"):
        T.RandomRotation(5, expand=True)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        T.RandomHorizontalFlip().apply(np.zeros((2, 3), np.float32), [0, 1], 0)
    with pytest.raises(ValueError, match="NaN"):
        T.RandomHorizontalFlip().apply(np.full((1, 1, 2, 2), np.nan, np.float32), [0], 0)
    with pytest.raises(ValueError, match="p must be"):
        T.RandomHorizontalFlip(1.5)


# ---------------------------------------------------------------------------------------------
# determinism and the Trainer
# ---------------------------------------------------------------------------------------------


def test_same_at_any_thread_count():
    tf = T.Compose([T.RandomResizedCrop(12), T.RandomAffine(5, translate=(0.1, 0.1)),
                    T.ColorJitter(0.2, 0.2)])
    x = images(n=33, h=16, w=16, u8=True)
    prev = ck.get_num_threads()
    try:
        ck.set_num_threads(1)
        a = tf.apply(x, np.arange(33), 9, 2)
        ck.set_num_threads(2)
        b = tf.apply(x, np.arange(33), 9, 2)
    finally:
        ck.set_num_threads(prev)
    np.testing.assert_array_equal(a, b)
    # a sample's draws follow its index, not its position in the batch
    perm = np.random.default_rng(0).permutation(33)
    np.testing.assert_array_equal(tf.apply(x[perm], perm, 9, 2), a[perm])


def _data(n=200, u8=True):
    g = np.random.default_rng(5)
    x = g.integers(0, 256, (n, 1, 16, 16)).astype(np.uint8)
    return (x if u8 else as_float(x)), g.integers(0, 4, n).astype(np.int64)


def _model():
    ck.manual_seed(3)
    return ck.Sequential(ck.Conv2d(1, 4, 3, padding=1), ck.ReLU(), ck.MaxPool2d(2),
                         ck.Flatten(), ck.Linear(4 * 7 * 7, 4))


def _fit(transform, prefetch=0, epochs=2, threads=None, u8=True, **kw):
    x, y = _data(u8=u8)
    m = _model()
    tr = ck.Trainer(m, optimizer="sgd")
    loader = ck.data.DataLoader(x, y, batch_size=32, shuffle=True, seed=4, transform=transform,
                                prefetch=prefetch)
    prev = ck.get_num_threads()
    if threads:
        ck.set_num_threads(threads)
    try:
        h = tr.fit(loader, epochs=epochs, verbose=0, **kw)
    finally:
        ck.set_num_threads(prev)
    return m.state_dict(), h, tr, loader


TF = T.Compose([T.RandomCrop(14, padding=2, padding_mode="edge"), T.RandomHorizontalFlip()])


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_native_path_matches_python_path_and_prefetch_and_threads():
    ref, h, tr, loader = _fit(TF)
    assert loader._native_feed is not None  # the native loop ran
    _same(ref, _fit(TF, prefetch=2)[0])
    _same(ref, _fit(TF, prefetch=1, threads=1)[0])
    _same(ref, _fit(lambda xb, yb: TF(xb, yb))[0])  # a plain callable: the Python path
    _same(ref, _fit(TF, u8=False)[0])  # float data: the same values


def test_resume_sees_the_same_augmented_batches():
    ref = _fit(TF, prefetch=2, epochs=3)[0]
    x, y = _data()
    m = _model()
    tr = ck.Trainer(m, optimizer="sgd")
    loader = ck.data.DataLoader(x, y, batch_size=32, shuffle=True, seed=4, transform=TF,
                                prefetch=2)
    tr.fit(loader, epochs=1, verbose=0)
    tr.fit(loader, epochs=3, initial_epoch=1, verbose=0)
    _same(ref, m.state_dict())


def test_feed_batches_equal_the_loader_batches():
    _, _, tr, loader = _fit(TF, prefetch=2, epochs=1)
    feed = tr._feed(loader, "test")
    for epoch in (0, 5):
        loader.set_epoch(epoch)
        want = list(loader)
        feed.set_epoch(epoch)
        feed.set_order(loader.order(epoch))
        for b in (0, 3, 1, 6):  # out of order: the prefetcher restarts
            xb, yb = feed.gather(b)
            np.testing.assert_array_equal(xb, want[b][0])
            np.testing.assert_array_equal(yb, want[b][1])
        feed.close()


def _threads():
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0


def test_no_prefetch_thread_left_after_fit_or_an_error():
    _fit(TF, prefetch=0, epochs=1)  # the OpenMP team's threads start once and stay: not counted
    before = _threads()
    _fit(TF, prefetch=3, epochs=1)
    assert _threads() <= before

    class Boom(ck.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _fit(TF, prefetch=3, epochs=1, callbacks=[Boom()])
    assert _threads() <= before


def test_transform_changing_the_size_feeds_the_model():
    x, y = _data()
    m = ck.Sequential(ck.Conv2d(1, 2, 3), ck.Flatten(), ck.Linear(2 * 8 * 8, 4))
    tr = ck.Trainer(m, optimizer="sgd")
    tf = T.Compose([T.RandomResizedCrop(10), T.Normalize((0.5,), (0.5,))])
    loader = ck.data.DataLoader(x, y, batch_size=50, transform=tf, prefetch=1)
    h = tr.fit(loader, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0]) and loader._native_feed is not None
