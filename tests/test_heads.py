import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import make_store
from tlcache.errors import UserError
from tlcache.head_choices import HEADS
from tlcache.heads import check_head_matches, fit_head, make_head
from tlcache.runs import load_head
from tlcache.store import FeatureStore


def _store(path, X, y, class_names, backbone="test-bb", weights="w1"):
    return make_store(path, X, y, class_names, backbone=backbone, weights_digest=weights)


def _blobs(n, seed, shift=3.0, dim=6, classes=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, dim)) + shift * np.eye(classes, dim)[y]
    return X, y


@pytest.mark.parametrize("head", HEADS)
def test_each_head_fits_saves_and_reports(tmp_path, head):
    X, y = _blobs(150, 0)
    store = _store(tmp_path / "train.h5", X, y, ["ant", "bee", "cat"])
    run = fit_head(store, head, test_fraction=0.3, seed=1, out=tmp_path / "run")
    assert run.accuracy > 0.85  # well-separated blobs: any sane head does this
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    metrics = report["metrics"]
    assert report["n_train"] == 105 and report["n_test"] == 45
    assert [row["class"] for row in metrics["per_class"]] == ["ant", "bee", "cat"]
    assert np.asarray(metrics["confusion_matrix"]).sum() == 45
    assert np.trace(metrics["confusion_matrix"]) / 45 == pytest.approx(metrics["accuracy"])
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 1000
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "| accuracy |" in markdown and "| ant |" in markdown

    pipeline, sidecar = load_head(tmp_path / "run")
    assert sidecar["backbone"] == "test-bb" and sidecar["dim"] == 6 and sidecar["classes"] == ["ant", "bee", "cat"]
    probabilities = pipeline.predict_proba(X[:5])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)

    # Every test item's prediction, for the user's own paired tests: they reproduce the report's accuracy.
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"id": str})
    assert list(predictions.columns) == ["id", "label", "prob_ant", "prob_bee", "prob_cat", "true_label"]
    assert len(predictions) == 45 and predictions["id"].is_unique
    assert (predictions["label"] == predictions["true_label"]).mean() == pytest.approx(metrics["accuracy"])
    np.testing.assert_allclose(predictions.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
    ids = FeatureStore(store).ids()
    truth = dict(zip(ids, np.array(["ant", "bee", "cat"])[y]))
    assert all(truth[row.id] == row.true_label for row in predictions.itertuples())


def test_same_seed_same_numbers(tmp_path):
    X, y = _blobs(120, 0, shift=1.0)
    store = _store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    first = fit_head(store, "mlp", seed=3, out=tmp_path / "a").report["metrics"]
    second = fit_head(store, "mlp", seed=3, out=tmp_path / "b").report["metrics"]
    assert first == second


def test_separate_test_store_with_classes_in_another_order(tmp_path):
    X, y = _blobs(90, 0)
    train = _store(tmp_path / "train.h5", X, y, ["a", "b", "c"])
    X_test, y_test = _blobs(30, 1)
    # The test store only knows classes b and c, so its label indices differ from the training store's.
    keep = y_test > 0
    test = _store(tmp_path / "test.h5", X_test[keep], y_test[keep] - 1, ["b", "c"])
    run = fit_head(train, "logreg", test=test, out=tmp_path / "run")
    assert run.report["n_test"] == keep.sum() and run.accuracy >= 0.85
    supports = {row["class"]: row["support"] for row in run.report["metrics"]["per_class"]}
    assert supports == {"a": 0, "b": 10, "c": 10}


def test_test_store_of_other_features_is_refused(tmp_path):
    X, y = _blobs(60, 0)
    train = _store(tmp_path / "train.h5", X, y, ["a", "b", "c"])
    other = _store(tmp_path / "other.h5", X, y, ["a", "b", "c"], weights="w2")
    with pytest.raises(UserError, match="differ in weights_digest"):
        fit_head(train, test=other, out=tmp_path / "run")


def test_a_head_fitted_on_images_decoded_by_an_earlier_version_is_refused_saying_so(tmp_path):
    from tlcache.images import DECODING

    X, y = _blobs(60, 0)
    preprocessing = {"convert": DECODING, "resize_shorter": 256, "center_crop": 224}
    old = make_store(tmp_path / "old.h5", X, y, ["a", "b", "c"], preprocessing={**preprocessing, "convert": "RGB"})
    fit_head(old, out=tmp_path / "run")
    _, sidecar = load_head(tmp_path / "run")
    now = FeatureStore(make_store(tmp_path / "now.h5", X, y, ["a", "b", "c"], preprocessing=preprocessing))
    with pytest.raises(UserError, match="differ in preprocessing; their images were decoded by different tlcache"):
        check_head_matches(sidecar, now, tmp_path / "run")
    resized = FeatureStore(
        make_store(tmp_path / "resized.h5", X, y, ["a", "b", "c"], preprocessing={**preprocessing, "center_crop": 96})
    )
    with pytest.raises(UserError, match="differ in preprocessing; embed with the same backbone and options"):
        check_head_matches(sidecar, resized, tmp_path / "run")


def test_head_mismatch_is_refused(tmp_path):
    X, y = _blobs(60, 0)
    fit_head(_store(tmp_path / "train.h5", X, y, ["a", "b", "c"]), out=tmp_path / "run")
    _, sidecar = load_head(tmp_path / "run")
    X8 = np.hstack([X, X[:, :2]])
    other = FeatureStore(_store(tmp_path / "other.h5", X8, y, ["a", "b", "c"], backbone="bigger"))
    with pytest.raises(UserError, match=r"fitted on test-bb features \(6-d\) .* bigger features \(8-d\)"):
        check_head_matches(sidecar, other, tmp_path / "run")


def test_unlabelled_store_and_single_class_are_refused(tmp_path):
    X, _ = _blobs(20, 0)
    with pytest.raises(UserError, match="has no labels"):
        fit_head(_store(tmp_path / "u.h5", X, np.full(20, -1), []), out=tmp_path / "r1")
    with pytest.raises(UserError, match="single class"):
        fit_head(_store(tmp_path / "one.h5", X, np.zeros(20, dtype=int), ["a"]), out=tmp_path / "r2")


def test_unknown_head_and_bad_fraction(tmp_path):
    X, y = _blobs(30, 0)
    store = _store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    with pytest.raises(UserError, match="unknown head 'forest'"):
        make_head("forest")
    with pytest.raises(UserError, match="between 0 and 1"):
        fit_head(store, test_fraction=1.5, out=tmp_path / "r")


def test_load_head_refuses_folders_without_a_head(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no head with its head.json"):
        load_head(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        load_head(tmp_path / "nowhere")


def test_load_head_given_a_store_or_the_folder_of_every_head_says_what_to_pass(tmp_path):
    """A new user passed a feature store, and the folder of `fit-head --head all`, where a head goes: each was told
    only that the folder 'holds no head'."""
    from tlcache.all_heads import fit_all_heads

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    store = _store(tmp_path / "s.h5", rng.normal(size=(60, 4)) + 2 * y[:, None], y, ["a", "b"])
    with pytest.raises(UserError, match="s.h5 is a feature store, not a head; pass the run folder"):
        load_head(store)
    runs = fit_all_heads(store, heads=("logreg", "knn"), out=tmp_path / "all", progress=False)
    best = runs[0].report["head"]
    with pytest.raises(UserError, match=f"in each of its folders .*; pass one, e.g. .*{best}, the best on validation"):
        load_head(tmp_path / "all")


def test_sgd_head_streams_and_matches_in_memory_accuracy(tmp_path, monkeypatch):
    import tlcache.heads as heads

    X, y = _blobs(600, 0, shift=2.0)
    store = _store(tmp_path / "big.h5", X, y, ["a", "b", "c"])
    monkeypatch.setattr(heads, "STREAM_BATCH", 64)  # many batches, as for a store larger than memory
    streamed = fit_head(store, "sgd", seed=0, out=tmp_path / "sgd")
    in_memory = fit_head(store, "logreg", seed=0, out=tmp_path / "logreg")
    assert abs(streamed.accuracy - in_memory.accuracy) <= 0.03
    pipeline, _ = load_head(tmp_path / "sgd")
    assert pipeline.steps[0][1].n_samples_seen_ == streamed.report["n_train"]


def test_sgd_probabilities_name_the_predicted_class_even_far_from_the_boundary():
    """A new user's sgd head gave 41 of 244 test rows 1/K for every class (every logistic unit underflowed), and
    the most probable class was the predicted one on 83% of rows."""
    from sklearn.linear_model import SGDClassifier

    from tlcache.linear import OvrLogisticSGD

    X, y = _blobs(300, 0, shift=2.0)
    ours = OvrLogisticSGD(loss="log_loss", random_state=0).fit(X, y)
    theirs = SGDClassifier(loss="log_loss", random_state=0).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-12)  # the same model
    for model in (ours, theirs):
        model.coef_ *= 1e4  # decision values of thousands, as a few hundred rows of 1280 features gave
    far = X * 10
    uniform = (theirs.predict_proba(far) == 1 / 3).all(axis=1)  # scikit-learn's answer: no class preferred
    probabilities = ours.predict_proba(far)
    assert uniform.any() and np.allclose(probabilities.sum(axis=1), 1)
    agree = probabilities.argmax(axis=1) == ours.predict(far)
    assert agree[uniform].all() and probabilities[uniform].max(axis=1).min() > 0.99
    # Two units both saturated at 1 are a tie the model itself cannot break (0.5 each); every other row agrees.
    top, second = np.sort(probabilities, axis=1)[:, -1], np.sort(probabilities, axis=1)[:, -2]
    assert agree[top > second].all()


def test_sgd_head_never_reads_the_whole_store(tmp_path, monkeypatch):
    X, y = _blobs(200, 0)
    store = FeatureStore(_store(tmp_path / "s.h5", X, y, ["a", "b", "c"]))

    def no_full_read(rows=slice(None)):
        raise AssertionError("the sgd head must read in row batches")

    monkeypatch.setattr(store, "features", no_full_read)
    assert fit_head(store, "sgd", out=tmp_path / "run").accuracy > 0.85


def _store_with_views(path, X, y, views, class_names):
    from tlcache.store import StoreWriter

    meta = {
        "cache_key": "k",
        "config_key": "c",
        "backbone": "bb",
        "backbone_key": "bb",
        "weights_digest": "w",
        "preprocessing": {},
        "layer": "l",
        "pooling": "mean",
        "backbone_spec": {},
        "source_options": {},
    }
    writer = StoreWriter.create(
        path,
        meta,
        [str(i) for i in range(len(y))],
        list(y),
        class_names,
        [f"f{i}" for i in range(len(y))],
        dim=X.shape[1],
        views=views.shape[1],
    )
    writer.write(np.arange(len(y)), X, views)
    writer.finish({})
    return path


@pytest.mark.parametrize("head", ["logreg", "sgd"])
def test_views_join_the_training_set_only(tmp_path, head):
    X, y = _blobs(90, 0)
    # Views that hold the class signal much more strongly: training on them changes the fitted head.
    views = np.stack([X + 5 * np.eye(3, 6)[y], X - 0.1], axis=1)
    store = _store_with_views(tmp_path / "v.h5", X, y, views, ["a", "b", "c"])
    with_views = fit_head(store, head, test_fraction=0.3, out=tmp_path / "with")
    without = fit_head(store, head, test_fraction=0.3, out=tmp_path / "without", use_views=False)
    assert with_views.report["views_per_item"] == 2 and without.report["views_per_item"] == 0
    assert with_views.report["n_train"] == without.report["n_train"] == 63
    assert with_views.report["n_test"] == without.report["n_test"] == 27  # test items are never augmented
    pipeline, _ = load_head(tmp_path / "with")
    assert pipeline["standardscaler"].n_samples_seen_ == 63 * 3
    plain, _ = load_head(tmp_path / "without")
    assert plain["standardscaler"].n_samples_seen_ == 63


def _overlapping(n, seed):
    """Two heavily overlapping classes in 80 dims: a weakly regularised head is over-confident here."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, 80)) + 0.35 * y[:, None] * (np.arange(80) < 3)
    return X, y


def test_calibration_lowers_the_ece_of_an_over_confident_head(tmp_path):
    X, y = _overlapping(300, 0)
    X_test, y_test = _overlapping(2000, 1)
    train = _store(tmp_path / "train.h5", X, y, ["a", "b"])
    test = _store(tmp_path / "test.h5", X_test, y_test, ["a", "b"])
    # C=1000: almost no regularisation on few noisy samples, so probabilities are far too extreme.
    run = fit_head(train, "logreg", test=test, grid=[1000.0], calibrate="sigmoid", out=tmp_path / "run")
    calibration = run.report["calibration"]
    assert calibration["method"] == "sigmoid"
    assert calibration["before"]["ece"] > 0.1
    assert calibration["after"]["ece"] < 0.5 * calibration["before"]["ece"]
    assert (tmp_path / "run" / "reliability.png").stat().st_size > 1000
    assert "ECE" in (tmp_path / "run" / "report.md").read_text()
    pipeline, _ = load_head(tmp_path / "run")
    assert pipeline.steps[-1][1].calibrator_ is not None
    # Calibration maps the probabilities only: the head still predicts its own decisions.
    X32, X_test32 = X.astype(np.float32), X_test.astype(np.float32)
    plain = make_head("logreg", grid=[1000.0]).fit(X32, y)
    np.testing.assert_array_equal(pipeline.predict(X_test32), plain.predict(X_test32))


def test_a_grid_given_with_repeats_is_swept_once_per_value(tmp_path):
    X, y = _blobs(60, 0)
    store = _store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    run = fit_head(store, "logreg", grid=[1.0, 0.01, 1.0, 0.01], out=tmp_path / "r")
    Cs = [C for C, _ in run.report["sweep"]["curve"]]
    assert Cs == sorted(set(Cs)) and Cs.count(0.01) == Cs.count(1.0) == 1


def test_sweep_is_reported_with_its_curve(tmp_path):
    X, y = _blobs(150, 0, shift=1.0)
    run = fit_head(_store(tmp_path / "s.h5", X, y, ["a", "b", "c"]), "logreg", out=tmp_path / "run")
    sweep = run.report["sweep"]
    assert sweep["param"] == "C" and len(sweep["curve"]) == 11 and sweep["selection"] == "5-fold cross-validation"
    assert sweep["best"] in [c for c, _ in sweep["curve"]]
    assert (tmp_path / "run" / "sweep.png").stat().st_size > 1000
    custom = fit_head(tmp_path / "s.h5", "knn", grid=[1, 5, 9], out=tmp_path / "knn").report["sweep"]
    assert [v for v, _ in custom["curve"]][:3] == [1, 5, 9] and custom["param"] == "n_neighbors"
    # Past the grid's end only while its best value sits there (here: more neighbours than 9 help).
    assert len(custom["curve"]) == 3 + custom["extension"]["steps"]


def test_few_shot_sampling_is_reproducible_from_its_seed(tmp_path):
    X, y = _blobs(300, 0, shift=1.5)
    store = _store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    first = fit_head(store, "logreg", shots=4, repeats=3, seed=7, out=tmp_path / "a").report["few_shot"]
    again = fit_head(store, "logreg", shots=4, repeats=3, seed=7, out=tmp_path / "b").report["few_shot"]
    other = fit_head(store, "logreg", shots=4, repeats=3, seed=8, out=tmp_path / "c").report["few_shot"]
    assert first == again
    assert first["seeds"] == [7, 8, 9] and first["shots"] == 4 and len(first["accuracy"]["values"]) == 3
    assert first["accuracy"]["values"] != other["accuracy"]["values"]
    assert first["accuracy"]["mean"] == pytest.approx(np.mean(first["accuracy"]["values"]))
    # the spread of a sample of draws (n - 1): the population's understates it
    assert first["accuracy"]["std"] == pytest.approx(np.std(first["accuracy"]["values"], ddof=1))
    assert not list((tmp_path / "a").glob("head*"))  # an evaluation protocol: no head to keep


def test_a_few_shot_study_heads_its_report_with_the_mean_and_is_no_head_to_predict_or_export_with(tmp_path):
    from tlcache.export import export_run
    from tlcache.predict import predict

    X, y = _blobs(120, 0, shift=1.0)
    store = _store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    run = fit_head(store, "logreg", shots=3, repeats=4, seed=2, out=tmp_path / "few", figures=False)
    few = run.report["few_shot"]
    assert few["accuracy"]["values"][0] != pytest.approx(few["accuracy"]["mean"])  # repeat 1 is not the headline
    headline = f"{few['accuracy']['mean']:.4f} ± {few['accuracy']['std']:.4f}"
    assert headline in run.summary_line()
    markdown = (tmp_path / "few" / "report.md").read_text(encoding="utf-8")
    assert f"| accuracy | {headline} (mean ± std over 4 repeats of 3 per class) |" in markdown
    assert f"{run.accuracy:.4f}" not in markdown.split("## Per class")[0]
    assert "## Per class (repeat 1 of 4, seed 2)" in markdown

    expected = "holds a few-shot study (fit-head --shots 3 --repeats 4), which saves its report but no head"
    for attempt in (lambda: predict(tmp_path / "few", store, out=tmp_path / "p.csv"), lambda: export_run(run.out_dir)):
        with pytest.raises(UserError, match=re.escape(expected)) as refused:
            attempt()
        assert str(refused.value).endswith("run fit-head without --shots to get a head")


def test_few_shot_rows_are_k_per_class():
    from tlcache.splits import sample_shots

    labels = np.array([0] * 10 + [1] * 10 + [2] * 10)
    rows = np.arange(30)
    picked = sample_shots(rows, labels, 3, seed=5, where=None)
    assert np.bincount(labels[picked]).tolist() == [3, 3, 3]
    np.testing.assert_array_equal(picked, sample_shots(rows, labels, 3, seed=5, where=None))
    with pytest.raises(UserError, match="fewer than --shots 11"):
        sample_shots(rows, labels, 11, seed=5, where="x")


def test_group_metrics_on_a_hand_made_example():
    from tlcache.report import group_metrics

    y_true = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    y_pred = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    groups = ["north", "north", "north", "north", "south", "south", "south", "south"]
    result = group_metrics(y_true, y_pred, groups, "region")
    by_name = {g["group"]: g for g in result["per_group"]}
    assert by_name["north"]["accuracy"] == 1.0 and by_name["south"]["accuracy"] == 0.5
    assert by_name["south"]["macro_f1"] == pytest.approx(0.5) and by_name["south"]["support"] == 4
    assert result["worst_group"] == "south" and result["worst_group_gap"] == pytest.approx(0.5)


def test_class_weight_balanced_helps_the_rare_class(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0] * 570 + [1] * 30)
    X = rng.normal(size=(600, 5)) + 0.9 * y[:, None] * np.array([1, 1, 0, 0, 0])
    store = _store(tmp_path / "s.h5", X, y, ["common", "rare"])
    plain = fit_head(store, "logreg", out=tmp_path / "plain").report["metrics"]["per_class"][1]
    balanced = fit_head(store, "logreg", class_weight="balanced", out=tmp_path / "bal").report
    assert balanced["class_weight"] == "balanced"
    assert balanced["metrics"]["per_class"][1]["recall"] > plain["recall"] + 0.2


@pytest.mark.parametrize(
    "head, options, message",
    [
        ("mlp", {"class_weight": "balanced"}, "not supported by the mlp head"),
        ("sgd", {"calibrate": "sigmoid"}, "not supported by the sgd head"),
        ("sgd", {"shots": 2}, "--shots does not apply to the sgd head"),
        ("sgd", {"grid": [0.001, 0.1]}, "--grid does not apply to the sgd head, which sweeps nothing"),
        ("logreg", {"grid": [0.1, float("nan")]}, "logreg head's C needs finite values above 0"),
        ("svm", {"grid": [float("inf")]}, "svm head's C needs finite values above 0"),
        ("mlp", {"grid": [-1.0, 1.0]}, "mlp head's alpha needs finite values above 0"),
        ("knn", {"grid": [1, 2.5]}, "knn head's n_neighbors needs whole numbers"),
    ],
)
def test_refused_combinations(tmp_path, head, options, message):
    X, y = _blobs(60, 0)
    with pytest.raises(UserError, match=message):
        fit_head(_store(tmp_path / "s.h5", X, y, ["a", "b", "c"]), head, out=tmp_path / "r", **options)


def test_macro_f1_averages_over_the_classes_the_test_items_hold_or_the_model_predicts():
    from sklearn.metrics import f1_score

    from tlcache.report import classification_metrics

    classes = ["a", "b", "c", "rare"]  # "rare": a training class no test item holds and nothing predicts
    y_true, y_pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 2, 2, 2])
    metrics = classification_metrics(y_true, y_pred, classes)
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))  # over a, b, c
    assert metrics["macro_f1"] > f1_score(y_true, y_pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert [row["support"] for row in metrics["per_class"]] == [2, 2, 2, 0]  # every class still listed
    # A class predicted though no test item holds it counts, with its F1 of 0: a false alarm is a fault.
    wrong = classification_metrics(y_true, np.array([0, 0, 1, 3, 2, 2]), classes)
    assert wrong["macro_f1"] == pytest.approx(f1_score(y_true, [0, 0, 1, 3, 2, 2], average="macro"))


def test_classes_without_a_test_item_are_named(tmp_path):
    """A new user's 30 pie charts and 1 bar chart scored "macro F1 1.0000" on 7 test items, the bar charts unsaid."""
    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1])
    X = rng.normal(size=(31, 4)) + y[:, None] * 3
    store = make_store(tmp_path / "s.h5", X, y, ["pie", "bar"])
    with pytest.warns(UserWarning, match=r"1 of 2 classes have no test items \(bar\): the test figures say nothing"):
        fit_head(store, "logreg", out=tmp_path / "run")


def test_a_folder_of_files_no_run_made_or_of_stores_is_refused_and_a_damaged_run_folder_is_mended(tmp_path):
    """A new user's predictions.csv and report.json (their own notes) were replaced by `fit-head --out`, and `--out`
    of the cache folder wrote a run among the feature stores."""
    X, y = _blobs(60, seed=0)
    store = _store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "predictions.csv").write_text("my notes\n")
    (mine / "report.json").write_text('{"mine": 1}')
    with pytest.raises(UserError, match=r"--out .*mine holds predictions.csv, report.json, which a run would replace"):
        fit_head(store, "logreg", out=mine)
    assert (mine / "predictions.csv").read_text() == "my notes\n" and not (mine / "head.json").exists()
    with pytest.raises(UserError, match=r"holds feature stores \(.h5 files\): not a run folder"):
        fit_head(store, "logreg", out=tmp_path)
    run = fit_head(store, "logreg", out=tmp_path / "run")
    (run.out_dir / "report.json").write_text('{"metr')  # a damaged run: fitting again mends it, as errors advise
    assert fit_head(store, "logreg", out=tmp_path / "run").accuracy == run.accuracy
