"""Each option of each command, through click's CliRunner, with an assertion on what it changes: the record it
leaves (store metadata, report, finetune.json, checkpoint) and, where that is cheap, the numbers themselves.
OPTION_TESTS at the end says which test covers which option; a new option without a test there fails."""

import csv
import importlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_store, write_image_folder, write_text_csv
from test_cli import assert_user_error, embed_json, resnet_args, run
from tlcache.cli import cli
from tlcache.store import FeatureStore, StoreWriter


def info_json(path) -> dict:
    result = run("info", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_json(*args) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def write_table(path: Path, n: int, delimiter: str = ",", seed: int = 0) -> Path:
    """The reviews of write_text_csv under other column names: uid, review, stars (the label) and region, whose
    values repeat (so it cannot serve as an id)."""
    with open(write_text_csv(path.with_suffix(".plain.csv"), n=n, seed=seed), newline="", encoding="utf-8") as handle:
        plain = list(csv.DictReader(handle))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["uid", "review", "stars", "region"])
        for i, row in enumerate(plain):
            writer.writerow([f"u{i:03d}", row["text"], row["label"], "north" if i % 3 else "south"])
    return path


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture
def tty_stderr(monkeypatch):
    """Make CliRunner's stderr say it is a terminal, as a user's is: tqdm shows its bars only on one."""
    import click.testing

    monkeypatch.setattr(click.testing._NamedTextIOWrapper, "isatty", lambda self: True)


# embed


def test_embed_batch_size_device_workers_and_compile_are_recorded_and_keep_the_features(
    tmp_path, resnet18_weights, monkeypatch
):
    import tlcache.embed

    asked = []
    original = tlcache.embed.decoded_batches

    def recording(dataset, batch_size, workers, pin_memory):
        asked.append(workers)
        return original(dataset, batch_size, workers, pin_memory)

    monkeypatch.setattr(tlcache.embed, "decoded_batches", recording)
    folder = write_image_folder(tmp_path / "imgs", per_class=4)  # 8 images: the CPU default batch holds them all
    # Batches of 3 in fp32 at 32 px, as tests/test_embed.py compiles: inductor's on-disk cache serves both.
    args = ["embed", folder, *resnet_args(resnet18_weights), "--precision", "fp32", "--batch-size", 3, "--json"]
    eager = run(*args, "--device", "cpu", "--compile", "off", "--workers", 0, "--out", tmp_path / "eager")
    compiled = run(*args, "--compile", "on", "--workers", 1, "--out", tmp_path / "compiled")
    assert eager.exit_code == 0 and compiled.exit_code == 0, eager.output + compiled.output
    assert asked == [0, 1]  # decoded in threads, then in one worker process
    assert "compiling" not in eager.stderr and "compiling torchvision:resnet18 for batches of 3" in compiled.stderr
    off = info_json(json.loads(eager.stdout)["path"])
    on = info_json(json.loads(compiled.stdout)["path"])
    assert (off["batch_size"], off["device"], off["compiled"]) == (3, "cpu", False)
    assert (on["batch_size"], on["compiled"]) == (3, True) and on["cache_key"] == off["cache_key"]
    np.testing.assert_allclose(
        FeatureStore(on["path"]).features(), FeatureStore(off["path"]).features(), rtol=1e-4, atol=1e-4
    )
    if not torch.cuda.is_available():
        assert_user_error(run(*args, "--device", "cuda"), "no CUDA GPU is visible")


def test_embed_crop_ratio_and_image_size_change_the_preprocessing(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=2)  # 40 px images
    args = [folder, *resnet_args(resnet18_weights), "--precision", "fp32", "--out", tmp_path]
    default = embed_json(*args)
    whole = embed_json(*args, "--crop-ratio", 1, "--image-size", 48)
    before, after = (info_json(p["path"])["preprocessing"] for p in (default, whole))
    assert (before["crop_ratio"], before["resize_shorter"], before["center_crop"]) == (0.875, 37, 32)
    assert (after["crop_ratio"], after["resize_shorter"], after["center_crop"]) == (1.0, 48, 48)
    assert whole["key"] != default["key"]
    assert not np.allclose(FeatureStore(whole["path"]).features(), FeatureStore(default["path"]).features(), atol=1e-3)


def test_embed_reads_a_tsv(tmp_path, tiny_bert_dir):
    path = tmp_path / "reviews.tsv"
    path.write_text("text\tlabel\ngood, fun film\tpos\na dull, bad plot\tneg\ngreat\tpos\n", encoding="utf-8")
    payload = embed_json(path, "-b", f"hf:{tiny_bert_dir}", "--precision", "fp32")
    store = FeatureStore(payload["path"])
    assert payload["rows"] == 3 and store.class_names == ["neg", "pos"] and store.labels().tolist() == [1, 0, 1]
    assert store.meta["source_kind"] == "csv" and store.meta["source_path"].endswith("reviews.tsv")
    # Split at the tabs, so the commas stay inside the texts: the features of exactly these texts.
    from tlcache.backbones import create_backbone

    texts = ["good, fun film", "a dull, bad plot", "great"]
    np.testing.assert_allclose(store.features(), create_backbone(f"hf:{tiny_bert_dir}").embed(texts), atol=1e-5)


