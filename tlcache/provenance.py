"""What every store, run and model records about how it was made: the time, and the versions that made it."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """The current time, UTC, to the second, in ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def torch_version() -> str:
    import torch

    return str(torch.__version__)  # a str subclass, which HDF5 attributes cannot hold


def tlcache_version() -> str:
    from tlcache import __version__

    return __version__
