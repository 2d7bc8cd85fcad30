"""`tlcache embed --engine ray`: the rows left to embed, cut into content-addressed shards, embedded by Ray actors
(one backbone loaded per worker), each shard a complete store of its own; then copied, in order, into the one
store the local engine writes (same name, key, schema and features).

Why actors, not Ray Data: each shard is written by the local engine's own crash-safe code (a store of the shard's
items under the same config: its name is its key, it is resumed after a kill and published whole), which Ray Data's
streaming output would replace by a writer of its own; an actor keeps its model loaded from shard to shard, and Ray
restarts an actor that dies and retries its call, which then finds the shard's partial store and resumes it. A
rerun after the driver's death finds the finished shards by their keys and sends only the others. The shards live
in a folder beside the store (``.tlcache-shards/<key>``, on storage every worker can reach) until the store is
published.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlcache.backbones import Backbone
from tlcache.backbones.base import resolve_device, resolve_precision
from tlcache.errors import UserError
from tlcache.reuse import donor_stores, rows_from_donors
from tlcache.sources import Source
from tlcache.store import FeatureStore, StoreWriter, cache_key, probe_store, resolve_store_path

ENGINES = ("local", "ray")
SHARDS_DIR = ".tlcache-shards"
DEFAULT_SHARD_SIZE = 512  # items per shard (benchmarks/results/ray_engine.md measures the cost of a shard)
THREADS_PER_WORKER = 4  # CPU workers: a model per this many cores, unless --ray-workers says otherwise
RETRIES = 3  # restarts of a dead worker, and retries of the shard it held
SUMMARY = ("ray_workers", "shards", "shards_done_before", "rows_per_second_per_worker")  # for EmbedResult.engine


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: a Ray on this machine (started here unless RAY_ADDRESS names one)
    workers: int | None = None  # None: one per THREADS_PER_WORKER cores, or per --gpus-per-worker GPUs
    gpus_per_worker: float = 0.0
    shard_size: int = DEFAULT_SHARD_SIZE


RAY_OPTIONS = ("address", "ray_workers", "gpus_per_worker", "shard_size")  # the command line's names


def ray_options(engine: str, address, ray_workers, gpus_per_worker, shard_size) -> RayOptions:
    """The command line's Ray options, refused in one line when given without --engine ray."""
    given = {"--address": address, "--ray-workers": ray_workers, "--gpus-per-worker": gpus_per_worker or None}
    given["--shard-size"] = None if shard_size == DEFAULT_SHARD_SIZE else shard_size
    stray = [name for name, value in given.items() if value is not None]
    if engine != "ray" and stray:
        raise UserError(f"{stray[0]} applies to --engine ray; add --engine ray or drop it")
    return RayOptions(address, ray_workers, gpus_per_worker, shard_size)


def connect(options: RayOptions):
    """The ray module, connected to the cluster (or to the Ray this process started before)."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'tlcache[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(
                address=options.address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = options.address or "a Ray on this machine"
            token = (
                "; a cluster with token authentication also needs RAY_AUTH_MODE=token here"
                if options.address not in (None, "auto") and "RAY_AUTH_MODE" not in os.environ
                else ""
            )
            raise UserError(
                f"cannot connect to {where} ({str(exc).splitlines()[0]}); start one with `ray start --head` "
                f"and pass --address auto or HOST:PORT{token}"
            ) from None
    return ray


def device_and_precision(device: str, precision: str, options: RayOptions):
    """The workers' device and the compute type they run (resolved here: it is in the cache key)."""
    import torch

    if options.gpus_per_worker:
        if device == "cpu":
            raise UserError("--device cpu with --gpus-per-worker: drop one of them")
        target = torch.device("cuda")
        if precision == "auto":  # as a worker's GPU resolves it, asked of one
            ray = connect(options)
            _require(ray, "GPU", options.gpus_per_worker)
            probe = ray.remote(num_gpus=options.gpus_per_worker, num_cpus=0)(_gpu_precision)
            return target, ray.get(probe.remote())
        return target, precision
    if device.startswith("cuda"):
        raise UserError(f"--device {device} with --engine ray needs --gpus-per-worker (GPUs for each worker)")
    target = resolve_device("cpu")
    return target, resolve_precision(precision, target)  # workers' CPUs taken to be of this one's kind


