"""The tuner (rnnfast/_core/tuning.py): every choice timed inside a layer's training step, forcing, defaults,
the cache file, no library GEMM in a layer call, the crossing, info().

The choice is made once per process, so each case runs in a fresh subprocess with its own environment.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnfast
from _rnnfast import _C
from rnnfast._core import tuning

# A bidirectional LSTM layer (H=40: panels cut short; B=13: a short last tile) forward and backward, with the
# tuning the process chose and how often numpy.matmul ran inside the layer calls (never: no library GEMM).
LAYER = r"""
import hashlib, json, sys
import numpy as np
import rnnfast
from _rnnfast import _C
from rnnfast import backend
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
                              "tuning": backend.tuning(dt), "chosen": list(_C.chosen_gemm_variants(dt))}
out["numpy_matmul_calls"] = calls["n"]
print(json.dumps(out))
"""


def run(env_extra, script=LAYER, cwd=None, check=True, args=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RNNFAST_TUNE", "RNNFAST_GEMM"))}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                         timeout=300, cwd=cwd or os.path.dirname(os.path.abspath(__file__)) + "/..")
    if not check:
        return out
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def variant_names(dtype=np.float32):
    return [v["name"] for v in _C.gemm_variants(dtype)]


# The step times replaced by fixed ones (what the cache logic sees does not then depend on how busy the machine
# is): the probe's training step takes 10 ms with the default variants, `faster` ms with the candidate named.
FAKE_TIMES = r"""
import json, sys
import numpy as np
from rnnfast import backend
from rnnfast._core import tuning
faster, ms = json.loads(sys.argv[1])
def fake(step, candidates, apply, rounds=3):
    if (1 << 24) in candidates:  # the crossing's two runs: as fast on one thread as on two
        return {c: 1e-3 for c in candidates}
    names = [v["name"] for v in backend._C.gemm_variants(np.float32)]
    return {c: (ms if names[c] == faster else 10.0) / 1e3 for c in candidates}
tuning._time_candidates = fake
print(json.dumps({np.dtype(dt).name: backend.tuning(dt) for dt in (np.float32, np.float64)}))
"""


def fake_run(cache, faster=None, ms=10.0, **env_extra):
    env = {"RNNFAST_TUNE_CACHE": str(cache), **env_extra}
    return run(env, script=FAKE_TIMES, cwd=next(p for p in cache.parents if p.is_dir()),
               args=[json.dumps([faster, ms])])


def test_no_library_gemm_runs_in_a_layer_call_and_forcing_each_variant_changes_no_bit(tmp_path):
    base = run({"RNNFAST_TUNE": "0", "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
    assert base["float32"]["tuning"]["source"].startswith("defaults")
    assert base["float32"]["chosen"] == [0, 0]
    assert base["numpy_matmul_calls"] == 0
    for i, name in enumerate(variant_names()):
        got = run({"RNNFAST_GEMM_TILE": name, "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
        for dt in ("float32", "float64"):
            t = got[dt]["tuning"]
            assert got[dt]["chosen"] == [i, i], (name, dt, got[dt]["chosen"])
            assert t["gemm"] == t["step"] == t["variants"][i]
            assert t["source"].startswith("forced")
            assert got[dt]["hash"] == base[dt]["hash"], f"{name} {dt}: results differ from the default variant's"
        assert got["numpy_matmul_calls"] == 0


def test_tile_height_alone_and_float64_width(tmp_path):
    mr = variant_names()[1].split("x")[0]
    got = run({"RNNFAST_GEMM_TILE": mr, "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
    assert got["float32"]["tuning"]["gemm"] == variant_names()[1]
    assert got["float64"]["tuning"]["gemm"] == variant_names(np.float64)[1]


@pytest.mark.parametrize("var,value", [("RNNFAST_GEMM_TILE", "13x32"), ("RNNFAST_GEMM_TILE", "12x99"),
                                       ("RNNFAST_GEMM_TILE", "bogus"), ("RNNFAST_GEMM", "openblas"),
                                       ("RNNFAST_TUNE", "maybe")])
def test_bad_environment_values_name_the_variable(var, value, tmp_path):
    out = run({var: value, "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path, check=False)
    assert out.returncode != 0
    assert "ValueError" in out.stderr and var in out.stderr, out.stderr


def test_gemm_numpy_is_ignored_with_a_warning_and_changes_no_bit(tmp_path):
    # NumPy's BLAS brings its own thread pool, which fought rnnfast's threads inside training steps: the variable
    # that chose it is still accepted (old scripts set it), says so once, and runs rnnfast's GEMM.
    ours = run({"RNNFAST_TUNE": "0", "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
    out = run({"RNNFAST_GEMM": "numpy", "RNNFAST_TUNE": "0", "RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("RNNFAST_GEMM=numpy is ignored") == 1, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["numpy_matmul_calls"] == 0
    for dt in ("float32", "float64"):
        assert got[dt]["hash"] == ours[dt]["hash"]
        assert got[dt]["tuning"]["library"] == "rnnfast" and "ignored" in got[dt]["tuning"]["library_note"]


def test_measured_choice_reports_every_candidate(tmp_path):
    got = run({"RNNFAST_TUNE_CACHE": ""}, cwd=tmp_path)
    for dt in ("float32", "float64"):
        t = got[dt]["tuning"]
        assert t["source"] == "measured" and t["cache"] is None
        assert set(t["gemm_ms"]) == set(t["variants"]) and min(t["gemm_ms"].values()) > 0
        assert t["step_ms"] and set(t["step_ms"]) <= set(t["variants"])
        assert t["gemm"] in t["variants"] and t["step"] in t["step_ms"]
        assert 0 < t["tuning_ms"] < 10000


SEQUENCE = r"""
import json
import numpy as np
from _rnnfast import _C
from rnnfast import backend
seen = []
for name in ("gemm_packed", "forward", "backward", "gemm"):
    real = getattr(_C, name)
    def spy(*a, _real=real, _name=name, **k):
        seen.append(_name)
        return _real(*a, **k)
    setattr(_C, name, spy)
