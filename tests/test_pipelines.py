"""`tlcache run PIPELINE.toml` on tiny real models: steps run once, a rerun skips them, a change reruns what it
touches, a bad recipe stops in one line before any step runs, and every shipped recipe is valid."""

import json
from pathlib import Path

import pytest

from conftest import write_text_csv
from test_cli import assert_user_error, run
from tlcache.pipeline import load_pipeline
from tlcache.step_records import identity

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "pipelines").glob("*.toml"))


def write_recipe(path: Path, steps: list[dict]) -> Path:
    """A recipe of ``[[step]]`` tables (JSON's scalars and arrays are TOML's too)."""
    lines = []
    for step in steps:
        lines += ["[[step]]", *(f"{key} = {json.dumps(value)}" for key, value in step.items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def text_steps(bert: Path, **changes: dict) -> list[dict]:
    """Embed train and test, fit a head, fine-tune, predict; ``changes`` override a named step's keys."""
    backbone = f"hf:{bert}"
    steps = [
        {"name": "train", "run": "embed", "source": "train.csv", "backbone": backbone, "out": "cache"},
        {"name": "test", "run": "embed", "source": "test.csv", "backbone": backbone, "out": "cache"},
        {"name": "probe", "run": "fit-head", "store": "@train", "test": "@test", "head": "logreg", "grid": [0.1, 1]},
        {"name": "ft", "run": "finetune", "source": "train.csv", "test": "test.csv", "backbone": backbone}
        | {"epochs": 1, "batch-size": 8, "precision": "fp32", "no-progress": True, "cache": "cache"},
        {"name": "labels", "run": "predict", "head": "@probe", "source": "test.csv", "cache-dir": "cache"},
    ]
    for step in steps:
        step.update(changes.get(step["name"], {}))
    return steps


@pytest.fixture
def texts(tmp_path):
    write_text_csv(tmp_path / "train.csv", n=40, seed=0)
    write_text_csv(tmp_path / "test.csv", n=20, seed=1)
    return tmp_path


def _outputs(folder: Path) -> dict[str, int]:
    """Modification time of every file a step wrote (the stores aside: embed reuses them by key)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted((folder / "runs").rglob("*"))}


def _ran(result) -> list[str]:
    """The steps that ran, by the command line each printed."""
    return [line.split(": tlcache ")[1].split()[0] for line in result.stdout.splitlines() if ": tlcache " in line]


def test_a_pipeline_runs_every_step_then_a_rerun_skips_them_all(texts, tiny_bert_dir):
    recipe = write_recipe(texts / "text.toml", text_steps(tiny_bert_dir))
    first = run("run", recipe)
    assert first.exit_code == 0, first.output
    assert _ran(first) == ["embed", "embed", "fit-head", "finetune", "predict"]
    assert first.stdout.splitlines()[-1].startswith(f"{recipe}: 5 steps, 5 run, 0 skipped")
    # The default out of each writing step, and a reference resolved to what the step it names wrote.
    assert (texts / "runs" / "text" / "probe" / "head.json").is_file()
    assert (texts / "runs" / "text" / "ft" / "body" / "model.safetensors").is_file()
    predictions = (texts / "runs" / "text" / "labels.csv").read_text().splitlines()
    assert len(predictions) == 21 and "tlcache predict runs/text/probe test.csv" in first.stdout
    written = _outputs(texts)

    second = run("run", recipe)
    assert second.exit_code == 0, second.output
    assert _ran(second) == ["embed", "embed"]  # an embed always looks its store up, and finds it
    assert second.stdout.count("skipped (cached)") == 2
    for name, kind in (("probe", "fit-head"), ("ft", "finetune"), ("labels", "predict")):
        assert f"({name}): {kind} skipped: done before with the same options and inputs -> runs/text/" in second.stdout
    assert second.stdout.splitlines()[-1].startswith(f"{recipe}: 5 steps, 0 run, 5 skipped")
    assert _outputs(texts) == written


def test_an_export_step_writes_the_model_a_predict_step_then_uses_and_a_rerun_skips_both(texts, tiny_bert_dir):
    """A recipe could fit a head but not export it (a new user's suggestion)."""
    pytest.importorskip("onnxruntime", reason="the [export] extra (make setup installs it)")
    steps = text_steps(tiny_bert_dir)[:3] + [
        {"name": "model", "run": "export", "run-dir": "@probe"},
        {"name": "labels", "run": "predict", "head": "@model", "source": "test.csv"},
        {"name": "direct", "run": "predict", "head": "@probe", "source": "test.csv", "cache-dir": "cache"},
    ]
    recipe = write_recipe(texts / "serve.toml", steps)
    first = run("run", recipe)
    assert first.exit_code == 0, first.output
    assert _ran(first) == ["embed", "embed", "fit-head", "export", "predict", "predict"]
    assert (texts / "runs" / "serve" / "model.onnx").is_file()  # the default out of an export step
    assert "tlcache predict runs/serve/model.onnx test.csv" in first.stdout
    exported, direct = ((texts / "runs" / "serve" / f"{name}.csv").read_text() for name in ("labels", "direct"))
    assert [line.split(",")[:2] for line in exported.splitlines()] == [
        line.split(",")[:2] for line in direct.splitlines()
    ]
    again = run("run", recipe)
    assert again.exit_code == 0, again.output
    assert _ran(again) == ["embed", "embed"] and "(model): export skipped: done before" in again.stdout
    bad = write_recipe(texts / "bad.toml", steps[:3] + [{"run": "export", "run-dir": "@train"}])
    assert_user_error(
        run("run", bad), "refers to step train, an embed step, whose output export cannot take as its run-dir"
    )


def test_an_export_or_a_report_drawn_again_in_a_step_folder_does_not_run_the_step_again(texts, tiny_bert_dir):
    """`tlcache export` writes its model into the run folder; the next `tlcache run` refitted the head, which
    removed the export (a new user's 87 MiB model, without a word), and so did `tlcache report`."""
    recipe = write_recipe(texts / "text.toml", text_steps(tiny_bert_dir))
    assert run("run", recipe).exit_code == 0
    probe = texts / "runs" / "text" / "probe"
    assert run("export", probe).exit_code == 0 and (probe / "model.onnx").is_file()
    assert run("report", probe).exit_code == 0
    again = run("run", recipe)
    assert again.exit_code == 0, again.output
    assert _ran(again) == ["embed", "embed"] and (probe / "model.onnx").is_file()
    (probe / "report.md").write_text("edited by hand\n")  # a file of the step's own, changed: the step runs again
    assert _ran(run("run", recipe)) == ["embed", "embed", "fit-head", "predict"]


def test_a_head_step_changed_between_one_head_and_all_leaves_no_results_of_the_other_beside_its_own(
    texts, tiny_bert_dir
):
    """A new user's step went from every head to svm alone: the old leaderboard and head folders stayed beside the
    new head, the leaderboard giving another accuracy than the folder's own report."""
    recipe = texts / "text.toml"
    every = text_steps(tiny_bert_dir, probe={"head": "all"})
    every[2].pop("grid")  # logreg's grid: not for every head
    assert run("run", write_recipe(recipe, every)).exit_code == 0
    probe = texts / "runs" / "text" / "probe"
    assert (probe / "leaderboard.json").is_file() and (probe / "knn" / "head.json").is_file()
    (probe / "notes.txt").write_text("mine\n")  # a file of the user's own: kept

    one = run("run", write_recipe(recipe, text_steps(tiny_bert_dir)))
    assert one.exit_code == 0, one.output
    assert "cleared" in one.stdout and "files of runs/text/probe: made before with other options" in one.stdout
    left = sorted(p.relative_to(probe).as_posix() for p in probe.rglob("*") if not p.name.startswith("."))
    assert "leaderboard.json" not in left and not any("/" in name for name in left), left  # no head folders
    assert "head.json" in left and "notes.txt" in left

    assert run("export", probe).exit_code == 0  # an export of the one head: stale once that head is removed
    back = run("run", write_recipe(recipe, every))
    assert back.exit_code == 0, back.output
    assert not (probe / "head.json").exists() and (probe / "leaderboard.json").is_file()
    assert not (probe / "model.onnx").exists() and (probe / "notes.txt").is_file()


def test_a_change_reruns_the_step_it_touches_and_the_steps_that_read_its_output(texts, tiny_bert_dir):
    recipe = texts / "text.toml"
    assert run("run", write_recipe(recipe, text_steps(tiny_bert_dir))).exit_code == 0
    head = texts / "runs" / "text" / "probe" / "head.json"
    before = head.stat().st_mtime_ns

    # an option of the last step: only that step
    changed = run("run", write_recipe(recipe, text_steps(tiny_bert_dir, labels={"batch-size": 4})))
    assert changed.exit_code == 0, changed.output
    assert _ran(changed) == ["embed", "embed", "predict"] and head.stat().st_mtime_ns == before

    # the head's seed and the fine-tune's epochs: those two, and the prediction made with the new head; the
    # fine-tune's finished folder is cleared first (finetune refuses to overwrite one)
    steps = text_steps(tiny_bert_dir, labels={"batch-size": 4}, probe={"seed": 1}, ft={"epochs": 2})
    changed = run("run", write_recipe(recipe, steps))
    assert changed.exit_code == 0, changed.output
    assert _ran(changed) == ["embed", "embed", "fit-head", "finetune", "predict"]
    assert "clearing runs/text/ft: made before with other options or inputs, or changed since" in changed.stdout
    report = json.loads((texts / "runs" / "text" / "ft" / "report.json").read_text())
    assert report["finetune"]["config"]["epochs"] == 2  # the new fine-tune, not the old one's folder

    # a half-written output (a file gone) and a changed input: those steps again
    (texts / "runs" / "text" / "probe" / "report.json").unlink()
    write_text_csv(texts / "test.csv", n=20, seed=2)  # a new test set: its store, the head, the fine-tune, predict
    again = run("run", recipe)
    assert again.exit_code == 0, again.output
    assert _ran(again) == ["embed", "embed", "fit-head", "finetune", "predict"]
    assert again.stdout.count("skipped (cached)") == 1
    assert (texts / "runs" / "text" / "probe" / "report.json").is_file()
    assert _ran(run("run", recipe)) == ["embed", "embed"]


def test_an_interrupted_step_runs_again(texts, tiny_bert_dir):
    recipe = write_recipe(texts / "text.toml", text_steps(tiny_bert_dir))
    assert run("run", recipe).exit_code == 0
    record = texts / "runs" / "text" / "probe" / ".tlcache-step.json"
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({**saved, "state": "running"}))  # as a run killed mid-step leaves it
    before = identity(record.parent)
    again = run("run", recipe)
    assert again.exit_code == 0, again.output
    # The step after it runs again exactly when the rerun changed what it reads: the run folder's bytes differ
    # (report.json's fit time, to 0.1 ms) unless the two fits took the same time to that precision.
    changed = identity(record.parent) != before
    assert _ran(again) == ["embed", "embed", "fit-head", *(["predict"] if changed else [])]


def test_step_runs_the_named_steps_and_the_steps_they_refer_to_only(texts, tiny_bert_dir):
    recipe = write_recipe(texts / "text.toml", text_steps(tiny_bert_dir))
    labels = run("run", recipe, "--step", "labels")  # predict reads @probe, which reads @train and @test
    assert labels.exit_code == 0, labels.output
    assert _ran(labels) == ["embed", "embed", "fit-head", "predict"] and not (texts / "runs" / "text" / "ft").exists()
    assert "step 5/5 (labels): tlcache predict" in labels.stdout
    assert labels.stdout.splitlines()[-1].startswith(f"{recipe}: 4 steps, 4 run, 0 skipped")
    ft = run("run", recipe, "--step", "ft", "--step", "probe")
    assert ft.exit_code == 0, ft.output
    assert _ran(ft) == ["embed", "embed", "finetune"]  # the probe was done: skipped
    assert "(probe): fit-head skipped: done before" in ft.stdout
    assert_user_error(run("run", recipe, "--step", "nope"), f"{recipe}: no step named 'nope'; its steps are train,")


def test_dry_run_says_what_would_run_and_runs_nothing(texts, tiny_bert_dir):
    recipe = write_recipe(texts / "text.toml", text_steps(tiny_bert_dir))
    planned = run("run", recipe, "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert not (texts / "runs").exists() and not (texts / "cache").exists()
    lines = planned.stdout.splitlines()
    assert lines[0].startswith("step 1/5 (train): embeds, or finds its store in the cache: tlcache embed train.csv")
    assert lines[2].startswith("step 3/5 (probe): runs: tlcache fit-head @train --test @test --head logreg")
    assert lines[-1] == f"dry run of {recipe}: 5 steps checked, nothing run"

    assert run("run", recipe).exit_code == 0
    planned = run("run", recipe, "--dry-run").stdout
    assert "(ft): skipped: done before with the same options and inputs -> runs/text/ft" in planned
    assert "(probe): skipped if the steps it refers to give the same outputs" in planned
    changed = run("run", write_recipe(recipe, text_steps(tiny_bert_dir, ft={"epochs": 2})), "--dry-run").stdout
    assert "(ft): runs: tlcache finetune train.csv" in changed
    # A step's output changed since: the dry run says it runs, as the run would (it said "skipped" for a truncated
    # head file, and the run then cleared and refitted it).
    head_file = next((texts / "runs" / "text" / "probe").glob("head-*.npz"))
    head_file.write_bytes(head_file.read_bytes()[:100])
    planned = run("run", write_recipe(recipe, text_steps(tiny_bert_dir)), "--dry-run").stdout
    assert "(probe): runs: tlcache fit-head @train" in planned and "(ft): skipped" in planned
    assert "(labels): skipped if the steps it refers to give the same outputs" in planned
    # A file the step reads itself changed, beside a reference: it runs (a new user's changed new.csv was "skipped
    # if the steps it refers to give the same outputs").
    with open(texts / "test.csv", "a", encoding="utf-8") as handle:
        handle.write("one more review,pos\n")
    planned = run("run", recipe, "--dry-run").stdout
    assert "(labels): runs: tlcache predict @probe test.csv" in planned


BAD = [
    ({"probe": {"run": "fit"}}, "step 3 (probe): unknown step 'fit'; give run = one of embed, fit-head"),
    ({"probe": {"tset": "@test"}}, "step 3 (probe): unknown key 'tset' for fit-head; did you mean 'test'?"),
    ({"ft": {"b": "minilm"}}, "step 4 (ft): unknown key 'b' for finetune; see tlcache finetune --help"),
    ({"probe": {"head": "forest"}}, "step 3 (probe): Invalid value for '--head': 'forest' is not one of"),
    ({"probe": {"grid": "x,1"}}, "step 3 (probe): --grid 'x,1' is not a comma-separated list of numbers"),
    ({"ft": {"no-progress": "yes"}}, "step 4 (ft): no-progress is a switch; give no-progress = true or false"),
    ({"labels": {"head": "@prob"}}, "step 5 (labels): head = '@prob' refers to no earlier step"),
    ({"probe": {"store": "@labels"}}, "step 3 (probe): store = '@labels' refers to no earlier step"),
    ({"ft": {"test": "tset.csv"}}, "step 4 (ft): test tset.csv does not exist (paths are relative to the current"),
    ({"labels": {"name": "probe"}}, "step 5 (probe): another step is named 'probe' already"),
    # values a new user's recipes passed --dry-run with, failing only when their step ran
    ({"probe": {"test-fraction": 1.5}}, "step 3 (probe): --test-fraction 1.5 must be between 0 and 1 (exclusive)"),
    ({"train": {"backbone": "minlm"}}, "step 1 (train): unknown backbone 'minlm'; did you mean 'minilm'?"),
    ({"labels": {"head": "@train"}}, "step 5 (labels): head = '@train' refers to step train, an embed step"),
    ({"ft": {"backbone": "finetuned:@probe"}}, "step 4 (ft): backbone = 'finetuned:@probe' refers to step probe"),
]


@pytest.mark.parametrize("changes, message", BAD)
def test_a_bad_recipe_stops_in_one_line_before_any_step_runs(texts, tiny_bert_dir, changes, message):
    recipe = write_recipe(texts / "bad.toml", text_steps(tiny_bert_dir, **changes))
    result = run("run", recipe)
    assert_user_error(result, f"{recipe}: {message}")
    assert result.stdout == "" and not (texts / "cache").exists() and not (texts / "runs").exists()


def test_a_recipe_that_is_not_one_is_refused_in_one_line(texts):
    assert_user_error(run("run", "missing.toml"), "missing.toml: no such recipe")
    (texts / "broken.toml").write_text("[[step]\nrun = 'embed'\n")
    assert_user_error(run("run", "broken.toml"), "broken.toml: not valid TOML")
    (texts / "empty.toml").write_text("steps = 1\n")
    assert_user_error(run("run", "empty.toml"), "empty.toml: unknown key 'steps' at the top")
    (texts / "none.toml").write_text("[[step]]\nsource = 'train.csv'\n")
    assert_user_error(run("run", "none.toml"), "none.toml: step 1: no run key; give run = one of embed")
    (texts / "args.toml").write_text("[[step]]\nrun = 'predict'\nsource = 'train.csv'\n")
    assert_user_error(run("run", "args.toml"), "args.toml: step 1 (predict): predict needs head (its HEAD argument)")


def test_a_step_that_fails_stops_the_run_in_one_line_naming_it(texts, tiny_bert_dir):
    # train.csv has no column "review": only the command itself can tell, when the step runs
    recipe = write_recipe(texts / "text.toml", text_steps(tiny_bert_dir, test={"text-column": "review"}))
    result = run("run", recipe)
    assert_user_error(result, f"{recipe}: step 2 (test): ")
    assert "review" in result.stderr and "(probe)" not in result.stdout


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_is_valid_and_reads_the_data_the_set_up_writes(recipe):
    steps = load_pipeline(recipe, check_inputs=False)  # every step, key and value known to the real commands
    assert steps
    # Where `make demo` (pipelines/demo.py) and `make pipeline-data` (the Makefile) write the data, and what.
    demo, makefile = (ROOT / "pipelines" / "demo.py").read_text(), (ROOT / "Makefile").read_text()
    written = {"rotten_tomatoes": ("train.csv", "test.csv"), "mnist5k": ("train", "test")}
    assert all(f'OUT / "data" / "{dataset}"' in demo for dataset in written)
    written["fashion-mnist"] = ("train", "test")
    assert "fashion_mnist('demo-output/data/fashion-mnist')" in makefile
    for step in steps:
        for key in ("source", "test"):
            value = step.values.get(key)
            if value is None or value.startswith("@"):
                continue
            dataset, _, name = value.removeprefix("demo-output/data/").partition("/")
            assert value.startswith("demo-output/data/") and name in written.get(dataset, ()), (
                f"{recipe.name}: step {step.number} reads {value}, which the set-up does not write"
            )


def test_the_shipped_recipes_cover_the_datasets_and_commands():
    assert {p.stem for p in SHIPPED} >= {"rotten-tomatoes", "rotten-tomatoes-few-shot", "mnist-5k", "fashion-mnist"}
    kinds = {step.kind for recipe in SHIPPED for step in load_pipeline(recipe, check_inputs=False)}
    assert kinds == {"embed", "fit-head", "finetune", "compare", "predict"}


def test_a_reference_to_all_heads_is_the_head_best_on_validation_items_not_on_test_items(tmp_path):
    from tlcache.pipeline import _output_of
    from tlcache.runs import HeadRun

    def run_of(head, test, validation):
        report = {"head": head, "metrics": {"accuracy": test}, "sweep": {"validation_accuracy": validation}}
        return HeadRun(tmp_path / head, report)

    best_on_test_first = [run_of("mlp", 0.90, 0.80), run_of("svm", 0.85, 0.84), run_of("logreg", 0.84, 0.84)]
    # svm and logreg tie on validation: the tie goes to HEADS's order (logreg), not to the better test score (svm)
    assert _output_of(best_on_test_first, tmp_path / "unused") == tmp_path / "logreg"


def test_a_tampered_step_record_clears_nothing_outside_its_output(tmp_path):
    from tlcache.step_records import RECORD_NAME, StepRecord

    out = tmp_path / "runs" / "probe"
    out.mkdir(parents=True)
    (out / "report.json").write_text("{}")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    wrote = ["report.json", "../../precious.txt", str(outside)]
    (out / RECORD_NAME).write_text(json.dumps({"format": 2, "wrote": wrote}))
    removed = StepRecord("fit-head", out, [], {}).clear_previous()
    assert removed == [(out / "report.json").resolve()] and outside.read_text() == "keep me\n"
