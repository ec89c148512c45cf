"""bfloat16 training against float32 training on three classic tasks, with rnnfast.torch's modules: the same model,
seed, data and steps, in float32; after ``model.to(torch.bfloat16)`` (bf16 parameters, gradients and optimizer
state, as torch trains a bf16 module; the kernels compute in float32 on the bf16 values); and as a float32 model
under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (mixed precision: float32 parameters, gradients and optimizer
state; the LSTM, the RNN and the Linear head compute on bf16-rounded values there, the GRU stays float32 as
torch.nn's GRU does).

    adding     the adding problem (T=50): two marked numbers among noise, predict their sum; LSTM(64); test MSE
               (a model that ignores the marks scores about 0.17)
    forecast   a noisy two-tone series, the next value from the last 40; GRU(64); test MSE against the noise floor
    classify   does a sequence of 30 bits hold more ones than zeros; RNN(64, tanh); test accuracy

Run from the repository root:  python bench/bf16_training_accuracy.py [--quick]
"""
import argparse
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import cpu_model  # noqa: E402


def tasks(torch, quick):
    """{name: (cell, make_batch(generator, n) -> (x (T, n, I), target), metric name, lower is better)}"""
    def adding(gen, n):
        T = 10 if quick else 50
        values = torch.rand(T, n, 1, generator=gen)
        marks = torch.zeros(T, n, 1)
        first = torch.randint(0, T // 2, (n,), generator=gen)
        second = torch.randint(T // 2, T, (n,), generator=gen)
        marks[first, torch.arange(n)] = 1
        marks[second, torch.arange(n)] = 1
        return torch.cat([values, marks], dim=2), (values * marks).sum(dim=0)

    def forecast(gen, n):
        T = 10 if quick else 40
        phase = torch.rand(1, n, 1, generator=gen) * 6.28
        t = torch.arange(T + 1, dtype=torch.float32)[:, None, None]
        series = torch.sin(0.3 * t + phase) + 0.5 * torch.sin(0.11 * t + 2 * phase)
        series = series + 0.05 * torch.randn(T + 1, n, 1, generator=gen)
        return series[:-1], series[-1]

    def classify(gen, n):
        T = 9 if quick else 31
        bits = torch.randint(0, 2, (T, n, 1), generator=gen).float()
        return bits * 2 - 1, (bits.sum(dim=0) > T / 2).float()

    return {"adding": ("LSTM", adding, "test MSE"), "forecast": ("GRU", forecast, "test MSE"),
            "classify": ("RNN", classify, "test accuracy")}


def train(torch, rt, cell, make, metric, mode, steps, seed):
    """mode: "float32", "bfloat16" (a bf16 module) or "autocast" (a float32 module under CPU autocast to bf16)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x0, _ = make(gen, 2)
    rnn = getattr(rt, cell)(x0.shape[2], 64)
    head = torch.nn.Linear(64, 1)
    dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
    model = torch.nn.ModuleDict({"rnn": rnn, "head": head}).to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def predict(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            y = model["rnn"](x.to(dtype))[0]
            return model["head"](y[-1]).float()

    classify = metric == "test accuracy"
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits if classify else torch.nn.functional.mse_loss
    for _ in range(steps):
        x, target = make(gen, 64)
        opt.zero_grad()
        loss_fn(predict(x), target).backward()
        opt.step()
    with torch.no_grad():
        x, target = make(torch.Generator().manual_seed(seed + 1), 2048)
        out = predict(x)
        if classify:
            return float(((out > 0).float() == target).float().mean())
        return float(torch.nn.functional.mse_loss(out, target))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 1000, 3 with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="runs per task and dtype (default 3, 1 with --quick)")
    args = p.parse_args(argv)
    import torch

    import rnnfast.torch as rt
    steps = args.steps or (3 if args.quick else 1000)
    seeds = args.seeds or (1 if args.quick else 3)
    print(f"# bf16 vs float32 training, rnnfast.torch, {steps} Adam steps of batch 64, mean of {seeds} seeds")
    print(f"# CPU: {cpu_model()} | torch {torch.__version__}")
    print("\n| task | model | metric | float32 | bfloat16 | bf16 - fp32 | autocast bf16 | autocast - fp32 | "
          "seconds fp32 / bf16 / autocast |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, (cell, make, metric) in tasks(torch, args.quick).items():
        scores, seconds = {}, {}
        for mode in ("float32", "bfloat16", "autocast"):
            t0 = time.perf_counter()
            scores[mode] = sum(train(torch, rt, cell, make, metric, mode, steps, s) for s in range(seeds)) / seeds
            seconds[mode] = time.perf_counter() - t0
        f32, b16, auto = scores["float32"], scores["bfloat16"], scores["autocast"]
        print(f"| {name} | {cell}(64) | {metric} | {f32:.4f} | {b16:.4f} | {b16 - f32:+.4f} | {auto:.4f} | "
              f"{auto - f32:+.4f} | {seconds['float32']:.1f} / {seconds['bfloat16']:.1f} / {seconds['autocast']:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
