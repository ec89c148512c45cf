"""CPU benchmark: rnnfast against torch.nn, ONNX Runtime, OpenVINO and the NumPy reference, same weights, same
inputs, same thread count, each library timed in its own block.

    python bench/bench_cpu.py                         # the default cases, both modes
    python -m bench.bench_cpu --cases "T=1000"        # a subset (also --cells, --H, --B)
    python bench/bench_cpu.py --sweep                 # the LSTM/GRU grid as ratio tables, then the torch step
    python bench/bench_cpu.py --quick                 # a smoke test on tiny sizes, a few seconds
    python bench/bench_cpu.py --threads 1 --no-reference --json /tmp/bench.json
    python bench/bench_cpu.py --modes infer --bf16    # also the opt-in bfloat16 weights, in a table of their own
    python bench/bench_cpu.py --load 1 --modes train  # with a busy process beside the timed libraries
    python bench/bench_cpu.py --dtype bfloat16        # bf16 modules: rnnfast.torch vs torch.nn, fp32 beside

Modes:
  infer  eval() forward (torch: module.eval() under torch.no_grad(); ONNX Runtime and OpenVINO: their native
         LSTM/GRU/RNN operator, float32, outputs checked against torch before they are timed).
  train  train() forward + backward with a fixed random dy (torch: y.backward(dy), x.requires_grad).
         Gradients are zeroed before every run, outside the timed region.

FLOPs: forward = 2*T*B*G*H*(I+H) (G = 4 LSTM, 3 GRU, 1 RNN); train = 3 x forward.
"% of roofline" = case GFLOP/s / the best float32 GEMM rate measured at the start (numpy.matmul, torch.matmul,
rnnfast.matmul, rnnfast's packed GEMM, ONNX Runtime's and OpenVINO's MatMul, where present).
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # run as a file: make the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP_HELP = ("the grid of issues 8 and 22 instead of the default cases: LSTM and GRU, H in 64..1024, B in 1, 8, 64, T=100, "
              "I=H, both modes; rnnfast, torch and (inference) the engines, 3 blocks of 5 runs after 1 warm-up, "
              "no reference, no variable lengths. Prints torch/rnnfast ratio grids with their median and min, then "
              "runs bench/bench_torch_step.py's whole training steps. The package's own choices (printed in the "
              "header). About 10-15 minutes on 2 cores (the bench prints an estimate after the roofline)")


def int_list(text):
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true", help=SWEEP_HELP)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: every case shrunk to tiny sizes, one block of one run, a 256^3 roofline; "
                        "the ratios mean nothing")
    p.add_argument("--cases", default=None,
                   help="comma-separated filters; a case runs if any is a substring of its name (case-insensitive), "
                        "e.g. 'T=1000' or 'GRU,RNN'")
    p.add_argument("--cells", default=None, help="comma-separated subset of lstm,gru,rnn")
    p.add_argument("--H", type=int_list, default=None, help="comma-separated hidden sizes to keep, e.g. 64,256")
    p.add_argument("--B", type=int_list, default=None, help="comma-separated batch sizes to keep, e.g. 1,8")
    p.add_argument("--modes", default="infer,train", help="comma-separated subset of infer,train")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per block (default 7; 5 with --sweep; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs before each block (default 2; 1 with --sweep or --quick)")
    p.add_argument("--ref-repeats", type=int, default=None,
                   help="timed runs of the NumPy reference (default: up to 3, 1 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every library (default: rnnfast's default, else all cores)")
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32",
                   help="the engines run float32 only; bfloat16: rnnfast.torch's bf16 modules against torch.nn's, "
                        "with both libraries' float32 beside them (bench/bf16_torch.py; needs torch)")
    p.add_argument("--no-reference", action="store_true", help="skip the NumPy reference")
    p.add_argument("--no-torch", action="store_true", help="skip torch.nn")
    p.add_argument("--no-rnnfast", action="store_true", help="skip rnnfast layers (weights are drawn with numpy)")
    p.add_argument("--no-engines", action="store_true", help="skip ONNX Runtime and OpenVINO")
    p.add_argument("--no-roofline", action="store_true", help="skip the GEMM roofline")
    p.add_argument("--no-lengths", action="store_true", help="skip the variable-length comparison")
    p.add_argument("--bf16", action="store_true",
                   help="also time rnnfast with bfloat16 recurrent weights (set_inference_weights('bfloat16'); "
                        "inference, float32 layers): an opt-in reduced-precision mode, shown in a table of its own "
                        "with its speed-up and its difference from rnnfast's float32 output, never in the float32 "
                        "tables, ratios, targets or agreement checks")
    p.add_argument("--load", type=int, default=0, metavar="N",
                   help="run N busy processes (spin loops) beside the timed libraries for the whole run: how each "
                        "library holds up on a machine doing other work (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    a = p.parse_args(argv)
    if a.repeats is None:
        a.repeats = 1 if a.quick else 5 if a.sweep else 7
    if a.warmup is None:
        a.warmup = 1 if a.quick or a.sweep else 2
    if a.ref_repeats is None:
        a.ref_repeats = 1 if a.quick else 3
    a.repeats, a.warmup, a.ref_repeats = max(1, a.repeats), max(0, a.warmup), max(1, a.ref_repeats)
    if a.sweep:
        a.no_reference = a.no_lengths = True
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in a.modes:
        if m not in ("infer", "train"):
            p.error(f"--modes: unknown mode {m!r} (expected infer and/or train)")
    a.cells = [c.strip().lower() for c in a.cells.split(",")] if a.cells else None
    for c in a.cells or []:
        if c not in ("lstm", "gru", "rnn"):
            p.error(f"--cells: unknown cell {c!r} (expected lstm, gru and/or rnn)")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be >= 1")
    if a.load < 0:
        p.error("--load must be >= 0")
    if a.bf16 and (a.dtype != "float32" or "infer" not in a.modes or a.no_rnnfast):
        p.error("--bf16 times rnnfast's float32 layers in inference: it needs --dtype float32, the infer mode "
                "and rnnfast")
    return a


def set_blas_threads(args):
    """numpy.matmul (the roofline's OpenBLAS row and the NumPy reference) runs on OpenBLAS, which reads its
    thread count once, when numpy loads it: set it before numpy is imported, if it is not yet."""
    if args.threads is not None and "numpy" not in sys.modules:
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
        return None
    if args.threads is not None:
        return "numpy was loaded before the bench: OpenBLAS keeps its own thread count"
    return None


def main(argv=None):
    args = parse_args(argv)
    blas_note = set_blas_threads(args)
    if args.dtype == "bfloat16":
        from bench.bf16_torch import run as run_bf16
        return run_bf16(args)
    from bench.driver import run  # imports numpy: after set_blas_threads
    return run(args, blas_note)


if __name__ == "__main__":
    sys.exit(main())
