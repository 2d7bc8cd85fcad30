"""tlcache: transfer learning with a feature cache.

Embed a dataset once with a frozen pretrained backbone into an HDF5 feature store, then fit scikit-learn heads
on the cached vectors in seconds.

>>> import tlcache
>>> result = tlcache.embed_source("reviews.csv", "minilm")                 # doctest: +SKIP
>>> run = tlcache.fit_head(result.path, "logreg", test_fraction=0.2)       # doctest: +SKIP
>>> run.accuracy                                                           # doctest: +SKIP
"""

from tlcache.backbones import Backbone, create_backbone, list_backbones
from tlcache.embed import EmbedResult, embed_items, embed_source
from tlcache.errors import UserError
from tlcache.heads import HEADS, HeadRun, fit_head, load_head, make_head
from tlcache.predict import PredictResult, predict
from tlcache.sources import Source, load_source, source_from_items
from tlcache.store import FeatureStore, cache_key, default_cache_dir

__version__ = "0.1.0"


def __getattr__(name: str):
    # Embedder needs scikit-learn at import time; load it on first use so `import tlcache` (and the CLI) stay fast.
    if name == "Embedder":
        from tlcache.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'tlcache' has no attribute {name!r}")


__all__ = [
    "HEADS",
    "Backbone",
    "EmbedResult",
    "Embedder",
    "FeatureStore",
    "HeadRun",
    "PredictResult",
    "Source",
    "UserError",
    "cache_key",
    "create_backbone",
    "default_cache_dir",
    "embed_items",
    "embed_source",
    "fit_head",
    "list_backbones",
    "load_head",
    "load_source",
    "source_from_items",
    "make_head",
    "predict",
]
