"""The demo's wall time, as README quotes it: `pipelines/demo.py` run twice in a fresh folder, the first time with
nothing cached (data written, everything embedded, every head fitted), the second time with everything embedded.

Each run is a process of its own, timed from start to exit (Python start-up and imports included, `make`'s check of
the venv not), in an empty working folder, so demo-output/ starts empty. The table the demo prints is kept too.
Nothing here is chosen on data.

Run:  .venv/bin/python benchmarks/demo_timing.py   (about 3 minutes on 2 cores, on an otherwise idle machine)
Writes benchmarks/results/demo.md and demo.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import ROOT, made_by, provenance, save_results

DEMO = ROOT / "pipelines" / "demo.py"


def run_demo(folder: Path) -> dict:
    env = {**os.environ, "TLCACHE_HOME": str(folder / "home")}  # nothing cached from elsewhere either
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
            "`python pipelines/demo.py` in an empty folder, twice, each run a process of its own timed from start to "
            "exit. Nothing here is chosen on data.",
            "",
            "| run | wall time |",
            "|---|---:|",
            f"| first (nothing cached: data written, both tasks embedded, heads fitted) | {cold['seconds']:.1f} s |",
            f"| second (everything embedded: the cache read, heads fitted) | {warm['seconds']:.1f} s |",
            "",
            "The second run's output:",
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
        results["warm"] = run_demo(Path(tmp))
        print(f"second run {results['warm']['seconds']:.1f} s", flush=True)
    save_results("demo", results, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
