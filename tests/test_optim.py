"""Optimizers and learning-rate schedules: numpy float64 references of PyTorch's update rules,
step-by-step parity with torch.optim (when torch is importable), schedule lr sequences, and
hyper-parameter validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import optim

# (name, constructor kwargs) — several settings per rule, including the optional branches.
CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, betas=(0.85, 0.99), weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.01, eps=1e-6)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.7)),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
STEPS = 5


def tiny_model(seed: int = 0) -> ck.Sequential:
    ck.manual_seed(seed)
    return ck.Sequential([
        ck.Conv2d(1, 3, 3), ck.ReLU(), ck.Flatten(), ck.Linear(3 * 4 * 4, 4), ck.Tanh(),
        ck.Linear(4, 3),
    ])


def unflatten(flat: np.ndarray, model: ck.Sequential) -> dict[str, np.ndarray]:
    """Split a flat optimizer buffer into parameters: each starts at a multiple of 16 floats,
    in state_dict order (docs/file-format.md)."""
    out, off = {}, 0
    for k, v in model.state_dict().items():
        if k in model._net.param_names():
            out[k] = flat[off : off + v.size].reshape(v.shape)
            off += -(-v.size // 16) * 16
    assert off == flat.size
    return out


def batch(rng, n: int = 6):
    x = rng.standard_normal((n, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, n)
    return x, y


# ---------------------------------------------------------------------------------------------
# numpy float64 references of the PyTorch rules
# ---------------------------------------------------------------------------------------------


class Reference:
    """PyTorch's update rules in float64 over a dict of named parameters."""

    def __init__(self, name: str, params: dict[str, np.ndarray], **h) -> None:
        self.name, self.h, self.t = name, h, 0
        self.w = {k: v.astype(np.float64) for k, v in params.items()}
        self.s: dict[str, dict[str, np.ndarray]] = {k: {} for k in params}

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for k, g in grads.items():
            self.w[k] = self._update(self.w[k], g.astype(np.float64), self.s[k])

    def _update(self, w, g, s):
        h, t = self.h, self.t
        lr, wd = h.get("lr"), h.get("weight_decay", 0.0)
        if self.name == "SGD":
            mom, damp = h.get("momentum", 0.0), h.get("dampening", 0.0)
            d = g + wd * w
            if mom:
                s["buf"] = d.copy() if t == 1 else mom * s["buf"] + (1 - damp) * d
                d = d + mom * s["buf"] if h.get("nesterov") else s["buf"]
            return w - lr * d
        if self.name in ("Adam", "AdamW"):
            b1, b2 = h.get("betas", (0.9, 0.999))
            eps = h.get("eps", 1e-8)
            wd = h.get("weight_decay", 1e-2 if self.name == "AdamW" else 0.0)
            if self.name == "AdamW":
                w = w * (1 - lr * wd)
                d = g
            else:
                d = g + wd * w
            s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * d
            s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * d * d
            denom = np.sqrt(s["v"]) / math.sqrt(1 - b2**t) + eps
            return w - lr / (1 - b1**t) * s["m"] / denom
        if self.name == "Adagrad":
            clr = lr / (1 + (t - 1) * h.get("lr_decay", 0.0))
            d = g + wd * w
            s["sum"] = s.get("sum", 0.0) + d * d
            return w - clr * d / (np.sqrt(s["sum"]) + h.get("eps", 1e-10))
        # RMSprop
        alpha, eps, mom = h.get("alpha", 0.99), h.get("eps", 1e-8), h.get("momentum", 0.0)
        d = g + wd * w
        s["sq"] = alpha * s.get("sq", 0.0) + (1 - alpha) * d * d
        avg = np.sqrt(s["sq"]) + eps
        if mom > 0:
            s["buf"] = mom * s.get("buf", 0.0) + d / avg
            return w - lr * s["buf"]
        return w - lr * d / avg


@pytest.mark.parametrize(("name", "hyper"), CASES, ids=IDS)
def test_optimizer_matches_float64_reference(name, hyper, rng):
    model = tiny_model()
    opt = getattr(optim, name)(model, **hyper)
    loss = ck.losses.CrossEntropyLoss()
    names = model._net.param_names()
    ref = Reference(name, {k: v for k, v in model.state_dict().items() if k in names}, **hyper)
    for step in range(STEPS):
        x, y = batch(rng)
        loss(model.forward(x, training=True), y)
        model.backward(loss.backward())
        grads = model.grad_dict()
        opt.step()
        ref.step(grads)
        assert opt.step_count == step + 1
        for k in names:
            got = model.state_dict()[k].astype(np.float64)
            err = np.abs(got - ref.w[k])
            bound = 1e-6 + 1e-5 * np.abs(ref.w[k])
            assert np.all(err <= bound), f"{name} step {step + 1} {k}: max err {err.max():.3g}"
        # step() zeroes the gradients (PyTorch users still call zero_grad: harmless)
        assert all(np.all(g == 0) for g in model.grad_dict().values())
        opt.zero_grad()


