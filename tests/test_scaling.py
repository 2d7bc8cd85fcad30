import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from tlcache.heads import make_head
from tlcache.scaling import DropDeadFeatures


@parametrize_with_checks([DropDeadFeatures()])
def test_sklearn_transformer_contract(estimator, check):
    check(estimator)


def _with_dead_columns(n: int, seed: int):
    """Two informative columns, four of noise, and three dead ones: values near 1e-33, as MiniLM has."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    alive = np.column_stack([y + rng.normal(scale=0.8, size=n), -y + rng.normal(scale=0.8, size=n)])
    X = np.column_stack([alive, rng.normal(size=(n, 4)), 1e-33 * rng.normal(size=(n, 3))])
    return X, y


def test_dead_columns_are_dropped_not_blown_up():
    X, _ = _with_dead_columns(200, 0)
    # What the fix prevents: standardised, the dead columns are as loud as the informative ones.
    assert StandardScaler().fit_transform(X)[:, 6:].std(axis=0) == pytest.approx(np.ones(3))
    dropper = DropDeadFeatures().fit(X)
    assert list(dropper.kept_) == [0, 1, 2, 3, 4, 5] and dropper.n_dropped_ == 3
    assert dropper.transform(X).shape == (200, 6)
    # Constant columns go too; a matrix where nothing varies is kept whole.
    X[:, 3] = 7.0
    assert 3 not in DropDeadFeatures().fit(X).kept_
    assert DropDeadFeatures().fit(np.ones((10, 3))).transform(np.ones((4, 3))).shape == (4, 3)


def test_heads_that_standardise_ignore_dead_columns():
    X, y = _with_dead_columns(400, 1)
    X_test, y_test = _with_dead_columns(400, 2)
    for head in ("logreg", "linear-svm", "mlp"):
        pipeline = make_head(head).fit(X, y)
        assert pipeline.steps[0][1].n_dropped_ == 3
        without = make_head(head).fit(X[:, :6], y)
        np.testing.assert_array_equal(pipeline.predict(X_test), without.predict(X_test[:, :6]))
