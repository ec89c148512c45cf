"""Kernel calls release the GIL and keep no global state: layers used from several Python threads at once give
the same results as one after the other; parameters tied across the directions of a layer (which run at once
when untied) get exact, deterministic gradients."""
import threading

import numpy as np

import rnnfast


def test_layers_in_parallel_threads_match_sequential_runs():
    rng = np.random.default_rng(0)
    layers = [rnnfast.LSTM(8, 40, seed=i, bidirectional=bool(i % 2)) for i in range(4)] + \
             [rnnfast.GRU(8, 24, seed=i, num_layers=2) for i in range(4)]
    xs = [rng.standard_normal((30, 5, 8)).astype(np.float32) for _ in layers]

    def work(m, x):
        y = m(x)[0]
        dx = m.backward(np.ones_like(y))[0]
        return y.copy(), dx, {k: p.grad.copy() for k, p in m.named_parameters()}

    expected = []
    for m, x in zip(layers, xs):
        expected.append(work(m, x))
        m.zero_grad()
    results = [None] * len(layers)

    def run(i):
        for _ in range(3):
            layers[i].zero_grad()
            results[i] = work(layers[i], xs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(layers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (y, dx, g), (ye, dxe, ge) in zip(results, expected):
        np.testing.assert_array_equal(y, ye)
        np.testing.assert_array_equal(dx, dxe)
        for k in g:
            np.testing.assert_array_equal(g[k], ge[k])


def _tie_across_directions(m, names):
    """Makes each name's reverse-direction parameter the forward one (torch.nn allows the same tie)."""
    params = dict(m.named_parameters())
    for name in names:
        setattr(m, name + "_reverse", params[name])


def _tied_run(m, x, dy, start):
    """dx and every .grad after one backward, each gradient starting from `start` (not zero: the order in which
    two directions add into one array then shows in the bits)."""
    for name, p in m.named_parameters():
        p.grad[...] = start[name]
    y = m(x)[0]
    dx = m.backward(dy)[0]
    return [dx] + [p.grad.copy() for _, p in m.named_parameters()]


def test_parameters_tied_across_directions_get_exact_deterministic_gradients():
    # The two directions of a small layer run at once, a thread each, and each adds its bias gradients into its
    # parameters' .grad at the end of its kernel: two directions adding into one array raced, in whichever order
    # they finished (21 distinct gradients in 200 runs of this layer). Tied, they run one after the other: every
    # run gives the same bits, and the tied gradient is the sum of the two untied ones.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3, 6)).astype(np.float32)
    m = rnnfast.LSTM(6, 16, bidirectional=True, proj_size=5, seed=1)
    dy = rng.standard_normal((12, 3, 10)).astype(np.float32)
    names = ["bias_ih_l0", "bias_hh_l0", "weight_hr_l0"]
    for name in names:  # the reverse direction reads the forward's values, as after the tie
        getattr(m, name + "_reverse")[...] = getattr(m, name)
    zero = {n: np.zeros_like(p.grad) for n, p in m.named_parameters()}
    untied = dict(zip(["dx"] + list(zero), _tied_run(m, x, dy, zero)))
    _tie_across_directions(m, names)
    start = {n: rng.standard_normal(p.grad.shape).astype(np.float32) for n, p in m.named_parameters()}
    first = _tied_run(m, x, dy, start)
    for _ in range(199):
        for a, b in zip(_tied_run(m, x, dy, start), first):
            np.testing.assert_array_equal(a, b)
    got = dict(zip(["dx"] + list(start), first))
    for name in names:
        want = start[name] + untied[name] + untied[name + "_reverse"]
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["dx"], untied["dx"], rtol=1e-5, atol=1e-6)


def test_torch_drop_in_with_parameters_tied_across_directions_matches_torch(torch_mod):
    torch = torch_mod
    import rnnfast.torch as rt
    torch.manual_seed(0)
    ref = torch.nn.LSTM(6, 16, bidirectional=True, proj_size=5, dtype=torch.float64)
    ours = rt.LSTM(6, 16, bidirectional=True, proj_size=5, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(12, 3, 6, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        for name in ("bias_ih_l0", "bias_hh_l0", "weight_hr_l0"):
            setattr(m, name + "_reverse", getattr(m, name))
        runs = []
        for _ in range(20):
            m.zero_grad()
            (m(x)[0] ** 2).sum().backward()
            runs.append({n: p.grad.clone() for n, p in m.named_parameters()})
        assert all(torch.equal(r[n], runs[0][n]) for r in runs for n in r)
        grads.append(runs[0])
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-10, atol=1e-12)
