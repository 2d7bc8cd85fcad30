"""The demo's wall time, as README quotes it: `pipelines/demo.py` run in a fresh folder, the first time with nothing
cached (data written, everything embedded, every head fitted), then WARM_RUNS times with everything embedded.

Each run is a process of its own, timed from start to exit (Python start-up and imports included, `make`'s check of
the venv not), in an empty working folder, so demo-output/ starts empty; Python keeps the modules it compiles, as on
a user's machine (_results.user_python). The table the demo prints is kept too. Nothing here is chosen on data.

Run:  .venv/bin/python benchmarks/demo_timing.py   (about 3 minutes on 2 cores, on an otherwise idle machine)
Writes benchmarks/results/demo.md and demo.json.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import ROOT, made_by, provenance, save_results, user_python

DEMO = ROOT / "pipelines" / "demo.py"
WARM_RUNS = 3  # the second run's time varies by a few seconds from run to run on a shared machine: the median


def run_demo(folder: Path) -> dict:
    env = user_python(folder / "pycache", TLCACHE_HOME=str(folder / "home"))  # nothing cached from elsewhere either
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(DEMO)], cwd=folder, env=env, capture_output=True, text=True, check=True)
    return {"seconds": time.perf_counter() - started, "output": done.stdout}


def render(results: dict) -> str:
    cold, warm = results["cold"], results["warm"]
    return "\n".join(
        [
            "# The demo's wall time",
            "",
            made_by(results["made"]),
            "",
            f"`python pipelines/demo.py` in an empty folder, once and then {len(warm['runs'])} times more, each run a "
            "process of its own timed from start to exit, Python's compiled modules kept between them as on a user's "
            "machine. Nothing here is chosen on data.",
            "",
            "| run | wall time |",
            "|---|---:|",
            f"| first (nothing cached: data written, both tasks embedded, heads fitted) | {cold['seconds']:.1f} s |",
            f"| second and later (everything embedded: the cache read, heads fitted), median of {len(warm['runs'])} "
            f"| {warm['seconds']:.1f} s ({', '.join(f'{t:.1f}' for t in warm['runs'])}) |",
            "",
            "The output of the median second run:",
            "",
            "```",
            warm["output"].rstrip(),
            "```",
            "",
        ]
    )


def main() -> int:
    results = {"made": provenance("demo_timing.py")}
    with tempfile.TemporaryDirectory(prefix="tlcache-demo-") as tmp:
        results["cold"] = run_demo(Path(tmp))
        print(f"first run {results['cold']['seconds']:.1f} s", flush=True)
        warm = []
        for _ in range(WARM_RUNS):
            warm.append(run_demo(Path(tmp)))
            print(f"run {len(warm) + 1}: {warm[-1]['seconds']:.1f} s", flush=True)
        times = [run["seconds"] for run in warm]
        median = sorted(warm, key=lambda run: run["seconds"])[len(warm) // 2]
        results["warm"] = {"seconds": float(np.median(times)), "runs": times, "output": median["output"]}
    save_results("demo", results, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
