"""torchvision classifiers as feature extractors: ``torchvision:<arch>``.

Weights: ``--weights FILE`` (a state_dict saved with ``torch.save``), ``--weights random`` (seeded random
initialisation, for speed tests and baselines), or, by default, torchvision's own pretrained weights, which
download when there is network.
"""

from __future__ import annotations

from pathlib import Path

from tlcache.backbones.base import IMAGE_OPTIONS, ImageBackbone, load_weights, pool, read_state_dict
from tlcache.backbones.registry import BackboneInfo, register_backbone, register_lister, take_options
from tlcache.errors import UserError
from tlcache.hashing import hash_file, new_hasher

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
RANDOM_WEIGHTS = "random"
RANDOM_SEED = 0
# Archs listed by `tlcache backbones` with their feature dims; any other torchvision classifier also works.
LISTED_ARCHS = {
    "resnet18": 512,
    "resnet50": 2048,
    "efficientnet_b0": 1280,
    "mobilenet_v3_small": 1024,
    "mobilenet_v3_large": 1280,
    "vit_b_16": 768,
    "vgg16": 4096,
}
# Archs whose position embeddings fix the input size.
FIXED_SIZE_PREFIXES = ("vit_", "swin_", "maxvit_")


def _strip_classifier(model) -> int:
    """Replace the final classification layer with Identity, in place; return the feature dim.

    The feature is what feeds that layer: pooled features for CNNs, the class token for ViTs, fc7 for VGG.
    """
    import torch.nn as nn

    for attribute in ("fc", "head", "heads", "classifier"):
        block = getattr(model, attribute, None)
        if isinstance(block, nn.Linear):
            setattr(model, attribute, nn.Identity())
            return block.in_features
        if isinstance(block, nn.Sequential):
            # The last Linear of the block is the classifier; what comes before it (pooling, norms, fc7) stays.
            for index in range(len(block) - 1, -1, -1):
                if isinstance(block[index], nn.Linear):
                    dim = block[index].in_features
                    block[index] = nn.Identity()
                    return dim
    raise UserError(f"torchvision model {type(model).__name__} has no classifier layer tlcache knows how to strip")


