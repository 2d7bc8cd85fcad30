"""Frozen features or fine-tuning? `tlcache compare` run as a user would run it, on two tasks, with the peer a user
would otherwise write.

Tasks: Rotten Tomatoes fresh/rotten (the canonical 2000 / 1000 split of DATA.md) with minilm, and Fashion-MNIST
3000 / 1000 with efficientnet-lite0 at 96 px (its default features: the penultimate layer, mean-pooled).
Methods, every one on the same draws of training items and the same test items: the frozen logreg, svm and mlp
heads on features embedded once through the cache, and fine-tuning (FT) and LP-FT (the classifier started from
logreg on the frozen features) at compare's defaults (FinetuneConfig(): the whole network, 3 epochs, learning rate
5e-5 for the body and 1e-3 for the classifier, batches of 32, bf16 where the CPU has it, 10% of each cell's items
held out to choose the epoch). Shots: 4, 16 and 64 labelled items per class, and all of them; seeds 0, 1, 2, each
drawing its own items. Every choice (a head's regularisation, a fine-tune's epoch) is made on validation items
carved from the training items; the test items are scored once per cell. compare's report (table, learning curve,
accuracy against time, McNemar's exact test between the best frozen and the best fine-tuned method per shot count
and seed, and its recommendation) is kept for each task under results/lp_vs_ft/.

Peer (Rotten Tomatoes, all items, the same 3 seeds): a Hugging Face `Trainer` fine-tuning the same minilm weights
with the same recipe (3 epochs, 5e-5, batches of 32, 10% warmup then cosine decay, weight decay 0.01, gradient
clipping at 1, bf16 autocast on this CPU as tlcache's default), as its text-classification tutorial has a user
write: trained on all 2000 items for all 3 epochs (no held-out items, no epoch chosen), scored on the same 1000
test items, and paired item by item with tlcache's FT cell of the same seed.

Times are wall clock on this machine, the whole cell (loading, training, evaluation); frozen cells count the head's
fit only, the embedding once per task is reported apart.

A third task repeats Fashion-MNIST with whole images (crop 1) and the frozen heads choosing their features per
cell (`--layers default,blocks.5:flatten,blocks.9:flatten`: the candidates heads_benchmark.py scans), each cell on
validation items held out from its own training items; its frozen heads are logreg and svm.

Run:  .venv/bin/python benchmarks/lp_vs_ft.py        (about 45 minutes on 2 cores; needs `make fashion-mnist`)
      --tasks NAME ...: run those tasks and keep the others' figures;
      --smoke --results-dir DIR: a few hundred items, one epoch, one seed, written to DIR (minutes).
Writes benchmarks/results/lp_vs_ft.md and lp_vs_ft.json, and results/lp_vs_ft/<task>/ (compare's own report).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _results import RESULTS, made_by, provenance, save_results

SEEDS = (0, 1, 2)
SHOTS = (4, 16, 64, "all")
HEADS = ("logreg", "svm", "mlp")
FINETUNES = ("ft", "lp-ft")
TASKS = {
    "rotten-tomatoes": {"title": "Rotten Tomatoes 2000 / 1000, minilm", "backbone": "minilm", "options": {}},
    "fashion-mnist": {
        "title": "Fashion-MNIST 3000 / 1000, efficientnet-lite0 @96 px",
        "backbone": "efficientnet-lite0",
        "options": {"image_size": 96},
    },
    # The same, with the frozen heads choosing their features per cell among the candidates of heads_benchmark.py
    # (whole images: crop 1, for the fine-tunes too).
    "fashion-mnist-layers": {
        "title": "Fashion-MNIST 3000 / 1000, efficientnet-lite0 @96 px, crop 1, frozen features chosen per cell "
        "(--layers default,blocks.5:flatten,blocks.9:flatten)",
        "backbone": "efficientnet-lite0",
        "options": {"image_size": 96, "crop_ratio": 1.0},
        "layers": ("default", "blocks.5:flatten", "blocks.9:flatten"),
        "heads": ("logreg", "svm"),  # the mlp, fitted once per candidate on 4032-d features, took minutes a cell
    },
}
COMPARE_FILES = ("compare.md", "compare.json", "learning_curve.png", "accuracy_time.png")


def data(task: str, work: Path, smoke: bool) -> tuple[Path, Path]:
    from tlcache.datasets import fashion_mnist, rotten_tomatoes

    if task == "rotten-tomatoes":
        return rotten_tomatoes(work / "rt", **({"n_total": 300, "n_test": 100} if smoke else {}))
    if (work / "fm").exists():
        return work / "fm" / "train", work / "fm" / "test"
    return fashion_mnist(work / "fm", **({"n_train": 300, "n_test": 100} if smoke else {}))


def run_compare(task: str, train: Path, test: Path, work: Path, smoke: bool) -> dict:
    """`tlcache compare` on one task; its summary, its cells and the wall time of the whole call."""
    import tlcache
    from tlcache.finetune import FinetuneConfig

    spec = TASKS[task]
    config = FinetuneConfig(epochs=1) if smoke else FinetuneConfig()
    started = time.perf_counter()
    result = tlcache.compare(
        train,
        test=test,
        backbone=spec["backbone"],
        heads=spec.get("heads", HEADS),
        finetunes=FINETUNES,
        shots=(4, "all") if smoke else SHOTS,
        repeats=1 if smoke else len(SEEDS),
        out=work / f"compare-{task}",
        cache=work / "cache",
        finetune_config=config,
        layers=spec.get("layers"),
        progress=True,
        **spec["options"],
    )
    return {
        "summary": result.summary,
        "cells": result.cells,
        "wall_seconds": time.perf_counter() - started,
        "config": {name: getattr(config, name) for name in config.__dataclass_fields__},
        "out_dir": result.out_dir,
    }


def trainer_peer(train: Path, test: Path, seeds, work: Path, smoke: bool) -> list[dict]:
    """Hugging Face Trainer on all training texts, per seed: test accuracy, per-item hits, wall time."""
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tlcache.backbones.transformers_text import minilm_dir

    def read(path: Path) -> tuple[list[str], list[str]]:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [r["text"] for r in rows], [r["label"] for r in rows]

    (train_texts, train_labels), (test_texts, test_labels) = read(train), read(test)
    classes = sorted(set(train_labels))
    model_dir = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    class Texts(torch.utils.data.Dataset):
        def __init__(self, texts, labels):
            self.encoded = tokenizer(texts, truncation=True, max_length=256)
            self.labels = [classes.index(label) for label in labels]

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {**{k: v[i] for k, v in self.encoded.items()}, "labels": self.labels[i]}

    runs = []
    for seed in seeds:
        started = time.perf_counter()
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(classes))
        arguments = TrainingArguments(
            output_dir=str(work / f"trainer-{seed}"),
            num_train_epochs=1 if smoke else 3,
            learning_rate=5e-5,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            warmup_steps=0.1,  # a fraction of the steps, in transformers 5
            lr_scheduler_type="cosine",
            weight_decay=0.01,
            max_grad_norm=1.0,
            bf16=_bf16_cpu(),
            use_cpu=not torch.cuda.is_available(),
            seed=seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=Texts(train_texts, train_labels),
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        trainer.train()
        logits = trainer.predict(Texts(test_texts, test_labels)).predictions
        hits = (np.argmax(logits, axis=1) == np.array([classes.index(t) for t in test_labels])).astype(int)
        runs.append(
            {
                "seed": seed,
                "accuracy": float(hits.mean()),
                "correct": hits.tolist(),
                "seconds": time.perf_counter() - started,
            }
        )
        print(f"  Trainer seed {seed}: {hits.mean():.4f} in {runs[-1]['seconds']:.0f} s", flush=True)
    return runs


def _bf16_cpu() -> bool:
    """bf16 autocast where tlcache's fine-tune takes it (precision auto): equal footing."""
    import torch

    from tlcache.backbones.base import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_precision("auto", device) == "bf16"


