"""Tests that guard the NumPy oracle (rnnfast/reference.py) itself.

- backward() against central finite differences of forward() in float64, every cell,
  with and without bias;
- forward() and backward() against torch.nn.RNN / LSTM / GRU (and, for gru_original,
  against the equation written with torch autograd);
- argument validation.
"""

import importlib.util
import os
import pathlib

import numpy as np
import pytest

try:
    import rnnfast.reference as ref
except Exception:  # the package may be absent or half-built: load the file by path
    _path = pathlib.Path(__file__).resolve().parents[1] / "rnnfast" / "reference.py"
    _spec = importlib.util.spec_from_file_location("rnnfast_reference", _path)
    ref = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(ref)


def require_torch():
    """Import torch; skip when it is missing, fail instead when RNNFAST_REQUIRE_TORCH=1."""
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install (OSError from its libraries)
        if os.environ.get("RNNFAST_REQUIRE_TORCH") == "1":
            pytest.fail(f"RNNFAST_REQUIRE_TORCH=1 but torch cannot be imported: {e!r}")
        pytest.skip(f"torch not available: {e!r}")
    return torch


SHAPES = [(3, 2, 3, 4), (1, 2, 3, 1)]  # (T, B, I, H)
SEEDS = [0, 1]
TORCH_CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


def make_inputs(rng, cell, T, B, I, H, bias, dtype=np.float64):
    G = ref.NUM_GATES[cell]
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H)) * 0.5
    c0 = rng.standard_normal((B, H)) * 0.5 if cell == "lstm" else None
    w_ih = rng.standard_normal((G * H, I)) * 0.6
    w_hh = rng.standard_normal((G * H, H)) * 0.6
    b_ih = rng.standard_normal(G * H) * 0.3 if bias else None
    b_hh = rng.standard_normal(G * H) * 0.3 if bias else None
    cast = lambda a: None if a is None else a.astype(dtype)
    return dict(x=cast(x), h0=cast(h0), c0=cast(c0), w_ih=cast(w_ih), w_hh=cast(w_hh),
                b_ih=cast(b_ih), b_hh=cast(b_hh))


def make_cotangents(rng, cell, T, B, H):
    Ry = rng.standard_normal((T, B, H))
    Rh = rng.standard_normal((B, H))
    Rc = rng.standard_normal((B, H)) if cell == "lstm" else None
    return Ry, Rh, Rc


def functional(cell, args, Ry, Rh, Rc):
    """L = sum(y*Ry) + sum(h_n*Rh) (+ sum(c_n*Rc))."""
    y, h_n, c_n, _ = ref.forward(cell, **args)
    L = np.sum(y * Ry) + np.sum(h_n * Rh)
    if c_n is not None:
        L += np.sum(c_n * Rc)
    return L


def assert_close(name, got, want, rtol, atol=1e-13):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    err = np.linalg.norm(got - want)
    scale = max(np.linalg.norm(want), np.linalg.norm(got))
    assert err <= rtol * scale + atol, f"{name}: normwise relative error {err / max(scale, 1e-300):.3e}"


# arguments of forward() -> keys of backward()'s result
GRAD_OF = dict(x="dx", h0="dh0", c0="dc0", w_ih="dw_ih", w_hh="dw_hh", b_ih="db_ih", b_hh="db_hh")


