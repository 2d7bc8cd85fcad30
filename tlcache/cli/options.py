"""The command line's options, made from the library's own definitions: each choice list is the library's constant,
and the fine-tune options are generated from :class:`FinetuneConfig`'s fields, so a setting is stated once."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import click

from tlcache.backbones.base import DEFAULT_CROP_RATIO, DEVICE_CHOICES, POOLING_CHOICES, PRECISIONS
from tlcache.errors import UserError
from tlcache.sources import DEFAULT_TEXT_COLUMN

BACKBONE_OPTIONS = ("weights", "crop_ratio", "layer", "pooling", "image_size")  # create_backbone's keywords
SOURCE_OPTIONS = ("text_column", "label_column", "id_column", "group_column")  # load_source's keywords


def options(*decorators: Callable) -> Callable:
    """Several click options as one decorator, in the order given."""

    def apply(command):
        for decorate in reversed(decorators):
            command = decorate(command)
        return command

    return apply


def take(values: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Remove the options ``names`` from a command's keyword arguments and return them."""
    return {name: values.pop(name) for name in names}


def emit(payload: dict, as_json: bool, line: str) -> None:
    """JSON on stdout for programs, or one line for people."""
    click.echo(json.dumps(payload, indent=2, default=str) if as_json else line)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
no_progress_option = click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
device_option = click.option(
    "--device",
    type=click.Choice(DEVICE_CHOICES),
    default="auto",
    show_default=True,
    help="auto uses a CUDA GPU when one is visible.",
)
batch_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Items per batch [default: 128 on a GPU; on a CPU 64 texts, and about 16 images of 224 px, more of "
    "smaller ones].",
)
workers_option = click.option(
    "--workers", type=click.IntRange(min=0), help="Image-decoding worker processes [default: automatic]."
)


def precision_option(text: str) -> Callable:
    return click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True, help=text)


backbone_options = options(
    click.option(
        "--weights",
        help="Weights: a state_dict file (torchvision, efficientnet-lite) or 'random' (torchvision).",
    ),
    click.option(
        "--crop-ratio",
        type=click.FloatRange(min=0, max=1, min_open=True),
        help="Image backbones: resize the shorter side to size / ratio, keep the central square [default: "
        f"{DEFAULT_CROP_RATIO}, the ImageNet evaluation crop]; 1 keeps whole square images (small full-frame items "
        "such as digits).",
    ),
    click.option(
        "--layer",
        help="Layer to take features from: penultimate (images) / last (text) by default; a torchvision "
        "node such as layer3, blocks.N for efficientnet-lite, a hidden-layer index for text.",
    ),
    click.option(
        "--pool",
        "pooling",
        type=click.Choice(POOLING_CHOICES),
        help="How a layer's output becomes one vector: mean or max over space or tokens, cls for the first "
        "token, flatten to keep every position of a feature map (C*H*W values) [default: mean].",
    ),
    click.option(
        "--image-size",
        type=click.IntRange(min=16),
        help="Input size in pixels for image backbones [default: the backbone's].",
    ),
)

source_options = options(
    click.option(
        "--text-column", default=DEFAULT_TEXT_COLUMN, show_default=True, help="CSV/JSONL column with the text."
    ),
    click.option("--label-column", help="CSV/JSONL column with the label [default: 'label' if present]."),
    click.option(
        "--id-column", help="CSV/JSONL column with a unique id [default: 'id' if present, else the row number]."
    ),
    click.option("--group-column", help="CSV/JSONL column with a group per item, for per-group metrics."),
)


def config_options(config_class: type, exclude: tuple[str, ...] = ()) -> Callable:
    """One option per field of a settings dataclass whose fields carry ``help`` (and ``min``, ``choices`` or
    ``items``) in their metadata, with the field's default: see :func:`tlcache.finetune.config.setting`. Fields
    in ``exclude`` get none (a command that sets them itself)."""
    return options(*(_field_option(f) for f in dataclasses.fields(config_class) if f.name not in exclude))


def config_from_options(config_class: type, values: dict[str, Any], exclude: tuple[str, ...] = ()):
    """The dataclass made from its options' values, which are removed from a command's keyword arguments; fields
    in ``exclude`` keep their defaults."""
    names = tuple(f.name for f in dataclasses.fields(config_class) if f.name not in exclude)
    return config_class(**take(values, names))


def _field_option(f: dataclasses.Field) -> Callable:
    flag = "--" + f.name.replace("_", "-")
    meta = f.metadata
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if f.type == "bool":
        return click.option(flag, f.name, is_flag=True, default=default, help=meta["help"])
    if "items" in meta:  # a comma-separated list, or none
        return click.option(
            flag,
            f.name,
            default=",".join(default) or "none",
            show_default=True,
            callback=lambda ctx, param, text: [] if text.strip() == "none" else _split_list(text),
            help=f"{meta['help']} Comma-separated, some of: {', '.join(meta['items'])}; or none.",
        )
    kind = {"int": int, "float": float, "str": str}[f.type]
    if "choices" in meta:
        kind = click.Choice(meta["choices"])
    elif "min" in meta:
        kind = click.IntRange(min=meta["min"])
    return click.option(flag, f.name, type=kind, default=default, show_default=True, help=meta["help"])


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def human_size(n_bytes: float) -> str:
    """A size in bytes as people read it: "812 B", "3.4 MiB", "2.1 GiB"."""
    for unit in ("B", "KiB", "MiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} GiB"


def checked_backbones(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--backbone: each comma-separated name a backbone tlcache knows, refused before any data is read (and by
    `tlcache run --dry-run`)."""
    if value is not None:
        from tlcache.backbones.registry import check_backbone_name

        for name in value.split(","):
            check_backbone_name(name.strip())
    return value


def fraction(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A fraction of the items, between 0 and 1 (exclusive), checked when the command line is read."""
    if value is not None and not 0.0 < value < 1.0:
        raise UserError(f"--{param.name.replace('_', '-')} {value:g} must be between 0 and 1 (exclusive)")
    return value
