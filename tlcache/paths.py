"""Where tlcache keeps what it writes, and the file-name-safe short names it gives them."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from tlcache.errors import UserError


def default_cache_dir() -> Path:
    """``$TLCACHE_HOME``, else ``~/.cache/tlcache``; refused in one line when it names something not a folder."""
    folder = Path(os.environ.get("TLCACHE_HOME") or Path.home() / ".cache" / "tlcache")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"the cache folder {folder} ($TLCACHE_HOME) is a file, not a folder; point it at a folder")
    return folder


def fingerprint_index() -> Path:
    """The file digests of image folders, remembered across runs (see :mod:`tlcache.fingerprints`)."""
    return default_cache_dir() / "fingerprints.sqlite"


def slug(backbone_name: str) -> str:
    """A file-name-safe short name for a backbone: ``hf:/models/my-bert`` becomes ``hf-my-bert``,
    ``torchvision:resnet50`` becomes ``torchvision-resnet50``."""
    family, sep, rest = backbone_name.partition(":")
    short = f"{family}-{Path(rest.rstrip('/')).name}" if sep else family
    return re.sub(r"[^A-Za-z0-9._-]+", "-", short).strip("-")[:40] or "store"


def printable(name: str) -> str:
    """A file name as text that can be stored and printed: bytes that are not UTF-8 (which Python keeps as lone
    surrogates) written as \\xNN escapes. The file is still opened by its real name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_output_folder(folder: str | Path, option: str = "--out") -> Path:
    """``folder`` as a Path, refused in one line before any work when it cannot be written into: a file, a folder
    whose first existing parent is a file, or one without write permission."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if not path.exists():
            continue
        if not path.is_dir():
            where = "is a file" if path == folder else f"lies under {path}, which is a file"
            raise UserError(f"{option} {folder} {where}, not a folder; pass a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{option} {folder}: {path} cannot be written into (permissions); pass another folder")
        break
    return folder


def check_output_file(path: str | Path, option: str = "--out", example: str = "predictions.csv") -> Path:
    """``path`` as a Path, refused in one line before any work when no file can be written there: a folder (the
    message suggests ``example`` in it), or a path whose folder cannot be written into (see
    :func:`check_output_folder`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; name a file in it, e.g. {path / example}")
    check_output_folder(path.parent, option=f"{option} {path}: its folder")
    return path


@contextlib.contextmanager
def folder_for_output(folder: Path) -> Iterator[Path]:
    """Make ``folder`` and its missing parents for the work of the block; when the block fails, remove those it made
    (left empty): a command that fails leaves no trace at its output path."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for made in missing:
            with contextlib.suppress(OSError):  # not empty (another process wrote there meanwhile), or gone
                made.rmdir()
        raise


def process_running(pid: int) -> bool:
    """Whether a process of this id is alive (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
