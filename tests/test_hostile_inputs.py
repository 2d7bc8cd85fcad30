"""A hostile corpus, built here: every kind of bad input the hostile test found, and fuzzed bytes (hypothesis).

What must hold for each: no traceback (a command exits 0, or 2 with one line), no hang (each case runs under an
alarm), no silent wrong result, every good item embedded and every bad one accounted for (left out and listed, or
named in the one line that refuses the run).
"""

from __future__ import annotations

import io
import os
import re
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import make_store, write_image_folder
from tlcache.cache import list_stores
from tlcache.cli import cli
from tlcache.embed import embed_source
from tlcache.errors import UserError
from tlcache.heads import fit_head
from tlcache.store import FeatureStore

CASE_SECONDS = 120  # far above any case's time here: reaching it means a hang
FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@contextmanager
def no_hang(seconds: int = CASE_SECONDS):
    def hung(signum, frame):
        raise AssertionError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _png(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _resnet(weights) -> dict:
    return dict(backbone="torchvision:resnet18", weights=str(weights), image_size=32, precision="fp32")


def _invoke(args) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a command; a traceback (any exception but a clean exit) fails the test."""
    with no_hang():
        result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback for {args}: {result.exception!r}") from result.exception
    return result.exit_code, result.stdout, result.stderr


def _one_line_error(code: int, stderr: str) -> None:
    assert code == 2, stderr
    assert stderr.startswith("error: ") and stderr.strip().count("\n") == 0, stderr


def _accounted_for(store: FeatureStore, all_ids: set[str], good_ids: set[str]) -> None:
    """Every item is either a row or a listed skip, never both; every good item is a row."""
    rows, skipped = set(store.ids()), {item for item, _ in store.skipped()}
    assert rows | skipped == all_ids and not rows & skipped
    assert good_ids <= rows, f"good items left out: {good_ids - rows}"
    assert np.isfinite(store.features()).all()


# Image bytes: mostly images, some damaged in the ways files get damaged, some noise.
_image_blobs = st.one_of(
    st.integers(0, 10_000).map(lambda seed: ("good", _png(seed))),
    st.tuples(st.integers(0, 10_000), st.floats(0.0, 0.95)).map(
        lambda t: ("bad", _png(t[0])[: int(len(_png(t[0])) * t[1])])  # cut short: the header may survive
    ),
    st.binary(max_size=300).map(lambda b: ("bad", b)),
    st.binary(max_size=200).map(lambda b: ("bad", b"\x89PNG\r\n\x1a\n" + b)),  # a PNG signature, then noise
)


@FUZZ
@given(blobs=st.lists(_image_blobs, min_size=1, max_size=8))
def test_fuzzed_image_files_are_embedded_or_listed(tmp_path_factory, resnet18_weights, blobs):
    root = tmp_path_factory.mktemp("fuzz-images")
    all_ids, good_ids = set(), set()
    for n, (kind, data) in enumerate(blobs):
        item = f"{'ab'[n % 2]}/{n:02d}.png"
        (root / item).parent.mkdir(exist_ok=True)
        (root / item).write_bytes(data)
        all_ids.add(item)
        if kind == "good":
            good_ids.add(item)
    options = {"out": tmp_path_factory.mktemp("cache"), "progress": False, "batch_size": 3, **_resnet(resnet18_weights)}
    with no_hang():
        try:
            result = embed_source(root, **options)
        except UserError as error:  # allowed only when nothing at all could be read
            assert not good_ids and "could be read" in str(error), error
            return
    _accounted_for(FeatureStore(result.path), all_ids, good_ids)
    with no_hang():
        again = embed_source(root, **options)
    assert again.cached and again.skipped == result.skipped  # the same answer, from the cache


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_fuzzed_text_files_give_a_store_or_one_line(tmp_path_factory, tiny_bert_dir, data, suffix):
    folder = tmp_path_factory.mktemp("fuzz-text")
    source = folder / f"data{suffix}"
    source.write_bytes(data)
    code, _, stderr = _invoke(
        ["embed", source, "-b", f"hf:{tiny_bert_dir}", "--out", folder / "cache", "--no-progress"]
    )
    if code:
        _one_line_error(code, stderr)
    else:
        [path] = (folder / "cache").glob("*.h5")
        assert FeatureStore(path).n_rows >= 1


@FUZZ
@given(texts=st.lists(st.text(max_size=200), min_size=1, max_size=12))
def test_any_text_in_a_well_formed_csv_is_embedded(tmp_path_factory, tiny_bert_dir, texts):
    import csv

    folder = tmp_path_factory.mktemp("fuzz-csv")
    source = folder / "texts.csv"
    with open(source, "w", newline="", encoding="utf-8", errors="surrogatepass") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([[t] for t in texts])
    code, stdout, stderr = _invoke(
        ["embed", source, "-b", f"hf:{tiny_bert_dir}", "--out", folder / "c", "--no-progress"]
    )
    if code:  # only empty texts and those that cannot be encoded as UTF-8 (lone surrogates) are refused, in one line
        _one_line_error(code, stderr)
        empty = any(not t.strip() for t in texts)
        assert empty or any(not t.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in t) for t in texts)
        return
    [path] = (folder / "c").glob("*.h5")
    assert FeatureStore(path).n_rows == len(texts)


def _corpus(root: Path) -> tuple[set[str], set[str]]:
    """An image folder holding every damaged-file case at once: (all item ids, the good ones)."""
    write_image_folder(root, per_class=4)
    good = {f"{c}/{c}-{i:03d}.png" for c in ("circle", "square") for i in range(4)}
    victim = root / "square" / "square-002.png"
    victim.write_bytes(victim.read_bytes()[:-60])  # truncated: the header reads, the pixels do not
    good.discard("square/square-002.png")
    (root / "circle" / "empty.jpg").write_bytes(b"")
    (root / "circle" / "noise.png").write_bytes(os.urandom(500))
    (root / "circle" / "signature-only.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "square" / "text.jpg").write_text("I am not a JPEG")
    (root / "square" / "huge-claim.png").write_bytes(_png(1)[:33] + b"\x00" * 100)  # header, then zeros
    non_utf8 = os.fsdecode(b"square/\xff\xfe-ok.png")
    (root / non_utf8).write_bytes(_png(7))
    good.add("square/\\xff\\xfe-ok.png")  # stored under a printable id
    os.symlink("..", root / "circle" / "loop")  # a directory link back into the tree: not followed
    bad = {"square/square-002.png", "circle/empty.jpg", "circle/noise.png", "circle/signature-only.png"}
    bad |= {"square/text.jpg", "square/huge-claim.png"}
    return good | bad, good


def test_the_damaged_file_corpus_in_one_run(tmp_path, resnet18_weights):
    all_ids, good = _corpus(tmp_path / "corpus")
    args = ["embed", tmp_path / "corpus", "--out", tmp_path / "cache", "--no-progress", "-b", "torchvision:resnet18"]
    args += ["--weights", resnet18_weights, "--image-size", 32]
    code, stdout, stderr = _invoke(args)
    assert code == 0, stderr
    listed = {line.split(": ")[0].removeprefix("skipped ") for line in stderr.splitlines() if line.startswith("skip")}
    assert listed == all_ids - good  # each bad file named with why, in this one run
    [path] = (tmp_path / "cache").glob("*.h5")
    _accounted_for(FeatureStore(path), all_ids, good)
    code, _, stderr = _invoke([*args, "--on-error", "fail"])
    _one_line_error(code, stderr)
    assert f"{len(all_ids - good)} unreadable items" in stderr


@pytest.mark.parametrize("kind", ["fifo", "device", "broken-link"])
def test_files_that_are_not_regular_are_refused_in_one_line_without_hanging(tmp_path, resnet18_weights, kind):
    folder = write_image_folder(tmp_path / "imgs", per_class=2)
    odd = folder / "circle" / "odd.jpg"
    if kind == "fifo":
        os.mkfifo(odd)  # reading it would wait for a writer forever
    else:
        os.symlink("/dev/zero" if kind == "device" else "/nowhere/at/all.jpg", odd)
    args = ["embed", folder, "--out", tmp_path / "cache", "--no-progress", "-b", "torchvision:resnet18"]
    code, _, stderr = _invoke([*args, "--weights", resnet18_weights, "--image-size", 32])
    _one_line_error(code, stderr)
    assert "odd.jpg" in stderr


def _tamper(path: Path, how: str) -> None:
    import h5py

    with h5py.File(path, "r+") as handle:
        attrs = handle.attrs
        if how == "no complete mark":
            del attrs["complete"]
        elif how in ("no labels", "no features", "no ids"):
            del handle[how.removeprefix("no ")]
        elif how == "bad JSON attribute":
            attrs["backbone_spec"] = "{not json"
        elif how in ("NaN feature", "infinite feature"):
            handle["features"][3, 1] = np.nan if how == "NaN feature" else np.inf
        elif how == "label out of range":
            handle["labels"][2] = 7
        elif how == "negative row count":
            attrs["n_rows"] = -5
        elif how == "huge row count":
            attrs["n_rows"] = 10**12
        elif how == "row count as text":
            attrs["n_rows"] = "30"
        elif how == "fewer rows than it says":
            attrs["n_rows"] = int(attrs["n_rows"]) + 28
        elif how == "class names not a list":
            handle["labels"].attrs["class_names"] = '{"a": 1}'
        elif how == "wrong dim":
            attrs["dim"] = 3
        elif how == "features a group":
            del handle["features"]
            handle.create_group("features")
        elif how in ("no backbone", "no backbone_spec"):
            del attrs[how.removeprefix("no ")]
        elif how == "a class name twice":
            handle["labels"].attrs["class_names"] = '["a", "a"]'
        elif how == "complete with a row never written":
            handle["done"][5] = False
        elif how == "labels edited":  # a new user's 50 edited labels were served as a cache hit, and trained on
            handle["labels"][:4] = 1 - handle["labels"][:4]
        elif how == "class names swapped":
            handle["labels"].attrs["class_names"] = '["b", "a"]'


TAMPERINGS = [
    "no complete mark",
    "no labels",
    "no features",
    "no ids",
    "bad JSON attribute",
    "NaN feature",
    "infinite feature",
    "label out of range",
    "negative row count",
    "huge row count",
    "row count as text",
    "fewer rows than it says",
    "class names not a list",
    "wrong dim",
    "features a group",
    "no backbone",
    "no backbone_spec",
    "a class name twice",
    "complete with a row never written",
    "labels edited",
    "class names swapped",
]


def _store(path: Path) -> Path:
    """A small two-class store."""
    from conftest import make_store

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 6)) + np.repeat([[0.0], [3.0]], 8, axis=0), [0] * 8 + [1] * 8
    return make_store(path, X, y, ["a", "b"])


def _fitted(tmp_path: Path) -> tuple[Path, Path]:
    """A small store and a logreg run folder fitted on it: (store, run)."""
    store, run = _store(tmp_path / "good.h5"), tmp_path / "run"
    code, _, stderr = _invoke(["fit-head", store, "--head", "logreg", "--out", run])
    assert code == 0, stderr
    return store, run


@pytest.mark.parametrize("how", TAMPERINGS)
def test_a_tampered_store_is_one_line_for_every_command_that_reads_it(tmp_path, how):
    _, run = _fitted(tmp_path)
    bad = _store(tmp_path / "bad.h5")
    _tamper(bad, how)
    readers = [["fit-head", bad, "--out", tmp_path / "run2"], ["predict", run, bad, "-o", "-"]]
    if "feature" not in how:  # info reads no features: a value inside them is found where they are read
        readers.append(["info", bad])
    for args in readers:
        code, stdout, stderr = _invoke(args)
        _one_line_error(code, stderr)
        assert str(bad) in stderr and not stdout.strip(), (args, stdout)


RUN_TAMPERINGS = {
    "report not JSON": ("report.json", lambda d: "{bad"),
    "report of another shape": ("report.json", lambda d: {"head": 3}),
    "report with a bad matrix": ("report.json", lambda d: {**d, "metrics": {**d["metrics"], "confusion_matrix": "x"}}),
    "report with bad class rows": ("report.json", lambda d: {**d, "metrics": {**d["metrics"], "per_class": [{}]}}),
    "sidecar a list": ("head.json", lambda d: []),
    "sidecar classes a string": ("head.json", lambda d: {**d, "classes": "ab"}),
    "sidecar without the head file": ("head.json", lambda d: {k: v for k, v in d.items() if k != "head_file"}),
    "sidecar naming another file": ("head.json", lambda d: {**d, "head_file": "../../etc/passwd"}),
    # A new user's edits that each command took as they were: labels swapped in every prediction, a report whose
    # accuracy is not its own confusion matrix's.
    "sidecar classes swapped": ("head.json", lambda d: {**d, "classes": d["classes"][::-1]}),
    "sidecar class renamed": ("head.json", lambda d: {**d, "classes": [d["classes"][0], "root-exploit"]}),
    "report accuracy edited": ("report.json", lambda d: {**d, "metrics": {**d["metrics"], "accuracy": 0.99}}),
    "report of more test items": ("report.json", lambda d: {**d, "n_test": d["n_test"] + 30}),
}


@pytest.mark.parametrize("how", RUN_TAMPERINGS)
def test_a_tampered_run_folder_is_one_line(tmp_path, how):
    import json

    store, run = _fitted(tmp_path)
    name, change = RUN_TAMPERINGS[how]
    changed = change(json.loads((run / name).read_text()))
    (run / name).write_text(changed if isinstance(changed, str) else json.dumps(changed))
    command = ["report", run] if name == "report.json" else ["predict", run, store, "-o", "-"]
    code, stdout, stderr = _invoke(command)
    _one_line_error(code, stderr)
    assert name in stderr and not stdout.strip()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: a disk that fills up. Mounting needs root; where the test cannot mount one, it says so."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_the_store_resumes_once_there_is_room(tmp_path, resnet18_weights, tiny_disk):
    import subprocess

    folder = write_image_folder(tmp_path / "imgs", per_class=100)  # 200 rows of 512 floats: 400 KiB of features
    args = ["embed", folder, "-b", "torchvision:resnet18", "--weights", resnet18_weights, "--image-size", 32]
    args += ["--precision", "fp32", "--batch-size", 8, "--no-progress"]
    code, _, stderr = _invoke([*args, "--out", tiny_disk])
    _one_line_error(code, stderr)
    assert "No space left on device" in stderr and "run the same command again" in stderr
    [partial] = tiny_disk.glob("*.h5.partial")
    [entry] = list_stores(tiny_disk)
    assert entry.state == "partial" and 0 < entry.rows_done < 200  # what was flushed before the disk filled
    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_disk)], check=True)
    code, stdout, stderr = _invoke([*args, "--out", tiny_disk])
    assert code == 0, stderr
    assert f"embedded {200 - entry.rows_done} of 200 rows" in stdout and "kept from an interrupted run" in stdout
    code, _, _ = _invoke([*args, "--out", tmp_path / "roomy"])
    [resumed], [clean] = tiny_disk.glob("*.h5"), (tmp_path / "roomy").glob("*.h5")
    np.testing.assert_allclose(FeatureStore(resumed).features(), FeatureStore(clean).features(), rtol=1e-5, atol=1e-6)


def test_fit_head_on_a_full_disk_is_one_line_and_leaves_no_debris(tmp_path, tiny_disk):
    import subprocess

    from conftest import make_store

    rng = np.random.default_rng(0)
    store = make_store(tmp_path / "s.h5", rng.normal(size=(40, 6)), [0, 1] * 20, ["a", "b"])
    subprocess.run(["mount", "-o", "remount,size=8k", str(tiny_disk)], check=True)
    code, _, stderr = _invoke(["fit-head", store, "--head", "logreg", "--out", tiny_disk / "run"])
    _one_line_error(code, stderr)
    assert "No space left on device" in stderr and str(tiny_disk / "run") in stderr
    assert not [p for p in (tiny_disk / "run").rglob("*") if p.name.endswith(".partial")]


def test_a_warning_while_embedding_is_one_line(tmp_path, resnet18_weights):
    """A warning (a library's, or tlcache's own on an odd image) is one `warning:` line, not a source listing. A
    palette image with transparency made Pillow warn here until transparent pixels were composited (no warning
    then); a 16-bit image holding 8-bit values makes tlcache's own."""
    import subprocess
    import sys

    folder = write_image_folder(tmp_path / "imgs", per_class=2)
    Image.fromarray(np.full((20, 20), 200, np.uint16)).save(folder / "circle" / "wide.png")  # 8-bit data, 16 bits
    command = [sys.executable, "-m", "tlcache.cli", "embed", str(folder), "--out", str(tmp_path / "cache")]
    command += ["-b", "torchvision:resnet18", "--weights", str(resnet18_weights), "--image-size", "32", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CASE_SECONDS)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "hold values up to 255 only" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: "), done.stderr
    assert "warnings.warn(" not in done.stderr and "embedded 5 of 5 rows" in done.stdout


@pytest.mark.parametrize("extra", [["--head", "all"], ["--head", "svm", "--calibrate", "sigmoid"]])
def test_a_class_with_a_single_training_example_is_no_traceback(tmp_path, extra):
    from conftest import make_store

    rng = np.random.default_rng(0)
    y = [0] * 12 + [1] * 12 + [2]  # class c: one example, in training
    X = rng.normal(size=(25, 6)) + 3.0 * np.eye(3, 6)[y]
    train = make_store(tmp_path / "train.h5", X, y, ["a", "b", "c"])
    test = make_store(tmp_path / "test.h5", X[:24], y[:24], ["a", "b", "c"])
    code, _, stderr = _invoke(["fit-head", train, "--test", test, "--out", tmp_path / "run", *extra])
    assert code in (0, 2), stderr
    if code:
        _one_line_error(code, stderr)


def test_a_damaged_store_of_the_same_config_is_no_donor(tmp_path, tiny_bert_dir):
    import h5py

    from conftest import write_text_csv

    first = write_text_csv(tmp_path / "a.csv", n=12)
    options = {"out": tmp_path / "cache", "progress": False, "precision": "fp32"}
    donor = embed_source(first, f"hf:{tiny_bert_dir}", **options)
    with h5py.File(donor.path, "r+") as handle:
        handle["features"][0, 0] = np.nan
    grown = tmp_path / "b.csv"
    grown.write_text(first.read_text() + "one more good movie,pos\n")
    result = embed_source(grown, f"hf:{tiny_bert_dir}", **options)  # no traceback, nothing copied from the NaN store
    assert result.reused == 0 and result.embedded == 13
    assert np.isfinite(FeatureStore(result.path).features()).all()


_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=30)


