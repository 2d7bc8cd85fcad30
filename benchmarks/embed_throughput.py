"""Embedding throughput: the tutorial-style loop against `tlcache embed`, and each against the machine's limit.

Measured in one run, on the same files:
1. torchvision:resnet50 (random weights: speed does not depend on them) and efficientnet-lite0 at 224 px, from
   JPEG files on disk (photo crops of 375 x 500 px, quality 90, made from scikit-learn's sample photos). The
   tutorial loop: fp32, NCHW, PIL decoding in the main thread, batch 32, `torch.no_grad`. tlcache: the library
   call behind `tlcache embed` (fingerprints, decoding on all cores before each batch, channels-last, batch
   norms folded, `--precision auto`, the HDF5 store), in fp32 and with the automatic precision; then `--compile on`
   twice, in a fresh inductor cache: the first run pays the one-time compilation, the second is the steady state
   of a long run (which `--compile auto` compiles from 20000 images on).
2. minilm on 2000 Rotten Tomatoes snippets (the canonical training split): the tutorial loop (every text padded
   to 128 tokens, batch 32, fp32), sentence-transformers' `encode` (batch 32) loading the same packaged model
   folder, and tlcache (length-sorted batches, `--precision auto`).
3. The machine's limit: a measured bf16 matrix-multiply peak (best of n x n products, n up to 4096) divided by
   the model's FLOPs per item (torch's FlopCounterMode; for texts, each text at its own token length, no padding).
4. Agreement of the automatic precision with fp32: mean cosine similarity of the features, and on Fashion-MNIST
   3000 / 1000 (efficientnet-lite0 at 96 px) the accuracy of the logistic-regression head on each.

Targets (issue 5): ResNet-50 at least 4.5 times the tutorial loop and at least 65% of the limit; MiniLM at least
8 times the padded loop and at least 2 times sentence-transformers; mean cosine at least 0.995 and logistic
regression within 0.3 points.

The same script runs unchanged on a CUDA machine (device auto), where the peak is measured on the GPU.

Run:  .venv/bin/python benchmarks/embed_throughput.py   (about 8 minutes on 2 cores; needs `make fashion-mnist`
      and `pip install sentence-transformers`, both done by `make bench-embed`)
Writes benchmarks/results/embed_throughput.md and embed_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from _results import save_results

TUTORIAL_BATCH = 32
TEXT_MAX_LENGTH = 128
IMAGE_MODELS = {  # name -> (create_backbone options, mean, std)
    "torchvision:resnet50": ({"weights": "random"}, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "efficientnet-lite0": ({}, [127 / 255] * 3, [128 / 255] * 3),
}


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


def tutorial_images(model, paths: list[Path], mean, std, device) -> tuple[float, np.ndarray]:
    """The loop of the tutorials: PIL in the main thread, fp32, NCHW, batch 32. Returns (seconds, features)."""
    import torch
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    outputs = []
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(paths), TUTORIAL_BATCH):
            batch = torch.stack(
                [transform(Image.open(p).convert("RGB")) for p in paths[start : start + TUTORIAL_BATCH]]
            )
            outputs.append(model(batch.to(device)).cpu())
    synchronize(device)
    return time.perf_counter() - started, torch.cat(outputs).numpy()


def tlcache_run(
    source, backbone, cache: Path, precision: str, device: str = "auto", compile_mode: str = "auto"
) -> tuple[float, np.ndarray]:
    """One `tlcache embed` into an empty cache folder, with the model already loaded (as the tutorial's is)."""
    import tlcache

    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = tlcache.embed_source(
        source, backbone, out=cache, precision=precision, device=device, compile_mode=compile_mode, progress=False
    )
    seconds = time.perf_counter() - started
    return seconds, tlcache.FeatureStore(result.path).features()


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).mean())


