"""Per-item predictions as CSV, the format of `tlcache predict` and of each run folder's predictions.csv: id, the
predicted label, one ``prob_<class>`` column per class, and true_label where the truth is known. Written whole (see
:func:`tlcache.runs.write_whole`); an existing file is replaced only when it is such a CSV itself (or empty)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from tlcache.errors import UserError
from tlcache.runs import PREDICTIONS_FILE, is_run_file_name, is_run_folder, write_whole


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


def check_replaceable_predictions(out: str | Path) -> None:
    """Refuse an ``--out`` file that exists and is not a CSV of :func:`write_predictions` (its header): `predict --out`
    replaced whatever it was given, and a new user's typo replaced a feature store, a report, an exported model and
    the training file with five rows of predictions. Predictions written before are replaced, as a rerun's are; so
    is an empty file."""
    path = Path(out)
    if not path.is_file():
        return
    if is_run_file_name(path.name) and is_run_folder(path.parent):
        raise UserError(f"--out {out} is a file of the run folder {path.parent} ({path.name}); name another file")
    with open(path, "rb") as handle:
        start = handle.read(4096)
    first = start.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        names = next(csv.reader([first.decode("utf-8")]), []) if b"\0" not in start else None
    except UnicodeDecodeError:
        names = None
    if not start or (names and names[:2] == ["id", "label"] and all(_predicted(name) for name in names[2:])):
        return
    what = "a binary or non-UTF-8 file" if names is None else f"its first line {first.decode()[:60]!r}"
    raise UserError(
        f"--out {out} exists and is not a predictions file ({what}, not the header 'id,label,prob_...'); name "
        "another file, or remove that one first if it may go"
    )


def _predicted(column: str) -> bool:
    return column.startswith("prob_") or column == "true_label"


def save_predictions(out_dir: Path, ids, predicted, probabilities, classes: Sequence[str], truth) -> Path:
    """predictions.csv in a run folder: every test item's prediction beside its true class (see
    :func:`write_predictions`), so that users can run their own paired tests."""
    path = out_dir / PREDICTIONS_FILE
    write_predictions_file(path, ids, predicted, probabilities, classes, truth)
    return path


def write_predictions_file(path: Path, ids, predicted, probabilities, classes: Sequence[str], truth=None) -> None:
    """The CSV of :func:`write_predictions` to ``path``, written whole (:func:`write_whole`): a reader never sees
    half a file."""
    text = io.StringIO(newline="")
    write_predictions(text, ids, predicted, probabilities, classes, truth)
    write_whole(path, text.getvalue().encode("utf-8"))
