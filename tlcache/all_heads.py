"""Every head on one store: fitted with the same split and seed, side by side where there are cores to spare, and
ranked in a leaderboard."""

from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path

from tlcache.errors import UserError
from tlcache.forked import side_by_side
from tlcache.head_choices import HEADS, UNWEIGHTED_HEADS, check_head
from tlcache.heads import _test_set, fit_head
from tlcache.paths import check_output_folder
from tlcache.progress import progress_bar
from tlcache.runs import (
    LEADERBOARD_FILE,
    LEADERBOARD_MARKDOWN,
    HeadRun,
    default_run_dir,
    read_report,
    write_figures,
    write_whole,
    writing_run,
)
from tlcache.store import FeatureStore

FIT_DEFAULTS = inspect.signature(fit_head).parameters


def fit_all_heads(
    store, heads: tuple[str, ...] | None = None, out: str | Path | None = None, progress: bool = True, **kwargs
) -> list[HeadRun]:
    """Fit every head (except the streaming ``sgd``) with the same split and seed; returns the runs ranked by
    validation accuracy (:func:`validation_rank`), and writes leaderboard.json and leaderboard.md in that order
    beside their run folders. With two cores or more, the mlp (torch) trains in a forked process beside the others
    (tlcache.forked), its figures drawn here: the same runs, sooner. ``progress``: a bar of the heads done, on a
    terminal."""
    train_store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    base = check_output_folder(out) if out is not None else default_run_dir(train_store.path)
    names = [head for head in heads or HEADS if head != "sgd"]
    bar = progress_bar(progress, total=len(names), unit="head", desc="fit heads")

    weighted = kwargs.get("class_weight")
    unweighted = [head for head in names if head in UNWEIGHTED_HEADS] if weighted else []
    if unweighted:  # every head asked for: the weighting where a head takes it, said of the others
        warnings.warn(
            f"--class-weight {weighted} applies to logreg, linear-svm and svm; {', '.join(unweighted)} "
            f"{'is' if len(unweighted) == 1 else 'are'} fitted without it (class_weight null in their report.json)",
            UserWarning,
            stacklevel=2,
        )

    def settings(head: str) -> dict:
        return {**kwargs, "class_weight": None} if head in unweighted else kwargs

    def fit(group: list[str], shown: bool = True, **extra) -> list[HeadRun]:
        runs = []
        for head in group:
            if shown:
                bar.set_postfix_str(head)
            runs.append(fit_head(train_store, head, out=base / head, progress=False, **settings(head), **extra))
            if shown:
                bar.update(1)
        return runs

    for head in names:  # every head's options checked before any fit
        check_head(head, kwargs.get("grid"), settings(head).get("class_weight"), kwargs.get("calibrate"))
    # The test set checked once, before a fork: a refusal before any fit, a warning (test items that are training
    # items) said once, not by both processes.
    test_fraction, seed = (kwargs.get(name, FIT_DEFAULTS[name].default) for name in ("test_fraction", "seed"))
    _test_set(train_store, train_store.labels(), kwargs.get("test"), test_fraction, seed)
    # A leaderboard of the heads there before goes first: stopped halfway, the folder holds heads of two runs, which
    # a new user's interrupted rerun ranked together (and each head fitted below would rank itself into it).
    remove_leaderboard(base)
    with bar:
        if "mlp" in names and len(names) > 1:
            # The forked process leaves the bar to this one: two processes writing one line garble it.
            aside, here = side_by_side(
                lambda: fit(["mlp"], shown=False, figures=False), lambda: fit([head for head in names if head != "mlp"])
            )
            bar.set_postfix_str("mlp")
            with writing_run(aside[0].out_dir):
                write_figures(aside[0].report, aside[0].out_dir)
            bar.update(1)
            runs = aside + here
        else:
            runs = fit(names)
    runs.sort(key=validation_rank, reverse=True)
    write_leaderboard(base, runs)
    return runs


def validation_rank(run: HeadRun) -> tuple[float, int]:
    """A head's rank among the heads of one store: its validation accuracy (on the rows its sweep held out, the same
    rows for every head), ties to the first in HEADS's order; never the test items' accuracy, which would choose a
    head on them. A head without a sweep ranks last."""
    return run.report.get("sweep", {}).get("validation_accuracy", -1.0), -HEADS.index(run.report["head"])