backend.tuning(np.float32)
print(json.dumps(seen))
"""


def test_choices_are_timed_inside_a_training_step(tmp_path):
    # Never a kernel alone: each timed run is a layer's forward (input GEMM, recurrence) and backward (reverse
    # recurrence, then the weight-gradient and dx GEMMs).
    seen = run({"RNNFAST_TUNE_CACHE": ""}, script=SEQUENCE, cwd=tmp_path)
    one_step = ["gemm_packed", "forward", "backward", "gemm"]
    assert seen[:4] == one_step, seen[:8]
    assert seen.count("forward") == seen.count("backward") == seen.count("gemm_packed") >= 6 * 4
    # The weight gradients (W_ih, W_hh from h0, W_hh from the rest) and dx: four GEMMs a step.
    assert seen.count("gemm") == 4 * seen.count("forward")


def test_a_candidate_replaces_the_default_only_by_the_margin():
    assert tuning._pick({0: 1.0, 1: 0.98, 2: 0.99}, 0) == 0  # 2% is noise
    assert tuning._pick({0: 1.0, 1: 0.96, 2: 0.99}, 0) == 1
    assert tuning._pick({0: 0.9, 1: 1.0}, 0) == 0


def test_choice_is_written_then_read_back(tmp_path):
    cache = tmp_path / "sub" / "tuning.json"
    first = fake_run(cache)
    for dt in ("float32", "float64"):
        assert first[dt]["source"] == "measured" and first[dt]["cache"] == str(cache)
        assert first[dt]["gemm"] == first[dt]["variants"][0]
    data = json.loads(cache.read_text())
    assert len(data) == 2 and all("|float32|" in k or "|float64|" in k for k in data)
    # Read back as it was written, whatever this run would have measured.
    for entry in data.values():
        entry["gemm"] = entry["step"] = next(n for n in entry["gemm_ms"] if n != entry["gemm"])
    cache.write_text(json.dumps(data))
    second = fake_run(cache)
    for dt in ("float32", "float64"):
        t = second[dt]
        assert t["source"].startswith("cache")
        assert t["gemm"] == t["step"] != t["variants"][0]
    fresh = fake_run(cache, RNNFAST_TUNE="fresh")
    assert fresh["float32"]["source"] == "measured" and fresh["float32"]["gemm"] == fresh["float32"]["variants"][0]


def test_a_clearly_faster_variant_is_chosen(tmp_path):
    name = variant_names()[-1]
    got = fake_run(tmp_path / "tuning.json", faster=name, ms=9.0)
    assert got["float32"]["gemm"] == name


def test_entries_of_the_earlier_tuner_are_not_read(tmp_path):
    # The tuner before this one timed kernels alone (and could choose numpy.matmul): its entries are keyed
    # without the probe's tag, and are measured again rather than trusted.
    cache = tmp_path / "tuning.json"
    fake_run(cache)
    data = json.loads(cache.read_text())
    old = {k.rsplit("|", 1)[0]: dict(v, gemm=variant_names()[-1]) for k, v in data.items()}
    cache.write_text(json.dumps(old))
    got = fake_run(cache)
    assert got["float32"]["source"] == "measured"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "", json.dumps({"x": 1})])
def test_corrupt_cache_is_measured_again_and_rewritten(content, tmp_path):
    cache = tmp_path / "tuning.json"
    cache.write_text(content)
    got = fake_run(cache)
    assert got["float32"]["source"] == "measured"
    data = json.loads(cache.read_text())
    assert sum("|float" in k for k in data) == 2


def test_stale_entry_naming_an_unknown_variant_is_measured_again(tmp_path):
    cache = tmp_path / "tuning.json"
    fake_run(cache)
    data = json.loads(cache.read_text())
    for entry in data.values():
        entry["gemm"] = "99x32"
    cache.write_text(json.dumps(data))
    got = fake_run(cache)
    assert got["float32"]["source"] == "measured"
    assert all(e["gemm"] != "99x32" for e in json.loads(cache.read_text()).values())


def test_unwritable_cache_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    got = fake_run(blocker / "rnnfast" / "tuning.json")
    t = got["float32"]
    assert t["source"] == "measured" and t["cache"].startswith("not written")
    assert not list(tmp_path.glob("**/.tuning-*"))


def test_tune_zero_times_nothing_and_writes_nothing(tmp_path):
    cache = tmp_path / "tuning.json"
    got = run({"RNNFAST_TUNE": "0", "RNNFAST_TUNE_CACHE": str(cache)}, cwd=tmp_path)
    for dt in ("float32", "float64"):
        t = got[dt]["tuning"]
        assert t["gemm"] == t["step"] == t["variants"][0]
        assert not t["gemm_ms"] and not t["step_ms"] and t["crossing"]["one_thread_ms"] is None
        assert t["library"] == "rnnfast"
    assert not cache.exists()


def test_default_cache_location_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNFAST_TUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning.cache_path() == str(tmp_path / "rnnfast" / "tuning.json")
    monkeypatch.setenv("RNNFAST_TUNE_CACHE", "")
    assert tuning.cache_path() is None


CONCURRENT = r"""
import json, threading
import numpy as np
import rnnfast
from rnnfast import backend
from rnnfast._core import tuning
decided = []
real = tuning._decide
def counting(dt):
    decided.append(dt)
    return real(dt)
