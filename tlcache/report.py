"""Metrics for a fitted head and the files that show them: report.json, report.md, confusion.png."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix (rows: true)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def calibration_summary(probabilities: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Expected calibration error of the top-label confidence, and the reliability table behind it.

    ``probabilities`` columns are the classes 0..K-1; bins split confidence into ``n_bins`` equal widths.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        if not inside.any():
            continue
        gap = abs(correct[inside].mean() - confidence[inside].mean())
        ece += inside.mean() * gap
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": int(inside.sum()),
                "confidence": float(confidence[inside].mean()),
                "accuracy": float(correct[inside].mean()),
            }
        )
    return {"ece": float(ece), "bins": bins}


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the report as JSON (for programs), Markdown (for people) and PNG figures: the confusion matrix, the
    reliability diagram, and the regularisation curve of the sweep."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    paths.update(render_figures(report, out_dir))
    return paths


def render_figures(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    paths = {}
    if "metrics" in report:
        paths["confusion"] = out_dir / "confusion.png"
        plot_confusion(report["metrics"]["confusion_matrix"], report["classes"], paths["confusion"])
    if report.get("calibration"):
        paths["reliability"] = out_dir / "reliability.png"
        plot_reliability(report["calibration"], paths["reliability"])
    if report.get("sweep"):
        paths["sweep"] = out_dir / "sweep.png"
        plot_sweep(report["sweep"], report["head"], paths["sweep"])
    return paths


def rerender(run_dir: str | Path) -> dict[str, Path]:
    """Write report.md and the figures of a run folder again from its report.json (`tlcache report`)."""
    from tlcache.errors import UserError

    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no report.json; pass a run folder written by `tlcache fit-head`")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fit the head again") from None
    markdown = Path(run_dir) / "report.md"
    markdown.write_text(render_markdown(report), encoding="utf-8")
    return {"markdown": markdown, **render_figures(report, Path(run_dir))}


def render_markdown(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    classes = report["classes"]
    tune = report.get("finetune")
    if tune:
        title = f"{report['backbone']} fine-tuned ({tune['strategy']})"
    else:
        title = f"{report['head']} head on {report['backbone']} features"
    lines = [
        f"# {title}",
        "",
        "| | |",
        "|---|---|",
        f"| accuracy | {metrics['accuracy']:.4f} |",
        f"| macro F1 | {metrics['macro_f1']:.4f} |",
        f"| train rows | {report['n_train']} |",
        f"| test rows | {report['n_test']} ({report['test']}) |",
        f"| fit time | {report['fit_seconds']:.2f} s |",
        f"| seed | {report['seed']} |",
        f"| store | `{report['store']}` |" if "store" in report else f"| source | `{report['source']}` |",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in metrics["per_class"]:
        lines.append(
            f"| {row['class']} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |"
        )
    lines += ["", "## Confusion matrix (rows: true class, columns: predicted)", ""]
    lines.append("| | " + " | ".join(classes) + " |")
    lines.append("|---|" + "---:|" * len(classes))
    for name, row in zip(classes, metrics["confusion_matrix"]):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    lines += _markdown_extras(report)
    return "\n".join(lines) + "\n"


def _markdown_extras(report: dict[str, Any]) -> list[str]:
    lines = []
    tune = report.get("finetune")
    if tune:
        config = tune["config"]
        lines += [
            "",
            f"## Fine-tuning: {tune['strategy']}{', LP-FT' if tune['lp_ft'] else ''}, best epoch "
            f"{tune['best_epoch']} of {tune['epochs_run']} restored",
            "",
            f"lr {config['lr']:g} (body top), head lr {config['head_lr']:g}, layer decay {config['layer_decay']:g}, "
            f"head-only epochs {config['head_epochs']}, warmup {config['warmup']:g}, weight decay "
            f"{config['weight_decay']:g}, clip {config['clip']:g}, batch {config['batch_size']} x "
            f"{config['accumulate']}, {tune['precision']} on {tune['device']}, {report['n_val']} validation items.",
            "",
            "| epoch | stage | train loss | val loss | val accuracy |",
            "|---:|---|---:|---:|---:|",
        ]
        lines += [
            f"| {h['epoch']} | {h['stage']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['val_accuracy']:.4f} |"
            for h in tune["history"]
        ]
    few = report.get("few_shot")
    if few:
        acc, f1 = few["accuracy"], few["macro_f1"]
        lines += [
            "",
            f"## Few-shot: {few['shots']} per class, {few['repeats']} repeats",
            "",
            f"Accuracy {acc['mean']:.4f} ± {acc['std']:.4f}, macro F1 {f1['mean']:.4f} ± {f1['std']:.4f} (mean ± "
            f"standard deviation over repeats; the tables above show repeat 1). Seeds: {few['seeds']}.",
        ]
    sweep = report.get("sweep")
    if sweep:
        lines += [
            "",
            f"## {sweep['param']} sweep, chosen on {sweep['selection']} "
            f"({'lowest' if sweep.get('score') == 'log-loss' else 'highest'} {sweep.get('score', 'accuracy')}): "
            f"{sweep['best']:g}",
            "",
            f"| {sweep['param']} | validation {sweep.get('score', 'accuracy')} |",
            "|---:|---:|",
        ]
        lines += [f"| {value:g} | {score:.4f} |" for value, score in sweep["curve"]]
    calibration = report.get("calibration")
    if calibration:
        lines += ["", "## Calibration (test set, top-label expected calibration error)", ""]
        if "before" in calibration:
            lines.append(
                f"{calibration['method']} calibration: ECE {calibration['before']['ece']:.4f} before, "
                f"{calibration['after']['ece']:.4f} after."
            )
        else:
            lines.append(f"ECE {calibration['head']['ece']:.4f} (calibrate with --calibrate sigmoid|isotonic).")
    groups = report.get("groups")
    if groups:
        lines += [
            "",
            f"## Per group ({groups['column']})",
            "",
            f"Worst-group accuracy {groups['worst_accuracy']:.4f} ({groups['worst_group']}); gap to the best group "
            f"{groups['worst_group_gap']:.4f}.",
            "",
            "| group | accuracy | macro F1 | support |",
            "|---|---:|---:|---:|",
        ]
        for g in groups["per_group"]:
            lines.append(f"| {g['group']} | {g['accuracy']:.4f} | {g['macro_f1']:.4f} | {g['support']} |")
    return lines


def group_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: list[str], column: str) -> dict[str, Any]:
    """Accuracy and macro F1 per group, and the worst group's gap to the best: the check for uneven quality."""
    from sklearn.metrics import f1_score

    groups = np.asarray(groups, dtype=object)
    per_group = []
    for name in sorted(set(groups.tolist())):
        inside = groups == name
        per_group.append(
            {
                "group": name,
                "accuracy": float(np.mean(y_true[inside] == y_pred[inside])),
                "macro_f1": float(f1_score(y_true[inside], y_pred[inside], average="macro", zero_division=0)),
                "support": int(inside.sum()),
            }
        )
    worst = min(per_group, key=lambda g: g["accuracy"])
    best = max(per_group, key=lambda g: g["accuracy"])
    return {
        "column": column,
        "per_group": per_group,
        "worst_group": worst["group"],
        "worst_accuracy": worst["accuracy"],
        "worst_group_gap": best["accuracy"] - worst["accuracy"],
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(calibration: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(sweep: dict[str, Any], head: str, path: Path) -> None:
    plt = _pyplot()
    values = [v for v, _ in sweep["curve"]]
    scores = [s for _, s in sweep["curve"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(values, scores, marker="o")
    ax.axvline(sweep["best"], color="grey", linestyle="--", linewidth=1, label=f"chosen: {sweep['best']:g}")
    if sweep["param"] != "n_neighbors":
        ax.set_xscale("log")
    ax.set_xlabel(sweep["param"])
    ax.set_ylabel(f"validation {sweep.get('score', 'accuracy')}")
    ax.set_title(f"{head}: {sweep['param']} sweep ({sweep['selection']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], class_names: Sequence[str], path: Path) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()

    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names)).plot(
        ax=ax, colorbar=False, xticks_rotation=45 if len(class_names) > 4 else "horizontal"
    )
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
