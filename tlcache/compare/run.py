"""`tlcache compare`: frozen heads against fine-tuning, on the same training draws, seeds and test items.

Every method runs on the same cells: for each number of labelled items per class ("shots", or all of them) and
each seed, the same training items are drawn (the seed draws them) and the same test items score every method.
Frozen heads fit on features embedded once through the cache; fine-tunes train the backbone itself. Every choice
(a head's regularisation, a fine-tune's epoch) is made on validation data carved from the training items; the test
items are scored once per cell. Cells are saved as they end (tlcache.compare.cells), so a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlcache.compare.cells import CellKey, kept_probe, load_cell, run_cells
from tlcache.compare.features import Candidate, choose, wanted_candidates
from tlcache.compare.plan import (
    PROBE_PER_CLASS,
    PROBE_TEST_PER_CLASS,
    Budget,
    FinetuneClock,
    finetune_order,
    plan_lines,
    probe_rates,
)
from tlcache.compare.summary import summarise, write_compare_report
from tlcache.errors import UserError, check_choice
from tlcache.finetune.config import FinetuneConfig
from tlcache.head_choices import HEADS
from tlcache.heads import make_head
from tlcache.paths import check_output_folder
from tlcache.report import classification_metrics, sweep_summary
from tlcache.sources import Source, classes_needed, load_source
from tlcache.splits import remap_labels, sample_shots, shared_with_training, stratified_split
from tlcache.store import FeatureStore

DEFAULT_HEADS = ("logreg", "svm", "mlp")
FINETUNES = ("ft", "lp-ft")  # the fine-tune stage from the pretrained weights, and from a linear-probe warm start
DEFAULT_SHOTS: tuple[int | str, ...] = (4, 16, 64, "all")
TEST_SPLIT_SEED = 0  # the held-out test items, when no --test is given: the same for every seed and method


@dataclass
class CompareResult:
    out_dir: Path
    cells: list[dict]
    ran: int  # cells computed by this call (the others were finished before)
    summary: dict


def compare(
    train: str | Path,
    *,
    test: str | Path | None = None,
    test_fraction: float = 0.2,
    backbone: str | None = None,
    heads: tuple[str, ...] = DEFAULT_HEADS,
    finetunes: tuple[str, ...] = FINETUNES,
    shots: tuple[int | str, ...] | None = None,
    repeats: int = 3,
    layers: tuple[str, ...] | None = None,
    budget: float | None = None,
    out: str | Path = "runs/compare",
    cache: str | Path | None = None,
    finetune_config: FinetuneConfig | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    source_options: dict | None = None,
    **backbone_options,
) -> CompareResult:
    """Run (or resume) the comparison's cells in ``out`` and write its report there (compare.json, compare.md,
    learning_curve.png, accuracy_time.png). ``shots`` are labelled items per class (integers) or "all"
    (None: DEFAULT_SHOTS, less the counts above the smallest class, with a warning);
    ``repeats`` seeds (0 .. repeats - 1) each draw their own training items. ``layers`` lists candidate features
    for the frozen heads (``default``, ``LAYER`` or ``LAYER:POOL`` of the backbone; ``("auto",)``: the backbone's
    own suggestions, Backbone.candidate_layers), and a ``backbone`` of several
    comma-separated names adds the others' default features, each cell choosing among them on validation items
    carved from its training items (tlcache.compare.features); the fine-tunes train the first. ``budget``
    (seconds of wall time, from the start) leaves out the fine-tune cells that would not end within it
    (tlcache.compare.plan), and the report names them. ``finetune_config`` sets the fine-tunes (its seed and
    LP-FT switch are the cell's); ``precision`` is the frozen features' (see :func:`tlcache.embed.embed_source`);
    other keyword arguments choose the backbone's layer, pooling, image size, as for ``embed``;
    ``source_options`` name the columns of CSV/JSONL sources, as for ``load_source``."""
    from tlcache.embed import DEFAULT_BACKBONES, embed_source

    clock = Budget(budget)
    given_shots = shots is not None
    heads, finetunes, shots = _checked_request(heads, finetunes, shots or DEFAULT_SHOTS, repeats, budget)
    config = finetune_config or FinetuneConfig()
    config.validate()
    out_dir = check_output_folder(out)
    source_options = source_options or {}
    train_src, test_src, description = _split(load_source(train, **source_options), test, test_fraction, source_options)
    backbone, *others = (backbone or DEFAULT_BACKBONES[train_src.modality]).split(",")
    wanted = wanted_candidates(backbone, others if heads else [], layers if heads else None, backbone_options)

    def embed(*args, **options):  # methods compare on the same items, so every one must be read
        done = embed_source(*args, out=cache, device=device, precision=precision, progress=progress, **options)
        return done.refused_if_skipped(skip_option=False)

    data, embedded = _embedded(train_src, test_src, backbone, backbone_options, wanted, embed)
    shots = data.check_shots(shots, given=given_shots)
    identity = _identity(train_src, test_src, embedded[0].key, backbone, backbone_options, config)
    frozen = [CellKey(m, "frozen", shot, seed) for shot in shots for seed in range(repeats) for m in heads]
    tuned = [CellKey(m, "finetune", shot, seed) for shot in shots for seed in range(repeats) for m in finetunes]
    tuned = finetune_order(tuned)
    say = print if progress else lambda _: None
    tuner = _Tuner(backbone, cache, device, backbone_options)

    def run_one(key: CellKey) -> dict:
        rows = data.draw(key.shots, key.seed)
        if key.kind == "frozen":
            return _frozen_cell(data, key, rows)
        settings = _cell_settings(config, len(rows), len(data.class_names), seed=key.seed, lp_ft=key.method == "lp-ft")
        return _finetune_cell(data, key, rows, tuner, settings, out_dir)

    frozen_identity = {**identity, "candidates": {c.name: c.train.key for c in data.candidates}}
    # Every frozen cell runs, whatever the budget (--budget's help): every verdict needs them. One saved without its
    # validation accuracy (which picks the best head) runs again.
    needs = ("validation_accuracy",)
    n_test = len(data.y_test)
    cells, ran = run_cells(
        out_dir, frozen, frozen_identity, run_one, say, redo=("candidates",), needs=needs, n_test=n_test
    )
    saved = functools.partial(load_cell, out_dir, identity=identity, n_test=n_test)
    admit = None
    if clock.seconds is not None and any(saved(key) is None for key in tuned):
        probe = functools.partial(
            kept_probe, out_dir, identity, functools.partial(_probe_finetune, data, tuner, config, out_dir)
        )
        # The plan is said whatever ``progress``: it is what the budget decided, not a bar (a user of --no-progress
        # would otherwise learn only at the end that no fine-tune fitted).
        admit = _admission(data, tuned, config, clock, probe, saved, print)
    more, ran_tuned = run_cells(out_dir, tuned, identity, run_one, say, admit=admit, n_test=n_test)
    cells, ran = cells + more, ran + ran_tuned
    if not cells:
        raise UserError(f"--budget {budget:g} s left no time for any cell after embedding; give more time")
    embed_seconds = sum(result.seconds for result in embedded)
    per_class, floor = data.items_per_class(), data.majority()
    summary = summarise(cells, data.class_names, description, backbone, per_class, embed_seconds, floor)
    summary["budget"] = {"seconds": budget, "left_out": clock.left_out}
    write_compare_report(summary, out_dir)
    return CompareResult(out_dir, cells, ran, summary)


def _embedded(train_src: Source, test_src: Source, backbone: str, options: dict, wanted: list, embed):
    """The sources with their default features (labels, ids) and the frozen heads' candidates ``wanted`` ((name,
    backbone, options) each), every pair of stores embedded once through ``embed``; and the embed results."""
    pairs: dict = {}

    def pair(name: str, candidate_options: dict) -> list:
        key = (name, repr(sorted(candidate_options.items())))
        if key not in pairs:
            pairs[key] = [embed(part, name, **candidate_options) for part in (train_src, test_src)]
        return pairs[key]

    default = pair(backbone, options)
    data = _Data(train_src, test_src, FeatureStore(default[0].path), FeatureStore(default[1].path))
    for name, candidate_backbone, candidate_options in wanted:
        train, test = pair(candidate_backbone, candidate_options)
        data.candidates.append(Candidate(name, FeatureStore(train.path), FeatureStore(test.path)))
    return data, [result for results in pairs.values() for result in results]


def _identity(train_src: Source, test_src: Source, features_key: str, backbone: str, options: dict, config) -> dict:
    """What a comparison's cells must share to be reused by a rerun: the data, the features, the fine-tune
    settings (but each cell's own seed and LP-FT switch)."""
    return {
        "train": train_src.fingerprint,
        "test": test_src.fingerprint,
        "features": features_key,
        "backbone": backbone,
        "backbone_options": options,
        "finetune": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("seed", "lp_ft")},
    }


