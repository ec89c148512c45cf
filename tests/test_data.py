"""rnnfast.data: windows, padding, seeded mini-batches, time-ordered splits, the standardiser."""
import numpy as np
import pytest

from rnnfast import data


def test_sliding_windows_values_and_shapes():
    s = np.arange(10.0)
    x, y = data.sliding_windows(s, window=3, horizon=2, step=2)
    assert x.shape == (3, 3, 1) and y.shape == (3, 2, 1)
    np.testing.assert_array_equal(x[1, :, 0], [2, 3, 4])
    np.testing.assert_array_equal(y[1, :, 0], [5, 6])
    x2, y2 = data.sliding_windows(np.stack([s, -s], 1), window=4)
    assert x2.shape == (6, 4, 2) and np.array_equal(y2[-1, 0], [9, -9])
    with pytest.raises(ValueError, match="series"):
        data.sliding_windows(np.arange(3.0), window=3)
    with pytest.raises(TypeError, match="window"):
        data.sliding_windows(s, window=2.5)


def test_pad_sequences_time_major_and_batch_first():
    seqs = [np.ones((3, 2)), 2 * np.ones((1, 2)), 3 * np.ones((2, 2))]
    x, lengths = data.pad_sequences(seqs)
    assert x.shape == (3, 3, 2) and lengths.tolist() == [3, 1, 2]
    assert np.all(x[1:, 1] == 0) and np.all(x[:2, 2] == 3)
    xb, _ = data.pad_sequences(seqs, batch_first=True, padding_value=-1)
    assert xb.shape == (3, 3, 2) and np.all(xb[1, 1:] == -1)
    with pytest.raises(ValueError, match="sequences\\[1\\]"):
        data.pad_sequences([np.ones((2, 2)), np.ones((2, 3))])
    with pytest.raises(ValueError, match="sequences\\[0\\]"):
        data.pad_sequences([np.ones((0, 2))])


def test_minibatches_cover_every_example_once_and_are_reproducible():
    a = data.minibatches(10, 3, seed=1, epoch=2)
    b = data.minibatches(10, 3, seed=1, epoch=2)
    c = data.minibatches(10, 3, seed=1, epoch=3)
    assert [len(i) for i in a] == [3, 3, 3, 1]
    assert sorted(np.concatenate(a).tolist()) == list(range(10))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))
    assert [len(i) for i in data.minibatches(10, 3, drop_last=True)] == [3, 3, 3]
    assert np.array_equal(np.concatenate(data.minibatches(5, 2, shuffle=False)), np.arange(5))


def test_time_split_keeps_order():
    x, y = np.arange(10), np.arange(10) * 10
    (xtr, ytr), (xva, yva) = data.time_split(x, y, val_fraction=0.3)
    assert xtr.tolist() == list(range(7)) and yva.tolist() == [70, 80, 90]
    tr, va, te = data.time_split(x, val_fraction=0.2, test_fraction=0.2)
    assert tr.tolist() == list(range(6)) and va.tolist() == [6, 7] and te.tolist() == [8, 9]
    with pytest.raises(ValueError, match="arrays\\[1\\]"):
        data.time_split(x, x[:5])
    with pytest.raises(ValueError, match="val_fraction"):
        data.time_split(x, val_fraction=1.0)


def test_standardizer_round_trip():
    x = np.random.default_rng(0).normal(5, 3, (100, 2))
    s = data.Standardizer().fit(x)
    z = s.transform(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-12)
    np.testing.assert_allclose(s.inverse(z), x)
