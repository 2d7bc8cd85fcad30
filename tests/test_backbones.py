"""One contract over every registered backbone family, on tiny or random-weight models (no downloads)."""

import numpy as np
import pytest
import torch
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
    assert set(key) == {"backbone", "weights_digest", "preprocessing", "layer", "pooling", "precision"}
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


def test_one_text_or_one_path_given_for_a_list_is_refused(tiny_bert_dir, tmp_path):
    """embed("abc def") gave an array of 7 rows, one per character."""
    texts = create_backbone(f"hf:{tiny_bert_dir}")
    with pytest.raises(UserError, match=r"embed takes a list of items, not one str: pass \['abc def'\]"):
        texts.embed("abc def")
    images = create_backbone("torchvision:resnet18", weights="random", image_size=32)
    with pytest.raises(UserError, match="takes a list of items, not one PosixPath"):
        images.embed(tmp_path / "photo.png")
    assert texts.embed(["abc def"]).shape == (1, 32)


@pytest.mark.parametrize("layer", ["0", "1", "-2", "last"])
@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_hf_layers_and_poolings(tiny_bert_dir, layer, pooling):
    backbone = create_backbone(f"hf:{tiny_bert_dir}", layer=layer, pooling=pooling)
    _check_contract(backbone, ["the movie was good", "a very bad plot!"])
    assert backbone.key_config()["layer"] == layer and backbone.key_config()["pooling"] == pooling


def test_hf_layers_are_the_hidden_states(tiny_bert_dir):
    import torch

    last = create_backbone(f"hf:{tiny_bert_dir}", layer="last", pooling="cls")
    minus_one = create_backbone(f"hf:{tiny_bert_dir}", layer="-1", pooling="cls")
    first = create_backbone(f"hf:{tiny_bert_dir}", layer="1", pooling="cls")
    texts = ["good fun", "a dull plot"]
    np.testing.assert_allclose(last.embed(texts), minus_one.embed(texts), atol=1e-6)
    assert not np.allclose(first.embed(texts), last.embed(texts), atol=1e-3)
    inputs = first.tokenize(texts)
    with torch.inference_mode():
        hidden = first.model(**inputs, output_hidden_states=True).hidden_states[1][:, 0]
    np.testing.assert_allclose(first.embed(texts), hidden.numpy(), atol=1e-6)


