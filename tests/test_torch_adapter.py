"""rnnfast.torch against torch.nn: the same modules, parameters, results and gradients through autograd, and what
scripts touch beyond forward (state dicts, pickling, conversion, no_grad, bad input)."""
import copy
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_close, require_torch

torch = require_torch()
import rnnfast.torch as rt  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

F64 = torch.float64
TOL = 1e-10
CLASSES = ["RNN", "LSTM", "GRU"]
CELLS = ["RNNCell", "LSTMCell", "GRUCell"]


def pair(kind, *args, **kwargs):
    """(rnnfast.torch module, torch.nn module with the same weights), float64."""
    kwargs.setdefault("dtype", F64)
    ours = getattr(rt, kind)(*args, **kwargs)
    ref = getattr(nn, kind)(*args, **kwargs)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def grads(module):
    return {n: p.grad for n, p in module.named_parameters()}


def compare(got, ref, what):
    for name, g in got.items():
        assert_close(g, ref[name], TOL, f"{what} {name}")


def test_import_rnnfast_does_not_import_torch(tmp_path):
    code = "import sys, rnnfast; rnnfast.LSTM(2, 3); assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("kind", CLASSES + CELLS)
def test_initialisation_draws_as_torch_nn(kind):
    kw = dict(proj_size=2) if kind == "LSTM" else {}
    extra = dict(num_layers=2, bidirectional=True, **kw) if kind in CLASSES else {}
    torch.manual_seed(3)
    ours = getattr(rt, kind)(4, 5, **extra)
    torch.manual_seed(3)
    ref = getattr(nn, kind)(4, 5, **extra)
    assert list(ours.state_dict()) == list(ref.state_dict()), "parameter names and order"
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), name
    assert repr(ours) == repr(ref)


def _random_config(seed):
    rng = np.random.default_rng(seed)
    kind = ["RNN", "RNN", "LSTM", "GRU"][seed % 4]
    kw = dict(num_layers=int(rng.integers(1, 3)), bidirectional=bool(rng.integers(2)),
              batch_first=bool(rng.integers(2)), bias=bool(rng.random() < 0.75))
    if kind == "RNN" and seed % 8 == 1:
        kw["nonlinearity"] = "relu"
    if kind == "LSTM" and rng.random() < 0.5:
        kw["proj_size"] = 2
    T = [1, 2, 5, 7][int(rng.integers(4))]
    B = [1, 3, 4][int(rng.integers(3))]
    packed = bool(rng.integers(2)) and T > 1
    return kind, kw, T, B, packed, bool(rng.integers(2)), rng


@pytest.mark.parametrize("seed", range(24))
def test_random_configuration_matches_torch_nn(seed):
    """Outputs, final states and the gradients of the input, the initial states and every parameter."""
    kind, kw, T, B, packed, with_hx, rng = _random_config(seed)
    I, H = 3, 4
    ours, ref = pair(kind, I, H, **kw)
    D = 2 if kw["bidirectional"] else 1
    S = kw.get("proj_size") or H
    x = torch.tensor(rng.standard_normal((B, T, I) if kw["batch_first"] else (T, B, I)), requires_grad=True)
    LD = kw["num_layers"] * D
    hx = None
    if with_hx:
        h0 = torch.tensor(rng.standard_normal((LD, B, S)), requires_grad=True)
        hx = (h0, torch.tensor(rng.standard_normal((LD, B, H)), requires_grad=True)) if kind == "LSTM" else h0
    lengths = torch.tensor(rng.integers(1, T + 1, size=B))
    lengths[int(rng.integers(B))] = T  # unsorted, at least one full-length sequence
    results = []
    for m in (ours, ref):
        inp = pack_padded_sequence(x, lengths, batch_first=kw["batch_first"], enforce_sorted=False) if packed else x
        y, state = m(inp, hx)
        states = state if kind == "LSTM" else (state,)
        y_data = y.data if packed else y
        torch.manual_seed(seed)
        loss = (y_data * torch.randn_like(y_data)).sum() + sum((s * torch.randn_like(s)).sum() for s in states)
        inputs = [x] + ([] if hx is None else list(hx if kind == "LSTM" else [hx]))
        g = torch.autograd.grad(loss, inputs + list(m.parameters()), allow_unused=True)
        results.append(dict(y=y_data, states=states, g=g))
        if packed:
            assert torch.equal(y.batch_sizes, inp.batch_sizes) and torch.equal(y.sorted_indices, inp.sorted_indices)
    a, b = results
    assert_close(a["y"], b["y"], TOL, "y")
    for i, (s, r) in enumerate(zip(a["states"], b["states"])):
        assert_close(s, r, TOL, f"state {i}")
    for i, (g, r) in enumerate(zip(a["g"], b["g"])):
        assert r is not None and g is not None, f"gradient {i} missing"
        assert_close(g, r, TOL, f"gradient {i} (0 = input, then states, then parameters)")


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_cells_in_a_loop_match_torch_nn(kind, bias):
    ours, ref = pair(kind, 3, 5, bias=bias)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 3, dtype=F64, generator=gen, requires_grad=True)
    h0 = torch.randn(2, 5, dtype=F64, generator=gen, requires_grad=True)
    c0 = torch.randn(2, 5, dtype=F64, generator=gen, requires_grad=True)
    w = torch.randn(6, 2, 5, dtype=F64, generator=gen)
    out = []
    for m in (ours, ref):
        state = (h0, c0) if kind == "LSTMCell" else h0
        loss = 0
        for t in range(6):
            state = m(x[t], state)
            h = state[0] if kind == "LSTMCell" else state
            loss = loss + (h * w[t]).sum()
        if kind == "LSTMCell":
            loss = loss + state[1].sum()
        inputs = [x, h0] + ([c0] if kind == "LSTMCell" else [])
        out.append((h, torch.autograd.grad(loss, inputs + list(m.parameters()))))
    assert_close(out[0][0], out[1][0], TOL, "last h")
    for i, (g, r) in enumerate(zip(out[0][1], out[1][1])):
        assert_close(g, r, TOL, f"gradient {i}")


