"""The linear-probe protocol for any scikit-learn classifier: sweep one hyperparameter on held-out data, refit.

Selection is on a stratified validation split, or on k folds when there are few samples; the best value is
refitted on all the data, and that model's own decisions are the predictions. ``curve_`` keeps (value, mean
validation accuracy) for the report. A grid follows the data: while the best value sits at an end of it, strictly
better than its neighbour, the sweep goes one step further that way (the grid's own ratio there), at most
MAX_EXTENSIONS steps; ``extension_`` says how far it went and whether the best is still at an end.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypedDict

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from tlcache.calibration import DecisionCalibrator, calibration_values, decision_values
from tlcache.splits import split_beside_single_items

MAX_EXTENSIONS = 3
# Called by every sweep after each value it scores, where a caller asks (see reporting_progress).
_on_scored: ContextVar[Callable[[str, int, int], None] | None] = ContextVar("on_scored", default=None)


@contextmanager
def reporting_progress(callback: Callable[[str, int, int], None]) -> Iterator[None]:
    """Within: every sweep calls ``callback(param, values scored, values it plans to score)`` after each value it
    scores (the plan grows when the grid is extended), and once more when it is done (scored == planned)."""
    token = _on_scored.set(callback)
    try:
        yield
    finally:
        _on_scored.reset(token)


class Extension(TypedDict):
    direction: str | None  # "up" or "down": the way the grid was extended, None when it was not
    steps: int  # values added past the grid's end
    at_edge: bool  # the best value is still at an end, strictly better than its neighbour


def sweep_grid(
    values: Sequence,
    score: Callable[[float], float],
    param: str,
    lower_is_better: bool = False,
    upper=None,
    stride: int = 1,
    prepare: Callable[[list], None] | None = None,
) -> tuple[list, list[float], Extension]:
    """Score every value of a grid (sorted ascending), then extend it past the end where the best sits while that
    end is strictly better than its neighbour: at most MAX_EXTENSIONS values, each one step of the grid's ratio
    at that end (integers on a grid of integers; ``n_neighbors`` stays within 1..``upper``, grid values above it
    left out: a new user's curve on 70 items listed k 51 and 75 beside folds of 56). Returns the values
    scored, their scores and how the grid was extended. Ties go to the smaller value (for C and alpha: the
    stronger regularisation).

    ``stride`` > 1 searches coarse to fine: every ``stride``-th value (both ends included) first, then the values
    between the best of them and its coarse neighbours. ``prepare``, when given, is called with each stage's
    values before they are scored one by one (so that a caller can fit them together)."""
    values = sorted(set(values))  # a value given twice is scored once
    if param == "n_neighbors" and upper is not None:  # more neighbours than a split trains on: the same model
        values = [value for value in values if value <= upper] or values[:1]
    scored: dict = {}
    report = _on_scored.get()
    # The values the coarse stage and the fine stage around its best score at most.
    planned = len(values) if stride <= 1 else min(len(values), -(-len(values) // stride) + 1 + 2 * (stride - 1))

    def run(stage: list) -> None:
        stage = [value for value in stage if value not in scored]
        if stage and prepare is not None:
            prepare(stage)
        for value in stage:
            scored[value] = score(value)
            if report is not None:
                report(param, len(scored), max(planned, len(scored)))

    coarse = sorted(set(range(0, len(values), max(stride, 1))) | {len(values) - 1})
    run([values[i] for i in coarse])
    if stride > 1:
        best = values.index(min(scored, key=lambda v: _rank(scored, v, lower_is_better)))
        run(values[max(best - stride + 1, 0) : best + stride])
    values = sorted(scored)
    scores = [scored[value] for value in values]
    direction, steps = None, 0
    while True:
        end = _better_end(scores, lower_is_better)
        if end is None or steps == MAX_EXTENSIONS:
            break
        value = _beyond(values, end == "up", param, upper)
        if value is None:
            break
        direction, steps = end, steps + 1
        run([value])
        if end == "up":
            values.append(value)
            scores.append(scored[value])
        else:
            values.insert(0, value)
            scores.insert(0, scored[value])
    at_edge = _better_end(scores, lower_is_better) is not None
    if report is not None:
        report(param, len(scored), len(scored))
    return values, scores, {"direction": direction, "steps": steps, "at_edge": at_edge}


def _rank(scored: dict, value, lower_is_better: bool) -> tuple:
    """Sort key of the best score first, ties to the smaller value."""
    return (scored[value] if lower_is_better else -scored[value], value)


def best_index(scores: Sequence[float], lower_is_better: bool = False) -> int:
    """The first best score's index."""
    return int(np.argmin(scores)) if lower_is_better else int(np.argmax(scores))


def _better_end(scores: list[float], lower_is_better: bool) -> str | None:
    """ "down" or "up" when the best score is at that end of the grid and strictly better than its neighbour."""
    if len(scores) < 2:
        return None
    best = best_index(scores, lower_is_better)
    sign = -1 if lower_is_better else 1
    if best == 0 and sign * (scores[0] - scores[1]) > 0:
        return "down"
    if best == len(scores) - 1 and sign * (scores[-1] - scores[-2]) > 0:
        return "up"
    return None


def _beyond(values: list, upward: bool, param: str, upper):
    """The next value past an end of an ascending grid, one step of the grid's ratio there (rounded on a grid of
    integers); None where there is none: a grid with values of zero or below, or an integer grid below 1 or (for
    ``n_neighbors``) above ``upper``."""
    inner, end = (values[-2], values[-1]) if upward else (values[1], values[0])
    if inner <= 0 or end <= 0:
        return None
    value = end * end / inner
    if not all(isinstance(v, (int, np.integer)) for v in values):
        return value
    value = int(round(value))
    if value == end:
        value = end + (1 if upward else -1)
    if value < 1 or (param == "n_neighbors" and upper is not None and value > upper):
        return None
    return value


def validation_splits(
    codes: np.ndarray, validation_fraction: float, cv: int, cv_below: int, random_state: int | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified folds below ``cv_below`` samples, else one stratified split. A class with a single item, which
    cannot be on both sides, is trained on in every split and the others stratified (see split_beside_single_items):
    k is at most the items of the smallest class of two or more."""
    counts = np.bincount(codes)
    single = counts[codes] == 1
    several = counts[counts >= 2]
    if len(codes) < cv_below and len(several):
        folds = StratifiedKFold(min(cv, int(several.min())), shuffle=True, random_state=random_state)
        pool, alone = np.flatnonzero(~single), np.flatnonzero(single)
        return [(np.sort(np.concatenate([pool[t], alone])), pool[v]) for t, v in folds.split(pool, codes[pool])]
    train, valid = split_beside_single_items(np.arange(len(codes)), codes, validation_fraction, random_state)
    return [(train, valid)]


def describe_selection(splits: list) -> str:
    return f"{len(splits)}-fold cross-validation" if len(splits) > 1 else "a stratified validation split"


def validation_items(splits: list) -> int:
    """How many rows the sweep's scores are measured on: every row on folds, the held-out ones of one split."""
    return sum(len(valid) for _, valid in splits)


class SweptClassifier(ClassifierMixin, BaseEstimator):
    """``estimator`` with ``param`` chosen from ``grid`` on held-out data, then refitted on everything.

    ``predict`` is the refitted model's own decisions. ``grid_stride`` (a class attribute) > 1 searches the grid
    coarse to fine (see sweep_grid). With ``calibration`` ("sigmoid" or "isotonic"), or when
    the estimator has no ``predict_proba`` (SVMs), ``predict_proba`` maps the refitted model's decision values
    through a calibrator fitted on out-of-fold decision values of the chosen value for every training row (see
    tlcache.calibration); the model itself is left as it is.
    """

    grid_stride = 1
    # The attributes in which a subclass keeps a sweep's shared work (kernels, neighbours, models fitted together),
    # set by _begin_fit and removed when fit ends, however it ends: a fitted head keeps only what predicts.
    _scratch: tuple[str, ...] = ()

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
        self._begin_fit()
        try:
            return self._fit(X, y)
        finally:
            for name in self._scratch:
                self.__dict__.pop(name, None)

    def _begin_fit(self) -> None:
        """Set the attributes named in ``_scratch`` to their state before a sweep."""

    def _fit(self, X, y) -> SweptClassifier:
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        splits = self._splits(codes)
        calibrating = self.calibration is not None or not hasattr(self.estimator, "predict_proba")
        # On folds, the sweep's own held-out decision values cover every row: kept for the calibrator.
        keep_held_out = calibrating and len(splits) > 1
        held_out: dict = {}  # per value: (rows, decision values) of each split

        def score(value) -> float:
            right, held_out[value] = 0.0, []
            for train, valid in splits:
                model = self._fold_fit(value, X, codes, train)
                right += np.mean(self._fold_apply(model, "predict", X, train, valid) == codes[valid])
                if keep_held_out and len(model.classes_) == len(self.classes_):
                    held_out[value].append((valid, self._fold_apply(model, "decide", X, train, valid)))
            return right / len(splits)

        with warnings.catch_warnings():
            # Short sweeps on small folds often stop at max_iter; the refit below still warns if it does.
            warnings.simplefilter("ignore", ConvergenceWarning)
            upper = min(len(train) for train, _ in splits)
            values, scores, self.extension_ = sweep_grid(
                self.grid,
                score,
                self.param,
                upper=upper,
                stride=self.grid_stride,
                prepare=lambda stage: self._prepare(stage, X, codes, splits),
            )
        self.best_ = values[best_index(scores)]
        self.param_ = self.param
        self.score_name_ = "accuracy"
        self.curve_ = [(_plain(v), float(s)) for v, s in zip(values, scores)]
        self.selection_ = describe_selection(splits)
        self.validation_items_ = validation_items(splits)
        self.model_ = self._refit(X, codes)
        self.calibrator_ = None
        if calibrating:
            self.calibrator_ = self._calibrator(held_out[self.best_], X, codes)
        return self

    def _calibrator(self, held_out: list, X, codes) -> DecisionCalibrator:
        """Fitted on out-of-fold decision values of the chosen value for every training row (see
        tlcache.calibration.calibration_values)."""

        def fit_and_decide(train, valid):
            value = self.best_
            if self.param == "C":  # C weighs a sum over rows: scaled so a fold's model is as confident
                value = value * len(codes) / len(train)
            return self._fold_apply(self._fold_fit(value, X, codes, train), "decide", X, train, valid)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            rows, values = calibration_values(
                held_out, codes, fit_and_decide, lambda: decision_values(self.model_, X), self.random_state
            )
        return DecisionCalibrator(self.calibration or "sigmoid").fit(values, codes[rows], len(self.classes_))

    def _prepare(self, values: list, X, codes, splits) -> None:
        """Called with each stage of the sweep's values before they are scored (see sweep_grid): a subclass can
        fit them together, for :meth:`_fold_fit` to hand out."""

    def _refit(self, X, codes):
        """The chosen value's model fitted on every row: the model that ships."""
        return self._with(self.best_, n_train=len(codes)).fit(X, codes)

    def _splits(self, codes) -> list[tuple[np.ndarray, np.ndarray]]:
        """The sweep's (training rows, validation rows) splits."""
        return validation_splits(codes, self.validation_fraction, self.cv, self.cv_below, self.random_state)

    def _fold_fit(self, value, X, codes, train):
        """A model of ``value`` fitted on rows ``train``: a sweep fit, or a calibrator's fold fit."""
        return self._with(value, n_train=len(train)).fit(X[train], codes[train])

    def _fold_apply(self, model, what: str, X, train, rows) -> np.ndarray:
        """A fold model's predictions (``what`` "predict") or decision values ("decide") for ``rows``."""
        return model.predict(X[rows]) if what == "predict" else decision_values(model, X[rows])

    def _with(self, value, n_train: int):
        model = clone(self.estimator).set_params(**{self.param: _capped(self.param, value, n_train)})
        return model

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False)
        calibrator = getattr(self, "calibrator_", None)  # heads saved before calibrators have none
        if calibrator is None:
            return self.model_.predict_proba(X)
        return calibrator.predict_proba(decision_values(self.model_, X))

    def predict(self, X) -> np.ndarray:
        """The refitted model's own decisions (never the argmax of calibrated probabilities)."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False)
        return self.classes_[self.model_.predict(X)]


def _capped(param: str, value, n_train: int):
    """k-NN cannot ask for more neighbours than there are training samples."""
    return min(int(value), n_train) if param == "n_neighbors" else value


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
