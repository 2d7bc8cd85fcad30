"""`tlcache run PIPELINE.toml`: a recipe of steps, each one command of the command line, run in order.

A recipe is TOML with one ``[[step]]`` table per step::

    [[step]]
    name = "train"                      # optional; what later steps call this step's output: "@train"
    run = "embed"                       # embed, fit-head, finetune, compare, export or predict
    source = "data/train.csv"           # the command's arguments by name, its options without "--"
    backbone = "minilm"

    [[step]]
    run = "fit-head"
    store = "@train"                    # the store the step named train wrote
    head = "all"
    test-fraction = 0.2

A step's keys are its command's own parameters (one definition serves the command line and the recipe): true
passes a switch, a list becomes a comma-separated value, and every value goes through the command's own parsing.
The whole file is checked before the first step runs. Paths are relative to the current folder. A step that writes
a run folder or a file and names no ``out`` writes to ``runs/<recipe name>/<step name>`` (``.csv`` for predict,
``.onnx`` for export).

Skipping: embed finds its store in the cache (its store's name is its key) and says "skipped (cached)". Every
other step leaves a record beside its output (tlcache.step_records): what it ran and the identities of its inputs;
a rerun skips it while the record, its inputs and its output files are unchanged, and runs it again otherwise.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from tlcache.errors import UserError
from tlcache.step_records import FOLDER_OUTPUTS, StepRecord, identity

STEP_KINDS = ("embed", "fit-head", "finetune", "compare", "export", "predict")
INPUT_KEYS = ("test",)  # besides a command's arguments: options that name a file the step reads
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# What a reference in these keys must name: the steps whose output the key takes (a head, a store).
REFERENCE_KINDS = {
    ("predict", "head"): ("fit-head", "export"),
    ("export", "run-dir"): ("fit-head",),
    ("fit-head", "store"): ("embed",),
    ("fit-head", "test"): ("embed",),
}
REFERENCE = re.compile(r"(?P<prefix>[A-Za-z]+:)?@(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)")  # "@train", "finetuned:@ft"
FILE_SUFFIXES = {"predict": ".csv", "export": ".onnx"}  # steps whose output is a file
NOT_INPUTS = ("out", "cache", "cache-dir")  # where a step writes, or caches: not what it reads
RUNS_DIR = Path("runs")


@dataclass
class Step:
    """One ``[[step]]`` table: its command and its keys, checked against that command's parameters."""

    number: int
    kind: str
    name: str | None
    values: dict[str, Any]
    where: str  # "<file>: step <n> (<name>)", the start of every message about it

    @property
    def label(self) -> str:
        return self.name or f"{self.number}-{self.kind}"

    def references(self) -> dict[str, str]:
        """Key -> the step name its value refers to."""
        found = {}
        for key, value in self.values.items():
            match = REFERENCE.fullmatch(value) if isinstance(value, str) else None
            if match:
                found[key] = match["name"]
        return found


@dataclass
class Outcome:
    step: Step
    action: str  # "ran", "skipped", "cached" (embed found its store), or for a dry run "would run", "recorded"
    output: Path | None


@dataclass
class PipelineResult:
    path: Path
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    def count(self, *actions: str) -> int:
        return sum(outcome.action in actions for outcome in self.outcomes)

    def summary_line(self) -> str:
        n = len(self.outcomes)
        if self.dry_run:
            return f"dry run of {self.path}: {n} steps checked, nothing run"
        return (
            f"{self.path}: {n} steps, {self.count('ran')} run, {self.count('skipped', 'cached')} skipped "
            f"in {self.seconds:.1f} s"
        )


def load_pipeline(path: str | Path, check_inputs: bool = True) -> list[Step]:
    """The steps of the recipe at ``path``, every step checked against its command: its kind, each key, each value
    (by the command's own parsing), the references to earlier steps and (``check_inputs``) that the files it reads
    exist. Raises UserError naming the file, the step and the key."""
    path = Path(path)
    tables = _read_tables(path)
    steps: list[Step] = []
    for number, table in enumerate(tables, start=1):
        step = _step(path, number, table, steps)
        _check_values(step, check_inputs)
        steps.append(step)
    return steps


