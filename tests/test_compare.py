"""`compare` on a tiny BERT: every cell and its report, the same test items for every method, resuming a killed
comparison without recomputing a finished cell, and refusing another comparison's folder."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_text_csv
from tlcache.cli.options import human_size
from tlcache.compare import compare
from tlcache.compare import run as compare_run
from tlcache.compare.cells import CELLS_DIR
from tlcache.errors import UserError
from tlcache.finetune.config import FinetuneConfig
from tlcache.store import FeatureStore

FAST = FinetuneConfig(epochs=1, batch_size=8, precision="fp32", lr=1e-3, head_lr=1e-2, patience=0, val_fraction=0.25)


def _run(tmp_path, bert, **overrides):
    options = dict(
        test=tmp_path / "test.csv",
        backbone=f"hf:{bert}",
        heads=("logreg", "knn"),
        finetunes=("ft", "lp-ft"),
        shots=(4, "all"),
        repeats=2,
        out=tmp_path / "cmp",
        cache=tmp_path / "cache",
        finetune_config=FAST,
        precision="fp32",
        progress=False,
    )
    return compare(tmp_path / "train.csv", **{**options, **overrides})


@pytest.fixture
def texts(tmp_path):
    write_text_csv(tmp_path / "train.csv", n=40)
    write_text_csv(tmp_path / "test.csv", n=20, seed=1)
    return tmp_path


def test_every_cell_row_and_plot_that_compare_promises(texts, tiny_bert_dir):
    result = _run(texts, tiny_bert_dir)
    assert result.ran == 16 == len(result.cells)  # 4 methods x 2 shot counts x 2 seeds
    for cell in result.cells:
        assert len(cell["correct"]) == 20 and cell["accuracy"] == pytest.approx(np.mean(cell["correct"]))
        assert cell["cached"] == (cell["kind"] == "frozen")
        assert 0.0 <= cell["validation_accuracy"] <= 1.0  # what picks the best of its kind, never the test items
    # the seed draws the training items: 4 per class differ between seeds, "all" does not
    summary = json.loads((texts / "cmp" / "compare.json").read_text())
    rows = {(row["method"], row["shots"]): row for row in summary["rows"]}
    assert set(rows) == {(m, s) for m in ("logreg", "knn", "ft", "lp-ft") for s in (4, "all")}
    for row in rows.values():
        low, high = row["interval"]
        assert low <= row["accuracy"] <= high and row["seeds"] == [0, 1]
        seeds = [c["accuracy"] for c in result.cells if (c["method"], c["shots"]) == (row["method"], row["shots"])]
        assert row["accuracy_std"] == pytest.approx(np.std(seeds, ddof=1))  # of 2 seeds: a sample's spread
    advice = summary["recommendation"]
    assert [row["shots"] for row in advice["by_shots"]] == [4, "all"]
    assert all(row["chosen_on"] == "validation" for row in advice["by_shots"])
    assert all(row["verdict"] in ("finetune", "frozen", "level") for row in advice["by_shots"])
    markdown = (texts / "cmp" / "compare.md").read_text()
    assert advice["headline"] in markdown and "| lp-ft | finetune | 4 |" in markdown
    # The floor every method must clear: the training items' most frequent class (a tie: the first), on the test.
    train_labels, test_labels = (pd.read_csv(texts / name)["label"] for name in ("train.csv", "test.csv"))
    counts = train_labels.value_counts()
    majority = summary["majority"]
    assert majority["class"] == min(counts[counts == counts.max()].index)  # "neg" before "pos", as class indices
    assert majority["accuracy"] == pytest.approx(np.mean(test_labels == majority["class"]))
    assert f"scores {majority['accuracy']:.4f} on the test items" in markdown
    for figure in ("learning_curve.png", "accuracy_time.png"):
        assert (texts / "cmp" / figure).stat().st_size > 5000
    assert (texts / "cmp" / "finetunes" / "ft-all-seed1" / "predictions.csv").exists()
    # One epoch each: every fine-tune was best at its last epoch, and the report says they may not be done.
    tuned = [cell for cell in result.cells if cell["kind"] == "finetune"]
    assert all(cell["best_epoch"] == cell["epochs_run"] == 1 for cell in tuned)
    assert rows[("ft", "all")]["still_rising"] == 2 and rows[("logreg", "all")]["still_rising"] == 0
    assert "Still improving" in markdown and "ft at all (2 of 2 seeds)" in markdown
    # At 4 per class a fine-tune chooses its epoch on 2 validation items (one per class): said; with all, 10 items.
    assert (rows[("ft", 4)]["val_items"], rows[("ft", "all")]["val_items"], rows[("logreg", 4)]["val_items"]) == (
        2,
        10,
        None,
    )
    assert "Few validation items: the fine-tunes chose their epoch at 4 per class on 2 validation items" in markdown
    assert "fine-tune - frozen (points)" in markdown  # which side is taken from which


def test_a_fine_tune_that_stopped_improving_before_its_last_epoch_is_not_flagged(texts, tiny_bert_dir):
    from dataclasses import replace

    result = _run(
        texts,
        tiny_bert_dir,
        finetunes=("ft",),
        heads=("logreg",),
        shots=("all",),
        repeats=1,
        finetune_config=replace(FAST, epochs=3, lr=1e-1, head_lr=1.0, patience=1),
    )
    (cell,) = [cell for cell in result.cells if cell["kind"] == "finetune"]
    report = json.loads((texts / "cmp" / "finetunes" / "ft-all-seed0" / "report.json").read_text())
    assert (cell["best_epoch"], cell["epochs_run"]) == (
        report["finetune"]["best_epoch"],
        report["finetune"]["epochs_run"],
    )
    assert cell["best_epoch"] < cell["epochs_run"]  # a step this large overshoots after the first epoch: it stopped
    assert result.summary["rows"][-1]["still_rising"] == 0
    assert "Still improving" not in (texts / "cmp" / "compare.md").read_text()


def test_a_killed_compare_resumes_without_recomputing_a_finished_cell(texts, tiny_bert_dir, monkeypatch):
    executed, killed = [], []
    frozen, tuned = compare_run._frozen_cell, compare_run._finetune_cell

    def counting(real):
        def run(data, key, *args, **kwargs):
            executed.append(key.name)
            if key.name == "ft-all-seed0" and not killed:
                killed.append(key.name)
                raise KeyboardInterrupt  # the user stops the comparison in the middle of this cell
            return real(data, key, *args, **kwargs)

        return run

    monkeypatch.setattr(compare_run, "_frozen_cell", counting(frozen))
    monkeypatch.setattr(compare_run, "_finetune_cell", counting(tuned))
    options = dict(heads=("logreg",), finetunes=("ft",), shots=("all",), repeats=2)
    with pytest.raises(KeyboardInterrupt):
        _run(texts, tiny_bert_dir, **options)
    assert executed == ["logreg-all-seed0", "logreg-all-seed1", "ft-all-seed0"]  # the frozen cells run first
    cells = sorted(p.name for p in (texts / "cmp" / CELLS_DIR).iterdir())
    assert cells == ["logreg-all-seed0.json", "logreg-all-seed1.json"]

    executed.clear()
    result = _run(texts, tiny_bert_dir, **options)
    assert executed == ["ft-all-seed0", "ft-all-seed1"] and result.ran == 2
    # adding a shot count runs only its cells; running again runs nothing
    executed.clear()
    result = _run(texts, tiny_bert_dir, **{**options, "shots": (4, "all")})
    assert sorted(executed) == ["ft-4-seed0", "ft-4-seed1", "logreg-4-seed0", "logreg-4-seed1"]
    executed.clear()
    assert _run(texts, tiny_bert_dir, **options).ran == 0 and executed == []


def test_more_shots_than_the_smallest_class_is_refused_before_any_cell(texts, tiny_bert_dir):
    with pytest.raises(UserError, match="smallest class has 20 training items, fewer than --shots 21"):
        _run(texts, tiny_bert_dir, shots=(4, 21, "all"))
    assert not (texts / "cmp" / CELLS_DIR).exists()


def test_the_default_counts_above_the_smallest_class_are_left_out_with_a_warning(texts, tiny_bert_dir):
    with pytest.warns(UserWarning, match="smallest class has 20 training items, so the default --shots 64 are left"):
        result = _run(texts, tiny_bert_dir, shots=None, heads=("logreg",), finetunes=(), repeats=1)
    assert sorted({cell["shots"] for cell in result.cells}, key=str) == [16, 4, "all"]


def test_a_fine_tune_killed_after_its_run_but_before_its_cell_was_saved_runs_again(texts, tiny_bert_dir):
    options = dict(heads=(), finetunes=("ft",), shots=("all",), repeats=1)
    first = _run(texts, tiny_bert_dir, **options)
    (texts / "cmp" / CELLS_DIR / "ft-all-seed0.json").unlink()  # as a kill -9 between the two leaves it
    again = _run(texts, tiny_bert_dir, **options)
    assert again.ran == 1 and again.cells[0]["correct"] == first.cells[0]["correct"]


def test_a_folder_of_another_comparison_is_refused_naming_what_differs(texts, tiny_bert_dir):
    options = dict(heads=("logreg",), finetunes=("ft",), shots=("all",), repeats=1)
    _run(texts, tiny_bert_dir, **options)
    with pytest.raises(UserError, match=r"logreg-all-seed0.json: finetune.epochs differs\); use another --out"):
        _run(texts, tiny_bert_dir, **options, finetune_config=dataclasses.replace(FAST, epochs=FAST.epochs + 1))
    write_text_csv(texts / "train.csv", n=44)  # other training data, the same --out
    with pytest.raises(UserError, match="another --out"):
        _run(texts, tiny_bert_dir, **options)


def test_a_frozen_cell_saved_without_its_validation_accuracy_runs_again(texts, tiny_bert_dir):
    options = dict(heads=("logreg",), finetunes=(), shots=("all",), repeats=1)
    _run(texts, tiny_bert_dir, **options)
    path = texts / "cmp" / "cells" / "logreg-all-seed0.json"
    record = json.loads(path.read_text())
    del record["result"]["validation_accuracy"]  # as an older tlcache saved it
    path.write_text(json.dumps(record))
    result = _run(texts, tiny_bert_dir, **options)
    assert result.ran == 1 and "validation_accuracy" in json.loads(path.read_text())["result"]
    assert "| one seed |" in (texts / "cmp" / "compare.md").read_text()  # no spread of 0 for one seed


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda result: result.update(accuracy=0.99), r"accuracy 0.99 where its per-item results give \d\.\d{4}"),
        (lambda result: result.update(correct=[1 - c for c in result["correct"]]), "accuracy .* where its per-item"),
        (lambda result: result.update(correct=result["correct"][:-1]), "19 per-item results for 20 test items"),
        (lambda result: result.update(correct=[2] * len(result["correct"])), "per-item results other than 0 and 1"),
        (lambda result: result.update(validation_accuracy=1.5), "validation_accuracy 1.5 outside 0..1"),
        (lambda result: result.pop("correct"), "no per-item results"),
    ],
)
def test_an_edited_cell_is_refused_in_one_line_not_reported(texts, tiny_bert_dir, edit, message):
    # A helper edited one cell's accuracy to 0.99, another's per-item results to all correct: compare.md showed a
    # mean outside its own interval and built its headline on them.
    options = dict(heads=("logreg",), finetunes=(), shots=("all",), repeats=1)
    _run(texts, tiny_bert_dir, **options)
    path = texts / "cmp" / "cells" / "logreg-all-seed0.json"
    record = json.loads(path.read_text())
    edit(record["result"])
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match=f"logreg-all-seed0.json does not agree with itself \\({message}.*delete it"):
        _run(texts, tiny_bert_dir, **options)
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a readable cell"):
        _run(texts, tiny_bert_dir, **options)
    path.unlink()  # as the message says: the cell runs again
    assert _run(texts, tiny_bert_dir, **options).ran == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"heads": ("sgd",)}, "--heads"),
        ({"finetunes": ("full",)}, "--finetune"),
        ({"shots": (0,)}, "--shots 0"),
        ({"repeats": 0}, "--repeats 0"),
        ({"heads": (), "finetunes": ()}, "needs a method"),
        ({"shots": (1, "all")}, "a fine-tune needs 2 or more items per class"),
    ],
)
def test_bad_requests_get_one_line_before_any_work(texts, tiny_bert_dir, overrides, message):
    with pytest.raises(UserError, match=message):
        _run(texts, tiny_bert_dir, **overrides)
    assert not (texts / "cache").exists()


def test_an_unlabelled_test_source_is_refused_before_any_work(texts, tiny_bert_dir):
    (texts / "unlabelled.csv").write_text("id,text\n1,a film\n2,another film\n", encoding="utf-8")
    with pytest.raises(UserError, match="holds no labelled items"):
        _run(texts, tiny_bert_dir, test=texts / "unlabelled.csv")
    assert not (texts / "cache").exists()


def test_a_method_or_count_named_twice_runs_once(texts, tiny_bert_dir):
    result = _run(texts, tiny_bert_dir, heads=("logreg", "logreg"), finetunes=(), shots=(4, 4, "all"), repeats=1)
    assert sorted((cell["method"], str(cell["shots"])) for cell in result.cells) == [("logreg", "4"), ("logreg", "all")]


# The command line: each option's effect (listed in test_cli_effects.OPTION_TESTS).

SETTINGS = {  # every fine-tune setting of `tlcache compare`, away from its default: (as typed, as recorded)
    "--strategy": ("top-1", "top-1"),
    "--epochs": ("2", 2),
    "--head-epochs": ("1", 1),
    "--lr": ("0.002", 0.002),
    "--head-lr": ("0.003", 0.003),
    "--layer-decay": ("0.9", 0.9),
    "--warmup": ("0.2", 0.2),
    "--weight-decay": ("0.02", 0.02),
    "--clip": ("0.5", 0.5),
    "--batch-size": ("4", 4),
    "--accumulate": ("2", 2),
    "--augment": ("flip", ["flip"]),
    "--label-smoothing": ("0.1", 0.1),
    "--val-fraction": ("0.3", 0.3),
    "--patience": ("1", 1),
    "--norm-stats": ("train", "train"),
    "--precision": ("fp32", "fp32"),
}


def test_compare_command_runs_the_cells_its_options_name(texts, tiny_bert_dir):
    from test_cli import run

    settings = [part for option, (typed, _) in SETTINGS.items() for part in (option, typed)]
    arguments = ["train.csv", "--test", "test.csv", "-b", f"hf:{tiny_bert_dir}", "--heads", "logreg,knn"]
    arguments += ["--finetune", "ft", "--shots", "4,all", "--repeats", "2", "--out", "cmp", "--cache", "features"]
    result = run("compare", *arguments, "--device", "cpu", *settings, "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ran"] == 12 and "accuracy" not in result.stderr  # 3 methods x 2 shot counts x 2 seeds
    assert {(row["method"], row["shots"]) for row in payload["rows"]} == {
        (m, s) for m in ("logreg", "knn", "ft") for s in (4, "all")
    }
    assert all(row["seeds"] == [0, 1] for row in payload["rows"])
    assert sorted(p.suffix for p in (texts / "features").glob("*.h5")) == [".h5", ".h5"]
    assert {FeatureStore(p).meta["precision"] for p in (texts / "features").glob("*.h5")} == {"fp32"}
    report = json.loads((texts / "cmp" / "finetunes" / "ft-4-seed1" / "report.json").read_text())
    config = report["finetune"]["config"]
    assert report["finetune"]["device"] == "cpu" and config["seed"] == 1 and config["lp_ft"] is False
    assert {option: config[option[2:].replace("-", "_")] for option in SETTINGS} == {
        option: recorded for option, (_, recorded) in SETTINGS.items()
    }


def test_compare_command_reads_named_columns_and_holds_out_a_fraction(tmp_path, tiny_bert_dir):
    from test_cli_effects import write_table

    from test_cli import run

    write_table(tmp_path / "table.csv", n=40)
    columns = ["--text-column", "review", "--label-column", "stars", "--id-column", "uid", "--group-column", "region"]
    arguments = ["table.csv", "-b", f"hf:{tiny_bert_dir}", "--heads", "logreg", "--finetune", "ft", "--shots", "all"]
    arguments += ["--repeats", "1", "--test-fraction", "0.25", "--epochs", "1", "--precision", "fp32"]
    result = run("compare", *arguments, *columns)
    assert result.exit_code == 0, result.output
    assert "ft-all-seed0: accuracy" in result.stdout and "cells run, 0 reused" in result.stdout
    assert "still improving at their last epoch (ft at all (1 of 1 seeds))" in result.stdout  # one epoch only
    held = sum(f.stat().st_size for f in (tmp_path / "runs" / "compare-table" / "finetunes").rglob("*") if f.is_file())
    assert (
        held > 0 and f"the fine-tuned models take {human_size(held)} in runs/compare-table/finetunes" in result.stdout
    )
    summary = json.loads((tmp_path / "runs" / "compare-table" / "compare.json").read_text())
    assert summary["n_test"] == 10 and summary["classes"] == ["neg", "pos"]
    again = run("report", "runs/compare-table")  # not a run folder: where its report is, and how to write it again
    assert again.exit_code == 2 and "is a comparison's folder: its report is compare.md" in again.stderr
    tested = (tmp_path / "runs" / "compare-table" / "finetunes" / "ft-all-seed0" / "predictions.csv").read_text()
    assert tested.splitlines()[1].startswith("u0")  # the ids of --id-column
    stores = [FeatureStore(p) for p in (tmp_path / "tlcache-home").glob("*.h5")]
    assert {s.meta["source_options"]["group_column"] for s in stores} == {"region"}


def test_compare_command_on_images_with_backbone_options(tmp_path, resnet18_weights):
    from conftest import write_image_folder
    from test_cli import run

    write_image_folder(tmp_path / "shapes", per_class=10)
    arguments = ["shapes", "-b", "torchvision:resnet18", "--weights", resnet18_weights, "--image-size", "32"]
    arguments += ["--crop-ratio", "1", "--heads", "logreg", "--finetune", "ft", "--shots", "all", "--repeats", "1"]
    arguments += ["--epochs", "1", "--mixup", "0.2", "--precision", "fp32", "--no-progress"]
    result = run("compare", *arguments)
    assert result.exit_code == 0, result.output
    store = FeatureStore(next((tmp_path / "tlcache-home").glob("*.h5")))
    preprocessing = store.meta["preprocessing"]
    assert (preprocessing["crop_ratio"], preprocessing["resize_shorter"], preprocessing["center_crop"]) == (1.0, 32, 32)
    assert store.meta["backbone_spec"]["weights"] == str(resnet18_weights)
    report = json.loads(
        (tmp_path / "runs" / "compare-shapes" / "finetunes" / "ft-all-seed0" / "report.json").read_text()
    )
    assert report["finetune"]["config"]["mixup"] == 0.2


def test_compare_command_takes_a_layer_and_pooling_for_the_frozen_features(texts, tiny_bert_dir):
    from test_cli import run

    arguments = ["train.csv", "--test", "test.csv", "-b", f"hf:{tiny_bert_dir}", "--layer", "-2", "--pool", "cls"]
    result = run("compare", *arguments, "--heads", "logreg", "--finetune", "none", "--shots", "all", "--repeats", "1")
    assert result.exit_code == 0, result.output
    stores = [FeatureStore(p) for p in (texts / "tlcache-home").glob("*.h5")]
    assert {(s.meta["layer"], s.meta["pooling"]) for s in stores} == {("-2", "cls")}


def test_compare_command_refuses_bad_shots_in_one_line(texts):
    from test_cli import assert_user_error, run

    assert_user_error(run("compare", "train.csv", "--shots", "4,many"), "--shots many is not a count")


class _Clock:
    """A wall clock the test moves: each fine-tune cell "takes" 10 s with 4 items per class, 40 s with all."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_a_budget_leaves_out_the_fine_tunes_that_would_not_fit_and_a_rerun_adds_them(texts, tiny_bert_dir, monkeypatch):
    from tlcache.compare import plan

    clock = _Clock()
    monkeypatch.setattr(plan, "time", clock)
    tuned = compare_run._finetune_cell

    def timed(data, key, *args):
        clock.now += 10.0 if key.shots == 4 else 40.0
        return tuned(data, key, *args)

    monkeypatch.setattr(compare_run, "_finetune_cell", timed)
    # The probe says 1 s per training item and no fixed cost: with 1 epoch and a validation fraction of 0.25, a
    # fine-tune of 8 items is estimated at 8 x (1 + 0.25 / 3) + 20 test items / 3 = 15.3 s, of all 40 at 50 s.
    probes = []
    monkeypatch.setattr(compare_run, "_probe_finetune", lambda *args: probes.append(args) or (0.0, 1.0))
    options = dict(heads=("logreg",), finetunes=("ft",), shots=(4, "all"), repeats=2)
    result = _run(texts, tiny_bert_dir, budget=55, **options)
    # At the probe's rate seed 0's all-items cell (50 s) would not fit after its 4-item one (10 s); measured at
    # 10 s for 15.3 item passes, it is estimated at 33 s and runs. Then 50 s are spent: seed 1's cells, at the
    # highest measured rate (40 s / 50), would end at 62 s and 90 s.
    left_out = [(c["method"], c["shots"], c["seed"]) for c in result.summary["budget"]["left_out"]]
    assert left_out == [("ft", 4, 1), ("ft", "all", 1)]
    assert result.ran == 6 and [c["shots"] for c in result.cells if c["kind"] == "finetune"] == [4, "all"]
    assert "Left out to stay within the budget of 55 s: ft at 4, seed 1" in (texts / "cmp" / "compare.md").read_text()
    # a rerun with time enough runs only the cells left out, planned on the probe's kept rates (it took half a minute
    # of every budgeted rerun)
    assert _run(texts, tiny_bert_dir, budget=1000, **options).ran == 2 and len(probes) == 1