def image_section(name: str, paths: list[Path], work: Path, peak: float, device) -> dict:
    import torch

    from tlcache.backbones.registry import create_backbone

    options, mean, std = IMAGE_MODELS[name]
    backbone = create_backbone(name, **options).load(str(device))
    # The tutorial's model: the same weights, as built (no folding, NCHW), classifier removed.
    plain = create_backbone(name, **options)
    plain._optimize = lambda: None
    plain.load(str(device))

    def tutorial_model(pixels):
        return plain.forward(pixels)

    flops = count_flops(tutorial_model, torch.zeros(1, 3, 224, 224, device=device))
    n = len(paths)
    tutorial_s, tutorial_features = tutorial_images(tutorial_model, paths, mean, std, device)
    fp32_s, fp32_features = tlcache_run(paths[0].parent, backbone, work / f"{name}-fp32", "fp32")
    auto_s, auto_features = tlcache_run(paths[0].parent, backbone, work / f"{name}-auto", "auto")
    first_s, _ = tlcache_run(paths[0].parent, backbone, work / f"{name}-compiled-1", "auto", compile_mode="on")
    compiled_s, compiled_features = tlcache_run(
        paths[0].parent, backbone, work / f"{name}-compiled", "auto", compile_mode="on"
    )
    limit = peak / flops
    compile_s = first_s - compiled_s
    saved_per_item = (auto_s - compiled_s) / n
    return {
        "items": n,
        "gflops_per_item": flops / 1e9,
        "limit_items_per_s": limit,
        "precision_auto": backbone.precision,
        "tutorial_items_per_s": n / tutorial_s,
        "tlcache_fp32_items_per_s": n / fp32_s,
        "tlcache_auto_items_per_s": n / auto_s,
        "ratio_auto_vs_tutorial": tutorial_s / auto_s,
        "share_of_limit": n / auto_s / limit,
        "cosine_tutorial_vs_tlcache_fp32": mean_cosine(tutorial_features, fp32_features),
        "cosine_auto_vs_fp32": mean_cosine(auto_features, fp32_features),
        "compiled_first_run_items_per_s": n / first_s,
        "compile_seconds": compile_s,
        "tlcache_compiled_items_per_s": n / compiled_s,
        "ratio_compiled_vs_tutorial": tutorial_s / compiled_s,
        "share_of_limit_compiled": n / compiled_s / limit,
        "cosine_compiled_vs_auto": mean_cosine(compiled_features, auto_features),
        "break_even_items": compile_s / saved_per_item if saved_per_item > 0 else None,
    }


def text_section(texts: list[str], csv_path: Path, work: Path, peak: float, device) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tlcache.backbones.registry import create_backbone
    from tlcache.backbones.transformers_text import minilm_dir

    folder = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval().to(device)

    def mean_pooled(inputs):
        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    # The padded tutorial loop.
    outputs = []
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(texts), TUTORIAL_BATCH):
            inputs = tokenizer(
                texts[start : start + TUTORIAL_BATCH],
                padding="max_length",
                truncation=True,
                max_length=TEXT_MAX_LENGTH,
                return_tensors="pt",
            ).to(device)
            outputs.append(mean_pooled(inputs).cpu())
    synchronize(device)
    padded_s = time.perf_counter() - started
    padded_features = torch.cat(outputs).numpy()

    # sentence-transformers, the peer users would pick, on the same model folder.
    from sentence_transformers import SentenceTransformer

    peer = SentenceTransformer(str(folder), device=str(device))
    peer.encode(texts[:64], batch_size=TUTORIAL_BATCH)  # warm-up, as the others' first batches are not timed apart
    started = time.perf_counter()
    peer_features = peer.encode(texts, batch_size=TUTORIAL_BATCH, convert_to_numpy=True)
    synchronize(device)
    peer_s = time.perf_counter() - started

    backbone = create_backbone("minilm").load(str(device))
    fp32_s, fp32_features = tlcache_run(csv_path, backbone, work / "minilm-fp32", "fp32")
    auto_s, auto_features = tlcache_run(csv_path, backbone, work / "minilm-auto", "auto")

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
    limit = peak / flops
    n = len(texts)
    return {
        "items": n,
        "mean_tokens": float(lengths.mean()),
        "gflops_per_item": flops / 1e9,
        "limit_items_per_s": limit,
        "precision_auto": backbone.precision,
        "padded_items_per_s": n / padded_s,
        "sentence_transformers_items_per_s": n / peer_s,
        "tlcache_fp32_items_per_s": n / fp32_s,
        "tlcache_auto_items_per_s": n / auto_s,
        "ratio_auto_vs_padded": padded_s / auto_s,
        "ratio_auto_vs_sentence_transformers": peer_s / auto_s,
        "share_of_limit": n / auto_s / limit,
        "cosine_padded_vs_tlcache_fp32": mean_cosine(padded_features, fp32_features),
        "cosine_sentence_transformers_vs_tlcache_fp32": mean_cosine(peer_features, fp32_features),
        "cosine_auto_vs_fp32": mean_cosine(auto_features, fp32_features),
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
        "cosine_auto_vs_fp32": mean_cosine(out["auto"]["features"], out["fp32"]["features"]),
        "logreg_accuracy_fp32": out["fp32"]["accuracy"],
        "logreg_accuracy_auto": out["auto"]["accuracy"],
        "accuracy_difference_points": 100 * abs(out["auto"]["accuracy"] - out["fp32"]["accuracy"]),
    }


