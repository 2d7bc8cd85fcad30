"""A fine-tune's data: the train / validation / test split of the labelled items, and batches of each split on the
device (images decoded and augmented with per-item seeds, texts tokenised in buckets of similar length)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlcache.backbones import Backbone
from tlcache.errors import UserError
from tlcache.finetune.config import FinetuneConfig
from tlcache.images import ImageFiles, default_workers, image_batches, item_seed, training_transform
from tlcache.sources import Source, classes_needed, load_source
from tlcache.splits import remap_labels, shared_with_training, stratified_split

TEXT_BUCKET = 50  # batches whose texts are sorted by length together: little padding, still shuffled


@dataclass
class Splits:
    classes: list[str]
    rows: dict[str, np.ndarray]  # train / val / test -> rows of their source
    labels: dict[str, np.ndarray]  # as indices into classes
    test_source: Source | None  # None: the test items are held out of the training source
    test_description: str

    def fingerprint(self, src: Source) -> dict:
        """What a resumed run must find unchanged about the data."""
        return {
            "source": src.fingerprint,
            "test": self.test_source.fingerprint if self.test_source is not None else self.test_description,
            "classes": self.classes,
        }

    def items(self, src: Source, split: str) -> list:
        source = self.test_source if split == "test" and self.test_source is not None else src
        return [source.items[i] for i in self.rows[split]]


def make_splits(
    src: Source, test, test_fraction: float, config: FinetuneConfig, source_options: dict | None, check_test=True
) -> Splits:
    """Training and validation items (a stratified ``val_fraction`` of the training items, for early stopping)
    from ``src``; test items from ``test`` (a source or its path, with the training source's classes) or a
    stratified ``test_fraction`` of ``src`` held out with the seed. ``check_test``: count (and warn of) test items
    that are training items, refusing a ``test`` of training items only (tlcache.splits.shared_with_training)."""
    labels = np.asarray(src.label_indices if src.labels is not None else [-1] * len(src))
    labelled = np.flatnonzero(labels >= 0)
    classes = src.class_names
    classes_needed(src, "fine-tuning")
    where = str(src.path)
    test_source = None
    if test is not None:
        test_source = test if isinstance(test, Source) else load_source(test, **(source_options or {}))
        test_labels = np.asarray(test_source.label_indices)
        test_rows = np.flatnonzero(test_labels >= 0)
        if not len(test_rows):
            raise UserError(f"test source {test_source.path} has no labelled items; give it the training classes")
        y_test = remap_labels(
            test_labels[test_rows], test_source.class_names, classes, f"test source {test_source.path}"
        )
        train_rows, description = labelled, f"source {test_source.path}"
        if check_test:
            shared_with_training(
                [src.fingerprints[r] for r in train_rows],
                [test_source.fingerprints[r] for r in test_rows],
                f"test source {test_source.path}",
            )
    else:
        train_rows, test_rows = stratified_split(labelled, labels[labelled], test_fraction, config.seed, where)
        y_test = labels[test_rows]
        description = f"{test_fraction:g} held out, stratified, seed {config.seed}"
        if check_test:
            held_out = [src.fingerprints[r] for r in test_rows]
            shared_with_training([src.fingerprints[r] for r in train_rows], held_out, where, given=False)
    train_rows, val_rows = stratified_split(
        train_rows, labels[train_rows], config.val_fraction, config.seed + 1, where, flag="--val-fraction"
    )
    return Splits(
        classes,
        {"train": train_rows, "val": val_rows, "test": test_rows},
        {"train": labels[train_rows], "val": labels[val_rows], "test": y_test},
        test_source,
        description,
    )


class FinetuneData:
    """Batches of (inputs on the device, labels, positions) for each split: images decoded and augmented (in
    DataLoader workers on a GPU), texts tokenised per batch in buckets of similar length."""

    def __init__(self, src: Source, splits: Splits, bb: Backbone, config: FinetuneConfig, workers: int | None):
        self.src, self.splits, self.bb, self.config = src, splits, bb, config
        self.workers = workers
        self._lengths: dict[str, np.ndarray] = {}  # token lengths per split, tokenised once for all epochs

    def n_batches(self, split: str) -> int:
        n = len(self.splits.rows[split]) - (self._dropped() if split == "train" else 0)
        return math.ceil(n / self.config.batch_size)

    def _dropped(self) -> int:
        """A training epoch leaves out one item when it would be a batch of its own: batch norms cannot train on
        a single item, and one item of the rest (a different one each epoch) is no loss."""
        return int(len(self.splits.rows["train"]) % self.config.batch_size == 1)

    def batches(self, split: str, epoch: int | None = None) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        """(inputs, labels, positions within the split) per batch; ``epoch`` shuffles and augments (training)."""
        items = self.splits.items(self.src, split)
        labels = self.splits.labels[split]
        if self.src.modality == "image":
            yield from self._image_batches(items, labels, epoch)
        else:
            if split not in self._lengths:
                self._lengths[split] = np.asarray(self.bb.token_lengths(items))
            yield from self._text_batches(items, labels, self._lengths[split], epoch)

    def _order(self, n: int, epoch: int) -> np.ndarray:
        """The shuffled training order of an epoch, fixed by (seed, epoch)."""
        return np.random.default_rng([self.config.seed, epoch]).permutation(n)[: n - self._dropped()]

    def _image_batches(self, paths: list, labels: np.ndarray, epoch: int | None):
        train = epoch is not None
        if train:
            transform = training_transform(self.bb, self.config.augment)
            seeds = [item_seed(self.config.seed, epoch, index) for index in range(len(paths))]
            order = self._order(len(paths), epoch)
        else:
            transform, seeds, order = self.bb.transform(), None, np.arange(len(paths))
        workers = default_workers(len(paths), self.bb.device) if self.workers is None else self.workers
        on_cuda = self.bb.device.type == "cuda"
        batches = image_batches(ImageFiles(paths, transform, seeds), order, self.config.batch_size, workers, on_cuda)
        start = 0
        for pixels, _ in batches:
            positions = order[start : start + len(pixels)]
            start += len(pixels)
            yield self.bb.to_device(pixels, non_blocking=True), labels[positions], positions

    def _text_batches(self, texts: list[str], labels: np.ndarray, lengths: np.ndarray, epoch: int | None):
        size = self.config.batch_size
        if epoch is None:
            by_length = np.argsort(lengths, kind="stable")
            batches = [by_length[i : i + size] for i in range(0, len(texts), size)]
        else:
            order = self._order(len(texts), epoch)
            bucket = size * TEXT_BUCKET
            batches = []
            for i in range(0, len(order), bucket):
                chunk = order[i : i + bucket]
                chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
                batches += [chunk[j : j + size] for j in range(0, len(chunk), size)]
            batches = [
                batches[i] for i in np.random.default_rng([self.config.seed, epoch, 1]).permutation(len(batches))
            ]
        for positions in batches:
            inputs = self.bb.tokenize([texts[i] for i in positions])
            yield {k: v.to(self.bb.device) for k, v in inputs.items()}, labels[positions], positions
