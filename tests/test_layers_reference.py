"""rnnfast.RNN / LSTM / GRU (forward and BPTT backward) against the NumPy reference.

float64 results must match the float64 reference to 1e-10 (normwise relative error); float32
results must match the reference computed in float64 on the same float32 inputs and weights cast
up, to 1e-5. Every element of every output and gradient is compared (see the poisoning note in
conftest.py).
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import (CELLS, DTYPE_IDS, DTYPES, NUM_GATES, assert_close, grads_of,  # noqa: E402
                      layer_backward, layer_forward, make_layer, max_abs, param_names,
                      random_problem, reference_run, set_threads, tol_for)

import rnnfast  # noqa: E402

# Every kernel output starts as NaN where the package supports it (see conftest.py).
pytestmark = pytest.mark.usefixtures("poison_outputs")

# (T, B, I, H, seed): a plain case with several seeds, then edge shapes.
CASES = [
    pytest.param(5, 3, 4, 6, 0, id="T5B3I4H6-s0"),
    pytest.param(5, 3, 4, 6, 1, id="T5B3I4H6-s1"),
    pytest.param(5, 3, 4, 6, 2, id="T5B3I4H6-s2"),
    pytest.param(1, 3, 4, 6, 3, id="T1"),
    pytest.param(6, 1, 4, 6, 4, id="B1"),
    pytest.param(6, 3, 4, 1, 5, id="H1"),
    pytest.param(6, 3, 1, 6, 6, id="I1"),
    pytest.param(1, 1, 1, 1, 7, id="T1B1I1H1"),
    pytest.param(4, 3, 5, 17, 8, id="H17"),
    pytest.param(3, 2, 7, 33, 9, id="H33"),
    pytest.param(1000, 2, 3, 4, 10, id="T1000"),
    pytest.param(20, 9, 40, 70, 11, id="T20B9I40H70"),
    # Batch 1 with two or more unit blocks: at two threads the step's product takes the batch-1 path (weights in
    # L1), own units first, then the rest after the crossing, added in. A version of that path that dropped the
    # addition passed every other case here.
    pytest.param(6, 1, 5, 64, 12, id="B1H64"),
    pytest.param(5, 1, 3, 40, 13, id="B1H40"),
]

_REF_CACHE = {}


def cached_problem_and_reference(cell, T, B, I, H, dtype, seed, bias=True):
    """The random problem and its full reference results (h0, c0, dh_n, dc_n all given)."""
    key = (cell, T, B, I, H, np.dtype(dtype).name, seed, bias)
    if key not in _REF_CACHE:
        p = random_problem(cell, T, B, I, H, dtype, seed, bias=bias)
        r = reference_run(cell, p["weights"], p["x"], p["h0"], p["c0"], p["dy"], p["dh_n"],
                          p["dc_n"])
        _REF_CACHE[key] = (p, r)
    return _REF_CACHE[key]


def layer_for(p, batch_first=False, seed=123):
    m = make_layer(p["cell"], p["I"], p["H"], p["dtype"], bias=p["bias"],
                   batch_first=batch_first, seed=seed)
    m.load_state_dict({k: v.copy() for k, v in p["weights"].items()})
    return m


def h3(a):
    """(B, H) -> (1, B, H) as the layers take and return states."""
    return None if a is None else a[None]


def run_full(m, p, with_state=True, with_dstate=True):
    """Training-mode forward + backward on problem p. Returns a dict of results."""
    cell = p["cell"]
    h0 = h3(p["h0"]) if with_state else None
    c0 = h3(p["c0"]) if with_state else None
    y, h_n, c_n = layer_forward(m, cell, p["x"], h0, c0)
    dh_n = h3(p["dh_n"]) if with_dstate else None
    dc_n = h3(p["dc_n"]) if with_dstate else None
    dx, dh0, dc0 = layer_backward(m, cell, p["dy"], dh_n, dc_n)
    return dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
                grads={n: g.copy() for n, g in grads_of(m).items()})


def check_full(got, r, p, tol, state_shape=None, check_backward=True):
    """Compare layer results (states with a leading 1 dim) to reference results.

    Small tensors are judged on the scale of their group (forward outputs; input/state
    gradients; parameter gradients) so that a cancellation in, say, h_n of an H=1 relu RNN
    does not count as an error of the kernel.
    """
    cell, dtype = p["cell"], p["dtype"]
    B, H = p["B"], p["H"]
    st = (1, B, H) if state_shape is None else state_shape
    fwd_scale = max_abs(r["y"], r["h_n"], r["c_n"])
    assert got["y"].dtype == dtype, f"y dtype {got['y'].dtype}, expected {dtype}"
    assert_close(got["y"], r["y"], tol, "y")
    assert_close(got["h_n"], r["h_n"].reshape(st), tol, "h_n", scale=fwd_scale)
    if cell == "lstm":
        assert_close(got["c_n"], r["c_n"].reshape(st), tol, "c_n", scale=fwd_scale)
    if not check_backward:
        return
    bwd_scale = max_abs(r["dx"], r["dh0"], r["dc0"], p["dy"], p["dh_n"], p["dc_n"])
    assert got["dx"].dtype == dtype, f"dx dtype {got['dx'].dtype}, expected {dtype}"
    assert_close(got["dx"], r["dx"], tol, "dx", scale=bwd_scale)
    assert_close(got["dh0"], r["dh0"].reshape(st), tol, "dh0", scale=bwd_scale)
    if cell == "lstm":
        assert_close(got["dc0"], r["dc0"].reshape(st), tol, "dc0", scale=bwd_scale)
    assert set(got["grads"]) == set(r["grads"]), (set(got["grads"]), set(r["grads"]))
    grad_scale = max_abs(*r["grads"].values())
    for n, g in r["grads"].items():
        assert got["grads"][n].dtype == dtype, f"{n}.grad dtype {got['grads'][n].dtype}"
        assert_close(got["grads"][n], g, tol, f"{n}.grad", scale=grad_scale)


# --------------------------------------------------------------------------- the main sweep


@pytest.mark.parametrize("T,B,I,H,seed", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_forward_backward_all_outputs_and_grads_match_reference(cell, dtype, T, B, I, H, seed,
                                                                num_threads):
    p, r = cached_problem_and_reference(cell, T, B, I, H, dtype, seed)
    m = layer_for(p)
    got = run_full(m, p)
    check_full(got, r, p, tol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_bias_false_matches_reference_and_has_no_bias_params(cell, dtype, num_threads):
    p, r = cached_problem_and_reference(cell, 7, 3, 5, 9, dtype, 20, bias=False)
    m = layer_for(p)
    assert [n for n, _ in m.named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]
    got = run_full(m, p)
    check_full(got, r, p, tol_for(dtype))


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_parameter_names_shapes_dtypes_and_zero_grads_follow_torch(cell, dtype, bias):
    I, H = 5, 7
    G = NUM_GATES[cell]
    m = make_layer(cell, I, H, dtype, bias=bias, seed=0)
    shapes = {"weight_ih_l0": (G * H, I), "weight_hh_l0": (G * H, H),
              "bias_ih_l0": (G * H,), "bias_hh_l0": (G * H,)}
    named = list(m.named_parameters())
    assert [n for n, _ in named] == param_names(bias)
    assert len(list(m.parameters())) == len(named)
    for n, prm in named:
        assert prm.data.shape == shapes[n], (n, prm.data.shape)
        assert prm.data.dtype == dtype, (n, prm.data.dtype)
        assert np.isfinite(prm.data).all(), n
        assert prm.grad.shape == shapes[n], (n, prm.grad.shape)
        assert prm.grad.dtype == dtype, (n, prm.grad.dtype)
        assert np.all(prm.grad == 0), f"{n}.grad is not zero initially"
    sd = m.state_dict()
    assert list(sd) == param_names(bias)
    for n, prm in named:
        np.testing.assert_array_equal(sd[n], prm.data)


@pytest.mark.parametrize("cell", CELLS)
def test_same_seed_gives_same_init_and_different_seed_differs(cell):
    a = make_layer(cell, 4, 6, np.float64, seed=5).state_dict()
    b = make_layer(cell, 4, 6, np.float64, seed=5).state_dict()
    c = make_layer(cell, 4, 6, np.float64, seed=6).state_dict()
    for n in a:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)
    assert any(not np.array_equal(a[n], c[n]) for n in a)


@pytest.mark.parametrize("cell", CELLS)
def test_default_init_layer_matches_reference_with_its_own_weights(cell):
    m = make_layer(cell, 4, 6, np.float64, seed=3)
    p = random_problem(cell, 5, 2, 4, 6, np.float64, seed=30)
    p["weights"] = m.state_dict()
    r = reference_run(cell, p["weights"], p["x"], p["h0"], p["c0"], p["dy"], p["dh_n"],
                      p["dc_n"])
    check_full(run_full(m, p), r, p, 1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_returns_copies_not_views(cell):
    m = make_layer(cell, 3, 4, np.float64, seed=0)
    before = {n: p.data.copy() for n, p in m.named_parameters()}
    sd = m.state_dict()
    for v in sd.values():
        v[...] = 12345.0
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p.data, before[n], err_msg=n)


# --------------------------------------------------------------------------- modes and state


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_eval_mode_forward_equals_training_mode_forward(cell, dtype, num_threads):
    p, r = cached_problem_and_reference(cell, 20, 9, 40, 70, dtype, 11)
    m = layer_for(p)
    assert m.training
    y_t, h_t, c_t = layer_forward(m, cell, p["x"], h3(p["h0"]), h3(p["c0"]))
    m.eval()
    assert not m.training
    y_e, h_e, c_e = layer_forward(m, cell, p["x"], h3(p["h0"]), h3(p["c0"]))
    tol = tol_for(dtype)
    assert_close(y_e, y_t, tol, "eval y vs train y")
    assert_close(h_e, h_t, tol, "eval h_n vs train h_n")
    assert_close(y_e, r["y"], tol, "eval y")
    assert_close(h_e, r["h_n"][None], tol, "eval h_n")
    if cell == "lstm":
        assert_close(c_e, c_t, tol, "eval c_n vs train c_n")
        assert_close(c_e, r["c_n"][None], tol, "eval c_n")
    m.train()
    assert m.training


@pytest.mark.parametrize("cell", CELLS)
def test_backward_after_a_later_eval_forward_raises(cell):
    """Issue 11, item 3: a backward differentiates the latest call; after an eval forward there is nothing
    to differentiate (it used to differentiate the older training forward silently)."""
    p, r = cached_problem_and_reference(cell, 5, 3, 4, 6, np.float64, 0)
    m = layer_for(p)
    layer_forward(m, cell, p["x"], h3(p["h0"]), h3(p["c0"]))
    m.eval()
    layer_forward(m, cell, np.ones_like(p["x"][:2]))  # different T, inference only
    m.train()
    with pytest.raises(RuntimeError, match="eval"):
        layer_backward(m, cell, p["dy"], h3(p["dh_n"]), h3(p["dc_n"]))
    for n, g in grads_of(m).items():
        assert np.all(g == 0), f"{n}.grad changed by a refused backward"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_two_runs_same_thread_count_are_bit_identical(cell, dtype, num_threads):
    p, _ = cached_problem_and_reference(cell, 20, 9, 40, 70, dtype, 11)
    m1, m2 = layer_for(p), layer_for(p)
    a = run_full(m1, p)
    b = run_full(m2, p)
    m1.zero_grad()
    c = run_full(m1, p)  # same module again
    for other, tag in ((b, "second module"), (c, "same module, second run")):
        for k in ("y", "h_n", "c_n", "dx", "dh0", "dc0"):
            if a[k] is None:
                continue
            np.testing.assert_array_equal(a[k], other[k], err_msg=f"{k} ({tag})")
        for n in a["grads"]:
            np.testing.assert_array_equal(a["grads"][n], other["grads"][n],
                                          err_msg=f"{n}.grad ({tag})")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_grads_accumulate_over_two_backward_calls_and_zero_grad_clears(cell, dtype):
    p, r = cached_problem_and_reference(cell, 5, 3, 4, 6, dtype, 1)
    tol = tol_for(dtype)
    m = layer_for(p)
    run_full(m, p)
    one = {n: g.copy() for n, g in grads_of(m).items()}
    for n, g in r["grads"].items():
        assert_close(one[n], g, tol, f"{n}.grad after one backward")
    run_full(m, p)
    for n, g in r["grads"].items():
        assert_close(grads_of(m)[n], 2 * g, tol, f"{n}.grad after two backward calls")
        assert_close(grads_of(m)[n], 2 * one[n], tol, f"{n}.grad after two vs 2x one")
    m.zero_grad()
    for n, prm in m.named_parameters():
        assert prm.grad is not None and prm.grad.shape == prm.data.shape, n
        assert np.all(prm.grad == 0), f"{n}.grad not zero after zero_grad()"
    # and accumulation starts afresh
    got = run_full(m, p)
    check_full(got, r, p, tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_backward_twice_after_one_forward_accumulates(cell, dtype):
    """Two backward calls through the same training forward add up when the first retains the record
    (retain_graph=True, as torch); without it the second raises (issue 11, item 3)."""
    p, r = cached_problem_and_reference(cell, 5, 3, 4, 6, dtype, 2)
    m = layer_for(p)
    layer_forward(m, cell, p["x"], h3(p["h0"]), h3(p["c0"]))
    dstate = (h3(p["dh_n"]), h3(p["dc_n"])) if cell == "lstm" else h3(p["dh_n"])
    m.backward(p["dy"], dstate, retain_graph=True)
    dx, dh0, dc0 = layer_backward(m, cell, p["dy"], h3(p["dh_n"]), h3(p["dc_n"]))
    tol = tol_for(dtype)
    assert_close(dx, r["dx"], tol, "dx of the second backward")
    assert_close(dh0, r["dh0"][None], tol, "dh0 of the second backward")
    for n, g in r["grads"].items():
        assert_close(grads_of(m)[n], 2 * g, tol, f"{n}.grad after two backward calls")
    with pytest.raises(RuntimeError, match="already differentiated"):
        layer_backward(m, cell, p["dy"], h3(p["dh_n"]), h3(p["dc_n"]))


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_batch_first_equals_transposed_time_major(cell, dtype, num_threads):
    p, r = cached_problem_and_reference(cell, 6, 4, 5, 7, dtype, 40)
    tol = tol_for(dtype)
    m_tm = layer_for(p)
    tm = run_full(m_tm, p)
    check_full(tm, r, p, tol)

    m_bf = layer_for(p, batch_first=True)
    x_bf = np.ascontiguousarray(p["x"].transpose(1, 0, 2))
    dy_bf = np.ascontiguousarray(p["dy"].transpose(1, 0, 2))
    y, h_n, c_n = layer_forward(m_bf, cell, x_bf, h3(p["h0"]), h3(p["c0"]))
    assert y.shape == (p["B"], p["T"], p["H"]), y.shape
    assert h_n.shape == (1, p["B"], p["H"]), h_n.shape  # states stay (L, B, H) as in torch
    dx, dh0, dc0 = layer_backward(m_bf, cell, dy_bf, h3(p["dh_n"]), h3(p["dc_n"]))
    assert dx.shape == x_bf.shape, dx.shape
    assert_close(y.transpose(1, 0, 2), tm["y"], tol, "batch_first y vs time-major")
    assert_close(dx.transpose(1, 0, 2), tm["dx"], tol, "batch_first dx vs time-major")
    got = dict(y=y.transpose(1, 0, 2), h_n=h_n, c_n=c_n, dx=dx.transpose(1, 0, 2), dh0=dh0,
               dc0=dc0, grads={n: g.copy() for n, g in grads_of(m_bf).items()})
    check_full(got, r, p, tol)


def _noncontiguous_variants(a, rng):
    """Views equal to `a` that are not C-contiguous: strided, transposed, reversed, F-order."""
    T, B, I = a.shape
    wide = rng.standard_normal((T, B, 2 * I)).astype(a.dtype)
    wide[:, :, ::2] = a
    tr = np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)
    rev = np.ascontiguousarray(a[::-1])[::-1]
    fort = np.asfortranarray(a)
    out = {"strided_slice": wide[:, :, ::2], "transposed_view": tr, "reversed_view": rev,
           "fortran_order": fort}
    for k, v in out.items():
        np.testing.assert_array_equal(v, a, err_msg=k)
        assert not v.flags.c_contiguous or v.size <= 1, k
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_noncontiguous_x_dy_and_states_are_accepted(cell, dtype, num_threads):
    p, r = cached_problem_and_reference(cell, 6, 4, 5, 7, dtype, 41)
    tol = tol_for(dtype)
    rng = np.random.default_rng(0)
    xs = _noncontiguous_variants(p["x"], rng)
    dys = _noncontiguous_variants(p["dy"], rng)
    for kind in xs:
        m = layer_for(p)
        h0 = np.asfortranarray(h3(p["h0"]).transpose(0, 2, 1)).transpose(0, 2, 1)  # non-C view
        c0 = None if p["c0"] is None else np.ascontiguousarray(p["c0"][::-1])[::-1][None]
        y, h_n, c_n = layer_forward(m, cell, xs[kind], h0, c0)
        dh_n = h3(p["dh_n"]).transpose(0, 2, 1).copy().transpose(0, 2, 1)
        dc_n = None if p["dc_n"] is None else np.ascontiguousarray(p["dc_n"][::-1])[::-1][None]
        dx, dh0, dc0 = layer_backward(m, cell, dys[kind], dh_n, dc_n)
        got = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
                   grads={n: g.copy() for n, g in grads_of(m).items()})
        try:
            check_full(got, r, p, tol)
        except BaseException as e:
            raise AssertionError(f"non-contiguous inputs ({kind}): {e}") from e


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_default_zero_states_equal_explicit_zeros_and_reference(cell, dtype, num_threads):
    p0, _ = cached_problem_and_reference(cell, 6, 3, 4, 5, dtype, 42)
    tol = tol_for(dtype)
    p = dict(p0)
    p["h0"] = np.zeros_like(p0["h0"])
    p["c0"] = None if p0["c0"] is None else np.zeros_like(p0["c0"])
    p["dh_n"] = np.zeros_like(p0["dh_n"])
    p["dc_n"] = None if p0["dc_n"] is None else np.zeros_like(p0["dc_n"])
    r = reference_run(cell, p["weights"], p["x"], None, None, p["dy"], None, None)

    m_default = layer_for(p)
    got_default = run_full(m_default, p, with_state=False, with_dstate=False)
    check_full(got_default, r, p, tol)
    m_explicit = layer_for(p)
    got_explicit = run_full(m_explicit, p, with_state=True, with_dstate=True)
    check_full(got_explicit, r, p, tol)
    if cell == "lstm":  # lstm(x, None) is the same as lstm(x)
        m_none = layer_for(p)
        y, (h_n, c_n) = m_none(p["x"], None)
        assert_close(y, r["y"], tol, "y of lstm(x, None)")
        assert_close(c_n, r["c_n"][None], tol, "c_n of lstm(x, None)")
    else:
        m_none = layer_for(p)
        y, h_n = m_none(p["x"], None)
        assert_close(y, r["y"], tol, "y of layer(x, None)")
        assert_close(h_n, r["h_n"][None], tol, "h_n of layer(x, None)")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_given_states_differ_from_default_and_backward_without_dh_n(cell, dtype):
    """h0/c0 given (nonzero) but dh_n/dc_n omitted: matches the reference with zero dh_n/dc_n."""
    p, _ = cached_problem_and_reference(cell, 6, 3, 4, 5, dtype, 43)
    tol = tol_for(dtype)
    r = reference_run(cell, p["weights"], p["x"], p["h0"], p["c0"], p["dy"], None, None)
    m = layer_for(p)
    got = run_full(m, p, with_state=True, with_dstate=False)
    check_full(got, r, p, tol)
    r0 = reference_run(cell, p["weights"], p["x"])
    assert np.max(np.abs(r0["y"][0] - r["y"][0])) > 1e-3  # the test really uses h0


# --------------------------------------------------------------------------- unbatched


def _check_unbatched(cell, tol, **results):
    """Each result name=(got, reference, expected shape): its shape, then its values; c_n and dc0 only for an LSTM."""
    for name, (got, ref, shape) in results.items():
        if name in ("c_n", "dc0") and cell != "lstm":
            continue
        assert got.shape == shape, (name, got.shape)
        assert_close(got, ref, tol, f"unbatched {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input_gives_outputs_without_batch_dim(cell, dtype, num_threads):
    p, r = cached_problem_and_reference(cell, 7, 1, 4, 5, dtype, 50)
    tol = tol_for(dtype)
    T, I, H = p["T"], p["I"], p["H"]
    m = layer_for(p)
    x = p["x"][:, 0, :].copy()  # (T, I)
    h0 = p["h0"].copy()  # (1, H): the batch dim of 1 is the layer dim for unbatched input
    c0 = None if p["c0"] is None else p["c0"].copy()
    y, h_n, c_n = layer_forward(m, cell, x, h0, c0)
    _check_unbatched(cell, tol, y=(y, r["y"][:, 0, :], (T, H)), h_n=(h_n, r["h_n"], (1, H)),
                     c_n=(c_n, r["c_n"], (1, H)))
    dy = p["dy"][:, 0, :].copy()
    dh_n = p["dh_n"].copy()
    dc_n = None if p["dc_n"] is None else p["dc_n"].copy()
    dx, dh0, dc0 = layer_backward(m, cell, dy, dh_n, dc_n)
    _check_unbatched(cell, tol, dx=(dx, r["dx"][:, 0, :], (T, I)), dh0=(dh0, r["dh0"], (1, H)),
                     dc0=(dc0, r["dc0"], (1, H)))
    for n, g in r["grads"].items():
        assert_close(grads_of(m)[n], g, tol, f"unbatched {n}.grad")

    # unbatched without states
    m2 = layer_for(p)
    r0 = reference_run(cell, p["weights"], p["x"])
    y2, h2, _ = layer_forward(m2, cell, x)
    assert y2.shape == (T, H) and h2.shape == (1, H), (y2.shape, h2.shape)
    assert_close(y2, r0["y"][:, 0, :], tol, "unbatched y (no h0)")


# --------------------------------------------------------------------------- stale caches


def _forward_and_check(m, p, tol, what, backward=True):
    cell = p["cell"]
    r = reference_run(cell, m.state_dict(), p["x"], p["h0"], p["c0"],
                      p["dy"] if backward else None, p["dh_n"], p["dc_n"])
    m.zero_grad()
    if backward:
        got = run_full(m, p)
    else:
        y, h_n, c_n = layer_forward(m, cell, p["x"], h3(p["h0"]), h3(p["c0"]))
        got = dict(y=y, h_n=h_n, c_n=c_n)
    try:
        check_full(got, r, p, tol, check_backward=backward)
    except BaseException as e:
        raise AssertionError(f"{what}: {e}") from e
    return got


@pytest.mark.parametrize("pname", ["weight_hh_l0", "weight_ih_l0", "bias_hh_l0", "bias_ih_l0"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_in_place_weight_change_via_named_parameters_is_never_served_stale(
        cell, dtype, training, pname, num_threads):
    p, _ = cached_problem_and_reference(cell, 8, 5, 6, 20, dtype, 60)
    tol = tol_for(dtype)
    m = layer_for(p)
    if not training:
        m.eval()
    first = _forward_and_check(m, p, tol, "first forward", backward=training)
    prm = dict(m.named_parameters())[pname]
    prm.data[...] += 0.1
    second = _forward_and_check(m, p, tol, f"after {pname}.data[...] += 0.1", backward=training)
    assert not np.array_equal(first["y"], second["y"])
    # a second in-place change, a single element this time
    prm.data.reshape(-1)[prm.data.size // 2] -= 0.3
    _forward_and_check(m, p, tol, f"after changing one element of {pname}", backward=training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_load_state_dict_after_forward_is_never_served_stale(cell, dtype, training, num_threads):
    p, _ = cached_problem_and_reference(cell, 8, 5, 6, 20, dtype, 61)
    tol = tol_for(dtype)
    m = layer_for(p)
    if not training:
        m.eval()
    _forward_and_check(m, p, tol, "first forward", backward=training)
    sd = m.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"] + 0.1
    m.load_state_dict(sd)
    np.testing.assert_array_equal(dict(m.named_parameters())["weight_hh_l0"].data,
                                  sd["weight_hh_l0"])
    _forward_and_check(m, p, tol, "after load_state_dict(new weight_hh_l0)", backward=training)
    # load all-new weights
    rng = np.random.default_rng(99)
    new = {k: rng.uniform(-0.3, 0.3, v.shape).astype(dtype) for k, v in sd.items()}
    m.load_state_dict(new)
    _forward_and_check(m, p, tol, "after load_state_dict(all new)", backward=training)


@pytest.mark.parametrize("cell", CELLS)
def test_thread_count_change_between_forwards_is_never_served_stale(cell):
    p, r = cached_problem_and_reference(cell, 20, 9, 40, 70, np.float32, 11)
    old = rnnfast.get_num_threads()
    try:
        m = layer_for(p)
        for n, exact in ((1, False), (2, True), (1, False), (2, False), (2, True)):
            set_threads(n, exact)
            assert rnnfast.get_num_threads() == n
            m.zero_grad()
            try:
                check_full(run_full(m, p), r, p, 1e-5)
            except BaseException as e:
                raise AssertionError(f"threads={n} exact={exact}: {e}") from e
    finally:
        rnnfast.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input_ignores_batch_first_as_torch_does(cell, dtype):
    p, r = cached_problem_and_reference(cell, 7, 1, 4, 5, dtype, 50)
    tol = tol_for(dtype)
    m = layer_for(p, batch_first=True)
    x = p["x"][:, 0, :].copy()  # (T, I) whatever batch_first says
    y, h_n, c_n = layer_forward(m, cell, x, p["h0"].copy(),
                                None if p["c0"] is None else p["c0"].copy())
    assert y.shape == (p["T"], p["H"]), y.shape
    assert_close(y, r["y"][:, 0, :], tol, "unbatched y (batch_first=True)")
    assert_close(h_n, r["h_n"], tol, "unbatched h_n (batch_first=True)")
    dx, dh0, _ = layer_backward(m, cell, p["dy"][:, 0, :].copy(), p["dh_n"].copy(),
                                None if p["dc_n"] is None else p["dc_n"].copy())
    assert_close(dx, r["dx"][:, 0, :], tol, "unbatched dx (batch_first=True)")
    assert_close(dh0, r["dh0"], tol, "unbatched dh0 (batch_first=True)")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_saturating_inputs_give_no_nan_and_match_reference(cell, dtype, num_threads):
    """Huge pre-activations (|a| up to ~1e3): sigmoid/tanh/exp must saturate, not overflow to NaN."""
    p = dict(random_problem(cell, 6, 4, 5, 19, dtype, seed=70))
    rng = np.random.default_rng(71)
    p["x"] = (60.0 * rng.standard_normal(p["x"].shape)).astype(dtype)
    p["weights"] = {k: (4.0 * v) for k, v in p["weights"].items()}
    r = reference_run(cell, p["weights"], p["x"], p["h0"], p["c0"], p["dy"], p["dh_n"],
                      p["dc_n"])
    m = layer_for(p)
    check_full(run_full(m, p), r, p, tol_for(dtype))