tuning._decide = counting
results = [None] * 8
def work(i):
    if i % 2:
        rnnfast.LSTM(4, 8)(np.zeros((3, 2, 4), np.float32))  # a layer's first call tunes too
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
    t["crossing"]["one_thread_ms"] = "changed"
    assert rnnfast.backend.tuning()["crossing"]["one_thread_ms"] != "changed"


def test_info_reports_the_choice():
    from rnnfast.__main__ import info

    t = rnnfast.backend.tuning()
    text = "\n".join(info())
    assert f"variant {t['gemm']} for the time-parallel GEMMs, {t['step']} for" in text
    for name, ms in t["gemm_ms"].items():
        assert f"{name} {ms:.2f}" in text
    assert f"where a step has {t['crossing_macs']} multiply-adds per thread" in text


# ---------------------------------------------------------------------------------------- crossing cost
@pytest.mark.parametrize("cls, H, B", [("LSTM", 64, 1), ("LSTM", 96, 3), ("RNN", 160, 1), ("GRU", 200, 2)])
def test_recurrence_bits_do_not_depend_on_the_measured_crossing_cost(cls, H, B):
    # The tuner sizes a recurrence's team by the core round trip it measured (slow on some VM placements); the
    # order of every sum is fixed by the thread count asked for, so a smaller team must give the same bits.
    from _rnnfast import _C
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
    from _rnnfast import _C
    before = _C.crossing_macs()
    assert _C.crossing_macs() == before and _C.crossing_macs(0) == before
    for bad in (-1, 1 << 27):
        with pytest.raises(ValueError, match="macs"):
            _C.crossing_macs(bad)
    assert _C.crossing_macs() == before


