"""Each setting is stated once: the fine-tune options come from FinetuneConfig's fields, and every choice list of
the command line is the library's own constant."""

import dataclasses

import click
import pytest

from tlcache.backbones.base import DEVICE_CHOICES, LONG_TEXT, POOLING_CHOICES, PRECISIONS
from tlcache.cli import cli
from tlcache.cli.options import config_from_options
from tlcache.embed import COMPILE_CHOICES, ON_ERROR_CHOICES
from tlcache.export import QUANTIZE
from tlcache.finetune.config import NORM_STATS, FinetuneConfig
from tlcache.head_choices import CALIBRATIONS, CLASS_WEIGHTS, HEADS
from tlcache.ray_engine import ENGINES
from tlcache.store import COMPRESSIONS, DTYPES

# Every option with a fixed list of values, and the constant of the library that list must be.
CHOICES = {
    "--device": DEVICE_CHOICES,
    "--precision": PRECISIONS,
    "--pool": POOLING_CHOICES,
    "--dtype": DTYPES,
    "--compression": COMPRESSIONS,
    "--compile": COMPILE_CHOICES,
    "--on-error": ON_ERROR_CHOICES,
    "--long-text": LONG_TEXT,
    "--head": (*HEADS, "all"),
    "--class-weight": CLASS_WEIGHTS,
    "--calibrate": CALIBRATIONS,
    "--norm-stats": NORM_STATS,
    "--engine": ENGINES,
    "--quantize": QUANTIZE,
}


def _parse(command: str, *args: str) -> dict:
    """The keyword arguments click would call ``command`` with."""
    with click.Context(cli) as parent:
        return cli.commands[command].make_context(command, list(args), parent=parent).params


def test_every_finetune_config_field_is_an_option_with_the_fields_default():
    names = {param.name for param in cli.commands["finetune"].params}
    missing = [f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in names]
    assert not missing, f"FinetuneConfig fields without a `tlcache finetune` option: {missing}"
    # With no options, the command builds exactly the default config: no option keeps a default of its own.
    assert config_from_options(FinetuneConfig, dict(_parse("finetune", "data.csv"))) == FinetuneConfig()


def test_finetune_options_reach_the_config():
    args = ["data/", "--strategy", "top-2", "--epochs", "5", "--lr", "1e-4", "--lp-ft", "--augment", "crop,shift"]
    config = config_from_options(FinetuneConfig, dict(_parse("finetune", *args, "--norm-stats", "train")))
    assert (config.strategy, config.epochs, config.lr, config.lp_ft) == ("top-2", 5, 1e-4, True)
    assert config.augment == ["crop", "shift"] and config.norm_stats == "train"
    assert config_from_options(FinetuneConfig, dict(_parse("finetune", "d/", "--augment", "none"))).augment == []


def _stale_choices(command: click.Command) -> list[str]:
    """The options of ``command`` whose choice list is not the library's constant for it (or has none)."""
    stale = []
    for param in command.params:
        if isinstance(param.type, click.Choice):
            flag = max(param.opts, key=len)
            if tuple(param.type.choices) != tuple(CHOICES.get(flag, ())):
                stale.append(flag)
    return stale


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_choice_list_is_the_librarys_constant(name):
    assert not _stale_choices(cli.commands[name]), f"`tlcache {name}`: build these choices from the constant"


def test_a_choice_list_of_its_own_is_caught():
    @click.command()
    @click.option("--dtype", type=click.Choice(["float32"]))  # restates DTYPES and misses float16
    @click.option("--colour", type=click.Choice(["red"]))  # no constant at all
    @click.option("--device", type=click.Choice(DEVICE_CHOICES))
    def stale(dtype, colour, device):
        pass

    assert _stale_choices(stale) == ["--dtype", "--colour"]
