"""One way of dividing labelled items, for heads and fine-tuning alike."""

import numpy as np
import pytest

from conftest import make_store, write_text_csv
from tlcache.errors import UserError
from tlcache.finetune import FinetuneConfig
from tlcache.finetune.data import make_splits
from tlcache.heads import _test_set, fit_head
from tlcache.sources import load_source
from tlcache.splits import remap_labels, stratified_split
from tlcache.store import FeatureStore
from tlcache.sweep import validation_splits


def test_a_split_keeps_the_class_shares_and_is_fixed_by_its_seed():
    y = np.array([0] * 30 + [1] * 10)
    kept, held = stratified_split(np.arange(40), y, 0.25, seed=3, where="data")
    assert np.bincount(y[held]).tolist() == [8, 2] and sorted(np.concatenate([kept, held])) == list(range(40))
    again = stratified_split(np.arange(40), y, 0.25, seed=3, where="data")
    assert [a.tolist() for a in again] == [kept.tolist(), held.tolist()]
    assert stratified_split(np.arange(40), y, 0.25, seed=4, where="data")[1].tolist() != held.tolist()


def test_a_class_of_one_item_is_trained_on_and_the_others_stay_stratified(tmp_path):
    # A new user's class of one image turned the split of seven classes of ten into a plain random one: five test
    # items of one class, none of another, in a report that said "stratified".
    y = np.array([0] * 10 + [1] * 10 + [2])
    for seed in range(5):
        kept, held = stratified_split(np.arange(21), y, 0.2, seed=seed, where="data")
        assert np.bincount(y[held], minlength=3).tolist() == [2, 2, 0] and 20 in kept and len(kept) == 17
    assert stratified_split(np.arange(21), y, 0.2, seed=1, where="data")[1].tolist() != held.tolist()
    # The sweep's folds and its validation split alike: the single item in every training part.
    for splits in (validation_splits(y, 0.2, 5, 1000, 0), validation_splits(y, 0.2, 5, 10, 0)):
        assert len(splits) == (5 if len(splits) > 1 else 1)
        for train, valid in splits:
            assert 20 in train and 20 not in valid and sorted([*train, *valid]) == list(range(21))
            counts = np.bincount(y[valid], minlength=3)
            assert counts[0] == counts[1] and counts[2] == 0
    one_shot = np.arange(6)  # every class a single item: a plain split, not refused
    assert len(validation_splits(one_shot, 0.5, 5, 1000, 0)[0][1]) == 3
    with pytest.raises(UserError, match="must be between 0 and 1"):
        stratified_split(np.arange(21), y, 1.5, seed=0, where="data")
    with pytest.raises(UserError, match="has only 3 labelled items"):
        stratified_split(np.arange(3), np.array([0, 1, 1]), 0.5, seed=0, where="data")


def test_fit_head_and_finetune_hold_out_the_same_test_items(tmp_path):
    source = load_source(write_text_csv(tmp_path / "t.csv", n=40))
    splits = make_splits(source, None, 0.25, FinetuneConfig(seed=2), None)
    rng = np.random.default_rng(0)
    y = np.asarray(source.label_indices)
    store = make_store(tmp_path / "s.h5", rng.normal(size=(40, 4)) + y[:, None], y, source.class_names)
    train_rows, tested = _test_set(FeatureStore(store), y, None, 0.25, seed=2)
    assert tested.rows.tolist() == splits.rows["test"].tolist()
    assert sorted(splits.rows["train"].tolist() + splits.rows["val"].tolist()) == train_rows.tolist()
    run = fit_head(store, test_fraction=0.25, seed=2, out=tmp_path / "run")
    assert run.report["n_test"] == len(splits.rows["test"]) == 10
    assert run.report["test"] == splits.test_description


def test_labels_of_another_dataset_map_onto_the_training_classes():
    y = remap_labels(np.array([0, 1, 1, 0]), ["b", "a"], ["a", "b", "c"], "test.csv")
    assert y.tolist() == [1, 0, 0, 1]
    with pytest.raises(UserError, match="test.csv has classes the training data lacks \\(z\\)"):
        remap_labels(np.array([0, 1]), ["a", "z"], ["a", "b"], "test.csv")


def test_class_names_that_differ_only_in_case_or_spacing_are_named_as_such():
    with pytest.raises(UserError) as refused:
        remap_labels(np.array([0, 1, 2]), ["Actions", "mime_types", "z"], ["actions", "mime-types", "b"], "test/")
    message = str(refused.value)
    assert message.startswith("test/ has classes the training data lacks (Actions, mime_types, z); use matching data")
    assert "('Actions' is 'actions' there, 'mime_types' is 'mime-types' there: class names must match" in message
    with pytest.raises(UserError) as refused:  # no near name: no note
        remap_labels(np.array([0]), ["z"], ["a", "b"], "test.csv")
    assert "case" not in str(refused.value)


