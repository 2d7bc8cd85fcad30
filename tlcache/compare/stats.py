"""The statistics of ``tlcache compare``: accuracy intervals, paired tests and the frozen-or-fine-tune verdict.

Every cell of a comparison is one (method, shots, seed) run scored on the same test items as the other cells of its
seed, so two methods are compared item by item (exact McNemar) rather than by overlapping intervals. The verdict
asks for a win on every seed, because a single seed's split can favour either side by chance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral

import numpy as np

RULE = (
    "At each shot count, the frozen head and the fine-tune with the highest mean validation accuracy over seeds "
    "(each cell's, on items carved from its own training items: the test items choose neither) are compared on the "
    "same test items: one wins only when its mean over the seeds both ran is higher and an exact McNemar test "
    "favours it with p < alpha on every one of them. Otherwise the two are level, and level means staying frozen, "
    "the cheaper choice."
)
KINDS = ("frozen", "finetune")

Cell = Mapping[str, object]


def bootstrap_interval(
    correct: Sequence[int] | np.ndarray, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval, over test items, of the accuracy of 0/1 per-item ``correct``; the same
    interval for the same ``seed``.

    >>> bootstrap_interval([1] * 80 + [0] * 20)  # doctest: +SKIP
    (0.72, 0.87)
    """
    hits = _as_hits(correct)
    if len(hits) == 0:
        raise ValueError("bootstrap_interval needs at least one test item")
    # A resample's number of correct items is exactly Binomial(n, observed accuracy), so drawing the counts is the
    # item bootstrap without drawing n indices per resample: no memory to chunk, whatever n_resamples * n.
    rng = np.random.default_rng(seed)
    means = rng.binomial(len(hits), hits.mean(), size=n_resamples) / len(hits)
    tail = 50 * (1 - level)
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_exact(a_correct: Sequence[int] | np.ndarray, b_correct: Sequence[int] | np.ndarray) -> float:
    """Two-sided exact McNemar p-value of two classifiers' 0/1 ``correct`` on the same test items, in the same
    order: the binomial test of the items only one of them got right; 1.0 when there are none."""
    a, b = _as_hits(a_correct), _as_hits(b_correct)
    if len(a) != len(b):
        raise ValueError(f"McNemar needs the same test items on both sides: got {len(a)} and {len(b)} answers")
    only_a, only_b = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    if only_a + only_b == 0:
        return 1.0
    from scipy.stats import binom  # scipy.stats costs 0.7 s to import: only where a test is computed

    return float(min(1.0, 2 * binom.cdf(min(only_a, only_b), only_a + only_b, 0.5)))


def recommend(cells: Sequence[Cell], alpha: float = 0.05) -> dict:
    """The verdict of :data:`RULE` at each shot count of the finished ``cells`` (dicts with ``method``, ``kind``,
    ``shots``, ``seed``, ``accuracy``, ``seconds``, ``correct``), with a one-sentence headline for the largest shot
    count both kinds ran (else the largest) and a sentence on where the verdict changes (None when it does not).
    ``p_values``, and ``seed_points`` (fine-tune minus frozen, in points), are per seed both best methods ran, in
    seed order (``paired_seeds``); ``difference_points`` is their mean; ``n_seeds`` counts those seeds,
    ``seeds_against`` those significant in favour of the side behind on the mean."""
    if not cells:
        raise ValueError("recommend needs at least one finished cell")
    grouped = _group(cells)
    rows = [_compare(shots, grouped[shots], alpha) for shots in sorted(grouped, key=shots_order)]
    return {
        "rule": RULE,
        "alpha": alpha,
        "by_shots": rows,
        "headline": _headline(_headline_row(rows), alpha),
        "crossing": _crossing(rows),
    }


def _headline_row(rows: list[dict]) -> dict:
    """The row the headline speaks of: the largest shot count where a frozen head and a fine-tune both ran (a
    budget may have left out the fine-tunes of the largest), else the largest."""
    compared = [row for row in rows if row["verdict"] not in ("frozen only", "finetune only")]
    return (compared or rows)[-1]


def _as_hits(correct: Sequence[int] | np.ndarray) -> np.ndarray:
    """``correct`` as a 1-D boolean array; a ValueError for anything but 0/1 or booleans."""
    values = np.asarray(correct)
    if values.ndim != 1 or not np.isin(values, (0, 1)).all():
        raise ValueError("per-item correctness must be a 1-D sequence of 0/1 or booleans")
    return values.astype(bool)


def shots_order(shots: object) -> tuple[int, int]:
    """Sort key of a shot count: integers in order, then "all"."""
    if shots == "all":
        return (1, 0)
    if isinstance(shots, Integral) and not isinstance(shots, bool):
        return (0, int(shots))
    raise ValueError(f'shots must be an integer or "all", not {shots!r}')


