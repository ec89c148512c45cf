"""Bad input to rnnfast's layers: a ValueError or TypeError naming the argument, and no harm done.

Also: nothing the caller passes is modified, a failed call leaves the module working (weights,
grads and the saved forward unchanged), and caller arrays are not aliased by the module.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import (CELLS, DTYPE_IDS, DTYPES, assert_close, grads_of,  # noqa: E402
                      layer_backward, layer_forward, make_layer, random_problem, reference_run,
                      tol_for)

import rnnfast  # noqa: E402

# Every kernel output starts as NaN where the package supports it (see conftest.py).
pytestmark = pytest.mark.usefixtures("poison_outputs")

BAD = (ValueError, TypeError)
# Errors of state rather than of an argument (backward with no forward to go through).
BAD_STATE = (ValueError, TypeError, RuntimeError)

T, B, I, H = 5, 3, 4, 6


@pytest.fixture(params=CELLS)
def cell(request):
    return request.param


def setup(cell, dtype=np.float64, seed=0, **kw):
    p = random_problem(cell, T, B, I, H, dtype, seed)
    m = make_layer(cell, I, H, dtype, seed=1, **kw)
    m.load_state_dict(p["weights"])
    return m, p


def states(p):
    h0 = p["h0"][None]
    c0 = None if p["c0"] is None else p["c0"][None]
    dh_n = p["dh_n"][None]
    dc_n = None if p["dc_n"] is None else p["dc_n"][None]
    return h0, c0, dh_n, dc_n


def check_works(m, p, cell, what=""):
    """A full forward/backward on m matches the reference (grads zeroed first)."""
    h0, c0, dh_n, dc_n = states(p)
    r = reference_run(cell, m.state_dict(), p["x"], p["h0"], p["c0"], p["dy"], p["dh_n"],
                      p["dc_n"])
    m.train()
    m.zero_grad()
    y, h_n, c_n = layer_forward(m, cell, p["x"], h0, c0)
    dx, dh0, dc0 = layer_backward(m, cell, p["dy"], dh_n, dc_n)
    tol = tol_for(p["dtype"])
    assert_close(y, r["y"], tol, f"y {what}")
    assert_close(h_n, r["h_n"][None], tol, f"h_n {what}")
    assert_close(dx, r["dx"], tol, f"dx {what}")
    assert_close(dh0, r["dh0"][None], tol, f"dh0 {what}")
    if cell == "lstm":
        assert_close(c_n, r["c_n"][None], tol, f"c_n {what}")
        assert_close(dc0, r["dc0"][None], tol, f"dc0 {what}")
    for n, g in r["grads"].items():
        assert_close(grads_of(m)[n], g, tol, f"{n}.grad {what}")


def weights_snapshot(m):
    return {n: (prm.data.copy(), prm.grad.copy()) for n, prm in m.named_parameters()}


def assert_unchanged(m, snap, what):
    for n, prm in m.named_parameters():
        np.testing.assert_array_equal(prm.data, snap[n][0], err_msg=f"{n}.data changed by {what}")
        np.testing.assert_array_equal(prm.grad, snap[n][1], err_msg=f"{n}.grad changed by {what}")


# --------------------------------------------------------------------------- constructor


def _ctor(cell, *args, **kw):
    if cell in ("rnn_tanh", "rnn_relu"):
        kw.setdefault("nonlinearity", cell[4:])
        return rnnfast.RNN(*args, **kw)
    return {"lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[cell](*args, **kw)


@pytest.mark.parametrize("value", [0, -1, -7])
def test_nonpositive_input_size_raises_naming_input_size(cell, value):
    with pytest.raises(BAD, match="input_size"):
        _ctor(cell, value, 4)


@pytest.mark.parametrize("value", [0, -1, -7])
def test_nonpositive_hidden_size_raises_naming_hidden_size(cell, value):
    with pytest.raises(BAD, match="hidden_size"):
        _ctor(cell, 3, value)


@pytest.mark.parametrize("value", [0, -1])
def test_nonpositive_num_layers_raises_naming_num_layers(cell, value):
    with pytest.raises(BAD, match="num_layers"):
        _ctor(cell, 3, 4, num_layers=value)


def test_non_integer_sizes_raise_naming_the_argument(cell):
    with pytest.raises(BAD, match="input_size"):
        _ctor(cell, 2.5, 4)
    with pytest.raises(BAD, match="hidden_size"):
        _ctor(cell, 3, "4")


@pytest.mark.parametrize("nl", ["sigmoid", "TANH", ""])
def test_unknown_nonlinearity_raises_naming_nonlinearity(nl):
    with pytest.raises(BAD, match="nonlinearity"):
        rnnfast.RNN(3, 4, nonlinearity=nl)


@pytest.mark.parametrize("dt", [np.int32, np.complex128, "int64"])
def test_unsupported_layer_dtype_raises_naming_dtype(cell, dt):
    with pytest.raises(BAD, match="dtype"):
        _ctor(cell, 3, 4, dtype=dt)


# --------------------------------------------------------------------------- forward input


def _fwd(m, cell, x, h0=None, c0=None):
    return layer_forward(m, cell, x, h0, c0)


@pytest.mark.parametrize("shape", [(T * B * I,), (T, B, I, 1), (1, T, B, I), ()],
                         ids=["1d", "4d", "4d-leading", "0d"])
def test_x_with_wrong_ndim_raises_naming_x(cell, shape):
    m, p = setup(cell)
    x = np.zeros(shape)
    with pytest.raises(BAD, match=r"\bx\b"):
        _fwd(m, cell, x)
    check_works(m, p, cell, "after a failed forward")


@pytest.mark.parametrize("feat", [I - 1, I + 1, 1])
def test_x_with_wrong_feature_size_raises_naming_x_or_input_size(cell, feat):
    m, p = setup(cell)
    with pytest.raises(BAD, match=r"\bx\b|input_size"):
        _fwd(m, cell, np.zeros((T, B, feat)))
    with pytest.raises(BAD, match=r"\bx\b|input_size"):  # unbatched
        _fwd(m, cell, np.zeros((T, feat)))
    check_works(m, p, cell, "after a failed forward")


def test_x_with_wrong_feature_size_batch_first_raises_naming_x(cell):
    m, p = setup(cell, batch_first=True)
    with pytest.raises(BAD, match=r"\bx\b|input_size"):
        _fwd(m, cell, np.zeros((B, T, I + 2)))


@pytest.mark.parametrize("layer_dtype,x_dtype",
                         [(np.float32, np.float64), (np.float64, np.float32)],
                         ids=["f64-into-f32", "f32-into-f64"])
def test_x_dtype_mismatch_raises_naming_x(cell, layer_dtype, x_dtype):
    m, p = setup(cell, dtype=layer_dtype)
    with pytest.raises(BAD, match=r"\bx\b"):
        _fwd(m, cell, p["x"].astype(x_dtype))
    check_works(m, p, cell, "after a dtype-mismatch forward")


@pytest.mark.parametrize("x_dtype", [np.int64, np.int32, np.bool_, np.complex128, np.float16])
def test_x_of_non_float_dtype_raises_naming_x(cell, x_dtype):
    m, p = setup(cell, dtype=np.float32)
    x = np.ones((T, B, I), dtype=x_dtype)
    with pytest.raises(BAD, match=r"\bx\b"):
        _fwd(m, cell, x)


def test_x_not_an_array_of_numbers_raises_naming_x(cell):
    m, _ = setup(cell)
    with pytest.raises(BAD, match=r"\bx\b"):
        _fwd(m, cell, "not an array")
    with pytest.raises(BAD, match=r"\bx\b"):
        _fwd(m, cell, None)


@pytest.mark.parametrize("shape", [(1, B + 1, H), (1, B, H + 1), (2, B, H), (B, H), (1, 1, B, H),
                                   (H,)],
                         ids=["batch", "hidden", "layers", "2d", "4d", "1d"])
def test_h0_of_wrong_shape_raises_naming_h0(cell, shape):
    m, p = setup(cell)
    h0, c0, _, _ = states(p)
    bad = np.zeros(shape)
    with pytest.raises(BAD, match=r"\bh0\b|\bhx\b"):
        _fwd(m, cell, p["x"], bad, c0)
    check_works(m, p, cell, "after a failed forward")


def test_h0_of_wrong_shape_for_unbatched_x_raises_naming_h0(cell):
    m, p = setup(cell)
    x = p["x"][:, 0]
    good = np.zeros((1, H))
    for shape in [(1, 1, H), (H,), (2, H), (1, H + 1)]:
        with pytest.raises(BAD, match=r"\bh0\b|\bhx\b"):
            _fwd(m, cell, x, np.zeros(shape), good if cell == "lstm" else None)


@pytest.mark.parametrize("layer_dtype,h_dtype", [(np.float32, np.float64), (np.float64, np.float32),
                                                 (np.float64, np.int64)],
                         ids=["f64-into-f32", "f32-into-f64", "int"])
def test_h0_dtype_mismatch_raises_naming_h0(cell, layer_dtype, h_dtype):
    m, p = setup(cell, dtype=layer_dtype)
    h0, c0, _, _ = states(p)
    with pytest.raises(BAD, match=r"\bh0\b|\bhx\b"):
        _fwd(m, cell, p["x"], h0.astype(h_dtype), c0)


@pytest.mark.parametrize("shape", [(1, B + 1, H), (1, B, H + 1), (B, H)],
                         ids=["batch", "hidden", "2d"])
def test_lstm_c0_of_wrong_shape_raises_naming_c0(shape):
    m, p = setup("lstm")
    h0, _, _, _ = states(p)
    with pytest.raises(BAD, match=r"\bc0\b|\bcx\b"):
        m(p["x"], (h0, np.zeros(shape)))
    check_works(m, p, "lstm", "after a failed forward")


def test_lstm_c0_missing_raises():
    m, p = setup("lstm")
    h0, c0, _, _ = states(p)
    with pytest.raises(BAD, match=r"c0|hx|tuple"):
        m(p["x"], h0)  # a bare array instead of (h0, c0)
    with pytest.raises(BAD, match=r"c0|hx|tuple"):
        m(p["x"], (h0,))
    with pytest.raises(BAD, match=r"c0|hx|tuple"):
        m(p["x"], (h0, c0, c0))
    check_works(m, p, "lstm", "after a failed forward")


# --------------------------------------------------------------------------- backward input


def test_backward_before_any_forward_raises(cell):
    m, p = setup(cell)
    snap = weights_snapshot(m)
    with pytest.raises(BAD_STATE, match="forward"):
        layer_backward(m, cell, p["dy"])
    assert_unchanged(m, snap, "a failed backward")
    check_works(m, p, cell, "after a failed backward")


def test_backward_after_eval_forward_only_raises(cell):
    m, p = setup(cell)
    m.eval()
    layer_forward(m, cell, p["x"])
    m.train()
    snap = weights_snapshot(m)
    with pytest.raises(BAD_STATE, match="forward"):
        layer_backward(m, cell, p["dy"])
    assert_unchanged(m, snap, "a failed backward")
    m.eval()
    with pytest.raises(BAD_STATE, match="forward"):
        layer_backward(m, cell, p["dy"])
    check_works(m, p, cell, "after a failed backward")


@pytest.mark.parametrize("shape", [(T, B, H + 1), (T + 1, B, H), (T, B + 1, H), (T, B * H),
                                   (T, B, H, 1)],
                         ids=["hidden", "time", "batch", "2d", "4d"])
def test_dy_of_wrong_shape_raises_naming_dy_and_leaves_grads_and_saved_forward(cell, shape):
    m, p = setup(cell)
    h0, c0, dh_n, dc_n = states(p)
    r = reference_run(cell, p["weights"], p["x"], p["h0"], p["c0"], p["dy"], p["dh_n"],
                      p["dc_n"])
    layer_forward(m, cell, p["x"], h0, c0)
    snap = weights_snapshot(m)
    with pytest.raises(BAD, match=r"\bdy\b"):
        layer_backward(m, cell, np.zeros(shape), dh_n, dc_n)
    assert_unchanged(m, snap, "a failed backward")
    # the saved forward is still there and the grads are accumulated exactly once
    dx, dh0, dc0 = layer_backward(m, cell, p["dy"], dh_n, dc_n)
    assert_close(dx, r["dx"], 1e-10, "dx after a failed backward")
    for n, g in r["grads"].items():
        assert_close(grads_of(m)[n], g, 1e-10, f"{n}.grad after a failed backward")


def test_dy_batch_first_layout_mismatch_raises_naming_dy(cell):
    m, p = setup(cell, batch_first=True)
    x = np.ascontiguousarray(p["x"].transpose(1, 0, 2))
    layer_forward(m, cell, x)
    with pytest.raises(BAD, match=r"\bdy\b"):
        layer_backward(m, cell, p["dy"])  # time-major dy into a batch_first layer (T != B)


def test_dy_dtype_or_kind_mismatch_raises_naming_dy(cell):
    m, p = setup(cell, dtype=np.float32)
    layer_forward(m, cell, p["x"])
    with pytest.raises(BAD, match=r"\bdy\b"):
        layer_backward(m, cell, np.ones(p["dy"].shape, dtype=np.int64))
    with pytest.raises(BAD, match=r"\bdy\b"):
        layer_backward(m, cell, "dy")


@pytest.mark.parametrize("shape", [(1, B, H + 1), (1, B + 1, H), (2, B, H), (B, H)],
                         ids=["hidden", "batch", "layers", "2d"])
def test_dh_n_of_wrong_shape_raises_naming_dh_n(cell, shape):
    m, p = setup(cell)
    h0, c0, dh_n, dc_n = states(p)
    layer_forward(m, cell, p["x"], h0, c0)
    snap = weights_snapshot(m)
    with pytest.raises(BAD, match=r"\bdh_n\b|\bdhx\b|\bdh\b"):
        layer_backward(m, cell, p["dy"], np.zeros(shape), dc_n)
    assert_unchanged(m, snap, "a failed backward")
    check_works(m, p, cell, "after a failed backward")


@pytest.mark.parametrize("shape", [(1, B, H + 1), (B, H)], ids=["hidden", "2d"])
def test_lstm_dc_n_of_wrong_shape_raises_naming_dc_n(shape):
    m, p = setup("lstm")
    h0, c0, dh_n, _ = states(p)
    layer_forward(m, "lstm", p["x"], h0, c0)
    with pytest.raises(BAD, match=r"\bdc_n\b|\bdcx\b|\bdc\b"):
        m.backward(p["dy"], (dh_n, np.zeros(shape)))
    check_works(m, p, "lstm", "after a failed backward")


# --------------------------------------------------------------------------- load_state_dict


@pytest.mark.parametrize("key", ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"])
def test_load_state_dict_wrong_shape_raises_naming_key_and_changes_nothing(cell, key):
    m, p = setup(cell)
    snap = weights_snapshot(m)
    sd = {k: v + 1.0 for k, v in m.state_dict().items()}  # every other entry valid and new
    sd[key] = np.zeros(sd[key].shape[:-1] + (sd[key].shape[-1] + 1,))
    with pytest.raises(BAD, match=key):
        m.load_state_dict(sd)
    assert_unchanged(m, snap, "a failed load_state_dict")
    check_works(m, p, cell, "after a failed load_state_dict")


@pytest.mark.parametrize("key", ["weight_ih_l0", "weight_hh_l0", "bias_hh_l0"])
def test_load_state_dict_missing_key_raises_naming_key_and_changes_nothing(cell, key):
    m, p = setup(cell)
    snap = weights_snapshot(m)
    sd = {k: v + 1.0 for k, v in m.state_dict().items()}
    del sd[key]
    with pytest.raises(BAD, match=key):
        m.load_state_dict(sd)
    assert_unchanged(m, snap, "a failed load_state_dict")
    check_works(m, p, cell, "after a failed load_state_dict")


@pytest.mark.parametrize("key", ["weight_hr_l0", "bias_ih_l1", "weight_ih_l0_reverse", "foo"])
def test_load_state_dict_extra_key_raises_naming_key_and_changes_nothing(cell, key):
    m, p = setup(cell)
    snap = weights_snapshot(m)
    sd = {k: v + 1.0 for k, v in m.state_dict().items()}
    sd[key] = np.zeros(3)
    with pytest.raises(BAD, match=key):
        m.load_state_dict(sd)
    assert_unchanged(m, snap, "a failed load_state_dict")
    check_works(m, p, cell, "after a failed load_state_dict")


def test_load_state_dict_bias_keys_into_bias_false_layer_raises(cell):
    m, p = setup(cell)
    m_nb = make_layer(cell, I, H, np.float64, bias=False, seed=0)
    snap = weights_snapshot(m_nb)
    with pytest.raises(BAD, match="bias_"):
        m_nb.load_state_dict(m.state_dict())
    assert_unchanged(m_nb, snap, "a failed load_state_dict")


def test_load_state_dict_does_not_alias_the_callers_arrays(cell):
    m, p = setup(cell)
    sd = {k: v.copy() for k, v in p["weights"].items()}
    m.load_state_dict(sd)
    for v in sd.values():
        v[...] = 7.0
    for n, prm in m.named_parameters():
        np.testing.assert_array_equal(prm.data, p["weights"][n], err_msg=n)
    check_works(m, p, cell, "after the caller overwrote the loaded arrays")


# --------------------------------------------------------------------------- caller's arrays


def _frozen(a):
    if a is None:
        return None
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_inputs_are_not_modified_and_read_only_inputs_are_accepted(cell, dtype):
    m, p = setup(cell, dtype=dtype)
    h0, c0, dh_n, dc_n = states(p)
    args = dict(x=p["x"], h0=h0, c0=c0, dy=p["dy"], dh_n=dh_n, dc_n=dc_n)
    orig = {k: None if v is None else v.copy() for k, v in args.items()}
    # writeable arrays: compare after the calls
    layer_forward(m, cell, args["x"], args["h0"], args["c0"])
    layer_backward(m, cell, args["dy"], args["dh_n"], args["dc_n"])
    m.eval()
    layer_forward(m, cell, args["x"], args["h0"], args["c0"])
    m.train()
    for k, v in args.items():
        if v is not None:
            np.testing.assert_array_equal(v, orig[k], err_msg=f"{k} was modified")
    # read-only arrays: any write would raise
    fr = {k: _frozen(v) for k, v in args.items()}
    m.zero_grad()
    layer_forward(m, cell, fr["x"], fr["h0"], fr["c0"])
    layer_backward(m, cell, fr["dy"], fr["dh_n"], fr["dc_n"])
    r = reference_run(cell, p["weights"], p["x"], p["h0"], p["c0"], p["dy"], p["dh_n"],
                      p["dc_n"])
    for n, g in r["grads"].items():
        assert_close(grads_of(m)[n], g, tol_for(dtype), f"{n}.grad with read-only inputs")


def test_caller_changing_x_after_forward_does_not_change_backward(cell):
    m, p = setup(cell)
    h0, c0, dh_n, dc_n = states(p)
    r = reference_run(cell, p["weights"], p["x"], p["h0"], p["c0"], p["dy"], p["dh_n"],
                      p["dc_n"])
    x = p["x"].copy()
    h0 = h0.copy()
    layer_forward(m, cell, x, h0, c0)
    x[...] = 3.0
    h0[...] = -1.0
    dx, dh0, _ = layer_backward(m, cell, p["dy"], dh_n, dc_n)
    assert_close(dx, r["dx"], 1e-10, "dx")
    for n, g in r["grads"].items():
        assert_close(grads_of(m)[n], g, 1e-10, f"{n}.grad")


def test_caller_changing_returned_outputs_does_not_change_backward(cell):
    m, p = setup(cell)
    h0, c0, dh_n, dc_n = states(p)
    r = reference_run(cell, p["weights"], p["x"], p["h0"], p["c0"], p["dy"], p["dh_n"],
                      p["dc_n"])
    y, h_n, c_n = layer_forward(m, cell, p["x"], h0, c0)
    # A training forward's y is the activation backward reads: it comes back read-only (like torch,
    # which refuses to differentiate through a tensor modified in place) rather than silently shared.
    with pytest.raises(ValueError, match="read-only"):
        y[...] = 0.5
    h_n[...] = 0.5
    if c_n is not None:
        c_n[...] = 0.5
    dx, dh0, _ = layer_backward(m, cell, p["dy"], dh_n, dc_n)
    assert_close(dx, r["dx"], 1e-10, "dx")
    assert_close(dh0, r["dh0"][None], 1e-10, "dh0")
    for n, g in r["grads"].items():
        assert_close(grads_of(m)[n], g, 1e-10, f"{n}.grad")


def test_set_num_threads_rejects_nonpositive():
    old = rnnfast.get_num_threads()
    try:
        for bad in (0, -1):
            with pytest.raises(BAD):
                rnnfast.set_num_threads(bad)
            assert rnnfast.get_num_threads() == old
    finally:
        rnnfast.set_num_threads(old)
