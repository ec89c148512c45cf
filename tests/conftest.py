"""Shared test helpers for rnnfast.

Module-level helpers (import them with ``from conftest import ...``; the test modules make sure
this directory is on ``sys.path`` so that works under every pytest import mode):

* ``require_torch()`` -- import and return torch. If torch is missing the calling test is
  skipped, unless the environment variable ``RNNFAST_REQUIRE_TORCH=1`` is set, in which case the
  test fails (``pytest.fail``) so that a CI job that is meant to compare against PyTorch can never
  pass silently. The fixture ``torch_mod`` does the same.
* ``assert_close(got, ref, tol, name)`` -- normwise relative error
  ``max|got - ref| / max(max|ref|, tiny) <= tol``; also checks shapes and that ``got`` is finite
  everywhere, and fails with a message naming the quantity and the error.
* ``make_layer`` / ``random_problem`` / ``reference_run`` / ``layer_forward`` /
  ``layer_backward`` -- build a layer for a cell name ("rnn_tanh", "rnn_relu", "lstm", "gru"),
  deterministic random inputs and weights, the float64 NumPy-reference results, and run the
  layer's forward/backward with the torch.nn-like calling conventions of each cell.
* fixture ``num_threads`` -- parametrised over 1 and 2 rnnfast threads, and 2 threads with
  ``exact=True`` (forces the threaded split even on small shapes, which
  the kernels would otherwise run on one thread); restores the previous setting afterwards.

A note on poisoning
-------------------
Kernel tests often fill output buffers with NaN ("poison") before a call to prove that every
element is written. rnnfast's layers allocate their outputs (y, h_n, c_n, dx, dh0, dc0) freshly
and take no caller-provided output buffers, so the layer tests cannot poison through the public
API. Instead every comparison here is over *all* elements of every output and gradient against
the NumPy reference (or torch), and ``assert_close`` fails on any NaN or inf in the result: an
element that was never written holds garbage (often 0 or NaN from ``np.empty``), which shows up as
a mismatch with the reference given random, non-degenerate inputs.

Where the package offers the private switch ``rnnfast._core.arrays.poison_outputs`` (allocate every
kernel output and workspace filled with NaN instead of ``np.empty``), the fixture
``poison_outputs`` turns it on for the duration of a test (the layer test modules use it for every
test), so that an unwritten element is NaN for certain; without the switch it does nothing.
"""

import os
import sys

# The suite never writes the user's GEMM tuning cache (~/.cache/rnnfast/tuning.json) nor reads a choice made
# outside it: each test process tunes for itself (tests/test_tuning.py sets its own files).
os.environ.setdefault("RNNFAST_TUNE_CACHE", "")

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
DTYPES = (np.float64, np.float32)
DTYPE_IDS = ("f64", "f32")
# Normwise relative tolerance of a result in this dtype against the float64 reference.
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def tol_for(dtype):
    return TOL[np.dtype(dtype)]


# --------------------------------------------------------------------------- torch


