"""The contract every backbone honours, whatever library its model comes from.

A backbone knows its modality, output dim, preprocessing and a digest of its weights *before* it loads the
model, so a cache hit never pays for building one. ``load()`` builds the model; ``embed()`` turns a batch of
items into a float32 ``(B, dim)`` array.
"""

from __future__ import annotations

import abc
import copy
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlcache.errors import UserError, item_list
from tlcache.images import DECODING, as_rgb

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# The device files of a GPU driver on Linux: NVIDIA's, ROCm's (torch.cuda reports its GPUs too) and WSL2's. Without
# any of them no GPU can be visible, and "auto" is the CPU without asking torch (see resolve_device_type).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
POOLINGS = ("mean", "max", "cls")  # for token sequences
MAP_POOLINGS = ("mean", "max", "flatten")  # for feature maps
POOLING_CHOICES = tuple(dict.fromkeys(POOLINGS + MAP_POOLINGS))  # what --pool takes, for some backbone or other
# Texts longer than a text model reads: cut at its limit, or embedded window by window and averaged (text models).
LONG_TEXT = ("truncate", "chunk")
# The ImageNet evaluation crop: resize the shorter side to size / 0.875, keep the central size x size.
DEFAULT_CROP_RATIO = 0.875
MAX_IMAGE_SIZE = 4096  # pixels a side: a 100000-px request would allocate terabytes before failing
IMAGE_OPTIONS = ("weights", "image_size", "crop_ratio", "layer", "pooling")  # what image backbones take


