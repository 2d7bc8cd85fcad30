"""The RBF SVM's sweep over C on kernel matrices computed once per split, not once per value of C.

libsvm computes each kernel value it needs itself, one pair of rows at a time, and again for every C of the sweep
and for every prediction; the values do not depend on C. Here each split's kernel between its training rows, and
between its validation and training rows, is computed once (one matrix product, on every core) and every C's fit
and predictions read it (``SVC(kernel="precomputed")``). The numbers are those of ``SVC(kernel="rbf")`` with the
same gamma, up to float rounding. The refit on all rows, the model that ships, is a plain ``SVC(kernel="rbf")``.
When the matrices would not fit in KERNEL_BUDGET_BYTES, the sweep runs as any other.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.metrics.pairwise import rbf_kernel

from tlcache.calibration import decision_values
from tlcache.sweep import SweptClassifier

KERNEL_BUDGET_BYTES = 1 << 30


class SweptKernelSVC(SweptClassifier):
    """:class:`SweptClassifier` for an RBF ``SVC`` over ``C``, sharing each split's kernel across the grid."""

    def fit(self, X, y) -> SweptKernelSVC:
        self._kernels: dict | None = None
        try:
            return super().fit(X, y)
        finally:
            for scratch in ("_kernels", "_sweep_parts"):  # a fitted head keeps no matrices
                self.__dict__.pop(scratch, None)

    def _splits(self, codes) -> list[tuple[np.ndarray, np.ndarray]]:
        splits = super()._splits(codes)
        cells = sum(len(train) * len(codes) for train, _ in splits)  # training and validation rows by training rows
        if self.param == "C" and self.estimator.kernel == "rbf" and 8 * cells <= KERNEL_BUDGET_BYTES:
            self._kernels = {}
            self._sweep_parts = {id(part) for split in splits for part in split}
        return splits

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

    def _kernel(self, X, rows, train) -> np.ndarray:
        """K(X[rows], X[train]) with the gamma ``SVC`` would use when fitted on X[train]: kept for the sweep's
        splits (the same arrays for every C), computed afresh for the calibrator's folds (used once)."""
        key = (id(rows), id(train))
        if key in self._kernels:
            return self._kernels[key]
        K = rbf_kernel(X[rows], X[train], gamma=self._gamma(X[train]))
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
