"""The RBF svm head's sweep over C, every value of the grid or coarse to fine, on validation data only: does
scoring every other value first, then the neighbours of the best (``grid_stride`` 2, as the mlp head does), choose
the same C, and what does it save?

For each task's training store (Rotten Tomatoes 2000 / minilm, Fashion-MNIST 3000 / efficientnet-lite0 @96 px,
MNIST-5k 4000 / efficientnet-lite0 @96 px), ten outer splits hold out 20% of the training items (stratified, seeds
100 to 109); the svm head is fitted, with its own sweep inside (seed 0..9), on the other 80% and scored on the
held-out items. No test item is used. Where both searches choose the same C they ship the same model, so their
held-out accuracies are equal; the table counts where they differ.

Run:  .venv/bin/python benchmarks/sweep_stride.py   (about 3 minutes on 2 cores; needs `make fashion-mnist`)
Writes benchmarks/results/sweep_stride.md and sweep_stride.json.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import made_by, provenance, run_timed, save_results
from heads_benchmark import held_out_stores

OUTER_SEEDS = tuple(range(100, 110))
STRIDES = {"every value": 1, "every other value, then the best's neighbours": 2}


def study(path: str) -> dict:
    """Per stride: the chosen C, the held-out accuracy, the fit's seconds and the values scored, per outer split."""
    from sklearn.model_selection import train_test_split

    from tlcache import FeatureStore
    from tlcache.heads import make_head

    store = FeatureStore(path)
    X, y = store.features(), store.labels()
    rows = {name: {"chosen": [], "accuracies": [], "seconds": [], "scored": []} for name in STRIDES}
    for seed, outer in enumerate(OUTER_SEEDS):
        fit, held = train_test_split(np.arange(len(y)), test_size=0.2, random_state=outer, stratify=y)
        for name, stride in STRIDES.items():
            head = make_head("svm", seed)
            head[-1].grid_stride = stride
            started = time.perf_counter()
            head.fit(X[fit], y[fit])
            row = rows[name]
            row["seconds"].append(time.perf_counter() - started)
            row["chosen"].append(float(head[-1].best_))
            row["scored"].append(len(head[-1].curve_))
            row["accuracies"].append(float((head.predict(X[held]) == y[held]).mean()))
    return rows


def main() -> int:
    results = {"meta": provenance("sweep_stride.py"), "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="tlcache-stride-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        for task, path in held_out_stores(work).items():
            print(f"{task} ...", flush=True)
            results["tasks"][task] = study(str(path))
    save_results("sweep_stride", results, report(results))
    return 0


def report(results: dict) -> str:
    lines = ["# The svm head's sweep: every value or coarse to fine, on validation data only", ""]
    lines += [made_by(results["meta"]), "", __doc__.split("\n\n")[1].replace("\n", " "), ""]
    lines += [
        "Per task: the same C chosen on how many of the outer splits, the mean held-out accuracy, the mean number of "
        "values of C scored, and the mean fit time (sweep, calibrator and refit), each search as it ran.",
        "",
        "| task | search | same C | held-out accuracy (mean) | values scored | fit s (mean) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task, rows in results["tasks"].items():
        chosen = [rows[name]["chosen"] for name in STRIDES]
        same = sum(a == b for a, b in zip(*chosen))
        for name in STRIDES:
            row = rows[name]
            lines.append(
                f"| {task} | {name} | {same} of {len(OUTER_SEEDS)} | {np.mean(row['accuracies']):.4f} | "
                f"{np.mean(row['scored']):.1f} | {np.mean(row['seconds']):.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_timed(main)
