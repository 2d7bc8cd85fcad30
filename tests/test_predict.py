"""tlcache.predict: a fitted head applied to new data, on tiny real models and tiny real data."""

import csv

import numpy as np
import pytest

from conftest import make_store, write_image_folder, write_text_csv
from tlcache.embed import embed_source
from tlcache.errors import UserError
from tlcache.heads import fit_head
from tlcache.images import DECODING
from tlcache.predict import predict
from tlcache.runs import SIDECAR_FILE


def _head(source, tmp_path, name, **backbone) -> str:
    store = embed_source(source, out=tmp_path / "cache", progress=False, **backbone).path
    return str(fit_head(store, out=tmp_path / name, test_fraction=0.5, figures=False, progress=False).out_dir)


def test_a_source_of_the_other_modality_is_refused_naming_the_heads_features(tmp_path, tiny_bert_dir, resnet18_weights):
    images = write_image_folder(tmp_path / "imgs", per_class=3)
    texts = write_text_csv(tmp_path / "texts.csv", header=("review", "label"))  # no 'text' column either
    resnet = {"backbone": "torchvision:resnet18", "weights": str(resnet18_weights), "image_size": 32}
    image_head = _head(images, tmp_path, "image-run", **resnet)
    text_head = _head(write_text_csv(tmp_path / "train.csv"), tmp_path, "text-run", backbone=f"hf:{tiny_bert_dir}")

    with pytest.raises(UserError) as refused:
        predict(image_head, texts, out=tmp_path / "p.csv", progress=False)
    message = str(refused.value)
    assert "fitted on image features (torchvision:resnet18)" in message and "texts.csv holds texts" in message
    assert message.endswith("pass images (an image folder)") and "--text-column" not in message
    with pytest.raises(UserError) as refused:
        predict(text_head, images, out=tmp_path / "p.csv", progress=False)
    message = str(refused.value)
    assert f"fitted on text features (hf:{tiny_bert_dir})" in message and "imgs holds images" in message
    assert "pass texts (a .csv, .tsv or .jsonl file)" in message and "backbone such as" not in message
    assert not (tmp_path / "p.csv").exists()


def test_items_of_classes_the_head_never_saw_are_named_and_counted_as_errors(tmp_path):
    from click.testing import CliRunner

    from tlcache.cli import cli

    rng = np.random.default_rng(0)
    centres = np.eye(3, 4) * 10
    train_y = [0, 1] * 10
    make_store(tmp_path / "train.h5", centres[train_y] + rng.normal(size=(20, 4)), train_y, ["cat", "dog"])
    new_y = [0, 1, 2, 0, 1, 2, 2, 0]  # "emu" (2): a class the head was not trained on
    make_store(tmp_path / "new.h5", centres[new_y] + rng.normal(size=(8, 4)), new_y, ["cat", "dog", "emu"])
    run_dir = fit_head(tmp_path / "train.h5", out=tmp_path / "run", figures=False, progress=False).out_dir

    result = predict(run_dir, tmp_path / "new.h5", out=tmp_path / "p.csv", progress=False)
    assert result.accuracy == pytest.approx(5 / 8)  # unchanged: the emus count as errors
    assert result.unseen_classes == {"emu": 3}
    shown = CliRunner().invoke(cli, ["predict", str(run_dir), str(tmp_path / "new.h5"), "-o", str(tmp_path / "q.csv")])
    assert shown.exit_code == 0, shown.output
    summary, note = shown.stdout.strip().splitlines()
    assert "accuracy 0.6250" in summary
    assert note.startswith("note: 3 items are of classes the head was not trained on: emu (3)")
    assert note.endswith("the accuracy counts them as errors")

    # A class whose name differs from one of the head's only in case: named as such.
    make_store(tmp_path / "cased.h5", centres[[0, 1]] + rng.normal(size=(2, 4)), [0, 1], ["Cat", "dog"])
    cased = predict(run_dir, tmp_path / "cased.h5", out=tmp_path / "c.csv", progress=False)
    assert cased.unseen_line().endswith(
        "errors ('Cat' is 'cat' in the head: class names must match exactly, case included; rename one side)"
    )
    assert predict(run_dir, tmp_path / "train.h5", out=tmp_path / "t.csv", progress=False).unseen_line() is None


def test_a_head_whose_backbone_now_gives_other_features_is_refused_before_anything_is_embedded(
    tmp_path, resnet18_weights
):
    import json

    resnet = {"backbone": "torchvision:resnet18", "weights": str(resnet18_weights), "image_size": 32}
    run_dir = _head(write_image_folder(tmp_path / "imgs", per_class=3), tmp_path, "run", **resnet)
    sidecar_path = tmp_path / "run" / SIDECAR_FILE
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["preprocessing"]["convert"] = "RGB"  # as the tlcache before images were read as shown wrote it
    sidecar_path.write_text(json.dumps(sidecar))
    new = write_image_folder(tmp_path / "new", per_class=2, seed=5)
    with pytest.raises(UserError, match="differ in preprocessing; their images were decoded by different tlcache") as e:
        predict(run_dir, new, out=tmp_path / "p.csv", cache_dir=tmp_path / "new-cache", progress=False)
    assert f"'RGB' against {DECODING!r}; this tlcache decodes {DECODING!r}" in str(e.value)  # what changed, named
    assert not (tmp_path / "new-cache").exists() and not (tmp_path / "p.csv").exists()


def test_items_the_head_was_trained_on_are_counted_in_the_summary(tmp_path):
    rng = np.random.default_rng(1)
    y = [0, 1] * 10
    features = np.eye(2, 4)[y] * 10 + rng.normal(size=(20, 4))
    make_store(tmp_path / "train.h5", features, y, ["cat", "dog"])
    run = fit_head(tmp_path / "train.h5", out=tmp_path / "run", test_fraction=0.25, figures=False, progress=False)
    with open(run.out_dir / "predictions.csv", encoding="utf-8") as handle:
        tested = {int(row["id"].removeprefix("id")) for row in csv.DictReader(handle)}
    assert len(tested) == 5

    # The head's own store: its held-out test items are not training items, the other 15 are.
    whole = predict(run.out_dir, tmp_path / "train.h5", out=tmp_path / "p.csv", progress=False)
    assert whole.in_training == 15
    assert (
        "15 of the labelled items are the head's own training items, so the accuracy overstates" in whole.summary_line()
    )
    # Items of the same content in another store are counted; unlabelled ones are not.
    shared = [f"train-fp{i}" for i in range(10)]
    make_store(
        tmp_path / "new.h5", features[:10], [0, 1, 0, 1, 0, 1, 0, 1, -1, -1], ["cat", "dog"], fingerprints=shared
    )
    partly = predict(run.out_dir, tmp_path / "new.h5", out=tmp_path / "q.csv", progress=False)
    assert partly.in_training == len(set(range(8)) - tested)
    make_store(tmp_path / "other.h5", features[:8], y[:8], ["cat", "dog"], fingerprints=[f"o{i}" for i in range(8)])
    other = predict(run.out_dir, tmp_path / "other.h5", out=tmp_path / "r.csv", progress=False)
    assert other.in_training == 0 and "training items" not in other.summary_line()
