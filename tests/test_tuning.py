"""The GEMM tuner (rnnfast/_tuning.py): forcing, defaults, the cache file, library routing, info().

The choice is made once per process, so each case runs in a fresh subprocess with its own environment.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnfast
from rnnfast import _C, _tuning

# A bidirectional LSTM layer (H=40: panels cut short; B=13: a short last tile) forward and backward, with the
# tuning the process chose and how often each time-parallel GEMM went to numpy.matmul.
LAYER = r"""
import hashlib, json, sys
import numpy as np
import rnnfast
from rnnfast import _C, backend
calls = {"n": 0}
_matmul = np.matmul
def counting(*a, **k):
    calls["n"] += 1
    return _matmul(*a, **k)
np.matmul = counting
out = {}
for dt in (np.float32, np.float64):
    rng = np.random.default_rng(0)
    m = rnnfast.LSTM(24, 40, bidirectional=True, dtype=dt, seed=3)
    x = rng.standard_normal((7, 13, 24)).astype(dt)
    y = m(x)[0]
    dx = m.backward(rng.standard_normal(y.shape).astype(dt))[0]
    arrays = [y, dx] + [p.grad for _, p in m.named_parameters()]
    out[np.dtype(dt).name] = {"hash": hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest(),
                              "tuning": backend.tuning(dt), "chosen": list(_C.chosen_gemm_variants(dt)),
                              "arrays": [a.astype(np.float64).ravel().tolist() for a in arrays]}
out["numpy_matmul_calls"] = calls["n"]
print(json.dumps(out))
"""


def run(env_extra, script=LAYER, cwd=None, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RNNFAST_TUNE", "RNNFAST_GEMM"))}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=cwd or os.path.dirname(os.path.abspath(__file__)) + "/..")
    if not check:
        return out
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def variant_names(dtype=np.float32):
    return [v["name"] for v in _C.gemm_variants(dtype)]


# The measurements replaced by fixed rates (what the cache logic sees does not then depend on how busy the
# machine is): rnnfast's variants at 500 GFLOP/s, the library shapes as given.
FAKE_RATES = r"""
import json, sys
import numpy as np
from rnnfast import _tuning, backend
ours, lib = json.loads(sys.argv[1])
_tuning._time_variants = lambda dt, variants, threads: ({v["name"]: 500.0 - i for i, v in enumerate(variants)},
                                                         {variants[0]["name"]: 250.0})