def test_tuning_reports_the_crossing_it_put_in_force():
    from _rnnfast import _C
    t = rnnfast.backend.tuning(np.float32)
    assert t["crossing_macs"] == _C.crossing_macs() >= tuning._DEFAULT_CROSSING
    c = t["crossing"]
    if c["one_thread_ms"] is not None:  # measured where two threads may run
        assert c["one_thread_ms"] > 0 and c["two_threads_ms"] > 0


@pytest.mark.parametrize("t1, t2, want", [(1.0, 0.6, "default"), (1.0, 1.0, 8192), (1.0, 1.25, 12288),
                                          (1.0, 40.0, "cap")])
def test_crossing_follows_the_two_step_times(monkeypatch, t1, t2, want):
    # Two threads win where c*M/2 + X < c*M: crossing = M*(t2/t1 - 1/2), M = 16384 multiply-adds a step of the
    # probe layer; never below the default, never above CROSSING_CAP times it.
    from _rnnfast import _C
    before = _C.crossing_macs()
    monkeypatch.setattr(tuning, "_time_candidates", lambda step, cands, apply, rounds=3: {1: t2, 1 << 24: t1})
    try:
        got = tuning._measure_crossing(2)["crossing_macs"]
    finally:
        _C.crossing_macs(before)
    default = tuning._DEFAULT_CROSSING
    assert got == {"default": default, "cap": default * tuning.CROSSING_CAP}.get(want, want)


# Two kernel threads sharing one core (an oversubscribed machine, a CPU quota, a vCPU the host took away): each
# wait must give the core to the thread it waits for. A pure spin made every crossing cost a scheduler time
# slice (about 8 ms here): the tuner's crossing probe (3 x 2000 round trips) then ran for tens of seconds.
ONE_CORE = r"""
import json, os, time
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
import numpy as np
import rnnfast
from _rnnfast import _C
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



# A team whose member shares its core with another busy process waits a scheduler slice at many crossings: the
# kernels then run their teams on one thread for a while (threads.h TeamPressure). Here the process may use two
# CPUs and a busy process is pinned to the second: the starvation must be seen, the teams must go solo, and the
# bits must stay those of the idle machine.
STARVED = r"""
import json, os, subprocess, sys, time
cpus = sorted(os.sched_getaffinity(0))[:2]
os.sched_setaffinity(0, set(cpus))
import numpy as np
import rnnfast
from _rnnfast import _C
rnnfast.set_num_threads(2)
layer = rnnfast.LSTM(8, 64, seed=1)
x = np.random.default_rng(0).standard_normal((300, 4, 8)).astype(np.float32)
def run():
    y = layer(x)[0]
    layer.zero_grad()
    dx = layer.backward(np.ones_like(y))[0]
    return [y, dx] + [p.grad.copy() for _, p in layer.named_parameters()]
idle = run()
before = _C.team_pressure()["starved_calls"]
busy = subprocess.Popen([sys.executable, "-c", "import os\nos.sched_setaffinity(0, {%d})\nwhile True: pass" % cpus[1]])
time.sleep(0.3)
try:
    solo = False
    for _ in range(30):
        loaded = run()
        solo = solo or _C.team_pressure()["solo"]
        same = all(np.array_equal(a, b) for a, b in zip(loaded, idle))
        if not same:
            break
finally:
    busy.kill()
print(json.dumps({"starved": _C.team_pressure()["starved_calls"] - before, "solo": solo, "same": same}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs and os.sched_setaffinity (Linux)")
def test_starved_teams_go_solo_without_changing_a_bit(tmp_path):
    got = run({"RNNFAST_TUNE": "0"}, script=STARVED, cwd=tmp_path)
    assert got["same"], got
    assert got["starved"] > 0 and got["solo"], got