def test_no_progress_hides_the_bar_that_a_terminal_shows(tmp_path, tiny_bert_dir, tty_stderr):
    path = write_text_csv(tmp_path / "r.csv", n=24)
    args = ["embed", path, "-b", f"hf:{tiny_bert_dir}", "--out", tmp_path / "cache"]
    shown = run(*args)
    assert shown.exit_code == 0 and f"embed hf:{tiny_bert_dir}" in shown.stderr and "24/24" in shown.stderr
    hidden = run(*args, "--out", tmp_path / "other", "--no-progress")
    assert hidden.exit_code == 0 and hidden.stderr == ""

    store = json.loads(run(*args, "--json").stdout)["path"]
    shown = run("fit-head", store, "--out", tmp_path / "run")
    assert shown.exit_code == 0 and "logreg sweep" in shown.stderr and "11/11" in shown.stderr
    hidden = run("fit-head", store, "--out", tmp_path / "run-hidden", "--no-progress")
    assert hidden.exit_code == 0 and hidden.stderr == ""
    shown = run("fit-head", store, "--head", "all", "--out", tmp_path / "all")
    assert shown.exit_code == 0 and "fit heads" in shown.stderr and "5/5" in shown.stderr
    hidden = run("fit-head", store, "--head", "all", "--out", tmp_path / "all-hidden", "--no-progress")
    assert hidden.exit_code == 0 and hidden.stderr == ""
    new = write_text_csv(tmp_path / "new.csv", n=6, seed=3)
    shown = run("predict", tmp_path / "run", new, "--cache-dir", tmp_path / "p1", "--out", tmp_path / "a.csv")
    assert shown.exit_code == 0 and "6/6" in shown.stderr
    hidden = run(
        "predict", tmp_path / "run", new, "--cache-dir", tmp_path / "p2", "--out", tmp_path / "b.csv", "--no-progress"
    )
    assert hidden.exit_code == 0 and hidden.stderr == ""


def test_run_no_progress_hides_the_steps_bars_and_is_no_option_of_theirs(tmp_path, tiny_bert_dir, tty_stderr):
    from test_pipelines import write_recipe

    write_text_csv(tmp_path / "train.csv", n=24)
    steps = [
        {"name": "train", "run": "embed", "source": "train.csv", "backbone": f"hf:{tiny_bert_dir}", "out": "cache"},
        {"name": "probe", "run": "fit-head", "store": "@train", "grid": [0.1, 1]},
    ]
    hidden = run("run", write_recipe(tmp_path / "quiet.toml", steps), "--no-progress")
    assert hidden.exit_code == 0, hidden.output
    assert hidden.stderr == "" and "0 skipped" in hidden.stdout
    shown = run("run", write_recipe(tmp_path / "shown.toml", steps))  # the store is cached: the head's bar shows
    assert shown.exit_code == 0 and "logreg sweep" in shown.stderr and "2/2" in shown.stderr
    again = run("run", tmp_path / "quiet.toml")  # the flag is no option of the steps: they are done
    assert again.exit_code == 0 and "probe): fit-head skipped: done before" in again.stdout


def test_embed_overwrite_replaces_another_store_that_out_names(tmp_path, tiny_bert_dir):
    out = tmp_path / "mine.h5"
    first = ["embed", write_text_csv(tmp_path / "a.csv", n=8), "-b", f"hf:{tiny_bert_dir}", "--out", out]
    assert run(*first).exit_code == 0
    second = ["embed", write_text_csv(tmp_path / "b.csv", n=10), "-b", f"hf:{tiny_bert_dir}", "--out", out]
    assert_user_error(run(*second), "holds another store")
    assert FeatureStore(out).n_rows == 8
    assert run(*second, "--overwrite").exit_code == 0
    assert FeatureStore(out).n_rows == 10


def test_without_a_terminal_the_default_shows_no_bar(tmp_path, tiny_bert_dir):
    # tqdm disables itself when stderr is not a terminal (CliRunner's is not), so the default draws nothing either.
    result = run("embed", write_text_csv(tmp_path / "r.csv"), "-b", f"hf:{tiny_bert_dir}")
    assert result.exit_code == 0 and result.stderr == ""


# fit-head


def _blobs(n, seed, shift=3.0, dim=6, classes=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return rng.normal(size=(n, dim)) + shift * np.eye(classes, dim)[y], y


def test_fit_head_test_fraction_seed_and_grid(tmp_path):
    X, y = _blobs(120, 0)
    store = make_store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    report = run_json(
        "fit-head", store, "--test-fraction", 0.25, "--seed", 3, "--grid", "0.01,1", "--out", tmp_path / "r"
    )
    assert (report["n_train"], report["n_test"]) == (90, 30)
    assert report["seed"] == 3 and report["test"] == "0.25 held out, stratified, seed 3"
    sweep = report["sweep"]
    values = [c for c, _ in sweep["curve"]]
    # The given grid, then the values the sweep added past its end (well-separated blobs want weak regularisation).
    assert sweep["param"] == "C" and values[:2] == [0.01, 1.0] and len(values) == 2 + sweep["extension"]["steps"]
    assert sweep["best"] in values
    assert json.loads((tmp_path / "r" / "head.json").read_text())["seed"] == 3


def test_few_shot_counts_the_test_items_among_its_draws_not_the_whole_store(tmp_path):
    """A new user's 8-shot report said 48 test items were training items: the whole store's count, where the 72
    items drawn could hold at most 30 of them."""
    X, y = _blobs(300, 0, shift=1.5)
    fingerprints = [f"item-{i % 150}" for i in range(300)]  # every content twice
    store = make_store(tmp_path / "s.h5", X, y, ["a", "b", "c"], fingerprints=fingerprints)
    whole = run_json("fit-head", store, "--out", tmp_path / "all")["test_in_training"]
    few = run_json("fit-head", store, "--shots", 5, "--repeats", 2, "--out", tmp_path / "few")
    draws = 5 * 2 * 3  # items per class, repeats, classes
    assert whole > draws and 0 < few["test_in_training"] <= draws


def test_fit_head_few_shot_shots_repeats_and_seed(tmp_path):
    X, y = _blobs(300, 0, shift=1.5)
    store = make_store(tmp_path / "s.h5", X, y, ["a", "b", "c"])
    args = ["fit-head", store, "--shots", 4, "--repeats", 3]
    first = run_json(*args, "--seed", 7, "--out", tmp_path / "a")["few_shot"]
    other = run_json(*args, "--seed", 8, "--out", tmp_path / "b")["few_shot"]
    assert first["shots"] == 4 and first["repeats"] == 3 and first["seeds"] == [7, 8, 9]
    assert len(first["accuracy"]["values"]) == 3 and other["seeds"] == [8, 9, 10]
    assert first["accuracy"]["values"] != other["accuracy"]["values"]
    assert not list((tmp_path / "a").glob("head-*.npz")) and not (tmp_path / "a" / "head.joblib").exists()


def test_fit_head_class_weight_balanced_helps_the_rare_class(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0] * 570 + [1] * 30)
    X = rng.normal(size=(600, 5)) + 0.9 * y[:, None] * np.array([1, 1, 0, 0, 0])
    store = make_store(tmp_path / "s.h5", X, y, ["common", "rare"])
    plain = run_json("fit-head", store, "--out", tmp_path / "plain")
    balanced = run_json("fit-head", store, "--class-weight", "balanced", "--out", tmp_path / "bal")
    assert plain["class_weight"] is None and balanced["class_weight"] == "balanced"
    report_md = [(tmp_path / name / "report.md").read_text() for name in ("plain", "bal")]
    assert "class weights" not in report_md[0] and "| class weights | balanced (--class-weight) |" in report_md[1]
    recall = [r["metrics"]["per_class"][1]["recall"] for r in (plain, balanced)]
    assert recall[1] > recall[0] + 0.2


