"""The HDF5 feature store: one file per (source content, backbone config), named by its cache key.

Layout: datasets ``features`` (N, D), optional ``views`` (N, V, D) of augmented copies, ``ids`` (N,), ``labels``
(N,) int (-1 = unlabelled) with the class names in an attribute, ``fingerprints`` (N,) per-item content digests,
and ``done`` (N,) marking the rows written; the attributes record how the store was made.

Crash safety: a store is written as ``<name>.h5.partial``. Its metadata is written once, at creation, and every
dataset is contiguous and allocated up front, so writing rows changes no HDF5 metadata: a process killed at any
point (``kill -9`` included) leaves a partial file whose ``done`` rows are valid. Each batch is flushed before
its ``done`` marks are, and the marks are flushed too. Only a finished store is renamed to ``<name>.h5``, so a
complete-looking name always holds a complete store.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlcache.errors import UserError, check_choice
from tlcache.hashing import hash_json
from tlcache.paths import default_cache_dir, slug
from tlcache.provenance import utc_now
from tlcache.sources import IMAGE_EXTENSIONS, TABLE_EXTENSIONS
from tlcache.store_schema import decode_attr, encode_attr, labels_digest, layout_problem

if TYPE_CHECKING:
    import h5py

SCHEMA_VERSION = 1
STORE_SUFFIX = ".h5"
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
DTYPES = ("float32", "float16")
_ROOM_MARGIN = 64 << 10  # free bytes a write leaves for the marks and HDF5's own metadata
COMPRESSIONS = ("none", "gzip", "lzf")


def config_key(backbone_config: dict[str, Any], dtype: str, views_config: dict[str, Any] | None = None) -> str:
    """Hash of everything but the data that changes the stored numbers: stores with equal config keys can share
    rows of identical items (the incremental path)."""
    return hash_json({"schema": SCHEMA_VERSION, "backbone": backbone_config, "dtype": dtype, "views": views_config})


def cache_key(source_fingerprint: str, config: str) -> str:
    """The store's identity: the data's fingerprint and the config key. Paths, devices and batch sizes are not in it."""
    return hash_json({"config": config, "source": source_fingerprint})


def store_filename(backbone_name: str, config: str, key: str) -> str:
    return f"{slug(backbone_name)}-{config[:8]}-{key[:20]}{STORE_SUFFIX}"


def resolve_store_path(out: str | Path | None, backbone_name: str, config: str, key: str) -> Path:
    """``--out`` ending in .h5 is the file itself; any other ``--out`` (or none: the cache dir) is a folder."""
    if out is not None and str(out).endswith(STORE_SUFFIX):
        return Path(out)
    folder = Path(out) if out is not None else default_cache_dir()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file, not a folder; name a folder, or a .h5 file for the store itself")
    return folder / store_filename(backbone_name, config, key)


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + LOCK_SUFFIX)


def sibling_stores(path: Path, backbone_name: str, config: str) -> list[Path]:
    """Complete stores beside ``path`` that were made with the same config (candidates to reuse rows from)."""
    pattern = f"{slug(backbone_name)}-{config[:8]}-*{STORE_SUFFIX}"
    found = sorted(p for p in path.parent.glob(pattern) if p != path)
    return ([path] if path.is_file() else []) + found


@dataclass
class StoreStatus:
    """What is at a path: nothing, something unreadable, or a store with its keys and progress."""

    exists: bool
    readable: bool = False
    key: str | None = None
    config: str | None = None
    rows_done: int = 0
    n_rows: int = 0
    dim: int = 0
    complete: bool = False


def probe_store(path: Path) -> StoreStatus:
    """Look at a file without raising: used to decide between a cache hit, a resume and a fresh write."""
    import h5py

    if not path.is_file():
        return StoreStatus(exists=path.exists())
    try:
        with h5py.File(path, "r") as handle:
            attrs = handle.attrs
            if "tlcache_schema" not in attrs:
                return StoreStatus(exists=True)
            complete = bool(attrs["complete"])
            if complete and "labels_digest" in attrs:  # labels edited since: not the store of this key
                class_names = json.loads(handle["labels"].attrs["class_names"])
                if str(attrs["labels_digest"]) != labels_digest(handle["labels"][()], class_names):
                    return StoreStatus(exists=True)
            return StoreStatus(
                exists=True,
                readable=True,
                key=str(attrs["cache_key"]),
                config=str(attrs.get("config_key", "")),
                rows_done=int(attrs["n_rows"]) if complete else int(np.count_nonzero(handle["done"][()])),
                n_rows=int(attrs["n_rows"]),
                dim=int(attrs["dim"]),
                complete=complete,
            )
    except (OSError, KeyError, ValueError):  # truncated, corrupt, or being written by another process
        return StoreStatus(exists=True)


def _preallocated(handle: h5py.File, name: str, shape: tuple, dtype: str) -> h5py.Dataset:
    """A contiguous dataset whose space is allocated now (sparse on disk): later writes change no metadata."""
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return handle.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


class StoreWriter:
    """Fills a partial store row batch by row batch, in any order; ``finish()`` publishes it under its final name.

    Make one with :meth:`create` or :meth:`resume`.
    """

    def __init__(self, handle: h5py.File, final_path: Path):
        self.final_path = final_path
        self._file = handle
        self._features = handle["features"]
        self._views = handle["views"] if "views" in handle else None
        self._done = handle["done"]
        self.done = self._done[()].astype(bool)
        self.skipped: dict[int, str] = {}  # row: why its item could not be read (this run's; a resume retries)

    @classmethod
    def create(
        cls,
        final_path: Path,
        meta: dict[str, Any],
        ids: Sequence[str],
        labels: Sequence[int],
        class_names: Sequence[str],
        fingerprints: Sequence[str],
        dim: int,
        dtype: str = "float32",
        views: int = 0,
        groups: Sequence[str] | None = None,
    ) -> StoreWriter:
        import h5py

        check_choice("--dtype", dtype, DTYPES)
        final_path.parent.mkdir(parents=True, exist_ok=True)
        n = len(ids)
        # The rows' strings, labels and marks are written now (the features as rows come): room for them first.
        strings_bytes = sum(len(str(i).encode()) + len(str(f)) + 48 for i, f in zip(ids, fingerprints))
        check_room(final_path.parent, strings_bytes + 9 * n)
        handle = h5py.File(partial_path(final_path), "w")
        _preallocated(handle, "features", (n, dim), dtype)
        if views:
            _preallocated(handle, "views", (n, views, dim), dtype)
        done = _preallocated(handle, "done", (n,), "uint8")
        done[...] = 0
        strings = h5py.string_dtype()
        handle.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=strings)
        handle.create_dataset("fingerprints", data=np.array(list(fingerprints), dtype=object), dtype=strings)
        if groups is not None:
            handle.create_dataset("groups", data=np.array(list(groups), dtype=object), dtype=strings)
        label_set = handle.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        label_set.attrs["class_names"] = json.dumps(list(class_names))
        attrs = handle.attrs
        for name, value in meta.items():
            attrs[name] = encode_attr(name, value)
        attrs["labels_digest"] = labels_digest(np.asarray(labels), class_names)
        attrs["tlcache_schema"] = SCHEMA_VERSION
        attrs["n_rows"] = n
        attrs["dim"] = dim
        attrs["dtype"] = dtype
        attrs["views"] = views
        attrs["complete"] = False
        attrs["created"] = utc_now()
        handle.flush()
        return cls(handle, final_path)

    @classmethod
    def resume(cls, final_path: Path) -> StoreWriter:
        """Reopen an interrupted partial store; its ``done`` rows are kept."""
        import h5py

        return cls(h5py.File(partial_path(final_path), "r+"), final_path)

    @property
    def rows_done(self) -> int:
        return int(self.done.sum())

    def pending(self) -> np.ndarray:
        """Indices of the rows still to write (neither written nor skipped), in order."""
        left = ~self.done
        left[list(self.skipped)] = False
        return np.flatnonzero(left)

    def skip(self, rows: Sequence[int], reasons: Sequence[str]) -> None:
        """Leave out rows whose items could not be read, saying why: the finished store holds the other rows and
        lists these. Only this process knows them until finish(): a resumed run tries them again."""
        for row, reason in zip(rows, reasons):
            self.skipped[int(row)] = reason

    def write(self, rows: np.ndarray, features: np.ndarray, views: np.ndarray | None = None) -> None:
        """Write features (and views) for the row indices ``rows`` (increasing), flush them, then mark them done."""
        index = _as_index(rows)
        check_room(self.final_path.parent, features.nbytes + (0 if views is None else views.nbytes) + len(rows))
        with _system_errors():
            self._features[index] = features
            if self._views is not None:
                self._views[index] = views
            self._file.flush()
            self._done[index] = 1
            self._file.flush()
        self.done[rows] = True

    def finish(self, extra: dict[str, Any], compression: str = "none") -> Path:
        """Mark the store complete and move it to its final name: rewritten without its skipped rows (listed in
        ``skipped_ids`` and ``skipped_reasons``) when there are any, and repacked with compression if asked."""
        if len(self.pending()):
            raise RuntimeError(f"finish() with {len(self.pending())} rows neither written nor skipped")
        check_choice("--compression", compression, COMPRESSIONS)
        import h5py

        attrs = self._file.attrs
        for name, value in extra.items():
            attrs[name] = encode_attr(name, value)
        if self.skipped:
            rows = sorted(self.skipped)
            ids = self._file["ids"][rows]
            strings = h5py.string_dtype()
            self._file.create_dataset("skipped_ids", data=ids, dtype=strings)
            reasons = np.array([self.skipped[row] for row in rows], dtype=object)
            self._file.create_dataset("skipped_reasons", data=reasons, dtype=strings)
        attrs["n_skipped"] = len(self.skipped)
        attrs["finished"] = utc_now()
        attrs["complete"] = True
        self._file.flush()
        source = Path(self._file.filename)
        self.close()
        from tlcache.repack import publish

        return publish(source, self.final_path, compression)

    def close(self) -> None:
        """Close the file; a close that fails (a full disk) loses nothing: rows are flushed before their marks."""
        if self._file.id.valid:
            try:
                self._file.close()
            except (OSError, RuntimeError):  # HDF5 reports a failed flush as either
                pass


def check_room(folder: Path, n_bytes: int) -> None:
    """Refuse a write the disk has no room for before HDF5 starts it: HDF5 left in the middle of a failed write
    can crash the process when it later closes the file (a segmentation fault was seen)."""
    if shutil.disk_usage(folder).free < n_bytes + _ROOM_MARGIN:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextmanager
def _system_errors() -> Iterator[None]:
    """HDF5 reports a failed write or flush (a full disk) as a RuntimeError or an OSError whose message holds the
    system's errno: raise it as the OSError of that errno, which callers can tell apart."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        found = re.search(r"errno = (\d+)", str(exc))
        if not found:
            raise
        raise OSError(int(found[1]), os.strerror(int(found[1]))) from None


