"""The model a fine-tune trains: a backbone's body with a linear classifier on its features, and which of its
parameters train, in which mode, at which learning rate."""

from __future__ import annotations

from tlcache.backbones import Backbone
from tlcache.errors import UserError
from tlcache.finetune.config import FinetuneConfig, top_k


class FinetuneModel:
    """A backbone's trainable body (see :meth:`Backbone.load_trainable`) and a linear classifier on its features,
    on ``device``. ``module`` holds both (``body`` and ``head``) for optimisers and state dicts; calling the model
    gives the classifier's logits."""

    def __init__(self, bb: Backbone, n_classes: int, seed: int = 0, device="auto"):
        import torch

        self.bb = bb
        body = bb.load_trainable(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = torch.nn.Linear(bb.dim, n_classes)
        self.module = torch.nn.ModuleDict({"body": body, "head": head.to(bb.device)})
        self.blocks = bb.blocks(body)

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

    def copy_state(self) -> dict:
        """A detached copy of every weight (the best epoch's, kept to be restored)."""
        return {name: tensor.detach().clone() for name, tensor in self.module.state_dict().items()}
