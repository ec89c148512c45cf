"""bfloat16 modules of the NumPy API (``dtype="bfloat16"``, ml_dtypes' bfloat16): bf16 parameters, inputs, outputs
and gradients; float32 arithmetic inside on those values, one rounding of what is returned; gradients summed in
float32 and rounded into ``.grad`` once per backward.

Three checks of each module, on fresh random values:
* exact: the bf16 module returns, bit for bit, the float32 module's results on the same (bf16-valued) numbers
  rounded once to bf16, on the CPU kernels and on the emulated CUDA kernels;
* against float64 on the same bf16 values (rnnfast.reference for one layer; the float64 layers, themselves
  checked against the reference elsewhere, for stacks): within bf16's rounding;
* against rnnfast.torch's bf16 modules (bit for bit: the same design) and torch.nn's bf16 modules (which round
  their states at every step: a looser tolerance).
"""
import copy
import pickle

import ml_dtypes
import numpy as np
import pytest

import rnnfast
from rnnfast import losses, nn, optim, reference as R
from rnnfast._core import dispatch

BF16 = np.dtype(ml_dtypes.bfloat16)
TOL_EXACT = 2.0 ** -7  # a few roundings to bf16 (2^-9 relative each), normwise
TOL_TORCH = 5e-2

CELLS = [("LSTM", {}), ("GRU", {}), ("GRU", {"linear_before_reset": False}), ("RNN", {}),
         ("RNN", {"nonlinearity": "relu"}), ("LSTM", {"proj_size": 3})]
SHAPES = [dict(num_layers=1, bidirectional=False, lengths=None),
          dict(num_layers=2, bidirectional=True, lengths=[7, 3, 5])]


