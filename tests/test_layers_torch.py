"""rnnfast.RNN / LSTM / GRU against torch.nn.RNN / LSTM / GRU with the same weights.

Outputs, final states and all gradients (dx via x.requires_grad, dh0/dc0 via h0/c0.requires_grad,
parameters via .grad). torch runs in float64 (weights and inputs cast up) and is the oracle for
both dtypes: float64 results to 1e-10, float32 results to 1e-5 (normwise relative error).
Skipped when torch is missing, unless RNNFAST_REQUIRE_TORCH=1 (then they fail).
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import (CELLS, DTYPE_IDS, DTYPES, assert_close, grads_of,  # noqa: E402
                      layer_backward, layer_forward, make_layer, max_abs, random_problem,
                      require_torch, tol_for)

# Every kernel output starts as NaN where the package supports it (see conftest.py).
pytestmark = pytest.mark.usefixtures("poison_outputs")


def torch_module(torch, cell, I, H, bias=True, batch_first=False, dtype=None):
    """The torch.nn module for a cell name."""
    dtype = torch.float64 if dtype is None else dtype
    kw = dict(bias=bias, batch_first=batch_first, dtype=dtype)
    if cell in ("rnn_tanh", "rnn_relu"):
        return torch.nn.RNN(I, H, nonlinearity=cell[4:], **kw)
    if cell == "lstm":
        return torch.nn.LSTM(I, H, **kw)
    return torch.nn.GRU(I, H, **kw)


def torch_run(torch, tm, cell, x, h0, c0, dy, dh_n, dc_n):
    """Forward + backward in torch (float64). States are given with the torch layout.

    The backward seeds dy, dh_n, dc_n through the scalar sum(y*dy) + sum(h_n*dh_n) + sum(c_n*dc_n).
    """
    def t(a, grad=False):
        if a is None:
            return None
        return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64,
                            requires_grad=grad)

    xt, h0t, c0t = t(x, True), t(h0, True), t(c0, True)
    tm.zero_grad(set_to_none=True)
    if cell == "lstm":
        y, (h_n, c_n) = tm(xt, (h0t, c0t))
    else:
        y, h_n = tm(xt, h0t)
        c_n = None
    loss = (y * t(dy)).sum() + (h_n * t(dh_n)).sum()
    if cell == "lstm":
        loss = loss + (c_n * t(dc_n)).sum()
    loss.backward()
    out = dict(y=y.detach().numpy(), h_n=h_n.detach().numpy(),
               c_n=None if c_n is None else c_n.detach().numpy(),
               dx=xt.grad.numpy(), dh0=h0t.grad.numpy(),
               dc0=None if c0t is None else c0t.grad.numpy(),
               grads={n: prm.grad.numpy() for n, prm in tm.named_parameters()})
    return out


def compare(got, ref, cell, tol, inputs):
    fwd_scale = max_abs(ref["y"], ref["h_n"], ref["c_n"])
    assert_close(got["y"], ref["y"], tol, "y")
    assert_close(got["h_n"], ref["h_n"], tol, "h_n", scale=fwd_scale)
    if cell == "lstm":
        assert_close(got["c_n"], ref["c_n"], tol, "c_n", scale=fwd_scale)
    bwd_scale = max_abs(ref["dx"], ref["dh0"], ref["dc0"], *inputs)
    assert_close(got["dx"], ref["dx"], tol, "dx", scale=bwd_scale)
    assert_close(got["dh0"], ref["dh0"], tol, "dh0", scale=bwd_scale)
    if cell == "lstm":
        assert_close(got["dc0"], ref["dc0"], tol, "dc0", scale=bwd_scale)
    assert set(got["grads"]) == set(ref["grads"]), (set(got["grads"]), set(ref["grads"]))
    grad_scale = max_abs(*ref["grads"].values())
    for n, g in ref["grads"].items():
        assert_close(got["grads"][n], g, tol, f"{n}.grad", scale=grad_scale)


SHAPES = [
    pytest.param(5, 3, 4, 6, True, False, id="T5B3I4H6"),
    pytest.param(5, 3, 4, 6, False, False, id="nobias"),
    pytest.param(5, 3, 4, 6, True, True, id="batch_first"),
    pytest.param(4, 2, 3, 5, False, True, id="nobias-batch_first"),
    pytest.param(1, 1, 1, 1, True, False, id="T1B1I1H1"),
    pytest.param(3, 2, 7, 17, True, False, id="H17"),
    pytest.param(12, 5, 20, 33, True, True, id="T12B5I20H33-batch_first"),
]


@pytest.mark.parametrize("T,B,I,H,bias,batch_first", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_with_weights_loaded_into_torch(torch_mod, cell, dtype, T, B, I, H, bias,
                                                      batch_first):
    torch = torch_mod
    p = random_problem(cell, T, B, I, H, dtype, seed=T * 1000 + H, bias=bias)
    m = make_layer(cell, I, H, dtype, bias=bias, batch_first=batch_first, seed=1)
    m.load_state_dict(p["weights"])
    x, dy = p["x"], p["dy"]
    if batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
        dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
    h0, c0 = p["h0"][None], None if p["c0"] is None else p["c0"][None]
    dh_n, dc_n = p["dh_n"][None], None if p["dc_n"] is None else p["dc_n"][None]

    # rnnfast -> torch: torch.from_numpy of the rnnfast state_dict, cast up to float64
    tm = torch_module(torch, cell, I, H, bias=bias, batch_first=batch_first)
    sd = {k: torch.from_numpy(v) for k, v in m.state_dict().items()}
    tm.load_state_dict({k: v.to(torch.float64) for k, v in sd.items()})
    ref = torch_run(torch, tm, cell, x, h0, c0, dy, dh_n, dc_n)

    y, h_n, c_n = layer_forward(m, cell, x, h0, c0)
    dx, dh0, dc0 = layer_backward(m, cell, dy, dh_n, dc_n)
    got = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
               grads={n: g.copy() for n, g in grads_of(m).items()})
    for k in ("y", "dx"):
        assert got[k].dtype == dtype, f"{k} dtype {got[k].dtype}, expected {dtype}"
    compare(got, ref, cell, tol_for(dtype), [dy, dh_n, dc_n])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_load_state_dict_accepts_torch_tensors_from_a_torch_module(torch_mod, cell, dtype, bias):
    torch = torch_mod
    T, B, I, H = 6, 3, 5, 8
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(7)
    tm_native = torch_module(torch, cell, I, H, bias=bias, dtype=tdtype)
    m = make_layer(cell, I, H, dtype, bias=bias, seed=0)
    m.load_state_dict(tm_native.state_dict())  # torch tensors, as is
    for n, prm in m.named_parameters():
        assert prm.data.dtype == dtype, (n, prm.data.dtype)
        np.testing.assert_array_equal(prm.data, tm_native.state_dict()[n].numpy(), err_msg=n)

    # the same weights in a float64 torch module are the oracle
    tm = torch_module(torch, cell, I, H, bias=bias)
    tm.load_state_dict({k: v.to(torch.float64) for k, v in tm_native.state_dict().items()})
    p = random_problem(cell, T, B, I, H, dtype, seed=70, bias=bias)
    h0, c0 = p["h0"][None], None if p["c0"] is None else p["c0"][None]
    dh_n, dc_n = p["dh_n"][None], None if p["dc_n"] is None else p["dc_n"][None]
    ref = torch_run(torch, tm, cell, p["x"], h0, c0, p["dy"], dh_n, dc_n)
    y, h_n, c_n = layer_forward(m, cell, p["x"], h0, c0)
    dx, dh0, dc0 = layer_backward(m, cell, p["dy"], dh_n, dc_n)
    got = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
               grads={n: g.copy() for n, g in grads_of(m).items()})
    compare(got, ref, cell, tol_for(dtype), [p["dy"], dh_n, dc_n])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_default_states_and_grad_seeds_match_torch(torch_mod, cell, dtype):
    """layer(x) with no h0/c0 and backward(dy) with no dh_n/dc_n, against torch with zeros."""
    torch = torch_mod
    T, B, I, H = 5, 4, 3, 6
    p = random_problem(cell, T, B, I, H, dtype, seed=80)
    m = make_layer(cell, I, H, dtype, seed=0)
    m.load_state_dict(p["weights"])
    tm = torch_module(torch, cell, I, H)
    tm.load_state_dict({k: torch.from_numpy(v).to(torch.float64) for k, v in p["weights"].items()})
    z = np.zeros((1, B, H), dtype)
    ref = torch_run(torch, tm, cell, p["x"], z, z if cell == "lstm" else None, p["dy"], z,
                    z if cell == "lstm" else None)
    y, h_n, c_n = layer_forward(m, cell, p["x"])
    dx, dh0, dc0 = layer_backward(m, cell, p["dy"])
    got = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
               grads={n: g.copy() for n, g in grads_of(m).items()})
    compare(got, ref, cell, tol_for(dtype), [p["dy"]])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input_matches_torch_unbatched(torch_mod, cell, dtype):
    torch = torch_mod
    T, I, H = 6, 4, 5
    p = random_problem(cell, T, 1, I, H, dtype, seed=90)
    m = make_layer(cell, I, H, dtype, seed=0)
    m.load_state_dict(p["weights"])
    tm = torch_module(torch, cell, I, H)
    tm.load_state_dict({k: torch.from_numpy(v).to(torch.float64) for k, v in p["weights"].items()})
    x, dy = p["x"][:, 0], p["dy"][:, 0]  # (T, I), (T, H)
    h0, c0 = p["h0"], p["c0"]  # (1, H)
    dh_n, dc_n = p["dh_n"], p["dc_n"]
    ref = torch_run(torch, tm, cell, x, h0, c0, dy, dh_n, dc_n)
    assert ref["y"].shape == (T, H) and ref["h_n"].shape == (1, H)  # what torch does
    y, h_n, c_n = layer_forward(m, cell, x, h0, c0)
    dx, dh0, dc0 = layer_backward(m, cell, dy, dh_n, dc_n)
    got = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
               grads={n: g.copy() for n, g in grads_of(m).items()})
    compare(got, ref, cell, tol_for(dtype), [dy, dh_n, dc_n])


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_round_trip_through_torch_is_exact(torch_mod, cell):
    torch = torch_mod
    m = make_layer(cell, 4, 6, np.float32, seed=11)
    tm = torch_module(torch, cell, 4, 6, dtype=torch.float32)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    m2 = make_layer(cell, 4, 6, np.float32, seed=12)
    m2.load_state_dict(tm.state_dict())
    a, b = m.state_dict(), m2.state_dict()
    assert list(a) == list(b) == list(tm.state_dict())
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_require_torch_returns_the_torch_module():
    torch = require_torch()
    assert hasattr(torch, "nn") and hasattr(torch.nn, "LSTM")


def test_require_torch_skips_without_torch_unless_required(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    monkeypatch.delenv("RNNFAST_REQUIRE_TORCH", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_torch()
    monkeypatch.setenv("RNNFAST_REQUIRE_TORCH", "1")
    with pytest.raises(pytest.fail.Exception, match="RNNFAST_REQUIRE_TORCH"):
        require_torch()
