"""The heads tlcache fits and the choices a user makes of them (a head's name, its grid, a class weight, a
calibration), checked here without scikit-learn: `fit-head --head all` checks every head before it forks, so that
its forked process's imports overlap this one's (see tlcache.all_heads)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tlcache.calibration import CALIBRATIONS
from tlcache.errors import UserError, check_choice

HEADS = ("logreg", "linear-svm", "svm", "mlp", "knn", "sgd")
UNWEIGHTED_HEADS = ("mlp", "knn", "sgd")  # heads that take no --class-weight
CLASS_WEIGHTS = ("balanced",)
# The hyperparameter each head sweeps, and its default grid (log-spaced for regularisation strengths).
GRIDS: dict[str, tuple[str, tuple]] = {
    "logreg": ("C", tuple(np.logspace(-5, 0, 11).tolist())),
    "linear-svm": ("C", tuple(np.logspace(-6, -1, 11).tolist())),
    "svm": ("C", tuple(np.logspace(-1, 2, 10).tolist())),
    "mlp": ("alpha", tuple(np.logspace(-4, 1, 10).tolist())),
    "knn": ("n_neighbors", (1, 3, 5, 7, 11, 15, 21, 31, 51, 75)),
}


def check_head(
    name: str, grid: list[float] | None = None, class_weight: str | None = None, calibration: str | None = None
) -> list | None:
    """What :func:`tlcache.heads.make_head` refuses, refused without building the head or importing scikit-learn
    (see the module's docstring). Returns the values the head sweeps (None for ``sgd``, which sweeps none)."""
    if name not in HEADS:
        raise UserError(f"unknown head '{name}'; use one of {', '.join(HEADS)}")
    if calibration is not None:
        check_choice("--calibrate", calibration, CALIBRATIONS)
    if class_weight is not None:
        check_choice("--class-weight", class_weight, CLASS_WEIGHTS)
    if class_weight and name in UNWEIGHTED_HEADS:
        raise UserError(f"--class-weight is not supported by the {name} head; use logreg, linear-svm or svm")
    if name == "sgd":
        if calibration:
            raise UserError("--calibrate is not supported by the sgd head, which streams the store")
        if grid:  # it sweeps nothing: a grid given was dropped without a word
            raise UserError("--grid does not apply to the sgd head, which sweeps nothing (alpha 1e-4); drop --grid")
        return None
    param, default_grid = GRIDS[name]
    return checked_grid(name, param, grid) if grid else list(default_grid)


def checked_grid(head: str, param: str, grid: Sequence) -> list[float]:
    """A user's grid for ``head`` in ascending order, each value once: finite and above 0 (whole numbers for
    ``n_neighbors``). UserError otherwise."""
    values = sorted({float(value) for value in grid})
    shown = ",".join(f"{value:g}" for value in values)
    if not all(np.isfinite(value) and value > 0 for value in values):
        raise UserError(f"--grid {shown}: the {head} head's {param} needs finite values above 0, e.g. 0.001,0.01,0.1")
    if param == "n_neighbors" and not all(value.is_integer() for value in values):
        raise UserError(f"--grid {shown}: the {head} head's {param} needs whole numbers of 1 or more, e.g. 1,5,15")
    return values
