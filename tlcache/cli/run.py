"""`tlcache run`: the steps of a recipe (TOML), each one command of this command line (see tlcache.pipeline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from tlcache.cli.options import no_progress_option

if TYPE_CHECKING:
    from tlcache.pipeline import PipelineResult


@click.command()
@click.argument("pipeline")
@click.option("--dry-run", is_flag=True, help="Check the recipe and say which steps would run or be skipped; run none.")
@click.option(
    "--step",
    "steps",
    multiple=True,
    metavar="NAME",
    help='Run only the step of this name (repeatable), with the earlier steps it refers to ("@name").',
)
@no_progress_option
def run(pipeline, dry_run, steps, no_progress) -> PipelineResult:
    """Run the steps of the recipe PIPELINE (a TOML file) in order, skipping the steps done already.

    Each [[step]] table names its command (run = "embed", "fit-head", "finetune", "compare", "export" or "predict")
    and gives the command's arguments by name and its options without the dashes, exactly as on the command line; a
    switch takes true, a list becomes a comma-separated value. "@name" is the output of the earlier step of that
    name: an embed's store, a head's run folder (of --head all, the head with the best validation accuracy), a
    fine-tune's or a comparison's folder, an exported model, a predictions file. Paths are relative to the current
    folder; a step without `out` writes to runs/<recipe name>/<step name> (.csv for predict, .onnx for export).

    The whole file is checked first: an unknown step, key or value, a missing input or a bad reference stops it
    in one line naming the file, the step and the key. An embed whose store is in the cache is skipped; any other
    step leaves a record beside its output and is skipped while its options, inputs and output are unchanged.

    \b
    Example (pipelines/ holds recipes for the data `make demo` writes):
      [[step]]
      name = "train"
      run = "embed"
      source = "demo-output/data/rotten_tomatoes/train.csv"
      out = "demo-output/cache"

    \b
      [[step]]
      run = "fit-head"
      store = "@train"
      head = "all"
      test-fraction = 0.25

    \b
      tlcache run pipelines/rotten-tomatoes.toml
      tlcache run pipelines/fashion-mnist.toml --dry-run
      tlcache run pipelines/rotten-tomatoes.toml --step compare
      tlcache run pipelines/rotten-tomatoes.toml --no-progress   # no progress bars, e.g. in a log
    """
    from tlcache.pipeline import run_pipeline

    result = run_pipeline(pipeline, dry_run=dry_run, only=steps, progress=not no_progress)
    click.echo(result.summary_line())
    return result
