"""A run folder, written and read here only (its predictions.csv by :mod:`tlcache.predictions`): the fitted head
(``head-<digest>.npz``, arrays plus JSON that load without running code: see :mod:`tlcache.headfile`) and its
sidecar (``head.json``, the features it needs, naming the head file and its digest), the report (``report.json``
for programs, ``report.md`` and PNG figures for people), and the leaderboard of ``fit-head --head all`` beside the
run folders it ranks. A fine-tune's folder holds the same report beside its model (see
:mod:`tlcache.backbones.finetuned`). Every file is written whole or not at all (:func:`write_whole`)."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from tlcache.errors import UserError, warn_once
from tlcache.figures import render_figures
from tlcache.paths import process_running, slug
from tlcache.report import RunReport, render_markdown, report_inconsistency

HEAD_FILE_PATTERN = re.compile(r"head-[0-9a-f]{16}\.npz")
LEGACY_HEAD_FILE = "head.joblib"  # a pickle, written by older versions of tlcache: never loaded
SIDECAR_FILE = "head.json"
REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"
FIGURE_FILES = {"confusion": "confusion.png", "reliability": "reliability.png", "sweep": "sweep.png"}
PREDICTIONS_FILE = "predictions.csv"
EXPORT_FILES = ("model.onnx", "model-int8.onnx")  # `tlcache export`'s default names in a run folder
LOCK_FILE = ".tlcache.lock"
LEADERBOARD_FILE = "leaderboard.json"
LEADERBOARD_MARKDOWN = "leaderboard.md"
# The files of a run folder that only its own command writes: another command's --out there would replace them.
RUN_FILES = (
    SIDECAR_FILE,
    REPORT_FILE,
    MARKDOWN_FILE,
    PREDICTIONS_FILE,
    *FIGURE_FILES.values(),
    *EXPORT_FILES,
    LEADERBOARD_FILE,
    LEADERBOARD_MARKDOWN,
)


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a run of `fit-head` (its head.json or report.json)."""
    return folder.is_dir() and any((folder / name).is_file() for name in (SIDECAR_FILE, REPORT_FILE))


def is_run_file_name(name: str) -> bool:
    """Whether a file of this name in a run folder is one of the files only the run's own command writes."""
    return name in RUN_FILES or bool(HEAD_FILE_PATTERN.fullmatch(name))


def check_run_output(out_dir: Path) -> None:
    """Refuse an existing folder that holds feature stores, or files of the names a run writes (report.json,
    predictions.csv, ...) that no run made: a new user's own predictions.csv and report.json were replaced by
    `fit-head --out`, and `--out` of the cache folder wrote a run among the stores. A run's folder, even a damaged
    one (which fitting again mends), is written over as before."""
    if not out_dir.is_dir():
        return
    names = sorted(os.listdir(out_dir))
    if any(name.endswith(".h5") for name in names):
        raise UserError(f"--out {out_dir} holds feature stores (.h5 files): not a run folder; name another folder")
    theirs = [name for name in names if is_run_file_name(name)]
    if theirs and not _made_by_a_run(out_dir):
        raise UserError(
            f"--out {out_dir} holds {', '.join(theirs[:3])}{' ...' if len(theirs) > 3 else ''}, which a run would "
            "replace, but no run of tlcache made them; name a new or empty folder, or move those files"
        )


def _made_by_a_run(folder: Path) -> bool:
    """Whether a folder was made by a run, damaged or not: its head.json or a head file, or a report with metrics."""
    if (folder / SIDECAR_FILE).is_file() or any(HEAD_FILE_PATTERN.fullmatch(p.name) for p in folder.glob("head-*")):
        return True
    try:
        return "metrics" in json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def check_not_an_input(out: str | Path, inputs: list[str | Path]) -> None:
    """Refuse an ``--out`` that is one of the command's ``inputs`` (files, or run folders whose own files it must not
    replace): `predict --out` once replaced the source it was predicting, and a run's test predictions."""
    target = Path(out).resolve()
    for given in inputs:
        path = Path(given).resolve()
        if target == path:
            raise UserError(f"--out {out} is the input {given} itself; name another file")
        if target.parent == path and is_run_file_name(target.name) and is_run_folder(path):
            raise UserError(f"--out {out} is a file of the run folder {given} ({target.name}); name another file")


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
    training_items: str  # splits.content_digest of the training items (absent from older heads)


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
            advice = "embed with the same backbone and options"
            sides = [expected.get(name), actual.get(name)]
            long_text = [side.get("long_text", "truncate") if isinstance(side, dict) else None for side in sides]
            if name == "preprocessing" and long_text[0] != long_text[1]:  # the option a new user was not told of
                advice = f"long texts {long_text[0]} against {long_text[1]}: embed with the same --long-text"
            elif name in ("precision", "layer", "pooling"):  # the option that sets it, and the value each side has
                option = {"precision": "--precision", "layer": "--layer", "pooling": "--pool"}[name]
                advice = (
                    f"{expected.get(name)} against {actual.get(name)}: embed with the same {option} "
                    f"({option} {expected.get(name)})"
                )
            elif name == "preprocessing" and _differ_only_in_decoding(expected[name], actual[name]):
                from tlcache.images import DECODING

                decoded = [f"{side.get('convert', 'not recorded')!r}" for side in (expected[name], actual[name])]
                advice = (
                    f"their images were decoded by different tlcache versions (`convert` in `tlcache info`: "
                    f"{decoded[0]} against {decoded[1]}; this tlcache decodes {DECODING!r}); embed the older "
                    "again and fit its heads again"
                )
            raise UserError(
                f"{subject} {expected['backbone']} features ({expected['dim']}-d) but {what} holds "
                f"{actual['backbone']} features ({actual['dim']}-d) that differ in {name}; {advice}"
            )


