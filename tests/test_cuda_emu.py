"""The CUDA kernels (csrc/cuda) run on the host through compat.cuh's emulation, against the NumPy reference
and the (torch-verified) CPU layers: both the persistent path (W_hh on chip, a grid barrier per step) and
the per-step path, always with several thread blocks so that the grid-wide barrier is exercised.
The same tests run on a real GPU when CuPy sees one (test_gpu_*; skipped otherwise)."""
import numpy as np
import pytest

import rnnfast
import rnnfast.reference as ref
from conftest import assert_close
from rnnfast import backend

CELLS = [("rnn_tanh", rnnfast.RNN, {}), ("rnn_relu", rnnfast.RNN, {"nonlinearity": "relu"}),
         ("lstm", rnnfast.LSTM, {}), ("gru", rnnfast.GRU, {})]
# The two-phase cells, checked through the stacks (against the CPU kernels).
TWO_PHASE = [("gru_original", rnnfast.GRU, {"linear_before_reset": False}), ("lstm_proj", rnnfast.LSTM, {"proj_size": 4})]
# (path, units_per_block): H=9 over the emulation's 4 pretend SMs is 3 blocks of 3 units; 2 gives 5 blocks.
PATHS = [(1, 0), (1, 2), (2, 0), (2, 4)]
TOL = 2e-5


@pytest.fixture
def cuda_options():
    saved = dict(backend.cuda_options)
    yield backend.cuda_options
    backend.cuda_options.update(saved)


def run(m, cell, x, h0, c0, dy, dhn, dcn, lengths=None):
    if cell == "lstm":
        y, (hn, cn) = m(x, (h0, c0), lengths=lengths)
        dx, (dh0, dc0) = m.backward(dy, (dhn, dcn))
        return dict(y=y, hn=hn, cn=cn, dx=dx, dh0=dh0, dc0=dc0)
    y, hn = m(x, h0, lengths=lengths)
    dx, dh0 = m.backward(dy, dhn)
    return dict(y=y, hn=hn, dx=dx, dh0=dh0)


