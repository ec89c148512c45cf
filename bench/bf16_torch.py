"""bench_cpu.py --dtype bfloat16: rnnfast.torch's bfloat16 modules against torch.nn's (``.to(torch.bfloat16)``), same
weights, same inputs, same run, with both libraries' float32 beside them and rnnfast's NumPy layers in bf16
(``dtype="bfloat16"``); LSTM, GRU and RNN at B = 1, 8 and 64, inference (eval, no_grad) and training (forward +
backward).

rnnfast's bf16 modules compute in float32 on bf16 values (rnnfast/torch.py); torch.nn's bf16 modules run oneDNN's
bf16 kernels where the processor has them (AVX512_BF16, AMX) and slow emulated paths where it has not, so a torch
bf16 call can take seconds: each library-case is timed with a budget (timing.time_slow after one warm-up run),
the fast ones over several runs, the five calls of a case taking turns round by round so that a busy machine's slow
spells fall on all of them alike. The bf16 outputs are compared with the float32 ones of the same library.
"""
import copy
import time

import numpy as np

from .machine import cpu_model
from .timing import time_slow

# (cell, B, I, H): the shapes of issue 19's table (T=100)
CASES = [(cell, B, I, H) for cell in ("lstm", "gru", "rnn")
         for B, I, H in ((1, 64, 256), (8, 256, 256), (64, 256, 512))]
QUICK = [(cell, B, 8, 16) for cell in ("lstm", "gru", "rnn") for B in (1, 4)]


def _call(module, x, mode, torch):
    if mode == "infer":
        def run():
            with torch.no_grad():
                return module(x)[0]
    else:
        xs = x.detach().clone().requires_grad_()
        dy = torch.ones_like(x[..., :1]).expand(*x.shape[:2], module.hidden_size).to(x.dtype)

        def run():
            for p in module.parameters():
                p.grad = None
            xs.grad = None
            y = module(xs)[0]
            y.backward(dy)
            return y
    return run


def _numpy_call(layer, x, mode):
    """The same call on rnnfast's NumPy layer: inference inside no_grad in eval mode; training forward + backward
    of ones (as _call's dy)."""
    import rnnfast

    layer.train(mode == "train")
    if mode == "infer":
        def run():
            with rnnfast.no_grad():
                return layer(x)[0]
    else:
        def run():
            layer.zero_grad()
            y = layer(x)[0]
            layer.backward(np.ones(y.shape, y.dtype))
            return y
    return run


def _take_turns(fns, quick, budget_s, rounds=3):
    """{label: seconds per call}, {label: output}: one warm-up call each, then `rounds` rounds in which the labels
    take turns, each timing the median of as many runs as fit in its share of the budget; a label's figure is its
    best round. A call slower than the budget is timed once, by its warm-up (setup costs milliseconds, such a
    call seconds)."""
    best, outs = {}, {}
    for label, fn in fns.items():
        t0 = time.perf_counter()
        outs[label] = fn()
        best[label] = time.perf_counter() - t0
    if quick:
        return best, outs
    once = dict(best)
    for _ in range(rounds):
        for label, fn in fns.items():
            if once[label] > budget_s:
                continue
            share = budget_s / rounds
            med, _, outs[label] = time_slow(fn, max(1, min(15, int(share / max(once[label], 1e-4)))), share)
            best[label] = min(best[label], med)
    return best, outs


def run(args):
    import torch

    import rnnfast
    import rnnfast.torch as rt

    threads = args.threads or rnnfast.get_num_threads()
    rnnfast.set_num_threads(threads)
    torch.set_num_threads(threads)
    T = 5 if args.quick else 100
    budget = 0.5 if args.quick else 5.0
    flags = set(open("/proc/cpuinfo").read().split()) if not args.quick else set()
    native = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none (no avx512_bf16, no amx_bf16)"
    print(f"# bfloat16: rnnfast.torch vs torch.nn, T={T}, {threads} threads, best of a time budget per case")
    print(f"# CPU: {cpu_model()} | bf16 instructions: {native} | torch {torch.__version__} | rnnfast "
          f"{rnnfast.__version__} ({rnnfast.isa()})")
    print("# OpenVINO bf16 inference: not timed (its CPU plugin runs bf16 only where the processor has AVX512_BF16 "
          "or AMX; elsewhere it runs float32, which the float32 tables already time)")
    print("\n| case | mode | torch fp32 ms | rnnfast fp32 ms | torch bf16 ms | rnnfast bf16 ms | rnnfast bf16 / "
          "torch bf16 | rnnfast bf16 / own fp32 | bf16 vs fp32 (rnnfast) | NumPy API bf16 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    failures = 0
    for cell, B, I, H in (QUICK if args.quick else CASES):
        name = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
        torch.manual_seed(args.seed)
        ref = getattr(torch.nn, name)(I, H)
        ours = getattr(rt, name)(I, H)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I)
        layer = getattr(rnnfast, name)(I, H, dtype="bfloat16")
        layer.load_state_dict(ref.state_dict())  # (rounded to bf16, as .to(torch.bfloat16) rounds them)
        x_bf16 = x.numpy().astype(layer.dtype)
        # One module per library and dtype (torch's .to() converts in place), so that the calls can take turns.
        copies = {(lib, dtype): copy.deepcopy(module).to(dtype) for lib, module in (("torch", ref), ("rnnfast", ours))
                  for dtype in (torch.float32, torch.bfloat16)}
        for mode in [m for m in args.modes]:
            fns = {f"{lib} {'fp32' if dtype == torch.float32 else 'bf16'}":
                   _call(m.train(mode == "train"), x.to(dtype), mode, torch) for (lib, dtype), m in copies.items()}
            fns["NumPy API bf16"] = _numpy_call(layer, x_bf16, mode)
            row, outs = _take_turns(fns, args.quick, budget)
            numpy_s, numpy_y = row.pop("NumPy API bf16"), outs.pop("NumPy API bf16")
            if not np.array_equal(numpy_y.astype(np.float32), outs["rnnfast bf16"].detach().float().numpy()):
                failures += 1  # the same values and the same arithmetic: the same bits (tests/test_numpy_bf16.py)
            diff = float((outs["rnnfast bf16"].detach().float() - outs["rnnfast fp32"].detach()).abs().max()
                         / outs["rnnfast fp32"].detach().abs().max().clamp_min(1e-30))
            if not np.isfinite(diff):
                failures += 1
            ms = {k: 1e3 * v for k, v in row.items()}
            print(f"| {name} T={T} B={B} I={I} H={H} | {mode} | {ms['torch fp32']:.2f} | {ms['rnnfast fp32']:.2f} | "
                  f"{ms['torch bf16']:.2f} | {ms['rnnfast bf16']:.2f} | "
                  f"{row['torch bf16'] / row['rnnfast bf16']:.2f}x | "
                  f"{row['rnnfast fp32'] / row['rnnfast bf16']:.2f}x | {diff:.1e} | {1e3 * numpy_s:.2f} |", flush=True)
    return 1 if failures else 0
