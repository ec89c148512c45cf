"""The original GRU form (linear_before_reset=False, Keras reset_after=False) against the NumPy reference.

torch has no such layer, so: the kernel against rnnfast.reference (whose backward a finite-difference test
guards), a finite-difference check through the layer itself, and stacks with lengths against running each
sequence alone.
"""
import numpy as np
import pytest

import rnnfast
import rnnfast.reference as ref
from conftest import central_difference, assert_close

pytestmark = pytest.mark.usefixtures("poison_outputs")


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(5, 3, 4, 7), (6, 9, 5, 70), (1, 1, 1, 1), (30, 2, 3, 17)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_original_matches_reference(dtype, tol, shape, threads, bias):
    T, B, I, H = shape
    rng = np.random.default_rng(sum(shape) + threads)
    old = rnnfast.get_num_threads()
    rnnfast.set_num_threads(threads, exact=True)
    try:
        m = rnnfast.GRU(I, H, dtype=dtype, seed=1, linear_before_reset=False, bias=bias)
        x = rng.standard_normal((T, B, I)).astype(dtype)
        h0 = rng.standard_normal((1, B, H)).astype(dtype)
        p = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
        y, hn = m(x, h0)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dhn = rng.standard_normal(hn.shape).astype(dtype)
        dx, dh0 = m.backward(dy, dhn)
    finally:
        rnnfast.set_num_threads(old)
    y_r, h_r, _, cache = ref.forward("gru_original", x.astype(np.float64), h0[0].astype(np.float64), None,
                                     p["weight_ih_l0"], p["weight_hh_l0"], p.get("bias_ih_l0"), p.get("bias_hh_l0"))
    g = ref.backward("gru_original", cache, dy.astype(np.float64), dhn[0].astype(np.float64))
    assert_close(y, y_r, tol, "y")
    assert_close(hn[0], h_r, tol, "h_n")
    assert_close(dx, g["dx"], tol, "dx")
    assert_close(dh0[0], g["dh0"], tol, "dh0")
    P = dict(m.named_parameters())
    assert_close(P["weight_ih_l0"].grad, g["dw_ih"], tol, "weight_ih_l0.grad")
    assert_close(P["weight_hh_l0"].grad, g["dw_hh"], tol, "weight_hh_l0.grad")
    if bias:
        assert_close(P["bias_ih_l0"].grad, g["db_ih"], tol, "bias_ih_l0.grad")
        assert_close(P["bias_hh_l0"].grad, g["db_hh"], tol, "bias_hh_l0.grad")


def test_gru_original_differs_from_torch_form():
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    a = rnnfast.GRU(3, 5, dtype=np.float64, seed=0)
    b = rnnfast.GRU(3, 5, dtype=np.float64, seed=0, linear_before_reset=False)
    assert not np.allclose(a(x)[0], b(x)[0])


def test_gru_original_finite_differences_through_a_bidirectional_stack():
    rng = np.random.default_rng(4)
    m = rnnfast.GRU(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=2, linear_before_reset=False)
    x = rng.standard_normal((5, 3, 3))
    R = rng.standard_normal((5, 3, 8))
    lengths = np.array([3, 5, 1])

    def loss():
        return float((m(x, lengths=lengths)[0] * R).sum())

    loss()
    m.zero_grad()
    dx, _ = m.backward(R)
    eps = 1e-6
    for name, p in m.named_parameters():
        idx = tuple(rng.integers(0, s) for s in p.data.shape)
        fd = central_difference(loss, p.data, idx, eps)
        assert abs(fd - p.grad[idx]) <= 1e-6 * max(1.0, abs(fd)), f"{name}{idx}: {p.grad[idx]} vs {fd}"


@pytest.mark.parametrize("cls,kw", [(rnnfast.GRU, {"linear_before_reset": False}), (rnnfast.GRU, {}),
                                    (rnnfast.LSTM, {}), (rnnfast.RNN, {"nonlinearity": "relu"})])
def test_lengths_equal_running_each_sequence_alone(cls, kw):
    """PackedSequence semantics without torch: each sequence of a padded batch gives what it gives alone."""
    rng = np.random.default_rng(8)
    m = cls(3, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=3, **kw)
    m.eval()
    T, B = 7, 5
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([3, 7, 1, 5, 7])
    y, state = m(x, lengths=lengths)
    h = state[0] if isinstance(state, tuple) else state
    for b, n in enumerate(lengths):
        yb, sb = m(x[:n, b:b + 1])
        hb = sb[0] if isinstance(sb, tuple) else sb
        np.testing.assert_allclose(y[:n, b], yb[:, 0], rtol=1e-12, atol=1e-12)
        assert not y[n:, b].any(), "outputs past a sequence's end must be zero"
        np.testing.assert_allclose(h[:, b], hb[:, 0], rtol=1e-12, atol=1e-12)
