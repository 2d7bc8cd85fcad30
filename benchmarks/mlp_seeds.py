"""The mlp head against the head before issue 15 (scikit-learn's MLPClassifier, commit cadf4e3) on the test items,
over ten seeds: the heads benchmark's three seeds put Fashion-MNIST's mlp 0.5-0.7 points below it, while validation
data put it 1.2 points above (benchmarks/results/mlp_protocol.md). More seeds say how much of that is the seed.

For each task and seed, `tlcache fit-head TRAIN --head mlp --test TEST --seed S` with each side's tlcache package (a
process each, the sides taking turns seed by seed), and the test accuracy of its report. The seed moves the sweep's
validation split and the model's own randomness (initial weights, minibatches). Both sides choose alpha on
validation data carved from the training items; the test items are scored once per seed. Sets and features are the
heads benchmark's: Rotten Tomatoes 2000 / 1000 with minilm, Fashion-MNIST 3000 / 1000 with efficientnet-lite0 at
96 px, features in fp32.

Run:  .venv/bin/python benchmarks/mlp_seeds.py   (about 6 minutes on 2 cores; needs `make fashion-mnist`)
Writes benchmarks/results/mlp_seeds.md and mlp_seeds.json.
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
from heads_benchmark import BEFORE, FM_BASE, ROOT, checkout, embed, side_environment

SEEDS = tuple(range(10))
# The difference of means (now - before) the heads benchmark's target allows: within 0.3 points, or higher.
TOLERANCE = 0.003


def accuracies(sides: dict[str, Path], train: Path, test: Path, work: Path) -> dict[str, list[float]]:
    """Each side's test accuracy per seed, the sides taking turns seed by seed."""
    found: dict[str, list[float]] = {side: [] for side in sides}
    for seed in SEEDS:
        for side, code in sides.items():
            folder = work / side
            folder.mkdir(parents=True, exist_ok=True)
            out = folder / f"seed-{seed}"
            command = [sys.executable, "-c", "from tlcache.cli import main; main()", "fit-head", str(train)]
            command += ["--head", "mlp", "--test", str(test), "--seed", str(seed), "--out", str(out)]
            # Run from the side's folder: `python -c` puts the current folder first on sys.path, ahead of PYTHONPATH.
            environment = side_environment(code, folder)
            subprocess.run(command, check=True, env=environment, cwd=folder, capture_output=True)
            found[side].append(json.loads((out / "report.json").read_text())["metrics"]["accuracy"])
        print(f"  seed {seed}: " + ", ".join(f"{side} {found[side][-1]:.4f}" for side in sides), flush=True)
    return found


def summary(found: dict[str, list[float]]) -> dict:
    """Means, spreads and the paired difference (now - before, seed by seed) with its standard error."""
    before, now = np.array(found["before"]), np.array(found["now"])
    difference = now - before
    return {
        "per_seed": found,
        "mean": {side: float(np.mean(values)) for side, values in found.items()},
        "std": {side: float(np.std(values, ddof=1)) for side, values in found.items()},
        "difference": float(difference.mean()),
        "difference_se": float(difference.std(ddof=1) / np.sqrt(len(difference))),
        "first_three_difference": float(difference[:3].mean()),
    }


def main() -> int:
    from tlcache.datasets import fashion_mnist, rotten_tomatoes

    results = {"meta": provenance("mlp_seeds.py"), "seeds": list(SEEDS), "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="tlcache-mlp-seeds-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        cache = work / "cache"
        rt_train, rt_test = rotten_tomatoes(work / "rt")
        fm_train, fm_test = fashion_mnist(work / "fmnist")
        tasks = {
            "Rotten Tomatoes 2000 / 1000, minilm": (embed(rt_train, "minilm", cache), embed(rt_test, "minilm", cache)),
            "Fashion-MNIST 3000 / 1000, efficientnet-lite0 @96 px": (
                embed(fm_train, "efficientnet-lite0", cache, **FM_BASE),
                embed(fm_test, "efficientnet-lite0", cache, **FM_BASE),
            ),
        }
        sides = {"before": checkout(BEFORE, work / "before-code"), "now": ROOT}
        for name, (train, test) in tasks.items():
            print(f"{name} ...", flush=True)
            results["tasks"][name] = summary(accuracies(sides, train, test, work / f"runs-{len(results['tasks'])}"))
    save_results("mlp_seeds", results, report(results))
    return 0


def report(results: dict) -> str:
    lines = ["# The mlp head before issue 15 and now, on the test items, ten seeds", "", made_by(results["meta"]), ""]
    lines += [" ".join(part.replace("\n", " ") for part in __doc__.split("\n\n")[:2]), ""]
    lines += [
        "| task | before: mean (std) | now: mean (std) | now - before, paired (standard error) | over seeds 0-2 | "
        "within 0.3 points or higher? |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, task in results["tasks"].items():
        mean, std = task["mean"], task["std"]
        met = "yes" if task["difference"] >= -TOLERANCE else "no"
        lines.append(
            f"| {name} | {mean['before']:.4f} ({std['before']:.4f}) | {mean['now']:.4f} ({std['now']:.4f}) | "
            f"{task['difference']:+.4f} ({task['difference_se']:.4f}) | {task['first_three_difference']:+.4f} | {met} |"
        )
    lines += ["", "Per seed (before / now):", ""]
    for name, task in results["tasks"].items():
        pairs = zip(task["per_seed"]["before"], task["per_seed"]["now"])
        lines.append(f"- {name}: " + ", ".join(f"{seed}: {b:.3f} / {n:.3f}" for seed, (b, n) in enumerate(pairs)))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_timed(main)
