"""scikit-learn heads on cached features: the heads and their sweeps, the evaluation protocol (held-out or
separate test data, few-shot draws, calibration, per-group metrics), and fitting out of core."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlcache.cache import mark_used
from tlcache.errors import UserError, warn_once
from tlcache.head_choices import GRIDS, check_head
from tlcache.paths import check_output_folder
from tlcache.predictions import save_predictions
from tlcache.progress import sweep_bar
from tlcache.provenance import utc_now
from tlcache.report import (
    Calibration,
    FewShot,
    RunReport,
    calibration_summary,
    classification_metrics,
    group_metrics,
    seed_spread,
    sweep_summary,
)
from tlcache.runs import (
    LEADERBOARD_FILE,
    HeadRun,
    Sidecar,
    check_run_output,
    check_same_features,
    clear_previous_run,
    default_run_dir,
    feature_identity,
    write_head,
    write_report,
    writing_run,
)
from tlcache.splits import (
    content_digest,
    remap_labels,
    sample_shots,
    shared_with_training,
    stratified_split,
)
from tlcache.store import FeatureStore

STREAM_BATCH = 4096  # rows per read when a head streams through a store
SGD_EPOCHS = 10
# Stopping on the training loss from 1000 rows too: +2.0 points of held-out accuracy on Fashion-MNIST, -1.6 on Rotten
# Tomatoes, -0.2 on MNIST-5k, at 3-5 times the time (benchmarks/results/mlp_protocol.md); below: mlp_stopping.md.
MLP_EARLY_STOPPING_MIN_ROWS = 1000
# Epochs without a better held-out accuracy before the mlp stops early (it keeps its best epoch's weights):
# scikit-learn's 10. Five took a third to a half less time on the image tasks and lost 0.5-0.7 points of held-out
# accuracy on MNIST-5k (two CPUs); twenty was level on all three tasks at 1.2-1.9 times the time
# (benchmarks/results/mlp_protocol.md).
MLP_PATIENCE = 10
# ReLU units in the mlp's hidden layer. 256 and 128 lost 1.3-1.9 points of held-out accuracy on Rotten Tomatoes and
# 0.5-0.9 on MNIST-5k, though not on Fashion-MNIST (benchmarks/results/mlp_protocol.md, two CPUs).
MLP_HIDDEN = 512


def make_head(
    name: str,
    seed: int = 0,
    n_train: int | None = None,
    grid: list[float] | None = None,
    class_weight: str | None = None,
    calibration: str | None = None,
):
    """A Pipeline of standardisation (dead, near-constant columns dropped first; L2 normalisation for svm, none
    for knn) and the named classifier, with its hyperparameter swept (see tlcache.head_choices.GRIDS).

    Every head gives ``predict_proba``; ``predict`` is the chosen model's own decisions. ``grid`` replaces the
    head's default grid; ``class_weight="balanced"`` reweights classes; ``calibration`` ("sigmoid" or "isotonic")
    maps the chosen model's decision values to probabilities with a calibrator fitted on its sweep's held-out
    values (SVMs always get one: sigmoid unless asked otherwise).
    ``n_train`` (the training rows, when known) lets ``mlp`` stop early only when its 10% validation split is big
    enough to be trusted: on a few dozen items, one lucky epoch would end training.
    """
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC

    from tlcache.kernel_svm import SweptKernelSVC
    from tlcache.knn import SweptKNN
    from tlcache.linear import OvrLogisticSGD, SweptLogisticRegression
    from tlcache.linear_svm import LinearSVM, SweptLinearSVM
    from tlcache.mlp import MLPHead, SweptMLP
    from tlcache.scaling import DropDeadFeatures

    values = check_head(name, grid, class_weight, calibration)
    if name == "sgd":
        # Fitted out of core by fit_head, with a fixed alpha (a sweep would read the store once per value).
        return make_pipeline(StandardScaler(), OvrLogisticSGD(loss="log_loss", alpha=1e-4, random_state=seed))
    param = GRIDS[name][0]
    if name == "logreg":
        classifier = SweptLogisticRegression(
            Cs=values, class_weight=class_weight, random_state=seed, calibration=calibration
        )
        return make_pipeline(DropDeadFeatures(), StandardScaler(), classifier)
    if name == "linear-svm":
        # LinearSVC's problem solved in the primal, warm-started along the grid (tlcache.linear_svm). The intercept
        # is a weight on a constant column of 10, not 1, so that it is nearly free: measured +1.1 points on Rotten
        # Tomatoes and +0.7 on Fashion-MNIST (seed 0).
        swept = SweptLinearSVM(LinearSVM(class_weight=class_weight), param, values, calibration, random_state=seed)
        return make_pipeline(DropDeadFeatures(), StandardScaler(), swept)
    if name == "svm":
        # RBF on L2-normalised embeddings (a kernel of their cosine similarity) rather than on standardised ones:
        # measured +0.6 points on Rotten Tomatoes/minilm and +0.8 on Fashion-MNIST/efficientnet-lite0 (3 seeds).
        svc = SVC(kernel="rbf", class_weight=class_weight, random_state=seed)
        return make_pipeline(Normalizer(), SweptKernelSVC(svc, param, values, calibration, random_state=seed))
    if name == "mlp":  # scikit-learn's MLPClassifier recipe in torch, alpha swept coarse to fine (tlcache.mlp)
        early_stopping = n_train is None or n_train >= MLP_EARLY_STOPPING_MIN_ROWS
        mlp = MLPHead(
            hidden=MLP_HIDDEN,
            early_stopping=early_stopping,
            n_iter_no_change=MLP_PATIENCE,
            max_iter=300,
            random_state=seed,
        )
        swept = SweptMLP(mlp, param, values, calibration, random_state=seed)
        return make_pipeline(DropDeadFeatures(), StandardScaler(), swept)
    # knn: cosine similarity of the raw embeddings, as retrieval uses them; neighbours found once per split
    values = [int(v) for v in values]
    swept = SweptKNN(
        KNeighborsClassifier(metric="cosine", weights="distance"), param, values, calibration, random_state=seed
    )
    return make_pipeline(swept)


def fit_head(
    store: str | Path | FeatureStore,
    head: str = "logreg",
    *,
    test: str | Path | FeatureStore | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    out: str | Path | None = None,
    use_views: bool = True,
    grid: list[float] | None = None,
    class_weight: str | None = None,
    calibrate: str | None = None,
    shots: int | None = None,
    repeats: int = 5,
    figures: bool = True,
    progress: bool = True,
) -> HeadRun:
    """Fit ``head`` on a store's labelled rows and evaluate it on ``test`` (a store of the same features) or on a
    stratified ``test_fraction`` held out with ``seed``. Writes the head (head-<digest>.npz, see tlcache.runs),
    head.json and the report (JSON, Markdown, PNG) to ``out`` (default ``runs/<store name>/<head>``).

    The head's hyperparameter is swept over ``grid`` (default: the head's own, head_choices.GRIDS) on held-out training
    data and refitted on all of it; the curve goes into the report. ``calibrate`` ("sigmoid" or "isotonic")
    calibrates the probabilities and reports the expected calibration error before and after. ``shots`` switches
    to the few-shot protocol: ``shots`` items per class are drawn ``repeats`` times (seeds ``seed`` ..
    ``seed + repeats - 1``) and the report gives the mean and spread; no head is saved then. ``figures`` False
    leaves the PNG figures to :func:`tlcache.runs.write_figures`. ``progress``: a bar of the values swept, on a
    terminal.

    A store with augmented views trains on them too (each training item's views join the training set with its
    label; test items are never augmented) unless ``use_views`` is False. The ``sgd`` head reads the store in row
    batches and never holds all features in memory. A store with groups gets per-group metrics.
    """
    train_store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    out_dir = check_output_folder(out) if out is not None else default_run_dir(train_store.path, head)
    if (out_dir / LEADERBOARD_FILE).is_file():  # a new user's knn landed beside the five heads and their ranking
        raise UserError(
            f"--out {out_dir} is the folder of `fit-head --head all`; fit {head} into its own folder there "
            f"({out_dir / head}) or into another folder"
        )
    check_run_output(out_dir)
    labels = train_store.labels()
    # Few-shot runs train on their draws: the test items among them are counted (and said) once drawn.
    train_rows, tested = _test_set(train_store, labels, test, test_fraction, seed, warn=shots is None)
    for used in {train_store.path, tested.store.path}:  # a fit is a use, as a cache hit is (tlcache gc)
        mark_used(used)
    if len(np.unique(labels[train_rows])) < 2:
        raise UserError(f"{train_store.path}: the training rows hold a single class; a head needs two or more")
    n_views = train_store.n_views if use_views else 0
    options = {"grid": grid, "class_weight": class_weight}
    make_head(head, seed, calibration=calibrate, **options)  # refuse bad combinations before any work

    few_shot = None
    if shots is not None and head == "sgd":
        raise UserError("--shots does not apply to the sgd head; use an in-memory head such as logreg")
    if shots is not None:
        runs, drawn = [], set()
        for repeat in range(repeats):
            rows = sample_shots(
                train_rows, labels, shots, seed + repeat, str(train_store.path), train_store.class_names
            )
            drawn.update(rows.tolist())
            runs.append(_fit_once(head, train_store, rows, labels, n_views, seed + repeat, calibrate, options))
        fitted = runs[0]
        tested.in_training = _in_draws(train_store, sorted(drawn), tested)
        few_shot = _few_shot_summary(runs, tested, train_store.class_names, shots, seed)
    else:
        with sweep_bar(head, progress):
            fitted = _fit_once(head, train_store, train_rows, labels, n_views, seed, calibrate, options)
    scored = _score(fitted["pipeline"], tested, len(train_store.class_names))
    report = _report(head, train_store, fitted, tested, scored, seed, n_views, class_weight, calibrate, few_shot)
    with writing_run(out_dir):
        clear_previous_run(out_dir, head=few_shot is None)
        if few_shot is None:
            write_head(out_dir, fitted["pipeline"], _sidecar(head, seed, train_store, train_rows))
            _write_test_predictions(out_dir, train_store.class_names, tested, *scored)
        write_report(report, out_dir, figures=figures)
    from tlcache.all_heads import refresh_leaderboard  # (all_heads imports this module)

    refresh_leaderboard(out_dir)  # a head of a `--head all` folder, fitted again on its own
    return HeadRun(out_dir, report)


@dataclass
class _TestSet:
    """The items a head is scored on: rows of a store, their labels as training-class indices, and in words."""

    store: FeatureStore
    rows: np.ndarray
    labels: np.ndarray
    description: str
    in_training: int = 0  # test items whose content is also a training item's (splits.shared_with_training)


def _in_draws(train_store: FeatureStore, drawn: list[int], tested: _TestSet) -> int:
    """Test items whose content is among the training items some few-shot draw took (a new user's 8-shot report
    counted those of the whole store: 48, where the draws held at most 30), with the warning."""
    fingerprints, test_fingerprints = train_store.fingerprints(), tested.store.fingerprints()
    return shared_with_training(
        [fingerprints[r] for r in drawn],
        [test_fingerprints[r] for r in tested.rows],
        f"test items ({tested.description}) against the few-shot draws",
        given=False,
    )


def _test_set(train_store: FeatureStore, labels: np.ndarray, test, test_fraction: float, seed: int, warn: bool = True):
    """(training rows, test set): every labelled row and a test store of the same features, or a stratified
    ``test_fraction`` of the labelled rows held out with ``seed``. ``warn``: of test items that are training
    items."""
    labelled = _labelled_rows(train_store, labels)
    fingerprints = train_store.fingerprints()
    if test is None:
        where = str(train_store.path)
        train_rows, rows = stratified_split(labelled, labels[labelled], test_fraction, seed, where)
        held_out = [fingerprints[r] for r in rows]
        shared = shared_with_training([fingerprints[r] for r in train_rows], held_out, where, False, warn)
        description = f"{test_fraction:g} held out, stratified, seed {seed}"
        _warn_of_untested_classes(train_store.class_names, labels[rows], where)
        return train_rows, _TestSet(train_store, rows, labels[rows], description, shared)
    test_store = test if isinstance(test, FeatureStore) else FeatureStore(test)
    where = f"test store {test_store.path}"
    check_same_features(train_store.meta, test_store.meta, where)
    test_labels = test_store.labels()
    rows = _labelled_rows(test_store, test_labels)
    y = remap_labels(test_labels[rows], test_store.class_names, train_store.class_names, str(test_store.path))
    tested = test_store.fingerprints()
    shared = shared_with_training([fingerprints[r] for r in labelled], [tested[r] for r in rows], where, warn=warn)
    _warn_of_untested_classes(train_store.class_names, y, where)
    return labelled, _TestSet(test_store, rows, y, f"store {test_store.path}", shared)


def _warn_of_untested_classes(class_names: list[str], y_test: np.ndarray, where: str) -> None:
    """A warning naming the training classes without a test item: a new user's 30 pie charts and 1 bar chart
    scored "accuracy 1.0000, macro F1 1.0000" without a word of the bar charts (macro F1 averages the classes the
    test items hold or the head predicts)."""
    counts = np.bincount(np.asarray(y_test, dtype=np.int64), minlength=len(class_names))
    missing = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if missing:
        named = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        warn_once(
            f"{where}: {len(missing)} of {len(class_names)} classes have no test items ({named}): the test figures "
            "say nothing of them and macro F1 averages the others; give the test set items of every class"
        )


def _score(pipeline, tested: _TestSet, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The head's probabilities (a column per training class) and its own decisions for the test rows."""
    return _full_proba(pipeline, tested.store, tested.rows, n_classes), predict_rows(
        pipeline, tested.store, tested.rows
    )