@pytest.mark.parametrize("kind", CLASSES + CELLS)
def test_unbatched_input_matches_torch_nn(kind):
    ours, ref = pair(kind, 3, 4)
    x = torch.randn(5, 3, dtype=F64) if kind in CLASSES else torch.randn(3, dtype=F64)
    h = torch.randn(1, 4, dtype=F64) if kind in CLASSES else torch.randn(4, dtype=F64)
    hx = (h, torch.randn_like(h)) if kind.startswith("LSTM") else h
    a, b = ours(x, hx), ref(x, hx)
    for got, want in zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)):
        assert_close(got, want, TOL, "unbatched output")


def test_lengths_keyword_equals_packed_sequence():
    ours, ref = pair("GRU", 3, 4, bidirectional=True)
    x = torch.randn(6, 3, 3, dtype=F64)
    lengths = torch.tensor([2, 6, 4])
    y, h = ours(x, lengths=lengths)
    yr, hr = ref(pack_padded_sequence(x, lengths, enforce_sorted=False))
    yr, _ = torch.nn.utils.rnn.pad_packed_sequence(yr, total_length=6)
    assert_close(y, yr, TOL, "y with lengths=")
    assert_close(h, hr, TOL, "h_n with lengths=")


@pytest.mark.parametrize("kind,kw", [("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2)),
                                     ("GRU", dict(bidirectional=True)), ("RNN", dict(nonlinearity="relu")),
                                     ("GRU", dict(linear_before_reset=False)), ("LSTMCell", {}), ("GRUCell", {})])
def test_gradcheck_float64(kind, kw):
    m = getattr(rt, kind)(2, 3, dtype=F64, **kw)
    cell = kind.endswith("Cell")
    x = torch.randn((2, 2) if cell else (3, 2, 2), dtype=F64, requires_grad=True)
    S = kw.get("proj_size") or 3
    LD = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    h = torch.randn((2, 3) if cell else (LD, 2, S), dtype=F64, requires_grad=True)
    c = torch.randn((2, 3) if cell else (LD, 2, 3), dtype=F64, requires_grad=True)
    params = list(m.parameters())
    lstm = kind.startswith("LSTM")

    def f(x, h, c, *ps):
        with torch.nn.utils.stateless._reparametrize_module(m, dict(zip([n for n, _ in m.named_parameters()], ps))):
            out = m(x, (h, c) if lstm else h)
        return tuple(torch.utils._pytree.tree_leaves(out))

    assert torch.autograd.gradcheck(f, (x, h, c, *params) if lstm else (x, h, c.detach(), *params))


def test_no_grad_inference_mode_and_eval_keep_nothing_and_agree():
    ours, ref = pair("LSTM", 3, 4, num_layers=2, dropout=0.3)
    x = torch.randn(5, 2, 3, dtype=F64)
    ours.eval(), ref.eval()
    want = ref(x)[0]
    with torch.no_grad():
        y = ours(x)[0]
    assert y.grad_fn is None and not y.requires_grad
    assert_close(y, want, TOL, "eval under no_grad")
    with torch.inference_mode():
        y = ours(x)[0]
    assert_close(y, want, TOL, "eval under inference_mode")
    y = ours(x)[0]  # eval with grad enabled: differentiable, and dropout is off
    assert y.grad_fn is not None
    assert_close(y, want, TOL, "eval with grad")


def test_double_backward_raises():
    m = rt.GRU(2, 3, dtype=F64)
    x = torch.randn(4, 1, 2, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


def test_several_forwards_before_one_backward_and_retained_graph():
    ours, ref = pair("LSTM", 3, 4)
    x1, x2 = torch.randn(4, 2, 3, dtype=F64), torch.randn(3, 2, 3, dtype=F64)
    for m in (ours, ref):
        y1, s = m(x1)
        y2, _ = m(x2, s)
        loss = y1.sum() + (y2 ** 2).sum()
        loss.backward(retain_graph=True)
        loss.backward()
    compare(grads(ours), grads(ref), "two forwards, backward twice")


def test_state_dict_round_trips_both_ways():
    a = rt.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    b = nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    b.load_state_dict(a.state_dict())
    c = rt.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    c.load_state_dict(b.state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k


class Tagger(nn.Module):
    """A whole model holding adapter modules, as users pickle and torch.save them."""

    def __init__(self):
        super().__init__()
        self.rnn = rt.LSTM(3, 4, batch_first=True)
        self.cell = rt.GRUCell(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(self.cell(y[:, -1]))


def _model():
    return Tagger().double()


def test_pickle_save_load_and_deepcopy_after_a_forward(tmp_path):
    model = _model()
    x = torch.randn(2, 5, 3, dtype=F64)
    want = model(x)
    want.sum().backward()  # the packed-weight cache and autograd state exist now
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model)]
    path = tmp_path / "model.pt"
    torch.save(model, path)
    copies.append(torch.load(path, weights_only=False))
    with torch.serialization.safe_globals([*rt.SAFE_GLOBALS, type(model), nn.Linear]):
        copies.append(torch.load(path, weights_only=True))
    for i, m in enumerate(copies):
        assert_close(m(x), want, 0, f"copy {i}")
        assert m.rnn is not model.rnn
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = _model()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert_close(fresh(x), want, 0, "state_dict through torch.save")


def test_dropout_set_as_an_attribute_applies_reproducibly():
    m = rt.LSTM(3, 4, num_layers=2, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    y0 = m(x)[0]
    m.dropout = 0.5
    torch.manual_seed(0)
    y1 = m(x)[0]
    torch.manual_seed(0)
    y2 = m(x)[0]
    assert not torch.allclose(y0, y1), "dropout set after construction was ignored"
    assert torch.equal(y1, y2), "torch.manual_seed does not reproduce the masks"

    def f(x):
        torch.manual_seed(0)
        return m(x)[0]

    assert torch.autograd.gradcheck(f, (x,)), "backward does not use the forward's masks"
    m.eval()
    assert_close(m(x)[0], y0, TOL, "eval ignores dropout")
    m.dropout = 1.0  # legal, as in torch: the second layer sees only zeros
    m.train()
    assert torch.isfinite(m(x)[0]).all(), "dropout=1 gave non-finite outputs"
    m.dropout = 1.5
    with pytest.raises(ValueError, match="dropout"):
        m(x)


def test_clip_grad_norm_flatten_parameters_and_all_weights():
    ours, ref = pair("GRU", 3, 4, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=F64)
    for m in (ours, ref):
        m.flatten_parameters()
        m(x)[0].pow(2).sum().backward()
        m.norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
    assert_close(ours.norm, ref.norm, TOL, "total grad norm")
    compare(grads(ours), grads(ref), "clipped")
    assert [[p.shape for p in ws] for ws in ours.all_weights] == [[p.shape for p in ws] for ws in ref.all_weights]
    assert ours._all_weights == ref._all_weights


def test_torch_optimizer_training_follows_torch_nn():
    ours, ref = pair("LSTM", 3, 6, num_layers=2, batch_first=True)
    gen = torch.Generator().manual_seed(0)
    x, target = torch.randn(4, 7, 3, dtype=F64, generator=gen), torch.randn(4, 7, 6, dtype=F64, generator=gen)
    losses = []
    for m in (ours, ref):
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        curve = []
        for _ in range(8):
            opt.zero_grad()
            loss = ((m(x)[0] - target) ** 2).mean()
            loss.backward()
            opt.step()
            curve.append(loss.item())
        losses.append(curve)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-9)
    assert losses[0][-1] < losses[0][0]


@pytest.mark.parametrize("kind", CLASSES + CELLS)
def test_from_torch_and_to_torch(kind):
    import rnnfast
    t = getattr(nn, kind)(3, 4, dtype=F64)
    layer = rt.from_torch(t)
    assert type(layer) is getattr(rnnfast, kind) and layer.dtype == np.float64
    back = rt.to_torch(layer)
    assert type(back) is getattr(nn, kind)
    drop_in = rt.to_torch(layer, drop_in=True)
    assert type(drop_in) is getattr(rt, kind)
    x = torch.randn(5, 2, 3, dtype=F64) if kind in CLASSES else torch.randn(2, 3, dtype=F64)
    want = t(x)
    want = want[0] if isinstance(want, tuple) else want
    got = layer(x.numpy())
    got = got[0] if isinstance(got, tuple) else got
    assert_close(got, want, TOL, "NumPy layer from torch")
    for m in (back, drop_in):
        out = m(x)
        assert_close(out[0] if isinstance(out, tuple) else out, want, TOL, f"{type(m).__module__} module back")


def test_original_gru_to_torch_is_the_drop_in_module():
    import rnnfast
    layer = rnnfast.GRU(3, 4, linear_before_reset=False, dtype=np.float64)
    m = rt.to_torch(layer)
    assert isinstance(m, rt.GRU) and not m.linear_before_reset
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    assert_close(m(torch.from_numpy(x))[0], layer(x)[0], TOL, "original GRU through the adapter")


# ----------------------------------------------------------------------------------------------- bad input
def test_float16_raises_saying_which_dtypes_run():
    # bfloat16 modules run (tests/test_torch_bf16.py); float16 has no kernels
    dtype = torch.float16
    m = rt.LSTM(3, 4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(TypeError, match="float32, torch.float64 or torch.bfloat16"):
        m.to(dtype)
    with pytest.raises(TypeError, match="float32, torch.float64 or torch.bfloat16"):
        m.half()
    for k, v in m.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k]), f"{k} changed by a refused conversion"
    with pytest.raises(TypeError, match="float32, torch.float64 or torch.bfloat16"):
        m(torch.randn(2, 1, 3, dtype=dtype))
    with pytest.raises(TypeError, match="float32, torch.float64 or torch.bfloat16"):
        rt.GRUCell(3, 4, dtype=dtype)
    m.double()
    assert m.weight_hh_l0.dtype == F64


def test_input_dtype_and_device_mismatches_raise():
    m = rt.GRU(3, 4)
    with pytest.raises(TypeError, match="input: expected torch.float32"):
        m(torch.randn(2, 1, 3, dtype=F64))
    with pytest.raises(TypeError, match="hx: expected torch.float32"):
        m(torch.randn(2, 1, 3), torch.zeros(1, 1, 4, dtype=F64))
    with pytest.raises(ValueError, match="input: expected a tensor on cpu"):
        m(torch.empty(2, 1, 3, device="meta"))
    with pytest.raises(ValueError, match="hx"):
        m(torch.randn(2, 1, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="input_size"):
        m(torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match="lengths"):
        m(torch.randn(2, 1, 3), lengths=[3])
    with pytest.raises(TypeError, match="hx"):
        rt.LSTM(3, 4)(torch.randn(2, 1, 3), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="hx"):
        rt.LSTMCell(3, 4)(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))


def test_non_contiguous_inputs_give_the_contiguous_results():
    ours, ref = pair("LSTM", 3, 4, batch_first=True)
    base = torch.randn(2, 6, 10, dtype=F64)
    x = base[:, :, ::3].transpose(0, 1).transpose(0, 1)[:, :, :3]  # strided view
    assert not x.is_contiguous()
    h0 = torch.randn(2, 1, 4, dtype=F64).transpose(1, 0)
    hx = (h0, torch.zeros(1, 2, 4, dtype=F64))
    x = x.detach().requires_grad_(True)
    out = []
    for m in (ours, ref):
        y, (h, c) = m(x, hx)
        out.append((y, h, torch.autograd.grad(y.sum() + c.sum(), [x] + list(m.parameters()))))
    assert_close(out[0][0], out[1][0], TOL, "y")
    for i, (g, r) in enumerate(zip(out[0][2], out[1][2])):
        assert_close(g, r, TOL, f"gradient {i}")


@pytest.mark.parametrize("x_grad,h_grad,params_grad", [(True, False, False), (False, True, False),
                                                       (False, False, True), (False, False, False)])
def test_requires_grad_combinations(x_grad, h_grad, params_grad):
    ours, ref = pair("GRU", 3, 4, bidirectional=True)
    for m in (ours, ref):
        m.requires_grad_(params_grad)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=x_grad)
    h0 = torch.randn(2, 2, 4, dtype=F64, requires_grad=h_grad)
    y, h = ours(x, h0)
    yr, hr = ref(x, h0)
    assert_close(y, yr, TOL, "y")
    assert y.requires_grad == (x_grad or h_grad or params_grad)
    if not y.requires_grad:
        return
    wanted = [t for t in [x, h0, *ours.parameters()] if t.requires_grad]
    wanted_ref = [t for t in [x, h0, *ref.parameters()] if t.requires_grad]
    got = torch.autograd.grad((y ** 2).sum() + h.sum(), wanted)
    want = torch.autograd.grad((yr ** 2).sum() + hr.sum(), wanted_ref)
    for i, (g, r) in enumerate(zip(got, want)):
        assert_close(g, r, TOL, f"gradient {i}")


