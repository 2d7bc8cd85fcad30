"""Dead feature dimensions, dropped before standardisation scales them up.

Some embeddings carry dimensions that are dead: constant, or so nearly constant that their spread is float noise
(MiniLM has three whose values are near 1e-33). StandardScaler leaves an exactly constant column alone but scales
a nearly constant one to unit variance, turning noise into a feature as loud as any other. The heads that
standardise drop such columns first.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

# A column is dead when its standard deviation is below this fraction of the median column's.
DEAD_RELATIVE_STD = 1e-6


class DropDeadFeatures(TransformerMixin, BaseEstimator):
    """Drop the columns whose standard deviation is below ``relative_std`` times the median of the columns that
    vary (constant columns go too; when no column varies, all are kept). ``kept_`` holds the kept columns'
    indices, ``n_dropped_`` how many were dropped."""

    def __init__(self, relative_std: float = DEAD_RELATIVE_STD):
        self.relative_std = relative_std

    def fit(self, X, y=None) -> DropDeadFeatures:
        X = validate_data(self, X, dtype=(np.float64, np.float32))
        std = X.std(axis=0, dtype=np.float64)
        varying = std > 0
        if varying.any():
            alive = varying & (std >= self.relative_std * np.median(std[varying]))
        else:  # nothing varies, nothing to tell apart: all kept
            alive = np.ones(len(std), dtype=bool)
        self.kept_ = np.flatnonzero(alive)
        self.n_dropped_ = int(len(std) - len(self.kept_))
        return self

    def transform(self, X):
        check_is_fitted(self, "kept_")
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        return X[:, self.kept_]

    def get_feature_names_out(self, input_features=None):
        from sklearn.utils.validation import _check_feature_names_in

        return _check_feature_names_in(self, input_features)[self.kept_]