@pytest.mark.parametrize("cell,cls,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("path,units", PATHS)
def test_emulated_kernels_match_reference(cell, cls, kw, path, units, cuda_options):
    cuda_options.update(path=path, units_per_block=units, threads=32)
    rng = np.random.default_rng(path * 10 + units)
    T, B, I, H = 5, 3, 2, 9
    m = cls(I, H, seed=1, **kw)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0 = (rng.standard_normal((1, B, H)).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    dhn, dcn = (rng.standard_normal((1, B, H)).astype(np.float32) for _ in range(2))
    with rnnfast.use_backend("cuda_emu"):
        got = run(m, cell, x, h0, c0, dy, dhn, dcn)
    p = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    lstm = cell == "lstm"
    y_r, h_r, c_r, cache = ref.forward(cell, x.astype(np.float64), h0[0].astype(np.float64),
                                       c0[0].astype(np.float64) if lstm else None, p["weight_ih_l0"],
                                       p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    g = ref.backward(cell, cache, dy.astype(np.float64), dhn[0].astype(np.float64),
                     dcn[0].astype(np.float64) if lstm else None)
    assert_close(got["y"], y_r, TOL, "y")
    assert_close(got["hn"][0], h_r, TOL, "h_n")
    assert_close(got["dx"], g["dx"], TOL, "dx")
    assert_close(got["dh0"][0], g["dh0"], TOL, "dh0")
    if lstm:
        assert_close(got["cn"][0], c_r, TOL, "c_n")
        assert_close(got["dc0"][0], g["dc0"], TOL, "dc0")
    P = dict(m.named_parameters())
    for name, key in [("weight_ih_l0", "dw_ih"), ("weight_hh_l0", "dw_hh"), ("bias_ih_l0", "db_ih"),
                      ("bias_hh_l0", "db_hh")]:
        assert_close(P[name].grad, g[key], TOL, name + ".grad")


def _stack_pair(cell, cls, I, H, seed, kw):
    """(state size, kernel cell name, a float32 two-layer bidirectional stack, its float64 twin with the same
    weights): the stacks the CUDA kernels are checked against the CPU kernels with."""
    m32 = cls(I, H, num_layers=2, bidirectional=True, seed=seed, **kw)
    m64 = cls(I, H, num_layers=2, bidirectional=True, dtype=np.float64, **kw)
    m64.load_state_dict(m32.state_dict())
    return kw.get("proj_size", H), "lstm" if cell == "lstm_proj" else cell, m32, m64


@pytest.mark.parametrize("cell,cls,kw", CELLS + TWO_PHASE, ids=[c[0] for c in CELLS + TWO_PHASE])
@pytest.mark.parametrize("path", [1, 2])
def test_emulated_stacks_with_lengths_match_cpu_layers(cell, cls, kw, path, cuda_options):
    """Two layers, bidirectional, unsorted lengths (incl. 1 and T): the emulated CUDA kernels against the
    CPU kernels in float64 (which the torch tests check) with the same weights."""
    cuda_options.update(path=path, units_per_block=2, threads=32)
    rng = np.random.default_rng(path)
    T, B, I, H = 5, 4, 3, 6
    S, cell, m32, m64 = _stack_pair(cell, cls, I, H, 2, kw)
    lengths = np.array([3, 5, 1, 4])
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, dhn = (rng.standard_normal((4, B, S)).astype(np.float32) for _ in range(2))
    c0, dcn = (rng.standard_normal((4, B, H)).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal((T, B, 2 * S)).astype(np.float32)
    with rnnfast.use_backend("cuda_emu"):
        got = run(m32, cell, x, h0, c0, dy, dhn, dcn, lengths)
    want = run(m64, cell, *(a.astype(np.float64) for a in (x, h0, c0, dy, dhn, dcn)), lengths)
    for k in want:
        assert_close(got[k], want[k], TOL, k)
    g64 = dict(m64.named_parameters())
    for name, p in m32.named_parameters():
        assert_close(p.grad, g64[name].grad, TOL, name + ".grad")


def test_emulated_cells_match_cpu_cells(cuda_options):
    cuda_options.update(path=1, units_per_block=2, threads=32)
    rng = np.random.default_rng(5)
    cell = rnnfast.LSTMCell(3, 5, seed=0)
    xs = rng.standard_normal((4, 2, 3)).astype(np.float32)

    def loop():
        state, hs = None, []
        for t in range(4):
            state = cell(xs[t], state)
            hs.append(state[0].copy())
        dstate, dxs = (np.ones((2, 5), np.float32), None), []
        for t in reversed(range(4)):
            dx, dstate = cell.backward(dstate)
            dxs.append(dx)
        return np.stack(hs), np.stack(dxs), {n: p.grad.copy() for n, p in cell.named_parameters()}

    h_cpu, dx_cpu, g_cpu = loop()
    cell.zero_grad()
    with rnnfast.use_backend("cuda_emu"):
        h_emu, dx_emu, g_emu = loop()
    assert_close(h_emu, h_cpu, TOL, "h")
    assert_close(dx_emu, dx_cpu, TOL, "dx")
    for k in g_cpu:
        assert_close(g_emu[k], g_cpu[k], TOL, k)


def test_automatic_path_takes_persistent_when_w_fits_and_per_step_when_not(cuda_options):
    from _rnnfast import _cuda_emu
    rng = np.random.default_rng(0)
    batch_sizes = np.array([2, 2], dtype=np.int64)  # T=2, B=2

    def path_for(H):
        G = 4
        call = _cuda_emu.ForwardCall(cell="lstm", batch_sizes=batch_sizes, x_proj=np.zeros((4, G * H), np.float32),
                                     h0=np.zeros((2, H), np.float32), c0=np.zeros((2, H), np.float32),
                                     weight_hh=rng.standard_normal((G * H, H)).astype(np.float32),
                                     y=np.empty((4, H), np.float32), h_n=np.empty((2, H), np.float32),
                                     c_n=np.empty((2, H), np.float32))
        return _cuda_emu.forward(call, threads=32)

    assert path_for(8) == 1  # 4 blocks of 2 units: 2*4*8 floats of W per block, far below 48 KB
    assert path_for(256) == 2  # 64 units a block: 4*64*256 floats = 256 KB > 48 KB of pretend shared memory


def test_cuda_backends_refuse_what_they_cannot_run():
    x = np.zeros((3, 2, 4), np.float32)
    with rnnfast.use_backend("cuda_emu"):
        with pytest.raises(TypeError, match="float32"):
            rnnfast.GRU(4, 5, dtype=np.float64)(x.astype(np.float64))
    with pytest.raises(ValueError, match="use_backend"):
        with rnnfast.use_backend("tpu"):
            pass
    with rnnfast.use_backend("cuda"):
        with pytest.raises(TypeError, match="CuPy"):
            rnnfast.GRU(4, 5)(x)
    assert rnnfast.current_backend() == "cpu"


def _gpu():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the GPU tests run where it is")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError as e:
        pytest.skip(f"no usable CUDA device ({e})")
    return cupy


@pytest.mark.parametrize("cell,cls,kw", CELLS + TWO_PHASE, ids=[c[0] for c in CELLS + TWO_PHASE])
@pytest.mark.parametrize("path", [1, 2])
def test_gpu_kernels_match_cpu_layers(cell, cls, kw, path, cuda_options):
    cupy = _gpu()
    cuda_options.update(path=path, units_per_block=0, threads=128)
    rng = np.random.default_rng(1)
    T, B, I, H = 7, 5, 16, 96
    S, cell, m, cpu = _stack_pair(cell, cls, I, H, 3, kw)
    m.to("cuda")
    lengths = np.array([7, 2, 1, 5, 7])
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, dhn = (rng.standard_normal((4, B, S)).astype(np.float32) for _ in range(2))
    c0, dcn = (rng.standard_normal((4, B, H)).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal((T, B, 2 * S)).astype(np.float32)
    got = run(m, cell, *(cupy.asarray(a) for a in (x, h0, c0, dy, dhn, dcn)), lengths)
    want = run(cpu, cell, *(a.astype(np.float64) for a in (x, h0, c0, dy, dhn, dcn)), lengths)
    for k in want:
        assert_close(cupy.asnumpy(got[k]), want[k], 1e-4, k)
    g = dict(cpu.named_parameters())
    for name, p in m.named_parameters():
        assert_close(cupy.asnumpy(p.grad), g[name].grad, 1e-4, name + ".grad")


def _lstm_forward_args(B=3, H=5, T=2):
    f = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    N = B * T
    return dict(cell="lstm", batch_sizes=np.full(T, B, np.int64), x_proj=f(N, 4 * H), h0=f(B, H), c0=f(B, H),
                weight_hh=f(4 * H, H), b_ih=f(4 * H), b_hh=f(4 * H), y=f(N, H), h_n=f(B, H), c_n=f(B, H),
                ws=f(N, 5 * H))


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("change,error,message", [
    (dict(h0=np.zeros((3, 4), np.float32)), ValueError, r"h0: expected shape \(3, 5\), got \(3, 4\)"),
    (dict(x_proj=np.zeros((6, 20), np.float64)), TypeError, "x_proj: expected float32"),
    (dict(y=np.zeros((5, 6), np.float32).T), ValueError, "y: expected a C-contiguous array"),
    (dict(h_n=_readonly(np.zeros((3, 5), np.float32))), ValueError, "h_n: read-only"),
    (dict(c0=None), ValueError, "c0: required"),
    (dict(cell="lstmm"), ValueError, "cell: expected one of .*'gru_original', got 'lstmm'"),
    (dict(ws=np.zeros((6, 6 * 5), np.float32)), ValueError, r"ws: expected shape \(6, 25\)"),
    (dict(weight_hh=np.zeros((19, 5), np.float32)), ValueError, "weight_hh: expected G\\*H rows"),
    (dict(b_ih=[0.0] * 20), TypeError, "b_ih: expected a NumPy array, got list"),
    (dict(batch_sizes=np.array([2, 3], np.int64)), ValueError, "batch_sizes: expected non-increasing"),
    (dict(batch_sizes=np.array([3, 3], np.int32)), TypeError, "batch_sizes: expected a 1-D int64"),
    (dict(weight_hr=np.zeros((2, 5), np.float32)), ValueError, r"weight_hh: expected shape \(20, 2\)"),
])
def test_emulated_forward_call_names_the_bad_argument(change, error, message):
    from _rnnfast import _cuda_emu
    args = _lstm_forward_args()
    args.update(change)
    with pytest.raises(error, match=message):
        _cuda_emu.ForwardCall(**args)


def test_emulated_calls_are_keyword_only_and_check_each_cell():
    from _rnnfast import _cuda_emu
    args = _lstm_forward_args()
    assert _cuda_emu.ForwardCall(**args).cell == "lstm"
    with pytest.raises(TypeError):
        _cuda_emu.ForwardCall(*args.values())
    gru = dict(args, cell="gru", x_proj=np.zeros((6, 15), np.float32), weight_hh=np.zeros((15, 5), np.float32),
               b_ih=None, b_hh=None, ws=None, c_n=None)
    with pytest.raises(ValueError, match="c0: only an lstm"):
        _cuda_emu.ForwardCall(**gru)
    del gru["c0"]
    _cuda_emu.ForwardCall(**gru)
    f = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    back = dict(cell="gru", batch_sizes=np.full(2, 3, np.int64), weight_hh=f(15, 5), h0=f(3, 5), y=f(6, 5),
                ws=f(6, 20), dh=f(3, 5), dxg=f(6, 15))
    with pytest.raises(ValueError, match="dhg: required"):
        _cuda_emu.BackwardCall(**back)
    with pytest.raises(ValueError, match="dxg: read-only"):
        _cuda_emu.BackwardCall(**dict(back, dhg=f(6, 15), dxg=_readonly(f(6, 15))))
    with pytest.raises(ValueError, match="ws: required"):
        _cuda_emu.BackwardCall(**dict(back, dhg=f(6, 15), ws=None))
    _cuda_emu.backward(_cuda_emu.BackwardCall(**dict(back, dhg=f(6, 15))), threads=32)


def test_emulated_launch_raises_when_host_threads_cannot_start(tmp_path):
    """Under an address-space limit the emulation cannot start one host thread per CUDA thread: the call
    must raise (RuntimeError or MemoryError), never abort the process."""
    import subprocess
    import sys
    script = """
import resource, numpy as np
from _rnnfast import _cuda_emu
H, B = 64, 2
f = lambda *s: np.zeros(s, np.float32)
call = _cuda_emu.ForwardCall(cell="rnn_tanh", batch_sizes=np.array([B], np.int64), x_proj=f(B, H), h0=f(B, H),
                             weight_hh=f(H, H), y=f(B, H), h_n=f(B, H))
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    _cuda_emu.forward(call, path=2, units_per_block=1, threads=1024)  # 64 blocks of 1024 host threads
except (RuntimeError, MemoryError) as e:
    print("raised", type(e).__name__, e)
else:
    print("ran")
"""
    # cwd: the installed package, as in this process (from the root, `python -c` imports the checkout's rnnfast/)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "raised" in r.stdout, r.stdout
