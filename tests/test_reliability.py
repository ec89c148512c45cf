"""Issue 11: torch.nn's semantics at the edges, no silent wrong answers, bounded memory.

One test (or a few) per item of the issue, each named for what it checks; every one failed on main before
the fix. Items 11, 13 (save/load) and 14 (the emulated CUDA backend) are tested with their fixes elsewhere.
"""
import copy
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import assert_close, require_torch  # noqa: E402

import rnnfast  # noqa: E402
from rnnfast import reference  # noqa: E402

LAYERS = {"rnn_tanh": lambda **k: rnnfast.RNN(3, 5, **k), "rnn_relu": lambda **k: rnnfast.RNN(3, 5, nonlinearity="relu", **k),
          "lstm": lambda **k: rnnfast.LSTM(3, 5, **k), "gru": lambda **k: rnnfast.GRU(3, 5, **k)}
CELLS = {"rnn_tanh": lambda **k: rnnfast.RNNCell(3, 5, **k),
         "rnn_relu": lambda **k: rnnfast.RNNCell(3, 5, nonlinearity="relu", **k),
         "lstm": lambda **k: rnnfast.LSTMCell(3, 5, **k), "gru": lambda **k: rnnfast.GRUCell(3, 5, **k)}


def _nan_x(T=4, B=2, I=3):
    x = np.random.default_rng(0).standard_normal((T, B, I))
    x[1, 0, 2] = np.nan
    return x


# --------------------------------------------------------------------------- item 1 (tests only: the fix is csrc)
def test_reference_relu_propagates_nan_as_torch():
    torch = require_torch()
    t = torch.nn.RNN(3, 5, nonlinearity="relu").double()
    w = {k: v.detach().numpy() for k, v in t.state_dict().items()}
    x = _nan_x()
    y_ref, h_ref, _, _ = reference.forward("rnn_relu", x, np.zeros((2, 5)), None, w["weight_ih_l0"],
                                           w["weight_hh_l0"], w["bias_ih_l0"], w["bias_hh_l0"])
    y_t, h_t = t(torch.from_numpy(x))
    assert np.isnan(y_ref[1:, 0]).all(), "reference: NaN in x[1, 0] must reach every later output of row 0"
    np.testing.assert_array_equal(np.isnan(y_ref), np.isnan(y_t.detach().numpy()), "NaN pattern vs torch")
    np.testing.assert_allclose(y_ref, y_t.detach().numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)


def test_relu_rnn_layer_propagates_nan_as_reference():
    m = rnnfast.RNN(3, 5, nonlinearity="relu", dtype=np.float64, seed=0)
    x = _nan_x()
    y, h_n = m(x)
    sd = m.state_dict()
    y_ref, h_ref, _, _ = reference.forward("rnn_relu", x, np.zeros((2, 5)), None, sd["weight_ih_l0"],
                                           sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"])
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref), "NaN pattern of y")
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, equal_nan=True)


def test_relu_rnn_cell_propagates_nan_as_torch():
    torch = require_torch()
    c = rnnfast.RNNCell(3, 5, nonlinearity="relu", dtype=np.float64, seed=0)
    t = torch.nn.RNNCell(3, 5, nonlinearity="relu").double()
    t.load_state_dict({k: torch.from_numpy(v) for k, v in c.state_dict().items()})
    x = np.array([[np.nan, 0.0, 1.0], [0.5, 0.2, 0.1]])
    h = c(x)
    h_t = t(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(np.isnan(h), np.isnan(h_t), "NaN pattern of h")
    np.testing.assert_allclose(h, h_t, rtol=1e-10, equal_nan=True)


# --------------------------------------------------------------------------- item 2
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("which", ["a", "b"])
def test_matmul_reads_views_with_byte_strides_correctly(dtype, which):
    rng = np.random.default_rng(1)
    item = np.dtype(dtype).itemsize
    a, b = rng.standard_normal((5, 4)).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)
    src = a if which == "a" else b
    # A view over a byte buffer whose row stride is not a whole number of items (one padding byte per row).
    buf = np.zeros(src.shape[0] * (src.shape[1] * item + 1) + 1, np.uint8)
    view = np.ndarray(src.shape, dtype, buf, offset=1, strides=(src.shape[1] * item + 1, item))
    view[...] = src
    got = rnnfast.matmul(view, b) if which == "a" else rnnfast.matmul(a, view)
    np.testing.assert_allclose(got, a @ b, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1500, 70, 300), (70, 1500, 300), (300, 300, 1300), (97, 600, 13)])
