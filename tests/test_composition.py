"""Module composition: sub-modules and parameters assigned as attributes are registered, so that names,
state dicts, modes, gradients and device moves cover a whole model; load_state_dict's dtype checks."""
import copy
import pickle
import sys
import types

import numpy as np
import pytest

from conftest import central_difference, require_torch

import rnnfast
from rnnfast import nn
from rnnfast.module import Module, Parameter


class Classifier(Module):
    """GRU over (B, T, I) -> Linear on each sequence's last valid step."""

    def __init__(self, input_size=3, hidden_size=5, classes=4, seed=0):
        super().__init__()
        self.gru = rnnfast.GRU(input_size, hidden_size, batch_first=True, dtype=np.float64, seed=seed)
        self.head = nn.Linear(hidden_size, classes, dtype=np.float64, seed=seed)

    def forward(self, x, lengths=None):
        y, _ = self.gru(x, lengths=lengths)
        self._shape, self._lengths = y.shape, lengths
        return self.head(nn.last_step(y, lengths, batch_first=True))

    def backward(self, dlogits):
        dlast = self.head.backward(dlogits)
        dx, _ = self.gru.backward(nn.last_step_backward(dlast, self._shape, self._lengths, batch_first=True))
        return dx


def test_named_parameters_are_dotted_and_match_torch_names():
    torch = require_torch()
    m = Classifier()

    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(3, 5, batch_first=True)
            self.head = torch.nn.Linear(5, 4)

    t = T().double()
    assert [k for k, _ in m.named_parameters()] == list(t.state_dict())
    m.load_state_dict(t.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, t.state_dict()[k].numpy())
    assert len(m.parameters()) == 6 and all(isinstance(p, Parameter) for p in m.parameters())
    assert [k for k, _ in m.named_children()] == ["gru", "head"]
    assert [k for k, _ in m.named_modules()] == ["", "gru", "head"]


def test_layer_attribute_still_reads_the_array():
    m = Classifier()
    assert isinstance(m.gru.weight_hh_l0, np.ndarray)
    assert m.gru.weight_hh_l0 is m.gru._params["weight_hh_l0"].data


def test_train_eval_and_zero_grad_cover_the_tree():
    m = Classifier()
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())
    x = np.random.default_rng(0).standard_normal((2, 4, 3))
    m.backward(np.ones_like(m(x)))
    assert all(np.any(p.grad != 0) for p in m.parameters())
    m.zero_grad()
    assert all(np.all(p.grad == 0) for p in m.parameters())


def test_many_to_one_gradient_matches_finite_differences():
    m = Classifier()
    rng = np.random.default_rng(1)
    x, lengths = rng.standard_normal((3, 6, 3)), np.array([6, 2, 4])
    target = np.array([0, 3, 1])

    def loss_of():
        m.eval()
        value = rnnfast.losses.cross_entropy(m(x, lengths), target)[0]
        m.train()
        return value

    _, grad = rnnfast.losses.cross_entropy(m(x, lengths), target)
    m.backward(grad)
    eps = 1e-6
    for name, p in m.named_parameters():
        for i in list(np.ndindex(p.data.shape))[:5]:
            fd = central_difference(loss_of, p.data, i, eps)
            assert abs(p.grad[i] - fd) <= 1e-6 * max(1.0, abs(fd)), (name, i, p.grad[i], fd)


def test_shared_module_is_counted_once():
    class Tied(Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = self.a

    m = Tied()
    assert len(m.parameters()) == 2 and [k for k, _ in m.named_parameters()] == ["a.weight", "a.bias"]


def test_assignment_rules():
    m = Classifier()
    with pytest.raises(TypeError, match="child module 'head'"):
        m.head = np.zeros(3)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        m.head.weight = np.zeros((4, 5))
    m.extra = Parameter(np.zeros(2))
    assert "extra" in dict(m.named_parameters())
    del m.extra
    assert "extra" not in dict(m.named_parameters())
    m.head = None
    assert [k for k, _ in m.named_children()] == ["gru"]

    class Early(Module):
        def __init__(self):
            self.x = nn.Linear(1, 1)

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()


def test_to_cpu_drops_every_submodules_caches(monkeypatch):
    m = Classifier()
    calls = []
    for name, sub in m.named_modules():  # instance attributes: whatever _drop_caches each class defines
        sub._drop_caches = lambda name=name: calls.append(name)
    # A stand-in CuPy (identity conversions), so that to() runs its whole path on any machine.
    fake = types.ModuleType("cupy")
    fake.asarray = fake.asnumpy = lambda a: a
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert m.to("cpu") is m
    assert calls == ["", "gru", "head"]


def test_drop_caches_default_clears_packed_weights_and_saved_forward():
    class Cached(Module):
        def __init__(self):
            super().__init__()
            self._packed, self._saved = {"ih": 1}, object()

    m = Cached()
    m._drop_caches()
    assert m._packed == {} and m._saved is None


@pytest.mark.parametrize("bad", [np.zeros((4, 5), "timedelta64[s]"), np.zeros((4, 5), "datetime64[s]"),
                                 np.zeros((4, 5), bool), np.zeros((4, 5), complex), np.zeros((4, 5), object)],
                         ids=["timedelta64", "datetime64", "bool", "complex", "object"])
def test_load_state_dict_rejects_non_real_dtypes_naming_the_key(bad):
    m = Classifier()
    sd = m.state_dict()
    before = m.state_dict()
    sd["head.weight"] = bad
    with pytest.raises(ValueError, match="head.weight"):
        m.load_state_dict(sd)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_names_missing_and_unexpected_keys():
    m = Classifier()
    sd = m.state_dict()
    sd["head.other"] = sd.pop("head.bias")
    with pytest.raises(ValueError, match="missing keys \\['head.bias'\\].*unexpected keys \\['head.other'\\]"):
        m.load_state_dict(sd)


def test_pickle_and_deepcopy_keep_the_tree():
    m = Classifier()
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert [k for k, _ in clone.named_parameters()] == [k for k, _ in m.named_parameters()]
        for (k, a), b in zip(clone.state_dict().items(), m.state_dict().values()):
            np.testing.assert_array_equal(a, b)
        assert clone.head is not m.head


def test_repr_shows_the_tree():
    r = repr(Classifier())
    assert r.startswith("Classifier(\n  (gru): GRU(") and "(head): Linear(in_features=5" in r