def _differ_only_in_decoding(one: Any, other: Any) -> bool:
    """Whether two image preprocessings are the same but for how images become RGB (tlcache.images.DECODING)."""
    if not (isinstance(one, dict) and isinstance(other, dict)):
        return False
    return {k: v for k, v in one.items() if k != "convert"} == {k: v for k, v in other.items() if k != "convert"}


@contextmanager
def writing_run(out_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (made with the folder if need be): one process writes a run folder at a time,
    another's run waiting for this one's last file, so that the folder holds one run's files, not a mix."""
    from filelock import FileLock

    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / LOCK_FILE)):
        yield


def clear_previous_run(out_dir: Path, head: bool) -> None:
    """Remove what a run in ``out_dir`` before this one left that this one does not write over, for a run that saves
    no head (``head`` False: few-shot): its head, sidecar, predictions and exports. (A run that saves a head leaves
    the exports to :func:`write_head`, which keeps them when the head is the same.)"""
    if head:
        return
    stale = [out_dir / name for name in (*EXPORT_FILES, SIDECAR_FILE, PREDICTIONS_FILE, LEGACY_HEAD_FILE)]
    for path in [*stale, *out_dir.glob("head-*.npz")]:
        path.unlink(missing_ok=True)


def write_head(out_dir: Path, pipeline, sidecar: Sidecar) -> Path:
    """The fitted head under a name of its digest, then the sidecar that names it, each written whole (see
    :func:`write_whole`); the head files it replaces go last. Killed at any point, the folder's sidecar names a
    whole head of its own: the old pair or the new one, never one of each. Returns the head file."""
    from tlcache import headfile

    # The class names go into the head file too, under its digest: head.json's list, edited (two names swapped),
    # relabelled every prediction without a word.
    pipeline.class_names_ = list(sidecar["classes"])
    data = headfile.to_bytes(pipeline)
    digest = hashlib.sha256(data).hexdigest()
    head_file = out_dir / f"head-{digest[:16]}.npz"
    out_dir.mkdir(parents=True, exist_ok=True)
    named = {**sidecar, "head_file": head_file.name, "head_sha256": digest}
    saved = _saved_sidecar(out_dir)
    if saved != named:  # another head: its exports are stale (the same one's stay: 22 s, 88 MiB)
        removed = [name for name in EXPORT_FILES if (out_dir / name).exists()]
        for name in removed:
            (out_dir / name).unlink(missing_ok=True)
        _say_replaced(out_dir, saved, named, removed)
    write_whole(head_file, data)
    write_whole(out_dir / SIDECAR_FILE, (json.dumps(named, indent=2) + "\n").encode("utf-8"))
    for old in [*out_dir.glob("head-*.npz"), out_dir / LEGACY_HEAD_FILE]:
        if old != head_file:
            old.unlink(missing_ok=True)
    return head_file


def _say_replaced(out_dir: Path, saved: dict | None, named: dict, removed: list[str]) -> None:
    """A warning when a head replaces one of another store, or its exported models go: a new user's run folder,
    reused for another store's head, lost its model.onnx and its head without a line."""
    exports = f"; {', '.join(removed)}, exported from it, removed" if removed else ""
    if isinstance(saved, dict) and saved.get("store_key") not in (None, named.get("store_key")):
        warn_once(f"{out_dir} held a head of another store ({saved.get('store', 'unknown')}): replaced{exports}")
    elif removed:
        warn_once(f"{out_dir}: {', '.join(removed)} exported the head replaced, and are removed; export the new one")


