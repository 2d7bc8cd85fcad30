"""The one exception type for mistakes a user can fix: the CLI prints its message as one line, exit code 2."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterable, Sequence

# Errors of a disk that is full or failing: a state the user can fix (free space, fix the disk), not a bug.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)
# A path that cannot be used as given: gone, a file where a folder is needed or the other way, or no permission.
PATH_ERRORS = (
    errno.ENOENT,
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
    errno.ELOOP,
)


class UserError(ValueError):
    """Bad input or a bad request: what was wrong, where, and what to do, in one line.

    A ``ValueError``, so library users can catch it as the usual type for a bad argument.
    """


def first_few(names: Sequence[str], shown: int) -> str:
    """The first ``shown`` of ``names``, comma-separated, and how many more there are: "a, b and 3 more"."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def check_choice(flag: str, value: object, choices: Iterable[str], verb: str = "is not supported") -> None:
    """Refuse a value outside ``choices`` in one line that names the flag and lists what it takes."""
    choices = tuple(choices)
    if value not in choices:
        raise UserError(f"{flag} {value} {verb}; use one of {', '.join(choices)}")


def item_list(items: Iterable, takes: str) -> list:
    """``items`` as a list. One text or one path (a str, bytes or path object) is refused: iterating it would make
    each character an item (``predict("a review")`` gave a prediction per letter). ``takes`` names the taker."""
    if isinstance(items, (str, bytes, os.PathLike)):
        shown = repr(items if len(str(items)) <= 40 else f"{str(items)[:37]}...")
        raise UserError(f"{takes} takes a list of items, not one {type(items).__name__}: pass [{shown}]")
    return list(items)


def differing_settings(saved, current: dict, name=lambda outer, inner: f"{outer}.{inner}") -> str:
    """The settings in which a saved record's ``saved`` dict differs from ``current``, as words ("finetune.epochs,
    test differ"), one level into nested settings (named by ``name(outer, inner)``); "no settings recorded" when
    ``saved`` is not a dict."""
    if not isinstance(saved, dict):
        return "no settings recorded"
    names = []
    for key in sorted(saved.keys() | current.keys()):
        old, new = saved.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            names += [name(key, inner) for inner in sorted(old.keys() | new.keys()) if old.get(inner) != new.get(inner)]
        else:
            names.append(key)
    return f"{', '.join(names)} {'differs' if len(names) == 1 else 'differ'}"


def warn_once(message: str) -> None:
    """A UserWarning of ``message``, said once in this process (and in a process forked from it), although Python's
    own once-per-place record is cleared whenever code changes the warning filters (matplotlib's saves do): a check
    that every head of `fit-head --head all` repeats is said once."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


# The warnings warn_once has said in this process.
_WARNED: set[str] = set()
