"""The RBF SVM's sweep over C on kernel matrices computed once, not once per value of C, and its predictions as
matrix products.

libsvm computes each kernel value it needs itself, one pair of rows at a time, and again for every C of the sweep
and for every prediction; the values do not depend on C. Here the squared distances between every pair of rows are
computed once (one matrix product, in float64 as libsvm computes, on every core); each split's kernel between its
training rows, and between its validation and training rows, is read from them (with the gamma of the split's
training rows) and kept for every C's fit and predictions (``SVC(kernel="precomputed")``); the calibrator's folds
and the refit on all rows read theirs the same way. The refit ships as the plain ``SVC(kernel="rbf")`` that fit is
(its support vectors the rows it chose). The numbers are those of ``SVC(kernel="rbf")`` with the same gamma, up to
float rounding. When the matrices would not fit in KERNEL_BUDGET_BYTES, the sweep runs as any other.

The fitted head predicts the same way (:func:`rbf_decisions`): the kernel between new rows and the support vectors
is one matrix product and every pair of classes' decision value one more; on 1000 test items that is 14 times
faster than libsvm on 384 features and 23 times on 1280.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.utils.validation import check_is_fitted, validate_data

from tlcache.calibration import decision_values
from tlcache.sweep import SweptClassifier

KERNEL_BUDGET_BYTES = 2 << 30  # the distances with the splits' kernels, or with the refit's: 11,000 rows on a split
PREDICT_BUDGET_BYTES = 1 << 27  # the new rows' kernel against the support vectors, a chunk of rows at a time


class SweptKernelSVC(SweptClassifier):
    """:class:`SweptClassifier` for an RBF ``SVC`` over ``C``, sharing each split's kernel across the grid."""

    # Every value of the grid is scored. Coarse to fine (grid_stride 2, as the mlp's alpha) scored 8 of 10 values and
    # saved a tenth of the fit, but chose another C than every value on 1 of 30 held-out splits
    # (benchmarks/results/sweep_stride.md) and on 2 of the heads benchmark's 6 sweeps: not the same optimum.
    grid_stride = 1

    _scratch = ("_kernels", "_sweep_parts", "_distances")

    def _begin_fit(self) -> None:
        self._kernels: dict | None = None  # None: the matrices would not fit, and the sweep runs as any other
        self._sweep_parts: set = set()
        self._distances: np.ndarray | None = None

    def _splits(self, codes) -> list[tuple[np.ndarray, np.ndarray]]:
        splits = super()._splits(codes)
        # Every row by every row (the distances), with the splits' kernels (training and validation rows by training
        # rows) during the sweep or with the refit's (every row by every row) after it.
        square = len(codes) ** 2
        cells = square + max(sum(len(train) * len(codes) for train, _ in splits), square)
        if self.param == "C" and self.estimator.kernel == "rbf" and 8 * cells <= KERNEL_BUDGET_BYTES:
            self._kernels = {}
            self._sweep_parts = {id(part) for split in splits for part in split}
        return splits

    def predict(self, X) -> np.ndarray:
        """The refitted SVC's own decisions: libsvm's one-against-one vote (see :func:`rbf_decisions`)."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False)
        if self.model_.kernel != "rbf":
            return super().predict(X)
        return self.classes_[rbf_decisions(self.model_, X)[1]]

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False)
        if self.model_.kernel != "rbf" or getattr(self, "calibrator_", None) is None:
            return super().predict_proba(X)
        return self.calibrator_.predict_proba(rbf_decisions(self.model_, X)[0])

    def _fold_fit(self, value, X, codes, train):
        if self._kernels is None:
            return super()._fold_fit(value, X, codes, train)
        model = clone(self.estimator).set_params(kernel="precomputed", C=value)
        return model.fit(self._kernel(X, train, train), codes[train])

    def _fold_apply(self, model, what: str, X, train, rows) -> np.ndarray:
        if self._kernels is None:
            return super()._fold_apply(model, what, X, train, rows)
        K = self._kernel(X, rows, train)
        return model.predict(K) if what == "predict" else decision_values(model, K)

    def _refit(self, X, codes):
        if self._kernels is None:
            return super()._refit(X, codes)
        self._kernels.clear()  # the sweep is over: its matrices make room for the refit's
        self._sweep_parts = set()
        rows = np.arange(len(codes))
        model = self._fold_fit(self.best_, X, codes, rows)
        # Made the SVC(kernel="rbf") this fit is: of a fit on rows, libsvm keeps the rows it chose as support vectors.
        model.set_params(kernel="rbf")
        model._gamma = self._gamma(np.asarray(X, dtype=np.float64))
        model.support_vectors_ = np.asarray(X[model.support_], dtype=np.float64)
        model.shape_fit_ = X.shape
        model.n_features_in_ = X.shape[1]
        return model

    def _kernel(self, X, rows, train) -> np.ndarray:
        """K(X[rows], X[train]) with the gamma ``SVC`` would use when fitted on X[train]: kept for the sweep's
        splits (the same arrays for every C), computed afresh for the calibrator's folds and the refit (used
        once)."""
        key = (id(rows), id(train))
        if key in self._kernels:
            return self._kernels[key]
        if self._distances is None:
            self._distances = euclidean_distances(np.asarray(X, dtype=np.float64), squared=True)
        K = self._distances[np.ix_(rows, train)]
        K *= -self._gamma(np.asarray(X[train], dtype=np.float64))
        np.exp(K, out=K)
        if {id(rows), id(train)} <= self._sweep_parts:
            self._kernels[key] = K
        return K

    def _gamma(self, X_train) -> float:
        """What ``SVC`` computes from its ``gamma`` and the rows it is fitted on."""
        gamma = self.estimator.gamma
        if gamma == "scale":
            variance = X_train.var()
            return 1.0 / (X_train.shape[1] * variance) if variance != 0 else 1.0
        if gamma == "auto":
            return 1.0 / X_train.shape[1]
        return float(gamma)


def rbf_pairs(model) -> dict[str, Any]:
    """An RBF ``SVC``'s arrays for its decisions as matrix products: for each pair (i, j) of classes, i < j, in
    libsvm's order, the weight of every support vector in the pair's decision value (a vector of class i carries
    its coefficient against j, one of class j its coefficient against i) and the pair's intercept; ``first`` and
    ``second`` one-hot (pairs, classes) rows of i and j."""
    n_classes = len(model.classes_)
    starts = np.concatenate([[0], np.cumsum(model.n_support_)])
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    weights = np.zeros((len(model.support_vectors_), len(pairs)))
    for p, (i, j) in enumerate(pairs):
        weights[starts[i] : starts[i + 1], p] = model.dual_coef_[j - 1, starts[i] : starts[i + 1]]
        weights[starts[j] : starts[j + 1], p] = model.dual_coef_[i, starts[j] : starts[j + 1]]
    one_hot = np.eye(n_classes)
    return {
        "support_vectors": model.support_vectors_,
        "gamma": model._gamma,
        "pair_weights": weights,
        "intercepts": model.intercept_,
        "first": one_hot[[i for i, _ in pairs]],
        "second": one_hot[[j for _, j in pairs]],
    }


def rbf_decisions(model, X) -> tuple[np.ndarray, np.ndarray]:
    """(``model.decision_function(X)``, ``model.predict(X)``) of an RBF ``SVC`` fitted on class indices 0..K-1,
    from matrix products: the decision values in scikit-learn's one-against-rest shape for more than two classes,
    and libsvm's vote (each pair's positive value a vote for its first class; the first class of the most votes)."""
    arrays = rbf_pairs(model)
    vectors = arrays["support_vectors"]
    squared = np.einsum("ij,ij->i", vectors, vectors)
    rows = max(1, PREDICT_BUDGET_BYTES // (8 * max(len(vectors), 1)))
    decision = np.empty((len(X), arrays["pair_weights"].shape[1]))
    for start in range(0, len(X), rows):
        x = np.asarray(X[start : start + rows], dtype=np.float64)
        distance = np.einsum("ij,ij->i", x, x)[:, None] + squared - 2 * (x @ vectors.T)
        kernel = np.exp(-arrays["gamma"] * np.maximum(distance, 0.0))
        decision[start : start + rows] = kernel @ arrays["pair_weights"] + arrays["intercepts"]
    if len(model.classes_) == 2:  # one value, positive for the second class
        return decision[:, 0], (decision[:, 0] > 0).astype(np.int64)
    won = (decision > 0).astype(np.float64)
    votes = won @ arrays["first"] + (1 - won) @ arrays["second"]
    confidence = decision @ (arrays["first"] - arrays["second"])
    return votes + confidence / (3 * (np.abs(confidence) + 1)), votes.argmax(axis=1)
