"""Run folders on disk: heads as arrays plus JSON that load without running code, checked against their sidecar,
written whole; fine-tune checkpoints loaded as tensors and plain data only."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from conftest import make_store
from tlcache import headfile
from tlcache.errors import UserError
from tlcache.heads import fit_head, make_head
from tlcache.runs import LEGACY_HEAD_FILE, PREDICTIONS_FILE, SIDECAR_FILE, load_head, write_whole


def _data(n_classes: int):
    rng = np.random.default_rng(0)
    y = np.arange(240) % n_classes
    return rng.normal(size=(240, 12)).astype(np.float32) + y[:, None] * 0.5, y


@pytest.mark.parametrize("head", ["logreg", "linear-svm", "svm", "mlp", "knn", "sgd"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_every_head_reloads_to_the_same_predictions(head, n_classes, tmp_path):
    X, y = _data(n_classes)
    for calibration in [None] if head == "sgd" else [None, "isotonic"]:
        fitted = make_head(head, calibration=calibration).fit(X, y)
        path = tmp_path / "head.npz"
        path.write_bytes(headfile.to_bytes(fitted))
        loaded = headfile.load(path)
        np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
        np.testing.assert_allclose(loaded.predict_proba(X), fitted.predict_proba(X), atol=1e-5)


def _marker_pickle(marker):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return Boom()


def _store_and_run(tmp_path):
    X, y = _data(3)
    store = make_store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    return fit_head(store, "logreg", out=tmp_path / "run", test_fraction=0.25).out_dir


def test_a_pickled_head_is_refused_and_runs_nothing(tmp_path):
    """An old or malicious head.joblib beside a sidecar: refused in one line, its code never run."""
    run = _store_and_run(tmp_path)
    marker = tmp_path / "pwned"
    sidecar = json.loads((run / SIDECAR_FILE).read_text())
    for key in ("head_file", "head_sha256"):
        sidecar.pop(key)
    (run / SIDECAR_FILE).write_text(json.dumps(sidecar))
    for name in os.listdir(run):
        if name.startswith("head-"):
            os.remove(run / name)
    (run / LEGACY_HEAD_FILE).write_bytes(pickle.dumps(_marker_pickle(marker)))
    with pytest.raises(UserError, match="pickle written by an older tlcache"):
        load_head(run)
    assert not marker.exists()


def test_a_head_file_naming_other_classes_or_holding_pickles_is_refused(tmp_path):
    run = _store_and_run(tmp_path)
    sidecar = json.loads((run / SIDECAR_FILE).read_text())
    head_file = run / sidecar["head_file"]
    marker = tmp_path / "pwned"
    attacks = {
        "names a function": {"format": headfile.FORMAT, "head": {"object": "os.system", "state": {"dict": {}}}},
        "not our format": {"format": "pickle", "head": None},
    }
    for structure in attacks.values():
        with zipfile.ZipFile(head_file, "w") as archive:
            with archive.open("__structure__.npy", "w") as handle:
                np.lib.format.write_array(handle, np.frombuffer(json.dumps(structure).encode(), dtype=np.uint8))
        _point_sidecar_at(run, sidecar, head_file)
        with pytest.raises(UserError, match="was refused"):
            load_head(run)
    # An array of pickled objects inside the file: numpy refuses to unpickle it.
    with zipfile.ZipFile(head_file, "w") as archive:
        with archive.open("a0.npy", "w") as handle:
            np.lib.format.write_array(handle, np.array([_marker_pickle(marker)], dtype=object), allow_pickle=True)
    _point_sidecar_at(run, sidecar, head_file)
    with pytest.raises(UserError, match="was refused"):
        load_head(run)
    assert not marker.exists()


def _point_sidecar_at(run, sidecar, head_file):
    """What an attacker who rewrites both files does: the sidecar's digest follows the new head file."""
    import hashlib

    sidecar["head_sha256"] = hashlib.sha256(head_file.read_bytes()).hexdigest()
    (run / SIDECAR_FILE).write_text(json.dumps(sidecar))