def bf16_values(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(BF16)


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def pair(name, kw, dtype, I=5, H=6, **shape):
    """(the bf16 layer, a layer of `dtype` holding the same values)."""
    ours = getattr(rnnfast, name)(I, H, dtype="bfloat16", seed=3, **kw, **shape)
    twin = getattr(rnnfast, name)(I, H, dtype=dtype, seed=0, **kw, **shape)
    twin.load_state_dict(ours.state_dict())
    return ours, twin


def run(layer, x, lengths, dy_seed=5):
    """Outputs (y, h_n[, c_n]), their input and state gradients, and every parameter's gradient, in the layer's
    dtype; the output gradients are bf16 values converted to the layer's dtype."""
    out = layer(x, lengths=lengths)
    y, state = out
    states = list(state) if isinstance(state, tuple) else [state]
    rng = np.random.default_rng(dy_seed)
    dy = bf16_values(rng, y.shape).astype(layer.dtype)
    ds = [bf16_values(rng, s.shape).astype(layer.dtype) for s in states]
    dx, dstate = layer.backward(dy, tuple(ds) if len(ds) == 2 else ds[0])
    dstates = list(dstate) if isinstance(dstate, tuple) else [dstate]
    return [y, *states, dx, *dstates] + [p.grad.copy() for p in layer.parameters()]


@pytest.mark.parametrize("backend", ["cpu", "cuda_emu"])
@pytest.mark.parametrize("shape", SHAPES, ids=["one-layer", "stacked-bidirectional-lengths"])
@pytest.mark.parametrize("name,kw", CELLS)
def test_bf16_layer_is_the_float32_layer_rounded_once(name, kw, shape, backend):
    shape = dict(shape)
    lengths = shape.pop("lengths")
    ours, twin = pair(name, kw, np.float32, **shape)
    x = bf16_values(np.random.default_rng(1), (7, 3, 5))
    with dispatch.use_backend(backend):
        got = run(ours, x, lengths)
        want = run(twin, x.astype(np.float32), lengths)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == BF16, (k, g.dtype)
        assert np.array_equal(g.view(np.uint16), w.astype(BF16).view(np.uint16)), (name, kw, k)


@pytest.mark.parametrize("shape", SHAPES, ids=["one-layer", "stacked-bidirectional-lengths"])
@pytest.mark.parametrize("name,kw", CELLS)
def test_bf16_layer_matches_float64_on_the_same_values(name, kw, shape):
    shape = dict(shape)
    lengths = shape.pop("lengths")
    ours, exact = pair(name, kw, np.float64, **shape)
    x = bf16_values(np.random.default_rng(2), (7, 3, 5))
    for k, (g, w) in enumerate(zip(run(ours, x, lengths), run(exact, x.astype(np.float64), lengths))):
        assert rel(g, w) <= TOL_EXACT, (name, kw, k, rel(g, w))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_bf16_layer_matches_the_numpy_reference(cell):
    """One layer against rnnfast.reference in float64 on the very bf16 values: outputs and every gradient."""
    name = {"lstm": "LSTM", "gru": "GRU"}.get(cell, "RNN")
    kw = {"nonlinearity": cell[4:]} if name == "RNN" else {}
    layer = getattr(rnnfast, name)(5, 6, dtype="bfloat16", seed=4, **kw)
    rng = np.random.default_rng(6)
    x, h0 = bf16_values(rng, (8, 2, 5)), bf16_values(rng, (1, 2, 6), 0.5)
    c0 = bf16_values(rng, (1, 2, 6), 0.5) if cell == "lstm" else None
    y, state = layer(x, (h0, c0) if cell == "lstm" else h0)
    dy = bf16_values(rng, y.shape)
    dx, dstate = layer.backward(dy)
    p = {k: v.data.astype(np.float64) for k, v in layer.named_parameters()}
    f64 = (lambda a: None if a is None else a.astype(np.float64))
    ry, rh, rc, cache = R.forward(cell, f64(x), f64(h0[0]), f64(None if c0 is None else c0[0]), p["weight_ih_l0"],
                                  p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    g = R.backward(cell, cache, f64(dy))
    got = [y, dx, (dstate[0] if cell == "lstm" else dstate)[0]] + [q.grad for q in layer.parameters()]
    want = [ry, g["dx"], g["dh0"], g["dw_ih"], g["dw_hh"], g["db_ih"], g["db_hh"]]
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == BF16 and rel(a, b) <= TOL_EXACT, (cell, k, rel(a, b))


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_bf16_cells_are_the_float32_cells_rounded_once(name, batched):
    """One step from given bf16 states, and its backward (a loop of steps feeds each step the previous one's bf16
    state: the same property step by step)."""
    ours = getattr(rnnfast, name)(5, 6, dtype="bfloat16", seed=3)
    twin = getattr(rnnfast, name)(5, 6, seed=0)
    twin.load_state_dict(ours.state_dict())
    rng = np.random.default_rng(7)
    shape = (3, 6) if batched else (6,)
    x = bf16_values(rng, shape[:-1] + (5,))
    h, c, dh, dc = (bf16_values(rng, shape) for _ in range(4))
    lstm = name == "LSTMCell"
    results = []
    for cell, dt in ((ours, BF16), (twin, np.float32)):
        out = cell(x.astype(dt), (h.astype(dt), c.astype(dt)) if lstm else h.astype(dt))
        dx, d = cell.backward((dh.astype(dt), dc.astype(dt)) if lstm else dh.astype(dt))
        results.append([*(out if lstm else [out]), dx, *(d if lstm else [d])] + [p.grad for p in cell.parameters()])
    for k, (g, w) in enumerate(zip(*results)):
        assert g.dtype == BF16 and np.array_equal(g.view(np.uint16), w.astype(BF16).view(np.uint16)), (name, k)


def test_bf16_gradients_accumulate_with_one_rounding_per_backward():
    layer = rnnfast.GRU(4, 5, dtype="bfloat16", seed=1)
    twin = rnnfast.GRU(4, 5, seed=0)
    twin.load_state_dict(layer.state_dict())
    x = bf16_values(np.random.default_rng(8), (6, 2, 4))
    y, _ = layer(x)
    twin(x.astype(np.float32))
    dy = np.ones(y.shape, BF16)
    layer.backward(dy, retain_graph=True)
    layer.backward(dy)  # the same record twice: grad = round(round(g) + g)
    twin.backward(dy.astype(np.float32))
    for p, q in zip(layer.parameters(), twin.parameters()):
        once = q.grad.astype(BF16).astype(np.float32)
        assert np.array_equal(p.grad.view(np.uint16), (once + q.grad).astype(BF16).view(np.uint16))


def test_bf16_matches_rnnfast_torch_bit_for_bit_and_torch_nn_within_bf16():
    from conftest import require_torch
    torch = require_torch()
    import rnnfast.torch as rt
    for name, kw in [("LSTM", {"num_layers": 2, "bidirectional": True}), ("GRU", {}), ("RNN", {})]:
        theirs = getattr(rt, name)(5, 6, **kw).to(torch.bfloat16)
        torch_nn = getattr(torch.nn, name)(5, 6, **kw).to(torch.bfloat16)
        torch_nn.load_state_dict(theirs.state_dict())
        ours = getattr(rnnfast, name)(5, 6, dtype="bfloat16", **kw)
        ours.load_state_dict(theirs.state_dict())  # bf16 tensors in, exactly
        x = bf16_values(np.random.default_rng(9), (7, 3, 5))
        y, _ = ours(x)
        dx, _ = ours.backward(np.ones(y.shape, BF16))
        for module, exact in ((theirs, True), (torch_nn, False)):
            xt = torch.from_numpy(x.astype(np.float32)).bfloat16().requires_grad_()
            yt = module(xt)[0]
            yt.backward(torch.ones_like(yt))
            got = [y, dx] + [p.grad for p in ours.parameters()]
            want = [yt, xt.grad] + [p.grad for p in module.parameters()]
            for k, (a, b) in enumerate(zip(got, want)):
                b = b.detach().float().numpy()
                if exact:
                    assert np.array_equal(a.astype(np.float32), b), (name, k)
                else:
                    assert rel(a, b) <= TOL_TORCH, (name, k, rel(a, b))


# ------------------------------------------------------------------------------------------------ around the layer
def test_bf16_linear_conv_embedding_activations_dropout_are_float32_rounded_once():
    rng = np.random.default_rng(10)
    for make, x in ((lambda dt: nn.Linear(5, 4, dtype=dt, seed=1), bf16_values(rng, (3, 2, 5))),
                    (lambda dt: nn.Conv1d(5, 4, 3, padding=1, dtype=dt, seed=1), bf16_values(rng, (2, 5, 7))),
                    (lambda dt: nn.Tanh(), bf16_values(rng, (4, 3))), (lambda dt: nn.Sigmoid(), bf16_values(rng, (4, 3))),
                    (lambda dt: nn.ReLU(), bf16_values(rng, (4, 3))), (lambda dt: nn.LeakyReLU(0.1), bf16_values(rng, (5,)))):
        ours, twin = make("bfloat16"), make(np.float32)
        twin.load_state_dict(ours.state_dict())
        y, y32 = ours(x), twin(x.astype(np.float32))
        dy = bf16_values(rng, y.shape)
        dx, dx32 = ours.backward(dy), twin.backward(dy.astype(np.float32))
        for a, b in [(y, y32), (dx, dx32)] + [(p.grad, q.grad) for p, q in zip(ours.parameters(), twin.parameters())]:
            assert a.dtype == BF16 and np.array_equal(a.view(np.uint16), b.astype(BF16).view(np.uint16))
    emb, emb32 = nn.Embedding(6, 3, dtype="bfloat16", seed=2), nn.Embedding(6, 3, seed=0)
    emb32.load_state_dict(emb.state_dict())
    idx = np.array([[1, 4, 1], [1, 0, 5]])
    assert np.array_equal(emb(idx), emb32(idx).astype(BF16))
    dy = bf16_values(rng, (2, 3, 3))
    emb.backward(dy)
    emb32.backward(dy.astype(np.float32))  # row 1 sums three rows: one rounding of the float32 sum
    g, g32 = emb._params["weight"].grad, emb32._params["weight"].grad
    assert np.array_equal(g.view(np.uint16), g32.astype(BF16).view(np.uint16))
    drop = nn.Dropout(0.3, seed=4)
    x = bf16_values(rng, (50,))
    y = drop(x)
    kept = y != 0
    assert y.dtype == BF16 and np.array_equal(y[kept], (x[kept].astype(np.float32) / np.float32(0.7)).astype(BF16))


def test_bf16_losses_compute_in_float32_and_return_bf16_gradients():
    rng = np.random.default_rng(11)
    pred, target = bf16_values(rng, (4, 3)), rng.standard_normal((4, 3)).astype(np.float32)
    classes = np.array([0, 2, 1, 2])
    for fn, args in ((losses.mse, (target,)), (losses.bce_with_logits, ((target > 0).astype(np.float32),)),
                     (losses.cross_entropy, (classes,))):
        loss, grad = fn(pred, *args)
        loss32, grad32 = fn(pred.astype(np.float32), *args)
        assert loss == loss32 and grad.dtype == BF16 and np.array_equal(grad, grad32.astype(BF16))


def test_bf16_training_loop_optimizers_clipping_and_checkpoints(tmp_path):
    from rnnfast import train
    rng = np.random.default_rng(12)
    x = rng.standard_normal((64, 12, 1))
    y = x.sum(axis=1)  # the running sum's last value

    class Model(rnnfast.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnnfast.GRU(1, 16, batch_first=True, dtype="bfloat16", seed=0)
            self.head = nn.Linear(16, 1, dtype="bfloat16", seed=1)

        def forward(self, x):
            out, _ = self.rnn(x)
            self._shape = out.shape
            return self.head(out[:, -1])

        def backward(self, d):
            dlast = self.head.backward(d)
            dy = np.zeros(self._shape, BF16)
            dy[:, -1] = dlast
            self.rnn.backward(dy)

    model = Model()
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    data = (x.astype(BF16), y.astype(BF16))
    before = train.evaluate(model, losses.mse, data)
    train.fit(model, losses.mse, data, optimizer=opt, epochs=30, batch_size=16, progress=False, clip_norm=1.0)
    after = train.evaluate(model, losses.mse, data)
    assert after < 0.5 * before, (before, after)
    assert all(p.data.dtype == BF16 and p.grad.dtype == BF16 for p in model.parameters())
    assert opt.state[0]["exp_avg"].dtype == BF16  # optimizer state in the parameters' dtype, as torch's
    train.save_checkpoint(tmp_path / "c.npz", model, opt)
    other = Model()
    other_opt = optim.AdamW(other.parameters(), lr=1e-2)
    train.load_checkpoint(tmp_path / "c.npz", other, other_opt)
    for p, q in zip(model.parameters(), other.parameters()):
        assert q.data.dtype == BF16 and np.array_equal(p.data.view(np.uint16), q.data.view(np.uint16))
    assert np.array_equal(opt.state[1]["exp_avg_sq"], other_opt.state[1]["exp_avg_sq"])


def test_bf16_modules_save_load_pickle_and_state_dicts(tmp_path):
    layer = rnnfast.LSTM(3, 4, num_layers=2, dtype="bfloat16", seed=1)
    head = nn.Linear(4, 2, dtype=ml_dtypes.bfloat16, seed=2)
    for m in (layer, head):
        rnnfast.save(m, tmp_path / "m.npz")
        for back in (rnnfast.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
            assert type(back) is type(m) and back.dtype == BF16
            for p, q in zip(m.parameters(), back.parameters()):
                assert q.data.dtype == BF16 and np.array_equal(p.data.view(np.uint16), q.data.view(np.uint16))
    assert "dtype=bfloat16" in repr(layer)
    # a float32 model's weights into a bf16 one: rounded to nearest even, as torch's .to(torch.bfloat16)
    f32 = rnnfast.LSTM(3, 4, num_layers=2, seed=5)
    layer.load_state_dict(f32.state_dict())
    assert np.array_equal(layer.weight_hh_l1.view(np.uint16), f32.weight_hh_l1.astype(BF16).view(np.uint16))


def test_bf16_bad_input_names_the_argument():
    layer = rnnfast.RNN(3, 4, dtype="bfloat16")
    with pytest.raises(TypeError, match="x: expected dtype bfloat16"):
        layer(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(TypeError, match="h0: expected dtype bfloat16"):
        layer(np.zeros((2, 1, 3), BF16), np.zeros((1, 1, 4)))
    with pytest.raises(TypeError, match="dtype must be float32, float64 or bfloat16"):
        rnnfast.GRU(3, 4, dtype=np.float16)
    with pytest.raises(TypeError, match="bfloat16 modules run on the CPU only"):
        layer.to("cuda")
    with pytest.raises(TypeError, match="bfloat16 inference weights are for float32 layers"):
        layer.set_inference_weights("bfloat16")
    with pytest.raises(TypeError, match="pred: expected a floating-point array"):
        losses.mse(np.zeros(3, np.int32), np.zeros(3))


def test_the_boundary_conversions_round_as_ml_dtypes():
    """rnnfast's own bf16 <-> float32 conversions (the compiled ones) against ml_dtypes' astype on every kind of
    value: ties both ways, subnormals (kept, not flushed), overflow to inf, infinities, NaNs of both signs, and
    a sample of every float32 bit pattern's neighbourhood."""
    from rnnfast._core import bf16
    rng = np.random.default_rng(13)
    special = np.array([0x00000000, 0x80000000, 0x00000001, 0x807fffff, 0x00008000, 0x00018000, 0x3f808000,
                        0x3f818000, 0x3f80ffff, 0x7f7fffff, 0xff7f8000, 0x7f800000, 0xff800000, 0x7f800001,
                        0xffc00000, 0x7fffffff, 0xff812345], np.uint32)
    bits = np.concatenate([special, rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)])
    x = bits.view(np.float32)
    with np.errstate(invalid="ignore"):  # (ml_dtypes warns when it casts a NaN)
        got, want = bf16.as_bfloat16(x), x.astype(BF16)
    assert got.dtype == BF16 and np.array_equal(got.view(np.uint16), want.view(np.uint16))
    back = bf16.as_float32(want[::3])  # strided input too
    assert back.dtype == np.float32 and np.array_equal(back.view(np.uint32), want[::3].astype(np.float32).view(np.uint32))
    acc = rng.standard_normal(1000).astype(BF16)
    g = rng.standard_normal(1000).astype(np.float32) * np.float32(1e-3)
    want = (acc.astype(np.float32) + g).astype(BF16)
    bf16.add_into(acc, g)
    assert np.array_equal(acc.view(np.uint16), want.view(np.uint16))


def test_bf16_layer_from_keras_weights():
    """rnnfast.io.from_keras(..., dtype="bfloat16"): the Keras weights rounded once, the layer computing as above."""
    rng = np.random.default_rng(14)
    weights = [rng.standard_normal(s).astype(np.float32) for s in ((3, 20), (5, 20), (20,))]
    ours = rnnfast.io.from_keras(weights, "lstm", dtype="bfloat16")
    twin = rnnfast.io.from_keras([w.astype(BF16).astype(np.float32) for w in weights], "lstm")
    assert ours.dtype == BF16 and all(p.data.dtype == BF16 for p in ours.parameters())
    x = bf16_values(rng, (4, 6, 3))  # Keras's batch-first layout: (B, T, I)
    assert np.array_equal(ours(x)[0].view(np.uint16), twin(x.astype(np.float32))[0].astype(BF16).view(np.uint16))
    for got, w in zip(rnnfast.io.to_keras(ours), weights):
        assert np.array_equal(got.view(np.uint16), w.astype(BF16).view(np.uint16))
