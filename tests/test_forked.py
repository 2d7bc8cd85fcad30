import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from conftest import make_store
from tlcache.errors import UserError
from tlcache.forked import side_by_side, usable_cores
from tlcache.heads import fit_head


def _meet(folder, mine: str, theirs: str) -> int:
    """Leave a file named ``mine`` and wait for one named ``theirs``: two calls that only finish side by side."""
    (folder / mine).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not (folder / theirs).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{theirs} never came")
        time.sleep(0.01)
    return os.getpid()


def test_the_call_aside_runs_in_another_process_at_the_same_time(tmp_path):
    child, parent = side_by_side(lambda: _meet(tmp_path, "a", "b"), lambda: _meet(tmp_path, "b", "a"), fork=True)
    assert parent == os.getpid() != child


def test_without_a_fork_both_calls_run_here_in_turn():
    order = []
    results = side_by_side(lambda: order.append("aside") or os.getpid(), lambda: order.append("here") or 2, fork=False)
    assert results == (os.getpid(), 2)
    assert order == ["aside", "here"]


def _threads() -> dict:
    """The most threads any pool of each kind (BLAS, OpenMP) may start, and the variables torch reads at import."""
    pools = {}
    for pool in threadpool_info():
        pools[pool["user_api"]] = max(pools.get(pool["user_api"], 0), pool["num_threads"])
    return {**pools, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def test_the_cores_are_split_between_the_two_processes_not_oversubscribed():
    child, parent = side_by_side(_threads, _threads, fork=True)
    cores = usable_cores()
    assert child["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    for kind in ("blas", "openmp"):
        if kind in child:
            assert child[kind] <= max(1, cores // 2)
            assert parent[kind] <= max(1, cores - cores // 2)
            if cores >= 2:
                assert child[kind] + parent[kind] <= cores


def _share_then_all(folder) -> tuple:
    """In the child: the threads freed while this side still works (none), then once it is done."""
    from tlcache.threads import _freed_threads

    while_working = _freed_threads()
    (folder / "started").write_text("")
    deadline = time.monotonic() + 60
    while _freed_threads() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return while_working, _freed_threads()


def _after_the_child_started(folder) -> None:
    deadline = time.monotonic() + 60
    while not (folder / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_child_takes_every_core_once_this_side_is_done(tmp_path):
    child, _ = side_by_side(lambda: _share_then_all(tmp_path), lambda: _after_the_child_started(tmp_path), fork=True)
    assert child == (None, usable_cores())


def test_an_error_aside_is_raised_here_as_it_was():
    def refuse():
        raise UserError("x.h5 has no labels; embed a labelled source")

    with pytest.raises(UserError, match="x.h5 has no labels; embed a labelled source"):
        side_by_side(refuse, lambda: 1, fork=True)


def test_a_worker_that_dies_is_an_error_not_a_hang():
    with pytest.raises(UserError, match="ended without a result \\(exit code 3\\)"):
        side_by_side(lambda: os._exit(3), lambda: 1, fork=True)
    with pytest.raises(UserError, match="ended without a result \\(killed by signal 9\\); run the command again"):
        side_by_side(lambda: os.kill(os.getpid(), signal.SIGKILL), lambda: 1, fork=True)


def test_a_worker_dies_with_the_process_that_forked_it(tmp_path):
    # The command's process killed with SIGKILL takes its worker with it (no worker goes on writing run folders).
    script = (
        "import os, sys, time\n"
        "from tlcache.forked import side_by_side\n"
        "def aside():\n"
        "    open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "side_by_side(aside, lambda: time.sleep(60), fork=True)\n"
    )
    pid_file = tmp_path / "worker.pid"
    command = subprocess.Popen([sys.executable, "-c", script, str(pid_file)])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    command.kill()
    command.wait()
    while time.monotonic() < deadline:
        try:  # gone, or dead and not yet reaped (a zombie: state Z)
            if Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the worker outlived the process that forked it")


def test_a_result_that_cannot_travel_is_an_error():
    with pytest.raises(RuntimeError, match="could not be sent back"):
        side_by_side(lambda: lambda: 0, lambda: 1, fork=True)


def test_when_this_side_fails_the_worker_finishes_its_writing_first(tmp_path):
    def slow_write():
        time.sleep(0.5)
        (tmp_path / "written").write_text("whole")
        return 1

    def fail():
        raise ValueError("this side failed")

    with pytest.raises(ValueError, match="this side failed"):
        side_by_side(slow_write, fail, fork=True)
    assert (tmp_path / "written").read_text() == "whole"


# A fresh interpreter (tests import torch, and a process that has imported torch never forks): every head but sgd,
# then whether this process imported torch.
ALL_HEADS_SCRIPT = """
import sys
import tlcache
tlcache.fit_all_heads(sys.argv[1], heads=("logreg", "mlp"), out=sys.argv[2], seed=0)
print("torch imported:", "torch" in sys.modules)
"""


def test_fit_all_heads_trains_the_mlp_beside_the_others_and_gets_the_run_it_gets_alone(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (60, 8)), rng.normal(1.0, 1, (60, 8))]).astype(np.float32)
    store = make_store(tmp_path / "s.h5", X, np.repeat([0, 1], 60), ["a", "b"])
    command = [sys.executable, "-c", ALL_HEADS_SCRIPT, str(store), str(tmp_path / "all")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    forks = sys.platform.startswith("linux") and usable_cores() >= 2
    # Where it forks, the mlp (and torch with it) stayed out of this process.
    assert done.stdout.strip().splitlines()[-1] == f"torch imported: {not forks}"
    alone = fit_head(store, "mlp", out=tmp_path / "alone", seed=0)
    beside = json.loads((tmp_path / "all" / "mlp" / "report.json").read_text())
    assert beside["metrics"] == alone.report["metrics"]
    assert beside["sweep"] == alone.report["sweep"]
    predictions = (tmp_path / "all" / "mlp" / "predictions.csv").read_text()
    assert predictions == (tmp_path / "alone" / "predictions.csv").read_text()
    # The same files, figures included (drawn by the parent for the mlp's run).
    assert sorted(path.name for path in (tmp_path / "all" / "mlp").iterdir()) == sorted(
        path.name for path in (tmp_path / "alone").iterdir()
    )
    leaderboard = json.loads((tmp_path / "all" / "leaderboard.json").read_text())
    assert sorted(row["head"] for row in leaderboard) == ["logreg", "mlp"]
