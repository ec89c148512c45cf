"""The roofline: each library's float32 GEMM rate on an n^3 product, measured in the same run as the layers.
The best of them is the rate the layers' GFLOP/s are compared with."""
import numpy as np

from .onnx_models import ENGINES, engine_versions, matmul_model
from .timing import time_runs


def gemms(n, rnnfast, torch, threads, engines=True):
    """{library: zero-argument call computing one n x n x n product}. A library missing here is simply absent;
    one that fails to set up maps to the error's text."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    calls = {"numpy.matmul": lambda: np.matmul(a, b, out=c)}
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        calls["torch.matmul"] = lambda: torch.matmul(ta, tb, out=tc)
    if rnnfast is not None:
        calls["rnnfast.matmul"] = lambda: rnnfast.matmul(a, b, out=c)
        # The GEMM a layer runs for its input projection: B packed once, as a layer caches W_ih^T.
        try:
            from _rnnfast import _C
            packed = _C.PackedWeights(np.ascontiguousarray(b.T), 0)
            calls["rnnfast packed"] = lambda: _C.gemm_packed(a, packed, c, False, rnnfast.get_num_threads())
        except (ImportError, AttributeError, TypeError) as e:
            calls["rnnfast packed"] = f"{type(e).__name__}: {e}"
    if engines:
        for name, installed in engine_versions().items():
            if installed:
                try:
                    run = ENGINES[name](matmul_model(b), threads)
                    calls[f"{name} MatMul"] = lambda run=run: run(a)
                except Exception as e:
                    calls[f"{name} MatMul"] = f"{type(e).__name__}: {e}"
    return calls


def gemm_rates(n, timing, rnnfast, torch, threads, engines=True):
    """{library: GFLOP/s, or the error's text}."""
    rates = {}
    for name, call in gemms(n, rnnfast, torch, threads, engines).items():
        if isinstance(call, str):
            rates[name] = call
            continue
        try:
            rates[name] = 2.0 * n ** 3 / time_runs(call, timing)[0] / 1e9
        except Exception as e:
            rates[name] = f"{type(e).__name__}: {e}"
    return rates


def layers_gemms(rnnfast):
    """{roofline row: which of the layers' float32 time-parallel GEMMs run on it}: the input projection on
    rnnfast's packed GEMM, dx and dW on rnnfast.matmul's (no library GEMM runs in a layer call)."""
    return {"rnnfast packed": "input projection", "rnnfast.matmul": "dx, dW"}


def roofline(rates):
    nums = [v for v in rates.values() if isinstance(v, float)]
    return max(nums) if nums else None
