"""Embedding throughput: the tutorial-style loop against `tlcache embed`, and each against the machine's limit.

Measured in one run, on the same files, every side at equal footing: loaded once, warmed up by the same untimed
pass over the first 64 items, then timed --repeats times (3 by default) over all items; the tables give the median,
the ratios are ratios of medians, and the spread (slowest minus fastest, over the median) says how far to trust them.
1. torchvision:resnet50 (random weights: speed does not depend on them) and efficientnet-lite0 at 224 px, from
   JPEG files on disk (photo crops of 375 x 500 px, quality 90, made from scikit-learn's sample photos). The
   tutorial loop: NCHW, PIL decoding in the main thread, batch 32, `torch.no_grad`, in fp32 and under bf16
   autocast (tlcache's mixed precision). tlcache: the library call behind `tlcache embed` (fingerprints, decoding
   on all cores before each batch, channels-last, batch norms folded, the HDF5 store), in fp32 and with
   `--precision auto`; then `--compile on`: the first run in a fresh inductor cache pays the one-time compilation,
   the next runs are the steady state of a long run. Compiled ratios are given with and without that first run.
2. minilm on 2000 Rotten Tomatoes snippets (the canonical training split): the tutorial loop (every text padded
   to 128 tokens, batch 32) in fp32 and under bf16 autocast; sentence-transformers' `encode` (batch 32) on the
   same packaged model folder, in fp32, under bf16 autocast and with bf16 weights (`model_kwargs={"torch_dtype":
   torch.bfloat16}`, its own fast path); and tlcache (length-sorted batches) in fp32 and `--precision auto`.
3. The machine's limit: a measured bf16 matrix-multiply peak (best of n x n products, n up to 4096) divided by
   the model's FLOPs per item (torch's FlopCounterMode; for texts, each text at its own token length, no padding).
4. Agreement of the automatic precision with fp32: mean and lowest cosine similarity of the features, and on
   Fashion-MNIST 3000 / 1000 (efficientnet-lite0 at 96 px) the accuracy of the logistic-regression head on each.
5. `--compile auto`: the number of images from which it compiles (COMPILE_AUTO_MIN_ITEMS) against the measured
   break-even of compiling, for each image model.

Targets (issue 5), each at tlcache's default precision against the baseline at its default (fp32), and also at
equal precision: ResNet-50 at least 4.5 times the tutorial loop and at least 65% of the limit; MiniLM at least
8 times the padded loop and at least 2 times sentence-transformers; mean cosine at least 0.995 and logistic
regression within 0.3 points. Nothing here is chosen on data.

The same script runs unchanged on a CUDA machine (device auto), where the peak is measured on the GPU.

Run:  .venv/bin/python benchmarks/embed_throughput.py   (about 25 minutes on 2 cores, on an otherwise idle
      machine; needs `make fashion-mnist` and `pip install sentence-transformers`, both done by `make bench-embed`)
Writes benchmarks/results/embed_throughput.md and embed_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _results import RESULTS, made_by, provenance, save_results

TUTORIAL_BATCH = 32
TEXT_MAX_LENGTH = 128
WARMUP_ITEMS = 64
IMAGE_MODELS = {  # name -> (create_backbone options, mean, std)
    "torchvision:resnet50": ({"weights": "random"}, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "efficientnet-lite0": ({}, [127 / 255] * 3, [128 / 255] * 3),
}
# A side of a comparison: items in (a list of paths or texts, or a source tlcache reads), features out.
Side = Callable[[object], np.ndarray]


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bf16_peak(device) -> float:
    """Measured bf16 matrix-multiply FLOP/s: the best of 5 products at each of n = 1024, 2048 and 4096 (on 2 CPU
    cores the smallest ran fastest: 0.95 TFLOP/s against 0.81 at 4096)."""
    import torch

    best = 0.0
    for n in (1024, 2048, 4096):
        a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        torch.mm(a, b)
        for _ in range(5):
            synchronize(device)
            started = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - started))
    return best


def count_flops(function, *args) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        function(*args)
    return counter.get_total_flops()


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEG photos of 375 x 500 (or 500 x 375) px: random crops of scikit-learn's sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(image) for image in load_sample_images().images]  # 427 x 640 each
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = int(rng.integers(260, 427)), int(rng.integers(200, 320))
        left, top = int(rng.integers(0, 640 - width)), int(rng.integers(0, 427 - height))
        size = (500, 375) if index % 3 else (375, 500)
        path = folder / f"photo_{index:05d}.jpg"
        photo.crop((left, top, left + width, top + height)).resize(size, Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def timed(side: Side, warmup, items, count: int, repeats: int, device) -> tuple[dict, np.ndarray]:
    """``side`` run once untimed on ``warmup``, then timed ``repeats`` times on ``items`` (``count`` of them):
    the seconds of each repeat, their median, items per second at the median and the spread (slowest minus
    fastest over the median); and the features of the last repeat."""
    side(warmup)
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        features = side(items)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return timing(seconds, count), features


def timing(seconds: list[float], count: int) -> dict:
    median = statistics.median(seconds)
    return {
        "seconds": seconds,
        "median_s": median,
        "items_per_s": count / median,
        "spread": (max(seconds) - min(seconds)) / median,
    }


def autocast(device, precision: str):
    """The mixed precision tlcache computes in (``precision`` bf16 or fp16) for a baseline; fp32: none."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


