"""The HDF5 feature store: one file per (source content, backbone config), named by its cache key.

Layout: datasets ``features`` (N, D), ``ids`` (N,), ``labels`` (N,) int (-1 = unlabelled) with the class
names in an attribute, ``fingerprints`` (N,) per-item content digests; the attributes record how the store was
made. ``rows_done`` counts the rows flushed so far and ``complete`` is set last, so a store cut short is never
read as a finished one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlcache.errors import UserError

if TYPE_CHECKING:
    import h5py
from tlcache.hashing import hash_json

SCHEMA_VERSION = 1
STORE_SUFFIX = ".h5"
DTYPES = ("float32", "float16")
_CHUNK_BYTES = 1 << 20  # ~1 MiB chunks of whole rows: cheap appends, fast row-batch reads
_JSON_ATTRS = ("backbone_spec", "preprocessing", "source_options")


def default_cache_dir() -> Path:
    """``$TLCACHE_HOME``, else ``~/.cache/tlcache``."""
    return Path(os.environ.get("TLCACHE_HOME") or Path.home() / ".cache" / "tlcache")


def cache_key(source_fingerprint: str, backbone_config: dict[str, Any], dtype: str) -> str:
    """Hash of everything that changes the stored numbers, and nothing else (not paths, devices or batch sizes)."""
    return hash_json(
        {"schema": SCHEMA_VERSION, "source": source_fingerprint, "backbone": backbone_config, "dtype": dtype}
    )


def store_filename(backbone_name: str, key: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", backbone_name).strip("-")[:40] or "store"
    return f"{slug}-{key[:24]}{STORE_SUFFIX}"


def resolve_store_path(out: str | Path | None, backbone_name: str, key: str) -> Path:
    """``--out`` ending in .h5 is the file itself; any other ``--out`` (or none: the cache dir) is a folder."""
    if out is not None and str(out).endswith(STORE_SUFFIX):
        return Path(out)
    folder = Path(out) if out is not None else default_cache_dir()
    return folder / store_filename(backbone_name, key)


@dataclass
class StoreStatus:
    """What is at a path: nothing, something unreadable, or a store with its key and progress."""

    exists: bool
    readable: bool = False
    key: str | None = None
    rows_done: int = 0
    n_rows: int = 0
    complete: bool = False


def probe_store(path: Path) -> StoreStatus:
    """Look at a path without raising: used to decide between a cache hit, a resume and a fresh write."""
    import h5py

    if not path.exists():
        return StoreStatus(exists=False)
    try:
        with h5py.File(path, "r") as handle:
            attrs = handle.attrs
            if "tlcache_schema" not in attrs:
                return StoreStatus(exists=True)
            return StoreStatus(
                exists=True,
                readable=True,
                key=str(attrs["cache_key"]),
                rows_done=int(attrs["rows_done"]),
                n_rows=int(attrs["n_rows"]),
                complete=bool(attrs["complete"]),
            )
    except (OSError, KeyError):  # truncated or corrupt: a process died mid-write
        return StoreStatus(exists=True)


class StoreWriter:
    """Fills a store batch by batch; ``finish()`` marks it complete. Make one with ``create`` or ``resume``."""

    def __init__(self, handle: h5py.File):
        self.path = Path(handle.filename)
        self._file = handle
        self._features = handle["features"]
        self.rows_done = int(handle.attrs["rows_done"])

    @classmethod
    def create(
        cls,
        path: Path,
        meta: dict[str, Any],
        ids: Sequence[str],
        labels: Sequence[int],
        class_names: Sequence[str],
        fingerprints: Sequence[str],
        dim: int,
        dtype: str = "float32",
    ) -> StoreWriter:
        import h5py

        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        n = len(ids)
        handle = h5py.File(path, "w")
        rows_per_chunk = max(1, min(n, _CHUNK_BYTES // (dim * np.dtype(dtype).itemsize)))
        handle.create_dataset("features", shape=(n, dim), dtype=dtype, chunks=(rows_per_chunk, dim))
        strings = h5py.string_dtype()
        handle.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=strings)
        handle.create_dataset("fingerprints", data=np.array(list(fingerprints), dtype=object), dtype=strings)
        label_set = handle.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        label_set.attrs["class_names"] = json.dumps(list(class_names))
        attrs = handle.attrs
        for name, value in meta.items():
            attrs[name] = _encode_attr(name, value)
        attrs["tlcache_schema"] = SCHEMA_VERSION
        attrs["n_rows"] = n
        attrs["dim"] = dim
        attrs["dtype"] = dtype
        attrs["rows_done"] = 0
        attrs["complete"] = False
        attrs["created"] = _now()
        handle.flush()
        return cls(handle)

    @classmethod
    def resume(cls, path: Path) -> StoreWriter:
        """Reopen an interrupted store; writing continues after the last flushed row."""
        import h5py

        return cls(h5py.File(path, "r+"))

    def append(self, rows: np.ndarray) -> None:
        """Write the next rows and flush them, then count them as done."""
        end = self.rows_done + len(rows)
        self._features[self.rows_done : end] = rows
        self._file.flush()
        self.rows_done = end
        self._file.attrs["rows_done"] = end
        self._file.flush()

    def finish(self, extra: dict[str, Any]) -> None:
        if self.rows_done != self._features.shape[0]:
            raise RuntimeError(f"finish() after {self.rows_done} of {self._features.shape[0]} rows")
        for name, value in extra.items():
            self._file.attrs[name] = _encode_attr(name, value)
        self._file.attrs["finished"] = _now()
        self._file.attrs["complete"] = True
        self._file.flush()
        self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


class FeatureStore:
    """A complete store, opened for reading. Anything else is refused with one clear line.

    >>> store = FeatureStore("cache/minilm-0123.h5")        # doctest: +SKIP
    >>> X, y = store.features(), store.labels()             # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path} does not exist; pass a .h5 store written by `tlcache embed`")
        if self.path.is_dir():
            raise UserError(f"{self.path} is a folder; pass a .h5 store written by `tlcache embed`")
        try:
            with h5py.File(self.path, "r") as handle:
                if "tlcache_schema" not in handle.attrs:
                    raise UserError(
                        f"{self.path} is an HDF5 file but not a tlcache feature store; "
                        "pass a store written by `tlcache embed`"
                    )
                self.meta = {name: _decode_attr(name, value) for name, value in handle.attrs.items()}
                self.class_names: list[str] = json.loads(handle["labels"].attrs["class_names"])
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
        if not self.meta["complete"]:
            raise UserError(
                f"{self.path} is incomplete ({self.meta['rows_done']} of {self.meta['n_rows']} rows): the embed "
                "that wrote it was interrupted; run the same `tlcache embed` again to finish it"
            )

    @property
    def n_rows(self) -> int:
        return int(self.meta["n_rows"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def key(self) -> str:
        return str(self.meta["cache_key"])

    def _read(self, name: str) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as handle:
            return handle[name][()]

    def features(self) -> np.ndarray:
        """All features as float32 (stores may hold float16)."""
        return self._read("features").astype(np.float32, copy=False)

    def labels(self) -> np.ndarray:
        """Label indices into :attr:`class_names`; -1 marks an unlabelled item."""
        return self._read("labels")

    def ids(self) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in self._read("ids")]

    def fingerprints(self) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in self._read("fingerprints")]

    def summary(self) -> dict[str, Any]:
        """What the store holds and how it was made, as plain JSON."""
        labels = self.labels()
        counts = np.bincount(labels[labels >= 0], minlength=len(self.class_names))
        return {
            "path": str(self.path),
            "size_bytes": self.path.stat().st_size,
            **{k: v for k, v in self.meta.items()},
            "classes": {name: int(c) for name, c in zip(self.class_names, counts)},
            "unlabelled": int((labels < 0).sum()),
        }


def _encode_attr(name: str, value: Any) -> Any:
    if name in _JSON_ATTRS:
        return json.dumps(value)
    if isinstance(value, str):
        return str(value)  # str subclasses (torch's version string) have no HDF5 type
    return value


def _decode_attr(name: str, value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if name in _JSON_ATTRS and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