def _group(cells: Sequence[Cell]) -> dict:
    """``cells`` as {shots: {kind: {method: {seed: cell}}}}; a ValueError for an unknown kind or shots,
    or a repeated cell."""
    grouped: dict = {}
    for cell in cells:
        shots, kind, method, seed = cell["shots"], cell["kind"], cell["method"], cell["seed"]
        if kind not in KINDS:
            raise ValueError(f"cell {method!r}: kind must be one of {KINDS}, not {kind!r}")
        shots_order(shots)  # a ValueError now for shots that are neither an integer nor "all"
        by_seed = grouped.setdefault(shots, {}).setdefault(kind, {}).setdefault(method, {})
        if seed in by_seed:
            raise ValueError(f"two cells for method {method!r}, shots {shots!r}, seed {seed!r}")
        by_seed[seed] = cell
    return grouped


def _mean(by_seed: Mapping[object, Cell], key: str) -> float:
    """Mean of ``key`` over a method's seeds."""
    return float(np.mean([cell[key] for cell in by_seed.values()]))


def _best(methods: Mapping[str, Mapping[object, Cell]]) -> tuple[str | None, str | None]:
    """The method with the highest mean validation accuracy over its seeds (on items carved from each cell's own
    training items); on a tie, the cheaper by mean seconds (then by name). Returns it and what chose it:
    "validation", or "test" when a cell holds no validation accuracy (a fine-tune saved before cells kept it),
    where the mean test accuracy decides instead, as it did then."""
    if not methods:
        return None, None
    cells = [cell for by_seed in methods.values() for cell in by_seed.values()]
    on = "validation" if all(cell.get("validation_accuracy") is not None for cell in cells) else "test"
    key = "validation_accuracy" if on == "validation" else "accuracy"
    return min(methods, key=lambda m: (-_mean(methods[m], key), _mean(methods[m], "seconds"), m)), on


def _compare(shots: object, by_kind: Mapping[str, Mapping], alpha: float) -> dict:
    """One ``by_shots`` row: the best of each kind, their paired tests and the verdict."""
    frozen, finetune = by_kind.get("frozen", {}), by_kind.get("finetune", {})
    (best_frozen, frozen_on), (best_finetune, finetune_on) = _best(frozen), _best(finetune)
    # What chose the best of each kind: "test" only for cells saved before validation accuracies were kept.
    chosen_on = "test" if "test" in (frozen_on, finetune_on) else "validation"
    row = {"shots": shots, "best_frozen": best_frozen, "best_finetune": best_finetune, "chosen_on": chosen_on}
    for kind, methods, best in (("frozen", frozen, best_frozen), ("finetune", finetune, best_finetune)):
        row[f"{kind}_accuracy"] = _mean(methods[best], "accuracy") if best else None
        row[f"{kind}_seconds"] = _mean(methods[best], "seconds") if best else None
    if best_frozen is None or best_finetune is None:
        only = "frozen only" if best_finetune is None else "finetune only"
        nothing = {
            "difference_points": None,
            "p_values": [],
            "seed_points": [],
            "paired_seeds": [],
            "seeds_significant": 0,
        }
        return {**row, **nothing, "seeds_against": 0, "n_seeds": 0, "verdict": only}
    tests = _paired_tests(frozen[best_frozen], finetune[best_finetune])
    # Per seed, fine-tune minus frozen on its test items: a significant seed may go against the mean.
    seed_points = [100 * gain / n for _, gain, n in tests]
    # Over the seeds both ran (a budget may have left out a fine-tune's seed: its frozen cell is not compared).
    difference = float(np.mean(seed_points)) if tests else 100 * (row["finetune_accuracy"] - row["frozen_accuracy"])
    p_values = [p for p, _, _ in tests]
    return {
        **row,
        "difference_points": difference,
        "p_values": p_values,
        "seed_points": seed_points,
        "paired_seeds": sorted(frozen[best_frozen].keys() & finetune[best_finetune].keys()),
        "seeds_significant": sum(p < alpha for p in p_values),
        "seeds_against": sum(p < alpha and gain * difference < 0 for p, gain, _ in tests),
        "n_seeds": len(p_values),
        "verdict": _verdict(difference, tests, alpha),
    }


def _paired_tests(frozen: Mapping[object, Cell], finetune: Mapping[object, Cell]) -> list[tuple[float, int, int]]:
    """(McNemar p, fine-tune's correct items minus frozen's, test items) for each seed both ran, in seed order."""
    tests = []
    for seed in sorted(frozen.keys() & finetune.keys()):
        a, b = frozen[seed]["correct"], finetune[seed]["correct"]
        tests.append((mcnemar_exact(a, b), int(np.sum(b)) - int(np.sum(a)), len(a)))
    return tests


