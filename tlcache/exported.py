"""An exported model served through onnxruntime: items in, the head's classes out, without torch.

``tlcache export`` writes one ONNX file holding the backbone (at the layer and pooling of the head's store), the
head's preprocessing and the head; its ``tlcache`` metadata entry (JSON) holds what turns items into the graph's
inputs (a text model's tokenizer, or an image model's resize, crop and normalisation), the classes, and the parity
checks the export passed. This module reads it with numpy, Pillow, tokenizers and onnxruntime only, so a service or
a batch job loads in well under a second and carries no torch:

>>> model = load_exported("model.onnx")                                  # doctest: +SKIP
>>> model.predict(["a fine film", "a dull one"])                         # doctest: +SKIP
['pos', 'neg']

The graph's outputs: ``features`` (the backbone's, as the store holds them), ``scores`` (the head's decision
values), ``probabilities`` (one column per class of ``classes``) and ``label`` (the index into ``classes`` of the
head's own decision, which is what ``predict`` returns, as ``tlcache predict`` does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlcache.errors import UserError, item_list
from tlcache.images import as_rgb

EXPORT_FORMAT = "tlcache-export/1"
METADATA_KEY = "tlcache"
OUTPUTS = ("features", "scores", "probabilities", "label")
TEXT_BATCH = 64  # texts of similar length batched together (their padding is what they share)
IMAGE_BATCH = 16
# Characters a token of the model's limit that a text cut at that limit is first read up to (see text_prefix).
CHARS_PER_TOKEN = 32


@dataclass
class Outputs:
    """What the graph gave for the items that could be read, in the order given; ``skipped``: (position, why)."""

    features: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray  # indices into classes
    kept: np.ndarray  # positions of the items these rows belong to
    skipped: list[tuple[int, str]] = field(default_factory=list)
    truncated: int = 0  # texts longer than the model reads, cut to its limit


class ExportedModel:
    """An exported backbone and head (see the module's docstring). ``metadata`` is the artifact's record."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session, self.metadata = _open(self.path, threads)
        self.classes: list[str] = list(self.metadata["classes"])
        self.modality: str = self.metadata["modality"]
        self._inputs = [node.name for node in self.session.get_inputs()]
        self._tokenizer = _tokenizer(self.metadata["text"]) if self.modality == "text" else None

    def run(self, items: Sequence, batch_size: int | None = None, on_batch=None) -> Outputs:
        """Every output for ``items`` (texts, or image paths / PIL images); images that cannot be decoded are left
        out and listed in ``skipped``. ``on_batch``, when given, is called with each batch's number of items."""
        items = item_list(items, "an exported model")
        if self.modality == "text":
            bad = next((i for i, item in enumerate(items) if not isinstance(item, str)), None)
            if bad is not None:
                raise UserError(f"item {bad} is a {type(items[bad]).__name__}; this exported model takes texts")
            empty = next((i for i, item in enumerate(items) if not item.strip()), None)
            if empty is not None:  # as a source's empty text is refused: every one embeds to the same vector
                raise UserError(f"item {empty} is an empty text; fill it in or leave it out")
            return self._run_texts(items, batch_size or TEXT_BATCH, on_batch or _nothing)
        return self._run_images(items, batch_size or IMAGE_BATCH, on_batch or _nothing)

    def predict(self, items: Sequence) -> list[str]:
        """The head's own decision for each item, as a class name (an unreadable image raises)."""
        out = self._all(items)
        return [self.classes[i] for i in out.labels]

    def predict_proba(self, items: Sequence) -> np.ndarray:
        """(n, classes) probabilities, columns in the order of ``classes``."""
        return self._all(items).probabilities

    def features(self, items: Sequence) -> np.ndarray:
        """(n, dim) backbone features, as ``tlcache embed`` stores them."""
        return self._all(items).features

    def _all(self, items: Sequence) -> Outputs:
        out = self.run(items)
        if out.skipped:
            position, why = out.skipped[0]
            raise UserError(f"item {position} {why}")
        return out

    def _run_texts(self, texts: list[str], batch_size: int, on_batch) -> Outputs:
        limit = int(self.metadata["text"]["max_length"])

        def count(prefix: str) -> int:
            return len(self._tokenizer.encode(prefix, add_special_tokens=False).ids)  # cut at the limit: enough

        texts = [text_prefix(text, count, limit) for text in texts]
        encoded = self._tokenizer.encode_batch(texts)  # truncated to the model's limit, not padded yet
        order = np.argsort([len(e.ids) for e in encoded], kind="stable")
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = [encoded[i] for i in order[start : start + batch_size]]
            width = max(len(e.ids) for e in batch)
            arrays = {
                "input_ids": [e.ids + [self.metadata["text"]["pad_id"]] * (width - len(e.ids)) for e in batch],
                "attention_mask": [e.attention_mask + [0] * (width - len(e.ids)) for e in batch],
                "token_type_ids": [e.type_ids + [0] * (width - len(e.ids)) for e in batch],
            }
            feeds = {name: np.asarray(arrays[name], dtype=np.int64) for name in self._inputs}
            parts.append(self.session.run(list(OUTPUTS), feeds))
            on_batch(len(batch))
        back = np.empty(len(texts), dtype=np.int64)
        back[order] = np.arange(len(texts))
        outputs = _joined(parts, back, np.arange(len(texts)), [])
        outputs.truncated = sum(1 for e in encoded if e.overflowing)  # tokens past the limit, as `embed` counts
        return outputs

    def _run_images(self, images: list, batch_size: int, on_batch) -> Outputs:
        preprocessing = self.metadata["image"]
        parts, kept, skipped = [], [], []
        for start in range(0, len(images), batch_size):
            pixels = []
            for position in range(start, min(start + batch_size, len(images))):
                array, why = _pixels(images[position], preprocessing)
                if why:
                    skipped.append((position, why))
                else:
                    pixels.append(array)
                    kept.append(position)
            if pixels:
                parts.append(self.session.run(list(OUTPUTS), {self._inputs[0]: np.stack(pixels)}))
            on_batch(min(start + batch_size, len(images)) - start)
        return _joined(parts, None, np.asarray(kept, dtype=np.int64), skipped)


def _nothing(_) -> None:
    pass


def load_exported(path: str | Path, threads: int | None = None) -> ExportedModel:
    """The model ``tlcache export`` wrote to ``path``, ready to predict (``threads``: onnxruntime's intra-op
    threads, default all cores)."""
    return ExportedModel(path, threads)


def write_metadata(graph: Path, record: dict) -> None:
    """Put ``record`` into the ONNX file ``graph`` as its ``tlcache`` metadata entry (the one it reads back)."""
    import onnx

    model = onnx.load(str(graph))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(record)
    onnx.save(model, str(graph))


def _open(path: Path, threads: int | None):
    try:
        import onnxruntime
    except ImportError:
        raise UserError("an exported model runs on onnxruntime: pip install 'tlcache[export]'") from None

    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a model written by `tlcache export`")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3  # errors only: the CPU provider's notes on unused GPU providers are noise
    available = onnxruntime.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types for a bad file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path} is not a readable ONNX model ({reason}); export it again") from None
    record = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        metadata = json.loads(record) if record else None
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path} is an ONNX model but not one `tlcache export` wrote ({EXPORT_FORMAT}); export one")
    problem = _metadata_problem(metadata, [node.name for node in session.get_inputs()])
    if problem:
        raise UserError(f"{path}'s record is damaged ({problem}); export it again")
    if metadata.get("forced"):
        import warnings

        warnings.warn(f"{path} was written with --force: it failed its parity checks", stacklevel=3)
    return session, metadata


