"""A full PyTorch training step with torch.nn.LSTM/GRU vs rnnfast.torch.LSTM/GRU: what a user of the drop-in
sees, adapter overhead included.

One step: embedding -> recurrent layer -> linear head over every token -> cross-entropy -> backward -> SGD step.
Both models start from the same weights and run the same thread count; each is timed in its own blocks, each
block after a pause. Run from the repository root against the installed package:

    python bench/bench_torch_step.py
    python bench/bench_torch_step.py --cases "B=64" --threads 2 --json /tmp/step.json
    python bench/bench_torch_step.py --tiny          # seconds: checks that everything runs (the smoke test)
    python bench/bench_torch_step.py --load 1        # with a busy process beside it
    python bench/bench_torch_step.py --recurrent-dropout 0.2   # + rnnfast with recurrent_dropout: its cost

bench/bench_cpu.py --sweep runs it too, after its grids.
"""
import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a file: make the `bench` package importable (last, so that the installed
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # rnnfast wins over the checkout)

from bench.load import Load  # noqa: E402
from bench.machine import cpu_model  # noqa: E402

TARGET = 1.2  # issue 22: every case at least this times torch.nn

# (cell, T, B, I, H): the recurrent shapes of bench/bench_cpu.py's cases
DEFAULT_CASES = [
    ("lstm", 100, 1, 64, 256),
    ("lstm", 100, 64, 256, 512),
    ("gru", 100, 1, 64, 256),
    ("gru", 100, 64, 256, 512),
    ("lstm", 1000, 1, 32, 64),
]
TINY_CASES = [("lstm", 5, 2, 4, 8), ("gru", 3, 1, 4, 6)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=None, help="comma-separated substrings of case names to run, e.g. 'GRU,B=1'")
    p.add_argument("--tiny", action="store_true", help="tiny cases and one short block: a check, not a benchmark")
    p.add_argument("--vocab", type=int, default=100, help="embedding rows and head classes (default 100)")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and rnnfast (default: rnnfast's)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per block (default 7, 2 with --tiny)")
    p.add_argument("--blocks", type=int, default=None, help="timed blocks, best median kept (default 3, 1 with --tiny)")
    p.add_argument("--load", type=int, default=0, metavar="N", help="N busy processes beside it (bench/load.py)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--recurrent-dropout", type=float, default=0.0, metavar="P",
                   help="also time rnnfast.torch with recurrent_dropout=P (the same step): the cost of the masks")
    return p.parse_args(argv)


def case_name(cell, T, B, I, H):
    return f"{cell.upper()} T={T} B={B} I={I} H={H}"


def time_blocks(step, warmup, repeats, blocks):
    """Seconds per call of step(): the smallest of `blocks` block medians, each block after a pause (so that the
    other library's idle OpenMP threads have stopped spinning) and `warmup` untimed calls."""
    medians = []
    for _ in range(blocks):
        time.sleep(0.2)
        for _ in range(warmup):
            step()
        gc.collect()
        gc.disable()
        try:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
        medians.append(statistics.median(times))
    return min(medians)


def build(torch, nn, rnn_cls, I, H, vocab):
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab, I)
            self.rnn = rnn_cls(I, H)
            self.head = nn.Linear(H, vocab)

        def forward(self, tokens):
            y, _ = self.rnn(self.embedding(tokens))
            return self.head(y)

    return Tagger()


def make_step(torch, model, tokens, targets, vocab):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss

    return step


def run_case(torch, rt, spec, args, warmup, repeats, blocks):
    cell, T, B, I, H = spec
    nn = torch.nn
    torch.manual_seed(0)
    ref = build(torch, nn, getattr(nn, cell.upper()), I, H, args.vocab)
    ours = build(torch, nn, getattr(rt, cell.upper()), I, H, args.vocab)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.vocab, (T, B), generator=gen)
    targets = torch.randint(0, args.vocab, (T, B), generator=gen)
    steps = {"torch.nn": make_step(torch, ref, tokens, targets, args.vocab),
             "rnnfast.torch": make_step(torch, ours, tokens, targets, args.vocab)}
    # Agreement: the first step's loss and gradients from the same weights (before timing changes them).
    losses = {k: s().item() for k, s in steps.items()}
    grad_diff = max(float((a.grad - b.grad).abs().max() / max(float(b.grad.abs().max()), 1e-30))
                    for a, b in zip(ours.parameters(), ref.parameters()))
    if args.recurrent_dropout:
        dropped = build(torch, nn, lambda i, h: getattr(rt, cell.upper())(i, h, recurrent_dropout=args.recurrent_dropout),
                        I, H, args.vocab)
        dropped.load_state_dict(ref.state_dict())
        steps["dropout"] = make_step(torch, dropped, tokens, targets, args.vocab)
    times = {k: time_blocks(s, warmup, repeats, blocks) for k, s in steps.items()}
    r = dict(case=case_name(*spec), torch_ms=1e3 * times["torch.nn"], rnnfast_ms=1e3 * times["rnnfast.torch"],
             speedup=times["torch.nn"] / times["rnnfast.torch"],
             loss_rel_diff=abs(losses["rnnfast.torch"] - losses["torch.nn"]) / abs(losses["torch.nn"]),
             grad_rel_diff=grad_diff)
    if args.recurrent_dropout:
        r.update(dropout_ms=1e3 * times["dropout"], dropout_cost=times["dropout"] / times["rnnfast.torch"] - 1)
    return r