def _write_test_predictions(out_dir: Path, classes: list[str], tested: _TestSet, probabilities, y_pred) -> None:
    ids = tested.store.ids()
    truth = [classes[label] for label in tested.labels]
    predicted = [classes[c] for c in y_pred]
    save_predictions(out_dir, [ids[row] for row in tested.rows], predicted, probabilities, classes, truth)


def _report(
    head, train_store, fitted, tested: _TestSet, scored, seed, n_views, class_weight, calibrate, few_shot
) -> RunReport:
    classes = train_store.class_names
    probabilities, y_pred = scored
    report = {
        "head": head,
        "backbone": train_store.meta["backbone"],
        "dim": train_store.dim,
        "store": str(train_store.path),
        "test": tested.description,
        "seed": seed,
        "n_train": int(len(fitted["rows"])),
        "views_per_item": n_views,
        "n_test": int(len(tested.labels)),
        "test_in_training": tested.in_training,
        "unreadable": _unreadable(train_store, tested.store) or None,
        "classes": classes,
        "class_weight": class_weight,
        "fit_seconds": round(fitted["seconds"], 4),
        "metrics": classification_metrics(tested.labels, y_pred, classes),
        "sweep": sweep_summary(fitted["pipeline"]),
        "calibration": _calibration_report(fitted, probabilities, y_pred, tested, len(classes), calibrate),
        "groups": _group_report(tested, y_pred),
        "few_shot": few_shot,
        "created": utc_now(),
    }
    return {k: v for k, v in report.items() if v is not None or k == "class_weight"}


