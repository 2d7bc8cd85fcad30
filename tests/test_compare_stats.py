"""The statistics of tlcache compare: bootstrap intervals, exact McNemar, and the frozen-or-fine-tune verdict."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from tlcache.compare.stats import RULE, bootstrap_interval, mcnemar_exact, recommend

N_ITEMS = 1000
SECONDS = {"logreg": 0.2, "svm": 0.5, "ft": 82.0, "lp-ft": 95.0}
KIND = {"logreg": "frozen", "svm": "frozen", "ft": "finetune", "lp-ft": "finetune"}


def _answers(rng: np.random.Generator, n: int, n_right: int) -> np.ndarray:
    """0/1 per item with exactly ``n_right`` ones, at random places."""
    correct = np.zeros(n, dtype=int)
    correct[rng.permutation(n)[:n_right]] = 1
    return correct


def _flip(rng: np.random.Generator, correct: np.ndarray, to_wrong: int, to_right: int) -> np.ndarray:
    """``correct`` with ``to_wrong`` right items made wrong and ``to_right`` wrong items made right."""
    out = correct.copy()
    out[rng.choice(np.flatnonzero(correct == 1), to_wrong, replace=False)] = 0
    out[rng.choice(np.flatnonzero(correct == 0), to_right, replace=False)] = 1
    return out


def _cell(method: str, shots, seed: int, correct: np.ndarray, seconds: float | None = None) -> dict:
    return {
        "method": method,
        "kind": KIND[method],
        "shots": shots,
        "seed": seed,
        "accuracy": float(np.mean(correct)),
        "seconds": SECONDS[method] if seconds is None else seconds,
        "correct": correct.tolist(),
    }


def _cells(discordant: list[tuple[int, int]], shots="all", frozen="logreg", finetune="ft") -> list[dict]:
    """Cells of one shot count, a seed per ``(only frozen right, only fine-tune right)`` pair of the best frozen
    head and the best fine-tune, each with a weaker runner-up of its kind (20 items worse)."""
    runner_up = {"logreg": "svm", "svm": "logreg", "ft": "lp-ft", "lp-ft": "ft"}
    cells = []
    for seed, (only_frozen, only_finetune) in enumerate(discordant):
        rng = np.random.default_rng([seed, len(str(shots)), only_frozen, only_finetune])
        best_frozen = _answers(rng, N_ITEMS, 800)
        best_finetune = _flip(rng, best_frozen, only_frozen, only_finetune)
        cells += [
            _cell(frozen, shots, seed, best_frozen),
            _cell(runner_up[frozen], shots, seed, _flip(rng, best_frozen, 20, 0)),
            _cell(finetune, shots, seed, best_finetune),
            _cell(runner_up[finetune], shots, seed, _flip(rng, best_finetune, 20, 0)),
        ]
    return cells


@pytest.mark.parametrize("only_a, only_b", [(0, 5), (3, 9), (10, 10), (25, 40), (1, 0), (120, 80), (7, 30)])
def test_mcnemar_exact_matches_binomtest(only_a, only_b):
    a = np.array([1] * only_a + [0] * only_b + [1] * 50 + [0] * 30)
    b = np.array([0] * only_a + [1] * only_b + [1] * 50 + [0] * 30)
    expected = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_exact_is_symmetric():
    rng = np.random.default_rng(3)
    a = _answers(rng, 400, 300)
    b = _flip(rng, a, 12, 31)
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a) < 0.05


def test_mcnemar_exact_is_one_without_discordant_pairs():
    rng = np.random.default_rng(4)
    a = _answers(rng, 200, 150)
    assert mcnemar_exact(a, a.copy()) == 1.0
    assert mcnemar_exact(np.zeros(10, dtype=bool), np.zeros(10, dtype=bool)) == 1.0


def test_mcnemar_exact_rejects_different_lengths():
    with pytest.raises(ValueError, match="same test items"):
        mcnemar_exact([1, 0, 1], [1, 0])


@pytest.mark.parametrize("n_right", [275, 450, 499])
def test_bootstrap_interval_contains_observed_accuracy(n_right):
    correct = _answers(np.random.default_rng(n_right), 500, n_right)
    low, high = bootstrap_interval(correct)
    assert low < n_right / 500 < high


def test_bootstrap_interval_narrows_with_more_items():
    rng = np.random.default_rng(5)
    low_small, high_small = bootstrap_interval(_answers(rng, 100, 80))
    low_large, high_large = bootstrap_interval(_answers(rng, 10_000, 8000))
    assert high_large - low_large < (high_small - low_small) / 5


def test_bootstrap_interval_is_deterministic_for_a_seed():
    correct = _answers(np.random.default_rng(6), 10_000, 7000)
    assert bootstrap_interval(correct, seed=1) == bootstrap_interval(correct, seed=1)
    assert bootstrap_interval(correct, seed=1) != bootstrap_interval(correct, seed=2)


def test_bootstrap_interval_matches_normal_approximation():
    correct = _answers(np.random.default_rng(7), 10_000, 8000)
    half = norm.ppf(0.975) * np.sqrt(0.8 * 0.2 / 10_000)
    low, high = bootstrap_interval(correct, n_resamples=4000)
    assert low == pytest.approx(0.8 - half, abs=0.002)
    assert high == pytest.approx(0.8 + half, abs=0.002)


def test_bootstrap_interval_agrees_with_resampling_items():
    rng = np.random.default_rng(8)
    correct = _answers(rng, 1000, 640)
    resampled = correct[rng.integers(0, 1000, size=(4000, 1000))].mean(axis=1)
    expected = np.percentile(resampled, [5, 95])
    assert bootstrap_interval(correct, n_resamples=4000, level=0.9) == pytest.approx(tuple(expected), abs=0.004)


@pytest.mark.parametrize("correct", [[], [0, 1, 2], [[1, 0], [0, 1]]])
def test_bootstrap_interval_rejects_what_is_not_per_item_correctness(correct):
    with pytest.raises(ValueError):
        bootstrap_interval(correct)


def test_recommend_finetune_when_every_seed_is_significant():
    result = recommend(_cells([(10, 70)] * 3))
    (row,) = result["by_shots"]
    assert (row["best_frozen"], row["best_finetune"], row["verdict"]) == ("logreg", "ft", "finetune")
    assert row["difference_points"] == pytest.approx(6.0)
    assert (row["seeds_significant"], row["n_seeds"]) == (3, 3)
    assert (row["frozen_seconds"], row["finetune_seconds"]) == pytest.approx((0.2, 82.0))
    assert result["headline"] == (
        "fine-tune (ft): +6.0 points with all items, p < 0.001 on 3 of 3 seeds, "
        "82 s per run against 0.2 s for logreg on cached features"
    )
    assert result["rule"] == RULE and result["alpha"] == 0.05 and result["crossing"] is None


def test_recommend_level_when_one_seed_is_not_significant():
    result = recommend(_cells([(20, 40), (20, 40), (30, 35)]))
    (row,) = result["by_shots"]
    assert row["finetune_accuracy"] > row["frozen_accuracy"]
    assert row["verdict"] == "level" and row["seeds_significant"] == 2
    assert 0.001 < max(row["p_values"][:2]) < 0.05 < 0.5 < row["p_values"][2]
    assert result["headline"] == (
        "stay frozen (logreg): the best fine-tune (ft) is level with all items, +1.5 points, p < 0.05 on 2 of 3 seeds"
    )


def test_the_difference_is_taken_over_the_seeds_both_ran():
    # Seed 2's frozen heads score far below seeds 0 and 1 (another draw of items); its fine-tunes were left out
    # (a budget). Over the seeds both ran the fine-tune is 6 points ahead, whatever seed 2's frozen cells scored.
    cells = _cells([(10, 70)] * 2)
    rng = np.random.default_rng(7)
    weak = _answers(rng, N_ITEMS, 500)
    cells += [_cell("logreg", "all", 2, weak), _cell("svm", "all", 2, _flip(rng, weak, 20, 0))]
    (row,) = recommend(cells)["by_shots"]
    assert row["paired_seeds"] == [0, 1] and row["seed_points"] == pytest.approx([6.0, 6.0])
    assert row["difference_points"] == pytest.approx(6.0)  # not the unpaired means' difference (about 16 points)
    assert 100 * (row["finetune_accuracy"] - row["frozen_accuracy"]) > 15


def test_recommend_level_when_predictions_are_identical():
    result = recommend(_cells([(0, 0)] * 3))
    (row,) = result["by_shots"]
    assert row["verdict"] == "level" and row["p_values"] == [1.0, 1.0, 1.0]
    assert result["headline"].startswith("stay frozen (logreg): the best fine-tune (ft) is level")
    assert result["headline"].endswith("+0.0 points, p = 1 on 3 seeds")


def test_recommend_level_quotes_the_smallest_p_as_a_lower_bound():
    result = recommend(_cells([(30, 27), (31, 27), (30, 28)]))
    (row,) = result["by_shots"]
    assert row["verdict"] == "level" and row["seeds_significant"] == 0
    found = re.search(r"is level with all items, -0\.3 points, p >= (0\.\d+) on 3 seeds$", result["headline"])
    assert found and min(row["p_values"]) - 0.01 < float(found[1]) <= min(row["p_values"])


def test_one_seed_says_its_p_as_it_is():
    """A new user's one-seed comparison read "p >= 0.52 on 1 seed": a bound where there is one value."""
    level = recommend(_cells([(30, 27)]))
    (row,) = level["by_shots"]
    assert level["headline"].endswith(f"p = {row['p_values'][0]:.2g} on 1 seed") and row["p_values"][0] > 0.05
    assert recommend(_cells([(10, 70)]))["headline"].endswith(
        "p < 0.001 on 1 seed, 82 s per run against 0.2 s for logreg on cached features"
    )


