"""``finetuned:<dir>``: a model written by `tlcache finetune`, used as a backbone for embed, fit-head and predict.

The folder holds ``finetune.json`` (what the model was fine-tuned from, and how) and the body's weights as
safetensors: ``body.safetensors`` for image models, ``body/`` (a ``save_pretrained`` folder) for text encoders.
The features are those of the fine-tuned body, taken where the original backbone takes them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tlcache.backbones.base import IMAGE_OPTIONS, Backbone
from tlcache.backbones.registry import BackboneInfo, create_backbone, register_backbone, register_lister, take_options
from tlcache.errors import UserError

CONFIG_FILE = "finetune.json"
IMAGE_BODY = "body.safetensors"
TEXT_BODY = "body"
HEAD_FILE = "head.safetensors"
FORMAT = "tlcache-finetuned/1"


def read_finetuned_config(folder: str | Path) -> dict:
    """The ``finetune.json`` of a fine-tuned model folder, checked to be one."""
    path = Path(folder).expanduser() / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        message = f"finetuned:{folder} holds no {CONFIG_FILE}; pass a folder written by `tlcache finetune`"
        raise UserError(message) from None
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); run `tlcache finetune` again") from None
    if config.get("format") != FORMAT:
        raise UserError(f"{path} is not a tlcache fine-tuned model ({FORMAT}); run `tlcache finetune` again")
    return config


@register_backbone("finetuned", prefix=True)
def _finetuned(ref: str, **options) -> Backbone:
    folder = Path(ref).expanduser().resolve()
    config = read_finetuned_config(folder)
    spec = dict(config["backbone_spec"])
    base_name = spec.pop("name")
    if config["modality"] == "text":
        from tlcache.backbones.transformers_text import TransformersText

        text = config["text"]
        known = take_options(f"finetuned:{ref}", options, ("pooling", "layer"))
        return TransformersText(
            f"finetuned:{folder}",
            folder / TEXT_BODY,
            pooling=known.get("pooling", spec.get("pooling", "mean")),
            normalize=text["normalize"],
            max_length=text["max_length"],
            key_name=f"finetuned:{text['key_name']}",
            layer=known.get("layer", spec.get("layer")),
        )
    known = take_options(f"finetuned:{ref}", options, tuple(o for o in IMAGE_OPTIONS if o != "weights"))
    return create_backbone(base_name, **{**spec, **known, "weights": str(folder / IMAGE_BODY)})


@register_lister
def _list() -> list[BackboneInfo]:
    return [
        BackboneInfo(
            name="finetuned:<dir>",
            modality="image or text",
            dim=None,
            weights="a folder written by `tlcache finetune`",
            offline=True,
            note="the fine-tuned body; the original's options apply",
        )
    ]