@pytest.mark.parametrize("transposed_a", [False, True])
def test_matmul_is_bit_identical_for_every_thread_count_and_split(dtype, shape, transposed_a):
    # The GEMM splits C by rows or by columns depending on its shape and the team; a sum's order must not
    # depend on either (results reproducible whatever the thread count), and the values must be right.
    M, N, K = shape
    rng = np.random.default_rng(7)
    a = rng.standard_normal((K, M)).astype(dtype).T if transposed_a else rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    before = rnnfast.get_num_threads()
    results = []
    try:
        for n, exact in ((1, False), (2, True), (3, True)):
            rnnfast.set_num_threads(n, exact=exact)
            out = np.full((M, N), np.nan, dtype)  # poisoned: an unwritten element fails
            results.append(rnnfast.matmul(a, b, out=out))
    finally:
        rnnfast.set_num_threads(before)
    np.testing.assert_allclose(results[0], a.astype(np.float64) @ b, rtol=1e-4 if dtype == np.float32 else 1e-11,
                               atol=1e-3 if dtype == np.float32 else 1e-10)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_reads_a_in_place_or_packed_with_the_same_bits(dtype, threads):
    # An A with a unit stride (row-major, or transposed) is read in place by the micro-kernel, any other is
    # packed first: the same values in the three layouts must give the same bits, and the right product.
    M, K, N = 203, 300, 70  # K > 256: two K blocks; M, N not multiples of the tiles
    rng = np.random.default_rng(3)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    transposed = np.ascontiguousarray(a.T).T
    strided = np.zeros((2 * M, 3 * K), dtype)[::2, ::3]
    strided[...] = a
    assert a.strides[1] == transposed.strides[0] == a.itemsize and min(strided.strides) > a.itemsize
    before = rnnfast.get_num_threads()
    try:
        rnnfast.set_num_threads(threads, exact=True)
        got = [rnnfast.matmul(x, b, out=np.full((M, N), np.nan, dtype)) for x in (a, transposed, strided)]
    finally:
        rnnfast.set_num_threads(before)
    np.testing.assert_allclose(got[0], a.astype(np.float64) @ b, rtol=1e-4 if dtype == np.float32 else 1e-11,
                               atol=1e-3 if dtype == np.float32 else 1e-10)
    np.testing.assert_array_equal(got[1], got[0], "transposed A (in place) differs from row-major A")
    np.testing.assert_array_equal(got[2], got[0], "strided A (packed) differs from row-major A")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_refuses_out_with_byte_strides(dtype):
    item = np.dtype(dtype).itemsize
    buf = np.zeros(5 * (3 * item + 1) + 1, np.uint8)
    out = np.ndarray((5, 3), dtype, buf, offset=1, strides=(3 * item + 1, item))
    before = buf.copy()
    with pytest.raises(ValueError, match="out"):
        rnnfast.matmul(np.ones((5, 4), dtype), np.ones((4, 3), dtype), out=out)
    np.testing.assert_array_equal(buf, before, "out's buffer was written before the refusal")


# --------------------------------------------------------------------------- item 3
@pytest.mark.parametrize("cell", list(LAYERS))
def test_second_backward_raises_and_adds_nothing(cell):
    m = LAYERS[cell](dtype=np.float64, seed=0)
    y, _ = m(np.ones((4, 2, 3)))
    m.backward(np.ones_like(y))
    once = {n: p.grad.copy() for n, p in m.named_parameters()}
    with pytest.raises(RuntimeError, match="already differentiated"):
        m.backward(np.ones_like(y))
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p.grad, once[n], f"{n}.grad changed by the refused backward")


