"""Apply a fitted head to new data: embed it through the same cache, check the features match, write a CSV."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlcache.backbones import create_backbone
from tlcache.embed import embed_source
from tlcache.errors import UserError
from tlcache.heads import check_head_matches, predict_rows
from tlcache.paths import check_output_file
from tlcache.predictions import check_replaceable_predictions, write_predictions, write_predictions_file
from tlcache.runs import Sidecar, check_not_an_input, check_same_features, load_head
from tlcache.sources import modality_of_path
from tlcache.splits import count_in, spelling_note
from tlcache.store import STORE_SUFFIX, FeatureStore


@dataclass
class PredictResult:
    out: Path | None
    rows: int
    accuracy: float | None  # against the source's own labels, when it has them
    store: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, why) of items that could not be read
    # Labelled items per class the head was not trained on: it cannot predict them, so the accuracy counts them wrong.
    unseen_classes: dict[str, int] = field(default_factory=dict)
    truncated: int = 0  # texts cut to the model's limit when they were embedded
    in_training: int = 0  # labelled items the head was trained on (the same content), counted in the accuracy
    classes: list[str] = field(default_factory=list)  # the head's

    def summary_line(self) -> str:
        scored = f", accuracy {self.accuracy:.4f} against the source's labels" if self.accuracy is not None else ""
        where = "" if self.store.suffix == ".onnx" else f": `tlcache info {self.store}`"
        notes = [f"{len(self.skipped)} unreadable items left out{where}"] if self.skipped else []
        if self.truncated:
            cut = f"{self.truncated} text{'' if self.truncated == 1 else 's'}"
            notes.append(f"{cut} cut to the model's limit: their ends were not read")
        if self.in_training and self.accuracy is not None:
            notes.append(
                f"{self.in_training} of the labelled items are the head's own training items, so the accuracy "
                "overstates how it does on new items"
            )
        extra = f" ({'; '.join(notes)})" if notes else ""
        return f"predicted {self.rows} rows{scored}{extra} -> {self.out or 'stdout'}"

    def unseen_line(self) -> str | None:
        """A note on the items of classes the head was not trained on, or None when there are none."""
        if not self.unseen_classes:
            return None
        counts = ", ".join(f"{name} ({n})" for name, n in self.unseen_classes.items())
        n = sum(self.unseen_classes.values())
        spelling = spelling_note(list(self.unseen_classes), self.classes, where="in the head")
        return (
            f"note: {n} items are of classes the head was not trained on: {counts}; it cannot predict them, so the "
            f"accuracy counts them as errors{spelling}"
        )


def predict(
    head: str | Path,
    source: str | Path,
    *,
    out: str | Path | None = "predictions.csv",
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    source_options: dict[str, Any] | None = None,
) -> PredictResult:
    """Predict ``source`` (a data source, or a store of the head's features) with the head in ``head``.

    The source is embedded with the backbone recorded beside the head, through the cache. ``out=None`` writes
    the CSV to standard output. Columns: id, label (predicted), one ``prob_<class>`` per class, and
    ``true_label`` when the source has labels. Items that cannot be read (damaged images) are left out of the
    CSV and listed in the result's ``skipped``.
    """
    if out is not None:
        check_output_file(out)
        check_not_an_input(out, [head, source])
        check_replaceable_predictions(out)
    pipeline, sidecar = load_head(head)
    source = Path(source)
    if source.suffix == STORE_SUFFIX and source.is_file():
        store = FeatureStore(source)
    else:
        backbone = create_backbone(**sidecar["backbone_spec"])
        fitted_on = f"head {head} was fitted on {backbone.modality} features ({backbone.name})"
        check_source_modality(source, backbone.modality, fitted_on)
        _check_backbone_matches(sidecar, backbone, Path(head))  # before embedding features the head would refuse
        result = embed_source(
            source,
            backbone,
            precision=sidecar.get("precision") or "fp32",
            out=cache_dir,
            device=device,
            batch_size=batch_size,
            progress=progress,
            source_options=source_options,
        )
        store = FeatureStore(result.path)
    check_head_matches(sidecar, store, Path(head))

    classes = sidecar["classes"]
    probabilities = predict_rows(pipeline, store, proba=True)
    # predict_proba's columns follow pipeline.classes_ (label indices seen in training), not range(n_classes).
    column_names = [classes[i] for i in pipeline.classes_]
    # The head's own decisions, as fit-head scored them (an SVM's calibrated probabilities may rank otherwise).
    predicted = [classes[i] for i in predict_rows(pipeline, store)]
    store_classes = store.class_names
    truth = [store_classes[t] if t >= 0 else "" for t in store.labels()]
    accuracy = _write_csv(out, store.ids(), predicted, probabilities, column_names, truth)
    out_path = Path(out) if out is not None else None
    unseen = _unseen_classes(truth, column_names)
    truncated = int(store.meta.get("truncated_rows") or 0)
    result = PredictResult(out_path, len(predicted), accuracy, store.path, store.skipped(), unseen, truncated)
    result.classes = list(classes)
    result.in_training = _training_items_among(sidecar.get("training_items"), store.fingerprints(), truth)
    return result


def _training_items_among(recorded, fingerprints: Sequence[str], truth: Sequence[str]) -> int:
    """How many of the labelled items (a ``truth`` given; ``fingerprints``: their content fingerprints, in the same
    order) are among a head's training items, by the digest its head.json or its export keeps (``recorded``); 0
    for a head fitted before the digest was kept."""
    if not isinstance(recorded, str):
        return 0
    return count_in(recorded, [fingerprint for fingerprint, name in zip(fingerprints, truth) if name])


def _check_backbone_matches(sidecar: Sidecar, backbone, head: Path) -> None:
    """Refuse, before anything is embedded, a backbone that would give features other than the head's: its
    weights file changed since, or this tlcache decodes images otherwise. Precision and dim are checked on the
    store (:func:`tlcache.heads.check_head_matches`)."""
    made = {"backbone": backbone.name, "backbone_key": backbone.key_name, "weights_digest": backbone.weights_digest}
    made |= {"preprocessing": json.loads(json.dumps(backbone.preprocessing)), "layer": backbone.layer}
    made |= {"pooling": backbone.pooling, "precision": sidecar.get("precision"), "dim": sidecar.get("dim")}
    check_same_features(
        sidecar, made, f"its backbone as this tlcache makes it ({backbone.name})", f"head {head} was fitted on"
    )


def check_source_modality(source: Path, modality: str, wants: str) -> None:
    """Refuse a source of the other modality before it is read: reading it would fail on something beside the
    point (a table with no 'text' column) or advise another backbone, which a predict user cannot choose.
    ``wants``: what takes ``modality``, e.g. "head X was fitted on image features (B)"."""
    held = modality_of_path(source)
    if held is None or held == modality:
        return
    wanted = "images (an image folder)" if modality == "image" else "texts (a .csv, .tsv or .jsonl file)"
    raise UserError(f"{wants} but {source} holds {held}s; pass {wanted}")


def _unseen_classes(truth: list[str], classes: list[str]) -> dict[str, int]:
    """How many labelled items (``truth``: "" for unlabelled) are of each class not in ``classes``, by name."""
    known = set(classes)
    unseen = sorted(name for name in truth if name and name not in known)
    return {name: unseen.count(name) for name in dict.fromkeys(unseen)}


def _write_csv(out, ids, predicted: list[str], probabilities, columns: list[str], truth: list[str]) -> float | None:
    """Write the predictions' CSV to ``out`` (stdout when None), with a true_label column when some item's class is
    known (``truth``: names, "" for an unlabelled item); the accuracy over those items, or None."""
    known = [i for i, name in enumerate(truth) if name]
    if out is None:
        write_predictions(sys.stdout, ids, predicted, probabilities, columns, truth if known else None)
    else:  # whole or not at all, into its folder, made if need be
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_predictions_file(Path(out), ids, predicted, probabilities, columns, truth if known else None)
    return float(np.mean([predicted[i] == truth[i] for i in known])) if known else None


def predict_exported(
    model: str | Path,
    source: str | Path,
    *,
    out: str | Path | None = "predictions.csv",
    batch_size: int | None = None,
    source_options: dict[str, Any] | None = None,
) -> PredictResult:
    """Predict ``source`` (a data source) with a model ``tlcache export`` wrote, through onnxruntime: torch is not
    imported. The CSV is the one :func:`predict` writes; images that cannot be decoded are left out and listed."""
    from tlcache.exported import load_exported
    from tlcache.sources import load_source

    if out is not None:
        check_output_file(out)
        check_not_an_input(out, [model, Path(model).parent, source])
        check_replaceable_predictions(out)
    exported = load_exported(model)
    check_source_modality(Path(source), exported.modality, f"{model} takes {exported.modality}s")
    columns = {name: value for name, value in (source_options or {}).items() if value is not None}
    src = load_source(source, **columns, fingerprint_index=None)  # of the model's modality: checked above
    outputs = exported.run(src.items, batch_size)
    ids = [src.ids[i] for i in outputs.kept]
    predicted = [exported.classes[i] for i in outputs.labels]
    truth = [(src.labels[i] or "") if src.labels is not None else "" for i in outputs.kept]
    accuracy = _write_csv(out, ids, predicted, outputs.probabilities, exported.classes, truth)
    skipped = [(src.ids[position], why) for position, why in outputs.skipped]
    unseen = _unseen_classes(truth, exported.classes)
    out_path = Path(out) if out is not None else None
    result = PredictResult(
        out_path, len(ids), accuracy, Path(model), skipped, unseen, outputs.truncated, classes=list(exported.classes)
    )
    kept = [src.fingerprints[i] for i in outputs.kept]
    result.in_training = _training_items_among(exported.metadata.get("training_items"), kept, truth)
    return result
