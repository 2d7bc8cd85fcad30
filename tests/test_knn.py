"""The knn head's sweep: neighbours found once per split give the same votes as a fit for every k."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from tlcache.knn import SweptKNN
from tlcache.sweep import SweptClassifier


def _knn():
    return KNeighborsClassifier(metric="cosine", weights="distance")


@parametrize_with_checks([SweptKNN(_knn(), "n_neighbors", (1, 3, 5))])
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


def _blobs(n: int, seed: int, noise: float):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8))
    y = rng.integers(0, 3, size=n)
    X = centres[y] + noise * rng.normal(size=(n, 8))
    return X, y


@pytest.mark.parametrize(
    ("n", "grid", "extends"),
    [
        (1500, (1, 3, 5, 7, 11, 15, 21, 31, 51), False),  # one validation split
        (300, (1, 3, 5, 7, 11), True),  # five folds below 1000 rows (the best at 11: extended)
        (1500, (1, 2, 3), True),  # best past the grid's top: the extension asks for more neighbours than were found
    ],
)
def test_the_shared_neighbours_score_every_k_as_its_own_fit_does(n, grid, extends):
    X, y = _blobs(n, seed=0, noise=3.0)
    X[:40] = X[-40:]  # rows at distance 0 from others: a vote of those rows alone
    ours = SweptKNN(_knn(), "n_neighbors", grid, random_state=1).fit(X, y)
    plain = SweptClassifier(_knn(), "n_neighbors", grid, random_state=1).fit(X, y)
    assert ours.curve_ == plain.curve_
    assert len({score for _, score in ours.curve_}) > 2  # the votes differ from one k to the next
    assert ours.best_ == plain.best_
    np.testing.assert_array_equal(ours.predict(X), plain.predict(X))
    assert (ours.extension_["steps"] > 0) == extends


def test_a_fitted_head_keeps_no_neighbours():
    X, y = _blobs(400, seed=2, noise=1.0)
    fitted = SweptKNN(_knn(), "n_neighbors", (1, 5)).fit(X, y)
    assert not hasattr(fitted, "_neighbours")


def test_no_k_above_what_a_split_trains_on_is_swept():
    """A new user's curve on 70 items listed k 51 and 75 beside folds of 56 training items: the same model as k 56."""
    X, y = _blobs(70, seed=3, noise=1.0)
    fitted = SweptKNN(_knn(), "n_neighbors", (1, 5, 31, 51, 75), random_state=0).fit(X, y)
    swept = [k for k, _ in fitted.curve_]
    assert swept[:3] == [1, 5, 31] and max(swept) <= 56 and 75 not in swept  # 5 folds of 70: 56 to train on
    assert SweptKNN(_knn(), "n_neighbors", (75, 100)).fit(X, y).curve_[0][0] == 75  # none fits: the smallest
