"""Embedding on a CPU beside other work on the same cores: torch's thread count fixed (before, commit 1684010) or
following the cores the process gets (now, tlcache.threads, each batch's forward pass measured on its own).

For each task (Rotten Tomatoes' 2000 training texts through minilm; MNIST-5k's 1000 test images through
efficientnet-lite0 at 96 px, the demo's two backbones), `embed_source` with the defaults a user gets (bf16 where
the CPU has it) into a new folder, each embedding a process of its own (the clock starts after the imports; it
includes loading the model, alike for both sides), the sides taking turns, in the conditions of mlp_threads.py:
the cores free, beside one busy process, beside a two-threaded torch process. The two sides write the same
features: the digests of their stores' features are compared.

Run:  .venv/bin/python benchmarks/embed_threads.py   (about 15 minutes on 2 cores)
Writes benchmarks/results/embed_threads.md and embed_threads.json.
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
from heads_benchmark import FM_BASE, checkout
from mlp_threads import REPEATS, measure

BEFORE = "1684010"

EMBED = """
import hashlib, json, sys, tempfile, time
import numpy as np
from tlcache import FeatureStore, embed_source
source, options = sys.argv[1], json.loads(sys.argv[2])
started = time.perf_counter()
result = embed_source(source, out=tempfile.mkdtemp(dir="."), progress=False, reuse=False, **options)
seconds = time.perf_counter() - started
digest = hashlib.sha256(np.ascontiguousarray(FeatureStore(result.path).features()).tobytes()).hexdigest()[:16]
print(json.dumps({"seconds": seconds, "digest": digest}))
"""


def embedded(code: Path, task: tuple[Path, dict], work: Path) -> dict:
    """One timed embedding in a process of its own with the tlcache package at ``code``: its seconds and the digest
    of the features it wrote."""
    source, options = task
    done = subprocess.run(
        [sys.executable, "-c", EMBED, str(source), json.dumps(options)],
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=work,  # `python -c` puts the current folder first on sys.path, ahead of PYTHONPATH
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def render(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Embedding on a CPU beside other work on the same cores",
        "",
        made_by(meta),
        "",
        f"before: torch's thread count fixed (the tlcache package of commit {BEFORE}); now: following the cores the "
        "process gets (tlcache.threads, measured over each batch's forward pass). `embed_source` with the default "
        "options (bf16 products where the CPU has them) into a new folder, each embedding a process of its own, "
        "timed after the imports (loading the model included), the sides taking turns; median over "
        f"{REPEATS}. Competitors (started anew for each run): a Python loop (one core taken), and a process running "
        "bf16 products of 200x1280 by 1280x512 on two torch threads in a loop.",
        "",
        "| task | condition | before s | now s | before / now | same features |",
        "|---|---|---:|---:|---:|---|",
    ]
    for task, conditions in results["tasks"].items():
        for condition, sides in conditions.items():
            before, now = (float(np.median(sides[side]["seconds"])) for side in ("before", "now"))
            same = "yes" if len(set(sides["before"]["digests"] + sides["now"]["digests"])) == 1 else "NO"
            lines.append(f"| {task} | {condition} | {before:.2f} | {now:.2f} | {before / now:.2f} | {same} |")
    lines += [
        "",
        "same features: the digest of each side's stored features, bit for bit (the thread count changes no "
        "number: tests/test_threads.py).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    from tlcache.datasets import mnist_5k, rotten_tomatoes

    results = {"meta": provenance("embed_threads.py")}
    with tempfile.TemporaryDirectory(prefix="tlcache-embed-threads-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        tasks = {
            "Rotten Tomatoes 2000, minilm": (rotten_tomatoes(work / "rt")[0], {"backbone": "minilm"}),
            "MNIST-5k 1000, efficientnet-lite0 @96 px": (
                mnist_5k(work / "mnist")[1],
                {"backbone": "efficientnet-lite0", **FM_BASE},
            ),
        }
        codes = {"before": checkout(BEFORE, work / "before"), "now": Path(__file__).resolve().parents[1]}
        results["tasks"] = measure(codes, tasks, work, run=embedded)
    save_results("embed_threads", results, render(results))
    return 0


if __name__ == "__main__":
    run_timed(main)
