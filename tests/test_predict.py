"""tlcache.predict: a fitted head applied to new data, on tiny real models and tiny real data."""

import pytest

from conftest import write_image_folder, write_text_csv
from tlcache.embed import embed_source
from tlcache.errors import UserError
from tlcache.heads import fit_head
from tlcache.predict import predict


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
