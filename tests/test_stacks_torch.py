"""Multi-layer, bidirectional and variable-length layers against torch.nn, forward and every gradient.

Lengths are compared with torch.nn.utils.rnn.pack_padded_sequence(enforce_sorted=False): outputs past a
sequence's end are zero, h_n is each sequence's own last state, the reverse direction starts there.
"""
import itertools

import numpy as np
import pytest

import rnnfast
from conftest import assert_close, require_torch

pytestmark = pytest.mark.usefixtures("poison_outputs")

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def make_pair(torch, cell, I, H, L, D, bias, batch_first, dtype, seed):
    kw = dict(num_layers=L, bidirectional=D == 2, batch_first=batch_first, bias=bias, dtype=dtype, seed=seed)
    tkw = dict(num_layers=L, bidirectional=D == 2, batch_first=batch_first, bias=bias)
    if cell.startswith("rnn"):
        m = rnnfast.RNN(I, H, nonlinearity=cell[4:], **kw)
        tm = torch.nn.RNN(I, H, nonlinearity=cell[4:], **tkw)
    elif cell == "lstm":
        m, tm = rnnfast.LSTM(I, H, **kw), torch.nn.LSTM(I, H, **tkw)
    else:
        m, tm = rnnfast.GRU(I, H, **kw), torch.nn.GRU(I, H, **tkw)
    tm = tm.to(torch.float64 if dtype == np.float64 else torch.float32)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    return m, tm


def run_both(torch, cell, T, B, I, H, L, D, bias, batch_first, lengths, dtype, seed):
    rng = np.random.default_rng(seed)
    m, tm = make_pair(torch, cell, I, H, L, D, bias, batch_first, dtype, seed)
    lstm = cell == "lstm"
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    c0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    y, st = m(x, (h0, c0), lengths=lengths) if lstm else m(x, h0, lengths=lengths)
    hn, cn = st if lstm else (st, None)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dhn = rng.standard_normal(hn.shape).astype(dtype)
    dcn = rng.standard_normal(hn.shape).astype(dtype)
    if lstm:
        dx, (dh0, dc0) = m.backward(dy, (dhn, dcn))
    else:
        dx, dh0 = m.backward(dy, dhn)

    xt = torch.from_numpy(x.copy()).requires_grad_()
    h0t = torch.from_numpy(h0.copy()).requires_grad_()
    c0t = torch.from_numpy(c0.copy()).requires_grad_()
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(np.asarray(lengths)), batch_first=batch_first,
                                                      enforce_sorted=False)
    yt, stt = tm(inp, (h0t, c0t)) if lstm else tm(inp, h0t)
    if lengths is not None:
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, batch_first=batch_first, total_length=T)
    hnt, cnt = stt if lstm else (stt, None)
    loss = (yt * torch.from_numpy(dy)).sum() + (hnt * torch.from_numpy(dhn)).sum()
    if lstm:
        loss = loss + (cnt * torch.from_numpy(dcn)).sum()
    loss.backward()

    tol = 1e-10 if dtype == np.float64 else 2e-5
    assert_close(y, yt.detach().numpy(), tol, "y")
    assert_close(hn, hnt.detach().numpy(), tol, "h_n")
    assert_close(dx, xt.grad.numpy(), tol, "dx")
    assert_close(dh0, h0t.grad.numpy(), tol, "dh0")
    if lstm:
        assert_close(cn, cnt.detach().numpy(), tol, "c_n")
        assert_close(dc0, c0t.grad.numpy(), tol, "dc0")
    grads = dict(m.named_parameters())
    names = [k for k, _ in tm.named_parameters()]
    assert sorted(names) == sorted(grads), "parameter names differ from torch's"
    for k, p in tm.named_parameters():
        assert_close(grads[k].grad, p.grad.numpy(), tol, f"{k}.grad")