@pytest.mark.parametrize("mode", ["eval", "no_grad"])
def test_backward_after_a_forward_that_records_nothing_raises(mode):
    m = rnnfast.GRU(3, 5, dtype=np.float64, seed=0)
    y, _ = m(np.ones((4, 2, 3)))
    if mode == "eval":
        m.eval()
        m(np.ones((4, 2, 3)))
        m.train()
    else:
        with rnnfast.no_grad():
            m(np.ones((4, 2, 3)))
    with pytest.raises(RuntimeError, match="eval" if mode == "eval" else "no_grad"):
        m.backward(np.ones_like(y))


def test_backward_with_bad_dy_keeps_the_record():
    m = rnnfast.LSTM(3, 5, dtype=np.float64, seed=0)
    y, _ = m(np.ones((4, 2, 3)))
    with pytest.raises(ValueError, match="dy"):
        m.backward(np.ones((4, 2, 6)))
    m.backward(np.ones_like(y))  # the record survived the refused call


# --------------------------------------------------------------------------- items 4-5
def test_dropout_set_later_is_validated():
    m = rnnfast.LSTM(3, 5, num_layers=2)
    for bad, err in ((1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), ("0.5", TypeError),
                     (True, TypeError)):
        with pytest.raises(err, match="dropout"):
            m.dropout = bad
    assert m.dropout == 0.0


@pytest.mark.parametrize("cls", [rnnfast.GRU, rnnfast.LSTM, rnnfast.RNN])
def test_dropout_one_drops_every_inter_layer_activation_as_torch(cls):
    torch = require_torch()
    name = cls.__name__
    m = cls(3, 5, num_layers=2, dropout=1.0, dtype=np.float64, seed=0)
    x = np.random.default_rng(2).standard_normal((4, 2, 3))
    out = m(x)
    y = out[0]
    assert np.isfinite(y).all(), "dropout=1 gave non-finite outputs"
    # Layer 2 sees zeros: the same as torch's (which drops everything too) with the same weights.
    t = getattr(torch.nn, name)(3, 5, num_layers=2, dropout=1.0).double()
    t.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    y_t = t(torch.from_numpy(x))[0].detach().numpy()
    assert_close(y, y_t, 1e-10, f"{name} y with dropout=1")
    dx = m.backward(np.ones_like(y))[0]
    np.testing.assert_array_equal(dx, 0, "no gradient reaches x through a layer that drops everything")


def test_dropout_one_set_after_construction_gives_finite_outputs():
    m = rnnfast.RNN(3, 5, num_layers=2, nonlinearity="relu", seed=0)
    m.dropout = 1.0
    y, h = m(np.ones((4, 2, 3), np.float32))
    assert np.isfinite(y).all() and np.isfinite(h).all()


# --------------------------------------------------------------------------- items 6-7
@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_batch_as_torch(cell, batch_first):
    torch = require_torch()
    m = LAYERS[cell](dtype=np.float64, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = np.zeros((0, 4, 3) if batch_first else (4, 0, 3))
    out = m(x)
    t = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        3, 5, num_layers=2, bidirectional=True, batch_first=batch_first).double()
    out_t = t(torch.from_numpy(x))
    assert out[0].shape == tuple(out_t[0].shape)
    states, states_t = (out[1], out_t[1]) if cell == "lstm" else ((out[1],), (out_t[1],))
    assert [s.shape for s in states] == [tuple(s.shape) for s in states_t]
    dx = m.backward(np.zeros_like(out[0]))[0]
    assert dx.shape == x.shape
    assert all(np.all(p.grad == 0) for p in m.parameters())


@pytest.mark.parametrize("cell", list(CELLS))
def test_cells_with_empty_batch_and_zero_hidden_size_as_torch(cell):
    torch = require_torch()
    tcls = {"rnn_tanh": torch.nn.RNNCell, "rnn_relu": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell,
            "gru": torch.nn.GRUCell}[cell]
    for B, H in ((0, 5), (2, 0)):
        kw = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
        c = type(CELLS[cell]())(3, H, dtype=np.float64, **kw)
        x = np.ones((B, 3))
        out = c(x)
        out_t = tcls(3, H, **kw).double()(torch.from_numpy(x))
        outs, outs_t = (out, out_t) if cell == "lstm" else ((out,), (out_t,))
        assert [o.shape for o in outs] == [tuple(o.shape) for o in outs_t], (B, H)
        dx = c.backward(tuple(np.ones_like(o) for o in outs) if cell == "lstm" else np.ones_like(out))[0]
        np.testing.assert_array_equal(dx, np.zeros((B, 3)), "dx of an empty step")


