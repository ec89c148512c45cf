"""rnnfast.nn against torch.nn in float64 (forward, input and parameter gradients), the record protocol,
and bad input."""
import numpy as np
import pytest

from conftest import assert_close, require_torch

import rnnfast
from rnnfast import nn

TOL = 1e-12


def _t(torch, a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def _compare_params(m, tm, name):
    for k, p in m.named_parameters():
        assert_close(p.grad, dict(tm.named_parameters())[k].grad, TOL, f"{name}: grad {k}")


@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 4)], ids=["NF", "TBF"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(shape, bias):
    torch = require_torch()
    rng = np.random.default_rng(0)
    m = nn.Linear(4, 3, bias=bias, dtype=np.float64, seed=1)
    tm = torch.nn.Linear(4, 3, bias=bias).double()
    m.load_state_dict(tm.state_dict())
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape[:-1] + (3,))
    tx = _t(torch, x, True)
    ty = tm(tx)
    ty.backward(_t(torch, dy))
    y = m(x)
    assert_close(y, ty, TOL, "Linear y")
    assert_close(m.backward(dy), tx.grad, TOL, "Linear dx")
    _compare_params(m, tm, "Linear")


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_matches_torch(padding_idx):
    torch = require_torch()
    tm = torch.nn.Embedding(6, 3, padding_idx=padding_idx).double()
    m = nn.Embedding(6, 3, padding_idx=padding_idx, dtype=np.float64)
    m.load_state_dict(tm.state_dict())
    idx = np.array([[0, 2, 5], [2, 2, 1]])
    dy = np.random.default_rng(2).standard_normal((2, 3, 3))
    ty = tm(torch.from_numpy(idx))
    ty.backward(_t(torch, dy))
    assert_close(m(idx), ty, TOL, "Embedding y")
    assert m.backward(dy) is None
    _compare_params(m, tm, "Embedding")
    if padding_idx is not None:
        assert np.all(nn.Embedding(6, 3, padding_idx=padding_idx).weight[padding_idx] == 0)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding=2, dilation=2, bias=False)],
                         ids=["plain", "stride_pad", "dilation_nobias"])
def test_conv1d_matches_torch(kw):
    torch = require_torch()
    tm = torch.nn.Conv1d(3, 4, 3, **kw).double()
    m = nn.Conv1d(3, 4, 3, dtype=np.float64, **kw)
    m.load_state_dict(tm.state_dict())
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 11))
    tx = _t(torch, x, True)
    ty = tm(tx)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(_t(torch, dy))
    assert_close(m(x), ty, TOL, "Conv1d y")
    assert_close(m.backward(dy), tx.grad, TOL, "Conv1d dx")
    _compare_params(m, tm, "Conv1d")


@pytest.mark.parametrize("name", ["Tanh", "Sigmoid", "ReLU", "LeakyReLU"])
def test_activations_match_torch(name):
    torch = require_torch()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 5)) * 3
    x[0, 0] = 0.0
    dy = rng.standard_normal(x.shape)
    m, tm = getattr(nn, name)(), getattr(torch.nn, name)()
    tx = _t(torch, x, True)
    ty = tm(tx)
    ty.backward(_t(torch, dy))
    assert_close(m(x), ty, TOL, f"{name} y")
    assert_close(m.backward(dy), tx.grad, TOL, f"{name} dx")