def paired_with_ft(peer: list[dict], cells: list[dict]) -> list[dict]:
    """McNemar's exact test, seed by seed, between the Trainer and tlcache's FT cell with all items."""
    from tlcache.compare.stats import mcnemar_exact

    ft = {c["seed"]: c for c in cells if c["method"] == "ft" and c["shots"] == "all"}
    rows = []
    for run in peer:
        cell = ft.get(run["seed"])
        if cell is None:
            continue
        a, b = run["correct"], cell["correct"]
        rows.append(
            {
                "seed": run["seed"],
                "trainer_only": int(sum(x and not y for x, y in zip(a, b))),
                "tlcache_only": int(sum(y and not x for x, y in zip(a, b))),
                "p": mcnemar_exact(a, b),
            }
        )
    return rows


def report(results: dict) -> str:
    from tlcache.compare.summary import paired_table

    lines = [
        "# Frozen or fine-tune: `tlcache compare` on two datasets",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        "Selection protocol: every choice (a head's regularisation, a fine-tune's epoch) is made on validation items "
        "carved from each cell's training items; the test items are scored once per cell, for the chosen "
        "configuration only. Nothing in this run was chosen by looking at test items; the fine-tune recipe is "
        "compare's default, not tuned here.",
        "",
    ]
    for task, outcome in results["tasks"].items():
        summary = outcome["summary"]
        advice = summary["recommendation"]
        lines += [f"## {TASKS[task]['title']}", "", made_by(outcome["meta"]), ""]
        lines += [f"**{advice['headline']}**" + (f". {advice['crossing']}." if advice["crossing"] else "."), ""]
        lines += [
            f"The whole compare: {outcome['wall_seconds'] / 60:.1f} min of wall time ({len(outcome['cells'])} cells); "
            f"embedding the frozen features: {summary['embed_seconds']:.1f} s. Report, learning curve and accuracy "
            f"against time: [results/lp_vs_ft/{task}/](lp_vs_ft/{task}/compare.md).",
            "",
            f"![learning curve](lp_vs_ft/{task}/learning_curve.png)",
            "",
            "| method | items per class | accuracy (mean of seeds) | ± std | 95% interval (test items) | s per run |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for row in summary["rows"]:
            low, high = row["interval"]
            lines.append(
                f"| {row['method']} ({row['kind']}) | {row['shots']} | {row['accuracy']:.4f} | "
                f"{row['accuracy_std']:.4f} | {low:.4f}-{high:.4f} | {row['seconds']:.1f} |"
            )
        lines += ["", f"Rule of the recommendation: {advice['rule']}", "", *paired_table(advice)]
        peer = outcome.get("trainer")
        if peer:
            accuracies = [run["accuracy"] for run in peer]
            seconds = [run["seconds"] for run in peer]
            lines += [
                "",
                "### The peer: Hugging Face Trainer, all items",
                "",
                f"Accuracy {sum(accuracies) / len(accuracies):.4f} (seeds: "
                f"{', '.join(f'{a:.4f}' for a in accuracies)}), "
                f"{sum(seconds) / len(seconds):.1f} s per run (loading, training, prediction).",
                "",
                "Paired with tlcache's FT cell of the same seed (McNemar's exact test on the test items): "
                + "; ".join(
                    f"seed {p['seed']}: Trainer right where tlcache is wrong on {p['trainer_only']} items, tlcache "
                    f"right where Trainer is wrong on {p['tlcache_only']}, p = {p['p']:.3g}"
                    for p in outcome["trainer_paired"]
                )
                + ".",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="the others keep theirs")
    parser.add_argument("--smoke", action="store_true", help="a few hundred items, one epoch, one seed")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    # Tasks not run this time keep their figures (and the provenance they were made with).
    saved = args.results_dir / "lp_vs_ft.json"
    results = json.loads(saved.read_text()) if saved.exists() and not args.smoke else {"tasks": {}}
    for outcome in results["tasks"].values():
        outcome.setdefault("meta", results.get("meta"))
    results["meta"] = provenance("lp_vs_ft.py")
    with tempfile.TemporaryDirectory(prefix="tlcache-lp-vs-ft-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        for task in args.tasks:
            print(f"{task} ...", flush=True)
            train, test = data(task, work, args.smoke)
            outcome = {"meta": results["meta"], **run_compare(task, train, test, work, args.smoke)}
            if task == "rotten-tomatoes":
                seeds = (0,) if args.smoke else SEEDS
                outcome["trainer"] = trainer_peer(train, test, seeds, work, args.smoke)
                outcome["trainer_paired"] = paired_with_ft(outcome["trainer"], outcome["cells"])
            kept = args.results_dir / "lp_vs_ft" / task
            kept.mkdir(parents=True, exist_ok=True)
            for name in COMPARE_FILES:
                shutil.copy2(outcome["out_dir"] / name, kept / name)
            outcome.pop("out_dir")
            for cell in outcome["cells"]:
                cell.pop("correct", None)  # per-item hits stay in compare's own cells, not in the results file
            for run in outcome.get("trainer", []):
                run.pop("correct", None)
            results["tasks"][task] = outcome
    save_results("lp_vs_ft", json.loads(json.dumps(results, default=str)), report(results), args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
