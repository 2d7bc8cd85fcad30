"""Looking after a cache folder: list its stores (`tlcache ls`) and remove the ones not worth keeping (`tlcache gc`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tlcache.errors import UserError
from tlcache.paths import default_cache_dir
from tlcache.store import PARTIAL_SUFFIX, STORE_SUFFIX, lock_path, probe_store


@dataclass
class StoreEntry:
    path: Path
    key: str | None
    backbone: str | None
    source: str | None
    rows_done: int
    n_rows: int
    size_bytes: int
    state: str  # "complete", "partial" (an interrupted embed: run it again), "running" (being written) or "unreadable"
    last_used: str  # ISO time of the last write, cache hit or fit (last_used)
    features: str | None = None  # what tells the store from others of its backbone and source (describe_features)
    part_of: int | None = None  # a store of some of its source's items (compare's, LP-FT's): how many it has

    def as_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path)}


def mark_used(path: Path) -> None:
    """Count a read of the store at ``path`` as a use, for `tlcache gc --unused-days` (:func:`last_used`): the time
    of its lock file, not of the store, whose own time stays that of its last write (a recipe's record of the step
    that wrote it compares it)."""
    try:
        lock_path(path).touch()
    except OSError:  # a read-only cache still serves reads
        pass


def last_used(path: Path) -> float:
    """When the store at ``path`` was last written, hit by an embed or read by a fit (:func:`mark_used`)."""
    try:
        marked = lock_path(path).stat().st_mtime
    except OSError:
        marked = 0.0
    return max(path.stat().st_mtime, marked)


def _listed_folder(folder: str | Path | None) -> Path | None:
    """``folder``, else the default cache folder; None when that was never made (nothing embedded into it yet)."""
    if folder is not None:
        return Path(folder)
    default = default_cache_dir()
    return default if default.exists() else None


def list_stores(folder: str | Path | None = None) -> list[StoreEntry]:
    """Every store and partial store in ``folder`` (default: the cache folder), oldest use first."""
    import h5py

    folder = _listed_folder(folder)
    if folder is None:
        return []
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass a cache folder (default $TLCACHE_HOME or ~/.cache/tlcache)")
    entries = []
    for path in folder.iterdir():
        if not path.name.endswith((STORE_SUFFIX, STORE_SUFFIX + PARTIAL_SUFFIX)) or not path.is_file():
            continue
        status = probe_store(path)
        backbone = source = features = whole = None
        if status.readable:
            with h5py.File(path, "r") as handle:
                backbone = str(handle.attrs.get("backbone", ""))
                source = str(handle.attrs.get("source_path", ""))
                whole = handle.attrs.get("source_part_of")
                features = describe_features(handle.attrs)
        state = _state(path, status.readable, status.complete)
        stat = path.stat()
        entries.append(
            StoreEntry(
                path=path,
                key=status.key,
                backbone=backbone,
                source=source,
                rows_done=status.rows_done,
                n_rows=status.n_rows,
                size_bytes=stat.st_blocks * 512,  # partial stores are sparse: count what is really on disk
                state=state,
                last_used=datetime.fromtimestamp(last_used(path), timezone.utc).isoformat(timespec="seconds"),
                features=features,
                part_of=None if whole is None else int(whole),
            )
        )
    return sorted(entries, key=lambda e: (e.last_used, e.path.name))


def describe_features(attrs) -> str:
    """A store's options in a few words, from its attributes: the image size, the compute precision (and the stored
    type where not float32), a layer or pooling other than the backbone's default, augmented views, and "decoded by
    another tlcache" for images decoded otherwise than tlcache.images.DECODING (no embed serves such a store now).
    Two stores of one backbone and source differ in these."""
    from tlcache.images import DECODING

    def attr(name: str):
        value = attrs.get(name)
        return value.decode() if isinstance(value, bytes) else value

    def parsed(name: str) -> dict:
        try:
            value = json.loads(attr(name) or "{}")
        except (TypeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    spec, preprocessing, image = parsed("backbone_spec"), parsed("preprocessing"), attr("modality") == "image"
    words = [f"{spec['image_size']} px"] if image and spec.get("image_size") else []
    words += [f"{attr('precision')} compute"] if attr("precision") else []
    words += [f"{attr('dtype')} stored"] if attr("dtype") and attr("dtype") != "float32" else []
    layer, pooling = attr("layer"), attr("pooling")
    if layer and layer not in ("penultimate", "last"):
        words.append(f"layer {layer}")
    if pooling and pooling != "mean":
        words.append(f"{pooling} pooling")
    views = attr("views")
    if views and int(views) > 0:
        words.append(f"{int(views)} views")
    if preprocessing.get("long_text") == "chunk":  # long texts read window by window, not cut
        words.append("long texts in chunks")
    columns = parsed("source_options")  # a table read through other columns than the defaults
    defaults = {"text_column": "text", "label_column": "label"}
    named = [
        f"{key.removesuffix('_column')} {value!r}"
        for key, value in sorted(columns.items())
        if value and value != defaults.get(key)
    ]
    words += [f"columns: {', '.join(named)}"] if named else []
    if image and preprocessing and preprocessing.get("convert") != DECODING:
        words.append("decoded by another tlcache")
    return ", ".join(words)


def _idle_shards(folder: Path, entries: list[StoreEntry]) -> list[tuple[Path, list[StoreEntry]]]:
    """The shard folders of Ray runs (tlcache.ray_engine) in ``folder`` that no run is writing, with their stores:
    a finished run removes its own, so these are a stopped run's (resumable as a partial store is) or a leftover."""
    from tlcache.ray_engine import SHARDS_DIR

    root = folder / SHARDS_DIR
    if not root.is_dir():
        return []
    running = {entry.key[:32] for entry in entries if entry.state == "running" and entry.key}
    idle = []
    for shards in sorted(path for path in root.iterdir() if path.is_dir()):
        inside = list_stores(shards)
        if shards.name not in running and not any(entry.state == "running" for entry in inside):
            idle.append((shards, inside))
    return idle