@pytest.mark.parametrize("cell", list(LAYERS))
def test_empty_sequence_raises_as_torch(cell):
    m = LAYERS[cell]()
    for x in (np.zeros((0, 2, 3), np.float32), np.zeros((0, 3), np.float32)):
        with pytest.raises(ValueError, match="x: Expected sequence length to be larger than 0"):
            m(x)


# --------------------------------------------------------------------------- item 8
@pytest.mark.parametrize("make", [lambda: rnnfast.LSTM(3, 5, num_layers=2, bidirectional=True, dropout=0.3, seed=0),
                                  lambda: rnnfast.GRUCell(3, 5, seed=0)], ids=["LSTM", "GRUCell"])
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_after_calls(make, how):
    m = make()
    x = np.random.default_rng(3).standard_normal((4, 2, 3)).astype(np.float32)
    step = (lambda mod: mod(x)[0]) if isinstance(m, rnnfast.LSTM) else (lambda mod: mod(x[0]))
    step(m)  # now the module holds packed weights and a record
    c = pickle.loads(pickle.dumps(m)) if how == "pickle" else copy.deepcopy(m)
    for (n, p), (_, q) in zip(m.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, n)
    m.eval(), c.eval()
    np.testing.assert_array_equal(step(m), step(c), "the copy computes what the original does")
    c.train()
    c.backward(np.ones_like(step(c)))  # the copy records and differentiates on its own


def test_drop_caches_forgets_record():
    m = rnnfast.GRU(3, 5)
    y, _ = m(np.ones((2, 1, 3), np.float32))
    m._drop_caches()
    with pytest.raises(RuntimeError):
        m.backward(np.ones_like(y))
    c = rnnfast.LSTMCell(3, 5)
    c(np.ones((1, 3), np.float32))
    c._drop_caches()
    assert c.num_recorded == 0


# --------------------------------------------------------------------------- item 9
@pytest.mark.parametrize("make", [lambda **k: rnnfast.GRU(3, 5, **k), lambda **k: rnnfast.GRUCell(3, 5, **k)],
                         ids=["layer", "cell"])
def test_seed_and_dtype_rules(make):
    assert make(dtype=None).dtype == np.float32  # torch's default dtype
    for bad in (True, [1, 2], 1.5, "3"):
        with pytest.raises(TypeError, match="seed"):
            make(seed=bad)
    with pytest.raises(ValueError, match="seed"):
        make(seed=-1)
    a, b = make(seed=np.int64(4)), make(seed=4)
    np.testing.assert_array_equal(a.weight_ih_l0 if hasattr(a, "num_layers") else a.weight_ih,
                                  b.weight_ih_l0 if hasattr(b, "num_layers") else b.weight_ih)


def test_np_matrix_input_is_used_as_its_array():
    m = rnnfast.RNN(3, 5, dtype=np.float64, seed=0)  # 2-D: an unbatched sequence
    x = np.random.default_rng(5).standard_normal((4, 3))
    y_mat, h_mat = m(np.asmatrix(x))
    y, h = m(x)
    assert type(y_mat) is np.ndarray
    np.testing.assert_array_equal(y_mat, y)
    m.backward(np.asmatrix(np.ones_like(y)))
    c = rnnfast.GRUCell(3, 5, dtype=np.float64, seed=0)
    np.testing.assert_array_equal(c(np.asmatrix(x)), c(x))
    with pytest.raises(TypeError, match="x"):
        m(np.ma.masked_array(x))