def unsettled_order(rows: list[dict]) -> str | None:
    """A sentence naming the heads of leaderboard ``rows`` (best first) whose validation accuracy is within two
    standard errors of the best's (the binomial error of the best on its validation items, at least one item): on
    small data a ranking by an item or two says little. None when no head is, or the figures are missing."""
    best = rows[0] if rows else {}
    p, n = best.get("validation_accuracy"), best.get("validation_items")
    if p is None or not n:
        return None
    error = max(math.sqrt(p * (1 - p) / n), 1 / n)
    close = [
        row["head"]
        for row in rows[1:]
        if row.get("validation_accuracy") is not None and p - row["validation_accuracy"] <= 2 * error + 1e-12
    ]
    if not close:
        return None
    return (
        f"Measured on {n} validation items (one item is {100 / n:.2g} points, the best's standard error "
        f"{100 * error:.2g}): {', '.join(close)} {'is' if len(close) == 1 else 'are'} within two standard errors "
        f"of {best['head']}, so these data do not settle their order."
    )


def leaderboard_rows(runs: list[HeadRun]) -> list[dict]:
    """leaderboard.json's rows: one per run, in the order given."""
    return [
        {
            "head": run.report["head"],
            "validation_accuracy": run.report.get("sweep", {}).get("validation_accuracy"),
            "validation_items": run.report.get("sweep", {}).get("validation_items"),
            "accuracy": run.headline,
            "macro_f1": run.report["metrics"]["macro_f1"],
            "fit_seconds": run.report["fit_seconds"],
            "chosen": run.report.get("sweep", {}).get("best"),
            "run": str(run.out_dir),
        }
        for run in runs
    ]


# What a report says of the rows its head saw: heads ranked together must agree on them (their sweeps then held out
# the same rows, and their test items are the same).
SAME_ROWS = ("store", "test", "seed", "n_train", "n_test", "views_per_item")


def refresh_leaderboard(run_dir: Path) -> None:
    """Rank the heads of a `--head all` folder again after ``run_dir``, one of them, was fitted anew on its own: its
    leaderboard showed the old head's figures (a new user's svm at C=4.6 and 0.8293, after refitting it at C=0.25
    to 0.7957). Each head as its report.json now says; one that cannot be read is left out. When the new head saw
    other rows than the others (another seed, store or test set), none is ranked: the leaderboard is removed, said in
    a warning."""
    base = run_dir.parent
    try:
        rows = json.loads((base / LEADERBOARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    names = (
        [Path(str(row.get("run", ""))).name for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []
    )
    if run_dir.name not in names:
        return
    runs = []
    for name in names:
        try:
            runs.append(HeadRun(base / name, read_report(base / name)))
        except UserError:
            continue
    seen = {run.out_dir.name: tuple(run.report.get(key) for key in SAME_ROWS) for run in runs}
    others = [name for name, rows_seen in seen.items() if rows_seen != seen.get(run_dir.name)]
    if others:
        remove_leaderboard(base)
        warnings.warn(
            f"{run_dir} was fitted on other rows than {', '.join(others)} beside it (its seed, store or test set "
            f"differ), so {base / LEADERBOARD_MARKDOWN} no longer ranks them alike and is removed; fit-head --head all "
            "fits and ranks them together",
            UserWarning,
            stacklevel=2,
        )
        return
    runs.sort(key=validation_rank, reverse=True)
    write_leaderboard(base, runs)


def remove_leaderboard(base: Path) -> None:
    for name in (LEADERBOARD_FILE, LEADERBOARD_MARKDOWN):
        (base / name).unlink(missing_ok=True)


def write_leaderboard(base: Path, runs: list[HeadRun]) -> Path:
    """leaderboard.json and leaderboard.md in ``base``: the runs in the order given (ranked by validation accuracy:
    see tlcache.all_heads), one row each. Returns the Markdown file."""
    rows = leaderboard_rows(runs)
    write_whole(base / LEADERBOARD_FILE, (json.dumps(rows, indent=2) + "\n").encode("utf-8"))
    lines = [
        "Ranked by validation accuracy: on the training rows each head's sweep held out, the same rows for every head. "
        "The test accuracy is reported, not used to rank: choosing a head by it would choose on the test items.",
        *(["", note] if (note := unsettled_order(rows)) else []),
        "",
        "| head | validation accuracy | test accuracy | macro F1 | fit s | chosen | run |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        chosen = "" if row["chosen"] is None else f"{row['chosen']:g}"
        validation = "" if row["validation_accuracy"] is None else f"{row['validation_accuracy']:.4f}"
        lines.append(
            f"| {row['head']} | {validation} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | "
            f"{row['fit_seconds']:.2f} | {chosen} | {row['run']} |"
        )
    write_whole(base / LEADERBOARD_MARKDOWN, ("\n".join(lines) + "\n").encode("utf-8"))
    return base / LEADERBOARD_MARKDOWN
