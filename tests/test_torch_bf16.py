"""bfloat16 modules of rnnfast.torch (``.to(torch.bfloat16)``): bf16 parameters, inputs, outputs and gradients as
torch.nn's, float32 arithmetic inside on those values.

Checked against a float64 reference computed on the same bf16 values (torch.nn in float64 with the bf16 weights and
inputs converted exactly): every output and gradient within bf16's rounding of the exact result; and against
torch.nn's own bf16 modules, which round their states at every step, within a looser bf16 tolerance. Every cell,
stacked and bidirectional, packed sequences, the single-step cells.
"""
import numpy as np
import pytest

from conftest import require_torch

torch = require_torch()
import rnnfast.torch as rt  # noqa: E402

# One rounding of the exact result to bf16 is at most 2^-9 relative; normwise, a few of them.
TOL_EXACT = 2.0 ** -7
# torch.nn's bf16 modules round h (and the LSTM's c) to bf16 at each step: their error grows with the steps.
TOL_TORCH = 5e-2

MODULES = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"}),
           ("LSTM", {"num_layers": 2, "bidirectional": True}), ("GRU", {"num_layers": 2, "bidirectional": True})]


def rel(got, ref):
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def trio(name, kw, I=6, H=8):
    """(ours in bf16, torch.nn in float64 with the same bf16 weights, torch.nn in bf16 with them)."""
    ours = getattr(rt, name)(I, H, **kw).to(torch.bfloat16)
    exact = getattr(torch.nn, name)(I, H, **kw).double()
    exact.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    theirs = getattr(torch.nn, name)(I, H, **kw).to(torch.bfloat16)
    theirs.load_state_dict(ours.state_dict())
    return ours, exact, theirs