def _unreadable(train_store: FeatureStore, test_store: FeatureStore) -> int:
    """Items of the stores' sources left out when they were embedded (a report said nothing of a new user's 4)."""
    stores = {train_store.path: train_store, test_store.path: test_store}
    return sum(len(store.skipped()) for store in stores.values())


def _sidecar(head: str, seed: int, store: FeatureStore, rows: np.ndarray) -> Sidecar:
    """head.json's entries for a head fitted on ``rows`` of ``store``."""
    meta = store.meta
    fingerprints = store.fingerprints()
    return {
        "head": head,
        "classes": store.class_names,
        "seed": seed,
        "store": str(store.path),
        "store_key": store.key,
        "backbone": meta["backbone"],
        "backbone_spec": meta["backbone_spec"],
        **feature_identity(meta),
        "tlcache_version": meta.get("tlcache_version"),
        # What the head was trained on, so that predict can say which of its items are training items.
        "training_items": content_digest([fingerprints[r] for r in rows]),
    }


def _fit_once(head, store, rows, labels, n_views, seed, calibrate, options) -> dict[str, Any]:
    """Fit one head on ``rows`` (and, when calibrating, its uncalibrated twin for the before/after report)."""
    n_train = len(rows) * (1 + n_views)
    pipeline = make_head(head, seed, n_train=n_train, calibration=calibrate, **options)
    started = time.perf_counter()
    if head == "sgd":
        _fit_streaming(pipeline, store, rows, labels, n_views, seed)
    else:
        X_train, y_train = _training_set(store, rows, labels, n_views)
        pipeline.fit(X_train, y_train)
    fitted = {"pipeline": pipeline, "seconds": time.perf_counter() - started, "rows": rows}
    if calibrate:
        fitted["uncalibrated"] = make_head(head, seed, n_train=n_train, **options).fit(X_train, y_train)
    return fitted


