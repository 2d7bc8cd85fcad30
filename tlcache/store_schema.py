"""What a store file must hold to be read (its layout, checked on every open) and how its attributes are encoded."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import h5py

_JSON_ATTRS = ("backbone_spec", "preprocessing", "source_options", "views_config")


def layout_problem(handle: h5py.File, meta: dict[str, Any], class_names: Any) -> str | None:
    """What is wrong with an opened store's layout, or None: every part a store is read by, with the shapes,
    types and ranges its attributes promise (a tampered or damaged file must not be read as data)."""
    import h5py

    for name in ("complete", "n_rows", "dim", "cache_key", "backbone", "backbone_spec"):
        if name not in meta:
            return f"no '{name}' attribute"
    if not isinstance(meta["backbone_spec"], dict):
        return "its backbone_spec is not a mapping"
    n, dim, views = meta["n_rows"], meta["dim"], meta.get("views", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, dim, views)) or n < 0 or dim < 1:
        return f"n_rows {n!r}, dim {dim!r}, views {views!r}: not counts"
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        return "its class names are not a list of strings"
    if len(set(class_names)) != len(class_names):
        return "a class name appears twice"
    expected = {"features": (n, dim), "labels": (n,), "ids": (n,), "fingerprints": (n,), "done": (n,)}
    if views:
        expected["views"] = (n, views, dim)
    for name, shape in expected.items():
        if not isinstance(handle.get(name), h5py.Dataset):
            return f"no '{name}' dataset"
        if handle[name].shape != shape:
            return f"'{name}' has shape {handle[name].shape}, not {shape}"
    # A finished store holds every row it lists; before it is published (a kill then is finished by the next run),
    # the rows it skipped are still there, never written.
    if meta["complete"] and np.count_nonzero(handle["done"][()] == 0) > meta.get("n_skipped", 0):
        return "it is marked complete but some rows were never written"
    labels = handle["labels"][()]
    if labels.dtype.kind not in "iu" or (n and (labels.min() < -1 or labels.max() >= len(class_names))):
        return f"labels outside -1..{len(class_names) - 1}"
    if "labels_digest" in meta and meta["labels_digest"] != labels_digest(labels, class_names):
        return "its labels or class names are not those it was written with (edited?)"
    return None


def labels_digest(labels: np.ndarray, class_names: list[str]) -> str:
    """A digest of a store's labels and class names, kept in its attributes when it is written: a new user's 50
    labels edited in a cached store were served as a cache hit, and trained on."""
    import hashlib

    data = np.asarray(labels, dtype="<i8").tobytes() + json.dumps(list(class_names)).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:32]


def encode_attr(name: str, value: Any) -> Any:
    if name in _JSON_ATTRS:
        return json.dumps(value)
    if isinstance(value, str):
        return str(value)  # str subclasses (torch's version string) have no HDF5 type
    return value


def decode_attr(name: str, value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if name in _JSON_ATTRS and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