def _admission(data: _Data, tuned: list[CellKey], config, clock: Budget, probe, finished, say):
    """The fine-tunes' plan within the budget (said before they start) and the check before each of their cells:
    its estimate (at the probe's rate, then at the finished cells') must end within the budget. A budget spent
    already runs no probe (a new user's ran its half minute past a budget the frozen cells had used up)."""
    if clock.elapsed() >= clock.seconds:
        waiting = [key for key in tuned if not finished(key)]
        say(
            f"plan: 0 of {len(waiting)} fine-tune cells fit the budget of {clock.seconds:.0f} s ({clock.elapsed():.0f} "
            "s spent on embedding and the frozen cells); a rerun with a larger --budget reuses every finished cell"
        )
        return clock.spent
    estimate = FinetuneClock(*probe(), config, len(data.test_rows))
    pending = [(key, estimate.seconds(key, data.n_train(key.shots))) for key in tuned if not finished(key)]
    for line in plan_lines(pending, clock):
        say(line)
    last: list = []

    def admit(key: CellKey) -> bool:
        if last:  # the previous admitted cell has finished: its time sharpens the estimate
            previous, started = last.pop()
            estimate.measured(previous, data.n_train(previous.shots), clock.elapsed() - started)
        admitted = clock.admits(key, estimate.seconds(key, data.n_train(key.shots)))
        if admitted:
            last.append((key, clock.elapsed()))
        return admitted

    return admit


