"""rnnfast.train: fit learns, resumes from a checkpoint to the same result bit for bit, stops on NaN keeping
the last good checkpoint, refuses damaged checkpoints, early stopping, truncated BPTT equal to a hand loop."""
import numpy as np
import pytest

import rnnfast
from rnnfast import losses, nn, optim, train
from rnnfast.module import Module


class Net(Module):
    """LSTM (two layers, dropout between them) -> Dropout -> Linear on the last step: random state to restore."""

    def __init__(self, seed=0):
        super().__init__()
        self.lstm = rnnfast.LSTM(2, 6, num_layers=2, dropout=0.3, batch_first=True, dtype=np.float64, seed=seed)
        self.drop = nn.Dropout(0.2, seed=seed + 1)
        self.head = nn.Linear(6, 1, dtype=np.float64, seed=seed)

    def forward(self, x):
        y, _ = self.lstm(x)
        self._shape = y.shape
        return self.head(self.drop(nn.last_step(y, batch_first=True)))

    def backward(self, d):
        self.lstm.backward(nn.last_step_backward(self.drop.backward(self.head.backward(d)), self._shape,
                                                 batch_first=True))


def _problem(n=40, T=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, 2))
    return x, x.sum(axis=(1, 2))[:, None] / 4


def test_fit_learns_and_returns_history():
    x, y = _problem()
    m = Net()
    before = train.evaluate(m, losses.mse, (x, y))
    h = train.fit(m, losses.mse, (x, y), (x[:10], y[:10]), optimizer=optim.Adam(m.parameters(), lr=0.02),
                  epochs=15, batch_size=8, progress=False)
    assert h["epoch"] == list(range(1, 16)) and len(h["val_loss"]) == 15 and len(h["lr"]) == 15
    assert train.evaluate(m, losses.mse, (x, y)) < 0.5 * before
    assert all(mod.training for mod in m.modules())  # evaluate restored training mode


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    x, y = _problem()

    def run(epochs, path, init_seed, resume):
        m = Net(seed=init_seed)
        opt = optim.AdamW(m.parameters(), lr=0.01)
        sched = optim.StepLR(opt, 1, gamma=0.9)
        h = train.fit(m, losses.mse, (x, y), (x[:8], y[:8]), optimizer=opt, scheduler=sched, epochs=epochs,
                      batch_size=16, seed=5, clip_norm=1.0, checkpoint=path, resume=resume, progress=False)
        return m, opt, h

    full, opt_full, h_full = run(4, tmp_path / "a.npz", 0, False)
    run(2, tmp_path / "b.npz", 0, False)
    resumed, opt_res, h_res = run(4, tmp_path / "b.npz", 99, True)  # another init: the checkpoint replaces it
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert h_full["loss"] == h_res["loss"] and h_full["val_loss"] == h_res["val_loss"]
    assert opt_full.lr == opt_res.lr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = _problem()
    m = Net()
    calls = []

    def flaky(pred, target):
        calls.append(1)
        value, grad = losses.mse(pred, target)
        return (float("nan"), grad) if len(calls) > 5 else (value, grad)

    path = tmp_path / "ck.npz"
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 2.*keeps epoch 1"):
        train.fit(m, flaky, (x, y), optimizer=optim.SGD(m.parameters(), lr=0.01), epochs=3, batch_size=8,
                  checkpoint=path, progress=False)
    fresh = Net(seed=3)
    extra = train.load_checkpoint(path, fresh, optim.SGD(fresh.parameters(), lr=0.01))
    assert extra["epoch"] == 1


def test_damaged_checkpoint_is_a_clear_error_and_stays(tmp_path):
    x, y = _problem()
    path = tmp_path / "ck.npz"
    path.write_bytes(b"PK\x03\x04 not really")
    m = Net()
    with pytest.raises(ValueError, match="ck.npz.*damaged"):
        train.fit(m, losses.mse, (x, y), optimizer=optim.SGD(m.parameters(), lr=0.01), epochs=1,
                  checkpoint=path, resume=True, progress=False)
    assert path.read_bytes() == b"PK\x03\x04 not really"
    other = nn.Linear(2, 1)
    train.save_checkpoint(path, other, optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="does not fit|generators"):
        train.load_checkpoint(path, m, optim.SGD(m.parameters(), lr=0.01))


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    x, y = _problem()
    m = Net()
    h = train.fit(m, losses.mse, (x, y), (x, y), optimizer=optim.SGD(m.parameters(), lr=0.0), epochs=20,
                  early_stopping=2, progress=False)
    assert len(h["epoch"]) == 3  # epoch 1 sets the best; 2 and 3 do not improve


def test_bad_arguments():
    x, y = _problem()
    m = Net()
    opt = optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="mismatched batch sizes"):
        train.fit(m, losses.mse, (x, y[:-1]), optimizer=opt, progress=False)
    with pytest.raises(ValueError, match="early_stopping needs val"):
        train.fit(m, losses.mse, (x, y), optimizer=opt, early_stopping=2, progress=False)
    with pytest.raises(TypeError, match="optimizer"):
        train.fit(m, losses.mse, (x, y), optimizer=None, progress=False)
    with pytest.raises(ValueError, match="target.*mismatched"):
        train.fit(m, losses.mse, (x, y[:, :0]), optimizer=opt, progress=False)


class Stateful(Module):
    """Many-to-many GRU with a carried state, for truncated BPTT: pred, state = model(x, state)."""

    def __init__(self):
        super().__init__()
        self.gru = rnnfast.GRU(2, 4, batch_first=True, dtype=np.float64, seed=0)
        self.head = nn.Linear(4, 1, dtype=np.float64, seed=0)

    def forward(self, x, state=None):
        y, h = self.gru(x, state)
        return self.head(y), h

    def backward(self, d):
        self.gru.backward(self.head.backward(d))


@pytest.mark.parametrize("k", [3, 8])
def test_truncated_bptt_equals_the_hand_written_loop(k):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 8, 2))
    y = np.cumsum(x[..., :1], axis=1) / 3
    a, b = Stateful(), Stateful()
    oa, ob = optim.SGD(a.parameters(), lr=0.05), optim.SGD(b.parameters(), lr=0.05)
    train.fit(a, losses.mse, (x, y), optimizer=oa, epochs=2, batch_size=3, seed=4, tbptt=k, progress=False)
    for epoch in (1, 2):
        for idx in rnnfast.data.minibatches(6, 3, seed=4, epoch=epoch):
            state = None
            for s in range(0, 8, k):
                pred, state = b(x[idx, s:s + k], state)
                b.backward(losses.mse(pred, y[idx, s:s + k])[1])
                ob.step()
                ob.zero_grad()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(p, q, err_msg=name)
