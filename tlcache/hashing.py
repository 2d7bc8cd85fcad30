"""Content hashing for cache keys and fingerprints (one hash function, one place)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DIGEST_SIZE = 16  # bytes; 128-bit BLAKE2b digests, printed as 32 hex characters
_READ_CHUNK = 1 << 20


def new_hasher() -> hashlib._Hash:
    return hashlib.blake2b(digest_size=DIGEST_SIZE)


def hash_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).hexdigest()


def hash_file(path: str | Path) -> str:
    hasher = new_hasher()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_READ_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def hash_files(paths: Iterable[Path], root: Path) -> str:
    """Digest of several files, each named by its path relative to ``root`` (so moving the folder keeps it)."""
    hasher = new_hasher()
    for path in sorted(paths):
        hasher.update(str(path.relative_to(root)).encode())
        hasher.update(hash_file(path).encode())
    return hasher.hexdigest()


def hash_json(value: Any) -> str:
    """Digest of a JSON-serialisable value, independent of dict order."""
    return hash_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
