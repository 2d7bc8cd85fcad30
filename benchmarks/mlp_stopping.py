"""When the mlp head stops on its training loss and when on held-out items, on validation data only.

The mlp head has two stopping rules (tlcache.heads.MLP_EARLY_STOPPING_MIN_ROWS): below 1000 training rows it trains
until its training loss stops falling (at most 300 epochs); from 1000 rows on, it holds 10% of them out and keeps the
weights of its best held-out accuracy, stopping after 10 epochs without a gain. This measures both rules at every
size, below and above the threshold: for each task's training store (Rotten Tomatoes 2000 / minilm, Fashion-MNIST
3000 and MNIST-5k 4000 / efficientnet-lite0 at 96 px, features in fp32), n rows are drawn for training and 600
others are scored (seeds 100, 101, 102: each seed draws both and seeds the head). No test item is used. The head,
its sweep and everything else are the defaults; only the rule differs.

Run:  .venv/bin/python benchmarks/mlp_stopping.py [--work DIR]   (about 40 minutes on 2 cores; needs
`make fashion-mnist`). ``--work`` keeps the embedded stores in DIR for a rerun. Writes
benchmarks/results/mlp_stopping.md and mlp_stopping.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import made_by, provenance, save_results
from heads_benchmark import held_out_stores

SEEDS = (100, 101, 102)
SIZES = (250, 500, 900, 1400)
VALIDATION_ROWS = 600
RULES = {"training loss": float("inf"), "10% held out": 0}  # MLP_EARLY_STOPPING_MIN_ROWS for each rule


def measure(stores: dict[str, Path]) -> list[dict]:
    import tlcache.heads as heads
    from tlcache import FeatureStore

    default, rows = heads.MLP_EARLY_STOPPING_MIN_ROWS, []
    for task, path in stores.items():
        store = FeatureStore(path)
        X, y = store.features(), store.labels()
        for n in SIZES:
            for seed in SEEDS:
                order = np.random.default_rng(seed).permutation(len(y))
                train, valid = order[:n], order[n : n + VALIDATION_ROWS]
                for rule, threshold in RULES.items():
                    heads.MLP_EARLY_STOPPING_MIN_ROWS = threshold
                    started = time.perf_counter()
                    model = heads.make_head("mlp", seed, n_train=n).fit(X[train], y[train])
                    seconds = time.perf_counter() - started
                    accuracy = float((model.predict(X[valid]) == y[valid]).mean())
                    row = {"task": task, "n": n, "seed": seed, "rule": rule, "accuracy": accuracy, "seconds": seconds}
                    print(row, flush=True)
                    rows.append(row)
    heads.MLP_EARLY_STOPPING_MIN_ROWS = default
    return rows


def report(results: dict) -> str:
    rows = results["rows"]
    lines = ["# The mlp head's two stopping rules, on validation data only", "", made_by(results["meta"]), ""]
    lines += [__doc__.split("\n\n")[1].replace("\n", " "), ""]
    lines += [
        "Mean accuracy on the 600 validation items over the three seeds (each seed's value), and the mean fit time",
        f"(the whole head: its sweep and its refit). The default rule at each size is marked * (the threshold: "
        f"{results['threshold']} rows).{' ' + results['note'] if results.get('note') else ''}",
        "",
        "| task | n | " + " | ".join(RULES) + " | difference | fit s (" + " / ".join(RULES) + ") |",
        "|---|---:|" + "---|" * len(RULES) + "---:|---|",
    ]
    for task in dict.fromkeys(row["task"] for row in rows):
        for n in SIZES:
            cells, means, seconds = [], [], []
            for rule in RULES:
                picked = [row for row in rows if row["task"] == task and row["n"] == n and row["rule"] == rule]
                accuracies = [row["accuracy"] for row in picked]
                default = (n < results["threshold"]) == (rule == "training loss")
                mark = "*" if default else ""
                means.append(np.mean(accuracies))
                seconds.append(np.mean([row["seconds"] for row in picked]))
                cells.append(f"{means[-1]:.4f}{mark} ({', '.join(f'{a:.3f}' for a in accuracies)})")
            gap = f"{means[0] - means[1]:+.4f}"
            timing = " / ".join(f"{s:.1f}" for s in seconds)
            lines.append(f"| {task} | {n} | " + " | ".join(cells) + f" | {gap} | {timing} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="a folder to keep the embedded stores in (default: a temporary one)")
    parser.add_argument("--note", help="a sentence for the report, e.g. what else ran on the machine")
    args = parser.parse_args()
    from tlcache.heads import MLP_EARLY_STOPPING_MIN_ROWS

    results = {"meta": provenance("mlp_stopping.py"), "threshold": MLP_EARLY_STOPPING_MIN_ROWS, "note": args.note}
    with tempfile.TemporaryDirectory(prefix="tlcache-stopping-") as tmp:
        work = args.work or Path(tmp)
        stores = held_out_stores(work)
        results["rows"] = measure(stores)
    save_results("mlp_stopping", results, report(results))
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"{time.perf_counter() - started:.0f} s")
    raise SystemExit(code)
