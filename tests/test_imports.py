"""Modules are imported on the main thread only.

A module imported on a thread while the main thread works is seen half made by code that probes ``sys.modules``:
scipy's array-API checks read ``torch.Tensor`` from whatever ``sys.modules["torch"]`` holds, so scikit-learn's
import crashed one `fit-head --head all` in three while an earlier tlcache imported torch ahead on a thread.
"""

import subprocess
import sys

import numpy as np

from tests.conftest import make_store

# Records every module imported by a thread other than the main one, then fits every head with a report.
SCRIPT = """
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
print("torch imported:", "torch" in sys.modules)
print("off main:", off_main)
"""


def test_fitting_every_head_imports_nothing_off_the_main_thread(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (30, 8)), rng.normal(1.5, 1, (30, 8))]).astype(np.float32)
    store = make_store(tmp_path / "s.h5", X, np.repeat([0, 1], 30), ["a", "b"])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(store), str(tmp_path / "runs")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "mlp" / "report.json").exists()
    assert done.stdout.strip().splitlines()[-2:] == ["torch imported: True", "off main: []"]