# --------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%dB%dI%dH%d" % s)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", ref.CELLS)
def test_backward_matches_central_finite_differences_float64(cell, bias, shape, seed):
    T, B, I, H = shape
    rng = np.random.default_rng(seed)
    args = make_inputs(rng, cell, T, B, I, H, bias)
    Ry, Rh, Rc = make_cotangents(rng, cell, T, B, H)

    _, _, _, cache = ref.forward(cell, **args)
    grads = ref.backward(cell, cache, Ry, dh_n=Rh, dc_n=Rc)

    eps = 1e-6
    for name, key in GRAD_OF.items():
        a = args[name]
        if a is None:
            assert grads[key] is None, f"{key} should be None"
            continue
        fd = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            orig = a[idx]
            a[idx] = orig + eps
            Lp = functional(cell, args, Ry, Rh, Rc)
            a[idx] = orig - eps
            Lm = functional(cell, args, Ry, Rh, Rc)
            a[idx] = orig
            fd[idx] = (Lp - Lm) / (2 * eps)
        assert grads[key].dtype == np.float64
        assert_close(f"{cell} {key}", grads[key], fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cell", ref.CELLS)
def test_backward_zero_cotangents_default_to_zero_gradients(cell):
    rng = np.random.default_rng(3)
    args = make_inputs(rng, cell, 3, 2, 3, 4, True)
    _, _, _, cache = ref.forward(cell, **args)
    dy = np.zeros((3, 2, 4))
    g = ref.backward(cell, cache, dy)
    for key, v in g.items():
        if v is not None:
            assert not np.any(v), key
    # dh_n alone (dy = 0) gives a nonzero dh0
    g = ref.backward(cell, cache, dy, dh_n=np.ones((2, 4)))
    assert np.any(g["dh0"])


# --------------------------------------------------------------------------- against torch


def torch_forward_backward(torch, cell, args, Ry, Rh, Rc):
    """y, h_n, c_n and the gradients of L, from torch.nn.RNN/LSTM/GRU in float64."""
    T, B, I = args["x"].shape
    H = args["w_hh"].shape[1]
    bias = args["b_ih"] is not None
    if cell in ("rnn_tanh", "rnn_relu"):
        mod = torch.nn.RNN(I, H, nonlinearity=cell[4:], bias=bias, dtype=torch.float64)
    elif cell == "lstm":
        mod = torch.nn.LSTM(I, H, bias=bias, dtype=torch.float64)
    else:
        mod = torch.nn.GRU(I, H, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        mod.weight_ih_l0.copy_(torch.from_numpy(args["w_ih"]))
        mod.weight_hh_l0.copy_(torch.from_numpy(args["w_hh"]))
        if bias:
            mod.bias_ih_l0.copy_(torch.from_numpy(args["b_ih"]))
            mod.bias_hh_l0.copy_(torch.from_numpy(args["b_hh"]))
    x = torch.tensor(args["x"], requires_grad=True)
    h0 = torch.tensor(args["h0"][None], requires_grad=True)
    if cell == "lstm":
        c0 = torch.tensor(args["c0"][None], requires_grad=True)
        y, (h_n, c_n) = mod(x, (h0, c0))
    else:
        y, h_n = mod(x, h0)
        c_n = None
    L = (y * torch.from_numpy(Ry)).sum() + (h_n[0] * torch.from_numpy(Rh)).sum()
    if c_n is not None:
        L = L + (c_n[0] * torch.from_numpy(Rc)).sum()
    L.backward()
    grads = dict(dx=x.grad.numpy(), dh0=h0.grad[0].numpy(),
                 dc0=c0.grad[0].numpy() if cell == "lstm" else None,
                 dw_ih=mod.weight_ih_l0.grad.numpy(), dw_hh=mod.weight_hh_l0.grad.numpy(),
                 db_ih=mod.bias_ih_l0.grad.numpy() if bias else None,
                 db_hh=mod.bias_hh_l0.grad.numpy() if bias else None)
    outs = (y.detach().numpy(), h_n.detach()[0].numpy(),
            None if c_n is None else c_n.detach()[0].numpy())
    return outs, grads


def torch_gru_original(torch, args, Ry, Rh):
    """gru_original written directly from its equation with torch ops; autograd for gradients."""
    H = args["w_hh"].shape[1]
    t = {k: None if v is None else torch.tensor(v, requires_grad=True) for k, v in args.items()
         if k != "c0"}
    b_ih = t["b_ih"] if t["b_ih"] is not None else torch.zeros(3 * H, dtype=torch.float64)
    b_hh = t["b_hh"] if t["b_hh"] is not None else torch.zeros(3 * H, dtype=torch.float64)
    W_ir, W_iz, W_in = t["w_ih"].split(H)
    W_hr, W_hz, W_hn = t["w_hh"].split(H)
    b_ir, b_iz, b_in = b_ih.split(H)
    b_hr, b_hz, b_hn = b_hh.split(H)
    h = t["h0"]
    ys = []
    for xt in t["x"]:
        r = torch.sigmoid(xt @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
        z = torch.sigmoid(xt @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
        n = torch.tanh(xt @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
        h = (1 - z) * n + z * h
        ys.append(h)
    y = torch.stack(ys)
    L = (y * torch.from_numpy(Ry)).sum() + (h * torch.from_numpy(Rh)).sum()
    L.backward()
    g = lambda k: None if t[k] is None else t[k].grad.numpy()
    grads = dict(dx=g("x"), dh0=g("h0"), dc0=None, dw_ih=g("w_ih"), dw_hh=g("w_hh"),
                 db_ih=g("b_ih"), db_hh=g("b_hh"))
    return (y.detach().numpy(), h.detach().numpy(), None), grads


def check_against(cell, args, Ry, Rh, Rc, want_outs, want_grads, rtol):
    y, h_n, c_n, cache = ref.forward(cell, **args)
    assert_close("y", y, want_outs[0], rtol)
    assert_close("h_n", h_n, want_outs[1], rtol)
    if cell == "lstm":
        assert_close("c_n", c_n, want_outs[2], rtol)
    else:
        assert c_n is None
    got = ref.backward(cell, cache, Ry, dh_n=Rh, dc_n=Rc)
    assert set(got) == set(want_grads)
    for key, want in want_grads.items():
        if want is None:
            assert got[key] is None, key
        else:
            assert_close(key, got[key], want, rtol)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES + [(5, 3, 2, 6)], ids=lambda s: "T%dB%dI%dH%d" % s)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_forward_and_backward_match_torch_nn_float64(cell, bias, shape, seed):
    torch = require_torch()
    T, B, I, H = shape
    rng = np.random.default_rng(seed)
    args = make_inputs(rng, cell, T, B, I, H, bias)
    Ry, Rh, Rc = make_cotangents(rng, cell, T, B, H)
    outs, grads = torch_forward_backward(torch, cell, args, Ry, Rh, Rc)
    check_against(cell, args, Ry, Rh, Rc, outs, grads, rtol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES + [(5, 3, 2, 6)], ids=lambda s: "T%dB%dI%dH%d" % s)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gru_original_matches_torch_autograd_of_its_equation_float64(bias, shape, seed):
    torch = require_torch()
    T, B, I, H = shape
    rng = np.random.default_rng(seed)
    args = make_inputs(rng, "gru_original", T, B, I, H, bias)
    Ry, Rh, _ = make_cotangents(rng, "gru_original", T, B, H)
    outs, grads = torch_gru_original(torch, args, Ry, Rh)
    check_against("gru_original", args, Ry, Rh, None, outs, grads, rtol=1e-10)


def test_gru_original_differs_from_gru():
    rng = np.random.default_rng(0)
    args = make_inputs(rng, "gru", 3, 2, 3, 4, True)
    y1 = ref.forward("gru", **args)[0]
    y2 = ref.forward("gru_original", **args)[0]
    assert not np.allclose(y1, y2)


# --------------------------------------------------------------------------- dtype, purity


@pytest.mark.parametrize("cell", ref.CELLS)
def test_float32_computes_in_float32_and_matches_float64(cell):
    rng = np.random.default_rng(5)
    a64 = make_inputs(rng, cell, 3, 2, 3, 4, True)
    a32 = {k: None if v is None else v.astype(np.float32) for k, v in a64.items()}
    Ry, Rh, Rc = make_cotangents(rng, cell, 3, 2, 4)
    y64, h64, c64, k64 = ref.forward(cell, **a64)
    y32, h32, c32, k32 = ref.forward(cell, **a32)
    assert y32.dtype == h32.dtype == np.float32
    assert_close("y", y32, y64, 1e-5)
    assert_close("h_n", h32, h64, 1e-5)
    g64 = ref.backward(cell, k64, Ry, Rh, Rc)
    g32 = ref.backward(cell, k32, Ry, Rh, Rc)
    for key, v in g32.items():
        if v is not None:
            assert v.dtype == np.float32, key
            assert_close(key, v, g64[key], 1e-4)


@pytest.mark.parametrize("cell", ref.CELLS)
def test_forward_and_backward_do_not_modify_inputs(cell):
    rng = np.random.default_rng(7)
    args = make_inputs(rng, cell, 3, 2, 3, 4, True)
    saved = {k: None if v is None else v.copy() for k, v in args.items()}
    Ry, Rh, Rc = make_cotangents(rng, cell, 3, 2, 4)
    cot = [a.copy() for a in (Ry, Rh) + ((Rc,) if Rc is not None else ())]
    _, _, _, cache = ref.forward(cell, **args)
    ref.backward(cell, cache, Ry, Rh, Rc)
    for k, v in args.items():
        if v is not None:
            np.testing.assert_array_equal(v, saved[k], err_msg=k)
    for a, b in zip((Ry, Rh, Rc), cot):
        np.testing.assert_array_equal(a, b)


def test_zero_length_sequence_returns_initial_state():
    rng = np.random.default_rng(0)
    args = make_inputs(rng, "lstm", 1, 2, 3, 4, True)
    args["x"] = args["x"][:0]
    y, h_n, c_n, cache = ref.forward("lstm", **args)
    assert y.shape == (0, 2, 4)
    np.testing.assert_array_equal(h_n, args["h0"])
    np.testing.assert_array_equal(c_n, args["c0"])
    dh_n = rng.standard_normal((2, 4))
    g = ref.backward("lstm", cache, np.zeros((0, 2, 4)), dh_n=dh_n)
    np.testing.assert_array_equal(g["dh0"], dh_n)
    assert g["dx"].shape == (0, 2, 3)


# --------------------------------------------------------------------------- validation


def test_module_constants():
    assert set(ref.CELLS) == set(ref.NUM_GATES)
    for cell, g in dict(rnn_tanh=1, rnn_relu=1, lstm=4, gru=3).items():
        assert ref.NUM_GATES[cell] == g


def _good(cell="lstm"):
    return make_inputs(np.random.default_rng(0), cell, 3, 2, 3, 4, True)


@pytest.mark.parametrize("change", [
    pytest.param(lambda a: a.update(x=a["x"][0]), id="x-2d"),
    pytest.param(lambda a: a.update(h0=a["h0"][:, :3]), id="h0-wrong-H"),
    pytest.param(lambda a: a.update(h0=a["h0"][:1]), id="h0-wrong-B"),
    pytest.param(lambda a: a.update(c0=None), id="c0-missing"),
    pytest.param(lambda a: a.update(c0=a["c0"][:, :3]), id="c0-wrong-shape"),
    pytest.param(lambda a: a.update(w_ih=a["w_ih"][:, :2]), id="w_ih-wrong-I"),
    pytest.param(lambda a: a.update(w_ih=a["w_ih"][:12]), id="w_ih-wrong-rows"),
    pytest.param(lambda a: a.update(w_hh=a["w_hh"][:12]), id="w_hh-wrong-rows"),
    pytest.param(lambda a: a.update(w_hh=a["w_hh"][:, :3]), id="w_hh-not-GHxH"),
    pytest.param(lambda a: a.update(b_ih=a["b_ih"][:15]), id="b_ih-wrong-len"),
    pytest.param(lambda a: a.update(b_hh=None), id="b_hh-missing-with-b_ih"),
])
def test_forward_rejects_bad_arguments_with_value_error(change):
    args = _good()
    change(args)
    with pytest.raises(ValueError):
        ref.forward("lstm", **args)


def test_forward_rejects_unknown_cell_and_stray_c0():
    args = _good("gru")
    with pytest.raises(ValueError, match="cell"):
        ref.forward("gru_v3", **args)
    args["c0"] = np.zeros((2, 4))
    with pytest.raises(ValueError, match="c0"):
        ref.forward("gru", **args)


def test_forward_rejects_non_float_dtype():
    args = _good("rnn_tanh")
    args["x"] = np.ones((3, 2, 3), dtype=np.int64)
    with pytest.raises(TypeError):
        ref.forward("rnn_tanh", **args)


def test_backward_rejects_bad_arguments_with_value_error():
    _, _, _, cache = ref.forward("lstm", **_good())
    dy = np.zeros((3, 2, 4))
    with pytest.raises(ValueError):
        ref.backward("nope", cache, dy)
    with pytest.raises(ValueError):
        ref.backward("gru", cache, dy)  # cache from another cell
    with pytest.raises(ValueError):
        ref.backward("lstm", cache, dy[:2])
    with pytest.raises(ValueError):
        ref.backward("lstm", cache, dy, dh_n=np.zeros((2, 3)))
    with pytest.raises(ValueError):
        ref.backward("lstm", cache, dy, dc_n=np.zeros((1, 4)))
    _, _, _, cache = ref.forward("rnn_tanh", **_good("rnn_tanh"))
    with pytest.raises(ValueError):
        ref.backward("rnn_tanh", cache, dy, dc_n=np.zeros((2, 4)))
