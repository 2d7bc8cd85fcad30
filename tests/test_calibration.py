import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import make_classification

from conftest import make_store
from tlcache.calibration import DecisionCalibrator, platt
from tlcache.heads import fit_head, make_head
from tlcache.report import calibration_summary


def _imbalanced(seed: int):
    """1200 training and 600 test rows, 35% in the smaller class, 600 features of which 30 informative: many
    features for the rows, as embeddings are, where a fold model fitted on two thirds of the rows is weaker than
    the model fitted on all of them."""
    X, y = make_classification(
        n_samples=1800, n_features=600, n_informative=30, n_redundant=0, weights=[0.65], flip_y=0.0,
        class_sep=0.5, random_state=seed,
    )  # fmt: skip
    return X[:1200], y[:1200], X[1200:], y[1200:]


def test_svm_heads_ship_their_swept_models_own_decisions_and_stay_calibrated():
    """The shipped svm / linear-svm predicts with the model its sweep chose, refitted on every row, and its
    probabilities are at least as well calibrated (mean ECE over three data sets) as those of the wrapping it
    replaces: CalibratedClassifierCV(cv=3) around the chosen model, which predicted through the argmax of an
    average of three fold models' calibrated probabilities and lost accuracy on these sets."""
    ece = {"svm": ([], []), "linear-svm": ([], [])}
    for seed in range(3):
        X, y, X_test, y_test = _imbalanced(seed)
        for head, (new_ece, old_ece) in ece.items():
            pipeline = make_head(head, seed=0).fit(X, y)
            swept = pipeline.steps[-1][1]
            Z, Z_test = pipeline[:-1].transform(X), pipeline[:-1].transform(X_test)
            np.testing.assert_array_equal(pipeline.predict(X_test), swept.model_.predict(Z_test))
            assert swept.model_.get_params()["C"] == swept.best_
            old = CalibratedClassifierCV(clone(swept.model_), method="sigmoid", cv=3).fit(Z, y)
            if head == "svm":
                accuracy = np.mean(pipeline.predict(X_test) == y_test)
                assert accuracy > np.mean(old.predict(Z_test) == y_test)
            probabilities = pipeline.predict_proba(X_test)
            np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
            new_ece.append(calibration_summary(probabilities, y_test)["ece"])
            old_ece.append(calibration_summary(old.predict_proba(Z_test), y_test)["ece"])
    for head, (new_ece, old_ece) in ece.items():
        assert np.mean(new_ece) <= np.mean(old_ece), (head, new_ece, old_ece)


def test_fit_head_scores_and_predicts_the_heads_own_decisions(tmp_path):
    X, y, X_test, y_test = _imbalanced(0)
    X, X_test = X[:, :100].astype(np.float32), X_test[:, :100].astype(np.float32)
    train = make_store(tmp_path / "train.h5", X, y, ["a", "b"])
    test = make_store(tmp_path / "test.h5", X_test, y_test, ["a", "b"])
    run = fit_head(train, "linear-svm", test=test, out=tmp_path / "run")
    pipeline = make_head("linear-svm", seed=0).fit(X, y)
    decisions = pipeline.predict(X_test)
    assert run.accuracy == pytest.approx(np.mean(decisions == y_test))
    agreement = run.report["calibration"]["agreement"]
    assert agreement == pytest.approx(np.mean(pipeline.predict_proba(X_test).argmax(axis=1) == decisions))
    assert "most probable class is the predicted class" in (tmp_path / "run" / "report.md").read_text()


def test_platt_recovers_a_known_sigmoid():
    rng = np.random.default_rng(0)
    values = rng.normal(scale=2.0, size=20000)
    positive = rng.random(len(values)) < 1 / (1 + np.exp(-1.5 * values + 0.5))  # a = -1.5, b = 0.5
    a, b = platt(values, positive)
    assert a == pytest.approx(-1.5, abs=0.1) and b == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibrated_rows_sum_to_one_for_every_class_count(method):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, size=400)
    scores = rng.normal(size=(400, 4)) + 2.0 * np.eye(4)[codes]
    calibrator = DecisionCalibrator(method).fit(scores, codes, 4)
    probabilities = calibrator.predict_proba(scores)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert np.mean(probabilities.argmax(axis=1) == codes) > 0.7
    binary = DecisionCalibrator(method).fit(scores[:, 1] - scores[:, 0], (codes == 1).astype(int), 2)
    assert binary.predict_proba(np.array([-5.0, 5.0])).shape == (2, 2)
    # A class the held-out rows never show keeps finite, small probabilities.
    absent = DecisionCalibrator(method).fit(scores[codes < 3][:, :4], codes[codes < 3], 4)
    assert np.isfinite(absent.predict_proba(scores)).all()