def _full_proba(pipeline, store: FeatureStore, rows: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities with one column per class of the store, zero for classes the head never saw."""
    partial = predict_rows(pipeline, store, rows, proba=True)
    full = np.zeros((len(partial), n_classes))
    full[:, pipeline.classes_] = partial
    return full


def _calibration_report(fitted, probabilities, y_pred, tested: _TestSet, n_classes: int, calibrate) -> Calibration:
    # How often the most probable class is the class the head predicts (its own decision): 1.0 for heads whose
    # probabilities are their decisions, below it where a calibrator maps an SVM's decision values.
    agreement = float(np.mean(probabilities.argmax(axis=1) == y_pred)) if len(y_pred) else 1.0
    if calibrate is None:
        return {"head": calibration_summary(probabilities, tested.labels), "agreement": agreement}
    before = _full_proba(fitted["uncalibrated"], tested.store, tested.rows, n_classes)
    return {
        "method": calibrate,
        "before": calibration_summary(before, tested.labels),
        "after": calibration_summary(probabilities, tested.labels),
        "agreement": agreement,
    }


def _group_report(tested: _TestSet, y_pred: np.ndarray):
    groups = tested.store.groups()
    if groups is None:
        return None
    column = (tested.store.meta.get("source_options") or {}).get("group_column") or "group"
    return group_metrics(tested.labels, y_pred, [groups[i] for i in tested.rows], column)


def _few_shot_summary(runs, tested: _TestSet, classes, shots, seed) -> FewShot:
    from sklearn.metrics import f1_score

    accuracies, f1s = [], []
    for run in runs:
        predicted = predict_rows(run["pipeline"], tested.store, tested.rows)
        accuracies.append(float(np.mean(predicted == tested.labels)))
        f1s.append(float(f1_score(tested.labels, predicted, average="macro", zero_division=0)))
    return {
        "shots": shots,
        "repeats": len(runs),
        "seeds": [seed + r for r in range(len(runs))],
        "accuracy": {"mean": float(np.mean(accuracies)), "std": seed_spread(accuracies), "values": accuracies},
        "macro_f1": {"mean": float(np.mean(f1s)), "std": seed_spread(f1s), "values": f1s},
    }


def _training_set(store: FeatureStore, rows: np.ndarray, labels: np.ndarray, n_views: int):
    """Training features and labels, with each item's augmented views appended when asked."""
    X, y = store.features()[rows], labels[rows]
    if n_views:
        views = store.views()[rows]  # (n, V, D)
        X = np.concatenate([X, views.reshape(-1, views.shape[-1])])
        y = np.concatenate([y, np.repeat(y, n_views)])
    return X, y


def _fit_streaming(pipeline, store: FeatureStore, rows: np.ndarray, labels: np.ndarray, n_views: int, seed: int):
    """Fit a standardise + SGD pipeline one row batch at a time: memory does not grow with the store."""
    scaler, classifier = pipeline.steps[0][1], pipeline.steps[-1][1]
    wanted = np.zeros(store.n_rows, dtype=bool)
    wanted[rows] = True
    classes = np.unique(labels[rows])

    def batches():
        for batch_rows, features in store.iter_batches(STREAM_BATCH):
            keep = wanted[batch_rows]
            if not keep.any():
                continue
            X, y = features[keep], labels[batch_rows][keep]
            if n_views:
                views = store.views(batch_rows)[keep]
                X = np.concatenate([X, views.reshape(-1, views.shape[-1])])
                y = np.concatenate([y, np.repeat(y, n_views)])
            yield X, y

    for X, _ in batches():
        scaler.partial_fit(X)
    rng = np.random.default_rng(seed)
    for _ in range(SGD_EPOCHS):
        for X, y in batches():
            order = rng.permutation(len(y))
            classifier.partial_fit(scaler.transform(X[order]), y[order], classes=classes)


def predict_rows(pipeline, store: FeatureStore, rows: np.ndarray | None = None, proba: bool = False) -> np.ndarray:
    """Predictions (or class probabilities) for ``rows`` of a store (all rows when None), read in row batches."""
    wanted = None
    if rows is not None:
        wanted = np.zeros(store.n_rows, dtype=bool)
        wanted[rows] = True
    parts = []
    for batch_rows, features in store.iter_batches(STREAM_BATCH):
        if wanted is not None:
            features = features[wanted[batch_rows]]
        if len(features):
            parts.append(pipeline.predict_proba(features) if proba else pipeline.predict(features))
    if not parts:
        return np.empty((0, len(pipeline.classes_))) if proba else np.empty(0, dtype=np.int64)
    return np.concatenate(parts)


def check_head_matches(sidecar: Sidecar, store: FeatureStore, head_path: Path) -> None:
    """Refuse features a head was not fitted on: another backbone, other weights, other preprocessing or dim."""
    check_same_features(sidecar, store.meta, f"store {store.path}", subject=f"head {head_path} was fitted on")


def _labelled_rows(store: FeatureStore, labels: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(labels >= 0)
    if not len(rows):
        raise UserError(
            f"{store.path} has no labels; fit-head needs a labelled source: class folders, or a table embedded with "
            "--label-column naming its label column"
        )
    if len(rows) < len(labels):  # an empty label cell: left out, and said (`tlcache info` counts them too)
        warn_once(
            f"{store.path}: {len(labels) - len(rows)} of {len(labels)} rows have no label and are left out of "
            "training and testing; give them a label to use them"
        )
    return rows