def test_a_head_and_a_sidecar_that_disagree_are_refused(tmp_path):
    run = _store_and_run(tmp_path)
    sidecar = json.loads((run / SIDECAR_FILE).read_text())
    head_file = run / sidecar["head_file"]
    good = head_file.read_bytes()
    head_file.write_bytes(good[:-10] + b"0123456789")  # changed behind the sidecar's back
    with pytest.raises(UserError, match="digests differ"):
        load_head(run)
    head_file.write_bytes(good)
    for broken, match in (
        ({**sidecar, "classes": "a,b,c"}, "malformed entries \\(classes\\)"),
        ({key: value for key, value in sidecar.items() if key != "dim"}, "malformed entries \\(dim\\)"),
        ({**sidecar, "classes": ["a", "b"]}, "does not fit its sidecar"),
        ({**sidecar, "dim": 99}, "does not fit its sidecar"),
        ({**sidecar, "head_file": "../../etc/passwd"}, "names no head file"),
    ):
        (run / SIDECAR_FILE).write_text(json.dumps(broken))
        with pytest.raises(UserError, match=match):
            load_head(run)
    (run / SIDECAR_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_head(run)


_REFIT = """
import sys
from tlcache.heads import fit_head
fit_head(sys.argv[1], sys.argv[2], out=sys.argv[3], test_fraction=0.25, seed=int(sys.argv[4]))
"""


def test_fit_head_killed_at_any_point_leaves_a_head_and_sidecar_that_agree(tmp_path):
    """fit-head into a folder holding another head, killed with SIGKILL at spread-out moments: the folder always
    loads, as the old head or the new one, each with its own sidecar."""
    X, y = _data(3)
    store = make_store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    run = tmp_path / "run"
    fit_head(store, "logreg", out=run, test_fraction=0.25, seed=0)
    started = time.perf_counter()
    command = [sys.executable, "-c", _REFIT, str(store), "mlp", str(run), "1"]
    subprocess.run(command, check=True, capture_output=True)
    full = time.perf_counter() - started
    for step in range(8):
        seed = 2 + step
        head = ("logreg", "mlp")[step % 2]
        process = subprocess.Popen([sys.executable, "-c", _REFIT, str(store), head, str(run), str(seed)])
        time.sleep(full * (0.3 + 0.1 * step))
        process.send_signal(signal.SIGKILL)
        process.wait()
        pipeline, sidecar = load_head(run)  # digest, entries and shapes checked: the pair agrees
        assert sidecar["seed"] in (0, 1, *range(2, seed + 1))
        assert pipeline.predict(X).shape == (len(X),)


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    import torch

    from tlcache.finetune.trainer import CHECKPOINT_FILE, start_or_resume

    marker = tmp_path / "pwned"
    torch.save({"identity": {}, "model": _marker_pickle(marker), "optimizer": {}}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(UserError, match="cannot be resumed safely"):
        start_or_resume(tmp_path, {}, resume=True)
    assert not marker.exists()
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be resumed safely"):
        start_or_resume(tmp_path, {}, resume=True)


_HOLD = """
import sys, time
from pathlib import Path
from tlcache.runs import writing_run
with writing_run(Path(sys.argv[1])):
    Path(sys.argv[2]).touch()
    time.sleep(5)
    Path(sys.argv[3]).touch()
"""


def test_a_run_folder_is_written_by_one_process_at_a_time(tmp_path):
    """Two runs into one folder: the second writes once the first has written its last file (a mix of the two
    runs' files lost a head: the first run's sidecar named a head file the second had removed)."""
    X, y = _data(3)
    store = make_store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    run, holding, released = tmp_path / "run", tmp_path / "holding", tmp_path / "released"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run), str(holding), str(released)])
    deadline = time.monotonic() + 60
    while not holding.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    fit_head(store, "logreg", out=run, test_fraction=0.25)
    assert released.exists()  # it waited for the other writer
    holder.wait()
    load_head(run)


def test_a_run_removes_what_a_run_before_it_left_and_it_does_not_write(tmp_path):
    run = _store_and_run(tmp_path)
    (run / "model.onnx").write_bytes(b"an export of the head being replaced")
    fit_head(tmp_path / "s.h5", "svm", out=run, test_fraction=0.25)
    assert not (run / "model.onnx").exists() and load_head(run)[1]["head"] == "svm"
    fit_head(tmp_path / "s.h5", "logreg", out=run, test_fraction=0.25, shots=2, repeats=2)  # few-shot: no head
    left = {path.name for path in run.iterdir()}
    assert not left & {SIDECAR_FILE, PREDICTIONS_FILE} and not any(name.startswith("head-") for name in left)
    assert json.loads((run / "report.json").read_text())["few_shot"]["shots"] == 2


def test_a_whole_file_is_written_through_this_processs_own_partial_file(tmp_path):
    target = tmp_path / "report.json"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        abandoned = tmp_path / f".report.json.{int(dead.stdout)}.partial"  # its writer was killed
        running = tmp_path / f".report.json.{other.pid}.partial"  # its writer is still writing
        abandoned.write_text("half")
        running.write_text("half")
        write_whole(target, b"whole")
        assert target.read_bytes() == b"whole"
        assert not abandoned.exists() and running.exists()
    finally:
        other.kill()
        other.wait()