def _state(path: Path, readable: bool, complete: bool) -> str:
    """A file with the partial suffix is never complete, whatever it says (a run killed while publishing it
    leaves one marked complete); one whose embed holds the lock is running (HDF5 will not open it meanwhile)."""
    if not path.name.endswith(PARTIAL_SUFFIX):
        return "complete" if readable and complete else "unreadable"
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(path.with_name(path.name.removesuffix(PARTIAL_SUFFIX)))))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return "running"
    lock.release()
    return "partial" if readable else "unreadable"


def collect_garbage(
    folder: str | Path | None = None, unused_days: float | None = None, dry_run: bool = False
) -> list[StoreEntry]:
    """Remove partial and unreadable stores that no process is writing, the shard folders of Ray runs that are not
    running (their stores are listed), and, with ``unused_days``, complete stores not written, hit or fitted on
    (:func:`last_used`) for that long. Returns what was (or, with ``dry_run``, would be) removed."""
    from filelock import FileLock, Timeout

    folder = _listed_folder(folder)
    if folder is None:
        return []
    cutoff = time.time() - unused_days * 86400 if unused_days is not None else None
    removed = []
    entries = list_stores(folder)
    for shards, inside in _idle_shards(folder, entries):
        if not dry_run:
            from tlcache.ray_engine import remove_shards

            remove_shards(shards)
        removed += inside
    for entry in entries:
        stale = entry.state != "complete"
        unused = cutoff is not None and last_used(entry.path) < cutoff
        if not (stale or unused):
            continue
        final = entry.path.with_name(entry.path.name.removesuffix(PARTIAL_SUFFIX))
        lock = FileLock(str(lock_path(final)))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # an embed is writing it right now
        try:
            if not dry_run:
                entry.path.unlink(missing_ok=True)
            removed.append(entry)
        finally:
            lock.release()
    return removed
