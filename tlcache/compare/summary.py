"""The report of a comparison: a row per (method, shots) with its spread over seeds and an interval over test
items, the paired verdicts of tlcache.compare.stats, and two plots (the learning curve, accuracy against time).
Written as compare.json, compare.md, learning_curve.png and accuracy_time.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tlcache.compare.stats import recommend
from tlcache.report import seed_spread

JSON_FILE, MARKDOWN_FILE = "compare.json", "compare.md"
FIGURES = {"learning_curve": "learning_curve.png", "accuracy_time": "accuracy_time.png"}
BOOTSTRAP_RESAMPLES = 2000
LEVEL = 0.95
# Fewer validation items than this for a fine-tune's choice of epoch (one item: over 10 points) is said in compare.md.
FEW_VALIDATION_ITEMS = 10


def summarise(
    cells: list[dict],
    classes: list[str],
    test: str,
    backbone: str,
    all_per_class: float,
    embed_seconds: float,
    majority: dict | None = None,
) -> dict:
    """The comparison in numbers: one row per (method, shots), the recommendation, what "all" stands for, what
    embedding the frozen heads' features cost (once, through the cache; 0 when they were cached before), and the
    floor every method must clear: ``majority``, the test accuracy of always answering the training items' most
    frequent class ({"class", "accuracy"})."""
    groups: dict = {}
    for cell in cells:
        groups.setdefault((cell["method"], cell["shots"]), []).append(cell)
    rows = [_row(method, shots, group) for (method, shots), group in groups.items()]
    return {
        "backbone": backbone,
        "classes": classes,
        "test": test,
        "n_test": len(cells[0]["correct"]) if cells else 0,
        "all_per_class": all_per_class,
        "embed_seconds": embed_seconds,
        "majority": majority,
        "rows": rows,
        "recommendation": recommend(cells),
    }


def _row(method: str, shots, group: list[dict]) -> dict:
    accuracies = [cell["accuracy"] for cell in group]
    low, high = _interval(np.array([cell["correct"] for cell in group], dtype=bool))
    return {
        "method": method,
        "kind": group[0]["kind"],
        "shots": shots,
        "seeds": [cell["seed"] for cell in group],
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": seed_spread(accuracies),
        "interval": [low, high],
        "macro_f1": float(np.mean([cell["macro_f1"] for cell in group])),
        "seconds": float(np.mean([cell["seconds"] for cell in group])),
        "cached": all(cell["cached"] for cell in group),
        # With candidate features (--layers): how many of the group's cells chose each, on validation items.
        "features": _counts([cell["features"] for cell in group if cell.get("features")]),
        # Fine-tunes whose validation accuracy was best at their last epoch: still rising when they stopped.
        "still_rising": sum(1 for cell in group if "best_epoch" in cell and cell["best_epoch"] == cell["epochs_run"]),
        # The fewest validation items a fine-tune of the group chose its epoch on (None: frozen, or cells saved
        # before it was kept).
        "val_items": min((cell["val_items"] for cell in group if cell.get("val_items")), default=None),
    }


def still_rising(summary: dict) -> str:
    """The fine-tunes whose validation accuracy was best at their last epoch, as words ("ft at 8 per class (2 of
    3 seeds), ..."); empty when there are none. compare.md and the command's last lines say the same."""
    return ", ".join(
        f"{row['method']} at {_shots_words(row['shots'])} ({row['still_rising']} of {len(row['seeds'])} seeds)"
        for row in summary["rows"]
        if row.get("still_rising")
    )


def few_validation_items(summary: dict) -> str | None:
    """A sentence on the fine-tunes that chose their epoch on fewer than FEW_VALIDATION_ITEMS validation items
    (4 items per class hold out one each), or None."""
    few = {}
    for row in summary["rows"]:
        if row.get("val_items") and row["val_items"] < FEW_VALIDATION_ITEMS:
            few.setdefault(row["shots"], []).append(row)
    if not few:
        return None
    counts = ", ".join(
        f"{_shots_words(shots)} per class on {min(row['val_items'] for row in rows)}" for shots, rows in few.items()
    )
    return (
        f"Few validation items: the fine-tunes chose their epoch at {counts} validation items, where one item is "
        f"{100 / max(row['val_items'] for rows in few.values() for row in rows):.0f} points or more; their epochs "
        "are nearly guesses, and their accuracy there may be far from what more data would give."
    )


