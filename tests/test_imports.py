"""Imports started ahead on a thread: the modules are there when the work that needs them starts."""

import subprocess
import sys


def test_importing_ahead_loads_matplotlib_and_torch_by_the_time_it_ends():
    script = (
        "import sys\n"
        "from tlcache.imports import importing_ahead\n"
        "assert 'torch' not in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
        "with importing_ahead(torch=True):\n"
        "    pass\n"
        "import matplotlib\n"
        "print('torch' in sys.modules, 'matplotlib.pyplot' in sys.modules, matplotlib.get_backend().lower())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "agg"]


def test_without_torch_only_matplotlib_is_imported():
    script = (
        "import sys\n"
        "from tlcache.imports import importing_ahead\n"
        "with importing_ahead(torch=False):\n"
        "    pass\n"
        "print('torch' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