@FUZZ
@given(names=st.lists(_names, min_size=2, max_size=4, unique=True))
@example(names=["$x^$", "a$\\b$c"])  # matplotlib's maths markup, broken: it crashed the figure
@example(names=["yes | no", "line\nbreak"])  # a table cell's separator, a line break
def test_any_class_names_give_a_whole_report(tmp_path_factory, names):
    root = tmp_path_factory.mktemp("names")
    rng = np.random.default_rng(0)
    y = np.arange(40) % len(names)
    X = rng.normal(size=(40, 4)) + 3 * np.eye(4)[y]
    store = make_store(root / "s.h5", X, y, names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph the font lacks is drawn as a box, not warned about
        fit_head(store, "logreg", out=root / "run", test_fraction=0.5)
    assert all((root / "run" / f"{figure}.png").stat().st_size > 0 for figure in ("confusion", "reliability", "sweep"))
    markdown = (root / "run" / "report.md").read_text(encoding="utf-8").splitlines()
    per_class = markdown[markdown.index("## Per class") + 4 :][: len(names)]
    confusion = markdown[markdown.index("## Confusion matrix (rows: true class, columns: predicted)") + 2 :]
    confusion = confusion[: len(names) + 2]  # its header, the separator and a row per class

    def cells(row: str) -> int:
        return len(re.split(r"(?<!\\)\|", row)) - 2  # the pipes not escaped, less the two at the ends

    assert [cells(row) for row in per_class] == [5] * len(names)
    assert [cells(row) for row in confusion] == [len(names) + 1] * (len(names) + 2)


def test_every_head_onto_a_full_disk_is_one_line_from_either_process(tmp_path, tiny_disk):
    import subprocess
    import sys

    # A fresh interpreter, as a user runs it: the mlp trains in a forked process, which can be the one to fill the
    # disk; its error comes back to the command's process and out as one line.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    store = make_store(tmp_path / "s.h5", X, np.arange(120) % 3, ["a", "b", "c"])
    command = [sys.executable, "-c", "from tlcache.cli import main; main()", "fit-head", str(store), "--head", "all"]
    done = subprocess.run([*command, "--out", str(tiny_disk / "runs")], capture_output=True, text=True)
    _one_line_error(done.returncode, done.stderr)
    assert "No space left on device" in done.stderr and "free space and run it again" in done.stderr
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_disk)], check=True)
    done = subprocess.run([*command, "--out", str(tiny_disk / "runs")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tiny_disk / "runs" / "mlp" / "confusion.png").exists()


def test_output_paths_in_the_way_are_one_line_before_any_work(tmp_path, monkeypatch):
    import tlcache.heads

    rng = np.random.default_rng(0)
    store = make_store(tmp_path / "s.h5", rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 2, ["a", "b"])
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    fits = []
    monkeypatch.setattr(tlcache.heads, "_fit_once", lambda *a, **k: fits.append(a))  # counts fits; none may start
    in_the_way = {a_file: "is a file, not a folder", a_file / "run": f"lies under {a_file}, which is a file"}
    for out, message in in_the_way.items():
        for head in ("logreg", "all"):
            code, _, stderr = _invoke(["fit-head", store, "--head", head, "--out", out])
            _one_line_error(code, stderr)
            assert message in stderr
    assert fits == []
    monkeypatch.undo()
    assert _invoke(["fit-head", store, "--out", tmp_path / "run"])[0] == 0
    for out, message in ((tmp_path, "is a folder; name a file in it"), (a_file / "p.csv", "its folder")):
        code, _, stderr = _invoke(["predict", tmp_path / "run", store, "--out", out])
        _one_line_error(code, stderr)
        assert message in stderr
    # Deeper down, where no early check reaches: a folder where a figure is written.
    (tmp_path / "run" / "confusion.png").unlink()
    (tmp_path / "run" / "confusion.png").mkdir()
    code, _, stderr = _invoke(["report", tmp_path / "run"])
    _one_line_error(code, stderr)
    assert "confusion.png" in stderr and "pass another path" in stderr
