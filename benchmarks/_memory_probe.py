"""One memory measurement of the store benchmark, in a process of its own; prints one JSON line.

    python benchmarks/_memory_probe.py write STORE ROWS DIM [--buffering]
        Write ROWS x DIM float32 features (seeded random numbers, 10 classes) through tlcache's StoreWriter in
        batches of 256 rows, as `embed` does. --buffering: the deliberately wrong variant, which holds every row
        in memory and writes them at the end.
    python benchmarks/_memory_probe.py fit STORE CAP_MIB [--buffering]
        `fit_head(STORE, "sgd", test_fraction=0.2)` with the process's data segment capped at CAP_MIB above what
        it holds after its imports (RLIMIT_DATA). --buffering: the deliberately wrong variant, whose sgd head
        reads the whole store into memory first, as an in-memory head would.

Reports the peak resident memory above the level after the imports (MiB), the seconds, and whether the work
completed (a MemoryError under the cap counts as not completed).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

BATCH = 256


def _status(field: str) -> float:
    """A field of /proc/self/status, in MiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def write(path: Path, rows: int, dim: int, buffering: bool) -> None:
    from tlcache.store import StoreWriter

    rng = np.random.default_rng(0)
    meta = {"cache_key": "memory-probe", "config_key": "memory-probe", "backbone": "random", "backbone_key": "random"}
    meta.update(weights_digest="-", preprocessing={}, layer="-", pooling="-", backbone_spec={}, source_options={})
    ids = [f"item-{i:07d}" for i in range(rows)]
    writer = StoreWriter.create(path, meta, ids, list(np.arange(rows) % 10), [f"c{k}" for k in range(10)], ids, dim=dim)
    held = []
    for start in range(0, rows, BATCH):
        index = np.arange(start, min(start + BATCH, rows))
        features = rng.standard_normal((len(index), dim), dtype=np.float32) + (index % 10)[:, None] * 0.05
        if buffering:
            held.append((index, features))
        else:
            writer.write(index, features)
    for index, features in held:
        writer.write(index, features)
    writer.finish({"device": "none"})
    writer.close()


def fit(path: Path, buffering: bool) -> float:
    import tlcache
    import tlcache.heads as heads

    if buffering:

        def read_all(pipeline, store, rows, labels, n_views, seed):
            X = store.features()[rows]  # the whole training set in memory at once
            pipeline.fit(X, labels[rows])

        heads._fit_streaming = read_all
    return tlcache.fit_head(path, "sgd", test_fraction=0.2, seed=0, out=path.parent / "sgd-run").accuracy


def main() -> int:
    task, path, *rest = sys.argv[1:]
    buffering = "--buffering" in rest
    rest = [a for a in rest if a != "--buffering"]
    # Everything the work imports, imported first (and the figures' backend drawn once), so the baseline holds it.
    import tlcache.figures
    import tlcache.heads
    import tlcache.store  # noqa: F401

    tlcache.heads.make_head("sgd")
    tlcache.figures.plot_confusion([[1, 0], [0, 1]], ["a", "b"], Path("/dev/null"))
    baseline = _status("VmRSS")
    if task == "fit":
        cap = int(rest[0])
        limit = int((_status("VmData") + cap) * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    started = time.perf_counter()
    result = {"task": task, "buffering": buffering, "completed": True}
    try:
        if task == "write":
            write(Path(path), int(rest[0]), int(rest[1]), buffering)
        else:
            result["accuracy"] = fit(Path(path), buffering)
    except MemoryError:
        result["completed"] = False
    result["seconds"] = time.perf_counter() - started
    # VmHWM, the high-water mark of this process's own memory: getrusage's ru_maxrss is kept across exec, so in a
    # process started by a large one it would report the parent's peak.
    result["peak_above_baseline_mib"] = _status("VmHWM") - baseline
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
