"""The `tlcache` command line: each command parses its options, calls one library function and says where the
output went. Mistakes a user can fix end in one line on stderr and exit code 2.

One module per family of commands: ``embed`` (embed and finetune: what reads a source), ``heads`` (fit-head, report,
predict), ``compare``, ``store`` (info, ls, gc, backbones), ``run`` (pipelines); ``options`` holds the options they
share, made from the library's own definitions. Each command returns its library result, so ``tlcache run`` can
invoke the very same command for a pipeline's step and read what it made.
"""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

import click

from tlcache.errors import DISK_ERRORS, PATH_ERRORS, UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # a shell's code for a command ended by Ctrl-C (128 + SIGINT)
# What to do after Ctrl-C, by command: what each keeps of its work (the others' is cheap or all or nothing).
AFTER_INTERRUPT = {
    "embed": "the rows embedded so far are kept: run the same command again to finish",
    "finetune": "every finished epoch is kept: run the same command again with --resume to continue",
    "compare": "every finished cell is kept: run the same command again to continue",
    "run": "every finished step is kept: run the same recipe again to continue",
    "fit-head": "nothing it wrote is half done: run it again (a --head all folder has no leaderboard until a run of "
    "it ends: its heads may be of two runs till then)",
}


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            after = AFTER_INTERRUPT.get(ctx.invoked_subcommand or "", "nothing it wrote is half done: run it again")
            click.echo(f"\ninterrupted: {after}", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except OSError as exc:  # the disk filled up or failed, or a path is in the way: a state to fix, not a bug
            where = f" {exc.filename}" if exc.filename else ""
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno in DISK_ERRORS:
                click.echo(f"error: cannot write{where} ({why}); free space and run it again", err=True)
            elif exc.errno in PATH_ERRORS:
                click.echo(f"error: cannot use{where} ({why}); pass another path", err=True)
            else:
                raise
            ctx.exit(EXIT_USER_ERROR)


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
      tlcache run pipelines/rotten-tomatoes.toml      # the same steps, from a recipe
    """


def main() -> None:
    warnings.showwarning = _one_line_warning
    # The cycle collector's default pace (every 700 allocations) walks the objects of every import again and again:
    # 0.6 s of a `fit-head --head all`, against 0.15 s at this one, at the same peak memory.
    gc.set_threshold(50_000, 20, 10)
    try:
        cli(prog_name="tlcache")
    finally:
        # The process ends here. Its shutdown would run the cycle collector over every object that torch,
        # scikit-learn and matplotlib made at import (0.8 s of a `fit-head --head all`); frozen, they are left to
        # the OS. Exit handlers still run (h5py's closes its files); tlcache's own files are closed by now.
        gc.freeze()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning (Pillow's on an odd image, say) as one line on stderr, not its source file and line."""
    text = " ".join(str(message).split())
    click.echo(
        f"warning: {text} ({category.__name__} from {Path(filename).parent.name}/{Path(filename).name})", err=True
    )


def _add_commands() -> None:
    from tlcache.cli import compare, embed, heads, run, store

    for command in (
        embed.embed,
        embed.finetune,
        heads.fit_head,
        heads.report,
        heads.predict,
        heads.export,
        compare.compare,
        store.info,
        store.backbones,
        store.ls,
        store.gc,
        run.run,
    ):
        cli.add_command(command)


_add_commands()