def run_pipeline(
    path: str | Path, dry_run: bool = False, echo=click.echo, only: tuple[str, ...] = (), progress: bool = True
) -> PipelineResult:
    """Run the recipe at ``path`` step by step (see the module's documentation), skipping what is done already.
    ``dry_run``: check it and say what would run, run nothing. ``only``: the names of the steps to run, with the
    earlier steps they refer to (all of them when empty). ``progress`` False hides every step's progress bars (as
    its ``--no-progress``, which is not one of the step's options: its record is the same). A step's UserError
    stops the run, in one line that names the file and the step."""
    started = time.perf_counter()
    recipe = load_pipeline(path)
    steps = selected(path, recipe, only)
    result = PipelineResult(Path(path), dry_run=dry_run)
    outputs: dict[str, Path | None] = {}
    for step in steps:
        head = f"step {step.number}/{len(recipe)} ({step.label}):"
        outcome = _plan_step(step, head, echo) if dry_run else _run_step(step, outputs, head, echo, progress)
        outputs[step.label] = outcome.output
        result.outcomes.append(outcome)
    result.seconds = time.perf_counter() - started
    return result


def selected(path: str | Path, steps: list[Step], only: tuple[str, ...]) -> list[Step]:
    """The steps named in ``only`` and, transitively, the earlier steps they refer to ("@name"), in the recipe's
    order; every step when ``only`` is empty. An unknown name is a UserError listing the recipe's names."""
    if not only:
        return steps
    by_label = {step.label: step for step in steps}
    unknown = [name for name in only if name not in by_label]
    if unknown:
        raise UserError(
            f"{path}: no step named {unknown[0]!r}; its steps are {', '.join(by_label)} (choose with --step NAME)"
        )
    wanted, pending = set(), list(only)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending += by_label[name].references().values()
    return [step for step in steps if step.label in wanted]


def _read_tables(path: Path) -> list[dict]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise UserError("tlcache run reads TOML with tomllib, which needs Python 3.11 or newer") from None
    try:
        recipe = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such recipe; give the path of a TOML file, e.g. pipelines/mnist-5k.toml") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read it ({error}); give a TOML recipe") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML ({error}); fix the line it names") from None
    unknown = sorted(set(recipe) - {"step"})
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} at the top; a recipe holds [[step]] tables only")
    tables = recipe.get("step")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise UserError(f'{path}: no [[step]] tables; add one per command to run, e.g. [[step]] run = "embed"')
    return tables


def _step(path: Path, number: int, table: dict, earlier: list[Step]) -> Step:
    name = table.get("name")
    where = f"{path}: step {number}" + (f" ({name})" if isinstance(name, str) else "")
    kind = table.get("run")
    if kind not in STEP_KINDS:
        what = f"unknown step {kind!r}" if kind is not None else "no run key"
        raise UserError(f"{where}: {what}; give run = one of {', '.join(STEP_KINDS)}")
    if name is not None and (not isinstance(name, str) or not NAME.fullmatch(name)):
        raise UserError(f"{where}: name {name!r} is not a name; use letters, digits, '-', '_' and '.'")
    if name is not None and any(name in (s.name, s.label) for s in earlier):
        raise UserError(f"{where}: another step is named {name!r} already; give each step its own name")
    values = {key: value for key, value in table.items() if key not in ("run", "name")}
    step = Step(number, kind, name, values, f"{path}: step {number} ({name or kind})")
    if kind in FOLDER_OUTPUTS + tuple(FILE_SUFFIXES) and "out" not in values:
        values["out"] = str(RUNS_DIR / path.stem / step.label) + FILE_SUFFIXES.get(kind, "")
    for key, target in step.references().items():
        named = next((s for s in earlier if target == s.label), None)
        if named is None:
            raise UserError(
                f"{step.where}: {key} = {values[key]!r} refers to no earlier step; name a step before this one "
                f'(name = "{target}") or give a path'
            )
        prefix = REFERENCE.fullmatch(values[key])["prefix"]
        wanted = ("finetune",) if prefix == "finetuned:" else REFERENCE_KINDS.get((kind, key))
        if wanted and named.kind not in wanted:
            raise UserError(
                f"{step.where}: {key} = {values[key]!r} refers to step {target}, "
                f"{'an' if named.kind[0] in 'aeiou' else 'a'} {named.kind} step, whose output "
                f"{kind} cannot take as its {key}; refer to a {' or '.join(wanted)} step"
            )
    return step


def _parameters(command: click.Command) -> dict[str, click.Parameter]:
    """A command's parameters by the key a recipe gives them: an argument's name, an option's long name."""
    keys = {}
    for param in command.params:
        if isinstance(param, click.Argument):
            keys[param.name.replace("_", "-")] = param
        else:
            keys[max(param.opts, key=len).lstrip("-")] = param
    return keys


