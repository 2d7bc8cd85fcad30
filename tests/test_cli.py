"""Every command through click's CliRunner, on tiny real models and tiny real data."""

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_store, write_image_folder, write_text_csv
from tlcache.cli import cli
from tlcache.store import FeatureStore


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(result, message):
    """One clear line on stderr, exit code 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output


def resnet_args(weights):
    return ["-b", "torchvision:resnet18", "--weights", weights, "--image-size", 32]


def embed_json(*args):
    result = run("embed", *args, "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def text_stores(tmp_path, tiny_bert_dir):
    train = write_text_csv(tmp_path / "train.csv", n=40, seed=0)
    test = write_text_csv(tmp_path / "test.csv", n=20, seed=1)
    return [
        embed_json(path, "--backbone", f"hf:{tiny_bert_dir}", "--out", tmp_path / "cache") for path in (train, test)
    ]


def test_help_has_examples_on_every_command():
    for command in ["embed", "fit-head", "predict", "info", "backbones"]:
        result = run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command


def test_embed_text_then_cache_hit(tmp_path, tiny_bert_dir):
    path = write_text_csv(tmp_path / "r.csv")
    first = run("embed", path, "-b", f"hf:{tiny_bert_dir}", "--out", tmp_path / "cache", "--no-progress")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("embedded 24 of 24 rows with hf:") and "(32-d)" in first.stdout
    second = run("embed", path, "-b", f"hf:{tiny_bert_dir}", "--out", tmp_path / "cache", "--no-progress")
    assert second.exit_code == 0 and second.stdout.startswith("cache hit: 24 rows")
    assert first.stdout.split("-> ")[1] == second.stdout.split("-> ")[1]


def test_each_key_ingredient_misses_the_cache_and_a_renamed_folder_hits(
    tmp_path, resnet18_weights, resnet18_weights_other, tiny_bert_dir
):
    from PIL import Image

    folder = write_image_folder(tmp_path / "imgs", per_class=2)
    base = resnet_args(resnet18_weights)

    def embed(source, *args):
        return embed_json(source, *args, "--out", tmp_path / "cache")

    first = embed(folder, *base)
    assert embed(folder, *base)["cached"]
    renamed = folder.rename(tmp_path / "moved-and-renamed")
    assert embed(renamed, *base)["key"] == first["key"]

    misses = {
        "weights": embed(renamed, *base[:2], "--weights", resnet18_weights_other, "--image-size", 32),
        "backbone": embed(renamed, "-b", "torchvision:mobilenet_v3_small", "--weights", "random", "--image-size", 32),
        "preprocessing": embed(renamed, *base[:4], "--image-size", 48),
        "dtype": embed(renamed, *base, "--dtype", "float16"),
    }
    target = renamed / "square" / "square-001.png"
    image = Image.open(target).convert("RGB")
    image.putpixel((2, 2), (255, 0, 255))
    image.save(target)
    misses["one pixel"] = embed(renamed, *base)
    text = write_text_csv(tmp_path / "t.csv")
    mean = embed(text, "-b", f"hf:{tiny_bert_dir}", "--pool", "mean")
    misses["pooling"] = embed(text, "-b", f"hf:{tiny_bert_dir}", "--pool", "cls")
    assert misses["pooling"]["key"] != mean["key"]

    for ingredient, payload in misses.items():
        assert not payload["cached"], ingredient
        # Another config recomputes every row; an edited image is the only row recomputed (the incremental path).
        expected = 1 if ingredient == "one pixel" else payload["rows"]
        assert payload["embedded"] == expected and payload["reused"] == payload["rows"] - expected, ingredient
    keys = [first["key"], mean["key"]] + [p["key"] for p in misses.values()]
    assert len(set(keys)) == len(keys)
    assert len(list((tmp_path / "cache").glob("*.h5"))) == len(keys)


def test_embed_images_json_output(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=3)
    payload = embed_json(
        folder,
        *resnet_args(resnet18_weights),
        "--out",
        tmp_path / "one.h5",
        "--dtype",
        "float16",
        "--batch-size",
        4,
    )
    assert payload["rows"] == 6 and payload["dim"] == 512 and payload["cached"] is False
    assert Path(payload["path"]) == tmp_path / "one.h5"
    with h5py.File(payload["path"]) as handle:
        assert handle["features"].dtype == np.float16


def test_default_cache_location_is_tlcache_home(tmp_path, tiny_bert_dir):
    payload = embed_json(write_text_csv(tmp_path / "r.csv"), "-b", f"hf:{tiny_bert_dir}")
    assert Path(payload["path"]).parent == tmp_path / "tlcache-home"


def test_csv_column_options(tmp_path, tiny_bert_dir):
    path = tmp_path / "custom.csv"
    path.write_text("uid,review,stars\nu1,good fun,high\nu2,bad plot,low\nu3,dull,low\n", encoding="utf-8")
    payload = embed_json(
        path, "-b", f"hf:{tiny_bert_dir}", "--text-column", "review", "--label-column", "stars", "--id-column", "uid"
    )
    store = FeatureStore(payload["path"])
    assert store.ids() == ["u1", "u2", "u3"] and store.class_names == ["high", "low"]


def test_fit_head_predict_round_trip(tmp_path, text_stores):
    train, test = text_stores
    result = run("fit-head", train["path"], "--head", "logreg", "--test", test["path"], "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("logreg: accuracy ")
    for name in ["head.json", "report.json", "report.md", "confusion.png"]:
        assert (tmp_path / "run" / name).is_file(), name
    assert (tmp_path / "run" / json.loads((tmp_path / "run" / "head.json").read_text())["head_file"]).is_file()

    predicted = run(
        "predict",
        tmp_path / "run",
        tmp_path / "test.csv",
        "--out",
        tmp_path / "p.csv",
        "--cache-dir",
        tmp_path / "cache",
        "--no-progress",
    )
    assert predicted.exit_code == 0, predicted.output
    assert "predicted 20 rows" in predicted.stdout
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["id", "label", "prob_neg", "prob_pos", "true_label"]
    assert len(rows) == 20 and {r["label"] for r in rows} <= {"neg", "pos"}
    for row in rows:
        assert float(row["prob_neg"]) + float(row["prob_pos"]) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == ("pos" if float(row["prob_pos"]) > float(row["prob_neg"]) else "neg")
    # The test CSV was embedded for fit-head already: predict found it in the cache, so no new store appeared.
    assert len(list((tmp_path / "cache").glob("*.h5"))) == 2

    # The head's predictions match what the report measured on the same test store.
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    accuracy = np.mean([r["label"] == r["true_label"] for r in rows])
    assert accuracy == pytest.approx(report["metrics"]["accuracy"])


def test_predict_from_a_store_and_to_stdout(tmp_path, text_stores):
    train, test = text_stores
    assert run("fit-head", train["path"], "--out", tmp_path / "run").exit_code == 0
    result = run("predict", tmp_path / "run", test["path"], "--out", "-")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("id,label,prob_neg,prob_pos") and len(lines) == 21
    into_a_new_folder = tmp_path / "new" / "deeper" / "p.csv"
    result = run("predict", tmp_path / "run", test["path"], "--out", into_a_new_folder)
    assert result.exit_code == 0, result.output
    assert into_a_new_folder.read_text(encoding="utf-8").strip().splitlines() == lines
    assert sorted(p.name for p in into_a_new_folder.parent.iterdir()) == ["p.csv"]  # no partial file left beside it
    shown = run("predict", tmp_path / "run", test["path"], "--out", tmp_path / "q.csv", "--json")
    payload = json.loads(shown.stdout)  # for programs: the result alone on stdout (the short texts: 6 repeat)
    assert payload["rows"] == 20 and payload["out"] == str(tmp_path / "q.csv") and payload["in_training"] == 6
    assert payload["notes"][0].startswith("predicted 20 rows") and payload["accuracy"] is not None
    assert_user_error(run("predict", tmp_path / "run", test["path"], "--out", "-", "--json"), "would both write")


def test_predict_refuses_an_out_that_is_its_source_or_a_file_of_the_run(tmp_path, text_stores, tiny_bert_dir):
    """A new user's `predict RUN in.csv --out in.csv` replaced the texts with predictions, and `--out
    RUN/predictions.csv` the run's own test predictions (which paired tests read)."""
    train, _ = text_stores
    assert run("fit-head", train["path"], "--out", tmp_path / "run").exit_code == 0
    source = write_text_csv(tmp_path / "in.csv", n=5, seed=4)
    before = source.read_bytes(), (tmp_path / "run" / "predictions.csv").read_bytes()
    assert_user_error(run("predict", tmp_path / "run", source, "--out", source), "in.csv is the input")
    assert_user_error(
        run("predict", tmp_path / "run", source, "--out", tmp_path / "run" / "predictions.csv"),
        "is a file of the run folder",
    )
    assert (source.read_bytes(), (tmp_path / "run" / "predictions.csv").read_bytes()) == before
    assert run("predict", tmp_path / "run", source, "--out", tmp_path / "run" / "new.csv").exit_code == 0


def test_predict_replaces_only_predictions_it_wrote(tmp_path, text_stores, tiny_bert_dir):
    """A new user's typo in `predict --out` replaced a feature store, another head's report.json, an exported model
    and the training file, each with five rows of predictions: an existing file is replaced only when it is a
    predictions CSV (a rerun's) or empty."""
    train, test = text_stores
    for folder in ("run", "other"):
        assert run("fit-head", train["path"], "--out", tmp_path / folder).exit_code == 0
    source = write_text_csv(tmp_path / "in.csv", n=5, seed=4)
    kept = {
        Path(test["path"]): "is not a predictions file (a binary or non-UTF-8 file, not the header 'id,label,prob_",
        tmp_path / "reviews.csv": "exists and is not a predictions file (its first line 'text,label'",
        tmp_path / "other" / "report.json": "is a file of the run folder",
        tmp_path / "other" / "predictions.csv": "is a file of the run folder",  # which paired tests read
    }
    write_text_csv(tmp_path / "reviews.csv", n=5, seed=5)
    before = {path: path.read_bytes() for path in kept}
    for path, message in kept.items():
        assert_user_error(run("predict", tmp_path / "run", source, "--out", path), message)
    assert {path: path.read_bytes() for path in kept} == before
    (tmp_path / "empty.csv").write_bytes(b"")
    for out in ("p.csv", "p.csv", "empty.csv"):  # a rerun replaces its own predictions; an empty file may go
        assert run("predict", tmp_path / "run", source, "--out", tmp_path / out).exit_code == 0
        assert (tmp_path / out).read_text(encoding="utf-8").startswith("id,label,prob_neg,prob_pos")


def test_predict_refuses_a_head_of_other_features(tmp_path, text_stores, tiny_bert_dir):
    train, _ = text_stores
    assert run("fit-head", train["path"], "--out", tmp_path / "run").exit_code == 0
    cls_store = embed_json(tmp_path / "test.csv", "-b", f"hf:{tiny_bert_dir}", "--pool", "cls")
    assert_user_error(
        run("predict", tmp_path / "run", cls_store["path"]),
        "differ in pooling; mean against cls: embed with the same --pool",
    )


def test_predict_refuses_other_dim(tmp_path, text_stores, resnet18_weights):
    train, _ = text_stores
    assert run("fit-head", train["path"], "--out", tmp_path / "run").exit_code == 0
    images = embed_json(
        write_image_folder(tmp_path / "imgs", per_class=2),
        *resnet_args(resnet18_weights),
    )
    result = run("predict", tmp_path / "run", images["path"])
    assert_user_error(result, "(32-d)")
    assert "torchvision:resnet18 features (512-d)" in result.stderr


def test_info_and_backbones(tmp_path, text_stores):
    train, _ = text_stores
    result = run("info", train["path"])
    assert result.exit_code == 0 and "cache_key" in result.stdout and "complete            True" in result.stdout
    payload = json.loads(run("info", train["path"], "--json").stdout)
    assert payload["n_rows"] == 40 and payload["classes"] == {"neg": 20, "pos": 20}
    listing = json.loads(run("backbones", "--json").stdout)
    assert {"efficientnet-lite0", "minilm", "torchvision:resnet50"} <= {b["name"] for b in listing}
    table = run("backbones").stdout
    assert table.splitlines()[0].split()[:4] == ["name", "modality", "dim", "offline"]


def test_info_prints_names_of_any_script_as_text(tmp_path):
    names = ["frisch \U0001f345", "gr\u00fcn"]
    store = make_store(
        tmp_path / "s.h5", np.zeros((4, 3)), [0, 1, 0, 1], names, source_options={"label_column": "Schl\u00fcssel"}
    )
    shown = run("info", store)
    assert shown.exit_code == 0, shown.output
    assert '"frisch \U0001f345": 2' in shown.stdout and '"label_column": "Schl\u00fcssel"' in shown.stdout
    assert "\\u" not in shown.stdout
    assert json.loads(run("info", store, "--json").stdout)["classes"] == {names[0]: 2, names[1]: 2}


def incomplete_store(path):
    return make_store(path, np.zeros((5, 3)), [0, 1, 0, 1, 0], ["x", "y"], finish=False)


def test_bad_input_is_one_clear_line(tmp_path, resnet18_weights):
    (tmp_path / "empty").mkdir()
    write_image_folder(tmp_path / "imgs", per_class=2)
    (tmp_path / "imgs" / "circle" / "bad.jpg").write_bytes(b"definitely not a jpeg")
    (tmp_path / "notext.csv").write_text("title,label\nhello,a\n")
    (tmp_path / "fake.h5").write_text("not hdf5")
    rn = [*resnet_args(resnet18_weights), "--no-progress"]
    cases = [
        (("embed", tmp_path / "missing"), "does not exist"),
        (("embed", tmp_path / "empty"), "no images found"),
        (("embed", tmp_path / "imgs", *rn, "--on-error", "fail"), "circle/bad.jpg is not a readable image"),
        (("embed", tmp_path / "notext.csv"), "no column 'text'"),
        (("fit-head", tmp_path / "fake.h5"), "not a tlcache feature store"),
        (("info", tmp_path / "fake.h5"), "not a tlcache feature store"),
        (("info", tmp_path / "missing.h5"), "does not exist"),
        (("predict", tmp_path / "nohead", tmp_path / "notext.csv"), "does not exist"),
        (("embed", write_text_csv(tmp_path / "good.csv"), "-b", "nope"), "unknown backbone 'nope'"),
        (("fit-head", incomplete_store(tmp_path / "cut.h5")), "incomplete (4 of 5 rows)"),
        (("fit-head", write_text_csv(tmp_path / "data.csv")), "is a data file, not a feature store; embed it first"),
        (("embed", tmp_path / "notext.csv", "--text-column", "title", "--label-column", "stars"), "no column 'stars'"),
    ]
    for args, message in cases:
        assert_user_error(run(*args), message)


def test_ls_and_gc(tmp_path, tiny_bert_dir):
    import os
    import time

    cache = tmp_path / "cache"
    done = embed_json(write_text_csv(tmp_path / "a.csv"), "-b", f"hf:{tiny_bert_dir}", "--out", cache)
    cut = make_store(cache / "hf-cut-00000000-11111111111111111111.h5", np.zeros((5, 3)), [0] * 5, ["x"], finish=False)
    listing = json.loads(run("ls", cache, "--json").stdout)
    states = {Path(e["path"]).name: e["state"] for e in listing}
    assert states == {Path(done["path"]).name: "complete", cut.name + ".partial": "partial"}
    table = run("ls", cache).stdout
    assert "4/5" in table and "partial" in table and "complete" in table
    precision = FeatureStore(done["path"]).meta["precision"]  # bf16 or fp32, as the machine has it
    assert [e["features"] for e in listing if e["state"] == "complete"] == [f"{precision} compute"]  # text: no px

    dry = run("gc", cache, "--dry-run")
    assert dry.exit_code == 0 and "would remove 1 stores" in dry.stdout
    assert (cache / (cut.name + ".partial")).exists()
    assert "removed 1 stores" in run("gc", cache).stdout
    assert not (cache / (cut.name + ".partial")).exists() and Path(done["path"]).exists()

    def age(days):  # the store, and its lock file, which reads mark (tlcache.cache.mark_used)
        old = time.time() - days * 86400
        for path in (done["path"], done["path"] + ".lock"):
            os.utime(path, (old, old))

    age(40)
    assert "removed 0 stores" in run("gc", cache, "--unused-days", 60).stdout
    # A cache hit counts as a use: the store is young again and survives a 30-day gc. Its own time stays that of
    # its last write, which a recipe's record of the step that wrote it compares (tlcache.step_records).
    written = Path(done["path"]).stat().st_mtime
    assert embed_json(tmp_path / "a.csv", "-b", f"hf:{tiny_bert_dir}", "--out", cache)["cached"]
    assert Path(done["path"]).stat().st_mtime == written
    assert "removed 0 stores" in run("gc", cache, "--unused-days", 30).stdout
    age(40)  # and so does fitting a head on it, which leaves the store's own time as it was
    written = Path(done["path"]).stat().st_mtime
    assert run("fit-head", done["path"], "--head", "knn", "--out", tmp_path / "knn").exit_code == 0
    assert Path(done["path"]).stat().st_mtime == written
    assert "removed 0 stores" in run("gc", cache, "--unused-days", 30).stdout
    age(40)
    assert "removed 1 stores" in run("gc", cache, "--unused-days", 30).stdout
    assert json.loads(run("ls", cache, "--json").stdout) == []


def test_ls_says_of_how_many_items_a_store_of_some_of_its_source_holds(tmp_path, tiny_bert_dir):
    """compare's training items and LP-FT's warm starts embed parts of a source: listed alike before."""
    from tlcache.embed import embed_source
    from tlcache.sources import load_source

    source = load_source(write_text_csv(tmp_path / "a.csv", n=24))
    cache = tmp_path / "cache"
    whole = embed_source(source, f"hf:{tiny_bert_dir}", out=cache, progress=False)
    part = embed_source(source.subset(range(10)), f"hf:{tiny_bert_dir}", out=cache, progress=False)
    listing = {e["path"]: e["part_of"] for e in json.loads(run("ls", cache, "--json").stdout)}
    assert listing == {str(whole.path): None, str(part.path): 24}
    lines = run("ls", cache).stdout.splitlines()
    assert sum("a.csv (10 of its 24 items)" in line for line in lines) == 1
    assert sum(line.rstrip().endswith("a.csv") for line in lines) == 1


def test_ls_of_no_stores_says_which_folder_it_listed_and_how_to_list_another(tmp_path):
    home = tmp_path / "tlcache-home"  # $TLCACHE_HOME (conftest); nothing embedded into it yet
    for made in (False, True):
        if made:
            home.mkdir()
        shown = run("ls")
        assert shown.exit_code == 0, shown.output
        assert shown.stdout.strip().splitlines() == [
            f"no stores in {home}, the default cache folder ($TLCACHE_HOME, else ~/.cache/tlcache); for stores that "
            "`tlcache embed --out FOLDER` wrote, run `tlcache ls FOLDER`"
        ]
    (tmp_path / "cache").mkdir()
    assert run("ls", tmp_path / "cache").stdout.strip() == f"no stores in {tmp_path / 'cache'}"
    assert json.loads(run("ls", "--json").stdout) == []


def test_gc_before_anything_was_embedded_into_the_default_cache_removes_nothing(tmp_path):
    assert not (tmp_path / "tlcache-home").exists()  # $TLCACHE_HOME (conftest)
    done = run("gc", "--unused-days", 0)
    assert done.exit_code == 0 and "removed 0 stores" in done.stdout
    assert not (tmp_path / "tlcache-home").exists()  # and makes no folder
    assert_user_error(run("gc", tmp_path / "nowhere"), "is not a folder")  # a folder named that is not there


def test_embed_layer_pool_views_and_compression_options(tmp_path, resnet18_weights):
    folder = write_image_folder(tmp_path / "imgs", per_class=3)
    base = resnet_args(resnet18_weights)
    payload = embed_json(folder, *base, "--layer", "layer3", "--pool", "max", "--views", 2, "--compression", "gzip")
    store = FeatureStore(payload["path"])
    assert store.dim == 256 and store.n_views == 2 and store.meta["compression"] == "gzip"
    assert store.meta["layer"] == "layer3" and store.meta["pooling"] == "max"
    fitted = run("fit-head", payload["path"], "--test-fraction", 0.5, "--out", tmp_path / "run", "--json")
    assert json.loads(fitted.stdout)["views_per_item"] == 2
    assert_user_error(run("embed", write_text_csv(tmp_path / "t.csv"), "--views", 2), "--views applies to image")


def test_head_all_prints_a_leaderboard(tmp_path, text_stores):
    train, test = text_stores
    result = run("fit-head", train["path"], "--test", test["path"], "--head", "all", "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    board = json.loads((tmp_path / "runs" / "leaderboard.json").read_text())
    assert {row["head"] for row in board} == {"logreg", "linear-svm", "svm", "mlp", "knn"}
    validation = [row["validation_accuracy"] for row in board]
    assert validation == sorted(validation, reverse=True)  # ranked on validation data, never on the test items
    assert "leaderboard (ranked by validation accuracy) ->" in result.stdout
    assert "Ranked by validation accuracy" in (tmp_path / "runs" / "leaderboard.md").read_text()
    # 40 training items, under the size where sweeps use folds: every one is a validation item.
    assert {row["validation_items"] for row in board} == {40}
    # On 40 items the ranking is unsettled: said on stdout and in leaderboard.md.
    assert "Measured on 40 validation items (one item is 2.5 points" in result.stdout
    assert "Measured on 40 validation items" in (tmp_path / "runs" / "leaderboard.md").read_text()


def test_report_renders_again_from_json(tmp_path, text_stores):
    train, _ = text_stores
    assert run("fit-head", train["path"], "--out", tmp_path / "run").exit_code == 0
    (tmp_path / "run" / "report.md").unlink()
    (tmp_path / "run" / "sweep.png").unlink()
    result = run("report", tmp_path / "run")
    assert result.exit_code == 0 and (tmp_path / "run" / "report.md").exists()
    assert (tmp_path / "run" / "sweep.png").exists() and (tmp_path / "run" / "confusion.png").exists()
    assert_user_error(run("report", tmp_path), "holds no report.json")
    assert_user_error(run("report", tmp_path / "nope"), "nope does not exist; pass a run folder")


def test_group_column_gives_per_group_metrics(tmp_path, tiny_bert_dir):
    path = tmp_path / "grouped.csv"
    rows = ["text,label,region"]
    for i in range(60):
        word, label, region = ("good", "pos", "north") if i % 2 else ("bad", "neg", "south")
        region = "north" if i % 3 else "south"
        rows.append(f"the movie was very {word} {i},{label},{region}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    store = embed_json(path, "-b", f"hf:{tiny_bert_dir}", "--group-column", "region")
    assert FeatureStore(store["path"]).groups()[:3] == ["south", "north", "north"]
    plain = embed_json(path, "-b", f"hf:{tiny_bert_dir}")
    assert plain["key"] != store["key"]  # groups are part of the data, so part of the key
    payload = json.loads(run("fit-head", store["path"], "--test-fraction", 0.5, "--json").stdout)
    groups = payload["groups"]
    assert groups["column"] == "region" and {g["group"] for g in groups["per_group"]} == {"north", "south"}
    assert sum(g["support"] for g in groups["per_group"]) == payload["n_test"]
    assert groups["worst_group_gap"] >= 0


def test_fit_head_option_errors(tmp_path, text_stores):
    train, _ = text_stores
    assert_user_error(run("fit-head", train["path"], "--grid", "1,abc"), "not a comma-separated list")
    assert_user_error(run("fit-head", train["path"], "--grid", "0,1"), "needs finite values above 0")
    for grid in ("nan", "1,inf", ","):
        assert_user_error(run("fit-head", train["path"], "--grid", grid), "--grid")
    assert_user_error(run("fit-head", train["path"], "--head", "knn", "--grid", "0.5,3"), "needs whole numbers")
    assert run("fit-head", train["path"], "--seed", -1).exit_code == 2
    assert_user_error(run("fit-head", train["path"], "--head", "mlp", "--class-weight", "balanced"), "not supported")


def test_predict_embeds_with_the_heads_precision(tmp_path, tiny_bert_dir):
    train = embed_json(write_text_csv(tmp_path / "train.csv", n=40), "-b", f"hf:{tiny_bert_dir}", "--precision", "bf16")
    assert run("fit-head", train["path"], "--out", tmp_path / "run").exit_code == 0
    assert json.loads((tmp_path / "run" / "head.json").read_text())["precision"] == "bf16"
    result = run("predict", tmp_path / "run", write_text_csv(tmp_path / "new.csv", n=6, seed=3), "--no-progress")
    assert result.exit_code == 0, result.output
    fp32 = embed_json(tmp_path / "new.csv", "-b", f"hf:{tiny_bert_dir}", "--precision", "fp32")
    assert_user_error(
        run("predict", tmp_path / "run", fp32["path"]),
        "differ in precision; bf16 against fp32: embed with the same --precision (--precision bf16)",
    )


def test_finetune_trains_saves_and_the_result_embeds(tmp_path, tiny_bert_dir):
    train = write_text_csv(tmp_path / "train.csv", n=40)
    test = write_text_csv(tmp_path / "test.csv", n=12, seed=1)
    args = ["finetune", train, "-b", f"hf:{tiny_bert_dir}", "--test", test, "--epochs", 2, "--batch-size", 8]
    result = run(*args, "--strategy", "top-1", "--lp-ft", "--precision", "fp32", "--out", tmp_path / "ft", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["finetune"]["strategy"] == "top-1" and report["finetune"]["lp_ft"] and report["n_test"] == 12
    assert (tmp_path / "ft" / "report.md").is_file() and (tmp_path / "ft" / "body" / "model.safetensors").is_file()
    stored = embed_json(test, "-b", f"finetuned:{tmp_path / 'ft'}", "--out", tmp_path / "cache")
    assert stored["dim"] == 32 and stored["rows"] == 12
    assert_user_error(run(*args, "--out", tmp_path / "ft", "--resume"), "a finished fine-tune; nothing to resume")
    assert_user_error(run(*args, "--out", tmp_path / "ft"), "holds a finished fine-tune; pick another --out")
    assert_user_error(run(*args, "--strategy", "top-9"), "has 3 blocks; use full")
    assert_user_error(run(*args, "--augment", "crop,twirl"), "--augment twirl is not known")
    assert_user_error(run(*args, "--mixup", "-1"), "--mixup must be 0 or more, --label-smoothing in [0, 1)")
    assert_user_error(run(*args, "--label-smoothing", "1"), "--mixup must be 0 or more, --label-smoothing in [0, 1)")
    assert_user_error(run(*args, "--mixup", "0.2"), "holds texts; drop --mixup")


def test_test_items_that_are_training_items_are_counted_and_all_of_them_refused(tmp_path, tiny_bert_dir, text_stores):
    """A new user's fit-head with the training store as --test scored 0.947 (0.860 on real test items), and 200
    training items among 500 test items 0.906, without a word. The same content (by the stores' fingerprints)
    on both sides is now counted in the report and warned of; a test set of training items only is refused, by
    fit-head, finetune and compare alike, before any fit."""
    train, test = text_stores
    assert_user_error(
        run("fit-head", train["path"], "--test", train["path"], "--out", tmp_path / "same"),
        "every one of its 40 test items is also a training item",
    )
    assert not (tmp_path / "same").exists()
    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    shared = len(set(_texts(train_csv)) & set(_texts(test_csv)))  # the fixture's short texts repeat: 6 of 20
    assert 0 < shared < 20
    with pytest.warns(UserWarning, match=f"{shared} of 20 test items are also training items"):
        fitted = run("fit-head", train["path"], "--test", test["path"], "--head", "knn", "--out", tmp_path / "knn")
    assert fitted.exit_code == 0, fitted.output
    report = json.loads((tmp_path / "knn" / "report.json").read_text())
    assert report["test_in_training"] == shared
    assert f"| **test items also in training** | {shared} " in (tmp_path / "knn" / "report.md").read_text()
    bert = f"hf:{tiny_bert_dir}"
    for command in (["finetune", train_csv, "-b", bert], ["compare", train_csv, "-b", bert, "--finetune", "none"]):
        refused = run(*command, "--test", train_csv, "--out", tmp_path / command[0])
        assert_user_error(refused, "every one of its 40 test items is also a training item")
        assert not (tmp_path / command[0]).exists()


def _texts(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def test_a_table_without_a_label_column_is_said_to_be_embedded_without_labels(tmp_path, tiny_bert_dir):
    """A new user's `package,text,section` file was embedded unlabelled without a word, and fit-head then said only
    "has no labels": embed names the columns that could be the label, and fit-head names --label-column."""
    table = tmp_path / "packages.csv"
    rows = [f"pkg{i},{('a good tool', 'a dull library')[i % 2]} {i},{('utils', 'libs')[i % 2]}" for i in range(12)]
    table.write_text("package,text,section\n" + "\n".join(rows) + "\n", encoding="utf-8")
    done = run("embed", table, "-b", f"hf:{tiny_bert_dir}", "--out", tmp_path / "cache", "--no-progress")
    assert done.exit_code == 0, done.output
    assert "has no column 'label', so its items are stored without labels" in done.stderr
    assert "--label-column naming one of: package, section" in done.stderr
    store = next((tmp_path / "cache").glob("*.h5"))
    assert_user_error(run("fit-head", store, "--out", tmp_path / "run"), "a table embedded with --label-column")
    labelled = run("embed", table, "-b", f"hf:{tiny_bert_dir}", "--label-column", "section", "--no-progress")
    assert labelled.exit_code == 0 and "note:" not in labelled.stderr
    plain = tmp_path / "plain.csv"  # nothing but texts: items to predict, nothing to say
    plain.write_text("text\nfine\nbad plot\n", encoding="utf-8")
    quiet = run("embed", plain, "-b", f"hf:{tiny_bert_dir}", "--no-progress")
    assert quiet.exit_code == 0 and "note:" not in quiet.stderr


def test_a_run_given_where_a_store_goes_is_named_as_a_run(tmp_path, text_stores):
    """`fit-head RUN` was told to embed the run folder as images, and `info RUN/head.json` to delete the head."""
    train, _ = text_stores
    assert run("fit-head", train["path"], "--out", tmp_path / "run").exit_code == 0
    assert_user_error(run("fit-head", tmp_path / "run"), "is a folder of `fit-head` (a run), not a feature store")
    assert_user_error(
        run("info", tmp_path / "run" / "head.json"), "is a file of a `fit-head` run (head.json), not a feature store"
    )
    assert (tmp_path / "run" / "head.json").is_file()
