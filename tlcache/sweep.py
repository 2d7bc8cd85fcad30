"""The linear-probe protocol for any scikit-learn classifier: sweep one hyperparameter on held-out data, refit.

Selection is on a stratified validation split, or on k folds when there are few samples; the best value is
refitted on all the data. ``curve_`` keeps (value, mean validation accuracy) for the report.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def validation_splits(
    codes: np.ndarray, validation_fraction: float, cv: int, cv_below: int, random_state: int | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified folds below ``cv_below`` samples (when every class has two), else one stratified split."""
    counts = np.bincount(codes)
    counts = counts[counts > 0]
    if len(codes) < cv_below and counts.min() >= 2:
        folds = min(cv, int(counts.min()))
        return list(StratifiedKFold(folds, shuffle=True, random_state=random_state).split(codes, codes))
    stratify = codes if counts.min() >= 2 else None
    train, valid = train_test_split(
        np.arange(len(codes)), test_size=validation_fraction, random_state=random_state, stratify=stratify
    )
    return [(train, valid)]


def describe_selection(splits: list) -> str:
    return f"{len(splits)}-fold cross-validation" if len(splits) > 1 else "a stratified validation split"


class SweptClassifier(ClassifierMixin, BaseEstimator):
    """``estimator`` with ``param`` chosen from ``grid`` on held-out data, then refitted on everything.

    With ``calibration`` ("sigmoid" or "isotonic"), or when the estimator has no ``predict_proba`` (SVMs), the
    refitted model is wrapped in ``CalibratedClassifierCV`` so that probabilities exist and mean something.
    """

    def __init__(
        self,
        estimator=None,
        param: str = "C",
        grid: Sequence = (1.0,),
        calibration: str | None = None,
        validation_fraction: float = 0.2,
        cv: int = 5,
        cv_below: int = 1000,
        random_state: int | None = 0,
    ):
        self.estimator = estimator
        self.param = param
        self.grid = grid
        self.calibration = calibration
        self.validation_fraction = validation_fraction
        self.cv = cv
        self.cv_below = cv_below
        self.random_state = random_state

    def fit(self, X, y) -> SweptClassifier:
        from sklearn.calibration import CalibratedClassifierCV

        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        splits = validation_splits(codes, self.validation_fraction, self.cv, self.cv_below, self.random_state)
        values = list(self.grid)
        scores = np.zeros(len(values))
        with warnings.catch_warnings():
            # Short sweeps on small folds often stop at max_iter; the refit below still warns if it does.
            warnings.simplefilter("ignore", ConvergenceWarning)
            for train, valid in splits:
                for i, value in enumerate(values):
                    model = self._with(value, n_train=len(train)).fit(X[train], codes[train])
                    scores[i] += np.mean(model.predict(X[valid]) == codes[valid])
        scores /= len(splits)
        best = int(np.argmax(scores))
        self.best_ = values[best]
        self.param_ = self.param
        self.score_name_ = "accuracy"
        self.curve_ = [(_plain(v), float(s)) for v, s in zip(values, scores)]
        self.selection_ = describe_selection(splits)
        model = self._with(self.best_, n_train=len(codes))
        if self.calibration or not hasattr(model, "predict_proba"):
            folds = max(2, min(3, int(np.bincount(codes).min())))
            model = CalibratedClassifierCV(model, method=self.calibration or "sigmoid", cv=folds)
        self.model_ = model.fit(X, codes)
        return self

    def _with(self, value, n_train: int):
        model = clone(self.estimator).set_params(**{self.param: _capped(self.param, value, n_train)})
        return model

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False)
        return self.model_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _capped(param: str, value, n_train: int):
    """k-NN cannot ask for more neighbours than there are training samples."""
    return min(int(value), n_train) if param == "n_neighbors" else value


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