def require_torch():
    """Import and return torch; skip the test if it is missing (fail if RNNFAST_REQUIRE_TORCH=1)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        msg = f"torch is not importable ({e})"
        if os.environ.get("RNNFAST_REQUIRE_TORCH", "") == "1":
            pytest.fail(msg + " but RNNFAST_REQUIRE_TORCH=1", pytrace=False)
        pytest.skip(msg)
    return torch


@pytest.fixture
def torch_mod():
    """The torch module (see require_torch)."""
    return require_torch()


# --------------------------------------------------------------------------- comparisons


def _to_numpy(a):
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def rel_error(got, ref, tiny=np.finfo(np.float64).tiny):
    got = _to_numpy(got).astype(np.float64)
    ref = _to_numpy(ref).astype(np.float64)
    if got.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(ref))), tiny)
    return float(np.max(np.abs(got - ref))) / scale


def assert_close(got, ref, tol, name, tiny=np.finfo(np.float64).tiny, scale=None):
    """Fail unless max|got-ref| / max(max|ref|, tiny) <= tol (and got has ref's shape, no NaN/inf).

    `scale`, if given, is a floor for the denominator: the magnitude of related quantities, for a
    small tensor whose entries all happen to come out of a cancellation (e.g. h_n of a relu RNN
    with H=1 is judged on the scale of all of y, a bias gradient on the scale of all gradients).
    """
    if scale is not None:
        tiny = max(float(scale), tiny)
    assert got is not None, f"{name}: got None"
    g = _to_numpy(got)
    r = _to_numpy(ref)
    assert g.shape == r.shape, f"{name}: shape {g.shape}, expected {r.shape}"
    assert np.isfinite(r).all(), f"{name}: the reference itself is not finite (test bug)"
    n_bad = int(np.size(g) - np.count_nonzero(np.isfinite(g)))
    assert n_bad == 0, f"{name}: {n_bad} of {g.size} elements are NaN/inf (unwritten output?)"
    err = rel_error(g, r, tiny)
    if not err <= tol:
        diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
        where = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
        pytest.fail(
            f"{name}: normwise relative error {err:.3e} > tol {tol:.1e} "
            f"(max |diff| {diff.max():.3e} at index {tuple(int(i) for i in where)}, "
            f"max |ref| {np.max(np.abs(r)):.3e}, scale floor {tiny:.3e})",
            pytrace=False,
        )


# --------------------------------------------------------------------------- layers


def make_layer(cell, input_size, hidden_size, dtype=np.float64, bias=True, batch_first=False,
               seed=0):
    """An rnnfast layer for a cell name."""
    import rnnfast

    kw = dict(bias=bias, batch_first=batch_first, dtype=dtype, seed=seed)
    if cell in ("rnn_tanh", "rnn_relu"):
        return rnnfast.RNN(input_size, hidden_size, nonlinearity=cell[4:], **kw)
    if cell == "lstm":
        return rnnfast.LSTM(input_size, hidden_size, **kw)
    if cell == "gru":
        return rnnfast.GRU(input_size, hidden_size, **kw)
    raise AssertionError(cell)


def param_names(bias=True):
    names = ["weight_ih_l0", "weight_hh_l0"]
    if bias:
        names += ["bias_ih_l0", "bias_hh_l0"]
    return names


def random_weights(cell, input_size, hidden_size, dtype, bias, rng):
    """Weights like torch's default init, U(-1/sqrt(H), 1/sqrt(H)), as a state_dict in `dtype`."""
    G, H, I = NUM_GATES[cell], hidden_size, input_size
    k = 1.0 / np.sqrt(H)
    shapes = {"weight_ih_l0": (G * H, I), "weight_hh_l0": (G * H, H),
              "bias_ih_l0": (G * H,), "bias_hh_l0": (G * H,)}
    return {n: rng.uniform(-k, k, shapes[n]).astype(dtype) for n in param_names(bias)}


def random_problem(cell, T, B, I, H, dtype, seed, bias=True):
    """Deterministic random weights and inputs (all in `dtype`); h0/c0/dh_n/dc_n are (B, H)."""
    rng = np.random.default_rng(seed)
    p = dict(cell=cell, T=T, B=B, I=I, H=H, dtype=np.dtype(dtype), bias=bias)
    p["weights"] = random_weights(cell, I, H, dtype, bias, rng)
    p["x"] = rng.standard_normal((T, B, I)).astype(dtype)
    p["h0"] = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    p["c0"] = (0.5 * rng.standard_normal((B, H))).astype(dtype) if cell == "lstm" else None
    p["dy"] = rng.standard_normal((T, B, H)).astype(dtype)
    p["dh_n"] = rng.standard_normal((B, H)).astype(dtype)
    p["dc_n"] = rng.standard_normal((B, H)).astype(dtype) if cell == "lstm" else None
    return p


def max_abs(*arrays):
    """max |a| over all the given arrays (None skipped); 0 if none."""
    return max([float(np.max(np.abs(_to_numpy(a)))) for a in arrays
                if a is not None and np.size(a)] + [0.0])


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def reference_run(cell, weights, x, h0=None, c0=None, dy=None, dh_n=None, dc_n=None):
    """Forward (and backward if dy is given) with rnnfast.reference in float64.

    x (T,B,I); h0/c0/dh_n/dc_n (B,H) or None (= zeros). Returns a dict with y, h_n, c_n and,
    with dy, dx, dh0, dc0 and grads {param name: gradient}.
    """
    from rnnfast import reference as ref

    x = _f64(x)
    T, B, _ = x.shape
    H = weights["weight_hh_l0"].shape[1]
    zeros = np.zeros((B, H))
    h0 = zeros if h0 is None else _f64(h0)
    if cell == "lstm":
        c0 = zeros if c0 is None else _f64(c0)
    else:
        c0 = None
    w = {k: _f64(v) for k, v in weights.items()}
    y, h_n, c_n, cache = ref.forward(cell, x, h0, c0, w["weight_ih_l0"], w["weight_hh_l0"],
                                     w.get("bias_ih_l0"), w.get("bias_hh_l0"))
    out = dict(y=y, h_n=h_n, c_n=c_n)
    if dy is not None:
        g = ref.backward(cell, cache, _f64(dy), _f64(dh_n),
                         _f64(dc_n) if cell == "lstm" else None)
        out.update(dx=g["dx"], dh0=g["dh0"], dc0=g["dc0"])
        grads = {"weight_ih_l0": g["dw_ih"], "weight_hh_l0": g["dw_hh"]}
        if "bias_ih_l0" in w:
            grads["bias_ih_l0"] = g["db_ih"]
            grads["bias_hh_l0"] = g["db_hh"]
        out["grads"] = grads
    return out


def layer_forward(m, cell, x, h0=None, c0=None):
    """Call the layer; returns (y, h_n, c_n) with c_n None except for lstm."""
    if cell == "lstm":
        if h0 is None and c0 is None:
            y, (h_n, c_n) = m(x)
        else:
            y, (h_n, c_n) = m(x, (h0, c0))
        return y, h_n, c_n
    if h0 is None:
        y, h_n = m(x)
    else:
        y, h_n = m(x, h0)
    return y, h_n, None


def layer_backward(m, cell, dy, dh_n=None, dc_n=None):
    """Call the layer's backward; returns (dx, dh0, dc0) with dc0 None except for lstm."""
    if cell == "lstm":
        if dh_n is None and dc_n is None:
            dx, (dh0, dc0) = m.backward(dy)
        else:
            dx, (dh0, dc0) = m.backward(dy, (dh_n, dc_n))
        return dx, dh0, dc0
    if dh_n is None:
        dx, dh0 = m.backward(dy)
    else:
        dx, dh0 = m.backward(dy, dh_n)
    return dx, dh0, None


def grads_of(m):
    return {n: p.grad for n, p in m.named_parameters()}


def set_threads(n, exact=False):
    """rnnfast.set_num_threads(n, exact): exact=True makes the kernels use exactly n threads even on
    shapes too small to gain from them, so that the threaded split is exercised by small tests."""
    import rnnfast

    rnnfast.set_num_threads(n, exact=exact)


@pytest.fixture(params=[(1, False), (2, False), (2, True)],
                ids=["threads1", "threads2", "threads2exact"])
def num_threads(request):
    """Run the test with rnnfast.set_num_threads(1), (2) and (2, exact=True); restore afterwards."""
    import rnnfast

    old = rnnfast.get_num_threads()
    n, exact = request.param
    try:
        set_threads(n, exact)
        assert rnnfast.get_num_threads() == n
        yield n
    finally:
        rnnfast.set_num_threads(old)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Fill every kernel output with NaN before the kernel runs (rnnfast._core.arrays.poison_outputs),
    so that an element a kernel forgets to write fails the comparison."""
    from rnnfast._core import arrays

    monkeypatch.setattr(arrays, "poison_outputs", True)
    return True


def central_difference(loss, a, index, eps=1e-6):
    """(loss(a[index] + eps) - loss(a[index] - eps)) / (2 eps), with a[index] restored afterwards."""
    old = a[index]
    a[index] = old + eps
    up = loss()
    a[index] = old - eps
    down = loss()
    a[index] = old
    return (up - down) / (2 * eps)


# ------------------------------------------------------------------------------------------ CPU features
ISA_FLAGS = {"generic": set(), "avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512dq", "avx512vl", "avx512bw"}}


def cpu_flags() -> set:
    """The processor's feature flags (/proc/cpuinfo), empty where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def skip_unless_cpu_runs(isa):
    """Skips the calling test where this processor cannot run the `isa` build of the kernels."""
    if not ISA_FLAGS[isa] <= cpu_flags():
        pytest.skip(f"this processor cannot run the {isa} build")
