"""Heads benchmark: the linear-probe sweep against scikit-learn's defaults, and every head's accuracy, on real data.

Measured in one run, on cached features of the project's DATA.md sets:
1. Time and accuracy of tlcache's logreg head (standardise, sweep 11 values of C on held-out data, refit)
   against one `LogisticRegression(max_iter=1000)` fit with defaults on the same features.
2. Accuracy of every head (logreg, linear-svm, svm, mlp, knn), 3 seeds (the seed moves the sweep's validation
   split and the heads' own randomness), mean and spread.

Sets: Rotten Tomatoes fresh/rotten (canonical split, 2000 / 1000) with minilm; Fashion-MNIST 3000 / 1000 with
efficientnet-lite0 at 96 px, both with the default features (penultimate layer, 0.875 centre crop) and with
features chosen for these small full-frame images (`--crop-ratio 1 --layer blocks.13 --pool flatten`).

Targets (issue 4): the sweep within 1.5 times the default fit's time and at least as accurate; Rotten Tomatoes
at least 0.76 with the best swept head; Fashion-MNIST at least 0.88.

Run:  .venv/bin/python benchmarks/heads_benchmark.py      (about 10 minutes on 2 cores; needs `make fashion-mnist`)
Writes benchmarks/results/heads.md and heads.json.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from _results import save_results

SEEDS = (0, 1, 2)
HEADS = ("logreg", "linear-svm", "svm", "mlp", "knn")


def embed_pair(train_src, test_src, backbone: str, cache: Path, **options):
    import tlcache

    # fp32 features, as when the committed results were made (before --precision auto became the default).
    train = tlcache.embed_source(train_src, backbone, out=cache, precision="fp32", progress=False, **options)
    test = tlcache.embed_source(test_src, backbone, out=cache, precision="fp32", progress=False, **options)
    return train.path, test.path


def timing(train_path: Path, test_path: Path, repeats: int = 3) -> dict:
    """Best-of-``repeats`` wall time of one default LogisticRegression fit and of tlcache's swept logreg head."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from tlcache import FeatureStore
    from tlcache.heads import make_head

    train, test = FeatureStore(train_path), FeatureStore(test_path)
    X, y, X_test, y_test = train.features(), train.labels(), test.features(), test.labels()

    def best_of(make):
        times, model = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = make().fit(X, y)
            times.append(time.perf_counter() - started)
        return min(times), float(np.mean(model.predict(X_test) == y_test)), model

    default_s, default_acc, _ = best_of(lambda: LogisticRegression(max_iter=1000))
    sweep_s, sweep_acc, swept = best_of(lambda: make_head("logreg", seed=0))
    classifier = swept.steps[-1][1]
    return {
        "default_seconds": default_s,
        "default_accuracy": default_acc,
        "sweep_seconds": sweep_s,
        "sweep_accuracy": sweep_acc,
        "sweep_values": len(classifier.curve_),
        "chosen_C": classifier.C_,
        "selection": classifier.selection_,
        "ratio": sweep_s / default_s,
    }


def accuracy_table(train_path: Path, test_path: Path, work: Path, heads=HEADS) -> dict:
    import tlcache

    table = {}
    for head in heads:
        runs = [
            tlcache.fit_head(train_path, head, test=test_path, seed=seed, out=work / f"{head}-{seed}") for seed in SEEDS
        ]
        accuracies = [run.accuracy for run in runs]
        table[head] = {
            "accuracies": accuracies,
            "mean": float(np.mean(accuracies)),
            "std": float(np.std(accuracies)),
            "fit_seconds": float(np.mean([run.report["fit_seconds"] for run in runs])),
            "chosen": [run.report["sweep"]["best"] for run in runs],
        }
        print(f"  {head}: {table[head]['mean']:.4f} ± {table[head]['std']:.4f}", flush=True)
    return table