def tutorial_images(model, mean, std, device, precision: str) -> Side:
    """The loop of the tutorials: PIL in the main thread, NCHW, batch 32, in ``precision``."""
    import torch
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )

    def run(paths: list[Path]) -> np.ndarray:
        outputs = []
        with torch.no_grad(), autocast(device, precision):
            for start in range(0, len(paths), TUTORIAL_BATCH):
                batch = torch.stack(
                    [transform(Image.open(p).convert("RGB")) for p in paths[start : start + TUTORIAL_BATCH]]
                )
                outputs.append(model(batch.to(device)).float().cpu())
        return torch.cat(outputs).numpy()

    return run


def tlcache_side(backbone, work: Path, tag: str, precision: str, device: str = "auto", compile_mode="auto") -> Side:
    """`tlcache embed` of a source, each call into a cache folder of its own (so nothing is a cache hit), with the
    model already loaded (as the tutorial's is)."""
    import tlcache

    runs = itertools.count()

    def run(source) -> np.ndarray:
        cache = work / f"{tag}-{next(runs)}"
        result = tlcache.embed_source(
            source, backbone, out=cache, precision=precision, device=device, compile_mode=compile_mode, progress=False
        )
        return tlcache.FeatureStore(result.path).features()

    return run


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean and lowest cosine similarity of matching rows."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    each = (a * b).sum(axis=1)
    return {"mean": float(each.mean()), "min": float(each.min())}


def image_section(name: str, paths: list[Path], warmup_dir: Path, work: Path, peak: float, repeats: int, device):
    import torch

    from tlcache.backbones.base import resolve_precision
    from tlcache.backbones.registry import create_backbone

    options, mean, std = IMAGE_MODELS[name]
    backbone = create_backbone(name, **options).load(str(device))
    # The tutorial's model: the same weights, as built (no folding, NCHW), classifier removed.
    plain = create_backbone(name, **options)
    plain._optimize = lambda: None
    plain.load(str(device))
    auto = resolve_precision("auto", device)
    flops = count_flops(plain.forward, torch.zeros(1, 3, 224, 224, device=device))
    n, source, warmup = len(paths), paths[0].parent, sorted(warmup_dir.iterdir())
    sides = {
        "tutorial fp32": (tutorial_images(plain.forward, mean, std, device, "fp32"), warmup, paths),
        f"tutorial {auto}": (tutorial_images(plain.forward, mean, std, device, auto), warmup, paths),
        "tlcache fp32": (tlcache_side(backbone, work, f"{name}-fp32", "fp32"), warmup_dir, source),
        f"tlcache {auto}": (tlcache_side(backbone, work, f"{name}-auto", "auto"), warmup_dir, source),
    }
    timings, features = {}, {}
    for side_name, (side, warm, items) in sides.items():
        timings[side_name], features[side_name] = timed(side, warm, items, n, repeats, device)
        print(f"  {side_name}: {timings[side_name]['items_per_s']:.1f} images/s", flush=True)
    compiled = tlcache_side(backbone, work, f"{name}-compiled", "auto", compile_mode="on")
    started = time.perf_counter()
    compiled(source)  # the first run in a fresh inductor cache: the one-time compilation
    first_s = time.perf_counter() - started
    steady, compiled_features = timed(compiled, warmup_dir, source, n, repeats, device)
    return summarise_images(n, flops, peak / flops, auto, timings, features, first_s, steady, compiled_features)