def random_lengths(rng, T, B):
    """Unsorted lengths in [1, T] that include 1 and T (when B allows)."""
    lengths = rng.integers(1, T + 1, size=B)
    if B >= 2:
        lengths[rng.integers(B)] = 1
        lengths[(np.argmin(lengths) + 1) % B] = T
    return lengths


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers,directions", [(1, 2), (2, 1), (3, 2)])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
def test_stack_matches_torch_float64(cell, layers, directions, use_lengths):
    torch = require_torch()
    for seed, (bias, batch_first) in enumerate(itertools.product([True, False], [False, True])):
        rng = np.random.default_rng(100 + seed)
        T, B, I, H = 6, 5, 3, 7
        lengths = random_lengths(rng, T, B) if use_lengths else None
        run_both(torch, cell, T, B, I, H, layers, directions, bias, batch_first, lengths, np.float64, seed)


@pytest.mark.parametrize("cell", CELLS)
def test_stack_matches_torch_float32_with_lengths(cell):
    torch = require_torch()
    rng = np.random.default_rng(7)
    run_both(torch, cell, 9, 6, 5, 40, 2, 2, True, False, random_lengths(rng, 9, 6), np.float32, 3)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B", [(1, 1), (1, 4), (5, 1), (7, 3)])
def test_edge_shapes_and_threads(cell, T, B):
    torch = require_torch()
    old = rnnfast.get_num_threads()
    try:
        for threads, exact in [(1, False), (2, True)]:
            rnnfast.set_num_threads(threads, exact=exact)
            rng = np.random.default_rng(T * 10 + B)
            lengths = random_lengths(rng, T, B)
            run_both(torch, cell, T, B, 2, 33, 2, 2, True, False, lengths, np.float64, 11)
    finally:
        rnnfast.set_num_threads(old)


def test_lengths_all_equal_to_T_equals_no_lengths():
    m = rnnfast.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3, 3))
    y1, (h1, c1) = m(x)
    y2, (h2, c2) = m(x, lengths=[4, 4, 4])
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(c1, c2)


@pytest.mark.parametrize("bad,err", [([0, 2, 3], ValueError), ([1, 2, 9], ValueError), ([1, 2], ValueError),
                                     ([1.0, 2.0, 3.0], TypeError), ([[1, 2, 3]], ValueError)])