def _saved_sidecar(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / SIDECAR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_whole(path: Path, data: bytes) -> None:
    """``data`` to a temporary file beside ``path``, flushed to disk, then renamed over it: a reader (or a kill)
    sees the old file or the new one, never half of one. The temporary file is this process's own (two processes
    writing one file each write theirs whole, and the last rename wins); those of killed processes are removed."""
    stem = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(stem)}*.partial"):
        pid = stale.name[len(stem) : -len(".partial")]
        if pid.isdigit() and not process_running(int(pid)):
            stale.unlink(missing_ok=True)
    partial = path.with_name(f"{stem}{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:  # a full disk: leave the old file and no debris, and say which file it was
        partial.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _leaderboard_heads(folder: Path) -> list[str]:
    """The heads of the leaderboard.json in ``folder`` (`fit-head --head all`), best first; empty without one."""
    try:
        return [str(row["head"]) for row in json.loads((folder / LEADERBOARD_FILE).read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def load_head(path: str | Path) -> tuple[Any, Sidecar]:
    """A fitted head and its sidecar from a run folder (or a file in it), each checked: the sidecar's entries,
    the head file's digest against the sidecar's, and the head file's contents (classes tlcache allows only)."""
    from tlcache import headfile

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run folder written by `tlcache fit-head`")
    sidecar_file = folder / SIDECAR_FILE
    if not sidecar_file.is_file():
        if few := _few_shot_study(folder):
            raise UserError(
                f"{folder} holds a few-shot study (fit-head --shots {few.get('shots')} --repeats {few.get('repeats')}),"
                " which saves its report but no head; run fit-head without --shots to get a head"
            )
        if path.is_file() and path.suffix == ".h5":
            raise UserError(f"{path} is a feature store, not a head; pass the run folder `tlcache fit-head` wrote")
        from tlcache.backbones.finetuned import CONFIG_FILE as FINETUNED

        if (folder / FINETUNED).is_file():
            raise UserError(
                f"{folder} is a fine-tune, not a head: its model is a backbone, `-b finetuned:{folder}`; embed the "
                f"data with it and fit a head on those features (its own test predictions are in "
                f"{folder / PREDICTIONS_FILE})"
            )
        heads = sorted(child.name for child in folder.iterdir() if (child / SIDECAR_FILE).is_file())
        if heads:  # the folder of a `fit-head --head all`: its leaderboard ranks them by validation accuracy
            ranked = [name for name in _leaderboard_heads(folder) if name in heads]
            example = f"{folder / ranked[0]}, the best on validation data" if ranked else str(folder / heads[0])
            raise UserError(
                f"{folder} holds a head in each of its folders ({', '.join(ranked or heads)}); pass one, e.g. {example}"
            )
        what = f"holds no head with its {SIDECAR_FILE}" if folder.exists() else "does not exist"
        raise UserError(f"{folder} {what}; pass a folder written by `tlcache fit-head`")
    sidecar = _read_sidecar(sidecar_file)
    name = sidecar.get("head_file")
    if name is None and (folder / LEGACY_HEAD_FILE).exists():
        raise UserError(
            f"{folder / LEGACY_HEAD_FILE} is a pickle written by an older tlcache; a pickle can run code when loaded, "
            f"so tlcache no longer loads one: fit the head again"
        )
    if not isinstance(name, str) or not HEAD_FILE_PATTERN.fullmatch(name):
        raise UserError(f"{sidecar_file} names no head file of tlcache's ({str(name)[:60]!r}); fit the head again")
    head_file = folder / name
    if not head_file.is_file():
        raise UserError(f"{head_file}, the head {sidecar_file} names, is missing; fit the head again")
    data = head_file.read_bytes()
    if hashlib.sha256(data).hexdigest() != sidecar.get("head_sha256"):
        raise UserError(f"{head_file} is not the head {sidecar_file} names (their digests differ); fit the head again")
    try:
        pipeline = headfile.load(io.BytesIO(data))
    except headfile.HeadFileError as exc:
        raise UserError(f"{head_file} was refused: {exc}; fit the head again") from None
    _check_head_fits(pipeline, sidecar, head_file)
    return pipeline, sidecar


def _few_shot_study(folder: Path) -> dict | None:
    """The few-shot summary of the report in ``folder``, when it holds one: such a run saves no head."""
    try:
        report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    few = report.get("few_shot") if isinstance(report, dict) else None
    return few if isinstance(few, dict) else None


def _read_sidecar(path: Path) -> Sidecar:
    """head.json, with the entries a head needs of the right types."""
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fit the head again") from None
    expected = {"head": str, "classes": list, "backbone": str, "backbone_spec": dict, "dim": int}
    problems = [
        key for key, kind in expected.items() if not isinstance(sidecar, dict) or type(sidecar.get(key)) is not kind
    ]
    if not problems:
        if not sidecar["classes"] or not all(isinstance(name, str) for name in sidecar["classes"]):
            problems.append("classes")
        if sidecar["dim"] < 1:
            problems.append("dim")
    if problems:
        raise UserError(f"{path} lacks or has malformed entries ({', '.join(problems)}); fit the head again")
    return sidecar


def _check_head_fits(pipeline, sidecar: Sidecar, head_file: Path) -> None:
    """The head takes the sidecar's features and predicts among its classes."""
    classes = getattr(pipeline, "classes_", None)
    inputs = getattr(pipeline, "n_features_in_", sidecar["dim"])
    valid = (
        hasattr(pipeline, "predict")
        and isinstance(classes, np.ndarray)
        and classes.dtype.kind in "iu"
        and classes.size > 0
        and 0 <= classes.min()
        and classes.max() < len(sidecar["classes"])
        and inputs == sidecar["dim"]
    )
    if not valid:
        raise UserError(
            f"{head_file} does not fit its sidecar ({len(sidecar['classes'])} classes, {sidecar['dim']}-d features); "
            f"fit the head again"
        )
    own = getattr(pipeline, "class_names_", None)  # None in heads of an older tlcache
    if own is not None and own != sidecar["classes"]:
        raise UserError(
            f"the classes of {SIDECAR_FILE} beside {head_file.name} are not the head's own (edited?): "
            f"{_first_difference(own, sidecar['classes'])}; fit the head again"
        )


def _first_difference(own: list, listed: list) -> str:
    if len(own) != len(listed):
        return f"{len(listed)} listed for {len(own)}"
    i = next(i for i, (a, b) in enumerate(zip(own, listed)) if a != b)
    return f"class {i} is {own[i]!r}, listed as {listed[i]!r}"


def write_report(report: RunReport, out_dir: Path, figures: bool = True) -> dict[str, Path]:
    """The report as JSON (for programs), Markdown (for people) and PNG figures: the confusion matrix, the
    reliability diagram, and the regularisation curve of the sweep (``figures`` False: left to
    :func:`write_figures`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / REPORT_FILE, "markdown": out_dir / MARKDOWN_FILE}
    write_whole(paths["json"], (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    write_whole(paths["markdown"], render_markdown(report).encode("utf-8"))
    if figures:
        paths.update(write_figures(report, out_dir))
    return paths


def write_figures(report: RunReport, out_dir: Path) -> dict[str, Path]:
    """A report's PNG figures in its run folder."""
    return render_figures(report, _figure_paths(out_dir))


def read_report(run_dir: str | Path) -> RunReport:
    """The report.json of a run folder."""
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        from tlcache.compare.summary import JSON_FILE as COMPARE_FILE
        from tlcache.compare.summary import MARKDOWN_FILE as COMPARE_MARKDOWN

        if (Path(run_dir) / COMPARE_FILE).is_file():
            raise UserError(
                f"{run_dir} is a comparison's folder: its report is {COMPARE_MARKDOWN}, written again by running "
                "the same `tlcache compare` (every finished cell is reused)"
            )
        heads = sorted(child.parent.name for child in Path(run_dir).glob(f"*/{REPORT_FILE}") if child.is_file())
        if (Path(run_dir) / LEADERBOARD_FILE).is_file() and heads:
            raise UserError(
                f"{run_dir} is the folder of `fit-head --head all`: each head's report is in its own folder "
                f"({', '.join(heads)}), e.g. `tlcache report {Path(run_dir) / heads[0]}`; the heads' ranking is "
                f"{LEADERBOARD_MARKDOWN}"
            )
        what = "holds no " + REPORT_FILE if Path(run_dir).exists() else "does not exist"
        raise UserError(f"{run_dir} {what}; pass a run folder written by `tlcache fit-head`")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fit the head again") from None
    if not (isinstance(report, dict) and isinstance(report.get("metrics"), dict) and "classes" in report):
        raise UserError(f"{path} is not a run report (no metrics or classes); fit the head again")
    if problem := report_inconsistency(report):
        raise UserError(f"{path} does not agree with itself ({problem}): edited or damaged; fit the head again")
    return report


def render_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.md and the figures of a run folder again from its report.json (`tlcache report`). A report
    that lacks what they show, or holds it in another shape, is one line naming it."""
    run_dir = Path(run_dir)
    read_report(run_dir)  # a folder without a report is refused before its lock is made
    with writing_run(run_dir):
        report = read_report(run_dir)
        markdown = run_dir / MARKDOWN_FILE
        try:
            text = render_markdown(report)
            figures = write_figures(report, run_dir)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # a hand-edited or foreign file
            raise UserError(
                f"{run_dir / REPORT_FILE} lacks or has malformed entries ({type(exc).__name__}: {exc}); fit the "
                "head again"
            ) from None
        write_whole(markdown, text.encode("utf-8"))
    return {"markdown": markdown, **figures}


def _figure_paths(out_dir: Path) -> dict[str, Path]:
    return {name: out_dir / file for name, file in FIGURE_FILES.items()}
