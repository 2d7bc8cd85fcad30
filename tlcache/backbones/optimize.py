"""Inference-only rewrites of frozen image models: batch norms folded into the convolutions before them, and
channels-last memory, the layout oneDNN's CPU convolutions (and tensor cores) run fastest in.

Both leave the numbers equal up to float rounding (folding computes ``w * gamma / sigma`` once instead of a
normalisation per call), so they are not part of the cache key. Measured on ResNet-50, 2 cores with bf16
instructions, batch 32 at 224 px: 17 images/s plain fp32, 56 with channels-last + bf16 autocast, 61 with the
batch norms folded as well.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Folded and unfolded outputs on the probe input may differ by float rounding only: at most this share of the
# largest output magnitude (measured: below 1e-6 on ResNet-50, EfficientNet-Lite0, DenseNet-121).
FOLD_TOLERANCE = 1e-4


def fold_batch_norms(model: torch.nn.Module, forward: Callable, example: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` in which every BatchNorm2d that directly follows a Conv2d is folded into it (and
    replaced by an Identity), or ``model`` itself when nothing folds or the folded copy computes something else.

    ``forward(model, x)`` is the computation to speed up; one run of it on ``example`` finds the pairs (a norm
    whose input is the output of a convolution, both called once) and a second run checks the result, so a
    convolution whose output also feeds something besides its norm, which folding would break, is caught."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    pairs = _conv_norm_pairs(model, forward, example)
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    modules = dict(folded.named_modules())
    for conv_name, norm_name in pairs:
        conv, norm = modules[conv_name], modules[norm_name]
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
        )
        conv.weight, conv.bias = weight.requires_grad_(False), bias.requires_grad_(False)
        parent_name, _, attribute = norm_name.rpartition(".")
        setattr(modules[parent_name], attribute, torch.nn.Identity())
    with torch.inference_mode():
        expected, actual = forward(model, example), forward(folded, example)
    scale = float(expected.abs().max()) or 1.0
    if not torch.allclose(actual, expected, rtol=0.0, atol=FOLD_TOLERANCE * scale):
        return model
    return folded


def _conv_norm_pairs(model, forward: Callable, example) -> list[tuple[str, str]]:
    import torch

    calls: dict[str, int] = {}
    produced: dict[int, str] = {}  # id of a convolution's output -> the convolution
    pairs = []
    alive = []  # keep every output alive, so no id is reused during the run

    def hook(name):
        def record(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            alive.append(output)
            if isinstance(module, torch.nn.Conv2d):
                produced[id(output)] = name
            elif inputs and id(inputs[0]) in produced:
                pairs.append((produced[id(inputs[0])], name))

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d)
        or (isinstance(module, torch.nn.BatchNorm2d) and module.track_running_stats and not module.training)
    ]
    try:
        with torch.inference_mode():
            forward(model, example)
    finally:
        for handle in handles:
            handle.remove()
    return [(conv, norm) for conv, norm in pairs if calls[conv] == 1 and calls[norm] == 1]


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """4-D weights in channels-last memory (a no-op for models without convolutions)."""
    import torch

    return model.to(memory_format=torch.channels_last)
