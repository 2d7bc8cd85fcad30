"""The embedding loop: source + backbone -> a complete feature store, computed at most once per cache key.

A miss first reuses rows of identical items from stores of the same config beside the target (the incremental
path: add 10 images to a folder and only those 10 are embedded), then resumes whatever an interrupted run left,
then embeds the rest in batches.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tlcache import ray_engine
from tlcache.backbones import Backbone, ImageBackbone, create_backbone, resolve_device
from tlcache.backbones.base import resolve_device_type, resolve_precision
from tlcache.cache import mark_used
from tlcache.embed_result import EmbedResult
from tlcache.errors import DISK_ERRORS, UserError, check_choice, warn_once
from tlcache.images import (
    VIEWS_SEED,
    ImageFiles,
    decoded_batches,
    default_workers,
    describe_unreadable,
    unreadable_headers,
    view_seed,
)
from tlcache.provenance import tlcache_version, torch_version
from tlcache.ray_engine import RayOptions
from tlcache.repack import publish_interrupted
from tlcache.reuse import donor_stores, reuse_rows
from tlcache.sources import Source, load_source
from tlcache.splits import warn_of_conflicting_labels, warn_of_near_names
from tlcache.store import (
    COMPRESSIONS,
    FeatureStore,
    StoreWriter,
    cache_key,
    config_key,
    lock_path,
    partial_path,
    probe_store,
    resolve_store_path,
)
from tlcache.threads import adaptive_threads, measured

DEFAULT_BACKBONES = {"image": "efficientnet-lite0", "text": "minilm"}
COMPILE_CHOICES = ("auto", "on", "off")
ON_ERROR_CHOICES = ("skip", "fail")
# From how many images `--compile auto` compiles; None: never. On 2 CPU cores compiling cost 26-28 s and paid
# from 9,608 images for efficientnet-lite0 but never for ResNet-50, whose compiled steady state ran slower than
# eager (benchmarks/results/embed_throughput.md, 2026-12-02; on 2026-11-23 the same machine kind measured 25,934
# and 39,503 images). No GPU has been measured. auto takes a threshold again when a measurement shows that
# compiling pays for every model measured.
COMPILE_AUTO_MIN_ITEMS: int | None = None
COMPILE_AUTO_RULE = (
    "never, as compiling did not pay for every model measured"
    if COMPILE_AUTO_MIN_ITEMS is None
    else f"from {COMPILE_AUTO_MIN_ITEMS} images"
)


def embed_source(
    source: str | Path | Source,
    backbone: str | Backbone | None = None,
    *,
    out: str | Path | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    precision: str = "auto",
    compression: str = "none",
    views: int = 0,
    num_workers: int | None = None,
    compile_mode: str = "auto",
    progress: bool = True,
    source_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    on_error: str = "skip",
    reuse: bool = True,
    engine: str = "local",
    ray_options: RayOptions | None = None,
    **backbone_options,
) -> EmbedResult:
    """Embed every item of ``source`` into a feature store, unless a complete store with the same key exists.

    ``backbone`` defaults to ``efficientnet-lite0`` for images and ``minilm`` for texts; a Backbone instance is
    loaded (once) and left at its own precision. ``out`` is a folder (default ``$TLCACHE_HOME``) or a ``.h5``
    file. ``views`` caches that many augmented embeddings per image. ``precision`` is the compute type (fp32,
    bf16, fp16, or auto: bf16 where the hardware has it); it is in the cache key. ``compile_mode`` runs image
    models through ``torch.compile`` (``auto``: when at least ``COMPILE_AUTO_MIN_ITEMS`` images are to be
    embedded, at present never; it falls back to eager where compiling fails); the features agree to float
    rounding, so it is not in the key. ``source_options`` go to :func:`load_source` (column names), as do its
    keyword arguments given here (``label_column="language"``); other keyword arguments go to
    :func:`create_backbone` (``weights``, ``pooling``, ``layer``, ``image_size``, ``crop_ratio``). An ``out``
    file that holds anything but this store (another source's, other options', or not a store) is refused unless
    ``overwrite``; its rows are reused where they fit. An item that cannot be read (a damaged
    image) is left out of the store, which lists it with why (``FeatureStore.skipped()``); ``on_error="fail"``
    then raises a UserError naming them all, after the store of the others is written (its rows are reused once
    the bad items are fixed or removed). A cache hit on such a store does the same. ``reuse=False`` copies no
    rows from other stores. ``engine="ray"`` embeds on a Ray cluster (``ray_options``: its address, workers, GPUs per
    worker, shard size; see :mod:`tlcache.ray_engine`) into the same store.

    >>> result = embed_source("reviews.csv", "minilm")      # doctest: +SKIP
    >>> result.path, result.cached                          # doctest: +SKIP
    """
    started = time.perf_counter()
    check_choice("--compression", compression, COMPRESSIONS)
    check_choice("--compile", compile_mode, COMPILE_CHOICES)
    check_choice("--on-error", on_error, ON_ERROR_CHOICES)
    check_choice("--engine", engine, ray_engine.ENGINES)
    read_with = _source_options(source_options, backbone_options)  # before the backbone's options are read
    src = source if isinstance(source, Source) else load_source(source, **read_with)
    warn_of_near_names(src.class_names, str(src.path))
    warn_of_conflicting_labels(src, str(src.path))
    ray_options = ray_options or RayOptions()
    torch_device = None  # resolved when rows are to be embedded: a cache hit needs only its type, in the key
    if engine == "ray":  # the workers' device; the compute type resolved here, as it is in the key
        torch_device, precision = ray_engine.device_and_precision(device, precision, ray_options)
    device_type = torch_device.type if torch_device is not None else resolve_device_type(device)
    bb = _resolve_backbone(backbone, src, backbone_options).at_precision(resolve_precision(precision, device_type))
    views_config = _views_config(bb, views)
    config = config_key(bb.key_config(), dtype, views_config)
    key = cache_key(src.fingerprint, config)
    path = resolve_store_path(out, bb.name, config, key)

    def result(embedded: int, reused: int, dim: int, cached: bool, truncated: int = 0) -> EmbedResult:
        seconds = time.perf_counter() - started
        store = FeatureStore(path)
        if cached:  # the texts were cut when the store was written; a hit reads nothing to count them again
            truncated = int(store.meta.get("truncated_rows") or 0)
        skipped = store.skipped()
        done = EmbedResult(path, key, bb.name, dim, len(src), embedded, reused, seconds, cached, truncated, skipped)
        unlabelled = int(np.count_nonzero(store.labels() < 0))
        done.unlabelled = unlabelled if unlabelled < done.stored else 0  # a wholly unlabelled source: to predict
        return done.refused_if_skipped() if on_error == "fail" else done

    if hit := _hit(path, key):
        return result(0, 0, hit.dim, cached=True)
    if not overwrite and path == Path(out or ""):  # a file named by --out; in a folder, names carry the key
        _refuse_replacing(path)
    elif path.exists():  # the cache's file of this very key, not readable as complete: cut short or damaged
        warn_once(f"{path} is damaged or cut short: embedding its items again (it is replaced when done)")
    with _write_lock(path):
        # Another process may have finished it while we waited, or been killed while publishing it.
        if hit := _hit(path, key) or (publish_interrupted(path, key, compression) and _hit(path, key)):
            return result(0, 0, hit.dim, cached=True)
        if torch_device is None:
            torch_device = resolve_device(device)
        writer, donors = _open_writer(path, key, config, src, bb, dtype, views_config, reuse)
        shards = ray_engine.shard_folder(path, key)
        try:
            reused = reuse_rows(writer, src, donors)
            pending = writer.pending()
            rows = (src, bb, writer, pending, torch_device)
            if engine == "ray":
                settings = {"dtype": dtype, "views": views, "batch_size": batch_size, "num_workers": num_workers}
                settings |= {"compile_mode": compile_mode}
                run = ray_engine.embed_rows(*rows, shards, config, settings, ray_options, progress)
            else:
                run = _embed_rows(*rows, batch_size, views_config, num_workers, compile_mode, progress)
            computed = run.pop("computed", len(pending) - len(writer.skipped))  # the Ray engine's: by this run only
            seconds = round(time.perf_counter() - started, 3)
            how = {"embed_seconds": seconds, "device": str(torch_device), "precision": bb.precision, **run}
            writer.finish({**how, "torch_version": torch_version(), "rows_reused": reused}, compression=compression)
        finally:
            writer.close()
    if engine == "ray":
        ray_engine.remove_shards(shards)
    done = result(computed, reused, bb.dim, cached=False, truncated=run.get("truncated_rows") or 0)
    done.engine = {k: run[k] for k in ray_engine.SUMMARY if k in run}
    done.load_seconds = float(run.get("load_seconds") or 0.0)
    return done


def _source_options(given: dict[str, Any] | None, backbone_options: dict[str, Any]) -> dict[str, Any]:
    """``given`` with the source's options among ``backbone_options`` moved into it (a new user's
    ``embed_source(..., label_column="language")`` was told the backbone takes no --label-column); a name that is
    not one of :func:`load_source`'s is a UserError listing them (it was a TypeError)."""
    names = [name for name in inspect.signature(load_source).parameters if name != "path"]
    options = {**(given or {}), **{name: backbone_options.pop(name) for name in names if name in backbone_options}}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise UserError(f"source_options {', '.join(unknown)}: not options of a source; they are {', '.join(names)}")
    return options


