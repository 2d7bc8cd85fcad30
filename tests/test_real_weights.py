"""The packaged pretrained backbones load offline and behave like pretrained models, not random ones."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from tlcache.backbones import create_backbone

pytestmark = pytest.mark.real_weights

IMAGENET_PALACE, IMAGENET_DAISY = 698, 985


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_puts_paraphrases_closer_than_unrelated_sentences():
    backbone = create_backbone("minilm")
    assert backbone.dim == 384 and backbone.model is None
    a, paraphrase, unrelated = backbone.embed(
        ["A man is playing a guitar.", "Someone is strumming a guitar.", "The central bank raised interest rates."]
    )
    np.testing.assert_allclose(np.linalg.norm(a), 1.0, atol=1e-5)  # normalised, as all-MiniLM-L6-v2 is meant
    assert _cosine(a, paraphrase) > 0.6
    assert _cosine(a, unrelated) < 0.2


def test_efficientnet_lite0_recognises_imagenet_photos():
    import torch
    from sklearn.datasets import load_sample_image

    backbone = create_backbone("efficientnet-lite0").load("cpu")
    transform = backbone.transform()
    china, flower = (Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg"))
    with torch.inference_mode():
        logits = backbone.model(torch.stack([transform(china), transform(flower)]))
    assert IMAGENET_PALACE in logits[0].topk(5).indices.tolist()
    assert IMAGENET_DAISY in logits[1].topk(5).indices.tolist()

    features = backbone.embed([china, ImageOps.mirror(china), flower])
    assert _cosine(features[0], features[1]) > _cosine(features[0], features[2]) + 0.2
