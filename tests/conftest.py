"""Fixtures that build tiny real models and tiny real data in temporary folders; nothing is downloaded."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own $TLCACHE_HOME and working directory, so nothing leaks between tests."""
    monkeypatch.setenv("TLCACHE_HOME", str(tmp_path / "tlcache-home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with a word-piece tokenizer, saved with save_pretrained."""
    from tiny_models import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _save_resnet18(path: Path, seed: int) -> Path:
    import torch
    import torchvision

    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory) -> Path:
    """A random resnet18 state_dict saved to a file, as a user would save their own weights."""
    return _save_resnet18(tmp_path_factory.mktemp("weights") / "resnet18.pt", seed=0)


@pytest.fixture(scope="session")
def resnet18_weights_other(tmp_path_factory) -> Path:
    return _save_resnet18(tmp_path_factory.mktemp("weights-other") / "resnet18-other.pt", seed=1)


def write_image_folder(
    root: Path, per_class: int = 6, classes=("circle", "square"), size: int = 40, seed: int = 0
) -> Path:
    """Class folders of small PNGs: bright circles or squares on noise, so classes are easy to tell apart."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 60, (size, size, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(image)
            box = [8 + i % 4, 8, size - 8, size - 8 - i % 4]
            (draw.ellipse if c % 2 == 0 else draw.rectangle)(box, fill=(220, 200 - 30 * c, 40 * c))
            image.save(folder / f"{name}-{i:03d}.png")
    return root


def write_text_csv(path: Path, n: int = 24, header=("text", "label"), seed: int = 0) -> Path:
    """Short 'reviews' with a label each: good/great/fun words for pos, bad/awful/dull for neg."""
    rng = np.random.default_rng(seed)
    pos, neg = ["good", "great", "fun"], ["bad", "awful", "dull"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(n):
            label = "pos" if i % 2 else "neg"
            word = rng.choice(pos if label == "pos" else neg)
            writer.writerow([f"the movie was very {word} {i}", label])
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "shapes")


@pytest.fixture
def text_csv(tmp_path) -> Path:
    return write_text_csv(tmp_path / "reviews.csv")


def make_store(path: Path, X, y, class_names, finish: bool = True, **meta) -> Path:
    """A real store written through StoreWriter, with made-up provenance (``meta`` overrides it)."""
    from tlcache.store import StoreWriter

    X = np.asarray(X, dtype=np.float32)
    backbone = meta.pop("backbone", "test-bb")
    fingerprints = meta.pop("fingerprints", None)
    meta = {
        "cache_key": f"key-{path.stem}",
        "config_key": "config",
        "backbone": backbone,
        "backbone_key": backbone,
        "weights_digest": "w1",
        "preprocessing": {"size": 8},
        "layer": "penultimate",
        "pooling": "mean",
        "modality": "image",
        "backbone_spec": {"name": backbone},
        "source_options": {},
        **meta,
    }
    n = len(y)
    writer = StoreWriter.create(
        path,
        meta,
        [f"id{i}" for i in range(n)],
        list(y),
        list(class_names),
        fingerprints or [f"{path.stem}-fp{i}" for i in range(n)],  # items of one store only: no test in training
        dim=X.shape[1],
    )
    for start in range(0, n, 4):
        rows = np.arange(start, min(start + 4, n))
        if finish or start == 0:
            writer.write(rows, X[rows])
    if finish:
        writer.finish({"device": "cpu"})
    writer.close()
    return path
