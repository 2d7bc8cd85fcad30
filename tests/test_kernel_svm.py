import numpy as np
import pytest
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

import tlcache.kernel_svm
from tlcache.kernel_svm import SweptKernelSVC, rbf_decisions
from tlcache.sweep import SweptClassifier


@parametrize_with_checks(
    [SweptKernelSVC(SVC(), "C", (0.1, 10.0))],
    expected_failed_checks=lambda _: {
        "check_classifiers_train": "calibrated probabilities need not rank as the decisions do",
        "check_sample_weight_equivalence_on_dense_data": "the validation split sees rows, not weights",
    },
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


def _rings(n: int, seed: int):
    """Three classes on noisy concentric rings in 20 dimensions: a task for an RBF kernel."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    angle = rng.uniform(0, 2 * np.pi, n)
    X = rng.normal(scale=0.3, size=(n, 20))
    X[:, 0] += (1 + y) * np.cos(angle)
    X[:, 1] += (1 + y) * np.sin(angle)
    return X, y


@pytest.mark.parametrize("n", [300, 1500])  # the sweep on 5 folds, then on one split
def test_shared_kernels_sweep_as_libsvm_does(n):
    X, y = _rings(n, 0)
    X_test, _ = _rings(600, 1)
    grid = (0.1, 1.0, 10.0, 100.0)
    shared = SweptKernelSVC(SVC(), "C", grid).fit(X, y)
    plain = SweptClassifier(SVC(), "C", grid).fit(X, y)
    assert shared.best_ == plain.best_
    np.testing.assert_allclose([s for _, s in shared.curve_], [s for _, s in plain.curve_], atol=2 / n)
    np.testing.assert_array_equal(shared.predict(X_test), plain.predict(X_test))  # the same refit ships
    assert shared.model_.get_params()["kernel"] == "rbf" and shared.model_.n_features_in_ == X.shape[1]
    np.testing.assert_allclose(shared.model_.support_vectors_, plain.model_.support_vectors_)
    np.testing.assert_allclose(
        shared.model_.decision_function(X_test), plain.model_.decision_function(X_test), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(shared.predict_proba(X_test), plain.predict_proba(X_test), atol=0.02)
    assert not hasattr(shared, "_kernels")


def test_coarse_to_fine_scores_fewer_values_and_finds_the_best_of_every_value():
    X, y = _rings(1500, 3)
    grid = tuple(np.logspace(-1, 2, 10))
    coarse = SweptKernelSVC(SVC(), "C", grid)
    coarse.grid_stride = 2  # the shared kernels serve a coarse-to-fine search too (benchmarks/sweep_stride.py)
    coarse.fit(X, y)
    every = SweptKernelSVC(SVC(), "C", grid).fit(X, y)
    assert len(coarse.curve_) < len(every.curve_) == len(grid)
    assert set(coarse.curve_) <= set(every.curve_)  # the values it scored, scored alike
    assert coarse.best_ == every.best_ and max(s for _, s in every.curve_) > min(s for _, s in every.curve_)


def test_over_the_memory_budget_the_sweep_runs_as_any_other(monkeypatch):
    X, y = _rings(300, 2)
    monkeypatch.setattr(tlcache.kernel_svm, "KERNEL_BUDGET_BYTES", 1000)
    calls = []
    monkeypatch.setattr(tlcache.kernel_svm, "euclidean_distances", lambda *a, **k: calls.append(a))
    model = SweptKernelSVC(SVC(), "C", (1.0, 10.0)).fit(X, y)
    assert calls == [] and np.mean(model.predict(X) == y) > 0.9


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_the_fitted_head_decides_as_libsvm_does(n_classes, monkeypatch):
    rng = np.random.default_rng(n_classes)
    centres = rng.normal(scale=1.2, size=(n_classes, 12))  # overlapping classes: close votes and small values
    codes = np.arange(400) % n_classes
    X = centres[codes] + rng.normal(size=(400, 12))
    X_new = centres[np.arange(700) % n_classes] + rng.normal(size=(700, 12))
    names = np.array([f"class {k}" for k in range(n_classes)])
    head = SweptKernelSVC(SVC(), "C", (0.1, 1.0, 10.0)).fit(X, names[codes])
    svc = head.model_
    # A budget of 64 rows a chunk: 700 new rows in 11 chunks, the last one short.
    monkeypatch.setattr(tlcache.kernel_svm, "PREDICT_BUDGET_BYTES", 8 * 64 * len(svc.support_vectors_))

    decisions, votes = rbf_decisions(svc, X_new)
    np.testing.assert_allclose(decisions, svc.decision_function(X_new), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(votes, svc.predict(X_new))
    np.testing.assert_array_equal(head.predict(X_new), names[svc.predict(X_new)])
    expected = head.calibrator_.predict_proba(svc.decision_function(X_new))
    np.testing.assert_allclose(head.predict_proba(X_new), expected, rtol=0, atol=1e-9)