def main(argv=None):
    args = parse_args(argv)
    with Load(args.load) as load:
        return _main(args, load)


def _main(args, load):
    import numpy
    import torch
    import rnnfast
    import rnnfast.torch as rt

    if args.threads is not None:
        rnnfast.set_num_threads(args.threads)
    threads = rnnfast.get_num_threads()
    torch.set_num_threads(threads)
    cases = TINY_CASES if args.tiny else DEFAULT_CASES
    if args.cases:
        wanted = [c.strip().lower() for c in args.cases.split(",") if c.strip()]
        cases = [c for c in cases if any(w in case_name(*c).lower() for w in wanted)]
    warmup, repeats, blocks = (1, 2, 1) if args.tiny else (2, 7, 3)
    repeats = args.repeats or repeats
    blocks = args.blocks or blocks
    try:
        loadavg = open("/proc/loadavg").read().split()[0]
    except OSError:
        loadavg = "?"
    info = dict(cpu=cpu_model(), logical_cpus=os.cpu_count(), threads=threads, python=platform.python_version(),
                numpy=numpy.__version__, torch=torch.__version__, rnnfast=rnnfast.__version__, isa=rnnfast.isa(),
                vocab=args.vocab, loadavg=loadavg, load=args.load)
    print(f"# CPU: {info['cpu']} | logical cpus: {info['logical_cpus']} | threads: {threads} | python {info['python']}"
          f" | numpy {info['numpy']} | torch {info['torch']} | rnnfast {info['rnnfast']} ({info['isa']}) | float32"
          f" | vocab {args.vocab} | loadavg {loadavg}")
    if load.description():
        print(f"# {load.description()}")
    print("# one training step: embedding -> recurrent layer -> linear head (every token) -> cross-entropy -> "
          "backward -> SGD step; best of block medians")
    print()
    print("| case | torch.nn ms/step | rnnfast.torch ms/step | speedup | loss rel diff | grad rel diff |")
    print("|---|---:|---:|---:|---:|---:|")
    results = []
    for spec in cases:
        r = run_case(torch, rt, spec, args, warmup, repeats, blocks)
        results.append(r)
        print(f"| {r['case']} | {r['torch_ms']:.3f} | {r['rnnfast_ms']:.3f} | {r['speedup']:.2f}x "
              f"| {r['loss_rel_diff']:.1e} | {r['grad_rel_diff']:.1e} |", flush=True)
    bad = [r["case"] for r in results if not (r["loss_rel_diff"] < 1e-4 and r["grad_rel_diff"] < 1e-3)]
    if args.recurrent_dropout:
        print(f"\n| case | rnnfast.torch ms/step | with recurrent_dropout={args.recurrent_dropout} | cost |")
        print("|---|---:|---:|---:|")
        for r in results:
            print(f"| {r['case']} | {r['rnnfast_ms']:.3f} | {r['dropout_ms']:.3f} | {100 * r['dropout_cost']:+.1f}% |")
    print()
    low = [r for r in results if r["speedup"] < TARGET]
    print(f"target (issue 22; information, not an exit code): every case >= {TARGET}x torch.nn: "
          + ("[met    ]" if not low else "[NOT met]") + f" min {min(r['speedup'] for r in results):.2f}x"
          if results else "no case ran")
    print("check: rnnfast.torch and torch.nn agree on the first step" if not bad
          else f"check FAILED: rnnfast.torch and torch.nn disagree on {bad}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=info, results=results), f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