def _command(kind: str) -> click.Command:
    from tlcache.cli import cli

    return cli.commands[kind]


def _check_values(step: Step, check_inputs: bool) -> None:
    """Each key is a parameter of the step's command, every argument is given, click parses the values, and the
    input files exist."""
    params = _parameters(_command(step.kind))
    for key in step.values:
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(f"{step.where}: unknown key {key!r} for {step.kind}; {hint}see tlcache {step.kind} --help")
    for key, param in params.items():
        if isinstance(param, click.Argument) and param.required and key not in step.values:
            raise UserError(f"{step.where}: {step.kind} needs {key} (its {key.upper()} argument); add {key} = ...")
    _parse(step, _argv(step, {}, dry_run=True))
    if not check_inputs:
        return
    references = step.references()
    for key, value in step.values.items():
        param = params[key]
        if key in references or not (isinstance(param, click.Argument) or key in INPUT_KEYS):
            continue
        if not Path(str(value)).exists():
            raise UserError(
                f"{step.where}: {key} {value} does not exist (paths are relative to the current folder); fix the "
                "path, or make the data first (see the recipe's comments)"
            )


def _argv(step: Step, outputs: dict[str, Path | None], dry_run: bool = False) -> list[str]:
    """The step's command line (after the command's name): options, then "--" and the arguments. References become
    the outputs of the steps they name; in a dry run, with no outputs yet, they stay as written."""
    params = _parameters(_command(step.kind))
    options, arguments = [], []
    for key, value in step.values.items():
        param = params[key]
        value = value if dry_run else _resolve(step, key, value, outputs)
        if isinstance(param, click.Argument):
            arguments.append(_scalar(step, key, value))
        else:
            options += _option(step, key, param, value)
    return options + ["--"] + arguments


def _resolve(step: Step, key: str, value: Any, outputs: dict[str, Path | None]) -> Any:
    match = REFERENCE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        return value
    output = outputs.get(match["name"])
    if output is None:
        raise UserError(f"{step.where}: {key} = {value!r} names a step that wrote no file; refer to one that does")
    return f"{match['prefix'] or ''}{output}"


def _option(step: Step, key: str, param: click.Parameter, value: Any) -> list[str]:
    flag = max(param.opts, key=len)
    if getattr(param, "is_flag", False):
        if not isinstance(value, bool):
            raise UserError(f"{step.where}: {key} is a switch; give {key} = true or false")
        return [flag] if value == param.flag_value else []
    if isinstance(value, bool):
        raise UserError(f"{step.where}: {key} takes a value, not {str(value).lower()}; see tlcache {step.kind} --help")
    if isinstance(value, list):
        items = [_scalar(step, key, item) for item in value]
        return [part for item in items for part in (flag, item)] if param.multiple else [flag, ",".join(items)]
    return [flag, _scalar(step, key, value)]