def outputs_and_grads(module, x, dtype):
    x = x.detach().to(dtype).requires_grad_()
    out = module(x)
    y = out[0]
    h = out[1][0] if isinstance(out[1], tuple) else out[1]
    w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
    (y.double() * w).sum().add(h.double().sum()).backward()
    return [y, h, x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("name,kw", MODULES)
def test_bf16_module_matches_the_exact_result_and_torchs_bf16(name, kw):
    torch.manual_seed(len(name) + len(kw))
    ours, exact, theirs = trio(name, kw)
    x = torch.randn(12, 3, 6).bfloat16()
    got = outputs_and_grads(ours, x, torch.bfloat16)
    want = outputs_and_grads(exact, x, torch.float64)
    torchs = outputs_and_grads(theirs, x, torch.bfloat16)
    for k, (g, w, t) in enumerate(zip(got, want, torchs)):
        assert g.dtype == torch.bfloat16, (k, g.dtype)  # outputs and every gradient in bf16, as torch.nn's
        assert rel(g, w) <= TOL_EXACT, (name, kw, k, rel(g, w))
        assert rel(g, t.double()) <= TOL_TORCH, (name, kw, k, rel(g, t.double()))


def test_bf16_packed_sequences_match_the_exact_result():
    torch.manual_seed(3)
    ours, exact, _ = trio("GRU", {"bidirectional": True})
    x = torch.randn(9, 4, 6).bfloat16()
    lengths = torch.tensor([9, 4, 7, 1])
    pack = torch.nn.utils.rnn.pack_padded_sequence
    got, h = ours(pack(x, lengths, enforce_sorted=False))
    want, h64 = exact(pack(x.double(), lengths, enforce_sorted=False))
    assert got.data.dtype == torch.bfloat16
    assert rel(got.data, want.data) <= TOL_EXACT and rel(h, h64) <= TOL_EXACT


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_bf16_cells_match_the_exact_result(name):
    torch.manual_seed(4)
    ours = getattr(rt, name)(6, 8, dtype=torch.bfloat16)
    exact = getattr(torch.nn, name)(6, 8).double()
    exact.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(3, 6).bfloat16()
    got, want = ours(x), exact(x.double())
    got, want = (got[0], want[0]) if isinstance(got, tuple) else (got, want)
    assert got.dtype == torch.bfloat16 and rel(got, want) <= TOL_EXACT


def test_bf16_refuses_mixed_dtypes_and_other_half_types():
    m = rt.LSTM(4, 5).to(torch.bfloat16)
    with pytest.raises(TypeError, match="expected torch.bfloat16"):
        m(torch.randn(3, 2, 4))
    with pytest.raises(TypeError, match="float16"):
        rt.GRU(4, 5).to(torch.float16)
    with pytest.raises(TypeError, match="float16"):
        rt.GRU(4, 5, dtype=torch.float16)


def test_bf16_state_dicts_move_both_ways():
    theirs = torch.nn.LSTM(4, 5).to(torch.bfloat16)
    ours = rt.LSTM(4, 5).to(torch.bfloat16)
    ours.load_state_dict(theirs.state_dict())
    back = torch.nn.LSTM(4, 5).to(torch.bfloat16)
    back.load_state_dict(ours.state_dict())
    for a, b in zip(back.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    x = torch.randn(3, 2, 4).bfloat16()
    assert np.isfinite(ours(x)[0].detach().float().numpy()).all()


# ------------------------------------------------------------------------------------------------ CPU autocast
AUTOCAST_BF16 = [("LSTM", {}), ("LSTM", {"num_layers": 2, "bidirectional": True}), ("RNN", {}),
                 ("RNN", {"nonlinearity": "relu", "num_layers": 2}), ("RNNCell", {})]


def run_and_grads(module, x, autocast):
    """Outputs (y and the first state, or the cell's state) and the gradients of x and of every parameter."""
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module(x)
    outs = [out] if isinstance(out, torch.Tensor) else [out[0], out[1][0] if isinstance(out[1], tuple) else out[1]]
    w = torch.linspace(-1, 1, outs[0].numel(), dtype=torch.float64).reshape(outs[0].shape)
    sum(((o.double() * w) if o.shape == w.shape else o.double()).sum() for o in outs).backward()
    return outs, [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("name,kw", AUTOCAST_BF16)
def test_cpu_autocast_runs_the_bf16_path_of_a_float32_module(name, kw):
    """Under CPU autocast a float32 LSTM/RNN/RNNCell computes what its bf16 copy computes on the bf16-rounded
    input, bit for bit, returns bf16 as torch.nn's class does, and its float32 parameters get the bf16 copy's
    gradients in float32 (what torch's autocast casts give)."""
    torch.manual_seed(7)
    ours = getattr(rt, name)(6, 8, **kw)
    copy = getattr(rt, name)(6, 8, **kw).to(torch.bfloat16)
    copy.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6) if name.endswith("Cell") else torch.randn(9, 3, 6)
    outs, grads = run_and_grads(ours, x, autocast=True)
    want_outs, want_grads = run_and_grads(copy, x.bfloat16(), autocast=False)
    for o, w in zip(outs, want_outs):
        assert o.dtype == torch.bfloat16 and torch.equal(o, w)
    assert grads[0].dtype == torch.float32  # x's gradient in x's dtype
    for g, w in zip(grads, want_grads):
        assert g.dtype == torch.float32 and torch.equal(g, w.float())


@pytest.mark.parametrize("name,kw", [("RNN", {}), ("RNNCell", {}), ("RNN", {"bidirectional": True})])
def test_cpu_autocast_matches_torchs_autocast(name, kw):
    """torch.nn's RNN and RNNCell run under CPU autocast on any processor (its LSTM needs oneDNN's bf16
    primitive, which processors without AVX512_BF16 lack: the test above checks ours against its exact bf16
    path instead)."""
    torch.manual_seed(8)
    ours = getattr(rt, name)(6, 8, **kw)
    theirs = getattr(torch.nn, name)(6, 8, **kw)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6) if name.endswith("Cell") else torch.randn(9, 3, 6)
    (outs, grads), (t_outs, t_grads) = run_and_grads(ours, x, True), run_and_grads(theirs, x, True)
    for o, t in zip(outs + grads, t_outs + t_grads):
        assert o.dtype == t.dtype
        assert rel(o, t) <= TOL_TORCH, (name, rel(o, t))


@pytest.mark.parametrize("name", ["GRU", "GRUCell", "LSTMCell"])
def test_cpu_autocast_leaves_float32_where_torch_does(name):
    torch.manual_seed(9)
    ours = getattr(rt, name)(6, 8)
    x = torch.randn(3, 6) if name.endswith("Cell") else torch.randn(9, 3, 6)
    outs, grads = run_and_grads(ours, x, True)
    grads = [g.clone() for g in grads]
    ours.zero_grad()
    plain, plain_grads = run_and_grads(ours, x, False)
    theirs = getattr(torch.nn, name)(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = theirs(x)
    t = t if isinstance(t, torch.Tensor) else t[0]
    assert outs[0].dtype == t.dtype == torch.float32
    for a, b in zip(outs + grads, plain + plain_grads):  # the float32 call, unchanged
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_cpu_autocast_takes_bf16_inputs_only_inside_autocast_and_leaves_float64_alone():
    m = rt.LSTM(4, 5)
    x = torch.randn(3, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x.bfloat16())[0]
        assert y.dtype == torch.bfloat16 and torch.equal(y, m(x)[0])  # bf16 or float32 input: same rounding
        assert rt.LSTM(4, 5).double()(x.double())[0].dtype == torch.float64
    with pytest.raises(TypeError, match="expected torch.float32"):
        m(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.float16):  # autocast to another dtype: float32, as before
        assert m(x)[0].dtype == torch.float32


@pytest.mark.parametrize("name,kw", [("LSTM", {"bidirectional": True}), ("GRU", {}), ("RNN", {})])
def test_bf16_modules_on_the_emulated_cuda_kernels(name, kw):
    """What a bf16 module (and a float32 one under autocast) runs on CUDA: the CUDA kernels, float32, on the bf16
    values; here their host emulation. Within bf16's rounding of the float64 result on the same values."""
    import rnnfast
    torch.manual_seed(10)
    ours, exact, _ = trio(name, kw)
    x = torch.randn(8, 3, 6).bfloat16()
    want = outputs_and_grads(exact, x, torch.float64)
    with rnnfast.use_backend("cuda_emu"):
        got = outputs_and_grads(ours, x, torch.bfloat16)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == torch.bfloat16 and rel(g, w) <= TOL_EXACT, (name, k, rel(g, w))
