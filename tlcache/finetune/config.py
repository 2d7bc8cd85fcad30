"""Everything that changes a fine-tune's result, each setting stated once: its type, default, help and bounds live on
its field here, and the command line's options are made from them (see :func:`tlcache.cli.options.config_options`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from tlcache.backbones.base import PRECISIONS
from tlcache.errors import UserError, check_choice
from tlcache.images import AUGMENTATIONS, DEFAULT_AUGMENT

NORM_STATS = ("frozen", "train")


def setting(default: Any, help: str, **bounds: Any) -> Any:
    """A config field with its help text and, for the command line, its bounds: ``min`` (whole numbers),
    ``choices`` (one of a list) or ``items`` (a comma-separated list of these, or none)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **bounds})
    return field(default=default, metadata={"help": help, **bounds})


@dataclass
class FinetuneConfig:
    """Everything that changes the result of a fine-tune (recorded in the run; ``--resume`` insists on it)."""

    strategy: str = setting(
        "full", "What trains: head (the classifier only), top-K (the body's last K blocks too, e.g. top-2), full."
    )
    epochs: int = setting(3, "Epochs of the main stage.", min=1)
    head_epochs: int = setting(0, "Two-stage schedule: train the classifier alone this many epochs first.", min=0)
    lr: float = setting(5e-5, "Learning rate of the body's top block.")
    head_lr: float = setting(1e-3, "Learning rate of the classifier.")
    layer_decay: float = setting(
        1.0,
        "Discriminative rates: each block further down learns at this times the rate of the one above (e.g. 0.8).",
    )
    warmup: float = setting(0.1, "Fraction of each stage's steps of linear warmup (then cosine decay).")
    weight_decay: float = setting(0.01, "AdamW weight decay (not on biases and norms).")
    clip: float = setting(1.0, "Gradient norm clipping (0: off).")
    batch_size: int = setting(32, "Items per batch.", min=1)
    accumulate: int = setting(1, "Batches per optimiser step.", min=1)
    lp_ft: bool = setting(
        False,
        "Start the classifier from fit-head's logistic regression (LP-FT), fitted on the frozen features of the "
        "training split.",
    )
    augment: list[str] = setting(list(DEFAULT_AUGMENT), "Image augmentations.", items=AUGMENTATIONS)
    mixup: float = setting(
        0.0,
        "Images: mix pairs of training items and their labels at a Beta(alpha, alpha) weight; alpha, e.g. 0.2 "
        "(0: off).",
    )
    label_smoothing: float = setting(0.0, "Label smoothing of the loss, e.g. 0.1.")
    val_fraction: float = setting(0.1, "Training items held out (stratified) for early stopping.")
    patience: int = setting(
        2,
        "Stop after this many epochs without a better validation accuracy (0: never); the best epoch is kept.",
        min=0,
    )
    norm_stats: str = setting(
        "frozen",
        "Batch norms keep their pretrained statistics (frozen; their scales still train) or update them (train).",
        choices=NORM_STATS,
    )
    precision: str = setting(
        "auto",
        "Mixed precision: auto takes bf16 on capable CPUs and GPUs (fp16 with loss scaling on older GPUs).",
        choices=PRECISIONS,
    )
    seed: int = setting(0, "Seed for splits, shuffling, augmentation, dropout and the classifier.")

    def validate(self) -> None:
        top_k(self.strategy)
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{item.name.replace('_', '-')} {value} must be a finite number")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"--seed {self.seed} must be in 0..{2**32 - 1}")
        for name in ("epochs", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} must be 1 or more")
        if self.head_epochs < 0 or self.patience < 0:
            raise UserError("--head-epochs and --patience must be 0 or more")
        if self.lr <= 0 or self.head_lr <= 0 or not 0 < self.layer_decay <= 1:
            raise UserError("--lr and --head-lr must be positive, --layer-decay in (0, 1]")
        if not 0 <= self.warmup < 1 or self.weight_decay < 0 or self.clip < 0:
            raise UserError("--warmup must be in [0, 1), --weight-decay and --clip 0 or more")
        check_choice("--norm-stats", self.norm_stats, NORM_STATS, verb="is not known")
        check_choice("--precision", self.precision, PRECISIONS)
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