def summarise_images(n, flops, limit, auto, timings, features, first_s, steady, compiled_features) -> dict:
    eager = timings[f"tlcache {auto}"]["median_s"]
    compile_s = first_s - steady["median_s"]
    saved_per_item = (eager - steady["median_s"]) / n
    return {
        "items": n,
        "gflops_per_item": flops / 1e9,
        "limit_items_per_s": limit,
        "precision_auto": auto,
        "timings": timings,
        "ratio_auto_vs_tutorial_fp32": timings["tutorial fp32"]["median_s"] / eager,
        "ratio_auto_vs_tutorial_auto": timings[f"tutorial {auto}"]["median_s"] / eager,
        "ratio_fp32_vs_tutorial_fp32": timings["tutorial fp32"]["median_s"] / timings["tlcache fp32"]["median_s"],
        "share_of_limit": n / eager / limit,
        "cosine_tutorial_vs_tlcache_fp32": cosines(features["tutorial fp32"], features["tlcache fp32"]),
        "cosine_tutorial_auto_vs_fp32": cosines(features[f"tutorial {auto}"], features["tutorial fp32"]),
        "cosine_auto_vs_fp32": cosines(features[f"tlcache {auto}"], features["tlcache fp32"]),
        "compiled_first_run_s": first_s,
        "compile_seconds": compile_s,
        "compiled_steady": steady,
        "ratio_compiled_vs_tutorial_fp32": timings["tutorial fp32"]["median_s"] / steady["median_s"],
        "ratio_compiled_vs_tutorial_auto": timings[f"tutorial {auto}"]["median_s"] / steady["median_s"],
        "ratio_compiled_first_run_vs_tutorial_fp32": timings["tutorial fp32"]["median_s"] / first_s,
        "share_of_limit_compiled": n / steady["median_s"] / limit,
        "cosine_compiled_vs_auto": cosines(compiled_features, features[f"tlcache {auto}"]),
        "break_even_items": compile_s / saved_per_item if saved_per_item > 0 else None,
    }


def padded_loop(tokenizer, model, device, precision: str) -> Side:
    """The tutorial loop for texts: every text padded to 128 tokens, batch 32, mean-pooled, in ``precision``."""
    import torch

    def run(texts: list[str]) -> np.ndarray:
        outputs = []
        with torch.no_grad(), autocast(device, precision):
            for start in range(0, len(texts), TUTORIAL_BATCH):
                inputs = tokenizer(
                    texts[start : start + TUTORIAL_BATCH],
                    padding="max_length",
                    truncation=True,
                    max_length=TEXT_MAX_LENGTH,
                    return_tensors="pt",
                ).to(device)
                hidden = model(**inputs).last_hidden_state.float()
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                outputs.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).cpu())
        return torch.cat(outputs).numpy()

    return run


