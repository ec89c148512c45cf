"""The choices rnnfast makes by measurement, once per process and dtype, at its first kernel call.

Every choice is timed inside the sequence it will run in: a short training step of a real layer (the input
GEMM, the recurrence, the reverse recurrence, the weight-gradient and dx GEMMs, on rnnfast's own threads), never
a kernel alone. A choice measured alone is a guess: the last one (numpy.matmul for the weight gradients,
faster alone on an Intel Xeon) ran training up to 65x slower inside a step, where OpenBLAS's threads kept
spinning beside rnnfast's team. A candidate replaces the default only where it wins inside the step by a margin.

* GEMM variants (csrc/cpu/gemm.h: tile height MR x panel width NR, L2 row block, loop order), one for the
  time-parallel GEMMs and one tile height for the recurrences' per-step products. Every variant gives the same
  bits, so this choice changes speed only. Timed on PROBE_LAYER's training step.
* The crossing: the multiply-adds per thread a recurrence's step needs before it takes another thread
  (csrc/cpu/skeleton.h threads_for). Timed on CROSSING_LAYER's training step with the recurrences on one thread
  and on two; never below the default (which fixes the order of the sums: the bits never depend on it).

No library GEMM runs in a layer call: a BLAS library brings its own thread pool, and no way to run it on
rnnfast's threads without changing the library's thread count for the whole process (OpenBLAS's
openblas_set_num_threads_local is process-wide in its pthreads build). RNNFAST_GEMM=numpy, which chose NumPy's
BLAS before, is now ignored with a warning.

Environment:
  RNNFAST_TUNE=0        no timing: the default variants and crossing
  RNNFAST_TUNE=fresh    time again even where the cache file has an entry (and rewrite it)
  RNNFAST_GEMM_TILE=12x32[/big|/tiles]   force a variant (MR x NR as gemm_variants names it; float64 runs
                        the same MR on its own panel width, e.g. 12x16)
  RNNFAST_TUNE_CACHE=path      the cache file of the variant choice ('' for none); default
                        $XDG_CACHE_HOME/rnnfast/tuning.json (~/.cache when XDG_CACHE_HOME is unset). Keyed by CPU
                        model, ISA build, rnnfast version, dtype and thread count; never fatal (read-only or
                        corrupt: measured again). The crossing is measured in every process (a VM's core round
                        trip moves with the host's vCPU placement).
"""
from __future__ import annotations

import json
import os
import platform
import re
import tempfile
import threading
import time
import warnings

import numpy as np

from . import functional, threads
from .ext import _C
from .kernels import CpuKernels
from .version import VERSION

# A candidate replaces the default only when its step is faster by this factor: timing noise alone then rarely
# flips a choice between processes.
MARGIN = 1.03
ROUNDS = 3
# The layers the choices are timed on: (cell, I, H, B, T) of a training step. PROBE_LAYER's step holds every
# kind of GEMM a layer runs (512 tokens: projection 512x1024x256, dx, dW) and 8 recurrent steps of 64 rows;
# float64 runs half the steps. CROSSING_LAYER sits at the default crossing: its 16384 multiply-adds a step are
# exactly two threads' worth.
PROBE_LAYER = ("lstm", 256, 256, 64, 8)
CROSSING_LAYER = ("lstm", 64, 64, 1, 128)
# The crossing is never set below the default nor above this many times it.
CROSSING_CAP = 32
# Cache entries written by the earlier tuner (which timed kernels alone) are not read: the key says what timed it.
_CACHE_TAG = "layer-step"

# The kernels' default crossing (skeleton.h kDefaultCrossingMacs), read before anything changes it.
_DEFAULT_CROSSING = _C.crossing_macs()

_lock = threading.Lock()
_local = threading.local()  # .busy: this thread is tuning (the probe's own kernel calls must not tune again)
_state: dict = {}  # dtype name -> the choice (see rnnfast.backend.tuning)
_crossing_state: dict = {}  # the crossing measured at the process's first call, once set


