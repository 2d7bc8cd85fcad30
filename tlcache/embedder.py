"""tlcache as a scikit-learn transformer: texts or image paths in, cached features out.

>>> from sklearn.linear_model import LogisticRegression
>>> from sklearn.pipeline import make_pipeline
>>> model = make_pipeline(Embedder("minilm"), LogisticRegression())     # doctest: +SKIP
>>> model.fit(texts, labels).predict(["a fine film"])                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from tlcache.backbones import Backbone, create_backbone, resolve_device
from tlcache.backbones.base import resolve_precision
from tlcache.embed import embed_source
from tlcache.errors import UserError
from tlcache.paths import default_cache_dir
from tlcache.reuse import donor_stores, rows_from_donors
from tlcache.sources import source_from_items
from tlcache.store import FeatureStore, cache_key, config_key, resolve_store_path


class Embedder(TransformerMixin, BaseEstimator):
    """Embeds items with a frozen backbone, through tlcache's feature cache.

    ``X`` is a sequence of texts (text backbones) or of image file paths (image backbones); ``transform`` returns a
    float32 array (n_items, dim). Items already embedded with the same backbone config are read from the cache,
    so cross-validation and repeated fits embed each item once. The backbone's model is loaded on first use and
    is not pickled: a pickled pipeline stays small and reloads the weights where it is unpickled.

    Parameters mirror ``tlcache embed``: ``backbone`` (default ``minilm``), ``weights``, ``layer``, ``pooling``,
    ``image_size``, ``crop_ratio``, ``cache_dir`` (default ``$TLCACHE_HOME``), ``batch_size``, ``device``, ``dtype``,
    ``precision``.
    """

    def __init__(
        self,
        backbone: str = "minilm",
        *,
        weights: str | None = None,
        layer: str | None = None,
        pooling: str | None = None,
        image_size: int | None = None,
        crop_ratio: float | None = None,
        cache_dir: str | None = None,
        batch_size: int | None = None,
        device: str = "auto",
        dtype: str = "float32",
        precision: str = "auto",
    ):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.image_size = image_size
        self.crop_ratio = crop_ratio
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.precision = precision

    def _backbone_options(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "layer": self.layer,
            "pooling": self.pooling,
            "image_size": self.image_size,
            "crop_ratio": self.crop_ratio,
        }

    def _get_backbone(self) -> Backbone:
        if getattr(self, "_backbone", None) is None:
            backbone = create_backbone(self.backbone, **self._backbone_options())
            # At its precision from the start, so the model it loads is kept for the next transform.
            self._backbone = backbone.at_precision(resolve_precision(self.precision, resolve_device(self.device)))
        return self._backbone

    def fit(self, X, y=None) -> Embedder:
        """Check the backbone and the input; nothing is learned (the backbone is frozen)."""
        self._backbone = None  # parameters may have changed since the last fit
        backbone = self._get_backbone()
        _items(X, backbone.modality)
        self.modality_ = backbone.modality
        self.dim_ = backbone.dim
        self.backbone_key_ = backbone.key_config()
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "dim_")
        backbone = self._get_backbone()
        items = _items(X, backbone.modality)
        return embed_items(
            items,
            backbone,
            out=self.cache_dir,
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
            precision=self.precision,
        )

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "dim_")
        prefix = self.backbone.replace(":", "_").replace("/", "_")
        return np.array([f"{prefix}_{i}" for i in range(self.dim_)], dtype=object)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_backbone", None)  # the model reloads from its weights where the pipeline is unpickled
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = True
        return tags


def _items(X, modality: str) -> list:
    """A 1-D sequence of texts or paths; a single column of a 2-D array or DataFrame is taken too."""
    if hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:  # a one-column DataFrame
        if X.shape[1] != 1:
            raise UserError(f"Embedder takes one column of {modality}s, got {X.shape[1]} columns")
        X = X.iloc[:, 0]
    array = np.asarray(X, dtype=object)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise UserError(f"Embedder takes a 1-D sequence of {modality}s, got an array of shape {array.shape}")
    if not len(array):
        raise UserError("Embedder got no items")
    if modality == "text" and not all(isinstance(item, str) for item in array):
        raise UserError("a text backbone takes strings; convert the column to str first")
    return list(array)


def embed_items(
    items: Sequence,
    backbone: str | Backbone,
    *,
    out: str | Path | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    precision: str = "auto",
    progress: bool = False,
    **backbone_options,
) -> np.ndarray:
    """Features (float32, one row per item, in order) for items in memory: texts, or paths of image files.

    Items that a store of the same config in ``out`` (default ``$TLCACHE_HOME``) already holds are read from it;
    only the others are embedded, into a store of their own. When every item is cached nothing is written.
    """
    bb = backbone if isinstance(backbone, Backbone) else create_backbone(backbone, **backbone_options)
    bb = bb.at_precision(resolve_precision(precision, resolve_device(device)))
    src = source_from_items(items, bb.modality)
    config = config_key(bb.key_config(), dtype, None)
    folder = Path(out) if out is not None else default_cache_dir()
    probe = resolve_store_path(folder, bb.name, config, cache_key(src.fingerprint, config))
    features = np.zeros((len(src), bb.dim), dtype=np.float32)
    found = np.zeros(len(src), dtype=bool)
    donors = donor_stores(probe, bb, config) if folder.is_dir() else []
    for targets, rows, _ in rows_from_donors(src.fingerprints, donors):
        features[targets] = rows
        found[targets] = True
    if not found.all():
        first_of_each = {}
        for row in np.flatnonzero(~found):
            first_of_each.setdefault(src.fingerprints[row], row)  # identical items are embedded once
        missing = src.subset(sorted(first_of_each.values()))
        result = embed_source(
            missing,
            bb,
            out=folder,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            precision=bb.precision,
            progress=progress,
            on_error="fail",  # one row of features per item given
        )
        store = FeatureStore(result.path)
        computed = dict(zip(store.fingerprints(), store.features()))
        for row in np.flatnonzero(~found):
            features[row] = computed[src.fingerprints[row]]
    return features
