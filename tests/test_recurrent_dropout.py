"""Recurrent dropout (recurrent_dropout=, beyond torch.nn) and Keras's per-gate input dropout in the kernels.

The oracle is rnnfast/reference.py with the same masks: first checked itself (central differences, and masks of
ones give the plain cell), then every kernel (CPU, CUDA under emulation) through the layers, every cell, dense and
ragged batches, stacked and bidirectional, forward and every gradient, float64 at tight tolerance, outputs poisoned.
A stack is composed from the single-layer reference row by row (each sequence on its own, its reverse direction
from its own last step), so lengths and directions are checked without a second implementation of the packing.
"""
import pickle

import numpy as np
import pytest

from conftest import assert_close, central_difference, require_torch, tol_for

import rnnfast
from rnnfast import reference as R
from rnnfast._core import dispatch, functional

pytestmark = pytest.mark.usefixtures("poison_outputs")

KERNEL_CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_original")


def masks_for(rng, B, G, n, p):
    return ((rng.random((B, G * n)) >= p) / (1 - p)).astype(np.float64)


# ------------------------------------------------------------------------------------------------ the oracle
@pytest.mark.parametrize("cell", R.CELLS)
def test_reference_with_dropout_matches_central_differences(cell):
    rng = np.random.default_rng(len(cell))
    T, B, I, H = 4, 2, 3, 4
    G = R.NUM_GATES[cell]
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    c0 = rng.standard_normal((B, H)) if cell == "lstm" else None
    w_ih, w_hh = rng.standard_normal((G * H, I)) * 0.5, rng.standard_normal((G * H, H)) * 0.5
    b_ih, b_hh = rng.standard_normal(G * H) * 0.1, rng.standard_normal(G * H) * 0.1
    mi, mr = masks_for(rng, B, G, I, 0.4), masks_for(rng, B, G, H, 0.4)
    wy = rng.standard_normal((T, B, H))

    def loss():
        y, h_n, _, _ = R.forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, mi, mr)
        return float(np.sum(y * wy) + np.sum(h_n))

    _, _, _, cache = R.forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, mi, mr)
    g = R.backward(cell, cache, wy, np.ones((B, H)))
    for name, a, grad in (("x", x, g["dx"]), ("h0", h0, g["dh0"]), ("w_ih", w_ih, g["dw_ih"]),
                          ("w_hh", w_hh, g["dw_hh"]), ("b_hh", b_hh, g["db_hh"])):
        for index in [tuple(rng.integers(0, n) for n in a.shape) for _ in range(6)]:
            numeric = central_difference(loss, a, index)
            assert abs(numeric - grad[index]) <= 1e-6 * max(1.0, abs(numeric)), (cell, name, index)


@pytest.mark.parametrize("cell", R.CELLS)
def test_reference_masks_of_ones_are_the_plain_cell(cell):
    rng = np.random.default_rng(5)
    T, B, I, H = 3, 2, 3, 4
    G = R.NUM_GATES[cell]
    args = [rng.standard_normal((T, B, I)), rng.standard_normal((B, H)),
            rng.standard_normal((B, H)) if cell == "lstm" else None,
            rng.standard_normal((G * H, I)), rng.standard_normal((G * H, H)), None, None]
    plain = R.forward(cell, *args)
    ones = R.forward(cell, *args, np.ones((B, G * I)), np.ones((B, G * H)))
    for a, b in zip(plain[:2], ones[:2]):
        assert_close(b, a, 1e-14, "masks of ones")


