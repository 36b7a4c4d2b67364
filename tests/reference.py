"""numpy float64 reference implementations of every kernel (the ground truth for tests)."""

from __future__ import annotations

import numpy as np


def conv_out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def conv2d(x, w, b, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """x (N,C,H,W), w (K,C/g,R,S) -> (N,K,P,Q), direct loops over the kernel taps."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    P, Q = conv_out(H, R, sh, ph, dh), conv_out(W, S, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((N, K, P, Q))
    Kg = K // groups
    for g in range(groups):
        xs = xp[:, g * Cg : (g + 1) * Cg]
        ws = w[g * Kg : (g + 1) * Kg]
        for r in range(R):
            for s in range(S):
                patch = xs[
                    :,
                    :,
                    r * dh : r * dh + sh * (P - 1) + 1 : sh,
                    s * dw : s * dw + sw * (Q - 1) + 1 : sw,
                ]  # (N,Cg,P,Q)
                y[:, g * Kg : (g + 1) * Kg] += np.einsum("ncpq,kc->nkpq", patch, ws[:, :, r, s])
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_backward(x, w, dy, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Returns dx, dw, db for y = conv2d(x, w, b)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    dy = np.asarray(dy, np.float64)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    P, Q = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp)
    dw_ = np.zeros_like(w)
    Kg = K // groups
    for g in range(groups):
        cs = slice(g * Cg, (g + 1) * Cg)
        ks = slice(g * Kg, (g + 1) * Kg)
        for r in range(R):
            for s in range(S):
                hs = slice(r * dh, r * dh + sh * (P - 1) + 1, sh)
                wsl = slice(s * dw, s * dw + sw * (Q - 1) + 1, sw)
                patch = xp[:, cs, hs, wsl]
                dw_[ks, :, r, s] += np.einsum("ncpq,nkpq->kc", patch, dy[:, ks])
                dxp[:, cs, hs, wsl] += np.einsum("nkpq,kc->ncpq", dy[:, ks], w[ks, :, r, s])
    dx = dxp[:, :, ph : ph + H, pw : pw + W]
    return dx, dw_, dy.sum(axis=(0, 2, 3))


def im2col(x, k, s, p, d):
    """x (C,H,W) -> (C*R*S, P*Q)."""
    C, H, W = x.shape
    P, Q = conv_out(H, k[0], s[0], p[0], d[0]), conv_out(W, k[1], s[1], p[1], d[1])
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (p[0], p[0]), (p[1], p[1])))
    col = np.zeros((C, k[0], k[1], P, Q))
    for r in range(k[0]):
        for t in range(k[1]):
            col[:, r, t] = xp[
                :,
                r * d[0] : r * d[0] + s[0] * (P - 1) + 1 : s[0],
                t * d[1] : t * d[1] + s[1] * (Q - 1) + 1 : s[1],
            ]
    return col.reshape(C * k[0] * k[1], P * Q)


def col2im(col, shape, k, s, p, d):
    C, H, W = shape
    P, Q = conv_out(H, k[0], s[0], p[0], d[0]), conv_out(W, k[1], s[1], p[1], d[1])
    c = np.asarray(col, np.float64).reshape(C, k[0], k[1], P, Q)
    xp = np.zeros((C, H + 2 * p[0], W + 2 * p[1]))
    for r in range(k[0]):
        for t in range(k[1]):
            xp[
                :,
                r * d[0] : r * d[0] + s[0] * (P - 1) + 1 : s[0],
                t * d[1] : t * d[1] + s[1] * (Q - 1) + 1 : s[1],
            ] += c[:, r, t]
    return xp[:, p[0] : p[0] + H, p[1] : p[1] + W]


def pool_out(n, k, s, p, ceil_mode):
    span = n + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def maxpool2d(x, k, s, p, ceil_mode=False):
    """Returns y and, for backward, the flat argmax index per output."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    P, Q = pool_out(H, k[0], s[0], p[0], ceil_mode), pool_out(W, k[1], s[1], p[1], ceil_mode)
    y = np.full((N, C, P, Q), -np.inf)
    arg = np.full((N, C, P, Q), -1, dtype=np.int64)
    for i in range(P):
        for j in range(Q):
            h0, w0 = i * s[0] - p[0], j * s[1] - p[1]
            hs, ws = slice(max(h0, 0), min(h0 + k[0], H)), slice(max(w0, 0), min(w0 + k[1], W))
            win = x[:, :, hs, ws].reshape(N, C, -1)
            a = win.argmax(axis=2)
            y[:, :, i, j] = win.max(axis=2)
            wh = ws.stop - ws.start
            arg[:, :, i, j] = (hs.start + a // wh) * W + (ws.start + a % wh)
    return y, arg


def maxpool2d_backward(dy, arg, shape):
    N, C, H, W = shape
    dx = np.zeros((N, C, H * W))
    dyf = np.asarray(dy, np.float64).reshape(N, C, -1)
    af = arg.reshape(N, C, -1)
    for n in range(N):
        for c in range(C):
            np.add.at(dx[n, c], af[n, c], dyf[n, c])
    return dx.reshape(shape)


def avgpool2d(x, k, s, p, ceil_mode=False, count_include_pad=True):
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    P, Q = pool_out(H, k[0], s[0], p[0], ceil_mode), pool_out(W, k[1], s[1], p[1], ceil_mode)
    y = np.zeros((N, C, P, Q))
    div = np.zeros((P, Q))
    for i in range(P):
        for j in range(Q):
            h0, w0 = i * s[0] - p[0], j * s[1] - p[1]
            h1, w1 = min(h0 + k[0], H + p[0]), min(w0 + k[1], W + p[1])
            hs, ws = slice(max(h0, 0), min(h1, H)), slice(max(w0, 0), min(w1, W))
            if count_include_pad:
                d = (h1 - h0) * (w1 - w0)
            else:
                d = max((hs.stop - hs.start) * (ws.stop - ws.start), 1)
            div[i, j] = d
            y[:, :, i, j] = x[:, :, hs, ws].sum(axis=(2, 3)) / d
    return y, div


def batchnorm_train(x, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
    return xhat * gamma[None, :, None, None] + beta[None, :, None, None], mean, var


def softmax_cross_entropy(z, labels):
    z = np.asarray(z, np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1, keepdims=True)) + m
    p = np.exp(z - lse)
    N = len(labels)
    loss = float((lse[:, 0] - z[np.arange(N), labels]).mean())
    d = p.copy()
    d[np.arange(N), labels] -= 1
    return loss, d / N