def _gpu_precision() -> str:
    import torch

    return resolve_precision("auto", torch.device("cuda"))


def _require(ray, resource: str, each: float) -> float:
    total = float(ray.cluster_resources().get(resource, 0))
    if total < each:
        raise UserError(f"the Ray cluster has {total:g} {resource}s; a worker needs {each:g}")
    return total


def plan_workers(ray, options: RayOptions, shards: int) -> tuple[int, float]:
    """How many workers, and the CPUs each one is given (its torch threads)."""
    cpus = _require(ray, "CPU", 1e-3)
    if options.gpus_per_worker:
        gpus = _require(ray, "GPU", options.gpus_per_worker)
        workers = options.workers or int(gpus // options.gpus_per_worker)
    else:
        workers = options.workers or max(1, int(cpus // THREADS_PER_WORKER))
    workers = max(1, min(workers, shards))
    return workers, max(1, cpus // workers) if cpus >= workers else cpus / workers


class ShardWorker:
    """A Ray actor: the backbone loaded once, then one shard after another embedded into its own store."""

    def __init__(self, bb: Backbone, device: str, threads: int, settings: dict):
        import torch

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the worker's torch threads do the work
        torch.set_num_threads(max(1, threads))
        self.bb, self.device, self.settings = bb, device, settings
        self.bb.load(device)

    def pid(self) -> int:
        return os.getpid()

    def embed(self, shard: Source, folder: str) -> dict:
        from tlcache.embed import embed_source

        started = time.perf_counter()
        done = embed_source(
            shard, self.bb, out=folder, device=self.device, progress=False, reuse=False, **self.settings
        )
        return {"embedded": done.embedded, "seconds": time.perf_counter() - started, "worker": os.getpid()}


def shard_folder(path: Path, key: str) -> Path:
    return path.parent / SHARDS_DIR / key[:32]


def embed_rows(
    src: Source,
    bb: Backbone,
    writer: StoreWriter,
    pending: np.ndarray,
    device,
    folder: Path,
    config: str,
    settings: dict,
    options: RayOptions,
    progress: bool,
) -> dict[str, Any]:
    """Embed ``pending`` rows of ``src`` on Ray into shard stores in ``folder`` (``settings``: embed_source's
    options for them), then write them into ``writer``; how it went (for the store's attributes), with
    ``computed``: the rows embedded by this call."""
    folder = folder.resolve()  # the workers' current folder is not this process's
    earlier = donor_stores(folder / "any.h5", bb, config)  # shards a stopped run finished, whatever their size
    for targets, features, views in rows_from_donors([src.fingerprints[row] for row in pending], earlier):
        writer.write(pending[targets], features, views)
    pending = writer.pending()  # the shards below keep their bounds when whole shards were done (same size)
    shards = [pending[i : i + options.shard_size] for i in range(0, len(pending), options.shard_size)]
    paths = [_shard_path(folder, src.subset(rows), bb, config) for rows in shards]
    todo = [i for i, path in enumerate(paths) if not probe_store(path).complete]
    runs: list[dict] = []
    workers = 0
    if todo:
        ray = connect(options)
        workers, cpus = plan_workers(ray, options, len(todo))
        todo_rows = [shards[i] for i in todo]
        runs = _run_shards(ray, src, bb, device, todo_rows, folder, settings, options, (workers, cpus), progress)
    how = _copy_shards(src, writer, shards, paths)
    per_worker = defaultdict(lambda: [0, 0.0])
    for run in runs:
        per_worker[run["worker"]][0] += run["embedded"]
        per_worker[run["worker"]][1] += run["seconds"]
    rates = [rows / seconds for rows, seconds in per_worker.values() if seconds > 0]
    return how | {
        "engine": "ray",
        "ray_workers": workers,
        "shards": len(shards),
        "shards_done_before": len(earlier) + len(shards) - len(todo),
        "shard_size": options.shard_size,
        "rows_per_second_per_worker": round(float(np.mean(rates)), 1) if rates else None,
        "computed": sum(run["embedded"] for run in runs),
    }


def _shard_path(folder: Path, shard: Source, bb: Backbone, config: str) -> Path:
    return resolve_store_path(folder, bb.name, config, cache_key(shard.fingerprint, config))


def _run_shards(ray, src, bb, device, shards, folder, settings, options, size, progress) -> list[dict]:
    """The shards through ``size`` = (workers, CPUs each) actors, two calls in flight per actor (no idle gap
    between shards), with a progress bar of items across them."""
    from tqdm.auto import tqdm

    workers, cpus = size
    actor = ray.remote(ShardWorker).options(
        num_cpus=cpus, num_gpus=options.gpus_per_worker, max_restarts=RETRIES, max_task_retries=RETRIES
    )
    settings = {**settings, "precision": bb.precision}  # the workers compute as the key says
    pool = [actor.remote(bb, str(device), int(max(1, cpus)), settings) for _ in range(workers)]
    queue, running, load, runs = list(shards), {}, [0] * workers, []
    bar = tqdm(
        total=sum(len(rows) for rows in shards),
        unit="item",
        desc=f"embed {bb.name} on {workers} Ray worker{'s' if workers > 1 else ''}",
        disable=None if progress else True,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        with bar:
            while queue or running:
                while queue and len(running) < 2 * workers:
                    rows, index = queue.pop(0), load.index(min(load))
                    running[pool[index].embed.remote(src.subset(rows), str(folder))] = (rows, index)
                    load[index] += 1
                ready, _ = ray.wait(list(running), num_returns=1)
                rows, index = running.pop(ready[0])
                load[index] -= 1
                try:
                    runs.append(ray.get(ready[0]))
                except ray.exceptions.RayTaskError as exc:  # the shard's own error (a full disk): said as locally
                    cause = getattr(exc, "cause", None)
                    line = str(cause) if isinstance(cause, UserError) else str(exc).strip().splitlines()[-1]
                    raise UserError(line) from None
                except ray.exceptions.RayError as exc:  # the worker died, and again after each restart
                    raise UserError(
                        f"a Ray worker failed on a shard of {len(rows)} items, {RETRIES + 1} times "
                        f"({str(exc).strip().splitlines()[-1][:200]}); the finished shards are kept in {folder}: "
                        "run the same command again to go on from them"
                    ) from None
                bar.update(len(rows))
    finally:
        for handle in pool:
            ray.kill(handle)
    return runs


def _copy_shards(src: Source, writer: StoreWriter, shards: list[np.ndarray], paths: list[Path]) -> dict[str, Any]:
    """Each shard's rows into the store, and the items it could not read into its list; the text counts the local
    engine records (texts cut at the model's limit, or read in windows)."""
    how: dict[str, Any] = {}
    for rows, path in zip(shards, paths):
        shard = FeatureStore(path)
        skipped = dict(shard.skipped())
        kept = np.array([row for row in rows if src.ids[row] not in skipped], dtype=np.int64)
        if len(kept):
            writer.write(kept, shard.features(), shard.views())
        bad = [row for row in rows if src.ids[row] in skipped]
        if bad:
            writer.skip(bad, [skipped[src.ids[row]] for row in bad])
        for name in ("truncated_rows", "chunked_rows"):
            if name in shard.meta:
                how[name] = how.get(name, 0) + int(shard.meta[name])
        if "max_tokens" in shard.meta:
            how["max_tokens"] = int(shard.meta["max_tokens"])
    return how


def remove_shards(folder: Path) -> None:
    """The shards of a published store: copies of its rows, no longer needed."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # the shards' folder, when no other store's shards are left in it
    except OSError:
        pass
