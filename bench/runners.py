"""One runner per library: it builds the layer from the case's weights and hands back, for a mode, the call to
time and how to read its result. Every runner is timed by the same function (timing.py)."""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .cases import GATES
from .onnx_models import ENGINES, recurrent_model


@dataclass
class Job:
    fn: Callable  # the timed call
    setup: Optional[Callable] = None  # before every call, untimed
    # fn()'s last value -> (y for infer / dx for train as an ndarray, {parameter: grad} or None)
    result: Callable = lambda out: (np.array(out, copy=True), None)
    slow: bool = False  # the NumPy reference: a few runs, no warm-up (timing.time_slow)


class EngineMismatch(RuntimeError):
    """An inference engine's output differs from torch's: its model is wrong, and its time would mean nothing."""


def max_rel_diff(a, b):
    """max|a - b| / max(1, max|b|), or a text naming the shape mismatch."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


def numpy_weights(case, dtype, seed):
    """torch-style uniform(-1/sqrt(H), 1/sqrt(H)) weights, for runs without rnnfast."""
    rng = np.random.default_rng(seed)
    GH, k = GATES[case.cell] * case.H, 1.0 / np.sqrt(case.H)
    shapes = {"weight_ih_l0": (GH, case.I), "weight_hh_l0": (GH, case.H), "bias_ih_l0": (GH,), "bias_hh_l0": (GH,)}
    return {n: rng.uniform(-k, k, size=s).astype(dtype) for n, s in shapes.items()}


class RnnfastRunner:
    name = "rnnfast"

    def __init__(self, rnnfast, case, dtype, seed):
        kw = {"dtype": dtype, "seed": seed}
        if case.cell == "lstm":
            self.model = rnnfast.LSTM(case.I, case.H, **kw)
        elif case.cell == "gru":
            self.model = rnnfast.GRU(case.I, case.H, **kw)
        else:
            self.model = rnnfast.RNN(case.I, case.H, nonlinearity=case.nonlin, **kw)

    def state(self):
        """The weights rnnfast drew, which every other library gets."""
        return {k: np.array(v, copy=True) for k, v in self.model.state_dict().items()}

    def job(self, mode, x, dy):
        m = self.model
        if mode == "infer":
            m.eval()
            return Job(lambda: m(x)[0])
        m.train()
        grads = lambda: {n: np.array(p.grad, copy=True) for n, p in m.named_parameters()
                         if getattr(p, "grad", None) is not None}
        return Job(lambda: (m(x), m.backward(dy))[1][0], setup=m.zero_grad,
                   result=lambda dx: (np.array(dx, copy=True), grads()))


class RnnfastBf16Runner(RnnfastRunner):
    """rnnfast with bfloat16 recurrent weights (opt-in, reduced precision): the same weights as the float32
    runner (same seed), inference only."""

    name = "rnnfast_bf16"

    def __init__(self, rnnfast, case, dtype, seed):
        super().__init__(rnnfast, case, dtype, seed)
        self.model.set_inference_weights("bfloat16")

    def job(self, mode, x, dy):
        return super().job(mode, x, dy) if mode == "infer" else None


class TorchRunner:
    name = "torch"

    def __init__(self, torch, case, dtype, state):
        self.torch = torch
        tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]
        if case.cell == "lstm":
            m = torch.nn.LSTM(case.I, case.H, dtype=tdtype)
        elif case.cell == "gru":
            m = torch.nn.GRU(case.I, case.H, dtype=tdtype)
        else:
            m = torch.nn.RNN(case.I, case.H, nonlinearity=case.nonlin, dtype=tdtype)
        sd = {}
        for k, v in m.state_dict().items():
            arr = np.ascontiguousarray(state[k], dtype=dtype)
            if arr.shape != tuple(v.shape):
                raise ValueError(f"{k}: rnnfast shape {arr.shape} != torch shape {tuple(v.shape)}")
            sd[k] = torch.from_numpy(arr.copy())
        m.load_state_dict(sd, strict=True)
        self.model = m

    def forward(self, x):
        """y for x, without autograd: the oracle the inference engines are checked against."""
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(x))[0].numpy().copy()

    def job(self, mode, x, dy):
        torch, m = self.torch, self.model
        if mode == "infer":
            m.eval()
            tx = torch.from_numpy(x)

            def fn():
                with torch.no_grad():
                    return m(tx)[0]
            return Job(fn, result=lambda y: (y.numpy().copy(), None))
        m.train()
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        tdy = torch.from_numpy(dy)

        def setup():
            tx.grad = None
            m.zero_grad(set_to_none=True)

        def fn():
            m(tx)[0].backward(tdy)
            return tx.grad
        grads = lambda: {n: p.grad.numpy().copy() for n, p in m.named_parameters() if p.grad is not None}
        return Job(fn, setup=setup, result=lambda dx: (dx.numpy().copy(), grads()))


class ReferenceRunner:
    name = "reference"

    def __init__(self, ref, case, dtype, state):
        self.ref, self.cell = ref, case.reference_cell
        self.h0 = np.zeros((case.B, case.H), dtype=dtype)
        self.c0 = self.h0 if case.cell == "lstm" else None
        self.w = tuple(state[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))

    def forward(self, x):
        return self.ref.forward(self.cell, x, self.h0, self.c0, *self.w)[0]

    def job(self, mode, x, dy):
        ref, cell = self.ref, self.cell
        if mode == "infer":
            return Job(lambda: self.forward(x), slow=True)
        fn = lambda: ref.backward(cell, ref.forward(cell, x, self.h0, self.c0, *self.w)[3], dy)
        return Job(fn, result=lambda g: (np.array(g["dx"], copy=True), None), slow=True)


class EngineRunner:
    """ONNX Runtime or OpenVINO on the ONNX model of the layer: inference only, float32 only."""

    def __init__(self, name, case, dtype, state, threads, oracle, tol):
        """oracle: (its name, fn(x) -> y), the library the engine's output is checked against."""
        if np.dtype(dtype) != np.float32:
            raise NotImplementedError("float32 only")
        self.name, self.case, self.tol = name, case, tol
        self.oracle_name, self.oracle = oracle
        self.run = ENGINES[name](recurrent_model(case.cell, case.nonlin, state), threads)

    def job(self, mode, x, dy):
        if mode != "infer":
            return None
        shape = (self.case.T, self.case.B, self.case.H)
        # Checked before it is timed: a wrong model would make its time meaningless.
        got = np.array(self.run(x), copy=True).reshape(shape)
        d = max_rel_diff(got, self.oracle(x))
        if isinstance(d, str) or d > self.tol:
            raise EngineMismatch(f"{self.name} output differs from {self.oracle_name}'s "
                                 f"(max |a-b| / max(1, max|b|) = {d}, tolerance {self.tol:g}): "
                                 "the ONNX model builder is wrong")
        return Job(lambda: self.run(x), result=lambda y: (np.array(y, copy=True).reshape(shape), None))
