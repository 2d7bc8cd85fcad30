"""`tlcache export` and the exported model, on tiny real models: a 2-layer BERT and a random resnet18."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_image_folder, write_text_csv
from tlcache import export as export_module
from tlcache.cli import cli
from tlcache.errors import UserError
from tlcache.exported import load_exported

pytest.importorskip("onnxruntime", reason="the [export] extra (make setup installs it)")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def fitted_run(tmp_path: Path, source: Path, backbone: list, head: str) -> Path:
    """A store of ``source`` and a head fitted on it with a held-out test split; the run folder."""
    store = json.loads(ok("embed", source, *backbone, "--precision", "fp32", "--out", tmp_path / "cache", "--json"))
    out = tmp_path / "runs" / source.stem / head
    ok("fit-head", store["path"], "--head", head, "--out", out)
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def text_run(tmp_path, tiny_bert_dir):
    source = write_text_csv(tmp_path / "reviews.csv", n=60)
    return fitted_run(tmp_path, source, ["-b", f"hf:{tiny_bert_dir}"], "logreg")


def assert_same_predictions(exported_csv: Path, torch_csv: Path) -> None:
    """The exported model's CSV against `tlcache predict`'s: same ids, labels and columns, probabilities to 1e-4."""
    ours, theirs = read_csv(exported_csv), read_csv(torch_csv)
    assert [r["id"] for r in ours] == [r["id"] for r in theirs]
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    assert list(ours[0]) == list(theirs[0])
    columns = [c for c in ours[0] if c.startswith("prob_")]
    ours_p = np.array([[float(r[c]) for c in columns] for r in ours])
    theirs_p = np.array([[float(r[c]) for c in columns] for r in theirs])
    np.testing.assert_allclose(ours_p, theirs_p, atol=1e-4)


def test_text_export_predicts_as_tlcache_predict_and_records_its_checks(tmp_path, text_run):
    record = json.loads(ok("export", text_run, "--json"))
    model_path = Path(record["path"])
    assert model_path == text_run / "model.onnx" and model_path.is_file()
    gates = record["gates"]
    assert gates["passed"] and not record["forced"] and gates["thresholds"] == export_module.GATES["fp32"]
    assert gates["measured"]["mean_cosine"] > 0.9999 and gates["measured"]["same_predictions"] == 1.0
    new = write_text_csv(tmp_path / "new.csv", n=30, seed=5)
    ok("predict", model_path, new, "--out", tmp_path / "exported.csv")
    ok("predict", text_run, new, "--out", tmp_path / "torch.csv", "--no-progress")
    assert_same_predictions(tmp_path / "exported.csv", tmp_path / "torch.csv")
    model = load_exported(model_path)  # the serving API, and the record inside the file
    assert model.metadata["head"] == "logreg" and model.metadata["classes"] == ["neg", "pos"]
    assert model.metadata["gates"]["measured"] == gates["measured"] and model.metadata["quantize"] == "none"
    texts = [row["text"] for row in read_csv(new)]
    assert model.predict(texts) == [row["label"] for row in read_csv(tmp_path / "torch.csv")]
    assert model.predict_proba(texts).shape == (30, 2) and model.features(texts).shape == (30, record["dim"])
    with pytest.raises(UserError, match=r"takes a list of items, not one str: pass \['a fine film'\]"):
        model.predict("a fine film")  # a prediction per letter before
    with pytest.raises(UserError, match="item 1 is an empty text"):
        model.predict(["a fine film", "  "])  # refused, as the command line refuses a source's empty text
    # The head's own training items are counted through the export as through the head (a new user's run said so
    # from the run folder, and nothing from its model.onnx).
    from tlcache.predict import predict, predict_exported

    trained = predict(text_run, tmp_path / "reviews.csv", out=tmp_path / "t.csv", progress=False).in_training
    assert trained >= 48  # the 48 training texts of 60 (and held-out texts that repeat them)
    exported = predict_exported(model_path, tmp_path / "reviews.csv", out=tmp_path / "e.csv")
    assert exported.in_training == trained and "the head's own training items" in exported.summary_line()
    # Texts past the model's limit are counted through the export as through the head (a new user saw the count
    # from the run folder only).
    long = tmp_path / "long.csv"
    long.write_text("text,label\n" + "".join(f"{'a long review ' * 400}{i},pos\nshort {i},neg\n" for i in range(3)))
    cut = predict(text_run, long, out=tmp_path / "lt.csv", progress=False)
    exported = predict_exported(model_path, long, out=tmp_path / "le.csv")
    assert cut.truncated == exported.truncated == 3 and "3 texts cut to the model's limit" in exported.summary_line()


def test_image_mlp_linear_svm_svm_and_knn_exports_predict_as_tlcache_predict(tmp_path, resnet18_weights):
    classes = ("circle", "square", "disc")  # three: the RBF svm's one-against-one votes
    source = write_image_folder(tmp_path / "shapes", per_class=12, classes=classes)
    backbone = ["-b", "torchvision:resnet18", "--weights", resnet18_weights, "--image-size", 32]
    new = write_image_folder(tmp_path / "new", per_class=4, classes=classes, seed=3)
    for head in ("mlp", "linear-svm", "svm", "knn"):
        run_dir = fitted_run(tmp_path, source, backbone, head)
        ok("export", run_dir, "--out", tmp_path / f"{head}.onnx")
        ok("predict", tmp_path / f"{head}.onnx", new, "--out", tmp_path / f"{head}-exported.csv")
        ok("predict", run_dir, new, "--out", tmp_path / f"{head}-torch.csv", "--no-progress")
        assert_same_predictions(tmp_path / f"{head}-exported.csv", tmp_path / f"{head}-torch.csv")


@pytest.mark.parametrize("size", [(40, 40), (97, 33), (31, 120), (224, 224), (17, 16)])
def test_exported_image_preprocessing_is_the_backbones_transform(size):
    """The serving side's numpy resize, crop and normalisation give the pixels torchvision's transform gives."""
    from PIL import Image

    from tlcache.backbones import create_backbone
    from tlcache.exported import _pixels

    backbone = create_backbone("torchvision:resnet18", weights="random", image_size=32)
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours, why = _pixels(image, backbone.preprocessing)
    assert why is None
    np.testing.assert_allclose(ours, backbone.transform()(image).numpy(), atol=1e-6)


def test_the_export_shows_a_bar_of_its_check_on_a_terminal_unless_no_progress(tmp_path, text_run, monkeypatch):
    """Its check reads every test item again and runs it through the graph (22 s for a new user's 328 texts,
    without a word); two new users passed --no-progress to it as to every other command, and were refused."""
    import click.testing

    monkeypatch.setattr(click.testing._NamedTextIOWrapper, "isatty", lambda self: True)  # a user's terminal
    tested = len(read_csv(text_run / "predictions.csv"))
    shown = run("export", text_run, "--out", tmp_path / "a.onnx")
    assert shown.exit_code == 0 and "check the export" in shown.stderr and f"/{tested} " in shown.stderr
    hidden = run("export", text_run, "--out", tmp_path / "b.onnx", "--no-progress")
    assert hidden.exit_code == 0 and "check the export" not in hidden.stderr


def _bert(store: str) -> list[str]:
    """The backbone options of the tiny text model a store of this file's runs was embedded with."""
    from tlcache.store import FeatureStore

    return ["-b", FeatureStore(store).meta["backbone"], "--precision", "fp32", "--out", str(Path(store).parent)]


