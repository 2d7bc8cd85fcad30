import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_store
from tlcache.all_heads import fit_all_heads, unsettled_order, validation_rank
from tlcache.errors import UserError
from tlcache.head_choices import HEADS
from tlcache.runs import HeadRun, read_report


def _three_blobs(path, n=90, seed=0):
    """A store of three well-separated classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, 6)) + 3.0 * np.eye(3, 6)[y]
    return make_store(path, X, y, ["a", "b", "c"])


# Modules are imported on the main thread only. A module imported on a thread while the main thread works is seen
# half made by code that probes ``sys.modules``: scipy's array-API checks read ``torch.Tensor`` from whatever
# ``sys.modules["torch"]`` holds, so scikit-learn's import crashed one `fit-head --head all` in three while an
# earlier tlcache imported torch ahead on a thread. The script records every module imported by a thread other than
# the main one, then fits every head with its report.
OFF_MAIN_SCRIPT = """
import importlib.abc, sys, threading
off_main = []

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if threading.current_thread() is not threading.main_thread():
            off_main.append((threading.current_thread().name, name))
        return None

sys.meta_path.insert(0, Watch())
import tlcache
tlcache.fit_all_heads(sys.argv[1], out=sys.argv[2], seed=0)
print("off main:", off_main)
"""


def test_fitting_every_head_imports_nothing_off_the_main_thread(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (30, 8)), rng.normal(1.5, 1, (30, 8))]).astype(np.float32)
    store = make_store(tmp_path / "s.h5", X, np.repeat([0, 1], 30), ["a", "b"])
    done = subprocess.run(
        [sys.executable, "-c", OFF_MAIN_SCRIPT, str(store), str(tmp_path / "runs")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "mlp" / "report.json").exists()
    assert done.stdout.strip().splitlines()[-1] == "off main: []"


# The forked process that trains the mlp starts before this one imports scikit-learn (0.7-1 s of imports, the
# larger part scipy.stats and pandas), so that its own imports, torch's among them, overlap this one's.
BEFORE_FORK_SCRIPT = """
import sys
import tlcache.all_heads

def side_by_side(aside, here, fork=None):
    print("scikit-learn imported before the fork:", "sklearn" in sys.modules)
    return aside(), here()