def _cell_settings(config: FinetuneConfig, n_train: int, n_classes: int, **changes) -> FinetuneConfig:
    """A cell's fine-tune settings: its own seed and LP-FT switch, and a validation fraction that holds out at
    least one item of each class (a quarter of 4 items per class, where the default tenth holds out none)."""
    return dataclasses.replace(config, val_fraction=max(config.val_fraction, n_classes / n_train), **changes)


def _probe_finetune(data: _Data, tuner: _Tuner, config, out_dir: Path):
    """(fixed seconds, seconds per training item) of the fine-tune, from one epoch on PROBE_PER_CLASS training
    items of each class and one on three times as many (see tlcache.compare.plan)."""
    labelled = np.flatnonzero(data.labels >= 0)
    smallest = int(np.bincount(data.labels[labelled]).min())
    per_class = min(PROBE_TEST_PER_CLASS, int(np.bincount(data.y_test).min()))
    # Said whatever ``progress``, as the plan is: a new user's probe ran 3 minutes without a line.
    print(
        f"timing a fine-tune to plan the budget: one epoch each on {PROBE_PER_CLASS}, {PROBE_PER_CLASS} and "
        f"{3 * PROBE_PER_CLASS} items of every class (kept for reruns)",
        flush=True,
    )
    test_rows = np.concatenate([data.test_rows[data.y_test == c][:per_class] for c in np.unique(data.y_test)])
    timings = []
    # The first run warms the caches (weights read from disk, libraries set up), as for every later cell: dropped.
    for size in (PROBE_PER_CLASS, PROBE_PER_CLASS, 3 * PROBE_PER_CLASS):
        rows = sample_shots(labelled, data.labels, min(size, smallest), 0, str(data.train.path))
        settings = _cell_settings(
            config, len(rows), len(data.class_names), epochs=1, head_epochs=0, lp_ft=False, seed=0
        )
        clock = FinetuneClock(0.0, 0.0, settings, len(test_rows))
        started = time.perf_counter()
        tuner.run(
            data.train.subset(rows), data.test.subset(test_rows), out_dir / "probe" / f"{len(timings)}-{size}", settings
        )
        timings.append((clock.items(CellKey("ft", "finetune", size, 0), len(rows)), time.perf_counter() - started))
    # Timed, the probe's runs are of no further use: each keeps a copy of the backbone (263 MB for three of minilm).
    shutil.rmtree(out_dir / "probe", ignore_errors=True)
    (small, first), (large, second) = timings[1:]
    return probe_rates(small, first, large, second)