def test_refitting_the_same_head_keeps_its_export_and_another_head_removes_it(tmp_path, text_run):
    """A new user's rerun of the same fit-head removed an 88 MiB export (22 s to make) of the very same head."""
    ok("export", text_run)
    store = json.loads((text_run / "head.json").read_text())["store"]
    ok("fit-head", store, "--head", "logreg", "--out", text_run)  # the same command again: the same head
    assert (text_run / "model.onnx").is_file()
    with pytest.warns(UserWarning, match="model.onnx exported the head replaced, and are removed"):
        ok("fit-head", store, "--head", "logreg", "--grid", "0.5", "--out", text_run)  # another head: export stale
    assert not (text_run / "model.onnx").exists()
    # A head of another store in the same folder: said, with the exports it takes (a new user's went without a line).
    ok("export", text_run)
    other = json.loads(ok("embed", write_text_csv(tmp_path / "other.csv", n=30, seed=3), *_bert(store), "--json"))
    with pytest.warns(UserWarning, match=re.escape(f"held a head of another store ({store}): replaced; model.onnx")):
        ok("fit-head", other["path"], "--head", "logreg", "--out", text_run)


def test_an_export_removes_the_work_folders_of_killed_exports_and_keeps_running_ones(tmp_path, text_run):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f"{export_module.WORK_PREFIX}{int(gone.stdout)}-x1y2"  # its process has ended
    running = tmp_path / f"{export_module.WORK_PREFIX}{os.getpid()}-a3b4"  # this test's process is alive
    for work in (killed, running):
        work.mkdir()
        (work / "fp32.onnx").write_bytes(b"half a graph")
    ok("export", text_run, "--out", tmp_path / "m.onnx")
    assert not killed.exists() and (running / "fp32.onnx").is_file() and (tmp_path / "m.onnx").is_file()


