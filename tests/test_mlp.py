import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.neural_network import MLPClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_info, threadpool_limits

from tlcache.heads import make_head
from tlcache.mlp import MLPHead, SweptMLP, fit_many


@parametrize_with_checks(
    [
        MLPHead(hidden=16, early_stopping=False, max_iter=100),
        SweptMLP(MLPHead(hidden=16, early_stopping=False, max_iter=100), "alpha", (1e-3, 1e-1)),
    ],
    expected_failed_checks=lambda _: {
        "check_sample_weight_equivalence_on_dense_data": "the model sees rows, not weights",
    },
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


def _task(n: int, classes: int, seed: int):
    X, y = make_classification(
        n_samples=n, n_features=40, n_informative=12, n_classes=classes, class_sep=1.0, random_state=seed
    )
    return X.astype(np.float32), y


def test_models_trained_together_equal_models_trained_alone():
    X, y = _task(600, 3, 0)
    alphas = [1e-4, 0.3, 3.0]
    together = fit_many(MLPHead(hidden=32), X, y, alphas)
    for alpha, model in zip(alphas, together):
        alone = MLPHead(hidden=32, alpha=alpha).fit(X, y)
        assert model.n_iter_ == alone.n_iter_
        np.testing.assert_allclose(model.coefs_[0], alone.coefs_[0], atol=1e-6)
        np.testing.assert_array_equal(model.predict(X), alone.predict(X))
    # alpha is the only difference between them: a strong penalty shrinks the weights
    assert np.linalg.norm(together[2].coefs_[0]) < np.linalg.norm(together[0].coefs_[0])


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("early_stopping", [True, False])
def test_as_accurate_as_scikit_learns_mlp_on_its_recipe(classes, early_stopping):
    """Same recipe, another implementation: over 3 seeds, test accuracy within 2 points of MLPClassifier's."""
    X, y = _task(2400, classes, 1)
    train, test = slice(0, 1600), slice(1600, None)
    ours, theirs = [], []
    for seed in range(3):
        head = MLPHead(hidden=64, alpha=1e-3, early_stopping=early_stopping, random_state=seed).fit(X[train], y[train])
        reference = MLPClassifier(
            (64,), alpha=1e-3, early_stopping=early_stopping, max_iter=300, random_state=seed
        ).fit(X[train], y[train])
        ours.append(np.mean(head.predict(X[test]) == y[test]))
        theirs.append(np.mean(reference.predict(X[test]) == y[test]))
    assert np.mean(ours) >= np.mean(theirs) - 0.02, (ours, theirs)


def test_two_classes_get_one_logistic_unit_and_consistent_outputs():
    X, y = _task(400, 2, 2)
    labels = np.array(["no", "yes"])[y]
    model = MLPHead(hidden=16, alpha=1.0, early_stopping=False, tol=1e-3).fit(X, labels)
    assert model.coefs_[1].shape == (16, 1)
    decision, proba = model.decision_function(X), model.predict_proba(X)
    assert decision.shape == (400,) and proba.shape == (400, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.predict(X), np.where(decision > 0, "yes", "no"))
    np.testing.assert_array_equal(model.predict(X), model.classes_[proba.argmax(axis=1)])
    assert model.n_iter_ < 300  # stopped on the training loss, before the last epoch


def test_early_stopping_keeps_the_best_held_out_weights_and_stops():
    X, y = _task(1200, 3, 3)
    model = MLPHead(hidden=32, n_iter_no_change=4).fit(X, y)
    assert model.n_iter_ < 300
    refit = MLPHead(hidden=32, n_iter_no_change=4).fit(X, y)
    np.testing.assert_array_equal(model.coefs_[0], refit.coefs_[0])  # same seed, same numbers


def test_mlp_head_sweeps_coarse_to_fine_and_ships_the_refit():
    X, y = _task(1500, 3, 4)
    pipeline = make_head("mlp", seed=0, n_train=len(y)).fit(X, y)
    swept = pipeline.steps[-1][1]
    assert isinstance(swept.model_, MLPHead) and swept.model_.alpha == swept.best_
    grid = sorted(swept.grid)
    scored = [value for value, _ in swept.curve_]
    assert len(scored) < len(grid) + 3  # coarse to fine: not every value of the grid was trained
    assert set(grid[::2]) | {grid[-1]} <= set(scored)
    assert not hasattr(swept, "_prepared")
    np.testing.assert_array_equal(pipeline.predict(X), swept.classes_[swept.model_.predict(pipeline[:-1].transform(X))])


def test_the_sweeps_numpy_products_run_on_one_blas_thread(monkeypatch):
    # OpenBLAS's threads spin a while after each product: beside them torch's next epochs ran at half speed.
    X, y = _task(400, 3, 6)
    blas_threads = []
    predict = MLPHead.predict

    def recording(self, X):
        blas_threads.extend(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")
        return predict(self, X)

    monkeypatch.setattr(MLPHead, "predict", recording)
    with threadpool_limits(2, user_api="blas"):
        make_head("mlp", seed=0, n_train=len(y)).fit(X, y)
        after = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    assert blas_threads and set(blas_threads) == {1}  # every split's predictions
    assert after == {2}  # as it was, once the sweep is done


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: the GPU path is checked where one is")
def test_on_a_gpu_the_mlp_trains_there_as_on_the_cpu():
    X, y = _task(1200, 3, 5)
    gpu = MLPHead(hidden=32, device="cuda").fit(X, y)
    cpu = MLPHead(hidden=32, device="cpu").fit(X, y)
    assert gpu.compute_dtype_ in ("bfloat16", "float32")
    assert np.mean(gpu.predict(X) == cpu.predict(X)) > 0.95