def _metadata_problem(metadata: dict, inputs: list[str]) -> str | None:
    """What is wrong with an export's record (a hand-edited or damaged file), or None."""
    classes = metadata.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(name, str) for name in classes)):
        return "no list of class names"
    if metadata.get("modality") == "image":
        image = metadata.get("image")
        keys = ("resize_shorter", "center_crop", "mean", "std")
        if not (isinstance(image, dict) and all(key in image for key in keys) and inputs == ["pixels"]):
            return "no image preprocessing for its pixels input"
        return None
    if metadata.get("modality") == "text":
        text = metadata.get("text")
        keys = ("tokenizer", "max_length", "pad_id")
        if not (isinstance(text, dict) and all(key in text for key in keys)):
            return "no tokenizer"
        unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        return f"inputs it cannot feed: {sorted(unknown)}" if unknown else None
    return f"modality {str(metadata.get('modality'))[:20]!r}"


def text_prefix(text: str, count_tokens, max_length: int) -> str:
    """For a text cut at ``max_length`` tokens: a prefix of it ending before a space that holds at least
    ``max_length`` tokens (``count_tokens(prefix)``, special tokens left out), tried at ``CHARS_PER_TOKEN`` times the
    limit and then at four times as many characters each try, else the text itself. The prefix's tokens are the
    text's own first ones (tokenizers split words at spaces, so whole words tokenise as they do in the text), so the
    cut is the same: a new user's 5 MB text, tokenised whole to keep 256 tokens, took embed 2.9 GB and 23 s, and an
    exported model 1.5 GB (a service's one hostile request could exhaust its memory)."""
    size = CHARS_PER_TOKEN * max_length
    while size < len(text):
        end = text.rfind(" ", 0, size)
        if end > 0 and count_tokens(text[:end]) >= max_length:
            return text[:end]
        size *= 4
    return text


