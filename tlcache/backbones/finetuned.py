"""The fine-tuned model folder, written and read here only, and ``finetuned:<dir>``: such a folder as a backbone
for embed, fit-head and predict.

The folder holds ``finetune.json`` (what the model was fine-tuned from, and how), the body's weights as
safetensors (``body.safetensors`` for image models, ``body/``, a ``save_pretrained`` folder, for text encoders)
and the classifier (``head.safetensors``: ``weight`` and ``bias``). The features are those of the fine-tuned body,
taken where the original backbone takes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlcache.backbones.base import IMAGE_OPTIONS, Backbone
from tlcache.backbones.registry import BackboneInfo, create_backbone, register_backbone, register_lister, take_options
from tlcache.errors import UserError
from tlcache.provenance import torch_version

CONFIG_FILE = "finetune.json"
IMAGE_BODY = "body.safetensors"
TEXT_BODY = "body"
CLASSIFIER_FILE = "head.safetensors"
FORMAT = "tlcache-finetuned/1"


def write_finetuned_model(folder: Path, bb: Backbone, head, classes: list[str], record: dict[str, Any]) -> None:
    """The body of ``bb`` (its loaded, trained model) and the classifier ``head`` (a ``torch.nn.Linear``) as
    safetensors, and finetune.json: what ``finetuned:<folder>`` needs to load it as a backbone, with ``record``
    (config, best epoch, test accuracy, created) beside it. finetune.json is written last: a folder with it is a
    finished model."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    saved = {"format": FORMAT, "modality": bb.modality, "backbone": bb.name, "backbone_spec": bb.spec}
    if bb.modality == "text":
        from tlcache.backbones.transformers_text import quiet_transformers

        with quiet_transformers():
            bb.model.save_pretrained(folder / TEXT_BODY, safe_serialization=True)
            bb.tokenizer.save_pretrained(folder / TEXT_BODY)
        saved["text"] = {"normalize": bb.normalize, "max_length": bb.max_length, "key_name": bb.key_name}
    else:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in bb.model.state_dict().items()}
        save_file(state, str(folder / IMAGE_BODY))
    save_file({"weight": head.weight.detach().cpu(), "bias": head.bias.detach().cpu()}, str(folder / CLASSIFIER_FILE))
    saved.update({"classes": classes, **record, "torch_version": torch_version()})
    (folder / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")


def holds_finetuned_model(folder: Path) -> bool:
    """Whether ``folder`` holds a finished fine-tuned model."""
    return (Path(folder) / CONFIG_FILE).exists()


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
