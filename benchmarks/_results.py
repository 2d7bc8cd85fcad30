"""Where every benchmark script writes what it measured: results/<name>.json (the figures) and results/<name>.md
(the report, with the command, code revision and machine it was made with), the report also printed."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
# The distributions whose versions change what a benchmark measures.
VERSIONED = ("tlcache", "torch", "torchvision", "transformers", "scikit-learn", "numpy", "scipy", "h5py")


def user_python(pycache: Path, **variables: str) -> dict[str, str]:
    """The environment of a timed process, as on a user's machine: Python keeps the modules it compiles (under
    ``pycache``), so only a module's first import compiles it. This project's machines set PYTHONDONTWRITEBYTECODE,
    which made every process compile every module of tlcache it imported (about 0.1 s a command): lifted here."""
    environment = {**os.environ, "PYTHONPYCACHEPREFIX": str(pycache), **variables}
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    return environment


def save_results(name: str, results: dict, report: str, folder: Path = RESULTS) -> None:
    """Write ``<name>.json`` and ``<name>.md`` to ``folder`` (results/ unless a trial run asks for another)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / f"{name}.md").write_text(report)
    print(report)


def provenance(script: str, argv: list[str] | None = None, extra: tuple[str, ...] = ()) -> dict:
    """How a run was made: the command, when, at which commit of this repository (``+changes`` when the code or
    the benchmarks differ from it), and on what: cores, threads, versions (``extra``: of the script's own peers)."""
    import torch

    args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *args]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": {
            "arch": platform.machine(),
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        },
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in (*VERSIONED, *extra)}},
    }


def made_by(meta: dict) -> str:
    """One line for a results file: the command, date, commit, machine and versions of ``provenance``."""
    m, v = meta["machine"], meta["versions"]
    versions = ", ".join(f"{name} {version}" for name, version in v.items())
    cpu = f"{m['cpu']}, " if m.get("cpu") else ""  # results made before the CPU was recorded have none
    return (
        f"Made by `{meta['command']}` on {meta['date']} at commit {meta['commit']} ({m['arch']}, {cpu}"
        f"{m['cores']} cores, {m['torch_threads']} torch threads, {m['device']}; {versions})."
    )


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--", "tlcache", "benchmarks", "pyproject.toml")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    # The results files themselves are written by the run: they do not make the code differ.
    changed = [line for line in changed.splitlines() if "benchmarks/results/" not in line]
    return commit + ("+changes" if changed else "")


def _cpu() -> str:
    """The CPU's model and its bfloat16 matrix instructions (AMX tiles, AVX-512 BF16 or none): machines of one kind
    here differ in them, and the bf16 products of embedding and of the mlp head with them, so a speed ratio holds
    for the CPU it names."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    bf16 = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "no bf16 instructions"
    return f"{model or platform.processor() or 'unknown'} ({bf16})"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_timed(main: Callable[[], int]) -> None:
    """A benchmark script's entry point: run ``main``, print its wall time on stderr and exit with its code."""
    started = time.perf_counter()
    code = main()
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    sys.exit(code)
