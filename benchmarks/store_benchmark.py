"""Feature-store benchmark: what the cache saves, what an incremental run costs, and that memory does not grow with
the store.

Measured in one run, on this machine (every embedding in fp32):
1. Images (efficientnet-lite0 at 96 px, the demo's setting) on a folder of small PNG files: the first embed, a
   cache-hit re-run, and an incremental run after adding 1% more images; then what fingerprinting the folder
   costs, cold (every file read) and warm (remembered digests), against embedding one batch.
2. Memory at a realistic width, each measurement in a fresh process (benchmarks/_memory_probe.py): 100,000 rows
   of 1280 float32 features (a 512 MB store) written through tlcache's StoreWriter in batches, as `embed` writes
   them; then `fit-head --head sgd` on that store with the process's data segment capped at half the store's
   size. Each is also run in a deliberately buffering variant (every row held in memory; the sgd head reading
   the whole store), which must fail the same targets: that is what shows the targets can fail.
3. float16 against float32 stores: logistic-regression accuracy on Rotten Tomatoes (canonical split, minilm) and
   Fashion-MNIST 3000 / 1000 (efficientnet-lite0 at 96 px).

Targets (issue 3): cache hit under 2% of the first embed; the writer's peak memory above its start at most an
eighth of the store's size; the sgd head completes under a cap of half the store's size; float16 accuracy within
0.2 points of float32.

Run:  .venv/bin/python benchmarks/store_benchmark.py        (about 6 minutes on 2 cores; needs `make fashion-mnist`)
Writes benchmarks/results/store.md and store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import made_by, provenance, save_results

PROBE = Path(__file__).parent / "_memory_probe.py"
MEMORY_ROWS, MEMORY_DIM = 100_000, 1280
WRITE_GROWTH_SHARE = 1 / 8  # the writer may hold at most this share of the store in memory at its peak
FIT_CAP_SHARE = 1 / 2  # the sgd head runs with its data segment capped at this share of the store's size
PROBE_TIMEOUT_S = 300  # the sgd fit takes about a minute; a process that outlives this has failed


def write_images(folder: Path, count: int, start: int = 0, seed: int = 0) -> None:
    """Small grey PNGs with a bright shape per class (10 classes), like a digits dataset."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed + start)
    for i in range(start, start + count):
        label = i % 10
        image = Image.fromarray(rng.integers(0, 40, (28, 28), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        x, y = rng.integers(2, 10, 2)
        shape = [x, y, x + 8 + label, y + 8 + label]
        (draw.ellipse if label % 2 else draw.rectangle)(shape, fill=int(150 + 10 * label))
        class_dir = folder / f"class{label}"
        class_dir.mkdir(parents=True, exist_ok=True)
        image.save(class_dir / f"{i:06d}.png")


def image_section(work: Path, n_images: int) -> dict:
    import tlcache
    from tlcache.sources import load_source

    folder, cache = work / "images", work / "cache"
    write_images(folder, n_images)
    time.sleep(2.5)  # let the files age past the racy-timestamp window, as files on disk normally have

    def embed():
        started = time.perf_counter()
        result = tlcache.embed_source(
            folder, "efficientnet-lite0", image_size=96, out=cache, precision="fp32", progress=False
        )
        return result, time.perf_counter() - started

    first, first_s = embed()
    hit, hit_s = embed()
    assert hit.cached and hit.path == first.path
    added = n_images // 100
    write_images(folder, added, start=n_images, seed=1)
    grown, grown_s = embed()

    cold_started = time.perf_counter()
    load_source(folder, fingerprint_index=None)
    cold_s = time.perf_counter() - cold_started
    warm_started = time.perf_counter()
    load_source(folder)
    warm_s = time.perf_counter() - warm_started
    backbone = tlcache.create_backbone("efficientnet-lite0", image_size=96).load("cpu")
    sample = sorted(folder.rglob("*.png"))[:64]
    backbone.embed(sample)  # warm-up
    batch_started = time.perf_counter()
    backbone.embed(sample)
    batch_s = time.perf_counter() - batch_started
    return {
        "items": n_images,
        "first_embed_s": first_s,
        "cache_hit_s": hit_s,
        "cache_hit_ratio": hit_s / first_s,
        "added_items": added,
        "incremental_s": grown_s,
        "incremental_embedded": grown.embedded,
        "incremental_reused": grown.reused,
        "incremental_ratio": grown_s / first_s,
        "fingerprint_cold_s": cold_s,
        "fingerprint_warm_s": warm_s,
        "one_batch_of_64_s": batch_s,
    }


def memory_section(work: Path, rows: int, dim: int) -> dict:
    """Peak memory of writing a store of ``rows`` x ``dim`` float32 features, and whether the sgd head fits it
    under a cap; tlcache and the deliberately buffering variant of each."""

    def probe(*args: str) -> dict:
        try:
            output = subprocess.run(
                [sys.executable, str(PROBE), *args], capture_output=True, text=True, check=True, timeout=PROBE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            return {"completed": False, "timed_out": True, "seconds": PROBE_TIMEOUT_S, "peak_above_baseline_mib": None}
        return json.loads(output.stdout.strip().splitlines()[-1])

    store_mib = rows * dim * 4 / 2**20
    cap_mib = int(store_mib * FIT_CAP_SHARE)
    results = {"rows": rows, "dim": dim, "store_mib": store_mib, "cap_mib": cap_mib}
    for variant, flags in (("tlcache", []), ("buffering", ["--buffering"])):
        store = work / f"memory-{variant}.h5"
        print(f"  writing ({variant}) ...", flush=True)
        written = probe("write", str(store), str(rows), str(dim), *flags)
        written["met"] = written["peak_above_baseline_mib"] <= WRITE_GROWTH_SHARE * store_mib
        print(f"  sgd under a {cap_mib} MiB cap ({variant}) ...", flush=True)
        fitted = probe("fit", str(work / "memory-tlcache.h5"), str(cap_mib), *flags)
        fitted["met"] = fitted["completed"]
        results[variant] = {"write": written, "fit": fitted}
    return results


C_GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]


def float16_section(work: Path) -> dict:
    """float32 and float16 stores of the same data: logreg accuracy at the default head and over a C grid."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import tlcache
    from tlcache.datasets import fashion_mnist, rotten_tomatoes

    tasks = {
        "Rotten Tomatoes 2000/1000, minilm": (rotten_tomatoes(work / "rt"), "minilm", {}),
        "Fashion-MNIST 3000/1000, efficientnet-lite0 @96 px": (
            fashion_mnist(work / "fmnist"),
            "efficientnet-lite0",
            {"image_size": 96},
        ),
    }
    out = {}
    for task, ((train_src, test_src), backbone, options) in tasks.items():
        data, default_head = {}, {}
        for dtype in ("float32", "float16"):
            train, test = (
                tlcache.embed_source(
                    src, backbone, dtype=dtype, out=work / "f16-cache", precision="fp32", progress=False, **options
                )
                for src in (train_src, test_src)
            )
            run = tlcache.fit_head(train.path, "logreg", test=test.path, seed=0, out=work / f"f16-{dtype}")
            default_head[dtype] = run.accuracy
            stores = tlcache.FeatureStore(train.path), tlcache.FeatureStore(test.path)
            data[dtype] = (stores[0].features(), stores[0].labels(), stores[1].features(), stores[1].labels())
            data[dtype + "_bytes"] = train.path.stat().st_size
        grid = []
        for C in C_GRID:
            predictions = {}
            for dtype in ("float32", "float16"):
                X, y, X_test, _ = data[dtype]
                model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)).fit(X, y)
                predictions[dtype] = model.predict(X_test)
            y_test = data["float32"][3]
            accuracy = {dtype: float((p == y_test).mean()) for dtype, p in predictions.items()}
            grid.append(
                {
                    "C": C,
                    **accuracy,
                    "difference_points": 100 * abs(accuracy["float32"] - accuracy["float16"]),
                    "same_prediction": float((predictions["float32"] == predictions["float16"]).mean()),
                }
            )
        out[task] = {
            "default_head": {
                **default_head,
                "difference_points": 100 * abs(default_head["float32"] - default_head["float16"]),
            },
            "store_bytes": {"float32": data["float32_bytes"], "float16": data["float16_bytes"]},
            "grid": grid,
            "grid_mean_difference_points": float(np.mean([g["difference_points"] for g in grid])),
        }
    return out


def render(results: dict) -> str:
    images, memory, half = results["images"], results["memory"], results["float16"]
    lines = [
        "# Feature-store benchmark",
        "",
        made_by(results["meta"]),
        "",
        "Selection protocol: nothing here is chosen; the float16 comparison fits the same heads on both stores and",
        "scores them on the test items.",
        "",
        f"## Cache hits and incremental runs: {images['items']} PNG files, efficientnet-lite0 at 96 px",
        "",
        "| run | seconds | of the first embed | rows embedded |",
        "|---|---:|---:|---:|",
        f"| first embed | {images['first_embed_s']:.2f} | 100% | {images['items']} |",
        f"| same embed again (cache hit) | {images['cache_hit_s']:.3f} | {100 * images['cache_hit_ratio']:.2f}% | 0 |",
        f"| after adding {images['added_items']} images (1%) | {images['incremental_s']:.2f} | "
        f"{100 * images['incremental_ratio']:.1f}% | {images['incremental_embedded']} "
        f"({images['incremental_reused']} reused) |",
        "",
        "Target: a cache hit under 2% of the first embed "
        f"({'met' if images['cache_hit_ratio'] < 0.02 else 'NOT met'}).",
        "",
        "Fingerprinting the whole folder (what every `embed` does first):",
        "",
        "| | seconds |",
        "|---|---:|",
        f"| cold: read and hash every file | {images['fingerprint_cold_s']:.3f} |",
        f"| warm: remembered digests, one stat per file | {images['fingerprint_warm_s']:.3f} |",
        f"| for scale: embedding one batch of 64 images | {images['one_batch_of_64_s']:.3f} |",
        "",
        f"## Memory at a realistic width: {memory['rows']:,} rows of {memory['dim']} float32 features "
        f"({memory['store_mib']:.0f} MiB), each in a fresh process",
        "",
        "Peak resident memory above the level after the imports. The buffering variant is the deliberately wrong",
        "one (every row held until the end; the sgd head reading the whole store first): it must fail, which shows",
        "the targets can.",
        "",
        f"| variant | write: peak above start (MiB) | at most {WRITE_GROWTH_SHARE * memory['store_mib']:.0f} MiB | "
        f"sgd under a {memory['cap_mib']} MiB cap: completed | s | peak above start (MiB) |",
        "|---|---:|---|---|---:|---:|",
    ]
    for variant in ("tlcache", "buffering"):
        write, fit = memory[variant]["write"], memory[variant]["fit"]
        fit_peak = "-" if fit["peak_above_baseline_mib"] is None else f"{fit['peak_above_baseline_mib']:.0f}"
        lines.append(
            f"| {variant} | {write['peak_above_baseline_mib']:.0f} | {'met' if write['met'] else 'NOT met'} | "
            f"{'yes' if fit['completed'] else 'no'} ({'met' if fit['met'] else 'NOT met'}) | {fit['seconds']:.1f} | "
            f"{fit_peak} |"
        )
    lines += [
        "",
        "## float16 against float32 stores: logistic regression on the same data",
        "",
        "Each task is embedded twice (float32 and float16 stores) and the same head is fitted on each. A difference",
        "of 0.1 points is one test item in 1000; the binomial standard error of each accuracy is about 1.4 points.",
        "",
    ]
    for task, result in half.items():
        head = result["default_head"]
        sizes = result["store_bytes"]
        lines += [
            f"### {task}",
            "",
            f"tlcache's default logreg head: float32 {head['float32']:.4f}, float16 {head['float16']:.4f}, "
            f"difference {head['difference_points']:.2f} points; train store {sizes['float32']:,} bytes in float32, "
            f"{sizes['float16']:,} in float16.",
            "",
            "| C (standardised logreg) | float32 | float16 | difference (points) | same prediction |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in result["grid"]:
            lines.append(
                f"| {row['C']:g} | {row['float32']:.4f} | {row['float16']:.4f} | {row['difference_points']:.2f} | "
                f"{100 * row['same_prediction']:.1f}% |"
            )
        lines += [
            "",
            f"Mean difference over the grid: {result['grid_mean_difference_points']:.2f} points "
            f"(target at most 0.2: {'met' if result['grid_mean_difference_points'] <= 0.2 else 'NOT met'}).",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="image files in the cache/incremental test")
    parser.add_argument("--memory-rows", type=int, default=MEMORY_ROWS, help="rows of the memory test's store")
    args = parser.parse_args()
    results = {"meta": provenance("store_benchmark.py")}
    with tempfile.TemporaryDirectory(prefix="tlcache-bench-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")  # a fresh fingerprint index: the first run is cold
        print("images ...", flush=True)
        results["images"] = image_section(work, args.images)
        print("memory ...", flush=True)
        results["memory"] = memory_section(work, args.memory_rows, MEMORY_DIM)
        print("float16 ...", flush=True)
        results["float16"] = float16_section(work)
    save_results("store", results, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
