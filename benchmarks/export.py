"""The exported model against the run it came from, tlcache's own embedding and sentence-transformers.

Tasks: the demo's (Rotten Tomatoes 2000 / 1000 texts with minilm; MNIST-5k 4000 / 1000 PNG files at 96 px with
efficientnet-lite0), embedded with the defaults (precision auto: bf16 on this CPU), logreg and svm heads fitted with
seed 0 and scored on the test store, as `make demo` does. The logreg runs are exported at fp32 and at int8, the svm runs
at fp32 (with --force, so that the figures of a failed gate are recorded too: the table says which passed); the
gates run on the 1000 test items.
Each task is also embedded at fp32, its heads fitted and exported at fp32: what the export differs by when the store
carries no bf16 rounding.

Throughput: the same 2000 training texts (and the 1000 test images) through each side, the model loaded and warmed
up on other items first, median of `--repeats` timed runs, sides alternating: `tlcache embed` of the file (its
fastest path here: bf16, length-sorted batches of 64, into a fresh store), the fp32 and int8 exports
(`load_exported(...).run`, features and head, batches of 64 sorted by length), and sentence-transformers' `encode`
at its defaults (fp32, batches of 32). Latency: one test text at a time, 200 texts after 20 to warm up, through
the torch path (the run's backbone `embed` then its head's `predict`: the fastest serving path without export)
and each export (`predict`). Start-up: `tlcache predict` of a one-text file as a fresh process, the run folder
(torch, through an empty cache) against the int8 export, alternating, median of 3.

Run:  .venv/bin/python benchmarks/export.py   (about 10 minutes on 2 cores; needs `pip install -e '.[bench]'`)
Writes benchmarks/results/export.md and export.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import RESULTS, made_by, provenance, save_results

LATENCY_ITEMS, LATENCY_WARMUP = 200, 20


def demo_run(task: str, work: Path, precision: str = "auto") -> dict:
    """The demo's task embedded (at ``precision``) and a logreg and an svm head fitted on it: their run folders, the
    train and test sources."""
    import tlcache
    from tlcache.datasets import mnist_5k, rotten_tomatoes

    if task == "rotten-tomatoes":
        train, test = rotten_tomatoes(work / "data")
        backbone, options = "minilm", {}
    else:
        train, test = mnist_5k(work / "data")
        backbone, options = "efficientnet-lite0", {"image_size": 96}
    stores = [
        tlcache.embed_source(part, backbone, out=work / "cache", precision=precision, progress=False, **options)
        for part in (train, test)
    ]
    runs = {
        head: Path(
            tlcache.fit_head(stores[0].path, head, test=stores[1].path, seed=0, out=work / "runs" / head).out_dir
        )
        for head in ("logreg", "svm")
    }
    return {"run": runs["logreg"], "svm": runs["svm"], "train": train, "test": test}


def exports(task: str, run_dir: Path, quantizations=("none", "int8")) -> list[dict]:
    """The run exported at fp32 and int8: what each gate measured, and the file."""
    from tlcache.export import export_run
    from tlcache.runs import load_head

    sidecar = load_head(run_dir)[1]
    rows = []
    for quantize in quantizations:
        started = time.perf_counter()
        record = export_run(run_dir, run_dir / f"model-{quantize}.onnx", quantize=quantize, force=True)
        gates = record["gates"]
        rows.append(
            {
                "task": task,
                "head": sidecar["head"],
                "store_precision": sidecar["precision"],
                "quantize": quantize,
                "path": record["path"],
                "mib": record["bytes"] / 2**20,
                "export_seconds": time.perf_counter() - started,
                "gate": gates["gate"],
                "passed": gates["passed"],
                "failed": gates["failed"],
                **gates["measured"],
            }
        )
        print(f"{task} {sidecar['head']} {quantize}: {gates['measured']} passed={gates['passed']}", flush=True)
    return rows


def texts_of(source: Path) -> list[str]:
    with open(source, newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def throughput(sides: dict, items, repeats: int) -> dict:
    """Items per second of each side (median of ``repeats`` alternating runs), and the runs' seconds."""
    seconds = {name: [] for name in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            started = time.perf_counter()
            side(items)
            seconds[name].append(time.perf_counter() - started)
    return {
        name: {"seconds": runs, "per_second": len(items) / statistics.median(runs)} for name, runs in seconds.items()
    }


def tlcache_embed_side(work: Path, backbone, options: dict):
    """`tlcache embed` of a source into a fresh store each call, with the model already loaded."""
    import tlcache

    calls = iter(range(10**6))

    def run(source):
        tlcache.embed_source(source, backbone, out=work / f"embed-{next(calls)}", progress=False, **options)

    return run


def latency(predict_one, items: list) -> dict:
    """Milliseconds per single-item call: median and 99th percentile over LATENCY_ITEMS items."""
    for item in items[:LATENCY_WARMUP]:
        predict_one(item)
    times = []
    for item in items[LATENCY_WARMUP : LATENCY_WARMUP + LATENCY_ITEMS]:
        started = time.perf_counter()
        predict_one(item)
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99)), "calls": len(times)}


