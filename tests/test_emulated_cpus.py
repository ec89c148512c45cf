"""The package on processors without AVX-512 (Haswell: AVX2 and FMA) and without AVX (Nehalem), under
qemu-user: it must import, pick the widest library the emulated CPU runs, and compute every cell forward and
backward as the NumPy reference does (both dtypes, variable lengths, both directions).

Skipped where qemu-x86_64 is not installed, unless RNNFAST_REQUIRE_QEMU=1 (CI installs qemu-user and sets
it, so that the check can never pass silently).
"""
import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

# Every cell, both dtypes, one bidirectional layer with unsorted lengths (1 and T among them): each
# direction of each sequence is checked against the reference run on that sequence alone.
SCRIPT = r"""
import json, numpy as np, rnnfast, rnnfast.reference as ref
rng = np.random.default_rng(5)
T, B, I, H = 5, 3, 4, 19
lengths = np.array([3, 5, 1])
worst = {}
for cell, make in [("rnn_tanh", lambda **k: rnnfast.RNN(I, H, **k)),
                   ("rnn_relu", lambda **k: rnnfast.RNN(I, H, nonlinearity="relu", **k)),
                   ("lstm", lambda **k: rnnfast.LSTM(I, H, **k)), ("gru", lambda **k: rnnfast.GRU(I, H, **k)),
                   ("gru_original", lambda **k: rnnfast.GRU(I, H, linear_before_reset=False, **k))]:
    for dt in (np.float64, np.float32):
        m = make(bidirectional=True, dtype=dt, seed=2)
        x = rng.standard_normal((T, B, I)).astype(dt)
        dy = rng.standard_normal((T, B, 2 * H)).astype(dt)
        y, _ = m(x, lengths=lengths)[:2]
        dx = m.backward(dy)[0]
        p = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
        g = {k: v.grad.astype(np.float64) for k, v in m.named_parameters()}
        y_ref, dx_ref = np.zeros((T, B, 2 * H)), np.zeros((T, B, I))
        g_ref = {k: np.zeros_like(v) for k, v in g.items()}
        for b, L in enumerate(lengths):
            for d, sfx in enumerate(("_l0", "_l0_reverse")):
                order = slice(0, L) if d == 0 else slice(L - 1, None, -1)
                xs = x[order, b:b + 1].astype(np.float64)
                z = np.zeros((1, H))
                w = [p[n + sfx] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                ys, _, _, cache = ref.forward(cell, xs, z, z if cell == "lstm" else None, *w)
                r = ref.backward(cell, cache, dy[order, b:b + 1, d * H:(d + 1) * H].astype(np.float64))
                y_ref[order, b:b + 1, d * H:(d + 1) * H] = ys
                dx_ref[order, b:b + 1] += r["dx"]
                for n, k in (("weight_ih", "dw_ih"), ("weight_hh", "dw_hh"), ("bias_ih", "db_ih"), ("bias_hh", "db_hh")):
                    g_ref[n + sfx] += r[k]
        pairs = [(y, y_ref), (dx, dx_ref)] + [(g[k], g_ref[k]) for k in g]
        err = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) for a, b in pairs)
        key = f"{cell}/{np.dtype(dt).name}"
        worst[key] = max(worst.get(key, 0.0), err)
print(json.dumps({"isa": rnnfast.isa(), "worst": worst, "gemm": rnnfast.backend.tuning(np.float32)["gemm"]}))
"""

# What each emulated CPU must choose, and the OpenBLAS core type that CPU would pick by itself: a machine may
# set OPENBLAS_CORETYPE for its own processor (this one sets Haswell), and NumPy's OpenBLAS would then run
# AVX2 code on the emulated Nehalem and die there before rnnfast is even imported.
CPUS = {"Haswell": ("avx2", "Haswell"), "Nehalem": ("generic", "Nehalem")}