def test_plan_lines_say_what_runs_and_what_is_left_out():
    from tlcache.compare.cells import CellKey
    from tlcache.compare.plan import Budget, finetune_order, plan_lines

    keys = [CellKey("ft", "finetune", shots, seed) for shots in (4, "all") for seed in (0, 1)]
    assert [k.name for k in finetune_order(keys)] == ["ft-4-seed0", "ft-all-seed0", "ft-4-seed1", "ft-all-seed1"]
    lines = plan_lines([(key, 40.0) for key in finetune_order(keys)], Budget(100))
    assert lines[0].startswith("plan: 2 of 4 fine-tune cells fit the budget of 100 s")
    assert lines[1:] == [
        "  leaves out ft-4-seed1 (about 40 s)",
        "  leaves out ft-all-seed1 (about 40 s)",
        "  a --budget of about 160 s would fit every fine-tune cell",  # for a rerun, which reuses finished cells
        "  (each cell is estimated again as the cells before it end: one left out here may still run)",
    ]
    assert "s spent on embedding, the frozen cells and the probe" in lines[0]
    assert plan_lines([(keys[0], 40.0)], Budget(None)) == ["plan: 1 fine-tune cells, about 40 s (no --budget)"]


def test_the_probe_rate_follows_the_slope_but_not_below_a_floor_noise_cannot_cross():
    from tlcache.compare.plan import probe_rates

    # Idle: 5 s for 20 item passes, 8 s for 60: 0.075 s a pass and 3.5 s fixed, above the floor (0.1 * 8 / 60).
    fixed, per_item = probe_rates(20, 5.0, 60, 8.0)
    assert per_item == pytest.approx(0.075) and fixed == pytest.approx(3.5)
    # Busy: the larger run barely longer than the smaller one; the slope (0.0025) would promise a fine-tune of
    # 6000 passes in 20 s. The floor keeps it at a tenth of the larger run's own rate: 6000 passes in 80+ s.
    fixed, per_item = probe_rates(20, 8.0, 60, 8.1)
    assert per_item == pytest.approx(0.1 * 8.1 / 60)
    assert fixed + 6000 * per_item > 80