def below_the_floor(summary: dict) -> str | None:
    """A sentence on the methods whose mean test accuracy is no better than always answering the most frequent
    class (a new user's fine-tune at 16 per class scored 0.18 against a floor of 0.20, unremarked), or None."""
    majority = summary.get("majority")
    if not majority:
        return None
    under = [row for row in summary["rows"] if row["accuracy"] <= majority["accuracy"]]
    if not under:
        return None

    def at(row: dict) -> str:
        size = "all items" if row["shots"] == "all" else f"{row['shots']} per class"
        return f"{row['method']} at {size} ({row['accuracy']:.4f})"

    named = ", ".join(map(at, under))
    return (
        f"No better than the floor ({majority['accuracy']:.4f}, always {majority['class']!r}): {named}. These did "
        "not learn the task at that size; a fine-tune may need more epochs, another learning rate or more items."
    )


def _counts(names: list[str]) -> dict[str, int] | None:
    return {name: names.count(name) for name in dict.fromkeys(names)} or None


def _interval(correct: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean accuracy over seeds, resampling test items (the same items
    score every seed, so they are resampled together). ``correct`` is (seeds, items)."""
    rng = np.random.default_rng(seed)
    n = correct.shape[1]
    means = [correct[:, rng.integers(0, n, n)].mean() for _ in range(BOOTSTRAP_RESAMPLES)]
    tail = 50 * (1 - LEVEL)
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def write_compare_report(summary: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / JSON_FILE, "markdown": out_dir / MARKDOWN_FILE}
    paths.update({name: out_dir / file for name, file in FIGURES.items()})
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(summary), encoding="utf-8")
    plot_learning_curve(summary, paths["learning_curve"])
    plot_accuracy_time(summary, paths["accuracy_time"])
    return paths


def _shots_words(shots) -> str:
    return "all" if shots == "all" else str(shots)


def render_markdown(summary: dict) -> str:
    advice = summary["recommendation"]
    lines = [
        f"# Frozen or fine-tune? {summary['backbone']} on {len(summary['classes'])} classes",
        "",
        f"**{advice['headline']}**" + (f". {advice['crossing']}." if advice["crossing"] else "."),
        "",
        f"Test items: {summary['test']} ({summary['n_test']} items, the same for every cell). Every choice (a "
        "head's regularisation, a fine-tune's epoch, the best method of each kind) was made on validation items "
        "carved from the training items. "
        f"Frozen heads fit on features embedded once for all their cells ({summary['embed_seconds']:.1f} s this "
        "run, through the cache); their time per run is the fit alone."
        + (
            f" The floor: always answering the training items' most frequent class, {majority['class']!r}, scores "
            f"{majority['accuracy']:.4f} on the test items."
            if (majority := summary.get("majority"))
            else ""
        ),
        "",
        "| method | kind | items per class | accuracy | ± std over seeds | 95% interval (test items) | macro F1 | "
        "s per run | cached |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for row in summary["rows"]:
        low, high = row["interval"]
        # One seed has no spread to show: a 0 would read as a measured stability.
        spread = f"{row['accuracy_std']:.4f}" if len(row["seeds"]) > 1 else "one seed"
        lines.append(
            f"| {row['method']} | {row['kind']} | {_shots_words(row['shots'])} | {row['accuracy']:.4f} | "
            f"{spread} | {low:.4f}-{high:.4f} | {row['macro_f1']:.4f} | {row['seconds']:.2f} | "
            f"{'features' if row['cached'] else 'no'} |"
        )
    rising = still_rising(summary)
    if rising:
        lines += [
            "",
            f"Still improving: these fine-tunes were best on their validation items at their last epoch: {rising}. "
            "More `--epochs` may raise them; the figures here are of the fine-tunes as they ran.",
        ]
    if few := few_validation_items(summary):
        lines += ["", few]
    if floor := below_the_floor(summary):
        lines += ["", floor]
    budget = summary.get("budget") or {}
    if budget.get("left_out"):
        names = ", ".join(f"{c['method']} at {_shots_words(c['shots'])}, seed {c['seed']}" for c in budget["left_out"])
        lines += ["", f"Left out to stay within the budget of {budget['seconds']:.0f} s: {names}."]
    chosen = [row for row in summary["rows"] if row.get("features")]
    if chosen:
        lines += ["", "## Features the frozen cells chose", ""]
        lines += [
            "Each cell chose among the candidates (`--layers`) by the head's accuracy on validation items held out "
            "from its own training items; cells per choice:",
            "",
        ]
        lines += ["| method | items per class | chosen |", "|---|---:|---|"]
        for row in chosen:
            picks = ", ".join(f"{name} ({count})" for name, count in row["features"].items())
            lines.append(f"| {row['method']} | {_shots_words(row['shots'])} | {picks} |")
    lines += ["", "## The paired tests", "", f"Rule: {advice['rule']} (alpha {advice['alpha']:g})", ""]
    on_test = [_shots_words(row["shots"]) for row in advice["by_shots"] if row.get("chosen_on") == "test"]
    if on_test:
        lines += [
            f"At {', '.join(on_test)} the best of each kind was chosen on its mean test accuracy instead: fine-tune "
            "cells saved before cells kept their validation accuracy. Run the comparison into a new --out to "
            "choose on validation items.",
            "",
        ]
    return "\n".join(lines + paired_table(advice)) + "\n"


def paired_table(advice: dict) -> list[str]:
    """The recommendation's paired tests as a Markdown table, a row per shot count."""
    header = "| items per class | best frozen | best fine-tune | fine-tune - frozen (points) | per seed: points (p) |"
    lines = [header + " verdict |"]
    lines += ["|---:|---|---|---:|---|---|"]
    for row in advice["by_shots"]:
        difference = "" if row["difference_points"] is None else f"{row['difference_points']:+.1f}"
        p_values = ", ".join(f"{d:+.1f} ({p:.3g})" for d, p in zip(row["seed_points"], row["p_values"]))
        lines.append(
            f"| {_shots_words(row['shots'])} | {row['best_frozen'] or ''} | {row['best_finetune'] or ''} | "
            f"{difference} | {p_values} | {row['verdict']} |"
        )
    return lines


def _x(shots, all_per_class: float) -> float:
    return all_per_class if shots == "all" else float(shots)


def plot_learning_curve(summary: dict, path: Path) -> None:
    """Accuracy against labelled items per class (log axis), one line per method with its interval as a band."""
    from tlcache.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    every = summary["all_per_class"]
    for method in dict.fromkeys(row["method"] for row in summary["rows"]):
        rows = sorted((r for r in summary["rows"] if r["method"] == method), key=lambda r: _x(r["shots"], every))
        x = [_x(r["shots"], every) for r in rows]
        style = "-" if rows[0]["kind"] == "frozen" else "--"
        (line,) = ax.plot(x, [r["accuracy"] for r in rows], style, marker="o", label=f"{method} ({rows[0]['kind']})")
        low, high = [r["interval"][0] for r in rows], [r["interval"][1] for r in rows]
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    shots = sorted({_x(r["shots"], every) for r in summary["rows"]})
    ax.set_xticks(shots, [f"all ({x:g})" if x == every else f"{x:g}" for x in shots], minor=False)
    ax.minorticks_off()
    ax.set_xlabel("labelled items per class")
    ax.set_ylabel("test accuracy (mean over seeds, 95% band)")
    ax.set_title("learning curves")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy_time(summary: dict, path: Path) -> None:
    """Accuracy against wall time per run (log axis): a line per method through its shot counts, in the legend,
    each point labelled with its count only (a label of method and count per point overlapped from 5 methods)."""
    from tlcache.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    every = summary["all_per_class"]
    for method in dict.fromkeys(row["method"] for row in summary["rows"]):
        rows = sorted((r for r in summary["rows"] if r["method"] == method), key=lambda r: _x(r["shots"], every))
        frozen = rows[0]["kind"] == "frozen"
        seconds, accuracy = [r["seconds"] for r in rows], [r["accuracy"] for r in rows]
        label = f"{method} ({rows[0]['kind']})"
        ax.plot(seconds, accuracy, "-" if frozen else "--", marker="o" if frozen else "s", label=label, alpha=0.8)
        for row in rows:
            where = (row["seconds"], row["accuracy"])
            ax.annotate(_shots_words(row["shots"]), where, xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.legend(fontsize="small", title="method (points: items per class)", title_fontsize="small")
    ax.set_xlabel("wall time per run, s (frozen: fitting on cached features)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("accuracy against time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