def test_a_failed_gate_writes_nothing_unless_forced(tmp_path, text_run, monkeypatch):
    strict = {**export_module.GATES["fp32"], "mean_cosine": 1.5, "min_cosine": 1.5}  # no export can reach them
    monkeypatch.setitem(export_module.GATES, "fp32", strict)
    result = run("export", text_run, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 2 and "failed its parity checks (mean cosine" in result.stderr
    tested = {row["id"] for row in read_csv(text_run / "predictions.csv")}
    worst = re.search(r"worst cosine to the cache [0-9.]+ < 1.5, item (\S+?)\)", result.stderr)
    assert worst and worst[1] in tested  # the item furthest from its cached features, named
    assert "half precision" not in result.stderr  # the run's features are fp32
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob(".tlcache-export-*"))
    result = run("export", text_run, "--out", tmp_path / "new" / "folders" / "m.onnx")
    assert result.exit_code == 2 and not (tmp_path / "new").exists()  # the folders it made for the file, removed
    forced = json.loads(ok("export", text_run, "--out", tmp_path / "m.onnx", "--force", "--json"))
    assert forced["forced"] and not forced["gates"]["passed"] and (tmp_path / "m.onnx").is_file()
    with pytest.warns(UserWarning, match="failed its parity checks"):
        assert load_exported(tmp_path / "m.onnx").metadata["forced"]


def test_on_a_small_test_set_one_changed_prediction_is_allowed_and_two_are_not(tmp_path, text_run, monkeypatch):
    from tlcache import runs as runs_module

    tested = len(read_csv(text_run / "predictions.csv"))
    assert 1 / tested > export_module.GATES["fp32"]["accuracy_drop"]  # a small test set: one item is over the limit
    first = json.loads(ok("export", text_run, "--out", tmp_path / "m.onnx", "--json"))["gates"]["measured"]
    assert first["accuracy_drop_allowed"] == pytest.approx(1 / tested)
    read_report = runs_module.read_report
    for flipped, passes in ((1, True), (2, False)):  # as if the run had scored that many items more than the export

        def scored(run_dir, flipped=flipped):  # (an edited report.json is refused: it contradicts its matrix)
            report = read_report(run_dir)
            report["metrics"]["accuracy"] = first["accuracy"] + flipped / tested
            return report

        monkeypatch.setattr(runs_module, "read_report", scored)
        result = run("export", text_run, "--out", tmp_path / f"m{flipped}.onnx")
        assert (result.exit_code == 0) == passes, result.output
    assert f"- {1 / tested:.4g})" in result.stderr  # the failing check names the allowance


def test_a_run_on_half_precision_features_past_its_gate_is_held_to_the_fp32_features_and_told_of_them(
    tmp_path, tiny_bert_dir, monkeypatch
):
    """A new user's default (bf16) store of shapes on noise failed its export (mean cosine to the cache 0.9951, worst
    0.935: the store's rounding, larger on such images), although the export was faithful and scored as the run."""
    source = write_text_csv(tmp_path / "reviews.csv", n=40)
    store = json.loads(ok("embed", source, "-b", f"hf:{tiny_bert_dir}", "--precision", "bf16", "--json"))
    ok("fit-head", store["path"], "--head", "logreg", "--out", tmp_path / "run")
    strict = {**export_module.GATES["fp32 of a half-precision store"], "min_cosine": 1.5}  # as if rounding were larger
    monkeypatch.setitem(export_module.GATES, "fp32 of a half-precision store", strict)
    gates = json.loads(ok("export", tmp_path / "run", "--out", tmp_path / "m.onnx", "--json"))["gates"]
    measured = gates["measured"]
    assert gates["passed"] and measured["min_cosine"] < 1.5  # the cache's cosine past its limit: then to fp32's
    assert measured["mean_cosine_to_fp32"] >= 0.9999 and measured["min_cosine_to_fp32"] >= 0.999
    assert (gates["thresholds"]["mean_cosine_to_fp32"], gates["thresholds"]["min_cosine_to_fp32"]) == (0.9999, 0.999)
    unfaithful = {**export_module.GATES["fp32"], "min_cosine": 1.5}  # and as if the export were not faithful
    monkeypatch.setitem(export_module.GATES, "fp32", unfaithful)
    result = run("export", tmp_path / "run", "--out", tmp_path / "n.onnx")
    assert result.exit_code == 2 and "worst cosine to the cache" in result.stderr
    assert "worst cosine to the backbone's fp32 features" in result.stderr and not (tmp_path / "n.onnx").exists()
    assert "embed the data with --precision fp32, fit the head on that store and export its run" in result.stderr