def _checked_request(heads, finetunes, shots, repeats: int, budget: float | None) -> tuple[tuple, tuple, tuple]:
    """The heads, fine-tunes and counts asked for, each once (a cell is one method at one count and seed); a
    request that cannot run is one line."""
    heads, finetunes, shots = (tuple(dict.fromkeys(names)) for names in (heads, finetunes, shots))
    for head in heads:
        check_choice("--heads", head, [h for h in HEADS if h != "sgd"], "is not a head here (none: no frozen head)")
    for method in finetunes:
        check_choice("--finetune", method, FINETUNES, "is not a fine-tune here (none: no fine-tune)")
    if not heads and not finetunes:
        raise UserError("compare needs a method: give --heads, --finetune or both")
    for shot in shots:
        if shot != "all" and (not isinstance(shot, int) or shot < 1):
            raise UserError(f"--shots {shot} must be a whole number of 1 or more, or all")
    if repeats < 1:
        raise UserError(f"--repeats {repeats} must be 1 or more")
    if finetunes and any(shot != "all" and shot < 2 for shot in shots):
        raise UserError("a fine-tune needs 2 or more items per class (one held out for validation); raise --shots")
    if budget is not None and budget <= 0:
        raise UserError(f"--budget {budget:g} s must be more than nothing")
    return heads, finetunes, shots


def _split(src: Source, test, test_fraction: float, source_options: dict) -> tuple[Source, Source, str]:
    """(training source, test source, the test items in words): ``test`` as given, or a stratified
    ``test_fraction`` of ``src`` held out once (seed TEST_SPLIT_SEED), the same items for every cell."""
    labels = np.asarray(src.label_indices)
    labelled = np.flatnonzero(labels >= 0)
    classes_needed(src, "compare")
    if test is not None:
        test_src = load_source(test, **source_options)
        if not (np.asarray(test_src.label_indices) >= 0).any():
            raise UserError(f"--test {test} holds no labelled items; compare scores every method on labelled ones")
        tested = np.flatnonzero(np.asarray(test_src.label_indices) >= 0)
        shared = shared_with_training(
            [src.fingerprints[r] for r in labelled], [test_src.fingerprints[r] for r in tested], f"--test {test}"
        )
        return src.subset(labelled), test_src, f"source {test}" + _also_trained(shared)
    train_rows, test_rows = stratified_split(labelled, labels[labelled], test_fraction, TEST_SPLIT_SEED, str(src.path))
    held_out = [src.fingerprints[r] for r in test_rows]
    shared = shared_with_training([src.fingerprints[r] for r in train_rows], held_out, str(src.path), given=False)
    train, held = src.subset(train_rows), src.subset(test_rows)
    return train, held, f"{test_fraction:g} of {src.path} held out, stratified" + _also_trained(shared)


def _also_trained(shared: int) -> str:
    """The words compare.md adds to its test items' description when some are also training items."""
    return (
        f"; **{shared} of them also training items** (the same content), which flatters every method" if shared else ""
    )


@dataclass
class _Data:
    """The sources and their feature stores, and the labels the cells need."""

    train: Source
    test: Source
    train_store: FeatureStore
    test_store: FeatureStore
    candidates: list[Candidate] = field(default_factory=list)  # the frozen heads' features to choose among

    def __post_init__(self) -> None:
        self.class_names = self.train_store.class_names
        self.labels = self.train_store.labels()
        test_labels = self.test_store.labels()
        self.test_rows = np.flatnonzero(test_labels >= 0)
        where = f"test source {self.test.path}"
        self.y_test = remap_labels(test_labels[self.test_rows], self.test_store.class_names, self.class_names, where)

    def check_shots(self, shots, given: bool = True) -> tuple:
        """The shot counts to run: before any cell runs, those larger than the smallest class are refused when
        ``given``, else (the default counts) left out with a warning."""
        counts = np.bincount(self.labels[self.labels >= 0])
        smallest = int(counts[counts > 0].min())
        too_many = [shot for shot in shots if shot != "all" and shot > smallest]
        if too_many and given:
            raise UserError(
                f"{self.train.path}: the smallest class has {smallest} training items, fewer than --shots "
                f"{','.join(map(str, too_many))}; use smaller counts or all"
            )
        if too_many:
            warnings.warn(
                f"{self.train.path}: the smallest class has {smallest} training items, so the default --shots "
                f"{','.join(map(str, too_many))} are left out; give --shots to choose the counts",
                UserWarning,
                stacklevel=2,
            )
        return tuple(shot for shot in shots if shot not in too_many)

    def n_train(self, shots: int | str) -> int:
        """How many training rows a cell of ``shots`` draws (whatever its seed)."""
        labelled = self.labels[self.labels >= 0]
        return len(labelled) if shots == "all" else int(shots) * len(np.unique(labelled))

    def draw(self, shots: int | str, seed: int) -> np.ndarray:
        """The training rows of a cell: all labelled ones, or ``shots`` of each class drawn with ``seed``."""
        labelled = np.flatnonzero(self.labels >= 0)
        if shots == "all":
            return labelled
        return sample_shots(labelled, self.labels, int(shots), seed, str(self.train.path), self.class_names)

    def items_per_class(self) -> float:
        """What "all" means in labelled items per class (the mean over classes), for the learning curve."""
        labelled = self.labels[self.labels >= 0]
        return float(len(labelled) / len(np.unique(labelled)))

    def majority(self) -> dict:
        """The floor of every method: always answering the most frequent class of the labelled training items (the
        first of those as frequent), scored on the test items."""
        labelled = self.labels[self.labels >= 0]
        top = int(np.bincount(labelled, minlength=len(self.class_names)).argmax())
        return {"class": self.class_names[top], "accuracy": float(np.mean(self.y_test == top))}