def _embed_rows(
    src: Source,
    bb: Backbone,
    writer: StoreWriter,
    pending: np.ndarray,
    device,
    batch_size: int | None,
    views_config: dict | None,
    workers: int | None,
    compile_mode: str,
    progress: bool,
) -> dict[str, Any]:
    """Embed the rows not yet in the store on ``device``, and say how (batch size, compiled or not)."""
    size = batch_size or bb.default_batch_size(device)
    if src.modality == "image" and len(pending):  # every bad header at once, before the long run
        bad = unreadable_headers([src.items[i] for i in pending])
        writer.skip(pending[list(bad)], list(bad.values()))
        pending = writer.pending()
    loading = time.perf_counter()
    if len(pending):
        bb.load(str(device))
        size = min(size, len(pending))  # a compiled model is built for one batch size: no bigger than needed
    forward = _image_forward(bb, compile_mode, len(pending), size, progress) if len(pending) else None
    how: dict[str, Any] = {"batch_size": size, "compiled": forward is not None}
    how["load_seconds"] = round(time.perf_counter() - loading, 3)
    read = None  # tokens the model reads of each text, for batching by length
    # Every row's text, reused rows' too: the store's count (a store of reused rows only said none were cut).
    if src.modality == "text" and bb.max_length:
        full = np.asarray(bb.token_lengths(src.items, truncate=False))
        long = int((full > bb.max_length).sum())
        chunked = getattr(bb, "long_text", "truncate") == "chunk"  # read whole, window by window
        how["truncated_rows"], how["max_tokens"] = (0 if chunked else long), bb.max_length
        how |= {"chunked_rows": long} if chunked else {}
        read = full if chunked else np.minimum(full, bb.max_length)
    if len(pending):
        _run_batches(src, bb, writer, pending, size, views_config, workers, progress, forward, read)
    if not writer.done.any():
        bad = [(src.ids[row], why) for row, why in writer.skipped.items()]
        raise UserError(f"none of the {len(src)} items could be read: {describe_unreadable(bad)}")
    return how