def _tokenizer(text: dict[str, Any]):
    """The model's own tokenizer (Hugging Face tokenizers' JSON, kept in the metadata), cutting at its limit."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_str(text["tokenizer"])
    except Exception as exc:  # tokenizers raises its own Exception type for a malformed JSON
        raise UserError(f"the exported model's tokenizer cannot be read ({str(exc)[:120]}); export it again") from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(text["max_length"]))
    return tokenizer


def _pixels(image, preprocessing: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
    """(3, size, size) float32 pixels as the backbone's evaluation transform makes them (the shorter side resized
    bilinearly, the centre cropped, scaled to [0, 1], normalised), or (None, why it could not be decoded)."""
    from PIL import Image

    try:
        if isinstance(image, Image.Image):
            rgb = as_rgb(image)
        else:
            with Image.open(image) as opened:
                rgb = as_rgb(opened)
    except Exception as exc:  # Pillow raises many types for damaged files
        return None, f"could not be decoded ({exc})"
    shorter, crop = int(preprocessing["resize_shorter"]), int(preprocessing["center_crop"])
    width, height = rgb.size
    if width <= height:
        size = (shorter, int(shorter * height / width))
    else:
        size = (int(shorter * width / height), shorter)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    top, left = int(round((size[1] - crop) / 2.0)), int(round((size[0] - crop) / 2.0))
    array = np.asarray(rgb, dtype=np.float32)[top : top + crop, left : left + crop] / 255.0
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)
    std = np.asarray(preprocessing["std"], dtype=np.float32)
    return ((array - mean) / std).transpose(2, 0, 1).copy(), None


def _joined(parts: list, back: np.ndarray | None, kept: np.ndarray, skipped: list) -> Outputs:
    """The graph's outputs of each batch, concatenated (and put back in the items' order by ``back``)."""
    if not parts:
        return Outputs(np.zeros((0, 0), np.float32), np.zeros((0, 0)), np.zeros(0, np.int64), kept, skipped)
    features, _, probabilities, labels = (np.concatenate([part[i] for part in parts]) for i in range(len(OUTPUTS)))
    if back is not None:
        features, probabilities, labels = features[back], probabilities[back], labels[back]
    return Outputs(features, probabilities, labels.astype(np.int64), kept, skipped)