def test_too_few_items_for_the_shots_names_the_smallest_class_and_its_count(tmp_path):
    y = np.array([0] * 12 + [1] * 4 + [2] * 7)
    names = ["common", "rare", "middling"]
    store = make_store(tmp_path / "s.h5", np.random.default_rng(0).normal(size=(23, 4)), y, names)
    test = make_store(tmp_path / "t.h5", np.zeros((3, 4)), [0, 1, 2], names)
    with pytest.raises(UserError) as refused:
        fit_head(store, test=test, shots=10, repeats=2, out=tmp_path / "run", figures=False, progress=False)
    assert str(refused.value) == (
        f"{store}: class 'rare' has only 4 training items, fewer than --shots 10, as do 'middling' (7); "
        "use --shots 4 or fewer"
    )


def test_test_items_are_not_held_out_of_classes_of_one_item_each(tmp_path):
    """A new user's swapped columns (--text-column label --label-column text) gave 1500 classes of one item each:
    fit-head held out 300 items of classes it never trained on and scored 0. Holding out test items where most
    classes have a single item is refused, saying what to check; a validation split of a one-shot draw is not."""
    ids = np.arange(20)
    with pytest.raises(UserError, match="20 of its 20 classes have a single labelled item.*--label-column"):
        stratified_split(ids, ids, 0.2, seed=0, where="data")
    y = np.array([0] * 10 + [1] * 10 + list(range(2, 10)))  # 8 of 10 classes single
    with pytest.raises(UserError, match="8 of its 10 classes"):
        stratified_split(np.arange(len(y)), y, 0.2, seed=0, where="data")
    kept, held = stratified_split(ids, ids, 0.2, seed=0, where="data", flag="--val-fraction")
    assert len(held) == 4 and len(kept) == 16
    store = make_store(tmp_path / "ids.h5", np.eye(20), ids, [f"text {i}" for i in ids])
    with pytest.raises(UserError, match="single labelled item"):
        fit_head(store, "logreg", out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_given_test_set_of_training_items_is_refused_and_a_held_out_one_only_warned_of():
    from tlcache.splits import shared_with_training

    with pytest.raises(UserError, match="every one of its 2 test items is also a training item"):
        shared_with_training(["a", "b", "c"], ["a", "b"], "test.csv")
    with pytest.warns(UserWarning, match="data.csv: 2 of 2 test items are also training items"):
        assert shared_with_training(["a", "b", "c"], ["a", "b"], "data.csv", given=False) == 2  # its duplicates
    with pytest.warns(UserWarning, match="1 of 2 test items"):
        assert shared_with_training(["a", "b"], ["b", "z"], "test.csv") == 1
    assert shared_with_training(["a"], ["z"], "test.csv") == 0


def test_class_names_of_one_source_that_differ_only_in_spelling_are_warned_of(recwarn):
    from tlcache.splits import warn_of_near_names

    warn_of_near_names(["libs", "utils", "Libs", " libs ", "admin_tools", "admin-tools"], "a.csv")
    messages = [str(w.message) for w in recwarn]
    assert messages == [
        "a.csv: the classes 'libs' and 'Libs'; 'libs' and ' libs '; 'admin_tools' and 'admin-tools' differ only in "
        "case, spaces, '-' or '_', and are kept as different classes; give each pair one name if it is one class"
    ]
    warn_of_near_names(["libs", "utils"], "b.csv")
    assert len(recwarn) == 1  # distinct names: nothing said


def test_items_of_one_content_under_two_labels_are_warned_of(tmp_path, recwarn):
    """A new user's icon theme held 15 images twice, under two classes: nothing said."""
    from tlcache.splits import warn_of_conflicting_labels

    table = tmp_path / "t.csv"
    table.write_text("text,label\na fine film,pos\nan awful film,neg\na fine film,neg\nan awful film,neg\nok,pos\n")
    warn_of_conflicting_labels(load_source(table), "t.csv")
    assert [str(w.message) for w in recwarn] == [
        "t.csv: 1 item has the content of an item of another class (e.g. '2', 'neg', is '0', 'pos'); no head can "
        "tell them apart: correct their labels or keep one of each"
    ]
    plain = write_text_csv(tmp_path / "plain.csv")  # repeats of one label are the data's own: nothing said
    warn_of_conflicting_labels(load_source(plain), "plain.csv")
    assert len(recwarn) == 1
    # Long names are cut (a new user's swapped columns made 2000-character texts the class names: 4500 characters)
    long = "x" * 2000
    (tmp_path / "swapped.csv").write_text(f"label,text\n{long}a,python\n{long}b,python\n", encoding="utf-8")
    warn_of_conflicting_labels(load_source(tmp_path / "swapped.csv"), "swapped.csv")
    assert len(str(recwarn[1].message)) < 300 and "'xxxxxxxxx" in str(recwarn[1].message)
