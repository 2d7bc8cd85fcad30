"""Fine-tuning: the backbone and a linear classifier trained together, for when frozen features fall short.

The recipe is the careful one: a strategy that says what trains (``head``, ``top-K`` blocks, or ``full``), an
optional first stage that trains the classifier alone, learning rates that shrink with depth, warmup then cosine
decay, AdamW with weight decay (not on biases and norms), gradient clipping, and early stopping on a validation
split with the best epoch restored. A linear-probe warm start (LP-FT, Kumar et al. 2022) starts the classifier
from the swept logistic regression of `fit-head` on the frozen features.

Every epoch ends in a checkpoint; ``resume`` continues from it and gives what an uninterrupted run gives: each
epoch's shuffling, augmentation and dropout are seeded by (seed, epoch), not by what ran before.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tlcache.backbones import Backbone, ImageBackbone, create_backbone, resolve_device
from tlcache.backbones.base import resolve_precision
from tlcache.backbones.finetuned import CONFIG_FILE, FORMAT, HEAD_FILE, IMAGE_BODY, TEXT_BODY
from tlcache.errors import UserError
from tlcache.heads import HeadRun
from tlcache.report import classification_metrics, write_report
from tlcache.sources import Source, load_source

CHECKPOINT_FILE = "checkpoint.pt"
AUGMENTATIONS = ("crop", "shift", "flip", "color", "rotate", "erase")
DEFAULT_AUGMENT = ("crop", "flip")
NORM_STATS = ("frozen", "train")
DEAD_SPREAD = 1e-6  # LP-FT: features spread this much less than the widest one are dead units (live_features)
TEXT_BUCKET = 50  # batches whose texts are sorted by length together: little padding, still shuffled


@dataclass
class FinetuneConfig:
    """Everything that changes the result of a fine-tune (recorded in the run; ``--resume`` insists on it)."""

    strategy: str = "full"  # head | top-K (the last K blocks of the body) | full
    epochs: int = 3  # epochs of the main stage
    head_epochs: int = 0  # a first stage that trains the classifier alone, before the body unfreezes
    lr: float = 5e-5  # learning rate of the body's top block
    head_lr: float = 1e-3  # learning rate of the classifier
    layer_decay: float = 1.0  # each block further from the top learns at this times the rate of the one above
    warmup: float = 0.1  # fraction of each stage's steps over which the rates rise linearly, then decay (cosine)
    weight_decay: float = 0.01  # AdamW's, on weights (biases and norms are not decayed)
    clip: float = 1.0  # the gradient norm is clipped to this; 0 turns clipping off
    batch_size: int = 32
    accumulate: int = 1  # batches whose gradients add up to one optimiser step
    lp_ft: bool = False  # start the classifier from the logistic-regression probe
    augment: list[str] = field(default_factory=lambda: list(DEFAULT_AUGMENT))  # images only
    mixup: float = 0.0  # images only: alpha of the Beta distribution that mixes pairs of a batch (0: off)
    label_smoothing: float = 0.0  # of the cross-entropy targets
    val_fraction: float = 0.1  # of the training items, stratified, for early stopping
    patience: int = 2  # epochs of the main stage without a better validation accuracy before stopping (0: never)
    norm_stats: str = "frozen"  # frozen: batch norms keep their pretrained statistics (their scales still train)
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 on capable hardware)
    seed: int = 0

    def validate(self) -> None:
        top_k(self.strategy)
        for name in ("epochs", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} must be 1 or more")
        if self.head_epochs < 0 or self.patience < 0:
            raise UserError("--head-epochs and --patience must be 0 or more")
        if self.lr <= 0 or self.head_lr <= 0 or not 0 < self.layer_decay <= 1:
            raise UserError("--lr and --head-lr must be positive, --layer-decay in (0, 1]")
        if not 0 <= self.warmup < 1 or self.weight_decay < 0 or self.clip < 0:
            raise UserError("--warmup must be in [0, 1), --weight-decay and --clip 0 or more")
        if self.norm_stats not in NORM_STATS:
            raise UserError(f"--norm-stats {self.norm_stats} is not known; use one of {', '.join(NORM_STATS)}")
        if self.mixup < 0 or not 0 <= self.label_smoothing < 1:
            raise UserError("--mixup must be 0 or more, --label-smoothing in [0, 1)")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction {self.val_fraction} must be between 0 and 1 (exclusive)")
        unknown = sorted(set(self.augment) - set(AUGMENTATIONS))
        if unknown:
            raise UserError(f"--augment {','.join(unknown)} is not known; use some of {', '.join(AUGMENTATIONS)}")


def top_k(strategy: str) -> int | None:
    """The K of ``top-K`` (None for ``full``, 0 for ``head``); anything else is refused."""
    if strategy == "full":
        return None
    if strategy == "head":
        return 0
    prefix, _, k = strategy.partition("-")
    if prefix != "top" or not k.isdigit() or int(k) < 1:
        raise UserError(f"--strategy {strategy} is not known; use head, top-K (K = 1, 2, ...) or full")
    return int(k)


class FinetuneRun(HeadRun):
    """Where a fine-tune wrote its model and report, and the report itself."""

    def summary_line(self) -> str:
        tune = self.report["finetune"]
        return (
            f"finetune {tune['strategy']} of {self.report['backbone']}: accuracy {self.accuracy:.4f} on "
            f"{self.report['n_test']} test items (best epoch {tune['best_epoch']} of {tune['epochs_run']}, "
            f"{self.report['fit_seconds']:.0f} s) -> {self.out_dir}"
        )


class Classifier:
    """A backbone's body (as ``_build`` makes it: trainable, nothing folded) with a linear classifier on its
    features. ``module`` holds both for optimisers and state dicts."""

    def __init__(self, bb: Backbone, n_classes: int, seed: int = 0):
        import torch

        self.bb = bb
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = torch.nn.Linear(bb.dim, n_classes)
        self.module = torch.nn.ModuleDict({"body": bb.model, "head": head})
        self.blocks = bb.blocks(bb.model)

    def check_strategy(self, strategy: str) -> None:
        k = top_k(strategy)
        if k is not None and k > len(self.blocks):
            raise UserError(f"--strategy {strategy}: {self.bb.name} has {len(self.blocks)} blocks; use full")

    def __call__(self, inputs):
        return self.module["head"](self.bb.forward(inputs).float())

    def trainable_blocks(self, strategy: str) -> list:
        k = top_k(strategy)
        if k is None:
            return list(self.blocks)
        return self.blocks[len(self.blocks) - k :] if k else []

    def freeze(self, strategy: str) -> None:
        """Make exactly the strategy's parameters trainable: the classifier, and the body's top K blocks (all of
        the body for ``full``)."""
        k = top_k(strategy)
        for parameter in self.module["body"].parameters():
            parameter.requires_grad_(k is None)
        for block in self.trainable_blocks(strategy):
            for parameter in block.parameters():
                parameter.requires_grad_(True)
        for parameter in self.module["head"].parameters():
            parameter.requires_grad_(True)

    def train_mode(self, strategy: str, norm_stats: str = "frozen") -> None:
        """Training mode for what trains; frozen blocks stay in eval mode (their norms keep running statistics,
        their dropout stays off). With ``norm_stats="frozen"`` every batch norm keeps its pretrained statistics,
        as Keras' fine-tuning guide advises for small data: batch statistics of a few dozen items are noisy, and
        slow running averages (momentum 0.01 in the EfficientNet-Lite ports) lag behind the weights."""
        import torch

        self.module.train()
        if top_k(strategy) is not None:
            self.module["body"].eval()
            for block in self.trainable_blocks(strategy):
                block.train()
        if norm_stats == "frozen":
            for module in self.module["body"].modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def param_groups(self, strategy: str, config: FinetuneConfig) -> list[dict]:
        """AdamW groups: the classifier at ``head_lr``; body block i from the top at ``lr * layer_decay ** i``
        (for ``full``, parameters outside the blocks at the bottom's rate); no weight decay on 1-d tensors."""
        groups: list[dict] = []
        seen: set[int] = set()

        def add(parameters, lr: float) -> None:
            fresh = [p for p in parameters if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in fresh)
            for decay in (True, False):
                chosen = [p for p in fresh if (p.ndim > 1) == decay]
                if chosen:
                    groups.append({"params": chosen, "lr": lr, "weight_decay": config.weight_decay if decay else 0.0})

        add(self.module["head"].parameters(), config.head_lr)
        blocks = self.trainable_blocks(strategy)
        for depth, block in enumerate(reversed(blocks)):
            add(block.parameters(), config.lr * config.layer_decay**depth)
        if top_k(strategy) is None:
            add(self.module["body"].parameters(), config.lr * config.layer_decay ** len(blocks))
        return groups


def finetune(
    source: str | Path | Source,
    backbone: str | None = None,
    *,
    out: str | Path | None = None,
    test: str | Path | Source | None = None,
    test_fraction: float = 0.2,
    config: FinetuneConfig | None = None,
    device: str = "auto",
    resume: bool = False,
    cache: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    source_options: dict[str, Any] | None = None,
    **backbone_options,
) -> FinetuneRun:
    """Fine-tune ``backbone`` with a linear classifier on the labelled items of ``source``; evaluate the best
    epoch on ``test`` (a source with the same classes) or on a stratified ``test_fraction`` held out with the
    seed. Writes the model (``finetuned:<out>`` as a backbone), the training history and the report of `fit-head`
    to ``out`` (default ``runs/finetune-<backbone>-<strategy>``). ``cache`` is where LP-FT embeds the frozen
    features (default ``$TLCACHE_HOME``).

    >>> run = finetune("reviews.csv", "minilm", config=FinetuneConfig(strategy="top-2", lp_ft=True))  # doctest: +SKIP
    """

    from tlcache.embed import DEFAULT_BACKBONES, check_images

    config = config or FinetuneConfig()
    config.validate()
    started = time.perf_counter()
    src = source if isinstance(source, Source) else load_source(source, **(source_options or {}))
    bb = create_backbone(backbone or DEFAULT_BACKBONES[src.modality], **backbone_options)
    if bb.modality != src.modality:
        raise UserError(f"backbone {bb.name} embeds {bb.modality}s but {src.path} holds {src.modality}s")
    if src.modality == "text" and config.mixup:
        raise UserError(f"--mixup blends images, and {src.path} holds texts; drop --mixup")
    if bb.name.startswith("torchvision:") and bb.layer != "penultimate":
        raise UserError(f"finetune takes {bb.name}'s penultimate layer only; drop --layer")
    splits = _splits(src, test, test_fraction, config, source_options)
    if src.modality == "image":
        test_items = (splits.test_source or src).items
        check_images([src.items[i] for i in np.concatenate([splits.rows["train"], splits.rows["val"]])])
        check_images([test_items[i] for i in splits.rows["test"]])
    out_dir = Path(out) if out is not None else Path("runs") / f"finetune-{_slug(bb.name)}-{config.strategy}"
    identity = {"config": asdict(config), "backbone_spec": bb.spec, "data": splits.fingerprint(src)}
    state = _start_or_resume(out_dir, identity, resume)

    torch_device = resolve_device(device)
    bb.precision = resolve_precision(config.precision, torch_device)
    bb.model, bb.device = bb._build().to(torch_device), torch_device
    model = Classifier(bb, len(splits.classes), config.seed)
    model.check_strategy(config.strategy)
    model.module["head"].to(torch_device)
    data = _Data(src, splits, bb, config, num_workers)
    if state is None and config.lp_ft:
        _warm_start(model, src, splits, bb, config, cache, device)
    trainer = _Trainer(model, data, config, out_dir, progress)
    history = trainer.run(state, identity)

    logits = trainer.predict("test")
    y_test = splits.labels["test"]
    y_pred = logits.argmax(axis=1)
    seconds = time.perf_counter() - started
    best = max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))
    report = {
        "head": f"finetune {config.strategy}",
        "backbone": bb.name,
        "dim": bb.dim,
        "source": str(Path(src.path).resolve()),
        "test": splits.test_description,
        "seed": config.seed,
        "n_train": int(len(splits.rows["train"])),
        "n_val": int(len(splits.rows["val"])),
        "n_test": int(len(y_test)),
        "classes": splits.classes,
        "fit_seconds": round(seconds, 2),
        "metrics": classification_metrics(y_test, y_pred, splits.classes),
        "finetune": {
            "strategy": config.strategy,
            "lp_ft": config.lp_ft,
            "epochs_run": len(history),
            "best_epoch": best["epoch"],
            "best_val_accuracy": best["val_accuracy"],
            "history": history,
            "config": asdict(config),
            "precision": bb.precision,
            "device": str(torch_device),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _save_model(model, bb, splits.classes, config, report, out_dir)
    write_report(report, out_dir)
    (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # the run is complete: the model files replace it
    return FinetuneRun(out_dir, report)


@dataclass
class _Splits:
    classes: list[str]
    rows: dict[str, np.ndarray]  # train / val / test -> rows of their source
    labels: dict[str, np.ndarray]
    test_source: Source | None
    test_description: str

    def fingerprint(self, src: Source) -> dict:
        return {
            "source": src.fingerprint,
            "test": self.test_source.fingerprint if self.test_source is not None else self.test_description,
            "classes": self.classes,
        }


def _splits(src: Source, test, test_fraction: float, config: FinetuneConfig, source_options: dict | None) -> _Splits:
    labels = np.asarray(src.label_indices if src.labels is not None else [-1] * len(src))
    labelled = np.flatnonzero(labels >= 0)
    classes = src.class_names
    if len(classes) < 2:
        raise UserError(f"{src.path}: fine-tuning needs labelled items of two classes or more")
    test_source = None
    if test is not None:
        test_source = test if isinstance(test, Source) else load_source(test, **(source_options or {}))
        test_labels = np.asarray(test_source.label_indices if test_source.labels is not None else [])
        test_rows = np.flatnonzero(test_labels >= 0)
        unknown = sorted(set(test_source.class_names) - set(classes))
        if unknown or not len(test_rows):
            raise UserError(
                f"test source {test_source.path} has no labelled items or classes the training source lacks "
                f"({', '.join(unknown[:5])}); give it the training source's classes"
            )
        remap = np.array([classes.index(name) for name in test_source.class_names])
        y_test = remap[test_labels[test_rows]]
        train_rows, description = labelled, f"source {test_source.path}"
    else:
        if not 0 < test_fraction < 1:
            raise UserError(f"--test-fraction {test_fraction} must be between 0 and 1 (exclusive)")
        train_rows, test_rows = _stratified(labelled, labels[labelled], test_fraction, config.seed, src)
        y_test = labels[test_rows]
        description = f"{test_fraction:g} held out, stratified, seed {config.seed}"
    train_rows, val_rows = _stratified(train_rows, labels[train_rows], config.val_fraction, config.seed + 1, src)
    return _Splits(
        classes,
        {"train": train_rows, "val": val_rows, "test": test_rows},
        {"train": labels[train_rows], "val": labels[val_rows], "test": y_test},
        test_source,
        description,
    )


def _stratified(rows: np.ndarray, y: np.ndarray, fraction: float, seed: int, src: Source):
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(rows, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise UserError(f"{src.path}: cannot hold out {fraction:g} of {len(rows)} items by class ({exc})") from None
    return np.sort(kept), np.sort(held)


class _Data:
    """Batches of (inputs on the device, labels, positions) for each split: images decoded and augmented (in
    DataLoader workers on a GPU), texts tokenised per batch in buckets of similar length."""

    def __init__(self, src: Source, splits: _Splits, bb: Backbone, config: FinetuneConfig, workers: int | None):
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
        items = self._items(split)
        labels = self.splits.labels[split]
        if self.src.modality == "image":
            yield from self._image_batches(items, labels, epoch)
        else:
            if split not in self._lengths:
                self._lengths[split] = np.asarray(self.bb.token_lengths(items))
            yield from self._text_batches(items, labels, self._lengths[split], epoch)

    def _items(self, split: str) -> list:
        source = self.splits.test_source if split == "test" and self.splits.test_source is not None else self.src
        return [source.items[i] for i in self.splits.rows[split]]

    def _order(self, n: int, epoch: int) -> np.ndarray:
        """The shuffled training order of an epoch, fixed by (seed, epoch)."""
        return np.random.default_rng([self.config.seed, epoch]).permutation(n)[: n - self._dropped()]

    def _image_batches(self, paths: list, labels: np.ndarray, epoch: int | None):
        import torch

        from tlcache.embed import default_workers

        train = epoch is not None
        transform = _train_transform(self.bb, self.config.augment) if train else self.bb.transform()
        dataset = _Images(paths, transform, self.config.seed, epoch)
        order = self._order(len(paths), epoch) if train else np.arange(len(paths))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            sampler=order.tolist(),
            num_workers=default_workers(len(paths), self.bb.device) if self.workers is None else self.workers,
            pin_memory=self.bb.device.type == "cuda",
        )
        start = 0
        for pixels in loader:
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


class _Images:
    """Image files as tensors; in training, each (epoch, item) gets its own seeded augmentation."""

    def __init__(self, paths: list, transform, seed: int, epoch: int | None):
        self.paths, self.transform, self.seed, self.epoch = paths, transform, seed, epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        from tlcache.embed import read_rgb

        rgb = read_rgb(self.paths[index])
        if self.epoch is None:
            return self.transform(rgb)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
            return self.transform(rgb)


def _train_transform(bb: ImageBackbone, augment: list[str]):
    """The backbone's preprocessing with the chosen augmentations: ``crop`` (random resized crop, 60-100% of the
    area), ``shift`` (a translation of up to 10% of the side, the border filled black: for centred items that a
    crop would cut into), ``flip`` (horizontal), ``color`` (brightness, contrast, saturation 0.2), ``rotate`` (up
    to 10 degrees), ``erase`` (random erasing of a patch, p 0.25)."""
    from torchvision import transforms

    size = bb.image_size
    steps = []
    if "crop" in augment:
        steps.append(transforms.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True))
    else:
        steps += [transforms.Resize(round(size / bb.crop_ratio)), transforms.CenterCrop(size)]
    if "shift" in augment:
        steps.append(transforms.RandomAffine(degrees=0, translate=(0.1, 0.1)))
    if "flip" in augment:
        steps.append(transforms.RandomHorizontalFlip())
    if "color" in augment:
        steps.append(transforms.ColorJitter(0.2, 0.2, 0.2))
    if "rotate" in augment:
        steps.append(transforms.RandomRotation(10))
    steps += [transforms.ToTensor(), transforms.Normalize(bb.mean, bb.std)]
    if "erase" in augment:
        steps.append(transforms.RandomErasing(p=0.25))
    return transforms.Compose(steps)


def _warm_start(model: Classifier, src: Source, splits: _Splits, bb: Backbone, config, cache, device: str) -> None:
    """LP-FT: fit `fit-head`'s logistic regression (standardisation + swept C) on the frozen features of the
    training split (those that vary), and copy it, scaler folded in, into the classifier."""
    import torch

    from tlcache.embed import embed_source
    from tlcache.heads import make_head
    from tlcache.store import FeatureStore

    frozen = create_backbone(**bb.spec)
    train = src.subset(splits.rows["train"])
    result = embed_source(train, frozen, out=cache, precision=bb.precision, device=device, progress=False)
    X = FeatureStore(result.path).features()
    keep = live_features(X)
    pipeline = make_head("logreg", config.seed).fit(X[:, keep], splits.labels["train"])
    weight, bias = fold_probe(pipeline, len(splits.classes), keep)
    head = model.module["head"]
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def live_features(X: np.ndarray) -> np.ndarray:
    """A mask of the features that vary: a spread below ``DEAD_SPREAD`` times the widest one's is the rounding
    residue of a dead unit (three of MiniLM's 384 dimensions hold values near 1e-33 and 1e-8 on every text).
    Standardised, such a feature looks as informative as any; folded back, its weight would be near 1e30, and the
    first change fine-tuning makes to it would turn the logits and gradients infinite."""
    spread = X.std(axis=0, dtype=np.float64)
    return spread >= DEAD_SPREAD * spread.max()


def fold_probe(pipeline, n_classes: int, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (weight, bias) of one linear layer over all the raw features that scores like ``pipeline`` (a fitted
    standardise + logistic regression) on the features ``keep`` selects, the others at weight 0, for classes
    0 .. n_classes - 1 (a class the probe never saw scores -1e4: never predicted)."""
    scaler, logreg = pipeline[0], pipeline[-1]
    coef, intercept = logreg.coef_, logreg.intercept_
    if coef.shape[0] == 1:  # binary: the score of class 1 against a fixed 0 for class 0
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    full_coef = np.zeros((n_classes, coef.shape[1]))
    full_intercept = np.full(n_classes, -1e4)
    full_coef[logreg.classes_], full_intercept[logreg.classes_] = coef, intercept
    weight = np.zeros((n_classes, len(keep)))
    weight[:, keep] = full_coef / scaler.scale_
    bias = full_intercept - weight[:, keep] @ scaler.mean_
    return weight, bias


class _Trainer:
    def __init__(self, model: Classifier, data: _Data, config: FinetuneConfig, out_dir: Path, progress: bool):
        self.model, self.data, self.config, self.out_dir, self.progress = model, data, config, out_dir, progress
        self.stages = ([("head", config.head_epochs)] if config.head_epochs and config.strategy != "head" else []) + [
            (config.strategy, config.epochs)
        ]

    def run(self, state: dict | None, identity: dict) -> list[dict]:
        import torch

        total = sum(epochs for _, epochs in self.stages)
        history: list[dict] = []
        best: dict | None = None
        stale = 0
        epoch = 0
        optimizer = scheduler = None
        if state is not None:
            self.model.module.load_state_dict(state["model"])
            history, best, stale, epoch = state["history"], state["best"], state["stale"], state["epoch"]
        for stage, (strategy, epochs) in enumerate(self.stages):
            first = sum(e for _, e in self.stages[:stage])
            if epoch >= first + epochs:
                continue
            if stale and self.config.patience and stale >= self.config.patience:
                break
            self.model.freeze(strategy)
            optimizer, scheduler = self._optimizer(strategy, epochs)
            if state is not None and state["stage"] == stage:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
            bb = self.model.bb
            scaler = torch.amp.GradScaler(bb.device.type, enabled=bb.precision == "fp16" and bb.device.type == "cuda")
            while epoch < first + epochs:
                loss = self._epoch(epoch, total, strategy, optimizer, scheduler, scaler)
                val = self._evaluate()
                record = {"epoch": epoch + 1, "stage": strategy, "train_loss": loss, **val}
                history.append(record)
                improved = best is None or val["val_accuracy"] > best["val_accuracy"]
                if improved:
                    best = {"epoch": epoch + 1, "val_accuracy": val["val_accuracy"], "state": _copy_state(self.model)}
                main_stage = stage == len(self.stages) - 1
                stale = 0 if improved or not main_stage else stale + 1
                epoch += 1
                self._say(record, total, improved)
                self._checkpoint(identity, epoch, stage, history, best, stale, optimizer, scheduler)
                if main_stage and self.config.patience and stale >= self.config.patience and epoch < total:
                    self._say_stop(epoch, best)
                    break
        self.model.module.load_state_dict(best["state"])
        return history

    def _optimizer(self, strategy: str, epochs: int):
        import torch

        groups = self.model.param_groups(strategy, self.config)
        optimizer = torch.optim.AdamW(groups, lr=self.config.lr)
        steps = epochs * math.ceil(self.data.n_batches("train") / self.config.accumulate)
        warmup = int(self.config.warmup * steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _epoch(self, epoch: int, total: int, strategy: str, optimizer, scheduler, scaler) -> float:
        import torch
        from tqdm.auto import tqdm

        torch.manual_seed(int(np.random.SeedSequence([self.config.seed, epoch, 2]).generate_state(1)[0]))  # dropout
        self.model.train_mode(strategy, self.config.norm_stats)
        trainable = [p for group in optimizer.param_groups for p in group["params"]]
        n_batches = self.data.n_batches("train")
        losses = []
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch + 1}/{total} ({strategy})",
            unit="batch",
            disable=None if self.progress else True,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )
        with bar:
            for index, (inputs, labels, _) in enumerate(self.data.batches("train", epoch)):
                targets = torch.as_tensor(labels, device=self.model.bb.device)
                inputs, weight = self._mix(inputs, epoch, index)
                with self.model.bb.autocast():
                    logits = self.model(inputs).float()
                loss = weight * self._loss(logits, targets)
                if weight < 1:
                    loss = loss + (1 - weight) * self._loss(logits, targets.roll(1))
                scaler.scale(loss / self.config.accumulate).backward()
                if (index + 1) % self.config.accumulate == 0 or index + 1 == n_batches:
                    if self.config.clip:
                        scaler.unscale_(optimizer)
                        norm = torch.nn.utils.clip_grad_norm_(trainable, self.config.clip)
                        if not scaler.is_enabled() and not torch.isfinite(norm):  # fp16's scaler skips such steps
                            self._diverged(epoch, index, "the gradients")
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]) and not scaler.is_enabled():
                    self._diverged(epoch, index, "the loss")
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
                bar.update()
        return float(np.mean(losses))

    def _diverged(self, epoch: int, index: int, what: str) -> None:
        """Stop a run whose numbers overflowed: a clipped step would silently be a zero step (the clip factor of an
        infinite norm is 0) and an unclipped one would fill the weights with NaN."""
        raise UserError(
            f"fine-tuning diverged: {what} turned infinite or NaN at epoch {epoch + 1}, batch {index + 1}; "
            "start again with a lower --lr or --head-lr (and another --out)"
        )

    def _loss(self, logits, targets):
        import torch

        return torch.nn.functional.cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)

    def _mix(self, inputs, epoch: int, index: int):
        """Mixup (Zhang et al. 2018) for images: each item of the batch blends with its neighbour (the batch is
        already shuffled) at a weight drawn from Beta(alpha, alpha), seeded by (seed, epoch, batch); the loss
        blends their labels at the same weight. Without mixup, the batch as it is at weight 1."""
        if not self.config.mixup:
            return inputs, 1.0
        rng = np.random.default_rng([self.config.seed, epoch, index, 3])
        weight = float(rng.beta(self.config.mixup, self.config.mixup))
        return weight * inputs + (1 - weight) * inputs.roll(1, dims=0), weight

    def _evaluate(self) -> dict[str, float]:
        import torch

        logits = self.predict("val")
        labels = self.data.splits.labels["val"]
        loss = torch.nn.functional.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels))
        return {"val_loss": float(loss), "val_accuracy": float((logits.argmax(axis=1) == labels).mean())}

    def predict(self, split: str) -> np.ndarray:
        """Logits (float32) for every item of a split, in the split's order."""
        import torch

        self.model.module.eval()
        logits = np.zeros((len(self.data.splits.rows[split]), len(self.data.splits.classes)), dtype=np.float32)
        with torch.inference_mode(), self.model.bb.autocast():
            for inputs, _, positions in self.data.batches(split):
                logits[positions] = self.model(inputs).float().cpu().numpy()
        return logits

    def _checkpoint(self, identity, epoch, stage, history, best, stale, optimizer, scheduler) -> None:
        import torch

        state = {
            "identity": identity,
            "epoch": epoch,
            "stage": stage,
            "history": history,
            "best": best,
            "stale": stale,
            "model": self.model.module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        partial = self.out_dir / (CHECKPOINT_FILE + ".partial")
        torch.save(state, partial)
        os.replace(partial, self.out_dir / CHECKPOINT_FILE)  # a checkpoint is whole or absent, never half-written

    def _say(self, record: dict, total: int, improved: bool) -> None:
        if self.progress:
            print(
                f"epoch {record['epoch']}/{total} ({record['stage']}): train loss {record['train_loss']:.4f}, "
                f"val loss {record['val_loss']:.4f}, val accuracy {record['val_accuracy']:.4f}"
                + (" (best)" if improved else ""),
                file=sys.stderr,
            )

    def _say_stop(self, epoch: int, best: dict) -> None:
        if self.progress:
            print(
                f"early stop after epoch {epoch}: no better validation accuracy in {self.config.patience} epochs; "
                f"restoring epoch {best['epoch']}",
                file=sys.stderr,
            )


def _copy_state(model: Classifier) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.module.state_dict().items()}


def _start_or_resume(out_dir: Path, identity: dict, resume: bool) -> dict | None:
    """The checkpoint to continue from (``resume``), or None for a fresh start; never overwrites a run's work."""
    import torch

    checkpoint = out_dir / CHECKPOINT_FILE
    if not resume:
        if (out_dir / CONFIG_FILE).exists():
            raise UserError(f"{out_dir} holds a finished fine-tune; pick another --out, or delete it to redo it")
        if checkpoint.exists():
            raise UserError(
                f"{out_dir} holds an interrupted fine-tune; add --resume to continue it or pick another --out"
            )
        return None
    if not checkpoint.exists():
        done = (out_dir / CONFIG_FILE).exists()
        raise UserError(
            f"{out_dir} holds {'a finished fine-tune' if done else 'no checkpoint'}; nothing to resume "
            "(run without --resume, with another --out)"
        )
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state["identity"] != identity:
        changed = sorted(k for k in identity if state["identity"].get(k) != identity[k])
        raise UserError(
            f"{checkpoint} was made with other settings ({', '.join(changed)} differ); resume with the same "
            "command, or start afresh with another --out"
        )
    return state


def _save_model(model: Classifier, bb: Backbone, classes: list[str], config, report: dict, out_dir: Path) -> None:
    """The body as safetensors (a ``save_pretrained`` folder for text encoders), the classifier beside it, and
    finetune.json: what ``finetuned:<out_dir>`` needs to load it as a backbone."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    body = model.module["body"]
    saved = {"format": FORMAT, "modality": bb.modality, "backbone": bb.name, "backbone_spec": bb.spec}
    if bb.modality == "text":
        from tlcache.backbones.transformers_text import quiet_transformers

        with quiet_transformers():
            body.save_pretrained(out_dir / TEXT_BODY, safe_serialization=True)
            bb.tokenizer.save_pretrained(out_dir / TEXT_BODY)
        saved["text"] = {"normalize": bb.normalize, "max_length": bb.max_length, "key_name": bb.key_name}
    else:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in body.state_dict().items()}
        save_file(state, str(out_dir / IMAGE_BODY))
    head = model.module["head"]
    save_file({"weight": head.weight.detach().cpu(), "bias": head.bias.detach().cpu()}, str(out_dir / HEAD_FILE))
    saved.update(
        {
            "classes": classes,
            "config": asdict(config),
            "best_epoch": report["finetune"]["best_epoch"],
            "test_accuracy": report["metrics"]["accuracy"],
            "torch_version": _torch_version(),
            "created": report["created"],
        }
    )
    (out_dir / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(name).name or name)


def _torch_version() -> str:
    import torch

    return torch.__version__