# ------------------------------------------------------------------------------------------------ stacks, row by row
def reference_stack(m, x, h0, c0, lengths, drops, dy, dh_n):
    """y, h_n and every gradient of the layer `m` (time-major x (T, B, I)) from the single-layer reference, one
    sequence at a time; drops[l][d] the layer's Dropouts (rows in the caller's order)."""
    T, B, _ = x.shape
    L, D, H = m.num_layers, 2 if m.bidirectional else 1, m.hidden_size
    params = {n: p.data.astype(np.float64) for n, p in m.named_parameters()}
    grads = {n: np.zeros_like(p) for n, p in params.items()}
    y = np.zeros((T, B, D * H))
    h_n = np.zeros((L * D, B, H))
    dx = np.zeros_like(x)
    dh0 = np.zeros((L * D, B, H))
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        inp, caches = x[:n, b:b + 1], []
        for layer in range(L):
            outs = []
            for d in range(D):
                k, sfx = layer * D + d, dispatch.suffix(layer, d)
                seq = inp if d == 0 else inp[::-1]
                dr = drops[layer][d]
                args = [params[f"{w}{sfx}"] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                yy, hh, _, cache = R.forward(m._cell, seq, h0[k, b:b + 1], None if c0 is None else c0[k, b:b + 1],
                                             *args, None if dr.inputs is None else dr.inputs[b:b + 1],
                                             dr.recurrent[b:b + 1])
                h_n[k, b] = hh[0]
                outs.append(yy if d == 0 else yy[::-1])
                caches.append((k, sfx, d, cache))
            inp = np.concatenate(outs, axis=2)
        y[:n, b] = inp[:, 0]
        # backward, top layer first
        dout = dy[:n, b:b + 1].copy()
        for layer in reversed(range(L)):
            dnext = None
            for k, sfx, d, cache in caches[layer * D:(layer + 1) * D]:
                part = dout[:, :, d * H:(d + 1) * H]
                g = R.backward(m._cell, cache, part if d == 0 else part[::-1], dh_n[k, b:b + 1])
                dh0[k, b] = g["dh0"][0]
                for w, key in (("weight_ih", "dw_ih"), ("weight_hh", "dw_hh"), ("bias_ih", "db_ih"),
                               ("bias_hh", "db_hh")):
                    grads[w + sfx] += g[key]
                gx = g["dx"] if d == 0 else g["dx"][::-1]
                dnext = gx if dnext is None else dnext + gx
            dout = dnext
        dx[:n, b] = dout[:, 0]
    return y, h_n, dx, dh0, grads


def capture_drops(monkeypatch):
    """The masks the layer draws (functional.recurrent_dropouts), recorded."""
    seen = []
    real = functional.recurrent_dropouts

    def spy(*args, **kw):
        drops = real(*args, **kw)
        seen.append(drops)
        return drops

    monkeypatch.setattr(functional, "recurrent_dropouts", spy)
    return seen


LAYER = {"rnn_tanh": lambda **k: rnnfast.RNN(nonlinearity="tanh", **k),
         "rnn_relu": lambda **k: rnnfast.RNN(nonlinearity="relu", **k),
         "lstm": lambda **k: rnnfast.LSTM(**k), "gru": lambda **k: rnnfast.GRU(**k),
         "gru_original": lambda **k: rnnfast.GRU(linear_before_reset=False, **k)}

SHAPES = [  # (layers, bidirectional, lengths)
    (1, False, None), (1, False, [5, 2, 4]), (2, True, None), (2, True, [3, 5, 1])]


@pytest.mark.parametrize("cell", KERNEL_CELLS)
@pytest.mark.parametrize("layers,bidirectional,lengths", SHAPES)
def test_cpu_layer_with_recurrent_dropout_matches_the_reference(cell, layers, bidirectional, lengths, monkeypatch,
                                                                num_threads):
    check_layer("cpu", np.float64, cell, layers, bidirectional, lengths, monkeypatch)


@pytest.mark.parametrize("cell", KERNEL_CELLS)
@pytest.mark.parametrize("layers,bidirectional,lengths", SHAPES)
def test_cuda_emulated_layer_with_recurrent_dropout_matches_the_reference(cell, layers, bidirectional, lengths,
                                                                          monkeypatch):
    check_layer("cuda_emu", np.float32, cell, layers, bidirectional, lengths, monkeypatch)


@pytest.mark.parametrize("backend,dtype", [("cpu", np.float64), ("cuda_emu", np.float32)])
@pytest.mark.parametrize("cell", KERNEL_CELLS)
@pytest.mark.parametrize("T,folded", [(5, False), (13, True)])
def test_batch_one_with_recurrent_dropout_matches_the_reference(backend, dtype, cell, T, folded, monkeypatch):
    # at batch 1 with many steps the masks go into W_hh's columns (functional._fold_recurrent_mask) instead
    calls = []
    real = functional._fold_recurrent_mask
    monkeypatch.setattr(functional, "_fold_recurrent_mask", lambda *a: calls.append(1) or real(*a))
    check_layer(backend, dtype, cell, 2, True, None, monkeypatch, B=1, T=T)
    assert bool(calls) == folded


def check_layer(backend, dtype, cell, layers, bidirectional, lengths, monkeypatch, B=3, T=5):
    I, H = 4, 6
    m = LAYER[cell](input_size=I, hidden_size=H, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                    seed=7, recurrent_dropout=0.35)
    rng = np.random.default_rng(hash((cell, layers, bidirectional)) % 2**32)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    c0 = rng.standard_normal((layers * D, B, H)).astype(dtype) if cell == "lstm" else None
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    dh_n = rng.standard_normal((layers * D, B, H)).astype(dtype)
    if lengths is not None:
        dy[np.arange(T)[:, None] >= np.array(lengths)[None, :]] = 0
    seen = capture_drops(monkeypatch)
    with rnnfast.use_backend(backend):
        if cell == "lstm":
            y, (h_n, _) = m(x, (h0, c0), lengths=lengths)
            dx, (dh0, _) = m.backward(dy, (dh_n, None))
        else:
            y, h_n = m(x, h0, lengths=lengths)
            dx, dh0 = m.backward(dy, dh_n)
    drops = seen[0]
    assert drops is not None and all(dr.recurrent is not None for layer in drops for dr in layer)
    ref = reference_stack(m, x.astype(np.float64), h0.astype(np.float64),
                          None if c0 is None else c0.astype(np.float64), lengths, drops, dy.astype(np.float64),
                          dh_n.astype(np.float64))
    tol = tol_for(dtype) * 10
    for name, got, want in (("y", y, ref[0]), ("h_n", h_n, ref[1]), ("dx", dx, ref[2]), ("dh0", dh0, ref[3])):
        assert_close(got, want, tol, f"{cell} {backend} {name}")
    for name, p in m.named_parameters():
        assert_close(p.grad, ref[4][name], tol, f"{cell} {backend} d{name}")


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_original", "rnn_tanh"])
def test_kernels_with_input_and_recurrent_masks_match_the_reference(cell, num_threads):
    # Keras's input dropout (a mask per gate, before the input GEMM) with the recurrent one, one layer
    rng = np.random.default_rng(3)
    T, B, I, H = 6, 4, 5, 7
    G = R.NUM_GATES[cell]
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    c0 = rng.standard_normal((B, H)) if cell == "lstm" else None
    w = {"weight_ih": rng.standard_normal((G * H, I)) * 0.4, "weight_hh": rng.standard_normal((G * H, H)) * 0.4,
         "bias_ih": rng.standard_normal(G * H) * 0.1, "bias_hh": rng.standard_normal(G * H) * 0.1}
    grads = {k: np.zeros_like(v) for k, v in w.items()}
    mi, mr = masks_for(rng, B, G, I, 0.3), masks_for(rng, B, G, H, 0.3)
    kernels = rnnfast._core.dispatch.kernels_for(x)
    weights = rnnfast._core.dispatch.stack_weights(kernels, cell, w, grads, [[""]], {})
    plan = functional.Plan(T, B, None)
    drops = [[functional.Dropouts(mi, mr)]]
    y, h_n, _, saved = functional.stack_forward(kernels, cell, x, h0[None], None if c0 is None else c0[None],
                                                weights, plan, 1, True, drops=drops)
    dy = rng.standard_normal((T, B, H))
    dx, dh0, _ = functional.stack_backward(saved, weights, dy, None, None)
    yr, hr, _, cache = R.forward(cell, x, h0, c0, w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"], mi, mr)
    g = R.backward(cell, cache, dy)
    for name, got, want in (("y", y, yr), ("h_n", h_n[0], hr), ("dx", dx, g["dx"]), ("dh0", dh0[0], g["dh0"]),
                            ("dw_ih", grads["weight_ih"], g["dw_ih"]), ("dw_hh", grads["weight_hh"], g["dw_hh"]),
                            ("db_ih", grads["bias_ih"], g["db_ih"]), ("db_hh", grads["bias_hh"], g["db_hh"])):
        assert_close(got, want, 1e-12, f"{cell} {name}")


def test_torch_module_with_recurrent_dropout_matches_the_reference(monkeypatch):
    torch = require_torch()
    import rnnfast.torch as rt
    T, B, I, H = 5, 3, 4, 6
    m = rt.GRU(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, recurrent_dropout=0.3)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    seen = capture_drops(monkeypatch)
    torch.manual_seed(2)
    y, h_n = m(x)
    torch.manual_seed(2)
    y2, _ = m(x.detach())
    assert torch.equal(y.detach(), y2)  # torch's generator reproduces the masks
    dy = torch.randn_like(y)
    y.backward(dy)
    # the same layer as a NumPy layer, for the row-by-row reference
    ref_layer = rnnfast.GRU(I, H, num_layers=2, bidirectional=True, dtype=np.float64)
    for name, p in m.named_parameters():
        dict(ref_layer.named_parameters())[name].data[...] = p.detach().numpy()
    zeros = np.zeros((4, B, H))
    ref = reference_stack(ref_layer, x.detach().numpy(), zeros, None, None, seen[0], dy.numpy(), zeros)
    assert_close(y.detach().numpy(), ref[0], 1e-12, "torch GRU y")
    assert_close(h_n.detach().numpy(), ref[1], 1e-12, "torch GRU h_n")
    assert_close(x.grad.numpy(), ref[2], 1e-12, "torch GRU dx")
    for name, p in m.named_parameters():
        assert_close(p.grad.numpy(), ref[4][name], 1e-12, f"torch GRU d{name}")
    m.eval()
    plain = torch.nn.GRU(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    plain.load_state_dict(m.state_dict())
    assert_close(m(x)[0].detach().numpy(), plain(x)[0].detach().numpy(), 1e-12, "eval: no dropout")
    with pytest.raises(ValueError, match="proj_size"):
        rt.LSTM(I, H, proj_size=2, recurrent_dropout=0.1)


# ------------------------------------------------------------------------------------------------ the NumPy layers
def test_recurrent_dropout_acts_in_training_only_and_the_seed_reproduces_it():
    x = np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32)
    a = rnnfast.LSTM(3, 8, seed=4, recurrent_dropout=0.5)
    b = rnnfast.LSTM(3, 8, seed=4, recurrent_dropout=0.5)
    ya, _ = a(x)
    yb, _ = b(x)
    np.testing.assert_array_equal(ya, yb)  # same seed, same weights and masks
    ya2, _ = a(x)
    assert not np.array_equal(ya, ya2)  # a new mask each call
    a.eval()
    plain = rnnfast.LSTM(3, 8, seed=4)
    plain.eval()
    np.testing.assert_array_equal(a(x)[0], plain(x)[0])  # inference: no dropout at all
    with rnnfast.no_grad():  # training mode inside no_grad still drops (as torch's dropout)
        assert not np.array_equal(b(x)[0], plain(x)[0])


@pytest.mark.parametrize("value,error", [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                         ("0.2", TypeError), (True, TypeError)])
def test_bad_recurrent_dropout_names_the_argument(value, error):
    with pytest.raises(error, match="recurrent_dropout"):
        rnnfast.GRU(3, 4, recurrent_dropout=value)
    m = rnnfast.GRU(3, 4)
    with pytest.raises(error, match="recurrent_dropout"):
        m.recurrent_dropout = value
    assert m.recurrent_dropout == 0.0  # unchanged by the refused value


def test_recurrent_dropout_is_refused_where_the_kernels_lack_it():
    with pytest.raises(ValueError, match="proj_size"):
        rnnfast.LSTM(3, 6, proj_size=2, recurrent_dropout=0.2)
    m = rnnfast.LSTM(3, 6, proj_size=2)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        m.recurrent_dropout = 0.1
    assert m.recurrent_dropout == 0.0


def test_recurrent_dropout_survives_pickling_saving_and_repr(tmp_path):
    m = rnnfast.GRU(3, 4, recurrent_dropout=0.25, seed=1)
    assert "recurrent_dropout=0.25" in repr(m)
    assert pickle.loads(pickle.dumps(m)).recurrent_dropout == 0.25
    rnnfast.save(m, tmp_path / "m.npz")
    assert rnnfast.load(tmp_path / "m.npz").recurrent_dropout == 0.25


def test_kernel_calls_check_the_dropout_buffers():
    from _rnnfast import _C
    rng = np.random.default_rng(0)
    B, H, T = 2, 3, 2
    w = rnnfast._core.kernels.packed_weights(rng.standard_normal((4 * H, H)), 4, None)
    common = dict(cell="lstm", batch_sizes=np.full(T, B, np.int64), x_proj=np.zeros((T * B, 4 * H)),
                  h0=np.zeros((B, H)), c0=np.zeros((B, H)), weight_hh=w, y=np.empty((T * B, H)),
                  h_n=np.empty((B, H)), c_n=np.empty((B, H)))
    with pytest.raises(ValueError, match="h_drop: required"):
        _C.ForwardCall(**common, rec_mask=np.ones((B, 4 * H)))
    with pytest.raises(ValueError, match="h_drop: given without rec_mask"):
        _C.ForwardCall(**common, h_drop=np.empty((B + T * B, 4 * H)))
    with pytest.raises(ValueError, match="rec_mask"):
        _C.ForwardCall(**common, rec_mask=np.ones((B, 3 * H)), h_drop=np.empty((B + T * B, 4 * H)))
    with pytest.raises(ValueError, match="h_drop"):
        _C.ForwardCall(**common, rec_mask=np.ones((B, 4 * H)), h_drop=np.empty((T * B, 4 * H)))