@pytest.mark.requires_torch
@pytest.mark.parametrize(("name", "hyper"), CASES, ids=IDS)
def test_optimizer_matches_torch_step_by_step(name, hyper, rng):
    """torch.optim given the same float32 weights and, each step, the same gradients (ours:
    the gradients themselves are checked against torch elsewhere; normalising optimizers
    would amplify their last-bit differences where |g| ~ eps)."""
    torch = pytest.importorskip("torch")
    model = tiny_model()
    tm = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(48, 4),
        torch.nn.Tanh(), torch.nn.Linear(4, 3),
    )
    tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    params = dict(tm.named_parameters())
    ours = getattr(optim, name)(model, **hyper)
    theirs = getattr(torch.optim, name)(tm.parameters(), **hyper)
    loss = ck.losses.CrossEntropyLoss()
    for step in range(STEPS):
        x, y = batch(rng)
        loss(model.forward(x, training=True), y)
        model.backward(loss.backward())
        for k, g in model.grad_dict().items():
            params[k].grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        ref = tm.state_dict()
        for k, v in model.state_dict().items():
            r = ref[k].numpy()
            err = np.abs(v - r)
            assert np.all(err <= 1e-6 + 1e-5 * np.abs(r)), (
                f"{name} step {step + 1} {k}: max err {err.max():.3g}"
            )
    # the state buffers hold what torch holds, per parameter (see docs/file-format.md)
    theirs_state = theirs.state_dict()["state"]
    ours_state = ours.state_dict()
    assert ours_state["step"] == STEPS
    for buf, flat in ours_state["buffers"].items():
        for i, (k, a) in enumerate(unflatten(flat, model).items()):
            if buf in theirs_state.get(i, {}):
                r = theirs_state[i][buf].numpy()
                assert np.all(np.abs(a - r) <= 1e-6 + 1e-5 * np.abs(r)), f"{name} {buf} {k}"


def test_fused_train_step_equals_manual_loop(rng):
    """net.train_step (what the Trainer calls) == forward/backward/opt.step, bit for bit."""
    a, b = tiny_model(), tiny_model()
    optim.Adam(lr=0.01, weight_decay=0.01).attach(a)
    opt_b = optim.Adam(b, lr=0.01, weight_decay=0.01)
    a._net.set_loss("cross_entropy")
    loss = ck.losses.CrossEntropyLoss()
    for _ in range(3):
        x, y = batch(rng)
        la, _ = a._net.train_step(x, y)
        lb = loss(b.forward(x, training=True), y)
        b.backward(loss.backward())
        opt_b.step()
        assert la == pytest.approx(lb, rel=1e-6)
    np.testing.assert_array_equal(a._net.flat_params(), b._net.flat_params())


# ---------------------------------------------------------------------------------------------
# API: attach, lr, state_dict
# ---------------------------------------------------------------------------------------------


def test_lr_property_pushes_to_the_model():
    model = tiny_model()
    opt = optim.SGD(lr=0.1, momentum=0.9)
    assert opt.model is None and opt.lr == 0.1
    opt.attach(model)
    assert model._net.get_lr() == pytest.approx(0.1)
    opt.lr = 0.025
    assert model._net.get_lr() == pytest.approx(0.025)
    with pytest.raises(ValueError, match="SGD: lr"):
        opt.lr = -1.0


def test_reattach_keeps_state_and_new_optimizer_takes_over(rng):
    model = tiny_model()
    opt = optim.Adam(model, lr=0.01)
    model._net.set_loss("cross_entropy")
    for _ in range(2):
        model._net.train_step(*batch(rng))
    assert opt.step_count == 2
    opt.attach(model)  # again: a no-op
    assert opt.step_count == 2
    other = optim.SGD(model, lr=0.1)
    assert other.step_count == 0
    with pytest.raises(ValueError, match="another optimizer"):
        opt.step()


