"""Two calls at once, one in a forked process beside this one: how `fit-head --head all` trains the torch-based
mlp head on a second core while the scikit-learn heads fit here, so that this process never imports torch (a
second of a `--head all` on two cores) and the mlp's epochs overlap the other heads' sweeps.

A fork is taken only where it is safe and pays: on Linux (macOS's system libraries are not fork-safe, Windows has
no fork), before this process has imported torch (its OpenMP thread pool does not survive a fork: a child would
hang at its first parallel product), with two cores or more. The cores are split, never oversubscribed: the child
gets half of them (its BLAS, and torch's threads when it imports torch) and this process's BLAS the rest until the
child is done; when this process's call ends first, the child's torch takes every core from its next step on
(tlcache.threads.more_threads_when). Anywhere else the two calls run here, one after the other, with the same
results (the mlp's products give the same numbers on one thread as on several).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import TypeVar

from threadpoolctl import threadpool_limits

from tlcache.errors import UserError

A = TypeVar("A")
B = TypeVar("B")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PR_SET_PDEATHSIG = 1  # prctl(2)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def forking_pays() -> bool:
    """Whether a call may run in a forked process beside this one (see the module's docstring)."""
    return sys.platform.startswith("linux") and "torch" not in sys.modules and usable_cores() >= 2


def side_by_side(aside: Callable[[], A], here: Callable[[], B], fork: bool | None = None) -> tuple[A, B]:
    """``aside()`` in a forked process and ``here()`` in this one, at the same time, the cores split between them;
    where a fork is not safe or does not pay (``fork`` None: see :func:`forking_pays`; False: never), ``aside()``
    then ``here()``, both here. Returns both results. An error of either is raised here (the child's with its own
    traceback as a note, from Python 3.11); when ``here()`` fails, the child is waited for first, so that whatever
    it is writing is written whole."""
    if not (forking_pays() if fork is None else fork):
        return aside(), here()
    cores = usable_cores()
    theirs = max(1, cores // 2)
    child = _Child(aside, threads=theirs, later=cores)
    try:
        with threadpool_limits(max(1, cores - theirs)):
            mine = here()
        child.freed.set()  # this side is done: its cores are the child's
    except BaseException:
        child.wait()
        raise
    return child.result(), mine


class _Child:
    """``call()`` running in a forked process that sends back its result or its error through a pipe."""

    def __init__(self, call: Callable, threads: int, later: int | None = None):
        context = multiprocessing.get_context("fork")
        self._receiving, sending = context.Pipe(duplex=False)
        self.freed = context.Event()  # set when the child may run ``later`` threads (torch's)
        arguments = (call, sending, threads, os.getpid(), (self.freed, later or threads))
        self._process = context.Process(target=_run, args=arguments, daemon=True)
        with warnings.catch_warnings():
            # Python 3.12+ warns of any fork in a process with threads; here they are BLAS's idle pool threads,
            # which the libraries re-create in a child (pthread_atfork), and no torch pool (see forking_pays).
            warnings.filterwarnings(
                "ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning
            )
            self._process.start()
        sending.close()  # the child holds the only sending end: its exit ends the pipe

    def wait(self) -> None:
        self._process.join()

    def result(self):
        """The call's result, or its error raised here."""
        try:
            outcome = self._receiving.recv()
        except EOFError:  # it ended without sending: killed, or exited from under the call
            outcome = None
        finally:
            self._receiving.close()
            self.wait()
        if outcome is None:  # a state to tell in one line (the system's out-of-memory killer, say), not a bug
            code = self._process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise UserError(f"a worker process ended without a result ({how}); run the command again")
        done, value = outcome
        if not done:
            raise value
        return value


def _run(call: Callable, sending, threads: int, parent: int, freed: tuple) -> None:
    """In the child: its share of the cores (``freed``: an event, and the threads torch may run once it is set),
    then ``call()``; sends (True, result) or (False, error)."""
    from tlcache.threads import more_threads_when

    _die_with(parent)
    for variable in THREAD_VARIABLES:  # read by torch when it is imported, and by OpenMP and BLAS pools started later
        os.environ[variable] = str(threads)
    more_threads_when(*freed)
    try:
        with threadpool_limits(threads):
            outcome = (True, call())
    except BaseException as error:  # noqa: BLE001 - every error goes to the parent, which raises it
        if hasattr(error, "add_note"):  # Python 3.11+: shown under the parent's traceback, not in the error's text
            error.add_note("raised in a worker process:\n" + "".join(traceback.format_exception(error)).rstrip())
        outcome = (False, error)
    try:
        sending.send(outcome)
    except Exception:  # an unpicklable result or error: its text goes instead
        text = "".join(traceback.format_exception(outcome[1])) if not outcome[0] else repr(outcome[1])
        sending.send((False, RuntimeError(f"a worker process's outcome could not be sent back: {text}")))
    finally:
        sending.close()


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` dies (Linux's PR_SET_PDEATHSIG): a command killed with
    SIGKILL leaves no worker behind, writing into its run folders."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux's C library: the worker ends when its work does
        return
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
