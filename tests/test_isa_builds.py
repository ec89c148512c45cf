"""Every instruction-set build of the CPU kernels (AVX-512, AVX2, generic) against the NumPy reference.

The build is chosen once per process, so each is checked in a subprocess with RNNFAST_ISA set.
"""
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import ISA_FLAGS, cpu_flags, skip_unless_cpu_runs  # noqa: E402

import rnnfast

SCRIPT = r"""
import json, numpy as np, rnnfast, rnnfast.reference as ref
rnnfast.set_num_threads(2, exact=True)
rng = np.random.default_rng(3)
worst = {}
for cls, cell, kw in [(rnnfast.RNN, "rnn_tanh", {}), (rnnfast.RNN, "rnn_relu", {"nonlinearity": "relu"}),
                      (rnnfast.LSTM, "lstm", {}), (rnnfast.GRU, "gru", {})]:
    for dt, (T, B, I, H) in [(np.float64, (6, 13, 5, 37)), (np.float32, (6, 13, 5, 37)), (np.float64, (4, 1, 3, 70))]:
        m = cls(I, H, dtype=dt, seed=1, **kw)
        x = rng.standard_normal((T, B, I)).astype(dt)
        dy = rng.standard_normal((T, B, H)).astype(dt)
        p = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
        z = np.zeros((B, H))
        y_r, _, _, cache = ref.forward(cell, x.astype(np.float64), z, z if cell == "lstm" else None,
                                       p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
        g = ref.backward(cell, cache, dy.astype(np.float64))
        y = m(x)[0]
        dx = m.backward(dy)[0]
        grads = dict(m.named_parameters())
        pairs = [(y, y_r), (dx, g["dx"]), (grads["weight_hh_l0"].grad, g["dw_hh"]), (grads["bias_ih_l0"].grad, g["db_ih"])]
        err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in pairs)
        key = f"{cell}/{np.dtype(dt).name}"
        worst[key] = max(worst.get(key, 0.0), err)
print(json.dumps({"isa": rnnfast.isa(), "worst": worst}))
"""


def run_on_build(isa, script, tmp_path):
    """The JSON that `script` prints last, run in a process forced onto the `isa` build (checked)."""
    skip_unless_cpu_runs(isa)
    env = dict(os.environ, RNNFAST_ISA=isa)
    # cwd outside the checkout: `python -c` puts cwd first on sys.path, and the package under test is the
    # installed one, as in this process (`pytest`; from the root, the checkout's rnnfast/ would be imported).
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["isa"] == isa, f"asked for the {isa} build, got {result['isa']}"
    return result


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_isa_build_matches_reference(isa, tmp_path):
    result = run_on_build(isa, SCRIPT, tmp_path)
    for key, err in result["worst"].items():
        tol = 1e-10 if key.endswith("float64") else 1e-5
        assert err <= tol, f"{isa} build, {key}: normwise relative error {err:.2e} > {tol:g}"


# The vector sigmoid/tanh/exp (csrc/cpu/simd.h: clamps by max/min whose operand order lets a NaN through,
# 2^n by vscalef on AVX-512) at the values where a shortcut would break: +-inf must saturate as in the
# reference (1/(1 + exp(-x)) and tanh of numpy), NaN must reach every later output of its row and no other.
# H=37: two or more whole vectors and a scalar tail on every build.
SPECIAL = r"""
import json, numpy as np, rnnfast, rnnfast.reference as ref
rnnfast.set_num_threads(2, exact=True)
out = {}
for cls, cell, kw in [(rnnfast.RNN, "rnn_tanh", {}), (rnnfast.RNN, "rnn_relu", {"nonlinearity": "relu"}),
                      (rnnfast.LSTM, "lstm", {}), (rnnfast.GRU, "gru", {})]:
    for dt in (np.float32, np.float64):
        T, B, I, H = 5, 4, 3, 37
        m = cls(I, H, dtype=dt, seed=2, **kw)
        x = np.random.default_rng(4).standard_normal((T, B, I)).astype(dt)
        x[1, 0, 2], x[2, 1, 0], x[0, 2, 1] = np.inf, -np.inf, np.nan
        x[3, 3, :] = 1e30  # finite, far past where exp overflows
        p = m.state_dict()
        z = np.zeros((B, H), dt)
        with np.errstate(all="ignore"):
            y_r = ref.forward(cell, x, z, z if cell == "lstm" else None, p["weight_ih_l0"], p["weight_hh_l0"],
                              p["bias_ih_l0"], p["bias_hh_l0"])[0]
        y = m(x)[0]
        same_nan = bool((np.isnan(y) == np.isnan(y_r)).all())
        inf = np.isinf(y_r)  # a relu RNN's h can overflow: the same infinities, sign included
        same_inf = bool((np.isinf(y) == inf).all() and (y[inf] == y_r[inf]).all())
        ok = np.isfinite(y_r)
        err = float((np.abs(y[ok] - y_r[ok]) / np.maximum(1, np.abs(y_r[ok]))).max()) if ok.any() else 0.0
        out[f"{cell}/{np.dtype(dt).name}"] = {"same_nan": same_nan, "same_inf": same_inf,
                                               "nan": int(np.isnan(y_r).sum()), "finite": int(ok.sum()), "err": err}
print(json.dumps({"isa": rnnfast.isa(), "cases": out}))
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_isa_build_saturates_at_inf_and_propagates_nan_as_reference(isa, tmp_path):
    result = run_on_build(isa, SPECIAL, tmp_path)
    for key, r in result["cases"].items():
        assert r["nan"] > 0 and r["finite"] > 0, f"{key}: the case must have NaN and finite outputs: {r}"
        assert r["same_nan"], f"{isa} build, {key}: NaN where the reference has none, or the reverse: {r}"
        assert r["same_inf"], f"{isa} build, {key}: infinities differ from the reference's: {r}"
        tol = 1e-10 if key.endswith("float64") else 1e-5
        assert r["err"] <= tol, f"{isa} build, {key}: error {r['err']:.2e} > {tol:g} on finite outputs (|diff| / max(1, |ref|))"


def test_default_build_is_the_widest_this_cpu_runs():
    flags = cpu_flags()
    if ISA_FLAGS["avx512"] <= flags:
        assert rnnfast.isa() == "avx512"
    elif ISA_FLAGS["avx2"] <= flags:
        assert rnnfast.isa() == "avx2"
    else:
        assert rnnfast.isa() == "generic"