def test_state_dict_round_trip_continues_identically(rng):
    batches = [batch(rng) for _ in range(6)]
    for cls, kw in [(optim.SGD, dict(lr=0.05, momentum=0.9)), (optim.Adam, dict(lr=0.01)),
                    (optim.RMSprop, dict(lr=0.01, momentum=0.5)), (optim.Adagrad, {})]:
        a = tiny_model()
        opt_a = cls(a, **kw)
        a._net.set_loss("cross_entropy")
        for xb, yb in batches[:3]:
            a._net.train_step(xb, yb)
        st = opt_a.state_dict()
        assert st["step"] == 3 and sorted(st["buffers"]) == sorted(opt_a.state_names())
        b = tiny_model(seed=5)
        b.load_state_dict(a.state_dict())
        opt_b = cls(**kw)
        opt_b.load_state_dict(st)  # before attach: applied on attach
        opt_b.attach(b)
        b._net.set_loss("cross_entropy")
        assert opt_b.step_count == 3
        for xb, yb in batches[3:]:
            a._net.train_step(xb, yb)
            b._net.train_step(xb, yb)
        np.testing.assert_array_equal(a._net.flat_params(), b._net.flat_params())


def test_pytorch_style_construction_and_errors():
    model = tiny_model()
    opt = optim.SGD(model, lr=0.1)
    assert opt.model is model
    with pytest.raises(ValueError, match="by keyword"):
        optim.SGD(0.1)
    with pytest.raises(ValueError, match="not attached"):
        optim.Adam().step()
    with pytest.raises(ValueError, match="Sequential"):
        optim.Adam().attach(object())
    assert isinstance(optim.get("adamw"), optim.AdamW)
    assert optim.get("adamw").get_config()["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.get("lbfgs")
    with pytest.raises(ValueError, match="state is for 'sgd'"):
        optim.Adam().load_state_dict(optim.SGD().state_dict())


def test_defaults_follow_pytorch():
    assert optim.SGD().get_config() == dict(lr=1e-3, momentum=0.0, dampening=0.0,
                                            weight_decay=0.0, nesterov=False)
    assert optim.Adam().get_config() == dict(lr=1e-3, betas=[0.9, 0.999], eps=1e-8,
                                             weight_decay=0.0)
    assert optim.AdamW().get_config()["weight_decay"] == 1e-2
    assert optim.Adagrad().get_config() == dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                                                eps=1e-10)
    assert optim.RMSprop().get_config() == dict(lr=1e-2, alpha=0.99, eps=1e-8,
                                                weight_decay=0.0, momentum=0.0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: optim.SGD(lr=-0.1), "SGD: lr"),
        (lambda: optim.SGD(lr=float("nan")), "SGD: lr"),
        (lambda: optim.SGD(lr="0.1"), "SGD: lr must be a number"),
        (lambda: optim.SGD(momentum=-0.5), "SGD: momentum"),
        (lambda: optim.SGD(weight_decay=-1), "SGD: weight_decay"),
        (lambda: optim.SGD(nesterov=True), "SGD: nesterov"),
        (lambda: optim.SGD(momentum=0.9, dampening=0.1, nesterov=True), "SGD: nesterov"),
        (lambda: optim.Adam(betas=(1.0, 0.999)), r"Adam: betas\[0\]"),
        (lambda: optim.Adam(betas=(0.9, -0.1)), r"Adam: betas\[1\]"),
        (lambda: optim.Adam(betas=0.9), "Adam: betas must be a pair"),
        (lambda: optim.Adam(eps=-1e-8), "Adam: eps"),
        (lambda: optim.AdamW(weight_decay=-0.01), "AdamW: weight_decay"),
        (lambda: optim.Adagrad(lr_decay=-1), "Adagrad: lr_decay"),
        (lambda: optim.Adagrad(eps=float("inf")), "Adagrad: eps"),
        (lambda: optim.RMSprop(alpha=-0.1), "RMSprop: alpha"),
        (lambda: optim.RMSprop(momentum=-1), "RMSprop: momentum"),
    ],
)
def test_bad_hyper_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------


def _run(sched, n, metrics=None):
    lrs = [sched.optimizer.lr]
    for i in range(n):
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[i])
        lrs.append(sched.optimizer.lr)
        assert sched.get_last_lr() == [pytest.approx(lrs[-1])]
    return lrs