def sentence_transformers_side(folder: Path, device, precision: str, weights_bf16: bool = False) -> Side:
    """sentence-transformers' `encode` (batch 32) on the same model folder: under ``precision``'s autocast, or
    with its weights in bf16 (its own fast path)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model_kwargs = {"torch_dtype": torch.bfloat16} if weights_bf16 else None
    peer = SentenceTransformer(str(folder), device=str(device), model_kwargs=model_kwargs)

    def run(texts: list[str]) -> np.ndarray:
        with autocast(device, precision):
            return peer.encode(texts, batch_size=TUTORIAL_BATCH, convert_to_numpy=True).astype(np.float32)

    return run


def text_section(texts: list[str], csv_path: Path, warmup_csv: Path, work: Path, peak: float, repeats: int, device):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tlcache.backbones.base import resolve_precision
    from tlcache.backbones.registry import create_backbone
    from tlcache.backbones.transformers_text import minilm_dir

    folder = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval().to(device)
    backbone = create_backbone("minilm").load(str(device))
    auto = resolve_precision("auto", device)
    warmup = texts[:WARMUP_ITEMS]
    sides = {
        "padded fp32": (padded_loop(tokenizer, model, device, "fp32"), warmup, texts),
        f"padded {auto}": (padded_loop(tokenizer, model, device, auto), warmup, texts),
        "sentence-transformers fp32": (sentence_transformers_side(folder, device, "fp32"), warmup, texts),
        f"sentence-transformers {auto}": (sentence_transformers_side(folder, device, auto), warmup, texts),
        "sentence-transformers bf16 weights": (
            sentence_transformers_side(folder, device, "fp32", weights_bf16=True),
            warmup,
            texts,
        ),
        "tlcache fp32": (tlcache_side(backbone, work, "minilm-fp32", "fp32"), warmup_csv, csv_path),
        f"tlcache {auto}": (tlcache_side(backbone, work, "minilm-auto", "auto"), warmup_csv, csv_path),
    }
    n = len(texts)
    timings, features = {}, {}
    for side_name, (side, warm, items) in sides.items():
        timings[side_name], features[side_name] = timed(side, warm, items, n, repeats, device)
        print(f"  {side_name}: {timings[side_name]['items_per_s']:.1f} texts/s", flush=True)

    # FLOPs of one text grow as a L + b L^2 in its token length L; fit from two lengths, check on a third.
    def flops_at(length):
        ids = torch.full((1, length), 1000, device=device)
        return count_flops(lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids)))

    f16, f64, f128 = flops_at(16), flops_at(64), flops_at(128)
    b = (f128 / 128 - f16 / 16) / (128 - 16)
    a = f16 / 16 - b * 16
    assert abs(a * 64 + b * 64**2 - f64) / f64 < 0.01, "FLOPs are not quadratic in the length"
    lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=256)["input_ids"]])
    flops = float(np.mean(a * lengths + b * lengths**2))
    return summarise_text(n, lengths, flops, peak / flops, auto, timings, features)


def summarise_text(n, lengths, flops, limit, auto, timings, features) -> dict:
    def ratio(baseline: str, ours: str = f"tlcache {auto}") -> float:
        return timings[baseline]["median_s"] / timings[ours]["median_s"]

    fastest_peer = min(
        (f"sentence-transformers {auto}", "sentence-transformers bf16 weights"),
        key=lambda side: timings[side]["median_s"],
    )
    reference = features["tlcache fp32"]
    return {
        "items": n,
        "mean_tokens": float(lengths.mean()),
        "gflops_per_item": flops / 1e9,
        "limit_items_per_s": limit,
        "precision_auto": auto,
        "timings": timings,
        "ratio_auto_vs_padded_fp32": ratio("padded fp32"),
        "ratio_auto_vs_padded_auto": ratio(f"padded {auto}"),
        "ratio_fp32_vs_padded_fp32": ratio("padded fp32", "tlcache fp32"),
        "ratio_auto_vs_sentence_transformers_fp32": ratio("sentence-transformers fp32"),
        "fastest_sentence_transformers_at_auto": fastest_peer,
        "ratio_auto_vs_sentence_transformers_auto": ratio(fastest_peer),
        "ratio_fp32_vs_sentence_transformers_fp32": ratio("sentence-transformers fp32", "tlcache fp32"),
        "share_of_limit": n / timings[f"tlcache {auto}"]["median_s"] / limit,
        "cosines_vs_tlcache_fp32": {name: cosines(f, reference) for name, f in features.items()},
    }


def agreement_section(work: Path) -> dict:
    """efficientnet-lite0 at 96 px on Fashion-MNIST 3000 / 1000 in fp32 and in the automatic precision: cosine of
    the features and the logistic-regression head's accuracy on each."""
    import tlcache
    from tlcache.datasets import fashion_mnist

    train_dir, test_dir = fashion_mnist(work / "fmnist")
    out = {}
    for precision in ("fp32", "auto"):
        cache = work / f"fm-{precision}"
        train = tlcache.embed_source(train_dir, "efficientnet-lite0", image_size=96, out=cache, precision=precision)
        test = tlcache.embed_source(test_dir, "efficientnet-lite0", image_size=96, out=cache, precision=precision)
        run = tlcache.fit_head(train.path, "logreg", test=test.path, out=work / f"fm-run-{precision}", seed=0)
        out[precision] = {
            "features": np.concatenate([tlcache.FeatureStore(p).features() for p in (train.path, test.path)]),
            "accuracy": run.accuracy,
            "precision": tlcache.FeatureStore(train.path).meta["precision"],
        }
    return {
        "precision_auto": out["auto"]["precision"],
        "cosine_auto_vs_fp32": cosines(out["auto"]["features"], out["fp32"]["features"]),
        "logreg_accuracy_fp32": out["fp32"]["accuracy"],
        "logreg_accuracy_auto": out["auto"]["accuracy"],
        "accuracy_difference_points": 100 * abs(out["auto"]["accuracy"] - out["fp32"]["accuracy"]),
    }


