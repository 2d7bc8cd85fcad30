"""Logistic regression with the linear-probe regularisation sweep, fast enough to be the default.

The protocol of Kornblith et al. (2019), the CLIP paper and CLIP_benchmark: fit a log-spaced grid of
regularisation strengths on a training part, pick the best on held-out data, refit on everything. The path is
solved with L-BFGS on a vectorised multinomial loss, each fit warm-started from the previous (weaker
regularisation) solution, so the whole sweep costs about as much as one default scikit-learn fit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from tlcache.calibration import DecisionCalibrator, calibration_values
from tlcache.sweep import best_index, describe_selection, sweep_grid, validation_items, validation_splits

DEFAULT_CS = tuple(np.logspace(-5, 0, 11).tolist())


class MultinomialFit(NamedTuple):
    weights: np.ndarray  # (d + 1, K): one column per class, the intercepts in the last row
    iterations: int  # of the solver


def fit_multinomial(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    C: float,
    sample_weight: np.ndarray | None = None,
    init: np.ndarray | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
) -> MultinomialFit:
    """Weights (d + 1, K) minimising the mean weighted cross-entropy plus ||W||^2 / (2 C n) (the intercept row is
    not penalised): the optimum of scikit-learn's ``LogisticRegression(C=C)``, up to the solver's tolerance.

    Two classes are fitted as scikit-learn does, with one weight vector (the first class's column stays zero).
    """
    n, d = X.shape
    free = n_classes if n_classes > 2 else 1  # columns with parameters
    weight = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    weight = weight / weight.sum()
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0
    penalty = 1.0 / (C * n)

    # Products in float32, the cached features' own precision (half the memory traffic); the rest in float64.
    X32 = np.ascontiguousarray(X, dtype=np.float32)

    def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        W = flat.reshape(d + 1, free)
        logits = (X32 @ W[:-1].astype(np.float32)).astype(np.float64) + W[-1]
        if free == 1:  # one logistic unit: log sigmoid of +-z (a two-column softmax took half of this function's time)
            z, second = logits[:, 0], onehot[:, 1]
            log_second, log_first = -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z)
            rows = second * log_second + (1.0 - second) * log_first
            residual = ((np.exp(log_second) - second) * weight)[:, None]
        else:
            log_p = log_softmax(logits, axis=1)
            rows = (onehot * log_p).sum(axis=1)
            residual = (np.exp(log_p) - onehot) * weight[:, None]
        loss = -(weight * rows).sum() + 0.5 * penalty * (W[:-1] ** 2).sum()
        grad = np.empty_like(W)
        grad[:-1] = (X32.T @ residual.astype(np.float32)).astype(np.float64) + penalty * W[:-1]
        grad[-1] = residual.sum(axis=0)
        return loss, grad.ravel()

    start = np.zeros((d + 1) * free) if init is None else _free_columns(init, free).ravel()
    result = minimize(
        loss_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12}
    )
    W = result.x.reshape(d + 1, free)
    return MultinomialFit(np.hstack([np.zeros_like(W), W]) if free == 1 else W, int(result.nit))


def _free_columns(W: np.ndarray, free: int) -> np.ndarray:
    return W[:, 1:] - W[:, :1] if free == 1 else W


class SweptLogisticRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression whose C is chosen by the linear-probe sweep.

    ``Cs`` are tried from strongest to weakest regularisation on a stratified validation split
    (``validation_fraction``), or on ``cv`` folds when there are fewer than ``cv_below`` samples; the best C is
    refitted on all the data. ``scoring`` picks it by the lowest validation log-loss (default: a smooth criterion,
    so a tiny change in the features does not flip the choice, as accuracy's ties and plateaus can) or the highest
    accuracy. ``curve_`` records (C, validation score) for every value, ``accuracy_curve_`` the accuracy.
    With ``calibration`` ("sigmoid" or "isotonic"), ``predict_proba`` maps the class scores through a calibrator
    fitted on out-of-fold scores of the best C (see tlcache.calibration); ``predict`` stays the argmax of the scores.
    """

    def __init__(
        self,
        Cs=DEFAULT_CS,
        validation_fraction: float = 0.2,
        cv: int = 5,
        cv_below: int = 1000,
        class_weight: str | None = None,
        tol: float = 1e-4,
        max_iter: int = 1000,
        random_state: int | None = 0,
        scoring: str = "log_loss",
        calibration: str | None = None,
    ):
        self.scoring = scoring
        self.calibration = calibration
        self.Cs = Cs
        self.validation_fraction = validation_fraction
        self.cv = cv
        self.cv_below = cv_below
        self.class_weight = class_weight
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> SweptLogisticRegression:
        # L-BFGS makes many tiny BLAS calls; OpenBLAS's threads cost more than they give there (5x measured).
        with threadpool_limits(1, user_api="blas"):
            return self._fit(X, y, sample_weight)

    def _fit(self, X, y, sample_weight) -> SweptLogisticRegression:
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"SweptLogisticRegression needs two classes or more; got 1 class ({self.classes_[0]!r})")
        weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if not weight.sum() > 0:
            raise ValueError("Sample weights must contain at least one non-zero number.")
        if self.class_weight is not None:
            weight = weight * compute_sample_weight(self.class_weight, codes)
        if self.scoring not in ("log_loss", "accuracy"):
            raise ValueError(f"scoring must be 'log_loss' or 'accuracy', not {self.scoring!r}")
        splits = validation_splits(codes, self.validation_fraction, self.cv, self.cv_below, self.random_state)
        # Each split's training rows in float32 (the solver's product precision), cut once for the whole grid.
        X32 = X.astype(np.float32)
        parts = [(X32[train], codes[train], weight[train]) for train, _ in splits]
        solutions: dict[float, list[np.ndarray]] = {}  # per C: the weights fitted on each split
        accuracies: dict[float, float] = {}
        held_out: dict[float, list] = {}  # per C: (rows, class scores) of each split

        def score(C: float) -> float:
            """Mean validation log-loss (or accuracy) of C over the splits, each fit started from the solution of
            the nearest C already fitted (the grid runs from strong to weak regularisation, one start to the next)."""
            nearest = min(solutions, key=lambda c: abs(np.log(c / C)), default=None)
            solutions[C], held_out[C] = [], []
            right = loss = 0.0
            for s, ((X_fit, codes_fit, weight_fit), (_, valid)) in enumerate(zip(parts, splits)):
                init = solutions[nearest][s] if nearest is not None else None
                W = self._solve(X_fit, codes_fit, C, weight_fit, init).weights
                solutions[C].append(W)
                logits = X[valid] @ W[:-1] + W[-1]
                right += np.average(np.argmax(logits, axis=1) == codes[valid], weights=weight[valid])
                log_p = log_softmax(logits, axis=1)[np.arange(len(valid)), codes[valid]]
                loss -= np.average(log_p, weights=weight[valid])
                if self.calibration is not None and len(splits) > 1:
                    held_out[C].append((valid, logits[:, 1] - logits[:, 0] if len(self.classes_) == 2 else logits))
            accuracies[C] = right / len(splits)
            return loss / len(splits) if self.scoring == "log_loss" else accuracies[C]

        by_loss = self.scoring == "log_loss"
        Cs, scores, self.extension_ = sweep_grid(
            [float(c) for c in np.atleast_1d(self.Cs)], score, "C", lower_is_better=by_loss
        )
        # Ties go to the stronger regularisation (the first of the grid).
        self.C_ = self.best_ = Cs[best_index(scores, lower_is_better=by_loss)]
        self.param_ = "C"
        self.score_name_ = "log-loss" if by_loss else "accuracy"
        self.curve_ = [(C, float(v)) for C, v in zip(Cs, scores)]
        self.accuracy_curve_ = [(C, float(accuracies[C])) for C in Cs]
        self.selection_ = describe_selection(splits)
        self.validation_items_ = validation_items(splits)
        fit = self._solve(X32, codes, self.C_, weight, solutions[self.C_][-1])
        W, self.n_iter_ = fit.weights, np.array([fit.iterations])
        if len(self.classes_) == 2:  # one weight vector, as scikit-learn's binary models have
            W = W[:, 1:]
        self.coef_, self.intercept_ = W[:-1].T.copy(), W[-1].copy()
        self.calibrator_ = None
        if self.calibration is not None:
            self.calibrator_ = self._calibrator(held_out[self.C_], X, codes, weight, fit.weights)
        return self

    def _calibrator(self, held_out: list, X, codes, weight, W_all) -> DecisionCalibrator:
        """Fitted on out-of-fold class scores of the best C for every row (see
        tlcache.calibration.calibration_values; fold fits start from the full fit)."""

        def scores(W, rows):
            logits = X[rows] @ W[:-1] + W[-1]
            return logits[:, 1] - logits[:, 0] if len(self.classes_) == 2 else logits

        def fit_and_decide(train, valid):
            return scores(self._solve(X[train], codes[train], self.C_, weight[train], W_all).weights, valid)

        rows, values = calibration_values(
            held_out, codes, fit_and_decide, lambda: scores(W_all, np.arange(len(codes))), self.random_state
        )
        return DecisionCalibrator(self.calibration).fit(values, codes[rows], len(self.classes_))

    def _solve(self, X, codes, C, weight, init) -> MultinomialFit:
        return fit_multinomial(X, codes, len(self.classes_), C, weight, init, self.tol, self.max_iter)

    def decision_function(self, X) -> np.ndarray:
        """Class scores (n, K); for two classes the score of the second class, shape (n,)."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        calibrator = getattr(self, "calibrator_", None)  # heads saved before calibrators have none
        if calibrator is not None:
            return calibrator.predict_proba(scores)
        if scores.ndim == 1:
            scores = np.column_stack([np.zeros_like(scores), scores])
        return softmax(scores, axis=1)

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return self.classes_[index]


class OvrLogisticSGD(SGDClassifier):
    """scikit-learn's ``SGDClassifier`` (for the log loss, the streaming ``sgd`` head), its probabilities computed in
    log space: a logistic unit per class, normalised over the classes, as scikit-learn's, without the underflow. With
    decision values below about -745 every unit was 0 and scikit-learn answered 1/K for every class (41 of a new
    user's 244 test rows), the most probable class then not the one predicted."""

    def predict_proba(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        if scores.ndim == 1:  # two classes: one logistic unit, already stable
            return super().predict_proba(X)
        return softmax(-np.logaddexp(0.0, -scores), axis=1)  # log sigmoid(score) per class, normalised
