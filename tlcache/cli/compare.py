"""`tlcache compare`: the command line of tlcache.compare (frozen heads against fine-tuning on the user's data)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tlcache.cli.options import (
    SOURCE_OPTIONS,
    backbone_options,
    checked_backbones,
    config_from_options,
    config_options,
    device_option,
    fraction,
    human_size,
    json_option,
    no_progress_option,
    source_options,
    take,
)
from tlcache.compare.run import DEFAULT_HEADS, DEFAULT_SHOTS, FINETUNES
from tlcache.compare.summary import few_validation_items, still_rising
from tlcache.errors import UserError
from tlcache.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    from tlcache.compare import CompareResult

CELL_SETTINGS = ("seed", "lp_ft")  # each cell sets these itself: its seed, and LP-FT for the lp-ft method


def _names(text: str) -> tuple[str, ...]:
    return () if text.strip() == "none" else tuple(part.strip() for part in text.split(",") if part.strip())


def _run(source, heads, finetunes, shots, budget, out, no_progress, config, options) -> CompareResult:
    from tlcache.compare import compare as run_compare

    name = Path(source.rstrip("/")).stem or "source"
    return run_compare(
        source,
        heads=heads,
        finetunes=finetunes,
        shots=shots,
        budget=budget,
        out=out or Path("runs") / f"compare-{name}",
        finetune_config=config,
        precision=config.precision,  # one compute type for the frozen features and the fine-tunes
        progress=not no_progress,
        source_options=take(options, SOURCE_OPTIONS),
        **options,
    )


def _seconds(text: str | None) -> float | None:
    """A duration such as 90s, 20m, 1.5h or a number of seconds, in seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise UserError(f"--budget {text} is not a duration: give e.g. 90s, 20m or 1.5h") from None


def _shots(text: str) -> tuple[int | str, ...]:
    shots = []
    for part in _names(text):
        if part != "all" and not part.isdigit():
            raise UserError(f"--shots {part} is not a count: give whole numbers and all, e.g. 4,16,64,all")
        shots.append(part if part == "all" else int(part))
    return tuple(shots)


@click.command()
@click.argument("source")
@click.option("--test", help="A labelled source with the same classes to test on [default: hold out --test-fraction].")
@click.option(
    "--test-fraction",
    type=float,
    default=0.2,
    show_default=True,
    callback=fraction,
    help="Held out once for testing when no --test.",
)
@click.option(
    "--backbone",
    "-b",
    callback=checked_backbones,
    help="Backbone [default: efficientnet-lite0 for images, minilm for text]; several, comma-separated: the frozen "
    "heads choose among their features per cell (as --layers), the fine-tunes train the first.",
)
@backbone_options
@click.option(
    "--heads",
    default=",".join(DEFAULT_HEADS),
    show_default=True,
    callback=lambda ctx, param, text: _names(text),
    help="Frozen heads, or none.",
)
@click.option(
    "--finetune",
    "finetunes",
    default=",".join(FINETUNES),
    show_default=True,
    callback=lambda ctx, param, text: _names(text),
    help="Fine-tunes, or none.",
)
@click.option(
    "--shots",
    callback=lambda ctx, param, text: None if text is None else _shots(text),
    help=(
        f"Labelled items per class to train on (all: every training item). [default: "
        f"{','.join(map(str, DEFAULT_SHOTS))}, less the counts above the smallest class]"
    ),
)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds per cell.")
@click.option(
    "--layers",
    callback=lambda ctx, param, text: _names(text) if text else None,
    help="Candidate features for the frozen heads, each cell choosing on validation items held out from its own "
    "training items: default, LAYER or LAYER:POOL, comma-separated (e.g. default,blocks.5:flatten,blocks.9:flatten), "
    "or auto: the backbone's suggestions (efficientnet-lite: two middle blocks; ResNets: layer3; text models: the "
    "last three layers) [default: the backbone's features only].",
)
@click.option(
    "--budget",
    callback=lambda ctx, param, text: _seconds(text),
    help="Wall time to stay within, e.g. 90s, 20m or 1.5h (a bare number is seconds): the frozen cells run first, "
    "whatever the budget, and their time counts against it (the mlp's cells take longest: up to tens of seconds "
    "each on a few hundred items, on two CPU cores); then a short timing probe, a plan of the fine-tune cells "
    "that fit, printed before they start, and those that would end past the budget are left out [default: no "
    "limit].",
)
@config_options(FinetuneConfig, exclude=CELL_SETTINGS)
@click.option("--out", "-o", help="Folder of the comparison [default: runs/compare-<source name>].")
@click.option("--cache", help="Where the frozen features are cached [default: $TLCACHE_HOME].")
@device_option
@source_options
@no_progress_option
@json_option
def compare(source, heads, finetunes, shots, budget, out, no_progress, as_json, **options) -> CompareResult:
    """Frozen heads against fine-tuning on SOURCE: which gives the best accuracy for its cost, measured here.

    Every method runs on the same cells: for each number of labelled items per class and each seed, the same
    training items are drawn and the same test items score every method; each choice (a head's regularisation, a
    fine-tune's epoch) is made on validation items carved from the training items. Each cell is saved as it ends:
    run the same command again to resume, or with more --shots or methods to add only their cells. Writes
    compare.json, compare.md, learning_curve.png and accuracy_time.png to --out, with a recommendation that
    follows from paired tests (McNemar, seed by seed) by the rule it states. Each fine-tune cell keeps its run
    folder in --out/finetunes/, with the fine-tuned model: a copy of the backbone's weights per cell (delete the
    folder when the comparison is done; a rerun then fine-tunes only cells it has not saved).

    \b
    Examples:
      tlcache compare reviews.csv --test test.csv --shots 8,32,all --repeats 3
      tlcache compare photos/ --heads logreg,svm --finetune ft --epochs 5 --out runs/photos-compare
      tlcache compare reviews.csv --finetune none --shots 4,16,all     # frozen heads only, no fine-tune
      tlcache compare reviews.csv --test test.csv --budget 20m         # leaves out what would not fit
      tlcache compare photos/ --layers default,blocks.5:flatten --crop-ratio 1 --finetune none
    """
    config = config_from_options(FinetuneConfig, options, exclude=CELL_SETTINGS)
    # With --json, stdout holds the JSON alone: the cells' lines and the budget's plan go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = _run(source, heads, finetunes, shots, budget, out, no_progress, config, options)
    advice = result.summary["recommendation"]
    if as_json:
        click.echo(json.dumps({"out_dir": str(result.out_dir), "ran": result.ran, **result.summary}, indent=2))
        return result
    click.echo(f"{advice['headline']}" + (f"; {advice['crossing']}" if advice["crossing"] else ""))
    rising = still_rising(result.summary)
    if rising:
        click.echo(f"note: fine-tunes still improving at their last epoch ({rising}): more --epochs may raise them")
    if few := few_validation_items(result.summary):
        click.echo(f"note: {few}")
    left_out = len(result.summary["budget"]["left_out"])
    skipped = f", {left_out} left out to stay within --budget" if left_out else ""
    done = f"{result.ran} cells run, {len(result.cells) - result.ran} reused{skipped}"
    click.echo(f"{done} -> {result.out_dir / 'compare.md'}")
    tuned = result.out_dir / "finetunes"
    if held := sum(path.stat().st_size for path in tuned.rglob("*") if path.is_file()):
        click.echo(f"the fine-tuned models take {human_size(held)} in {tuned}: delete the folder when done with them")
    return result