def test_huge_sizes_fail_before_allocating():
    with pytest.raises(ValueError, match="num_layers"):
        rnnfast.LSTM(3, 5, num_layers=10**6)
    with pytest.raises(MemoryError, match="hidden_size"):
        rnnfast.LSTM(3, 2**30)
    with pytest.raises(MemoryError, match="hidden_size"):
        rnnfast.LSTMCell(3, 2**30)
    with pytest.raises(ValueError, match="input_size"):
        rnnfast.GRU(2**40, 4)


# --------------------------------------------------------------------------- item 10
def test_no_grad_records_nothing_in_cells_and_is_a_decorator():
    c = rnnfast.LSTMCell(3, 5)
    x = np.ones((2, 3), np.float32)
    c(x)
    with rnnfast.no_grad():
        assert not rnnfast.is_grad_enabled()
        for _ in range(5):
            c(x)
    assert rnnfast.is_grad_enabled()
    assert c.num_recorded == 1, "no_grad steps were recorded"

    @rnnfast.no_grad()
    def sample(cell):
        return [cell(x) for _ in range(3)]

    sample(c)
    assert c.num_recorded == 1


def test_cell_record_warns_once_past_the_bound(monkeypatch):
    from rnnfast import cells

    c = rnnfast.GRUCell(3, 5)
    x = np.ones((2, 3), np.float32)
    c(x)
    monkeypatch.setattr(cells, "RECORD_WARN_BYTES", 2 * c.recorded_bytes)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(10):
            c(x)
    msgs = [str(m.message) for m in w if issubclass(m.category, ResourceWarning)]
    assert len(msgs) == 1, msgs
    assert "no_grad" in msgs[0] and "GRUCell" in msgs[0]
    c.reset()
    assert c.recorded_bytes == 0


# --------------------------------------------------------------------------- items 12, 16
def test_set_num_threads_validates_and_caps():
    old = rnnfast.get_num_threads()
    try:
        for big in (2**31, np.int64(2**40), 10**9):
            rnnfast.set_num_threads(big)
            assert 1 <= rnnfast.get_num_threads() <= (os.cpu_count() or 1)
            rnnfast.matmul(np.ones((3, 3)), np.ones((3, 3)))  # later kernel calls still work
        with pytest.raises(ValueError, match="n must be at most"):
            rnnfast.set_num_threads(10**6, exact=True)
        for bad in (True, 2.0, "2", None):
            with pytest.raises(TypeError, match="n must be an int"):
                rnnfast.set_num_threads(bad)
        with pytest.raises(TypeError, match="exact"):
            rnnfast.set_num_threads(1, exact="yes")
        assert "last bits" in rnnfast.set_num_threads.__doc__
    finally:
        rnnfast.set_num_threads(old)


# --------------------------------------------------------------------------- item 17
# Importing from the source tree: tests/test_source_checkout.py (it works there since issue 18).


# --------------------------------------------------------------------------- item 18
def test_public_api_is_documented_and_typed():
    import inspect

    for obj in (rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU, rnnfast.RNNCell, rnnfast.LSTMCell, rnnfast.GRUCell):
        doc = obj.__doc__ or ""
        for arg in inspect.signature(obj.__init__).parameters:
            if arg != "self":
                assert arg in doc, f"{obj.__name__}'s docstring does not document {arg}"
        for meth in (obj.__call__, obj.backward):
            assert meth.__doc__ and "Returns" in meth.__doc__ or "Returns" in (meth.__doc__ or "") \
                or "returns" in (meth.__doc__ or "").lower(), f"{obj.__name__}.{meth.__name__} undocumented"
            assert inspect.signature(meth).return_annotation is not inspect.Signature.empty, \
                f"{obj.__name__}.{meth.__name__} has no return type hint"
    assert "h0=None" not in (rnnfast.LSTM.__call__.__doc__ or "")
    for f in (rnnfast.matmul, rnnfast.set_num_threads, rnnfast.use_backend, rnnfast.current_backend,
              rnnfast.get_num_threads, rnnfast.isa, rnnfast.no_grad):
        assert f.__doc__, f"{f.__name__} has no docstring"
    assert os.path.isfile(os.path.join(os.path.dirname(rnnfast.__file__), "py.typed")), "py.typed not installed"


