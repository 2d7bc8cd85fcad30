"""tlcache.Embedder as a scikit-learn transformer: pipelines, cross-validation, pickling, the estimator rules."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils import estimator_checks

from conftest import write_image_folder
from tlcache import Embedder
from tlcache.backbones import Backbone
from tlcache.errors import UserError

TEXTS = [f"the movie was very {'good fun' if i % 2 else 'bad and dull'} {i}" for i in range(40)]
LABELS = ["pos" if i % 2 else "neg" for i in range(40)]


# parametrize_with_checks skips estimators that take strings, so the checks that apply run one by one.
@pytest.mark.parametrize(
    "check",
    [
        estimator_checks.check_no_attributes_set_in_init,
        estimator_checks.check_parameters_default_constructible,
        estimator_checks.check_get_params_invariance,
        estimator_checks.check_set_params,
    ],
)
def test_sklearn_estimator_rules(check):
    check("Embedder", Embedder("minilm", device="cpu"))


def test_fit_keeps_parameters_and_transform_needs_fit(tiny_bert_dir):
    embedder = Embedder(f"hf:{tiny_bert_dir}", pooling="cls")
    with pytest.raises(NotFittedError):
        embedder.transform(TEXTS[:2])
    before = embedder.get_params()
    embedder.fit(TEXTS)
    assert embedder.get_params() == before
    assert embedder.dim_ == 32 and embedder.modality_ == "text"
    copy = clone(embedder)
    assert copy.get_params() == before and not hasattr(copy, "dim_")


def test_pipeline_cross_validation_and_pickle(tiny_bert_dir, tmp_path, monkeypatch):
    model = make_pipeline(Embedder(f"hf:{tiny_bert_dir}", cache_dir=str(tmp_path / "cache")), LogisticRegression())
    scores = cross_val_score(model, TEXTS, LABELS, cv=4)
    assert scores.mean() > 0.7
    model.fit(TEXTS, LABELS)
    features = model[0].transform(TEXTS[:5])
    assert features.shape == (5, 32) and features.dtype == np.float32

    loads = []
    original = Backbone.load

    def counting_load(self, device="auto"):
        loads.append(1)
        return original(self, device)

    monkeypatch.setattr(Backbone, "load", counting_load)
    # Every text was embedded during cross-validation: predicting them again loads no model at all.
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(TEXTS), model.predict(TEXTS))
    assert loads == []
    assert len(pickle.dumps(model)) < 100_000  # the model weights are not pickled
    assert restored.predict(["a brand new sentence about a good film"]).shape == (1,)
    assert loads == [1]


def test_only_new_items_are_embedded(tiny_bert_dir, tmp_path):
    embedder = Embedder(f"hf:{tiny_bert_dir}", cache_dir=str(tmp_path / "cache")).fit(TEXTS)
    first = embedder.transform(TEXTS[:30])
    stores = set((tmp_path / "cache").glob("*.h5"))
    again = embedder.transform(TEXTS[10:30] + TEXTS[:10])
    np.testing.assert_allclose(again, np.vstack([first[10:30], first[:10]]), atol=1e-6)
    assert set((tmp_path / "cache").glob("*.h5")) == stores, "cached items must not be written again"
    mixed = embedder.transform(TEXTS[25:40])
    assert len(set((tmp_path / "cache").glob("*.h5"))) == len(stores) + 1
    np.testing.assert_allclose(mixed[:5], first[25:30], atol=1e-6)


def test_image_paths(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=3)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    embedder = Embedder(
        "torchvision:resnet18", weights=str(resnet18_weights), image_size=32, cache_dir=str(tmp_path / "c")
    )
    features = embedder.fit_transform(paths)
    assert features.shape == (6, 512)
    assert list(embedder.get_feature_names_out()[:2]) == ["torchvision_resnet18_0", "torchvision_resnet18_1"]
    with pytest.raises(UserError, match="is not a file"):
        embedder.transform([str(tmp_path / "missing.png")])


def test_bad_input(tiny_bert_dir):
    embedder = Embedder(f"hf:{tiny_bert_dir}")
    with pytest.raises(UserError, match="takes strings"):
        embedder.fit([1, 2, 3])
    with pytest.raises(UserError, match="1-D sequence"):
        embedder.fit(np.array([["a", "b"], ["c", "d"]]))
