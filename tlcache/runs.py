"""A run folder, written and read here only: the fitted head (``head.joblib``) and its sidecar (``head.json``, the
features it needs), the report (``report.json`` for programs, ``report.md`` and PNG figures for people), and the
leaderboard of ``fit-head --head all`` beside the run folders it ranks. A fine-tune's folder holds the same report
beside its model (see :mod:`tlcache.backbones.finetuned`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from tlcache.errors import UserError
from tlcache.paths import slug
from tlcache.report import RunReport, render_figures, render_markdown

HEAD_FILE = "head.joblib"
SIDECAR_FILE = "head.json"
REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"
FIGURE_FILES = {"confusion": "confusion.png", "reliability": "reliability.png", "sweep": "sweep.png"}
PREDICTIONS_FILE = "predictions.csv"
LEADERBOARD_FILE = "leaderboard.json"
LEADERBOARD_MARKDOWN = "leaderboard.md"
# What must agree between the features a head was fitted on and the features it is given.
FEATURE_IDENTITY = ("backbone_key", "weights_digest", "preprocessing", "layer", "pooling", "precision", "dim")


class Sidecar(TypedDict, total=False):
    """head.json: the classes and the features a head needs (``FEATURE_IDENTITY`` and how to embed them)."""

    head: str
    classes: list[str]
    seed: int
    store: str
    store_key: str
    backbone: str
    backbone_spec: dict[str, Any]  # create_backbone(**spec) embeds new items as the head expects
    backbone_key: str
    weights_digest: str
    preprocessing: dict[str, Any]
    layer: str
    pooling: str
    precision: str
    dim: int
    tlcache_version: str


@dataclass
class HeadRun:
    """Where a run was written, and its report."""

    out_dir: Path
    report: RunReport

    @property
    def accuracy(self) -> float:
        return self.report["metrics"]["accuracy"]

    @property
    def headline(self) -> float:
        """Accuracy, or its mean over the few-shot repeats."""
        few = self.report.get("few_shot")
        return few["accuracy"]["mean"] if few else self.accuracy

    def summary_line(self) -> str:
        metrics = self.report["metrics"]
        few = self.report.get("few_shot")
        if few:
            return (
                f"{self.report['head']}, {few['shots']}-shot x {few['repeats']}: accuracy "
                f"{few['accuracy']['mean']:.4f} ± {few['accuracy']['std']:.4f} on {self.report['n_test']} test rows "
                f"-> {self.out_dir}"
            )
        chosen = self.report.get("sweep")
        chosen = f", {chosen['param']}={chosen['best']:g}" if chosen else ""
        return (
            f"{self.report['head']}: accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f} "
            f"on {self.report['n_test']} test rows (fit {self.report['fit_seconds']:.2f} s{chosen}) -> {self.out_dir}"
        )


def default_run_dir(store_path: Path, head: str | None = None) -> Path:
    """``runs/<store name>/<head>`` (or the folder of all heads of a store) under the working directory."""
    base = Path("runs") / Path(store_path).stem
    return base / head if head else base


def default_finetune_dir(backbone_name: str, strategy: str) -> Path:
    """``runs/finetune-<backbone>-<strategy>`` under the working directory."""
    return Path("runs") / f"finetune-{slug(backbone_name)}-{strategy}"


def feature_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """The entries of a store's metadata that a head's features must match."""
    return {name: meta.get(name) for name in FEATURE_IDENTITY}


def check_same_features(expected: dict, actual: dict, what: str, subject: str = "the training store holds") -> None:
    """Refuse features other than ``expected``'s: another backbone, other weights, preprocessing, layer, pooling,
    precision or dim."""
    for name in FEATURE_IDENTITY:
        if expected.get(name) != actual.get(name):
            raise UserError(
                f"{subject} {expected['backbone']} features ({expected['dim']}-d) but {what} holds "
                f"{actual['backbone']} features ({actual['dim']}-d) that differ in {name}; "
                f"embed with the same backbone and options"
            )


def write_head(out_dir: Path, pipeline, sidecar: Sidecar) -> None:
    """The fitted head and its sidecar."""
    import joblib

    out_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, out_dir / HEAD_FILE)
    (out_dir / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")


def load_head(path: str | Path) -> tuple[Any, Sidecar]:
    """Load a fitted head and its sidecar from a run folder (or the head.joblib in it)."""
    import joblib

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    head_file, sidecar_file = folder / HEAD_FILE, folder / SIDECAR_FILE
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run folder written by `tlcache fit-head`")
    if not head_file.is_file() or not sidecar_file.is_file():
        raise UserError(
            f"{folder} holds no {HEAD_FILE} with its {SIDECAR_FILE}; pass a folder written by `tlcache fit-head`"
        )
    try:
        sidecar = json.loads(sidecar_file.read_text(encoding="utf-8"))
        pipeline = joblib.load(head_file)
    except Exception as exc:  # a damaged pickle raises almost anything
        raise UserError(f"cannot load the head in {folder} ({type(exc).__name__}: {exc}); fit it again") from None
    return pipeline, sidecar


def write_report(report: RunReport, out_dir: Path) -> dict[str, Path]:
    """The report as JSON (for programs), Markdown (for people) and PNG figures: the confusion matrix, the
    reliability diagram, and the regularisation curve of the sweep."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / REPORT_FILE, "markdown": out_dir / MARKDOWN_FILE}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    paths.update(render_figures(report, _figure_paths(out_dir)))
    return paths


