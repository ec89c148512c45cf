"""rnnfast.save/load for any importable Module (composite models, Sequential, cells), classes that are
refused, crafted files that must fail fast (declared sizes checked before anything is built), and the removal
of temporaries left by killed saves."""
import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import rnnfast
from rnnfast import nn, serialization
from rnnfast.module import Module


class Seq2Seq(Module):
    """An encoder-decoder from cells, with a tuple argument and a dtype (as a user writes one)."""

    def __init__(self, vocab, hidden, sizes=(2, 3), dtype=np.float64, seed=None):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden, dtype=dtype, seed=seed)
        self.encoder = rnnfast.LSTM(hidden, hidden, dtype=dtype, seed=seed)
        self.decoder = rnnfast.LSTMCell(hidden, hidden, dtype=dtype, seed=seed)
        self.out = nn.Linear(hidden, vocab, dtype=dtype, seed=seed)
        self.sizes = sizes


class Wrapped(Module):
    """A module taking another module as a constructor argument."""

    def __init__(self, inner, scale=1.0):
        super().__init__()
        self.inner = inner
        self.scale = scale


class NotJson(Module):
    def __init__(self, fn=print):
        super().__init__()
        self.lin = nn.Linear(2, 2)


class WithConfig(NotJson):
    def get_config(self):
        return {}


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype
        np.testing.assert_array_equal(sa[k], sb[k])


def test_composite_model_round_trip(tmp_path):
    m = Seq2Seq(7, 4, sizes=(5, 6), seed=1)
    rnnfast.save(m, tmp_path / "m.npz")
    m2 = rnnfast.load(tmp_path / "m.npz")
    assert type(m2) is Seq2Seq and m2.sizes == (5, 6) and m2.out.dtype == np.float64
    _same_state(m, m2)
    with np.load(tmp_path / "m.npz") as z:
        meta = json.loads(str(z[rnnfast.io.METADATA_KEY][()]))
    assert meta["class"] == "test_serialization:Seq2Seq"
    assert meta["args"]["dtype"] == {"__dtype__": "float64"} and meta["args"]["sizes"] == {"__tuple__": [5, 6]}


def test_sequential_and_nested_module_arguments_round_trip(tmp_path):
    seq = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.Tanh(), nn.Dropout(0.1), nn.Linear(4, 1, seed=2))
    m = Wrapped(seq, scale=2.5)
    rnnfast.save(m, tmp_path / "w.npz")
    m2 = rnnfast.load(tmp_path / "w.npz")
    assert type(m2.inner) is nn.Sequential and [type(c) for c in m2.inner] == [type(c) for c in seq]
    assert m2.scale == 2.5 and m2.inner[2].p == 0.1
    _same_state(m, m2)
    x = np.ones((2, 3))
    m.eval(), m2.eval()
    np.testing.assert_array_equal(m.inner[0](x), m2.inner[0](x))


def test_cell_round_trip(tmp_path):
    c = rnnfast.GRUCell(3, 4, bias=False, dtype=np.float64, seed=3)
    rnnfast.save(c, tmp_path / "c.npz")
    c2 = rnnfast.load(tmp_path / "c.npz")
    assert type(c2) is rnnfast.GRUCell and not c2.bias
    _same_state(c, c2)


def test_save_refuses_what_it_could_not_rebuild(tmp_path):
    class Local(Module):
        pass

    with pytest.raises(TypeError, match="cannot be found by its name"):
        rnnfast.save(Local(), tmp_path / "x.npz")
    with pytest.raises(TypeError, match="'fn' of NotJson.*get_config"):
        rnnfast.save(NotJson(), tmp_path / "x.npz")
    rnnfast.save(WithConfig(print), tmp_path / "x.npz")  # get_config() says what to record
    assert type(rnnfast.load(tmp_path / "x.npz")) is WithConfig
    assert os.listdir(tmp_path) == ["x.npz"]


def _rewrite_meta(path, edit):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop(serialization.METADATA_KEY)[()]))
    edit(meta)
    arrays[serialization.METADATA_KEY] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("cls,match", [("collections:OrderedDict", "not an rnnfast.Module subclass"),
                                       ("os:system", "not an rnnfast.Module subclass"),
                                       ("no_such_module_xyz:Thing", "importable"),
                                       ("os; import sys:x", "importable")])
