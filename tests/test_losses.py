"""rnnfast.losses against torch.nn.functional in float64: values and gradients, masks, stability, bad input."""
import numpy as np
import pytest

from conftest import assert_close, require_torch

from rnnfast import losses

TOL = 1e-12


def _torch_grad(torch, fn, pred, *args, **kw):
    tp = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    loss = fn(tp, *args, **kw)
    loss.backward()
    return float(loss.detach()), tp.grad


def test_mse_matches_torch():
    torch = require_torch()
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    want, wgrad = _torch_grad(torch, torch.nn.functional.mse_loss, p, torch.from_numpy(t))
    loss, grad = losses.mse(p, t)
    assert abs(loss - want) <= TOL * abs(want)
    assert_close(grad, wgrad, TOL, "mse grad")


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(weighted):
    torch = require_torch()
    rng = np.random.default_rng(1)
    logits, target = rng.standard_normal((7, 5)) * 4, rng.integers(0, 5, 7)
    target[2] = -100
    w = rng.uniform(0.5, 2, 5) if weighted else None
    want, wgrad = _torch_grad(torch, torch.nn.functional.cross_entropy, logits, torch.from_numpy(target),
                              weight=None if w is None else torch.from_numpy(w))
    loss, grad = losses.cross_entropy(logits, target, w)
    assert abs(loss - want) <= TOL * abs(want), (loss, want)
    assert_close(grad, wgrad, TOL, "cross_entropy grad")


def test_cross_entropy_sequence_lengths_equal_the_flattened_valid_entries():
    torch = require_torch()
    rng = np.random.default_rng(2)
    T, B, C = 5, 3, 4
    logits, target = rng.standard_normal((T, B, C)), rng.integers(0, C, (T, B))
    lengths = np.array([5, 2, 3])
    valid = np.arange(T)[:, None] < lengths
    flat_t = np.where(valid, target, -100).reshape(-1)
    want, wgrad = _torch_grad(torch, torch.nn.functional.cross_entropy, logits.reshape(-1, C),
                              torch.from_numpy(flat_t))
    loss, grad = losses.cross_entropy(logits, target, lengths=lengths)
    assert abs(loss - want) <= TOL * abs(want)
    assert_close(grad.reshape(-1, C), wgrad, TOL, "cross_entropy grad with lengths")
    loss_m, grad_m = losses.cross_entropy(logits, target, mask=valid)
    assert loss_m == loss and np.array_equal(grad_m, grad)
    lb, gb = losses.cross_entropy(logits.transpose(1, 0, 2), target.T, lengths=lengths, batch_first=True)
    assert abs(lb - loss) <= TOL * abs(loss)
    np.testing.assert_allclose(gb.transpose(1, 0, 2), grad, rtol=0, atol=1e-15)


def test_cross_entropy_is_stable_for_huge_logits():
    loss, grad = losses.cross_entropy(np.array([[1e4, 0.0, -1e4]]), np.array([1]))
    assert np.isfinite(loss) and abs(loss - 1e4) < 1e-6 and np.all(np.isfinite(grad))


def test_bce_with_logits_matches_torch():
    torch = require_torch()
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((6, 2)) * 30, rng.uniform(0, 1, (6, 2))
    want, wgrad = _torch_grad(torch, torch.nn.functional.binary_cross_entropy_with_logits, x, torch.from_numpy(t))
    loss, grad = losses.bce_with_logits(x, t)
    assert abs(loss - want) <= TOL * abs(want)
    assert_close(grad, wgrad, TOL, "bce grad")


def test_bad_input():
    with pytest.raises(ValueError, match="target.*mismatched batch"):
        losses.mse(np.zeros((4, 1)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="target.*out of bounds"):
        losses.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="target"):
        losses.cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="target"):
        losses.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="weight"):
        losses.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), np.ones(2))
    with pytest.raises(ValueError, match="lengths"):
        losses.cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 3), int), lengths=np.array([1, 2]))
    with pytest.raises(ValueError, match="logits.*mismatched"):
        losses.bce_with_logits(np.zeros(3), np.zeros(4))