r = {"rnnfast": ours, "numpy": lib}
_tuning._time_library = lambda dt, threads: {op: dict(r, again=dict(r)) for op in _tuning.OPS}
print(json.dumps({np.dtype(dt).name: backend.tuning(dt) for dt in (np.float32, np.float64)}))
"""


def fake_run(ours, lib, cache, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RNNFAST_TUNE", "RNNFAST_GEMM"))}
    env["RNNFAST_TUNE_CACHE"] = str(cache)
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", FAKE_RATES, json.dumps([ours, lib])], env=env, capture_output=True,
                         text=True, timeout=120, cwd=next(p for p in cache.parents if p.is_dir()))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    f32 = got["float32"]
    got.update(library=f32["library"], note=f32.get("library_note"), cache=f32["cache"])
    return got


def test_forcing_each_variant_runs_it_and_changes_no_bit(tmp_path):
    base = run({"RNNFAST_TUNE": "0", "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
    assert base["float32"]["tuning"]["source"].startswith("defaults")
    assert base["float32"]["chosen"] == [0, 0]
    for i, name in enumerate(variant_names()):
        got = run({"RNNFAST_GEMM_TILE": name, "RNNFAST_GEMM": "rnnfast", "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
        for dt in ("float32", "float64"):
            t = got[dt]["tuning"]
            assert got[dt]["chosen"] == [i, i], (name, dt, got[dt]["chosen"])
            assert t["gemm"] == t["step"] == t["variants"][i]
            assert t["source"].startswith("forced")
            assert got[dt]["hash"] == base[dt]["hash"], f"{name} {dt}: results differ from the default variant's"
        assert got["numpy_matmul_calls"] == 0


def test_tile_height_alone_and_float64_width(tmp_path):
    mr = variant_names()[1].split("x")[0]
    got = run({"RNNFAST_GEMM_TILE": mr, "RNNFAST_GEMM": "rnnfast", "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
    assert got["float32"]["tuning"]["gemm"] == variant_names()[1]
    assert got["float64"]["tuning"]["gemm"] == variant_names(np.float64)[1]


@pytest.mark.parametrize("var,value", [("RNNFAST_GEMM_TILE", "13x32"), ("RNNFAST_GEMM_TILE", "12x99"),
                                       ("RNNFAST_GEMM_TILE", "bogus"), ("RNNFAST_GEMM", "openblas"),
                                       ("RNNFAST_TUNE", "maybe")])
def test_bad_environment_values_name_the_variable(var, value, tmp_path):
    out = run({var: value, "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path, check=False)
    assert out.returncode != 0
    assert "ValueError" in out.stderr and var in out.stderr, out.stderr


def test_numpy_routing_runs_every_time_parallel_gemm_on_numpy(tmp_path):
    ours = run({"RNNFAST_GEMM": "rnnfast", "RNNFAST_TUNE": "0", "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
    lib = run({"RNNFAST_GEMM": "numpy", "RNNFAST_TUNE_CACHE": "", "RNNFAST_GEMM_TILE": variant_names()[0]},
              cwd=tmp_path)
    assert ours["numpy_matmul_calls"] == 0
    # Per dtype and direction: one projection, one dx and three dW products (W_ih, W_hh from h0, the rest).
    assert lib["numpy_matmul_calls"] >= 2 * 2 * 4, lib["numpy_matmul_calls"]
    for dt, tol in (("float32", 1e-5), ("float64", 1e-12)):
        assert lib[dt]["tuning"]["library"] == {"project": "numpy", "matmul": "numpy", "addmm": "numpy"}
        for a, b in zip(lib[dt]["arrays"], ours[dt]["arrays"]):
            a, b = np.array(a), np.array(b)
            assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


def test_measured_choice_reports_every_candidate(tmp_path):
    got = run({"RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
    for dt in ("float32", "float64"):
        t = got[dt]["tuning"]
        assert t["source"] == "measured" and t["cache"] is None
        assert set(t["gemm_gflops"]) == set(t["variants"]) and min(t["gemm_gflops"].values()) > 0
        assert t["step_gflops"] and set(t["step_gflops"]) <= set(t["variants"])
        assert set(t["library_gflops"]) == {"project", "matmul", "addmm"}
        assert t["gemm"] in t["variants"] and t["step"] in t["step_gflops"]
        assert 0 < t["tuning_ms"] < 5000


def test_choice_is_written_then_read_back(tmp_path):
    cache = tmp_path / "sub" / "tuning.json"
    first = fake_run(500.0, 250.0, cache)
    for dt in ("float32", "float64"):
        assert first[dt]["source"] == "measured" and first[dt]["cache"] == str(cache)
        assert first[dt]["gemm"] == first[dt]["variants"][0]
    data = json.loads(cache.read_text())
    assert len(data) == 2 and all("|float32|" in k or "|float64|" in k for k in data)
    # Read back as it was written, whatever this run would have measured.
    for entry in data.values():
        entry["gemm"] = entry["step"] = next(n for n in entry["gemm_gflops"] if n != entry["gemm"])
    cache.write_text(json.dumps(data))
    second = fake_run(500.0, 250.0, cache)
    for dt in ("float32", "float64"):
        t = second[dt]
        assert t["source"].startswith("cache")
        assert t["gemm"] == t["step"] != t["variants"][0]
    fresh = fake_run(500.0, 250.0, cache, RNNFAST_TUNE="fresh")
    assert fresh["float32"]["source"] == "measured" and fresh["float32"]["gemm"] == fresh["float32"]["variants"][0]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "", json.dumps({"x": 1})])
def test_corrupt_cache_is_measured_again_and_rewritten(content, tmp_path):
    cache = tmp_path / "tuning.json"
    cache.write_text(content)
    got = fake_run(500.0, 250.0, cache)
    assert got["float32"]["source"] == "measured"
    data = json.loads(cache.read_text())
    assert sum("|float" in k for k in data) == 2


def test_stale_entry_naming_an_unknown_variant_is_measured_again(tmp_path):
    cache = tmp_path / "tuning.json"
    fake_run(500.0, 250.0, cache)
    data = json.loads(cache.read_text())
    for entry in data.values():
        entry["gemm"] = "99x32"
    cache.write_text(json.dumps(data))
    got = fake_run(500.0, 250.0, cache)
    assert got["float32"]["source"] == "measured"
    assert all(e["gemm"] != "99x32" for e in json.loads(cache.read_text()).values())


def test_unwritable_cache_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    got = fake_run(500.0, 250.0, blocker / "rnnfast" / "tuning.json")
    t = got["float32"]
    assert t["source"] == "measured" and t["cache"].startswith("not written")
    assert not list(tmp_path.glob("**/.tuning-*"))


def test_tune_zero_times_nothing_and_writes_nothing(tmp_path):
    cache = tmp_path / "tuning.json"
    got = run({"RNNFAST_TUNE": "0", "RNNFAST_TUNE_CACHE": str(cache)}, cwd=tmp_path)
    for dt in ("float32", "float64"):
        t = got[dt]["tuning"]
        assert t["gemm"] == t["step"] == t["variants"][0]
        assert not t["gemm_gflops"] and not t["library_gflops"]
        assert t["library"] == {"project": "rnnfast", "matmul": "rnnfast", "addmm": "rnnfast"}
    assert not cache.exists()


def test_default_cache_location_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNFAST_TUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _tuning.cache_path() == str(tmp_path / "rnnfast" / "tuning.json")
    monkeypatch.setenv("RNNFAST_TUNE_CACHE", "")
    assert _tuning.cache_path() is None


CONCURRENT = r"""
import json, threading
import numpy as np
from rnnfast import _tuning, backend
decided = []
real = _tuning._decide
def counting(dt):
    decided.append(dt)
    return real(dt)