def test_schedules_closed_forms():
    opt = optim.SGD(lr=0.1)
    got = _run(optim.StepLR(opt, step_size=3, gamma=0.5), 9)
    assert got == pytest.approx([0.1 * 0.5 ** (e // 3) for e in range(10)])
    opt = optim.SGD(lr=0.1)
    got = _run(optim.CosineAnnealingLR(opt, T_max=5, eta_min=0.01), 12)
    want = [0.01 + 0.09 * (1 + math.cos(math.pi * e / 5)) / 2 for e in range(13)]
    assert got == pytest.approx(want)
    opt = optim.SGD(lr=0.1)
    got = _run(optim.LinearWarmup(opt, warmup_steps=4, start_factor=0.2), 6)
    want = [0.1 * (0.2 + 0.8 * min(e, 4) / 4) for e in range(7)]
    assert got == pytest.approx(want)


def test_warmup_scales_the_schedule_after_it():
    opt = optim.SGD(lr=0.1)
    inner = optim.StepLR(opt, step_size=1, gamma=0.5)
    warm = optim.LinearWarmup(opt, warmup_steps=4, start_factor=0.25, after=inner)
    assert opt.lr == pytest.approx(0.025)
    warm.step()  # batch 1
    assert opt.lr == pytest.approx(0.1 * 0.4375)
    warm.epoch_step()  # end of an epoch during warm-up: StepLR halves, warm-up still scales
    assert opt.lr == pytest.approx(0.05 * 0.4375)
    for _ in range(5):
        warm.step()
    assert opt.lr == pytest.approx(0.05)
    warm.epoch_step()
    assert opt.lr == pytest.approx(0.025)


def test_reduce_lr_on_plateau_semantics():
    opt = optim.SGD(lr=1.0)
    s = optim.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1, min_lr=0.2)
    metrics = [5, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    got = _run(s, len(metrics), metrics)
    # improve, improve, bad, bad->reduce(0.5), cooldown, bad, bad->reduce(.25), cooldown, ...
    assert got == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2])
    st = s.state_dict()
    s2 = optim.scheduler_from_state(optim.SGD(lr=1.0), st)
    assert s2.state_dict() == st


@pytest.mark.requires_torch
def test_schedules_match_torch():
    torch = pytest.importorskip("torch")
    sch = torch.optim.lr_scheduler

    def theirs(make, n, metrics=None):
        p = torch.nn.Parameter(torch.zeros(1))
        o = torch.optim.SGD([p], lr=0.1)
        s = make(o)
        out = [o.param_groups[0]["lr"]]
        for i in range(n):
            o.step()
            s.step() if metrics is None else s.step(metrics[i])
            out.append(o.param_groups[0]["lr"])
        return out

    n = 14
    cases = [
        (lambda o: optim.StepLR(o, 4, gamma=0.3), lambda o: sch.StepLR(o, 4, gamma=0.3)),
        (lambda o: optim.CosineAnnealingLR(o, T_max=6, eta_min=1e-3),
         lambda o: sch.CosineAnnealingLR(o, T_max=6, eta_min=1e-3)),
        (lambda o: optim.LinearWarmup(o, 5, start_factor=0.1),
         lambda o: sch.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=5)),
    ]
    for ours_make, theirs_make in cases:
        ours = _run(ours_make(optim.SGD(lr=0.1)), n)
        assert ours == pytest.approx(theirs(theirs_make, n), rel=1e-9)
    metrics = [3.0, 2.0, 2.0, 2.1, 1.99995, 2.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9]
    for kw in [dict(), dict(factor=0.5, patience=2, cooldown=1, min_lr=0.02),
               dict(mode="max", patience=0, threshold=0.1, threshold_mode="abs")]:
        ours = _run(optim.ReduceLROnPlateau(optim.SGD(lr=0.1), **kw), n, metrics)
        want = theirs(lambda o, kw=kw: sch.ReduceLROnPlateau(o, **kw), n, metrics)
        assert ours == pytest.approx(want, rel=1e-9)


def test_schedule_state_round_trip_and_validation():
    opt = optim.SGD(lr=0.1)
    s = optim.CosineAnnealingLR(opt, T_max=10)
    for _ in range(3):
        s.step()
    opt2 = optim.SGD(lr=0.1)
    s2 = optim.scheduler_from_state(opt2, s.state_dict())
    assert opt2.lr == pytest.approx(opt.lr)
    s.step()
    s2.step()
    assert opt2.lr == pytest.approx(opt.lr)
    with pytest.raises(ValueError, match="step_size"):
        optim.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="T_max"):
        optim.CosineAnnealingLR(opt, T_max=-1)
    with pytest.raises(ValueError, match="factor"):
        optim.ReduceLROnPlateau(opt, factor=1.5)
    with pytest.raises(ValueError, match="start_factor"):
        optim.LinearWarmup(opt, 10, start_factor=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        optim.StepLR(object(), 2)