def render(results: dict, command: str) -> str:
    lines = [
        "# Heads benchmark",
        "",
        f"Made by `{command}` on {results['date']} ({results['machine']}).",
        "",
        "## The sweep against one default fit, on the same cached features",
        "",
        "`LogisticRegression(max_iter=1000)` on the raw features, against tlcache's logreg head (standardise, "
        "sweep C over 11 log-spaced values, pick the lowest log-loss on held-out training data, refit on all of it); "
        "best of 3 runs each.",
        "",
        "| data | default: s | default: accuracy | sweep: s | sweep: accuracy | chosen C | time ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in results["timing"].items():
        lines.append(
            f"| {name} | {t['default_seconds']:.3f} | {t['default_accuracy']:.4f} | {t['sweep_seconds']:.3f} | "
            f"{t['sweep_accuracy']:.4f} | {t['chosen_C']:.3g} | {t['ratio']:.2f} |"
        )
    met = all(t["ratio"] <= 1.5 and t["sweep_accuracy"] >= t["default_accuracy"] for t in results["timing"].values())
    lines += ["", f"Target: ratio at most 1.5 and accuracy at least the default's ({'met' if met else 'NOT met'}).", ""]
    for name, block in results["accuracy"].items():
        table, target = block["heads"], block["target"]
        best = max(table, key=lambda h: table[h]["mean"])
        lines += [
            f"## {name}: accuracy of every head, seeds {list(SEEDS)}",
            "",
            block["features"],
            "",
            "| head | mean | std | per seed | chosen value per seed | fit s |",
            "|---|---:|---:|---|---|---:|",
        ]
        for head, row in table.items():
            per_seed = ", ".join(f"{a:.3f}" for a in row["accuracies"])
            chosen = ", ".join(f"{c:.3g}" for c in row["chosen"])
            lines.append(
                f"| {head} | {row['mean']:.4f} | {row['std']:.4f} | {per_seed} | {chosen} | {row['fit_seconds']:.1f} |"
            )
        verdict = "met" if table[best]["mean"] >= target else "NOT met"
        lines += ["", f"Best head: {best}, {table[best]['mean']:.4f} (target at least {target}: {verdict}).", ""]
    return "\n".join(lines)


def main() -> int:
    import torch

    from tlcache.datasets import fashion_mnist, rotten_tomatoes

    command = "python benchmarks/heads_benchmark.py " + " ".join(sys.argv[1:])
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "timing": {},
        "accuracy": {},
    }
    with tempfile.TemporaryDirectory(prefix="tlcache-heads-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        cache = work / "cache"
        rt = embed_pair(*rotten_tomatoes(work / "rt"), "minilm", cache)
        fm_data = fashion_mnist(work / "fmnist")
        fm_default = embed_pair(*fm_data, "efficientnet-lite0", cache, image_size=96)
        fm_tuned = embed_pair(
            *fm_data, "efficientnet-lite0", cache, image_size=96, crop_ratio=1.0, layer="blocks.13", pooling="flatten"
        )
        print("timing ...", flush=True)
        results["timing"]["Rotten Tomatoes, minilm"] = timing(*rt)
        results["timing"]["Fashion-MNIST, efficientnet-lite0 @96 px"] = timing(*fm_default)
        print("Rotten Tomatoes ...", flush=True)
        results["accuracy"]["Rotten Tomatoes 2000 / 1000, minilm"] = {
            "features": "minilm, mean pooling, L2-normalised (the defaults).",
            "target": 0.76,
            "heads": accuracy_table(*rt, work / "rt-runs"),
        }
        print("Fashion-MNIST, default features ...", flush=True)
        results["accuracy"]["Fashion-MNIST 3000 / 1000, default features"] = {
            "features": "efficientnet-lite0 at 96 px, penultimate layer, 0.875 centre crop (the defaults).",
            "target": 0.88,
            "heads": accuracy_table(*fm_default, work / "fm-default-runs", heads=("logreg", "svm")),
        }
        print("Fashion-MNIST, chosen features ...", flush=True)
        results["accuracy"]["Fashion-MNIST 3000 / 1000, chosen features"] = {
            "features": "efficientnet-lite0 at 96 px, `--crop-ratio 1 --layer blocks.13 --pool flatten` "
            "(192 channels x 3 x 3 positions, 1728-d): no crop for small full-frame items; a mid-level block, which "
            "transfers better to grey clothing than the ImageNet-specific last layer; and the feature map kept "
            "whole, since where an edge sits tells a sandal from a sneaker (mean-pooled, the same block gave 0.873).",
            "target": 0.88,
            "heads": accuracy_table(*fm_tuned, work / "fm-tuned-runs"),
        }
    save_results("heads", results, render(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