def test_in_place_change_of_input_or_output_before_backward_raises():
    m = rt.LSTM(3, 4, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64)
    w = m.weight_ih_l0
    y, _ = m(x)
    x.add_(1)  # the kernels' saved activations are views of x: backward would be wrong
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    y, _ = m(x)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    assert w.grad is None


def test_packed_sequence_with_lengths_keyword_raises():
    m = rt.RNN(3, 4)
    p = pack_padded_sequence(torch.randn(3, 2, 3), torch.tensor([3, 2]))
    with pytest.raises(ValueError, match="lengths"):
        m(p, lengths=torch.tensor([3, 2]))


def test_cuda_tensors_without_cupy_say_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path is exercised by the GPU tests")
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    from rnnfast.torch import _kernel_context
    with pytest.raises(RuntimeError, match="CuPy"):
        with _kernel_context(torch.device("cuda", 0)):
            pass


def test_non_contiguous_parameter_is_read_through_a_differentiable_copy():
    ours, ref = pair("GRU", 3, 4)
    ours.weight_ih_l0 = nn.Parameter(torch.randn(3, 12, dtype=F64).t())  # (12, 3), strided
    ref.weight_ih_l0 = nn.Parameter(ours.weight_ih_l0.detach().contiguous())
    assert not ours.weight_ih_l0.is_contiguous()
    x = torch.randn(5, 2, 3, dtype=F64)
    for m in (ours, ref):
        m(x)[0].pow(2).sum().backward()
    assert_close(ours(x)[0], ref(x)[0], TOL, "y")
    compare(grads(ours), grads(ref), "strided weight_ih")


