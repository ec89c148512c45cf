"""The bench's printed tables, from result rows: one row per (case, mode) holding each library's time
(`{lib}_s`, or None and `{lib}_err`)."""
import statistics
import sys

LIBRARIES = ("rnnfast", "torch", "reference", "onnxruntime", "openvino")
ENGINES = ("torch", "onnxruntime", "openvino")  # what rnnfast's inference is compared with
NOT_RUN = ("skipped", "n/a", "not installed", "float32 only")


def fmt_ms(s):
    return f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.2f}" if s < 1 else f"{s * 1e3:.1f}"


def cell_text(s, err, width=48):
    if s is not None:
        return fmt_ms(s)
    if err in NOT_RUN or err is None:
        return err or ""
    msg = ("ERR " + err).replace("|", "/").replace("\n", " ")
    return msg if len(msg) <= width else msg[: width - 3] + "..."


def speedup(row, others):
    """(time of the fastest of `others` / rnnfast's time, that library), or (None, None)."""
    rs = row.get("rnnfast_s")
    times = [(row[f"{lib}_s"], lib) for lib in others if row.get(f"{lib}_s")]
    if not rs or not times:
        return None, None
    best, lib = min(times)
    return best / rs, lib


def progress(row, libs):
    parts = [f"{lib} {cell_text(row.get(lib + '_s'), row.get(lib + '_err'), 30)}" for lib in libs]
    print(f"  .. {row['case']} [{row['mode']}]: " + ", ".join(parts), file=sys.stderr, flush=True)


def markdown(head, rows, left=2):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(head) - left)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main_table(rows, roof):
    out = []
    for r in rows:
        rs = r["rnnfast_s"]
        us = gfs = pct = ""
        if rs is not None:
            us_v = rs / r["T"] * 1e6
            us = f"{us_v:.2f}" if us_v < 10 else f"{us_v:.1f}"
            gf = r["flops"] / rs / 1e9
            gfs = f"{gf:.1f}"
            pct = f"{100.0 * gf / roof:.1f}%" if roof else "n/a"
        ratio, _ = speedup(r, ("torch",))
        out.append([r["case"], r["mode"], cell_text(rs, r["rnnfast_err"]), us, gfs, pct,
                    cell_text(r["torch_s"], r["torch_err"]), f"{ratio:.2f}x" if ratio else "",
                    cell_text(r["reference_s"], r["reference_err"])])
    return markdown(["case", "mode", "rnnfast ms", "us/step", "GFLOP/s", "% of roofline", "torch ms",
                     "speedup vs torch", "reference ms"], out)


def engine_table(rows):
    """Inference: rnnfast against torch.nn, ONNX Runtime and OpenVINO, and its ratio to the fastest of them."""
    out = []
    for r in rows:
        if r["mode"] != "infer":
            continue
        ratio, lib = speedup(r, ENGINES)
        out.append([r["case"], cell_text(r["rnnfast_s"], r["rnnfast_err"], 24)]
                   + [cell_text(r[f"{e}_s"], r[f"{e}_err"], 24) for e in ENGINES]
                   + [lib or "", f"{ratio:.2f}x" if ratio else ""])
    head = ["case", "rnnfast ms", "torch ms", "onnxruntime ms", "openvino ms", "fastest other", "rnnfast vs it"]
    return markdown(head, out, left=1) if out else ""


def bf16_table(rows):
    """Inference with rnnfast's opt-in bfloat16 recurrent weights next to its float32 run and torch's: times,
    speed-ups and the output's difference from rnnfast's float32 y, max|a-b| / max(1, max|b|)."""
    out = []
    for r in rows:
        if r["mode"] != "infer" or (r.get("rnnfast_bf16_s") is None and r.get("rnnfast_bf16_err") in NOT_RUN):
            continue
        s16, s32, st = r.get("rnnfast_bf16_s"), r.get("rnnfast_s"), r.get("torch_s")
        diff = r.get("rnnfast_bf16_diff")
        out.append([r["case"], cell_text(s16, r.get("rnnfast_bf16_err"), 24), cell_text(s32, r["rnnfast_err"], 24),
                    f"{s32 / s16:.2f}x" if s16 and s32 else "", cell_text(st, r["torch_err"], 24),
                    f"{st / s16:.2f}x" if s16 and st else "",
                    diff if isinstance(diff, str) else f"{diff:.1e}" if diff is not None else ""])
    head = ["case", "rnnfast-bf16 ms", "rnnfast float32 ms", "vs float32", "torch float32 ms", "vs torch",
            "y vs float32 (max rel diff)"]
    return markdown(head, out, left=1) if out else ""


def ratio_grid(rows, cell, others, modes):
    """A sweep grid for one cell: a line per H, a column per (B, mode) of the full-size cases, each the ratio
    (fastest of `others`) / rnnfast; and the ratios themselves."""
    return value_grid(rows, cell, modes, lambda r: speedup(r, others)[0], "{:.2f}")


def roofline_grid(rows, cell, lib, roof, modes):
    """The same grid of `lib`'s GFLOP/s as a percentage of the run's roofline: where torch already runs near
    it, no float32 kernel can be much faster than torch."""
    def pct(r):
        s = r.get(f"{lib}_s")
        return 100.0 * r["flops"] / s / 1e9 / roof if s and roof else None
    return value_grid(rows, cell, modes, pct, "{:.0f}%")


def value_grid(rows, cell, modes, value, fmt):
    """A line per H, a column per (B, mode) of the full-size cases, each value(row) formatted with fmt; and the
    values themselves."""
    by = {(r["case_obj"].original.H, r["case_obj"].original.B, r["mode"]): r for r in rows if r["cell"] == cell}
    Hs = sorted({k[0] for k in by})
    Bs = sorted({k[1] for k in by})
    head = ["H"] + [f"B={B} {'inf' if m == 'infer' else m}" for B in Bs for m in modes]
    lines, values = [], []
    for H in Hs:
        line = [str(H)]
        for B in Bs:
            for m in modes:
                v = value(by[(H, B, m)]) if (H, B, m) in by else None
                line.append(fmt.format(v) if v else "-")
                if v:
                    values.append(v)
        lines.append(line)
    return markdown(head, lines, left=1), values


def summary(ratios):
    if not ratios:
        return "no ratios measured"
    return f"median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f} ({len(ratios)} cells)"


def agreement(checks, tol):
    """Lines: per (case, mode), every comparison made, with * above tol."""
    grouped = {}
    for name, mode, what, d in checks:
        ds = d if isinstance(d, str) else f"{d:.1e}"
        flag = "*" if (isinstance(d, str) or d > tol) else ""
        grouped.setdefault((name, mode), []).append(f"{what} {ds}{flag}")
    return [f"  {name} [{mode}]: " + "; ".join(items) for (name, mode), items in grouped.items()]
