"""Content digests of files, remembered by (path, size, mtime, ctime, inode) so unchanged files are not re-read.

Re-running `embed` on an unchanged folder then costs one ``stat`` per file and one SQLite query, not a read of
every byte. A file modified within the last few seconds is not remembered (its timestamp may not have moved
yet: the "racy git" problem), so an edit is never missed.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from tlcache.hashing import hash_file
from tlcache.paths import printable

_RACY_SECONDS = 2.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, digest TEXT
)
"""


def file_digests(paths: Sequence[str], index_path: Path | None) -> list[str]:
    """Digest of each file's bytes, reusing remembered digests from the index at ``index_path`` (None: no index).

    ``paths`` are absolute paths: they are the index's keys.
    """
    if index_path is None:
        return [hash_file(p) for p in paths]
    stats = [os.stat(p) for p in paths]
    names = [printable(p) for p in paths]  # the index's keys: text SQLite can store
    try:
        known = _lookup(index_path, names)
    except sqlite3.Error:  # an unwritable or damaged index only costs speed
        return [hash_file(p) for p in paths]
    digests, fresh = [], []
    racy_after = (time.time() - _RACY_SECONDS) * 1e9
    for name, path, st in zip(names, paths, stats):
        signature = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        remembered = known.get(name)
        if remembered is not None and remembered[0] == signature:
            digests.append(remembered[1])
            continue
        digest = hash_file(path)
        digests.append(digest)
        if max(st.st_mtime_ns, st.st_ctime_ns) < racy_after:
            fresh.append((name, *signature, digest))
    if fresh:
        try:
            _remember(index_path, fresh)
        except sqlite3.Error:
            pass
    return digests


def _connect(index_path: Path) -> sqlite3.Connection:
    index_path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(index_path, timeout=30)
    connection.execute(_SCHEMA)
    return connection


def _lookup(index_path: Path, names: list[str]) -> dict[str, tuple[tuple[int, int, int, int], str]]:
    if not index_path.exists() or not names:
        return {}
    wanted = set(names)
    # One range scan over the common prefix beats one query per file.
    prefix = os.path.commonpath(names) if len(names) > 1 else os.path.dirname(names[0])
    connection = _connect(index_path)
    try:
        rows = connection.execute(
            "SELECT path, size, mtime_ns, ctime_ns, inode, digest FROM files WHERE path >= ? AND path < ?",
            (prefix, prefix + "\U0010ffff"),
        )
        return {row[0]: (tuple(row[1:5]), row[5]) for row in rows if row[0] in wanted}
    finally:
        connection.close()


def _remember(index_path: Path, rows: list[tuple]) -> None:
    connection = _connect(index_path)
    try:
        with connection:
            connection.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        connection.close()