def test_an_exported_text_model_tokenises_a_long_text_only_as_far_as_it_reads_it(tmp_path, text_run, monkeypatch):
    """One hostile 5 MB request took an exported model 1.5 GB: the prefix of whole words that holds its limit's
    tokens gives the same features."""
    ok("export", text_run, "--out", tmp_path / "m.onnx")
    model = load_exported(tmp_path / "m.onnx")
    import tlcache.exported as exported_module

    long = " ".join(["a good film, great fun"] * 40_000)
    counted: list[int] = []
    monkeypatch.setattr(model, "_tokenizer", _Counting(model._tokenizer, counted))
    cut = model.features([long])
    assert max(counted) < 10_000  # never the whole text
    monkeypatch.setattr(exported_module, "text_prefix", lambda text, count, limit: text)
    np.testing.assert_array_equal(cut, model.features([long]))


class _Counting:
    """A tokenizer that records the length of every text it is given."""

    def __init__(self, tokenizer, lengths: list):
        self.tokenizer, self.lengths = tokenizer, lengths

    def encode(self, text, **options):
        self.lengths.append(len(text))
        return self.tokenizer.encode(text, **options)

    def encode_batch(self, texts):
        self.lengths.extend(len(text) for text in texts)
        return self.tokenizer.encode_batch(texts)


def test_exports_that_cannot_be_made_say_why_in_one_line(tmp_path, text_run):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    from tlcache.errors import UserError
    from tlcache.export_graph import head_spec

    tree = make_pipeline(StandardScaler(), DecisionTreeClassifier()).fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(UserError, match="DecisionTreeClassifier head cannot be exported"):
        head_spec(tree)  # not a head tlcache fits: a run folder cannot hold one
    write_text_csv(tmp_path / "more.csv", n=10)
    (tmp_path / "reviews.csv").write_text("text,label\nchanged,pos\n", encoding="utf-8")  # the source changed
    result = run("export", text_run)
    assert result.exit_code == 2 and "is not in its source as it was embedded" in result.stderr
    not_a_model = tmp_path / "x.onnx"
    not_a_model.write_bytes(b"not onnx")
    result = run("predict", not_a_model, tmp_path / "more.csv")
    assert result.exit_code == 2 and "is not a readable ONNX model" in result.stderr


@pytest.mark.parametrize(
    "damage, message",
    [
        (b"", "is damaged"),
        (b"id,label,prob_neg,prob_pos,true_label\r\n", "is damaged"),
        (b"label,true_label\r\npos,pos\r\n", "is damaged"),
        (b"id,label\r\n1,pos\r\n", "is damaged"),
        (b"\x92\xff\x00 not text", "cannot be read"),
    ],
)
def test_a_damaged_predictions_file_is_one_line_before_the_export(tmp_path, text_run, damage, message):
    (text_run / "predictions.csv").write_bytes(damage)
    result = run("export", text_run, "--out", tmp_path / "model.onnx")
    assert result.exit_code == 2 and message in result.stderr and "fit the head again" in result.stderr
    assert not (tmp_path / "model.onnx").exists()