def _resolve_backbone(backbone: str | Backbone | None, src: Source, options: dict) -> Backbone:
    if isinstance(backbone, Backbone):
        if any(v is not None for v in options.values()):
            raise TypeError("backbone options go to create_backbone(), not with a Backbone instance")
        bb = backbone
    else:
        bb = create_backbone(backbone or DEFAULT_BACKBONES[src.modality], **options)
    if bb.modality != src.modality:
        raise UserError(
            f"backbone {bb.name} embeds {bb.modality}s but {src.path} holds {src.modality}s; "
            f"use {'an' if src.modality == 'image' else 'a'} {src.modality} backbone such as "
            f"{DEFAULT_BACKBONES[src.modality]} (see `tlcache backbones`)"
        )
    return bb


def _views_config(bb: Backbone, views: int) -> dict[str, Any] | None:
    if not views:
        return None
    if views < 0:
        raise UserError(f"--views {views} must be 0 or more")
    if not isinstance(bb, ImageBackbone):
        raise UserError(f"--views applies to image backbones; {bb.name} embeds {bb.modality}")
    return {"n": int(views), "augment": bb.augmentation, "seed": VIEWS_SEED}


def _refuse_replacing(path: Path) -> None:
    """Refuse to write over a file that is there (a store of another key, or something else): a store's name
    given to a second source would otherwise replace the first store without a word."""
    status = probe_store(path)
    if not status.exists:
        return
    what = "another store (of another source or other options)" if status.readable else "a file that is no store"
    raise UserError(f"{path} holds {what}; pass another --out, or --overwrite to replace it")