_tuning._decide = counting
results = [None] * 8
def work(i):
    results[i] = backend.tuning(np.float32)
threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"decided": len(decided), "same": all(r == results[0] for r in results)}))
"""


def test_concurrent_first_use_tunes_once(tmp_path):
    got = run({"RNNFAST_TUNE_CACHE": ""}, script=CONCURRENT, cwd=tmp_path)
    assert got == {"decided": 1, "same": True}


def test_tuning_argument_and_copy():
    with pytest.raises(TypeError, match="dtype"):
        rnnfast.backend.tuning(np.int32)
    t = rnnfast.backend.tuning()
    t["library"]["project"] = "changed"
    assert rnnfast.backend.tuning()["library"]["project"] in ("rnnfast", "numpy")


def test_info_reports_the_choice():
    from rnnfast.__main__ import info

    t = rnnfast.backend.tuning()
    text = "\n".join(info())
    assert f"GEMM (float32): variant {t['gemm']} for the time-parallel GEMMs, {t['step']}" in text
    for op in ("project", "matmul", "addmm"):
        assert f"{op} [" in text and f"on {t['library'][op]}" in text
    for name, rate in t["gemm_gflops"].items():
        assert f"{name} {rate:.0f}" in text


CAPPED = r"""
import json
import numpy as np
import rnnfast
n = rnnfast.backend._default_threads() + 1
rnnfast.set_num_threads(n, exact=True)
t = rnnfast.backend.tuning(np.float32)
print(json.dumps({"library_gflops": t["library_gflops"], "note": t.get("library_note"), "ok": t["threads"] == n,
                  "gemm_gflops": len(t["gemm_gflops"])}))
