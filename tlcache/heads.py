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

HEADS = ("logreg", "linear-svm", "svm", "mlp")
HEAD_FILE = "head.joblib"
SIDECAR_FILE = "head.json"
# What must agree between the features a head was fitted on and the features it is given.
FEATURE_IDENTITY = ("backbone_key", "weights_digest", "preprocessing", "layer", "pooling", "dim")


def make_head(name: str, seed: int = 0):
    """A Pipeline of standardisation and the named classifier; every head gives ``predict_proba``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
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
    elif name == "mlp":
        classifier = MLPClassifier(
            hidden_layer_sizes=(512,), alpha=1e-3, early_stopping=True, max_iter=300, random_state=seed
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
) -> HeadRun:
    """Fit ``head`` on a store's labelled rows and evaluate it on ``test`` (a store of the same features) or on a
    stratified ``test_fraction`` held out with ``seed``. Writes head.joblib, head.json and the report to ``out``
    (default ``runs/<store name>/<head>``).
    """
    import joblib

    train_store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    X, y = _labelled(train_store)
    classes = train_store.class_names
    if test is not None:
        test_store = test if isinstance(test, FeatureStore) else FeatureStore(test)
        _check_same_features(train_store.meta, test_store.meta, f"test store {test_store.path}")
        X_test, y_test = _labelled(test_store)
        y_test = _remap_labels(y_test, test_store.class_names, classes, test_store.path)
        X_train, y_train = X, y
        test_description = f"store {test_store.path}"
    else:
        if not 0.0 < test_fraction < 1.0:
            raise UserError(f"--test-fraction {test_fraction} must be between 0 and 1 (exclusive)")
        X_train, X_test, y_train, y_test = _split(X, y, test_fraction, seed, train_store.path)
        test_description = f"{test_fraction:g} held out, stratified, seed {seed}"
    if len(np.unique(y_train)) < 2:
        raise UserError(f"{train_store.path}: the training rows hold a single class; a head needs two or more")

    pipeline = make_head(head, seed)
    started = time.perf_counter()
    pipeline.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - started
    y_pred = pipeline.predict(X_test)

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
        "n_train": int(len(y_train)),
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


def _labelled(store: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    labels = store.labels()
    keep = labels >= 0
    if not keep.any():
        raise UserError(
            f"{store.path} has no labels; fit-head needs a labelled source (class folders or a label column)"
        )
    return store.features()[keep], labels[keep]


def _remap_labels(y: np.ndarray, names: list[str], train_names: list[str], path: Path) -> np.ndarray:
    unknown = sorted(set(names[i] for i in np.unique(y)) - set(train_names))
    if unknown:
        raise UserError(f"{path} has classes the training store lacks ({', '.join(unknown[:5])}); use matching data")
    index = {name: i for i, name in enumerate(train_names)}
    return np.array([index[names[i]] for i in y], dtype=np.int64)


def _split(X, y, test_fraction: float, seed: int, path: Path):
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    if len(y) < 4:
        raise UserError(f"{path} has only {len(y)} labelled rows; a train/test split needs more (or pass --test)")
    stratify = y if counts[counts > 0].min() >= 2 else None
    try:
        return train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise UserError(f"{path}: cannot split {len(y)} rows with --test-fraction {test_fraction} ({exc})") from None
