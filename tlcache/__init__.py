"""tlcache: transfer learning with a feature cache.

Embed a dataset once with a frozen pretrained backbone into an HDF5 feature store, then fit scikit-learn heads
on the cached vectors in seconds, or fine-tune when frozen features fall short. Each command of the CLI is one
function here; ``__all__`` is the public API the README shows.

>>> import tlcache
>>> result = tlcache.embed_source("reviews.csv", "minilm")                 # doctest: +SKIP
>>> run = tlcache.fit_head(result.path, "logreg", test_fraction=0.2)       # doctest: +SKIP
>>> run.accuracy                                                           # doctest: +SKIP
"""

from tlcache.all_heads import fit_all_heads
from tlcache.backbones import Backbone, create_backbone, list_backbones
from tlcache.cache import collect_garbage, list_stores
from tlcache.compare import CompareResult, compare
from tlcache.embed import EmbedResult, embed_source
from tlcache.errors import UserError
from tlcache.export import export_run
from tlcache.exported import load_exported
from tlcache.finetune import FinetuneConfig, FinetuneRun, finetune
from tlcache.heads import fit_head, make_head
from tlcache.pipeline import PipelineResult, run_pipeline
from tlcache.predict import PredictResult, predict, predict_exported
from tlcache.runs import HeadRun, load_head, render_report
from tlcache.store import FeatureStore

__version__ = "0.1.0"


def __getattr__(name: str):
    # Embedder needs scikit-learn at import time; load it on first use so `import tlcache` (and the CLI) stay fast.
    if name == "Embedder":
        from tlcache.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'tlcache' has no attribute {name!r}")


__all__ = [
    "Backbone",
    "CompareResult",
    "EmbedResult",
    "Embedder",
    "FeatureStore",
    "FinetuneConfig",
    "FinetuneRun",
    "HeadRun",
    "PipelineResult",
    "PredictResult",
    "UserError",
    "collect_garbage",
    "compare",
    "create_backbone",
    "embed_source",
    "export_run",
    "finetune",
    "fit_all_heads",
    "fit_head",
    "list_backbones",
    "list_stores",
    "load_exported",
    "load_head",
    "make_head",
    "predict",
    "predict_exported",
    "render_report",
    "run_pipeline",
]