def test_max_pooling_ignores_padding(tiny_bert_dir):
    backbone = create_backbone(f"hf:{tiny_bert_dir}", pooling="max")
    alone = backbone.embed(["good"])
    padded = backbone.embed(["good", "the movie was not very good and the plot was dull"])[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize(
    "layer, pooling, dim", [("layer3", "mean", 256), ("layer2", "max", 128), ("layer4", None, 512)]
)
def test_torchvision_intermediate_layers(layer, pooling, dim):
    backbone = create_backbone("torchvision:resnet18", weights="random", image_size=32, layer=layer, pooling=pooling)
    assert backbone.dim == dim and backbone.pooling == (pooling or "mean")
    _check_contract(backbone, _images())


def test_torchvision_layer4_mean_is_the_penultimate_features():
    images = _images()
    layer4 = create_backbone("torchvision:resnet18", weights="random", image_size=32, layer="layer4", pooling="mean")
    penultimate = create_backbone("torchvision:resnet18", weights="random", image_size=32)
    np.testing.assert_allclose(layer4.embed(images), penultimate.embed(images), atol=1e-5)


def test_vit_intermediate_block_with_cls_pooling():
    backbone = create_backbone(
        "torchvision:vit_b_16", weights="random", layer="encoder.layers.encoder_layer_3", pooling="cls"
    )
    assert backbone.dim == 768
    _check_contract(backbone, _images(n=1))


@pytest.mark.parametrize(
    "layer, pooling, dim",
    # at 64 px, blocks.3 is a 40 x 8 x 8 map and the 1280-channel head a 2 x 2 one
    [("blocks.3", "mean", 40), ("blocks.15", "max", 320), ("blocks.3", "flatten", 40 * 8 * 8), (None, "flatten", 5120)],
)
def test_efficientnet_lite_blocks(efficientnet_lite0_random_weights, layer, pooling, dim):
    backbone = create_backbone(
        "efficientnet-lite0",
        weights=str(efficientnet_lite0_random_weights),
        image_size=64,
        layer=layer,
        pooling=pooling,
    )
    assert backbone.dim == dim
    _check_contract(backbone, _images())


def test_flatten_keeps_every_position_whose_mean_is_mean_pooling(efficientnet_lite0_random_weights):
    images = _images()
    options = {"weights": str(efficientnet_lite0_random_weights), "image_size": 64, "layer": "blocks.5"}
    flat = create_backbone("efficientnet-lite0", pooling="flatten", **options).embed(images)
    mean = create_backbone("efficientnet-lite0", pooling="mean", **options).embed(images)
    channels = mean.shape[1]
    np.testing.assert_allclose(flat.reshape(len(images), channels, -1).mean(axis=2), mean, atol=1e-5)


def test_efficientnet_lite_block_layers_drop_blocks_only_in_training(efficientnet_lite0_random_weights):
    # Fine-tuning along a block layer gets the stochastic depth of the full network; embedding never does.
    bb = create_backbone(
        "efficientnet-lite0", weights=str(efficientnet_lite0_random_weights), image_size=64, layer="blocks.13"
    )
    model = bb.load_trainable("cpu")
    pixels = torch.randn(4, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    first = bb.forward(pixels)
    assert not torch.allclose(first, bb.forward(pixels))  # blocks dropped at random, per item
    torch.manual_seed(0)
    torch.testing.assert_close(bb.forward(pixels), first)
    model.eval()
    with torch.no_grad():
        x = model._swish(model._bn0(model._conv_stem(pixels)))
        for block in model._blocks[:14]:
            x = block(x)
        torch.testing.assert_close(bb.forward(pixels), x.mean(dim=(2, 3)))


def test_torchvision_layer_flatten():
    backbone = create_backbone(
        "torchvision:resnet18", weights="random", image_size=64, layer="layer4", pooling="flatten"
    )
    assert backbone.dim == 512 * 2 * 2
    _check_contract(backbone, _images())


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
        ("resnet18", {}, "unknown backbone 'resnet18'; did you mean 'torchvision:resnet18'?"),
        ("torchvision:resnet9000", {"weights": "random"}, "torchvision has no classification model"),
        ("torchvision:resnet18", {"weights": "missing.pt"}, "no such file"),
        ("torchvision:resnet18", {"weights": "random", "pooling": "max"}, "--pool applies with --layer"),
        ("torchvision:resnet18", {"weights": "random", "layer": "layer9"}, "has no such node; try penultimate"),
        ("torchvision:resnet18", {"weights": "random", "layer": "layer3", "pooling": "cls"}, "does not apply to a"),
        ("efficientnet-lite0", {"layer": "blocks.99"}, "blocks.0 .. blocks.15"),
        ("efficientnet-lite0", {"pooling": "cls"}, "use one of mean, max, flatten"),
        ("minilm", {"pooling": "flatten"}, "not supported for text"),
        ("minilm", {"layer": "12"}, "has layers last and -7 .. 6"),
        ("efficientnet-lite0", {"max_length": 5}, "does not take --max-length"),
        ("efficientnet-lite0", {"crop_ratio": 1.5}, r"must be in \(0, 1\]"),
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
    state = torch.load(resnet18_weights)
    state["conv1.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"does not fit torchvision:resnet18 \(size mismatch for conv1.weight"):
        create_backbone("torchvision:resnet18", weights=str(path)).load("cpu")
    for not_a_state_dict, kind in (([1, 2, 3], "list"), (torch.zeros(3), "Tensor"), ({"a": "b"}, "dict")):
        torch.save(not_a_state_dict, path)
        with pytest.raises(UserError, match=f"holds a {kind}, not a state_dict of tensors"):
            create_backbone("torchvision:resnet18", weights=str(path)).load("cpu")


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


class _ConvNorms(torch.nn.Module):
    """conv -> norm twice; with ``shared``, the first convolution's output also feeds the sum (folding its norm
    would then change the result)."""

    def __init__(self, shared: bool):
        super().__init__()
        self.shared = shared
        self.conv1, self.norm1 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.conv2, self.norm2 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4)
        for norm in (self.norm1, self.norm2):  # statistics far from the identity, so folding is visible
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.data.uniform_(0.5, 2)
            norm.bias.data.uniform_(-1, 1)

    def forward(self, x):
        y = self.conv1(x)
        z = self.norm2(self.conv2(torch.relu(self.norm1(y))))
        return (z + y if self.shared else z).mean(dim=(2, 3))


def test_batch_norms_fold_into_their_convolutions():
    from tlcache.backbones.optimize import fold_batch_norms

    torch.manual_seed(0)
    model = _ConvNorms(shared=False).eval()
    x = torch.randn(2, 3, 8, 8)
    folded = fold_batch_norms(model, lambda m, pixels: m(pixels), x)
    assert folded is not model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 2  # the original is untouched
    other = torch.randn(5, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(folded(other), model(other), rtol=1e-5, atol=1e-5)


def test_a_convolution_feeding_more_than_its_norm_is_left_alone():
    from tlcache.backbones.optimize import fold_batch_norms

    torch.manual_seed(0)
    model = _ConvNorms(shared=True).eval()
    assert fold_batch_norms(model, lambda m, pixels: m(pixels), torch.randn(2, 3, 8, 8)) is model


def test_loaded_image_backbones_are_folded_and_channels_last(resnet18_weights):
    backbone = create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=32).load("cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules())
    assert backbone.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_agrees_with_the_cpu(resnet18_weights, tiny_bert_dir):
    for name, options, items in (
        ("torchvision:resnet18", {"weights": str(resnet18_weights), "image_size": 32}, _images()),
        (f"hf:{tiny_bert_dir}", {}, ["a good film", "a dull and very long film"]),
    ):
        cpu = create_backbone(name, **options).load("cpu").embed(items)
        gpu_backbone = create_backbone(name, **options).load("cuda")
        assert next(gpu_backbone.model.parameters()).is_cuda
        np.testing.assert_allclose(gpu_backbone.embed(items), cpu, rtol=1e-3, atol=1e-3)


def test_load_trainable_gives_a_fresh_unfolded_model_that_forward_runs(resnet18_weights):
    backbone = create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=32)
    frozen = backbone.load("cpu").model
    model = backbone.load_trainable("cpu")
    assert model is not frozen and backbone.model is model
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # nothing folded into a convolution
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.forward(pixels), frozen(pixels).flatten(1), rtol=1e-4, atol=1e-4)


def test_a_backbone_at_another_precision_is_a_copy_sharing_its_model(resnet18_weights):
    backbone = create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=32).load("cpu")
    assert backbone.at_precision(backbone.precision) is backbone
    half = backbone.at_precision("bf16")
    assert half is not backbone and half.model is backbone.model
    assert (half.precision, backbone.precision) == ("bf16", "fp32")
    assert half.key_config()["precision"] == "bf16" and backbone.key_config()["precision"] == "fp32"


def _spread_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm statistics and scales far from a fresh model's (mean 0, variance 1, scale 1, shift 0), so that
    folding them into the convolutions changes every weight: a fold that is wrong anywhere shows."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.5, 0.5, generator=generator)
    return model


def _unmodified_features(name: str, path, image_size: int):
    """The penultimate features of the model as its own library builds it from the weights file at ``path``: batch
    norms unfolded, default memory layout, in eval mode."""
    if name == "efficientnet-lite0":
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name(name, image_size=image_size)
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
        return lambda pixels: model.extract_features(pixels).mean(dim=(2, 3))
    import torchvision

    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(path, weights_only=True))
    model.fc = torch.nn.Identity()
    return model.eval()


