"""The compiled GEMM variants (csrc/cpu/gemm.h: tile height, L2 row block, loop order) give the same bits.

The tuner may pick any of them, per process and per machine; results must not depend on that choice. Every
variant of every instruction-set build this processor runs is checked on odd shapes (rows that leave a short
last tile, columns and depths that are not multiples of the panel width or of the depth block), packed and
unpacked, one and two threads, against each other (bit for bit) and against NumPy (to tolerance).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import skip_unless_cpu_runs  # noqa: E402

from _rnnfast import _C

ROWS = (1, 2, 3, 13, 37, 64, 100)
# (N, K): N not a multiple of any panel width, K past the 256-deep block of the unpacked GEMM.
COLS_DEPTHS = ((45, 67), (33, 300), (100, 513))

SCRIPT = r"""
import json, sys
import numpy as np
from _rnnfast import _C

ROWS, COLS_DEPTHS = json.loads(sys.argv[1])
rng = np.random.default_rng(7)
report = {"isa": _C.isa(), "variants": {}, "differ": [], "worst": 0.0}
for dt in (np.float32, np.float64):
    names = [v["name"] for v in _C.gemm_variants(dt)]
    report["variants"][np.dtype(dt).name] = names
    for M in ROWS:
        for N, K in COLS_DEPTHS:
            a = rng.standard_normal((M, K)).astype(dt)
            w = rng.standard_normal((N, K)).astype(dt)
            c0 = rng.standard_normal((M, N)).astype(dt)
            packed = _C.PackedWeights(w, 0)
            ref = a.astype(np.float64) @ w.T.astype(np.float64)
            for kind in ("packed", "gemm", "gemm_acc", "gemm_at"):
                first = None
                for v in range(len(names)):
                    for threads in (1, -2):
                        c = np.full((M, N), np.nan, dt)
                        if kind == "packed":
                            _C.gemm_packed(a, packed, c, False, threads, v)
                        elif kind == "gemm":
                            _C.gemm(a, w.T, c, False, threads, v)
                        elif kind == "gemm_acc":
                            c[...] = c0
                            _C.gemm(a, w.T, c, True, threads, v)
                        else:  # A read through its transpose, as the dW products do
                            _C.gemm(np.ascontiguousarray(a.T).T, w.T, c, False, threads, v)
                        want = ref + c0 if kind == "gemm_acc" else ref
                        err = float(np.abs(c - want).max() / np.abs(want).max())
                        report["worst"] = max(report["worst"], err if np.isfinite(err) else float("inf"))
                        if first is None:
                            first = c
                        elif not np.array_equal(c, first):
                            report["differ"].append([np.dtype(dt).name, kind, M, N, K, names[v], threads])
print(json.dumps(report))
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_variant_gives_the_same_bits(isa, tmp_path):
    skip_unless_cpu_runs(isa)
    env = dict(os.environ, RNNFAST_ISA=isa, RNNFAST_TUNE="0")
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([ROWS, COLS_DEPTHS])], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["isa"] == isa
    # More than one tile height compiled, or there is nothing to choose from.
    for dtype, names in r["variants"].items():
        assert len({n.split("/")[0] for n in names}) >= 2, f"{isa} {dtype}: {names}"
    assert not r["differ"], f"{isa}: variants disagree (dtype, kind, M, N, K, variant, threads): {r['differ'][:10]}"
    assert r["worst"] <= 1e-5, f"{isa}: normwise relative error {r['worst']:.2e} against NumPy"


def test_variant_argument_is_checked():
    a = np.ones((3, 4), np.float32)
    c = np.empty((3, 5), np.float32)
    n = len(_C.gemm_variants(np.float32))
    with pytest.raises(ValueError, match="variant"):
        _C.gemm(a, np.ones((4, 5), np.float32), c, False, 1, n)
    with pytest.raises(ValueError, match="variant"):
        _C.gemm_packed(a, _C.PackedWeights(np.ones((5, 4), np.float32), 0), c, False, 1, -2)
    with pytest.raises(ValueError):
        _C.choose_gemm_variants(np.float32, n, 0)
    with pytest.raises(TypeError, match="dtype"):
        _C.gemm_variants(np.int32)
