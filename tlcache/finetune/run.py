"""`tlcache finetune` as a function: split the data, build the model, warm-start it (LP-FT), train, score the best
epoch on the test items, and write the model and the report of `fit-head`."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tlcache.backbones import create_backbone, resolve_device
from tlcache.backbones.base import resolve_precision
from tlcache.backbones.finetuned import write_finetuned_model
from tlcache.embed import DEFAULT_BACKBONES
from tlcache.errors import UserError
from tlcache.finetune.config import FinetuneConfig
from tlcache.finetune.data import FinetuneData, Splits, make_splits
from tlcache.finetune.model import FinetuneModel
from tlcache.finetune.probe import warm_start
from tlcache.finetune.trainer import CHECKPOINT_FILE, Trainer, start_or_resume
from tlcache.images import check_images
from tlcache.predictions import save_predictions
from tlcache.provenance import utc_now
from tlcache.report import GroupMetrics, RunReport, classification_metrics, group_metrics
from tlcache.runs import HeadRun, default_finetune_dir, write_report
from tlcache.sources import Source, load_source


class FinetuneRun(HeadRun):
    """Where a fine-tune wrote its model and report, and the report itself."""

    def summary_line(self) -> str:
        tune = self.report["finetune"]
        return (
            f"finetune {tune['strategy']} of {self.report['backbone']}: accuracy {self.accuracy:.4f} on "
            f"{self.report['n_test']} test items (best epoch {tune['best_epoch']} of {tune['epochs_run']}, "
            f"{self.report['fit_seconds']:.0f} s) -> {self.out_dir}"
        )


def finetune(
    source: str | Path | Source,
    backbone: str | None = None,
    *,
    out: str | Path | None = None,
    test: str | Path | Source | None = None,
    test_fraction: float = 0.2,
    config: FinetuneConfig | None = None,
    device: str = "auto",
    resume: bool = False,
    cache: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    source_options: dict[str, Any] | None = None,
    check_test: bool = True,
    **backbone_options,
) -> FinetuneRun:
    """Fine-tune ``backbone`` with a linear classifier on the labelled items of ``source``; evaluate the best
    epoch on ``test`` (a source with the same classes) or on a stratified ``test_fraction`` held out with the
    seed. Writes the model (``finetuned:<out>`` as a backbone), the training history and the report of `fit-head`
    to ``out`` (default ``runs/finetune-<backbone>-<strategy>``). ``cache`` is where LP-FT embeds the frozen
    features (default ``$TLCACHE_HOME``). Test items that are training items are counted and warned of, and a
    ``test`` of training items only refused, unless ``check_test`` is False (compare checks its test items once).

    >>> run = finetune("reviews.csv", "minilm", config=FinetuneConfig(strategy="top-2", lp_ft=True))  # doctest: +SKIP
    """
    config = config or FinetuneConfig()
    config.validate()
    started = time.perf_counter()
    src = source if isinstance(source, Source) else load_source(source, **(source_options or {}))
    bb = create_backbone(backbone or DEFAULT_BACKBONES[src.modality], **backbone_options)
    _check_request(bb, src, config)
    splits = make_splits(src, test, test_fraction, config, source_options, check_test)
    if src.modality == "image":
        check_images(splits.items(src, "train") + splits.items(src, "val"))
        check_images(splits.items(src, "test"))
    out_dir = Path(out) if out is not None else default_finetune_dir(bb.name, config.strategy)
    identity = {"config": asdict(config), "backbone_spec": bb.spec, "data": splits.fingerprint(src)}
    state = start_or_resume(out_dir, identity, resume)

    torch_device = resolve_device(device)
    bb.precision = resolve_precision(config.precision, torch_device)  # a backbone of its own: set, not shared
    model = FinetuneModel(bb, len(splits.classes), config.seed, torch_device)
    model.check_strategy(config.strategy)
    data = FinetuneData(src, splits, bb, config, num_workers)
    if state is None and config.lp_ft:
        warm_start(model, src, splits, bb, config, cache, device)
    trainer = Trainer(model, data, config, out_dir, progress)
    history = trainer.run(state, identity)

    logits = trainer.predict("test")
    y_pred = logits.argmax(axis=1)
    report = _report(src, splits, config, model, history, y_pred, time.perf_counter() - started)
    record = {
        "config": asdict(config),
        "best_epoch": report["finetune"]["best_epoch"],
        "test_accuracy": report["metrics"]["accuracy"],
        "created": report["created"],
    }
    write_finetuned_model(out_dir, bb, model.module["head"], splits.classes, record)
    _write_test_predictions(out_dir, src, splits, logits)
    write_report(report, out_dir)
    (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # the run is complete: the model files replace it
    return FinetuneRun(out_dir, report)


def _write_test_predictions(out_dir: Path, src: Source, splits: Splits, logits: np.ndarray) -> None:
    """predictions.csv: every test item's predicted class and softmax probabilities, as fit-head writes them."""
    source = splits.test_source if splits.test_source is not None else src
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    classes = splits.classes
    ids = [source.ids[row] for row in splits.rows["test"]]
    truth = [classes[label] for label in splits.labels["test"]]
    save_predictions(out_dir, ids, [classes[c] for c in logits.argmax(axis=1)], probabilities, classes, truth)


def _check_request(bb, src: Source, config: FinetuneConfig) -> None:
    """Refuse what cannot be fine-tuned, before any work."""
    if bb.modality != src.modality:
        raise UserError(f"backbone {bb.name} embeds {bb.modality}s but {src.path} holds {src.modality}s")
    if src.modality == "text" and config.mixup:
        raise UserError(f"--mixup blends images, and {src.path} holds texts; drop --mixup")
    if bb.name.startswith("torchvision:") and bb.layer != "penultimate":
        raise UserError(f"finetune takes {bb.name}'s penultimate layer only; drop --layer")


def _report(
    src: Source, splits: Splits, config: FinetuneConfig, model: FinetuneModel, history, y_pred, seconds: float
) -> RunReport:
    """The report of `fit-head`, with the fine-tune's history and settings under ``finetune``."""
    bb = model.bb
    y_test = splits.labels["test"]
    y_pred = np.asarray(y_pred)
    best = max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))
    report: RunReport = {
        "head": f"finetune {config.strategy}",
        "backbone": bb.name,
        "dim": bb.dim,
        "source": str(Path(src.path).resolve()),
        "test": splits.test_description,
        "seed": config.seed,
        "n_train": int(len(splits.rows["train"])),
        "n_val": int(len(splits.rows["val"])),
        "n_test": int(len(y_test)),
        "classes": splits.classes,
        "fit_seconds": round(seconds, 2),
        "metrics": classification_metrics(y_test, y_pred, splits.classes),
        "finetune": {
            "strategy": config.strategy,
            "lp_ft": config.lp_ft,
            "epochs_run": len(history),
            "best_epoch": best["epoch"],
            "best_val_accuracy": best["val_accuracy"],
            "history": history,
            "config": asdict(config),
            "precision": bb.precision,
            "device": str(bb.device),
        },
        "created": utc_now(),
    }
    groups = _group_report(src, splits, y_test, y_pred)
    if groups is not None:
        report["groups"] = groups
    return report


def _group_report(src: Source, splits: Splits, y_test: np.ndarray, y_pred: np.ndarray) -> GroupMetrics | None:
    """Per-group metrics of the test items, when their source has a group column (as fit-head reports them)."""
    source = splits.test_source if splits.test_source is not None else src
    if source.groups is None:
        return None
    column = source.options.get("group_column") or "group"
    return group_metrics(y_test, y_pred, [source.groups[i] for i in splits.rows["test"]], column)