def test_fit_head_calibrate_isotonic_reports_the_ece_before_and_after(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(900) % 2
    X = rng.normal(size=(900, 80)) + 0.35 * y[:, None] * (np.arange(80) < 3)  # overlapping classes
    store = make_store(tmp_path / "s.h5", X, y, ["a", "b"])
    # C=1000 on few noisy items: a head far too sure of itself, which calibration must tame.
    report = run_json("fit-head", store, "--grid", 1000, "--calibrate", "isotonic", "--test-fraction", 0.5)
    calibration = report["calibration"]
    assert calibration["method"] == "isotonic"
    assert calibration["before"]["ece"] > 0.1 and calibration["after"]["ece"] < 0.5 * calibration["before"]["ece"]
    plain = run_json("fit-head", store, "--grid", 1000, "--test-fraction", 0.5, "--out", tmp_path / "plain")
    assert "method" not in plain["calibration"]
    assert plain["calibration"]["head"]["ece"] == pytest.approx(calibration["before"]["ece"])


def test_fit_head_no_views_trains_on_the_plain_items(tmp_path):
    X, y = _blobs(60, 0)
    views = np.stack([X + 0.5, X - 0.5], axis=1)
    meta = {"cache_key": "k", "config_key": "c", "backbone": "bb", "backbone_key": "bb", "weights_digest": "w"}
    meta |= {"preprocessing": {}, "layer": "l", "pooling": "mean", "backbone_spec": {}, "source_options": {}}
    ids, fingerprints = [str(i) for i in range(60)], [f"f{i}" for i in range(60)]
    writer = StoreWriter.create(tmp_path / "v.h5", meta, ids, list(y), ["a", "b", "c"], fingerprints, dim=6, views=2)
    writer.write(np.arange(60), X.astype(np.float32), views.astype(np.float32))
    writer.finish({})
    writer.close()
    with_views = run_json("fit-head", tmp_path / "v.h5", "--out", tmp_path / "with")
    without = run_json("fit-head", tmp_path / "v.h5", "--no-views", "--out", tmp_path / "without")
    assert with_views["views_per_item"] == 2 and without["views_per_item"] == 0
    assert with_views["n_train"] == without["n_train"] == 48
    from tlcache.runs import load_head

    seen = [load_head(tmp_path / name)[0]["standardscaler"].n_samples_seen_ for name in ("with", "without")]
    assert seen == [48 * 3, 48]


# predict


def test_predict_a_tsv_with_its_own_column_names(tmp_path, tiny_bert_dir):
    train = embed_json(write_text_csv(tmp_path / "train.csv", n=40), "-b", f"hf:{tiny_bert_dir}", "--out", tmp_path)
    assert run("fit-head", train["path"], "--out", tmp_path / "run").exit_code == 0
    source = write_table(tmp_path / "new.tsv", n=6, delimiter="\t", seed=3)
    columns = ["--text-column", "review", "--label-column", "stars", "--id-column", "uid", "--group-column", "region"]
    result = run(
        "predict", tmp_path / "run", source, *columns, "--batch-size", 3, "--device", "cpu",
        "--cache-dir", tmp_path / "new", "--out", "-",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "predicted 6 rows, accuracy" in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    with open(source, newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["id"] for r in rows] == [t["uid"] for t in table]
    assert [r["true_label"] for r in rows] == [t["stars"] for t in table]
    [path] = (tmp_path / "new").glob("*.h5")
    store = FeatureStore(path)
    assert store.meta["batch_size"] == 3 and store.meta["device"] == "cpu"
    assert store.groups() == [t["region"] for t in table] and store.meta["source_options"]["text_column"] == "review"
    assert_user_error(run("predict", tmp_path / "run", source, "--cache-dir", tmp_path / "new"), "no column 'text'")
    if not torch.cuda.is_available():
        assert_user_error(run("predict", tmp_path / "run", source, *columns, "--device", "cuda"), "no CUDA GPU")


# finetune


def test_finetune_schedule_options_reach_the_optimiser_and_resume_continues(tmp_path, tiny_bert_dir, monkeypatch):
    from tlcache.finetune.trainer import Trainer

    source = write_text_csv(tmp_path / "t.csv", n=40)
    # 40 items: 10 test, 8 of the other 30 for validation, 22 to train on: 3 batches of 8, 2 optimiser steps.
    args = [
        "finetune", source, "-b", f"hf:{tiny_bert_dir}", "--out", tmp_path / "ft", "--precision", "fp32",
        "--test-fraction", 0.25, "--val-fraction", 0.25, "--batch-size", 8, "--accumulate", 2,
        "--head-epochs", 1, "--epochs", 3, "--strategy", "full", "--patience", 0, "--device", "cpu",
        "--lr", 1e-3, "--head-lr", 1e-2, "--layer-decay", 0.5, "--warmup", 0.9, "--weight-decay", 0.05,
        "--lp-ft", "--cache", tmp_path / "frozen", "--no-progress",
    ]  # fmt: skip
    original = Trainer._checkpoint

    def checkpoint_then_stop(self, identity, done, *rest):
        original(self, identity, done, *rest)
        if done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_checkpoint", checkpoint_then_stop)
    stopped = run(*args)
    assert stopped.exit_code == 130  # a shell's code for Ctrl-C, with what to do next:
    assert stopped.stderr.strip() == (
        "interrupted: every finished epoch is kept: run the same command again with --resume to continue"
    )
    monkeypatch.undo()
    checkpoint = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=False)
    assert [h["stage"] for h in checkpoint["history"]] == ["head", "full"]
    # The main stage's optimiser after its first epoch: rates by depth, decay by kind, warmup, accumulation.
    groups = checkpoint["optimizer"]["param_groups"]
    rates = {g["initial_lr"] for g in groups}
    assert {1e-2, 1e-3, 5e-4, 2.5e-4} <= rates and max(rates) == 1e-2  # head, layer 1, layer 0, embeddings
    assert {g["weight_decay"] for g in groups} == {0.05, 0.0}
    # 3 epochs of 2 steps: warmup takes int(0.9 * 6) = 5 steps; after 2 of them each rate is at 3/5 of its peak
    # (without warmup it would be past its peak, at 3/4 on the cosine).
    assert checkpoint["scheduler"]["last_epoch"] == 2
    assert checkpoint["scheduler"]["_last_lr"] == pytest.approx([g["initial_lr"] * 3 / 5 for g in groups])
    # 3 batches of 8 per epoch, 2 to a step: 2 steps (3 without --accumulate 2, 1 with the default batch size).
    assert all(state["step"] == 2 for state in checkpoint["optimizer"]["state"].values())
    assert len(list((tmp_path / "frozen").glob("*.h5"))) == 1  # LP-FT's frozen features, where --cache says
    assert not list((tmp_path / "tlcache-home").glob("*.h5"))

    resumed = run_json(*args, "--resume")
    tune = resumed["finetune"]
    assert tune["history"][:2] == checkpoint["history"]  # continued from the checkpoint, not started again
    assert [h["stage"] for h in tune["history"]] == ["head", "full", "full", "full"] and tune["epochs_run"] == 4
    assert (resumed["n_train"], resumed["n_val"], resumed["n_test"]) == (22, 8, 10)
    assert tune["device"] == "cpu" and tune["precision"] == "fp32" and tune["lp_ft"]
    saved = json.loads((tmp_path / "ft" / "finetune.json").read_text())["config"]
    expected = dict(
        strategy="full", epochs=3, head_epochs=1, lr=1e-3, head_lr=1e-2, layer_decay=0.5, warmup=0.9,
        weight_decay=0.05, batch_size=8, accumulate=2, lp_ft=True, val_fraction=0.25, patience=0, precision="fp32",
    )  # fmt: skip
    assert {k: saved[k] for k in expected} == expected == {k: tune["config"][k] for k in expected}
    assert not (tmp_path / "ft" / "checkpoint.pt").exists()
    if not torch.cuda.is_available():  # --device reaches the model: a GPU asked for and missing is refused
        assert_user_error(run(*args[:4], "--device", "cuda", "--out", tmp_path / "gpu"), "no CUDA GPU is visible")


def test_finetune_clip_decides_how_a_divergence_is_caught(tmp_path, tiny_bert_dir):
    source = write_text_csv(tmp_path / "t.csv", n=40)
    args = ["finetune", source, "-b", f"hf:{tiny_bert_dir}", "--lr", 1e30, "--head-lr", 1e30, "--batch-size", 8]
    args += ["--precision", "fp32", "--no-progress"]
    # Clipped, an infinite gradient norm is caught before the step; unclipped, the loss turns infinite after it.
    assert_user_error(run(*args, "--out", tmp_path / "a"), "the gradients turned infinite or NaN at epoch 1")
    assert_user_error(run(*args, "--clip", 0, "--out", tmp_path / "b"), "the loss turned infinite or NaN at epoch 1")


def test_finetune_patience_stops_early_on_a_table_with_its_own_columns(tmp_path, tiny_bert_dir):
    source = write_table(tmp_path / "t.csv", n=80)
    columns = ["--text-column", "review", "--label-column", "stars", "--id-column", "uid"]
    # Two epochs train the classifier alone; then a destructive learning rate wrecks the body, validation accuracy
    # falls, and --patience 1 ends the run after the first stale epoch of the five.
    base = ["finetune", source, "-b", f"hf:{tiny_bert_dir}"]
    args = [*base, *columns, "--head-epochs", 2, "--epochs", 5, "--strategy", "full", "--lr", 1.0, "--head-lr", 0.1]
    args += ["--warmup", 0, "--clip", 0, "--batch-size", 8, "--val-fraction", 0.25, "--precision", "fp32"]
    report = run_json(*args, "--patience", 1, "--no-progress", "--out", tmp_path / "ft")
    tune = report["finetune"]
    assert tune["epochs_run"] == 3 and tune["best_epoch"] == 2 and tune["config"]["patience"] == 1
    assert report["classes"] == ["neg", "pos"] and report["n_train"] + report["n_val"] + report["n_test"] == 80
    # The columns are the ones named: others are refused before any work.
    assert_user_error(run(*base, *columns[:4], "--id-column", "region"), "column 'region' has repeated ids")
    assert_user_error(run(*base, *columns[2:]), "no column 'text'")
    unlabelled = "needs labelled items of two classes or more; it has no column 'label': name the label column"
    assert_user_error(run(*base, *columns[:2], *columns[4:]), unlabelled)


def test_finetune_group_column_gives_per_group_metrics(tmp_path, tiny_bert_dir):
    source = write_table(tmp_path / "t.csv", n=40)
    columns = ["--text-column", "review", "--label-column", "stars", "--group-column", "region"]
    report = run_json(
        "finetune", source, "-b", f"hf:{tiny_bert_dir}", *columns, "--strategy", "head", "--epochs", 1,
        "--batch-size", 8, "--precision", "fp32", "--no-progress", "--out", tmp_path / "ft",
    )  # fmt: skip
    groups = report["groups"]
    assert groups["column"] == "region" and {g["group"] for g in groups["per_group"]} == {"north", "south"}
    assert sum(g["support"] for g in groups["per_group"]) == report["n_test"]


def test_finetune_default_precision_trains_the_layers_that_feed_the_features(tmp_path, tiny_bert_dir):
    from tlcache.backbones import create_backbone
    from tlcache.backbones.base import resolve_precision

    source = write_text_csv(tmp_path / "t.csv", n=40)
    # No --precision: auto, bf16 on a CPU with bf16 instructions (as this project's machines have), else fp32.
    # --layer 1 takes the output of the first transformer layer, so the second one feeds nothing and must not move.
    report = run_json(
        "finetune", source, "-b", f"hf:{tiny_bert_dir}", "--layer", 1, "--pool", "cls", "--epochs", 2,
        "--batch-size", 8, "--lr", 1e-3, "--out", tmp_path / "ft", "--no-progress",
    )  # fmt: skip
    tune = report["finetune"]
    assert tune["config"]["precision"] == "auto"
    assert tune["precision"] == resolve_precision("auto", torch.device("cpu"))
    losses = [h[k] for h in tune["history"] for k in ("train_loss", "val_loss")]
    assert len(losses) == 4 and np.isfinite(losses).all()
    before, after = (
        tensors(tiny_bert_dir / "model.safetensors"),
        tensors(tmp_path / "ft" / "body" / "model.safetensors"),
    )
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert "embeddings.word_embeddings.weight" in changed
    assert {n for n in before if n.startswith("encoder.layer.0.")} <= changed
    assert not {n for n in changed if n.startswith("encoder.layer.1.")}
    tuned = create_backbone(f"finetuned:{tmp_path / 'ft'}")
    assert (tuned.layer, tuned.pooling) == ("1", "cls")
    assert_user_error(
        run("finetune", write_image_folder(tmp_path / "imgs", per_class=4), "-b", "torchvision:resnet18",
            "--weights", "random", "--layer", "layer3"),
        "penultimate layer only",
    )  # fmt: skip


@pytest.mark.parametrize("norm_stats", ["frozen", "train"])
def test_finetune_top_1_changes_the_top_block_only_and_norm_stats_decide_its_statistics(
    tmp_path, resnet18_weights, norm_stats
):
    source = write_image_folder(tmp_path / "imgs", per_class=8)
    run_json(
        "finetune", source, *resnet_args(resnet18_weights), "--strategy", "top-1", "--norm-stats", norm_stats,
        "--epochs", 1, "--batch-size", 8, "--val-fraction", 0.25, "--lr", 1e-2, "--precision", "fp32",
        "--workers", 0, "--no-progress", "--out", tmp_path / "ft",
    )  # fmt: skip
    original = torch.load(resnet18_weights, weights_only=True)
    body = tensors(tmp_path / "ft" / "body.safetensors")
    assert body.keys() == {k for k in original if not k.startswith("fc.")}
    top = "layer4.1."  # the last residual block: the one top-1 trains
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for name, tensor in body.items():
        same = torch.equal(tensor, original[name])
        if not name.startswith(top):
            assert same, f"{name} is outside the trained block but changed"
        elif name.endswith(statistics):
            assert same == (norm_stats == "frozen"), f"{name} with --norm-stats {norm_stats}"
        else:
            assert not same, f"{name} is in the trained block but did not change"


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory, resnet18_weights):
    """Fine-tunes of the classifier alone on the same images, each with one option changed from the first."""
    root = tmp_path_factory.mktemp("image-runs")
    source = write_image_folder(root / "imgs", per_class=8)
    base = ["finetune", source, *resnet_args(resnet18_weights), "--crop-ratio", 1, "--strategy", "head"]
    base += ["--augment", "none", "--epochs", 1, "--batch-size", 8, "--val-fraction", 0.25, "--precision", "fp32"]
    variants = {
        "base": ["--workers", 0],  # with the progress lines: the default
        "augment": ["--augment", "color,rotate", "--workers", 0, "--no-progress"],
        "mixup": ["--mixup", 0.4, "--workers", 0, "--no-progress"],
        "label_smoothing": ["--label-smoothing", 0.1, "--workers", 0, "--no-progress"],
        "seed": ["--seed", 1, "--workers", 0, "--no-progress"],
        "workers": ["--workers", 1, "--no-progress"],
    }
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLCACHE_HOME", str(root / "tlcache-home"))  # as _isolated_cache does for each test
        patch.chdir(root)
        for name, extra in variants.items():
            result = run(*base, *extra, "--out", root / name, "--json")
            assert result.exit_code == 0, result.output
            runs[name] = (json.loads(result.stdout), result.stderr, root / name)
    return runs