def cpu_model() -> str:
    """The processor's model name, with family/model/stepping where /proc/cpuinfo has them."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    ids = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    return f"{name} ({', '.join(ids)})" if ids else name


# ------------------------------------------------------------------------------------------ the cache file
def cache_path() -> str | None:
    path = os.environ.get("RNNFAST_TUNE_CACHE")
    if path is not None:
        return path or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rnnfast", "tuning.json")


def _read_cache(path):
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path, key, entry):
    """Adds one entry; atomic (a temporary file renamed over the old one). Returns None or why it failed."""
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------------------------------ the environment
def _tune_mode() -> str:
    """RNNFAST_TUNE: "0" (defaults, nothing timed), "fresh" (measure again) or "1"/"" (measure or use the cache)."""
    mode = os.environ.get("RNNFAST_TUNE", "1").strip().lower()
    if mode not in ("0", "1", "fresh", ""):
        raise ValueError(f"RNNFAST_TUNE: expected 0, 1 or fresh, got {mode!r}")
    return mode


def _forced_variant(variants):
    """The index RNNFAST_GEMM_TILE names, or None when unset."""
    spec = os.environ.get("RNNFAST_GEMM_TILE", "").strip()
    if not spec:
        return None
    m = re.fullmatch(r"(\d+)(?:x(\d+))?(/\w+)?", spec)
    widths = {_C.panel_width(np.dtype(t)) for t in (np.float32, np.float64)}
    if m and (m.group(2) is None or int(m.group(2)) in widths):
        for i, v in enumerate(variants):
            mr, _, rest = v["name"].partition("x")
            suffix = rest[len(str(v["nr"])):]
            if int(mr) == int(m.group(1)) and suffix == (m.group(3) or ""):
                return i
    names = ", ".join(v["name"] for v in _C.gemm_variants(np.float32))
    raise ValueError(f"RNNFAST_GEMM_TILE: expected one of this build's variants ({names}; float64 takes the same "
                     f"names with its own panel width), got {spec!r}")


def _library_note():
    """What RNNFAST_GEMM asks, now that only rnnfast's GEMM runs in a layer call: None, or why it is ignored."""
    spec = os.environ.get("RNNFAST_GEMM", "").strip().lower()
    if spec in ("", "rnnfast"):
        return None
    if spec == "numpy":
        note = ("RNNFAST_GEMM=numpy is ignored: NumPy's BLAS runs its own thread pool, which fought rnnfast's "
                "threads inside training steps (2-65x slower); the layers' GEMMs run on rnnfast's GEMM")
        warnings.warn(note, RuntimeWarning, stacklevel=2)
        return note
    raise ValueError(f"RNNFAST_GEMM: expected rnnfast (numpy is no longer offered), got {spec!r}")


# ------------------------------------------------------------------------------------------ the probe
def training_step(layer, dtype, thread_arg, seed=0):
    """A callable running one training step (forward and backward) of `layer` = (cell, I, H, B, T) through the
    data flow every front end uses (functional.py, CPU kernels with `thread_arg`), and its multiply-adds per
    recurrent step (B*G*H*H)."""
    cell, I, H, B, T = layer
    G = functional.gates(cell)
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    arrays = {"w_ih": rng.uniform(-k, k, (G * H, I)), "w_hh": rng.uniform(-k, k, (G * H, H)),
              "b_ih": rng.uniform(-k, k, G * H), "b_hh": rng.uniform(-k, k, G * H)}
    arrays = {n: a.astype(dtype) for n, a in arrays.items()}
    grads = {n: np.zeros_like(a) for n, a in arrays.items()}
    grads["w_hr"] = None
    kernels = CpuKernels(thread_arg)
    lw = kernels.weights(cell, arrays, grads, {}, "")
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    h0 = np.zeros((B, H), dtype)
    c0 = h0.copy() if functional.has_cell_state(cell) else None

    def step():
        y, _, _, saved = functional.layer_forward(kernels, cell, x, h0, c0, lw, True)
        functional.layer_backward(saved, dy, None, None, grads)

    return step, B * G * H * H


def _time_candidates(step, candidates, apply, rounds=ROUNDS):
    """{candidate: best seconds of `step`} with apply(candidate) in force. Rounds interleave the candidates (a
    burst of load elsewhere then hurts them alike) in an order that rotates, each candidate warmed up in the
    first round; a candidate far behind the best after the rounds is timed a few more times (most likely every
    one of its runs met a core taken away: one 2-thread call in 5 or so on a busy 2-vCPU VM)."""
    best = {c: float("inf") for c in candidates}

    def run(c, warm):
        apply(c)
        if warm:
            step()
        t0 = time.perf_counter()
        step()
        best[c] = min(best[c], time.perf_counter() - t0)

    for r in range(rounds):
        for j in range(len(candidates)):
            run(candidates[(j + r) % len(candidates)], warm=r == 0)
    for _ in range(3):
        fastest = min(best.values())
        for c in [c for c, t in best.items() if t * 0.85 > fastest]:
            run(c, warm=False)
    return best