def _as_index(rows: np.ndarray) -> slice | np.ndarray:
    """A slice for a contiguous run of rows (fast in HDF5), else the index array."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _of_a_run(path: Path) -> str | None:
    """What ``path`` is when it is a folder `fit-head` wrote, or one of its files; else None."""
    from tlcache.runs import LEADERBOARD_FILE, is_run_file_name, is_run_folder

    def a_run(folder: Path) -> bool:
        return is_run_folder(folder) or (folder / LEADERBOARD_FILE).is_file()

    if path.is_dir():
        return "a folder of `fit-head` (a run)" if a_run(path) else None
    return f"a file of a `fit-head` run ({path.name})" if is_run_file_name(path.name) and a_run(path.parent) else None


class FeatureStore:
    """A complete store, opened for reading. Anything else is refused with one clear line.

    >>> store = FeatureStore("cache/minilm-0123.h5")        # doctest: +SKIP
    >>> X, y = store.features(), store.labels()             # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        self._fingerprints: list[str] | None = None  # read on first use (fingerprints())
        if not self.path.exists():
            partial = partial_path(self.path)
            if partial.exists():
                self.path = partial  # say how far the interrupted run got
            else:
                raise UserError(f"{self.path} does not exist; pass a .h5 store written by `tlcache embed`")
        if run := _of_a_run(self.path):  # `fit-head RUN` and `info RUN/head.json` were told to embed it, or delete it
            raise UserError(
                f"{self.path} is {run}, not a feature store; pass the .h5 store (a run's report.json names the one its "
                "head was fitted on)"
            )
        # The data embed reads (a folder, a CSV, an image), passed where its store goes.
        if self.path.is_dir() or self.path.suffix.lower() in TABLE_EXTENSIONS + IMAGE_EXTENSIONS:
            what = "a folder" if self.path.is_dir() else "a data file"
            raise UserError(
                f"{self.path} is {what}, not a feature store; embed it first (`tlcache embed {self.path}`) and pass "
                "the .h5 store it writes"
            )
        try:
            with h5py.File(self.path, "r") as handle:
                if "tlcache_schema" not in handle.attrs:
                    raise UserError(
                        f"{self.path} is an HDF5 file but not a tlcache feature store; "
                        "pass a store written by `tlcache embed`"
                    )
                try:
                    self.meta = {name: decode_attr(name, value) for name, value in handle.attrs.items()}
                    self.class_names: list[str] = json.loads(handle["labels"].attrs["class_names"])
                    problem = layout_problem(handle, self.meta, self.class_names)
                except (KeyError, ValueError, TypeError) as exc:  # a missing part, bad JSON, odd types
                    problem = f"{type(exc).__name__}: {exc}"
                if problem:
                    raise UserError(f"{self.path} is a damaged feature store ({problem}); delete it and embed again")
                if not self.meta["complete"]:
                    rows_done = int(np.count_nonzero(handle["done"][()]))
        except OSError as exc:
            if "unable to lock" in str(exc).lower():
                raise UserError(f"{self.path} is being written by another process; wait for it to finish") from None
            raise UserError(
                f"{self.path} is not a tlcache feature store (not a readable HDF5 file); "
                "pass a .h5 written by `tlcache embed`, or delete it and embed again"
            ) from None
        if self.meta["tlcache_schema"] > SCHEMA_VERSION:
            raise UserError(
                f"{self.path} was written by a newer tlcache (store schema {self.meta['tlcache_schema']}); "
                "upgrade tlcache to read it"
            )
        if not self.meta["complete"] or self.path.name.endswith(PARTIAL_SUFFIX):
            done = f"{rows_done} of {self.meta['n_rows']} rows" if not self.meta["complete"] else "all rows done"
            raise UserError(
                f"{self.path} is incomplete ({done}): the embed that wrote it was interrupted; run the same "
                "`tlcache embed` again to finish it"
            )

    @property
    def n_rows(self) -> int:
        return int(self.meta["n_rows"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def n_views(self) -> int:
        return int(self.meta.get("views", 0))

    @property
    def key(self) -> str:
        return str(self.meta["cache_key"])

    def _read(self, name: str, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as handle:
            return handle[name][rows]

    def features(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Features as float32 (stores may hold float16); ``rows`` selects a slice or increasing indices."""
        return self._finite(self._read("features", rows).astype(np.float32, copy=False))

    def _finite(self, features: np.ndarray) -> np.ndarray:
        """``features``, once checked: a NaN or an infinity would train and predict garbage without a word."""
        if not np.isfinite(features).all():
            bad = int((~np.isfinite(features)).any(axis=tuple(range(1, features.ndim))).sum())
            rows = f"{bad} row{'s' if bad != 1 else ''}"
            raise UserError(f"{self.path} holds NaN or infinite features (in {rows} read); delete it and embed again")
        return features

    def views(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray | None:
        """Augmented views (N, V, D) as float32, or None for a store without views."""
        if not self.n_views:
            return None
        return self._finite(self._read("views", rows).astype(np.float32, copy=False))

    def labels(self) -> np.ndarray:
        """Label indices into :attr:`class_names`; -1 marks an unlabelled item."""
        return self._read("labels")

    def ids(self) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in self._read("ids")]

    def fingerprints(self) -> list[str]:
        """Each row's content fingerprint, read once per store object (a finished store never changes; fitting a
        head asks twice: the test set's check and the training items' digest)."""
        if self._fingerprints is None:
            self._fingerprints = [v.decode() if isinstance(v, bytes) else str(v) for v in self._read("fingerprints")]
        return list(self._fingerprints)

    def skipped(self) -> list[tuple[str, str]]:
        """(id, why) of each source item left out because it could not be read; empty for most stores."""
        import h5py

        with h5py.File(self.path, "r") as handle:
            if "skipped_ids" not in handle:
                return []
            ids, reasons = handle["skipped_ids"][()], handle["skipped_reasons"][()]
        return [(_text(i), _text(r)) for i, r in zip(ids, reasons)]

    def groups(self) -> list[str] | None:
        """The group of each item (from the source's group column), or None when the store has none."""
        import h5py

        with h5py.File(self.path, "r") as handle:
            if "groups" not in handle:
                return None
            return [v.decode() if isinstance(v, bytes) else str(v) for v in handle["groups"][()]]

    def iter_batches(self, batch_size: int = 4096) -> Iterator[tuple[slice, np.ndarray]]:
        """Features in row batches, for stores larger than memory: yields (row slice, float32 array)."""
        import h5py

        with h5py.File(self.path, "r") as handle:
            features = handle["features"]
            for start in range(0, self.n_rows, batch_size):
                rows = slice(start, min(start + batch_size, self.n_rows))
                yield rows, self._finite(features[rows].astype(np.float32, copy=False))

    def summary(self) -> dict[str, Any]:
        """What the store holds and how it was made, as plain JSON."""
        labels = self.labels()
        counts = np.bincount(labels[labels >= 0], minlength=len(self.class_names))
        return {
            "path": str(self.path),
            "size_bytes": self.path.stat().st_size,
            **self.meta,
            "classes": {name: int(c) for name, c in zip(self.class_names, counts)},
            "unlabelled": int((labels < 0).sum()),
            **({"skipped": [{"id": i, "reason": why} for i, why in skipped]} if (skipped := self.skipped()) else {}),
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