def _verdict(difference_points: float, tests: list[tuple[float, int, int]], alpha: float) -> str:
    """ "finetune" or "frozen" for a higher mean backed by p < alpha in its favour on every paired seed, else
    "level" (also when no seed is paired)."""
    if difference_points == 0 or not tests:
        return "level"
    sign = 1 if difference_points > 0 else -1
    if all(p < alpha and np.sign(gain) == sign for p, gain, _ in tests):
        return "finetune" if sign > 0 else "frozen"
    return "level"


def _shots_label(shots: object) -> str:
    """ "all items", "1 item per class", "16 items per class"."""
    if shots == "all":
        return "all items"
    return f"{shots} item{'' if shots == 1 else 's'} per class"


def _seeds(n: int) -> str:
    """ "1 seed", "3 seeds"."""
    return f"{n} seed{'' if n == 1 else 's'}"


def _p_floor(p: float) -> str:
    """``p`` rounded down to two significant digits, so that "p >= X" stays true."""
    if p >= 1:
        return "1"
    decimals = 1 - math.floor(math.log10(p))
    return f"{math.floor(p * 10**decimals + 1e-9) / 10**decimals:g}"


def _evidence(p_values: list[float], alpha: float, against: int = 0) -> str:
    """The paired tests in words: "p < 0.05 on 3 of 3 seeds", "p >= 0.41 on 3 seeds", "p = 1 on 3 seeds", one
    seed's "p = 0.52 on 1 seed"; ``against`` of the significant seeds favour the side behind on the mean: "p < 0.05
    on 3 of 3 seeds, 1 of them the other way"."""
    if not p_values:
        return "no seed in common"
    if len(p_values) == 1 and p_values[0] >= alpha:  # one p, not the smallest of several: said as it is
        return f"p = {p_values[0]:.2g} on 1 seed"
    significant = [p for p in p_values if p < alpha]
    if significant:
        bound = "0.001" if max(significant) < 0.001 < alpha else f"{alpha:g}"
        other_way = f", {against} of them the other way" if against else ""
        seeds = f"{len(significant)} of {len(p_values)} seeds" if len(p_values) > 1 else "1 seed"
        return f"p < {bound} on {seeds}{other_way}"
    smallest = min(p_values)
    return f"p {'=' if smallest >= 1 else '>='} {_p_floor(smallest)} on {_seeds(len(p_values))}"


def _seconds(seconds: float) -> str:
    """Wall time in words: "82 s", "0.2 s"."""
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2g} s"


def _headline(row: Mapping, alpha: float) -> str:
    """One sentence for one ``by_shots`` row."""
    frozen, finetune, verdict = row["best_frozen"], row["best_finetune"], row["verdict"]
    where = f"with {_shots_label(row['shots'])}"
    if verdict == "frozen only":
        return f"frozen only ({frozen}): {100 * row['frozen_accuracy']:.1f}% {where}, no fine-tune to compare"
    if verdict == "finetune only":
        return f"fine-tune only ({finetune}): {100 * row['finetune_accuracy']:.1f}% {where}, no frozen head to compare"
    gain = f"{row['difference_points']:+.1f} points"
    evidence = _evidence(row["p_values"], alpha, row["seeds_against"])
    if verdict == "finetune":
        cost = f"{_seconds(row['finetune_seconds'])} per run against {_seconds(row['frozen_seconds'])} for {frozen}"
        return f"fine-tune ({finetune}): {gain} {where}, {evidence}, {cost} on cached features"
    if verdict == "frozen":
        lead = f"{-row['difference_points']:+.1f} points"
        return f"stay frozen ({frozen}): {lead} over the best fine-tune ({finetune}) {where}, {evidence}"
    return f"stay frozen ({frozen}): the best fine-tune ({finetune}) is level {where}, {gain}, {evidence}"


def _crossing(rows: list[Mapping]) -> str | None:
    """Where the recommendation changes between consecutive compared shot counts, in one sentence; None when it
    never does. Level counts with frozen: both recommend staying frozen."""
    spans: list[list] = []  # [side, first shots, last shots]
    for row in rows:
        if row["verdict"] in ("frozen only", "finetune only"):
            continue
        side = "fine-tune wins" if row["verdict"] == "finetune" else "frozen is level or ahead"
        if spans and spans[-1][0] == side:
            spans[-1][2] = row["shots"]
        else:
            spans.append([side, row["shots"], row["shots"]])
    if len(spans) < 2:
        return None
    return "; ".join(_span_phrase(*span, i, len(spans)) for i, span in enumerate(spans))


def _span_phrase(side: str, first: object, last: object, index: int, count: int) -> str:
    """ "fine-tune wins from 64 items per class", "frozen is level or ahead up to 16 items per class"."""
    if first == last:
        return f"{side} with {_shots_label(first)}"
    if index == 0:
        return f"{side} up to {_shots_label(last)}"
    if index == count - 1:
        return f"{side} from {_shots_label(first)}"
    return f"{side} from {first} to {_shots_label(last)}"