def test_load_refuses_classes_that_are_not_modules(tmp_path, cls, match):
    path = tmp_path / "m.npz"
    rnnfast.save(nn.Linear(2, 2), path)
    _rewrite_meta(path, lambda m: m.update({"class": cls}))
    with pytest.raises(ValueError, match=match):
        rnnfast.load(path)


def _fails_fast(path, match):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=match):
            rnnfast.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 20 * 2**20, f"load allocated {peak / 2**20:.0f} MiB before refusing"


@pytest.mark.parametrize("edit", [dict(hidden_size=8000), dict(num_layers=10**8), dict(input_size=10**9)],
                         ids=["hidden_8000", "layers_1e8", "input_1e9"])
def test_crafted_layer_metadata_fails_fast(tmp_path, edit):
    path = tmp_path / "m.npz"
    rnnfast.save(rnnfast.LSTM(3, 4, seed=0), path)
    _rewrite_meta(path, lambda m: m["args"].update(edit))
    assert os.path.getsize(path) < 8192
    _fails_fast(path, "parameter values")


def test_crafted_generic_metadata_fails_fast(tmp_path):
    path = tmp_path / "m.npz"
    rnnfast.save(Seq2Seq(5, 3), path)
    _rewrite_meta(path, lambda m: m["args"].update(hidden=8000))
    _fails_fast(path, "hidden=8000")


def _npy_header_only(shape, dtype="<f8"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


def test_member_declaring_more_than_the_file_holds_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    rnnfast.save(rnnfast.GRU(2, 3, seed=0), path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("huge.npy", _npy_header_only((2**27,)))  # 1 GiB of float64 declared
    _fails_fast(path, "huge.*declares shape")


def test_object_member_is_refused_by_its_header(tmp_path):
    path = tmp_path / "m.npz"
    rnnfast.save(rnnfast.GRU(2, 3, seed=0), path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("obj.npy", _npy_header_only((1,), "|O"))
    with pytest.raises(ValueError, match="obj.*Python objects"):
        rnnfast.load(path)


def test_misshaped_member_of_a_composite_is_named(tmp_path):
    path = tmp_path / "m.npz"
    rnnfast.save(Seq2Seq(5, 3), path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["out.weight"] = np.zeros((5, 2))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="out.weight.*shape"):
        rnnfast.load(path)


def test_save_removes_temporaries_of_killed_saves_of_the_same_target_only(tmp_path):
    stale = tmp_path / ".m.npz.0123456789abcdef.tmp"
    other = tmp_path / ".other.npz.0123456789abcdef.tmp"
    unrelated = tmp_path / ".m.npz.notmine.tmp"
    for p in (stale, other, unrelated):
        p.write_bytes(b"PK partial")
    rnnfast.save(nn.Linear(2, 2), tmp_path / "m.npz")
    assert sorted(os.listdir(tmp_path)) == sorted(["m.npz", other.name, unrelated.name])


@pytest.mark.skipif(serialization.fcntl is None, reason="flock")
def test_save_keeps_the_temporary_of_a_save_in_progress(tmp_path):
    live = tmp_path / ".m.npz.fedcba9876543210.tmp"
    live.write_bytes(b"PK partial")
    fd = os.open(live, os.O_RDONLY)
    try:
        serialization.fcntl.flock(fd, serialization.fcntl.LOCK_EX)
        rnnfast.save(nn.Linear(2, 2), tmp_path / "m.npz")
        assert live.exists()
    finally:
        os.close(fd)


def test_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    """A real kill -9 in the middle of a save (np.savez made to hang), then a save to the same path."""
    path = tmp_path / "m.npz"
    code = ("import time, numpy as np, rnnfast\n"
            "np.savez = lambda f, **a: (f.write(b'PK partial'), f.flush(), print('writing', flush=True), "
            "time.sleep(60))\n"
            f"rnnfast.save(rnnfast.nn.Linear(2, 2), {str(path)!r})\n")
    proc = subprocess.Popen([sys.executable, "-P", "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.kill()
        proc.wait(10)
    finally:
        proc.stdout.close()
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and not path.exists()
    rnnfast.save(nn.Linear(2, 2), path)
    assert os.listdir(tmp_path) == ["m.npz"]
