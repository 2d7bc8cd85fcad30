"""The heads' progress bars: drawn on a terminal, whole once when a sweep is done, never elsewhere."""

import io
import subprocess
import sys

from tlcache.progress import sweep_bar
from tlcache.sweep import sweep_grid


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_sweep_bar_counts_the_values_scored_on_a_terminal_only(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with sweep_bar("svm", shown=True):
        sweep_grid([0.1, 1.0, 10.0], lambda value: -abs(value - 1.0), "C")
    assert "svm sweep" in terminal.getvalue() and "3/3" in terminal.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    with sweep_bar("svm", shown=False):
        sweep_grid([0.1, 1.0, 10.0], lambda value: -abs(value - 1.0), "C")
    assert quiet.getvalue() == ""


def test_a_bar_starts_no_thread_since_fit_head_forks():
    # In a fresh interpreter: tqdm's monitor thread, once started by any bar, lives on in the process.
    script = (
        "import threading\n"
        "from tlcache.progress import progress_bar\n"
        "with progress_bar(False, total=3), progress_bar(True, total=3):\n"
        "    print(threading.active_count())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"