tlcache.all_heads.side_by_side = side_by_side
tlcache.all_heads.fit_all_heads(sys.argv[1], test=sys.argv[2], out=sys.argv[3], heads=("logreg", "mlp"))
"""


def test_every_head_is_checked_before_the_fork_without_importing_scikit_learn(tmp_path):
    train, test = _three_blobs(tmp_path / "train.h5"), _three_blobs(tmp_path / "test.h5", n=30, seed=1)
    done = subprocess.run(
        [sys.executable, "-c", BEFORE_FORK_SCRIPT, str(train), str(test), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "scikit-learn imported before the fork: False"
    assert (tmp_path / "runs" / "mlp" / "report.json").exists() and (tmp_path / "runs" / "logreg").is_dir()


def test_every_head_refuses_an_option_one_of_them_lacks_before_any_fit(tmp_path):
    store = _three_blobs(tmp_path / "s.h5")
    with pytest.raises(UserError, match="the knn head.s n_neighbors needs whole numbers"):  # a grid for logreg
        fit_all_heads(store, heads=("logreg", "knn"), out=tmp_path / "runs", grid=[0.5, 2.0])
    assert not (tmp_path / "runs").exists()  # logreg would take it: it was not fitted first


def test_every_head_shows_a_bar_of_the_heads_done_on_a_terminal_and_nothing_elsewhere(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    store = _three_blobs(tmp_path / "s.h5")
    command = [sys.executable, "-c", "from tlcache.cli import main; main()", "fit-head", str(store), "--head", "all"]
    terminal, its_end = pty.openpty()
    fcntl.ioctl(its_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    done = subprocess.run([*command, "--out", tmp_path / "tty"], stdout=subprocess.PIPE, stderr=its_end)
    os.close(its_end)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the other end is closed and everything was read
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    assert done.returncode == 0
    assert "fit heads" in shown.decode() and f"{len(HEADS) - 1}/{len(HEADS) - 1}" in shown.decode()
    piped = subprocess.run([*command, "--out", tmp_path / "pipe"], capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stderr == ""
    lines = piped.stdout.splitlines()  # a line per head (sgd aside), the leaderboard's, and on these 72 rows the
    assert len(lines) == len(HEADS) + 1 and lines[-1].startswith("Measured on ")  # heads it cannot tell apart


def _run(head, validation, test):
    report = {"head": head, "sweep": {"validation_accuracy": validation}, "metrics": {"accuracy": test}}
    return HeadRun(Path(head), report)


def test_heads_are_ranked_by_validation_accuracy_never_by_the_test_items():
    runs = [_run("logreg", 0.80, 0.90), _run("svm", 0.85, 0.70), _run("knn", 0.80, 0.95), _run("mlp", 0.80, 0.99)]
    ranked = sorted(runs, key=validation_rank, reverse=True)
    assert [run.report["head"] for run in ranked] == ["svm", "logreg", "mlp", "knn"]  # ties in the order of HEADS


def test_test_items_in_training_are_warned_of_once_by_every_head_and_a_test_of_training_items_refused(tmp_path):
    """`--head all` fits the mlp in a forked process beside the others: the check of the test set runs once, before
    the fork, so its warning is one line (not one from each process) and its refusal comes before any fit."""
    train = _three_blobs(tmp_path / "s.h5")
    rng = np.random.default_rng(1)
    y = np.arange(30) % 3
    shared = [f"s-fp{i}" for i in range(5)] + [f"t-fp{i}" for i in range(5, 30)]  # 5 of the training items
    X = rng.normal(size=(30, 6)) + 3.0 * np.eye(3, 6)[y]
    test = make_store(tmp_path / "t.h5", X, y, ["a", "b", "c"], fingerprints=shared)
    command = [sys.executable, "-c", "from tlcache.cli import main; main()", "fit-head", str(train), "--head", "all"]
    done = subprocess.run([*command, "--test", str(test), "--out", tmp_path / "all"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("5 of 30 test items are also training items") == 1, done.stderr
    refused = subprocess.run([*command, "--test", str(train), "--out", tmp_path / "no"], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("error:") == 1 and not (tmp_path / "no").exists()


def test_heads_within_two_standard_errors_of_the_best_are_said_to_be_unsettled():

    def rows(n, *accuracies):
        return [{"head": f"h{i}", "validation_accuracy": a, "validation_items": n} for i, a in enumerate(accuracies)]

    # 200 items, best 0.80: standard error 2.8 points; 0.75 is within two, 0.73 is not.
    assert unsettled_order(rows(200, 0.80, 0.75, 0.73)) == (
        "Measured on 200 validation items (one item is 0.5 points, the best's standard error 2.8): h1 is within two "
        "standard errors of h0, so these data do not settle their order."
    )
    assert unsettled_order(rows(5000, 0.80, 0.75)) is None  # 0.57 points of error: 5 points apart is settled
    assert unsettled_order(rows(10, 1.0, 0.8)) is not None  # a perfect best: at least one item's error (10 points)
    assert unsettled_order(rows(None, 0.8, 0.79)) is None  # heads fitted before items were counted: nothing said


def test_every_head_with_a_class_weight_weights_those_that_take_one_and_says_so_of_the_others(tmp_path):
    """`--head all --class-weight balanced` was refused outright (the mlp takes no class weight)."""
    store = _three_blobs(tmp_path / "s.h5")
    with pytest.warns(UserWarning, match="applies to logreg, linear-svm and svm; knn is fitted without it"):
        runs = fit_all_heads(
            store, heads=("logreg", "knn"), out=tmp_path / "all", class_weight="balanced", progress=False
        )
    weights = {run.report["head"]: run.report["class_weight"] for run in runs}
    assert weights == {"logreg": "balanced", "knn": None}


def test_one_head_fitted_again_in_an_all_heads_folder_ranks_the_leaderboard_again(tmp_path):
    """A new user refitted svm alone (--grid 0.25) into the folder of `--head all`: leaderboard.md still showed
    the old svm's figures."""
    import json

    from tlcache.heads import fit_head

    store = _three_blobs(tmp_path / "s.h5")
    fit_all_heads(store, heads=("logreg", "knn"), out=tmp_path / "all", progress=False)
    again = fit_head(store, "knn", grid=[75], out=tmp_path / "all" / "knn")  # a worse k, on its own
    rows = {row["head"]: row for row in json.loads((tmp_path / "all" / "leaderboard.json").read_text())}
    assert rows["knn"]["chosen"] == 75 and rows["knn"]["accuracy"] == again.accuracy
    assert set(rows) == {"logreg", "knn"}
    assert (
        f"| knn | {again.report['sweep']['validation_accuracy']:.4f} |"
        in (tmp_path / "all" / "leaderboard.md").read_text()
    )
    # `tlcache report` of the folder itself said "pass a run folder written by fit-head", which it is.
    with pytest.raises(UserError, match=r"is the folder of `fit-head --head all`: each head's report is in its own"):
        read_report(tmp_path / "all")