def _pick(times, default, margin=MARGIN):
    """The fastest candidate, unless the default is within `margin` of it."""
    best = min(times, key=times.get)
    return best if times[best] * margin <= times[default] else default


def _ms(times, names):
    return {names[i]: round(t * 1e3, 3) for i, t in times.items()}


def _time_variants(dtype, variants, thread_arg):
    """(gemm variant, step variant, {gemm: ms}, {step: ms}) as indices and names: the GEMM variants timed on
    PROBE_LAYER's training step with the default per-step variant, then the per-step tile heights with the
    chosen GEMM variant."""
    names = [v["name"] for v in variants]
    cell, I, H, B, T = PROBE_LAYER
    step, _ = training_step((cell, I, H, B, T // (np.dtype(dtype).itemsize // 4)), dtype, thread_arg)
    gemm_t = _time_candidates(step, list(range(len(names))), lambda i: _C.choose_gemm_variants(dtype, i, 0))
    gemm = _pick(gemm_t, 0)
    heights = {}
    for i, v in enumerate(variants):  # one variant per tile height: only the height counts in a step's product
        if not v["tiles_outer"] and v["a_block"] == variants[0]["a_block"]:
            heights.setdefault(v["mr"], i)
    step_t = _time_candidates(step, list(heights.values()), lambda i: _C.choose_gemm_variants(dtype, gemm, i))
    return gemm, _pick(step_t, 0), _ms(gemm_t, names), _ms(step_t, names)


def _measure_crossing(thread_arg):
    """{crossing_macs, one_thread_ms, two_threads_ms}: CROSSING_LAYER's training step with its recurrences on
    two threads (crossing 1) and on one (a crossing no step reaches), and the crossing that this puts in force.

    Two threads pay a barrier crossing X a step and split the step's M multiply-adds (c seconds each): they win
    where c*M/2 + X < c*M, i.e. where M/2 > X/c, so the crossing (per thread) is X/c = M*(t2/t1 - 1/2) from the
    two step times t1 (one thread), t2 (two). The step's GEMMs run alike in both (a few percent of it at B=1),
    which errs towards one thread. Never below the default, never above CROSSING_CAP times it."""
    default = _DEFAULT_CROSSING
    step, macs = training_step(CROSSING_LAYER, np.float32, thread_arg, seed=1)
    before = _C.crossing_macs()
    try:
        t = _time_candidates(step, [1, 1 << 24], lambda m: _C.crossing_macs(m))
    finally:
        _C.crossing_macs(before)
    t1, t2 = t[1 << 24], t[1]
    measured = macs * (t2 / t1 - 0.5)
    crossing = int(min(max(measured, default), default * CROSSING_CAP))
    return {"crossing_macs": _C.crossing_macs(crossing), "one_thread_ms": round(t1 * 1e3, 3),
            "two_threads_ms": round(t2 * 1e3, 3)}


def _crossing():
    """The crossing of this process, measured at its first call where two threads may run (else the default)."""
    thread_arg = threads.kernel_arg()
    if _tune_mode() == "0" or abs(thread_arg) < 2 or threads.default_threads() < 2:
        return {"crossing_macs": _C.crossing_macs(), "one_thread_ms": None, "two_threads_ms": None}
    return _measure_crossing(thread_arg)


# ------------------------------------------------------------------------------------------ the choice
def _cache_key(out):
    return (f"{out['cpu']}|{out['isa']}|rnnfast {VERSION}|{out['dtype']}|{out['threads']} threads|"
            f"{_CACHE_TAG}")


def _from_cache(out, names, path):
    """Puts a valid cache entry into `out`; returns whether there was one."""
    entry = _read_cache(path).get(_cache_key(out)) if path else None
    if not (isinstance(entry, dict) and entry.get("gemm") in names and entry.get("step") in names):
        return False
    out.update({k: entry[k] for k in ("gemm", "step")})
    out.update({k: entry.get(k, {}) for k in ("gemm_ms", "step_ms")})
    out["source"], out["cache"] = f"cache ({path})", path
    return True


def _decide(dtype):
    """The variant choice for a dtype (from the cache, measured, forced or the defaults), put in force."""
    dtype = np.dtype(dtype)
    variants = _C.gemm_variants(dtype)
    names = [v["name"] for v in variants]
    thread_arg = threads.kernel_arg()
    mode, forced = _tune_mode(), _forced_variant(variants)
    out = {"dtype": dtype.name, "isa": _C.isa(), "cpu": cpu_model(), "threads": abs(thread_arg), "variants": names,
           "gemm": names[0], "step": names[0], "gemm_ms": {}, "step_ms": {}, "source": "defaults", "cache": None,
           "probe": "{} I={} H={} B={} T={} training step".format(*PROBE_LAYER), "library": "rnnfast",
           "library_note": _library_note()}
    path = cache_path()
    if forced is not None:
        out["gemm"] = out["step"] = names[forced]
        out["source"] = "forced (RNNFAST_GEMM_TILE)"
    elif mode == "0":
        out["source"] = "defaults (RNNFAST_TUNE=0)"
    elif mode == "fresh" or not _from_cache(out, names, path):
        t0 = time.perf_counter()
        gemm, step, out["gemm_ms"], out["step_ms"] = _time_variants(dtype, variants, thread_arg)
        out["gemm"], out["step"] = names[gemm], names[step]
        out["tuning_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        out["source"] = "measured"
        if path:
            failed = _write_cache(path, _cache_key(out), {k: out[k] for k in ("gemm", "step", "gemm_ms", "step_ms")})
            out["cache"] = path if failed is None else f"not written ({failed})"
    _C.choose_gemm_variants(dtype, names.index(out["gemm"]), names.index(out["step"]))
    return out


def _name(dtype) -> str:
    try:
        return _names[dtype]
    except KeyError:
        name = _names[dtype] = np.dtype(dtype).name
        return name
    except TypeError:  # unhashable: never on the layers' path
        return np.dtype(dtype).name


_names: dict = {}  # dtype (object or type) -> its name: np.dtype(x).name costs ~1.5 us, a layer call asks once


def ensure(dtype) -> dict:
    """The choice for a dtype (float32 or float64), made and put in force at its first call; the first call of
    the process also measures the crossing. Calls from the probe itself (this thread, while it tunes) get the
    choice in the making (None): the probe sets the variants it times."""
    key = _name(dtype)
    got = _state.get(key)
    if got is None:
        if getattr(_local, "busy", False):
            return None
        with _lock:
            got = _state.get(key)
            if got is None:
                _local.busy = True
                try:
                    if not _crossing_state:
                        _crossing_state.update(_crossing())
                    got = _state[key] = {**_decide(key), "crossing": dict(_crossing_state),
                                         "crossing_macs": _crossing_state["crossing_macs"]}
                finally:
                    _local.busy = False
    return got


# ------------------------------------------------------------------------------------------ the report
def report_lines(t) -> list:
    """What the tuner chose for one dtype (rnnfast.backend.tuning()) and what it measured, as lines."""
    how = t["source"] + (f", {t['tuning_ms']:.0f} ms" if "tuning_ms" in t else "")
    cache = "" if t["source"].startswith("cache") else f"; cache: {t['cache'] or 'none'}"
    lines = [f"GEMM ({t['dtype']}): rnnfast's GEMM, variant {t['gemm']} for the time-parallel GEMMs, {t['step']} for "
             f"the recurrences' per-step products ({how}{cache})"]
    if t["gemm_ms"]:
        lines.append(f"  timed in a {t['probe']} ({t['threads']} threads), ms: GEMM variants "
                     + ", ".join(f"{n} {v:.2f}" for n, v in t["gemm_ms"].items()) + "; per-step tile heights "
                     + ", ".join(f"{n} {v:.2f}" for n, v in t["step_ms"].items()))
    if t.get("library_note"):
        lines.append(f"  {t['library_note']}")
    c = t["crossing"]
    measured = (f"measured in a {'{} I={} H={} B={} T={}'.format(*CROSSING_LAYER)} training step: recurrences on one "
                f"thread {c['one_thread_ms']:.3f} ms, on two {c['two_threads_ms']:.3f} ms"
                if c["one_thread_ms"] is not None else "default; not measured")
    lines.append(f"Recurrences: a second thread only where a step has {t['crossing_macs']} multiply-adds per thread "
                 f"({measured})")
    return lines
