"""What every example shares: its command line (--quick, --seed, --plot/--no-plot) and saving a figure
when matplotlib (the `plot` extra: pip install "rnnfast[plot]") is installed."""
from __future__ import annotations

import argparse
import os

import numpy as np


def parse_args(description, argv=None, plot_name=None):
    """--quick (a few seconds, as CI runs it) or the full run; --seed; --plot FILE (default: plot_name in the
    current directory) or --no-plot; --no-progress."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small, fast run (seconds), as CI runs it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=plot_name, help="the figure's file name (PNG)")
    p.add_argument("--no-plot", action="store_true", help="write no figure")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.no_plot:
        args.plot = None
    return args


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Writes fig to path and says so."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure: {os.path.abspath(path)}")


def plot_one(path, figsize, draw, xlabel, ylabel, title):
    """One plot: draw(ax) on a figure of figsize, labelled, written to path; nothing without a path or without
    matplotlib."""
    plt = pyplot() if path else None
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=figsize)
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    save_figure(fig, path)


def report(name, metric, value, baseline_name, baseline, lower_is_better=True):
    """Prints the result line and returns whether the model beat its baseline."""
    better = value < baseline if lower_is_better else value > baseline
    print(f"{name}: {metric} {value:.4g} vs {baseline_name} {baseline:.4g} -> "
          f"{'beats' if better else 'does NOT beat'} the baseline")
    return better


def plot_forecast(path, t, truth, pred, naive, model_name, ylabel, title):
    """Truth, the model's forecast and the naive one over the test period, with their MAEs in the legend."""
    plt = pyplot()
    if plt is None or path is None:
        return
    mae = lambda p: float(np.mean(np.abs(p - truth)))  # noqa: E731
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, truth, label="observed", lw=1)
    ax.plot(t, pred, label=f"{model_name} (MAE {mae(pred):.2f})", lw=1)
    ax.plot(t, naive, label=f"naive last value (MAE {mae(naive):.2f})", lw=1, alpha=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)
