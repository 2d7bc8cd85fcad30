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


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the report as JSON (for programs), Markdown (for people) and a confusion-matrix PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "confusion": out_dir / "confusion.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    plot_confusion(report["metrics"]["confusion_matrix"], report["classes"], paths["confusion"])
    return paths


def render_markdown(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    classes = report["classes"]
    lines = [
        f"# {report['head']} head on {report['backbone']} features",
        "",
        "| | |",
        "|---|---|",
        f"| accuracy | {metrics['accuracy']:.4f} |",
        f"| macro F1 | {metrics['macro_f1']:.4f} |",
        f"| train rows | {report['n_train']} |",
        f"| test rows | {report['n_test']} ({report['test']}) |",
        f"| fit time | {report['fit_seconds']:.2f} s |",
        f"| seed | {report['seed']} |",
        f"| store | `{report['store']}` |",
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
    return "\n".join(lines) + "\n"


def plot_confusion(matrix: list[list[int]], class_names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names)).plot(
        ax=ax, colorbar=False, xticks_rotation=45 if len(class_names) > 4 else "horizontal"
    )
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
