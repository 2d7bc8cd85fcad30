"""`compare` on a tiny BERT: every cell and its report, the same test items for every method, resuming a killed
comparison without recomputing a finished cell, and refusing another comparison's folder."""

import json

import numpy as np
import pytest

from conftest import write_text_csv
from tlcache.compare import compare
from tlcache.compare import run as compare_run
from tlcache.compare.cells import CELLS_DIR
from tlcache.errors import UserError
from tlcache.finetune.config import FinetuneConfig

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
    # the seed draws the training items: 4 per class differ between seeds, "all" does not
    summary = json.loads((texts / "cmp" / "compare.json").read_text())
    rows = {(row["method"], row["shots"]): row for row in summary["rows"]}
    assert set(rows) == {(m, s) for m in ("logreg", "knn", "ft", "lp-ft") for s in (4, "all")}
    for row in rows.values():
        low, high = row["interval"]
        assert low <= row["accuracy"] <= high and row["seeds"] == [0, 1]
    advice = summary["recommendation"]
    assert [row["shots"] for row in advice["by_shots"]] == [4, "all"]
    assert all(row["verdict"] in ("finetune", "frozen", "level") for row in advice["by_shots"])
    markdown = (texts / "cmp" / "compare.md").read_text()
    assert advice["headline"] in markdown and "| lp-ft | finetune | 4 |" in markdown
    for figure in ("learning_curve.png", "accuracy_time.png"):
        assert (texts / "cmp" / figure).stat().st_size > 5000
    assert (texts / "cmp" / "finetunes" / "ft-all-seed1" / "predictions.csv").exists()


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
    assert executed == ["logreg-all-seed0", "ft-all-seed0"]
    assert [p.name for p in (texts / "cmp" / CELLS_DIR).iterdir()] == ["logreg-all-seed0.json"]

    executed.clear()
    result = _run(texts, tiny_bert_dir, **options)
    assert executed == ["ft-all-seed0", "logreg-all-seed1", "ft-all-seed1"] and result.ran == 3
    # adding a shot count runs only its cells; running again runs nothing
    executed.clear()
    result = _run(texts, tiny_bert_dir, **{**options, "shots": (4, "all")})
    assert sorted(executed) == ["ft-4-seed0", "ft-4-seed1", "logreg-4-seed0", "logreg-4-seed1"]
    executed.clear()
    assert _run(texts, tiny_bert_dir, **options).ran == 0 and executed == []


def test_a_folder_of_another_comparison_is_refused(texts, tiny_bert_dir):
    options = dict(heads=("logreg",), finetunes=(), shots=("all",), repeats=1)
    _run(texts, tiny_bert_dir, **options)
    write_text_csv(texts / "train.csv", n=44)  # other training data, the same --out
    with pytest.raises(UserError, match="another --out"):
        _run(texts, tiny_bert_dir, **options)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"heads": ("sgd",)}, "--heads"),
        ({"finetunes": ("full",)}, "--finetune"),
        ({"shots": (0,)}, "--shots 0"),
        ({"repeats": 0}, "--repeats 0"),
        ({"heads": (), "finetunes": ()}, "needs a method"),
    ],
)
def test_bad_requests_get_one_line_before_any_work(texts, tiny_bert_dir, overrides, message):
    with pytest.raises(UserError, match=message):
        _run(texts, tiny_bert_dir, **overrides)
    assert not (texts / "cache").exists()
