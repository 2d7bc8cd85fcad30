"""LP-FT's warm start (Kumar et al. 2022): the classifier starts as the linear probe of `fit-head`, fitted on the
frozen features of the training split, with its standardisation folded into the weights."""

from __future__ import annotations

import numpy as np

from tlcache.backbones import Backbone, create_backbone
from tlcache.embed import embed_source
from tlcache.finetune.config import FinetuneConfig
from tlcache.finetune.data import Splits
from tlcache.finetune.model import FinetuneModel
from tlcache.heads import make_head
from tlcache.sources import Source
from tlcache.store import FeatureStore


def warm_start(
    model: FinetuneModel, src: Source, splits: Splits, bb: Backbone, config: FinetuneConfig, cache, device: str
) -> None:
    """Fit `fit-head`'s logistic regression (dead columns dropped, standardisation, swept C) on the frozen
    features of the training split, embedded through the cache in ``cache``, and copy it, scaler folded in, into
    the model's classifier."""
    import torch

    frozen = create_backbone(**bb.spec)
    train = src.subset(splits.rows["train"])
    result = embed_source(train, frozen, out=cache, precision=bb.precision, device=device, progress=False)
    result.refused_if_skipped(skip_option=False)
    X = FeatureStore(result.path).features()
    pipeline = make_head("logreg", config.seed).fit(X, splits.labels["train"])
    weight, bias = fold_probe(pipeline, len(splits.classes), X.shape[1])
    head = model.module["head"]
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def fold_probe(pipeline, n_classes: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """The (weight, bias) of one linear layer over all ``n_features`` raw features that scores like ``pipeline``
    (a fitted logreg head: dead columns dropped, standardisation, logistic regression), the dropped features at
    weight 0, for classes 0 .. n_classes - 1 (a class the probe never saw scores -1e4: never predicted). Dead
    columns must stay at 0: folded back, a weight near 1e30 would turn the first fine-tuning step's logits and
    gradients infinite (three of MiniLM's 384 dimensions hold values near 1e-33 and 1e-8 on every text)."""
    dropper, scaler, logreg = pipeline[0], pipeline[1], pipeline[-1]
    keep = dropper.kept_
    coef, intercept = logreg.coef_, logreg.intercept_
    if coef.shape[0] == 1:  # binary: the score of class 1 against a fixed 0 for class 0
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    full_coef = np.zeros((n_classes, coef.shape[1]))
    full_intercept = np.full(n_classes, -1e4)
    full_coef[logreg.classes_], full_intercept[logreg.classes_] = coef, intercept
    weight = np.zeros((n_classes, n_features))
    weight[:, keep] = full_coef / scaler.scale_
    bias = full_intercept - weight[:, keep] @ scaler.mean_
    return weight, bias