def test_bad_lengths_raise_naming_lengths(bad, err):
    m = rnnfast.GRU(3, 4, dtype=np.float64)
    x = np.zeros((4, 3, 3))
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(err, match="lengths"):
        m(x, lengths=bad)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_chunked_state_carry_equals_one_long_forward():
    """Streaming / truncated BPTT: feeding the final state of one chunk into the next equals one forward."""
    rng = np.random.default_rng(5)
    for cls in (rnnfast.LSTM, rnnfast.GRU, rnnfast.RNN):
        m = cls(4, 6, num_layers=2, dtype=np.float64, seed=2)
        m.eval()
        x = rng.standard_normal((12, 3, 4))
        y_full, s_full = m(x)
        state, ys = None, []
        for chunk in np.split(x, [5, 6, 10]):
            y, state = m(chunk, state)
            ys.append(y)
        np.testing.assert_allclose(np.concatenate(ys), y_full, rtol=1e-13, atol=1e-13)
        for a, b in zip(state if isinstance(state, tuple) else (state,),
                        s_full if isinstance(s_full, tuple) else (s_full,)):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def test_dropout_is_seeded_reused_by_backward_and_absent_in_eval():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 3, 4))
    dy = rng.standard_normal((5, 3, 2 * 6))

    def fresh(seed=3):
        return rnnfast.GRU(4, 6, num_layers=3, bidirectional=True, dropout=0.4, dtype=np.float64, seed=seed)

    a, b = fresh(), fresh()
    ya, _ = a(x)
    yb, _ = b(x)
    np.testing.assert_array_equal(ya, yb)  # same seed, same masks
    ya2, _ = a(x)
    assert not np.array_equal(ya, ya2), "a second training forward should draw new masks"

    # eval: no dropout, and equal to a dropout-free module with the same weights
    c = rnnfast.GRU(4, 6, num_layers=3, bidirectional=True, dtype=np.float64)
    c.load_state_dict(a.state_dict())
    a.eval(), c.eval()
    np.testing.assert_array_equal(a(x)[0], c(x)[0])

    # backward reuses the forward's masks: a finite-difference check with the generator replayed
    m = fresh()
    m.train()
    state = m._rng.bit_generator.state

    def loss(xx):
        m._rng.bit_generator.state = state
        return float((m(xx)[0] * dy).sum())

    loss(x)
    dx, _ = m.backward(dy)
    eps = 1e-6
    for idx in [(0, 0, 0), (2, 1, 3), (4, 2, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        fd = (loss(xp) - loss(xm)) / (2 * eps)
        assert abs(fd - dx[idx]) <= 1e-6 * max(1.0, abs(fd)), f"dx{idx}: {dx[idx]} vs finite difference {fd}"


def test_dropout_out_of_range_rejected():
    for bad in (-0.1, 1.5, float("nan")):  # 1.0 is legal, as in torch (issue 11, item 5)
        with pytest.raises(ValueError, match="dropout"):
            rnnfast.LSTM(3, 4, num_layers=2, dropout=bad)


@pytest.mark.parametrize("layers,directions", [(1, 1), (2, 2)])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("threads", [1, 2])
# P > 32: the projection's features span several panels, so that two threads split them (each writing its own
# columns of y: a wrong offset there once put the second thread's features into the first's).
@pytest.mark.parametrize("H,P", [(40, 7), (70, 37)])
def test_lstm_projection_matches_torch(layers, directions, use_lengths, dtype, tol, threads, H, P):
    torch = require_torch()
    rng = np.random.default_rng(layers * 10 + directions + threads)
    T, B, I = 6, 5, 3
    old = rnnfast.get_num_threads()
    rnnfast.set_num_threads(threads, exact=True)
    try:
        m = rnnfast.LSTM(I, H, num_layers=layers, bidirectional=directions == 2, proj_size=P, dtype=dtype, seed=1)
        assert dict(m.named_parameters())["weight_hr_l0"].shape == (P, H)
        tm = torch.nn.LSTM(I, H, layers, bidirectional=directions == 2, proj_size=P)
        tm = tm.to(torch.float64 if dtype == np.float64 else torch.float32)
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
        lengths = random_lengths(rng, T, B) if use_lengths else None
        x = rng.standard_normal((T, B, I)).astype(dtype)
        h0 = rng.standard_normal((layers * directions, B, P)).astype(dtype)
        c0 = rng.standard_normal((layers * directions, B, H)).astype(dtype)
        y, (hn, cn) = m(x, (h0, c0), lengths=lengths)
        dy, dhn, dcn = (rng.standard_normal(a.shape).astype(dtype) for a in (y, hn, cn))
        dx, (dh0, dc0) = m.backward(dy, (dhn, dcn))
    finally:
        rnnfast.set_num_threads(old)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    h0t, c0t = torch.from_numpy(h0).requires_grad_(), torch.from_numpy(c0).requires_grad_()
    inp = xt if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths),
                                                                               enforce_sorted=False)
    yt, (hnt, cnt) = tm(inp, (h0t, c0t))
    if lengths is not None:
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, total_length=T)
    ((yt * torch.from_numpy(dy)).sum() + (hnt * torch.from_numpy(dhn)).sum() + (cnt * torch.from_numpy(dcn)).sum()).backward()
    for name, a, b in [("y", y, yt), ("h_n", hn, hnt), ("c_n", cn, cnt), ("dx", dx, xt.grad), ("dh0", dh0, h0t.grad),
                       ("dc0", dc0, c0t.grad)]:
        assert_close(a, b.detach().numpy(), tol, name)
    grads = dict(m.named_parameters())
    for k, p in tm.named_parameters():
        assert_close(grads[k].grad, p.grad.numpy(), tol, f"{k}.grad")


def test_proj_size_must_be_smaller_than_hidden_size():
    for bad in (8, 9):
        with pytest.raises(ValueError, match="proj_size"):
            rnnfast.LSTM(3, 8, proj_size=bad)


def random_config(rng):
    cell = CELLS[rng.integers(len(CELLS))]
    L, D = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    T, B = int(rng.choice([1, 2, 5])), int(rng.choice([1, 2, 4]))
    I, H = int(rng.integers(1, 6)), int(rng.choice([1, 3, 17, 33]))
    P = int(rng.integers(1, H)) if cell == "lstm" and H > 1 and rng.random() < 0.5 else 0
    lengths = random_lengths(rng, T, B) if rng.random() < 0.6 else None
    return dict(cell=cell, L=L, D=D, T=T, B=B, I=I, H=H, P=P, bias=bool(rng.random() < 0.7),
                batch_first=bool(rng.random() < 0.5), lengths=lengths,
                dtype=np.float64 if rng.random() < 0.7 else np.float32, threads=int(rng.integers(1, 3)))