def _qemu():
    exe = shutil.which("qemu-x86_64")
    if exe is None or platform.machine() not in ("x86_64", "AMD64"):
        if os.environ.get("RNNFAST_REQUIRE_QEMU") == "1":
            pytest.fail("RNNFAST_REQUIRE_QEMU=1 but qemu-x86_64 is not installed (apt-get install qemu-user)")
        pytest.skip("qemu-x86_64 is not installed (apt-get install qemu-user)")
    return exe


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_package_runs_every_cell_on_an_emulated_cpu(cpu, tmp_path):
    qemu = _qemu()
    want_isa, coretype = CPUS[cpu]
    # Timings under emulation mean nothing (and must not reach the tuning cache, whose key names the host's CPU
    # model, which qemu-user shows): the GEMM variant is forced, the taller of the two these builds have, so that
    # the non-default tile runs on the emulated CPU, and nothing is timed (the crossing's probe steps took minutes).
    env = dict(os.environ, OPENBLAS_CORETYPE=coretype, OPENBLAS_NUM_THREADS="1", RNNFAST_GEMM_TILE="6",
               RNNFAST_TUNE="0", RNNFAST_TUNE_CACHE="")
    env.pop("RNNFAST_ISA", None)
    # sys.executable as it is (a venv's link, whose pyvenv.cfg the interpreter finds from argv[0]).
    python = sys.executable
    # cwd outside the checkout: `python -c` puts cwd first on sys.path, and the package under test is the
    # installed one, as in this process (`pytest`; from the root, the checkout's rnnfast/ would be imported).
    out = subprocess.run([qemu, "-cpu", cpu, python, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=900, cwd=tmp_path)
    stderr = "\n".join(line for line in out.stderr.splitlines() if "TCG doesn't support" not in line)
    assert out.returncode == 0, f"{cpu}: exit {out.returncode} (-4 or 132: illegal instruction)\n{stderr[-3000:]}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["isa"] == want_isa, f"on an emulated {cpu} the package chose {result['isa']}, expected {want_isa}"
    assert len(result["worst"]) == 10, result["worst"]
    assert result["gemm"] == {"avx2": "6x16", "generic": "6x8"}[want_isa], result["gemm"]
    for key, err in result["worst"].items():
        tol = 1e-10 if key.endswith("float64") else 2e-5
        assert err <= tol, f"{cpu} ({result['isa']}), {key}: relative error {err:.2e} > {tol:g}"


# The opt-in bfloat16 weights (tests/test_bf16.py) there: the mode works, by its exact emulation, as the oracle says.
@pytest.mark.parametrize("cpu", ["Haswell", "Nehalem"])
def test_bf16_mode_matches_its_oracle_on(cpu, tmp_path):
    """Under qemu-user as a processor without AVX-512 (Haswell: the avx2 build) and without AVX (Nehalem: the
    portable build): the mode works there, by the emulation, as the oracle says."""
    from test_bf16 import _ORACLE, HERE, TOL

    qemu = _qemu()
    want_isa, coretype = CPUS[cpu]
    env = dict(os.environ, OPENBLAS_CORETYPE=coretype, OPENBLAS_NUM_THREADS="1", RNNFAST_TUNE="0",
               RNNFAST_TUNE_CACHE="")  # as above: no timing under emulation, no cache entry
    env.pop("RNNFAST_ISA", None)
    out = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", _ORACLE, HERE], env=env, capture_output=True,
                         text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, f"{cpu}: exit {out.returncode}\n{out.stderr[-3000:]}"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["isa"] == want_isa and r["native"] is False, r
    assert r["worst"] <= TOL and r["far"] >= 10 * TOL, r


# bfloat16 modules of the NumPy API (tests/test_numpy_bf16.py) there: each result is the float32 layer's on the same
# values rounded once, bit for bit, and the compiled boundary conversions round as ml_dtypes does.
BF16_SCRIPT = r"""
import json, numpy as np, ml_dtypes, rnnfast
from rnnfast._core import bf16
BF = np.dtype(ml_dtypes.bfloat16)
rng = np.random.default_rng(6)
differ = 0
for name, kw in (("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "relu"})):
    ours = getattr(rnnfast, name)(4, 9, bidirectional=True, dtype="bfloat16", seed=1, **kw)
    twin = getattr(rnnfast, name)(4, 9, bidirectional=True, seed=0, **kw)
    twin.load_state_dict(ours.state_dict())
    x = rng.standard_normal((5, 3, 4)).astype(BF)
    dy = rng.standard_normal((5, 3, 18)).astype(BF)
    got, want = [], []
    for m, dt, out in ((ours, BF, got), (twin, np.float32, want)):
        y = m(x.astype(dt), lengths=[5, 2, 4])[0]
        out += [y, m.backward(dy.astype(dt))[0]] + [p.grad for p in m.parameters()]
    differ += sum(int((g.view(np.uint16) != w.astype(BF).view(np.uint16)).sum()) for g, w in zip(got, want))
v = rng.integers(0, 2**32, 100000, dtype=np.uint64).astype(np.uint32).view(np.float32)
with np.errstate(invalid="ignore"):
    differ += int((bf16.as_bfloat16(v).view(np.uint16) != v.astype(BF).view(np.uint16)).sum())
print(json.dumps({"isa": rnnfast.isa(), "differ": differ}))
"""


@pytest.mark.parametrize("cpu", ["Haswell", "Nehalem"])
def test_bf16_modules_round_the_float32_results_once_on(cpu, tmp_path):
    qemu = _qemu()
    want_isa, coretype = CPUS[cpu]
    env = dict(os.environ, OPENBLAS_CORETYPE=coretype, OPENBLAS_NUM_THREADS="1", RNNFAST_TUNE="0",
               RNNFAST_TUNE_CACHE="")  # as above: no timing under emulation, no cache entry
    env.pop("RNNFAST_ISA", None)
    out = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", BF16_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, f"{cpu}: exit {out.returncode}\n{out.stderr[-3000:]}"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r == {"isa": want_isa, "differ": 0}, r
