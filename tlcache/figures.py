"""A run's figures (PNG, matplotlib on the Agg backend): the confusion matrix, the reliability diagram and the
regularisation sweep's curve, drawn from the numbers a report holds (see :mod:`tlcache.report`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tlcache.report import Calibration, RunReport, Sweep


def render_figures(report: RunReport, paths: dict[str, Path]) -> dict[str, Path]:
    """Draw the figures that apply to ``report`` at the ``paths`` given for them: ``confusion`` (the confusion
    matrix), ``reliability`` (the reliability diagram) and ``sweep`` (the regularisation curve). Returns those
    drawn."""
    drawn = {}
    if "metrics" in report:
        drawn["confusion"] = paths["confusion"]
        plot_confusion(report["metrics"]["confusion_matrix"], report["classes"], paths["confusion"])
    if report.get("calibration"):
        drawn["reliability"] = paths["reliability"]
        plot_reliability(report["calibration"], paths["reliability"])
    if report.get("sweep"):
        drawn["sweep"] = paths["sweep"]
        plot_sweep(report["sweep"], report["head"], paths["sweep"])
    return drawn


# Margins for figures whose labels are known in advance: a fixed layout costs no extra drawing pass (tight_layout
# draws the figure once more to measure it; 0.1 s a figure, the larger part of a report's time on cached features).
FIXED_MARGINS = {"left": 0.14, "right": 0.97, "top": 0.91, "bottom": 0.13}


def _save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG. A character the font lacks (in a class name, say) is drawn as a box, without
    matplotlib's warning for each."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.savefig(path, dpi=100)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(calibration: Calibration, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, label in (("before", "before calibration"), ("after", "after calibration"), ("head", "head")):
        if name in calibration:
            bins = calibration[name]["bins"]
            ax.plot(
                [b["confidence"] for b in bins],
                [b["accuracy"] for b in bins],
                marker="o",
                label=f"{label} (ECE {calibration[name]['ece']:.3f})",
            )
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability diagram (test set)")
    ax.legend(loc="upper left")
    fig.subplots_adjust(**FIXED_MARGINS)
    _save(fig, path)
    plt.close(fig)


def plot_sweep(sweep: Sweep, head: str, path: Path) -> None:
    plt = pyplot()
    values = [v for v, _ in sweep["curve"]]
    scores = [s for _, s in sweep["curve"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(values, scores, marker="o")
    ax.axvline(sweep["best"], color="grey", linestyle="--", linewidth=1, label=f"chosen: {sweep['best']:g}")
    if len(set(values)) == 1:  # a grid of one value (--grid): a window around it, not matplotlib's warning
        only = values[0]
        ax.set_xlim(*((only / 3, only * 3) if sweep["param"] != "n_neighbors" else (only - 1, only + 1)))
    if sweep["param"] != "n_neighbors":
        from matplotlib.ticker import FuncFormatter, NullLocator

        ax.set_xscale("log")
        # Plain labels (0.001, not mathtext's 10^-3) and no minor ticks: half the figure's drawing time.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(sweep["param"])
    ax.set_ylabel(f"validation {sweep.get('score', 'accuracy')}")
    ax.set_title(f"{head}: {sweep['param']} sweep ({sweep['selection']})")
    ax.legend()
    fig.subplots_adjust(**FIXED_MARGINS)
    _save(fig, path)
    plt.close(fig)


# Beyond these many classes the confusion matrix is drawn without a count in each cell, and beyond LABELLED_CLASSES
# without the class names: a new user's 1500 classes (a label column of ids) made 2.25 million texts, over 23 GB.
COUNTED_CLASSES = 30
LABELLED_CLASSES = 60


def plot_confusion(matrix: list[list[int]], class_names: Sequence[str], path: Path) -> None:
    """The counts on a colour scale, true classes down and predicted across. Margins from the longest class name
    (cut at 24 characters) instead of a layout pass, which drew the figure twice (a fifth of the time)."""
    plt = pyplot()
    counts = np.asarray(matrix)
    k = len(counts)
    if k > LABELLED_CLASSES:
        class_names = [""] * k
    names = [name if len(name) <= 24 else name[:23] + "\u2026" for name in map(str, class_names)]
    names = [name.replace("$", r"\$") for name in names]  # a literal dollar: matplotlib reads $...$ as maths
    rotate = k > 4 or max(map(len, names)) > 8
    size = min(max(4.0, 0.5 * k + 2), 32.0)
    label_inches = 0.085 * max(map(len, names))  # 10-point text, about 6 points a character
    left = 0.5 + label_inches
    bottom = 0.5 + (0.72 * label_inches if rotate else 0.2)
    fig, ax = plt.subplots(figsize=(size + left, size + bottom))
    fig.subplots_adjust(
        left=(left + 0.1) / (size + left),
        bottom=(bottom + 0.1) / (size + bottom),
        right=1 - 0.2 / (size + left),
        top=1 - 0.4 / (size + bottom),
    )
    ax.imshow(counts, cmap="viridis")
    middle = (counts.max() + counts.min()) / 2
    for i in range(k if k <= COUNTED_CLASSES else 0):
        for j in range(k):
            colour = "black" if counts[i, j] > middle else "white"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour)
    if k <= LABELLED_CLASSES:
        ax.set_xticks(range(k), names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_yticks(range(k), names)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    _save(fig, path)
    plt.close(fig)