# --------------------------------------------------------------------------- workspace recycling
def _ws_of(layer):
    saved, _, _ = layer._saved  # (the record, the weights, a bf16 layer's float32 gradients)
    return saved.layers[0][0].ws


def test_training_workspace_is_reused_only_after_its_record_is_consumed():
    layer = rnnfast.LSTM(4, 8, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    dy = np.ones((5, 3, 8))
    y, _ = layer(x)
    first = _ws_of(layer)
    layer.backward(dy, retain_graph=True)  # the record stays: its workspace must not be handed out
    kept = first.copy()
    layer2 = rnnfast.LSTM(4, 8, seed=1, dtype=np.float64)
    layer2(x)
    assert _ws_of(layer2) is not first
    np.testing.assert_array_equal(first, kept, "a live record's workspace was overwritten")
    layer.backward(dy)  # consumed: the next forward of this shape may take it
    layer(x)
    assert _ws_of(layer) is first
    # And the gradients of a run on a recycled workspace are those of a fresh layer.
    fresh = rnnfast.LSTM(4, 8, seed=0, dtype=np.float64)
    fresh(x)
    fresh.backward(dy)
    layer.zero_grad()
    layer.backward(dy)
    for (n, p), (_, q) in zip(layer.named_parameters(), fresh.named_parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=n)


# A record kept alive by a reference cycle dies when the garbage collector runs, which can be at any allocation,
# also inside workspace() on the same thread; its finalizer hands the workspace back (recycle()). When a lock guarded
# the free list, that re-entry deadlocked a CI run. Here a gc callback plays the finalizer at every collection
# while workspace() runs with the collector at its most eager; a subprocess, so that a deadlock is a timeout.
GC_REENTRY = r"""
import gc, numpy as np
from rnnfast._core import arrays
fired = []
def finalizer_at_collection(phase, info):
    if phase == "start" and len(fired) < 200:
        fired.append(1)
        arrays.recycle(np.empty((7, 3), np.float32))
gc.callbacks.append(finalizer_at_collection)
gc.set_threshold(1, 1, 1)
taken = sum(arrays.workspace((7, 3), np.dtype(np.float32)).shape == (7, 3) for _ in range(300))
gc.callbacks.remove(finalizer_at_collection)
gc.set_threshold(700, 10, 10)
print(len(fired), taken, len(arrays._ws_free))
"""


def test_workspace_free_list_survives_a_finalizer_running_inside_it():
    run = subprocess.run([sys.executable, "-P", "-c", GC_REENTRY], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    fired, taken, waiting = map(int, run.stdout.split())
    assert fired > 0, "the collector never ran: the test did not exercise the re-entry"
    assert taken == 300
    assert waiting <= 2  # the free list stays bounded (_WS_KEEP)


def test_kernel_buffers_start_on_a_cache_line():
    """The CPU kernels load and store 64-byte vectors; NumPy's large arrays start 16 bytes past a page, where
    every such vector straddles two cache lines (the LSTM backward's walk ran 1.7x slower). Every buffer of
    64 KB or more the package allocates for them starts on a line; shapes and dtypes are np.empty's."""
    from rnnfast._core import arrays
    for shape, dtype in (((0,), np.float32), ((3, 0, 2), np.float64), ((1,), np.float32), ((6400, 256), np.float32),
                         ((7, 5, 3), np.float64)):
        a = arrays.aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        if a.nbytes >= 1 << 16:  # below, the alignment costs more than it saves (a batch-1 call's overhead)
            assert a.ctypes.data % 64 == 0, (shape, a.ctypes.data % 64)
    layer = rnnfast.LSTM(16, 64, seed=0)  # big enough that NumPy's own arrays would be misaligned
    x = np.random.default_rng(0).standard_normal((50, 64, 16)).astype(np.float32)
    y, _ = layer(x)
    for name, arr in (("y", y), ("workspace", _ws_of(layer))):
        assert arr.ctypes.data % 64 == 0, name
    dx = layer.backward(np.ones_like(y))[0]
    assert dx.ctypes.data % 64 == 0
    for key, arr in arrays._scratch_local.pool.items():
        assert arr.nbytes < 1 << 16 or arr.ctypes.data % 64 == 0, key
