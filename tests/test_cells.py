"""rnnfast.RNNCell / LSTMCell / GRUCell: single fused steps in a loop the test writes, and BPTT through that
loop by calling the cell's backward once per step in reverse order.

Against torch.nn.RNNCell (tanh, relu), LSTMCell and GRUCell with the same weights: every h_t (and c_t), every
dx_t, dh0, dc0 and every parameter gradient. torch runs in float64 (weights and inputs cast up) and is the
oracle for both dtypes: float64 results to 1e-10, float32 results to 1e-5 (normwise relative error). Also the
autoregressive / scheduled-sampling pattern (the cell's own output through a fixed readout as the next input),
one and two (exact) threads, the record's stack semantics, state dicts, bad input, and that nothing the caller
passes is modified and nothing returned aliases the record.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import CELLS, DTYPE_IDS, DTYPES, assert_close, max_abs, require_torch, tol_for  # noqa: E402

import rnnfast  # noqa: E402
from rnnfast import cells as rc  # noqa: E402

# Every kernel output starts as NaN (see conftest.py).
pytestmark = pytest.mark.usefixtures("poison_outputs")

BAD = (ValueError, TypeError)
T, B, I, H = 6, 3, 5, 7
PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


@pytest.fixture(params=[(1, False), (2, True)], ids=["threads1", "threads2exact"])
def threads(request):
    """rnnfast.set_num_threads(1) and (2, exact=True); the previous setting is restored afterwards."""
    old_n, old_exact = rnnfast.get_num_threads(), bool(getattr(rnnfast.backend, "_exact", False))
    n, exact = request.param
    try:
        rnnfast.set_num_threads(n, exact=exact)
        yield n
    finally:
        rnnfast.set_num_threads(old_n, exact=old_exact)


# --------------------------------------------------------------------------- helpers


def make_cell(cell, input_size=I, hidden_size=H, dtype=np.float64, bias=True, seed=0):
    kw = dict(bias=bias, dtype=dtype, seed=seed)
    if cell in ("rnn_tanh", "rnn_relu"):
        return rc.RNNCell(input_size, hidden_size, nonlinearity=cell[4:], **kw)
    return {"lstm": rc.LSTMCell, "gru": rc.GRUCell}[cell](input_size, hidden_size, **kw)


def torch_cell(torch, cell, m):
    """The torch.nn cell (float64) holding m's weights, loaded from m's state_dict."""
    kw = dict(bias=m.bias, dtype=torch.float64)
    if cell in ("rnn_tanh", "rnn_relu"):
        tm = torch.nn.RNNCell(m.input_size, m.hidden_size, nonlinearity=cell[4:], **kw)
    else:
        tm = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[cell](m.input_size, m.hidden_size, **kw)
    tm.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in m.state_dict().items()})
    return tm


def problem(cell, layout, dtype, seed, Tn=T, input_size=I, hidden_size=H):
    """Inputs for a loop: xs (T of them), h0, c0, loss weights R_t on every h_t and Q on the last c.
    layout: "batched" (B=3), "b1" (B=1) or "unbatched"."""
    rng = np.random.default_rng(seed)
    lead = {"batched": (B,), "b1": (1,), "unbatched": ()}[layout]

    def r(*shape, scale=1.0):
        return (scale * rng.standard_normal(lead + shape)).astype(dtype)

    p = dict(xs=[r(input_size) for _ in range(Tn)], h0=r(hidden_size, scale=0.5),
             c0=r(hidden_size, scale=0.5) if cell == "lstm" else None,
             R=[r(hidden_size) for _ in range(Tn)], Q=r(hidden_size) if cell == "lstm" else None)
    return p


def rf_loop(m, cell, xs, h0, c0, R, Q, feed=None, W_out=None, state_none=False):
    """The user's loop with an rnnfast cell, then BPTT by the cell's backward in reverse order.

    Step t takes xs[t], or with feed[t] the previous output through the readout, h_{t-1} @ W_out. The loss is
    sum_t sum(h_t * R[t]) (+ sum(c_T * Q) for the LSTM when Q is given). Returns forward states, dx_t for the
    steps that took xs[t], dh0, dc0 and the parameter gradients (accumulated from zero)."""
    Tn = len(xs)
    feed = feed or [False] * Tn
    lstm = cell == "lstm"
    m.train()
    m.zero_grad()
    m.reset()
    h, c = (None, None) if state_none else (h0, c0)
    hs, cs = [], []
    for t in range(Tn):
        x_t = hs[-1] @ W_out if feed[t] else xs[t]
        if lstm:
            h, c = m(x_t, None if state_none and t == 0 else (h, c))
            cs.append(c)
        else:
            h = m(x_t, h)
        hs.append(h)
    assert m.num_recorded == Tn
    dh = np.zeros_like(hs[-1])
    dc = Q if lstm else None
    dxs = [None] * Tn
    for t in reversed(range(Tn)):
        g = dh + R[t]
        if t + 1 < Tn and feed[t + 1]:
            g = g + dxs[t + 1] @ W_out.T
        if lstm:
            dxs[t], (dh, dc) = m.backward((g, dc))
        else:
            dxs[t], dh = m.backward(g)
    assert m.num_recorded == 0
    return dict(hs=hs, cs=cs, dxs=[d for d, f in zip(dxs, feed) if not f], dh0=dh, dc0=dc,
                grads={n: prm.grad.copy() for n, prm in m.named_parameters()})


def torch_loop(torch, tm, cell, xs, h0, c0, R, Q, feed=None, W_out=None):
    """The same loop and loss in torch (float64) with autograd; zeros where h0/c0 are None."""
    Tn = len(xs)
    feed = feed or [False] * Tn
    lstm = cell == "lstm"

    def t64(a, grad=False):
        return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)

    shape = xs[0].shape[:-1] + (tm.hidden_size,)
    h0t = t64(np.zeros(shape) if h0 is None else h0, True)
    c0t = t64(np.zeros(shape) if c0 is None else c0, True) if lstm else None
    xts = [None if f else t64(x, True) for x, f in zip(xs, feed)]
    Wt = None if W_out is None else t64(W_out)
    tm.zero_grad(set_to_none=True)
    h, c = h0t, c0t
    hs, cs = [], []
    loss = 0
    for t in range(Tn):
        x_t = hs[-1] @ Wt if feed[t] else xts[t]
        if lstm:
            h, c = tm(x_t, (h, c))
            cs.append(c)
        else:
            h = tm(x_t, h)
        hs.append(h)
        loss = loss + (h * t64(R[t])).sum()
    if lstm and Q is not None:
        loss = loss + (c * t64(Q)).sum()
    loss.backward()
    return dict(hs=[a.detach().numpy() for a in hs], cs=[a.detach().numpy() for a in cs],
                dxs=[x.grad.numpy() for x in xts if x is not None], dh0=h0t.grad.numpy(),
                dc0=None if c0t is None else c0t.grad.numpy(),
                grads={n: prm.grad.numpy() for n, prm in tm.named_parameters()})


def compare(got, ref, cell, tol):
    fwd_scale = max_abs(*ref["hs"], *ref["cs"])
    for t, (g, r) in enumerate(zip(got["hs"], ref["hs"])):
        assert_close(g, r, tol, f"h_{t}", scale=fwd_scale)
    assert len(got["cs"]) == len(ref["cs"])
    for t, (g, r) in enumerate(zip(got["cs"], ref["cs"])):
        assert_close(g, r, tol, f"c_{t}", scale=fwd_scale)
    bwd_scale = max_abs(*ref["dxs"], ref["dh0"], ref["dc0"])
    assert len(got["dxs"]) == len(ref["dxs"])
    for t, (g, r) in enumerate(zip(got["dxs"], ref["dxs"])):
        assert_close(g, r, tol, f"dx_{t}", scale=bwd_scale)
    assert_close(got["dh0"], ref["dh0"], tol, "dh0", scale=bwd_scale)
    if cell == "lstm":
        assert_close(got["dc0"], ref["dc0"], tol, "dc0", scale=bwd_scale)
    else:
        assert got["dc0"] is None
    assert set(got["grads"]) == set(ref["grads"]), (set(got["grads"]), set(ref["grads"]))
    grad_scale = max_abs(*ref["grads"].values())
    for n, g in ref["grads"].items():
        assert_close(got["grads"][n], g, tol, f"{n}.grad", scale=grad_scale)


def snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_same(arrays, snap, what):
    for a, s in zip(arrays, snap):
        if a is not None:
            np.testing.assert_array_equal(a, s, err_msg=f"{what} was modified")


# --------------------------------------------------------------------------- against torch


@pytest.mark.parametrize("layout", ["batched", "b1", "unbatched"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_loop_bptt_matches_torch(cell, dtype, layout, threads):
    torch = require_torch()
    m = make_cell(cell, dtype=dtype, seed=1)
    p = problem(cell, layout, dtype, seed=2)
    inputs = p["xs"] + p["R"] + [p["h0"]] + ([p["c0"], p["Q"]] if cell == "lstm" else [])
    snap = snapshot(*inputs)
    got = rf_loop(m, cell, p["xs"], p["h0"], p["c0"], p["R"], p["Q"])
    assert_same(inputs, snap, "an input of the loop")
    ref = torch_loop(torch, torch_cell(torch, cell, m), cell, p["xs"], p["h0"], p["c0"], p["R"], p["Q"])
    compare(got, ref, cell, tol_for(dtype))
    # Every returned array is in the caller's layout and dtype.
    lead = {"batched": (B,), "b1": (1,), "unbatched": ()}[layout]
    for a in got["hs"] + got["cs"] + [got["dh0"]] + ([got["dc0"]] if cell == "lstm" else []):
        assert a.shape == lead + (H,) and a.dtype == dtype
    for a in got["dxs"]:
        assert a.shape == lead + (I,) and a.dtype == dtype


@pytest.mark.parametrize("cell", CELLS)
def test_loop_without_bias_matches_torch(cell):
    torch = require_torch()
    m = make_cell(cell, bias=False, seed=3)
    assert [n for n, _ in m.named_parameters()] == ["weight_ih", "weight_hh"]
    p = problem(cell, "batched", np.float64, seed=4)
    got = rf_loop(m, cell, p["xs"], p["h0"], p["c0"], p["R"], p["Q"])
    ref = torch_loop(torch, torch_cell(torch, cell, m), cell, p["xs"], p["h0"], p["c0"], p["R"], p["Q"])
    compare(got, ref, cell, tol_for(np.float64))


@pytest.mark.parametrize("layout", ["batched", "unbatched"])
@pytest.mark.parametrize("cell", CELLS)
def test_state_none_is_zeros_and_matches_torch(cell, layout):
    torch = require_torch()
    m = make_cell(cell, seed=5)
    p = problem(cell, layout, np.float64, seed=6, Tn=3)
    got = rf_loop(m, cell, p["xs"], None, None, p["R"], p["Q"], state_none=True)
    ref = torch_loop(torch, torch_cell(torch, cell, m), cell, p["xs"], None, None, p["R"], p["Q"])
    compare(got, ref, cell, tol_for(np.float64))


@pytest.mark.parametrize("mode", ["free_running", "scheduled"])
@pytest.mark.parametrize("readout", ["matrix", "identity"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_autoregressive_decoding_matches_torch(cell, dtype, readout, mode, threads):
    """The cell's output through a fixed linear readout is the next input (I != H with a readout matrix, or
    I == H fed back directly); "scheduled" alternates that with given (teacher-forced) inputs. The gradient of
    each fed-back input flows into the output it came from. The LSTM has no loss on c here (dc=None)."""
    torch = require_torch()
    in_size = I if readout == "matrix" else H
    m = make_cell(cell, input_size=in_size, dtype=dtype, seed=7)
    p = problem(cell, "batched", dtype, seed=8, input_size=in_size)
    if readout == "matrix":
        W_out = (np.random.default_rng(9).standard_normal((H, I)) / np.sqrt(H)).astype(dtype)
    else:
        W_out = np.eye(H, dtype=dtype)
    feed = [t > 0 and (mode == "free_running" or t % 2 == 1) for t in range(T)]
    got = rf_loop(m, cell, p["xs"], p["h0"], p["c0"], p["R"], None, feed=feed, W_out=W_out)
    ref = torch_loop(torch, torch_cell(torch, cell, m), cell, p["xs"], p["h0"], p["c0"], p["R"], None,
                     feed=feed, W_out=W_out)
    assert len(ref["dxs"]) == T - sum(feed)
    compare(got, ref, cell, tol_for(dtype))


@pytest.mark.parametrize("cell", CELLS)
def test_mixed_layouts_in_one_record(cell):
    """Steps of different batch layouts in one record: each backward checks dh against, and returns the
    layout of, the step it pops (here a batched step under an unbatched one, two sequences interleaved)."""
    torch = require_torch()
    m = make_cell(cell, seed=10)
    tm = torch_cell(torch, cell, m)
    pa = problem(cell, "batched", np.float64, seed=11, Tn=1)
    pb = problem(cell, "unbatched", np.float64, seed=12, Tn=1)
    lstm = cell == "lstm"
    m.zero_grad()
    for p in (pa, pb):
        m(p["xs"][0], (p["h0"], p["c0"]) if lstm else p["h0"])
    results = {}
    for name, p in (("b", pb), ("a", pa)):
        bad = np.zeros((B, H)) if name == "b" else np.zeros(H)
        with pytest.raises(ValueError, match=r"\bdh\b"):
            m.backward((bad, None) if lstm else bad)
        if lstm:
            dx, (dh, dc) = m.backward((p["R"][0], p["Q"]))
        else:
            (dx, dh), dc = m.backward(p["R"][0]), None
        results[name] = dict(dxs=[dx], dh0=dh, dc0=dc)
    grads = {n: prm.grad for n, prm in m.named_parameters()}
    ref_grads = None
    for name, p in (("a", pa), ("b", pb)):
        ref = torch_loop(torch, tm, cell, p["xs"], p["h0"], p["c0"], p["R"], p["Q"])
        ref_grads = ref["grads"] if ref_grads is None else {n: ref_grads[n] + g for n, g in ref["grads"].items()}
        got, tol = results[name], tol_for(np.float64)
        scale = max_abs(*ref["dxs"], ref["dh0"], ref["dc0"])
        assert_close(got["dxs"][0], ref["dxs"][0], tol, f"dx_t ({name})", scale=scale)
        assert_close(got["dh0"], ref["dh0"], tol, f"dh_prev ({name})", scale=scale)
        if lstm:
            assert_close(got["dc0"], ref["dc0"], tol, f"dc_prev ({name})", scale=scale)
    for n, g in ref_grads.items():
        assert_close(grads[n], g, tol_for(np.float64), f"{n}.grad", scale=max_abs(*ref_grads.values()))


# --------------------------------------------------------------------------- record semantics


def _steps(m, cell, p, n):
    h = (p["h0"], p["c0"]) if cell == "lstm" else p["h0"]
    for t in range(n):
        h = m(p["xs"][t], h)
    return h


def _dstate(cell, dh, dc=None):
    return (dh, dc) if cell == "lstm" else dh


@pytest.mark.parametrize("cell", CELLS)
def test_empty_record_raises_runtime_error(cell):
    m = make_cell(cell)
    dh = np.ones((B, H))
    with pytest.raises(RuntimeError, match="no recorded step"):
        m.backward(_dstate(cell, dh))
    p = problem(cell, "batched", np.float64, seed=13)
    _steps(m, cell, p, 2)
    m.backward(_dstate(cell, dh))
    m.backward(_dstate(cell, dh))
    with pytest.raises(RuntimeError, match="no recorded step"):  # popped empty again
        m.backward(_dstate(cell, dh))


@pytest.mark.parametrize("cell", CELLS)
def test_reset_clears_the_record(cell):
    m = make_cell(cell)
    p = problem(cell, "batched", np.float64, seed=14)
    _steps(m, cell, p, 3)
    assert m.num_recorded == 3
    assert m.reset() is m
    assert m.num_recorded == 0
    with pytest.raises(RuntimeError, match="no recorded step"):
        m.backward(_dstate(cell, np.ones((B, H))))
    for prm in m.parameters():
        assert not prm.grad.any()


@pytest.mark.parametrize("cell", CELLS)
def test_eval_records_nothing_and_gives_the_same_outputs(cell):
    p = problem(cell, "batched", np.float64, seed=15)
    m = make_cell(cell)
    out_train = _steps(m, cell, p, 3)
    assert m.num_recorded == 3
    m.reset()
    assert m.eval() is m and not m.training
    out_eval = _steps(m, cell, p, 3)
    assert m.num_recorded == 0
    with pytest.raises(RuntimeError, match="no recorded step"):
        m.backward(_dstate(cell, np.ones((B, H))))
    for a, b in zip(out_train if cell == "lstm" else [out_train], out_eval if cell == "lstm" else [out_eval]):
        np.testing.assert_array_equal(a, b)
    m.train()
    _steps(m, cell, p, 2)
    assert m.num_recorded == 2


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_accumulate_across_sequences_until_zero_grad(cell):
    m = make_cell(cell)
    p = problem(cell, "batched", np.float64, seed=16)
    once = rf_loop(m, cell, p["xs"], p["h0"], p["c0"], p["R"], p["Q"])["grads"]
    m.zero_grad()
    for _ in range(2):  # rf_loop zeroes first: run its two halves by hand
        _steps(m, cell, p, T)
        dh, dc = np.zeros((B, H)), p["Q"]
        for t in reversed(range(T)):
            if cell == "lstm":
                _, (dh, dc) = m.backward((dh + p["R"][t], dc))
            else:
                _, dh = m.backward(dh + p["R"][t])
    for n, prm in m.named_parameters():
        assert_close(prm.grad, 2 * once[n], 1e-12, f"{n}.grad twice")
    m.zero_grad()
    for prm in m.parameters():
        assert not prm.grad.any()


@pytest.mark.parametrize("cell", CELLS)
def test_none_gradient_is_zeros(cell):
    """backward(None) (and dc=None for the LSTM) is the same as zeros, bit for bit."""
    p = problem(cell, "batched", np.float64, seed=17)
    outs = []
    for zero in (None, np.zeros((B, H))):
        m = make_cell(cell)
        _steps(m, cell, p, 2)
        if cell == "lstm":
            dx1, (dh, dc) = m.backward((zero, p["Q"]))
            dx0, (dh, dc) = m.backward((dh + p["R"][0], zero))
            outs.append([dx1, dx0, dh, dc])
        else:
            dx1, dh = m.backward(zero)
            dx0, dh = m.backward(dh + p["R"][0])
            outs.append([dx1, dx0, dh])
        outs[-1] += [prm.grad for prm in m.parameters()]
    if cell == "lstm":
        m = make_cell(cell)
        _steps(m, cell, p, 1)
        dx, (dh, dc) = m.backward(None)  # the whole pair None
        assert not dx.any() and not dh.any() and not dc.any()
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- aliasing and caller arrays


@pytest.mark.parametrize("cell", CELLS)
def test_nothing_returned_aliases_the_record_and_caller_arrays_are_copied(cell):
    """Scribbling over everything returned (h, c, dx, dh_prev, dc_prev), over the caller's own x_t and state
    arrays after each call, and updating the weights in place between forward and backward, changes no
    result: the record holds its own copies and the backward differentiates the forward it recorded."""
    p = problem(cell, "batched", np.float64, seed=18)
    clean = rf_loop(make_cell(cell), cell, p["xs"], p["h0"], p["c0"], p["R"], p["Q"])
    m = make_cell(cell)
    lstm = cell == "lstm"
    xs = [x.copy() for x in p["xs"]]
    h, c = p["h0"].copy(), (p["c0"].copy() if lstm else None)
    hs_seen = []
    for t in range(T):
        if lstm:
            h_new, c_new = m(xs[t], (h, c))
            assert not np.shares_memory(h_new, c_new)
        else:
            h_new, c_new = m(xs[t], h), None
        np.testing.assert_array_equal(h_new, clean["hs"][t])
        for a in (h_new, c_new, h, c, xs[t]):  # the caller reuses its buffers
            if a is not None:
                assert a.flags.writeable
        nh, nc = h_new.copy(), (c_new.copy() if lstm else None)
        hs_seen.append(h_new)
        for a in (h, c, xs[t], h_new, c_new):
            if a is not None:
                a[...] = 1e6
        h, c = nh, nc
    for a, b in zip(hs_seen, hs_seen[1:]):
        assert not np.shares_memory(a, b)
    for prm in m.parameters():  # an optimizer step before backward: backward uses the recorded weights
        prm.data += 0.25
    dh, dc = np.zeros((B, H)), (p["Q"].copy() if lstm else None)
    dxs = [None] * T
    for t in reversed(range(T)):
        g = dh + p["R"][t]
        g_copy = g.copy()
        if lstm:
            dxs[t], (dh, dc) = m.backward((g, dc))
        else:
            dxs[t], dh = m.backward(g)
        np.testing.assert_array_equal(g, g_copy)
        np.testing.assert_array_equal(dxs[t], clean["dxs"][t])
        dxs[t][...] = 1e6  # scribble over what backward returned
        keep_dh, keep_dc = dh.copy(), (dc.copy() if lstm else None)
        dh[...] = 1e6
        if lstm:
            dc[...] = 1e6
        dh, dc = keep_dh, keep_dc
    np.testing.assert_array_equal(dh, clean["dh0"])
    if lstm:
        np.testing.assert_array_equal(dc, clean["dc0"])
    for n, prm in m.named_parameters():
        np.testing.assert_array_equal(prm.grad, clean["grads"][n], err_msg=f"{n}.grad")


@pytest.mark.parametrize("cell", CELLS)
def test_read_only_and_non_contiguous_inputs_work(cell):
    p = problem(cell, "batched", np.float64, seed=19)
    ref_m = make_cell(cell)
    lstm = cell == "lstm"
    ref = ref_m(p["xs"][0], (p["h0"], p["c0"]) if lstm else p["h0"])
    ref_d = ref_m.backward((p["R"][0], p["Q"]) if lstm else p["R"][0])
    m = make_cell(cell)
    x = np.asfortranarray(p["xs"][0])
    wide = np.zeros((B, 2 * H))
    wide[:, ::2] = p["h0"]
    h0 = wide[:, ::2]  # non-contiguous
    arrays = [x, h0, p["c0"], p["R"][0], p["Q"]]
    for a in arrays:
        if a is not None:
            a.flags.writeable = False
    out = m(x, (h0, p["c0"]) if lstm else h0)
    d = m.backward((p["R"][0], p["Q"]) if lstm else p["R"][0])
    for a, b in zip(out if lstm else [out], ref if lstm else [ref]):
        np.testing.assert_array_equal(a, b)
    flat = lambda r: [r[0], *r[1]] if lstm else list(r)  # noqa: E731
    for a, b in zip(flat(d), flat(ref_d)):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- parameters and state dicts


@pytest.mark.parametrize("cell", CELLS)
def test_parameters_names_shapes_init_and_seed(cell):
    G = GATES[cell]
    for dtype in DTYPES:
        m = make_cell(cell, dtype=dtype, seed=20)
        names = [n for n, _ in m.named_parameters()]
        assert names == list(PARAMS)
        shapes = {"weight_ih": (G * H, I), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,)}
        k = 1 / np.sqrt(H)
        for n, prm in m.named_parameters():
            assert prm.data.shape == shapes[n] and prm.data.dtype == dtype and prm.grad.dtype == dtype
            assert np.all(np.abs(prm.data) <= k) and prm.data.std() > k / 4
            assert not prm.grad.any()
            assert getattr(m, n) is prm.data
    a, b, c = make_cell(cell, seed=20), make_cell(cell, seed=20), make_cell(cell, seed=21)
    g = make_cell(cell, seed=np.random.default_rng(20))
    for n in PARAMS:
        np.testing.assert_array_equal(getattr(a, n), getattr(b, n))
        np.testing.assert_array_equal(getattr(a, n), getattr(g, n))
        assert not np.array_equal(getattr(a, n), getattr(c, n))
    # Drawn like the layers: a cell and a one-layer layer with the same seed hold the same weights.
    if cell == "lstm":
        layer = rnnfast.LSTM(I, H, dtype=np.float64, seed=20)
    elif cell == "gru":
        layer = rnnfast.GRU(I, H, dtype=np.float64, seed=20)
    else:
        layer = rnnfast.RNN(I, H, nonlinearity=cell[4:], dtype=np.float64, seed=20)
    for n in PARAMS:
        np.testing.assert_array_equal(getattr(a, n), getattr(layer, n + "_l0"))


def test_exported_from_the_package():
    assert rnnfast.RNNCell is rc.RNNCell and rnnfast.LSTMCell is rc.LSTMCell and rnnfast.GRUCell is rc.GRUCell


def test_default_dtype_and_repr():
    m = rc.RNNCell(3, 4)
    assert m.dtype == np.float32 and m.weight_ih.dtype == np.float32 and m.nonlinearity == "tanh"
    assert repr(m) == "RNNCell(3, 4, dtype=float32)"
    assert "nonlinearity='relu'" in repr(rc.RNNCell(3, 4, nonlinearity="relu"))
    assert repr(rc.LSTMCell(3, 4, bias=False, dtype=np.float64)) == "LSTMCell(3, 4, bias=False, dtype=float64)"
    assert repr(rc.GRUCell(3, 4)) == "GRUCell(3, 4, dtype=float32)"
    assert isinstance(m, rnnfast.Module)


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_round_trips_with_torch(cell):
    torch = require_torch()
    m = make_cell(cell, dtype=np.float32, seed=22)
    sd = m.state_dict()
    assert list(sd) == list(PARAMS)
    sd["weight_ih"][...] = 0  # a copy
    assert m.weight_ih.any()
    tm = torch_cell(torch, cell, m)
    assert list(tm.state_dict()) == list(PARAMS)
    with torch.no_grad():
        for prm in tm.parameters():
            prm.uniform_(-0.3, 0.3)
    m2 = make_cell(cell, dtype=np.float32, seed=23)
    m2.load_state_dict(tm.state_dict())  # torch tensors (float64) into a float32 cell
    for n, v in tm.state_dict().items():
        np.testing.assert_array_equal(getattr(m2, n), v.numpy().astype(np.float32))
        assert getattr(m2, n).dtype == np.float32
    # The new weights are used by the next step (the packed weights are not served stale).
    x = np.random.default_rng(24).standard_normal((B, I)).astype(np.float32)
    tm.float()
    out = m2(x)
    tout = tm(torch.from_numpy(x))
    for a, b in zip(out if cell == "lstm" else [out], tout if cell == "lstm" else [tout]):
        assert_close(a, b, 1e-5, "h after load_state_dict")
    with pytest.raises(ValueError, match="missing"):
        m2.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh"})
    with pytest.raises(ValueError, match="weight_hh"):
        m2.load_state_dict({**sd, "weight_hh": np.zeros((1, 1), np.float32)})


# --------------------------------------------------------------------------- bad input


CTORS = {"RNNCell": rc.RNNCell, "LSTMCell": rc.LSTMCell, "GRUCell": rc.GRUCell}


@pytest.mark.parametrize("name", list(CTORS))
def test_constructor_bad_arguments(name):
    ctor = CTORS[name]
    with pytest.raises(BAD, match="input_size"):
        ctor(0, 4)
    with pytest.raises(BAD, match="input_size"):
        ctor(2.5, 4)
    with pytest.raises(BAD, match="hidden_size"):
        ctor(3, -1)
    with pytest.raises(BAD, match="hidden_size"):
        ctor(3, "4")
    with pytest.raises(BAD, match="dtype"):
        ctor(3, 4, dtype=np.int32)
    with pytest.raises(BAD, match="dtype"):
        ctor(3, 4, dtype=np.float16)


@pytest.mark.parametrize("nl", ["sigmoid", "TANH", ""])
def test_rnncell_bad_nonlinearity(nl):
    with pytest.raises(ValueError, match="nonlinearity"):
        rc.RNNCell(3, 4, nonlinearity=nl)


def _call(m, cell, x, h=None, c=None, pair=None):
    if cell == "lstm":
        return m(x, pair if pair is not None else (h, c))
    return m(x, h)


@pytest.mark.parametrize("cell", CELLS)
def test_bad_x_t(cell):
    m = make_cell(cell, dtype=np.float64)
    bad = [(np.zeros((B, I), np.float32), TypeError), (np.zeros((B, I), np.int64), TypeError),
           ([[0.0] * I] * B, TypeError), (None, TypeError),
           (np.zeros((1, B, I)), ValueError), (np.zeros(()), ValueError), (np.zeros((B, I + 1)), ValueError),
           (np.zeros(I - 1), ValueError)]  # (0, I), an empty batch, is legal as in torch (issue 11, item 6)
    for x, err in bad:
        with pytest.raises(err, match="x_t"):
            _call(m, cell, x)
    assert m.num_recorded == 0


@pytest.mark.parametrize("cell", CELLS)
def test_bad_state(cell):
    m = make_cell(cell, dtype=np.float64)
    x, xu = np.zeros((B, I)), np.zeros(I)
    good = np.zeros((B, H))
    hname = "h" if cell == "lstm" else "hx"
    cases = [(x, np.zeros((B + 1, H)), ValueError), (x, np.zeros((B, H + 1)), ValueError),
             (x, np.zeros((1, B, H)), ValueError), (x, np.zeros(H), ValueError),
             (xu, np.zeros((1, H)), ValueError), (xu, np.zeros(H + 1), ValueError),
             (x, np.zeros((B, H), np.float32), TypeError), (x, [[0.0] * H] * B, TypeError)]
    for xx, h, err in cases:
        with pytest.raises(err, match=rf"\b{hname}\b"):
            _call(m, cell, xx, h, np.zeros(h.shape if isinstance(h, np.ndarray) else (B, H))
                  if cell == "lstm" else None)
        if cell == "lstm":
            with pytest.raises(err, match=r"\bc\b"):
                _call(m, cell, xx, good if xx.ndim == 2 else np.zeros(H), h)
    if cell == "lstm":
        for pair in (good, (good,), (good, good, good), "hc"):
            with pytest.raises(TypeError, match="hx"):
                m(x, pair)
    assert m.num_recorded == 0
    _call(m, cell, x, good, good)  # still works
    assert m.num_recorded == 1


@pytest.mark.parametrize("cell", CELLS)
def test_bad_gradient_leaves_the_record_and_grads_unchanged(cell):
    p = problem(cell, "batched", np.float64, seed=25)
    clean = rf_loop(make_cell(cell), cell, p["xs"], p["h0"], p["c0"], p["R"], p["Q"])
    m = make_cell(cell)
    m.zero_grad()
    _steps(m, cell, p, T)
    good = np.zeros((B, H))
    cases = [(np.zeros((B + 1, H)), ValueError), (np.zeros((B, H + 1)), ValueError), (np.zeros(H), ValueError),
             (np.zeros((1, B, H)), ValueError), (np.zeros((B, H), np.float32), TypeError),
             ([[0.0] * H] * B, TypeError)]
    for d, err in cases:
        with pytest.raises(err, match=r"\bdh\b"):
            m.backward(_dstate(cell, d))
        if cell == "lstm":
            with pytest.raises(err, match=r"\bdc\b"):
                m.backward((good, d))
    if cell == "lstm":
        for pair in (good, (good,), (good, good, good)):
            with pytest.raises(TypeError, match="dstate"):
                m.backward(pair)
    assert m.num_recorded == T
    for prm in m.parameters():
        assert not prm.grad.any()
    # The record is intact: BPTT now gives the clean results.
    dh, dc = good, p["Q"]
    for t in reversed(range(T)):
        if cell == "lstm":
            _, (dh, dc) = m.backward((dh + p["R"][t], dc))
        else:
            _, dh = m.backward(dh + p["R"][t])
    np.testing.assert_array_equal(dh, clean["dh0"])
    for n, prm in m.named_parameters():
        np.testing.assert_array_equal(prm.grad, clean["grads"][n])
