"""The `tlcache` command line: each command parses its options, calls one library function and says where the
output went. Mistakes a user can fix end in one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys

import click

from tlcache.cli_compare import compare
from tlcache.cli_options import (
    SOURCE_OPTIONS,
    backbone_options,
    batch_option,
    config_from_options,
    config_options,
    device_option,
    json_option,
    no_progress_option,
    precision_option,
    source_options,
    take,
    workers_option,
)
from tlcache.embed import COMPILE_AUTO_RULE, COMPILE_CHOICES
from tlcache.errors import UserError
from tlcache.finetune.config import FinetuneConfig
from tlcache.heads import CALIBRATIONS, CLASS_WEIGHTS, HEADS
from tlcache.store import COMPRESSIONS, DTYPES

EXIT_USER_ERROR = 2


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)


def _emit(payload: dict, as_json: bool, line: str) -> None:
    """JSON on stdout for programs, or one line for people."""
    click.echo(json.dumps(payload, indent=2, default=str) if as_json else line)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlcache")
def cli() -> None:
    """tlcache: embed a dataset once with a frozen pretrained backbone, then fit heads on the cached features.

    \b
    A typical session:
      tlcache embed data/train/ --out cache/          # image folder, one sub-folder per class
      tlcache embed data/test/ --out cache/
      tlcache fit-head cache/efficientnet-lite0-<key>.h5 --head logreg --test cache/efficientnet-lite0-<key2>.h5
      tlcache predict runs/efficientnet-lite0-<key>/logreg new-images/ --out preds.csv
    """


@cli.command()
@click.argument("source")
@click.option(
    "--backbone",
    "-b",
    help="Backbone name (see `tlcache backbones`) [default: efficientnet-lite0 for images, minilm for text].",
)
@backbone_options
@click.option("--out", "-o", help="Store folder, or a .h5 file [default: $TLCACHE_HOME or ~/.cache/tlcache].")
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="float32",
    show_default=True,
    help="Stored feature type; float16 halves the size.",
)
@precision_option(
    "Compute type: auto takes bf16 on GPUs and on CPUs with bf16 instructions, else fp32. On a 2-core bf16 CPU, "
    "bf16 gave 1.8-2.3x the items per second of fp32 and features at a mean cosine of 0.9978 or more to fp32 "
    "(benchmarks/results/embed_throughput.md). In the cache key."
)
@click.option(
    "--compression",
    type=click.Choice(COMPRESSIONS),
    default="none",
    show_default=True,
    help="Compress the finished store (row-chunked).",
)
@click.option(
    "--views",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also cache this many augmented views per image (random resized crop + flip); fit-head trains on them.",
)
@click.option(
    "--compile",
    "compile_mode",
    type=click.Choice(COMPILE_CHOICES),
    default="auto",
    show_default=True,
    help="Run image models through torch.compile after a one-time compilation (about 27 s on a 2-core CPU): "
    f"efficientnet-lite0 1.4x faster there, ResNet-50 slower (benchmarks/results/embed_throughput.md); auto: "
    f"{COMPILE_AUTO_RULE}. Same features to float rounding; not in the cache key.",
)
@batch_option
@device_option
@workers_option
@source_options
@no_progress_option
@json_option
def embed(source, backbone, workers, no_progress, as_json, **options) -> None:
    """Embed SOURCE into a feature store, or find it already in the cache.

    SOURCE is an image folder (one sub-folder per class, or flat without labels), or a .csv/.tsv/.jsonl file with
    a text column and an optional label column. The store's name is its cache key: the same data, backbone and
    options are never embedded twice, and any change gives a new store.

    \b
    Examples:
      tlcache embed photos/ --out cache/
      tlcache embed reviews.csv --backbone minilm --text-column review --label-column sentiment
      tlcache embed photos/ -b torchvision:resnet50 --weights resnet50.pth --image-size 160
      tlcache embed notes.jsonl -b hf:./my-bert --pool cls --layer -2 --out notes.h5
      tlcache embed photos/ --views 4 --dtype float16   # 4 augmented views per image, half-size store
    """
    from tlcache.embed import embed_source

    result = embed_source(
        source,
        backbone,
        num_workers=workers,
        progress=not no_progress,
        source_options=take(options, SOURCE_OPTIONS),
        **options,
    )
    _emit(dict(result.__dict__), as_json, result.summary_line())


@cli.command("fit-head")
@click.argument("store")
@click.option(
    "--head",
    type=click.Choice([*HEADS, "all"]),
    default="logreg",
    show_default=True,
    help="all: every head but sgd, and a leaderboard. sgd streams the store (any size fits).",
)
@click.option("--test", help="A store of the same features to test on (instead of a held-out fraction).")
@click.option(
    "--test-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Fraction held out for testing when no --test is given.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the splits, the sweep and the head.")
@click.option(
    "--grid",
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
@json_option
def fit_head(store, head, out, grid, no_views, as_json, **options) -> None:
    """Fit a scikit-learn head on the features in STORE and report how well it does.

    The head's regularisation (C for logreg and the SVMs, alpha for mlp, k for knn) is swept on held-out training
    data, the linear-probe protocol, and the best value refitted on all of it. Writes head.joblib, head.json (the
    features it needs), report.json, report.md and PNG figures (confusion matrix, reliability diagram, sweep).

    \b
    Examples:
      tlcache fit-head cache/minilm-<key>.h5 --head logreg
      tlcache fit-head train.h5 --test test.h5 --head svm --calibrate sigmoid --out runs/svm
      tlcache fit-head train.h5 --test test.h5 --head all          # every head but sgd, and a leaderboard
      tlcache fit-head train.h5 --test test.h5 --shots 8 --repeats 5 # few-shot: mean and spread
      tlcache fit-head big.h5 --head sgd                            # reads the store in row batches
    """
    from tlcache.heads import fit_all_heads
    from tlcache.heads import fit_head as fit

    options.update(use_views=not no_views, grid=_parse_grid(grid))
    if head == "all":
        runs = fit_all_heads(store, out=out, **options)
        if as_json:
            click.echo(json.dumps([{"out_dir": str(r.out_dir), **r.report} for r in runs], indent=2, default=str))
            return
        for run in runs:
            click.echo(run.summary_line())
        click.echo(f"leaderboard -> {runs[0].out_dir.parent / 'leaderboard.md'}")
        return
    run = fit(store, head, out=out, **options)
    _emit({"out_dir": str(run.out_dir), **run.report}, as_json, run.summary_line())


def _parse_grid(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--grid {text!r} is not a comma-separated list of numbers, e.g. 0.001,0.01,0.1") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"--grid {text!r} needs positive values, e.g. 0.001,0.01,0.1")
    return values


@cli.command()
@click.argument("source")
@click.option(
    "--backbone",
    "-b",
    help="Backbone to fine-tune: torchvision:<arch>, efficientnet-lite0..2, minilm, hf:<dir> "
    "[default: efficientnet-lite0 for images, minilm for text].",
)
@backbone_options
@click.option("--test", help="A labelled source with the same classes to test on.")
@click.option(
    "--test-fraction", type=float, default=0.2, show_default=True, help="Held out for testing when no --test."
)
@config_options(FinetuneConfig)
@device_option
@click.option("--out", "-o", help="Folder for the model and its report [default: runs/finetune-<backbone>-<strategy>].")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last epoch.")
@click.option("--cache", help="Where --lp-ft caches the frozen features [default: $TLCACHE_HOME].")
@workers_option
@source_options
@no_progress_option
@json_option
def finetune(source, backbone, workers, no_progress, as_json, **options) -> None:
    """Fine-tune a backbone with a linear classifier on the labelled items of SOURCE.

    For when frozen features fall short: trains what --strategy says, with warmup and cosine decay, AdamW,
    gradient clipping, mixed precision, and early stopping on a validation split (the best epoch is kept). Every
    epoch ends in a checkpoint (--resume continues it). Writes the model (safetensors, usable as the backbone
    finetuned:<out> by embed, fit-head and predict), finetune.json, and the report of fit-head.

    \b
    Examples:
      tlcache finetune reviews.csv -b minilm --test test.csv --strategy full --epochs 3 --lr 5e-5
      tlcache finetune reviews.csv -b minilm --test test.csv --lp-ft --out runs/ft-lp
      tlcache finetune photos/ --strategy top-3 --head-epochs 1 --layer-decay 0.8 --augment crop,flip,color
      tlcache finetune fmnist/ --image-size 96 --crop-ratio 1 --layer blocks.7 --pool flatten --augment shift,flip \\
          --lp-ft --epochs 8 --lr 3e-5 --head-lr 3e-5 --out runs/ft-fm   # trains blocks 0-7 only
      tlcache finetune fmnist/ --epochs 15 --lr 1e-4 --head-lr 1e-3 --mixup 0.2 --label-smoothing 0.1
      tlcache finetune photos/ --out runs/ft --resume                  # continue after an interruption
      tlcache embed photos/ -b finetuned:runs/ft                       # its features, for any head
    """
    from tlcache.finetune import finetune as run_finetune

    run = run_finetune(
        source,
        backbone,
        config=config_from_options(FinetuneConfig, options),
        num_workers=workers,
        progress=not no_progress,
        source_options=take(options, SOURCE_OPTIONS),
        **options,
    )
    _emit({"out_dir": str(run.out_dir), **run.report}, as_json, run.summary_line())


@cli.command()
@click.argument("run_dir")
def report(run_dir) -> None:
    """Render report.md and the PNG figures of RUN_DIR again from its report.json.

    \b
    Example:
      tlcache report runs/minilm-<key>/logreg
    """
    from tlcache.runs import render_report

    paths = render_report(run_dir)
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@cli.command()
@click.argument("head")
@click.argument("source")
@click.option("--out", "-o", default="predictions.csv", show_default=True, help="CSV to write; '-' for stdout.")
@click.option("--cache-dir", help="Where embeddings of SOURCE are cached [default: $TLCACHE_HOME or ~/.cache/tlcache].")
@batch_option
@device_option
@source_options
@no_progress_option
def predict(head, source, out, no_progress, **options) -> None:
    """Predict SOURCE with the head in the run folder HEAD.

    SOURCE is embedded with the head's own backbone, through the cache (or is a store of those features). A head
    whose backbone or dim does not match the features is refused.

    \b
    Examples:
      tlcache predict runs/minilm-<key>/logreg new-reviews.csv --out preds.csv
      tlcache predict runs/minilm-<key>/logreg cache/minilm-<key2>.h5 --out -
    """
    from tlcache.predict import predict as run_predict

    result = run_predict(
        head,
        source,
        out=None if out == "-" else out,
        progress=not no_progress,
        source_options=take(options, SOURCE_OPTIONS),
        **options,
    )
    click.echo(result.summary_line(), err=out == "-")


@cli.command()
@click.argument("store")
@json_option
def info(store, as_json) -> None:
    """Show what STORE holds and how it was made.

    \b
    Example:
      tlcache info cache/minilm-<key>.h5
    """
    from tlcache.store import FeatureStore

    summary = FeatureStore(store).summary()
    if as_json:
        _emit(summary, True, "")
        return
    width = max(len(k) for k in summary)
    for name, value in summary.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        click.echo(f"{name:<{width}}  {value}")


@cli.command()
@json_option
def backbones(as_json) -> None:
    """List the backbones, their modality and dim, and whether their weights are available offline here.

    \b
    Example:
      tlcache backbones --json
    """
    from tlcache.backbones import list_backbones

    infos = list_backbones()
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    rows = [("name", "modality", "dim", "offline", "weights", "note")] + [
        (i.name, i.modality, str(i.dim or "model's"), "yes" if i.offline else "no", i.weights, i.note) for i in infos
    ]
    _table(rows)


@cli.command("ls")
@click.argument("folder", required=False)
@json_option
def ls(folder, as_json) -> None:
    """List the stores in FOLDER (default: the cache folder): key, backbone, rows, size, state, source.

    \b
    Example:
      tlcache ls
      tlcache ls cache/ --json
    """
    from tlcache.cache import list_stores

    entries = list_stores(folder)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    rows = [("key", "backbone", "rows", "size", "state", "last used", "source")] + [
        (
            (e.key or "?")[:12],
            e.backbone or "?",
            f"{e.rows_done}/{e.n_rows}" if e.state == "partial" else str(e.n_rows),
            _size(e.size_bytes),
            e.state,
            e.last_used.replace("+00:00", "Z"),
            e.source or e.path.name,
        )
        for e in entries
    ]
    _table(rows)


@cli.command()
@click.argument("folder", required=False)
@click.option("--unused-days", type=click.FloatRange(min=0), help="Also remove complete stores unused for this long.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@json_option
def gc(folder, unused_days, dry_run, as_json) -> None:
    """Remove incomplete stores in FOLDER (default: the cache folder) that no embed is writing, and, with
    --unused-days, complete stores not written or hit for that many days.

    \b
    Examples:
      tlcache gc --dry-run
      tlcache gc --unused-days 30
    """
    from tlcache.cache import collect_garbage

    removed = collect_garbage(folder, unused_days=unused_days, dry_run=dry_run)
    freed = sum(e.size_bytes for e in removed)
    verb = "would remove" if dry_run else "removed"
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "removed": [e.as_dict() for e in removed], "freed_bytes": freed}))
        return
    for entry in removed:
        click.echo(f"{verb} {entry.path} ({entry.state}, {_size(entry.size_bytes)})")
    click.echo(f"{verb} {len(removed)} stores, {_size(freed)}")


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"


def _table(rows: list[tuple]) -> None:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main() -> None:
    cli(prog_name="tlcache")


cli.add_command(compare)


if __name__ == "__main__":
    sys.exit(main())
