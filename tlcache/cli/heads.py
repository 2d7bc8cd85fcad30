"""`tlcache fit-head`, `tlcache report` and `tlcache predict`: the commands of a head's run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tlcache.cli.options import (
    SOURCE_OPTIONS,
    batch_option,
    device_option,
    emit,
    fraction,
    json_option,
    no_progress_option,
    source_options,
    take,
)
from tlcache.errors import UserError
from tlcache.export import QUANTIZE
from tlcache.head_choices import CALIBRATIONS, CLASS_WEIGHTS, HEADS

if TYPE_CHECKING:
    from tlcache.predict import PredictResult
    from tlcache.runs import HeadRun


@click.command("fit-head")
@click.argument("store")
@click.option(
    "--head",
    type=click.Choice([*HEADS, "all"]),
    default="logreg",
    show_default=True,
    help="all: every head but sgd, and a leaderboard (with two cores or more, the mlp trains in a second process "
    "beside the others). sgd streams the store (any size fits).",
)
@click.option("--test", help="A store of the same features to test on (instead of a held-out fraction).")
@click.option(
    "--test-fraction",
    type=float,
    callback=fraction,
    default=0.2,
    show_default=True,
    help="Fraction held out for testing when no --test is given.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    show_default=True,
    help="Seed for the splits, the sweep and the head.",
)
@click.option(
    "--grid",
    callback=lambda ctx, param, text: _parse_grid(text),
    help="Comma-separated values for the head's swept hyperparameter (C, alpha or n_neighbors) "
    "[default: the head's own log-spaced grid of 10 or 11 values]; extended by up to 3 values past an end where "
    "the best value sits.",
)
@click.option("--class-weight", type=click.Choice(CLASS_WEIGHTS), help="Reweight classes inversely to their frequency.")
@click.option(
    "--calibrate",
    type=click.Choice(CALIBRATIONS),
    help="Calibrate the probabilities on out-of-fold decision values (the predictions stay the head's own); the "
    "report gives the expected calibration error before and after.",
)
@click.option("--shots", type=click.IntRange(min=1), help="Few-shot protocol: this many training items per class.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Few-shot draws.")
@click.option("--out", "-o", help="Run folder for the head and its report [default: runs/<store>/<head>].")
@click.option("--no-views", is_flag=True, help="Ignore the store's augmented views (train on plain items only).")
@no_progress_option
@json_option
def fit_head(store, head, out, grid, no_views, no_progress, as_json, **options) -> HeadRun | list[HeadRun]:
    """Fit a scikit-learn head on the features in STORE and report how well it does.

    The head's regularisation (C for logreg and the SVMs, alpha for mlp, k for knn) is swept on held-out training
    data, the linear-probe protocol, and the best value refitted on all of it. Writes the head (head-<digest>.npz:
    arrays plus JSON, no pickle), head.json (the features it needs), report.json, report.md, predictions.csv and
    PNG figures (confusion matrix, reliability diagram, sweep). A few-shot study (--shots) writes its report and
    figures only: no head to predict with.

    \b
    Examples:
      tlcache fit-head cache/minilm-<key>.h5 --head logreg
      tlcache fit-head train.h5 --test test.h5 --head svm --calibrate sigmoid --out runs/svm
      tlcache fit-head train.h5 --test test.h5 --head all          # every head but sgd, and a leaderboard
      tlcache fit-head train.h5 --test test.h5 --shots 8 --repeats 5 # few-shot: mean and spread
      tlcache fit-head big.h5 --head sgd                            # reads the store in row batches
    """
    from tlcache.all_heads import fit_all_heads, leaderboard_rows, unsettled_order
    from tlcache.heads import fit_head as fit

    options.update(use_views=not no_views, grid=grid)
    if head == "all":
        runs = fit_all_heads(store, out=out, progress=not no_progress, **options)
        if as_json:
            click.echo(json.dumps([{"out_dir": str(r.out_dir), **r.report} for r in runs], indent=2, default=str))
            return runs
        for run in runs:
            click.echo(run.summary_line())
        click.echo(f"leaderboard (ranked by validation accuracy) -> {runs[0].out_dir.parent / 'leaderboard.md'}")
        if note := unsettled_order(leaderboard_rows(runs)):
            click.echo(note)
        return runs
    run = fit(store, head, out=out, progress=not no_progress, **options)
    emit({"out_dir": str(run.out_dir), **run.report}, as_json, run.summary_line())
    return run


def _parse_grid(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--grid {text!r} is not a comma-separated list of numbers, e.g. 0.001,0.01,0.1") from None
    if not values:
        raise UserError(f"--grid {text!r} holds no values, e.g. 0.001,0.01,0.1")
    return values


@click.command()
@click.argument("run_dir")
def report(run_dir) -> dict[str, Path]:
    """Render report.md and the PNG figures of RUN_DIR again from its report.json.

    \b
    Example:
      tlcache report runs/minilm-<key>/logreg
    """
    from tlcache.runs import render_report

    paths = render_report(run_dir)
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


@click.command()
@click.argument("head")
@click.argument("source")
@click.option("--out", "-o", default="predictions.csv", show_default=True, help="CSV to write; '-' for stdout.")
@click.option("--cache-dir", help="Where embeddings of SOURCE are cached [default: $TLCACHE_HOME or ~/.cache/tlcache].")
@batch_option
@device_option
@source_options
@no_progress_option
@json_option
def predict(head, source, out, no_progress, as_json, **options) -> PredictResult:
    """Predict SOURCE with the head in the run folder HEAD, or with a model `tlcache export` wrote (HEAD.onnx).

    SOURCE is embedded with the head's own backbone, through the cache (or is a store of those features). A head
    whose backbone or dim does not match the features is refused. An exported model runs through onnxruntime,
    without torch or the cache.

    \b
    Examples:
      tlcache predict runs/minilm-<key>/logreg new-reviews.csv --out preds.csv
      tlcache predict runs/minilm-<key>/logreg cache/minilm-<key2>.h5 --out -
      tlcache predict runs/minilm-<key>/logreg/model.onnx new-reviews.csv --out preds.csv
    """
    if as_json and out == "-":
        raise UserError("--json and --out - would both write to stdout; write the CSV to a file with --out")
    if head.endswith(".onnx"):  # a model `tlcache export` wrote: onnxruntime, no torch
        from tlcache.predict import predict_exported

        result = predict_exported(
            head,
            source,
            out=None if out == "-" else out,
            batch_size=options["batch_size"],
            source_options=take(options, SOURCE_OPTIONS),
        )
        _say_predicted(result, out, as_json)
        return result
    from tlcache.predict import predict as run_predict

    result = run_predict(
        head,
        source,
        out=None if out == "-" else out,
        progress=not no_progress,
        source_options=take(options, SOURCE_OPTIONS),
        **options,
    )
    _say_predicted(result, out, as_json)
    return result


def _say_predicted(result: PredictResult, out: str, as_json: bool = False) -> None:
    """The summary, and a note when some items are of classes the head never saw (on stderr when the CSV goes to
    stdout); with ``as_json`` the result as JSON instead."""
    from tlcache.embed_result import skipped_lines

    if as_json:
        notes = [note for note in (result.summary_line(), result.unseen_line()) if note]
        emit({**result.__dict__, "notes": notes}, True, "")
        return
    click.echo(result.summary_line(), err=out == "-")
    for line in skipped_lines(result.skipped):  # as embed says them: the CSV has no row for these
        click.echo(line, err=True)
    if note := result.unseen_line():
        click.echo(note, err=out == "-")


@click.command()
@click.argument("run_dir")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE),
    default="none",
    show_default=True,
    help="none: fp32; int8: a text model's weights (dynamic), an image model's weights and activations (static, "
    "calibrated on training images).",
)
@click.option("--out", "-o", help="The ONNX file to write [default: RUN_DIR/model.onnx or model-int8.onnx].")
@click.option("--force", is_flag=True, help="Write the file even when it fails its parity checks (it says so).")
@no_progress_option
@json_option
def export(run_dir, quantize, out, force, no_progress, as_json) -> dict:
    """Export the head in RUN_DIR with its backbone as one ONNX file, checked against the cache first.

    The graph takes a batch of images (pixels) or texts (token ids) and gives the features, the head's scores,
    probabilities and label; the tokenizer or the image preprocessing, the classes and the checks are recorded in
    it. Before it is written, it runs on the run's test items (read again from their source): its features must
    agree with the cached ones and its accuracy and ECE with the run's report (thresholds in `tlcache.export.GATES`;
    exit 2 and nothing written when they do not, unless --force). Needs `pip install 'tlcache[export]'`; every head
    exports (svm and knn with their support vectors or training vectors).

    \b
    Examples:
      tlcache export runs/minilm-<key>/logreg
      tlcache export runs/minilm-<key>/logreg --quantize int8 --out reviews-int8.onnx
      tlcache predict reviews-int8.onnx new-reviews.csv --out preds.csv
    """
    from tlcache.export import export_run

    record = export_run(run_dir, out, quantize=quantize, force=force, progress=not no_progress)
    measured = record["gates"]["measured"]
    verdict = "passed" if record["gates"]["passed"] else "FAILED (written with --force)"
    line = (
        f"exported {record['head']} on {record['backbone']} ({'int8' if quantize == 'int8' else 'fp32'}, "
        f"{record['bytes'] / 2**20:.1f} MiB) -> {record['path']}: on {measured['items']} test items, features "
        f"cosine {measured['mean_cosine']:.5f} mean, {measured['min_cosine']:.5f} worst to the cache; accuracy "
        f"{measured['accuracy']:.4f} (run {measured['run_accuracy']:.4f}); checks {verdict}"
    )
    emit({k: v for k, v in record.items() if k != "text"}, as_json, line)  # the tokenizer's JSON stays in the file
    return record