def _hit(path: Path, key: str):
    """The store's status when ``path`` holds the complete store for ``key``, else None. A hit counts as a use, for
    `tlcache gc --unused-days` (:func:`tlcache.cache.mark_used`, which leaves the store's own time as it was)."""
    status = probe_store(path)
    if status.complete and status.key == key:
        mark_used(path)
        return status
    return None


@contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """One writer per store: a second process waits (and says so) until the first is done."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(path)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another tlcache process that is writing {path} ...", file=sys.stderr)
        lock.acquire()
    except OSError as exc:  # a read-only or missing parent, a file where a folder should be
        raise UserError(f"cannot write in {path.parent} ({exc.strerror}); pass another --out") from None
    try:
        yield
    except OSError as exc:  # a full or failing disk under a write: the rows flushed before it stay resumable
        if exc.errno not in DISK_ERRORS:
            raise
        raise UserError(
            f"cannot write {path} ({os.strerror(exc.errno)}); the rows written so far are kept: free space or "
            "fix the disk, then run the same command again to finish it"
        ) from None
    finally:
        lock.release()


def _open_writer(
    path: Path, key: str, config: str, src: Source, bb: Backbone, dtype: str, views_config: dict | None, reuse: bool
) -> tuple[StoreWriter, list[FeatureStore]]:
    """Resume an interrupted run of the same key (no donors: its rows are there), or start a partial store and
    name the stores of the same config it can copy identical items from."""
    partial = partial_path(path)
    status = probe_store(partial)
    if status.readable and status.key == key and not status.complete:
        return StoreWriter.resume(path), []
    if status.exists:
        partial.unlink()  # another key's leftovers, or a file cut short at creation
    donors = donor_stores(path, bb, config) if reuse else []  # before anything at `path` can change
    meta = {
        "cache_key": key,
        "config_key": config,
        "tlcache_version": tlcache_version(),
        "modality": src.modality,
        "backbone": bb.name,
        "backbone_key": bb.key_name,
        "backbone_spec": bb.spec,
        "weights_digest": bb.weights_digest,
        "preprocessing": bb.preprocessing,
        "layer": bb.layer,
        "pooling": bb.pooling,
        "views_config": views_config,
        "source_path": str(Path(src.path).resolve()),
        "source_kind": src.kind,
        "source_options": src.options,
        "source_fingerprint": src.fingerprint,
    }
    if src.part_of is not None:  # a subset (compare's training items, LP-FT's warm start): `ls` says of how many
        meta["source_part_of"] = src.part_of
    writer = StoreWriter.create(
        path,
        meta,
        src.ids,
        src.label_indices,
        src.class_names,
        src.fingerprints,
        dim=bb.dim,
        dtype=dtype,
        views=views_config["n"] if views_config else 0,
        groups=src.groups,
    )
    return writer, donors


def _image_forward(bb: Backbone, compile_mode: str, n_items: int, batch_size: int, progress: bool):
    """The compiled forward of an image backbone for batches of ``batch_size``, or None to run eagerly: texts
    (their shapes vary batch to batch), ``--compile off``, ``auto`` below ``COMPILE_AUTO_MIN_ITEMS``, or a
    compilation that failed (said in one line; eager gives the same features)."""
    if not isinstance(bb, ImageBackbone):
        if compile_mode == "on":
            raise UserError(f"--compile on applies to image backbones; {bb.name} embeds texts (use auto or off)")
        return None
    if compile_mode == "off" or (
        compile_mode == "auto" and (COMPILE_AUTO_MIN_ITEMS is None or n_items < COMPILE_AUTO_MIN_ITEMS)
    ):
        return None
    if progress:
        print(f"compiling {bb.name} for batches of {batch_size} (once per process) ...", file=sys.stderr)
    try:
        return bb.compiled_forward(batch_size, non_blocking=bb.device.type == "cuda")
    except RuntimeError as exc:
        print(f"warning: torch.compile failed ({exc}); embedding without it", file=sys.stderr)
        return None


def _run_batches(
    src: Source,
    bb: Backbone,
    writer: StoreWriter,
    pending: np.ndarray,
    batch_size: int,
    views_config: dict | None,
    workers: int | None,
    progress: bool,
    compiled_forward=None,
    token_lengths: np.ndarray | None = None,
) -> None:
    import torch
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(src),
        initial=len(src) - len(pending),
        unit="item",
        desc=f"embed {bb.name}",
        disable=None if progress else True,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    # On a CPU, as many torch threads as the cores the process gets, each batch's forward pass measured on its own
    # (tlcache.threads: the features are the same on any number of threads).
    with bar, torch.inference_mode(), bb.autocast(), adaptive_threads(bb.device.type == "cpu") as threads:
        if src.modality == "image":
            forward = compiled_forward
            _run_image_batches(src, bb, writer, pending, batch_size, views_config, workers, forward, bar, threads)
        else:
            for rows in _length_sorted_batches(bb, src, pending, batch_size, token_lengths):
                texts = [src.items[i] for i in rows]
                with measured(threads):
                    features = bb.features(texts).float().cpu().numpy()
                writer.write(rows, features)
                bar.update(len(rows))


def _run_image_batches(
    src, bb, writer, pending, batch_size, views_config, workers, compiled_forward, bar, threads
) -> None:
    on_cuda = bb.device.type == "cuda"
    n_views = views_config["n"] if views_config else 0
    view_seeds = [[view_seed(src.fingerprints[i], v) for v in range(n_views)] for i in pending] if n_views else None
    dataset = ImageFiles(
        [src.items[i] for i in pending],
        bb.transform(),
        view_transform=bb.view_transform() if n_views else None,
        view_seeds=view_seeds,
    )
    workers = default_workers(len(pending), bb.device) if workers is None else workers
    forward = compiled_forward or (lambda pixels: bb.forward(bb.to_device(pixels, on_cuda)))
    batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    loader = decoded_batches(dataset, batch_size, workers, on_cuda)
    for rows, (pixels, views, errors) in zip(batches, loader):
        if errors:  # left out of the store, which lists them; the rest of the batch goes on
            failed = [position for position, _ in errors]
            writer.skip(rows[failed], [why for _, why in errors])
            bar.update(len(failed))
            rows = np.delete(rows, failed)
            if not len(rows):
                continue
        with measured(threads):
            features = forward(pixels).float().cpu().numpy()
            view_features = None
            if views is not None:
                flat = forward(views.flatten(0, 1))
                view_features = flat.float().cpu().numpy().reshape(len(rows), n_views, -1)
        writer.write(rows, features, view_features)
        bar.update(len(rows))


def _length_sorted_batches(bb, src: Source, pending: np.ndarray, batch_size: int, token_lengths=None) -> list:
    """Batches of texts of similar token length, so little of each batch is padding (2x the texts per second on
    Rotten Tomatoes with minilm). Each batch's rows are in increasing order, as writes want; the features of a
    text do not depend on its batch beyond float rounding (2e-7 measured). ``token_lengths``: every row's, known."""
    known = token_lengths is not None
    lengths = token_lengths[pending] if known else bb.token_lengths([src.items[i] for i in pending])
    by_length = pending[np.argsort(lengths, kind="stable")]
    return [np.sort(by_length[i : i + batch_size]) for i in range(0, len(by_length), batch_size)]