def test_recommend_frozen_when_it_wins_on_every_seed():
    result = recommend(_cells([(60, 5)] * 3, frozen="svm", finetune="lp-ft"))
    (row,) = result["by_shots"]
    assert (row["best_frozen"], row["best_finetune"], row["verdict"]) == ("svm", "lp-ft", "frozen")
    assert result["headline"] == (
        "stay frozen (svm): +5.5 points over the best fine-tune (lp-ft) with all items, p < 0.001 on 3 of 3 seeds"
    )


def test_recommend_a_seed_significant_the_other_way_is_level_and_the_report_says_which():
    """Three significant seeds, one against the mean (a new user's 4-shot row read "p 0.001, 6e-08, 0.02" beside
    "level"): the row, the headline and the table show each seed's direction."""
    result = recommend(_cells([(5, 95), (5, 95), (60, 5)]))
    (row,) = result["by_shots"]
    assert row["difference_points"] > 0 and row["seeds_significant"] == 3 and row["seeds_against"] == 1
    assert row["verdict"] == "level"
    assert row["seed_points"] == [100 * 90 / N_ITEMS, 100 * 90 / N_ITEMS, -100 * 55 / N_ITEMS]
    assert result["headline"].endswith("p < 0.001 on 3 of 3 seeds, 1 of them the other way")
    from tlcache.compare.summary import paired_table

    table_row = paired_table(result)[2]
    assert f"+{100 * 90 / N_ITEMS:.1f} ({row['p_values'][0]:.3g})" in table_row
    assert f"-{100 * 55 / N_ITEMS:.1f} ({row['p_values'][2]:.3g})" in table_row