def test_compare_command_keeps_to_a_budget_and_refuses_a_bad_one(texts, tiny_bert_dir, monkeypatch):
    from test_cli import assert_user_error, run
    from tlcache.compare import plan

    clock, tuned = _Clock(), compare_run._finetune_cell

    def timed(data, key, *args):  # every fine-tune "takes" 40 s
        clock.now += 40.0
        return tuned(data, key, *args)

    monkeypatch.setattr(plan, "time", clock)
    monkeypatch.setattr(compare_run, "_finetune_cell", timed)
    monkeypatch.setattr(compare_run, "_probe_finetune", lambda *args: (0.0, 1.0))
    arguments = ["train.csv", "--test", "test.csv", "-b", f"hf:{tiny_bert_dir}", "--heads", "logreg"]
    arguments += ["--finetune", "ft", "--shots", "4,all", "--repeats", "2", "--epochs", "1", "--val-fraction", "0.25"]
    # --no-progress hides the cells' lines, not the plan: what the budget decided is said before the fine-tunes.
    result = run("compare", *arguments, "--precision", "fp32", "--budget", "50s", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "plan: 2 of 4 fine-tune cells fit the budget of 50 s" in result.stdout
    assert "accuracy" not in result.stdout.split("plan:")[0]  # no cell's line
    assert "5 cells run, 0 reused, 3 left out to stay within --budget" in result.stdout
    assert_user_error(run("compare", *arguments, "--budget", "soon"), "--budget soon is not a duration")


def test_each_frozen_cell_chooses_its_features_on_validation_items_only(tmp_path):
    from conftest import make_store
    from tlcache.compare.features import Candidate, choose

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    informative = rng.normal(size=(60, 5)) + 3.0 * np.eye(3, 5)[y]
    noise = rng.normal(size=(60, 5))
    stores = {
        name: make_store(tmp_path / f"{name}.h5", X, y, ["a", "b", "c"])
        for name, X in (("noise", noise), ("informative", informative))
    }
    candidates = [Candidate(name, FeatureStore(path), FeatureStore(path)) for name, path in stores.items()]
    rows = np.arange(60)
    chosen, scores = choose(candidates, "logreg", 0, rows, y)
    assert chosen.name == "informative" and scores["informative"] > scores["noise"] + 0.3
    assert set(scores) == {"noise", "informative"}
    twins = [
        Candidate("first", candidates[1].train, candidates[1].test),
        Candidate("second", *[candidates[1].train] * 2),
    ]
    assert choose(twins, "logreg", 0, rows, y)[0].name == "first"  # equal scores: the first listed
    assert choose(candidates, "logreg", 0, np.array([0, 20, 40]), y) == (candidates[0], None)  # nothing to hold out


def test_compare_layers_records_each_cells_choice_and_a_new_list_reruns_only_frozen_cells(texts, tiny_bert_dir):
    first = _run(texts, tiny_bert_dir, layers=("default", "-2:cls"), finetunes=("ft",), shots=("all",), repeats=1)
    frozen = [cell for cell in first.cells if cell["kind"] == "frozen"]
    assert all(
        cell["features"] in ("default", "-2:cls") and set(cell["feature_scores"]) == {"default", "-2:cls"}
        for cell in frozen
    )
    assert "Features the frozen cells chose" in (texts / "cmp" / "compare.md").read_text()
    stores = {(s.meta["layer"], s.meta["pooling"]) for s in map(FeatureStore, (texts / "cache").glob("*.h5"))}
    assert ("-2", "cls") in stores
    again = _run(texts, tiny_bert_dir, layers=("default", "-2:cls"), finetunes=("ft",), shots=("all",), repeats=1)
    assert again.ran == 0
    other = _run(texts, tiny_bert_dir, layers=("default", "-3:mean"), finetunes=("ft",), shots=("all",), repeats=1)
    assert other.ran == len(frozen)  # the fine-tune cell does not depend on the frozen heads' candidates
    with pytest.raises(UserError, match="LAYER:POOL"):
        _run(texts, tiny_bert_dir, layers=("-2:sideways",))
    with pytest.raises(UserError, match="give --layer and --pool there"):
        _run(texts, tiny_bert_dir, layers=("default",), layer="-2")


def test_compare_command_layers_option(texts, tiny_bert_dir):
    from test_cli import run

    arguments = ["train.csv", "--test", "test.csv", "-b", f"hf:{tiny_bert_dir}", "--layers", "default,-2:cls"]
    result = run("compare", *arguments, "--heads", "logreg", "--finetune", "none", "--shots", "all", "--repeats", "1")
    assert result.exit_code == 0, result.output
    [row] = json.loads((texts / "runs" / "compare-train" / "compare.json").read_text())["rows"]
    assert sum(row["features"].values()) == 1 and set(row["features"]) <= {"default", "-2:cls"}
    bad = run("compare", *arguments[:-1], "-2:sideways", "--finetune", "none")
    assert bad.exit_code == 2 and "LAYER:POOL" in bad.stderr


def test_several_backbones_are_candidates_for_the_frozen_heads_and_the_first_is_fine_tuned(
    texts, tiny_bert_dir, tmp_path_factory
):
    from tiny_models import save_tiny_bert

    other = save_tiny_bert(tmp_path_factory.mktemp("other-bert"), seed=1)
    result = _run(
        texts, tiny_bert_dir, backbone=f"hf:{tiny_bert_dir},hf:{other}", finetunes=("ft",), shots=("all",), repeats=1
    )
    frozen = [cell for cell in result.cells if cell["kind"] == "frozen"]
    assert all(set(cell["feature_scores"]) == {"default", f"hf:{other}"} for cell in frozen)
    tuned = json.loads((texts / "cmp" / "finetunes" / "ft-all-seed0" / "report.json").read_text())
    assert tuned["backbone"] == f"hf:{tiny_bert_dir}"  # the fine-tune trains the first
    assert result.summary["backbone"] == f"hf:{tiny_bert_dir}"
    with pytest.raises(UserError, match="a backbone twice"):
        _run(texts, tiny_bert_dir, backbone=f"hf:{tiny_bert_dir},hf:{other},hf:{other}", out=texts / "cmp2")


def test_layers_auto_takes_the_backbones_own_candidates(texts, tiny_bert_dir, resnet18_weights):
    from tlcache.backbones import create_backbone

    result = _run(texts, tiny_bert_dir, layers=("auto",), finetunes=(), shots=("all",), repeats=1)
    assert all(set(cell["feature_scores"]) == {"default", "-2", "-3"} for cell in result.cells)
    resnet = create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=32)
    assert resnet.candidate_layers() == ("default", "layer3:mean")
    assert create_backbone("torchvision:vgg11", weights="random").candidate_layers() == ("default",)


