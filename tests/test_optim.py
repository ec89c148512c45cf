"""rnnfast.optim and clipping against torch.optim / torch.nn.utils in float64, over many steps with the same
gradients; state_dict round trips; schedules; bad arguments."""
import math

import numpy as np
import pytest

from conftest import assert_close, require_torch

import rnnfast
from rnnfast import optim
from rnnfast.module import Parameter

STEPS = 30


def _pair(torch, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (4,)]
    inits = [rng.standard_normal(s) for s in shapes]
    ours = [Parameter(a.copy()) for a in inits]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in inits]
    return ours, theirs, rng


def _set_same_grads(torch, ours, theirs, rng):
    """The same random gradient into each of our parameters and its torch twin."""
    for p, tp in zip(ours, theirs):
        g = rng.standard_normal(p.data.shape)
        p.grad[...] = g
        tp.grad = torch.tensor(g.copy())


def _run(torch, make_ours, make_theirs, steps=STEPS, sched=None):
    ours, theirs, rng = _pair(torch)
    o, t = make_ours(ours), make_theirs(theirs)
    so, st = (sched(o, t) if sched else (None, None))
    for _ in range(steps):
        _set_same_grads(torch, ours, theirs, rng)
        o.step()
        t.step()
        if so is not None:
            so.step()
            st.step()
            assert abs(o.lr - st.get_last_lr()[0]) <= 1e-12 * max(abs(o.lr), 1e-30)
    for p, tp in zip(ours, theirs):
        assert_close(p.data, tp, 1e-12, "parameter after the optimizer steps")
    return o


@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3),
                                dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)],
                         ids=["plain", "momentum", "dampening", "nesterov_wd"])
def test_sgd_matches_torch(kw):
    torch = require_torch()
    _run(torch, lambda p: optim.SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw))


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("kw", [dict(), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                                dict(lr=0.01, amsgrad=True)], ids=["default", "custom", "amsgrad"])
def test_adam_family_matches_torch(cls, kw):
    torch = require_torch()
    _run(torch, lambda p: getattr(optim, cls)(p, **kw), lambda p: getattr(torch.optim, cls)(p, **kw))


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR"])
def test_schedules_match_torch(name):
    torch = require_torch()
    kw = dict(step_size=4, gamma=0.5) if name == "StepLR" else dict(T_max=10, eta_min=1e-3)
    _run(torch, lambda p: optim.SGD(p, lr=0.1, momentum=0.5), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5),
         steps=12, sched=lambda o, t: (getattr(optim, name)(o, **kw),
                                       getattr(torch.optim.lr_scheduler, name)(t, **kw)))


def test_reduce_on_plateau_matches_torch():
    torch = require_torch()
    o = optim.SGD([Parameter(np.zeros(2))], lr=1.0)
    t = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=1.0)
    kw = dict(factor=0.5, patience=2, cooldown=1, threshold=0.01)
    so, st = optim.ReduceLROnPlateau(o, **kw), torch.optim.lr_scheduler.ReduceLROnPlateau(t, **kw)
    for metric in [5, 4, 4, 4, 4, 4, 3.99, 3.99, 3.99, 3.99, 1, 1, 1, 1, 1]:
        so.step(metric)
        st.step(metric)
        assert o.lr == t.param_groups[0]["lr"]
    assert o.lr < 1.0


def test_state_dict_round_trip_continues_identically():
    ps = [Parameter(np.ones(3))]
    a = optim.Adam(ps, lr=0.1)
    for _ in range(3):
        ps[0].grad[...] = [1.0, -2.0, 0.5]
        a.step()
    sd = a.state_dict()
    qs = [Parameter(ps[0].data.copy())]
    b = optim.Adam(qs, lr=0.5)
    b.load_state_dict(sd)
    assert b.lr == 0.1
    for p, o in ((ps, a), (qs, b)):
        p[0].grad[...] = [0.3, 0.3, 0.3]
        o.step()
    np.testing.assert_array_equal(ps[0].data, qs[0].data)
    sd["state"][0]["exp_avg"][...] = 99  # the state dict is a copy
    assert not np.any(a.state[0]["exp_avg"] == 99)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = require_torch()
    ours, theirs, rng = _pair(torch, 7)
    _set_same_grads(torch, ours, theirs, rng)
    total = rnnfast.clip_grad_norm_(ours, max_norm, norm_type)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert abs(total - float(want)) <= 1e-12 * float(want)
    for p, tp in zip(ours, theirs):
        assert_close(p.grad, tp.grad, 1e-12, "clipped gradient")


def test_clip_grad_value_matches_torch():
    torch = require_torch()
    ours, theirs, rng = _pair(torch, 8)
    _set_same_grads(torch, ours, theirs, rng)
    rnnfast.clip_grad_value_(ours, 0.3)
    torch.nn.utils.clip_grad_value_(theirs, 0.3)
    for p, tp in zip(ours, theirs):
        assert_close(p.grad, tp.grad, 0, "clipped gradient")


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="params"):
        optim.SGD(rnnfast.nn.Linear(2, 2), lr=0.1)
    with pytest.raises(TypeError, match="params\\[0\\]"):
        optim.Adam([np.zeros(3)])
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([Parameter(np.zeros(1))], lr=-1)
    with pytest.raises(ValueError, match="beta"):
        optim.Adam([Parameter(np.zeros(1))], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([Parameter(np.zeros(1))], lr=0.1, nesterov=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        p = Parameter(np.zeros(2))
        p.grad[0] = np.nan
        rnnfast.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
