"""Frozen pretrained encoders behind one contract; see :mod:`tlcache.backbones.base`."""

from tlcache.backbones.base import Backbone, ImageBackbone, TextBackbone, resolve_device
from tlcache.backbones.registry import BackboneInfo, create_backbone, list_backbones, register_backbone

__all__ = [
    "Backbone",
    "BackboneInfo",
    "ImageBackbone",
    "TextBackbone",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "resolve_device",
]
