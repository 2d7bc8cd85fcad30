"""Keeping a comparison within ``--budget``: an estimate of each fine-tune cell from a short timing probe, a plan
printed before the fine-tunes start, and a check before every cell.

The frozen cells run first (seconds each on cached features; every verdict needs them). Then a probe: one epoch of
the fine-tune on PROBE_PER_CLASS training items of each class and again on three times as many, each scored on
PROBE_TEST_PER_CLASS test items of each class; the difference gives the seconds per training item, the rest the
fixed costs (kept beside the cells: a rerun of the same comparison plans on them without probing again). Fine-tune
cells are planned seed by seed (every shot count of seed 0, then of seed 1, ...), so a short budget still gives
whole learning curves, with fewer seeds. Before each cell the estimate is made again, at the highest rate the
finished cells measured, and a cell that would end past the budget is left out and named in the report.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from tlcache.compare.cells import CellKey
from tlcache.compare.stats import shots_order

PROBE_PER_CLASS = 8  # training items of each class in the timing probe
PROBE_TEST_PER_CLASS = 2  # test items of each class it scores


class Budget:
    """The wall-time budget of one comparison (None: no limit), counted from its creation."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.started = time.perf_counter()
        self.left_out: list[dict] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def admits(self, key: CellKey, estimate: float) -> bool:
        """Whether a cell estimated at ``estimate`` seconds ends within the budget; a cell that would not is
        recorded as left out."""
        if self.seconds is None or self.elapsed() + estimate <= self.seconds:
            return True
        self.left_out.append({**asdict(key), "estimate_seconds": round(estimate, 1)})
        return False

    def spent(self, key: CellKey) -> bool:
        """Leave out a cell, the budget spent before it could be estimated (no estimate recorded)."""
        self.left_out.append({**asdict(key), "estimate_seconds": None})
        return False


class FinetuneClock:
    """Seconds of a fine-tune cell: fixed costs (loading the backbone, writing the model) plus training items times
    epochs at ``per_item`` seconds, with a third of that for each item only evaluated (validation, test, LP-FT's
    embedding: a forward pass, no backward). ``per_item`` starts at the probe's; once cells have finished it is
    the highest rate they measured (a small cell's fixed costs weigh more per item: the estimates err long)."""

    def __init__(self, fixed: float, per_item: float, config, n_test: int):
        self.fixed, self.per_item = fixed, per_item
        self.config = config
        self.n_test = n_test
        self.from_cells = False  # whether per_item comes from finished cells yet, or still from the probe

    def items(self, key: CellKey, n_train: int) -> float:
        """Training item passes, evaluated ones counted as a third of one."""
        epochs = self.config.epochs + self.config.head_epochs
        embedded = n_train if key.method == "lp-ft" else 0
        return n_train * epochs * (1 + self.config.val_fraction / 3) + (self.n_test + embedded) / 3

    def seconds(self, key: CellKey, n_train: int) -> float:
        return self.fixed + self.per_item * self.items(key, n_train)

    def measured(self, key: CellKey, n_train: int, seconds: float) -> None:
        rate = max(seconds - self.fixed, 0.0) / self.items(key, n_train)
        self.per_item = max(self.per_item, rate) if self.from_cells else rate
        self.from_cells = True


def probe_rates(small: float, first: float, large: float, second: float) -> tuple[float, float]:
    """(fixed seconds, seconds per item pass) from two probe runs: ``first`` seconds for ``small`` item passes,
    ``second`` for ``large``. The slope between them, floored at a tenth of the larger run's own seconds per item:
    on a busy machine the two runs' noise can swamp their difference, and a slope near zero would promise a whole
    fine-tune in seconds (seen: "about 6 s to go" for four cells that took 625 s). On an idle machine the slope
    stays above the floor (the larger run's fixed costs, loading the model, weigh more than its items)."""
    slope = (second - first) / (large - small) if large > small and second > first else first / small
    per_item = max(slope, 0.1 * second / large)
    return max(first - per_item * small, 0.0), per_item


def finetune_order(keys: list[CellKey]) -> list[CellKey]:
    """Seed by seed, each seed's shot counts in increasing order: whole learning curves first."""
    return sorted(keys, key=lambda key: (key.seed, shots_order(key.shots)))


def plan_lines(pending: list[tuple[CellKey, float]], budget: Budget) -> list[str]:
    """What the fine-tunes will run and what they leave out, in words, given their estimates."""
    if budget.seconds is None:
        total = sum(seconds for _, seconds in pending)
        return [f"plan: {len(pending)} fine-tune cells, about {total:.0f} s (no --budget)"]
    clock, run, skip = budget.elapsed(), [], []
    for key, seconds in pending:
        if clock + seconds <= budget.seconds:
            run.append(key)
            clock += seconds
        else:
            skip.append((key, seconds))
    lines = [
        f"plan: {len(run)} of {len(pending)} fine-tune cells fit the budget of {budget.seconds:.0f} s "
        f"({budget.elapsed():.0f} s spent on embedding, the frozen cells and the probe; about "
        f"{max(clock - budget.elapsed(), 0.0):.0f} s to go)"
    ]
    lines += [f"  leaves out {key.name} (about {seconds:.0f} s)" for key, seconds in skip]
    if skip:  # what it would take, for a rerun (which reuses every finished cell)
        every = budget.elapsed() + sum(seconds for _, seconds in pending)
        lines.append(f"  a --budget of about {every:.0f} s would fit every fine-tune cell")
        # A new user saw a cell this plan left out run after all, with nothing said.
        lines.append("  (each cell is estimated again as the cells before it end: one left out here may still run)")
    return lines
