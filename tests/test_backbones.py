"""One contract over every registered backbone family, on tiny or random-weight models (no downloads)."""

import numpy as np
import pytest
from PIL import Image

from tlcache.backbones import create_backbone, list_backbones
from tlcache.errors import UserError


@pytest.fixture
def efficientnet_lite0_random_weights(tmp_path):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    path = tmp_path / "lite0-random.pt"
    torch.save(EfficientNet.from_name("efficientnet-lite0").state_dict(), path)
    return path


def _images(n=3, size=48):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


def _check_contract(backbone, items):
    key = backbone.key_config()
    assert set(key) == {"backbone", "weights_digest", "preprocessing", "layer", "pooling"}
    assert backbone.model is None, "a backbone must not load its model before it is asked to embed"
    features = backbone.embed(items)
    assert features.dtype == np.float32
    assert features.shape == (len(items), backbone.dim)
    assert np.isfinite(features).all()
    again = backbone.embed(items)
    np.testing.assert_allclose(features, again, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "vgg11", "densenet121"])
def test_torchvision_contract(arch):
    backbone = create_backbone(f"torchvision:{arch}", weights="random", image_size=32)
    assert backbone.modality == "image"
    _check_contract(backbone, _images())


def test_torchvision_vit_contract():
    backbone = create_backbone("torchvision:vit_b_16", weights="random")
    assert backbone.dim == 768
    _check_contract(backbone, _images(n=1))


def test_torchvision_weights_file(resnet18_weights):
    backbone = create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=32)
    assert backbone.dim == 512
    _check_contract(backbone, _images())


def test_efficientnet_lite_with_weights_file(efficientnet_lite0_random_weights):
    backbone = create_backbone("efficientnet-lite0", weights=str(efficientnet_lite0_random_weights), image_size=64)
    assert backbone.dim == 1280 and backbone.preprocessing["center_crop"] == 64
    _check_contract(backbone, _images())


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hf_text_contract(tiny_bert_dir, pooling):
    backbone = create_backbone(f"hf:{tiny_bert_dir}", pooling=pooling)
    assert backbone.modality == "text" and backbone.dim == 32 and backbone.pooling == pooling
    _check_contract(backbone, ["the movie was good", "a very bad plot!", "fun"])


def test_mean_pooling_ignores_padding(tiny_bert_dir):
    backbone = create_backbone(f"hf:{tiny_bert_dir}")
    alone = backbone.embed(["good"])
    padded = backbone.embed(["good", "the movie was not very good and the plot was dull"])[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_weights_digest_follows_the_weights(resnet18_weights, resnet18_weights_other):
    first = create_backbone("torchvision:resnet18", weights=str(resnet18_weights))
    same = create_backbone("torchvision:resnet18", weights=str(resnet18_weights))
    other = create_backbone("torchvision:resnet18", weights=str(resnet18_weights_other))
    assert first.weights_digest == same.weights_digest != other.weights_digest


def test_recreate_from_spec(tiny_bert_dir, resnet18_weights):
    for backbone in (
        create_backbone(f"hf:{tiny_bert_dir}", pooling="cls"),
        create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=40),
    ):
        assert create_backbone(**backbone.spec).key_config() == backbone.key_config()


def test_listing_covers_the_promised_backbones():
    names = {info.name for info in list_backbones()}
    for name in [
        "efficientnet-lite0",
        "minilm",
        "torchvision:resnet18",
        "torchvision:resnet50",
        "torchvision:efficientnet_b0",
        "torchvision:vit_b_16",
        "torchvision:vgg16",
        "hf:<dir-or-id>",
    ]:
        assert name in names
    assert any(n.startswith("torchvision:mobilenet_v3") for n in names)


def test_listed_dims_are_true():
    for info in list_backbones():
        if info.name.startswith("torchvision:"):
            backbone = create_backbone(info.name, weights="random")
            assert backbone.dim == info.dim == backbone._probe_dim(), info.name


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("nope", {}, "unknown backbone 'nope'"),
        ("torchvision:resnet9000", {"weights": "random"}, "torchvision has no classification model"),
        ("torchvision:resnet18", {"weights": "missing.pt"}, "no such file"),
        ("torchvision:resnet18", {"pooling": "cls"}, "does not take --pooling"),
        ("torchvision:vit_b_16", {"weights": "random", "image_size": 96}, "224 px input only"),
        ("hf:./no-such-dir", {}, "not a model folder"),
        ("minilm", {"image_size": 96}, "does not take --image-size"),
    ],
)
def test_bad_backbone_requests(name, options, message):
    with pytest.raises(UserError, match=message):
        create_backbone(name, **options)


def test_weights_that_do_not_fit_are_refused(tmp_path, resnet18_weights):
    import torch
    import torchvision

    path = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    backbone = create_backbone("torchvision:resnet18", weights=str(path))
    with pytest.raises(UserError, match="does not fit torchvision:resnet18"):
        backbone.load("cpu")


def test_offline_download_failure_is_one_clear_line(monkeypatch):
    import torchvision

    def no_network(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_network)
    backbone = create_backbone("torchvision:resnet18")
    assert backbone.weights_digest.startswith("url:")
    with pytest.raises(UserError, match="could not download torchvision weights.*--weights FILE"):
        backbone.load("cpu")


def test_cuda_request_without_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the refusal only applies without one")
    backbone = create_backbone("torchvision:resnet18", weights="random")
    with pytest.raises(UserError, match="no CUDA GPU"):
        backbone.load("cuda")
