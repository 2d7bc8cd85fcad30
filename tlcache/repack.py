"""Publishing a finished store: the partial file, once marked complete, moves to its final name, first rewritten
without the rows of items that could not be read, and with compression where asked. A run killed between the
complete mark and the move leaves the partial file, which the next run of the same key publishes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlcache.store import check_room, partial_path, probe_store
from tlcache.store_schema import labels_digest

if TYPE_CHECKING:
    import h5py

_COMPRESSED_CHUNK_BYTES = 1 << 20  # compressed stores: ~1 MiB chunks of whole rows, for fast row-batch reads


def publish(partial: Path, final_path: Path, compression: str = "none") -> Path:
    """Move a partial store marked complete to its final name, first rewritten without its skipped rows and with
    ``compression`` where either applies. Run again on the partial after a kill, it finishes the job."""
    import h5py

    with h5py.File(partial, "r") as handle:
        keep = handle["done"][()].astype(bool) if handle.attrs.get("n_skipped", 0) else None
    if keep is not None or compression != "none":
        check_room(final_path.parent, partial.stat().st_size)  # the copy is at most as large as the partial
        partial = _rewrite(partial, compression, keep)
    os.replace(partial, final_path)
    return final_path


def publish_interrupted(path: Path, key: str, compression: str) -> bool:
    """Finish publishing the store of ``key`` at ``path`` when a run was killed after marking its partial file
    complete and before moving it; True when it did."""
    partial = partial_path(path)
    status = probe_store(partial)
    if not (status.complete and status.key == key):
        return False
    publish(partial, path, compression)
    return True


def _rewrite(path: Path, compression: str, keep: np.ndarray | None) -> Path:
    """Copy a finished store into a new file: only the rows ``keep`` marks (all, when None), features and views
    compressed in row chunks unless ``compression`` is none. Returns the new file's path; ``path`` is removed."""
    import h5py

    target = path.with_name(path.name + ".repack")
    with h5py.File(path, "r") as src, h5py.File(target, "w") as dst:
        n = int(src.attrs["n_rows"])
        keep = np.ones(n, dtype=bool) if keep is None else keep
        for name, value in src.attrs.items():
            dst.attrs[name] = value
        dst.attrs["n_rows"] = int(keep.sum())
        if compression != "none":
            dst.attrs["compression"] = compression
        for name, dataset in src.items():
            if name in ("features", "views"):
                _copy_rows(dataset, dst, name, keep, compression)
            elif dataset.shape[:1] == (n,) and not keep.all():
                out = dst.create_dataset(name, data=dataset[()][keep], dtype=dataset.dtype)
                for attr, value in dataset.attrs.items():
                    out.attrs[attr] = value
            else:
                src.copy(dataset, dst, name=name)
        if "labels_digest" in dst.attrs:  # of the rows kept
            dst.attrs["labels_digest"] = labels_digest(
                dst["labels"][()], json.loads(dst["labels"].attrs["class_names"])
            )
    path.unlink()
    return target


def _copy_rows(dataset: h5py.Dataset, dst: h5py.File, name: str, keep: np.ndarray, compression: str) -> None:
    """The rows of ``dataset`` that ``keep`` marks, into a new dataset of ``dst``, a batch at a time."""
    shape = (int(keep.sum()), *dataset.shape[1:])
    row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:]))
    rows_per_chunk = max(1, min(max(shape[0], 1), _COMPRESSED_CHUNK_BYTES // row_bytes))
    if compression == "none":
        out = dst.create_dataset(name, shape=shape, dtype=dataset.dtype)
    else:
        chunks = (rows_per_chunk, *dataset.shape[1:])
        out = dst.create_dataset(
            name, shape=shape, dtype=dataset.dtype, chunks=chunks, compression=compression, shuffle=True
        )
    written, step = 0, rows_per_chunk * 16
    for start in range(0, dataset.shape[0], step):
        block = dataset[start : start + step][keep[start : start + step]]
        out[written : written + len(block)] = block
        written += len(block)
