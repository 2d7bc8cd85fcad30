"""The backbone registry: one decorated factory per name, one public constructor (in the manner of timm)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from tlcache.backbones.base import Backbone
from tlcache.errors import UserError


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    modality: str
    dim: int | None  # None where it depends on the model given (hf:<dir>, other torchvision archs)
    weights: str  # where the weights come from
    offline: bool  # usable right now without network
    note: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


_FLAGS = {"pooling": "--pool"}  # keyword arguments whose CLI flag has another name
_FACTORIES: dict[str, Callable[..., Backbone]] = {}
_PREFIX_FACTORIES: dict[str, Callable[..., Backbone]] = {}
_LISTERS: list[Callable[[], list[BackboneInfo]]] = []


def register_backbone(name: str, prefix: bool = False) -> Callable:
    """Register ``factory(name, **options) -> Backbone`` under an exact name, or under ``name:`` as a prefix."""

    def decorate(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        (_PREFIX_FACTORIES if prefix else _FACTORIES)[name] = factory
        return factory

    return decorate


def register_lister(lister: Callable[[], list[BackboneInfo]]) -> Callable[[], list[BackboneInfo]]:
    _LISTERS.append(lister)
    return lister


def create_backbone(name: str, **options) -> Backbone:
    """The one constructor, e.g. ``create_backbone("torchvision:resnet50", weights="r50.pt")``.

    Options a backbone does not take (``pooling`` on an image model, say) are refused with a clear message; ``None``
    values mean "the backbone's default".
    """
    check_backbone_name(name)
    options = {k: v for k, v in options.items() if v is not None}
    if name in _FACTORIES:
        return _FACTORIES[name](name, **options)
    prefix, _, rest = name.partition(":")
    return _PREFIX_FACTORIES[prefix](rest, **options)


def check_backbone_name(name: str) -> None:
    """Refuse, without loading anything, a name that is neither a backbone nor ``prefix:<...>`` of a family."""
    _load_builtin_backbones()
    if name in _FACTORIES:
        return
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIX_FACTORIES:
        if not rest:
            raise UserError(f"backbone '{name}' names no model after '{prefix}:'; see `tlcache backbones`")
        return
    known = ", ".join(sorted(_FACTORIES) + [f"{p}:<...>" for p in sorted(_PREFIX_FACTORIES)])
    close = difflib.get_close_matches(name, list(_FACTORIES), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    if not sep and _is_torchvision_model(name):
        hint = f"did you mean 'torchvision:{name}'? "
    raise UserError(f"unknown backbone '{name}'; {hint}known: {known} (see `tlcache backbones`)")


def list_backbones() -> list[BackboneInfo]:
    _load_builtin_backbones()
    return [info for lister in _LISTERS for info in lister()]


def take_options(backbone_name: str, options: dict, allowed: tuple[str, ...]) -> dict:
    """The options a backbone takes; any other is refused with a clear message."""
    reject_options(backbone_name, {k: v for k, v in options.items() if k not in allowed})
    return {k: v for k, v in options.items() if k in allowed}


def reject_options(backbone_name: str, options: dict) -> None:
    """Refuse options a backbone does not understand, naming them as CLI flags."""
    if options:
        flags = ", ".join(_FLAGS.get(k, "--" + k.replace("_", "-")) for k in sorted(options))
        raise UserError(f"backbone '{backbone_name}' does not take {flags}; see `tlcache embed --help`")


def _load_builtin_backbones() -> None:
    # Imported for their registration side effect; kept lazy so `import tlcache` stays light.
    from tlcache.backbones import efficientnet_lite, finetuned, torchvision_models, transformers_text  # noqa: F401


def _is_torchvision_model(name: str) -> bool:
    """Whether torchvision has a classification model of this name (asked only when a name is refused)."""
    try:
        import torchvision.models as models
        from torchvision.models import list_models

        return name in list_models(module=models)
    except Exception:  # torchvision not installed, or an older one without list_models
        return False
