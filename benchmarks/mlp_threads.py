"""The mlp head's fit beside other work on the same cores: torch's thread count fixed (before, commit 9800d23) or
following the cores the process gets (now, tlcache.threads).

For each task's training store (Rotten Tomatoes 2000 / minilm, MNIST-5k 4000 / efficientnet-lite0 @96 px, the
demo's two tasks), `make_head("mlp", 0).fit(X, y)` with each side's tlcache package, each fit a process of its
own (imports and a small warm-up fit before the clock), the sides taking turns, in three conditions: the cores
free; beside one busy process (a Python loop: one core taken); beside a two-threaded torch process (bf16 products
of the mlp's sizes in a loop, as another training would run). The competitor starts before each fit and is stopped
after it. The two sides fit the same models: the digests of their probabilities on the training rows are compared.

Run:  .venv/bin/python benchmarks/mlp_threads.py   (about 12 minutes on 2 cores)
Writes benchmarks/results/mlp_threads.md and mlp_threads.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import made_by, provenance, run_timed, save_results
from heads_benchmark import FM_BASE, checkout, embed

BEFORE = "9800d23"
REPEATS = 3  # timed fits per side and condition, each in a process of its own, the sides taking turns
COMPETITORS = {
    "the cores free": None,
    "beside one busy process": "while True: pass",
    "beside a two-threaded torch process": (
        "import torch\ntorch.set_num_threads(2)\n"
        "x, w = torch.randn(200, 1280).bfloat16(), torch.randn(1280, 512).bfloat16()\n"
        "while True: x @ w"
    ),
}

FIT = """
import hashlib, json, sys, time
import numpy as np
from tlcache import FeatureStore
from tlcache.heads import make_head
store = FeatureStore(sys.argv[1])
X, y = store.features(), store.labels()
make_head("mlp", 0).fit(X[:: len(y) // 300], y[:: len(y) // 300])  # torch's kernels and thread pool warmed up
head = make_head("mlp", 0)
started = time.perf_counter()
head.fit(X, y)
seconds = time.perf_counter() - started
digest = hashlib.sha256(np.ascontiguousarray(head.predict_proba(X)).tobytes()).hexdigest()[:16]
print(json.dumps({"seconds": seconds, "digest": digest}))
"""


def fit(code: Path, store: Path, work: Path) -> dict:
    """One timed fit in a process of its own with the tlcache package at ``code``: its seconds and digest."""
    environment = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(
        [sys.executable, "-c", FIT, str(store)],
        env=environment,
        cwd=work,  # `python -c` puts the current folder first on sys.path, ahead of PYTHONPATH
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(codes: dict[str, Path], stores: dict[str, Path], work: Path, run=None) -> dict:
    """``run(code, store, work)`` (default: :func:`fit`) for each task, condition and side, the sides taking turns:
    per task and condition, each side's seconds and digests."""
    run = run or fit
    results = {}
    for task, store in stores.items():
        for condition, competitor in COMPETITORS.items():
            row = results.setdefault(task, {}).setdefault(condition, {})
            for _ in range(REPEATS):
                for side, code in codes.items():
                    busy = subprocess.Popen([sys.executable, "-c", competitor]) if competitor else None
                    try:
                        time.sleep(1.0 if busy else 0.0)  # the competitor under way
                        done = run(code, store, work)
                    finally:
                        if busy:
                            busy.kill()
                            busy.wait()
                    kept = row.setdefault(side, {"seconds": [], "digests": []})
                    kept["seconds"].append(done["seconds"])
                    kept["digests"].append(done["digest"])
            for side, kept in row.items():
                print(f"  {task}, {condition}, {side}: {np.median(kept['seconds']):.2f} s", flush=True)
    return results


def render(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# The mlp head beside other work on the same cores",
        "",
        made_by(meta),
        "",
        f"before: torch's thread count fixed (the tlcache package of commit {BEFORE}); now: following the cores the "
        'process gets (tlcache.threads). `make_head("mlp", 0).fit(X, y)` on each task\'s training store, each fit '
        "a process of its own (imports and a warm-up fit on 300 rows before the clock), the sides taking turns; "
        f"median over {REPEATS} fits. Competitors (started anew for each fit): a Python loop (one core taken), and a "
        "process running bf16 products of 200x1280 by 1280x512 on two torch threads in a loop.",
        "",
        "| task | condition | before s | now s | before / now | same models |",
        "|---|---|---:|---:|---:|---|",
    ]
    for task, conditions in results["tasks"].items():
        for condition, sides in conditions.items():
            before, now = (float(np.median(sides[side]["seconds"])) for side in ("before", "now"))
            same = "yes" if len(set(sides["before"]["digests"] + sides["now"]["digests"])) == 1 else "NO"
            lines.append(f"| {task} | {condition} | {before:.2f} | {now:.2f} | {before / now:.2f} | {same} |")
    lines += [
        "",
        "same models: the digest of each side's probabilities on the training rows (the thread count changes no "
        "number: tests/test_threads.py).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    from tlcache.datasets import mnist_5k, rotten_tomatoes

    results = {"meta": provenance("mlp_threads.py")}
    with tempfile.TemporaryDirectory(prefix="tlcache-threads-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        cache = work / "cache"
        stores = {
            "Rotten Tomatoes": embed(rotten_tomatoes(work / "rt")[0], "minilm", cache),
            "MNIST-5k": embed(mnist_5k(work / "mnist")[0], "efficientnet-lite0", cache, **FM_BASE),
        }
        codes = {"before": checkout(BEFORE, work / "before"), "now": Path(__file__).resolve().parents[1]}
        results["tasks"] = measure(codes, stores, work)
    save_results("mlp_threads", results, render(results))
    return 0


if __name__ == "__main__":
    run_timed(main)