@dataclass
class _Tuner:
    """How every fine-tune of a comparison runs: the backbone and its options, the cache LP-FT embeds through, the
    device."""

    backbone: str
    cache: str | Path | None
    device: str
    backbone_options: dict

    def run(self, train: Source, test: Source, out: Path, config: FinetuneConfig):
        """The fine-tune into ``out``, a folder of the comparison's own: what an unfinished cell left there (killed
        before its cell file was saved, which is the only record of a finished cell) is removed first."""
        from tlcache.finetune import finetune

        shutil.rmtree(out, ignore_errors=True)

        options = dict(cache=self.cache, device=self.device, progress=False, check_test=False, **self.backbone_options)
        return finetune(train, self.backbone, test=test, out=out, config=config, **options)


def _frozen_cell(data: _Data, key: CellKey, rows: np.ndarray) -> dict:
    """A head fitted on cached features of ``rows`` (its sweep on held-out training rows), scored on the test;
    with candidate features, those the cell chose on held-out training rows (recorded with their scores)."""
    started = time.perf_counter()
    chosen, scores = choose(data.candidates, key.method, key.seed, rows, data.labels)
    X = chosen.train.features()
    pipeline = make_head(key.method, key.seed, n_train=len(rows)).fit(X[rows], data.labels[rows])
    predicted = pipeline.predict(chosen.test.features()[data.test_rows])
    cell = _scored(data, predicted, time.perf_counter() - started, cached=True)
    # The sweep's accuracy at its chosen value, on rows held out from ``rows``: what picks the best head (stats).
    cell["validation_accuracy"] = sweep_summary(pipeline)["validation_accuracy"]
    return {**cell, "features": chosen.name, "feature_scores": scores} if len(data.candidates) > 1 else cell


def _finetune_cell(data: _Data, key, rows, tuner: _Tuner, config, out_dir: Path) -> dict:
    """The fine-tune stage on the items of ``rows`` (its epoch chosen on validation items carved from them),
    scored on the test items through its predictions.csv."""
    import pandas as pd

    started = time.perf_counter()
    run = tuner.run(data.train.subset(rows), data.test, out_dir / "finetunes" / key.name, config)
    tested = pd.read_csv(run.out_dir / "predictions.csv", dtype={"id": str}, keep_default_na=False)
    by_id = dict(zip(tested["id"], tested["label"]))
    index = {name: i for i, name in enumerate(data.class_names)}
    ids = data.test_store.ids()
    predicted = np.array([index[by_id[ids[row]]] for row in data.test_rows])
    tune = run.report["finetune"]  # the epoch its validation items chose, of those it ran
    cell = _scored(data, predicted, time.perf_counter() - started, cached=False)
    return {
        **cell,
        "best_epoch": tune["best_epoch"],
        "epochs_run": tune["epochs_run"],
        "val_items": run.report["n_val"],
        "validation_accuracy": tune["best_val_accuracy"],  # at the chosen epoch: what picks the best fine-tune
    }


def _scored(data: _Data, predicted: np.ndarray, seconds: float, cached: bool) -> dict:
    metrics = classification_metrics(data.y_test, predicted, data.class_names)
    correct = (predicted == data.y_test).astype(int)
    return {
        "accuracy": float(metrics["accuracy"]),
        "macro_f1": float(metrics["macro_f1"]),
        "seconds": round(seconds, 3),
        "cached": cached,
        "correct": correct.tolist(),
    }