def pool(output: torch.Tensor, pooling: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a layer's output to one vector per item.

    Feature maps (B, C, H, W) take ``mean`` or ``max`` over H and W, or ``flatten`` keeps every position (C*H*W
    values: where things are survives, which small centred images such as Fashion-MNIST reward); token sequences
    (B, T, D) take ``cls`` (the first token), ``mean`` or ``max`` over the tokens that ``mask`` (B, T) marks as
    real; (B, D) passes through.
    """
    if output.dim() == 2:
        return output
    if output.dim() == 4:
        if pooling == "flatten":
            return output.flatten(1)
        if pooling not in MAP_POOLINGS:
            raise UserError(f"--pool {pooling} does not apply to a feature map; use one of {', '.join(MAP_POOLINGS)}")
        return output.mean(dim=(2, 3)) if pooling == "mean" else output.amax(dim=(2, 3))
    if output.dim() == 3:
        if pooling == "cls":
            return output[:, 0]
        if mask is None:
            mask = output.new_ones(output.shape[:2])
        mask = mask.unsqueeze(-1).to(output.dtype)
        if pooling == "mean":
            return (output * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if pooling == "max":
            return output.masked_fill(mask == 0, float("-inf")).amax(dim=1)
        raise UserError(f"--pool {pooling} is not supported; use one of {', '.join(POOLINGS)}")
    raise UserError(f"cannot pool a layer output of shape {tuple(output.shape)}; pick another --layer")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a ``.safetensors`` file or a ``torch.save`` file (tensors only: nothing is executed);
    Lightning-style checkpoints that nest it under ``state_dict`` or ``model`` are unwrapped."""
    import torch

    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file raises almost anything, from pickle, zip or safetensors
        # The library's own words only where they say what the file is; "list index out of range" (from torch.load
        # of a text file) says nothing to a user.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        said = f" ({reason})" if isinstance(exc, (OSError, ValueError)) or "safetensors" in type(exc).__module__ else ""
        raise UserError(
            f"cannot read weights from {path}: not a torch state_dict{said}; pass a .pth/.pt or .safetensors file"
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UserError(
            f"{path} holds a {type(state).__name__}, not a state_dict of tensors; save model.state_dict() with "
            "torch.save or safetensors"
        )
    return state


def load_weights(model: torch.nn.Module, state: dict, path, model_name: str) -> tuple[list[str], list[str]]:
    """``model.load_state_dict(state, strict=False)``'s missing and unexpected keys; a tensor of another shape than
    the model's is refused in one line."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatch for <key>: ...
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line] or [str(exc)]
        raise UserError(
            f"--weights {path} does not fit {model_name} ({lines[0][:200]}); pass a state_dict of that model"
        ) from None
    return list(missing), list(unexpected)


def parameter_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's parameterised blocks from input to output, for fine-tuning the top K of them and for learning
    rates that decay with depth: containers (``Sequential``, ``ModuleList``, or a module whose one such child holds
    nearly all its parameters, as a ViT's encoder) are opened, anything else with parameters is one block."""
    import torch

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    blocks = []
    for child in model.children():
        total = count(child)
        if not total:
            continue
        if isinstance(child, (torch.nn.Sequential, torch.nn.ModuleList)) and len(child) > 1:
            blocks += parameter_blocks(child)
            continue
        lists = [c for c in child.children() if isinstance(c, (torch.nn.Sequential, torch.nn.ModuleList))]
        if lists and len(lists[0]) > 1 and count(lists[0]) >= 0.9 * total:
            blocks += parameter_blocks(child)
        else:
            blocks.append(child)
    return blocks


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device '{device}'; use one of {', '.join(DEVICE_CHOICES)}")
    return torch.device(device)


def resolve_device_type(device: str = "auto") -> str:
    """``resolve_device(device).type`` ("cpu" or "cuda"), without importing torch where no GPU can be visible (on
    Linux without a GPU driver's device file, :data:`GPU_DEVICE_FILES`): the key of a cached store needs no more,
    and importing torch took a cache hit 1.2-3.5 s (and kept `--head all` in the same process from forking)."""
    no_gpu = sys.platform.startswith("linux") and not any(os.path.exists(path) for path in GPU_DEVICE_FILES)
    if device == "cpu" or (device == "auto" and no_gpu):
        return "cpu"
    return resolve_device(device).type


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 instructions (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto``: bf16 on GPUs that support it (else fp16) and on CPUs with bf16 instructions, else fp32. ``device``:
    a torch.device or its type ("cpu", "cuda")."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision} is not supported; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if (device if isinstance(device, str) else device.type) == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


class Backbone(abc.ABC):
    """A frozen pretrained encoder. Subclasses set the attributes below in ``__init__`` without loading weights."""

    name: str  # as the user wrote it, for display
    modality: str  # "image" or "text"
    dim: int
    layer: str = "penultimate"
    pooling: str = "mean"
    precision: str = "fp32"  # fp32, bf16 or fp16 (resolved, never "auto"): the compute type of forward passes

    def __init__(self) -> None:
        self.model = None
        self.device = None

    @property
    @abc.abstractmethod
    def key_name(self) -> str:
        """The family/architecture name that enters the cache key (never a local path)."""

    @property
    @abc.abstractmethod
    def weights_digest(self) -> str:
        """A digest of the actual weights (file contents, or the state_dict for random weights)."""

    @property
    @abc.abstractmethod
    def preprocessing(self) -> dict[str, Any]:
        """Everything done to an item before the model sees it, as plain JSON."""

    @property
    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """Keyword arguments that recreate this backbone with :func:`create_backbone`."""

    def candidate_layers(self) -> tuple[str, ...]:
        """What `compare --layers auto` chooses among for the frozen heads: ``default`` (these features), and, where
        the backbone knows some, intermediate layers as ``LAYER`` or ``LAYER:POOL``."""
        return ("default",)

    def default_batch_size(self, device) -> int:
        """128 on a GPU. On a CPU, small batches keep the activations in cache: for images about 16 of 224 px
        (ResNet-50 in bf16 on 2 cores: 81 images/s at 16, 63 at 64), more for smaller ones; 64 texts."""
        if device.type == "cuda":
            return 128
        if self.modality == "image":
            return int(min(64, max(8, 16 * (224 / self.image_size) ** 2)))
        return 64

    def key_config(self) -> dict[str, Any]:
        """Everything about the backbone that changes the numbers: it enters the cache key."""
        return {
            "backbone": self.key_name,
            "weights_digest": self.weights_digest,
            "preprocessing": self.preprocessing,
            "layer": self.layer,
            "pooling": self.pooling,
            "precision": self.precision,
        }

    def autocast(self):
        """The context forward passes run in: mixed precision when ``precision`` asks for it."""
        import contextlib

        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        device_type = self.device.type if self.device is not None else "cpu"
        return torch.autocast(device_type, dtype=getattr(torch, _AUTOCAST_DTYPES[self.precision]))

    def load(self, device: str = "auto") -> Backbone:
        """Build the model in eval mode on ``device`` (once); returns self."""
        target = resolve_device(device)
        if self.model is None:
            self.model = self._build().eval()
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
            self._optimize()
        if self.device != target:
            self.model.to(target)
            self.device = target
        return self

    def load_trainable(self, device: str | torch.device = "auto") -> torch.nn.Module:
        """A fresh model to train (as ``_build`` makes it: nothing folded, every parameter trainable) on ``device``,
        made the model that :meth:`forward` runs; the fine-tune stage trains it."""
        target = resolve_device(str(device))
        self.model, self.device = self._build().to(target), target
        return self.model

    def at_precision(self, precision: str) -> Backbone:
        """This backbone computing in ``precision`` (fp32, bf16 or fp16): itself when it already does, else a
        shallow copy that shares its model, so the caller's backbone is never changed behind its back."""
        if precision == self.precision:
            return self
        other = copy.copy(self)
        other.precision = precision
        return other

    @abc.abstractmethod
    def _build(self) -> torch.nn.Module:
        """Construct the model with its weights, on the CPU."""

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The blocks of ``model`` (as ``_build`` makes it) that feed the features, from input to output: what
        ``tlcache finetune --strategy top-K`` unfreezes the last K of."""
        return parameter_blocks(model)

    def _optimize(self) -> None:  # noqa: B027 (a hook: most backbones have nothing to rewrite)
        """Rewrite the loaded, frozen model for faster inference without changing its numbers."""

    @abc.abstractmethod
    def embed(self, items: Sequence) -> np.ndarray:
        """Embed a batch of items (image paths / PIL images, or texts) to a float32 (B, dim) array."""


class ImageBackbone(Backbone):
    modality = "image"

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], crop_ratio: float | None = None):
        super().__init__()
        self.image_size = int(image_size)
        if not 16 <= self.image_size <= MAX_IMAGE_SIZE:
            raise UserError(f"--image-size {image_size} is out of range; use 16 to {MAX_IMAGE_SIZE} pixels")
        crop_ratio = DEFAULT_CROP_RATIO if crop_ratio is None else float(crop_ratio)
        if not 0.0 < crop_ratio <= 1.0:
            raise UserError(f"--crop-ratio {crop_ratio} must be in (0, 1]; 1 keeps the whole (square) image")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.crop_ratio = crop_ratio
        self._compiled: dict[tuple, Callable] = {}  # (batch size, device, precision) -> compiled forward

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "convert": DECODING,
            "crop_ratio": self.crop_ratio,
            "resize_shorter": round(self.image_size / self.crop_ratio),
            "interpolation": "bilinear",
            "center_crop": self.image_size,
            "mean": self.mean,
            "std": self.std,
        }

    def transform(self) -> Callable:
        """PIL image -> normalised CHW float tensor; picklable, so DataLoader workers can run it."""
        from tlcache.images import eval_transform

        return eval_transform(self.preprocessing)

    @property
    def augmentation(self) -> dict[str, Any]:
        """How an augmented view is made (recorded in the cache key of stores with views)."""
        return {"random_resized_crop": {"scale": [0.35, 1.0], "ratio": [0.75, 4 / 3]}, "horizontal_flip": 0.5}

    def view_transform(self) -> Callable:
        """PIL image -> one randomly augmented, normalised view (seed the torch RNG first for a fixed view)."""
        from tlcache.images import view_transform

        return view_transform(self.image_size, self.mean, self.std, self.augmentation)

    @abc.abstractmethod
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels on the model's device -> (B, dim) features."""

    def _optimize(self) -> None:
        import torch

        from tlcache.backbones.optimize import fold_batch_norms, to_channels_last

        def forward_with(model, pixels):
            loaded, self.model = self.model, model
            try:
                return self.forward(pixels)
            finally:
                self.model = loaded

        probe = torch.randn(2, 3, self.image_size, self.image_size, generator=torch.Generator().manual_seed(0))
        self.model = to_channels_last(fold_batch_norms(self.model, forward_with, probe))

    def to_device(self, pixels: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        """A batch of pixels on the model's device, in the channels-last layout the model is kept in."""
        import torch

        return pixels.to(self.device, memory_format=torch.channels_last, non_blocking=non_blocking)

    def compiled_forward(self, batch_size: int, non_blocking: bool = False) -> Callable:
        """:meth:`forward` compiled by ``torch.compile`` (inductor, weights frozen into the graph) for batches of
        exactly ``batch_size`` at the current device and precision, compiled once per process and warmed up here.
        The function returned takes pixels on the host, any number of them: it runs them in slices of
        ``batch_size``, the last one padded with zeros, so no odd shape sets off a recompilation.

        Raises ``RuntimeError`` where compiling fails (no C++ compiler, an operator inductor cannot lower); the
        caller falls back to :meth:`forward`. The features agree with :meth:`forward` to float rounding (mean
        cosine 0.9999996 on ResNet-50 in bf16), so compiling does not enter the cache key.
        """
        import torch

        if self.model is None:
            self.load()
        key = (batch_size, str(self.device), self.precision)
        if key not in self._compiled:
            compiled = torch.compile(self.forward, dynamic=False, options={"freezing": True})
            probe = self.to_device(torch.zeros(batch_size, 3, self.image_size, self.image_size))
            try:
                with torch.inference_mode(), self.autocast():
                    compiled(probe)
            # inductor fails in many ways (a missing compiler, a lowering it lacks); each one means "run eagerly".
            except Exception as exc:  # noqa: BLE001
                raise RuntimeError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
            self._compiled[key] = compiled
        compiled = self._compiled[key]

        def forward_any(pixels: torch.Tensor) -> torch.Tensor:
            outputs = []
            for start in range(0, len(pixels), batch_size):
                chunk = pixels[start : start + batch_size]
                short = batch_size - len(chunk)
                if short:
                    chunk = torch.cat([chunk, chunk.new_zeros((short, *chunk.shape[1:]))])
                outputs.append(compiled(self.to_device(chunk, non_blocking))[: batch_size - short])
            return torch.cat(outputs)

        return forward_any

    def embed(self, items: Sequence) -> np.ndarray:
        import torch
        from PIL import Image

        items = item_list(items, f"{self.name}'s embed")
        if self.model is None:
            self.load()
        transform = self.transform()
        tensors = []
        for item in items:
            if isinstance(item, Image.Image):
                tensors.append(transform(as_rgb(item)))
            else:
                with Image.open(item) as image:
                    tensors.append(transform(as_rgb(image)))
        with torch.inference_mode(), self.autocast():
            out = self.forward(self.to_device(torch.stack(tensors)))
        return out.float().cpu().numpy()


class TextBackbone(Backbone):
    modality = "text"
    layer = "last"
    pooling = "mean"

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> dict:
        """Texts -> model inputs (CPU tensors), padded to the longest text in the batch."""

    max_length: int | None = None  # tokens the model reads of a text; None: no limit known

    def token_lengths(self, texts: Sequence[str], truncate: bool = True) -> list[int]:
        """How long each text is for the model (``truncate``: as it reads it, else in full), to batch texts of
        similar length together and to count the texts it cuts; characters stand in for tokens unless a backbone
        knows better."""
        return [len(text) for text in texts]

    @abc.abstractmethod
    def forward(self, inputs: dict) -> torch.Tensor:
        """Tokenised inputs on the model's device -> (B, dim) pooled features."""

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, dim) features of a batch of texts, on the model's device (the caller holds inference mode and
        autocast): tokenised as the model reads them, then :meth:`forward`."""
        inputs = {k: v.to(self.device) for k, v in self.tokenize(list(texts)).items()}
        return self.forward(inputs)

    def embed(self, items: Sequence[str]) -> np.ndarray:
        import torch

        items = item_list(items, f"{self.name}'s embed")
        if self.model is None:
            self.load()
        with torch.inference_mode(), self.autocast():
            out = self.features(items)
        return out.float().cpu().numpy()