"""


def test_library_is_not_considered_when_threads_differ_from_the_cores(tmp_path):
    got = run({"RNNFAST_TUNE_CACHE": ""}, script=CAPPED, cwd=tmp_path)
    assert got["ok"] and got["gemm_gflops"] > 0
    assert not got["library_gflops"] and "not considered" in got["note"]


def test_library_needs_two_wins_by_the_margin():
    win = {"rnnfast": 100.0, "numpy": 106.0}
    lose = {"rnnfast": 100.0, "numpy": 104.0}
    assert _tuning._library_choice({"project": dict(win, again=win), "matmul": dict(win, again=lose),
                                    "addmm": dict(win)}) == \
        {"project": "numpy", "matmul": "rnnfast", "addmm": "rnnfast"}
    assert _tuning._library_choice({"project": dict(lose, again=win)})["project"] == "rnnfast"


def test_library_chosen_when_clearly_faster_and_kept_on_disk(tmp_path):
    got = fake_run(300.0, 400.0, tmp_path / "tuning.json")
    assert got["float64"]["library"]["addmm"] == "numpy"
    assert got["library"] == {"project": "numpy", "matmul": "numpy", "addmm": "numpy"} and not got["note"]
    entry = next(iter(json.loads((tmp_path / "tuning.json").read_text()).values()))
    assert entry["library"]["project"] == "numpy"


def test_library_not_chosen_from_a_disturbed_measurement(tmp_path):
    # 31 GFLOP/s on the layer shapes right after 500 on the variants: the machine was busy, not the library fast.
    got = fake_run(31.0, 250.0, tmp_path / "tuning.json")
    assert got["library"] == {"project": "rnnfast", "matmul": "rnnfast", "addmm": "rnnfast"}
    assert "disturbed" in got["note"]
    assert not (tmp_path / "tuning.json").exists()


# ---------------------------------------------------------------------------------------- crossing cost
@pytest.mark.parametrize("cls, H, B", [("LSTM", 64, 1), ("LSTM", 96, 3), ("RNN", 160, 1), ("GRU", 200, 2)])
def test_recurrence_bits_do_not_depend_on_the_measured_crossing_cost(cls, H, B):
    # The tuner sizes a recurrence's team by the core round trip it measured (slow on some VM placements); the
    # order of every sum is fixed by the thread count asked for, so a smaller team must give the same bits.
    from rnnfast import _C
    rnnfast.backend.tuning(np.float32)  # the tuner sets the crossing at the process's first GEMM: not in between
    before, threads = _C.crossing_macs(), rnnfast.get_num_threads()
    layer = getattr(rnnfast, cls)(12, H, seed=3)
    layer.eval()
    x = np.random.default_rng(4).standard_normal((20, B, 12)).astype(np.float32)
    try:
        rnnfast.set_num_threads(2)
        outs = []
        for macs in (8192, 1 << 24):  # the default teams; then one thread wherever the thread count allows
            assert _C.crossing_macs(macs) == macs
            outs.append(layer(x)[0].copy())
    finally:
        _C.crossing_macs(before)
        rnnfast.set_num_threads(threads)
    np.testing.assert_array_equal(outs[1], outs[0])


def test_crossing_macs_reads_without_changing_and_rejects_bad_values():
    from rnnfast import _C
    before = _C.crossing_macs()
    assert _C.crossing_macs() == before and _C.crossing_macs(0) == before
    for bad in (-1, 1 << 27):
        with pytest.raises(ValueError, match="macs"):
            _C.crossing_macs(bad)
    assert _C.crossing_macs() == before


def test_tuning_reports_the_crossing_it_put_in_force():
    from rnnfast import _C
    t = rnnfast.backend.tuning(np.float32)
    assert t["crossing_macs"] >= 8192
    if t["round_trip_ns"] is not None:
        assert t["round_trip_ns"] > 0


# Two kernel threads sharing one core (an oversubscribed machine, a CPU quota, a vCPU the host took away): each
# wait must give the core to the thread it waits for. A pure spin made every crossing cost a scheduler time
# slice (about 8 ms here): the tuner's crossing probe (3 x 2000 round trips) then ran for tens of seconds.
ONE_CORE = r"""
import json, os, time
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
import numpy as np
import rnnfast
from rnnfast import _C
out = {}
t = time.perf_counter()
out["round_trip_ns"] = _C.core_round_trip_ns(100000, max_ms=50.0)
out["probe_s"] = time.perf_counter() - t
rnnfast.set_num_threads(2, exact=True)
layer = rnnfast.LSTM(8, 64, seed=1)
layer.eval()
x = np.random.default_rng(0).standard_normal((1000, 1, 8)).astype(np.float32)
layer(x)
t = time.perf_counter()
y = layer(x)[0]
out["layer_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_two_threads_on_one_core_wait_by_yielding_and_the_probe_is_time_bounded():
    run = subprocess.run([sys.executable, "-P", "-c", ONE_CORE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RNNFAST_TUNE": "0"})
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    # 100000 round trips at a time slice each would take minutes; the probe stops after max_ms (+ a bounded
    # last batch of 16 round trips).
    assert got["probe_s"] < 5.0, got
    assert got["round_trip_ns"] > 0, got
    # 1000 steps, each a crossing of two threads on one core: about 0.1 ms each when waiting yields (0.1 s in
    # all); a pure spin takes a slice per crossing (8 s or more).
    assert got["layer_s"] < 4.0, got

