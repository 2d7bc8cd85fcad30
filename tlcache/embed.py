"""The embedding loop: source + backbone -> a complete feature store, computed at most once per cache key."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlcache.backbones import Backbone, create_backbone, resolve_device
from tlcache.errors import UserError
from tlcache.sources import Source, load_source
from tlcache.store import StoreWriter, cache_key, probe_store, resolve_store_path

DEFAULT_BACKBONES = {"image": "efficientnet-lite0", "text": "minilm"}


@dataclass
class EmbedResult:
    path: Path
    key: str
    backbone: str
    dim: int
    rows: int
    embedded: int  # rows computed by this call: 0 on a cache hit
    seconds: float
    cached: bool

    def summary_line(self) -> str:
        if self.cached:
            return (
                f"cache hit: {self.rows} rows of {self.backbone} ({self.dim}-d) already embedded, "
                f"nothing computed -> {self.path}"
            )
        rate = self.embedded / self.seconds if self.seconds > 0 else float("inf")
        resumed = f" (resumed at row {self.rows - self.embedded})" if self.embedded < self.rows else ""
        return (
            f"embedded {self.embedded} rows with {self.backbone} ({self.dim}-d) in {self.seconds:.1f} s "
            f"({rate:.0f}/s){resumed} -> {self.path}"
        )


def embed_source(
    source: str | Path | Source,
    backbone: str | Backbone | None = None,
    *,
    out: str | Path | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    num_workers: int | None = None,
    progress: bool = True,
    source_options: dict[str, Any] | None = None,
    **backbone_options,
) -> EmbedResult:
    """Embed every item of ``source`` into a feature store, unless a complete store with the same key exists.

    ``backbone`` defaults to ``efficientnet-lite0`` for images and ``minilm`` for texts. ``out`` is a folder
    (default ``$TLCACHE_HOME``) or a ``.h5`` file. ``source_options`` go to :func:`load_source` (column names);
    other keyword arguments go to :func:`create_backbone` (``weights``, ``pooling``, ``image_size``).

    >>> result = embed_source("reviews.csv", "minilm")      # doctest: +SKIP
    >>> result.path, result.cached                          # doctest: +SKIP
    """
    started = time.perf_counter()
    src = source if isinstance(source, Source) else load_source(source, **(source_options or {}))
    bb = _resolve_backbone(backbone, src, backbone_options)
    key = cache_key(src.fingerprint, bb.key_config(), dtype)
    path = resolve_store_path(out, bb.name, key)

    def result(embedded: int, cached: bool) -> EmbedResult:
        return EmbedResult(path, key, bb.name, bb.dim, len(src), embedded, time.perf_counter() - started, cached)

    if _is_hit(path, key):
        return result(0, cached=True)

    with _write_lock(path):
        if _is_hit(path, key):  # another process finished it while we waited
            return result(0, cached=True)
        torch_device = resolve_device(device)
        size = batch_size or _default_batch_size(torch_device)
        writer = _open_writer(path, key, src, bb, dtype)
        start_row = writer.rows_done
        try:
            if start_row < len(src):
                if src.modality == "image":
                    _check_images(src.items[start_row:])
                bb.load(str(torch_device))
                _run_batches(src, bb, writer, size, num_workers, progress)
            writer.finish(
                {
                    "embed_seconds": round(time.perf_counter() - started, 3),
                    "device": str(torch_device),
                    "batch_size": size,
                    "torch_version": _torch_version(),
                }
            )
        finally:
            writer.close()
    return result(len(src) - start_row, cached=False)


@contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """One writer per store: a second process waits (and says so) until the first is done."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another tlcache process that is writing {path} ...", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _resolve_backbone(backbone: str | Backbone | None, src: Source, options: dict) -> Backbone:
    if isinstance(backbone, Backbone):
        if options:
            raise TypeError("backbone options go to create_backbone(), not with a Backbone instance")
        bb = backbone
    else:
        bb = create_backbone(backbone or DEFAULT_BACKBONES[src.modality], **options)
    if bb.modality != src.modality:
        raise UserError(
            f"backbone {bb.name} embeds {bb.modality}s but {src.path} holds {src.modality}s; "
            f"use a {src.modality} backbone such as {DEFAULT_BACKBONES[src.modality]} (see `tlcache backbones`)"
        )
    return bb