@pytest.mark.parametrize("seed", range(40))
def test_random_configurations_match_torch(seed):
    """Cell, layers 1..3, directions, batch_first, proj_size, bias, unsorted lengths (with 1 and T), T=1, B=1
    and thread counts drawn together, against torch.nn with pack_padded_sequence(enforce_sorted=False)."""
    torch = require_torch()
    rng = np.random.default_rng(1000 + seed)
    c = random_config(rng)
    kw = dict(num_layers=c["L"], bidirectional=c["D"] == 2, batch_first=c["batch_first"], bias=c["bias"])
    if c["cell"].startswith("rnn"):
        m = rnnfast.RNN(c["I"], c["H"], nonlinearity=c["cell"][4:], dtype=c["dtype"], seed=seed, **kw)
        tm = torch.nn.RNN(c["I"], c["H"], nonlinearity=c["cell"][4:], **kw)
    elif c["cell"] == "lstm":
        m = rnnfast.LSTM(c["I"], c["H"], proj_size=c["P"], dtype=c["dtype"], seed=seed, **kw)
        tm = torch.nn.LSTM(c["I"], c["H"], proj_size=c["P"], **kw)
    else:
        m = rnnfast.GRU(c["I"], c["H"], dtype=c["dtype"], seed=seed, **kw)
        tm = torch.nn.GRU(c["I"], c["H"], **kw)
    tm = tm.to(torch.float64 if c["dtype"] == np.float64 else torch.float32)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    T, B, LD = c["T"], c["B"], c["L"] * c["D"]
    S = c["P"] or c["H"]
    lstm = c["cell"] == "lstm"
    x = rng.standard_normal((B, T, c["I"]) if c["batch_first"] else (T, B, c["I"])).astype(c["dtype"])
    h0 = rng.standard_normal((LD, B, S)).astype(c["dtype"])
    c0 = rng.standard_normal((LD, B, c["H"])).astype(c["dtype"])
    old = rnnfast.get_num_threads()
    rnnfast.set_num_threads(c["threads"], exact=True)
    try:
        y, st = m(x, (h0, c0), lengths=c["lengths"]) if lstm else m(x, h0, lengths=c["lengths"])
        hn, cn = st if lstm else (st, None)
        dy = rng.standard_normal(y.shape).astype(c["dtype"])
        dhn = rng.standard_normal(hn.shape).astype(c["dtype"])
        dcn = rng.standard_normal(c0.shape).astype(c["dtype"])
        if lstm:
            dx, (dh0, dc0) = m.backward(dy, (dhn, dcn))
        else:
            dx, dh0 = m.backward(dy, dhn)
    finally:
        rnnfast.set_num_threads(old)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    h0t, c0t = torch.from_numpy(h0).requires_grad_(), torch.from_numpy(c0).requires_grad_()
    inp = xt
    if c["lengths"] is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(c["lengths"]), batch_first=c["batch_first"],
                                                      enforce_sorted=False)
    yt, stt = tm(inp, (h0t, c0t)) if lstm else tm(inp, h0t)
    if c["lengths"] is not None:
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, batch_first=c["batch_first"], total_length=T)
    hnt, cnt = stt if lstm else (stt, None)
    loss = (yt * torch.from_numpy(dy)).sum() + (hnt * torch.from_numpy(dhn)).sum()
    if lstm:
        loss = loss + (cnt * torch.from_numpy(dcn)).sum()
    loss.backward()
    tol = 1e-10 if c["dtype"] == np.float64 else 2e-5
    pairs = [("y", y, yt), ("h_n", hn, hnt), ("dx", dx, xt.grad), ("dh0", dh0, h0t.grad)]
    if lstm:
        pairs += [("c_n", cn, cnt), ("dc0", dc0, c0t.grad)]
    for name, a, b in pairs:
        assert_close(a, b.detach().numpy(), tol, f"{name} ({c})")
    grads = dict(m.named_parameters())
    for k, p in tm.named_parameters():
        assert_close(grads[k].grad, p.grad.numpy(), tol, f"{k}.grad ({c})")