def render(results: dict) -> str:
    from tlcache.embed import COMPILE_AUTO_MIN_ITEMS

    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731

    def mean_lowest(cosine: dict) -> str:
        return f"{cosine['mean']:.5f} ({cosine['min']:.5f})"

    def speed(row: dict, side: str) -> str:
        t = row["timings"][side]
        return f"{t['items_per_s']:.1f} ± {100 * t['spread']:.0f}%"

    images, text, agreement = results["images"], results["text"], results["agreement"]
    auto = text["precision_auto"]
    lines = [
        "# Embedding throughput",
        "",
        made_by(results["made"]),
        "",
        f"Machine limit: a measured bf16 matrix-multiply peak of {results['peak_tflops']:.3f} TFLOP/s on "
        f"{results['made']['machine']['device']}; a model's limit is that peak divided by its FLOPs per item.",
        "",
        f"Footing: every side loaded once, warmed up by the same untimed pass over the first {WARMUP_ITEMS} items, "
        f"then timed {results['repeats']} times over all items. Speeds are items per second at the median, ± the "
        "spread (slowest minus fastest, over the median); ratios are ratios of medians. Each ratio is given at "
        f"equal precision (both fp32, or both {auto}) and at each side's default (tlcache auto = {auto}, the "
        "baselines fp32). Nothing here is chosen on data.",
        "",
        "## Images from JPEG files",
        "",
        f"| model | items | GFLOPs/item | tutorial fp32/s | tutorial {auto}/s | tlcache fp32/s | tlcache {auto}/s | "
        f"x tutorial, both fp32 | x tutorial, both {auto} | x tutorial, defaults | share of limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in images.items():
        lines.append(
            f"| {name} | {row['items']} | {row['gflops_per_item']:.2f} | {speed(row, 'tutorial fp32')} | "
            f"{speed(row, f'tutorial {auto}')} | {speed(row, 'tlcache fp32')} | {speed(row, f'tlcache {auto}')} | "
            f"{row['ratio_fp32_vs_tutorial_fp32']:.2f} | {row['ratio_auto_vs_tutorial_auto']:.2f} | "
            f"{row['ratio_auto_vs_tutorial_fp32']:.2f} | {100 * row['share_of_limit']:.0f}% |"
        )
    lines += [
        "",
        f"With `--compile on` ({auto}), in a fresh inductor cache: the first run includes the one-time compilation; "
        "the steady state (the median of the runs after it) is what a long run approaches.",
        "",
        f"| model | first run, s | compile s | steady/s | x tutorial fp32, first run | x tutorial fp32, steady | "
        f"x tutorial {auto}, steady | share of limit | pays from |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in images.items():
        even = row["break_even_items"]
        steady = row["compiled_steady"]
        lines.append(
            f"| {name} | {row['compiled_first_run_s']:.1f} | {row['compile_seconds']:.1f} | "
            f"{steady['items_per_s']:.1f} ± {100 * steady['spread']:.0f}% | "
            f"{row['ratio_compiled_first_run_vs_tutorial_fp32']:.2f} | {row['ratio_compiled_vs_tutorial_fp32']:.2f} | "
            f"{row['ratio_compiled_vs_tutorial_auto']:.2f} | {100 * row['share_of_limit_compiled']:.0f}% | "
            f"{'never' if even is None else f'{even:.0f} images'} |"
        )
    break_evens = [row["break_even_items"] for row in images.values()]
    largest_even = None if None in break_evens else max(break_evens)
    lines += [
        "",
        "Features: the tutorial loop and tlcache in fp32 agree (mean cosine "
        + ", ".join(f"{name} {row['cosine_tutorial_vs_tlcache_fp32']['mean']:.6f}" for name, row in images.items())
        + f"); {auto} against fp32, mean (lowest): tlcache "
        + ", ".join(f"{name} {mean_lowest(row['cosine_auto_vs_fp32'])}" for name, row in images.items())
        + ", the tutorial loop "
        + ", ".join(f"{name} {mean_lowest(row['cosine_tutorial_auto_vs_fp32'])}" for name, row in images.items())
        + "; compiled against eager: "
        + ", ".join(f"{name} {row['cosine_compiled_vs_auto']['mean']:.6f}" for name, row in images.items())
        + ".",
        "",
        "## Texts: minilm on Rotten Tomatoes",
        "",
        f"{text['items']} texts, {text['mean_tokens']:.1f} tokens on average, {text['gflops_per_item']:.3f} GFLOPs "
        f"per text at its own length; limit {text['limit_items_per_s']:.0f} texts/s.",
        "",
        "| loop | texts/s | mean cosine to tlcache fp32 (lowest) |",
        "|---|---:|---:|",
    ]
    for side, t in text["timings"].items():
        cosine = text["cosines_vs_tlcache_fp32"][side]
        label = side.replace("padded", f"tutorial, padded to {TEXT_MAX_LENGTH},")
        lines.append(
            f"| {label} | {t['items_per_s']:.1f} ± {100 * t['spread']:.0f}% | {cosine['mean']:.6f} "
            f"({cosine['min']:.6f}) |"
        )
    peer = text["fastest_sentence_transformers_at_auto"]
    lines += [
        "",
        f"tlcache {auto} against the padded loop: {text['ratio_auto_vs_padded_auto']:.2f} x both in {auto}, "
        f"{text['ratio_fp32_vs_padded_fp32']:.2f} x both in fp32, {text['ratio_auto_vs_padded_fp32']:.2f} x at the "
        f"defaults; against sentence-transformers: {text['ratio_auto_vs_sentence_transformers_auto']:.2f} x its "
        f"fastest {auto} variant ({peer}), {text['ratio_fp32_vs_sentence_transformers_fp32']:.2f} x both in fp32, "
        f"{text['ratio_auto_vs_sentence_transformers_fp32']:.2f} x at the defaults; "
        f"{100 * text['share_of_limit']:.0f}% of the limit.",
        "",
        "## Agreement of the automatic precision with fp32",
        "",
        f"Fashion-MNIST 3000 / 1000, efficientnet-lite0 at 96 px, auto = {agreement['precision_auto']}: mean "
        f"(lowest) cosine {mean_lowest(agreement['cosine_auto_vs_fp32'])}; "
        f"logistic regression {agreement['logreg_accuracy_fp32']:.4f} (fp32) against "
        f"{agreement['logreg_accuracy_auto']:.4f} (auto), {agreement['accuracy_difference_points']:.2f} points apart.",
        "",
    ]
    lines += targets(images, text, agreement, auto, largest_even, COMPILE_AUTO_MIN_ITEMS, met)
    return "\n".join(lines)


def targets(images, text, agreement, auto, largest_even, compile_from, met) -> list[str]:
    resnet = images["torchvision:resnet50"]
    mean_cosines = [
        *(row["cosine_auto_vs_fp32"]["mean"] for row in images.values()),
        text["cosines_vs_tlcache_fp32"][f"tlcache {auto}"]["mean"],
        agreement["cosine_auto_vs_fp32"]["mean"],
    ]
    speed_targets = [
        ("ResNet-50 at least 4.5 x the tutorial loop", 4.5, [
            ("compiled, steady, defaults", resnet["ratio_compiled_vs_tutorial_fp32"]),
            (f"compiled, steady, both {auto}", resnet["ratio_compiled_vs_tutorial_auto"]),
            ("compiled, first run, defaults", resnet["ratio_compiled_first_run_vs_tutorial_fp32"]),
            ("eager, defaults", resnet["ratio_auto_vs_tutorial_fp32"]),
            (f"eager, both {auto}", resnet["ratio_auto_vs_tutorial_auto"]),
            ("eager, both fp32", resnet["ratio_fp32_vs_tutorial_fp32"]),
        ]),
        ("MiniLM at least 8 x the padded loop", 8, [
            ("defaults", text["ratio_auto_vs_padded_fp32"]),
            (f"both {auto}", text["ratio_auto_vs_padded_auto"]),
            ("both fp32", text["ratio_fp32_vs_padded_fp32"]),
        ]),
        ("MiniLM at least 2 x sentence-transformers", 2, [
            ("defaults", text["ratio_auto_vs_sentence_transformers_fp32"]),
            (f"both {auto}", text["ratio_auto_vs_sentence_transformers_auto"]),
            ("both fp32", text["ratio_fp32_vs_sentence_transformers_fp32"]),
        ]),
    ]  # fmt: skip
    auto_follows = compile_from is None or (largest_even is not None and compile_from >= largest_even)
    lines = ["## Targets (issue 5)", ""]
    for claim, target, ratios in speed_targets:
        lines.append(
            f"- {claim}: " + "; ".join(f"{how} {ratio:.2f} ({met(ratio >= target)})" for how, ratio in ratios) + "."
        )
    lines += [
        f"- ResNet-50 at least 65% of the limit: {100 * resnet['share_of_limit_compiled']:.0f}% compiled "
        f"({met(resnet['share_of_limit_compiled'] >= 0.65)}); {100 * resnet['share_of_limit']:.0f}% eager "
        f"({met(resnet['share_of_limit'] >= 0.65)}).",
        f"- Mean cosine at least 0.995: lowest mean {min(mean_cosines):.5f} ({met(min(mean_cosines) >= 0.995)}); "
        f"logistic regression within 0.3 points: {agreement['accuracy_difference_points']:.2f} "
        f"({met(agreement['accuracy_difference_points'] <= 0.3)}).",
        "- `--compile auto` compiles only where compiling paid for every model measured: it compiles "
        + ("never" if compile_from is None else f"from {compile_from} images")
        + "; the largest break-even measured: "
        + ("none, a model never paid" if largest_even is None else f"{largest_even:.0f} images")
        + f" ({met(auto_follows)}; "
        "the threshold is tlcache.embed.COMPILE_AUTO_MIN_ITEMS when this file was rendered).",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=960, help="JPEG files to embed [default: 960]")
    parser.add_argument("--texts", type=int, default=2000, help="Rotten Tomatoes texts [default: 2000]")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of every side [default: 3]")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where to write the results [default: benchmarks/results]"
    )
    args = parser.parse_args(argv)

    import pandas as pd

    from tlcache.backbones.base import resolve_device
    from tlcache.datasets import rotten_tomatoes

    device = resolve_device("auto")
    results = {"made": provenance("embed_throughput.py", argv), "repeats": args.repeats, "images": {}}
    with tempfile.TemporaryDirectory(prefix="tlcache-throughput-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")  # a first compilation, as a new user has
        peak = bf16_peak(device)
        results["peak_tflops"] = peak / 1e12
        print(f"bf16 peak {peak / 1e12:.3f} TFLOP/s", flush=True)
        paths = write_jpegs(work / "jpegs", args.images)
        warmup_dir = work / "jpegs-warmup"
        warmup_dir.mkdir()
        for path in paths[:WARMUP_ITEMS]:
            shutil.copy(path, warmup_dir / path.name)
        for name in IMAGE_MODELS:
            print(f"{name} ...", flush=True)
            results["images"][name] = image_section(name, paths, warmup_dir, work, peak, args.repeats, device)
        print("minilm ...", flush=True)
        train_csv, _ = rotten_tomatoes(work / "rt")
        frame = pd.read_csv(train_csv).head(args.texts)
        texts_csv, warmup_csv = work / "texts.csv", work / "texts-warmup.csv"
        frame.to_csv(texts_csv, index=False)
        frame.head(WARMUP_ITEMS).to_csv(warmup_csv, index=False)
        texts = frame["text"].tolist()
        results["text"] = text_section(texts, texts_csv, warmup_csv, work, peak, args.repeats, device)
        print("agreement on Fashion-MNIST ...", flush=True)
        results["agreement"] = agreement_section(work)
    save_results("embed_throughput", results, render(results), args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
