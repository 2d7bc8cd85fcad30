"""The Ray engine against the local engine on the same 5000 images, and what a shard costs.

Data: 5000 Fashion-MNIST training images (PNG files in class folders, drawn stratified with seed 0), embedded with
the defaults (efficientnet-lite0 at 224 px, precision auto: bf16 on this CPU). Each run is `tlcache embed` as a
process of its own, timed from start to exit (imports included), into an empty store folder, nothing cached:
local: `tlcache embed DIR --out A`; Ray: `tlcache embed DIR --out B --engine ray --address ADDR`, on a Ray runtime
started before the runs with `ray start --head --num-cpus N` (a cluster a user already runs; its start-up is
timed apart). The runs alternate, local then Ray, `--repeats` times each; the median is compared. Ray's default
on this machine is one worker holding every core, as the local engine does. The stores are compared (ids in
order, features to float rounding).

The cost of a shard: the Ray run again with smaller shards (more of them); the slope of wall time against the
number of shards, by least squares, is what each shard adds (a shard's store created, published and copied, and
its call's round trip), to size shards on a cluster.

Run:  .venv/bin/python benchmarks/ray_engine.py   (about 15 minutes on 2 cores; needs `make fashion-mnist` and
      the [ray] extra)
Writes benchmarks/results/ray_engine.md and ray_engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import RESULTS, made_by, provenance, save_results

TARGET = 1.2  # the Ray path's wall time at most this many times the local engine's
RAY = str(Path(sys.executable).with_name("ray"))  # the `ray` command of this Python's environment


def tlcache_embed(folder: Path, out: Path, env: dict, *extra: str) -> dict:
    """One `tlcache embed` process, timed from start to exit; its JSON result."""
    command = [sys.executable, "-m", "tlcache.cli", "embed", str(folder), "--out", str(out), "--json", "--no-progress"]
    started = time.perf_counter()
    done = subprocess.run([*command, *extra], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[3:])} {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    return {"seconds": time.perf_counter() - started, **json.loads(done.stdout)}


def start_ray(cpus: int, env: dict) -> tuple[str, float]:
    """`ray start --head`: the address to join and the seconds it took."""
    started = time.perf_counter()
    subprocess.run(
        [RAY, "start", "--head", f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats"],
        env=env,
        capture_output=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"]  # this process joins it as the runs do
    import ray

    ray.init(address="auto", logging_level="ERROR")
    address = ray.get_runtime_context().gcs_address
    ray.shutdown()
    return address, seconds


def same_store(a: str, b: str) -> float:
    """The largest difference between the features of two stores with the same ids in the same order."""
    from tlcache.store import FeatureStore

    first, second = FeatureStore(a), FeatureStore(b)
    assert first.ids() == second.ids() and Path(a).name == Path(b).name, "the stores differ"
    return float(np.abs(first.features() - second.features()).max())


def shard_bound(results: dict) -> str:
    """What the run with the most shards says about a shard's cost, where the slope is lost in the noise: its
    wall time above the fastest local run, shared among its shards, bounds what each one adds."""
    most = max(results["shard_runs"], key=lambda run: run["shards"])
    bound = max(0.0, most["seconds"] - min(results["local"]["seconds"])) / most["shards"]
    return (
        f"The run of {most['shards']} shards of {most['shard_size']} took {most['seconds']:.1f} s, "
        f"{most['seconds'] - min(results['local']['seconds']):+.1f} s from the fastest local run: unless its "
        f"embedding ran faster than that run's, a shard costs about {bound * 1000:.0f} ms or less here (its store "
        "created, published and copied, its call's round trip), below what this machine's run-to-run spread "
        "resolves by a slope."
    )


def report(results: dict) -> str:
    local, on_ray = results["local"], results["ray"]
    ratio = results["ratio"]
    lines = [
        "# The Ray engine against the local engine",
        "",
        made_by(results["made"]),
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"Ray runtime: `ray start --head --num-cpus {results['cpus']}` took {results['ray_start_seconds']:.1f} s "
        "(not in the times below: a cluster a user already runs).",
        "",
        "| engine | wall s (median) | per run | rows embedded | workers | shards |",
        "|---|---:|---|---:|---:|---:|",
        f"| local | {local['median']:.1f} | {', '.join(f'{s:.1f}' for s in local['seconds'])} | "
        f"{local['embedded']} | | |",
        f"| ray (default shards of {results['shard_size']}; rows/s in the worker "
        f"{', '.join(str(r) for r in on_ray['rows_per_second_per_worker'])}) | {on_ray['median']:.1f} | "
        f"{', '.join(f'{s:.1f}' for s in on_ray['seconds'])} | {on_ray['embedded']} | {on_ray['workers']} | "
        f"{on_ray['shards']} |",
        "",
        f"Ray against local: {ratio:.2f}x the wall time (target at most {TARGET}x: "
        f"{'met' if ratio <= TARGET else 'NOT met'}); run by run (each Ray run against the local run before it): "
        f"{', '.join(f'{ray_s / local_s:.2f}x' for local_s, ray_s in zip(local['seconds'], on_ray['seconds']))}. "
        "Largest feature "
        f"difference between the stores: {results['max_difference']:.2g}.",
        "",
        "## What a shard costs",
        "",
        "| shard size | shards | wall s | rows/s in the worker |",
        "|---:|---:|---:|---:|",
        *(
            f"| {run['shard_size']} | {run['shards']} | {run['seconds']:.1f} | {run['rows_per_second_per_worker']} |"
            for run in results["shard_runs"]
        ),
        "",
        f"Least squares over these runs: {results['per_shard_seconds'] * 1000:.0f} ms per shard, "
        f"{results['fixed_seconds']:.1f} s besides. {shard_bound(results)} A shard should hold enough items that "
        "its cost is small beside their embedding time.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[10, 50, 1000])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="write the report again from the results' JSON")
    args = parser.parse_args()
    if args.render:  # the figures as they were measured, in the report's current words
        results = json.loads((args.results_dir / "ray_engine.json").read_text())
        save_results("ray_engine", results, report(results), args.results_dir)
        return 0
    from tlcache.datasets import fashion_mnist
    from tlcache.ray_engine import DEFAULT_SHARD_SIZE

    cpus = os.cpu_count() or 1
    results = {"made": provenance("ray_engine.py"), "cpus": cpus, "shard_size": DEFAULT_SHARD_SIZE}
    with tempfile.TemporaryDirectory(prefix="tlcache-ray-") as tmp:
        work = Path(tmp)
        # Ray turns token authentication on where a token exists (~/.ray/auth_token); a driver given an explicit
        # address joins such a cluster only with RAY_AUTH_MODE=token, so the runtime and the runs use it always.
        env = {**os.environ, "TLCACHE_HOME": str(work / "home"), "RAY_AUTH_MODE": "token"}
        folder, _ = fashion_mnist(work / "fm", n_train=args.items, n_test=10)
        address, results["ray_start_seconds"] = start_ray(cpus, env)
        try:
            runs: dict[str, list[dict]] = {"local": [], "ray": []}
            for repeat in range(args.repeats):
                runs["local"].append(tlcache_embed(folder, work / f"local-{repeat}", env))
                runs["ray"].append(
                    tlcache_embed(folder, work / f"ray-{repeat}", env, "--engine", "ray", "--address", address)
                )
                local, on_ray = runs["local"][-1]["seconds"], runs["ray"][-1]["seconds"]
                print(f"repeat {repeat}: local {local:.1f} s, ray {on_ray:.1f} s", flush=True)
            shard_runs = []
            for size in args.shard_sizes:
                done = tlcache_embed(
                    folder,
                    work / f"shards-{size}",
                    env,
                    "--engine",
                    "ray",
                    "--address",
                    address,
                    "--shard-size",
                    str(size),
                )
                shard_runs.append(
                    {
                        "shard_size": size,
                        "shards": done["engine"]["shards"],
                        "seconds": done["seconds"],
                        "rows_per_second_per_worker": done["engine"]["rows_per_second_per_worker"],
                    }
                )
                print(f"shards of {size}: {done['seconds']:.1f} s")
        finally:
            subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
        results["max_difference"] = same_store(runs["ray"][0]["path"], runs["local"][0]["path"])
        shutil.rmtree(work / "fm", ignore_errors=True)
    for engine, done in runs.items():
        results[engine] = {
            "seconds": [run["seconds"] for run in done],
            "median": statistics.median(run["seconds"] for run in done),
            "embedded": done[0]["embedded"],
            "workers": done[0].get("engine", {}).get("ray_workers"),
            "shards": done[0].get("engine", {}).get("shards"),
            "rows_per_second_per_worker": [run.get("engine", {}).get("rows_per_second_per_worker") for run in done],
        }
    results["ratio"] = results["ray"]["median"] / results["local"]["median"]
    default_run = {
        "shard_size": DEFAULT_SHARD_SIZE,
        "shards": results["ray"]["shards"],
        "seconds": results["ray"]["median"],
        "rows_per_second_per_worker": statistics.median(results["ray"]["rows_per_second_per_worker"]),
    }
    results["shard_runs"] = sorted([*shard_runs, default_run], key=lambda run: run["shards"])
    slope, intercept = np.polyfit(
        [r["shards"] for r in results["shard_runs"]], [r["seconds"] for r in results["shard_runs"]], 1
    )
    results["per_shard_seconds"], results["fixed_seconds"] = float(slope), float(intercept)
    save_results("ray_engine", results, report(results), args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