def test_finetune_image_options_are_what_the_model_is_built_from(image_runs, resnet18_weights):
    from tlcache.backbones import create_backbone

    report, stderr, out = image_runs["base"]
    spec = json.loads((out / "finetune.json").read_text())["backbone_spec"]
    assert spec["weights"] == str(Path(resnet18_weights).resolve())
    assert (spec["image_size"], spec["crop_ratio"]) == (32, 1.0)
    # --strategy head leaves the body as --weights gave it, bit for bit.
    original = torch.load(resnet18_weights, weights_only=True)
    body = tensors(out / "body.safetensors")
    assert body.keys() and all(torch.equal(body[k], original[k]) for k in body)
    preprocessing = create_backbone(f"finetuned:{out}").preprocessing
    assert (preprocessing["crop_ratio"], preprocessing["resize_shorter"], preprocessing["center_crop"]) == (1.0, 32, 32)
    assert report["finetune"]["config"]["augment"] == []
    # Progress on (the default): one line per epoch on stderr, terminal or not; --no-progress: none.
    assert "epoch 1/1 (head): train loss" in stderr
    assert all(image_runs[name][1] == "" for name in image_runs if name != "base")


@pytest.mark.parametrize(
    "field, value", [("augment", ["color", "rotate"]), ("mixup", 0.4), ("label_smoothing", 0.1), ("seed", 1)]
)
def test_finetune_training_options_change_the_result(image_runs, field, value):
    base, _, base_out = image_runs["base"]
    report, _, out = image_runs[field]
    assert report["finetune"]["config"][field] == value
    assert json.loads((out / "finetune.json").read_text())["config"][field] == value
    assert report["finetune"]["history"][0]["train_loss"] != base["finetune"]["history"][0]["train_loss"]
    assert not torch.equal(
        tensors(out / "head.safetensors")["weight"], tensors(base_out / "head.safetensors")["weight"]
    )
    if field == "seed":
        assert report["seed"] == 1 and report["test"].endswith("seed 1")


