"""The regularisation sweep: it picks the value that is best, and its estimators follow scikit-learn's rules."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import make_store
from tlcache.heads import fit_head
from tlcache.linear import SweptLogisticRegression, fit_multinomial
from tlcache.sweep import MAX_EXTENSIONS, SweptClassifier, reporting_progress, sweep_grid


def _expected_failures(estimator):
    # The sweep splits rows to choose C: a row of weight 2 and two copies of it can land in different folds.
    failures = {"check_sample_weight_equivalence_on_dense_data": "the validation split sees rows, not weights"}
    base = getattr(estimator, "estimator", estimator)
    calibrated = getattr(estimator, "calibration", None) or not hasattr(base, "predict_proba")
    if calibrated:
        # Deliberately: predict is the model's own decision and predict_proba a calibrator's map of its decision
        # values, whose argmax can differ on a few rows (fit-head reports how often); the check wants them equal.
        failures["check_classifiers_train"] = "calibrated probabilities need not rank as the decisions do"
    return failures


@parametrize_with_checks(
    [
        SweptLogisticRegression(Cs=(0.01, 1.0)),
        SweptLogisticRegression(Cs=(0.01, 1.0), calibration="isotonic"),
        SweptClassifier(LogisticRegression(max_iter=500), "C", (0.01, 1.0)),
        SweptClassifier(LinearSVC(), "C", (0.01, 1.0)),  # no predict_proba of its own: a calibrator maps it
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("C", [0.01, 1.0])
def test_fast_solver_matches_scikit_learn(n_classes, C):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 12))
    y = np.argmax(X[:, :n_classes] + 0.5 * rng.normal(size=(300, n_classes)), axis=1)
    ours = fit_multinomial(X, y, n_classes, C, tol=1e-9).weights
    theirs = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    probabilities = np.exp(X @ ours[:-1] + ours[-1])
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, theirs.predict_proba(X), atol=1e-4)


def _noisy_xor(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    flip = rng.random(n) < 0.2
    return X, np.where(flip, 1 - y, y)


def test_sweep_picks_the_depth_that_the_data_was_built_for():
    # Noisy XOR: depth 1 cannot fit it (50%), depth 2 is the Bayes rule (80%), deep trees fit the 20% noise.
    X, y = _noisy_xor(2000, 0)
    model = SweptClassifier(DecisionTreeClassifier(random_state=0), "max_depth", (1, 2, 12, 30)).fit(X, y)
    assert model.best_ == 2
    scores = dict(model.curve_)
    assert scores[2] > scores[1] + 0.2 and scores[2] > scores[30] + 0.02
    assert model.selection_ == "a stratified validation split"


def _sparse_logistic(seed: int):
    rng = np.random.default_rng(seed)
    w = np.zeros(150)
    w[:4] = 1.5

    def sample(n):
        X = rng.normal(size=(n, 150))
        return X, (X @ w + rng.logistic(size=n) > 0).astype(int)

    return sample


def test_logreg_sweep_picks_a_c_as_good_as_the_best_on_fresh_data():
    sample = _sparse_logistic(1)
    X, y = sample(200)  # few samples, many useless features: regularisation matters
    X_fresh, y_fresh = sample(20_000)
    grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    model = SweptLogisticRegression(Cs=grid, random_state=0).fit(X, y)
    fresh = {}
    for C in grid:
        W = fit_multinomial(X, y, 2, C).weights
        fresh[C] = np.mean(np.argmax(X_fresh @ W[:-1] + W[-1], axis=1) == y_fresh)
    assert fresh[model.C_] >= max(fresh.values()) - 0.01
    assert fresh[model.C_] > fresh[100.0] + 0.02  # the weakest regularisation overfits here
    assert fresh[model.C_] > fresh[1e-4] + 0.1  # and the strongest underfits
    assert [c for c, _ in model.curve_] == list(grid) and model.selection_ == "5-fold cross-validation"


def test_small_data_uses_folds_and_large_data_a_split():
    X, y = _noisy_xor(1500, 2)
    assert SweptLogisticRegression(Cs=(1.0,), cv_below=1000).fit(X, y).selection_ == "a stratified validation split"
    assert SweptLogisticRegression(Cs=(1.0,), cv_below=2000).fit(X, y).selection_ == "5-fold cross-validation"


def test_probability_columns_follow_classes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    y = np.array(["zebra", "ant", "moth"])[np.argmax(X[:, :3], axis=1)]
    for model in (SweptLogisticRegression(), SweptClassifier(LogisticRegression(), "C", (1.0,))):
        model.fit(X, y)
        assert list(model.classes_) == ["ant", "moth", "zebra"]
        proba = model.predict_proba(X)
        assert (model.classes_[proba.argmax(axis=1)] == model.predict(X)).all()
        assert np.mean(model.predict(X) == y) > 0.8


def test_log_loss_selection_ignores_float16_rounding():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1500, 40)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) + rng.logistic(size=1500) > 0).astype(int)
    rounded = X.astype(np.float16).astype(np.float32)
    chosen = [
        SweptLogisticRegression(random_state=seed).fit(features, y).C_ for features in (X, rounded) for seed in (0, 1)
    ]
    assert chosen[0] == chosen[2] and chosen[1] == chosen[3]
    model = SweptLogisticRegression().fit(X, y)
    assert model.score_name_ == "log-loss" and len(model.accuracy_curve_) == len(model.curve_)
    assert model.C_ == min(model.curve_, key=lambda point: point[1])[0]


def test_a_grid_whose_best_value_is_at_its_end_is_extended_that_way():
    # The data above wants C near 0.01-0.1; a grid that stops at 1e-3 must go on up to find it.
    sample = _sparse_logistic(1)
    X, y = sample(200)
    X_fresh, y_fresh = sample(20_000)
    short = SweptLogisticRegression(Cs=(1e-5, 1e-4, 1e-3)).fit(X, y)
    full = SweptLogisticRegression(Cs=np.logspace(-5, 2, 15)).fit(X, y)
    assert short.extension_["direction"] == "up" and 1 <= short.extension_["steps"] <= MAX_EXTENSIONS
    assert short.C_ > 1e-3 and not short.extension_["at_edge"]
    assert [c for c, _ in short.curve_][:3] == [1e-5, 1e-4, 1e-3]
    assert abs(np.mean(short.predict(X_fresh) == y_fresh) - np.mean(full.predict(X_fresh) == y_fresh)) < 0.01
    assert full.extension_ == {"direction": None, "steps": 0, "at_edge": False}
    # Downward, on a grid of integers: on noisy XOR shallow trees do best; from 12, the steps are 5 (better) and 2
    # (worse again), where the extension stops.
    X, y = _noisy_xor(2000, 0)
    tree = SweptClassifier(DecisionTreeClassifier(random_state=0), "max_depth", (12, 30, 60)).fit(X, y)
    assert [depth for depth, _ in tree.curve_] == [2, 5, 12, 30, 60]
    assert tree.best_ == 5 and tree.extension_ == {"direction": "down", "steps": 2, "at_edge": False}
    assert all(isinstance(depth, int) for depth, _ in tree.curve_)


def test_the_report_says_the_grid_was_extended_and_where_it_stopped(tmp_path):
    sample = _sparse_logistic(1)
    X, y = sample(300)
    store = make_store(tmp_path / "s.h5", X, y, ["no", "yes"])
    extended = fit_head(store, "logreg", grid=[1e-5, 1e-4, 1e-3], out=tmp_path / "extended").report["sweep"]
    assert extended["extension"]["direction"] == "up" and extended["best"] > 1e-3
    assert "extended up by" in (tmp_path / "extended" / "report.md").read_text()
    # A grid far too strong: three steps up do not reach the optimum, and the report says so.
    stuck = fit_head(store, "logreg", grid=[1e-9, 1e-8], out=tmp_path / "stuck").report["sweep"]
    assert stuck["extension"]["at_edge"] and stuck["extension"]["steps"] == MAX_EXTENSIONS
    assert "still at an end of the grid" in (tmp_path / "stuck" / "report.md").read_text()


def test_coarse_to_fine_finds_a_peak_between_the_coarse_values_with_fewer_fits():
    grid = [float(v) for v in range(1, 12)]  # 1..11; the peak at 6 is not among the coarse values 1, 4, 7, 10, 11
    calls, stages = [], []

    def score(value):
        calls.append(value)
        return -abs(value - 6.2)

    values, scores, extension = sweep_grid(grid, score, "alpha", stride=3, prepare=stages.append)
    assert values[int(np.argmax(scores))] == 6.0
    assert stages == [[1.0, 4.0, 7.0, 10.0, 11.0], [5.0, 6.0, 8.0, 9.0]]  # coarse, then the best one's neighbours
    assert sorted(calls) == values and len(calls) == 9 < len(grid)
    assert extension == {"direction": None, "steps": 0, "at_edge": False}
    # stride 1 scores the whole grid in one stage, in order (warm starts go from one value to the next)
    calls.clear(), stages.clear()
    sweep_grid(grid, score, "alpha", prepare=stages.append)
    assert stages == [grid] and calls == grid


class _SharedWork(SweptClassifier):
    """A sweep that keeps shared work while it fits, and fails part way through when asked to."""

    _scratch = ("_work",)

    def __init__(self, estimator=None, param="C", grid=(0.01, 1.0), fail_at=None):
        super().__init__(estimator, param, grid)
        self.fail_at = fail_at

    def _begin_fit(self) -> None:
        self._work = []

    def _prepare(self, values, X, codes, splits) -> None:
        self._work.extend(values)
        if self.fail_at in values:
            raise RuntimeError("the sweep failed part way through")


@pytest.mark.parametrize("fail_at", [None, 1.0])
def test_a_sweeps_shared_work_is_dropped_however_fit_ends(fail_at):
    X, y = np.random.default_rng(0).normal(size=(200, 4)), np.repeat([0, 1], 100)
    head = _SharedWork(LogisticRegression(), grid=(0.01, 0.1, 1.0), fail_at=fail_at)
    if fail_at is None:
        head.fit(X, y)
        assert head.best_ in (0.01, 0.1, 1.0)
    else:
        with pytest.raises(RuntimeError, match="part way"):
            head.fit(X, y)
    assert not hasattr(head, "_work")


def test_a_value_given_twice_is_scored_once():
    X, y = np.random.default_rng(0).normal(size=(300, 5)), np.repeat([0, 1], 150)
    calls = []
    values, _, _ = sweep_grid([1.0, 0.1, 1.0], lambda v: calls.append(v) or -abs(np.log10(v)), "C")
    assert values[:2] == [0.1, 1.0] and sorted(calls) == sorted(set(calls))
    Cs = [C for C, _ in SweptLogisticRegression(Cs=(1.0, 1.0, 0.1)).fit(X, y).curve_]
    assert Cs == sorted(set(Cs))


@pytest.mark.parametrize("stride", [1, 2])
def test_a_sweep_reports_each_value_it_scores_where_asked(stride):
    calls, seen = [], []
    with reporting_progress(lambda *report: seen.append(report)):
        values, _, extension = sweep_grid(
            list(range(1, 11)), lambda v: calls.append(v) or -abs(v - 11), "k", stride=stride
        )
    assert extension["steps"] > 0  # the best lies past the grid: the plan grows
    assert [done for _, done, _ in seen[:-1]] == list(range(1, len(calls) + 1))
    assert all(param == "k" and done <= planned for param, done, planned in seen)
    assert seen[-1] == ("k", len(calls), len(calls))
    sweep_grid([1, 2], lambda v: -v, "k")  # outside the block: nothing reported
    assert len(seen) == len(calls) + 1
