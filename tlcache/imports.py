"""Imports that take seconds, started early on a thread so that they overlap work that does not need them."""

from __future__ import annotations

import threading
from contextlib import contextmanager, suppress


@contextmanager
def importing_ahead(torch: bool):
    """Import what the reports need (matplotlib) and, with ``torch``, what the mlp head needs (3-4 s together on 2
    cores) on a thread while heads fit, most of whose time is spent in BLAS, without the GIL. A failed import is
    left for the code that needs the module to raise."""

    def load() -> None:
        from tlcache.report import pyplot

        with suppress(Exception):
            pyplot()
        if torch:
            with suppress(Exception):
                import torch as _  # noqa: F401

    thread = threading.Thread(target=load, name="tlcache-imports", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