def test_sigmoid_does_not_overflow():
    y = nn.Sigmoid()(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(y, [0.0, 0.5, 1.0])


def test_relu_propagates_nan():
    assert np.isnan(nn.ReLU()(np.array([np.nan]))[0])


def test_dropout_scales_masks_and_reuses_mask_in_backward():
    m = nn.Dropout(0.25, seed=0)
    x = np.ones((200, 50))
    y = m(x)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    np.testing.assert_array_equal(m.backward(np.ones_like(x)), y)
    m.eval()
    assert m(x) is x


def test_dropout_p1_gives_zeros_not_nan():
    y = nn.Dropout(1.0, seed=0)(np.ones((3, 3)))
    assert np.all(y == 0)


def test_sequential_matches_torch_and_names_parameters():
    torch = require_torch()
    m = nn.Sequential(nn.Linear(4, 8, dtype=np.float64), nn.Tanh(), nn.Linear(8, 2, dtype=np.float64))
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    assert [k for k, _ in m.named_parameters()] == list(tm.state_dict())
    m.load_state_dict(tm.state_dict())
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    tx = _t(torch, x, True)
    ty = tm(tx)
    ty.backward(_t(torch, dy))
    assert_close(m(x), ty, TOL, "Sequential y")
    assert_close(m.backward(dy), tx.grad, TOL, "Sequential dx")
    _compare_params(m, tm, "Sequential")
    assert len(m) == 3 and isinstance(m[1], nn.Tanh)


def test_records_are_last_in_first_out_per_step():
    """A Linear applied at every step of a loop is differentiated by backward calls in reverse order."""
    m = nn.Linear(3, 2, dtype=np.float64, seed=0)
    xs = [np.full((1, 3), float(i)) for i in range(3)]
    for x in xs:
        m(x)
    assert m.num_recorded == 3
    for x in reversed(xs):
        np.testing.assert_allclose(m.backward(np.ones((1, 2))), np.ones((1, 2)) @ m.weight)
    want = sum(np.ones((2, 1)) @ x for x in xs)
    np.testing.assert_allclose(m._params["weight"].grad, want)
    with pytest.raises(RuntimeError, match="no recorded forward"):
        m.backward(np.ones((1, 2)))


def test_eval_mode_records_nothing():
    m = nn.Linear(3, 2).eval()
    m(np.zeros((1, 3), np.float32))
    assert m.num_recorded == 0


def test_last_step_and_its_backward_respect_lengths():
    y = np.arange(4 * 3 * 2, dtype=np.float64).reshape(4, 3, 2)
    lengths = np.array([4, 1, 2])
    last = nn.last_step(y, lengths)
    np.testing.assert_array_equal(last, [y[3, 0], y[0, 1], y[1, 2]])
    dy = nn.last_step_backward(np.ones((3, 2)), y.shape, lengths)
    assert dy.sum() == 6 and dy[3, 0, 0] == 1 and dy[0, 1, 0] == 1 and dy[1, 2, 0] == 1
    yb = np.ascontiguousarray(y.transpose(1, 0, 2))
    np.testing.assert_array_equal(nn.last_step(yb, lengths, batch_first=True), last)
    with pytest.raises(ValueError, match="lengths"):
        nn.last_step(y, np.array([5, 1, 1]))


def test_bad_input_names_the_argument():
    lin = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="x"):
        lin(np.zeros((2, 3)))  # float64 into a float32 module
    with pytest.raises(ValueError, match="x"):
        lin(np.zeros((2, 4), np.float32))
    lin(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="dy"):
        lin.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="indices"):
        nn.Embedding(4, 2)(np.array([4]))
    with pytest.raises(TypeError, match="indices"):
        nn.Embedding(4, 2)(np.array([0.5]))
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="kernel"):
        nn.Conv1d(1, 1, 5, dtype=np.float64)(np.zeros((1, 1, 3)))
    with pytest.raises(TypeError, match="modules\\[1\\]"):
        nn.Sequential(nn.Tanh(), "relu")


def test_many_to_one_equals_the_hand_written_composition():
    rng = np.random.default_rng(6)
    x, lengths = rng.standard_normal((4, 7, 3)), np.array([7, 2, 5, 1])
    dpred = rng.standard_normal((4, 2))
    a = nn.ManyToOne(rnnfast.LSTM(3, 5, batch_first=True, dtype=np.float64, seed=1),
                     nn.Linear(5, 2, dtype=np.float64, seed=1))
    lstm = rnnfast.LSTM(3, 5, batch_first=True, dtype=np.float64, seed=1)
    head = nn.Linear(5, 2, dtype=np.float64, seed=1)
    y, _ = lstm(x, lengths=lengths)
    want = head(nn.last_step(y, lengths, batch_first=True))
    dx_want, _ = lstm.backward(nn.last_step_backward(head.backward(dpred), y.shape, lengths, batch_first=True))
    np.testing.assert_array_equal(a(x, lengths), want)
    np.testing.assert_array_equal(a.backward(dpred), dx_want)
    for (k, p), q in zip(a.named_parameters(), list(lstm.parameters()) + list(head.parameters())):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=k)
    with pytest.raises(RuntimeError, match="no recorded forward"):
        a.backward(dpred)
    with pytest.raises(TypeError, match="rnn"):
        nn.ManyToOne(nn.Linear(2, 2), nn.Linear(2, 2))