def write_predictions(
    handle, ids: Sequence[str], predicted: Sequence[str], probabilities, classes: Sequence[str], truth=None
) -> None:
    """Per-item predictions as CSV to an open text ``handle``: id, label (predicted), one ``prob_<class>`` per
    class of ``classes`` (the columns of ``probabilities``), and true_label when ``truth`` is given (names, ""
    for an unlabelled item). The format of `tlcache predict` and of each run's predictions.csv."""
    writer = csv.writer(handle)
    writer.writerow(
        ["id", "label", *(f"prob_{name}" for name in classes), *(["true_label"] if truth is not None else [])]
    )
    for index, (row_id, label, probs) in enumerate(zip(ids, predicted, probabilities)):
        writer.writerow([row_id, label, *(f"{p:.6f}" for p in probs), *([truth[index]] if truth is not None else [])])


def save_predictions(out_dir: Path, ids, predicted, probabilities, classes: Sequence[str], truth) -> Path:
    """predictions.csv in a run folder: every test item's prediction beside its true class (see
    :func:`write_predictions`), so that users can run their own paired tests. Written to a temporary name and
    renamed: a reader never sees half a file."""
    partial = out_dir / f".{PREDICTIONS_FILE}.partial"
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        write_predictions(handle, ids, predicted, probabilities, classes, truth)
    return partial.replace(out_dir / PREDICTIONS_FILE)


def read_report(run_dir: str | Path) -> RunReport:
    """The report.json of a run folder."""
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} holds no {REPORT_FILE}; pass a run folder written by `tlcache fit-head`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fit the head again") from None


def render_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.md and the figures of a run folder again from its report.json (`tlcache report`)."""
    report = read_report(run_dir)
    markdown = Path(run_dir) / MARKDOWN_FILE
    markdown.write_text(render_markdown(report), encoding="utf-8")
    return {"markdown": markdown, **render_figures(report, _figure_paths(Path(run_dir)))}


def _figure_paths(out_dir: Path) -> dict[str, Path]:
    return {name: out_dir / file for name, file in FIGURE_FILES.items()}


def write_leaderboard(base: Path, runs: list[HeadRun]) -> Path:
    """leaderboard.json and leaderboard.md in ``base``: the runs in the order given, one row each. Returns the
    Markdown file."""
    rows = [
        {
            "head": run.report["head"],
            "accuracy": run.headline,
            "macro_f1": run.report["metrics"]["macro_f1"],
            "fit_seconds": run.report["fit_seconds"],
            "chosen": run.report.get("sweep", {}).get("best"),
            "run": str(run.out_dir),
        }
        for run in runs
    ]
    (base / LEADERBOARD_FILE).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    lines = ["| head | accuracy | macro F1 | fit s | chosen | run |", "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        chosen = "" if row["chosen"] is None else f"{row['chosen']:g}"
        lines.append(
            f"| {row['head']} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | {row['fit_seconds']:.2f} | "
            f"{chosen} | {row['run']} |"
        )
    (base / LEADERBOARD_MARKDOWN).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return base / LEADERBOARD_MARKDOWN
