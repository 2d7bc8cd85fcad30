"""The mlp head's protocol on validation data only: does its precision, its coarse-to-fine grid, its early-stopping
patience, its hidden layer's width or its rewrite in torch change what it scores, against the head before issue 15
(scikit-learn's MLPClassifier, commit cadf4e3)?

For each task's training store (Rotten Tomatoes 2000 / minilm, Fashion-MNIST 3000 / efficientnet-lite0 @96 px,
MNIST-5k 4000 / efficientnet-lite0 @96 px), three outer splits hold out 20% of the training items (stratified,
seeds 100, 101, 102); the head is fitted, with its own sweep inside, on the other 80% and scored on the held-out
items. No test item is used. Variants: products in bf16 (the default where the CPU has it) or fp32; the grid's
first stage every other value (the default) or every value; stopping after 10 epochs without a better held-out
accuracy (scikit-learn's, the default) or after 5 or 20, or on the training loss as below 1000 rows (no rows held
out; at most 300 epochs, stopping after 10 without a fall of 1e-4); a hidden layer of 512 units (the default) or 256
or 128; and the head of commit cadf4e3.

Run:  .venv/bin/python benchmarks/mlp_protocol.py   (about 10 minutes on 2 cores; needs `make fashion-mnist`)
Writes benchmarks/results/mlp_protocol.md and mlp_protocol.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _results import made_by, provenance, run_timed, save_results
from heads_benchmark import BEFORE, checkout, held_out_stores

OUTER_SEEDS = (100, 101, 102)
# (products, grid stride, patience, hidden units, the fewest training rows on which it stops early): the head's
# defaults and one change from them each.
VARIANTS = {
    "bf16, every other value first, patience 10, 512 hidden units (default)": ("bf16", 2, 10, 512, 1000),
    "fp32": ("fp32", 2, 10, 512, 1000),
    "every value": ("bf16", 1, 10, 512, 1000),
    "patience 5": ("bf16", 2, 5, 512, 1000),
    "patience 20": ("bf16", 2, 20, 512, 1000),
    "stopping on the training loss": ("bf16", 2, 10, 512, 10**9),
    "256 hidden units": ("bf16", 2, 10, 256, 1000),
    "128 hidden units": ("bf16", 2, 10, 128, 1000),
}

# Run in a process of its own, for one variant (or the code at another commit): prints one JSON line per task.
SCORE = """
import json, sys, time
import numpy as np
from sklearn.model_selection import train_test_split
from tlcache import FeatureStore
from tlcache.heads import make_head

stores, seeds, variant = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
if variant:
    import tlcache.backbones.base as base
    import tlcache.heads as heads
    import tlcache.mlp as mlp
    if variant[0] == "fp32":
        base.resolve_precision = lambda precision, device: "fp32"
    mlp.SweptMLP.grid_stride = variant[1]
    heads.MLP_PATIENCE = variant[2]
    heads.MLP_HIDDEN = variant[3]
    heads.MLP_EARLY_STOPPING_MIN_ROWS = variant[4]
for task, path in stores.items():
    store = FeatureStore(path)
    X, y = store.features(), store.labels()
    accuracies, seconds = [], []
    for seed in seeds:
        fit, held = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
        head = make_head("mlp", seed, n_train=len(fit))
        started = time.perf_counter()
        head.fit(X[fit], y[fit])
        seconds.append(time.perf_counter() - started)
        accuracies.append(float((head.predict(X[held]) == y[held]).mean()))
    print(json.dumps({"task": task, "accuracies": accuracies, "seconds": seconds}), flush=True)
"""


def score(stores: dict, variant, code: Path | None, work: Path) -> dict:
    environment = {**os.environ, **({"PYTHONPATH": str(code)} if code else {})}
    command = [sys.executable, "-c", SCORE, json.dumps(stores), json.dumps(OUTER_SEEDS), json.dumps(variant)]
    done = subprocess.run(command, env=environment, cwd=work, capture_output=True, text=True, check=True)
    return {row["task"]: row for row in map(json.loads, done.stdout.splitlines())}


def main() -> int:
    results = {"meta": provenance("mlp_protocol.py"), "sides": {}}
    with tempfile.TemporaryDirectory(prefix="tlcache-mlp-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        stores = {task: str(path) for task, path in held_out_stores(work).items()}
        for name, variant in VARIANTS.items():
            print(f"{name} ...", flush=True)
            results["sides"][name] = score(stores, variant, None, work)
        print(f"{BEFORE} ...", flush=True)
        results["sides"][f"before ({BEFORE}, scikit-learn's MLPClassifier)"] = score(
            stores, None, checkout(BEFORE, work / "before-code"), work
        )
    save_results("mlp_protocol", results, report(results))
    return 0


def report(results: dict) -> str:
    tasks = list(next(iter(results["sides"].values())))
    lines = ["# The mlp head's protocol, on validation data only", "", made_by(results["meta"]), ""]
    lines += [__doc__.split("\n\n")[1].replace("\n", " "), ""]
    lines += ["Mean held-out accuracy over the three outer splits (each split's value), and the mean fit time.", ""]
    lines += ["| variant | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, side in results["sides"].items():
        cells = [
            f"{np.mean(side[t]['accuracies']):.4f} ({', '.join(f'{a:.3f}' for a in side[t]['accuracies'])}); "
            f"{np.mean(side[t]['seconds']):.1f} s"
            for t in tasks
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_timed(main)