def test_a_head_fitted_on_other_rows_is_not_ranked_beside_the_others(tmp_path):
    """A refit with another seed (other validation and test rows) is not ranked with heads of the old seed: the
    leaderboard is removed, with a warning naming the heads."""
    from tlcache.heads import fit_head

    store = _three_blobs(tmp_path / "s.h5")
    fit_all_heads(store, heads=("logreg", "knn"), out=tmp_path / "all", progress=False)
    with pytest.warns(UserWarning, match=r"was fitted on other rows than logreg beside it .* is removed"):
        fit_head(store, "knn", seed=3, out=tmp_path / "all" / "knn")
    assert not (tmp_path / "all" / "leaderboard.json").exists() and not (tmp_path / "all" / "leaderboard.md").exists()


def test_an_interrupted_run_of_every_head_leaves_no_leaderboard_of_two_runs(tmp_path, monkeypatch):
    """A new user's `--head all` rerun, stopped with Ctrl-C after two heads, left a leaderboard ranking those two
    (seed 0) above three of the run before (seed 5, class weights): the old leaderboard goes before any head is
    fitted, and none is written until every head is."""
    import tlcache.all_heads as all_heads

    store = _three_blobs(tmp_path / "s.h5")
    fit_all_heads(store, heads=("logreg", "svm", "knn"), out=tmp_path / "all", seed=5, progress=False)
    assert (tmp_path / "all" / "leaderboard.md").exists()
    fit_one = all_heads.fit_head

    def stopped_at_knn(store, head, **options):
        if head == "knn":
            raise KeyboardInterrupt
        return fit_one(store, head, **options)

    monkeypatch.setattr(all_heads, "fit_head", stopped_at_knn)
    with pytest.raises(KeyboardInterrupt):
        fit_all_heads(store, heads=("logreg", "svm", "knn"), out=tmp_path / "all", progress=False)
    assert read_report(tmp_path / "all" / "logreg")["seed"] == 0 and read_report(tmp_path / "all" / "knn")["seed"] == 5
    assert not (tmp_path / "all" / "leaderboard.json").exists() and not (tmp_path / "all" / "leaderboard.md").exists()
    # The command line says so (a new user read "nothing it wrote is half done" and found heads of two runs).
    from test_cli import run

    monkeypatch.setattr(all_heads, "side_by_side", lambda aside, here: (aside(), here()))
    stopped = run("fit-head", store, "--head", "all", "--out", tmp_path / "all", "--seed", 1, "--no-progress")
    assert stopped.exit_code == 130 and "its heads may be of two runs till then" in stopped.stderr


def test_one_head_is_not_fitted_into_the_folder_of_every_head(tmp_path):
    """A new user's `fit-head --head knn --out ALL` put a head of another store beside the five heads' folders and
    their leaderboard, and `predict ALL` then answered with it."""
    from tlcache.heads import fit_head

    store = _three_blobs(tmp_path / "s.h5")
    fit_all_heads(store, heads=("logreg", "knn"), out=tmp_path / "all", progress=False)
    with pytest.raises(UserError, match=r"is the folder of `fit-head --head all`; fit knn into its own folder there"):
        fit_head(store, "knn", out=tmp_path / "all")
    assert not (tmp_path / "all" / "head.json").exists()