def test_predict_with_an_exported_model_does_not_import_torch(tmp_path, text_run):
    ok("export", text_run, "--out", tmp_path / "m.onnx")
    new = write_text_csv(tmp_path / "new.csv", n=10, seed=2)
    script = (
        "import sys\n"
        "from tlcache.cli import cli\n"
        f"cli(['predict', {str(tmp_path / 'm.onnx')!r}, {str(new)!r}, '--out', {str(tmp_path / 'p.csv')!r}],"
        " standalone_mode=False)\n"
        "from tlcache.exported import load_exported\n"
        f"load_exported({str(tmp_path / 'm.onnx')!r}).predict(['a good film'])\n"
        "print('torch' in sys.modules, 'sklearn' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["False", "False"]
    assert len(read_csv(tmp_path / "p.csv")) == 10


def test_int8_exports_of_a_text_and_an_image_model_pass_their_gates(tmp_path, text_run, resnet18_weights):
    """int8 quantises the backbone (a text model's weight products dynamically, an image model's convolutions
    statically, calibrated on training images), leaves the head in float, and runs the int8 gate."""
    import onnx

    source = write_image_folder(tmp_path / "shapes", per_class=12)
    backbone = ["-b", "torchvision:resnet18", "--weights", resnet18_weights, "--image-size", 32]
    image_run = fitted_run(tmp_path, source, backbone, "logreg")
    for run_dir, quantised_op in ((text_run, "MatMulInteger"), (image_run, "DequantizeLinear")):
        done = run("export", run_dir, "--quantize", "int8", "--force", "--json", "--no-progress")
        assert done.exit_code == 0, done.output
        # onnxruntime's calibrator prints its workings (a new user took them for warnings): none reach the terminal.
        assert "histogram" not in done.output and "Number of tensors" not in done.output
        record = json.loads(done.stdout)
        assert record["path"].endswith("model-int8.onnx") and record["quantize"] == "int8"
        assert record["gates"]["gate"] == "int8" and record["gates"]["thresholds"] == export_module.GATES["int8"]
        nodes = onnx.load(record["path"]).graph.node
        assert any(node.op_type == quantised_op for node in nodes)
        head_ops = {node.op_type for node in nodes if node.name.startswith("/head/")}
        assert "MatMul" in head_ops and not head_ops & {"MatMulInteger", "QLinearMatMul"}
        measured = record["gates"]["measured"]
        assert 0.5 < measured["mean_cosine"] <= 1.0 + 1e-6 and measured["items"] > 0
        ok("predict", record["path"], source if run_dir == image_run else tmp_path / "reviews.csv", "--out", "p.csv")


def test_without_the_export_extra_both_commands_say_which_to_install(tmp_path, text_run):
    ok("export", text_run, "--out", tmp_path / "m.onnx")
    for blocked, args in (
        ("onnx", ["export", str(text_run)]),
        ("onnxruntime", ["predict", str(tmp_path / "m.onnx"), str(tmp_path / "reviews.csv")]),
    ):
        code = f"import sys; sys.modules[{blocked!r}] = None; from tlcache.cli import main; main()"
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].endswith("pip install 'tlcache[export]'"), done.stderr


@pytest.mark.parametrize(
    "damage",
    [
        lambda record: record.pop("classes"),
        lambda record: record["text"].pop("tokenizer"),
        lambda record: record["text"].update(tokenizer="{not json"),
        lambda record: record.update(modality="audio"),
        lambda record: record.update(format="someone-else/1"),
    ],
)
def test_a_tampered_record_is_one_line_not_a_traceback(tmp_path, text_run, damage):
    from tlcache.exported import write_metadata

    ok("export", text_run, "--out", tmp_path / "m.onnx")
    record = load_exported(tmp_path / "m.onnx").metadata
    damage(record)
    write_metadata(tmp_path / "m.onnx", record)
    result = run("predict", tmp_path / "m.onnx", tmp_path / "reviews.csv")
    assert result.exit_code == 2 and "; export " in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize(
    ("head", "calibration"),
    [
        ("logreg", None),
        ("logreg", "isotonic"),
        ("linear-svm", None),
        ("svm", None),
        ("svm", "isotonic"),
        ("mlp", None),
        ("mlp", "sigmoid"),
        ("knn", None),
        ("sgd", None),
    ],
)
def test_the_graph_of_every_head_computes_what_the_head_does(head, calibration, n_classes):
    """HeadModule against the fitted scikit-learn pipeline itself, on rows it was not fitted on: the same decisions
    and the same probabilities (every kind of score, vote and calibrator map)."""
    import torch

    from tlcache.export_graph import HeadModule, head_spec
    from tlcache.heads import make_head

    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 240)
    X = rng.normal(size=(240, 6)) + 1.5 * np.eye(6)[y]
    X[:, 5] = 1.0  # a dead column, which the standardising heads drop
    grid = [1e-3, 1.0] if head == "mlp" else None  # two values: the sweep, in seconds
    pipeline = make_head(head, seed=0, grid=grid, calibration=calibration).fit(X[:200], y[:200])
    with torch.no_grad():
        _, probabilities, label = HeadModule(head_spec(pipeline))(torch.as_tensor(X[200:], dtype=torch.float32))
    np.testing.assert_array_equal(pipeline.classes_[label.numpy()], pipeline.predict(X[200:]))
    np.testing.assert_allclose(probabilities.numpy(), pipeline.predict_proba(X[200:]), atol=2e-4)