def render(results: dict, command: str) -> str:
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines = [
        "# Embedding throughput",
        "",
        f"Made by `{command}` on {results['date']} ({results['machine']}).",
        "",
        f"Machine limit: a measured bf16 matrix-multiply peak of {results['peak_tflops']:.3f} TFLOP/s on "
        f"{results['device']}; a model's limit is that peak divided by its FLOPs per item.",
        "",
        "Footing: each side was timed once, after loading its model. The baselines run at their defaults (fp32); "
        "the ratios (x tutorial, x padded loop, x sentence-transformers) set tlcache at its default precision (auto: "
        "bf16 here) against them. For equal precision compare the tlcache fp32 columns with the baselines. Nothing "
        "here is chosen on data.",
        "",
        "## Images from JPEG files",
        "",
        "| model | items | GFLOPs/item | tutorial loop/s | tlcache fp32/s | tlcache auto/s | auto precision | "
        "x tutorial | share of limit | cos(auto, fp32) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, row in results["images"].items():
        lines.append(
            f"| {name} | {row['items']} | {row['gflops_per_item']:.2f} | {row['tutorial_items_per_s']:.1f} | "
            f"{row['tlcache_fp32_items_per_s']:.1f} | {row['tlcache_auto_items_per_s']:.1f} | "
            f"{row['precision_auto']} | {row['ratio_auto_vs_tutorial']:.2f} | {100 * row['share_of_limit']:.0f}% | "
            f"{row['cosine_auto_vs_fp32']:.5f} |"
        )
    lines += [
        "",
        "With `--compile on` (auto precision), in a fresh inductor cache: the first run includes the one-time "
        "compilation, the second is the steady state of a long run.",
        "",
        "| model | first run/s | compile s | steady/s | x tutorial | share of limit | cos(compiled, eager) | "
        "pays from |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results["images"].items():
        even = row["break_even_items"]
        lines.append(
            f"| {name} | {row['compiled_first_run_items_per_s']:.1f} | {row['compile_seconds']:.1f} | "
            f"{row['tlcache_compiled_items_per_s']:.1f} | {row['ratio_compiled_vs_tutorial']:.2f} | "
            f"{100 * row['share_of_limit_compiled']:.0f}% | {row['cosine_compiled_vs_auto']:.6f} | "
            f"{'never' if even is None else f'{even:.0f} images'} |"
        )
    resnet = results["images"]["torchvision:resnet50"]
    text = results["text"]
    agreement = results["agreement"]
    lowest_image_cosine = min(row["cosine_auto_vs_fp32"] for row in results["images"].values())
    lowest_cosine = min(lowest_image_cosine, text["cosine_auto_vs_fp32"], agreement["cosine_auto_vs_fp32"])
    lines += [
        "",
        "The tutorial loop and tlcache in fp32 compute the same features (mean cosine "
        + ", ".join(f"{name} {row['cosine_tutorial_vs_tlcache_fp32']:.6f}" for name, row in results["images"].items())
        + ").",
        "",
        "## Texts: minilm on Rotten Tomatoes",
        "",
        f"{text['items']} texts, {text['mean_tokens']:.1f} tokens on average, {text['gflops_per_item']:.3f} GFLOPs "
        f"per text at its own length; limit {text['limit_items_per_s']:.0f} texts/s.",
        "",
        "| loop | texts/s |",
        "|---|---:|",
        f"| tutorial, padded to {TEXT_MAX_LENGTH}, fp32 | {text['padded_items_per_s']:.1f} |",
        f"| sentence-transformers `encode` | {text['sentence_transformers_items_per_s']:.1f} |",
        f"| tlcache fp32 | {text['tlcache_fp32_items_per_s']:.1f} |",
        f"| tlcache auto ({text['precision_auto']}) | {text['tlcache_auto_items_per_s']:.1f} |",
        "",
        f"tlcache auto: {text['ratio_auto_vs_padded']:.2f} x the padded loop, "
        f"{text['ratio_auto_vs_sentence_transformers']:.2f} x sentence-transformers, "
        f"{100 * text['share_of_limit']:.0f}% of the limit. Mean cosine to tlcache fp32: padded loop "
        f"{text['cosine_padded_vs_tlcache_fp32']:.6f}, sentence-transformers "
        f"{text['cosine_sentence_transformers_vs_tlcache_fp32']:.6f}, tlcache auto {text['cosine_auto_vs_fp32']:.6f}.",
        "",
        "## Agreement of the automatic precision with fp32",
        "",
        f"Fashion-MNIST 3000 / 1000, efficientnet-lite0 at 96 px, auto = {agreement['precision_auto']}: mean "
        f"cosine {agreement['cosine_auto_vs_fp32']:.5f}; logistic regression {agreement['logreg_accuracy_fp32']:.4f} "
        f"(fp32) against {agreement['logreg_accuracy_auto']:.4f} (auto), "
        f"{agreement['accuracy_difference_points']:.2f} points apart.",
        "",
        "## Targets (issue 5)",
        "",
        f"- ResNet-50 at least 4.5 x the tutorial loop: {resnet['ratio_compiled_vs_tutorial']:.2f} compiled, steady "
        f"state ({met(resnet['ratio_compiled_vs_tutorial'] >= 4.5)}; {resnet['ratio_auto_vs_tutorial']:.2f} "
        f"eager); at least 65% of the limit: {100 * resnet['share_of_limit_compiled']:.0f}% compiled "
        f"({met(resnet['share_of_limit_compiled'] >= 0.65)}; {100 * resnet['share_of_limit']:.0f}% eager). "
        f"The compilation costs {resnet['compile_seconds']:.0f} s once per process and pays from "
        f"{resnet['break_even_items'] or float('inf'):.0f} images here; `--compile auto` compiles from 20000 on.",
        f"- MiniLM at least 8 x the padded loop: {text['ratio_auto_vs_padded']:.2f} "
        f"({met(text['ratio_auto_vs_padded'] >= 8)}); at least 2 x sentence-transformers: "
        f"{text['ratio_auto_vs_sentence_transformers']:.2f} ({met(text['ratio_auto_vs_sentence_transformers'] >= 2)}).",
        f"- Mean cosine at least 0.995: {lowest_image_cosine:.5f} (images, lowest), {text['cosine_auto_vs_fp32']:.6f} "
        f"(text), {agreement['cosine_auto_vs_fp32']:.5f} (Fashion-MNIST) ({met(lowest_cosine >= 0.995)}); "
        f"logistic regression within 0.3 points: {agreement['accuracy_difference_points']:.2f} "
        f"({met(agreement['accuracy_difference_points'] <= 0.3)}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=960, help="JPEG files to embed [default: 960]")
    parser.add_argument("--texts", type=int, default=2000, help="Rotten Tomatoes texts [default: 2000]")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from tlcache.backbones.base import resolve_device
    from tlcache.datasets import rotten_tomatoes

    device = resolve_device("auto")
    command = "python benchmarks/embed_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'x86'})",
        "images": {},
    }
    with tempfile.TemporaryDirectory(prefix="tlcache-throughput-") as tmp:
        work = Path(tmp)
        os.environ["TLCACHE_HOME"] = str(work / "home")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")  # a first compilation, as a new user has
        peak = bf16_peak(device)
        results["peak_tflops"] = peak / 1e12
        print(f"bf16 peak {peak / 1e12:.3f} TFLOP/s", flush=True)
        paths = write_jpegs(work / "jpegs", args.images)
        for name in IMAGE_MODELS:
            print(f"{name} ...", flush=True)
            results["images"][name] = image_section(name, paths, work, peak, device)
            print(json.dumps(results["images"][name], indent=1), flush=True)
        print("minilm ...", flush=True)
        train_csv, _ = rotten_tomatoes(work / "rt")
        frame = pd.read_csv(train_csv).head(args.texts)
        texts_csv = work / "texts.csv"
        frame.to_csv(texts_csv, index=False)
        results["text"] = text_section(frame["text"].tolist(), texts_csv, work, peak, device)
        print(json.dumps(results["text"], indent=1), flush=True)
        print("agreement on Fashion-MNIST ...", flush=True)
        results["agreement"] = agreement_section(work)
    save_results("embed_throughput", results, render(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