@pytest.mark.parametrize("name", ["torchvision:resnet18", "efficientnet-lite0"])
def test_folded_channels_last_model_gives_the_unmodified_models_features(tmp_path, name):
    import torchvision
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    fresh = EfficientNet.from_name(name) if name == "efficientnet-lite0" else torchvision.models.resnet18()
    path = tmp_path / "weights.pt"
    torch.save(_spread_norms(fresh).state_dict(), path)
    features = _unmodified_features(name, path, 64)
    backbone = create_backbone(name, weights=str(path), image_size=64).load("cpu")
    assert backbone.precision == "fp32"
    # What embed runs is the rewritten model: no batch norm left, 4-d weights in channels-last memory.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules())
    convolutions = [m for m in backbone.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)

    images = _images(n=4, size=72)
    actual = backbone.embed(images)
    pixels = torch.stack([backbone.transform()(image.convert("RGB")) for image in images])
    with torch.inference_mode():
        expected = features(pixels).numpy()
    error = float(np.abs(actual - expected).max() / np.abs(expected).max())
    cosine = float(
        ((actual * expected).sum(axis=1) / (np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1))).min()
    )
    print(f"{name}: max abs error {error:.2e} of the largest feature, min cosine {cosine:.9f}")
    assert error < 1e-4 and cosine > 0.99999, (error, cosine)


def test_efficientnet_lite_suggests_two_middle_blocks_flattened_only_for_small_inputs(
    efficientnet_lite0_random_weights,
):
    small = create_backbone("efficientnet-lite0", weights=str(efficientnet_lite0_random_weights), image_size=96)
    large = create_backbone("efficientnet-lite0", weights=str(efficientnet_lite0_random_weights), image_size=224)
    assert small.candidate_layers() == ("default", "blocks.6:flatten", "blocks.9:flatten")
    assert large.candidate_layers() == ("default", "blocks.6:mean", "blocks.9:mean")
    for name in small.candidate_layers()[1:]:  # each names a layer and pooling the backbone takes
        layer, pool = name.split(":")
        create_backbone(
            "efficientnet-lite0",
            weights=str(efficientnet_lite0_random_weights),
            image_size=96,
            layer=layer,
            pooling=pool,
        )