def test_recommend_crossing_from_frozen_to_finetune():
    cells = _cells([(10, 70)] * 3) + _cells([(60, 5)] * 3, shots=4) + _cells([(30, 27)] * 3, shots=16)
    result = recommend(cells)
    assert [(row["shots"], row["verdict"]) for row in result["by_shots"]] == [
        (4, "frozen"),
        (16, "level"),
        ("all", "finetune"),
    ]
    assert result["crossing"] == "frozen is level or ahead up to 16 items per class; fine-tune wins with all items"
    assert result["headline"].startswith("fine-tune (ft): +6.0 points with all items")


def test_recommend_sorts_all_after_integers():
    cells = _cells([(0, 0)], shots="all") + _cells([(0, 0)], shots=100) + _cells([(0, 0)], shots=2)
    assert [row["shots"] for row in recommend(cells)["by_shots"]] == [2, 100, "all"]


def test_recommend_frozen_only_at_a_shot_count():
    frozen_only = [cell for cell in _cells([(10, 70)] * 2, shots=1) if cell["kind"] == "frozen"]
    result = recommend(frozen_only + _cells([(10, 70)] * 2, shots=8))
    first = result["by_shots"][0]
    assert (first["shots"], first["verdict"], first["best_frozen"], first["best_finetune"]) == (
        1,
        "frozen only",
        "logreg",
        None,
    )
    assert first["p_values"] == [] and first["difference_points"] is None
    assert result["by_shots"][1]["verdict"] == "finetune" and result["crossing"] is None
    assert (
        recommend(frozen_only)["headline"]
        == "frozen only (logreg): 80.0% with 1 item per class, no fine-tune to compare"
    )


