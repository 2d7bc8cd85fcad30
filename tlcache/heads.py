"""scikit-learn heads on cached features: fit, evaluate, save with a sidecar that names the features they need."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tlcache.errors import UserError
from tlcache.report import classification_metrics, write_report
from tlcache.store import FeatureStore

HEADS = ("logreg", "linear-svm", "svm", "mlp", "sgd")
STREAM_BATCH = 4096  # rows per read when a head streams through a store
SGD_EPOCHS = 10
MLP_EARLY_STOPPING_MIN_ROWS = 1000
HEAD_FILE = "head.joblib"
SIDECAR_FILE = "head.json"
# What must agree between the features a head was fitted on and the features it is given.
FEATURE_IDENTITY = ("backbone_key", "weights_digest", "preprocessing", "layer", "pooling", "dim")


def make_head(name: str, seed: int = 0, n_train: int | None = None):
    """A Pipeline of standardisation and the named classifier; every head gives ``predict_proba``.

    ``n_train`` (the training rows, when known) lets ``mlp`` stop early only when its 10% validation split is big
    enough to be trusted: on a few dozen items, one lucky epoch would end training.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    if name == "logreg":
        classifier = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    elif name == "linear-svm":
        # SVMs have no probabilities of their own: Platt scaling on 3 folds supplies them.
        classifier = CalibratedClassifierCV(LinearSVC(C=0.01, random_state=seed), cv=3)
    elif name == "svm":
        classifier = CalibratedClassifierCV(SVC(kernel="rbf", C=1.0, random_state=seed), cv=3)
    elif name == "sgd":
        # Fitted out of core by fit_head: logistic loss, so it has probabilities.
        classifier = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=seed)
    elif name == "mlp":
        early_stopping = n_train is None or n_train >= MLP_EARLY_STOPPING_MIN_ROWS
        classifier = MLPClassifier(
            hidden_layer_sizes=(512,), alpha=1e-3, early_stopping=early_stopping, max_iter=300, random_state=seed
        )
    else:
        raise UserError(f"unknown head '{name}'; use one of {', '.join(HEADS)}")
    return make_pipeline(StandardScaler(), classifier)


@dataclass
class HeadRun:
    out_dir: Path
    report: dict[str, Any]

    @property
    def accuracy(self) -> float:
        return self.report["metrics"]["accuracy"]

    def summary_line(self) -> str:
        metrics = self.report["metrics"]
        return (
            f"{self.report['head']}: accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f} "
            f"on {self.report['n_test']} test rows (fit {self.report['fit_seconds']:.2f} s) -> {self.out_dir}"
        )


