"""The knn head's sweep over ``n_neighbors`` on neighbours found once per split, not once per value.

A k-nearest-neighbours vote for k is read off the k nearest of any larger neighbourhood: on each of the sweep's
splits, the validation rows' neighbours among the training rows are found once, for the largest k the sweep's stage
asks for (found again only when an extension asks for more), and each k's distance-weighted vote is counted from
their first k. The votes are those of ``KNeighborsClassifier(weights="distance")`` fitted for that k, up to ties in
distance at the k-th neighbour. The calibrator's folds and the refit on all rows are plain fits.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.extmath import weighted_mode

from tlcache.sweep import SweptClassifier


class SweptKNN(SweptClassifier):
    """:class:`SweptClassifier` for a ``KNeighborsClassifier`` with distance weights over ``n_neighbors``, sharing
    each split's neighbours across the grid."""

    _scratch = ("_neighbours",)

    def _begin_fit(self) -> None:
        self._neighbours: dict = {}  # id(training rows) -> (validation rows, their distances, neighbours' codes)

    def _prepare(self, values: list, X, codes, splits) -> None:
        if self.param != "n_neighbors" or self.estimator.weights != "distance":
            return
        for train, valid in splits:
            k = min(max(values), len(train))
            found = self._neighbours.get(id(train))
            if found is None or found[1].shape[1] < k:
                model = self._with(k, n_train=len(train)).fit(X[train], codes[train])
                distances, indices = model.kneighbors(X[valid])
                self._neighbours[id(train)] = (valid, distances, codes[train][indices])

    def _fold_apply(self, model, what: str, X, train, rows) -> np.ndarray:
        found = self._neighbours.get(id(train))
        k = model.n_neighbors
        if what != "predict" or found is None or found[0] is not rows or found[1].shape[1] < k:
            return super()._fold_apply(model, what, X, train, rows)
        _, distances, labels = found
        return _distance_vote(distances[:, :k], labels[:, :k])


def _distance_vote(distances: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's label of the largest sum of 1 / distance over its neighbours (ties to the smaller label); a row
    with neighbours at distance 0 is their vote alone, as scikit-learn's ``weights="distance"`` counts."""
    with np.errstate(divide="ignore"):
        weights = 1.0 / distances
    exact = np.isinf(weights)
    rows = exact.any(axis=1)
    weights[rows] = exact[rows]
    mode, _ = weighted_mode(labels, weights, axis=1)
    return mode.ravel().astype(labels.dtype)