def test_finetune_decoding_in_a_worker_process_gives_the_same_model(image_runs):
    base, _, base_out = image_runs["base"]
    report, _, out = image_runs["workers"]
    assert report["finetune"]["history"] == base["finetune"]["history"]
    for name, tensor in tensors(out / "head.safetensors").items():
        torch.testing.assert_close(tensor, tensors(base_out / "head.safetensors")[name], rtol=0, atol=1e-6)


# info, backbones, ls, gc


def test_info_backbones_ls_and_gc_json(tmp_path, tiny_bert_dir):
    cache = tmp_path / "cache"
    done = embed_json(write_text_csv(tmp_path / "a.csv"), "-b", f"hf:{tiny_bert_dir}", "--out", cache)
    cut = make_store(cache / "hf-cut-00000000-11111111111111111111.h5", np.zeros((5, 3)), [0] * 5, ["x"], finish=False)
    partial = cut.with_name(cut.name + ".partial")

    summary = info_json(done["path"])
    assert summary["path"] == done["path"] and summary["n_rows"] == 24 and summary["complete"] is True
    assert summary["cache_key"] == done["key"] and summary["backbone"] == f"hf:{tiny_bert_dir}"
    assert summary["classes"] == {"neg": 12, "pos": 12} and summary["unlabelled"] == 0 and summary["size_bytes"] > 0

    listing = json.loads(run("backbones", "--json").stdout)
    assert all(set(b) == {"name", "modality", "dim", "offline", "weights", "note"} for b in listing)
    by_name = {b["name"]: b for b in listing}
    assert by_name["torchvision:resnet18"]["dim"] == 512 and by_name["minilm"]["modality"] == "text"

    entries = {Path(e["path"]).name: e for e in json.loads(run("ls", cache, "--json").stdout)}
    assert set(entries) == {Path(done["path"]).name, partial.name}
    complete = entries[Path(done["path"]).name]
    assert (complete["key"], complete["backbone"], complete["n_rows"], complete["state"]) == (
        done["key"], f"hf:{tiny_bert_dir}", 24, "complete"
    )  # fmt: skip
    assert complete["source"] == str((tmp_path / "a.csv").resolve()) and complete["last_used"].endswith("+00:00")
    assert (entries[partial.name]["state"], entries[partial.name]["rows_done"]) == ("partial", 4)

    dry = run_json("gc", cache, "--dry-run")
    assert dry["dry_run"] is True and [Path(e["path"]).name for e in dry["removed"]] == [partial.name]
    assert dry["freed_bytes"] == entries[partial.name]["size_bytes"] and partial.exists()
    removed = run_json("gc", cache, "--unused-days", 0)  # every complete store is unused for 0 days
    assert removed["dry_run"] is False and {e["state"] for e in removed["removed"]} == {"partial", "complete"}
    assert removed["freed_bytes"] == sum(e["size_bytes"] for e in removed["removed"])
    assert not partial.exists() and not Path(done["path"]).exists()