def _is_hit(path: Path, key: str) -> bool:
    status = probe_store(path)
    return status.complete and status.key == key


def _open_writer(path: Path, key: str, src: Source, bb: Backbone, dtype: str) -> StoreWriter:
    """Resume an interrupted store with the same key; otherwise (nothing there, another key, corrupt) start anew."""
    status = probe_store(path)
    if status.readable and status.key == key and not status.complete:
        return StoreWriter.resume(path)
    if status.exists:
        path.unlink()
    meta = {
        "cache_key": key,
        "tlcache_version": _tlcache_version(),
        "modality": src.modality,
        "backbone": bb.name,
        "backbone_key": bb.key_name,
        "backbone_spec": bb.spec,
        "weights_digest": bb.weights_digest,
        "preprocessing": bb.preprocessing,
        "layer": bb.layer,
        "pooling": bb.pooling,
        "source_path": str(Path(src.path).resolve()),
        "source_kind": src.kind,
        "source_options": src.options,
        "source_fingerprint": src.fingerprint,
    }
    return StoreWriter.create(
        path, meta, src.ids, src.label_indices, src.class_names, src.fingerprints, dim=bb.dim, dtype=dtype
    )


def _default_batch_size(device) -> int:
    return 128 if device.type == "cuda" else 64


def _default_workers(n_items: int) -> int:
    # Decoding in worker processes pays once there is enough to decode; keep one core for the model.
    cores = os.cpu_count() or 1
    return 0 if n_items < 256 or cores < 2 else min(4, cores - 1)


class _ImageFiles:
    """Decodes and preprocesses images (in DataLoader workers); a failure travels back as a message."""

    def __init__(self, paths: list[Path], transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                return self.transform(image.convert("RGB")), None
        except Exception as exc:  # PIL raises many types for damaged files
            return None, f"{self.paths[index]} could not be decoded ({exc}); fix or remove it"


def _collate_images(batch):
    import torch

    for _, error in batch:
        if error:
            return None, error
    return torch.stack([tensor for tensor, _ in batch]), None


def _run_batches(src: Source, bb: Backbone, writer: StoreWriter, batch_size: int, workers, progress: bool) -> None:
    import torch
    from tqdm.auto import tqdm

    start = writer.rows_done
    bar = tqdm(
        total=len(src),
        initial=start,
        unit="item",
        desc=f"embed {bb.name}",
        disable=None if progress else True,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    on_cuda = bb.device.type == "cuda"
    with bar, torch.inference_mode():
        if src.modality == "image":
            loader = torch.utils.data.DataLoader(
                _ImageFiles(src.items[start:], bb.transform()),
                batch_size=batch_size,
                shuffle=False,
                num_workers=_default_workers(len(src) - start) if workers is None else workers,
                collate_fn=_collate_images,
                pin_memory=on_cuda,
            )
            for pixels, error in loader:
                if error:
                    raise UserError(error)
                features = bb.forward(pixels.to(bb.device, non_blocking=on_cuda))
                writer.append(features.float().cpu().numpy())
                bar.update(len(pixels))
        else:
            for begin in range(start, len(src), batch_size):
                texts = src.items[begin : begin + batch_size]
                inputs = {k: v.to(bb.device) for k, v in bb.tokenize(texts).items()}
                writer.append(bb.forward(inputs).float().cpu().numpy())
                bar.update(len(texts))


def _check_images(paths: list[Path]) -> None:
    """Read every header before the long run, so a bad file stops it at once rather than at 90%."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path):
                pass
        except Exception as exc:
            raise UserError(f"{path} is not a readable image ({exc}); fix or remove it") from None


def _torch_version() -> str:
    import torch

    return torch.__version__


def _tlcache_version() -> str:
    from tlcache import __version__

    return __version__