def torch_path(run_dir: Path):
    """The run's head on its backbone, in memory: backbone.embed of the item, then the head's predict."""
    from tlcache.backbones import create_backbone
    from tlcache.runs import load_head

    pipeline, sidecar = load_head(run_dir)
    backbone = create_backbone(**sidecar["backbone_spec"]).at_precision(sidecar["precision"])
    backbone.load()
    return lambda item: pipeline.predict(backbone.embed([item]))


def startup(run_dir: Path, model: Path, work: Path, repeats: int) -> dict:
    """Seconds from start to exit of `tlcache predict` on a one-text file: the run folder, then the export."""
    one = work / "one.csv"
    one.write_text("text\na quietly moving film\n", encoding="utf-8")
    commands = {
        "torch (run folder)": lambda i: [run_dir, one, "--cache-dir", work / f"startup-{i}", "--no-progress"],
        "int8 export": lambda i: [model, one],
    }
    seconds = {name: [] for name in commands}
    for i in range(repeats):
        for name, args in commands.items():
            command = [sys.executable, "-m", "tlcache.cli", "predict", *map(str, args(i)), "--out", str(work / "p.csv")]
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - started)
    return {name: {"seconds": runs, "median": statistics.median(runs)} for name, runs in seconds.items()}


def text_speed(run_dir: Path, train: Path, test: Path, work: Path, repeats: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from tlcache.backbones import create_backbone
    from tlcache.backbones.transformers_text import minilm_dir
    from tlcache.exported import load_exported

    texts, test_texts = texts_of(train), texts_of(test)
    warm = work / "warm.csv"
    warm.write_text("text\n" + "\n".join(f"warm-up text number {i}" for i in range(64)) + "\n", encoding="utf-8")
    backbone = create_backbone("minilm")
    embed = tlcache_embed_side(work, backbone, {"precision": "auto"})
    embed(warm)
    models = {q: load_exported(run_dir / f"model-{q}.onnx") for q in ("none", "int8")}
    for model in models.values():
        model.run(test_texts[:64])
    peer = SentenceTransformer(str(minilm_dir()), device="cpu")
    peer.encode(test_texts[:64])
    sides = {
        "tlcache embed (bf16)": lambda _: embed(train),
        "export fp32": lambda items: models["none"].run(items),
        "export int8": lambda items: models["int8"].run(items),
        "sentence-transformers encode (fp32)": lambda items: peer.encode(items),
    }
    speeds = throughput(sides, texts, repeats)
    torch_one = torch_path(run_dir)
    latencies = {
        "torch (backbone embed + head predict)": latency(torch_one, test_texts),
        "export fp32": latency(lambda t: models["none"].predict([t]), test_texts),
        "export int8": latency(lambda t: models["int8"].predict([t]), test_texts),
    }
    return {"items": len(texts), "throughput": speeds, "latency": latencies}


def image_speed(run_dir: Path, test: Path, work: Path, repeats: int) -> dict:
    from tlcache.backbones import create_backbone
    from tlcache.exported import load_exported
    from tlcache.sources import load_source, source_from_items

    paths = load_source(test).items
    backbone = create_backbone("efficientnet-lite0", image_size=96)
    embed = tlcache_embed_side(work, backbone, {"precision": "auto"})
    models = {q: load_exported(run_dir / f"model-{q}.onnx") for q in ("none", "int8")}
    for model in models.values():
        model.run(paths[:64])
    embed(source_from_items(paths[:64], "image"))
    sides = {
        "tlcache embed (bf16)": lambda _: embed(test),
        "export fp32": lambda items: models["none"].run(items),
        "export int8": lambda items: models["int8"].run(items),
    }
    return {"items": len(paths), "throughput": throughput(sides, paths, repeats)}


def report(results: dict) -> str:
    lines = [
        "# Exported models: fidelity, throughput, latency, start-up",
        "",
        made_by(results["made"]),
        "",
        " ".join(__doc__.split("\n\n")[1:3]).replace("\n", " "),
        "",
        "## Fidelity (the gates, on the 1000 test items)",
        "",
        "| task | head | store | export | gate | cosine to the cache (mean / worst) | accuracy (run) | ECE (run) "
        "| same predictions | passed | MiB |",
        "|---|---|---|---|---|---|---|---|---:|---|---:|",
    ]
    for row in results["exports"]:
        verdict = "yes" if row["passed"] else "no: " + "; ".join(row["failed"])
        lines.append(
            f"| {row['task']} | {row['head']} | {row['store_precision']} | "
            f"{'int8' if row['quantize'] == 'int8' else 'fp32'} | "
            f"{row['gate']} | "
            f"{row['mean_cosine']:.5f} / {row['min_cosine']:.5f} | {row['accuracy']:.4f} ({row['run_accuracy']:.4f}) | "
            f"{row['ece']:.4f} ({row['run_ece']:.4f}) | {row['same_predictions']:.3f} | {verdict} | {row['mib']:.1f} |"
        )
    for title, section in (("Texts", results["text"]), ("Images", results["image"])):
        lines += ["", f"## {title}: throughput on {section['items']} items", "", "| side | items/s | runs (s) |"]
        lines.append("|---|---:|---|")
        for name, speed in section["throughput"].items():
            runs = ", ".join(f"{s:.2f}" for s in speed["seconds"])
            lines.append(f"| {name} | {speed['per_second']:.0f} | {runs} |")
    lines += ["", "## Single-text latency", "", "| path | median ms | 99th percentile ms |", "|---|---:|---:|"]
    for name, timing in results["text"]["latency"].items():
        lines.append(f"| {name} | {timing['median_ms']:.2f} | {timing['p99_ms']:.2f} |")
    lines += ["", "## Start-up of `tlcache predict` (one text, a fresh process)", "", "| path | median s | runs (s) |"]
    lines.append("|---|---:|---|")
    for name, timing in results["startup"].items():
        lines.append(f"| {name} | {timing['median']:.2f} | {', '.join(f'{s:.2f}' for s in timing['seconds'])} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict = {"made": provenance("export.py", extra=("onnx", "onnxruntime", "sentence-transformers"))}
    with tempfile.TemporaryDirectory(prefix="tlcache-export-bench-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        text = demo_run("rotten-tomatoes", work / "text")
        image = demo_run("mnist-5k", work / "image")
        results["exports"] = exports("rotten-tomatoes", text["run"]) + exports("mnist-5k", image["run"])
        for task, done in (("rotten-tomatoes", text), ("mnist-5k", image)):  # the svm head, whole in the graph
            results["exports"] += exports(task, done["svm"], ("none",))
        for task in ("rotten-tomatoes", "mnist-5k"):  # the same at fp32 throughout: what rounding the store adds
            fp32 = demo_run(task, work / f"{task}-fp32", "fp32")
            results["exports"] += exports(task, fp32["run"], ("none",)) + exports(task, fp32["svm"], ("none",))
        results["text"] = text_speed(text["run"], text["train"], text["test"], work / "text", args.repeats)
        print(json.dumps(results["text"]), flush=True)
        results["image"] = image_speed(image["run"], image["test"], work / "image", args.repeats)
        results["startup"] = startup(text["run"], text["run"] / "model-int8.onnx", work / "text", args.repeats)
    save_results("export", results, report(results), args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
