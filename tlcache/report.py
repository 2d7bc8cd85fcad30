"""What a run's report holds (typed, below) and how it is shown: metrics, per-class and per-group tables and the
Markdown page (the figures are :mod:`tlcache.figures`). Where they are written is :mod:`tlcache.runs`' business."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np

ClassMetrics = TypedDict(
    "ClassMetrics", {"class": str, "precision": float, "recall": float, "f1": float, "support": int}
)


class Metrics(TypedDict):
    accuracy: float
    macro_f1: float
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted


class Reliability(TypedDict):
    ece: float  # expected calibration error of the top-label confidence
    bins: list[dict[str, float]]  # low, high, count, confidence, accuracy


class Calibration(TypedDict, total=False):
    head: Reliability  # an uncalibrated head's own
    method: str  # with --calibrate: sigmoid or isotonic, and the ECE before and after
    before: Reliability
    after: Reliability
    agreement: float  # share of test items whose most probable class is the head's predicted class


class Sweep(TypedDict):
    param: str  # C, alpha or n_neighbors
    best: float
    score: str  # what chose it on validation data: accuracy or log-loss
    selection: str  # k-fold cross-validation or a stratified validation split
    curve: list[list[float]]  # [value, validation score] per grid value
    extension: dict  # direction ("up", "down" or None), steps added past the grid's end, at_edge
    validation_accuracy: float  # of the chosen value (the same validation rows for every head of a seed)
    validation_items: int | None  # the rows it is measured on


class GroupRow(TypedDict):
    group: str
    accuracy: float
    macro_f1: float
    support: int


class GroupMetrics(TypedDict):
    column: str
    per_group: list[GroupRow]
    worst_group: str
    worst_accuracy: float
    worst_group_gap: float


class Spread(TypedDict):
    mean: float
    std: float
    values: list[float]


class FewShot(TypedDict):
    shots: int
    repeats: int
    seeds: list[int]
    accuracy: Spread
    macro_f1: Spread


class Epoch(TypedDict):
    epoch: int
    stage: str
    train_loss: float
    val_loss: float
    val_accuracy: float


class FinetuneSummary(TypedDict):
    strategy: str
    lp_ft: bool
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    history: list[Epoch]
    config: dict[str, Any]  # the FinetuneConfig, as a dict
    precision: str
    device: str


class _ReportCore(TypedDict):
    head: str  # the head's name, or "finetune <strategy>"
    backbone: str
    dim: int
    test: str  # what was tested on: a held-out fraction, a store or a source
    seed: int
    n_train: int
    n_test: int
    classes: list[str]
    fit_seconds: float
    metrics: Metrics  # on the test items
    created: str


class RunReport(_ReportCore, total=False):
    """The report of `fit-head` or `finetune` (report.json): the keys above always, these where they apply."""

    store: str  # fit-head: the training store
    source: str  # finetune: the training source
    n_val: int  # finetune: items held out for early stopping
    views_per_item: int
    test_in_training: int  # test items whose content is also a training item's
    unreadable: int  # source items left out when the stores were embedded (unreadable images), when any
    class_weight: str | None
    sweep: Sweep
    calibration: Calibration
    groups: GroupMetrics
    few_shot: FewShot
    finetune: FinetuneSummary


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> Metrics:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix (rows: true). Macro F1
    averages over the classes the test items hold or the model predicts: a training class with neither has no F1
    to average (counted as 0 it would lower the mean for nothing); the per-class table lists every class."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = sorted(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist()))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
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


def calibration_summary(probabilities: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> Reliability:
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


# The most classes whose confusion matrix report.md shows as a table (report.json always holds it).
TABLE_MAX_CLASSES = 30


def render_markdown(report: RunReport) -> str:
    metrics = report["metrics"]
    classes = report["classes"]
    tune = report.get("finetune")
    if tune:
        title = f"{report['backbone']} fine-tuned ({tune['strategy']})"
    else:
        title = f"{report['head']} head on {report['backbone']} features"
    few = report.get("few_shot")
    # A few-shot study's headline is its mean over repeats, as the command line gives it; the tables are repeat 1's.
    scores = [f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}"]
    if few:
        over = f" (mean ± std over {few['repeats']} repeats of {few['shots']} per class)"
        scores = [f"{few[m]['mean']:.4f} ± {few[m]['std']:.4f}{over}" for m in ("accuracy", "macro_f1")]
    of_repeat = f" (repeat 1 of {few['repeats']}, seed {few['seeds'][0]})" if few else ""
    lines = [
        f"# {title}",
        "",
        "| | |",
        "|---|---|",
        f"| accuracy | {scores[0]} |",
        f"| macro F1 | {scores[1]} |",
        f"| train rows | {report['n_train']}{' per repeat' if few else ''} |",
        f"| test rows | {report['n_test']} ({report['test']}) |",
        *(
            [
                f"| **test items also in training** | {report['test_in_training']} (the same content: the accuracy "
                "overstates how the model does on new items) |"
            ]
            if report.get("test_in_training")
            else []
        ),
        *(
            [
                f"| unreadable items left out | {report['unreadable']} (when embedded: `tlcache info` on the store "
                "lists them) |"
            ]
            if report.get("unreadable")
            else []
        ),
        f"| fit time | {report['fit_seconds']:.2f} s{' (repeat 1)' if few else ''} |",
        f"| seed | {report['seed']} |",
        *([f"| class weights | {report['class_weight']} (--class-weight) |"] if report.get("class_weight") else []),
        f"| store | `{report['store']}` |" if "store" in report else f"| source | `{report['source']}` |",
        "",
        f"## Per class{of_repeat}",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in metrics["per_class"]:
        lines.append(
            f"| {_cell(row['class'])} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
            f"{row['support']} |"
        )
    lines += ["", f"## Confusion matrix{of_repeat} (rows: true class, columns: predicted)", ""]
    if len(classes) > TABLE_MAX_CLASSES:  # a table of k^2 cells: 9 MB for a new user's 1500 classes
        lines.append(f"{len(classes)} classes, too many for a table here: `confusion_matrix` in report.json.")
    else:
        lines.append("| | " + " | ".join(map(_cell, classes)) + " |")
        lines.append("|---|" + "---:|" * len(classes))
        for name, row in zip(classes, metrics["confusion_matrix"]):
            lines.append(f"| **{_cell(name)}** | " + " | ".join(str(v) for v in row) + " |")
    lines += _markdown_extras(report)
    return "\n".join(lines) + "\n"


def _markdown_extras(report: RunReport) -> list[str]:
    sections = (
        (report.get("finetune"), _finetune_section),
        (report.get("few_shot"), _few_shot_section),
        (report.get("sweep"), _sweep_section),
        (report.get("calibration"), _calibration_section),
        (report.get("groups"), _groups_section),
    )
    return [line for part, section in sections if part for line in section(part, report)]


def _finetune_section(tune: FinetuneSummary, report: RunReport) -> list[str]:
    config = tune["config"]
    lines = [
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
    return lines + [
        f"| {h['epoch']} | {h['stage']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['val_accuracy']:.4f} |"
        for h in tune["history"]
    ]


def _few_shot_section(few: FewShot, report: RunReport) -> list[str]:
    acc, f1 = few["accuracy"], few["macro_f1"]
    return [
        "",
        f"## Few-shot: {few['shots']} per class, {few['repeats']} repeats",
        "",
        f"Accuracy {acc['mean']:.4f} ± {acc['std']:.4f}, macro F1 {f1['mean']:.4f} ± {f1['std']:.4f} (mean ± "
        f"standard deviation over repeats; the per-class table and the confusion matrix show repeat 1). Seeds: "
        f"{few['seeds']}.",
    ]


def _sweep_section(sweep: Sweep, report: RunReport) -> list[str]:
    lines = [
        "",
        f"## {sweep['param']} sweep, chosen on {sweep['selection']} "
        f"({'lowest' if sweep.get('score') == 'log-loss' else 'highest'} {sweep.get('score', 'accuracy')}): "
        f"{sweep['best']:g}",
        "",
        f"| {sweep['param']} | validation {sweep.get('score', 'accuracy')} |",
        "|---:|---:|",
    ]
    lines += [f"| {value:g} | {score:.4f} |" for value, score in sweep["curve"]]
    extension = sweep.get("extension") or {}
    if extension.get("steps"):
        lines += ["", f"The best value was at an end of the grid: extended {extension['direction']} by "
                      f"{extension['steps']} value(s)."]  # fmt: skip
    if extension.get("at_edge"):
        lines += ["", "The best value is still at an end of the grid: the optimum may lie beyond it (try a wider "
                      "--grid)."]  # fmt: skip
    return lines


def _calibration_section(calibration: Calibration, report: RunReport) -> list[str]:
    lines = ["", "## Calibration (test set, top-label expected calibration error)", ""]
    if "before" in calibration:
        lines.append(
            f"{calibration['method']} calibration: ECE {calibration['before']['ece']:.4f} before, "
            f"{calibration['after']['ece']:.4f} after."
        )
    else:
        lines.append(f"ECE {calibration['head']['ece']:.4f} (calibrate with --calibrate sigmoid|isotonic).")
    if "agreement" in calibration:
        lines.append(
            f"The most probable class is the predicted class (the head's own decision) on "
            f"{100 * calibration['agreement']:.1f}% of the test items."
        )
    return lines


def _groups_section(groups: GroupMetrics, report: RunReport) -> list[str]:
    lines = [
        "",
        f"## Per group ({groups['column']})",
        "",
        f"Worst-group accuracy {groups['worst_accuracy']:.4f} ({groups['worst_group']}); gap to the best group "
        f"{groups['worst_group_gap']:.4f}.",
        "",
        "| group | accuracy | macro F1 | support |",
        "|---|---:|---:|---:|",
    ]
    return lines + [
        f"| {_cell(g['group'])} | {g['accuracy']:.4f} | {g['macro_f1']:.4f} | {g['support']} |"
        for g in groups["per_group"]
    ]


def _cell(text: str) -> str:
    """A name (a class's, a group's: the user's data) as one Markdown table cell: its pipes escaped, its line
    breaks as spaces."""
    return " ".join(str(text).replace("|", "\\|").splitlines()) or " "


def group_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: list[str], column: str) -> GroupMetrics:
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


def seed_spread(values) -> float:
    """The standard deviation of figures over seeds or draws, as a sample's (n - 1 in the denominator: with 3 seeds
    the population's understates it by a fifth); 0 for a single figure."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def sweep_summary(pipeline) -> Sweep | None:
    """The sweep a fitted head ran (parameter, curve, best value, how it selected), or None."""
    model = pipeline.steps[-1][1]
    if not hasattr(model, "curve_"):
        return None
    accuracies = dict(getattr(model, "accuracy_curve_", model.curve_))  # logreg chooses by log-loss
    return {
        "param": model.param_,
        "best": model.best_,
        "score": model.score_name_,
        "selection": model.selection_,
        "curve": [[value, score] for value, score in model.curve_],
        "extension": dict(getattr(model, "extension_", {"direction": None, "steps": 0, "at_edge": False})),
        "validation_accuracy": float(accuracies[model.best_]),
        "validation_items": getattr(model, "validation_items_", None),  # None from heads fitted before it was kept
    }


def report_inconsistency(report: dict) -> str | None:
    """Where a report's figures contradict each other, in words: its confusion matrix must count its test items
    and give its accuracy (an edited accuracy of 0.99 was drawn beside a matrix of 0.79). A malformed matrix is
    left to the places that read it."""
    metrics = report["metrics"]
    matrix = metrics.get("confusion_matrix")
    counts = isinstance(matrix, list) and all(isinstance(row, list) for row in matrix)
    if not counts or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for row in matrix for v in row):
        return None
    total = sum(map(sum, matrix))
    right = sum(row[i] for i, row in enumerate(matrix) if i < len(row))
    n_test, accuracy = report.get("n_test"), metrics.get("accuracy")
    if isinstance(n_test, int) and total != n_test:
        return f"its confusion matrix counts {total} test items, its n_test {n_test}"
    if isinstance(accuracy, (int, float)) and total and abs(accuracy - right / total) > 1e-6:
        return f"accuracy {accuracy!r} where its confusion matrix gives {right / total:.4f}"
    return None
