"""The speed targets (issue 8's headline and engine targets; issue 22's sweep targets, on the package's own choices),
and whether this run meets each. They inform; they set no exit code (a shared or unfamiliar machine can miss them
for reasons that are not the code's)."""
import statistics

from .cases import case
from .report import ENGINES, speedup

# (case of the default set, mode, minimum ratio of torch's time to rnnfast's)
HEADLINE = [
    (case("lstm", 100, 1, 64, 256), "infer", 2.5),
    (case("lstm", 1000, 1, 32, 64), "infer", 4.0),
    (case("lstm", 1000, 1, 32, 64), "train", 4.0),
    (case("lstm", 100, 64, 256, 512), "train", 1.3),
    (case("gru", 100, 64, 256, 512), "train", 2.0),
    (case("rnn", 100, 64, 256, 512, "tanh"), "train", 2.0),
]
SWEEP_EVERY, SWEEP_MEDIAN = 1.0, 1.5  # issue 22: no cell slower than torch.nn, the median cell 1.5x


def verdict(ratio, target, against):
    if ratio is None:
        return f"[n/a    ] not measured against {against}"
    return f"[{'met' if ratio >= target else 'NOT met':7s}] {ratio:.2f}x {against} (target {target:g}x)"


def engine_target(row):
    """Inference against the fastest engine: at least 1.5x at batch <= 8, at least 1.0x beyond."""
    return 1.5 if row["case_obj"].original.B <= 8 else 1.0


def headline_lines(rows):
    """One line per headline target and per inference case, for the rows this run measured."""
    by = {(r["case_obj"].original, r["mode"]): r for r in rows}
    lines = []
    for c, mode, target in HEADLINE:
        r = by.get((c, mode))
        if r is not None:
            lines.append(f"  {c.name} {mode}: " + verdict(speedup(r, ("torch",))[0], target, "torch"))
    for r in rows:
        if r["mode"] == "infer":
            ratio, lib = speedup(r, ENGINES)
            lines.append(f"  {r['case_obj'].original.name} infer: "
                         + verdict(ratio, engine_target(r), f"the fastest of torch/ORT/OpenVINO ({lib or '-'})"))
    return lines


def sweep_lines(label, ratios):
    """The sweep's targets against torch: every cell at least SWEEP_EVERY, the median cell at least SWEEP_MEDIAN."""
    if not ratios:
        return []
    worst, median = min(ratios), statistics.median(ratios)
    return [f"  {label} every cell >= {SWEEP_EVERY}x torch: "
            + ("[met    ]" if worst >= SWEEP_EVERY else "[NOT met]") + f" min {worst:.2f}",
            f"  {label} median cell >= {SWEEP_MEDIAN}x torch: "
            + ("[met    ]" if median >= SWEEP_MEDIAN else "[NOT met]") + f" median {median:.2f}"]


def sweep_engine_line(rows):
    """How many of the sweep's inference cells meet the target against the fastest engine."""
    judged = [(speedup(r, ENGINES)[0], engine_target(r)) for r in rows if r["mode"] == "infer"]
    judged = [(ratio, target) for ratio, target in judged if ratio is not None]
    if not judged:
        return []
    met = sum(ratio >= target for ratio, target in judged)
    return ["  inference >= the fastest of torch/ORT/OpenVINO (1.5x at B<=8, 1.0x beyond): "
            + ("[met    ]" if met == len(judged) else "[NOT met]") + f" {met} of {len(judged)} cells meet it"]