class TorchvisionBackbone(ImageBackbone):
    """A torchvision classifier without its classifier (``penultimate``, pooled as the model pools), or any node of
    its graph (``--layer layer3``, ``--layer features.6``), pooled by ``--pool``."""

    def __init__(
        self,
        arch: str,
        weights: str | None = None,
        image_size: int | None = None,
        crop_ratio: float | None = None,
        layer: str | None = None,
        pooling: str | None = None,
    ):
        import torchvision

        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise UserError(f"torchvision has no classification model '{arch}'; try one of {', '.join(LISTED_ARCHS)}")
        if image_size and image_size != 224 and arch.startswith(FIXED_SIZE_PREFIXES):
            raise UserError(f"torchvision:{arch} takes 224 px input only; drop --image-size")
        super().__init__(image_size or 224, IMAGENET_MEAN, IMAGENET_STD, crop_ratio)
        self.arch = arch
        self.name = f"torchvision:{arch}"
        self.weights = weights
        self._digest: str | None = None
        self._random_model = None
        if weights is None:
            self._hub_weights = torchvision.models.get_model_weights(arch).DEFAULT
        elif weights != RANDOM_WEIGHTS and not Path(weights).is_file():
            raise UserError(f"--weights {weights}: no such file; pass a state_dict file, or --weights random")
        self.layer = layer or "penultimate"
        if self.layer == "penultimate":
            if pooling not in (None, "model"):
                raise UserError(f"--pool applies with --layer; the penultimate layer of {arch} is pooled by the model")
            self.pooling = "model"
            self.dim = LISTED_ARCHS.get(arch) or self._probe_dim()
        else:
            self.pooling = pooling or "mean"
            self.dim = self._probe_layer_dim()

    def _probe_dim(self) -> int:
        import torchvision

        return _strip_classifier(torchvision.models.get_model(self.arch, weights=None))

    def candidate_layers(self) -> tuple[str, ...]:
        """The default, and for ResNets the mean-pooled output of layer3 (the block before the last)."""
        return (
            ("default", "layer3:mean") if self.arch.startswith(("resnet", "resnext", "wide_resnet")) else ("default",)
        )

    def _probe_layer_dim(self) -> int:
        """Check the layer exists and find its pooled width with one forward pass of the bare architecture."""
        import torch
        import torchvision
        from torchvision.models.feature_extraction import get_graph_node_names

        skeleton = torchvision.models.get_model(self.arch, weights=None).eval()
        nodes = get_graph_node_names(skeleton)[1]
        # A module's name stands for its last node (create_feature_extractor's rule): "layer3", "features.6".
        if self.layer not in nodes and not any(n.startswith(self.layer + ".") for n in nodes):
            blocks = list(dict.fromkeys(".".join(n.split(".")[:2]) for n in nodes if "." in n))
            raise UserError(
                f"--layer {self.layer}: torchvision:{self.arch} has no such node; try penultimate or one of "
                f"{', '.join(blocks[-8:])} (torchvision's get_graph_node_names lists them all)"
            )
        with torch.inference_mode():
            probe = self._extractor(skeleton)(torch.zeros(1, 3, self.image_size, self.image_size))
        return int(pool(probe["features"], self.pooling).shape[1])

    def _extractor(self, model):
        from torchvision.models.feature_extraction import create_feature_extractor

        return create_feature_extractor(model, return_nodes={self.layer: "features"})

    @property
    def key_name(self) -> str:
        return self.name

    @property
    def weights_digest(self) -> str:
        if self._digest is None:
            if self.weights is None:
                # torchvision's weight files are content-addressed: the URL names the hash of the file.
                self._digest = f"url:{self._hub_weights.url}"
            elif self.weights == RANDOM_WEIGHTS:
                self._digest = f"random:{_state_dict_digest(self._random_init())}"
            else:
                self._digest = hash_file(self.weights)
        return self._digest

    @property
    def spec(self) -> dict:
        weights = self.weights if self.weights in (None, RANDOM_WEIGHTS) else str(Path(self.weights).resolve())
        spec = {
            "name": self.name,
            "weights": weights,
            "image_size": self.image_size,
            "crop_ratio": self.crop_ratio,
            "layer": self.layer,
        }
        return spec if self.layer == "penultimate" else {**spec, "pooling": self.pooling}

    def _random_init(self):
        import torch
        import torchvision

        if self._random_model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                self._random_model = torchvision.models.get_model(self.arch, weights=None)
        return self._random_model

    def _build(self):
        import torchvision

        if self.weights == RANDOM_WEIGHTS:
            model = self._random_init()
        elif self.weights is None:
            try:
                model = torchvision.models.get_model(self.arch, weights=self._hub_weights)
            except OSError as exc:  # URLError and friends: no network, or the download was cut
                raise UserError(
                    f"could not download torchvision weights for {self.arch} ({exc}); "
                    "pass --weights FILE with a saved state_dict, or --weights random"
                ) from None
        else:
            model = torchvision.models.get_model(self.arch, weights=None)
            state = read_state_dict(self.weights)
            head_keys = {k for k in model.state_dict() if k.startswith(("fc.", "head.", "heads.", "classifier."))}
            missing, unexpected = load_weights(model, state, self.weights, f"torchvision:{self.arch}")
            # A state_dict saved without its classifier is fine: the classifier is stripped anyway.
            if set(missing) - head_keys or unexpected:
                raise UserError(
                    f"--weights {self.weights} does not fit torchvision:{self.arch} (missing "
                    f"{len(set(missing) - head_keys)} keys, unexpected {len(unexpected)}); "
                    f"save torchvision.models.{self.arch}().state_dict() with torch.save"
                )
        if self.layer != "penultimate":
            return self._extractor(model.eval())
        _strip_classifier(model)
        return model

    def forward(self, pixels):
        if self.layer == "penultimate":
            return self.model(pixels).flatten(1)
        return pool(self.model(pixels)["features"], self.pooling)


def _state_dict_digest(model) -> str:
    hasher = new_hasher()
    for key, tensor in sorted(model.state_dict().items()):
        hasher.update(key.encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


@register_backbone("torchvision", prefix=True)
def _factory(arch: str, **options) -> TorchvisionBackbone:
    known = take_options(f"torchvision:{arch}", options, IMAGE_OPTIONS)
    return TorchvisionBackbone(arch, **known)


def _downloaded(arch: str) -> bool:
    """Whether torchvision's default weights for ``arch`` are already in the local torch hub cache."""
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


@register_lister
def _list() -> list[BackboneInfo]:
    return [
        BackboneInfo(
            name=f"torchvision:{arch}",
            modality="image",
            dim=dim,
            weights="torchvision download, --weights FILE, or --weights random",
            offline=_downloaded(arch),
            note="offline with --weights FILE (or once downloaded)",
        )
        for arch, dim in LISTED_ARCHS.items()
    ]