def test_recommend_tie_goes_to_the_cheaper_method():
    cells = _cells([(10, 70)] * 2)
    twins = [dict(cell, method="svm", seconds=0.05) for cell in cells if cell["method"] == "logreg"]
    cells = [cell for cell in cells if cell["method"] != "svm"] + twins
    result = recommend(cells)
    assert result["by_shots"][0]["best_frozen"] == "svm"
    assert "against 0.05 s for svm" in result["headline"]


def test_recommend_p_values_in_seed_order():
    cells = _cells([(10, 70), (30, 35), (20, 45)])
    correct = {(cell["method"], cell["seed"]): cell["correct"] for cell in cells}
    expected = [mcnemar_exact(correct["logreg", seed], correct["ft", seed]) for seed in (0, 1, 2)]
    assert len(set(expected)) == 3
    assert recommend(cells[::-1])["by_shots"][0]["p_values"] == expected


def test_recommend_rejects_a_repeated_cell():
    cells = _cells([(10, 70)])
    with pytest.raises(ValueError, match="two cells for method 'logreg'"):
        recommend(cells + cells[:1])


def test_the_headline_speaks_of_the_largest_shot_count_both_kinds_ran():
    """A budget left out the fine-tunes with all items: the headline said "frozen only ... no fine-tune to compare"
    although the fine-tunes at 8 per class had run and been tested."""
    frozen_only = [cell for cell in _cells([(10, 70)] * 2) if cell["kind"] == "frozen"]
    result = recommend(frozen_only + _cells([(10, 70)] * 2, shots=8))
    assert [row["verdict"] for row in result["by_shots"]] == ["finetune", "frozen only"]
    assert result["headline"].startswith("fine-tune (ft): +6.0 points with 8 items per class")


def test_the_best_of_each_kind_is_chosen_on_validation_items_never_on_the_test_items():
    cells = _cells([(10, 70)] * 2)
    # The runners-up were better on their validation items, though 20 test items worse.
    validation = {"logreg": 0.70, "svm": 0.75, "ft": 0.80, "lp-ft": 0.85}
    row = recommend([dict(cell, validation_accuracy=validation[cell["method"]]) for cell in cells])["by_shots"][0]
    assert (row["best_frozen"], row["best_finetune"], row["chosen_on"]) == ("svm", "lp-ft", "validation")
    assert row["frozen_accuracy"] == pytest.approx(0.78)  # its own test mean, not the best test mean (0.80)
    assert "highest mean validation accuracy" in RULE and "the test items choose neither" in RULE
    # A cell saved before cells kept their validation accuracy: that kind's test mean decides, and the row says so.
    older = [dict(cell, validation_accuracy=validation[cell["method"]]) for cell in cells if cell["kind"] == "frozen"]
    row = recommend(older + [cell for cell in cells if cell["kind"] == "finetune"])["by_shots"][0]
    assert (row["best_frozen"], row["best_finetune"], row["chosen_on"]) == ("svm", "ft", "test")


def test_a_method_no_better_than_the_majority_floor_is_named():
    """A new user's fine-tune at 16 per class scored 0.1768 against a floor of 0.1982, and compare.md said nothing."""
    from tlcache.compare.summary import below_the_floor

    rows = [{"method": "ft", "shots": 16, "accuracy": 0.1768}, {"method": "svm", "shots": 16, "accuracy": 0.81}]
    summary = {"majority": {"class": "user-command", "accuracy": 0.1982}, "rows": rows}
    assert below_the_floor(summary).startswith(
        "No better than the floor (0.1982, always 'user-command'): ft at 16 per class (0.1768)."
    )
    assert below_the_floor({**summary, "rows": rows[1:]}) is None and below_the_floor({"rows": rows}) is None
