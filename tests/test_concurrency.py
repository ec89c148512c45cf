"""Kernel calls release the GIL and keep no global state: layers used from several Python threads at once give
the same results as one after the other."""
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
