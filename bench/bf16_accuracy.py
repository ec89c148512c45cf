"""How far rnnfast's opt-in bfloat16 recurrent weights (set_inference_weights("bfloat16")) move a layer's
outputs from its float32 outputs, and how that grows with the sequence length.

    python bench/bf16_accuracy.py             # LSTM and GRU, H = 256 and 1024, T up to 1000, I=64, B=8
    python bench/bf16_accuracy.py --quick     # tiny sizes (a smoke test)

Weights as torch initialises them (uniform in +-1/sqrt(H)), inputs N(0, 1), h0 = c0 = 0, inference. For
each layer it runs the float32 mode and the bfloat16 mode on the same inputs and prints, over the outputs y of
the steps up to T: the largest absolute difference, the same relative to the largest |y|, and the RMS
difference; and for scale the float32 layer's own error against the float64 NumPy reference.
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # run as a file: make the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np


def measure(rnnfast, ref, cell, H, I, B, T, seed):
    """(lengths, rows): per length t in `lengths`, the differences over y[:t]."""
    rng = np.random.default_rng(seed)
    m = (rnnfast.LSTM if cell == "lstm" else rnnfast.GRU)(I, H, seed=seed).eval()
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    y32 = m(x)[0].astype(np.float64)
    y16 = m.set_inference_weights("bfloat16")(x)[0].astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    z = np.zeros((B, H))
    y64 = ref.forward(cell, x.astype(np.float64), z, z if cell == "lstm" else None, p["weight_ih_l0"],
                      p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])[0]
    rows = []
    for t in sorted({v for v in (1, 10, 100, 1000, T) if v <= T}):
        d = np.abs(y16[:t] - y32[:t])
        scale = float(np.abs(y32[:t]).max())
        rows.append((t, float(d.max()), float(d.max()) / scale, float(np.sqrt(np.mean(d ** 2))),
                     float(np.abs(y32[:t] - y64[:t]).max())))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from bench.machine import import_rnnfast

    rnnfast, ref, err = import_rnnfast()
    if rnnfast is None:
        print(f"rnnfast unavailable: {err}", file=sys.stderr)
        return 2

    sizes = [(16, 8, 2, 20)] if a.quick else [(256, 64, 8, 1000), (1024, 64, 8, 1000)]
    print(f"# rnnfast {rnnfast.__version__}, kernels {rnnfast.isa()}, bfloat16 products "
          f"{'on AVX512_BF16' if rnnfast.backend.bf16_native() else 'emulated'}; inputs N(0,1), torch's init, "
          "h0 = c0 = 0, inference")
    print("| cell | H | steps | max abs diff | max abs diff / max abs y | RMS diff | float32 vs float64 max abs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cell in ("lstm", "gru"):
        for H, I, B, T in sizes:
            for t, mx, rel, rms, f32 in measure(rnnfast, ref, cell, H, I, B, T, a.seed):
                print(f"| {cell.upper()} | {H} | {t} | {mx:.2e} | {rel:.2e} | {rms:.2e} | {f32:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
