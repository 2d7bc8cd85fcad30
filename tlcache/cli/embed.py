"""`tlcache embed` and `tlcache finetune`: the commands that read a source and run its items through a backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from tlcache.backbones.base import LONG_TEXT
from tlcache.cli.options import (
    SOURCE_OPTIONS,
    backbone_options,
    batch_option,
    checked_backbones,
    config_from_options,
    config_options,
    device_option,
    emit,
    fraction,
    json_option,
    no_progress_option,
    precision_option,
    source_options,
    take,
    workers_option,
)
from tlcache.embed import COMPILE_AUTO_RULE, COMPILE_CHOICES, ON_ERROR_CHOICES
from tlcache.finetune.config import FinetuneConfig
from tlcache.ray_engine import DEFAULT_SHARD_SIZE, ENGINES, RAY_OPTIONS, THREADS_PER_WORKER
from tlcache.store import COMPRESSIONS, DTYPES

if TYPE_CHECKING:
    from tlcache.embed import EmbedResult
    from tlcache.finetune import FinetuneRun


@click.command()
@click.argument("source")
@click.option(
    "--backbone",
    "-b",
    callback=checked_backbones,
    help="Backbone name (see `tlcache backbones`) [default: efficientnet-lite0 for images, minilm for text].",
)
@backbone_options
@click.option("--out", "-o", help="Store folder, or a .h5 file [default: $TLCACHE_HOME or ~/.cache/tlcache].")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the .h5 file --out names when it holds another store (or no store); without it, refused.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="float32",
    show_default=True,
    help="Stored feature type; float16 halves the size.",
)
@precision_option(
    "Compute type: auto takes bf16 on GPUs and on CPUs with bf16 instructions, else fp32. On a 2-core bf16 CPU, "
    "bf16 gave 1.8-2.3x the items per second of fp32 and features at a mean cosine of 0.9978 or more to fp32 on "
    "the benchmarks' photos, digits and texts (benchmarks/results/embed_throughput.md), 0.995 on shapes drawn on "
    "noise. In the cache key."
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
@click.option(
    "--long-text",
    type=click.Choice(LONG_TEXT),
    help="Text models: a text longer than the model reads is cut at its limit (truncate, the default; the summary "
    "counts them) or embedded in windows of that many tokens, averaged (chunk). In the cache key.",
)
@click.option(
    "--on-error",
    type=click.Choice(ON_ERROR_CHOICES),
    default="skip",
    show_default=True,
    help="An item that cannot be read (a damaged image): skip leaves it out and lists it, here and in the store "
    "(`tlcache info`); fail does the same, then exits with status 2 naming every such item.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="Where to embed: this process, or a Ray cluster (pip install 'tlcache[ray]'): the items in shards, each "
    "embedded by a worker into a store of its own (a rerun skips the finished ones), then the same store as local.",
)
@click.option(
    "--address",
    help="With --engine ray: the cluster to join, auto or HOST:PORT [default: a Ray started on this machine for "
    "the run, unless RAY_ADDRESS names one].",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(min=1),
    help=f"With --engine ray: workers, each loading the model once [default: one per {THREADS_PER_WORKER} CPUs of "
    "the cluster, or per --gpus-per-worker GPUs].",
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="With --engine ray: GPUs for each worker; 0 runs the workers on CPUs.",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=DEFAULT_SHARD_SIZE,
    show_default=True,
    help="With --engine ray: items per shard, the unit a worker embeds and a rerun skips when finished.",
)
@batch_option
@device_option
@workers_option
@source_options
@no_progress_option
@json_option
def embed(source, backbone, workers, no_progress, as_json, **options) -> EmbedResult:
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
      tlcache embed photos/ --engine ray --address auto --gpus-per-worker 1   # on a running Ray cluster
    """
    from tlcache.embed import embed_source
    from tlcache.ray_engine import ray_options

    result = embed_source(
        source,
        backbone,
        num_workers=workers,
        progress=not no_progress,
        source_options=take(options, SOURCE_OPTIONS),
        ray_options=ray_options(options["engine"], **take(options, RAY_OPTIONS)),
        **options,
    )
    emit({**result.__dict__, "stored": result.stored}, as_json, result.summary_line())
    for line in result.skipped_lines():
        click.echo(line, err=True)
    if note := _no_label_column(source, result, options):
        click.echo(note, err=True)
    return result


def _no_label_column(source, result, options: dict) -> str | None:
    """A note for a table embedded without labels because it has no 'label' column while it has others: a new user's
    `package,text,section` file was embedded unlabelled (43 s), and fit-head then refused it."""
    from tlcache.sources import DEFAULT_LABEL_COLUMN, table_columns
    from tlcache.store import FeatureStore

    if options.get("label_column") is not None or FeatureStore(result.path).class_names:
        return None
    read = {options.get(name) or default for name, default in (("text_column", "text"), ("id_column", "id"))}
    others = [column for column in table_columns(source) if column not in read | {options.get("group_column")}]
    if not others:
        return None
    return (
        f"note: {source} has no column '{DEFAULT_LABEL_COLUMN}', so its items are stored without labels (for "
        f"predict); to fit heads on them, embed it again with --label-column naming one of: {', '.join(others)}"
    )


@click.command()
@click.argument("source")
@click.option(
    "--backbone",
    "-b",
    callback=checked_backbones,
    help="Backbone to fine-tune: torchvision:<arch>, efficientnet-lite0..2, minilm, hf:<dir> "
    "[default: efficientnet-lite0 for images, minilm for text].",
)
@backbone_options
@click.option("--test", help="A labelled source with the same classes to test on.")
@click.option(
    "--test-fraction",
    type=float,
    default=0.2,
    show_default=True,
    callback=fraction,
    help="Held out for testing when no --test.",
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
def finetune(source, backbone, workers, no_progress, as_json, **options) -> FinetuneRun:
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
    emit({"out_dir": str(run.out_dir), **run.report}, as_json, run.summary_line())
    return run