def _scalar(step: Step, key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{step.where}: {key} = {value!r} is not a single value; give a string or a number")
    return str(value)


def _parse(step: Step, argv: list[str]) -> click.Context:
    """The step's command's context for ``argv``: click's own checks of every value."""
    from tlcache.cli import cli

    try:
        with click.Context(cli, info_name="tlcache") as parent:
            return _command(step.kind).make_context(step.kind, list(argv), parent=parent)
    except click.ClickException as error:
        raise UserError(f"{step.where}: {_sentence(error)}; see tlcache {step.kind} --help") from None
    except UserError as error:
        raise UserError(f"{step.where}: {error}") from None


def _sentence(error: click.ClickException) -> str:
    return " ".join(error.format_message().split()).rstrip(".")


def _run_step(step: Step, outputs: dict[str, Path | None], head: str, echo, progress: bool = True) -> Outcome:
    argv = _argv(step, outputs)
    if step.kind == "embed":
        echo(f"{head} tlcache embed {_shown(argv)}")
        result = _invoke(step, argv, progress)
        if result.cached:
            echo("  skipped (cached)")
        return Outcome(step, "cached" if result.cached else "ran", Path(result.path))
    out = Path(str(step.values["out"]))
    if step.kind == "predict" and str(out) == "-":  # to stdout: nothing to keep a record beside
        echo(f"{head} tlcache predict {_shown(argv)}")
        _invoke(step, argv, progress)
        return Outcome(step, "ran", None)
    record = StepRecord(step.kind, out, argv, _inputs(step, argv))
    if record.done():
        echo(f"{head} {step.kind} skipped: done before with the same options and inputs -> {out}")
        return Outcome(step, "skipped", record.output())
    if step.kind == "finetune" and record.owns_output():
        _clear(out, echo)  # made by this step with other options or inputs, and finetune refuses a finished folder
    elif step.kind == "fit-head" and record.owns_output() and (removed := record.clear_previous()):
        echo(f"  cleared {len(removed)} files of {out}: made before with other options or inputs, or changed since")
    record.start()
    echo(f"{head} tlcache {step.kind} {_shown(argv)}")
    output = _output_of(_invoke(step, argv, progress), out)
    record.finish(output)
    return Outcome(step, "ran", output)


def _plan_step(step: Step, head: str, echo) -> Outcome:
    """What a run would do with the step, from what is on disk now; references to outputs not made yet stay
    unresolved (an embed's store is known once it has run)."""
    argv = _argv(step, {}, dry_run=True)
    command = f"tlcache {step.kind} {_shown(argv)}"
    if step.kind == "embed" or str(step.values.get("out")) == "-":
        verb = "embeds, or finds its store in the cache" if step.kind == "embed" else "runs"
        echo(f"{head} {verb}: {command}")
        return Outcome(step, "would run", None)
    unresolved = {i for i, part in enumerate(argv) if REFERENCE.fullmatch(part)}
    record = StepRecord(step.kind, Path(str(step.values["out"])), argv, _inputs(step, argv))  # references: none
    if not unresolved and record.done():
        echo(f"{head} skipped: done before with the same options and inputs -> {record.out}")
        return Outcome(step, "skipped", record.output())
    if unresolved and record.matches_apart_from(unresolved):
        echo(f"{head} skipped if the steps it refers to give the same outputs: {command}")
        return Outcome(step, "recorded", record.output())
    echo(f"{head} runs: {command}")
    return Outcome(step, "would run", None)


def _invoke(step: Step, argv: list[str], progress: bool = True) -> Any:
    """Run the step's command as the command line would, its output indented under the step's line; without its
    progress bars unless ``progress``."""
    context = _parse(step, argv if progress else ["--no-progress", *argv])
    try:
        with context, contextlib.redirect_stdout(_Indented(sys.stdout)):
            return context.command.invoke(context)
    except UserError as error:
        raise UserError(f"{step.where}: {error}") from None
    except click.ClickException as error:
        raise UserError(f"{step.where}: {_sentence(error)}") from None


def _output_of(result: Any, out: Path) -> Path | None:
    """What a reference to the step means: a store, a head's run folder, a fine-tune's or a comparison's folder, a
    predictions file (None: written to stdout). Of the heads of ``fit-head --head all``, the one with the best
    validation accuracy (the rows its sweep held out, the same for every head), never the best on the test items."""
    if isinstance(result, list):
        from tlcache.all_heads import validation_rank

        result = max(result, key=validation_rank)
    for attribute in ("out_dir", "out"):  # a run's folder; predict's file
        found = getattr(result, attribute, None)
        if found is not None:
            return Path(found)
    return out


def _inputs(step: Step, argv: list[str]) -> dict[str, str]:
    """The identity of each file or folder the step reads: any value that names an existing path, such as its
    arguments, --test, --weights, or a backbone finetuned:<folder>. Where it writes or caches is no input."""
    params = _parameters(_command(step.kind))
    context = _parse(step, argv)
    found = {}
    for key, param in params.items():
        value = context.params.get(param.name)
        if key in NOT_INPUTS or not isinstance(value, str) or not value:
            continue
        for candidate in (value, value.partition(":")[2]):
            if candidate and Path(candidate).exists():
                found[key] = identity(Path(candidate))
                break
    return found


def _shown(argv: list[str]) -> str:
    options, arguments = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    return " ".join(shlex.quote(part) for part in arguments + options)


def _clear(out: Path, echo) -> None:
    here = Path.cwd().resolve()
    if out.is_dir() and out.resolve() not in (here, *here.parents):
        echo(f"  clearing {out}: made before with other options or inputs, or changed since")
        shutil.rmtree(out)


class _Indented(io.TextIOBase):
    """A text stream that passes each line on to ``target`` indented by two spaces."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.at_line_start = True

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # how click tells a text stream from a binary one
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        pieces = []
        for line in text.splitlines(keepends=True):
            pieces.append(("  " if self.at_line_start and line.strip() else "") + line)
            self.at_line_start = line.endswith("\n")
        self.target.write("".join(pieces))
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    @property
    def encoding(self) -> str:
        return getattr(self.target, "encoding", None) or "utf-8"
