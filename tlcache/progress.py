"""Progress bars on stderr, drawn on a terminal only: the heads of `fit-head --head all` and the values of a head's
sweep."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def progress_bar(shown: bool, **options):
    """A tqdm bar on stderr, drawn on a terminal only (``shown`` False: never), without tqdm's monitor thread:
    `--head all` forks, and a fork copies one thread only."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        monitor_interval = 0

    return Bar(disable=None if shown else True, file=sys.stderr, **options)


@contextmanager
def sweep_bar(head: str, shown: bool) -> Iterator[None]:
    """Within: a bar of the values the head's sweep has scored (gone when it is done)."""
    if not shown:
        yield
        return
    from tlcache.sweep import reporting_progress

    with progress_bar(shown, desc=f"{head} sweep", unit="value", leave=False) as bar:

        def scored(param: str, done: int, planned: int) -> None:
            bar.total = planned
            bar.set_postfix_str(param, refresh=False)
            bar.update(done - bar.n)
            if done == planned:  # the sweep is done: drawn whole once, however fast it was
                bar.refresh()

        with reporting_progress(scored):
            yield