@pytest.mark.parametrize("kind,kw", [("LSTM", dict(bidirectional=True)), ("GRU", dict(num_layers=2)),
                                     ("LSTMCell", {})])
def test_device_kernel_path_through_the_emulated_cuda_kernels(kind, kw):
    """The adapter over the CUDA kernels' data flow (weights read unpacked, gradients from the device path), run by
    their CPU emulation on float32 tensors: what a CUDA tensor takes, short of CuPy and a GPU."""
    import rnnfast
    ours, ref = pair(kind, 3, 8, dtype=torch.float32, **kw)
    cell = kind.endswith("Cell")
    x = torch.randn((2, 3) if cell else (4, 2, 3), requires_grad=True)
    out = []
    for m in (ours, ref):
        with rnnfast.use_backend("cuda_emu"):
            y = m(x)
            y = y[0]
            loss = (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum()
            out.append((y, torch.autograd.grad(loss, [x] + list(m.parameters()))))
    assert_close(out[0][0], out[1][0], 1e-5, "y")
    for i, (g, r) in enumerate(zip(out[0][1], out[1][1])):
        assert_close(g, r, 1e-5, f"gradient {i}")
    with rnnfast.use_backend("cuda_emu"), pytest.raises(TypeError, match="CUDA kernels run float32"):
        getattr(rt, kind)(3, 8, dtype=F64, **kw)(x.detach().double())  # proof that the device path ran