# Which test gives each parameter of each command an asserted effect through the CLI.
EXISTING_CLI = {
    "embed": {
        "source": "test_cli.py::test_embed_text_then_cache_hit",
        "--backbone": "test_cli.py::test_each_key_ingredient_misses_the_cache_and_a_renamed_folder_hits",
        "--weights": "test_cli.py::test_each_key_ingredient_misses_the_cache_and_a_renamed_folder_hits",
        "--layer": "test_cli.py::test_embed_layer_pool_views_and_compression_options",
        "--pool": "test_cli.py::test_embed_layer_pool_views_and_compression_options",
        "--out": "test_cli.py::test_embed_images_json_output",
        "--dtype": "test_cli.py::test_embed_images_json_output",
        "--precision": "test_cli.py::test_predict_embeds_with_the_heads_precision",
        "--compression": "test_cli.py::test_embed_layer_pool_views_and_compression_options",
        "--views": "test_cli.py::test_embed_layer_pool_views_and_compression_options",
        "--text-column": "test_cli.py::test_csv_column_options",
        "--label-column": "test_cli.py::test_csv_column_options",
        "--id-column": "test_cli.py::test_csv_column_options",
        "--group-column": "test_cli.py::test_group_column_gives_per_group_metrics",
        "--json": "test_cli.py::test_embed_images_json_output",
    },
    "fit-head": {
        "store": "test_cli.py::test_fit_head_predict_round_trip",
        "--head": "test_cli.py::test_head_all_prints_a_leaderboard",
        "--test": "test_cli.py::test_fit_head_predict_round_trip",
        "--out": "test_cli.py::test_fit_head_predict_round_trip",
        "--json": "test_cli.py::test_group_column_gives_per_group_metrics",
    },
    "finetune": {
        "source": "test_cli.py::test_finetune_trains_saves_and_the_result_embeds",
        "--backbone": "test_cli.py::test_finetune_trains_saves_and_the_result_embeds",
        "--test": "test_cli.py::test_finetune_trains_saves_and_the_result_embeds",
        "--strategy": "test_cli.py::test_finetune_trains_saves_and_the_result_embeds",
        "--lp-ft": "test_cli.py::test_finetune_trains_saves_and_the_result_embeds",
        "--out": "test_cli.py::test_finetune_trains_saves_and_the_result_embeds",
        "--json": "test_cli.py::test_finetune_trains_saves_and_the_result_embeds",
    },
    "predict": {
        "head": "test_cli.py::test_fit_head_predict_round_trip",
        "source": "test_cli.py::test_predict_from_a_store_and_to_stdout",
        "--out": "test_cli.py::test_predict_from_a_store_and_to_stdout",
        "--cache-dir": "test_cli.py::test_fit_head_predict_round_trip",
        "--json": "test_cli.py::test_predict_from_a_store_and_to_stdout",
    },
    "report": {"run_dir": "test_cli.py::test_report_renders_again_from_json"},
    "info": {"store": "test_cli.py::test_info_and_backbones", "--json": "test_cli.py::test_info_and_backbones"},
    "backbones": {"--json": "test_cli.py::test_info_and_backbones"},
    "ls": {"folder": "test_cli.py::test_ls_and_gc", "--json": "test_cli.py::test_ls_and_gc"},
    "gc": {
        "folder": "test_cli.py::test_ls_and_gc",
        "--unused-days": "test_cli.py::test_ls_and_gc",
        "--dry-run": "test_cli.py::test_ls_and_gc",
    },
}
HERE = "test_cli_effects.py::"
SCHEDULE = HERE + "test_finetune_schedule_options_reach_the_optimiser_and_resume_continues"
IMAGE_OPTIONS = HERE + "test_finetune_image_options_are_what_the_model_is_built_from"
CHANGES = HERE + "test_finetune_training_options_change_the_result"
PATIENCE = HERE + "test_finetune_patience_stops_early_on_a_table_with_its_own_columns"
DEFAULT_PRECISION = HERE + "test_finetune_default_precision_trains_the_layers_that_feed_the_features"
EMBED_RUN = HERE + "test_embed_batch_size_device_workers_and_compile_are_recorded_and_keep_the_features"
PREDICT_TABLE = HERE + "test_predict_a_tsv_with_its_own_column_names"
COMPARE = "test_compare.py::"
RAY = "test_ray_engine.py::"
EXPORT = "test_export.py::"
COMPARE_CELLS = COMPARE + "test_compare_command_runs_the_cells_its_options_name"
COMPARE_COLUMNS = COMPARE + "test_compare_command_reads_named_columns_and_holds_out_a_fraction"
COMPARE_IMAGES = COMPARE + "test_compare_command_on_images_with_backbone_options"
ADDED = {
    "compare": {
        "--layers": "test_compare.py::test_compare_command_layers_option",
        "source": COMPARE_CELLS,
        "--test": COMPARE_CELLS,
        "--test-fraction": COMPARE_COLUMNS,
        "--backbone": COMPARE_CELLS,
        "--weights": COMPARE_IMAGES,
        "--crop-ratio": COMPARE_IMAGES,
        "--image-size": COMPARE_IMAGES,
        "--layer": COMPARE + "test_compare_command_takes_a_layer_and_pooling_for_the_frozen_features",
        "--pool": COMPARE + "test_compare_command_takes_a_layer_and_pooling_for_the_frozen_features",
        "--heads": COMPARE_CELLS,
        "--finetune": COMPARE_CELLS,
        "--shots": COMPARE_CELLS,
        "--repeats": COMPARE_CELLS,
        "--budget": COMPARE + "test_compare_command_keeps_to_a_budget_and_refuses_a_bad_one",
        **{option: COMPARE_CELLS for option in ("--strategy", "--epochs", "--head-epochs", "--lr", "--head-lr")},
        **{option: COMPARE_CELLS for option in ("--layer-decay", "--warmup", "--weight-decay", "--clip")},
        **{option: COMPARE_CELLS for option in ("--batch-size", "--accumulate", "--augment", "--label-smoothing")},
        **{option: COMPARE_CELLS for option in ("--val-fraction", "--patience", "--norm-stats", "--precision")},
        "--mixup": COMPARE_IMAGES,
        "--out": COMPARE_CELLS,
        "--cache": COMPARE_CELLS,
        "--device": COMPARE_CELLS,
        **{option: COMPARE_COLUMNS for option in ("--text-column", "--label-column", "--id-column", "--group-column")},
        "--no-progress": COMPARE_CELLS,
        "--json": COMPARE_CELLS,
    },
    "embed": {
        "--crop-ratio": HERE + "test_embed_crop_ratio_and_image_size_change_the_preprocessing",
        "--image-size": HERE + "test_embed_crop_ratio_and_image_size_change_the_preprocessing",
        "--compile": EMBED_RUN,
        "--batch-size": EMBED_RUN,
        "--device": EMBED_RUN,
        "--workers": EMBED_RUN,
        "--no-progress": HERE + "test_no_progress_hides_the_bar_that_a_terminal_shows",
        "--overwrite": HERE + "test_embed_overwrite_replaces_another_store_that_out_names",
        "--on-error": "test_unreadable_items.py::test_cli_lists_each_skipped_item_and_fail_exits_2",
        "--long-text": "test_embed.py::test_long_text_chunk_reads_every_token_in_windows_and_is_in_the_key",
        "--engine": RAY + "test_a_rerun_after_the_driver_is_killed_embeds_only_the_unfinished_shards",
        "--address": RAY + "test_a_rerun_after_the_driver_is_killed_embeds_only_the_unfinished_shards",
        "--ray-workers": RAY + "test_a_rerun_after_the_driver_is_killed_embeds_only_the_unfinished_shards",
        "--shard-size": RAY + "test_a_rerun_after_the_driver_is_killed_embeds_only_the_unfinished_shards",
        "--gpus-per-worker": RAY + "test_ray_options_are_refused_in_one_line_where_they_cannot_apply",
    },
    "fit-head": {
        "--test-fraction": HERE + "test_fit_head_test_fraction_seed_and_grid",
        "--seed": HERE + "test_fit_head_few_shot_shots_repeats_and_seed",
        "--grid": HERE + "test_fit_head_test_fraction_seed_and_grid",
        "--class-weight": HERE + "test_fit_head_class_weight_balanced_helps_the_rare_class",
        "--calibrate": HERE + "test_fit_head_calibrate_isotonic_reports_the_ece_before_and_after",
        "--shots": HERE + "test_fit_head_few_shot_shots_repeats_and_seed",
        "--repeats": HERE + "test_fit_head_few_shot_shots_repeats_and_seed",
        "--no-views": HERE + "test_fit_head_no_views_trains_on_the_plain_items",
        "--no-progress": HERE + "test_no_progress_hides_the_bar_that_a_terminal_shows",
    },
    "finetune": {
        "--weights": IMAGE_OPTIONS,
        "--crop-ratio": IMAGE_OPTIONS,
        "--image-size": IMAGE_OPTIONS,
        "--layer": DEFAULT_PRECISION,
        "--pool": DEFAULT_PRECISION,
        "--test-fraction": SCHEDULE,
        "--epochs": SCHEDULE,
        "--head-epochs": SCHEDULE,
        "--lr": SCHEDULE,
        "--head-lr": SCHEDULE,
        "--layer-decay": SCHEDULE,
        "--warmup": SCHEDULE,
        "--weight-decay": SCHEDULE,
        "--clip": HERE + "test_finetune_clip_decides_how_a_divergence_is_caught",
        "--batch-size": SCHEDULE,
        "--accumulate": SCHEDULE,
        "--augment": CHANGES,
        "--mixup": CHANGES,
        "--label-smoothing": CHANGES,
        "--val-fraction": SCHEDULE,
        "--patience": PATIENCE,
        "--norm-stats": HERE + "test_finetune_top_1_changes_the_top_block_only_and_norm_stats_decide_its_statistics",
        "--precision": DEFAULT_PRECISION,
        "--seed": CHANGES,
        "--device": SCHEDULE,
        "--resume": SCHEDULE,
        "--cache": SCHEDULE,
        "--workers": HERE + "test_finetune_decoding_in_a_worker_process_gives_the_same_model",
        "--text-column": PATIENCE,
        "--label-column": PATIENCE,
        "--id-column": PATIENCE,
        "--group-column": HERE + "test_finetune_group_column_gives_per_group_metrics",
        "--no-progress": IMAGE_OPTIONS,
    },
    "predict": {
        "--batch-size": PREDICT_TABLE,
        "--device": PREDICT_TABLE,
        "--text-column": PREDICT_TABLE,
        "--label-column": PREDICT_TABLE,
        "--id-column": PREDICT_TABLE,
        "--group-column": PREDICT_TABLE,
        "--no-progress": HERE + "test_no_progress_hides_the_bar_that_a_terminal_shows",
    },
    "gc": {"--json": HERE + "test_info_backbones_ls_and_gc_json"},
    "export": {
        "run_dir": EXPORT + "test_text_export_predicts_as_tlcache_predict_and_records_its_checks",
        "--json": EXPORT + "test_text_export_predicts_as_tlcache_predict_and_records_its_checks",
        "--out": EXPORT + "test_image_mlp_linear_svm_svm_and_knn_exports_predict_as_tlcache_predict",
        "--force": EXPORT + "test_a_failed_gate_writes_nothing_unless_forced",
        "--quantize": EXPORT + "test_int8_exports_of_a_text_and_an_image_model_pass_their_gates",
        "--no-progress": EXPORT + "test_the_export_shows_a_bar_of_its_check_on_a_terminal_unless_no_progress",
    },
    "run": {
        "pipeline": "test_pipelines.py::test_a_pipeline_runs_every_step_then_a_rerun_skips_them_all",
        "--dry-run": "test_pipelines.py::test_dry_run_says_what_would_run_and_runs_nothing",
        "--step": "test_pipelines.py::test_step_runs_the_named_steps_and_the_steps_they_refer_to_only",
        "--no-progress": "test_cli_effects.py::test_run_no_progress_hides_the_steps_bars_and_is_no_option_of_theirs",
    },
}
OPTION_TESTS = {name: {**EXISTING_CLI.get(name, {}), **ADDED.get(name, {})} for name in cli.commands}


def _parameter(param) -> str:
    return max(param.opts, key=len) if param.param_type_name == "option" else param.name


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_parameter_has_a_test_of_its_effect(name):
    parameters = {_parameter(p) for p in cli.commands[name].params}
    assert parameters == set(OPTION_TESTS[name]), f"`tlcache {name}`: list a test of each new option here"
    for parameter, where in OPTION_TESTS[name].items():
        module, _, function = where.partition("::")
        assert hasattr(importlib.import_module(module.removesuffix(".py")), function), f"{parameter}: {where}"