def test_test_items_that_are_also_training_items_are_warned_of_and_named_in_compare_md(texts, tiny_bert_dir):
    """The fixture's short texts repeat: 6 of its 20 test texts are training texts too. compare warns once and its
    report says so beside the test items (a new user's 200 of 500 raised every method, said nowhere)."""
    with pytest.warns(UserWarning, match="--test .*test.csv: 6 of 20 test items are also training items") as said:
        _run(texts, tiny_bert_dir, finetunes=("ft",), shots=("all",), repeats=1)
    assert len([w for w in said if "also training items" in str(w.message)]) == 1  # not again by the fine-tune
    markdown = (texts / "cmp" / "compare.md").read_text()
    assert "Test items: source " in markdown and "**6 of them also training items** (the same content)" in markdown


def test_a_budget_spent_before_the_frozen_cells_still_runs_them_and_leaves_out_the_fine_tunes(
    texts, tiny_bert_dir, monkeypatch
):
    """A new user's `--budget 10` (seconds) was spent by embedding: the frozen cells were left out too, although
    --budget's help says it cuts fine-tunes; the headline spoke of 2 seeds of 3. Frozen cells always run."""
    from tlcache.compare import plan

    class Spent(_Clock):  # a minute passes at every look: the budget is spent before the first cell
        def perf_counter(self) -> float:
            self.now += 60.0
            return self.now

    monkeypatch.setattr(plan, "time", Spent())
    probes = []
    monkeypatch.setattr(compare_run, "_probe_finetune", lambda *args: probes.append(args) or (0.0, 1.0))
    result = _run(texts, tiny_bert_dir, budget=1, heads=("logreg", "knn"), finetunes=("ft",), shots=(4,), repeats=2)
    assert not probes  # the budget spent already: the probe's half minute would only run further past it
    assert sorted((c["method"], c["seed"]) for c in result.cells) == [
        ("knn", 0),
        ("knn", 1),
        ("logreg", 0),
        ("logreg", 1),
    ]
    assert [(c["method"], c["seed"]) for c in result.summary["budget"]["left_out"]] == [("ft", 0), ("ft", 1)]
    assert result.summary["recommendation"]["headline"].startswith("frozen only")


def test_compare_json_keeps_stdout_to_the_json_when_progress_is_shown(texts, tiny_bert_dir):
    """Without --no-progress, each cell's line was printed on stdout before the JSON, which then did not parse."""
    from test_cli import run

    arguments = ["train.csv", "--test", "test.csv", "-b", f"hf:{tiny_bert_dir}", "--heads", "logreg"]
    result = run("compare", *arguments, "--finetune", "none", "--shots", "all", "--repeats", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ran"] == 1
    assert "logreg-all-seed0: accuracy" in result.stderr


def test_the_budgets_probe_is_said_and_leaves_no_fine_tuned_copies_behind(texts, tiny_bert_dir, capsys):
    result = _run(texts, tiny_bert_dir, heads=("logreg",), finetunes=("ft",), shots=("all",), repeats=1, budget=3600)
    assert [cell["method"] for cell in result.cells] == ["logreg", "ft"]  # the probe ran, and planned the cell in
    assert not (texts / "cmp" / "probe").exists()  # its three timed fine-tunes, each a copy of the backbone: gone
    # Said before it runs (a new user's ran 3 minutes without a line)
    assert capsys.readouterr().out.count("timing a fine-tune to plan the budget: one epoch each on 8, 8 and 24") == 1
