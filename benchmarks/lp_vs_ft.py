"""Frozen features or fine-tuning? The shipped compare pipelines, run as a user would run them, on two tasks, with
the fine-tune a user would otherwise write beside them.

Tasks, each a compare step of a recipe in pipelines/, run by `tlcache run RECIPE --step STEP` on the data `make
pipeline-data` writes (demo-output/data/): Rotten Tomatoes fresh/rotten (the canonical 2000 / 1000 split of DATA.md)
with minilm (pipelines/rotten-tomatoes.toml, step compare), and Fashion-MNIST 3000 / 1000 with efficientnet-lite0
at 96 px (pipelines/fashion-mnist.toml): on its default features (step compare), and on whole images with each
frozen cell choosing its features among `default,blocks.5:flatten,blocks.9:flatten` on items held out from its own
training items (step compare-layers; frozen heads logreg and svm). Methods, every one on the same draws of training
items and the same test items: the frozen logreg, svm and mlp heads on features embedded once through the cache,
and fine-tuning (FT) and LP-FT (the classifier started from logreg on the frozen features) at compare's defaults
(FinetuneConfig(): the whole network, 3 epochs, learning rate 5e-5 for the body and 1e-3 for the classifier,
batches of 32, bf16 where the CPU has it, 10% of each cell's items held out to choose the epoch). Shots: 4, 16 and
64 labelled items per class, and all of them; seeds 0, 1, 2, each drawing its own items. Every choice (features, a
head's regularisation, a fine-tune's epoch) is made on validation items carved from the training items; the test
items are scored once per cell. compare's report (table, learning curve, accuracy against time, McNemar's exact
test between the best frozen and the best fine-tuned method per shot count and seed, and its recommendation) is
kept for each task under results/lp_vs_ft/.

Peers (Rotten Tomatoes, all items, the same 3 seeds): a Hugging Face `Trainer` with
`AutoModelForSequenceClassification`, fine-tuning the same minilm weights as its text-classification tutorial has a
user write, trained on all 2000 items for all its epochs (no held-out items, no epoch chosen), scored on the same
1000 test items and paired item by item with tlcache's FT cell of the same seed; twice: at the Trainer's own
defaults (3 epochs, 5e-5, batches of 8, linear decay without warmup, no weight decay, fp32), and at tlcache's recipe
(batches of 32, 10% warmup then cosine decay, weight decay 0.01, gradient clipping at 1, bf16 autocast on this CPU
as tlcache's default: equal footing).

Times are wall clock on this machine, the whole cell (loading, training, evaluation); frozen cells count the head's
fit only, the embedding once per task is reported apart (and the whole `tlcache run` beside it).

Run:  make bench-lp-vs-ft    (about 50 minutes on 2 cores; writes the data, installs the Trainer's accelerate)
      .venv/bin/python benchmarks/lp_vs_ft.py --tasks NAME ...: run those tasks and keep the others' figures;
      --smoke --results-dir DIR: a few hundred items, one epoch, one seed, written to DIR (minutes).
Writes benchmarks/results/lp_vs_ft.md and lp_vs_ft.json, and results/lp_vs_ft/<task>/ (compare's own report).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib
from _results import RESULTS, ROOT, made_by, provenance, save_results

SEEDS = (0, 1, 2)
TASKS = {
    "rotten-tomatoes": {
        "title": "Rotten Tomatoes 2000 / 1000, minilm",
        "recipe": "rotten-tomatoes",
        "step": "compare",
    },
    "fashion-mnist": {
        "title": "Fashion-MNIST 3000 / 1000, efficientnet-lite0 @96 px",
        "recipe": "fashion-mnist",
        "step": "compare",
    },
    "fashion-mnist-layers": {
        "title": "Fashion-MNIST 3000 / 1000, efficientnet-lite0 @96 px, crop 1, frozen features chosen per cell "
        "(--layers default,blocks.5:flatten,blocks.9:flatten)",
        "recipe": "fashion-mnist",
        "step": "compare-layers",
    },
}
# The Trainer peers' settings beyond its defaults (the defaults' own row sets none).
PEERS = {
    "trainer-defaults": {"title": "at its own defaults", "arguments": {}},
    "trainer": {
        "title": "at tlcache's recipe (equal footing)",
        "arguments": {
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 64,
            "warmup_steps": 0.1,  # a fraction of the steps, in transformers 5
            "lr_scheduler_type": "cosine",
            "weight_decay": 0.01,
            "max_grad_norm": 1.0,
            "bf16": "auto",  # tlcache's precision auto: bf16 autocast where this CPU has it
        },
    },
}
COMPARE_FILES = ("compare.md", "compare.json", "learning_curve.png", "accuracy_time.png")


def write_data(work: Path, smoke: bool) -> None:
    """The data of the recipes, where `make pipeline-data` writes it (relative to ``work``, the runs' folder)."""
    from tlcache.datasets import fashion_mnist, rotten_tomatoes

    data = work / "demo-output" / "data"
    rotten_tomatoes(data / "rotten_tomatoes", **({"n_total": 300, "n_test": 100} if smoke else {}))
    fashion_mnist(data / "fashion-mnist", **({"n_train": 300, "n_test": 100} if smoke else {}))


def recipe_of(task: str, work: Path, smoke: bool) -> Path:
    """The shipped recipe of the task; for a smoke run, a copy whose compare steps run 4 and all items per class,
    one seed, one epoch."""
    recipe = ROOT / "pipelines" / f"{TASKS[task]['recipe']}.toml"
    if not smoke:
        return recipe
    steps = tomllib.loads(recipe.read_text(encoding="utf-8"))["step"]
    for step in steps:
        if step["run"] == "compare":
            step.update({"shots": [4, "all"], "repeats": 1, "epochs": 1})
    copy = work / "smoke" / recipe.name
    copy.parent.mkdir(exist_ok=True)
    lines = [line for step in steps for line in ("[[step]]", *(f"{k} = {json.dumps(v)}" for k, v in step.items()))]
    copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return copy


def run_compare(task: str, work: Path, smoke: bool) -> dict:
    """`tlcache run RECIPE --step STEP` in its own process, from ``work``; compare's summary and cells, and the
    wall time of the whole command."""
    from tlcache.finetune import FinetuneConfig

    spec, recipe = TASKS[task], recipe_of(task, work, smoke)
    command = [sys.executable, "-m", "tlcache.cli", "run", str(recipe), "--step", spec["step"]]
    started = time.perf_counter()
    subprocess.run(command, cwd=work, check=True)
    seconds = time.perf_counter() - started
    out_dir = work / "runs" / recipe.stem / spec["step"]
    cells = []
    for path in sorted((out_dir / "cells").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        cells.append({**record["cell"], **record["result"]})
    config = FinetuneConfig(epochs=1) if smoke else FinetuneConfig()
    return {
        "command": f"tlcache run pipelines/{recipe.name} --step {spec['step']}",
        "summary": json.loads((out_dir / "compare.json").read_text(encoding="utf-8")),
        "cells": cells,
        "wall_seconds": seconds,
        "config": {name: getattr(config, name) for name in config.__dataclass_fields__},
        "out_dir": out_dir,
    }


def trainer_peer(peer: str, work: Path, seeds, smoke: bool) -> list[dict]:
    """Hugging Face Trainer on all training texts with the settings of PEERS[peer], per seed: test accuracy,
    per-item hits, wall time."""
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

    data = work / "demo-output" / "data" / "rotten_tomatoes"
    (train_texts, train_labels), (test_texts, test_labels) = read(data / "train.csv"), read(data / "test.csv")
    classes = sorted(set(train_labels))
    settings = dict(PEERS[peer]["arguments"])
    if settings.get("bf16") == "auto":
        settings["bf16"] = _bf16_cpu()
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(classes))
        arguments = TrainingArguments(
            output_dir=str(work / f"{peer}-{seed}"),
            **settings,
            **({"num_train_epochs": 1} if smoke else {}),
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
        print(f"  {peer} seed {seed}: {hits.mean():.4f} in {runs[-1]['seconds']:.0f} s", flush=True)
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


def peer_lines(peer: str, runs: dict) -> list[str]:
    """The report's paragraph on one Trainer peer."""
    accuracies = [run["accuracy"] for run in runs["runs"]]
    seconds = [run["seconds"] for run in runs["runs"]]
    return [
        f"### The peer: Hugging Face Trainer {PEERS[peer]['title']}, all items",
        "",
        f"Accuracy {sum(accuracies) / len(accuracies):.4f} (seeds: {', '.join(f'{a:.4f}' for a in accuracies)}), "
        f"{sum(seconds) / len(seconds):.1f} s per run (loading, training, prediction). Settings beyond the "
        f"Trainer's defaults: {json.dumps(PEERS[peer]['arguments']) if PEERS[peer]['arguments'] else 'none'}.",
        "",
        "Paired with tlcache's FT cell of the same seed (McNemar's exact test on the test items): "
        + "; ".join(
            f"seed {p['seed']}: Trainer right where tlcache is wrong on {p['trainer_only']} items, tlcache "
            f"right where Trainer is wrong on {p['tlcache_only']}, p = {p['p']:.3g}"
            for p in runs["paired"]
        )
        + ".",
    ]


def report(results: dict) -> str:
    from tlcache.compare.summary import paired_table

    lines = [
        "# Frozen or fine-tune: `tlcache compare` on two datasets",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        "Selection protocol: every choice (features, a head's regularisation, a fine-tune's epoch) is made on "
        "validation items "
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
            f"Run by `{outcome['command']}` (after `make pipeline-data`): {outcome['wall_seconds'] / 60:.1f} min of "
            f"wall time for the whole command ({len(outcome['cells'])} cells); "
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
        for peer, runs in outcome.get("peers", {}).items():
            lines += ["", *peer_lines(peer, runs)]
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
        os.environ["TLCACHE_HOME"] = str(work / "home")  # no store from an earlier run: each task embeds its own
        write_data(work, args.smoke)
        for task in args.tasks:
            print(f"{task} ...", flush=True)
            outcome = {"meta": results["meta"], **run_compare(task, work, args.smoke)}
            if task == "rotten-tomatoes":
                seeds = (0,) if args.smoke else SEEDS
                outcome["peers"] = {}
                for peer in PEERS:
                    runs = trainer_peer(peer, work, seeds, args.smoke)
                    outcome["peers"][peer] = {"runs": runs, "paired": paired_with_ft(runs, outcome["cells"])}
            kept = args.results_dir / "lp_vs_ft" / task
            kept.mkdir(parents=True, exist_ok=True)
            for name in COMPARE_FILES:
                shutil.copy2(outcome["out_dir"] / name, kept / name)
            outcome.pop("out_dir")
            for cell in outcome["cells"]:
                cell.pop("correct", None)  # per-item hits stay in compare's own cells, not in the results file
            for peer in outcome.get("peers", {}).values():
                for run in peer["runs"]:
                    run.pop("correct", None)
            results["tasks"][task] = outcome
    save_results("lp_vs_ft", json.loads(json.dumps(results, default=str)), report(results), args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