def fit_head(
    store: str | Path | FeatureStore,
    head: str = "logreg",
    *,
    test: str | Path | FeatureStore | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    out: str | Path | None = None,
    use_views: bool = True,
) -> HeadRun:
    """Fit ``head`` on a store's labelled rows and evaluate it on ``test`` (a store of the same features) or on a
    stratified ``test_fraction`` held out with ``seed``. Writes head.joblib, head.json and the report to ``out``
    (default ``runs/<store name>/<head>``).

    A store with augmented views trains on them too (each training item's views join the training set with its
    label; test items are never augmented) unless ``use_views`` is False. The ``sgd`` head reads the store in row
    batches and never holds all features in memory.
    """
    import joblib

    train_store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    labels = train_store.labels()
    classes = train_store.class_names
    labelled = _labelled_rows(train_store, labels)
    if test is not None:
        test_store = test if isinstance(test, FeatureStore) else FeatureStore(test)
        _check_same_features(train_store.meta, test_store.meta, f"test store {test_store.path}")
        test_labels = test_store.labels()
        test_rows = _labelled_rows(test_store, test_labels)
        y_test = _remap_labels(test_labels[test_rows], test_store.class_names, classes, test_store.path)
        train_rows = labelled
        test_description = f"store {test_store.path}"
    else:
        if not 0.0 < test_fraction < 1.0:
            raise UserError(f"--test-fraction {test_fraction} must be between 0 and 1 (exclusive)")
        train_rows, test_rows = _split(labelled, labels[labelled], test_fraction, seed, train_store.path)
        test_store, y_test = train_store, labels[test_rows]
        test_description = f"{test_fraction:g} held out, stratified, seed {seed}"
    if len(np.unique(labels[train_rows])) < 2:
        raise UserError(f"{train_store.path}: the training rows hold a single class; a head needs two or more")
    n_views = train_store.n_views if use_views else 0

    pipeline = make_head(head, seed, n_train=len(train_rows) * (1 + n_views))
    started = time.perf_counter()
    if head == "sgd":
        _fit_streaming(pipeline, train_store, train_rows, labels, n_views, seed)
    else:
        X_train, y_train = _training_set(train_store, train_rows, labels, n_views)
        pipeline.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - started
    y_pred = predict_rows(pipeline, test_store, test_rows)

    out_dir = Path(out) if out is not None else Path("runs") / train_store.path.stem / head
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = train_store.meta
    report = {
        "head": head,
        "backbone": meta["backbone"],
        "dim": train_store.dim,
        "store": str(train_store.path),
        "test": test_description,
        "seed": seed,
        "n_train": int(len(train_rows)),
        "views_per_item": n_views,
        "n_test": int(len(y_test)),
        "classes": classes,
        "fit_seconds": round(fit_seconds, 4),
        "metrics": classification_metrics(y_test, y_pred, classes),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    joblib.dump(pipeline, out_dir / HEAD_FILE)
    sidecar = {
        "head": head,
        "classes": classes,
        "seed": seed,
        "store": str(train_store.path),
        "store_key": train_store.key,
        "backbone": meta["backbone"],
        "backbone_spec": meta["backbone_spec"],
        **{name: meta[name] for name in FEATURE_IDENTITY},
        "tlcache_version": meta.get("tlcache_version"),
    }
    (out_dir / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    write_report(report, out_dir)
    return HeadRun(out_dir, report)


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


def load_head(path: str | Path) -> tuple[Any, dict[str, Any]]:
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


def check_head_matches(sidecar: dict[str, Any], store: FeatureStore, head_path: Path) -> None:
    """Refuse features a head was not fitted on: another backbone, other weights, other preprocessing or dim."""
    _check_same_features(sidecar, store.meta, f"store {store.path}", subject=f"head {head_path}")


def _check_same_features(expected: dict, actual: dict, what: str, subject: str = "the training store") -> None:
    for name in FEATURE_IDENTITY:
        if expected.get(name) != actual.get(name):
            raise UserError(
                f"{subject} was fitted on {expected['backbone']} features ({expected['dim']}-d) but {what} holds "
                f"{actual['backbone']} features ({actual['dim']}-d) that differ in {name}; "
                f"embed with the same backbone and options"
            )


def _labelled_rows(store: FeatureStore, labels: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(labels >= 0)
    if not len(rows):
        raise UserError(
            f"{store.path} has no labels; fit-head needs a labelled source (class folders or a label column)"
        )
    return rows


def _remap_labels(y: np.ndarray, names: list[str], train_names: list[str], path: Path) -> np.ndarray:
    unknown = sorted(set(names[i] for i in np.unique(y)) - set(train_names))
    if unknown:
        raise UserError(f"{path} has classes the training store lacks ({', '.join(unknown[:5])}); use matching data")
    index = {name: i for i, name in enumerate(train_names)}
    return np.array([index[names[i]] for i in y], dtype=np.int64)


def _split(rows: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, path: Path):
    """Stratified train/test split of row indices (plain when a class has a single item)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    if len(y) < 4:
        raise UserError(f"{path} has only {len(y)} labelled rows; a train/test split needs more (or pass --test)")
    stratify = y if counts[counts > 0].min() >= 2 else None
    try:
        train, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise UserError(f"{path}: cannot split {len(y)} rows with --test-fraction {test_fraction} ({exc})") from None
    return np.sort(train), np.sort(test)
