"""Fine-tuning: the backbone and a linear classifier trained together, for when frozen features fall short.

The recipe is the careful one: a strategy that says what trains (``head``, ``top-K`` blocks, or ``full``), an
optional first stage that trains the classifier alone, learning rates that shrink with depth, warmup then cosine
decay, AdamW with weight decay (not on biases and norms), gradient clipping, and early stopping on a validation
split with the best epoch restored. A linear-probe warm start (LP-FT, Kumar et al. 2022) starts the classifier
from the swept logistic regression of `fit-head` on the frozen features.

One job per module: ``config`` (the settings), ``data`` (splits and batches), ``model`` (body and classifier),
``probe`` (the LP-FT warm start), ``trainer`` (the loop, checkpoints and resume), ``run`` (the whole stage).
"""

from tlcache.finetune.config import FinetuneConfig
from tlcache.finetune.run import FinetuneRun, finetune

__all__ = ["FinetuneConfig", "FinetuneRun", "finetune"]
