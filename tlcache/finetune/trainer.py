"""The training loop of a fine-tune: stages (the classifier alone first, if asked, then the strategy), AdamW with
warmup and cosine decay, clipping, mixed precision, mixup, early stopping with the best epoch restored, and a
checkpoint at the end of every epoch, from which ``resume`` continues to what an uninterrupted run gives: each
epoch's shuffling, augmentation and dropout are seeded by (seed, epoch), not by what ran before."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

from tlcache.backbones.finetuned import holds_finetuned_model
from tlcache.errors import UserError, differing_settings
from tlcache.finetune.config import FinetuneConfig
from tlcache.finetune.data import FinetuneData
from tlcache.finetune.model import FinetuneModel
from tlcache.images import item_seed

CHECKPOINT_FILE = "checkpoint.pt"


class Trainer:
    """Trains a model on its data as the config says, writing a checkpoint to ``out_dir`` after every epoch."""

    def __init__(self, model: FinetuneModel, data: FinetuneData, config: FinetuneConfig, out_dir: Path, progress: bool):
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
                    best = {"epoch": epoch + 1, "val_accuracy": val["val_accuracy"], "state": self.model.copy_state()}
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

        torch.manual_seed(item_seed(self.config.seed, epoch, 2))  # dropout
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


def start_or_resume(out_dir: Path, identity: dict, resume: bool) -> dict | None:
    """The checkpoint to continue from (``resume``), or None for a fresh start; never overwrites a run's work."""
    import torch

    checkpoint = out_dir / CHECKPOINT_FILE
    if not resume:
        if holds_finetuned_model(out_dir):
            raise UserError(f"{out_dir} holds a finished fine-tune; pick another --out, or delete it to redo it")
        if checkpoint.exists():
            raise UserError(
                f"{out_dir} holds an interrupted fine-tune; add --resume to continue it or pick another --out"
            )
        return None
    if not checkpoint.exists():
        done = holds_finetuned_model(out_dir)
        raise UserError(
            f"{out_dir} holds {'a finished fine-tune' if done else 'no checkpoint'}; nothing to resume "
            "(run without --resume, with another --out)"
        )
    try:  # tensors and plain data only: a checkpoint that names any function or class is refused, never run
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"identity", "model", "optimizer"} <= state.keys():
            raise ValueError("not a checkpoint of tlcache's")
    except Exception as exc:  # a damaged or foreign file raises almost anything
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{checkpoint} cannot be resumed safely ({reason}); start afresh with another --out") from None
    if state["identity"] != identity:
        # The fine-tune's settings by their options ("--epochs differs"); the data and backbone by name.
        changed = differing_settings(
            state["identity"],
            identity,
            lambda outer, inner: f"--{inner.replace('_', '-')}" if outer == "config" else f"{outer}.{inner}",
        )
        raise UserError(
            f"{checkpoint} was made with other settings ({changed}); resume with the same command, or start afresh "
            "with another --out"
        )
    return state
