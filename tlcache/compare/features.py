"""Candidate features for the frozen heads (`compare --layers`, `--backbone A,B`): layers (and poolings) of the
backbone and the default features of further backbones, each embedded once through the cache. Each frozen cell
chooses among them on validation items carved from its own training items (the head fitted on the rest), never on
the test items; the choice and its scores are recorded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlcache.backbones.base import POOLING_CHOICES
from tlcache.errors import UserError
from tlcache.heads import make_head
from tlcache.store import FeatureStore

DEFAULT = "default"  # the features the backbone options give (its default layer and pooling unless set)
AUTO = "auto"  # --layers auto: the candidates the backbone suggests (Backbone.candidate_layers)
VALIDATION_FRACTION = 0.2
SHARED_OPTIONS = ("image_size", "crop_ratio")  # what a further backbone of --backbone A,B takes from the options


@dataclass
class Candidate:
    name: str  # "default", "LAYER" or "LAYER:POOL"
    train: FeatureStore
    test: FeatureStore


def parse_layers(entries: tuple[str, ...], options: dict) -> list[tuple[str, dict]]:
    """(name, backbone options) of each entry of ``--layers``: ``default``, ``LAYER`` or ``LAYER:POOL``."""
    if options.get("layer") is not None or options.get("pooling") is not None:
        raise UserError("--layers lists the candidates itself: give --layer and --pool there (LAYER:POOL), not apart")
    parsed = []
    for entry in entries:
        if entry == DEFAULT:
            parsed.append((DEFAULT, dict(options)))
            continue
        layer, _, pool = entry.partition(":")
        if not layer or (pool and pool not in POOLING_CHOICES):
            raise UserError(
                f"--layers {entry}: give LAYER or LAYER:POOL (POOL one of {', '.join(POOLING_CHOICES)}), or default"
            )
        parsed.append((entry, {**options, "layer": layer, **({"pooling": pool} if pool else {})}))
    if len({name for name, _ in parsed}) != len(parsed):
        raise UserError(f"--layers {','.join(entries)} names a candidate twice")
    return parsed


def wanted_candidates(backbone: str, others: list[str], layers: tuple[str, ...] | None, options: dict) -> list:
    """(name, backbone, options) of every candidate: the layers of ``backbone`` (``auto``: its own suggestions;
    none: its default features only), then the default features of each of ``others``."""
    from tlcache.backbones import create_backbone

    if layers == (AUTO,):
        layers = create_backbone(backbone, **options).candidate_layers()
    wanted = parse_layers(layers, options) if layers else [(DEFAULT, options)]
    return [(name, backbone, layer_options) for name, layer_options in wanted] + other_backbones(others, options)


def other_backbones(names: list[str], options: dict) -> list[tuple[str, str, dict]]:
    """(name, backbone, options) of the further backbones of ``--backbone A,B,...``: their default features, with
    the options that describe the data rather than one model (image size, crop) and none of the first's own
    (weights, layer, pooling)."""
    shared = {k: v for k, v in options.items() if k in SHARED_OPTIONS and v is not None}
    if len(set(names)) != len(names):
        raise UserError(f"--backbone names {', '.join(names)}: a backbone twice")
    return [(name, name, shared) for name in names]


def choose(
    candidates: list[Candidate], method: str, seed: int, rows: np.ndarray, labels: np.ndarray
) -> tuple[Candidate, dict[str, float] | None]:
    """The candidate whose features give ``method`` the best accuracy on validation items held out from ``rows``
    (stratified, ``seed``), the first listed among equals; and each candidate's score. One candidate, or too few
    items to hold out one of each class: the first, unscored."""
    from sklearn.model_selection import train_test_split

    if len(candidates) == 1:
        return candidates[0], None
    y = labels[rows]
    held_share = max(VALIDATION_FRACTION, len(np.unique(y)) / len(rows))
    try:
        fit, held = train_test_split(rows, test_size=held_share, random_state=seed, stratify=y)
    except ValueError:  # a class with a single item: nothing to choose on
        return candidates[0], None
    scores = {}
    for candidate in candidates:
        X = candidate.train.features()
        model = make_head(method, seed, n_train=len(fit)).fit(X[fit], labels[fit])
        scores[candidate.name] = float((model.predict(X[held]) == labels[held]).mean())
    return max(candidates, key=lambda c: scores[c.name]), scores
