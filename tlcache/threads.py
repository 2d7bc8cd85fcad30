"""torch's thread count for a long run of torch work (the mlp head's training, embedding on a CPU), following the
cores the process actually gets.

torch's threads meet after every parallel product. When another process holds one of the cores, the thread that
lost its core holds the others up at every meeting: the mlp's fit on MNIST-5k took 4.4 times as long beside one
busy process as on free cores, and 7.8 times beside a two-threaded torch process; running as many threads as the
cores it got, 2.0 and 3.3 times (benchmarks/results/mlp_threads.md). How many cores the process got shows in its
CPU time over the wall time (about 2.0 on two free cores; 1.2 beside one busy process; 1.0 beside two busy
threads), measured at the end of each unit of work: when it gets fewer cores than it runs threads, it runs as many
threads as it got, and tries all of them again after a pause that doubles each time they are still not to be had.
The mlp's products, and the backbones' forward passes, give the same numbers on any number of threads
(``tests/test_threads.py``), so this changes the time only. Embedding loses less than the mlp beside other work
(its products are larger) but still much: beside one busy process, Rotten Tomatoes' 2000 texts through minilm took
23.1 s with torch's count fixed and 17.2 s with it following the cores; beside a two-threaded torch process, 30.8 s
and 23.3 s (benchmarks/results/embed_threads.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHECK_SECONDS = 0.05  # the least wall time over which the process's share of the cores is measured
SHORT = 0.75  # a share below this fraction of the threads running means fewer cores than threads
FIRST_RETRY_SECONDS = 1.0  # how long fewer threads run before all are tried again; doubles while refused


class ThreadCount:
    """The decisions, apart from the clocks and torch: :meth:`measured` takes the share of the cores the process
    got over the last interval (CPU seconds per wall second) at time ``now`` and returns the threads to run next."""

    def __init__(self, most: int):
        self.most = self.running = max(1, most)
        self.retry_after = FIRST_RETRY_SECONDS
        self.retry_at = math.inf

    def measured(self, share: float, now: float) -> int:
        if self.running > 1 and share < SHORT * self.running:
            if self.running == self.most:  # all threads were tried and not to be had: wait longer next time
                self.retry_at = now + self.retry_after
                self.retry_after *= 2
            self.running = max(1, min(self.running - 1, int(share + 0.25)))
        elif self.running == self.most:
            self.retry_after = FIRST_RETRY_SECONDS  # all threads had their cores: the pause starts short again
        else:
            self.at_start(now)
        return self.running

    def at_start(self, now: float) -> int:
        """The threads to start a block of work with: those decided last, or all of them again once their pause
        is over."""
        if self.running < self.most and now >= self.retry_at:
            self.running, self.retry_at = self.most, math.inf
        return self.running


# The decisions of every block of this process, per thread count asked for: the cores it gets outlast a block
# (a sweep's mlp runs a block per stage and split; each one starting on all threads beside a busy process cost a
# small sweep half its time, on one thread all of it).
_DECISIONS: dict[int, ThreadCount] = {}
# In a process forked to run beside another on its share of the cores (tlcache.forked): an event the other sets when
# its work is done, and the threads this one may run from then on.
_FREED: tuple[Any, int] | None = None


def more_threads_when(event, threads: int) -> None:
    """Let this process's torch run ``threads`` threads once ``event`` (a multiprocessing.Event) is set: a process
    forked beside another, on its share of the cores, takes them all when the other is done (`--head all`'s mlp on
    one thread of two took MNIST-5k 15 s where it takes 8.8 s alone, the other heads done after 6 s)."""
    global _FREED
    _FREED = (event, threads)


def _freed_threads() -> int | None:
    """The threads this process may run now that the process beside it is done; None before that (or where none)."""
    return _FREED[1] if _FREED is not None and _FREED[0].is_set() else None


class AdaptiveThreads:
    """torch's thread count, set from :class:`ThreadCount`'s decisions at each :meth:`tick` (the end of a unit of
    work) once ``CHECK_SECONDS`` have passed since the last; :meth:`restart` before a unit that follows work on
    one thread (decoding an image, tokenising) measures that unit alone."""

    def __init__(self):
        import torch

        self._torch = torch
        most = _freed_threads() or torch.get_num_threads()
        self.decide = _DECISIONS.setdefault(most, ThreadCount(most))
        running = self.decide.at_start(time.perf_counter())
        if running != torch.get_num_threads():
            torch.set_num_threads(running)
        self.restart()

    def restart(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def tick(self) -> None:
        if (freed := _freed_threads()) and freed != self.decide.most:  # the process beside is done: its cores too
            self.decide = _DECISIONS.setdefault(freed, ThreadCount(freed))
            self._torch.set_num_threads(self.decide.at_start(time.perf_counter()))
            self.restart()
            return
        wall = time.perf_counter() - self._wall
        if wall < CHECK_SECONDS:
            return
        share = (time.process_time() - self._cpu) / wall
        running = self.decide.measured(share, time.perf_counter())
        if running != self._torch.get_num_threads():
            self._torch.set_num_threads(running)
        self.restart()


@contextmanager
def _restored(enabled: bool) -> Iterator[Any]:
    """torch (None when not ``enabled``) for a block that sets its thread count; the count as it was after it."""
    if not enabled:
        yield None
        return
    import torch

    before = torch.get_num_threads()
    try:
        yield torch
    finally:
        torch.set_num_threads(before)


@contextmanager
def adaptive_threads(enabled: bool = True) -> Iterator[AdaptiveThreads | None]:
    """An :class:`AdaptiveThreads` for the block (None when not ``enabled``: on a GPU, say); torch's thread count is
    as it was after it."""
    with _restored(enabled) as torch:
        yield AdaptiveThreads() if torch is not None else None


@contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """torch on one thread for the block (many small steps, where threads cost more than they give), as it was
    after it; nothing when not ``enabled``."""
    with _restored(enabled) as torch:
        if torch is not None:
            torch.set_num_threads(1)
        yield


@contextmanager
def measured(threads: AdaptiveThreads | None) -> Iterator[None]:
    """The block as one unit of ``threads``' work, measured alone (nothing when ``threads`` is None)."""
    if threads is not None:
        threads.restart()
    yield
    if threads is not None:
        threads.tick()
